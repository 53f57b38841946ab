//! The one HTTP client of a call: rustls with ring, roots from one PEM bundle file.
//!
//! ring, not aws-lc: aws-lc's start-up costs ~45 ms of CPU per process, and kv is one process
//! per mount. Roots come from `SSL_CERT_FILE` or the first system bundle file found, read once
//! (no scan of /etc/ssl/certs). No proxy: IMDS and NMI must be reached directly.

use crate::error::{Code, Error, Result};
use std::sync::Arc;
use std::time::Duration;

/// Bundle files of the common distributions, in order.
const BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Most connections to one host (Key Vault and IMDS limit concurrent requests per client).
pub const MAX_IDLE_PER_HOST: usize = 32;

/// Builds the client.
pub fn client() -> Result<reqwest::Client> {
    let roots = roots()?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(Code::Internal, format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build()
        .map_err(|e| Error::new(Code::Internal, format!("HTTP client setup: {e}")))
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

/// The SDK's transport: reqwest, with every response body cut off at [`MAX_BODY_BYTES`].
#[derive(Debug, Clone)]
pub struct BoundedTransport {
    /// The call's client.
    pub client: reqwest::Client,
    /// Raised after the first exchange through this transport, whatever its outcome: by then the
    /// connection to the host exists and is known to speak HTTP/2, so requests waiting on it
    /// share that connection instead of each opening (and TLS-handshaking) their own.
    pub first_exchange: Option<tokio::sync::watch::Sender<bool>>,
}

#[async_trait::async_trait]
impl azure_core::http::HttpClient for BoundedTransport {
    async fn execute_request(
        &self,
        request: &azure_core::http::Request,
    ) -> azure_core::Result<azure_core::http::AsyncRawResponse> {
        use futures::StreamExt;
        let response = self.client.execute_request(request).await;
        if let Some(done) = &self.first_exchange {
            done.send_replace(true);
        }
        let response = response?;
        let (status, headers, body) = response.deconstruct();
        let mut cap = BodyCap::default();
        let bounded = body.map(move |chunk| {
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

/// [`retry_after`] over azure_core's headers (Key Vault).
pub fn retry_after_sdk(headers: &azure_core::http::headers::Headers) -> Option<Duration> {
    retry_after(|name| {
        headers.get_optional_str(&azure_core::http::headers::HeaderName::from(
            name.to_string(),
        ))
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

    #[test]
    fn root_cause_is_the_innermost_error() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused\nnow");
        let outer = std::io::Error::other(inner);
        assert_eq!(root_cause(&outer), "refused\nnow");
    }
}
