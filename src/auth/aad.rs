//! A service principal's client-credentials grant against AAD (v2 endpoint, `scope`).

use super::request::{self, Answer, Endpoint};
use super::Token;
use crate::error::{Code, Error, Result};
use crate::retry::{Backoff, Deadline};
use crate::secret::Secret;
use std::time::Duration;
use zeroize::Zeroizing;

const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    max_attempts: 8,
};

/// Fetches a token for `resource` with the client secret.
pub async fn fetch(
    http: &reqwest::Client,
    authority: &str,
    tenant: &str,
    client_id: &str,
    secret: &Secret,
    resource: &str,
    deadline: &Deadline,
) -> Result<Token> {
    let url = format!(
        "{}/{tenant}/oauth2/v2.0/token",
        authority.trim_end_matches('/')
    );
    let body = Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret.expose())
            .append_pair("scope", &format!("{resource}/.default"))
            .append_pair("grant_type", "client_credentials")
            .finish(),
    );
    let host = authority
        .trim_start_matches("https://")
        .trim_end_matches('/');
    let endpoint = Endpoint {
        service: "AAD",
        address: host,
        unreachable: None,
        backoff: BACKOFF,
    };
    request::request(
        &endpoint,
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
            _ => Answer::Done(Err(explain(status, body, tenant, client_id))),
        },
    )
    .await
}

/// Maps AAD's error codes to what the user must change. Descriptions are never echoed (they
/// carry trace ids and text kv does not control); the AADSTS numbers are what support asks for.
fn explain(status: u16, body: &[u8], tenant: &str, client_id: &str) -> Error {
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
            format!("AAD has no application {client_id} in tenant {tenant} (AADSTS700016): check `clientid` in the secretRef Secret and `tenantid`"),
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
        format!("AAD refused a token for service principal {client_id} in tenant {tenant}: HTTP {status}{}{error} ({aadsts})", if error.is_empty() { "" } else { " " }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_aad_codes() {
        let e = explain(
            401,
            br#"{"error":"invalid_client","error_codes":[7000215]}"#,
            "t",
            "c",
        );
        assert_eq!(e.code(), Code::AadClient);
        assert!(e.message().contains("AADSTS7000215"));
        let e = explain(
            400,
            br#"{"error":"unauthorized_client","error_codes":[700016]}"#,
            "t",
            "c",
        );
        assert_eq!(e.code(), Code::Aad);
        assert!(e.message().contains("no application c"));
        let e = explain(
            400,
            br#"{"error":"invalid_request","error_codes":[90002]}"#,
            "t",
            "c",
        );
        assert!(e.message().contains("no tenant t"));
        let e = explain(400, b"garbage", "t", "c");
        assert_eq!(e.code(), Code::Aad);
        let e = explain(
            400,
            br#"{"error":"made_up<by a hostile service>","error_description":"AADSTS1: trace 42","error_codes":[50000]}"#,
            "t",
            "c",
        );
        assert!(!e.message().contains("hostile"), "{e}");
        assert!(!e.message().contains("trace 42"), "{e}");
        assert!(e.message().contains("HTTP 400 (AADSTS50000)"), "{e}");
    }
}
