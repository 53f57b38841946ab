//! Render: a fetched Key Vault object → the bytes of the file(s) written for it.
//!
//! Pure functions, no I/O. The driver calls them after fetching everything and before it
//! mounts anything, so a render error fails the mount cleanly. Semantics follow the CSI
//! provider (spec/wire-protocols.md §6.3-6.4), fixing what users hit with v0.0.17:
//!
//! * `secret`: the value per `objectEncoding`; for a certificate-backed secret, the
//!   private key (PKCS#8) first, then the chain ordered leaf → root (`objectFormat: pfx`
//!   keeps the PFX as Key Vault returned it);
//! * `key`: the public key as SPKI PEM (or DER, or a public JWK);
//! * `cert`: the leaf certificate as PEM (or the DER that v0.0.17 wrote).
//!
//! Every input comes from a server we do not fully trust: sizes are bounded, nothing
//! panics, and no error message ever carries secret bytes.

mod asn1;
mod bundle;
mod chain;
pub mod fields;
mod key;
mod pem;
mod pkcs12;

use std::fmt;

use base64::Engine as _;
use zeroize::Zeroizing;

/// Largest secret value or certificate DER we accept. Key Vault caps secrets at 25 KiB,
/// so this only stops a hostile or broken server from making us allocate without bound.
pub const MAX_INPUT_BYTES: usize = 1 << 20;

/// Largest RSA modulus we render. Key Vault's largest is 4096 bits; 16384 leaves room.
pub const MAX_RSA_BITS: usize = 16384;

/// `objectFormat`: the shape of the main file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PEM text (the default for every kind).
    Pem,
    /// The PKCS#12 as Key Vault returned it (certificate-backed secrets only).
    Pfx,
    /// Binary DER: the certificate (`cert`) or the SubjectPublicKeyInfo (`key`).
    Der,
    /// The public JSON Web Key (`key` only).
    Jwk,
}

impl Format {
    /// The option value as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Pem => "pem",
            Format::Pfx => "pfx",
            Format::Der => "der",
            Format::Jwk => "jwk",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `objectEncoding`: how a secret's value is turned into bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The value's own bytes (the default).
    Utf8,
    /// The value is standard base64; the file holds the decoded bytes.
    Base64,
    /// The value is hex; the file holds the decoded bytes.
    Hex,
}

impl Encoding {
    /// The option value as users write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Base64 => "base64",
            Encoding::Hex => "hex",
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The per-object rendering choices, already parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// `objectFormat`; `None` = PEM.
    pub format: Option<Format>,
    /// `objectEncoding`; `None` = utf-8. Secrets only.
    pub encoding: Option<Encoding>,
    /// Also write `<file>.crt` and `<file>.key` for a certificate-backed secret.
    pub split_cert_and_key: bool,
}

/// Which Key Vault object type is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `secret` (plain or certificate-backed).
    Secret,
    /// `key` (public part only: Key Vault never returns private key members).
    Key,
    /// `cert` (the leaf certificate).
    Cert,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Key => "key",
            ObjectKind::Cert => "cert",
        }
    }
}

/// What a split certificate-backed secret writes beside its main file: the certificates,
/// then the key.
pub const SPLIT_SUFFIXES: [&str; 2] = [".crt", ".key"];

/// One file to write for an object.
pub struct RenderedFile {
    /// `None` for the main file (named after the alias or object), else the suffix
    /// appended to that name (`.crt`, `.key`).
    pub suffix: Option<&'static str>,
    /// For a `jsonFields` file: which field (an index into the object's fields), whose alias
    /// names the file instead.
    pub field: Option<usize>,
    /// The file's content; zeroed when dropped because it may hold a private key.
    pub bytes: Zeroizing<Vec<u8>>,
}

impl RenderedFile {
    fn main(bytes: Zeroizing<Vec<u8>>) -> Self {
        RenderedFile {
            suffix: None,
            field: None,
            bytes,
        }
    }
}

// Hand-written so that a `{:?}` anywhere can never print key material.
impl fmt::Debug for RenderedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenderedFile")
            .field("suffix", &self.suffix)
            .field("field", &self.field)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The public members of a Key Vault `JsonWebKey`, binary members already
