//! A service principal's client-credentials grant against AAD (v2 endpoint, `scope`).

use super::retry::{self, Attempt, Backoff, Deadline};
use super::{network_error, parse_token, Token};
use crate::error::{Code, Error, Result};
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
        .trim_end_matches('/')
        .to_string();
    retry::run("AAD", deadline, BACKOFF, |timeout| {
        let req = http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.as_bytes().to_vec())
            .timeout(timeout);
        let host = host.clone();
        async move {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Attempt::Retry {
                        after: None,
                        error: network_error(&format!("cannot reach AAD at {host}"), &e),
                    }
                }
            };
            let status = resp.status().as_u16();
            let after = retry::retry_after(resp.headers());
            let Some(body) = crate::http::read_bounded(resp).await else {
                return Attempt::Done(Err(Error::new(
                    Code::Network,
                    "AAD answered with a body over 1 MiB",
                )));
            };
            match status {
                200 => Attempt::Done(
                    serde_json::from_slice(&body)
                        .ok()
                        .as_ref()
                        .and_then(parse_token)
                        .ok_or_else(|| {
                            Error::new(Code::Aad, "AAD's answer is not a token response")
                        }),
                ),
                429 | 500..=599 => Attempt::Retry {
                    after,
                    error: Error::new(Code::Aad, format!("AAD answered HTTP {status} (transient)")),
                },
                _ => Attempt::Done(Err(explain(status, &body, tenant, client_id))),
            }
        }
    })
    .await
}

/// Maps AAD's error codes to what the user must change. Descriptions are not echoed whole:
/// they carry trace ids and can be long; the AADSTS code is what support asks for.
fn explain(status: u16, body: &[u8], tenant: &str, client_id: &str) -> Error {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
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
        format!("AAD refused a token for service principal {client_id} in tenant {tenant}: HTTP {status} {} ({aadsts})", crate::error::printable(error)),
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
    }
}
