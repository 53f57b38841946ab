//! Access tokens issued by the emulator (JWT, HS256 with the emulator's key) and
//! verification of client assertions (RS256 / PS256 signed by a registered certificate).

use crate::util::{b64url, b64url_decode, now};
use ring::hmac;
use rsa::{Pkcs1v15Sign, Pss};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// Fixed signing key: tokens stay valid across emulator restarts.
const SIGNING_KEY: &[u8] = b"kv-emulator token signing key (not a secret; test only)";

pub struct Issued {
    pub jwt: String,
    pub iat: i64,
    pub exp: i64,
}

pub fn issue(
    resource: &str,
    client_id: &str,
    object_id: &str,
    tenant: &str,
    lifetime: u64,
) -> Issued {
    let iat = now();
    let exp = iat + lifetime as i64;
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": "kv-emulator"});
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "appid": client_id,
        "oid": object_id,
        "sub": object_id,
        "tid": tenant,
        "ver": "1.0",
        "jti": crate::util::random_hex(8),
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, SIGNING_KEY);
    let sig = hmac::sign(&key, signing_input.as_bytes());
    Issued {
        jwt: format!("{signing_input}.{}", b64url(sig.as_ref())),
        iat,
        exp,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
}

/// Verify an emulator-issued token; returns its claims.
pub fn verify(jwt: &str) -> Result<Value, TokenError> {
    let mut parts = jwt.split('.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => (h, c, s),
        _ => return Err(TokenError::Malformed),
    };
    let sig = b64url_decode(s).ok_or(TokenError::Malformed)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, SIGNING_KEY);
    hmac::verify(&key, format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| TokenError::BadSignature)?;
    let claims: Value = serde_json::from_slice(&b64url_decode(c).ok_or(TokenError::Malformed)?)
        .map_err(|_| TokenError::Malformed)?;
    let t = now();
    if claims["exp"].as_i64().unwrap_or(0) <= t {
        return Err(TokenError::Expired);
    }
    if claims["nbf"].as_i64().unwrap_or(0) > t + 300 {
        return Err(TokenError::NotYetValid);
    }
    Ok(claims)
}

/// Why an assertion was rejected (AADSTS code, message).
pub type AssertionError = (u32, String);

/// Verify a client assertion against the registered certificate.
pub fn verify_assertion(
    jwt: &str,
    client_id: &str,
    cert_der: &[u8],
    key: &rsa::RsaPublicKey,
    accepted_audiences: &[String],
) -> Result<(), AssertionError> {
    let bad = |m: &str| {
        (
            50027u32,
            format!("AADSTS50027: JWT token is invalid or malformed. {m}"),
        )
    };
    let mut parts = jwt.split('.');
    let (h, c, s) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(c), Some(s), None) => (h, c, s),
        _ => return Err(bad("Expected three parts.")),
    };
    let header: Value = b64url_decode(h)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("Bad header."))?;
    let claims: Value = b64url_decode(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("Bad claims."))?;
    let sig = b64url_decode(s).ok_or_else(|| bad("Bad signature encoding."))?;

    // Which certificate: x5t (SHA-1, padded or not) or x5t#S256.
    let sha1 = b64url(&Sha1::digest(cert_der));
    let sha256 = b64url(&Sha256::digest(cert_der));
    let x5t = header["x5t"].as_str().map(|s| s.trim_end_matches('='));
    let x5t256 = header["x5t#S256"].as_str().map(|s| s.trim_end_matches('='));
    let matches = x5t == Some(sha1.as_str()) || x5t256 == Some(sha256.as_str());
    if !matches {
        return Err((
            700027,
            format!(
                "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]",
                x5t.or(x5t256).unwrap_or("")
            ),
        ));
    }
    let digest = Sha256::digest(format!("{h}.{c}").as_bytes());
    let ok = match header["alg"].as_str() {
        Some("RS256") => key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
            .is_ok(),
        Some("PS256") => key.verify(Pss::new::<Sha256>(), &digest, &sig).is_ok(),
        _ => false,
    };
    if !ok {
        return Err((
            700027,
            "AADSTS700027: Client assertion failed signature validation.".to_string(),
        ));
    }
    let aud = claims["aud"].as_str().unwrap_or("");
    if !accepted_audiences.iter().any(|a| a == aud) {
        return Err((
            700016,
            format!("AADSTS50013: Assertion failed signature validation. [Reason - The provided audience '{aud}' is not valid.]"),
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err((
            700021,
            "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.".into(),
        ));
    }
    let t = now();
    let exp = claims["exp"].as_f64().unwrap_or(0.0) as i64;
    if exp <= t {
        return Err((
            700024,
            "AADSTS700024: Client assertion is not within its valid time range.".into(),
        ));
    }
    if let Some(nbf) = claims["nbf"].as_f64().map(|n| n as i64) {
        if nbf > t + 300 {
            return Err((
                700024,
                "AADSTS700024: Client assertion is not within its valid time range.".into(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_and_verify() {
        let t = issue("https://vault.azure.net", "cid", "oid", "tid", 3600);
        let c = verify(&t.jwt).expect("valid");
        assert_eq!(c["aud"], "https://vault.azure.net");
        assert_eq!(c["appid"], "cid");
        assert_eq!(c["iss"], "https://sts.windows.net/tid/");
        let mut bad = t.jwt.clone();
        bad.push('x');
        assert!(verify(&bad).is_err());
        assert_eq!(verify("a.b"), Err(TokenError::Malformed));
        let expired = issue("r", "c", "o", "t", 0);
        assert_eq!(verify(&expired.jwt), Err(TokenError::Expired));
    }
}
