//! Fetching every object of a volume from Key Vault, concurrently, with the official SDK clients.
//!
//! Request plan for one mount (the network floor is one round trip once a token is at hand):
//! - the token request starts at once (see [`crate::pipeline::fetch`]); when the node's token
//!   cache holds the token, it is at hand before any object request is set up;
//! - per vault, the first object's request goes out at once: with the token when it is at
//!   hand (no challenge: the token's resource comes from the cloud, and the vault's host is
//!   one kv built from it, reached over TLS); otherwise without, so Key Vault's 401 challenge
//!   (which tells the SDK the token scope, and which the SDK checks against the vault's host)
//!   overlaps the token request;
//! - every other object of the vault waits for the token and for the vault's connection to
//!   be up, then rides that connection, so a vault costs at most one challenge and one TLS
//!   handshake however many objects it holds.
//!
//! On a node each request is admitted by [`crate::nodestate::admission`] in the transport,
//! after the SDK's authorization step: it holds its process's slot for the vault only while on
//! the wire, never while waiting for its token.
//!
//! Errors are mapped to catalogue codes that name the identity, vault, object and version.

use crate::auth::{Credential, Provider};
use crate::cloud::Cloud;
use crate::error::{Code, Error, Result};
use crate::options::ObjectSpec;
use crate::render::{self, KeyMaterial, ObjectKind, RenderedFile};
use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{
    ClientOptions, Context, DeserializeWith, Format, Request, RetryOptions, Transport,
};
use azure_security_keyvault_certificates::{
    models::CertificateClientGetCertificateOptions, CertificateClient, CertificateClientOptions,
};
use azure_security_keyvault_keys::{models::KeyClientGetKeyOptions, KeyClient, KeyClientOptions};
use azure_security_keyvault_secrets::{
    models::SecretClientGetSecretOptions, SecretClient, SecretClientOptions,
};
use futures::future::join_all;
use std::sync::Arc;
use std::time::Instant;

mod select;

/// One object's rendered files, relative to the volume root.
pub struct FetchedObject {
    /// Index into the objects given to [`Fetcher::fetch_all`] (a volume's named objects, then
    /// its selections' matches).
    pub index: usize,
    /// `(relative path, rendered file)`; empty when an optional object was missing.
    pub files: Vec<(String, RenderedFile)>,
}

/// Adds the prefetched token to requests that skip the challenge.
#[derive(Debug)]
struct PrefetchedBearer {
    provider: Arc<Provider>,
    resource: String,
}

#[async_trait]
impl Policy for PrefetchedBearer {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        if let Ok(token) = self.provider.token(&self.resource).await {
            request.insert_header(
                "authorization",
                format!("Bearer {}", token.access_token.expose()),
            );
        }
        // Without a token the request goes unauthenticated; the SDK's challenge handling then
        // asks the credential, which reports the token error.
        next[0].send(ctx, request, &next[1..]).await
    }
}

/// Retries Key Vault's transient answers (429 and 503 honouring the Retry-After headers, 408,
/// 500, 502, 504, connection resets) through the one retry loop ([`crate::retry::run`]), never
/// 400/401/403/404. When the next wait would pass the deadline it returns the last answer at
/// once, so the user sees "throttled" or "HTTP 500" instead of a bare timeout. Node-wide
/// admission is the transport's, per try ([`crate::http::BoundedTransport`]).
#[derive(Debug)]
struct DeadlineRetry {
    deadline: crate::retry::Deadline,
}

const KEYVAULT_BACKOFF: crate::retry::Backoff = crate::retry::Backoff {
    first: std::time::Duration::from_millis(100),
    max: std::time::Duration::from_secs(2),
    // Attempts per request at most: bounds the requests one mount can make.
    max_attempts: 8,
};

