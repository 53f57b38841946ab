//! JSON Web Tokens on kv's side: reading the claims of a service-account token before it is
//! sent anywhere (no signature check: AAD does that), and signing the short-lived client
//! assertion of a certificate service principal (RFC 7523, as AAD documents it).

use crate::error::{Code, Error, Result};
use crate::render::ClientCertificate;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde_json::{json, Value};

/// How long a signed client assertion is valid: AAD only needs it for the one request.
pub const ASSERTION_LIFETIME_SECS: i64 = 600;

/// The claims kv checks in a service-account token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// `iss`: the cluster's service-account issuer.
    pub issuer: String,
    /// `sub`: `system:serviceaccount:<namespace>:<name>`.
    pub subject: String,
    /// `aud`, as a list (a single string is a one-item list).
    pub audiences: Vec<String>,
    /// `exp`, unix seconds.
    pub expires: i64,
    /// `nbf`, unix seconds, when present.
    pub not_before: Option<i64>,
    /// What the `kubernetes.io` claim binds the token to (the API server puts it in every token
    /// it issues for a pod; a JWT from anywhere else lacks it).
    pub bound: Bound,
}

/// The `kubernetes.io` claim of a service-account token: `namespace`, `serviceaccount.name`,
/// `pod.name` and `pod.uid` (bound tokens, Kubernetes 1.20+); each `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bound {
    /// `kubernetes.io.namespace`.
    pub namespace: Option<String>,
    /// `kubernetes.io.serviceaccount.name`.
    pub service_account: Option<String>,
    /// `kubernetes.io.pod.name`.
    pub pod_name: Option<String>,
    /// `kubernetes.io.pod.uid`.
    pub pod_uid: Option<String>,
}

/// The payload of a JWT as JSON, unverified, or why it is not one.
fn payload(jwt: &str) -> std::result::Result<Value, &'static str> {
    let mut parts = jwt.trim().split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not three dot-separated parts");
    };
    let bytes = B64URL
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "payload is not base64url")?;
    serde_json::from_slice(&bytes).map_err(|_| "payload is not JSON")
}

/// A string claim of a JWT, unverified (e.g. `xms_mirid` of a token IMDS handed out).
pub fn string_claim(jwt: &str, name: &str) -> Option<String> {
    payload(jwt).ok()?.get(name)?.as_str().map(str::to_string)
}

