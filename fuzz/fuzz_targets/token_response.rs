//! Token endpoint bodies (NMI's inner `token`, IMDS, AAD v1/v2): any JSON gives a token or None.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = keyvault_flexvolume::auth::parse_token(&v);
        if let Some(inner) = v.get("token") {
            let _ = keyvault_flexvolume::auth::parse_token(inner);
        }
    }
});
