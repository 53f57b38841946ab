//! kubelet's options JSON → a validated [`VolumeSpec`]. Pure: no I/O, no network.
//!
//! kubelet passes a JSON object of strings: the pod author's `flexVolume.options` (the v0.0.17
//! names: `keyvaultname`, `;`-separated `keyvaultobject*` lists, ...), plus its own
//! `kubernetes.io/*` keys (pod identity, fsGroup, base64 secretRef values). Keys match
//! case-insensitively. Everything kv uses is validated here, so a mistake is reported before any
//! request is made and before anything touches the node.

use crate::error::{printable, Error, Result};
use crate::render::{Encoding, Format, ObjectKind, RenderOptions};
use crate::secret::Secret;
use base64::Engine;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// How kv gets its Azure AD token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// aad-pod-identity's NMI on the node, for the pod's own identity.
    PodIdentity {
        /// NMI port; `None` = the node config's default (2579).
        nmi_port: Option<u16>,
    },
    /// The node's managed identity through IMDS; `client_id` selects a user-assigned one.
    NodeManagedIdentity {
        /// User-assigned identity client id; `None` = system-assigned.
        client_id: Option<String>,
    },
    /// A service principal whose client secret comes from the pod's secretRef.
    ServicePrincipal {
        /// Application (client) id.
        client_id: String,
        /// The client secret.
        client_secret: Secret,
    },
}

impl Identity {
    /// A short, secret-free description for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Identity::PodIdentity { .. } => "pod identity (NMI)".into(),
            Identity::NodeManagedIdentity { client_id: None } => {
                "node system-assigned managed identity".into()
            }
            Identity::NodeManagedIdentity {
                client_id: Some(id),
            } => {
                format!("node user-assigned managed identity {id}")
            }
            Identity::ServicePrincipal { client_id, .. } => {
                format!("service principal {client_id}")
            }
        }
    }
}

/// The pod the volume belongs to, as kubelet reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    /// `kubernetes.io/pod.name`.
    pub name: Option<String>,
    /// `kubernetes.io/pod.namespace`.
    pub namespace: Option<String>,
    /// `kubernetes.io/pod.uid`.
    pub uid: Option<String>,
    /// `kubernetes.io/serviceAccount.name`.
    pub service_account: Option<String>,
}

/// One Key Vault object to fetch and the file(s) it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSpec {
    /// Vault name (not URL).
    pub vault: String,
    /// Object name in the vault.
    pub name: String,
    /// secret, key or cert.
    pub kind: ObjectKind,
    /// `None` = latest.
    pub version: Option<String>,
    /// File name in the volume (alias, or the object name).
    pub file: String,
    /// Output format and encoding.
    pub render: RenderOptions,
    /// Explicit file mode, if any.
    pub permission: Option<u32>,
    /// How many versions to write (`<file>/0` newest ...); 1 = a single file.
    pub version_history: u32,
    /// A missing object (404) is skipped instead of failing the mount.
    pub optional: bool,
}

/// Everything a mount needs, validated.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// Objects in the order given.
    pub objects: Vec<ObjectSpec>,
    /// Token source.
    pub identity: Identity,
    /// AAD tenant (required for a service principal).
    pub tenant: Option<String>,
    /// `cloudname` as given (resolved against the node config later).
    pub cloud: Option<String>,
    /// The pod.
    pub pod: Pod,
    /// `kubernetes.io/pvOrVolumeName`.
    pub volume_name: Option<String>,
    /// The pod's fsGroup.
    pub fs_group: Option<u32>,
    /// `kubernetes.io/readwrite` == "ro".
    pub read_only: bool,
    /// Volume-wide default file mode.
    pub file_permission: Option<u32>,
    /// Requested tmpfs size in bytes.
    pub tmpfs_size: Option<u64>,
    /// Keys kv does not know (logged as a warning; old specs carry `resourcegroup`).
    pub unknown_keys: Vec<String>,
}

/// The option keys kv reads, lower case.
const KNOWN_KEYS: &[&str] = &[
    "keyvaultname",
    "keyvaultobjectnames",
    "keyvaultobjectname",
    "keyvaultobjecttypes",
    "keyvaultobjecttype",
    "keyvaultobjectversions",
    "keyvaultobjectversion",
    "keyvaultobjectaliases",
    "keyvaultobjectformats",
    "keyvaultobjectencodings",
    "keyvaultobjectpermissions",
    "keyvaultsplitcertfiles",
    "filepermission",
    "tmpfssize",
    "objects",
    "tenantid",
    "cloudname",
    "usepodidentity",
    "usevmmanagedidentity",
    "vmmanagedidentityclientid",
    "nmiport",
    "kubernetes.io/fstype",
    "kubernetes.io/readwrite",
    "kubernetes.io/pvorvolumename",
    "kubernetes.io/pod.name",
    "kubernetes.io/pod.namespace",
    "kubernetes.io/pod.uid",
    "kubernetes.io/serviceaccount.name",
    "kubernetes.io/mounterargs.fsgroup",
    "kubernetes.io/fsgroup",
    "kubernetes.io/secret/clientid",
    "kubernetes.io/secret/clientsecret",
];

