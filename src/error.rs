//! The one error type of the driver: a stable catalogue code plus a message an operator can act on.
//!
//! Every Failure reply kubelet shows in `kubectl describe pod` is `"<CODE>: <message>"`. The codes
//! are listed, with cause and fix, in the README's error catalogue; tests assert on them, so they
//! never change meaning. Messages name options, identities (client ids), vaults, objects and
//! versions, never secret values, tokens or raw response bodies.

use std::fmt;

/// Stable error codes (the README's catalogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// argv is not what kubelet sends.
    Usage,
    /// The options JSON is malformed or names something invalid.
    Options,
    /// The node config file (`kv.json`) is malformed.
    Config,
    /// The node policy forbids this pod's request.
    Policy,
    /// The mount directory is not a kubelet volume directory.
    Dir,
    /// NMI has no identity bound to the pod (yet).
    NmiNoIdentity,
    /// NMI failed otherwise.
    Nmi,
    /// IMDS has no such managed identity on this node.
    ImdsNoIdentity,
    /// IMDS failed otherwise.
    Imds,
    /// AAD rejected the client credentials (bad secret or certificate).
    AadClient,
    /// AAD failed otherwise (unknown tenant or application).
    Aad,
    /// Key Vault rejected the token (audience, issuer, expiry).
    VaultUnauthorized,
    /// The identity lacks a permission on the vault.
    Forbidden,
    /// The object is disabled.
    Disabled,
    /// The object or version does not exist.
    NotFound,
    /// Key Vault kept throttling until the deadline.
    Throttled,
    /// Key Vault answered an unexpected status.
    Vault,
    /// DNS, TCP or TLS failure reaching a service.
    Network,
    /// The call's deadline ran out.
    Timeout,
    /// An object could not be turned into file bytes.
    Render,
    /// The tmpfs could not be created, written or attached.
    Mount,
    /// A bug: a panic or an impossible state.
    Internal,
}

impl Code {
    /// The stable text form, e.g. `KV403_FORBIDDEN`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Usage => "KV_USAGE",
            Code::Options => "KV_OPTIONS",
            Code::Config => "KV_CONFIG",
            Code::Policy => "KV_POLICY",
            Code::Dir => "KV_DIR",
            Code::NmiNoIdentity => "KV_NMI_NO_IDENTITY",
            Code::Nmi => "KV_NMI",
            Code::ImdsNoIdentity => "KV_IMDS_NO_IDENTITY",
            Code::Imds => "KV_IMDS",
            Code::AadClient => "KV_AAD_CLIENT",
            Code::Aad => "KV_AAD",
            Code::VaultUnauthorized => "KV401_UNAUTHORIZED",
            Code::Forbidden => "KV403_FORBIDDEN",
            Code::Disabled => "KV403_DISABLED",
            Code::NotFound => "KV404_NOT_FOUND",
            Code::Throttled => "KV429_THROTTLED",
            Code::Vault => "KV_VAULT",
            Code::Network => "KV_NETWORK",
            Code::Timeout => "KV_TIMEOUT",
            Code::Render => "KV_RENDER",
            Code::Mount => "KV_MOUNT",
            Code::Internal => "KV_INTERNAL",
        }
    }

    /// Every code, for the catalogue test.
    pub const ALL: [Code; 22] = [
        Code::Usage,
        Code::Options,
        Code::Config,
        Code::Policy,
        Code::Dir,
        Code::NmiNoIdentity,
        Code::Nmi,
        Code::ImdsNoIdentity,
        Code::Imds,
        Code::AadClient,
        Code::Aad,
        Code::VaultUnauthorized,
        Code::Forbidden,
        Code::Disabled,
        Code::NotFound,
        Code::Throttled,
        Code::Vault,
        Code::Network,
        Code::Timeout,
        Code::Render,
        Code::Mount,
        Code::Internal,
    ];
}

/// A failure with its catalogue code.
#[derive(Debug, Clone)]
pub struct Error {
    /// What class of failure this is.
    pub code: Code,
    /// One line, safe to show anywhere.
    pub message: String,
}

impl Error {
    /// Builds an error; the message is flattened to one line (kubelet events, log lines).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let message: String = message.into();
        let message = message
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Error { code, message }
    }

    /// Shorthand for an options error.
    pub fn options(message: impl Into<String>) -> Self {
        Error::new(Code::Options, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

/// The driver's result type.
pub type Result<T> = std::result::Result<T, Error>;
