//! aad-pod-identity's NMI host endpoint: `GET http://127.0.0.1:<port>/host/token/`.
//!
//! NMI answers 404 (older releases 403) until MIC has assigned the pod's identity, which takes
//! seconds to a minute after the pod appears, so those answers are polled every 250–500 ms within
//! the deadline: the mount completes right after the assignment instead of v0.0.17's fixed
//! 7 s steps. `127.0.0.1`, not `localhost`: NMI rejects callers that are not literally
//! 127.0.0.1 (an IPv6 `::1` peer gets a 500).

use super::request::{self, Answer, Endpoint};
use super::{parse_token, Token};
use crate::error::{Code, Error, Result};
use crate::retry::{Backoff, Deadline};
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
    let address = format!("127.0.0.1:{port}");
    let endpoint = Endpoint {
        service: "NMI",
        address: &address,
        unreachable: Some((
            Code::Nmi,
            "; is aad-pod-identity's NMI running on this node (or is nmiport wrong)?",
        )),
        backoff: BACKOFF,
    };
    let who = format!("{namespace}/{pod}");
    // NMI is the node's own agent and authorises per pod: no node-wide throttle or slots.
    request::request(
        &endpoint,
        None,
        deadline,
        |timeout| {
            http.get(&url)
                .header("podns", namespace)
                .header("podname", pod)
                .timeout(timeout)
        },
        |status, body| classify(status, body, &who),
    )
    .await
}

/// NMI's error bodies are free text; only the one NMI sends to a caller outside the host
/// network changes what kv does (no retry), and none is echoed.
fn classify(status: u16, body: &[u8], who: &str) -> Answer<(Token, Option<String>)> {
    let not_from_host = String::from_utf8_lossy(body).contains("not from a host");
    match status {
        200 => Answer::Done(parse(body)),
        // Older NMI answered 403 while the assignment was pending; newer NMI means the
        // identity's own token request failed. Both can clear up within the deadline.
        403 => Answer::Retry(Error::new(
            Code::Nmi,
            format!(
                "NMI could not get a token for the identity bound to pod {who} (HTTP 403): check the AzureIdentity's clientID/resourceID and that the identity is assigned to the node (NMI and MIC logs say more)"
            ),
        )),
        404 => Answer::Retry(Error::new(
            Code::NmiNoIdentity,
            format!(
                "NMI has no identity for pod {who} yet (HTTP 404): check that an AzureIdentityBinding selects the pod's aadpodidbinding label and that MIC assigned it (kubectl get azureassignedidentities -A)"
            ),
        )),
        _ if not_from_host => Answer::Done(Err(Error::new(
            Code::Nmi,
            format!(
                "NMI refused the token request for pod {who} (HTTP {status}) as not coming from the host network: kv must run in the host's network namespace"
            ),
        ))),
        429 | 500..=599 => Answer::Retry(Error::new(
            Code::Nmi,
            format!("NMI answered HTTP {status} (transient)"),
        )),
        _ => Answer::Done(Err(Error::new(
            Code::Nmi,
            format!("NMI refused the token request for pod {who} (HTTP {status}); NMI's log says why"),
        ))),
    }
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

    #[test]
    fn bodies_are_not_echoed() {
        for status in [400, 500] {
            let answer = classify(status, b"fault injected: <hostile text>", "ns/pod");
            let e = match answer {
                Answer::Done(Err(e)) | Answer::Retry(e) => e,
                Answer::Done(Ok(_)) => panic!("not a token"),
            };
            assert!(!e.message().contains("hostile"), "{e}");
            assert!(e.message().contains(&format!("HTTP {status}")), "{e}");
        }
        let Answer::Done(Err(e)) = classify(500, b"request not from a host network pod", "ns/pod")
        else {
            panic!("final")
        };
        assert!(e.message().contains("host network"), "{e}");
    }
}
