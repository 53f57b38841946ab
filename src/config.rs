//! The node config file `kv.json`, beside the binary in the plugin dir (`azure~kv/kv.json`).
//!
//! Anything dangerous in pod authors' hands lives here instead of in options: custom cloud
//! endpoints, the deadline, the tmpfs cap, the log path and the policy deciding which
//! namespaces may use the node's managed identity and which vaults they may name. kubelet
//! ignores the file (it only execs `kv`). It is read on every call, so a copy of the binary in
//! another directory with its own `kv.json` is fully isolated. A malformed file fails every
//! mount: silently falling back to defaults would drop the operator's policy.

use crate::error::{Code, Error, Result};
use crate::options::{Identity, ManagedIdentity};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file name beside the binary.
pub const FILE_NAME: &str = "kv.json";
/// Default log file, in a directory kv creates 0700 (the file is 0600).
pub const DEFAULT_LOG_PATH: &str = "/var/log/kv/kv-driver.log";
/// Default cap on what the agent writes per version of one rotating volume.
pub const DEFAULT_MAX_ROTATING_VOLUME_BYTES: u64 = 1 << 20;
/// Default mount deadline: well under kubelet's 2m3s pod-start wait.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Default cap on one volume's tmpfs.
pub const DEFAULT_TMPFS_MAX_BYTES: u64 = 64 << 20;
/// Default log size before rotation.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 10 << 20;
/// Default NMI port (aad-pod-identity).
pub const DEFAULT_NMI_PORT: u16 = 2579;
/// Default cap on the files of one volume (versions and split files count one each).
pub const DEFAULT_MAX_FILES_PER_VOLUME: u32 = 1000;
/// Default node state directory (token cache, request slots, throttle records, rotation
/// records): on `/run`, memory-backed, gone at reboot with the volumes it describes.
pub const DEFAULT_STATE_DIR: &str = "/run/kv";
/// Default cap on concurrent Key Vault requests per vault from all kv processes of a node.
pub const DEFAULT_VAULT_REQUESTS_PER_NODE: u32 = 32;

/// Log settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    /// Log file path.
    pub path: Option<PathBuf>,
    /// Size at which the log rotates to `<path>.1`.
    pub max_bytes: Option<u64>,
}

/// Allow-lists. The node's managed identity is refused unless `nodeIdentities` or
/// `nodeIdentityNamespaces` allows it (v0.0.17 let every pod use every identity of the node);
/// `vaultsByNamespace`, once set, denies unlisted namespaces; `nmiport` may name the node's
/// `nmiPort` and `nmiPorts` only.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    /// Namespaces whose pods may use any managed identity of the node (shorthand for
    /// `nodeIdentities: {"<ns>": ["*"]}`).
    pub node_identity_namespaces: Option<Vec<String>>,
    /// Namespace (or `"*"`: every namespace) → the node identities its pods may use:
    /// `"system"` (system-assigned), a user-assigned identity's client id or resource id, or
    /// `"*"` (any).
    pub node_identities: Option<BTreeMap<String, Vec<String>>>,
    /// Vaults each namespace may name.
    pub vaults_by_namespace: Option<BTreeMap<String, Vec<String>>>,
    /// NMI ports a pod's `nmiport` may name besides the node's `nmiPort`.
    pub nmi_ports: Option<Vec<u16>>,
    /// Namespace (or `"*"`) → the client ids its pods may name with workload identity (or
    /// `"*"`). Absent: any (workload identity is the pod's own identity; AAD's federated
    /// credential decides).
    pub workload_identities: Option<BTreeMap<String, Vec<String>>>,
}

/// Rotation of mounted volumes by `kv agent` (`rotation` in `kv.json`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotationConfig {
    /// `false`: the option `rotationpollinterval` is refused on this node (default true).
    pub enabled: Option<bool>,
    /// Interval (Go duration) of every volume that does not set `rotationpollinterval`.
    pub default_interval: Option<String>,
    /// Smallest interval (Go duration, default 30s): smaller ones are raised to it.
    pub min_interval: Option<String>,
    /// Largest rotating volume in bytes of tmpfs per version (default 1 MiB): a bigger one is
    /// refused at mount, and a refresh that grows past it fails.
    pub max_volume_bytes: Option<u64>,
}