#[async_trait]
impl Policy for DeadlineRetry {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        use crate::retry::{Attempt, Ended};
        use azure_core::error::ErrorKind;
        let what = format!("Key Vault {}", request.url().path());
        // Each attempt sends a fresh copy: what later policies add (authorization) is per try.
        let original: &Request = request;
        let ended = crate::retry::run(&what, &self.deadline, KEYVAULT_BACKOFF, |_| {
            let mut request = original.clone();
            async move {
                let result = next[0].send(ctx, &mut request, &next[1..]).await;
                let (retry, after, why) = match &result {
                    Ok(resp) => {
                        let status = u16::from(resp.status());
                        match status {
                            429 | 503 => {
                                (true, crate::http::retry_after_sdk(resp.headers()), status)
                            }
                            408 | 500 | 502 | 504 => (true, None, status),
                            _ => (false, None, status),
                        }
                    }
                    Err(e) => (
                        matches!(e.kind(), ErrorKind::Io | ErrorKind::Connection),
                        None,
                        0,
                    ),
                };
                if retry {
                    let why = match &result {
                        Err(e) => crate::http::root_cause(e),
                        Ok(_) => format!("HTTP {why}"),
                    };
                    Attempt::Retry {
                        after,
                        outcome: result,
                        why,
                    }
                } else {
                    Attempt::Done(result)
                }
            }
        })
        .await;
        match ended {
            Ended::Done(result) | Ended::OutOfAttempts(result) | Ended::OutOfTime(Some(result)) => {
                result
            }
            // Nothing came back before the deadline: the call's outer timeout (OUTER_GRACE
            // later) reports the stall with its cause (a pending token, or Key Vault itself).
            Ended::OutOfTime(None) => std::future::pending().await,
        }
    }
}

/// The three SDK clients of one vault.
struct VaultClients {
    secrets: SecretClient,
    keys: KeyClient,
    certs: CertificateClient,
}

impl VaultClients {
    fn new(
        url: &str,
        credential: &Credential,
        client_options: ClientOptions,
    ) -> Result<VaultClients> {
        let cred: Arc<dyn azure_core::credentials::TokenCredential> = Arc::new(credential.clone());
        let sdk = |e: azure_core::Error| {
            Error::new(Code::Internal, format!("Key Vault client for {url}: {e}"))
        };
        Ok(VaultClients {
            secrets: SecretClient::new(
                url,
                cred.clone(),
                Some(SecretClientOptions {
                    client_options: client_options.clone(),
                    ..Default::default()
                }),
            )
            .map_err(sdk)?,
            keys: KeyClient::new(
                url,
                cred.clone(),
                Some(KeyClientOptions {
                    client_options: client_options.clone(),
                    ..Default::default()
                }),
            )
            .map_err(sdk)?,
            certs: CertificateClient::new(
                url,
                cred,
                Some(CertificateClientOptions {
                    client_options,
                    ..Default::default()
                }),
            )
            .map_err(sdk)?,
        })
    }
}

/// One Key Vault answer, before rendering.
#[derive(Clone)]
enum Raw {
    Secret(azure_security_keyvault_secrets::models::Secret),
    Key(azure_security_keyvault_keys::models::Key),
    Cert(azure_security_keyvault_certificates::models::Certificate),
}

/// (vault, kind, name, version), case-folded as Key Vault folds them.
type ObjectKey = (String, &'static str, String, Option<String>);

/// What the concurrent fetches of one volume share.
#[derive(Default)]
struct Shared {
    cache: std::sync::Mutex<
        std::collections::HashMap<ObjectKey, Arc<tokio::sync::OnceCell<Result<Raw>>>>,
    >,
    budget: Budget,
}

/// The volume's bounds, applied while fetching: a volume over them stops as soon as it is
/// known to be, instead of after every object is in memory (memory charged to kubelet).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of tmpfs the files may take (node config `tmpfsMaxBytes`).
    pub max_bytes: u64,
    /// Files the volume may hold (node config `maxFilesPerVolume`).
    pub max_files: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: crate::config::DEFAULT_TMPFS_MAX_BYTES,
            max_files: crate::config::DEFAULT_MAX_FILES_PER_VOLUME,
        }
    }
}

/// The running totals against [`Limits`].
#[derive(Debug, Default)]
struct Budget {
    limits: Limits,
    used: std::sync::Mutex<(u64, u64)>,
}

