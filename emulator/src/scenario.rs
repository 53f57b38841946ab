//! The scenario file: vaults, objects, identities, access policies, NMI bindings,
//! latency and fault injection. See `emulator/README.md` for the documented format.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub vaults: Vec<Vault>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub access_policies: Vec<AccessPolicy>,
    #[serde(default)]
    pub imds: ImdsConfig,
    #[serde(default)]
    pub nmi: NmiConfig,
    #[serde(default)]
    pub latency_ms: Latency,
    #[serde(default)]
    pub faults: Vec<Fault>,
    /// Federated identity credentials (workload identity): which external tokens AAD
    /// exchanges for a token of which application / user-assigned identity.
    #[serde(default)]
    pub federated_credentials: Vec<FederatedCredential>,
    /// External token issuers AAD trusts, with their signing keys.
    #[serde(default)]
    pub issuers: Vec<TrustedIssuer>,
    /// Lifetime of issued tokens in seconds (default 86399).
    #[serde(default)]
    pub token_lifetime_secs: Option<u64>,
    /// Directory for relative `pem_file` / `certificate_file` paths; itself relative to the
    /// scenario file's directory unless absolute (default: the scenario file's directory).
    #[serde(default)]
    pub material_dir: Option<String>,
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vault {
    pub name: String,
    /// AzurePublicCloud (default), AzureChinaCloud, AzureUSGovernmentCloud.
    #[serde(default)]
    pub cloud: Option<String>,
    pub tenant: String,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub secrets: Vec<Secret>,
    #[serde(default)]
    pub keys: Vec<Key>,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// Per-vault throttle (token bucket); none: never throttled.
    #[serde(default)]
    pub throttle: Option<Throttle>,
}

/// Token bucket: `burst` requests at once, refilled at `requests_per_second`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Throttle {
    #[serde(alias = "requestsPerSecond")]
    pub requests_per_second: f64,
    /// Bucket size (default: requests_per_second, at least 1).
    #[serde(default)]
    pub burst: Option<f64>,
}

/// A federated identity credential of an application or user-assigned identity
/// (Microsoft Graph `federatedIdentityCredential`: issuer, subject, audiences).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// Client id of the identity the credential belongs to.
    pub client_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Compared exactly (case-sensitive, like AAD).
    pub issuer: String,
    /// Compared exactly (case-sensitive, like AAD since 2024).
    pub subject: String,
    /// Default `["api://AzureADTokenExchange"]`.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
}

impl FederatedCredential {
    pub fn audiences(&self) -> Vec<String> {
        self.audiences
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_FEDERATED_AUDIENCE.to_string()])
    }
}

