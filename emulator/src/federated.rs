//! Workload identity federation at AAD: verify an external token (e.g. a Kubernetes
//! service-account token) presented as `client_assertion` against the identity's federated
//! identity credentials and the issuer's signing keys, answering AAD's real errors.
//!
//! Codes and texts, as AAD returns them (sources: GitHub issue threads quoting real bodies):
//! - 70021 `invalid_request` 400 "No matching federated identity record found for presented
//!   assertion. Assertion Issuer: '…'. Assertion Subject: '…'. Assertion Audience: '…'."
//!   (Azure/azure-workload-identity#616, #340). Returned here when the identity has no
//!   federated credential at all.
//! - 700211 `invalid_client` 401 "… presented assertion issuer '…'. Please check your federated
//!   identity credential Subject, Audience and Issuer against the presented assertion."
//!   (Azure/azure-workload-identity#1200).
//! - 700213 subject (Azure/login#482, dotnet/maui#31978), 7002138 subject matching only
//!   case-insensitively (Azure/login#515; AAD compares case-sensitively since 2024).
//! - 700212 audience (text quoted in a public Java test of an AAD client, 2024).
//! - 50166 `invalid_request` 400 "Request to External OIDC endpoint failed." — AAD could not
//!   get the issuer's keys (Azure/azure-workload-identity#642): here, an issuer the scenario
//!   does not list under `issuers`.
//! - 7000272 signing key not in the issuer's metadata (Azure/azure-workload-identity#1232).
//! - 700027 invalid signature (the client-assertion signature failure; the Java SDK's
//!   troubleshooting table "Client assertion contains an invalid signature").
//! - 700024 "Client assertion is not within its valid time range. Current time: …, assertion
//!   valid from …, expiry time of assertion …" (AzureAD/microsoft-authentication-library-for-java#984).
//! - 50027 "JWT token is invalid or malformed." (Azure SDK for Java troubleshooting table).
//! - 5002730 "Invalid JWT token. Unsupported key for the signing algorithm."
//!   (AzureAD/microsoft-authentication-library-for-dotnet#4712): an `alg` other than RS256.
//!
//! Order of checks: shape, issuer among the identity's credentials, issuer keys and
//! signature, lifetime, subject, audience — the claims are only trusted once signed.

use crate::material::IssuerKeys;
use crate::scenario::FederatedCredential;
use crate::util::{b64url_decode, now};
use rsa::Pkcs1v15Sign;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// AAD's answer to a rejected assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub error: &'static str,
    pub code: u32,
    pub message: String,
}

fn reject(status: u16, error: &'static str, code: u32, text: String) -> Rejection {
    Rejection {
        status,
        error,
        code,
        message: format!("AADSTS{code}: {text}"),
    }
}

const WIF_DOC: &str =
    "https://docs.microsoft.com/en-us/azure/active-directory/develop/workload-identity-federation";
const WIF_DOC_NEW: &str =
    "https://learn.microsoft.com/entra/workload-id/workload-identity-federation";

pub fn malformed() -> Rejection {
    reject(
        400,
        "invalid_request",
        50027,
        "JWT token is invalid or malformed.".into(),
    )
}

/// Header and claims of a compact JWS, and its signing input and signature.
pub struct Parsed<'a> {
    pub header: Value,
    pub claims: Value,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

pub fn parse(jwt: &str) -> Option<Parsed<'_>> {
    let (signing_input, sig) = jwt.rsplit_once('.')?;
    let (h, c) = signing_input.split_once('.')?;
    if c.contains('.') {
        return None;
    }
    let header: Value = serde_json::from_slice(&b64url_decode(h)?).ok()?;
    let claims: Value = serde_json::from_slice(&b64url_decode(c)?).ok()?;
    if !header.is_object() || !claims.is_object() {
        return None;
    }
    Some(Parsed {
        header,
        claims,
        signing_input,
        signature: b64url_decode(sig)?,
    })
}

/// AAD's time format in 700024: `2024-10-02T22:05:03.0000000Z`.
fn aad_time(t: i64) -> String {
    crate::util::utc_secs(t, "{Y}-{M}-{D}T{h}:{m}:{s}.0000000Z")
}

