//! The client-credentials grant against AAD (v2 endpoint, `scope`): a service principal's
//! secret or certificate, or workload identity's federated service-account token.

use super::jwt::Claims;
use super::request::{self, Answer, Endpoint};
use super::Token;
use crate::error::{Code, Error, Result};
use crate::options::TokenFile;
use crate::render::ClientCertificate;
use crate::retry::{Backoff, Deadline};
use crate::secret::Secret;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    max_attempts: 8,
};

/// What a service principal proves itself with at AAD's token endpoint.
#[derive(Debug, Clone)]
pub enum AadCredential {
    /// A client secret.
    Secret(Secret),
    /// A client certificate: kv signs a client assertion with its key.
    Certificate(Arc<ClientCertificate>),
    /// Workload identity: the pod's service-account token is the client assertion.
    Federated {
        /// Where the token is.
        token: TokenFile,
        /// The pod and service account it must be bound to; `None` for an operator's token
        /// file (`kv fetch --token-file` without --namespace and --service-account), which is
        /// then never matched against the node's cache.
        binding: Option<super::projected::Binding>,
    },
}

/// RFC 7523's assertion type, which AAD expects for certificates and federated tokens.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Workload identity's assertion: the pod's service-account token and its claims.
pub(super) type Assertion = (Secret, Claims);

/// Workload identity: the pod's token, read and checked before it is sent anywhere (or used
/// to find a cached token). `None` for other credentials.
pub(super) async fn assertion(
    credential: &AadCredential,
    deadline: &Deadline,
) -> Result<Option<Assertion>> {
    match credential {
        AadCredential::Federated { token, binding } => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let jwt = super::projected::read(token, deadline).await?;
            let claims = super::projected::check(&jwt, binding.as_ref(), now)?;
            Ok(Some((jwt, claims)))
        }
        _ => Ok(None),
    }
}

/// Fetches a token for `resource` with the client-credentials grant; `federated` is
/// [`assertion`]'s answer for this credential.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch(
    http: &reqwest::Client,
    authority: &str,
    tenant: &str,
    client_id: &str,
    credential: &AadCredential,
    federated: Option<&Assertion>,
    resource: &str,
    node: Option<&super::Node>,
    deadline: &Deadline,
) -> Result<Token> {
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Built in a block: the serializer is not `Send` and must not live across an await.
    let body = {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", client_id)
            .append_pair("scope", &format!("{resource}/.default"))
            .append_pair("grant_type", "client_credentials");
        match (credential, federated) {
            (AadCredential::Secret(secret), _) => {
                form.append_pair("client_secret", secret.expose());
            }
            (AadCredential::Certificate(certificate), _) => {
                // One assertion for every attempt: it lives longer than any deadline.
                let assertion = Zeroizing::new(super::jwt::client_assertion(
                    certificate,
                    client_id,
                    &url,
                    now,
                )?);
                form.append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", &assertion);
            }
            (AadCredential::Federated { .. }, Some((jwt, _))) => {
                form.append_pair("client_assertion_type", JWT_BEARER)
                    .append_pair("client_assertion", jwt.expose());
            }
            (AadCredential::Federated { .. }, None) => {
                return Err(Error::new(Code::Internal, "federated token not read"))
            }
        }
        Zeroizing::new(form.finish())
    };
    // What the error explanation may name: the issuer and subject kv presented.
    let presented = federated.map(|(_, claims)| claims.clone());
    let host = authority
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let endpoint = Endpoint {
        service: "AAD",
        address: host,
        unreachable: None,
        backoff: BACKOFF,
    };
    // AAD throttles per application and tenant: its 429 holds back this application's token
    // requests on the node, never another tenant's or application's.
    let admission = node.map(|n| {
        crate::nodestate::Admission::new(
            n.state.clone(),
            crate::nodestate::Gate {
                throttle: format!("{host}/{tenant}/{client_id}"),
                service: format!("AAD ({host}) for application {client_id} in tenant {tenant}"),
                slots: None,
                owner: n.owner.clone(),
            },
        )
    });
    let who = Who {
        tenant,
        client_id,
        credential,
        presented: presented.as_ref(),
    };
    request::request(
        &endpoint,
        admission.as_ref(),
        deadline,
        |timeout| {
            http.post(&url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body.as_bytes().to_vec())
                .timeout(timeout)
        },
        |status, body| match status {
            200 => Answer::Done(request::token_body("AAD", Code::Aad, body)),
            429 | 500..=599 => Answer::Retry(Error::new(
                Code::Aad,
                format!("AAD answered HTTP {status} (transient)"),
            )),
            _ => Answer::Done(Err(explain(status, body, &who))),
        },
    )
    .await
}