/// The most objects one volume may name: bounds requests and tmpfs inodes.
pub const MAX_OBJECTS: usize = 1000;
/// The most versions `objectVersionHistory` may ask for.
pub const MAX_VERSION_HISTORY: u32 = 50;

/// The options as given: lower-cased key → (key as written, value).
struct RawOptions(BTreeMap<String, (String, String)>);

impl RawOptions {
    fn parse(json: &str) -> Result<Self> {
        let pairs = Pairs::from_json(json)?;
        let mut map: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (key, value) in pairs.0 {
            let value = match value {
                Value::String(s) => s,
                other => {
                    return Err(Error::options(format!(
                        "option `{}` must be a string, found {}",
                        printable(&key),
                        json_type(&other)
                    )))
                }
            };
            let lower = key.to_ascii_lowercase();
            if let Some((first, _)) = map.get(&lower) {
                return Err(Error::options(format!(
                    "option `{}` is given twice (as `{}` and `{}`); keep one",
                    printable(&lower),
                    printable(first),
                    printable(&key)
                )));
            }
            map.insert(lower, (key, value));
        }
        Ok(RawOptions(map))
    }

    /// The value of a key, with surrounding whitespace trimmed; empty counts as absent.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|(_, v)| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn bool(&self, key: &str) -> Result<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).ok_or_else(|| {
                Error::options(format!(
                    "option `{key}` must be \"true\" or \"false\", found \"{}\"",
                    printable(v)
                ))
            }),
        }
    }

    /// A base64 secretRef value from kubelet, decoded; trailing newlines and spaces (common in
    /// `kubectl create secret --from-file`) are dropped.
    fn secret_ref(&self, name: &str) -> Result<Option<Secret>> {
        let key = format!("kubernetes.io/secret/{name}");
        let Some(b64) = self.get(&key) else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| {
                Error::options(format!(
                    "secretRef key `{name}` is not valid base64 (kubelet passes Secret data base64-encoded)"
                ))
            })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            Error::options(format!("secretRef key `{name}` is not valid UTF-8 text"))
        })?;
        let trimmed = text.trim_end_matches(['\n', '\r', ' ', '\t']).to_string();
        drop(zeroize::Zeroizing::new(text));
        if trimmed.is_empty() {
            return Ok(None);
        }
        Ok(Some(Secret::new(trimmed)))
    }
}

/// The JSON object's members in order, duplicates kept (serde_json's map would drop them).
struct Pairs(Vec<(String, Value)>);

impl Pairs {
    fn from_json(json: &str) -> Result<Self> {
        let mut de = serde_json::Deserializer::from_str(json);
        let pairs = de.deserialize_map(PairsVisitor).map_err(|e| {
            Error::options(format!(
                "the options are not a JSON object of strings ({}); kubelet passes flexVolume.options as one",
                json_error_kind(&e)
            ))
        })?;
        de.end().map_err(|_| {
            Error::options("the options JSON has trailing characters after the object")
        })?;
        Ok(pairs)
    }
}

struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Pairs;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Pairs, A::Error> {
        let mut pairs = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            pairs.push((k, v));
        }
        Ok(Pairs(pairs))
    }
}

fn json_error_kind(e: &serde_json::Error) -> String {
    // The position is useful; serde_json's message can quote input, which may be a secret.
    format!("invalid JSON at line {} column {}", e.line(), e.column())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Go's strconv.ParseBool, which the CSI provider uses, plus the v0.0.17 spellings.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" | "yes" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" | "no" => Some(false),
        _ => None,
    }
}

/// Vault names: 3–24 of letters, digits and hyphens, starting with a letter, ending with a
/// letter or digit, no consecutive hyphens (Azure's naming rules, which v0.0.17's unanchored
/// regex never enforced).
pub fn validate_vault_name(name: &str) -> Result<()> {
    let ok = (3..=24).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "keyvaultname \"{}\" is not a valid vault name: use 3-24 letters, digits and hyphens, starting with a letter, ending with a letter or digit, no \"--\"",
            printable(name)
        )))
    }
}

/// Object names: 1–127 of `[0-9A-Za-z-]`.
pub fn validate_object_name(name: &str) -> Result<()> {
    if (1..=127).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        Ok(())
    } else {
        Err(Error::options(format!(
            "object name \"{}\" is not a valid Key Vault object name: use 1-127 letters, digits and hyphens",
            printable(name)
        )))
    }
}

fn validate_version(object: &str, version: &str) -> Result<()> {
    if (1..=64).contains(&version.len()) && version.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(Error::options(format!(
            "version \"{}\" of object `{object}` is not a Key Vault version id (32 hex characters, or empty for the latest)",
            printable(version)
        )))
    }
}

/// A file name in the volume: one path component, nothing that could leave the volume.
pub fn validate_file_name(object: &str, file: &str) -> Result<()> {
    let bad = file.is_empty()
        || file.len() > 200
        || file == "."
        || file.contains("..")
        || file.contains('/')
        || file.contains('\\')
        || file.chars().any(|c| c.is_control());
    if bad {
        Err(Error::options(format!(
            "file name \"{}\" for object `{}` is not a single safe file name: no '/', no '..', no control characters, at most 200 bytes",
            printable(file),
            printable(object)
        )))
    } else {
        Ok(())
    }
}

