//! Token cache keys: a token is reused only by a caller that would have received the same
//! token, so a key holds everything that decides which token an identity provider hands out,
//! and a service principal's credential as a keyed hash (HMAC-SHA256 with the node key): a
//! caller with a wrong or old secret derives another key and never sees the cached token, and
//! the cache holds nothing a secret could be guessed back from offline.

use super::private;
use crate::cloud::Cloud;
use hmac::{Hmac, Mac};
use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use zeroize::Zeroizing;

/// Which node identity IMDS is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeId<'a> {
    /// The system-assigned identity.
    System,
    /// A user-assigned identity by client id.
    ClientId(&'a str),
    /// A user-assigned identity by ARM resource id.
    ResourceId(&'a str),
}

/// Who a token is for: everything that decides which token the identity provider returns.
/// `cloud` is the whole resolved cloud (every endpoint), so a custom cloud whose endpoints change
/// under the same name does not reuse tokens; `resource` is the token's audience.
#[derive(Clone, Copy)]
pub enum Identity<'a> {
    /// The node's managed identity through IMDS. Check the namespace policy before asking
    /// the cache: a cached node token is as good as the node identity itself.
    NodeIdentity {
        /// The resolved cloud.
        cloud: &'a Cloud,
        /// Token audience.
        resource: &'a str,
        /// System- or user-assigned.
        id: NodeId<'a>,
    },
    /// AAD client credentials.
    ServicePrincipal {
        /// The resolved cloud.
        cloud: &'a Cloud,
        /// Token audience.
        resource: &'a str,
        /// Authority host actually used.
        authority: &'a str,
        /// Tenant id.
        tenant: &'a str,
        /// Application (client) id.
        client_id: &'a str,
        /// The client secret's bytes, or the certificate with its key: only its keyed hash is
        /// kept.
        credential: &'a [u8],
    },
    /// A federated (workload identity) assertion exchanged at AAD.
    WorkloadIdentity {
        /// The resolved cloud.
        cloud: &'a Cloud,
        /// Token audience.
        resource: &'a str,
        /// Tenant id.
        tenant: &'a str,
        /// Application (client) id.
        client_id: &'a str,
        /// The assertion's `iss`.
        issuer: &'a str,
        /// The assertion's `sub` (the service account).
        subject: &'a str,
    },
    /// A pod's own identity through NMI, which authorises per pod: never shared between pods,
    /// nor between two incarnations of a pod name.
    PodIdentity {
        /// The resolved cloud.
        cloud: &'a Cloud,
        /// Token audience.
        resource: &'a str,
        /// The NMI endpoint asked (e.g. `127.0.0.1:2579`).
        nmi: &'a str,
        /// Pod namespace.
        namespace: &'a str,
        /// Pod name.
        name: &'a str,
        /// Pod uid (kubelet's `kubernetes.io/pod.uid`).
        uid: &'a str,
    },
}

/// The kind of identity a cache entry belongs to (shown by `kv doctor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// [`Identity::NodeIdentity`].
    NodeIdentity,
    /// [`Identity::ServicePrincipal`].
    ServicePrincipal,
    /// [`Identity::WorkloadIdentity`].
    WorkloadIdentity,
    /// [`Identity::PodIdentity`].
    PodIdentity,
}

impl Kind {
    /// The stable text form, e.g. `node-identity`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::NodeIdentity => "node-identity",
            Kind::ServicePrincipal => "service-principal",
            Kind::WorkloadIdentity => "workload-identity",
            Kind::PodIdentity => "pod-identity",
        }
    }
}

/// The canonical form hashed into a key; field order is fixed by the declaration.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum Canonical<'a> {
    NodeIdentity {
        cloud: CloudKey<'a>,
        resource: &'a str,
        id: NodeId<'a>,
    },
    ServicePrincipal {
        cloud: CloudKey<'a>,
        resource: &'a str,
        authority: &'a str,
        tenant: &'a str,
        client_id: &'a str,
        credential_hmac: String,
    },
    WorkloadIdentity {
        cloud: CloudKey<'a>,
        resource: &'a str,
        tenant: &'a str,
        client_id: &'a str,
        issuer: &'a str,
        subject: &'a str,
    },
    PodIdentity {
        cloud: CloudKey<'a>,
        resource: &'a str,
        nmi: &'a str,
        namespace: &'a str,
        name: &'a str,
        uid: &'a str,
    },
}

#[derive(Serialize)]
struct CloudKey<'a> {
    name: &'a str,
    authority_host: &'a str,
    vault_dns_suffix: &'a str,
    vault_resource: &'a str,
}

impl<'a> CloudKey<'a> {
    fn of(c: &'a Cloud) -> Self {
        CloudKey {
            name: &c.name,
            authority_host: &c.authority_host,
            vault_dns_suffix: &c.vault_dns_suffix,
            vault_resource: &c.vault_resource,
        }
    }
}

/// A cache key: the canonical identity (stored inside the entry and compared on read), and the
/// entry's file name, the hex SHA-256 of it (no identity text in names).
#[derive(Clone, PartialEq, Eq)]
pub struct CacheKey {
    canonical: String,
    name: String,
    kind: Kind,
    label: String,
}

