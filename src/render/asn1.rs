//! The little DER this module writes and reads by hand: SubjectPublicKeyInfo for JWKs,
//! PKCS#1/SEC1 → PKCS#8 wrapping, and the public key inside a PKCS#8 private key.
//! Hand-written because each structure is a few fixed fields; reading goes through the
//! `der` crate's TLV parser so lengths are always checked.

use der::{asn1::AnyRef, Decode, Reader, SliceReader, Tag, TagNumber, Tagged};
use zeroize::Zeroizing;

use super::{malformed, Fault};

/// `rsaEncryption` (1.2.840.113549.1.1.1), content octets.
pub(crate) const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
pub(crate) const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// `prime256v1` / P-256 (1.2.840.10045.3.1.7).
pub(crate) const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// `secp384r1` / P-384 (1.3.132.0.34).
pub(crate) const OID_P384: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x22];
/// `secp521r1` / P-521 (1.3.132.0.35).
pub(crate) const OID_P521: &[u8] = &[0x2B, 0x81, 0x04, 0x00, 0x23];

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;

/// A public key in a form where "same key" is plain equality, whichever structure it
/// came from (certificate SPKI, PKCS#8 private key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    /// Modulus and exponent without leading zero bytes.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The encoded EC point as found (uncompressed in practice).
    Ec(Vec<u8>),
}

/// One TLV. Output buffers are zeroizing because the same writer wraps private keys.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(content.len() + 6));
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let content = Zeroizing::new(parts.concat());
    tlv(SEQUENCE, &content)
}

/// Leading zero bytes removed (big-endian unsigned magnitude).
pub(crate) fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes.get(skip..).unwrap_or_default()
}

/// A non-negative INTEGER from a big-endian magnitude (minimal, sign byte if needed).
fn uint(magnitude: &[u8]) -> Zeroizing<Vec<u8>> {
    let m = strip_zeros(magnitude);
    let mut content = Zeroizing::new(Vec::with_capacity(m.len() + 1));
    if m.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(m);
    tlv(INTEGER, &content)
}

/// SubjectPublicKeyInfo for RSA, byte-identical to Go's `x509.MarshalPKIXPublicKey`.
pub(crate) fn rsa_spki(n: &[u8], e: &[u8]) -> Zeroizing<Vec<u8>> {
    let rsa_public_key = seq(&[&uint(n), &uint(e)]);
    let alg = seq(&[&tlv(OID, OID_RSA), &[NULL, 0]]);
    spki(&alg, &rsa_public_key)
}

/// SubjectPublicKeyInfo for a named curve and an encoded point.
pub(crate) fn ec_spki(curve_oid: &[u8], point: &[u8]) -> Zeroizing<Vec<u8>> {
    let alg = seq(&[&tlv(OID, OID_EC), &tlv(OID, curve_oid)]);
    spki(&alg, point)
}

fn spki(alg: &[u8], key: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut bits = Zeroizing::new(Vec::with_capacity(key.len() + 1));
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    seq(&[alg, &tlv(BIT_STRING, &bits)])
}

/// PKCS#1 `RSAPrivateKey` → PKCS#8 `PrivateKeyInfo` (what `openssl pkcs8 -topk8` does).
pub(crate) fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let items = sequence(pkcs1).ok_or_else(|| malformed("RSA PRIVATE KEY is not valid DER"))?;
    rsa_public_from_pkcs1(&items).ok_or_else(|| malformed("RSA PRIVATE KEY is not valid DER"))?;
    let alg = seq(&[&tlv(OID, OID_RSA), &[NULL, 0]]);
    Ok(seq(&[&[INTEGER, 1, 0], &alg, &tlv(OCTET_STRING, pkcs1)]))
}

/// SEC1 `ECPrivateKey` → PKCS#8. The curve comes from the key's own `parameters`, which
/// OpenSSL always writes for a standalone `EC PRIVATE KEY`.
pub(crate) fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let items = sequence(sec1).ok_or_else(|| malformed("EC PRIVATE KEY is not valid DER"))?;
    let params = context(&items, TagNumber::N0)
        .ok_or_else(|| malformed("EC PRIVATE KEY does not name its curve"))?;
    let curve = AnyRef::from_der(params.value())
        .ok()
        .filter(|a| a.tag() == Tag::ObjectIdentifier)
        .ok_or_else(|| malformed("EC PRIVATE KEY does not name its curve"))?;
    let alg = seq(&[&tlv(OID, OID_EC), &tlv(OID, curve.value())]);
    Ok(seq(&[&[INTEGER, 1, 0], &alg, &tlv(OCTET_STRING, sec1)]))
}

