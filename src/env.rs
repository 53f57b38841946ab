//! The environment variables kv reads, read once when the process starts, so every module sees
//! the same values and none reads the environment on its own:
//!
//! | variable | what |
//! |---|---|
//! | `KV_LOG_FILE` | the driver log's path; overrides the node config's `log.path` |
//! | `SSL_CERT_FILE` | the CA bundle (PEM) that TLS connections trust; default: the distribution's bundle |
//!
//! Anything that widens what a pod can reach comes from `kv.json`, never from here: kubelet
//! runs kv with its own environment, which pods do not control.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The variables, as read at start.
#[derive(Debug, Default)]
pub struct Env {
    /// `KV_LOG_FILE`.
    pub log_file: Option<PathBuf>,
    /// `SSL_CERT_FILE`.
    pub ssl_cert_file: Option<PathBuf>,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The variables; the first call reads them (`main` makes that call before anything else).
pub fn get() -> &'static Env {
    ENV.get_or_init(|| Env {
        log_file: std::env::var_os("KV_LOG_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        ssl_cert_file: std::env::var_os("SSL_CERT_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    })
}
