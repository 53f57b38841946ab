//! The node config file `kv.json`, beside the binary in the plugin dir (`azure~kv/kv.json`).
//!
//! Anything dangerous in pod authors' hands lives here instead of in options: custom cloud
//! endpoints, the deadline, the tmpfs cap, the log path and the policy deciding which
//! namespaces may use the node's managed identity and which vaults they may name. kubelet
//! ignores the file (it only execs `kv`). It is read on every call, so a copy of the binary in
//! another directory with its own `kv.json` is fully isolated. A malformed file fails every
//! mount: silently falling back to defaults would drop the operator's policy.

use crate::error::{Code, Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file name beside the binary.
pub const FILE_NAME: &str = "kv.json";
/// Default log file (v0.0.17's path).
pub const DEFAULT_LOG_PATH: &str = "/var/log/kv-driver.log";
/// Default mount deadline: well under kubelet's 2m3s pod-start wait.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default cap on one volume's tmpfs.
pub const DEFAULT_TMPFS_MAX_BYTES: u64 = 64 << 20;
/// Default log size before rotation.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Default NMI port (aad-pod-identity).
pub const DEFAULT_NMI_PORT: u16 = 2579;

/// Log settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// Log file path.
    pub path: Option<PathBuf>,
    /// Size at which the log rotates to `<path>.1`.
    pub max_bytes: Option<u64>,
}

/// Allow-lists. Absent = allow all (v0.0.17's behaviour); once set, unlisted namespaces are denied.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Namespaces whose pods may use the node's managed identity.
    pub node_identity_namespaces: Option<Vec<String>>,
    /// Vaults each namespace may name.
    pub vaults_by_namespace: Option<BTreeMap<String, Vec<String>>>,
}

/// The whole file; absent keys take defaults, unknown keys are an error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeConfig {
    /// Default cloud for pods that give no `cloudname`.
    pub cloud: Option<String>,
    /// Endpoints used for `cloudname: AzureStackCloud`.
    pub custom_cloud: Option<crate::cloud::CustomCloud>,
    /// Default NMI port.
    pub nmi_port: Option<u16>,
    /// Deadline of one call, seconds.
    pub deadline_seconds: Option<u64>,
    /// Cap on a volume's tmpfs size.
    pub tmpfs_max_bytes: Option<u64>,
    /// Logging.
    pub log: Option<LogConfig>,
    /// Policy.
    pub policy: Option<Policy>,
}

impl NodeConfig {
    /// Reads `kv.json` beside the running binary; missing file = defaults.
    pub fn load_beside_binary() -> Result<NodeConfig> {
        match std::env::current_exe() {
            Ok(exe) => match exe.parent() {
                Some(dir) => NodeConfig::load(&dir.join(FILE_NAME)),
                None => Ok(NodeConfig::default()),
            },
            Err(_) => Ok(NodeConfig::default()),
        }
    }

