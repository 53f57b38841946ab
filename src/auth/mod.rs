//! Azure AD tokens for Key Vault: one source per identity mode, fetched once per call.
//!
//! The token request starts at process start (see `mount`), concurrently with the vault's first
//! (challenged) request, and every later asker awaits the same result, so a mount makes exactly
//! one token request per resource however many objects it fetches. [`Credential`] hands the
//! token to the Azure SDK's Key Vault clients as an azure_core `TokenCredential`.
//!
//! On a node ([`Provider::on_node`]) tokens also go through the node's token cache
//! ([`crate::nodestate::tokens`]), so a burst of mounts of one identity costs one token request
//! across every kv process: see [`Provider::fetch`] for the keys.

mod aad;
mod imds;
pub mod jwt;
mod nmi;
pub mod projected;
mod request;

pub use aad::AadCredential;

use crate::cloud::Cloud;
use crate::error::{Error, Result};
use crate::nodestate::{self, NodeState};
use crate::options::{ClientCredential, Identity, ManagedIdentity, VolumeSpec};
use crate::secret::Secret;
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::OnceCell;

pub use crate::retry::{Deadline, OUTER_GRACE};

/// An access token and when it expires.
#[derive(Clone)]
pub struct Token {
    /// The bearer token.
    pub access_token: Secret,
    /// Unix seconds.
    pub expires_on: i64,
}

/// Where tokens come from, with what the source needs.
#[derive(Debug, Clone)]
pub enum Source {
    /// NMI on the node.
    Nmi {
        /// NMI port.
        port: u16,
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// Pod uid (kubelet's `kubernetes.io/pod.uid`; empty when not given): a token cached
        /// for one incarnation of a pod name is not used by the next.
        uid: String,
    },
    /// IMDS.
    Imds {
        /// Which of the node's identities.
        id: ManagedIdentity,
    },
    /// AAD's client-credentials grant (service principal or workload identity).
    Aad {
        /// Authority host, e.g. `https://login.microsoftonline.com`.
        authority: String,
        /// Tenant id.
        tenant: String,
        /// Application (or user-assigned identity) client id.
        client_id: String,
        /// The secret, certificate or federated token.
        credential: AadCredential,
    },
}

impl Source {
    /// Builds the source for a validated volume.
    pub fn for_volume(spec: &VolumeSpec, authority: &str, default_nmi_port: u16) -> Result<Source> {
        let aad = |client_id: &str, credential| Source::Aad {
            authority: authority.to_string(),
            tenant: spec.tenant.clone().unwrap_or_default(),
            client_id: client_id.to_string(),
            credential,
        };
        Ok(match &spec.identity {
            Identity::PodIdentity { nmi_port } => Source::Nmi {
                port: nmi_port.unwrap_or(default_nmi_port),
                namespace: spec.pod.namespace.clone().unwrap_or_default(),
                pod: spec.pod.name.clone().unwrap_or_default(),
                uid: spec.pod.uid.clone().unwrap_or_default(),
            },
            Identity::NodeManagedIdentity { id } => Source::Imds { id: id.clone() },
            Identity::ServicePrincipal {
                client_id,
                credential: ClientCredential::Secret(secret),
            } => aad(client_id, AadCredential::Secret(secret.clone())),
            Identity::ServicePrincipal {
                client_id,
                credential: ClientCredential::Certificate(certificate),
            } => aad(client_id, AadCredential::Certificate(certificate.clone())),
            Identity::WorkloadIdentity { client_id, .. } => {
                let token = spec.token_file.clone().ok_or_else(|| {
                    Error::new(
                        crate::error::Code::SaToken,
                        "workload identity needs the pod's token: kv finds it from kubelet's mount dir, or kv fetch --token-file",
                    )
                })?;
                let binding = projected::Binding::for_token(&token, &spec.pod)?;
                aad(client_id, AadCredential::Federated { token, binding })
            }
        })
    }
}

type Slot = Arc<OnceCell<Result<Token>>>;

