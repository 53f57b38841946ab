//! Certificate-backed secrets: the private key and chain Key Vault stores behind a
//! certificate, as PKCS#12 (`application/x-pkcs12`) or PEM (`application/x-pem-file`).
//!
//! Default output is one PEM file: every private key as PKCS#8 (`PRIVATE KEY`), then the
//! certificates leaf → root. This is what `az keyvault secret download` users expect and
//! what the CSI provider writes, minus its quirks (PEM secrets were never re-ordered).

use zeroize::Zeroizing;

use super::asn1::{self, PublicKey};
use super::chain::{self, CertInfo};
use super::pkcs12;
use super::{
    malformed, pem, shown, unsupported, Encoding, Fault, Format, RenderOptions, RenderedFile,
};

/// PEM text that may hold a private key.
type Pem = Zeroizing<Vec<u8>>;

const PKCS12: &str = "application/x-pkcs12";
const PEM_FILE: &str = "application/x-pem-file";

/// Keys (PKCS#8 DER) and certificates (DER) in their original order.
struct Bundle {
    keys: Vec<Zeroizing<Vec<u8>>>,
    certs: Vec<Vec<u8>>,
}

pub(crate) fn render(
    value: &str,
    content_type: Option<&str>,
    opts: &RenderOptions,
) -> Result<Vec<RenderedFile>, Fault> {
    let content_type = content_type.map(str::trim).ok_or_else(|| {
        malformed("certificate-backed secret has no content type (expected application/x-pkcs12 or application/x-pem-file)")
    })?;
    let format = opts.format.unwrap_or(Format::Pem);
    let encoding = opts.encoding.unwrap_or(Encoding::Utf8);
    // `objectEncoding` turns text into binary; a PEM bundle is text, so only the PFX's
    // base64 can meaningfully be decoded (`pfx` + `base64` = the binary .pfx file).
    if encoding != Encoding::Utf8 && !(format == Format::Pfx && encoding == Encoding::Base64) {
        return Err(unsupported(format!(
            "objectEncoding {encoding} with objectFormat {format} does not apply to a certificate; use utf-8, or pfx with base64 for a binary PFX"
        )));
    }

    let (main, bundle) = if media_type_is(content_type, PKCS12) {
        let pfx = super::base64_lenient(value)
            .ok_or_else(|| malformed("PKCS#12 secret value is not valid base64"))?;
        if format == Format::Pfx {
            let main = match encoding {
                Encoding::Base64 => pfx.clone(),
                _ => Zeroizing::new(value.as_bytes().to_vec()),
            };
            // Decode only when the split files need the contents.
            let bundle = if opts.split_cert_and_key {
                Some(from_pkcs12(&pfx)?)
            } else {
                None
            };
            (Some(main), bundle)
        } else {
            (None, Some(from_pkcs12(&pfx)?))
        }
    } else if media_type_is(content_type, PEM_FILE) {
        if format == Format::Pfx {
            return Err(unsupported(
                "objectFormat pfx needs a certificate stored as PKCS#12; this one is stored as PEM (application/x-pem-file), and a PFX cannot be built from it",
            ));
        }
        (None, Some(from_pem(value)?))
    } else {
        return Err(unsupported(format!(
            "unknown content type `{}` for a certificate-backed secret (expected application/x-pkcs12 or application/x-pem-file)",
            shown(content_type)
        )));
    };

    let mut files = Vec::new();
    let pems = bundle.map(|b| b.into_pem()).transpose()?;
    match (main, &pems) {
        (Some(main), _) => files.push(RenderedFile::main(main)),
        (None, Some((keys, certs))) => {
            let mut all = Zeroizing::new(Vec::with_capacity(keys.len() + certs.len()));
            all.extend_from_slice(keys);
            all.extend_from_slice(certs);
            files.push(RenderedFile::main(all));
        }
        (None, None) => return Err(malformed("certificate-backed secret holds nothing")),
    }
    if opts.split_cert_and_key {
        if let Some((keys, certs)) = pems {
            files.push(RenderedFile {
                suffix: Some(super::SPLIT_SUFFIXES[0]),
                field: None,
                bytes: certs,
            });
            // A certificate with a non-exportable key has no key to write.
            if !keys.is_empty() {
                files.push(RenderedFile {
                    suffix: Some(super::SPLIT_SUFFIXES[1]),
                    field: None,
                    bytes: keys,
                });
            }
        }
    }
    Ok(files)
}

/// `type/subtype` match, case-insensitive, ignoring parameters such as `; charset=`.
fn media_type_is(content_type: &str, want: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(want))
}

fn from_pkcs12(pfx: &[u8]) -> Result<Bundle, Fault> {
    let contents = pkcs12::decode(pfx)?;
    Ok(Bundle {
        keys: contents.keys,
        certs: contents.certs,
    })
}