/// The `kv.json` key that allows node identities, named in refusals.
pub const NODE_IDENTITIES_KEY: &str = "policy.nodeIdentities";

/// The node's minimum rotation interval unless its config sets another.
pub const DEFAULT_MIN_ROTATION_INTERVAL: Duration = Duration::from_secs(30);

/// The node's rotation settings (`rotation.*` in `kv.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// `rotation.enabled` (default true).
    pub enabled: bool,
    /// `rotation.defaultInterval`: rotation for volumes that do not ask for it.
    pub default_interval: Option<Duration>,
    /// `rotation.minInterval` (default [`DEFAULT_MIN_ROTATION_INTERVAL`]).
    pub min_interval: Duration,
    /// `rotation.maxVolumeBytes` (default [`DEFAULT_MAX_ROTATING_VOLUME_BYTES`]).
    pub max_volume_bytes: u64,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            enabled: true,
            default_interval: None,
            min_interval: DEFAULT_MIN_ROTATION_INTERVAL,
            max_volume_bytes: DEFAULT_MAX_ROTATING_VOLUME_BYTES,
        }
    }
}

impl RotationPolicy {
    /// The interval of a volume whose `rotationpollinterval` is `asked` (parsed and non-zero,
    /// [`crate::options::VolumeSpec::rotation_interval`]); `None` when the volume does not
    /// rotate. A value below the node's minimum is raised to it.
    pub fn interval(&self, asked: Option<Duration>) -> Result<Option<Duration>> {
        if !self.enabled {
            return match asked {
                Some(_) => Err(Error::new(
                    crate::error::Code::Policy,
                    "rotationpollinterval is set but this node turns rotation off (node config rotation.enabled: false): remove the option or enable rotation on the node",
                )),
                None => Ok(None),
            };
        }
        Ok(asked
            .or(self.default_interval)
            .map(|d| d.max(self.min_interval)))
    }

    /// Refuses a rotating volume whose version takes more than `rotation.maxVolumeBytes` of
    /// tmpfs: the agent writes every version, and the tmpfs pages it writes are charged to its
    /// memory cgroup for as long as the version is live.
    pub fn check_size(&self, bytes: u64) -> Result<()> {
        if bytes <= self.max_volume_bytes {
            return Ok(());
        }
        Err(Error::new(
            crate::error::Code::Policy,
            format!(
                "the rotating volume takes {bytes} bytes of tmpfs per version, above this node's cap of {} (node config rotation.maxVolumeBytes): mount it without rotationpollinterval, or ask the cluster operator to raise the cap",
                self.max_volume_bytes
            ),
        ))
    }
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
    /// Cap on the number of files of a volume.
    pub max_files_per_volume: Option<u32>,
    /// Logging.
    pub log: Option<LogConfig>,
    /// Policy.
    pub policy: Option<Policy>,
    /// Rotation.
    pub rotation: Option<RotationConfig>,
    /// Whether kv processes share tokens through the node's token cache (default true; false
    /// makes every mount ask its token source, e.g. to benchmark the cache).
    pub token_cache: Option<bool>,
    /// The node state directory (default `/run/kv`): the token cache, request slots, throttle
    /// records and rotation records every kv process of the node shares. Root-only and
    /// memory-backed; must be an absolute path; kv creates it 0700.
    pub state_dir: Option<PathBuf>,
    /// Most kv processes of the node with Key Vault requests in flight to one vault (set) at
    /// once; each shares one slot among its requests (see `nodestate::admission`).
    pub vault_requests_per_node: Option<u32>,
}

impl NodeConfig {
    /// Reads `kv.json` beside the running binary; missing file = defaults.
    pub fn load_beside_binary() -> Result<NodeConfig> {
        match NodeConfig::path_beside_binary() {
            Some(path) => NodeConfig::load(&path),
            None => Ok(NodeConfig::default()),
        }
    }

