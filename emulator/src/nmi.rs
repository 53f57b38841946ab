//! aad-pod-identity NMI host token endpoint (127.0.0.1:2579 `/host/token/`).

use crate::exchange::{Req, Resp};
use crate::scenario::{cloud_by_resource, IdentityKind};
use crate::state::State;
use serde_json::json;
use std::time::Duration;

pub async fn handle(state: &State, r: &Req) -> Resp {
    if !r.path.starts_with("/host/token") {
        return Resp::text(404, "404 page not found");
    }
    let ns = r.header("podns").unwrap_or("");
    let pod = r.header("podname").unwrap_or("");
    if ns.is_empty() || pod.is_empty() {
        return Resp::text(400, "missing 'podname' and 'podns' from request header");
    }
    // Go: strings.Split(RemoteAddr, ":")[0] must be "127.0.0.1".
    let peer = r.peer.to_string();
    if peer.split(':').next() != Some("127.0.0.1") {
        return Resp::text(500, "request remote address is not from a host");
    }
    let resource = r.q("resource").unwrap_or("");
    if resource.is_empty() {
        return Resp::text(400, "parameter resource cannot be empty");
    }
    let not_assigned = || {
        Resp::text(
            404,
            &format!(
                "getting assigned identities for pod {ns}/{pod} in CREATED state failed after 16 attempts, retry duration [5]s, error: <nil>. Check MIC pod logs for identity assignment errors"
            ),
        )
    };
    let Some(b) = state
        .scenario
        .nmi
        .bindings
        .iter()
        .find(|b| b.namespace == ns && b.pod == pod)
    else {
        return not_assigned();
    };
    let calls = {
        let mut m = state.nmi_calls.lock().unwrap_or_else(|e| e.into_inner());
        let c = m.entry((ns.to_string(), pod.to_string())).or_insert(0);
        *c += 1;
        *c
    };
    let pending =
        calls <= b.pending_calls || (state.started.elapsed().as_millis() as u64) < b.pending_ms;
    if pending {
        if b.pending_hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(b.pending_hold_ms)).await;
        }
        return not_assigned().with_identity(Some(b.client_id.clone()));
    }
    if let Some(cid) = r.q("client_id") {
        if !cid.eq_ignore_ascii_case(&b.client_id) {
            return Resp::text(
                404,
                &format!("no azure identity found for request clientID {cid}"),
            );
        }
    }
    let imds_url = format!(
        "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&client_id={}&resource={}",
        b.client_id,
        crate::util::percent_encode(resource)
    );
    let forbidden = |body: &str| {
        Resp::text(
            403,
            &format!("adal: Refresh request failed. Status Code = '400'. Response body: {body} Endpoint {imds_url}"),
        )
        .with_identity(Some(b.client_id.clone()))
    };
    let id = state.identity_by_client_id(&b.client_id);
    let usable = match id {
        Some(i) => match i.kind() {
            IdentityKind::ServicePrincipal => true,
            _ => {
                let c = &state.scenario.imds;
                c.user.iter().any(|u| u.eq_ignore_ascii_case(&b.client_id))
                    || c.system
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(&b.client_id))
            }
        },
        None => false,
    };
    let Some(id) = id.filter(|_| usable && !b.forbidden) else {
        return forbidden(
            r#"{"error":"invalid_request","error_description":"Identity not found"}"#,
        );
    };
    if cloud_by_resource(resource).is_none() {
        return forbidden(&format!(
            r#"{{"error":"invalid_resource","error_description":"AADSTS500011: The resource principal named {resource} was not found in the tenant named {}."}}"#,
            id.spec.tenant
        ));
    }
    let t = crate::token::issue(
        resource,
        &id.spec.client_id,
        &id.object_id,
        &id.spec.tenant,
        state.lifetime,
    );
    let lifetime = t.exp - t.iat;
    let token = if state.scenario.nmi.numeric_token_fields {
        format!(
            r#"{{"access_token":{},"refresh_token":"","expires_in":{lifetime},"expires_on":{},"not_before":{},"resource":{},"token_type":"Bearer"}}"#,
            json!(t.jwt),
            t.exp,
            t.iat,
            json!(resource)
        )
    } else {
        format!(
            r#"{{"access_token":{},"refresh_token":"","expires_in":"{lifetime}","expires_on":"{}","not_before":"{}","resource":{},"token_type":"Bearer"}}"#,
            json!(t.jwt),
            t.exp,
            t.iat,
            json!(resource)
        )
    };
    let body = format!(r#"{{"token":{token},"clientid":{}}}"#, json!(b.client_id));
    Resp::json_ct(200, "application/json", body).with_identity(Some(b.client_id.clone()))
}