/// The claims of `jwt`, unverified. The error never quotes the token.
pub fn claims(jwt: &str) -> Result<Claims> {
    let bad = |why: &str| {
        Error::new(
            Code::SaToken,
            format!("the service-account token is not a JWT ({why})"),
        )
    };
    let v = payload(jwt).map_err(bad)?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let number = |k: &str| v.get(k).and_then(Value::as_i64);
    let audiences = match v.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    let k8s = v.get("kubernetes.io");
    let nested = |path: &[&str]| {
        path.iter()
            .try_fold(k8s?, |v, k| v.get(*k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    Ok(Claims {
        issuer: text("iss").ok_or_else(|| bad("no iss claim"))?,
        subject: text("sub").ok_or_else(|| bad("no sub claim"))?,
        audiences,
        expires: number("exp").ok_or_else(|| bad("no exp claim"))?,
        not_before: number("nbf"),
        bound: Bound {
            namespace: nested(&["namespace"]),
            service_account: nested(&["serviceaccount", "name"]),
            pod_name: nested(&["pod", "name"]),
            pod_uid: nested(&["pod", "uid"]),
        },
    })
}

/// Signs a client assertion for `client_id` at the token endpoint `audience`: RS256 with the
/// certificate's SHA-256 thumbprint in `x5t#S256` (and the SHA-1 `x5t` older AAD tenants
/// match on), `iss` = `sub` = the client id, a random `jti`, valid for
/// [`ASSERTION_LIFETIME_SECS`].
pub fn client_assertion(
    certificate: &ClientCertificate,
    client_id: &str,
    audience: &str,
    now: i64,
) -> Result<String> {
    use ring::rand::SecureRandom;
    use ring::signature::RsaKeyPair;
    let key = RsaKeyPair::from_pkcs8(&certificate.key_pkcs8).map_err(|_| {
        Error::new(
            Code::AadClient,
            "the client certificate's key is not an RSA key AAD accepts (RSA 2048 or more)",
        )
    })?;
    let sha256 = ring::digest::digest(&ring::digest::SHA256, &certificate.cert_der);
    let sha1 = {
        use sha1::Digest;
        sha1::Sha1::digest(&certificate.cert_der)
    };
    let rng = ring::rand::SystemRandom::new();
    let mut jti = [0u8; 16];
    rng.fill(&mut jti)
        .map_err(|_| Error::new(Code::Internal, "no randomness for the assertion id"))?;
    let header = json!({
        "alg": "RS256",
        "typ": "JWT",
        "x5t": B64URL.encode(sha1),
        "x5t#S256": B64URL.encode(sha256.as_ref()),
    });
    let claims = json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": hex::encode(jti),
        "nbf": now,
        "iat": now,
        "exp": now + ASSERTION_LIFETIME_SECS,
    });
    let signing_input = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let mut signature = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &rng,
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| Error::new(Code::Internal, "signing the client assertion failed"))?;
    Ok(format!("{signing_input}.{}", B64URL.encode(signature)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: Value) -> String {
        format!(
            "{}.{}.sig",
            B64URL.encode(r#"{"alg":"RS256"}"#),
            B64URL.encode(claims.to_string())
        )
    }

    #[test]
    fn reads_claims_with_one_or_many_audiences() {
        let c = claims(&jwt(
            json!({"iss":"https://issuer","sub":"system:serviceaccount:app:web",
            "aud":"api://AzureADTokenExchange","exp":1900000000,"nbf":1800000000}),
        ))
        .unwrap();
        assert_eq!(c.audiences, ["api://AzureADTokenExchange"]);
        assert_eq!(c.not_before, Some(1_800_000_000));
        let c = claims(&jwt(json!({"iss":"i","sub":"s","aud":["a","b"],"exp":1}))).unwrap();
        assert_eq!(c.audiences, ["a", "b"]);
        for bad in ["", "a.b", "a.b.c.d", "a.!!!.c"] {
            let e = claims(bad).unwrap_err();
            assert_eq!(e.code(), Code::SaToken, "{bad}");
        }
        let e = claims(&jwt(json!({"iss":"i","aud":"a","exp":1}))).unwrap_err();
        assert!(e.message().contains("no sub"), "{e}");
    }

    #[test]
    fn assertion_is_rs256_with_thumbprints_and_verifies() {
        let cert = rcgen::generate_simple_self_signed(vec!["sp.example".into()]).unwrap();
        // rcgen's default key is ECDSA: AAD wants RSA, and so does kv.
        let ec = ClientCertificate {
            key_pkcs8: zeroize::Zeroizing::new(cert.signing_key.serialize_der()),
            cert_der: cert.cert.der().to_vec(),
        };
        assert_eq!(
            client_assertion(&ec, "c", "https://aud", 1)
                .unwrap_err()
                .code(),
            Code::AadClient
        );
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/emulator/scenarios/material/rsa-key.pem"
        ))
        .unwrap();
        let key = rcgen::KeyPair::from_pem(&pem).unwrap();
        let params = rcgen::CertificateParams::new(vec!["sp.example".into()]).unwrap();
        let signed = params.self_signed(&key).unwrap();
        let certificate = ClientCertificate {
            key_pkcs8: zeroize::Zeroizing::new(key.serialize_der()),
            cert_der: signed.der().to_vec(),
        };
        let token = client_assertion(
            &certificate,
            "client-1",
            "https://login/t/oauth2/v2.0/token",
            1_000,
        )
        .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        let body: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(header["alg"], "RS256");
        let thumb = ring::digest::digest(&ring::digest::SHA256, &certificate.cert_der);
        assert_eq!(header["x5t#S256"], B64URL.encode(thumb.as_ref()));
        assert_eq!(body["aud"], "https://login/t/oauth2/v2.0/token");
        assert_eq!(
            (body["iss"].as_str(), body["sub"].as_str()),
            (Some("client-1"), Some("client-1"))
        );
        assert_eq!(body["exp"].as_i64(), Some(1_000 + ASSERTION_LIFETIME_SECS));
        // The signature verifies with the certificate's public key.
        let spki = x509_parser::parse_x509_certificate(&certificate.cert_der)
            .unwrap()
            .1
            .public_key()
            .subject_public_key
            .data
            .to_vec();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            spki,
        );
        public
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &B64URL.decode(parts[2]).unwrap(),
            )
            .unwrap();
    }
}