impl CacheKey {
    /// The key of `identity`; `node_key` keys the credential hash.
    pub(super) fn new(identity: &Identity<'_>, node_key: &NodeKey) -> io::Result<CacheKey> {
        let (kind, label, canonical) = match *identity {
            Identity::NodeIdentity {
                cloud,
                resource,
                id,
            } => (
                Kind::NodeIdentity,
                match id {
                    NodeId::System => "system-assigned".to_owned(),
                    NodeId::ClientId(c) => format!("client {c}"),
                    NodeId::ResourceId(r) => format!("resource {r}"),
                },
                Canonical::NodeIdentity {
                    cloud: CloudKey::of(cloud),
                    resource,
                    id,
                },
            ),
            Identity::ServicePrincipal {
                cloud,
                resource,
                authority,
                tenant,
                client_id,
                credential,
            } => (
                Kind::ServicePrincipal,
                format!("client {client_id} in tenant {tenant}"),
                Canonical::ServicePrincipal {
                    cloud: CloudKey::of(cloud),
                    resource,
                    authority,
                    tenant,
                    client_id,
                    credential_hmac: node_key.hash(credential),
                },
            ),
            Identity::WorkloadIdentity {
                cloud,
                resource,
                tenant,
                client_id,
                issuer,
                subject,
            } => (
                Kind::WorkloadIdentity,
                format!("client {client_id} for {subject}"),
                Canonical::WorkloadIdentity {
                    cloud: CloudKey::of(cloud),
                    resource,
                    tenant,
                    client_id,
                    issuer,
                    subject,
                },
            ),
            Identity::PodIdentity {
                cloud,
                resource,
                nmi,
                namespace,
                name,
                uid,
            } => (
                Kind::PodIdentity,
                format!("pod {namespace}/{name}"),
                Canonical::PodIdentity {
                    cloud: CloudKey::of(cloud),
                    resource,
                    nmi,
                    namespace,
                    name,
                    uid,
                },
            ),
        };
        let json = serde_json::to_string(&canonical)?;
        let canonical = format!("{CANONICAL_PREFIX}{json}");
        let name = hex::encode(Sha256::digest(canonical.as_bytes()));
        let label = format!("{label} for {}", resource_of(identity));
        Ok(CacheKey {
            canonical,
            name,
            kind,
            label,
        })
    }

    /// The entry's file name (64 hex digits).
    pub fn file_name(&self) -> &str {
        &self.name
    }

    /// The kind of identity.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// A secret-free description (client id, tenant, pod, resource) for `kv doctor` and logs.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub(super) fn canonical(&self) -> &str {
        &self.canonical
    }
}

/// What every canonical key starts with (its format version), before the JSON.
const CANONICAL_PREFIX: &str = "kv-token-cache/1 ";

/// The pod uid in a pod-identity key's canonical form (as stored in a cache entry).
pub(super) fn pod_uid_of(canonical: &str) -> Option<String> {
    let json = canonical.strip_prefix(CANONICAL_PREFIX)?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    if v.get("kind")?.as_str()? != "pod-identity" {
        return None;
    }
    v.get("uid")?.as_str().map(str::to_owned)
}

fn resource_of<'a>(identity: &Identity<'a>) -> &'a str {
    match *identity {
        Identity::NodeIdentity { resource, .. }
        | Identity::ServicePrincipal { resource, .. }
        | Identity::WorkloadIdentity { resource, .. }
        | Identity::PodIdentity { resource, .. } => resource,
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({}: {})", self.kind.as_str(), self.label)
    }
}

/// The node key for keyed credential hashes: 32 random bytes in `tokens/.key` (0600), made once
/// per boot (tmpfs), so a hash is worthless off this node and after a reboot.
pub(super) struct NodeKey(Zeroizing<[u8; 32]>);

impl NodeKey {
    const FILE: &'static str = ".key";

    /// Reads the node key, creating it if missing or damaged. Concurrent creators agree: the
    /// first one to link its complete file into place wins, and everyone uses what is on disk.
    pub(super) fn load_or_create(dir: &OwnedFd) -> io::Result<NodeKey> {
        static STAGED: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..3 {
            if let Some(key) = Self::read(dir) {
                return Ok(key);
            }
            let mut key = Zeroizing::new([0u8; 32]);
            std::fs::File::open("/dev/urandom")?.read_exact(key.as_mut())?;
            // Unique per thread and process: a shared staging name could be swapped under us.
            let staged = format!(
                ".key.{}.{}.new",
                std::process::id(),
                STAGED.fetch_add(1, Ordering::Relaxed)
            );
            private::write(dir, &staged, key.as_ref())?;
            let linked = rustix::fs::linkat(
                dir,
                staged.as_str(),
                dir,
                Self::FILE,
                rustix::fs::AtFlags::empty(),
            );
            private::remove(dir, &staged);
            match linked {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Self::read(dir).ok_or_else(|| io::Error::other("the node key keeps changing"))
    }

    /// The node key on disk, if intact (a damaged one is removed).
    fn read(dir: &OwnedFd) -> Option<NodeKey> {
        let bytes = private::read(dir, Self::FILE)?;
        match <[u8; 32]>::try_from(bytes.as_slice()) {
            Ok(key) => Some(NodeKey(Zeroizing::new(key))),
            Err(_) => {
                private::remove(dir, Self::FILE);
                None
            }
        }
    }

    fn hash(&self, credential: &[u8]) -> String {
        const DOMAIN: &[u8] = b"kv credential\0";
        match Hmac::<Sha256>::new_from_slice(self.0.as_ref()) {
            Ok(mac) => hex::encode(
                mac.chain_update(DOMAIN)
                    .chain_update(credential)
                    .finalize()
                    .into_bytes(),
            ),
            // HMAC takes keys of any length, so this never runs; if it did, a hash that still
            // tells credentials apart.
            Err(_) => hex::encode(
                Sha256::new()
                    .chain_update(self.0.as_ref())
                    .chain_update(DOMAIN)
                    .chain_update(credential)
                    .finalize(),
            ),
        }
    }
}