impl Budget {
    /// Counts one object version's files (tmpfs charges whole pages).
    fn charge(&self, files: &[RenderedFile], o: &ObjectSpec) -> Result<()> {
        let bytes: u64 = files
            .iter()
            .map(|f| crate::volume::page_bytes(f.bytes.len()))
            .sum();
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        used.0 += bytes;
        used.1 += files.len() as u64;
        if used.1 > u64::from(self.limits.max_files) {
            return Err(too_many_files(self.limits.max_files));
        }
        if used.0 > self.limits.max_bytes {
            return Err(Error::new(
                Code::Mount,
                format!(
                    "the objects need more than {} bytes of tmpfs, above this node's cap (node config tmpfsMaxBytes); kv stopped fetching at `{}` in vault {}",
                    self.limits.max_bytes, o.name, o.vault
                ),
            ));
        }
        Ok(())
    }
}

fn too_many_files(max: u32) -> Error {
    Error::new(
        Code::Mount,
        format!("the volume would hold more than {max} files, this node's cap (node config maxFilesPerVolume); name fewer objects or a smaller objectVersionHistory"),
    )
}

/// What the fetch needs.
pub struct Fetcher {
    /// The call's TLS setup: each vault gets a client of its own (its own connection and
    /// signal that it is up).
    pub tls: rustls::ClientConfig,
    /// Token provider.
    pub provider: Arc<Provider>,
    /// Cloud of every vault in the volume.
    pub cloud: Cloud,
    /// The call's deadline.
    pub deadline: crate::retry::Deadline,
    /// The volume's bounds.
    pub limits: Limits,
}

/// Raised once a vault's first connection is up (or its first request ended without one): its
/// other requests then share it.
type Connected = tokio::sync::watch::Receiver<bool>;

/// One vault of the volume: the clients that send the token with every request, and the
/// signal that its connection is up.
struct Vault<'a> {
    name: &'a str,
    bearer: Arc<VaultClients>,
    connected: Connected,
}

/// An object's part in its vault's plan.
enum Turn {
    /// The vault's first object: it goes at once, and raises the signal when it ends, whatever
    /// its outcome (a request refused before it connected must not leave the others waiting).
    First(crate::http::Connected),
    /// Another object: it waits for the token and the signal.
    Next(Connected),
}

impl Fetcher {
    fn client_options(
        &self,
        bearer: bool,
        client: &reqwest::Client,
        admission: &Option<Arc<crate::nodestate::Admission>>,
    ) -> ClientOptions {
        let mut options = ClientOptions {
            transport: Some(Transport::new(Arc::new(crate::http::BoundedTransport {
                client: client.clone(),
                admission: admission.clone().map(|a| (a, self.deadline)),
            }))),
            // kv's own retry policy (below) knows the deadline; the SDK's would sleep past it.
            retry: RetryOptions::none(),
            ..Default::default()
        };
        options.per_call_policies.push(Arc::new(DeadlineRetry {
            deadline: self.deadline,
        }));
        if bearer {
            options.per_try_policies.push(Arc::new(PrefetchedBearer {
                provider: self.provider.clone(),
                resource: self.cloud.vault_resource.clone(),
            }));
        }
        options
    }

    /// The node's admission of requests to `host`: its throttle window, and a slot of its
    /// set shared by this process's requests in flight, a fair share per namespace.
    fn admission(&self, host: &str) -> Option<Arc<crate::nodestate::Admission>> {
        let node = self.provider.node()?;
        let gate = crate::nodestate::Gate {
            throttle: host.to_string(),
            service: format!("Key Vault {host}"),
            slots: Some((
                crate::nodestate::slots::vault_set(host),
                node.vault_requests,
            )),
            owner: node.owner.clone(),
        };
        Some(Arc::new(crate::nodestate::Admission::shared(
            node.state.clone(),
            gate,
        )))
    }