/// base64url-decoded by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyMaterial {
    /// `RSA`, `RSA-HSM`, `EC`, `EC-HSM`, `oct`, `oct-HSM`.
    pub kty: String,
    /// `P-256`, `P-384`, `P-521`, `P-256K` (EC only).
    pub crv: Option<String>,
    /// RSA modulus (big-endian).
    pub n: Option<Vec<u8>>,
    /// RSA public exponent (big-endian).
    pub e: Option<Vec<u8>>,
    /// EC x coordinate.
    pub x: Option<Vec<u8>>,
    /// EC y coordinate.
    pub y: Option<Vec<u8>>,
    /// The key identifier URL, copied into the JWK output.
    pub kid: Option<String>,
}

/// Why an object could not be rendered. Messages are lowercase, name the object and what
/// is wrong, and never contain any part of a secret value.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An option value or combination is not valid (found at option-parse time).
    #[error("{0}")]
    Options(String),
    /// The object is well formed but asks for something we cannot produce.
    #[error("object `{object}`: {reason}")]
    Unsupported {
        /// The object name.
        object: String,
        /// What is not supported.
        reason: String,
    },
    /// The object's content is not what its type or content type says.
    #[error("object `{object}`: {reason}")]
    Malformed {
        /// The object name.
        object: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object is larger than any legitimate Key Vault object.
    #[error("object `{object}`: {reason}")]
    TooLarge {
        /// The object name.
        object: String,
        /// Which limit was exceeded.
        reason: String,
    },
}

/// Internal error without the object name, attached at the public boundary so that the
/// helpers stay independent of which object they work on.
#[derive(Debug)]
pub(crate) enum Fault {
    Unsupported(String),
    Malformed(String),
    TooLarge(String),
}

impl Fault {
    fn at(self, object: &str) -> RenderError {
        let object = object.to_owned();
        match self {
            Fault::Unsupported(reason) => RenderError::Unsupported { object, reason },
            Fault::Malformed(reason) => RenderError::Malformed { object, reason },
            Fault::TooLarge(reason) => RenderError::TooLarge { object, reason },
        }
    }
}

fn malformed(reason: impl Into<String>) -> Fault {
    Fault::Malformed(reason.into())
}

fn unsupported(reason: impl Into<String>) -> Fault {
    Fault::Unsupported(reason.into())
}

