//! The one HTTP client of a call: rustls with ring, roots from one PEM bundle file.
//!
//! ring, not aws-lc: aws-lc's start-up costs ~45 ms of CPU per process, and kv is one process
//! per mount. Roots come from `SSL_CERT_FILE` or the first system bundle file found, read once
//! (no scan of /etc/ssl/certs). No proxy: IMDS and NMI must be reached directly.

use crate::error::{Code, Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bundle files of the common distributions, in order.
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Most connections to one host (Key Vault and IMDS limit concurrent requests per client).
pub const MAX_IDLE_PER_HOST: usize = 32;

/// The TLS setup every client of the call uses (read once: the bundle is parsed per process).
pub fn tls_config() -> Result<rustls::ClientConfig> {
    let roots = roots()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Code::Internal, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

/// Builds the client.
pub fn client() -> Result<reqwest::Client> {
    client_with(tls_config()?, None)
}

/// Builds a client with this TLS setup; with `connected`, it tells when its first connection
/// is up (see [`Connected`]).
pub fn client_with(
    tls: rustls::ClientConfig,
    connected: Option<Connected>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST);
    if let Some(connected) = connected {
        builder = builder.connector_layer(connected);
    }
    builder
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("HTTP client setup: {e}")))
}

/// Raised when a client's first connection attempt to its host ended (connected, TLS and
/// protocol negotiated, or failed): from then on that host's requests share the connection
/// (HTTP/2) or take the host's permits (HTTP/1.1, learned here from ALPN) instead of each
/// opening, and TLS-handshaking, a connection of its own. A client per vault host, so the
/// signal is that host's.
#[derive(Debug, Clone)]
pub struct Connected {
    host: String,
    up: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Connected {
    /// The signal for `host` and a receiver that sees it.
    pub fn new(host: &str) -> (Connected, tokio::sync::watch::Receiver<bool>) {
        let (up, seen) = tokio::sync::watch::channel(false);
        (
            Connected {
                host: host.to_ascii_lowercase(),
                up: Arc::new(up),
            },
            seen,
        )
    }

    /// Raises the signal without a connection (the first request ended without one).
    pub fn raise(&self) {
        self.up.send_replace(true);
    }
}

impl<S> tower_layer::Layer<S> for Connected {
    type Service = ConnectedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectedService {
            inner,
            signal: self.clone(),
        }
    }
}

/// reqwest's connector with the [`Connected`] signal.
#[derive(Debug, Clone)]
pub struct ConnectedService<S> {
    inner: S,
    signal: Connected,
}

impl<S, R> tower_service::Service<R> for ConnectedService<S>
where
    S: tower_service::Service<R>,
    S::Response: hyper_util::client::legacy::connect::Connection,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = std::result::Result<S::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let connecting = self.inner.call(request);
        let signal = self.signal.clone();
        Box::pin(async move {
            let connection = connecting.await;
            if let Ok(c) = &connection {
                use hyper_util::client::legacy::connect::Connection;
                if !c.connected().is_negotiated_h2() {
                    learned_http1(&signal.host);
                }
            }
            signal.raise();
            connection
        })
    }
}

fn roots() -> Result<rustls::RootCertStore> {
    let path = crate::env::get()
        .ssl_cert_file
        .clone()
        .or_else(|| BUNDLES.iter().map(std::path::PathBuf::from).find(|p| p.exists()))
        .ok_or_else(|| {
            Error::new(
                Code::Network,
                "no CA bundle found (looked at SSL_CERT_FILE and /etc/ssl/certs/ca-certificates.crt): install the distribution's ca-certificates",
            )
        })?;
    let pem = std::fs::read(&path).map_err(|e| {
        Error::new(
            Code::Network,
            format!("cannot read CA bundle {}: {e}", path.display()),
        )
    })?;
    let mut store = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).filter_map(|c| c.ok());
    let (added, _) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::new(
            Code::Network,
            format!("CA bundle {} holds no usable certificate", path.display()),
        ));
    }
    Ok(store)
}

/// The most bytes kv reads from any response: Key Vault objects are at most 25 KB (a
/// certificate's PFX a few KB), so a larger body is a broken or hostile server, and reading it
/// whole would let that server exhaust the node's memory.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The running count of one body's bytes against [`MAX_BODY_BYTES`]: the one cap both readers
/// (the token sources' [`read_bounded`] and the SDK's [`BoundedTransport`]) apply.
#[derive(Debug, Default)]
struct BodyCap(usize);

impl BodyCap {
    /// Counts a chunk; false once the body is over the cap.
    fn admit(&mut self, chunk: usize) -> bool {
        self.0 = self.0.saturating_add(chunk);
        self.0 <= MAX_BODY_BYTES
    }
}

/// Requests in flight at once to a host that answers over HTTP/1.1 only. Over HTTP/2 every
/// request of a mount shares one connection; over HTTP/1.1 each request in flight is a
/// connection (and a TLS handshake) of its own, so 50 objects would open 50 — the common case
/// behind a TLS-inspecting proxy that does not speak HTTP/2.
pub const HTTP1_REQUESTS_PER_HOST: usize = 8;

