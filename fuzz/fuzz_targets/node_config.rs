//! The node config file (kv.json): any text gives Ok or a KV_CONFIG error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = keyvault_flexvolume::config::NodeConfig::parse(text) {
        let _ = c.deadline();
        let _ = c.tmpfs_max_bytes();
        let _ = c.log_path(None);
        let _ = c.max_files_per_volume();
        use keyvault_flexvolume::options::{Identity, ManagedIdentity, TokenPath};
        for identity in [
            Identity::NodeManagedIdentity { id: ManagedIdentity::System },
            Identity::NodeManagedIdentity { id: ManagedIdentity::ClientId("abc".into()) },
            Identity::NodeManagedIdentity { id: ManagedIdentity::ResourceId("/subscriptions/s".into()) },
            Identity::PodIdentity { nmi_port: Some(2580) },
            Identity::WorkloadIdentity {
                client_id: "abc".into(),
                token: TokenPath { volume: "v".into(), file: "f".into() },
            },
        ] {
            let _ = c.check_policy(Some("ns"), &identity, &["kvdemo"]);
        }
    }
});