/// What a provider shares with the other kv processes of its node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node state (`/run/kv`, or kv.json's `stateDir`).
    pub state: NodeState,
    /// The resolved cloud: part of every cache key.
    pub cloud: Cloud,
    /// Whether tokens go through the node's token cache (kv.json `tokenCache`).
    pub cache: bool,
    /// Most requests in flight to one vault from the node (kv.json `vaultRequestsPerNode`).
    pub vault_requests: usize,
    /// Ask NMI even when the cache holds the pod's token (and store the new one): NMI decides
    /// at every rotation refresh whether the pod still has its identity.
    pub reauthorize_pods: bool,
    /// The namespace the requests are made for: its fair share of the node's request slots.
    pub owner: Option<String>,
    /// The node policy lets that namespace use any node identity (`"*"`): a request for the
    /// system-assigned identity may then be answered with the VM's only user-assigned one.
    pub any_node_identity: bool,
}

impl Node {
    /// The node settings of `config` for a volume in `cloud`.
    pub fn of(config: &crate::config::NodeConfig, cloud: &Cloud) -> Node {
        Node {
            state: config.node_state(),
            cloud: cloud.clone(),
            cache: config.token_cache(),
            vault_requests: config.vault_requests_per_node() as usize,
            reauthorize_pods: false,
            owner: None,
            any_node_identity: false,
        }
    }
}

/// Fetches and caches tokens for one call.
pub struct Provider {
    source: Source,
    http: reqwest::Client,
    deadline: Deadline,
    /// The node's shared state; `None` for a probe that must ask its source (`kv doctor`).
    node: Option<Node>,
    slots: Mutex<HashMap<String, Slot>>,
    /// The client id the token belongs to, when the source tells (NMI, IMDS user-assigned, SP).
    client_id: Mutex<Option<String>>,
    /// The last token error, for callers that only see the SDK's untyped copy.
    last_error: Mutex<Option<Error>>,
    /// The node cache entry this call's token came from or went to, so a token a service
    /// rejects can be dropped for the next mount.
    cached: Mutex<Option<nodestate::CacheKey>>,
}

impl Provider {
    /// A provider that asks its source directly (no node cache, slots or throttle records);
    /// nothing is fetched until [`Provider::token`].
    pub fn new(source: Source, http: reqwest::Client, deadline: Deadline) -> Arc<Provider> {
        Provider::build(source, http, deadline, None)
    }

    /// A provider sharing tokens, request slots and throttle records with every kv process of
    /// the node.
    pub fn on_node(
        source: Source,
        http: reqwest::Client,
        deadline: Deadline,
        node: Node,
    ) -> Arc<Provider> {
        Provider::build(source, http, deadline, Some(node))
    }

    /// The node settings, if this provider runs on one.
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    fn build(
        source: Source,
        http: reqwest::Client,
        deadline: Deadline,
        node: Option<Node>,
    ) -> Arc<Provider> {
        let client_id = match &source {
            Source::Imds {
                id: ManagedIdentity::ClientId(id) | ManagedIdentity::ResourceId(id),
            } => Some(id.clone()),
            Source::Aad { client_id, .. } => Some(client_id.clone()),
            Source::Imds { .. } | Source::Nmi { .. } => None,
        };
        Arc::new(Provider {
            source,
            http,
            deadline,
            node,
            slots: Mutex::new(HashMap::new()),
            client_id: Mutex::new(client_id),
            last_error: Mutex::new(None),
            cached: Mutex::new(None),
        })
    }

    /// Whether the token for `resource` is already at hand (a successful fetch ended: from the
    /// node's cache, at process start), without waiting or starting one.
    pub fn ready(&self, resource: &str) -> bool {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .get(resource)
            .and_then(|slot| slot.get())
            .is_some_and(|token| token.is_ok())
    }