fn parse_kind(object: &str, t: &str) -> Result<ObjectKind> {
    match t.to_ascii_lowercase().as_str() {
        "secret" => Ok(ObjectKind::Secret),
        "key" => Ok(ObjectKind::Key),
        "cert" | "certificate" => Ok(ObjectKind::Cert),
        _ => Err(Error::options(format!(
            "type \"{}\" of object `{}` is not one of secret, key, cert",
            printable(t),
            printable(object)
        ))),
    }
}

fn parse_format(object: &str, f: &str) -> Result<Option<Format>> {
    Ok(Some(match f.to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "pem" => Format::Pem,
        "pfx" => Format::Pfx,
        "der" => Format::Der,
        "jwk" => Format::Jwk,
        _ => {
            return Err(Error::options(format!(
                "format \"{}\" of object `{}` is not one of pem, pfx, der, jwk",
                printable(f),
                printable(object)
            )))
        }
    }))
}

fn parse_encoding(object: &str, e: &str) -> Result<Option<Encoding>> {
    Ok(Some(match e.to_ascii_lowercase().as_str() {
        "" => return Ok(None),
        "utf-8" | "utf8" => Encoding::Utf8,
        "base64" => Encoding::Base64,
        "hex" => Encoding::Hex,
        _ => {
            return Err(Error::options(format!(
                "encoding \"{}\" of object `{}` is not one of utf-8, base64, hex",
                printable(e),
                printable(object)
            )))
        }
    }))
}

/// An octal mode such as "0440"; only permission bits (no setuid, sticky).
pub fn parse_mode(what: &str, m: &str) -> Result<u32> {
    let digits = m.trim();
    let ok = (1..=4).contains(&digits.len()) && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let mode = if ok {
        u32::from_str_radix(digits, 8).ok()
    } else {
        None
    };
    match mode {
        Some(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(Error::options(format!(
            "{what} \"{}\" is not an octal file mode such as \"0440\" (permission bits only)",
            printable(m)
        ))),
    }
}

/// A size in bytes, or with a `Ki`, `Mi` or `Gi` suffix.
pub fn parse_size(what: &str, s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, mult) = if let Some(d) = s.strip_suffix("Ki") {
        (d, 1u64 << 10)
    } else if let Some(d) = s.strip_suffix("Mi") {
        (d, 1 << 20)
    } else if let Some(d) = s.strip_suffix("Gi") {
        (d, 1 << 30)
    } else {
        (s, 1)
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            Error::options(format!(
                "{what} \"{}\" is not a size: give bytes or a number with Ki/Mi/Gi, e.g. \"4Mi\"",
                printable(s)
            ))
        })
}

/// Splits a `;` list, trimming each item (v0.0.17 users wrote `a; b`).
fn split_list(v: &str) -> Vec<&str> {
    v.split(';').map(str::trim).collect()
}

/// An optional per-object `;` list: absent, or exactly one item per object.
fn per_object<'a>(raw: &'a RawOptions, key: &str, count: usize) -> Result<Option<Vec<&'a str>>> {
    let Some(v) = raw.get(key) else {
        return Ok(None);
    };
    let items = split_list(v);
    if items.len() != count {
        return Err(Error::options(format!(
            "option `{key}` has {} item(s) but keyvaultobjectnames has {count}: give one `;`-separated item per object (an empty item means the default)",
            items.len()
        )));
    }
    Ok(Some(items))
}

/// Reads a list option that has a legacy singular spelling; both at once is ambiguous.
fn plural_or_legacy<'a>(
    raw: &'a RawOptions,
    plural: &str,
    singular: &str,
) -> Result<Option<&'a str>> {
    match (raw.get(plural), raw.get(singular)) {
        (Some(_), Some(_)) => Err(Error::options(format!(
            "options `{plural}` and legacy `{singular}` are both given; keep `{plural}`"
        ))),
        (p, s) => Ok(p.or(s)),
    }
}

impl VolumeSpec {
    /// Parses and validates kubelet's options JSON.
    pub fn parse(json: &str) -> Result<VolumeSpec> {
        let raw = RawOptions::parse(json)?;
        let unknown_keys: Vec<String> = raw
            .0
            .iter()
            .filter(|(k, _)| !KNOWN_KEYS.contains(&k.as_str()))
            .map(|(_, (orig, _))| printable(orig))
            .collect();

        let pod = Pod {
            name: raw.get("kubernetes.io/pod.name").map(str::to_string),
            namespace: raw.get("kubernetes.io/pod.namespace").map(str::to_string),
            uid: raw.get("kubernetes.io/pod.uid").map(str::to_string),
            service_account: raw
                .get("kubernetes.io/serviceaccount.name")
                .map(str::to_string),
        };
        for (key, value) in [
            ("kubernetes.io/pod.name", &pod.name),
            ("kubernetes.io/pod.namespace", &pod.namespace),
        ] {
            if let Some(v) = value {
                validate_k8s_name(key, v)?;
            }
        }
        let fs_group = match raw
            .get("kubernetes.io/mounterargs.fsgroup")
            .or_else(|| raw.get("kubernetes.io/fsgroup"))
        {
            None => None,
            Some(g) => Some(g.parse::<u32>().map_err(|_| {
                Error::options(format!("fsGroup \"{}\" is not a group id", printable(g)))
            })?),
        };
        let read_only = raw.get("kubernetes.io/readwrite") == Some("ro");

        let identity = parse_identity(&raw, &pod)?;
        let tenant = raw.get("tenantid").map(str::to_string);
        if let Some(t) = &tenant {
            let ok = t.len() <= 253
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return Err(Error::options(format!(
                    "tenantid \"{}\" is not a tenant id (a GUID or a domain such as contoso.onmicrosoft.com)",
                    printable(t)
                )));
            }
        }
        if matches!(identity, Identity::ServicePrincipal { .. }) && tenant.is_none() {
            return Err(Error::options(
                "option `tenantid` is required with a service principal (secretRef clientid/clientsecret)",
            ));
        }

