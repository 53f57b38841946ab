//! Listeners, TLS, routing, latency, fault injection and the request log.

use crate::exchange::{Req, Resp};
use crate::limits::Limits;
use crate::material::KeyMemo;
use crate::scenario::{self, Endpoint, FaultAction, Scenario};
use crate::state::{Shared, State};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where to listen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// 127.0.0.1 ephemeral ports (safe anywhere).
    Local,
    /// The real addresses: 169.254.169.254:80, 127.0.0.1:2579, 127.0.0.1:443.
    /// Only allowed inside a network namespace other than PID 1's.
    Real,
}

pub struct Options {
    pub scenario: Scenario,
    pub bind: BindMode,
    pub request_log: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// CA certificate and key PEM to sign the TLS leaf with (default: generated).
    pub ca: Option<(String, String)>,
}

impl Options {
    pub fn local(scenario: Scenario) -> Options {
        Options {
            scenario,
            bind: BindMode::Local,
            request_log: None,
            cache_dir: None,
            ca: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub imds: SocketAddr,
    pub nmi: SocketAddr,
    pub https: SocketAddr,
}

impl Endpoints {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "imds": format!("http://{}", self.imds),
            "nmi": format!("http://{}", self.nmi),
            "https": self.https.to_string(),
        })
    }
}

/// A running emulator. Dropping it (or calling `shutdown`) stops every listener and connection.
pub struct Emulator {
    pub endpoints: Endpoints,
    /// PEM of the CA that signed the TLS certificate.
    pub ca_pem: String,
    current: Current,
    cache_dir: Option<PathBuf>,
    shutdown: watch::Sender<bool>,
}

/// The scenario generation requests are served from (replaced by `reload`).
type Current = Arc<RwLock<Arc<State>>>;

