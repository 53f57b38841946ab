//! The one error type of the driver: a stable catalogue code plus a message an operator can act on.
//!
//! Every Failure reply kubelet shows in `kubectl describe pod` is `"<CODE>: <message>"`. The codes
//! are listed, with cause and fix, in the README's error catalogue; tests assert on them, so they
//! never change meaning. Messages name options, identities (client ids), vaults, objects and
//! versions, never secret values, tokens or raw response bodies.

use std::fmt;

/// Declares [`Code`], its stable string and exit class, and [`Code::ALL`] from one table, so a
/// new code cannot miss the catalogue test or the exit-code mapping.
macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal, exit $exit:literal;)+) => {
        /// Stable error codes (the README's catalogue).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $($(#[$doc])* $variant,)+
        }

        impl Code {
            /// Every code, in catalogue order (for the catalogue test).
            pub const ALL: &'static [Code] = &[$(Code::$variant,)+];

            /// The stable text form, e.g. `KV403_FORBIDDEN`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)+
                }
            }

            /// The exit code of operator commands (`kv fetch`, `kv doctor`) for this class, so
            /// scripts can branch without parsing text: 2 usage/options/config/policy,
            /// 3 identity/token, 4 not found, 5 forbidden/disabled, 6 network/timeout/throttled,
            /// 1 other.
            pub fn exit_class(self) -> u8 {
                match self {
                    $(Code::$variant => $exit,)+
                }
            }
        }
    };
}

codes! {
    /// argv is not what kubelet sends.
    Usage = "KV_USAGE", exit 2;
    /// The options JSON is malformed or names something invalid.
    Options = "KV_OPTIONS", exit 2;
    /// The node config file (`kv.json`) is malformed.
    Config = "KV_CONFIG", exit 2;
    /// The node policy forbids this pod's request.
    Policy = "KV_POLICY", exit 2;
    /// The mount directory is not a kubelet volume directory.
    Dir = "KV_DIR", exit 2;
    /// NMI has no identity bound to the pod (yet).
    NmiNoIdentity = "KV_NMI_NO_IDENTITY", exit 3;
    /// NMI failed otherwise.
    Nmi = "KV_NMI", exit 3;
    /// IMDS has no such managed identity on this node.
    ImdsNoIdentity = "KV_IMDS_NO_IDENTITY", exit 3;
    /// IMDS failed otherwise.
    Imds = "KV_IMDS", exit 3;
    /// AAD rejected the client credentials (bad secret or certificate).
    AadClient = "KV_AAD_CLIENT", exit 3;
    /// AAD failed otherwise (unknown tenant or application).
    Aad = "KV_AAD", exit 3;
    /// AAD has no federated identity credential matching the pod's service-account token.
    AadFederation = "KV_AAD_FEDERATION", exit 3;
    /// The pod's projected service-account token is missing, unreadable, or its claims do not
    /// fit (audience, subject, expiry).
    SaToken = "KV_SA_TOKEN", exit 3;
    /// Key Vault rejected the token (audience, issuer, expiry).
    VaultUnauthorized = "KV401_UNAUTHORIZED", exit 3;
    /// The identity lacks a permission on the vault.
    Forbidden = "KV403_FORBIDDEN", exit 5;
    /// The object is disabled.
    Disabled = "KV403_DISABLED", exit 5;
    /// The object or version does not exist.
    NotFound = "KV404_NOT_FOUND", exit 4;
    /// Key Vault kept throttling until the deadline.
    Throttled = "KV429_THROTTLED", exit 6;
    /// Key Vault answered an unexpected status.
    Vault = "KV_VAULT", exit 6;
    /// DNS, TCP or TLS failure reaching a service.
    Network = "KV_NETWORK", exit 6;
    /// The call's deadline ran out.
    Timeout = "KV_TIMEOUT", exit 6;
    /// An object could not be turned into file bytes.
    Render = "KV_RENDER", exit 1;
    /// The tmpfs could not be created, written or attached.
    Mount = "KV_MOUNT", exit 1;
    /// A bug: a panic or an impossible state.
    Internal = "KV_INTERNAL", exit 1;
}

/// A failure with its catalogue code.
#[derive(Debug, Clone)]
pub struct Error {
    /// What class of failure this is.
    code: Code,
    /// One line, safe to show anywhere (no control characters: see [`Error::new`]).
    message: String,
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

    /// What class of failure this is.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The one-line message (without the code).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same failure reported under another code (e.g. a network failure that means "IMDS
    /// is unreachable"), with `hint` appended to the message.
    pub fn recode(self, code: Code, hint: &str) -> Self {
        Error::new(code, format!("{}{hint}", self.message))
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

/// Makes user text safe to echo in one line: control characters shown escaped, long text cut.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_debug).collect();
    if s.chars().count() > 80 {
        out.push('…');
    }
    out
}

/// The driver's result type.
pub type Result<T> = std::result::Result<T, Error>;
