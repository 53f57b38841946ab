//! `key` objects: the public part of a Key Vault JSON Web Key as SPKI PEM/DER or as a
//! public JWK. v0.0.17 wrote the base64url modulus text and panicked on EC keys.

use base64::Engine as _;
use serde::Serialize;
use zeroize::Zeroizing;

use super::asn1::{self, strip_zeros};
use super::{malformed, pem, shown, unsupported, Fault, Format, KeyMaterial, MAX_RSA_BITS};

/// A curve we can express as SPKI: its JWK name, OID and coordinate length.
struct Curve {
    name: &'static str,
    oid: &'static [u8],
    len: usize,
}

const CURVES: [Curve; 3] = [
    Curve {
        name: "P-256",
        oid: asn1::OID_P256,
        len: 32,
    },
    Curve {
        name: "P-384",
        oid: asn1::OID_P384,
        len: 48,
    },
    Curve {
        name: "P-521",
        oid: asn1::OID_P521,
        len: 66,
    },
];

/// The public key in the requested format (`Pem`, `Der` or `Jwk`).
pub(crate) fn render(jwk: &KeyMaterial, format: Format) -> Result<Zeroizing<Vec<u8>>, Fault> {
    let kty = jwk.kty.trim();
    let (spki, public_jwk) = if is(kty, "RSA") || is(kty, "RSA-HSM") {
        rsa(jwk)?
    } else if is(kty, "EC") || is(kty, "EC-HSM") {
        ec(jwk)?
    } else if is(kty, "oct") || is(kty, "oct-HSM") {
        return Err(unsupported(format!(
            "key type `{}` is a symmetric key, which Key Vault never exports",
            shown(kty)
        )));
    } else {
        return Err(unsupported(format!(
            "key type `{}` is not supported",
            shown(kty)
        )));
    };
    Ok(match format {
        Format::Der => spki,
        Format::Jwk => {
            let mut json = serde_json::to_vec(&public_jwk)
                .map_err(|_| malformed("cannot serialise the public JWK"))?;
            json.push(b'\n');
            Zeroizing::new(json)
        }
        Format::Pem | Format::Pfx => pem::encode(pem::PUBLIC_KEY, &spki),
    })
}

fn is(kty: &str, name: &str) -> bool {
    kty.eq_ignore_ascii_case(name)
}

/// The public JWK written for `objectFormat: jwk`. `kty` is normalised to the JOSE
/// names (`RSA`, `EC`): `-HSM` is Key Vault's storage detail, unknown to JOSE libraries.
#[derive(Serialize)]
struct PublicJwk<'a> {
    kty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    crv: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    y: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kid: Option<&'a str>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa(jwk: &KeyMaterial) -> Result<(Zeroizing<Vec<u8>>, PublicJwk<'_>), Fault> {
    let n = strip_zeros(member(&jwk.n, "RSA", "n")?);
    let e = strip_zeros(member(&jwk.e, "RSA", "e")?);
    let bits = n.len().saturating_mul(8);
    if bits > MAX_RSA_BITS {
        return Err(Fault::TooLarge(format!(
            "RSA modulus of about {bits} bits is over the {MAX_RSA_BITS}-bit limit"
        )));
    }
    if n.is_empty() || e.is_empty() || e.len() > n.len() {
        return Err(malformed("RSA key has an invalid modulus or exponent"));
    }
    let public = PublicJwk {
        kty: "RSA",
        crv: None,
        n: Some(b64url(n)),
        e: Some(b64url(e)),
        x: None,
        y: None,
        kid: jwk.kid.as_deref(),
    };
    Ok((asn1::rsa_spki(n, e), public))
}

fn ec(jwk: &KeyMaterial) -> Result<(Zeroizing<Vec<u8>>, PublicJwk<'_>), Fault> {
    let crv = jwk
        .crv
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| malformed("EC key has no curve (`crv`)"))?;
    let curve = CURVES
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(crv))
        .ok_or_else(|| {
            // P-256K (secp256k1, the Go SDK's SECP256K1) has no OID in Go's or most TLS
            // stacks; say so plainly instead of writing a key few tools can load.
            if crv.eq_ignore_ascii_case("P-256K") || crv.eq_ignore_ascii_case("SECP256K1") {
                unsupported("curve P-256K is not supported")
            } else {
                unsupported(format!("curve `{}` is not supported", shown(crv)))
            }
        })?;
    let x = coordinate(member(&jwk.x, "EC", "x")?, curve, "x")?;
    let y = coordinate(member(&jwk.y, "EC", "y")?, curve, "y")?;
    let mut point = Vec::with_capacity(1 + 2 * curve.len);
    point.push(0x04); // uncompressed
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let public = PublicJwk {
        kty: "EC",
        crv: Some(curve.name),
        n: None,
        e: None,
        x: Some(b64url(&x)),
        y: Some(b64url(&y)),
        kid: jwk.kid.as_deref(),
    };
    Ok((asn1::ec_spki(curve.oid, &point), public))
}

fn member<'a>(value: &'a Option<Vec<u8>>, kty: &str, name: &str) -> Result<&'a [u8], Fault> {
    value
        .as_deref()
        .ok_or_else(|| malformed(format!("{kty} key has no `{name}` member")))
}

/// A coordinate at exactly the curve's length. RFC 7518 requires full length; a shorter
/// value (an encoder that dropped leading zeros) is left-padded as Go's big.Int path
/// does, a longer one is refused.
fn coordinate(value: &[u8], curve: &Curve, name: &str) -> Result<Vec<u8>, Fault> {
    let digits = if value.len() > curve.len {
        strip_zeros(value)
    } else {
        value
    };
    if digits.len() > curve.len {
        return Err(malformed(format!(
            "EC `{name}` coordinate is {} bytes, {} expects {}",
            value.len(),
            curve.name,
            curve.len
        )));
    }
    let mut out = vec![0u8; curve.len - digits.len()];
    out.extend_from_slice(digits);
    Ok(out)
}
