//! The node's managed identity through IMDS (`169.254.169.254`).
//!
//! IMDS asks clients to retry 404, 410 (up to 70 s while it updates), 429 and 5xx; a 400 means
//! the identity is not on this VM, which no retry fixes. No proxy: IMDS must be reached directly.

use super::retry::{self, Attempt, Backoff, Deadline};
use super::{network_error, parse_token, Token};
use crate::error::{Code, Error, Result};
use std::time::Duration;

const BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    max_attempts: 40,
};

/// Fetches a token for the system-assigned identity or the user-assigned `client_id`.
pub async fn fetch(
    http: &reqwest::Client,
    client_id: Option<&str>,
    resource: &str,
    deadline: &Deadline,
) -> Result<Token> {
    let mut url = url::Url::parse("http://169.254.169.254/metadata/identity/oauth2/token")
        .map_err(|_| Error::new(Code::Internal, "IMDS URL"))?;
    url.query_pairs_mut()
        .append_pair("api-version", "2018-02-01")
        .append_pair("resource", resource);
    if let Some(id) = client_id {
        url.query_pairs_mut().append_pair("client_id", id);
    }
    let identity = match client_id {
        Some(id) => format!("user-assigned identity {id}"),
        None => "the system-assigned identity".to_string(),
    };
    retry::run("IMDS", deadline, BACKOFF, |timeout| {
        let req = http.get(url.clone()).header("Metadata", "true").timeout(timeout);
        let identity = identity.clone();
        async move {
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = network_error("cannot reach IMDS at 169.254.169.254", &e);
                    // A stall stays a timeout; anything else means the service is unreachable.
                    let code = if err.code() == Code::Timeout { Code::Timeout } else { Code::Imds };
                    let err = err.recode(code, "; kv must run on an Azure VM with host networking");
                    return Attempt::Retry { after: None, error: err };
                }
            };
            let status = resp.status().as_u16();
            let after = retry::retry_after(resp.headers());
            let Some(body) = crate::http::read_bounded(resp).await else {
                return Attempt::Done(Err(Error::new(
                    Code::Network,
                    "IMDS answered with a body over 1 MiB",
                )));
            };
            match status {
                200 => Attempt::Done(
                    serde_json::from_slice(&body)
                        .ok()
                        .as_ref()
                        .and_then(parse_token)
                        .ok_or_else(|| Error::new(Code::Imds, "IMDS's answer is not a token response")),
                ),
                400 => Attempt::Done(Err(Error::new(
                    Code::ImdsNoIdentity,
                    format!(
                        "IMDS has no {identity} on this node ({}): assign the identity to the node's VM or scale set, or fix vmmanagedidentityclientid",
                        oauth_error(&body)
                    ),
                ))),
                404 | 410 | 429 | 500..=599 => Attempt::Retry {
                    after,
                    error: Error::new(Code::Imds, format!("IMDS answered HTTP {status} (transient)")),
                },
                _ => Attempt::Done(Err(Error::new(
                    Code::Imds,
                    format!("IMDS answered HTTP {status} for {identity} ({})", oauth_error(&body)),
                ))),
            }
        }
    })
    .await
}

/// `error: error_description` of an OAuth error body, trimmed to one safe line.
pub(crate) fn oauth_error(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let desc = field("error_description");
    let first_line = desc.lines().next().unwrap_or("").to_string();
    crate::error::printable(&format!("{}: {}", field("error"), first_line))
}