/// Reads a PEM bundle; legacy PKCS#1/SEC1 keys are converted to PKCS#8 so every output
/// key has the same `PRIVATE KEY` header whatever was imported (CSI #383, #324).
fn from_pem(text: &str) -> Result<Bundle, Fault> {
    let mut bundle = Bundle {
        keys: Vec::new(),
        certs: Vec::new(),
    };
    for block in pem::decode_all(text)? {
        match block.label.as_str() {
            "PRIVATE KEY" => bundle.keys.push(block.der),
            "RSA PRIVATE KEY" => bundle.keys.push(asn1::pkcs1_to_pkcs8(&block.der)?),
            "EC PRIVATE KEY" => bundle.keys.push(asn1::sec1_to_pkcs8(&block.der)?),
            "CERTIFICATE" => bundle.certs.push(block.der.to_vec()),
            // OpenSSL writes the curve name as its own block before an EC key.
            "EC PARAMETERS" => {}
            "ENCRYPTED PRIVATE KEY" => {
                return Err(unsupported("encrypted PEM private keys are not supported"))
            }
            other => {
                return Err(malformed(format!(
                    "unexpected PEM block `{other}` in a certificate's secret"
                )))
            }
        }
    }
    if bundle.keys.is_empty() && bundle.certs.is_empty() {
        return Err(malformed("PEM secret holds no private key or certificate"));
    }
    Ok(bundle)
}

impl Bundle {
    /// (keys PEM, ordered certificates PEM). Validates every key and certificate.
    fn into_pem(self) -> Result<(Pem, Pem), Fault> {
        let mut key_public: Option<PublicKey> = None;
        let mut keys = Zeroizing::new(Vec::new());
        for (i, key) in self.keys.iter().enumerate() {
            let (key, public) = asn1::pkcs8_normalise(key)?;
            if i == 0 {
                key_public = public;
            }
            keys.extend_from_slice(&pem::encode(pem::PRIVATE_KEY, &key));
        }
        // The same certificate twice (e.g. a root in both a chain and a trust bag) would
        // make the chain unorderable; one copy is enough.
        let mut seen: Vec<&[u8]> = Vec::new();
        let mut unique: Vec<&Vec<u8>> = Vec::new();
        for cert in &self.certs {
            if !seen.contains(&cert.as_slice()) {
                seen.push(cert);
                unique.push(cert);
            }
        }
        let infos = unique
            .iter()
            .enumerate()
            .map(|(i, der)| {
                CertInfo::parse(der).map_err(|_| {
                    malformed(format!(
                        "certificate {} of the secret is not valid X.509",
                        i + 1
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut certs = Zeroizing::new(Vec::new());
        for i in chain::order(&infos, key_public.as_ref()) {
            if let Some(der) = unique.get(i) {
                certs.extend_from_slice(&pem::encode(pem::CERTIFICATE, der));
            }
        }
        Ok((keys, certs))
    }
}

/// A service principal's client certificate: the key that signs client assertions and the
/// certificate AAD has registered (the one matching the key).
pub struct ClientCertificate {
    /// The private key, PKCS#8 DER.
    pub key_pkcs8: Zeroizing<Vec<u8>>,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientCertificate(REDACTED)")
    }
}

/// The key and certificate of PEM text (`PRIVATE KEY`/`RSA PRIVATE KEY` plus `CERTIFICATE`s,
/// any order) or of a PKCS#12 file (`password` `None` = the empty password).
pub(crate) fn client_certificate(
    pem_text: Option<&str>,
    pfx: Option<(&[u8], Option<&str>)>,
) -> Result<ClientCertificate, Fault> {
    let bundle = match (pem_text, pfx) {
        (Some(text), _) => from_pem(text)?,
        (None, Some((der, password))) => {
            let contents = pkcs12::decode_with(der, password)?;
            Bundle {
                keys: contents.keys,
                certs: contents.certs,
            }
        }
        (None, None) => return Err(malformed("no certificate given")),
    };
    let first = bundle
        .keys
        .first()
        .ok_or_else(|| malformed("the client certificate has no private key"))?;
    let (key_pkcs8, public) = asn1::pkcs8_normalise(first)?;
    // The certificate AAD knows is the one of this key; a chain may come with it.
    let mut leaf = None;
    for der in &bundle.certs {
        let info =
            CertInfo::parse(der).map_err(|_| malformed("a certificate is not valid X.509"))?;
        if public.is_some() && info.public_key == public {
            leaf = Some(der.clone());
            break;
        }
    }
    let cert_der = leaf.ok_or_else(|| {
        malformed("no certificate matches the private key: give the certificate AAD has registered together with its key")
    })?;
    Ok(ClientCertificate {
        key_pkcs8,
        cert_der,
    })
}