        let file_permission = raw
            .get("filepermission")
            .map(|m| parse_mode("filepermission", m))
            .transpose()?;
        let tmpfs_size = raw
            .get("tmpfssize")
            .map(|s| parse_size("tmpfssize", s))
            .transpose()?;

        let objects = if let Some(array) = raw.get("objects") {
            for key in [
                "keyvaultobjectnames",
                "keyvaultobjectname",
                "keyvaultobjecttypes",
                "keyvaultobjecttype",
                "keyvaultobjectversions",
                "keyvaultobjectversion",
                "keyvaultobjectaliases",
                "keyvaultobjectformats",
                "keyvaultobjectencodings",
                "keyvaultobjectpermissions",
            ] {
                if raw.get(key).is_some() {
                    return Err(Error::options(format!(
                        "options `objects` and `{key}` are both given: describe the objects either as the `objects` JSON array or as `;` lists, not both"
                    )));
                }
            }
            parse_objects_array(array, raw.get("keyvaultname"), split_default(&raw)?)?
        } else {
            parse_object_lists(&raw, split_default(&raw)?)?
        };
        check_unique_files(&objects)?;

        Ok(VolumeSpec {
            objects,
            identity,
            tenant,
            cloud: raw.get("cloudname").map(str::to_string),
            pod,
            volume_name: raw.get("kubernetes.io/pvorvolumename").map(str::to_string),
            fs_group,
            read_only,
            file_permission,
            tmpfs_size,
            unknown_keys,
        })
    }

    /// Distinct vault names, in first-use order.
    pub fn vaults(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.objects
            .iter()
            .map(|o| o.vault.as_str())
            .filter(|v| seen.insert(*v))
            .collect()
    }
}

fn split_default(raw: &RawOptions) -> Result<bool> {
    raw.bool("keyvaultsplitcertfiles")
}

fn validate_k8s_name(key: &str, v: &str) -> Result<()> {
    let ok = v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "`{key}` \"{}\" is not a Kubernetes name",
            printable(v)
        )))
    }
}

fn parse_identity(raw: &RawOptions, pod: &Pod) -> Result<Identity> {
    let pod_identity = raw.bool("usepodidentity")?;
    let node_identity = raw.bool("usevmmanagedidentity")?;
    let client_id = raw.secret_ref("clientid")?;
    let client_secret = raw.secret_ref("clientsecret")?;
    let has_sp = client_id.is_some() || client_secret.is_some();
    let node_client_id = raw.get("vmmanagedidentityclientid").map(str::to_string);
    let nmi_port = raw
        .get("nmiport")
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                Error::options(format!("nmiport \"{}\" is not a TCP port", printable(p)))
            })
        })
        .transpose()?;

    let chosen: Vec<&str> = [
        (pod_identity, "usepodidentity"),
        (node_identity, "usevmmanagedidentity"),
        (has_sp, "a secretRef with clientid/clientsecret"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect();
    if chosen.len() > 1 {
        return Err(Error::options(format!(
            "the options select more than one identity ({}); choose exactly one",
            chosen.join(" and ")
        )));
    }
    if node_client_id.is_some() && !node_identity {
        return Err(Error::options(
            "vmmanagedidentityclientid is set but usevmmanagedidentity is not \"true\"; set it, or remove the client id",
        ));
    }
    if nmi_port.is_some() && !pod_identity {
        return Err(Error::options(
            "nmiport is set but usepodidentity is not \"true\"; set it, or remove nmiport",
        ));
    }
    if let Some(id) = &node_client_id {
        validate_client_id("vmmanagedidentityclientid", id)?;
    }
    if pod_identity {
        if pod.name.is_none() || pod.namespace.is_none() {
            return Err(Error::options(
                "usepodidentity needs kubernetes.io/pod.name and kubernetes.io/pod.namespace, which kubelet 1.7+ sends; call kv as kubelet does",
            ));
        }
        return Ok(Identity::PodIdentity { nmi_port });
    }
    if node_identity {
        return Ok(Identity::NodeManagedIdentity {
            client_id: node_client_id,
        });
    }
    match (client_id, client_secret) {
        (Some(id), Some(secret)) => {
            validate_client_id("secretRef clientid", id.expose())?;
            Ok(Identity::ServicePrincipal {
                client_id: id.expose().to_string(),
                client_secret: secret,
            })
        }
        (Some(_), None) => Err(Error::options(
            "the secretRef Secret has `clientid` but no `clientsecret`; add it (kubectl create secret generic ... --from-literal clientsecret=... --type=azure/kv)",
        )),
        (None, Some(_)) => Err(Error::options(
            "the secretRef Secret has `clientsecret` but no `clientid`; add it",
        )),
        (None, None) => Err(Error::options(
            "no identity selected: set usepodidentity or usevmmanagedidentity to \"true\", or reference a Secret of type azure/kv holding clientid and clientsecret with secretRef",
        )),
    }
}

fn validate_client_id(what: &str, id: &str) -> Result<()> {
    let ok = (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::options(format!(
            "{what} is not a client id (a GUID)"
        )))
    }
}