impl Emulator {
    pub async fn start(opts: Options) -> Result<Emulator, String> {
        let memo = KeyMemo::default();
        let store = crate::material::Builder::new(&opts.scenario, opts.cache_dir.as_deref())
            .with_memo(memo.clone())
            .build()?;
        let (tls, ca_pem) = tls_config(opts.ca.as_ref())?;
        let (imds_addr, nmi_addr, https_addr) = match opts.bind {
            BindMode::Local => {
                let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
                (
                    SocketAddr::new(lo, 0),
                    SocketAddr::new(lo, 0),
                    SocketAddr::new(lo, 0),
                )
            }
            BindMode::Real => {
                ensure_private_netns()?;
                (
                    "169.254.169.254:80".parse().map_err(|_| "addr")?,
                    "127.0.0.1:2579".parse().map_err(|_| "addr")?,
                    "127.0.0.1:443".parse().map_err(|_| "addr")?,
                )
            }
        };
        for a in [imds_addr, nmi_addr, https_addr] {
            let ok = match a.ip() {
                IpAddr::V4(v4) => {
                    v4.is_loopback()
                        || (opts.bind == BindMode::Real && v4 == Ipv4Addr::new(169, 254, 169, 254))
                }
                IpAddr::V6(v6) => v6.is_loopback(),
            };
            if !ok {
                return Err(format!("refusing to bind non-loopback address {a}"));
            }
        }
        let bind = |a: SocketAddr| async move {
            TcpListener::bind(a)
                .await
                .map_err(|e| format!("binding {a}: {e}"))
        };
        let imds = bind(imds_addr).await?;
        let nmi = bind(nmi_addr).await?;
        let https = bind(https_addr).await?;
        let endpoints = Endpoints {
            imds: imds.local_addr().map_err(|e| e.to_string())?,
            nmi: nmi.local_addr().map_err(|e| e.to_string())?,
            https: https.local_addr().map_err(|e| e.to_string())?,
        };
        let log = match &opts.request_log {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| format!("opening request log {}: {e}", p.display()))?,
            )),
            None => None,
        };
        let state = State::new(
            opts.scenario,
            store,
            Shared {
                started: Instant::now(),
                nmi_calls: Arc::new(Mutex::new(HashMap::new())),
                log: Arc::new(log),
                limits: Arc::new(Limits::default()),
                memo,
            },
            0,
        );
        let current: Current = Arc::new(RwLock::new(Arc::new(state)));
        let (tx, rx) = watch::channel(false);
        spawn_listener(imds, Kind::Imds, None, current.clone(), rx.clone());
        spawn_listener(nmi, Kind::Nmi, None, current.clone(), rx.clone());
        spawn_listener(https, Kind::Https, Some(tls), current.clone(), rx);
        Ok(Emulator {
            endpoints,
            ca_pem,
            current,
            cache_dir: opts.cache_dir,
            shutdown: tx,
        })
    }

    /// The scenario generation now served.
    pub fn state(&self) -> Arc<State> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serve `scenario` from now on, keeping the TLS CA, every generated key (same labels,
    /// same keys), the request log, NMI call counts and throttle state. Fault budgets start
    /// again. On error the current scenario stays. Returns the new generation number.
    pub fn reload(&self, scenario: Scenario) -> Result<u64, String> {
        let old = self.state();
        let store = crate::material::Builder::new(&scenario, self.cache_dir.as_deref())
            .with_memo(old.shared.memo.clone())
            .build()?;
        let generation = old.generation + 1;
        let next = State::new(scenario, store, old.shared.clone(), generation);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        Ok(generation)
    }

    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Refuse to serve the real Azure addresses unless nothing served here can be reached from,
/// or shadow anything on, a real network: every interface of this network namespace is
/// loopback (as in the namespaces `netns` / `scripts/netns-run` create) or a bridge or veth
/// (the pod network of `scripts/local-cluster`, whose other ends are pods' namespaces), and
/// no route goes through a gateway or is a default route, so nothing leaves the namespace.
fn ensure_private_netns() -> Result<(), String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev")
        .map_err(|e| format!("reading /proc/self/net/dev: {e}"))?;
    let names: Vec<&str> = dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .filter(|n| *n != "lo")
        .collect();
    let kinds = if names.is_empty() {
        String::new()
    } else {
        link_kinds()?
    };
    let others: Vec<&str> = names
        .into_iter()
        .filter(|n| !is_pod_network_link(&kinds, n))
        .collect();
    if !others.is_empty() {
        return Err(format!(
            "refusing to serve the real Azure addresses in a network namespace with interfaces {others:?}; \
             run inside a private netns (scripts/netns-run, kv_emulator::netns) or use --bind-local"
        ));
    }
    let v4 = std::fs::read_to_string("/proc/self/net/route").unwrap_or_default();
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route").unwrap_or_default();
    if let Some(route) = leaving_route(&v4, &v6) {
        return Err(format!(
            "refusing to serve the real Azure addresses in a network namespace with a route out ({route}); \
             run inside a private netns (scripts/netns-run, kv_emulator::netns) or use --bind-local"
        ));
    }
    Ok(())
}

/// `ip -d -j link show`: each link's kind (netlink's IFLA_INFO_KIND), which /proc does not give.
fn link_kinds() -> Result<String, String> {
    let out = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show"])
        .output()
        .map_err(|e| format!("running `ip -d -j link show`: {e}"))?;
    if !out.status.success() {
        return Err("`ip -d -j link show` failed".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `name` is a bridge or a veth according to `ip -d -j link show` output.
fn is_pod_network_link(kinds_json: &str, name: &str) -> bool {
    let Ok(serde_json::Value::Array(links)) = serde_json::from_str(kinds_json) else {
        return false;
    };
    links.iter().any(|l| {
        l["ifname"] == name
            && matches!(l["linkinfo"]["info_kind"].as_str(), Some("bridge" | "veth"))
    })
}

/// A default route or a route via a gateway, from /proc/net/route and /proc/net/ipv6_route.
fn leaving_route(v4: &str, v6: &str) -> Option<String> {
    for line in v4.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 8 && (f[1] == "00000000" || f[2] != "00000000") {
            return Some(format!("IPv4 route on {}", f[0]));
        }
    }
    for line in v6.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // dest, dest prefix len, src, src prefix len, next hop, metric, refcnt, use, flags, dev
        if f.len() >= 10 && f[9] != "lo" && (f[1] == "00" || f[4].chars().any(|c| c != '0')) {
            return Some(format!("IPv6 route on {}", f[9]));
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Kind {
    Imds,
    Nmi,
    Https,
}

fn spawn_listener(
    listener: TcpListener,
    kind: Kind,
    tls: Option<Arc<rustls::ServerConfig>>,
    current: Current,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(10)).await; continue; }
                },
                _ = shutdown.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let current = current.clone();
            let acceptor = acceptor.clone();
            let mut conn_shutdown = shutdown.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    // Each request is served from one scenario generation, start to end.
                    let state = current.read().unwrap_or_else(|e| e.into_inner()).clone();
                    async move { handle(state, kind, peer, req).await }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(acc) => {
                        let tls = tokio::select! {
                            r = tokio::time::timeout(Duration::from_secs(10), acc.accept(stream)) => match r {
                                Ok(Ok(s)) => s,
                                _ => return,
                            },
                            _ = conn_shutdown.changed() => return,
                        };
                        let conn = builder.serve_connection(TokioIo::new(tls), svc);
                        tokio::select! {
                            _ = conn => {},
                            _ = conn_shutdown.changed() => {},
                        }
                    }
                    None => {
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        tokio::select! {
                            _ = conn => {},
                            _ = conn_shutdown.changed() => {},
                        }
                    }
                }
            });
        }
    });
}