/// 700024 for an assertion outside its lifetime (`exp` passed, or `nbf` more than five
/// minutes ahead: AAD allows that much clock skew), else `None`.
pub fn check_lifetime(claims: &Value) -> Option<Rejection> {
    let t = now();
    let exp = claims["exp"].as_f64().unwrap_or(0.0) as i64;
    let nbf = claims["nbf"].as_f64().map(|n| n as i64);
    if exp <= t || nbf.is_some_and(|n| n > t + 300) {
        return Some(reject(
            401,
            "invalid_client",
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                aad_time(t),
                aad_time(nbf.unwrap_or(0)),
                aad_time(exp)
            ),
        ));
    }
    None
}

fn audiences(claims: &Value) -> Vec<String> {
    match &claims["aud"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    }
}

/// Verify a federated assertion for `client_id`; `fics` are that identity's credentials.
/// Ok: the matching credential.
pub fn verify<'a>(
    jwt: &str,
    fics: &[&'a FederatedCredential],
    issuers: &[IssuerKeys],
) -> Result<&'a FederatedCredential, Rejection> {
    let p = parse(jwt).ok_or_else(malformed)?;
    let iss = p.claims["iss"].as_str().unwrap_or("");
    let sub = p.claims["sub"].as_str().unwrap_or("");
    let auds = audiences(&p.claims);
    if iss.is_empty() || sub.is_empty() || auds.is_empty() {
        return Err(malformed());
    }
    if fics.is_empty() {
        return Err(reject(
            400,
            "invalid_request",
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {WIF_DOC}",
                auds.join(",")
            ),
        ));
    }
    let by_issuer: Vec<&FederatedCredential> =
        fics.iter().copied().filter(|f| f.issuer == iss).collect();
    if by_issuer.is_empty() {
        return Err(reject(
            401,
            "invalid_client",
            700211,
            format!("No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"),
        ));
    }
    verify_signature(&p, iss, issuers)?;
    if let Some(r) = check_lifetime(&p.claims) {
        return Err(r);
    }
    let by_subject: Vec<&FederatedCredential> = by_issuer
        .iter()
        .copied()
        .filter(|f| f.subject == sub)
        .collect();
    if by_subject.is_empty() {
        if by_issuer
            .iter()
            .any(|f| f.subject.eq_ignore_ascii_case(sub))
        {
            return Err(reject(
                401,
                "invalid_client",
                7002138,
                format!("No matching federated identity record found for presented assertion subject '{sub}'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. See documentation at: {WIF_DOC_NEW}."),
            ));
        }
        return Err(reject(
            401,
            "invalid_client",
            700213,
            format!("No matching federated identity record found for presented assertion subject '{sub}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC_NEW}"),
        ));
    }
    by_subject
        .into_iter()
        .find(|f| f.audiences().iter().any(|a| auds.contains(a)))
        .ok_or_else(|| {
            reject(
                401,
                "invalid_client",
                700212,
                format!("No matching federated identity record found for presented assertion audience '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}", auds.join(",")),
            )
        })
}

fn verify_signature(p: &Parsed<'_>, iss: &str, issuers: &[IssuerKeys]) -> Result<(), Rejection> {
    let Some(keys) = issuers.iter().find(|i| i.issuer == iss) else {
        return Err(reject(
            400,
            "invalid_request",
            50166,
            "Request to External OIDC endpoint failed.".into(),
        ));
    };
    if p.header["alg"].as_str() != Some("RS256") {
        return Err(reject(
            400,
            "invalid_request",
            5002730,
            "Invalid JWT token. Unsupported key for the signing algorithm.".into(),
        ));
    }
    let kid = p.header["kid"].as_str();
    let candidates: Vec<&rsa::RsaPublicKey> = keys
        .keys
        .iter()
        .filter(|(k, _)| kid.is_none() || k.as_deref() == kid)
        .map(|(_, key)| key)
        .collect();
    if candidates.is_empty() {
        return Err(reject(
            401,
            "invalid_client",
            7000272,
            format!("The certificate with identifier {} used to sign the federated credential could not be found in the metadata of identity provider {iss}. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token.", kid.unwrap_or("")),
        ));
    }
    let digest = Sha256::digest(p.signing_input.as_bytes());
    if candidates.iter().any(|k| {
        k.verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &p.signature)
            .is_ok()
    }) {
        return Ok(());
    }
    Err(reject(
        401,
        "invalid_client",
        700027,
        "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value.]".into(),
    ))
}