    /// Fetches and renders every object; the first failure (in object order) wins.
    pub async fn fetch_all(&self, objects: &[ObjectSpec]) -> Result<Vec<FetchedObject>> {
        // Every object that is not optional is at least one file: refuse before any request
        // when that is already too many.
        let at_least = objects.iter().filter(|o| !o.optional).count() as u64;
        if at_least > u64::from(self.limits.max_files) {
            return Err(too_many_files(self.limits.max_files));
        }
        let shared = Shared {
            budget: Budget {
                limits: self.limits,
                ..Default::default()
            },
            ..Default::default()
        };
        let shared = &shared;
        let credential = Credential(self.provider.clone());
        // The node's cache had the token: every request carries it, none is challenged.
        let warm = self.provider.ready(&self.cloud.vault_resource);
        // Per object, in order: the clients it uses, and what it waits for. The first object of
        // each vault goes at once; the rest wait for the token and the vault's connection.
        let mut vaults: Vec<Vault<'_>> = Vec::new();
        let mut plan: Vec<(Arc<VaultClients>, Turn)> = Vec::with_capacity(objects.len());
        for o in objects {
            if let Some(v) = vaults.iter().find(|v| v.name == o.vault) {
                plan.push((v.bearer.clone(), Turn::Next(v.connected.clone())));
                continue;
            }
            let url = self.cloud.vault_url(&o.vault);
            let host = format!("{}.{}", o.vault, self.cloud.vault_dns_suffix).to_ascii_lowercase();
            let (signal, connected) = crate::http::Connected::new(&host);
            let client = crate::http::client_with(self.tls.clone(), Some(signal.clone()))?;
            let admission = self.admission(&host);
            let bearer = Arc::new(VaultClients::new(
                &url,
                &credential,
                self.client_options(true, &client, &admission),
            )?);
            let first = if warm {
                bearer.clone()
            } else {
                Arc::new(VaultClients::new(
                    &url,
                    &credential,
                    self.client_options(false, &client, &admission),
                )?)
            };
            vaults.push(Vault {
                name: o.vault.as_str(),
                bearer,
                connected,
            });
            plan.push((first, Turn::First(signal)));
        }
        let futures =
            objects
                .iter()
                .zip(plan)
                .enumerate()
                .map(|(index, (o, (clients, turn)))| async move {
                    match turn {
                        Turn::First(signal) => {
                            let fetched = self.fetch_one(index, o, &clients, shared).await;
                            signal.raise();
                            fetched
                        }
                        Turn::Next(mut connected) => {
                            // Park before the SDK builds the request, so the token request and each
                            // vault's first request leave first instead of after N request setups.
                            // Without a token there is nothing to send.
                            self.provider.token(&self.cloud.vault_resource).await?;
                            // Then wait for the vault's connection, so every request rides the one
                            // HTTP/2 connection the first opened instead of each opening its own; a
                            // few turns of the runtime let the client put it in its pool.
                            let _ = connected.wait_for(|up| *up).await;
                            for _ in 0..3 {
                                tokio::task::yield_now().await;
                            }
                            self.fetch_one(index, o, &clients, shared).await
                        }
                    }
                });
        let results = tokio::time::timeout(
            self.deadline.remaining() + crate::retry::OUTER_GRACE,
            join_all(futures),
        )
        .await
        .map_err(|_| self.stalled())?;
        results.into_iter().collect()
    }

    /// Why the requests did not finish before the deadline.
    fn stalled(&self) -> Error {
        match (self.provider.pending(), self.provider.last_error()) {
            // Still waiting for the token, or it failed: that service is the cause, not Key Vault.
            (Some(service), last) => self.deadline.expired(service, last),
            (None, Some(token_error)) => token_error,
            (None, None) => Error::new(
                Code::Timeout,
                format!(
                    "timed out after {}s fetching from Key Vault (requests stalled or kept being retried; the kv log has each attempt)",
                    self.deadline.total().as_secs_f64()
                ),
            ),
        }
    }

    async fn fetch_one(
        &self,
        index: usize,
        o: &ObjectSpec,
        clients: &VaultClients,
        shared: &Shared,
    ) -> Result<FetchedObject> {
        let started = Instant::now();
        let versions: Vec<Option<String>> = if o.version_history > 1 {
            self.list_versions(o, clients)
                .await?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![o.version.clone()]
        };
        let mut files = Vec::new();
        for (i, version) in versions.iter().enumerate() {
            let rendered = match self.get_raw(o, clients, version.as_deref(), shared).await {
                Ok(raw) => self.render(o, raw)?,
                Err(e) if e.code() == Code::NotFound && o.optional => {
                    crate::log::warn(
                        "optional_missing",
                        serde_json::json!({"vault": o.vault, "object": o.name, "version": version}),
                    );
                    return Ok(FetchedObject {
                        index,
                        files: Vec::new(),
                    });
                }
                Err(e) => return Err(e),
            };
            shared.budget.charge(&rendered, o)?;
            for f in rendered {
                files.push((o.path_of(i, &f), f));
            }
        }
        crate::log::info(
            "fetched",
            serde_json::json!({"vault": o.vault, "object": o.name, "type": kind_name(o.kind), "version": o.version,
                "files": files.len(), "ms": started.elapsed().as_secs_f64() * 1000.0}),
        );
        Ok(FetchedObject { index, files })
    }