    /// The token for `resource` (e.g. `https://vault.azure.net`), fetched once.
    pub async fn token(&self, resource: &str) -> Result<Token> {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots.entry(resource.to_string()).or_default().clone()
        };
        slot.get_or_init(|| self.fetch(resource)).await.clone()
    }

    async fn fetch(&self, resource: &str) -> Result<Token> {
        let started = Instant::now();
        let result = self.fetch_shared(resource).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        match &result {
            Ok((_, cached)) => crate::log::info(
                "token",
                serde_json::json!({"source": self.kind(), "resource": resource, "ms": ms, "cached": cached}),
            ),
            Err(e) => {
                crate::log::error(
                    "token",
                    serde_json::json!({"source": self.kind(), "resource": resource, "ms": ms, "error": e.to_string()}),
                );
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
            }
        }
        result.map(|(token, _)| token)
    }

    /// The token from the node's cache when it holds one for exactly this caller, else from the
    /// source, once per node: get → lock (wait for a request another process has in flight)
    /// → get again → ask → put. The key (see [`nodestate::Identity`]) holds everything that
    /// decides which token the source hands out, so only a caller that would have received the
    /// same token reuses it; the node policy has already allowed the caller
    /// (`pipeline::resolve` runs before any token is asked). `true` when it came from the cache.
    async fn fetch_shared(&self, resource: &str) -> Result<(Token, bool)> {
        // Workload identity: the pod's token is read and checked first; its issuer and subject
        // are part of the key, and nothing is reused for a token that is not valid.
        let assertion = match &self.source {
            Source::Aad { credential, .. } => aad::assertion(credential, &self.deadline).await?,
            _ => None,
        };
        // A service-account token that kv cannot tie to a pod and service account (`kv fetch
        // --token-file` without --namespace and --service-account) says nothing about whose
        // cached token it may reuse: it is exchanged at AAD, which verifies it.
        let unbound = matches!(
            &self.source,
            Source::Aad {
                credential: AadCredential::Federated { binding: None, .. },
                ..
            }
        );
        let node = match &self.node {
            Some(node) if node.cache && !unbound => node,
            _ => {
                return self
                    .ask(resource, assertion.as_ref())
                    .await
                    .map(|t| (t, false))
            }
        };
        let cache = match node.state.tokens() {
            Ok(cache) => cache,
            Err(e) => {
                // A node whose state cannot be used still mounts; each process asks on its own.
                crate::log::warn("token_cache", serde_json::json!({"error": e.to_string()}));
                return self
                    .ask(resource, assertion.as_ref())
                    .await
                    .map(|t| (t, false));
            }
        };
        let credential = self.credential_bytes();
        let nmi = match &self.source {
            Source::Nmi { port, .. } => format!("127.0.0.1:{port}"),
            _ => String::new(),
        };
        let identity = self.cache_identity(node, resource, assertion.as_ref(), &credential, &nmi);
        let key = cache.key(&identity)?;
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = Some(key.clone());
        let margin = nodestate::tokens::DEFAULT_MARGIN;
        let reuse = !(node.reauthorize_pods && matches!(self.source, Source::Nmi { .. }));
        if let Some(hit) = cache.get(&key, margin).filter(|_| reuse) {
            return self.checked(from_cached(hit)).map(|t| (t, true));
        }
        let _lock = cache.lock_async(&key, self.deadline.instant()).await?;
        // Whoever held the lock before us may have just stored it.
        if let Some(hit) = cache.get(&key, margin).filter(|_| reuse) {
            return self.checked(from_cached(hit)).map(|t| (t, true));
        }
        let token = self.ask(resource, assertion.as_ref()).await?;
        let entry = nodestate::CachedToken {
            token: token.access_token.clone(),
            expires_on: token.expires_on,
        };
        if let Err(e) = cache.put(&key, &entry) {
            crate::log::warn("token_cache", serde_json::json!({"error": e.to_string()}));
        }
        Ok((token, false))
    }

    /// Drops this call's token from the node cache: Key Vault rejected it (401), so the next
    /// mount asks the source again instead of reusing it until it expires.
    pub fn distrust_token(&self) {
        let key = self.cached.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(key), Some(node)) = (key, &self.node) else {
            return;
        };
        if let Ok(cache) = node.state.tokens() {
            cache.forget(&key);
            crate::log::warn(
                "token_cache",
                serde_json::json!({"forgot": key.label(), "why": "Key Vault answered 401"}),
            );
        }
    }

    /// What identifies the credential in a service principal's key (hashed with the node key
    /// before it is stored): the secret's bytes, or the certificate's DER and its key.
    fn credential_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        match &self.source {
            Source::Aad {
                credential: AadCredential::Secret(secret),
                ..
            } => {
                bytes.extend_from_slice(b"secret\0");
                bytes.extend_from_slice(secret.expose().as_bytes());
            }
            Source::Aad {
                credential: AadCredential::Certificate(certificate),
                ..
            } => {
                // Length-prefixed, so no two (certificate, key) pairs give the same bytes.
                bytes.extend_from_slice(b"certificate\0");
                bytes.extend_from_slice(&(certificate.cert_der.len() as u64).to_be_bytes());
                bytes.extend_from_slice(&certificate.cert_der);
                bytes.extend_from_slice(&certificate.key_pkcs8);
            }
            _ => {}
        }
        bytes
    }

    /// The cache identity of this source for `resource`.
    fn cache_identity<'a>(
        &'a self,
        node: &'a Node,
        resource: &'a str,
        assertion: Option<&'a aad::Assertion>,
        credential: &'a [u8],
        nmi: &'a str,
    ) -> nodestate::Identity<'a> {
        let cloud = &node.cloud;
        match &self.source {
            Source::Imds { id } => nodestate::Identity::NodeIdentity {
                cloud,
                resource,
                id: match id {
                    ManagedIdentity::System => nodestate::NodeId::System,
                    ManagedIdentity::ClientId(c) => nodestate::NodeId::ClientId(c),
                    ManagedIdentity::ResourceId(r) => nodestate::NodeId::ResourceId(r),
                },
            },
            Source::Nmi {
                namespace,
                pod,
                uid,
                ..
            } => nodestate::Identity::PodIdentity {
                cloud,
                resource,
                nmi,
                namespace,
                name: pod,
                uid,
            },
            Source::Aad {
                tenant, client_id, ..
            } if assertion.is_some() => {
                let (issuer, subject) = assertion
                    .map(|(_, c)| (c.issuer.as_str(), c.subject.as_str()))
                    .unwrap_or_default();
                nodestate::Identity::WorkloadIdentity {
                    cloud,
                    resource,
                    tenant,
                    client_id,
                    issuer,
                    subject,
                }
            }
            Source::Aad {
                authority,
                tenant,
                client_id,
                ..
            } => nodestate::Identity::ServicePrincipal {
                cloud,
                resource,
                authority,
                tenant,
                client_id,
                credential,
            },
        }
    }

    /// A token of the node's system-assigned identity must be one: IMDS answers a request that
    /// names no identity with the VM's only user-assigned identity when it has no
    /// system-assigned one (an AKS node pool's kubelet identity), and `"system"` in the node
    /// policy must not grant that (a namespace allowed `"*"`, any node identity, may have it).
    /// The token's `xms_mirid` names the identity's resource. Checked on cached tokens too: the
    /// cache key is the identity asked for, not the policy that allowed it.
    fn checked(&self, token: Token) -> Result<Token> {
        let any = self.node.as_ref().is_some_and(|n| n.any_node_identity);
        if let (
            Source::Imds {
                id: ManagedIdentity::System,
            },
            false,
        ) = (&self.source, any)
        {
            if let Some(mirid) = jwt::string_claim(token.access_token.expose(), "xms_mirid") {
                if mirid
                    .to_ascii_lowercase()
                    .contains("/providers/microsoft.managedidentity/userassignedidentities/")
                {
                    return Err(Error::new(
                        crate::error::Code::Policy,
                        format!(
                            "IMDS answered the request for the node's system-assigned identity with the user-assigned identity {} (the VM has no system-assigned identity): \"system\" in policy.nodeIdentities means the VM's own identity only; to use this one, name it with vmmanagedidentityclientid and have the cluster operator list its client id in policy.nodeIdentities",
                            // Whole (a resource id is longer than `printable` keeps), escaped.
                            mirid
                                .chars()
                                .take(512)
                                .flat_map(char::escape_debug)
                                .collect::<String>()
                        ),
                    ));
                }
            }
        }
        Ok(token)
    }

    /// Asks the source itself.
    async fn ask(&self, resource: &str, assertion: Option<&aad::Assertion>) -> Result<Token> {
        let token = self.ask_source(resource, assertion).await?;
        self.checked(token)
    }

    async fn ask_source(
        &self,
        resource: &str,
        assertion: Option<&aad::Assertion>,
    ) -> Result<Token> {
        let node = self.node.as_ref();
        match &self.source {
            Source::Nmi {
                port,
                namespace,
                pod,
                ..
            } => nmi::fetch(&self.http, *port, namespace, pod, resource, &self.deadline)
                .await
                .map(|(token, client_id)| {
                    *self.client_id.lock().unwrap_or_else(|p| p.into_inner()) = client_id;
                    token
                }),
            Source::Imds { id } => {
                imds::fetch(&self.http, id, resource, node, &self.deadline).await
            }
            Source::Aad {
                authority,
                tenant,
                client_id,
                credential,
            } => {
                aad::fetch(
                    &self.http,
                    authority,
                    tenant,
                    client_id,
                    credential,
                    assertion,
                    resource,
                    node,
                    &self.deadline,
                )
                .await
            }
        }
    }

    /// The service a token is still awaited from, if one is: a stall there is not Key Vault's.
    pub fn pending(&self) -> Option<&'static str> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .values()
            .any(|slot| slot.get().is_none())
            .then_some(match self.source {
                Source::Nmi { .. } => "NMI",
                Source::Imds { .. } => "IMDS",
                Source::Aad { .. } => "AAD",
            })
    }

    /// The last token error, if a token request failed.
    pub fn last_error(&self) -> Option<Error> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The identity as a user would name it in a Key Vault access policy.
    pub fn identity_name(&self) -> String {
        let id = self
            .client_id
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match (&self.source, id) {
            (Source::Nmi { namespace, pod, .. }, Some(id)) => {
                format!("pod identity {id} of {namespace}/{pod}")
            }
            (Source::Nmi { namespace, pod, .. }, None) => {
                format!("pod identity of {namespace}/{pod}")
            }
            (
                Source::Imds {
                    id: ManagedIdentity::System,
                },
                _,
            ) => "the node's system-assigned managed identity".into(),
            (Source::Imds { .. }, Some(id)) => format!("managed identity {id}"),
            (Source::Imds { .. }, None) => "managed identity".into(),
            (
                Source::Aad {
                    credential: AadCredential::Federated { .. },
                    ..
                },
                Some(id),
            ) => format!("workload identity {id}"),
            (Source::Aad { .. }, Some(id)) => format!("service principal {id}"),
            (Source::Aad { .. }, None) => "service principal".into(),
        }
    }

    fn kind(&self) -> &'static str {
        match self.source {
            Source::Nmi { .. } => "nmi",
            Source::Imds { .. } => "imds",
            Source::Aad { .. } => "aad",
        }
    }
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kv::auth::Provider")
    }
}

