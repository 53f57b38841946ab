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
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(std::path::PathBuf::from)
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
