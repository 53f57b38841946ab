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
    issue_managed(resource, client_id, object_id, tenant, lifetime, None)
}

/// [`issue`] for a managed identity: `mirid` is its ARM resource id, the `xms_mirid` claim real
/// managed-identity tokens carry (the VM or scale set for a system-assigned identity, the
/// `…/userAssignedIdentities/<name>` resource for a user-assigned one).
pub fn issue_managed(
    resource: &str,
    client_id: &str,
    object_id: &str,
    tenant: &str,
    lifetime: u64,
    mirid: Option<&str>,
) -> Issued {
    let iat = now();
    let exp = iat + lifetime as i64;
    let header = json!({"typ": "JWT", "alg": "HS256", "kid": "kv-emulator"});
    let mut claims = json!({
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
    if let Some(m) = mirid {
        claims["xms_mirid"] = json!(m);
    }
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

/// AAD's thumbprint notation in messages: upper-case hex of the decoded `x5t` / `x5t#S256`.
fn thumbprint_hex(b64: &str) -> String {
    b64url_decode(b64)
        .map(|d| crate::util::hex(&d).to_ascii_uppercase())
        .unwrap_or_else(|| b64.to_string())
}

/// `Start=MM/DD/YYYY HH:MM:SS, End=…` of a certificate, as AAD prints a found key.
fn key_validity(cert_der: &[u8]) -> String {
    let fmt = |t: i64| crate::util::utc_secs(t, "{M}/{D}/{Y} {h}:{m}:{s}");
    match x509_parser::parse_x509_certificate(cert_der) {
        Ok((_, c)) => format!(
            "Start={}, End={}",
            fmt(c.validity().not_before.timestamp()),
            fmt(c.validity().not_after.timestamp())
        ),
        Err(_) => String::new(),
    }
}

/// Verify a certificate client assertion against the registered certificate, in AAD's
/// order and with its codes (texts from real responses quoted in public issues and the
/// Azure SDK for Java troubleshooting table):
/// thumbprint (`x5t` SHA-1, padded or not, or `x5t#S256`) → 700027 "not registered";
/// RS256 / PS256 signature → 700027 "invalid signature"; `aud` = the token endpoint →
/// 700023; `iss` = `sub` = client id → 700021; `exp` / `nbf` → 700024.
pub fn verify_assertion(
    jwt: &str,
    client_id: &str,
    cert_der: &[u8],
    key: &rsa::RsaPublicKey,
    accepted_audiences: &[String],
) -> Result<(), AssertionError> {
    let bad = || {
        (
            50027u32,
            "AADSTS50027: JWT token is invalid or malformed.".to_string(),
        )
    };
    let p = crate::federated::parse(jwt).ok_or_else(bad)?;
    let (header, claims) = (&p.header, &p.claims);

    let sha1 = b64url(&Sha1::digest(cert_der));
    let sha256 = b64url(&Sha256::digest(cert_der));
    let x5t = header["x5t"].as_str().map(|s| s.trim_end_matches('='));
    let x5t256 = header["x5t#S256"].as_str().map(|s| s.trim_end_matches('='));
    let presented = thumbprint_hex(x5t.or(x5t256).unwrap_or(""));
    if x5t != Some(sha1.as_str()) && x5t256 != Some(sha256.as_str()) {
        return Err((
            700027,
            format!(
                "AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{presented}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'. Review the documentation at https://docs.microsoft.com/en-us/graph/deployments to determine the corresponding service endpoint and https://docs.microsoft.com/en-us/graph/api/application-get?view=graph-rest-1.0&tabs=http to build a query request URL, such as 'https://graph.microsoft.com/beta/applications/{client_id}'.]"
            ),
        ));
    }
    let digest = Sha256::digest(p.signing_input.as_bytes());
    let ok = match header["alg"].as_str() {
        Some("RS256") => key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &p.signature)
            .is_ok(),
        Some("PS256") => key
            .verify(Pss::new::<Sha256>(), &digest, &p.signature)
            .is_ok(),
        _ => false,
    };
    if !ok {
        return Err((
            700027,
            format!(
                "AADSTS700027: Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{presented}', Found key '{}']",
                key_validity(cert_der)
            ),
        ));
    }
    let aud = claims["aud"].as_str().unwrap_or("");
    if !accepted_audiences.iter().any(|a| a == aud) {
        return Err((
            700023,
            "AADSTS700023: Client assertion audience claim does not match Realm issuer. Review the documentation at https://learn.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials.".into(),
        ));
    }
    if claims["iss"].as_str() != Some(client_id) || claims["sub"].as_str() != Some(client_id) {
        return Err((
            700021,
            "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter. Review the documentation at https://learn.microsoft.com/azure/active-directory/develop/active-directory-certificate-credentials".into(),
        ));
    }
    if let Some(r) = crate::federated::check_lifetime(claims) {
        return Err((r.code, r.message));
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