    /// `kv.json` beside the running binary.
    pub fn path_beside_binary() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.join(FILE_NAME))
    }

    /// Reads a config file; missing file = defaults. The file decides where credentials are
    /// sent, so only one its reader trusts counts: owned by root (or by the user running kv)
    /// and writable by nobody else. Checked on the opened file, not the path, so it cannot be
    /// swapped between the check and the read.
    pub fn load(path: &Path) -> Result<NodeConfig> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let cannot_read = |e: std::io::Error| {
            Error::new(
                Code::Config,
                format!("cannot read node config {}: {e}", path.display()),
            )
        };
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(NodeConfig::default()),
            Err(e) => return Err(cannot_read(e)),
        };
        let meta = file.metadata().map_err(cannot_read)?;
        let owner_ok = meta.uid() == 0 || meta.uid() == rustix::process::geteuid().as_raw();
        if !owner_ok || meta.mode() & 0o022 != 0 {
            return Err(Error::new(
                Code::Config,
                format!(
                    "node config {} is owned by uid {} with mode {:o}: it must be owned by root and writable by nobody else (chown root:root and chmod 644 it)",
                    path.display(),
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ));
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(cannot_read)?;
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
        if config.max_files_per_volume == Some(0) {
            return Err(Error::new(
                Code::Config,
                "maxFilesPerVolume must be at least 1",
            ));
        }
        if config.vault_requests_per_node == Some(0) {
            return Err(Error::new(
                Code::Config,
                "vaultRequestsPerNode must be at least 1",
            ));
        }
        if config.state_dir.as_ref().is_some_and(|d| {
            !d.is_absolute() || d.components().any(|c| c == std::path::Component::ParentDir)
        }) {
            return Err(Error::new(
                Code::Config,
                "stateDir must be an absolute path without `..`, e.g. /run/kv",
            ));
        }
        if let Some(ports) = config.policy.as_ref().and_then(|p| p.nmi_ports.as_ref()) {
            if ports.contains(&0) {
                return Err(Error::new(
                    Code::Config,
                    "policy.nmiPorts must be ports 1..65535",
                ));
            }
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
        config.try_rotation()?;
        Ok(config)
    }

    /// The node's rotation settings, checked (see [`NodeConfig::rotation`]).
    fn try_rotation(&self) -> Result<RotationPolicy> {
        let mut policy = RotationPolicy::default();
        let Some(r) = &self.rotation else {
            return Ok(policy);
        };
        let duration = |key: &str, text: &str| {
            let d = crate::duration::parse(text).map_err(|e| {
                Error::new(Code::Config, format!("rotation.{key}: {}", e.message()))
            })?;
            if d.is_zero() {
                return Err(Error::new(
                    Code::Config,
                    format!("rotation.{key} must be above 0"),
                ));
            }
            Ok(d)
        };
        policy.enabled = r.enabled.unwrap_or(true);
        if let Some(t) = &r.min_interval {
            policy.min_interval = duration("minInterval", t)?;
        }
        if let Some(t) = &r.default_interval {
            policy.default_interval = Some(duration("defaultInterval", t)?);
        }
        if let Some(n) = r.max_volume_bytes {
            if n == 0 {
                return Err(Error::new(
                    Code::Config,
                    "rotation.maxVolumeBytes must be above 0",
                ));
            }
            policy.max_volume_bytes = n;
        }
        Ok(policy)
    }

    /// The node's rotation settings: `rotation.enabled`, `rotation.defaultInterval`,
    /// `rotation.minInterval` (checked when the file is parsed).
    pub fn rotation(&self) -> RotationPolicy {
        self.try_rotation().unwrap_or_default()
    }

    /// Where kv keeps node state: `stateDir`, default [`DEFAULT_STATE_DIR`].
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
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

    /// The cap on one volume's files.
    pub fn max_files_per_volume(&self) -> u32 {
        self.max_files_per_volume
            .unwrap_or(DEFAULT_MAX_FILES_PER_VOLUME)
    }

    /// Whether the node token cache is used.
    pub fn token_cache(&self) -> bool {
        self.token_cache.unwrap_or(true)
    }

    /// The node state shared by every kv process of the node.
    pub fn node_state(&self) -> crate::nodestate::NodeState {
        crate::nodestate::NodeState::at(self.state_dir())
    }

    /// The cap on concurrent requests to one vault from the node.
    pub fn vault_requests_per_node(&self) -> u32 {
        self.vault_requests_per_node
            .unwrap_or(DEFAULT_VAULT_REQUESTS_PER_NODE)
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
        identity: &Identity,
        vaults: &[&str],
    ) -> Result<()> {
        let ns = namespace.unwrap_or("");
        let policy = self.policy.clone().unwrap_or_default();
        match identity {
            Identity::NodeManagedIdentity { id } => self.check_node_identity(&policy, ns, id)?,
            Identity::WorkloadIdentity { client_id, .. } => {
                check_workload_identity(&policy, ns, client_id)?
            }
            Identity::PodIdentity {
                nmi_port: Some(port),
            } => self.check_nmi_port(&policy, *port)?,
            _ => {}
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

    /// Whether namespace `ns` may use any of the node's identities (`"*"` for it or for every
    /// namespace, or `nodeIdentityNamespaces`): then a request for the system-assigned identity
    /// may be answered with the VM's only user-assigned one, as v0.0.17 allowed; otherwise
    /// `"system"` means the VM's own identity only.
    pub fn allows_any_node_identity(&self, ns: &str) -> bool {
        let Some(policy) = &self.policy else {
            return false;
        };
        let listed_ns = policy
            .node_identity_namespaces
            .as_ref()
            .is_some_and(|list| list.iter().any(|a| a == ns));
        listed_ns
            || policy
                .node_identities
                .iter()
                .flat_map(|m| [m.get(ns), m.get("*")])
                .flatten()
                .flatten()
                .any(|entry| entry == "*")
    }

    /// A node identity is a credential of the node shared by every pod on it: only the
    /// identities the operator listed for the namespace may be used.
    fn check_node_identity(&self, policy: &Policy, ns: &str, id: &ManagedIdentity) -> Result<()> {
        let any_ns = policy
            .node_identity_namespaces
            .as_ref()
            .is_some_and(|list| list.iter().any(|a| a == ns));
        if any_ns {
            return Ok(());
        }
        if policy.node_identities.is_none() && policy.node_identity_namespaces.is_none() {
            return Err(Error::new(
                Code::Policy,
                format!(
                    "this node allows no pod to use its managed identities: the cluster operator lists the identities each namespace may use in kv.json key {NODE_IDENTITIES_KEY}, e.g. {{\"policy\":{{\"nodeIdentities\":{{\"{ns}\":[\"system\"]}}}}}}; or use pod identity or a service principal"
                ),
            ));
        }
        // The namespace's own entries and those of `"*"` (every namespace).
        let listed = policy
            .node_identities
            .iter()
            .flat_map(|m| [m.get(ns), m.get("*")])
            .flatten()
            .flatten();
        let allowed = listed.into_iter().any(|entry| match (entry.as_str(), id) {
            ("*", _) => true,
            ("system", ManagedIdentity::System) => true,
            // Client ids are GUIDs and resource ids are case-insensitive in Azure.
            (e, ManagedIdentity::ClientId(x) | ManagedIdentity::ResourceId(x)) => {
                e.eq_ignore_ascii_case(x)
            }
            _ => false,
        });
        if allowed {
            return Ok(());
        }
        let identity = match id {
            ManagedIdentity::ClientId(id) | ManagedIdentity::ResourceId(id) => {
                format!("user-assigned identity {id}")
            }
            ManagedIdentity::System => "system-assigned identity".to_string(),
        };
        Err(Error::new(
            Code::Policy,
            format!(
                "namespace \"{ns}\" may not use the node's {identity} (node policy {NODE_IDENTITIES_KEY} and policy.nodeIdentityNamespaces in kv.json); use pod identity or a service principal, or ask the cluster operator"
            ),
        ))
    }
}

/// With `policy.workloadIdentities` set, a namespace may name only the client ids listed for it
/// (or for `"*"`).
fn check_workload_identity(policy: &Policy, ns: &str, client_id: &str) -> Result<()> {
    let Some(map) = &policy.workload_identities else {
        return Ok(());
    };
    let allowed = [map.get(ns), map.get("*")]
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e == "*" || e.eq_ignore_ascii_case(client_id));
    if allowed {
        return Ok(());
    }
    Err(Error::new(
        Code::Policy,
        format!(
            "namespace \"{ns}\" may not use workload identity {client_id} (node policy policy.workloadIdentities in kv.json); ask the cluster operator"
        ),
    ))
}

impl NodeConfig {
    /// `nmiport` makes kv send the pod's name to a loopback port of its choosing: only NMI's
    /// configured port and the ones the operator listed may be named.
    fn check_nmi_port(&self, policy: &Policy, port: u16) -> Result<()> {
        let mut allowed = vec![self.nmi_port()];
        allowed.extend(policy.nmi_ports.iter().flatten().copied());
        if allowed.contains(&port) {
            return Ok(());
        }
        let list = allowed
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::new(
            Code::Policy,
            format!(
                "nmiport {port} is not allowed on this node (allowed: {list}); remove nmiport, or ask the cluster operator to add it to kv.json policy.nmiPorts"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_follow_the_node_policy() {
        let s = Duration::from_secs;
        let p = RotationPolicy::default();
        assert_eq!(p.interval(None).unwrap(), None);
        assert_eq!(p.interval(Some(s(120))).unwrap(), Some(s(120)));
        assert_eq!(
            p.interval(Some(s(5))).unwrap(),
            Some(s(30)),
            "raised to the minimum"
        );
        let defaulted = RotationPolicy {
            default_interval: Some(s(600)),
            min_interval: s(60),
            ..RotationPolicy::default()
        };
        assert_eq!(defaulted.interval(None).unwrap(), Some(s(600)));
        assert_eq!(defaulted.interval(Some(s(30))).unwrap(), Some(s(60)));
        let off = RotationPolicy {
            enabled: false,
            default_interval: Some(s(600)),
            ..RotationPolicy::default()
        };
        assert_eq!(off.interval(None).unwrap(), None);
        let e = off.interval(Some(s(120))).unwrap_err();
        assert_eq!(e.code(), crate::error::Code::Policy);
        assert!(e.message().contains("rotation.enabled"), "{e}");
    }

    #[test]
    fn empty_object_takes_defaults() {
        let c = NodeConfig::parse("{}").unwrap();
        assert_eq!(c.deadline(), DEFAULT_DEADLINE);
        assert_eq!(c.nmi_port(), 2579);
        assert_eq!(c.tmpfs_max_bytes(), 64 << 20);
        assert_eq!(c.log_path(None), PathBuf::from("/var/log/kv/kv-driver.log"));
        assert_eq!(c.log_path(Some("/x".into())), PathBuf::from("/x"));
    }

    #[test]
    fn every_setting_parses() {
        let c = NodeConfig::parse(
            r#"{"cloud":"AzureChinaCloud","customCloud":{"authorityHost":"https://login.local","keyVaultDnsSuffix":"vault.local","keyVaultResource":"https://vault.local"},
            "nmiPort":2580,"deadlineSeconds":5,"tmpfsMaxBytes":1048576,"log":{"path":"/tmp/l","maxBytes":100},
            "maxFilesPerVolume":50,"tokenCache":false,"stateDir":"/run/kv-test","vaultRequestsPerNode":4,
            "policy":{"nodeIdentityNamespaces":["ops"],"nodeIdentities":{"web":["system"]},"vaultsByNamespace":{"ops":["kv1"]},"nmiPorts":[2581]}}"#,
        )
        .unwrap();
        assert_eq!(c.deadline(), Duration::from_secs(5));
        assert_eq!(c.max_files_per_volume(), 50);
        assert_eq!(c.nmi_port(), 2580);
        assert_eq!(c.tmpfs_max_bytes(), 1 << 20);
        assert_eq!(c.log_path(None), PathBuf::from("/tmp/l"));
        assert_eq!(c.log_max_bytes(), 100);
        assert!(!c.token_cache());
        assert_eq!(c.node_state().root(), Path::new("/run/kv-test"));
        assert_eq!(c.vault_requests_per_node(), 4);
    }

    #[test]
    fn rotation_and_state_dir() {
        let c = NodeConfig::parse("{}").unwrap();
        assert_eq!(c.rotation(), RotationPolicy::default());
        assert_eq!(c.state_dir(), PathBuf::from("/run/kv"));
        let c = NodeConfig::parse(
            r#"{"rotation":{"enabled":true,"defaultInterval":"5m","minInterval":"1s","maxVolumeBytes":4096},"stateDir":"/run/kv2"}"#,
        )
        .unwrap();
        let r = c.rotation();
        assert_eq!(r.default_interval, Some(Duration::from_secs(300)));
        assert_eq!(r.min_interval, Duration::from_secs(1));
        assert!(r.check_size(4096).is_ok());
        let e = r.check_size(4097).unwrap_err();
        assert_eq!(e.code(), Code::Policy);
        assert!(e.message().contains("rotation.maxVolumeBytes"), "{e}");
        assert_eq!(
            RotationPolicy::default().max_volume_bytes,
            DEFAULT_MAX_ROTATING_VOLUME_BYTES
        );
        assert_eq!(c.state_dir(), PathBuf::from("/run/kv2"));
        assert!(
            !NodeConfig::parse(r#"{"rotation":{"enabled":false}}"#)
                .unwrap()
                .rotation()
                .enabled
        );
        for (bad, want) in [
            (
                r#"{"rotation":{"minInterval":"soon"}}"#,
                "rotation.minInterval",
            ),
            (
                r#"{"rotation":{"defaultInterval":"0"}}"#,
                "rotation.defaultInterval must be above 0",
            ),
            (r#"{"rotation":{"interval":"1m"}}"#, "unknown field"),
            (
                r#"{"rotation":{"maxVolumeBytes":0}}"#,
                "rotation.maxVolumeBytes must be above 0",
            ),
            (
                r#"{"stateDir":"run/kv"}"#,
                "stateDir must be an absolute path",
            ),
        ] {
            let e = NodeConfig::parse(bad).unwrap_err();
            assert_eq!(e.code(), Code::Config, "{bad}");
            assert!(e.message().contains(want), "{bad}: {e}");
        }
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
            r#"{"stateDir":"run/kv"}"#,
            r#"{"stateDir":"/run/../tmp"}"#,
            r#"{"vaultRequestsPerNode":0}"#,
        ] {
            let e = NodeConfig::parse(bad).unwrap_err();
            assert_eq!(e.code(), Code::Config, "{bad}");
        }
    }

    fn node(client_id: Option<&str>) -> Identity {
        Identity::NodeManagedIdentity {
            id: match client_id {
                Some(id) if id.starts_with('/') => ManagedIdentity::ResourceId(id.to_string()),
                Some(id) => ManagedIdentity::ClientId(id.to_string()),
                None => ManagedIdentity::System,
            },
        }
    }

    #[test]
    fn workload_identities_are_free_unless_listed() {
        let wi = |id: &str| Identity::WorkloadIdentity {
            client_id: id.into(),
            token: crate::options::TokenPath {
                volume: "v".into(),
                file: "f".into(),
            },
        };
        assert!(NodeConfig::default()
            .check_policy(Some("web"), &wi("a"), &["kv"])
            .is_ok());
        let c =
            NodeConfig::parse(r#"{"policy":{"workloadIdentities":{"web":["A"],"*":["shared"]}}}"#)
                .unwrap();
        assert!(c.check_policy(Some("web"), &wi("a"), &["kv"]).is_ok());
        assert!(c.check_policy(Some("ops"), &wi("shared"), &["kv"]).is_ok());
        let e = c.check_policy(Some("ops"), &wi("a"), &["kv"]).unwrap_err();
        assert_eq!(e.code(), Code::Policy);
        assert!(e.message().contains("policy.workloadIdentities"), "{e}");
    }

    #[test]
    fn node_identities_by_resource_id() {
        let rid = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/app";
        let c = NodeConfig::parse(&format!(
            r#"{{"policy":{{"nodeIdentities":{{"web":["{}"]}}}}}}"#,
            rid.to_ascii_lowercase()
        ))
        .unwrap();
        assert!(c
            .check_policy(Some("web"), &node(Some(rid)), &["kv"])
            .is_ok());
        assert!(c.check_policy(Some("web"), &node(None), &["kv"]).is_err());
        assert!(c
            .check_policy(Some("ops"), &node(Some(rid)), &["kv"])
            .is_err());
    }

    const POD: Identity = Identity::PodIdentity { nmi_port: None };

    #[test]
    fn policy_is_an_allow_list() {
        let c = NodeConfig::parse(
            r#"{"policy":{"nodeIdentityNamespaces":["ops"],"vaultsByNamespace":{"ops":["kv1"],"web":["kv2"]}}}"#,
        )
        .unwrap();
        assert!(c.check_policy(Some("ops"), &node(None), &["kv1"]).is_ok());
        assert!(c
            .check_policy(Some("ops"), &node(Some("abc")), &["kv1"])
            .is_ok());
        assert_eq!(
            c.check_policy(Some("web"), &node(None), &["kv2"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
        assert!(c.check_policy(Some("web"), &POD, &["kv2"]).is_ok());
        assert_eq!(
            c.check_policy(Some("web"), &POD, &["kv1"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
        assert_eq!(
            c.check_policy(Some("other"), &POD, &["kv1"])
                .unwrap_err()
                .code(),
            Code::Policy
        );
    }

    #[test]
    fn without_a_policy_node_identity_is_refused_naming_the_key() {
        let e = NodeConfig::default()
            .check_policy(Some("x"), &node(None), &["any"])
            .unwrap_err();
        assert_eq!(e.code(), Code::Policy);
        assert!(e.message().contains("policy.nodeIdentities"), "{e}");
        assert!(NodeConfig::default()
            .check_policy(Some("x"), &POD, &["any"])
            .is_ok());
    }

    #[test]
    fn node_identities_name_what_each_namespace_may_use() {
        let c = NodeConfig::parse(
            r#"{"policy":{"nodeIdentities":{"ops":["system","AbC-1"],"web":["*"],"ci":["/subscriptions/s/resourcegroups/r/providers/Microsoft.ManagedIdentity/userAssignedIdentities/ci"]}}}"#,
        )
        .unwrap();
        assert!(c.check_policy(Some("ops"), &node(None), &[]).is_ok());
        assert!(c
            .check_policy(Some("ops"), &node(Some("abc-1")), &[])
            .is_ok());
        let e = c
            .check_policy(Some("ops"), &node(Some("kubelet-id")), &[])
            .unwrap_err();
        assert_eq!(e.code(), Code::Policy);
        assert!(e.message().contains("kubelet-id"), "{e}");
        assert!(c.check_policy(Some("web"), &node(Some("any")), &[]).is_ok());
        assert!(c.check_policy(Some("web"), &node(None), &[]).is_ok());
        assert!(c.check_policy(Some("ci"), &node(None), &[]).is_err());
        assert!(c.check_policy(Some("other"), &node(None), &[]).is_err());
        // The line that restores v0.0.17's behaviour for a trusted cluster.
        let c = NodeConfig::parse(r#"{"policy":{"nodeIdentities":{"*":["*"]}}}"#).unwrap();
        assert!(c.check_policy(Some("any"), &node(Some("x")), &[]).is_ok());
    }

    #[test]
    fn nmiport_must_be_allowed() {
        let pod = |p| Identity::PodIdentity { nmi_port: Some(p) };
        let c = NodeConfig::default();
        assert!(c.check_policy(Some("a"), &pod(2579), &[]).is_ok());
        let e = c.check_policy(Some("a"), &pod(22), &[]).unwrap_err();
        assert_eq!(e.code(), Code::Policy);
        assert!(e.message().contains("nmiport 22"), "{e}");
        let c = NodeConfig::parse(r#"{"nmiPort":2580,"policy":{"nmiPorts":[8085]}}"#).unwrap();
        assert!(c.check_policy(Some("a"), &pod(2580), &[]).is_ok());
        assert!(c.check_policy(Some("a"), &pod(8085), &[]).is_ok());
        assert!(c.check_policy(Some("a"), &pod(2579), &[]).is_err());
        assert!(NodeConfig::parse(r#"{"policy":{"nmiPorts":[0]}}"#).is_err());
    }
}