    /// The object's answer from Key Vault, fetched once per (vault, kind, name, version) however
    /// many objects of the volume name it (aliases, formats, split files of one certificate).
    async fn get_raw(
        &self,
        o: &ObjectSpec,
        clients: &VaultClients,
        version: Option<&str>,
        shared: &Shared,
    ) -> Result<Raw> {
        let key = (
            o.vault.to_ascii_lowercase(),
            kind_name(o.kind),
            o.name.to_ascii_lowercase(),
            version.map(str::to_ascii_lowercase),
        );
        let slot = {
            let mut cache = shared.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.entry(key).or_default().clone()
        };
        slot.get_or_init(|| self.fetch_raw(o, clients, version))
            .await
            .clone()
    }

    async fn fetch_raw(
        &self,
        o: &ObjectSpec,
        clients: &VaultClients,
        version: Option<&str>,
    ) -> Result<Raw> {
        // The three clients have the same call with different option and model types.
        macro_rules! get {
            ($client:ident . $method:ident, $options:ident { $version:ident }, $raw:ident) => {{
                let resp = clients
                    .$client
                    .$method(
                        &o.name,
                        Some($options {
                            $version: version.map(str::to_string),
                            ..Default::default()
                        }),
                    )
                    .await;
                self.model(o, version, resp).map(Raw::$raw)
            }};
        }
        match o.kind {
            ObjectKind::Secret => get!(
                secrets.get_secret,
                SecretClientGetSecretOptions { secret_version },
                Secret
            ),
            ObjectKind::Key => get!(keys.get_key, KeyClientGetKeyOptions { key_version }, Key),
            ObjectKind::Cert => get!(
                certs.get_certificate,
                CertificateClientGetCertificateOptions {
                    certificate_version
                },
                Cert
            ),
        }
    }

    /// The files of one answer, rendered with the object's options.
    fn render(&self, o: &ObjectSpec, raw: Raw) -> Result<Vec<RenderedFile>> {
        let render_err = |e: render::RenderError| {
            Error::new(
                Code::Render,
                format!("vault {} object `{}`: {e}", o.vault, o.name),
            )
        };
        match raw {
            Raw::Secret(secret) => {
                let value = zeroize::Zeroizing::new(secret.value.unwrap_or_default());
                render::render_secret(
                    &o.name,
                    &value,
                    secret.content_type.as_deref(),
                    secret.kid.is_some(),
                    &o.render,
                )
                .and_then(|files| render::fields::extract(&o.name, files, &o.json_fields))
                .map_err(render_err)
            }
            Raw::Key(key) => {
                let jwk = key.key.ok_or_else(|| {
                    Error::new(
                        Code::Vault,
                        format!(
                            "vault {} returned key `{}` without its JWK",
                            o.vault, o.name
                        ),
                    )
                })?;
                let material = KeyMaterial {
                    kty: enum_text(&jwk.kty),
                    crv: jwk.crv.as_ref().map(|c| enum_text(&Some(c))),
                    n: jwk.n,
                    e: jwk.e,
                    x: jwk.x,
                    y: jwk.y,
                    kid: jwk.kid,
                };
                render::render_key(&o.name, &material, &o.render).map_err(render_err)
            }
            Raw::Cert(cert) => {
                let der = cert.cer.ok_or_else(|| {
                    Error::new(
                        Code::Vault,
                        format!(
                            "vault {} returned certificate `{}` without `cer`",
                            o.vault, o.name
                        ),
                    )
                })?;
                render::render_cert(&o.name, &der, &o.render).map_err(render_err)
            }
        }
    }