    /// Reads a config file; missing file = defaults.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeConfig::default()),
            Err(e) => {
                return Err(Error::new(
                    Code::Config,
                    format!("cannot read node config {}: {e}", path.display()),
                ))
            }
        };
        NodeConfig::parse(&text).map_err(|e| {
            Error::new(
                Code::Config,
                format!(
                    "node config {} is invalid: {}; fix or remove the file",
                    path.display(),
                    e.message()
                ),
            )
        })
    }

    /// Parses and checks the config text.
    pub fn parse(text: &str) -> Result<NodeConfig> {
        let config: NodeConfig =
            serde_json::from_str(text).map_err(|e| Error::new(Code::Config, e.to_string()))?;
        if config.deadline_seconds == Some(0) || config.deadline_seconds.is_some_and(|s| s > 3600) {
            return Err(Error::new(Code::Config, "deadlineSeconds must be 1..3600"));
        }
        if config.nmi_port == Some(0) {
            return Err(Error::new(Code::Config, "nmiPort must be 1..65535"));
        }
        if let Some(c) = &config.custom_cloud {
            for (name, url) in [
                ("authorityHost", &c.authority_host),
                ("keyVaultResource", &c.key_vault_resource),
            ] {
                if !url.starts_with("https://") {
                    return Err(Error::new(
                        Code::Config,
                        format!("customCloud.{name} must be an https:// URL"),
                    ));
                }
            }
            let suffix_ok = !c.key_vault_dns_suffix.is_empty()
                && c.key_vault_dns_suffix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
            if !suffix_ok {
                return Err(Error::new(Code::Config, "customCloud.keyVaultDnsSuffix must be a DNS suffix such as vault.contoso.local"));
            }
        }
        if let Some(cloud) = &config.cloud {
            crate::cloud::Cloud::resolve(cloud, config.custom_cloud.as_ref())
                .map_err(|e| Error::new(Code::Config, format!("cloud: {}", e.message())))?;
        }
        Ok(config)
    }

    /// The cloud of a volume: its `cloudname` option, else this node's default, else public Azure.
    pub fn cloud(&self, option: Option<&str>) -> Result<crate::cloud::Cloud> {
        let name = option
            .or(self.cloud.as_deref())
            .unwrap_or(crate::cloud::PUBLIC);
        crate::cloud::Cloud::resolve(name, self.custom_cloud.as_ref())
    }

    /// The deadline of one call.
    pub fn deadline(&self) -> Duration {
        self.deadline_seconds
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_DEADLINE)
    }

    /// The tmpfs cap.
    pub fn tmpfs_max_bytes(&self) -> u64 {
        self.tmpfs_max_bytes.unwrap_or(DEFAULT_TMPFS_MAX_BYTES)
    }

    /// The NMI port default.
    pub fn nmi_port(&self) -> u16 {
        self.nmi_port.unwrap_or(DEFAULT_NMI_PORT)
    }

    /// Log path: `KV_LOG_FILE` wins over the config, then v0.0.17's path.
    pub fn log_path(&self, env_override: Option<PathBuf>) -> PathBuf {
        env_override
            .or_else(|| self.log.as_ref().and_then(|l| l.path.clone()))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_LOG_PATH))
    }

    /// Log rotation size.
    pub fn log_max_bytes(&self) -> u64 {
        self.log
            .as_ref()
            .and_then(|l| l.max_bytes)
            .unwrap_or(DEFAULT_LOG_MAX_BYTES)
    }

    /// Checks the policy for a pod's namespace, identity and vaults.
    pub fn check_policy(
        &self,
        namespace: Option<&str>,
        uses_node_identity: bool,
        vaults: &[&str],
    ) -> Result<()> {
        let Some(policy) = &self.policy else {
            return Ok(());
        };
        let ns = namespace.unwrap_or("");
        if uses_node_identity {
            if let Some(allowed) = &policy.node_identity_namespaces {
                if !allowed.iter().any(|a| a == ns) {
                    return Err(Error::new(
                        Code::Policy,
                        format!(
                            "namespace \"{ns}\" may not use the node's managed identity (node policy nodeIdentityNamespaces); use pod identity or a service principal, or ask the cluster operator"
                        ),
                    ));
                }
            }
        }
        if let Some(by_ns) = &policy.vaults_by_namespace {
            let allowed = by_ns.get(ns);
            for vault in vaults {
                let ok =
                    allowed.is_some_and(|list| list.iter().any(|v| v.eq_ignore_ascii_case(vault)));
                if !ok {
                    return Err(Error::new(
                        Code::Policy,
                        format!(
                            "namespace \"{ns}\" may not read vault \"{vault}\" (node policy vaultsByNamespace); ask the cluster operator to allow it"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_object_takes_defaults() {
        let c = NodeConfig::parse("{}").unwrap();
        assert_eq!(c.deadline(), DEFAULT_DEADLINE);
        assert_eq!(c.nmi_port(), 2579);
        assert_eq!(c.tmpfs_max_bytes(), 64 << 20);
        assert_eq!(c.log_path(None), PathBuf::from("/var/log/kv-driver.log"));
        assert_eq!(c.log_path(Some("/x".into())), PathBuf::from("/x"));
    }

    #[test]
    fn every_setting_parses() {
        let c = NodeConfig::parse(
            r#"{"cloud":"AzureChinaCloud","customCloud":{"authorityHost":"https://login.local","keyVaultDnsSuffix":"vault.local","keyVaultResource":"https://vault.local"},
            "nmiPort":2580,"deadlineSeconds":5,"tmpfsMaxBytes":1048576,"log":{"path":"/tmp/l","maxBytes":100},
            "policy":{"nodeIdentityNamespaces":["ops"],"vaultsByNamespace":{"ops":["kv1"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.deadline(), Duration::from_secs(5));
        assert_eq!(c.nmi_port(), 2580);
        assert_eq!(c.tmpfs_max_bytes(), 1 << 20);
        assert_eq!(c.log_path(None), PathBuf::from("/tmp/l"));
        assert_eq!(c.log_max_bytes(), 100);
    }

    #[test]
    fn unknown_or_malformed_is_an_error() {
        for bad in [
            r#"{"deadline":5}"#,
            r#"{"deadlineSeconds":0}"#,
            r#"{"cloud":"Mars"}"#,
            r#"{"customCloud":{"authorityHost":"http://x","keyVaultDnsSuffix":"v","keyVaultResource":"https://v"}}"#,
            "{",
            r#"{"policy":{"nodeIdentityNamespace":["a"]}}"#,
        ] {
            let e = NodeConfig::parse(bad).unwrap_err();
            assert_eq!(e.code(), Code::Config, "{bad}");
        }
    }

    #[test]
    fn policy_is_an_allow_list() {
        let c = NodeConfig::parse(
            r#"{"policy":{"nodeIdentityNamespaces":["ops"],"vaultsByNamespace":{"ops":["kv1"],"web":["kv2"]}}}"#,
        )
        .unwrap();
        assert!(c.check_policy(Some("ops"), true, &["kv1"]).is_ok());
        assert_eq!(
            c.check_policy(Some("web"), true, &["kv2"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
        assert!(c.check_policy(Some("web"), false, &["kv2"]).is_ok());
        assert_eq!(
            c.check_policy(Some("web"), false, &["kv1"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
        assert_eq!(
            c.check_policy(Some("other"), false, &["kv1"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
        assert!(NodeConfig::default()
            .check_policy(Some("x"), true, &["any"])
            .is_ok());
    }
}