#[derive(Debug)]
pub struct CloseConnection;
impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("fault injection: close connection")
    }
}
impl std::error::Error for CloseConnection {}

fn host_of(req: &Request<Incoming>) -> String {
    let h = req
        .uri()
        .host()
        .map(str::to_string)
        .or_else(|| {
            req.headers()
                .get(hyper::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    // strip the port (not for bracketed IPv6 without port)
    let h = match h.rsplit_once(':') {
        Some((a, p)) if p.chars().all(|c| c.is_ascii_digit()) && !a.ends_with(':') => a.to_string(),
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

pub fn is_aad_host(h: &str) -> bool {
    scenario::AAD_HOSTS.contains(&h)
}

async fn handle(
    state: Arc<State>,
    kind: Kind,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, CloseConnection> {
    let t0 = Instant::now();
    let host = host_of(&req);
    let endpoint = match kind {
        Kind::Imds => Endpoint::Imds,
        Kind::Nmi => Endpoint::Nmi,
        Kind::Https => {
            if is_aad_host(&host) {
                Endpoint::Aad
            } else {
                Endpoint::Keyvault
            }
        }
    };
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = crate::util::parse_pairs(req.uri().query().unwrap_or(""));
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, 4 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let r = Req {
        method,
        host,
        path,
        query,
        headers: parts.headers,
        body,
        peer,
    };

    // Azure's limits come first: a refused request costs nothing (no latency, no fault).
    let identity_path = r
        .path
        .to_ascii_lowercase()
        .starts_with("/metadata/identity");
    let _imds_slot = match &state.scenario.imds.limits {
        Some(cfg) if endpoint == Endpoint::Imds && identity_path => {
            match state.shared.limits.imds_admit(cfg) {
                Ok(slot) => Some(slot),
                Err(why) => {
                    // Real IMDS (Server: IMDS/150.870.65.1103) answers this body, without
                    // Retry-After (Azure/azure-sdk-for-net#39574).
                    let mut resp = Resp::json(
                        429,
                        &json!({"error": "invalid_request", "error_description": "Temporarily throttled, too many requests"}),
                    );
                    if let Some(ra) = cfg.retry_after {
                        resp = resp.header("Retry-After", &ra.to_string());
                    }
                    return Ok(state.finish(&r, endpoint, t0, resp, None, Some(why.as_str())));
                }
            }
        }
        _ => None,
    };
    if endpoint == Endpoint::Keyvault {
        if let Some((vault, throttle)) = crate::keyvault::throttle_for_host(&state, &r.host) {
            if let Err(wait) = state.shared.limits.vault_take(&vault, throttle) {
                let resp = fault_response(Endpoint::Keyvault, 429)
                    .header("Retry-After", &wait.to_string());
                return Ok(state.finish(&r, endpoint, t0, resp, None, Some("vault")));
            }
        }
    }

    let latency = match endpoint {
        Endpoint::Imds => state.scenario.latency_ms.imds,
        Endpoint::Nmi => state.scenario.latency_ms.nmi,
        Endpoint::Aad => state.scenario.latency_ms.aad,
        Endpoint::Keyvault => state.scenario.latency_ms.keyvault,
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }

    // Fault injection.
    let fault = {
        let mut counts = state.fault_counts.lock().unwrap_or_else(|e| e.into_inner());
        let mut chosen = None;
        for (i, f) in state.scenario.faults.iter().enumerate() {
            if f.endpoint != endpoint {
                continue;
            }
            if let Some(s) = &f.path_contains {
                if !r.path.contains(s.as_str()) {
                    continue;
                }
            }
            if let Some(s) = &f.body_contains {
                if !String::from_utf8_lossy(&r.body).contains(s.as_str()) {
                    continue;
                }
            }
            if counts[i] < f.count.unwrap_or(1) {
                counts[i] += 1;
                chosen = Some(f.clone());
                break;
            }
        }
        chosen
    };
    let mut fault_name: Option<String> = None;
    let resp = match fault {
        Some(f) => match f.action {
            FaultAction::Close => {
                state.log(&r, endpoint, 0, t0, None, None, Some("close"), None);
                return Err(CloseConnection);
            }
            FaultAction::StallForever => {
                state.log(&r, endpoint, 0, t0, None, None, Some("stall_forever"), None);
                std::future::pending::<()>().await;
                return Err(CloseConnection);
            }
            FaultAction::Stall => {
                tokio::time::sleep(Duration::from_millis(f.ms.unwrap_or(0))).await;
                fault_name = Some("stall".into());
                dispatch(&state, endpoint, &r).await
            }
            FaultAction::Status => {
                let status = f.status.unwrap_or(500);
                fault_name = Some(format!("status {status}"));
                let mut resp = fault_response(endpoint, status);
                if let Some(ra) = f.retry_after {
                    resp = resp.header("Retry-After", &ra.to_string());
                }
                resp
            }
        },
        None => dispatch(&state, endpoint, &r).await,
    };
    Ok(state.finish(&r, endpoint, t0, resp, fault_name.as_deref(), None))
}

impl State {
    /// Log the answer and turn it into a hyper response.
    fn finish(
        &self,
        r: &Req,
        endpoint: Endpoint,
        t0: Instant,
        resp: Resp,
        fault: Option<&str>,
        throttled: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let request_id = resp
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-ms-request-id"))
            .map(|(_, v)| v.clone());
        self.log(
            r,
            endpoint,
            resp.status,
            t0,
            resp.identity.clone(),
            request_id,
            fault,
            throttled,
        );
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(resp.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        for (k, v) in &resp.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        match builder.body(Full::new(Bytes::from(resp.body))) {
            Ok(r) => r,
            Err(_) => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"bad response header\n")));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
        }
    }
}

fn fault_response(endpoint: Endpoint, status: u16) -> Resp {
    match endpoint {
        Endpoint::Keyvault => {
            let (code, msg) = match status {
                429 => (
                    "Throttled",
                    "Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached",
                ),
                404 => ("NotFound", "Not found"),
                _ => ("InternalServerError", "The service is temporarily unavailable."),
            };
            crate::keyvault::kv_headers(Resp::json(
                status,
                &json!({"error": {"code": code, "message": msg}}),
            ))
        }
        Endpoint::Nmi => Resp::text(status, "fault injected by kv-emulator"),
        Endpoint::Imds => {
            let (e, d) = match status {
                429 => ("too_many_requests", "Too many requests"),
                410 => ("gone", "IMDS is updating"),
                404 => ("not_found", "IMDS is updating"),
                _ => ("unknown", "Failed to retrieve token from the Active directory. For details see logs in C:\\User1\\Logs\\Plugins\\Microsoft.Identity.MSI\\1.0\\service_identity_0.log"),
            };
            Resp::json(status, &json!({"error": e, "error_description": d}))
        }
        Endpoint::Aad => crate::aad::aad_error(
            status,
            "temporarily_unavailable",
            90033,
            "AADSTS90033: A transient error has occurred. Please try again.",
        ),
    }
}

async fn dispatch(state: &Arc<State>, endpoint: Endpoint, r: &Req) -> Resp {
    match endpoint {
        Endpoint::Imds => crate::imds::handle(state, r),
        Endpoint::Nmi => crate::nmi::handle(state, r).await,
        Endpoint::Aad => crate::aad::handle(state, r),
        Endpoint::Keyvault => crate::keyvault::handle(state, r),
    }
}

/// Build the TLS server config: leaf for every AAD and vault host, signed by the CA.
fn tls_config(
    ca: Option<&(String, String)>,
) -> Result<(Arc<rustls::ServerConfig>, String), String> {
    let (ca_pem, ca_key, ca_params_or_pem) = match ca {
        Some((cert, key)) => {
            let kp = rcgen::KeyPair::from_pem(key).map_err(|e| format!("CA key: {e}"))?;
            (cert.clone(), kp, None)
        }
        None => {
            let kp = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
            let mut p =
                rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
            p.distinguished_name = crate::material::dn("CN=kv-emulator TLS CA, O=kv-emulator");
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            crate::material::set_validity(&mut p, 3650);
            let cert = p.self_signed(&kp).map_err(|e| e.to_string())?;
            (cert.pem(), kp, Some(p))
        }
    };
    let issuer = match ca_params_or_pem {
        Some(p) => rcgen::Issuer::new(p, ca_key),
        None => {
            rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| format!("CA cert: {e}"))?
        }
    };
    let mut sans: Vec<String> = scenario::AAD_HOSTS.iter().map(|s| s.to_string()).collect();
    for c in scenario::CLOUDS {
        sans.push(format!("*.{}", c.vault_suffix));
    }
    sans.push("localhost".into());
    sans.push("127.0.0.1".into());
    let leaf_key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(sans).map_err(|e| e.to_string())?;
    p.distinguished_name = crate::material::dn("CN=kv-emulator");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    crate::material::set_validity(&mut p, 365);
    let leaf = p.signed_by(&leaf_key, &issuer).map_err(|e| e.to_string())?;
    let ca_der = crate::util::pem_blocks(&ca_pem)
        .into_iter()
        .find(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d)
        .ok_or("CA PEM has no certificate")?;
    let chain = vec![
        rustls::pki_types::CertificateDer::from(leaf.der().to_vec()),
        rustls::pki_types::CertificateDer::from(ca_der),
    ];
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("TLS config: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), ca_pem))
}

#[cfg(test)]
mod tests {
    use super::{is_pod_network_link, leaving_route};

    #[test]
    fn only_bridges_and_veths_count_as_the_pod_network() {
        let links = r#"[{"ifname":"lo"},{"ifname":"kvbr0","linkinfo":{"info_kind":"bridge"}},
            {"ifname":"veth1","linkinfo":{"info_kind":"veth"}},{"ifname":"eth0"},
            {"ifname":"mv0","linkinfo":{"info_kind":"macvlan"}}]"#;
        assert!(is_pod_network_link(links, "kvbr0"));
        assert!(is_pod_network_link(links, "veth1"));
        assert!(!is_pod_network_link(links, "eth0"));
        assert!(!is_pod_network_link(links, "mv0"));
        assert!(!is_pod_network_link(links, "missing"));
        assert!(!is_pod_network_link("not json", "kvbr0"));
    }

    #[test]
    fn default_and_gateway_routes_leave_the_namespace() {
        let head =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let bridge = "kvbr0\t0000F40A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(leaving_route(&format!("{head}{bridge}"), ""), None);
        let default = "eth0\t00000000\t0100F40A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        assert!(leaving_route(&format!("{head}{bridge}{default}"), "").is_some());
        let via = "kvbr0\t0000000A\t0200F40A\t0003\t0\t0\t0\t000000FF\t0\t0\t0\n";
        assert!(leaving_route(&format!("{head}{via}"), "").is_some());

        let link_local = "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001    kvbr0\n";
        let lo_unreachable = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(
            leaving_route("", &format!("{link_local}{lo_unreachable}")),
            None
        );
        let v6_default = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003     eth0\n";
        assert!(leaving_route("", v6_default).is_some());
    }
}
