//! IMDS managed-identity token endpoint (169.254.169.254:80).

use crate::exchange::{Req, Resp};
use crate::material::IdentityState;
use crate::scenario::{cloud_by_resource, IdentityKind};
use crate::state::State;
use serde_json::json;

fn err(status: u16, e: &str, d: &str) -> Resp {
    Resp::json_ct(
        status,
        "application/json; charset=utf-8",
        json!({"error": e, "error_description": d}).to_string(),
    )
}

/// A selector's value; an empty one (`client_id=`) is an absent one, as on real IMDS:
/// azidentity (the CSI driver's Azure provider) sends it empty for the system identity.
fn selector<'r>(r: &'r Req, key: &str) -> Option<&'r str> {
    r.q(key).filter(|v| !v.is_empty())
}

/// Find the VM identity a request selects (none of the selectors = system identity).
pub fn select<'a>(state: &'a State, r: &Req) -> Result<&'a IdentityState, Resp> {
    let not_found = || err(400, "invalid_request", "Identity not found");
    let cfg = &state.scenario.imds;
    let user = |pred: &dyn Fn(&IdentityState) -> bool| -> Result<&'a IdentityState, Resp> {
        state
            .store
            .identities
            .iter()
            .filter(|i| {
                cfg.user
                    .iter()
                    .any(|c| c.eq_ignore_ascii_case(&i.spec.client_id))
                    || cfg
                        .system
                        .as_deref()
                        .is_some_and(|c| c.eq_ignore_ascii_case(&i.spec.client_id))
            })
            .find(|i| pred(i))
            .ok_or_else(not_found)
    };
    if let Some(cid) = selector(r, "client_id") {
        return user(&|i| i.spec.client_id.eq_ignore_ascii_case(cid));
    }
    if let Some(oid) = selector(r, "object_id") {
        return user(&|i| i.object_id.eq_ignore_ascii_case(oid));
    }
    if let Some(rid) = selector(r, "msi_res_id").or_else(|| selector(r, "mi_res_id")) {
        return user(&|i| {
            i.spec
                .msi_res_id
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(rid))
        });
    }
    match &cfg.system {
        Some(cid) => state
            .identity_by_client_id(cid)
            .filter(|i| *i.kind() != IdentityKind::ServicePrincipal)
            .ok_or_else(not_found),
        // Azure: without a system-assigned identity, a request naming none gets the VM's
        // user-assigned identity when there is exactly one (e.g. an AKS node pool's kubelet
        // identity); with several it is an error.
        None => match cfg.user.as_slice() {
            [only] => user(&|i| i.spec.client_id.eq_ignore_ascii_case(only)),
            _ => Err(not_found()),
        },
    }
}

/// The `xms_mirid` claim of the identity's tokens: the VM's resource id for the
/// system-assigned identity, the identity's own resource id for a user-assigned one.
fn mirid(state: &State, id: &IdentityState) -> String {
    let cfg = &state.scenario.imds;
    let system = cfg
        .system
        .as_deref()
        .is_some_and(|c| c.eq_ignore_ascii_case(&id.spec.client_id));
    if system {
        return cfg
            .vm_resource_id
            .clone()
            .unwrap_or_else(|| crate::scenario::DEFAULT_VM_RESOURCE_ID.to_string());
    }
    id.spec.msi_res_id.clone().unwrap_or_else(|| {
        format!(
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            id.spec.name.as_deref().unwrap_or(&id.spec.client_id)
        )
    })
}

pub fn handle(state: &State, r: &Req) -> Resp {
    let p = r.path.to_ascii_lowercase();
    if p.trim_end_matches('/') != "/metadata/identity/oauth2/token" {
        return err(404, "not_found", "The requested resource was not found");
    }
    if r.header("metadata") != Some("true") {
        return err(
            400,
            "invalid_request",
            "Required metadata header not specified",
        );
    }
    if r.q("api-version").is_none_or(str::is_empty) {
        return err(
            400,
            "invalid_request",
            "Required query variable 'api-version' is missing",
        );
    }
    let Some(resource) = r.q("resource").filter(|s| !s.is_empty()) else {
        return err(
            400,
            "invalid_request",
            "Required query variable 'resource' is missing",
        );
    };
    let id = match select(state, r) {
        Ok(i) => i,
        Err(e) => return e.with_identity(selector(r, "client_id").map(str::to_string)),
    };
    if cloud_by_resource(resource).is_none() {
        return err(
            400,
            "invalid_resource",
            &format!("AADSTS500011: The resource principal named {resource} was not found in the tenant named {}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.", id.spec.tenant),
        )
        .with_identity(Some(id.spec.client_id.clone()));
    }
    let t = crate::token::issue_managed(
        resource,
        &id.spec.client_id,
        &id.object_id,
        &id.spec.tenant,
        state.lifetime,
        Some(&mirid(state, id)),
    );
    let body = json!({
        "access_token": t.jwt,
        "client_id": id.spec.client_id,
        "expires_in": (t.exp - t.iat).to_string(),
        "expires_on": t.exp.to_string(),
        "ext_expires_in": (t.exp - t.iat).to_string(),
        "not_before": t.iat.to_string(),
        "refresh_token": "",
        "resource": resource,
        "token_type": "Bearer",
    });
    Resp::json_ct(200, "application/json; charset=utf-8", body.to_string())
        .with_identity(Some(id.spec.client_id.clone()))
}
