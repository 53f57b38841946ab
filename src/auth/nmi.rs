//! aad-pod-identity's NMI host endpoint: `GET http://127.0.0.1:<port>/host/token/`.
//!
//! NMI answers 404 (older releases 403) until MIC has assigned the pod's identity, which takes
//! seconds to a minute after the pod appears, so those answers are polled every 250–500 ms within
//! the deadline: the mount completes right after the assignment instead of v0.0.17's fixed
//! 7 s steps. `127.0.0.1`, not `localhost`: NMI rejects callers that are not literally
//! 127.0.0.1 (an IPv6 `::1` peer gets a 500).

use super::retry::{self, Attempt, Backoff, Deadline};
use super::{network_error, parse_token, Token};
use crate::error::{Code, Error, Result};
use std::time::Duration;

const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(250),
    max: Duration::from_millis(500),
    max_attempts: 1000,
};

/// Fetches the pod's token; also returns the identity's client id NMI reports.
pub async fn fetch(
    http: &reqwest::Client,
    port: u16,
    namespace: &str,
    pod: &str,
    resource: &str,
    deadline: &Deadline,
) -> Result<(Token, Option<String>)> {
    let url = format!("http://127.0.0.1:{port}/host/token/?resource={resource}");
    let who = format!("{namespace}/{pod}");
    retry::run("NMI", deadline, BACKOFF, |timeout| {
        let req = http
            .get(&url)
            .header("podns", namespace)
            .header("podname", pod)
            .timeout(timeout);
        let who = who.clone();
        async move {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = network_error(&format!("cannot reach NMI at 127.0.0.1:{port}"), &e);
                    // A stall stays a timeout; anything else means the service is unreachable.
                    let code = if err.code() == Code::Timeout { Code::Timeout } else { Code::Nmi };
                    let err = err.recode(code, "; is aad-pod-identity's NMI running on this node (or is nmiport wrong)?");
                    return Attempt::Retry { after: None, error: err };
                }
            };
            let status = resp.status().as_u16();
            let after = retry::retry_after(resp.headers());
            let Some(body) = crate::http::read_bounded(resp).await else {
                return Attempt::Done(Err(Error::new(
                    Code::Network,
                    "NMI answered with a body over 1 MiB",
                )));
            };
            match status {
                200 => Attempt::Done(parse(&body)),
                // Older NMI answered 403 while the assignment was pending; newer NMI means the
                // identity's own token request failed. Both can clear up within the deadline.
                403 => Attempt::Retry {
                    after: None,
                    error: Error::new(
                        Code::Nmi,
                        format!(
                            "NMI could not get a token for the identity bound to pod {who} (HTTP 403): check the AzureIdentity's clientID/resourceID and that the identity is assigned to the node (NMI and MIC logs say more)"
                        ),
                    ),
                },
                404 => Attempt::Retry {
                    after: None,
                    error: Error::new(
                        Code::NmiNoIdentity,
                        format!(
                            "NMI has no identity for pod {who} yet (HTTP 404): check that an AzureIdentityBinding selects the pod's aadpodidbinding label and that MIC assigned it (kubectl get azureassignedidentities -A)"
                        ),
                    ),
                },
                429 | 500..=599 if !text(&body).contains("not from a host") => Attempt::Retry {
                    after,
                    error: Error::new(Code::Nmi, format!("NMI answered HTTP {status}: {}", text(&body))),
                },
                _ => Attempt::Done(Err(Error::new(
                    Code::Nmi,
                    format!("NMI refused the token request for pod {who} (HTTP {status}: {})", text(&body)),
                ))),
            }
        }
    })
    .await
}

fn parse(body: &[u8]) -> Result<(Token, Option<String>)> {
    let bad = || {
        Error::new(
            Code::Nmi,
            "NMI's answer is not a token response ({\"token\":{...},\"clientid\":...})",
        )
    };
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| bad())?;
    let token = parse_token(v.get("token").ok_or_else(bad)?).ok_or_else(bad)?;
    let client_id = v
        .get("clientid")
        .and_then(|c| c.as_str())
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    Ok((token, client_id))
}

/// NMI's plain-text error bodies name the pod and the problem, never a secret; one short line.
fn text(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    crate::error::printable(s.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_string_and_number_fields() {
        let (t, id) = parse(br#"{"token":{"access_token":"x","refresh_token":"","expires_in":"86399","expires_on":"1700086399","not_before":"1","resource":"https://vault.azure.net","token_type":"Bearer"},"clientid":"abc"}"#).unwrap();
        assert_eq!(t.expires_on, 1_700_086_399);
        assert_eq!(id.as_deref(), Some("abc"));
        let (t, _) =
            parse(br#"{"token":{"access_token":"x","expires_on":1700086399},"clientid":"abc"}"#)
                .unwrap();
        assert_eq!(t.expires_on, 1_700_086_399);
        assert!(parse(b"not json").is_err());
        assert!(parse(br#"{"clientid":"abc"}"#).is_err());
    }
}