/// The SDK-facing side of a [`Provider`].
#[derive(Clone)]
pub struct Credential(pub Arc<Provider>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("kv::auth::Credential")
    }
}

/// `https://vault.azure.net/.default` → `https://vault.azure.net`.
pub fn scope_to_resource(scope: &str) -> &str {
    scope.strip_suffix("/.default").unwrap_or(scope)
}

#[async_trait]
impl TokenCredential for Credential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let resource = scopes
            .first()
            .map(|s| scope_to_resource(s))
            .unwrap_or_default();
        match self.0.token(resource).await {
            Ok(t) => Ok(AccessToken::new(
                t.access_token.expose().to_string(),
                time::OffsetDateTime::from_unix_timestamp(t.expires_on)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            )),
            // The SDK only carries this text; `keyvault` asks the provider again for the typed error.
            Err(e) => Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                e.to_string(),
            )),
        }
    }
}

fn from_cached(hit: nodestate::CachedToken) -> Token {
    Token {
        access_token: hit.token,
        expires_on: hit.expires_on,
    }
}

/// Reads a token response number that may be a JSON string or number (NMI v1.5 sent numbers).
fn number_field(v: &serde_json::Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses a token response body (NMI's `token`, IMDS, AAD v1 or v2); public for fuzzing.
pub fn parse_token(body: &serde_json::Value) -> Option<Token> {
    let access = body.get("access_token")?.as_str()?.to_string();
    if access.is_empty() {
        return None;
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expires_on = number_field(body, "expires_on")
        .or_else(|| number_field(body, "expires_in").map(|s| now + s))
        .unwrap_or(now + 300);
    Some(Token {
        access_token: Secret::new(access),
        expires_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_fields_may_be_strings_or_numbers() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"access_token":"a","expires_on":"1700000000"}"#).unwrap();
        assert_eq!(parse_token(&v).unwrap().expires_on, 1_700_000_000);
        let v: serde_json::Value =
            serde_json::from_str(r#"{"access_token":"a","expires_on":1700000000}"#).unwrap();
        assert_eq!(parse_token(&v).unwrap().expires_on, 1_700_000_000);
        let v: serde_json::Value =
            serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        assert!(parse_token(&v).unwrap().expires_on > 1_700_000_000);
        let v: serde_json::Value = serde_json::from_str(r#"{"access_token":""}"#).unwrap();
        assert!(parse_token(&v).is_none());
        assert_eq!(
            scope_to_resource("https://vault.azure.net/.default"),
            "https://vault.azure.net"
        );
    }
}
