//! kubelet's options JSON → a validated [`VolumeSpec`]. Pure: no I/O, no network.
//!
//! kubelet passes a JSON object of strings: the pod author's `flexVolume.options` (the v0.0.17
//! names: `keyvaultname`, `;`-separated `keyvaultobject*` lists, ...), plus its own
//! `kubernetes.io/*` keys (pod identity, fsGroup, base64 secretRef values). Keys match
//! case-insensitively. Everything kv uses is validated here, so a mistake is reported before any
//! request is made and before anything touches the node.
//!
//! - [`raw`]: the JSON object and its keys;
//! - [`values`]: one option value each (names, modes, sizes, formats);
//! - [`identity`]: which identity the volume uses;
//! - [`objects`]: the objects, from the `;` lists or the `objects` array, through one builder;
//! - [`select`]: the `objects` entries that select objects by name pattern or tags.

mod identity;
mod objects;
mod raw;
mod select;
mod values;

pub use identity::{
    ClientCredential, Identity, ManagedIdentity, TokenFile, TokenPath, DEFAULT_TOKEN_PATH,
    TOKEN_EXCHANGE_AUDIENCE,
};
pub use objects::{
    check_unique_files, ObjectSpec, MAX_JSON_FIELDS, MAX_OBJECTS, MAX_VAULTS, MAX_VERSION_HISTORY,
};
pub use select::{NamePattern, Selection, MAX_PATTERN_BYTES, PATTERN_SIZE_LIMIT};
pub use values::{
    parse_bool, parse_mode, parse_size, validate_file_name, validate_object_name,
    validate_vault_name,
};

use crate::error::{printable, Error, Result};
use raw::RawOptions;
use std::collections::BTreeSet;
use values::validate_k8s_name;

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

/// Everything a mount needs, validated.
#[derive(Debug, Clone)]
pub struct VolumeSpec {
    /// Objects named by the pod, in the order given.
    pub objects: Vec<ObjectSpec>,
    /// Entries that select objects by name pattern and/or tags: listed and expanded into
    /// objects while fetching, again at every refresh.
    pub selections: Vec<Selection>,
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
    /// `rotationpollinterval`: the volume asks to follow Key Vault at this interval (before the
    /// node's bounds, [`crate::config::RotationPolicy`]).
    pub rotation_interval: Option<std::time::Duration>,
    /// Where workload identity's token is: set by the front-end (from the mount dir, or
    /// `kv fetch --token-file`), not by options.
    pub token_file: Option<TokenFile>,
    /// Keys kv does not know (logged as a warning; old specs carry `resourcegroup`).
    pub unknown_keys: Vec<String>,
}

/// The option keys kv reads, lower case (besides the per-object lists, [`objects::LIST_KEYS`]).
const KNOWN_KEYS: &[&str] = &[
    "keyvaultname",
    "keyvaultsplitcertfiles",
    "filepermission",
    "tmpfssize",
    "rotationpollinterval",
    "objects",
    "tenantid",
    "cloudname",
    "usepodidentity",
    "usevmmanagedidentity",
    "vmmanagedidentityclientid",
    "vmmanagedidentityresourceid",
    "useworkloadidentity",
    "clientid",
    "workloadidentitytokenpath",
    "nmiport",
    "rotationpollinterval",
    "kubernetes.io/fstype",
    "kubernetes.io/readwrite",
    "kubernetes.io/pvorvolumename",
    "kubernetes.io/pod.name",
    "kubernetes.io/pod.namespace",
    "kubernetes.io/pod.uid",
    "kubernetes.io/serviceaccount.name",
    "kubernetes.io/mounterargs.fsgroup",
    "kubernetes.io/secret/clientid",
    "kubernetes.io/secret/clientsecret",
    "kubernetes.io/secret/clientcertificate",
    "kubernetes.io/secret/clientcertificatepfx",
    "kubernetes.io/secret/clientcertificatepassword",
];

impl VolumeSpec {
    /// Parses and validates kubelet's options JSON.
    pub fn parse(json: &str) -> Result<VolumeSpec> {
        let raw = RawOptions::parse(json)?;
        let unknown_keys: Vec<String> = raw
            .0
            .iter()
            .filter(|(k, _)| {
                !KNOWN_KEYS.contains(&k.as_str()) && !objects::LIST_KEYS.contains(&k.as_str())
            })
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
        // Only the key kubelet sends. A pod without an fsGroup can set this key in its own
        // options and so pick the group of its files (see the README); no other spelling is
        // honoured, so a pod cannot override what kubelet sent.
        let fs_group = match raw.get("kubernetes.io/mounterargs.fsgroup") {
            None => None,
            Some(g) => Some(g.parse::<u32>().map_err(|_| {
                Error::options(format!("fsGroup \"{}\" is not a group id", printable(g)))
            })?),
        };
        let read_only = raw.get("kubernetes.io/readwrite") == Some("ro");

        let identity = identity::parse_identity(&raw, &pod)?;
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
        if tenant.is_none() {
            match identity {
                Identity::ServicePrincipal { .. } => return Err(Error::options(
                    "option `tenantid` is required with a service principal (secretRef clientid/clientsecret)",
                )),
                Identity::WorkloadIdentity { .. } => return Err(Error::options(
                    "option `tenantid` is required with useworkloadidentity: the tenant of the federated identity",
                )),
                _ => {}
            }
        }

        let file_permission = raw
            .get("filepermission")
            .map(|m| values::parse_mode("filepermission", m))
            .transpose()?;
        let tmpfs_size = raw
            .get("tmpfssize")
            .map(|s| values::parse_size("tmpfssize", s))
            .transpose()?;

        let rotation_interval = raw
            .get("rotationpollinterval")
            .map(|d| {
                crate::duration::parse(d)
                    .map_err(|e| Error::options(format!("rotationpollinterval: {}", e.message())))
                    .and_then(|d| match d.is_zero() {
                        true => Err(Error::options(
                            "rotationpollinterval is 0: give an interval such as 2m, or remove the option",
                        )),
                        false => Ok(d),
                    })
            })
            .transpose()?;

        let (objects, selections) = objects::parse(&raw)?;

        Ok(VolumeSpec {
            objects,
            selections,
            identity,
            tenant,
            cloud: raw.get("cloudname").map(str::to_string),
            pod,
            volume_name: raw.get("kubernetes.io/pvorvolumename").map(str::to_string),
            fs_group,
            read_only,
            file_permission,
            tmpfs_size,
            rotation_interval,
            token_file: None,
            unknown_keys,
        })
    }

    /// Distinct vault names, in first-use order: those of the named objects, then those the
    /// selections list (the node policy checks every one).
    pub fn vaults(&self) -> Vec<&str> {
        let mut seen = BTreeSet::new();
        self.objects
            .iter()
            .chain(self.selections.iter().map(|s| &s.template))
            .map(|o| o.vault.as_str())
            .filter(|v| seen.insert(*v))
            .collect()
    }
}

#[cfg(test)]
mod tests;