/// A PKCS#8 key re-written as a plain v1 `PrivateKeyInfo` (version, algorithm, key),
/// plus its public key when that can be read without EC arithmetic (RSA always; EC when
/// the key carries its optional `publicKey`, which OpenSSL, ring and CNG all write).
///
/// Re-writing drops PKCS#8 attributes and the v2 public key: Key Vault's PFX keys carry a
/// CNG key-usage attribute that ring (hence rustls) refuses; Go's `MarshalPKCS8PrivateKey`
/// in the CSI provider drops them the same way.
pub(crate) fn pkcs8_normalise(
    pkcs8: &[u8],
) -> Result<(Zeroizing<Vec<u8>>, Option<PublicKey>), Fault> {
    let bad = || malformed("private key is not valid PKCS#8");
    let items = sequence(pkcs8).ok_or_else(bad)?;
    let (alg, key) = match (items.first(), items.get(1), items.get(2)) {
        (Some(version), Some(alg), Some(key))
            if version.tag() == Tag::Integer
                && alg.tag() == Tag::Sequence
                && key.tag() == Tag::OctetString =>
        {
            (alg, key)
        }
        _ => return Err(bad()),
    };
    let alg_items = sequence_value(alg.value()).ok_or_else(bad)?;
    let oid = match alg_items.first() {
        Some(o) if o.tag() == Tag::ObjectIdentifier => o.value(),
        _ => return Err(bad()),
    };
    let public = if oid == OID_RSA {
        let inner = sequence(key.value()).ok_or_else(bad)?;
        let (n, e) = rsa_public_from_pkcs1(&inner).ok_or_else(bad)?;
        Some(PublicKey::Rsa { n, e })
    } else if oid == OID_EC {
        let inner = sequence(key.value()).ok_or_else(bad)?;
        context(&inner, TagNumber::N1)
            .and_then(|explicit| AnyRef::from_der(explicit.value()).ok())
            .filter(|bits| bits.tag() == Tag::BitString)
            .and_then(|bits| bits.value().split_first().map(|(_, p)| p.to_vec()))
            .map(PublicKey::Ec)
    } else {
        None
    };
    let v1 = seq(&[
        &[INTEGER, 1, 0],
        &tlv(SEQUENCE, alg.value()),
        &tlv(OCTET_STRING, key.value()),
    ]);
    Ok((v1, public))
}

/// (n, e) from the fields of a PKCS#1 `RSAPrivateKey` (version, n, e, …).
fn rsa_public_from_pkcs1(items: &[AnyRef<'_>]) -> Option<(Vec<u8>, Vec<u8>)> {
    match (items.get(1), items.get(2)) {
        (Some(n), Some(e)) if n.tag() == Tag::Integer && e.tag() == Tag::Integer => Some((
            strip_zeros(n.value()).to_vec(),
            strip_zeros(e.value()).to_vec(),
        )),
        _ => None,
    }
}

/// The elements of a DER SEQUENCE occupying all of `der`.
pub(crate) fn sequence(der: &[u8]) -> Option<Vec<AnyRef<'_>>> {
    let outer = AnyRef::from_der(der).ok()?;
    if outer.tag() != Tag::Sequence {
        return None;
    }
    sequence_value(outer.value())
}

/// The TLVs one after another in the content octets of a SEQUENCE.
fn sequence_value(content: &[u8]) -> Option<Vec<AnyRef<'_>>> {
    let mut reader = SliceReader::new(content).ok()?;
    let mut items = Vec::new();
    while !reader.is_finished() {
        items.push(reader.decode::<AnyRef<'_>>().ok()?);
    }
    Some(items)
}

/// The constructed context-specific element `[n]` among `items`.
fn context<'a>(items: &[AnyRef<'a>], n: TagNumber) -> Option<AnyRef<'a>> {
    items.iter().copied().find(|a| {
        a.tag()
            == Tag::ContextSpecific {
                constructed: true,
                number: n,
            }
    })
}
