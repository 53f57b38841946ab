//! Certificate facts needed to order a chain, and the ordering itself: leaf →
//! intermediates → root, as nginx, HAProxy and Go's `tls.LoadX509KeyPair` expect
//! (CSI issues #156, #103, #747). Anything ambiguous keeps the original order.

use x509_parser::extensions::ParsedExtension;
use x509_parser::public_key::PublicKey as X509PublicKey;

use super::asn1::{strip_zeros, PublicKey};
use super::{malformed, Fault};

/// What linking needs from one certificate. DNs are compared as raw DER, as Go does.
#[derive(Debug)]
pub(crate) struct CertInfo {
    subject: Vec<u8>,
    issuer: Vec<u8>,
    subject_key_id: Option<Vec<u8>>,
    authority_key_id: Option<Vec<u8>>,
    pub public_key: Option<PublicKey>,
}

impl CertInfo {
    /// Parses a DER certificate; an error means it is not a certificate at all.
    pub(crate) fn parse(der: &[u8]) -> Result<Self, Fault> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|_| malformed("content is not a valid X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(malformed("certificate DER has trailing bytes"));
        }
        let mut subject_key_id = None;
        let mut authority_key_id = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => subject_key_id = Some(id.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    authority_key_id = aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => {}
            }
        }
        let public_key = match cert.public_key().parsed() {
            Ok(X509PublicKey::RSA(rsa)) => Some(PublicKey::Rsa {
                n: strip_zeros(rsa.modulus).to_vec(),
                e: strip_zeros(rsa.exponent).to_vec(),
            }),
            Ok(X509PublicKey::EC(point)) => Some(PublicKey::Ec(point.data().to_vec())),
            _ => None,
        };
        Ok(CertInfo {
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            subject_key_id,
            authority_key_id,
            public_key,
        })
    }

    /// True when `self` names `parent` as its issuer: DN match, and key identifiers match
    /// when both are present (they disambiguate re-keyed CAs with the same name).
    fn issued_by(&self, parent: &CertInfo) -> bool {
        if self.issuer != parent.subject {
            return false;
        }
        match (&self.authority_key_id, &parent.subject_key_id) {
            (Some(aki), Some(ski)) => aki == ski,
            _ => true,
        }
    }

    fn self_issued(&self) -> bool {
        self.issued_by(self)
    }
}

/// The order (indices into `certs`) to write them in. `key` is the bundle's private key's
/// public half, used to find the leaf. When no single chain covers every certificate
/// (a missing link, two leaves, a loop) the original order is returned unchanged.
pub(crate) fn order(certs: &[CertInfo], key: Option<&PublicKey>) -> Vec<usize> {
    let original: Vec<usize> = (0..certs.len()).collect();
    if certs.len() < 2 {
        return original;
    }
    let Some(leaf) = find_leaf(certs, key) else {
        return original;
    };
    let mut chain = vec![leaf];
    let mut used = vec![false; certs.len()];
    if let Some(u) = used.get_mut(leaf) {
        *u = true;
    }
    // Each step uses one more certificate, so this ends after at most len steps.
    while let Some(&last) = chain.last() {
        let Some(child) = certs.get(last) else {
            return original;
        };
        if child.self_issued() {
            break;
        }
        let parent = (0..certs.len()).find(|&i| {
            !used.get(i).copied().unwrap_or(true)
                && certs.get(i).is_some_and(|p| child.issued_by(p))
        });
        match parent {
            Some(p) => {
                if let Some(u) = used.get_mut(p) {
                    *u = true;
                }
                chain.push(p);
            }
            None => break,
        }
    }
    if chain.len() == certs.len() {
        chain
    } else {
        original
    }
}

/// The leaf: the certificate holding the private key's public key; failing that, the one
/// certificate that issued no other certificate in the set.
fn find_leaf(certs: &[CertInfo], key: Option<&PublicKey>) -> Option<usize> {
    if let Some(key) = key {
        if let Some(i) = certs
            .iter()
            .position(|c| c.public_key.as_ref() == Some(key))
        {
            return Some(i);
        }
    }
    let mut candidates = (0..certs.len()).filter(|&i| {
        certs.get(i).is_some_and(|parent| {
            !certs
                .iter()
                .enumerate()
                .any(|(j, child)| j != i && child.issued_by(parent))
        })
    });
    let first = candidates.next();
    match candidates.next() {
        None => first,
        Some(_) => None,
    }
}