    /// The model of a Key Vault answer, its request id logged, errors mapped.
    fn model<T: DeserializeWith<F>, F: Format>(
        &self,
        o: &ObjectSpec,
        version: Option<&str>,
        response: azure_core::Result<azure_core::http::Response<T, F>>,
    ) -> Result<T> {
        let response = response.map_err(|e| self.map_sdk_error(o, version, e))?;
        log_request_id(o, response.headers());
        response
            .into_model()
            .map_err(|e| self.map_sdk_error(o, version, e))
    }

    /// The newest `version_history` enabled versions, newest first, starting at `o.version`.
    async fn list_versions(&self, o: &ObjectSpec, clients: &VaultClients) -> Result<Vec<String>> {
        use futures::TryStreamExt;
        let mut found: Vec<(i64, String)> = Vec::new();
        let map = |e| self.map_sdk_error(o, None, e);
        let version_of =
            |id: Option<String>| id.and_then(|id| id.rsplit('/').next().map(str::to_string));
        // The three pagers have different item types with the same shape.
        macro_rules! collect_enabled {
            ($pager:expr, $id:ident) => {{
                let mut pager = $pager.map_err(map)?;
                while let Some(p) = pager.try_next().await.map_err(map)? {
                    let attrs = p.attributes.unwrap_or_default();
                    if attrs.enabled != Some(false) {
                        if let Some(v) = version_of(p.$id) {
                            found.push((attrs.created.map(|t| t.unix_timestamp()).unwrap_or(0), v));
                        }
                    }
                }
            }};
        }
        match o.kind {
            ObjectKind::Secret => collect_enabled!(
                clients
                    .secrets
                    .list_secret_properties_versions(&o.name, None),
                id
            ),
            ObjectKind::Key => collect_enabled!(
                clients.keys.list_key_properties_versions(&o.name, None),
                kid
            ),
            ObjectKind::Cert => collect_enabled!(
                clients
                    .certs
                    .list_certificate_properties_versions(&o.name, None),
                id
            ),
        }
        found.sort_by_key(|f| std::cmp::Reverse(f.0));
        let start = match &o.version {
            None => 0,
            Some(v) => found
                .iter()
                .position(|(_, x)| x.eq_ignore_ascii_case(v))
                .ok_or_else(|| {
                    Error::new(
                        Code::NotFound,
                        format!(
                            "vault {} has no enabled version {v} of `{}`",
                            o.vault, o.name
                        ),
                    )
                })?,
        };
        let versions: Vec<String> = found
            .into_iter()
            .skip(start)
            .take(o.version_history as usize)
            .map(|(_, v)| v)
            .collect();
        if versions.is_empty() {
            return Err(Error::new(
                Code::NotFound,
                format!(
                    "vault {} has no enabled version of {} `{}`",
                    o.vault,
                    kind_name(o.kind),
                    o.name
                ),
            ));
        }
        Ok(versions)
    }

    /// Turns an SDK error into a catalogue error naming identity, vault, object and version.
    fn map_sdk_error(&self, o: &ObjectSpec, version: Option<&str>, e: azure_core::Error) -> Error {
        use azure_core::error::ErrorKind;
        // kv's own error from a policy (a node-wide throttle window past the deadline).
        if let Some(own) = e.downcast_ref::<Error>() {
            return own.clone();
        }
        let what = format!(
            "{} `{}`{} in vault {}",
            kind_name(o.kind),
            o.name,
            version.map(|v| format!(" version {v}")).unwrap_or_default(),
            o.vault
        );
        match e.kind() {
            // The provider holds the typed token error; the SDK only carries its text.
            ErrorKind::Credential => self.provider.last_error().unwrap_or_else(|| {
                Error::new(Code::Aad, format!("getting a token for {what} failed"))
            }),
            ErrorKind::HttpResponse {
                status,
                raw_response,
                ..
            } => {
                let status = u16::from(*status);
                let (answer, request_id) = match raw_response {
                    Some(raw) => (
                        VaultAnswer::parse(status, raw.body()),
                        raw.headers()
                            .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
                                "x-ms-request-id",
                            ))
                            .unwrap_or("")
                            .to_string(),
                    ),
                    None => (VaultAnswer::parse(status, b""), String::new()),
                };
                crate::log::error(
                    "keyvault_error",
                    serde_json::json!({"vault": o.vault, "object": o.name, "status": status, "code": answer.code, "innererror": answer.inner, "request_id": request_id}),
                );
                // Only an answer that proves the token wrong drops it from the node's cache: a
                // vault of another tenant (AKV10032) says nothing about the token, and a pod
                // naming one must not cost other mounts a new token request.
                if answer.rejects_token() {
                    self.provider.distrust_token();
                }
                answer.classify(&what, &self.provider.identity_name(), o.kind)
            }
            ErrorKind::Io | ErrorKind::Connection => {
                let cause = crate::http::root_cause(&e);
                Error::new(
                    Code::Network,
                    format!(
                        "cannot reach vault {} at {}: {}",
                        o.vault,
                        self.cloud.vault_url(&o.vault),
                        crate::error::printable(&cause)
                    ),
                )
            }
            _ => Error::new(
                Code::Vault,
                format!(
                    "Key Vault answer for {what} is unusable: {}",
                    crate::error::printable(&e.to_string())
                ),
            ),
        }
    }
}