pub const DEFAULT_FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// An external issuer (e.g. a Kubernetes service-account issuer) and its signing keys: a
/// JWKS inline (`jwks`), a JWKS file (`jwks_file`), or PEM files (`pem_files`: public keys,
/// certificates or private keys; `kid` = base64url SHA-256 of the SubjectPublicKeyInfo, as
/// the Kubernetes API server derives it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    pub issuer: String,
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub pem_files: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    pub name: String,
    /// Shorthand for a single version.
    #[serde(default)]
    pub value: Option<String>,
    /// Generated value: `{"repeat": "abc", "bytes": 25600}`.
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub versions: Vec<SecretVersion>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generate {
    pub repeat: String,
    pub bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretVersion {
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub generate: Option<Generate>,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub nbf: Option<i64>,
    #[serde(default)]
    pub exp: Option<i64>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
}

/// Key material description (shared by keys and certificate keys).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// RSA (default), EC, oct, RSA-HSM, EC-HSM, oct-HSM.
    #[serde(default)]
    pub kty: Option<String>,
    /// RSA modulus bits (default 2048).
    #[serde(default)]
    pub key_size: Option<usize>,
    /// P-256 (default for EC), P-384, P-521, P-256K.
    #[serde(default)]
    pub crv: Option<String>,
    /// PKCS#8 PEM file (relative to the scenario's directory).
    #[serde(default)]
    pub pem_file: Option<String>,
    /// Inline PKCS#8 PEM.
    #[serde(default)]
    pub pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Key {
    pub name: String,
    #[serde(flatten)]
    pub spec: KeySpec,
    #[serde(default)]
    pub key_ops: Option<Vec<String>>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    /// Several versions; each may override the key material. Oldest first.
    #[serde(default)]
    pub versions: Vec<ObjectVersion>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ObjectVersion {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub pem_file: Option<String>,
    #[serde(default)]
    pub pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub name: String,
    /// `application/x-pkcs12` (default) or `application/x-pem-file`.
    #[serde(default)]
    pub content_type: Option<String>,
    /// Subject, e.g. `CN=web.example.com` (default `CN=<name>`).
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// `chain` (default: signed by the scenario's intermediate CA, itself signed by the root) or `self`.
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub key: KeySpec,
    /// Order of the certificates in the stored PFX/PEM: `leaf-first` (default: leaf,
    /// intermediate, root), `root-first` (root, intermediate, leaf) or `mixed` (root, leaf,
    /// intermediate, as users upload them: csi#156).
    #[serde(default)]
    pub chain_order: Option<String>,
    #[serde(default)]
    pub validity_days: Option<i64>,
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub created: Option<i64>,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub versions: Vec<ObjectVersion>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentityKind {
    System,
    User,
    ServicePrincipal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    #[serde(default)]
    pub name: Option<String>,
    pub kind: IdentityKind,
    pub client_id: String,
    #[serde(default)]
    pub object_id: Option<String>,
    /// ARM resource id of a user-assigned identity (IMDS `msi_res_id` / `mi_res_id`).
    #[serde(default, alias = "resource_id")]
    pub msi_res_id: Option<String>,
    pub tenant: String,
    #[serde(default)]
    pub client_secret: Option<String>,
    /// PEM certificate file whose key signs client assertions (service principals).
    #[serde(default)]
    pub certificate_file: Option<String>,
    /// Inline PEM certificate.
    #[serde(default)]
    pub certificate_pem: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Client id of the identity.
    pub identity: String,
    pub vault: String,
    #[serde(default)]
    pub secrets: Vec<String>,
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub certificates: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ImdsConfig {
    /// Client id of the VM's system-assigned identity.
    #[serde(default)]
    pub system: Option<String>,
    /// Client ids of the user-assigned identities attached to the VM.
    #[serde(default)]
    pub user: Vec<String>,
    /// IMDS's per-VM limits on the identity endpoint (off unless given).
    #[serde(default)]
    pub limits: Option<ImdsLimits>,
    /// ARM resource id of the VM (or scale set): the `xms_mirid` claim of the system-assigned
    /// identity's tokens (default a VM `kv-node` in resource group `rg`).
    #[serde(default)]
    pub vm_resource_id: Option<String>,
}

/// The VM resource id tokens of the system-assigned identity name when the scenario gives none.
pub const DEFAULT_VM_RESOURCE_ID: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/kv-node";

/// IMDS answers 429 beyond `concurrency` requests in flight or `rate_per_second` requests
/// in any one-second window (Azure: 5 concurrent, 20/s for managed identity).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImdsLimits {
    #[serde(default)]
    pub concurrency: Option<usize>,
    #[serde(default, alias = "ratePerSecond")]
    pub rate_per_second: Option<usize>,
    /// Add `Retry-After: N` to the 429 (real IMDS sends none).
    #[serde(default)]
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NmiConfig {
    /// Emit expires_in / expires_on / not_before as JSON numbers (NMI v1.5 / v1.5.1).
    #[serde(default)]
    pub numeric_token_fields: bool,
    #[serde(default)]
    pub bindings: Vec<NmiBinding>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NmiBinding {
    pub namespace: String,
    pub pod: String,
    pub client_id: String,
    /// Answer 404 for the first N calls.
    #[serde(default)]
    pub pending_calls: u64,
    /// Answer 404 during the first T ms after start.
    #[serde(default)]
    pub pending_ms: u64,
    /// Hold each pending (404) answer this long (real NMI blocks up to ~100 s).
    #[serde(default)]
    pub pending_hold_ms: u64,
    /// Always answer 403 (token acquisition failed).
    #[serde(default)]
    pub forbidden: bool,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    #[serde(default)]
    pub imds: u64,
    #[serde(default)]
    pub nmi: u64,
    #[serde(default)]
    pub aad: u64,
    #[serde(default)]
    pub keyvault: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Endpoint {
    Imds,
    Nmi,
    Aad,
    Keyvault,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Imds => "imds",
            Endpoint::Nmi => "nmi",
            Endpoint::Aad => "aad",
            Endpoint::Keyvault => "keyvault",
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultAction {
    /// Answer `status` (429 / 500 / 503 / 410 / 404 ...), with `Retry-After` if `retry_after` is set.
    Status,
    /// Close the connection without answering.
    Close,
    /// Wait `ms`, then serve the request normally.
    Stall,
    /// Never answer.
    StallForever,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub endpoint: Endpoint,
    /// Only requests whose path contains this substring count.
    #[serde(default)]
    pub path_contains: Option<String>,
    /// Only requests whose body contains this substring count (e.g. `client_id=<id>` for one
    /// application's AAD token requests).
    #[serde(default)]
    pub body_contains: Option<String>,
    /// Apply to the first N matching requests (default 1).
    #[serde(default)]
    pub count: Option<u64>,
    pub action: FaultAction,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub ms: Option<u64>,
}

/// Cloud constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cloud {
    pub name: &'static str,
    pub aad_host: &'static str,
    pub vault_suffix: &'static str,
    pub resource: &'static str,
}

pub const CLOUDS: [Cloud; 3] = [
    Cloud {
        name: "AzurePublicCloud",
        aad_host: "login.microsoftonline.com",
        vault_suffix: "vault.azure.net",
        resource: "https://vault.azure.net",
    },
    Cloud {
        name: "AzureChinaCloud",
        aad_host: "login.chinacloudapi.cn",
        vault_suffix: "vault.azure.cn",
        resource: "https://vault.azure.cn",
    },
    Cloud {
        name: "AzureUSGovernmentCloud",
        aad_host: "login.microsoftonline.us",
        vault_suffix: "vault.usgovcloudapi.net",
        resource: "https://vault.usgovcloudapi.net",
    },
];

/// Every AAD host served (login.windows.net is an alias of the public cloud's).
pub const AAD_HOSTS: [&str; 4] = [
    "login.microsoftonline.com",
    "login.chinacloudapi.cn",
    "login.microsoftonline.us",
    "login.windows.net",
];

pub fn cloud_by_name(name: Option<&str>) -> Option<Cloud> {
    let n = name.unwrap_or("AzurePublicCloud").to_ascii_uppercase();
    let n = match n.as_str() {
        "" | "AZURECLOUD" | "PUBLIC" => "AZUREPUBLICCLOUD".to_string(),
        "AZUREUSGOVERNMENT" => "AZUREUSGOVERNMENTCLOUD".to_string(),
        _ => n,
    };
    CLOUDS
        .iter()
        .copied()
        .find(|c| c.name.to_ascii_uppercase() == n)
}

pub fn cloud_by_aad_host(host: &str) -> Option<Cloud> {
    if host == "login.windows.net" {
        return Some(CLOUDS[0]);
    }
    CLOUDS.iter().copied().find(|c| c.aad_host == host)
}

pub fn cloud_by_resource(resource: &str) -> Option<Cloud> {
    let r = resource.trim_end_matches('/');
    CLOUDS.iter().copied().find(|c| c.resource == r)
}

impl Scenario {
    pub fn from_file(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading scenario {}: {e}", path.display()))?;
        let mut s: Scenario = serde_json::from_str(&text)
            .map_err(|e| format!("parsing scenario {}: {e}", path.display()))?;
        s.base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        s.validate()?;
        Ok(s)
    }

    pub fn from_value(v: serde_json::Value, base_dir: &Path) -> Result<Scenario, String> {
        let mut s: Scenario =
            serde_json::from_value(v).map_err(|e| format!("parsing scenario: {e}"))?;
        s.base_dir = base_dir.to_path_buf();
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<(), String> {
        for v in &self.vaults {
            if cloud_by_name(v.cloud.as_deref()).is_none() {
                return Err(format!("vault {}: unknown cloud {:?}", v.name, v.cloud));
            }
            if v.name.is_empty()
                || !v
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(format!("invalid vault name {:?}", v.name));
            }
        }
        for p in &self.access_policies {
            if !self.identities.iter().any(|i| i.client_id == p.identity) {
                return Err(format!(
                    "access policy names unknown identity {}",
                    p.identity
                ));
            }
        }
        for b in &self.nmi.bindings {
            if b.namespace.is_empty() || b.pod.is_empty() {
                return Err("NMI binding with empty namespace or pod".into());
            }
        }
        for f in &self.faults {
            if f.action == FaultAction::Status && f.status.is_none() {
                return Err("fault with action status needs a status".into());
            }
        }
        for v in &self.vaults {
            if let Some(t) = &v.throttle {
                let rate_ok = t.requests_per_second.is_finite() && t.requests_per_second > 0.0;
                let burst_ok = t.burst.is_none_or(|b| b.is_finite() && b >= 1.0);
                if !rate_ok || !burst_ok {
                    return Err(format!(
                        "vault {}: throttle needs requests_per_second > 0 and burst >= 1",
                        v.name
                    ));
                }
            }
        }
        if let Some(l) = &self.imds.limits {
            if l.concurrency == Some(0) || l.rate_per_second == Some(0) {
                return Err("imds.limits: concurrency and rate_per_second must be >= 1".into());
            }
        }
        for fc in &self.federated_credentials {
            let Some(owner) = self
                .identities
                .iter()
                .find(|i| i.client_id.eq_ignore_ascii_case(&fc.client_id))
            else {
                return Err(format!(
                    "federated credential names unknown identity {}",
                    fc.client_id
                ));
            };
            // Azure: applications and user-assigned identities have federated credentials,
            // system-assigned identities cannot.
            if owner.kind == IdentityKind::System {
                return Err(format!(
                    "federated credential of {}: a system-assigned identity cannot have one (use a user-assigned identity or an application)",
                    fc.client_id
                ));
            }
            if fc.issuer.is_empty() || fc.subject.is_empty() {
                return Err(format!(
                    "federated credential of {}: issuer and subject must not be empty",
                    fc.client_id
                ));
            }
        }
        for i in &self.issuers {
            if i.jwks.is_none() && i.jwks_file.is_none() && i.pem_files.is_empty() {
                return Err(format!(
                    "issuer {}: give its keys (jwks, jwks_file or pem_files)",
                    i.issuer
                ));
            }
        }
        Ok(())
    }

    pub fn resolve_path(&self, p: &str) -> PathBuf {
        let pb = PathBuf::from(p);
        if pb.is_absolute() {
            return pb;
        }
        match &self.material_dir {
            Some(m) => self.base_dir.join(m).join(pb),
            None => self.base_dir.join(pb),
        }
    }

    /// Host names the scenario needs resolved to 127.0.0.1.
    pub fn host_names(&self) -> Vec<String> {
        let mut v: Vec<String> = AAD_HOSTS.iter().map(|s| s.to_string()).collect();
        for vault in &self.vaults {
            if let Some(c) = cloud_by_name(vault.cloud.as_deref()) {
                v.push(format!("{}.{}", vault.name, c.vault_suffix));
            }
        }
        v
    }
}