/// Who asked, for the explanation of AAD's answer.
struct Who<'a> {
    tenant: &'a str,
    client_id: &'a str,
    credential: &'a AadCredential,
    presented: Option<&'a Claims>,
}

/// Maps AAD's error codes to what the user must change. Descriptions are never echoed (they
/// carry trace ids and text kv does not control); the AADSTS numbers are what support asks for.
fn explain(status: u16, body: &[u8], who: &Who<'_>) -> Error {
    let (tenant, client_id) = (who.tenant, who.client_id);
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = request::known_oauth_error(body).unwrap_or("");
    let codes: Vec<i64> = v
        .get("error_codes")
        .and_then(|c| c.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
        .unwrap_or_default();
    let has = |c: i64| codes.contains(&c);
    let aadsts = codes
        .iter()
        .map(|c| format!("AADSTS{c}"))
        .collect::<Vec<_>>()
        .join(",");
    // Workload identity: AAD found no federated credential for what kv presented.
    if has(70021) || has(700211) || has(700212) || has(700213) || has(7002138) {
        let (issuer, subject) = who
            .presented
            .map(|c| (c.issuer.as_str(), c.subject.as_str()))
            .unwrap_or(("?", "?"));
        return Error::new(
            Code::AadFederation,
            format!(
                "AAD has no federated identity credential on {client_id} in tenant {tenant} matching issuer {} and subject {} ({aadsts}): add one for that issuer and subject with audience {} (az identity federated-credential create, or the app registration's Certificates & secrets)",
                crate::error::printable(issuer),
                crate::error::printable(subject),
                crate::options::TOKEN_EXCHANGE_AUDIENCE
            ),
        );
    }
    // Workload identity: AAD cannot check the token against the issuer's published keys.
    if has(50166) || has(7000272) || has(5002730) {
        let issuer = who.presented.map(|c| c.issuer.as_str()).unwrap_or("?");
        return Error::new(
            Code::AadFederation,
            format!(
                "AAD cannot verify the service-account token of {client_id} against the keys of issuer {} ({aadsts}): the cluster's service-account issuer must publish its OIDC discovery document and keys where AAD can fetch them",
                crate::error::printable(issuer)
            ),
        );
    }
    if has(700024) {
        return Error::new(
            match who.credential {
                AadCredential::Federated { .. } => Code::SaToken,
                _ => Code::AadClient,
            },
            format!("AAD says the client assertion is not within its valid time range ({aadsts}): check the node's clock; a service-account token must not be expired"),
        );
    }
    if has(700027) || has(700023) || has(50027) {
        let fix = match who.credential {
            AadCredential::Certificate(_) => "upload this certificate to the application (its SHA-1/SHA-256 thumbprint must match), or update `clientcertificate` in the secretRef Secret",
            AadCredential::Federated { .. } => "the service-account token's signature must verify against the issuer's keys (is the cluster's OIDC issuer the one in the federated credential?)",
            AadCredential::Secret(_) => "the client assertion is invalid",
        };
        return Error::new(
            Code::AadClient,
            format!("AAD rejected the client assertion of {client_id} in tenant {tenant} ({aadsts}): {fix}"),
        );
    }
    if has(7000215) || has(7000222) || (error == "invalid_client" && codes.is_empty()) {
        let why = if has(7000222) {
            "has expired"
        } else {
            "is wrong"
        };
        return Error::new(
            Code::AadClient,
            format!(
                "AAD rejected the client secret of service principal {client_id} in tenant {tenant} ({aadsts}): the secret {why}; update `clientsecret` in the secretRef Secret"
            ),
        );
    }
    if has(700016) {
        return Error::new(
            Code::Aad,
            format!("AAD has no application {client_id} in tenant {tenant} (AADSTS700016): check `clientid` (the secretRef Secret's, or the option with useworkloadidentity) and `tenantid`"),
        );
    }
    if has(90002) || has(900023) {
        return Error::new(
            Code::Aad,
            format!("AAD has no tenant {tenant} ({aadsts}): check the `tenantid` option"),
        );
    }
    Error::new(
        Code::Aad,
        format!("AAD refused a token for {client_id} in tenant {tenant}: HTTP {status}{}{error} ({aadsts})", if error.is_empty() { "" } else { " " }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> Who<'static> {
        static SECRET: std::sync::OnceLock<AadCredential> = std::sync::OnceLock::new();
        Who {
            tenant: "t",
            client_id: "c",
            credential: SECRET.get_or_init(|| AadCredential::Secret(Secret::new("s".into()))),
            presented: None,
        }
    }

    #[test]
    fn maps_aad_codes() {
        let e = explain(
            401,
            br#"{"error":"invalid_client","error_codes":[7000215]}"#,
            &who(),
        );
        assert_eq!(e.code(), Code::AadClient);
        assert!(e.message().contains("AADSTS7000215"));
        let e = explain(
            400,
            br#"{"error":"unauthorized_client","error_codes":[700016]}"#,
            &who(),
        );
        assert_eq!(e.code(), Code::Aad);
        assert!(e.message().contains("no application c"));
        let e = explain(
            400,
            br#"{"error":"invalid_request","error_codes":[90002]}"#,
            &who(),
        );
        assert!(e.message().contains("no tenant t"));
        let e = explain(400, b"garbage", &who());
        assert_eq!(e.code(), Code::Aad);
        let e = explain(
            400,
            br#"{"error":"made_up<by a hostile service>","error_description":"AADSTS1: trace 42","error_codes":[50000]}"#, &who());
        assert!(!e.message().contains("hostile"), "{e}");
        assert!(!e.message().contains("trace 42"), "{e}");
        assert!(e.message().contains("HTTP 400 (AADSTS50000)"), "{e}");
    }

    #[test]
    fn federation_errors_name_what_kv_presented() {
        let claims = Claims {
            issuer: "https://issuer.example".into(),
            subject: "system:serviceaccount:app:web".into(),
            audiences: vec!["api://AzureADTokenExchange".into()],
            expires: 0,
            not_before: None,
            bound: Default::default(),
        };
        let federated = AadCredential::Federated {
            token: TokenFile::File {
                path: "/t".into(),
                bound: false,
            },
            binding: None,
        };
        let wi = Who {
            tenant: "t",
            client_id: "c",
            credential: &federated,
            presented: Some(&claims),
        };
        for code in [70021, 700211, 700212, 700213, 7002138] {
            let body = format!(r#"{{"error":"invalid_client","error_codes":[{code}]}}"#);
            let e = explain(401, body.as_bytes(), &wi);
            assert_eq!(e.code(), Code::AadFederation, "{code}");
            assert!(e.message().contains("https://issuer.example"), "{e}");
            assert!(e.message().contains("system:serviceaccount:app:web"), "{e}");
        }
        let e = explain(401, br#"{"error_codes":[700024]}"#, &wi);
        assert_eq!(e.code(), Code::SaToken);
        let e = explain(401, br#"{"error_codes":[50166]}"#, &wi);
        assert_eq!(e.code(), Code::AadFederation);
        let e = explain(401, br#"{"error_codes":[700027]}"#, &who());
        assert_eq!(e.code(), Code::AadClient);
    }
}