fn parse_object_lists(raw: &RawOptions, split: bool) -> Result<Vec<ObjectSpec>> {
    let vault = raw.get("keyvaultname").ok_or_else(|| {
        Error::options("option `keyvaultname` is required: the name of the Key Vault (not its URL)")
    })?;
    validate_vault_name(vault)?;
    let names = plural_or_legacy(raw, "keyvaultobjectnames", "keyvaultobjectname")?
        .ok_or_else(|| {
            Error::options(
                "option `keyvaultobjectnames` is required: `;`-separated object names, e.g. \"db-password;tls-cert\"",
            )
        })?;
    let names = split_list(names);
    if names.len() > MAX_OBJECTS {
        return Err(Error::options(format!(
            "{} objects named; one volume takes at most {MAX_OBJECTS}",
            names.len()
        )));
    }
    let types = plural_or_legacy(raw, "keyvaultobjecttypes", "keyvaultobjecttype")?
        .ok_or_else(|| {
            Error::options(
                "option `keyvaultobjecttypes` is required: one of secret, key, cert per object, `;`-separated",
            )
        })?;
    let types = split_list(types);
    if types.len() != names.len() {
        return Err(Error::options(format!(
            "keyvaultobjecttypes has {} item(s) but keyvaultobjectnames has {}: give one type per object",
            types.len(),
            names.len()
        )));
    }
    let versions = match plural_or_legacy(raw, "keyvaultobjectversions", "keyvaultobjectversion")? {
        None => None,
        Some(v) => {
            let items = split_list(v);
            if items.len() != names.len() {
                return Err(Error::options(format!(
                    "keyvaultobjectversions has {} item(s) but keyvaultobjectnames has {}: give one per object, empty for the latest (v0.0.17 silently ignored a mismatch)",
                    items.len(),
                    names.len()
                )));
            }
            Some(items)
        }
    };
    let n = names.len();
    let aliases = per_object(raw, "keyvaultobjectaliases", n)?;
    let formats = per_object(raw, "keyvaultobjectformats", n)?;
    let encodings = per_object(raw, "keyvaultobjectencodings", n)?;
    let permissions = per_object(raw, "keyvaultobjectpermissions", n)?;

    let mut objects = Vec::with_capacity(n);
    for i in 0..n {
        let name = names[i];
        validate_object_name(name)?;
        let pick = |list: &Option<Vec<&'_ str>>| {
            list.as_ref()
                .map(|l| l[i])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let kind = parse_kind(name, types[i])?;
        let version = pick(&versions);
        if let Some(v) = &version {
            validate_version(name, v)?;
        }
        let file = pick(&aliases).unwrap_or_else(|| name.to_string());
        validate_file_name(name, &file)?;
        let render = RenderOptions {
            format: parse_format(name, &pick(&formats).unwrap_or_default())?,
            encoding: parse_encoding(name, &pick(&encodings).unwrap_or_default())?,
            split_cert_and_key: split && kind == ObjectKind::Secret,
        };
        check_render(name, kind, &render)?;
        let permission = pick(&permissions)
            .map(|m| parse_mode(&format!("permission of object `{name}`"), &m))
            .transpose()?;
        objects.push(ObjectSpec {
            vault: vault.to_string(),
            name: name.to_string(),
            kind,
            version,
            file,
            render,
            permission,
            version_history: 1,
            optional: false,
        });
    }
    Ok(objects)
}

fn check_render(name: &str, kind: ObjectKind, render: &RenderOptions) -> Result<()> {
    crate::render::validate_options(kind, render)
        .map_err(|e| Error::options(format!("object `{name}`: {e}")))
}

/// The CSI SecretProviderClass object fields, so a ported `objects` array works as is.
fn parse_objects_array(
    json: &str,
    default_vault: Option<&str>,
    split_default: bool,
) -> Result<Vec<ObjectSpec>> {
    let value: Value = serde_json::from_str(json).map_err(|e| {
        Error::options(format!(
            "option `objects` is not a JSON array of objects ({})",
            json_error_kind(&e)
        ))
    })?;
    let Value::Array(items) = value else {
        return Err(Error::options(format!(
            "option `objects` must be a JSON array of objects, found {}",
            json_type(&value)
        )));
    };
    if items.is_empty() {
        return Err(Error::options(
            "option `objects` is an empty array: name at least one object",
        ));
    }
    if items.len() > MAX_OBJECTS {
        return Err(Error::options(format!(
            "{} objects named; one volume takes at most {MAX_OBJECTS}",
            items.len()
        )));
    }
    if let Some(v) = default_vault {
        validate_vault_name(v)?;
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_object_item(i, item, default_vault, split_default))
        .collect()
}

