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
        let mut seen = 0usize;
        let bounded = body.map(move |chunk| {
            let chunk = chunk?;
            seen += chunk.len();
            if seen > MAX_BODY_BYTES {
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
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    Some(body)
}