/// What a Key Vault error answer says: its status and the `error` object of its body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VaultAnswer {
    /// HTTP status.
    pub status: u16,
    /// `error.code`, e.g. `Forbidden`, `SecretNotFound`.
    pub code: String,
    /// `error.innererror.code`, e.g. `AccessDenied`, `SecretDisabled`.
    pub inner: String,
    /// The first line of `error.message`.
    pub message: String,
}

impl VaultAnswer {
    /// Reads a status and body; a body that is not Key Vault's error JSON gives empty fields.
    pub fn parse(status: u16, body: &[u8]) -> VaultAnswer {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let err = v.get("error").cloned().unwrap_or_default();
        let s = |x: &serde_json::Value, k: &str| {
            x.get(k).and_then(|y| y.as_str()).unwrap_or("").to_string()
        };
        let message = s(&err, "message");
        VaultAnswer {
            status,
            code: s(&err, "code"),
            inner: err
                .get("innererror")
                .map(|i| s(i, "code"))
                .unwrap_or_default(),
            message: message.lines().next().unwrap_or("").to_string(),
        }
    }

    /// Whether Key Vault refused the token itself (401: wrong audience AKV10022, a signature
    /// that does not verify AKV10013, expired), rather than the caller (another tenant's
    /// vault, AKV10032) or the request.
    pub fn rejects_token(&self) -> bool {
        let message = self.message.to_ascii_lowercase();
        self.status == 401
            && (message.contains("akv10022")
                || message.contains("akv10013")
                || message.contains("tokenexpired")
                || message.contains("expired"))
    }

    /// The catalogue error and message for `what` (e.g. "secret `db` in vault kv1"), read by
    /// `who` (the identity as an access policy names it), of object kind `kind`.
    pub fn classify(&self, what: &str, who: &str, kind: ObjectKind) -> Error {
        let code = crate::error::printable(&self.code);
        let inner = crate::error::printable(&self.inner);
        let first_line = crate::error::printable(&self.message);
        let disabled = self.inner == "SecretDisabled"
            || self.code.ends_with("Disabled")
            || self.message.contains("disabled");
        match self.status {
            401 => Error::new(
                Code::VaultUnauthorized,
                format!("Key Vault rejected the token of {who} for {what} ({code}: {first_line}); check the cloud and tenant of the identity"),
            ),
            403 if disabled => Error::new(
                Code::Disabled,
                format!("{what} is disabled; enable it or name an enabled version"),
            ),
            403 => Error::new(
                Code::Forbidden,
                format!(
                    "{who} may not get {what} ({}); grant it `get` on {} in the vault's access policy or the Key Vault {} User role",
                    if inner.is_empty() { &code } else { &inner },
                    plural(kind),
                    role_noun(kind)
                ),
            ),
            404 => Error::new(
                Code::NotFound,
                format!("{what} was not found ({code}); check the name and version, or mark the object optional"),
            ),
            429 => Error::new(
                Code::Throttled,
                format!("Key Vault kept throttling requests for {what} until the deadline; spread pod starts or raise the vault's limits"),
            ),
            status => Error::new(
                Code::Vault,
                format!("Key Vault answered HTTP {status} ({code}) for {what}"),
            ),
        }
    }
}