/// The hosts this process has seen answer over HTTP/1.1, each with its permits (one process is
/// one mount, so process-wide is per mount).
fn http1_hosts() -> &'static Mutex<HashMap<String, Arc<Semaphore>>> {
    static HOSTS: OnceLock<Mutex<HashMap<String, Arc<Semaphore>>>> = OnceLock::new();
    HOSTS.get_or_init(Default::default)
}

/// The permits of `host` if it is known to speak only HTTP/1.1.
fn http1_permits(host: &str) -> Option<Arc<Semaphore>> {
    let hosts = http1_hosts().lock().unwrap_or_else(|p| p.into_inner());
    hosts.get(host).cloned()
}

/// Remembers that `host` answered over HTTP/1.x: from now on its requests take permits.
fn learned_http1(host: &str) {
    let mut hosts = http1_hosts().lock().unwrap_or_else(|p| p.into_inner());
    hosts
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(Semaphore::new(HTTP1_REQUESTS_PER_HOST)));
}

/// The SDK's transport: reqwest, with every response body cut off at [`MAX_BODY_BYTES`], at
/// most [`HTTP1_REQUESTS_PER_HOST`] requests in flight to a host that speaks only HTTP/1.1,
/// and, on a node, each request admitted by the node (throttle window, slot) for the time it
/// is on the wire: the last policy of the pipeline, after the SDK's authorization.
#[derive(Debug, Clone)]
pub struct BoundedTransport {
    /// The vault's client.
    pub client: reqwest::Client,
    /// The node's admission of requests to the vault, and the call's deadline.
    pub admission: Option<(Arc<crate::nodestate::Admission>, crate::retry::Deadline)>,
}

impl BoundedTransport {
    /// Sends through reqwest and tells which HTTP version answered (what azure_core's own
    /// reqwest adapter does not); a streamed body (never sent by kv's Key Vault GETs) goes
    /// through that adapter, its version unknown.
    async fn send(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<(azure_core::http::AsyncRawResponse, Option<reqwest::Version>)> {
        use azure_core::error::ErrorKind;
        use azure_core::http::headers::{HeaderName, HeaderValue, Headers};
        use futures::TryStreamExt;
        let azure_core::http::Body::Bytes(body) = request.body() else {
            return azure_core::http::HttpClient::execute_request(&self.client, request)
                .await
                .map(|r| (r, None));
        };
        let method = reqwest::Method::from_bytes(request.method().as_ref().as_bytes())
            .map_err(|e| azure_core::Error::new(ErrorKind::Other, e))?;
        let mut req = self.client.request(method, request.url().clone());
        for (name, value) in request.headers().iter() {
            req = req.header(name.as_str(), value.as_str());
        }
        let response = req.body(body.clone()).send().await.map_err(|e| {
            let kind = if e.is_connect() {
                ErrorKind::Connection
            } else {
                ErrorKind::Io
            };
            azure_core::Error::new(kind, e)
        })?;
        let version = response.version();
        let headers: HashMap<HeaderName, HeaderValue> = response
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                let value = v.to_str().ok()?;
                Some((
                    HeaderName::from(k.as_str().to_owned()),
                    HeaderValue::from(value.to_owned()),
                ))
            })
            .collect();
        let status = response.status().as_u16();
        let body = response
            .bytes_stream()
            .map_err(|e| azure_core::Error::new(ErrorKind::Io, e));
        Ok((
            azure_core::http::AsyncRawResponse::new(
                status.into(),
                Headers::from(headers),
                Box::pin(body),
            ),
            Some(version),
        ))
    }
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for BoundedTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use futures::StreamExt;
        let host = request
            .url()
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        // Held until the body is read or dropped: the connection is busy until then, and the
        // service is still working on the request.
        let permit = match http1_permits(&host) {
            Some(permits) => permits.acquire_owned().await.ok(),
            None => None,
        };
        let ticket = match &self.admission {
            Some((admission, deadline)) => Some(
                admission
                    .enter(deadline)
                    .await
                    // Carried whole, so the caller reports its own code (throttled, timeout).
                    .map_err(|e| azure_core::Error::new(azure_core::error::ErrorKind::Other, e))?,
            ),
            None => None,
        };
        let response = self.send(request).await;
        if let Ok((_, Some(version))) = &response {
            if *version < reqwest::Version::HTTP_2 {
                learned_http1(&host);
            }
        }
        let (response, _) = response?;
        let (status, headers, body) = response.deconstruct();
        if let Some((admission, _)) = &self.admission {
            admission.note(u16::from(status), retry_after_sdk(&headers));
        }
        let mut cap = BodyCap::default();
        let bounded = body.map(move |chunk| {
            let _busy = (&permit, &ticket);
            let chunk = chunk?;
            if !cap.admit(chunk.len()) {
                return Err(azure_core::Error::with_message(
                    azure_core::error::ErrorKind::DataConversion,
                    format!("response body is larger than {MAX_BODY_BYTES} bytes"),
                ));
            }
            Ok(chunk)
        });
        Ok(azure_core::http::AsyncRawResponse::new(
            status,
            headers,
            Box::pin(bounded),
        ))
    }
}

