//! The one request loop of the token sources (NMI, IMDS, AAD): send with the time left, read
//! the body under the cap, let the service say what its status means, retry what is transient
//! within the deadline. Failure messages carry statuses and known error codes only, never a
//! token service's body (it can hold trace ids, paths and text a hostile service chose).

use super::Token;
use crate::error::{Code, Error, Result};
use crate::nodestate::Admission;
use crate::retry::{self, Attempt, Backoff, Deadline, Ended};
use std::time::Duration;

/// What one answer of a token service means.
pub(super) enum Answer<T> {
    /// Final: a token or a permanent failure.
    Done(Result<T>),
    /// Transient: worth another attempt (the server's Retry-After is honoured).
    Retry(Error),
}

/// One token endpoint.
pub(super) struct Endpoint<'a> {
    /// Its name in messages and the log: `NMI`, `IMDS`, `AAD`.
    pub service: &'static str,
    /// Where it is, for "cannot reach ... at <where>".
    pub address: &'a str,
    /// The code and hint of "unreachable" (a stall stays [`Code::Timeout`]); `None` keeps
    /// [`Code::Network`].
    pub unreachable: Option<(Code, &'a str)>,
    /// Its retry shape.
    pub backoff: Backoff,
}

/// Runs the exchange: `build` makes the request with a timeout, `classify` reads status + body.
/// On a node, each attempt is admitted by the node first (its throttle window, a slot held
/// until the answer is read) and its 429 recorded for the others.
pub(super) async fn request<T>(
    endpoint: &Endpoint<'_>,
    admission: Option<&Admission>,
    deadline: &Deadline,
    build: impl Fn(Duration) -> reqwest::RequestBuilder,
    classify: impl Fn(u16, &[u8]) -> Answer<T>,
) -> Result<T> {
    let service = endpoint.service;
    let ended = retry::run(service, deadline, endpoint.backoff, |timeout| {
        let req = build(timeout);
        let classify = &classify;
        async move {
            let _ticket = match admission.map(|a| a.enter(deadline)) {
                Some(entering) => match entering.await {
                    Ok(ticket) => Some(ticket),
                    Err(e) => return Attempt::Done(Err(e)),
                },
                None => None,
            };
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let error = unreachable(endpoint, &e);
                    return Attempt::Retry {
                        after: None,
                        why: error.to_string(),
                        outcome: Err(error),
                    };
                }
            };
            let status = resp.status().as_u16();
            let after = crate::http::retry_after_reqwest(resp.headers());
            if let Some(admission) = admission {
                admission.note(status, after);
            }
            let Some(body) = crate::http::read_bounded(resp).await else {
                return Attempt::Done(Err(Error::new(
                    Code::Network,
                    format!(
                        "{service} answered with a body over {} bytes",
                        crate::http::MAX_BODY_BYTES
                    ),
                )));
            };
            match classify(status, &body) {
                Answer::Done(result) => Attempt::Done(result),
                Answer::Retry(error) => Attempt::Retry {
                    after,
                    why: error.to_string(),
                    outcome: Err(error),
                },
            }
        }
    })
    .await;
    match ended {
        Ended::Done(result) | Ended::OutOfAttempts(result) => result,
        Ended::OutOfTime(last) => Err(deadline.expired(service, last.and_then(|r| r.err()))),
    }
}

/// The error when the endpoint cannot be reached: what failed (the innermost cause), with the
/// endpoint's own code and hint unless the request stalled (a stall is the deadline's).
fn unreachable(endpoint: &Endpoint<'_>, e: &reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let cause = crate::http::root_cause(e);
    let message = format!(
        "cannot reach {} at {}: {kind}{}{cause}",
        endpoint.service,
        endpoint.address,
        if cause.is_empty() { "" } else { ": " }
    );
    match (e.is_timeout(), endpoint.unreachable) {
        (true, _) => Error::new(Code::Timeout, message),
        (false, Some((code, hint))) => Error::new(code, format!("{message}{hint}")),
        (false, None) => Error::new(Code::Network, message),
    }
}

/// A token from a 200 body, or `<service>'s answer is not a token response`.
pub(super) fn token_body(service: &str, code: Code, body: &[u8]) -> Result<Token> {
    serde_json::from_slice(body)
        .ok()
        .as_ref()
        .and_then(super::parse_token)
        .ok_or_else(|| Error::new(code, format!("{service}'s answer is not a token response")))
}

/// The OAuth `error` of a token service's body when it is one of the codes those services
/// document (RFC 6749 §5.2 plus IMDS's own), else nothing: a free-form value is not echoed.
pub(super) fn known_oauth_error(body: &[u8]) -> Option<&'static str> {
    const KNOWN: &[&str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_resource",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "identity_not_found",
        "bad_request",
        "not_found",
        "too_many_requests",
        "unknown",
    ];
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error")?.as_str()?;
    KNOWN.iter().copied().find(|k| *k == error)
}

/// ` (<code>)` for a known OAuth error, else nothing.
pub(super) fn oauth_suffix(body: &[u8]) -> String {
    known_oauth_error(body)
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_oauth_codes_are_echoed() {
        assert_eq!(
            oauth_suffix(br#"{"error":"invalid_request","error_description":"C:\\Logs\\x.log"}"#),
            " (invalid_request)"
        );
        assert_eq!(oauth_suffix(br#"{"error":"<script>hostile</script>"}"#), "");
        assert_eq!(oauth_suffix(b"plain text from a service"), "");
    }
}