fn parse_object_item(
    i: usize,
    item: &Value,
    default_vault: Option<&str>,
    split_default: bool,
) -> Result<ObjectSpec> {
    let at = format!("objects[{i}]");
    let Value::Object(fields) = item else {
        return Err(Error::options(format!(
            "{at} must be a JSON object, found {}",
            json_type(item)
        )));
    };
    let mut f: BTreeMap<String, &Value> = BTreeMap::new();
    for (k, v) in fields {
        let lower = k.to_ascii_lowercase();
        const FIELDS: &[&str] = &[
            "objectname",
            "objectalias",
            "objecttype",
            "objectversion",
            "objectformat",
            "objectencoding",
            "filepermission",
            "objectversionhistory",
            "keyvaultname",
            "optional",
            "splitcertandkey",
        ];
        if !FIELDS.contains(&lower.as_str()) {
            return Err(Error::options(format!(
                "{at} has unknown field `{}`; known: objectName, objectAlias, objectType, objectVersion, objectFormat, objectEncoding, filePermission, objectVersionHistory, keyvaultName, optional, splitCertAndKey",
                printable(k)
            )));
        }
        f.insert(lower, v);
    }
    let text = |key: &str, label: &str| -> Result<Option<String>> {
        match f.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
            Some(other) => Err(Error::options(format!(
                "{at}.{label} must be a string, found {}",
                json_type(other)
            ))),
        }
    };
    let flag = |key: &str, label: &str| -> Result<Option<bool>> {
        match f.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::String(s)) => parse_bool(s.trim())
                .map(Some)
                .ok_or_else(|| Error::options(format!("{at}.{label} must be true or false"))),
            Some(other) => Err(Error::options(format!(
                "{at}.{label} must be true or false, found {}",
                json_type(other)
            ))),
        }
    };
    let name = text("objectname", "objectName")?
        .ok_or_else(|| Error::options(format!("{at}.objectName is required")))?;
    validate_object_name(&name)?;
    let vault = match text("keyvaultname", "keyvaultName")? {
        Some(v) => {
            validate_vault_name(&v)?;
            v
        }
        None => default_vault
            .ok_or_else(|| {
                Error::options(format!(
                    "{at} names no vault: set `keyvaultName` on the object or the `keyvaultname` option"
                ))
            })?
            .to_string(),
    };
    let kind = parse_kind(
        &name,
        &text("objecttype", "objectType")?.ok_or_else(|| {
            Error::options(format!("{at}.objectType is required: secret, key or cert"))
        })?,
    )?;
    let version = text("objectversion", "objectVersion")?.filter(|v| v != "latest");
    if let Some(v) = &version {
        validate_version(&name, v)?;
    }
    let file = text("objectalias", "objectAlias")?.unwrap_or_else(|| name.clone());
    validate_file_name(&name, &file)?;
    let render = RenderOptions {
        format: parse_format(
            &name,
            &text("objectformat", "objectFormat")?.unwrap_or_default(),
        )?,
        encoding: parse_encoding(
            &name,
            &text("objectencoding", "objectEncoding")?.unwrap_or_default(),
        )?,
        split_cert_and_key: flag("splitcertandkey", "splitCertAndKey")?.unwrap_or(split_default)
            && kind == ObjectKind::Secret,
    };
    check_render(&name, kind, &render)?;
    let permission = text("filepermission", "filePermission")?
        .map(|m| parse_mode(&format!("{at}.filePermission"), &m))
        .transpose()?;
    let version_history = match f.get("objectversionhistory") {
        None | Some(Value::Null) => 1,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_u64(),
                Value::String(s) => s.trim().parse::<u64>().ok(),
                _ => None,
            };
            match n {
                Some(0) => 1,
                Some(n) if n <= u64::from(MAX_VERSION_HISTORY) => n as u32,
                _ => {
                    return Err(Error::options(format!(
                        "{at}.objectVersionHistory must be a number from 1 to {MAX_VERSION_HISTORY}"
                    )))
                }
            }
        }
    };
    Ok(ObjectSpec {
        vault,
        name,
        kind,
        version,
        file,
        render,
        permission,
        version_history,
        optional: flag("optional", "optional")?.unwrap_or(false),
    })
}