/// A server- or user-provided label (content type, kty, option value) cut short and
/// escaped so it cannot flood or break a one-line error message.
fn shown(s: &str) -> String {
    const MAX: usize = 64;
    let cut: String = s.chars().take(MAX).collect();
    let mut out = cut.escape_debug().to_string();
    if s.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Checks the option combination for an object kind, without any object at hand, so that
/// a bad pod spec fails before anything is fetched.
///
/// * `pfx` is for secrets (only a certificate's PKCS#12 secret can honour it);
/// * `jwk` is for keys; `der` is for certs (the certificate) and keys (the SPKI);
/// * `objectEncoding` is for secrets only, as in the CSI provider.
pub fn validate_options(kind: ObjectKind, opts: &RenderOptions) -> Result<(), RenderError> {
    if let Some(format) = opts.format {
        let allowed = match kind {
            ObjectKind::Secret => matches!(format, Format::Pem | Format::Pfx),
            ObjectKind::Key => matches!(format, Format::Pem | Format::Der | Format::Jwk),
            ObjectKind::Cert => matches!(format, Format::Pem | Format::Der),
        };
        if !allowed {
            let valid = match kind {
                ObjectKind::Secret => "pem, pfx",
                ObjectKind::Key => "pem, der, jwk",
                ObjectKind::Cert => "pem, der",
            };
            return Err(RenderError::Options(format!(
                "objectFormat `{format}` does not apply to objectType {}; use one of {valid}",
                kind.as_str()
            )));
        }
    }
    if let Some(encoding) = opts.encoding {
        if kind != ObjectKind::Secret {
            return Err(RenderError::Options(format!(
                "objectEncoding `{encoding}` applies only to objectType secret, not {}",
                kind.as_str()
            )));
        }
    }
    Ok(())
}

/// Renders a secret. `cert_backed` is true when Key Vault returned a `kid` (the secret
/// holds a certificate's private key and chain); `content_type` is its `contentType`.
pub fn render_secret(
    object: &str,
    value: &str,
    content_type: Option<&str>,
    cert_backed: bool,
    opts: &RenderOptions,
) -> Result<Vec<RenderedFile>, RenderError> {
    validate_options(ObjectKind::Secret, opts)?;
    check_size(value.len()).map_err(|f| f.at(object))?;
    if cert_backed {
        bundle::render(value, content_type, opts).map_err(|f| f.at(object))
    } else {
        // A plain secret is the value itself: `objectFormat` has nothing to convert, as
        // in the CSI provider (a PFX stored as a plain secret is already "as returned").
        let bytes = decode_value(value, opts.encoding.unwrap_or(Encoding::Utf8))
            .map_err(|f| f.at(object))?;
        Ok(vec![RenderedFile::main(bytes)])
    }
}

/// Renders a key's public part (Key Vault never returns private members on GET).
pub fn render_key(
    object: &str,
    jwk: &KeyMaterial,
    opts: &RenderOptions,
) -> Result<Vec<RenderedFile>, RenderError> {
    validate_options(ObjectKind::Key, opts)?;
    let bytes = key::render(jwk, opts.format.unwrap_or(Format::Pem)).map_err(|f| f.at(object))?;
    Ok(vec![RenderedFile::main(bytes)])
}

pub use bundle::ClientCertificate;

/// A service principal's client certificate from the secretRef: PEM text (certificate and
/// private key) or a PKCS#12 file with an optional password. `what` names it in errors.
pub fn client_certificate(
    what: &str,
    pem_text: Option<&str>,
    pfx: Option<(&[u8], Option<&str>)>,
) -> Result<ClientCertificate, RenderError> {
    let len = pem_text
        .map(str::len)
        .or(pfx.map(|(der, _)| der.len()))
        .unwrap_or(0);
    check_size(len).map_err(|f| f.at(what))?;
    bundle::client_certificate(pem_text, pfx).map_err(|f| f.at(what))
}

/// Renders a certificate (`cer`: the leaf's DER).
pub fn render_cert(
    object: &str,
    der: &[u8],
    opts: &RenderOptions,
) -> Result<Vec<RenderedFile>, RenderError> {
    validate_options(ObjectKind::Cert, opts)?;
    check_size(der.len()).map_err(|f| f.at(object))?;
    chain::CertInfo::parse(der).map_err(|f| f.at(object))?;
    let bytes = match opts.format.unwrap_or(Format::Pem) {
        Format::Der => Zeroizing::new(der.to_vec()),
        _ => pem::encode(pem::CERTIFICATE, der),
    };
    Ok(vec![RenderedFile::main(bytes)])
}

fn check_size(len: usize) -> Result<(), Fault> {
    if len > MAX_INPUT_BYTES {
        Err(Fault::TooLarge(format!(
            "content is {len} bytes, over the {MAX_INPUT_BYTES}-byte limit"
        )))
    } else {
        Ok(())
    }
}

/// The value's bytes per `objectEncoding`. Errors name the encoding, never the value.
fn decode_value(value: &str, encoding: Encoding) -> Result<Zeroizing<Vec<u8>>, Fault> {
    match encoding {
        Encoding::Utf8 => Ok(Zeroizing::new(value.as_bytes().to_vec())),
        Encoding::Base64 => base64_lenient(value)
            .ok_or_else(|| malformed("value is not valid base64 (objectEncoding base64)")),
        Encoding::Hex => {
            let mut out = Zeroizing::new(vec![0u8; value.trim().len() / 2]);
            hex::decode_to_slice(value.trim(), &mut out[..])
                .map_err(|_| malformed("value is not valid hex (objectEncoding hex)"))?;
            Ok(out)
        }
    }
}

/// Standard-alphabet base64, ignoring whitespace anywhere (values pasted with line
/// breaks) and indifferent to padding.
fn base64_lenient(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const ENGINE: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let compact: Zeroizing<Vec<u8>> =
        Zeroizing::new(text.bytes().filter(|b| !b.is_ascii_whitespace()).collect());
    ENGINE.decode(&compact[..]).ok().map(Zeroizing::new)
}

#[cfg(test)]
mod tests;