fn log_request_id(o: &ObjectSpec, headers: &azure_core::http::headers::Headers) {
    let rid = headers
        .get_optional_str(&azure_core::http::headers::HeaderName::from_static(
            "x-ms-request-id",
        ))
        .unwrap_or("");
    crate::log::info(
        "keyvault_response",
        serde_json::json!({"vault": o.vault, "object": o.name, "request_id": rid}),
    );
}

fn enum_text<T: serde::Serialize>(v: &Option<T>) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `secret`, `key` or `cert`.
pub fn kind_name(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Secret => "secret",
        ObjectKind::Key => "key",
        ObjectKind::Cert => "certificate",
    }
}

/// The URL path segment of a kind: `secrets`, `keys`, `certificates`.
pub fn plural(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Secret => "secrets",
        ObjectKind::Key => "keys",
        ObjectKind::Cert => "certificates",
    }
}

fn role_noun(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Secret => "Secrets",
        ObjectKind::Key => "Crypto",
        ObjectKind::Cert => "Certificate",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(status: u16, body: &str) -> Error {
        VaultAnswer::parse(status, body.as_bytes()).classify(
            "secret `db` in vault kv1",
            "managed identity abc",
            ObjectKind::Secret,
        )
    }

    #[test]
    fn statuses_and_bodies_map_to_catalogue_codes() {
        let forbidden = r#"{"error":{"code":"Forbidden","message":"The user, group or application 'appid=abc' does not have secrets get permission.\nMore text","innererror":{"code":"AccessDenied"}}}"#;
        let e = classify(403, forbidden);
        assert_eq!(e.code(), Code::Forbidden);
        assert!(e.message().starts_with("managed identity abc may not get secret `db` in vault kv1 (AccessDenied); grant it `get` on secrets"), "{e}");
        assert!(e.message().contains("Key Vault Secrets User"), "{e}");

        let disabled = r#"{"error":{"code":"Forbidden","message":"Operation get is not allowed on a disabled secret.","innererror":{"code":"SecretDisabled"}}}"#;
        assert_eq!(classify(403, disabled).code(), Code::Disabled);

        let e = classify(
            404,
            r#"{"error":{"code":"SecretNotFound","message":"A secret with (name/id) db was not found in this key vault."}}"#,
        );
        assert_eq!(e.code(), Code::NotFound);
        assert!(e.message().contains("(SecretNotFound)"), "{e}");

        let e = classify(
            401,
            r#"{"error":{"code":"Unauthorized","message":"AKV10022: Invalid audience.\nsecond line"}}"#,
        );
        assert_eq!(e.code(), Code::VaultUnauthorized);
        assert!(
            e.message()
                .contains("(Unauthorized: AKV10022: Invalid audience.)"),
            "{e}"
        );
        assert!(!e.message().contains("second line"), "{e}");

        assert_eq!(classify(429, "").code(), Code::Throttled);

        // Which 401s prove the token wrong (and drop it from the node's cache).
        let answer = |message: &str| {
            VaultAnswer::parse(
                401,
                serde_json::json!({"error": {"code": "Unauthorized", "message": message}})
                    .to_string()
                    .as_bytes(),
            )
        };
        assert!(answer("AKV10022: Invalid audience. Expected x, found: y.").rejects_token());
        assert!(answer("[TokenExpired] Error validating token: 'S2S12086'.").rejects_token());
        assert!(answer("AKV10013: Invalid token, signature validation failed.").rejects_token());
        assert!(!answer("AKV10032: Invalid issuer. Expected one of https://sts.windows.net/a/, found https://sts.windows.net/b/.").rejects_token());
        assert!(!answer("AKV10000: Request is missing a Bearer or PoP token.").rejects_token());
        let e = classify(502, "<html>bad gateway</html>");
        assert_eq!(e.code(), Code::Vault);
        assert!(e.message().contains("HTTP 502 ()"), "{e}");
        assert!(!e.message().contains("html"), "{e}");
    }
}
