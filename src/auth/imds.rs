//! The node's managed identity through IMDS (`169.254.169.254`).
//!
//! IMDS asks clients to retry 404, 410 (up to 70 s while it updates), 429 and 5xx; a 400 means
//! the identity is not on this VM, which no retry fixes. No proxy: IMDS must be reached directly.

use super::request::{self, Answer, Endpoint};
use super::Token;
use crate::error::{Code, Error, Result};
use crate::options::ManagedIdentity;
use crate::retry::{Backoff, Deadline};
use std::time::Duration;

const ENDPOINT: Endpoint<'static> = Endpoint {
    service: "IMDS",
    address: "169.254.169.254",
    unreachable: Some((
        Code::Imds,
        "; kv must run on an Azure VM with host networking",
    )),
    backoff: Backoff {
        first: Duration::from_millis(100),
        max: Duration::from_secs(2),
        max_attempts: 40,
    },
};

/// IMDS limits the VM as a whole: one throttle window for its host, and ~5 concurrent requests
/// that every kv process of the node shares (a fair share per namespace).
fn gate(owner: Option<&str>) -> crate::nodestate::Gate {
    crate::nodestate::Gate {
        throttle: ENDPOINT.address.to_string(),
        service: format!("IMDS ({})", ENDPOINT.address),
        slots: Some((
            crate::nodestate::slots::IMDS.to_string(),
            crate::nodestate::slots::IMDS_SLOTS,
        )),
        owner: owner.map(str::to_string),
    }
}

/// Fetches a token for the system-assigned identity or a user-assigned one (by client id or
/// by resource id, IMDS's `msi_res_id`).
pub async fn fetch(
    http: &reqwest::Client,
    id: &ManagedIdentity,
    resource: &str,
    node: Option<&super::Node>,
    deadline: &Deadline,
) -> Result<Token> {
    let admission =
        node.map(|n| crate::nodestate::Admission::new(n.state.clone(), gate(n.owner.as_deref())));
    let mut url = url::Url::parse("http://169.254.169.254/metadata/identity/oauth2/token")
        .map_err(|_| Error::new(Code::Internal, "IMDS URL"))?;
    url.query_pairs_mut()
        .append_pair("api-version", "2018-02-01")
        .append_pair("resource", resource);
    let identity = match id {
        ManagedIdentity::ClientId(id) => {
            url.query_pairs_mut().append_pair("client_id", id);
            format!("user-assigned identity {id}")
        }
        ManagedIdentity::ResourceId(id) => {
            url.query_pairs_mut().append_pair("msi_res_id", id);
            format!("user-assigned identity {id}")
        }
        ManagedIdentity::System => "the system-assigned identity".to_string(),
    };
    request::request(
        &ENDPOINT,
        admission.as_ref(),
        deadline,
        |timeout| {
            http.get(url.clone())
                .header("Metadata", "true")
                .timeout(timeout)
        },
        |status, body| classify(status, body, &identity),
    )
    .await
}

fn classify(status: u16, body: &[u8], identity: &str) -> Answer<Token> {
    match status {
        200 => Answer::Done(request::token_body("IMDS", Code::Imds, body)),
        400 => Answer::Done(Err(Error::new(
            Code::ImdsNoIdentity,
            format!(
                "IMDS has no {identity} on this node (HTTP 400{}): assign the identity to the node's VM or scale set, or fix vmmanagedidentityclientid / vmmanagedidentityresourceid",
                request::known_oauth_error(body)
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            ),
        ))),
        404 | 410 | 429 | 500..=599 => Answer::Retry(Error::new(
            Code::Imds,
            format!("IMDS answered HTTP {status} (transient)"),
        )),
        _ => Answer::Done(Err(Error::new(
            Code::Imds,
            format!(
                "IMDS answered HTTP {status} for {identity}{}",
                request::oauth_suffix(body)
            ),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_not_echoed() {
        let body = br#"{"error":"unknown","error_description":"Failed to retrieve token. See C:\\Logs\\service_identity_0.log"}"#;
        let Answer::Done(Err(e)) = classify(403, body, "the system-assigned identity") else {
            panic!("403 is final")
        };
        assert_eq!(e.code(), Code::Imds);
        assert!(!e.message().contains("Failed to retrieve"), "{e}");
        assert!(
            e.message()
                .contains("HTTP 403 for the system-assigned identity (unknown)"),
            "{e}"
        );
        let Answer::Done(Err(e)) = classify(
            400,
            br#"{"error":"invalid_request","error_description":"Identity not found"}"#,
            "x",
        ) else {
            panic!("400 is final")
        };
        assert_eq!(e.code(), Code::ImdsNoIdentity);
        assert!(e.message().contains("HTTP 400, invalid_request"), "{e}");
        assert!(!e.message().contains("Identity not found"), "{e}");
    }
}