/// Reads a token endpoint's body, refusing more than [`MAX_BODY_BYTES`].
pub async fn read_bounded(mut response: reqwest::Response) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut cap = BodyCap::default();
    while let Ok(Some(chunk)) = response.chunk().await {
        if !cap.admit(chunk.len()) {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}

/// The delay a throttling or busy server asks for, from whichever of its headers it sent:
/// `retry-after-ms` and `x-ms-retry-after-ms` (milliseconds, Azure's), else `Retry-After` as
/// seconds or as an HTTP date. `header` looks a header up by lower-case name, so one parser
/// serves reqwest's and azure_core's header maps. A date in the past is no wait.
pub fn retry_after<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<Duration> {
    let number = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(ms) = number("retry-after-ms").or_else(|| number("x-ms-retry-after-ms")) {
        return Some(Duration::from_millis(ms));
    }
    let value = header("retry-after")?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = azure_core::time::parse_rfc7231(value).ok()?;
    let wait = at - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

/// [`retry_after`] over reqwest's headers (the token sources).
pub fn retry_after_reqwest(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    retry_after(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

/// [`retry_after`] over azure_core's headers (Key Vault). Looked up by iterating: the SDK's own
/// lookup builds an error (with a backtrace when `RUST_BACKTRACE` is set) for every absent
/// header, and this runs for every answer.
pub fn retry_after_sdk(headers: &azure_core::http::headers::Headers) -> Option<Duration> {
    retry_after(|name| {
        headers
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .map(|(_, v)| v.as_str())
    })
}

/// The innermost cause of an error (a refused connection, a TLS verdict): the outer layers
/// only say "error sending request". [`crate::error::Error::new`] flattens it to one line.
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(
        pairs: &'a [(&'static str, &'static str)],
    ) -> impl Fn(&str) -> Option<&'static str> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn retry_after_reads_every_form() {
        assert_eq!(
            retry_after(headers(&[("retry-after", "3")])),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(headers(&[("retry-after", "3"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(headers(&[("x-ms-retry-after-ms", "40")])),
            Some(Duration::from_millis(40))
        );
        assert_eq!(
            retry_after(headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")])),
            Some(Duration::ZERO)
        );
        let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(120);
        let date: &'static str = Box::leak(azure_core::time::to_rfc7231(&later).into_boxed_str());
        let wait = retry_after(headers(&[("retry-after", date)])).unwrap();
        assert!(
            wait > Duration::from_secs(100) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        assert_eq!(retry_after(headers(&[("retry-after", "soon")])), None);
        assert_eq!(retry_after(headers(&[])), None);
    }

    #[test]
    fn the_cap_counts_across_chunks() {
        let mut cap = BodyCap::default();
        assert!(cap.admit(MAX_BODY_BYTES - 1));
        assert!(cap.admit(1));
        assert!(!cap.admit(1));
    }

    /// A plain HTTP/1.1 server (keep-alive, 20 ms per answer) counting its open connections;
    /// returns its address and the most connections open at once.
    fn http1_server() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let peak = most.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (open, most) = (open.clone(), most.clone());
                std::thread::spawn(move || {
                    most.fetch_max(open.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut writer = conn;
                    'requests: loop {
                        loop {
                            let mut line = String::new();
                            match reader.read_line(&mut line) {
                                Ok(0) | Err(_) => break 'requests,
                                Ok(_) if line == "\r\n" => break,
                                Ok(_) => {}
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if writer.write_all(answer.as_bytes()).is_err() {
                            break;
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (addr, peak)
    }

    #[tokio::test]
    async fn an_http1_host_gets_a_bounded_number_of_connections() {
        let (addr, peak) = http1_server();
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let transport = BoundedTransport {
            client: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .no_proxy()
                .build()
                .unwrap(),
            admission: None,
        };
        let get = |transport: BoundedTransport| async move {
            let url = azure_core::http::Url::parse(&format!("http://{addr}/x")).unwrap();
            let request = azure_core::http::Request::new(url, azure_core::http::Method::Get);
            let response =
                azure_core::http::HttpClient::execute_request(&transport, &request).await;
            let (status, _, body) = response.unwrap().deconstruct();
            let bytes = body.collect().await.unwrap();
            (u16::from(status), bytes.len())
        };
        // The first exchange tells the protocol; then a burst as a 50-object mount makes.
        assert_eq!(get(transport.clone()).await.0, 200);
        let answers = futures::future::join_all((0..50).map(|_| get(transport.clone()))).await;
        assert!(answers.iter().all(|a| a.0 == 200), "{answers:?}");
        let most = peak.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (2..=HTTP1_REQUESTS_PER_HOST).contains(&most),
            "{most} connections open at once"
        );
    }

    #[test]
    fn root_cause_is_the_innermost_error() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nnow");
        let outer = std::io::Error::other(inner);
        assert_eq!(root_cause(&outer), "refused\nnow");
    }
}