/// Two objects writing one file would silently lose one; v0.0.17 let the last win.
fn check_unique_files(objects: &[ObjectSpec]) -> Result<()> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for o in objects {
        let mut files = vec![o.file.clone()];
        if o.render.split_cert_and_key {
            files.push(format!("{}.crt", o.file));
            files.push(format!("{}.key", o.file));
        }
        for file in files {
            if let Some(other) = seen.insert(file.clone(), &o.name) {
                return Err(Error::options(format!(
                    "objects `{other}` and `{}` would both write the file \"{}\"; give one an alias",
                    o.name,
                    printable(&file)
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn base() -> serde_json::Map<String, Value> {
        serde_json::from_value(serde_json::json!({
            "keyvaultname": "kvdemo",
            "keyvaultobjectnames": "a;b;c",
            "keyvaultobjecttypes": "secret;key;cert",
            "usepodidentity": "true",
            "kubernetes.io/pod.name": "web-0",
            "kubernetes.io/pod.namespace": "demo",
            "kubernetes.io/fsType": "",
            "kubernetes.io/readwrite": "rw",
        }))
        .unwrap()
    }

    fn parse_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<VolumeSpec> {
        let mut m = base();
        edit(&mut m);
        VolumeSpec::parse(&Value::Object(m).to_string())
    }

    fn err_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Error {
        let e = parse_with(edit).unwrap_err();
        assert_eq!(e.code(), Code::Options, "{e}");
        e
    }

    #[test]
    fn v0017_pod_spec_parses() {
        let spec = parse_with(|m| {
            m.insert("keyvaultobjectnames".into(), " a ; b;c ".into());
            m.insert("keyvaultobjectaliases".into(), "A;;c.pem".into());
            m.insert(
                "keyvaultobjectversions".into(),
                ";0123456789abcdef0123456789abcdef;".into(),
            );
            m.insert("resourcegroup".into(), "rg".into());
            m.insert("kubernetes.io/mounterArgs.FsGroup".into(), "2000".into());
        })
        .unwrap();
        let files: Vec<_> = spec.objects.iter().map(|o| o.file.as_str()).collect();
        assert_eq!(files, ["A", "b", "c.pem"]);
        assert_eq!(
            spec.objects[1].version.as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(spec.objects[0].version, None);
        assert_eq!(spec.objects[2].kind, ObjectKind::Cert);
        assert_eq!(spec.identity, Identity::PodIdentity { nmi_port: None });
        assert_eq!(spec.fs_group, Some(2000));
        assert_eq!(spec.unknown_keys, vec!["resourcegroup".to_string()]);
    }

    #[test]
    fn legacy_singular_names_and_fsgroup() {
        let spec = parse_with(|m| {
            m.remove("keyvaultobjectnames");
            m.remove("keyvaultobjecttypes");
            m.insert("keyvaultobjectname".into(), "only".into());
            m.insert("keyvaultobjecttype".into(), "secret".into());
            m.insert("kubernetes.io/fsGroup".into(), "7".into());
        })
        .unwrap();
        assert_eq!(spec.objects.len(), 1);
        assert_eq!(spec.fs_group, Some(7));
    }

    #[test]
    fn keys_match_case_insensitively_but_not_twice() {
        let spec = parse_with(|m| {
            let v = m.remove("keyvaultname").unwrap();
            m.insert("KeyVaultName".into(), v);
        })
        .unwrap();
        assert_eq!(spec.objects[0].vault, "kvdemo");
        let e = err_with(|m| {
            m.insert("KEYVAULTNAME".into(), "other".into());
        });
        assert!(e.message().contains("given twice"), "{e}");
    }

    #[test]
    fn service_principal_from_secret_ref() {
        let spec = parse_with(|m| {
            m.remove("usepodidentity");
            m.insert(
                "tenantid".into(),
                "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            );
            m.insert(
                "kubernetes.io/secret/clientid".into(),
                b64("app-id\n").into(),
            );
            m.insert(
                "kubernetes.io/secret/clientsecret".into(),
                b64("s3cr3t \n").into(),
            );
        })
        .unwrap();
        match spec.identity {
            Identity::ServicePrincipal {
                client_id,
                client_secret,
            } => {
                assert_eq!(client_id, "app-id");
                assert_eq!(client_secret.expose(), "s3cr3t");
            }
            other => panic!("{other:?}"),
        }
    }

    type Edit = Box<dyn FnOnce(&mut serde_json::Map<String, Value>)>;

    #[test]
    fn validation_failures_name_the_option() {
        let cases: Vec<(&str, Edit)> = vec![
            (
                "keyvaultobjecttypes has 2",
                Box::new(|m| {
                    m.insert("keyvaultobjecttypes".into(), "secret;key".into());
                }),
            ),
            (
                "keyvaultobjectversions has 2",
                Box::new(|m| {
                    m.insert("keyvaultobjectversions".into(), ";".into());
                }),
            ),
            (
                "keyvaultobjectaliases",
                Box::new(|m| {
                    m.insert("keyvaultobjectaliases".into(), "x".into());
                }),
            ),
            (
                "not one of secret, key, cert",
                Box::new(|m| {
                    m.insert("keyvaultobjecttypes".into(), "secret;key;blob".into());
                }),
            ),
            (
                "more than one identity",
                Box::new(|m| {
                    m.insert("usevmmanagedidentity".into(), "true".into());
                }),
            ),
            (
                "not a valid vault name",
                Box::new(|m| {
                    m.insert("keyvaultname".into(), "a--b".into());
                }),
            ),
            (
                "not a valid vault name",
                Box::new(|m| {
                    m.insert("keyvaultname".into(), "1abc".into());
                }),
            ),
            (
                "not a valid vault name",
                Box::new(|m| {
                    m.insert("keyvaultname".into(), "https://x.vault.azure.net".into());
                }),
            ),
            (
                "not a valid Key Vault object name",
                Box::new(|m| {
                    m.insert("keyvaultobjectnames".into(), "a;b_c;d".into());
                }),
            ),
            (
                "not a single safe file name",
                Box::new(|m| {
                    m.insert(
                        "keyvaultobjectaliases".into(),
                        "../../etc/passwd;b;c".into(),
                    );
                }),
            ),
            (
                "not a single safe file name",
                Box::new(|m| {
                    m.insert("keyvaultobjectaliases".into(), "/etc/x;b;c".into());
                }),
            ),
            (
                "not a single safe file name",
                Box::new(|m| {
                    m.insert("keyvaultobjectaliases".into(), "a/b;b;c".into());
                }),
            ),
            (
                "would both write",
                Box::new(|m| {
                    m.insert("keyvaultobjectaliases".into(), "x;x;c".into());
                }),
            ),
            (
                "must be \"true\" or \"false\"",
                Box::new(|m| {
                    m.insert("usepodidentity".into(), "yes please".into());
                }),
            ),
            (
                "must be a string",
                Box::new(|m| {
                    m.insert("nmiport".into(), serde_json::json!(2579));
                }),
            ),
            (
                "is not a TCP port",
                Box::new(|m| {
                    m.insert("nmiport".into(), "99999".into());
                }),
            ),
            (
                "no identity selected",
                Box::new(|m| {
                    m.remove("usepodidentity");
                }),
            ),
            (
                "`tenantid` is required",
                Box::new(|m| {
                    m.remove("usepodidentity");
                    m.insert("kubernetes.io/secret/clientid".into(), b64("id").into());
                    m.insert("kubernetes.io/secret/clientsecret".into(), b64("s").into());
                }),
            ),
            (
                "not valid base64",
                Box::new(|m| {
                    m.insert("kubernetes.io/secret/clientsecret".into(), "%%%".into());
                }),
            ),
            (
                "vmmanagedidentityclientid is set",
                Box::new(|m| {
                    m.insert("vmmanagedidentityclientid".into(), "abc".into());
                }),
            ),
            (
                "`keyvaultname` is required",
                Box::new(|m| {
                    m.remove("keyvaultname");
                }),
            ),
            (
                "not a Key Vault version",
                Box::new(|m| {
                    m.insert("keyvaultobjectversions".into(), "x/y;;".into());
                }),
            ),
        ];
        for (want, edit) in cases {
            let e = err_with(edit);
            assert!(e.message().contains(want), "want {want:?} in {e}");
        }
    }

    #[test]
    fn hostile_json_is_a_clear_failure() {
        for bad in ["", "[]", "\"x\"", "{", "{\"a\":1}x", &"[".repeat(10_000)] {
            assert_eq!(VolumeSpec::parse(bad).unwrap_err().code(), Code::Options);
        }
        let e = VolumeSpec::parse(r#"{"keyvaultname":{"nested":{"deep":1}}}"#).unwrap_err();
        assert!(e.message().contains("must be a string"));
        let long = format!(r#"{{"keyvaultname":"{}"}}"#, "a".repeat(128 * 1024));
        assert!(VolumeSpec::parse(&long).unwrap_err().message().len() < 400);
    }

    #[test]
    fn objects_array_ports_a_secret_provider_class() {
        let spec = parse_with(|m| {
            m.remove("keyvaultobjectnames");
            m.remove("keyvaultobjecttypes");
            m.insert(
                "objects".into(),
                r#"[{"objectName":"web-cert","objectType":"secret","objectAlias":"tls.pem","filePermission":"0440","splitCertAndKey":true},
                    {"objectName":"k","objectType":"key","objectFormat":"JWK","keyvaultName":"kvother","optional":"true"},
                    {"objectName":"h","objectType":"secret","objectVersionHistory":"3","objectEncoding":"base64"}]"#
                    .into(),
            );
        })
        .unwrap();
        assert_eq!(spec.objects[0].file, "tls.pem");
        assert_eq!(spec.objects[0].permission, Some(0o440));
        assert!(spec.objects[0].render.split_cert_and_key);
        assert_eq!(spec.objects[1].vault, "kvother");
        assert!(spec.objects[1].optional);
        assert_eq!(spec.objects[2].version_history, 3);
        assert_eq!(spec.vaults(), vec!["kvdemo", "kvother"]);
    }

    #[test]
    fn objects_array_and_lists_do_not_mix() {
        let e = err_with(|m| {
            m.insert(
                "objects".into(),
                r#"[{"objectName":"a","objectType":"secret"}]"#.into(),
            );
        });
        assert!(e.message().contains("both given"), "{e}");
        let e = err_with(|m| {
            m.remove("keyvaultobjectnames");
            m.remove("keyvaultobjecttypes");
            m.insert(
                "objects".into(),
                r#"[{"objectName":"a","objectType":"secret","objectAlais":"x"}]"#.into(),
            );
        });
        assert!(e.message().contains("unknown field `objectAlais`"), "{e}");
    }

    #[test]
    fn modes_and_sizes() {
        assert_eq!(parse_mode("m", "0440").unwrap(), 0o440);
        assert_eq!(parse_mode("m", "644").unwrap(), 0o644);
        assert!(parse_mode("m", "4755").is_err());
        assert!(parse_mode("m", "0999").is_err());
        assert_eq!(parse_size("s", "4Mi").unwrap(), 4 << 20);
        assert_eq!(parse_size("s", "512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_size("s", "1000").unwrap(), 1000);
        assert!(parse_size("s", "-1").is_err());
        assert!(parse_size("s", "99999999999999999999Gi").is_err());
    }
}
