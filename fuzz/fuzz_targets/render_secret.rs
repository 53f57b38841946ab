//! A Key Vault secret (plain or certificate-backed PFX/PEM) → file bytes, with every option.
#![no_main]
use arbitrary::Arbitrary;
use keyvault_flexvolume::render::{render_secret, Encoding, Format, RenderOptions};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    cert_backed: bool,
    content_type: u8,
    format: u8,
    encoding: u8,
    split: bool,
    /// Encode `value` as base64 first (a PFX secret's value is base64).
    as_base64: bool,
    value: Vec<u8>,
}

fuzz_target!(|i: Input| {
    let content_type = match i.content_type % 4 {
        0 => None,
        1 => Some("application/x-pkcs12"),
        2 => Some("application/x-pem-file"),
        _ => Some("text/plain"),
    };
    let format = match i.format % 3 {
        0 => None,
        1 => Some(Format::Pem),
        _ => Some(Format::Pfx),
    };
    let encoding = match i.encoding % 4 {
        0 => None,
        1 => Some(Encoding::Utf8),
        2 => Some(Encoding::Base64),
        _ => Some(Encoding::Hex),
    };
    let value = if i.as_base64 {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&i.value)
    } else {
        String::from_utf8_lossy(&i.value).into_owned()
    };
    let opts = RenderOptions { format, encoding, split_cert_and_key: i.split };
    if let Err(e) = render_secret("obj", &value, content_type, i.cert_backed, &opts) {
        let _ = e.to_string();
    }
});
