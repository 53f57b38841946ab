//! Azure AD (Entra ID) token endpoints (client credentials v1/v2) plus the discovery
//! documents MSAL reads.

use crate::exchange::{Req, Resp};
use crate::scenario::{cloud_by_aad_host, cloud_by_resource, FederatedCredential, IdentityKind};
use crate::state::State;
use crate::util::{aad_timestamp, parse_pairs, random_guid};
use base64::Engine;
use serde_json::json;

pub fn aad_error(status: u16, error: &str, code: u32, desc: &str) -> Resp {
    let trace = random_guid();
    let corr = random_guid();
    let ts = aad_timestamp();
    let body = json!({
        "error": error,
        "error_description": format!("{desc}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}"),
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    Resp::json(status, &body)
}

fn known_tenant(state: &State, t: &str) -> bool {
    state
        .store
        .identities
        .iter()
        .any(|i| i.spec.tenant.eq_ignore_ascii_case(t))
        || state
            .store
            .vaults
            .values()
            .any(|v| v.tenant.eq_ignore_ascii_case(t))
}

fn tenant_not_found(t: &str) -> Resp {
    aad_error(
        400,
        "invalid_request",
        90002,
        &format!("AADSTS90002: Tenant '{t}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
    )
}

pub fn handle(state: &State, r: &Req) -> Resp {
    let segs: Vec<&str> = r.path.trim_matches('/').split('/').collect();
    let host = r.host.as_str();
    match (r.method.as_str(), segs.as_slice()) {
        ("GET", ["common", "discovery", "instance"]) => {
            let tenant = r
                .q("authorization_endpoint")
                .and_then(|u| u.split('/').nth(3))
                .unwrap_or("common")
                .to_string();
            let body = json!({
                "tenant_discovery_endpoint": format!("https://{host}/{tenant}/v2.0/.well-known/openid-configuration"),
                "api-version": "1.1",
                "metadata": [{
                    "preferred_network": host,
                    "preferred_cache": host,
                    "aliases": [host],
                }],
            });
            Resp::json(200, &body)
        }
        ("GET", [tenant, v2 @ .., ".well-known", "openid-configuration"])
            if v2.is_empty() || v2 == ["v2.0"] =>
        {
            if !known_tenant(state, tenant) && *tenant != "common" && *tenant != "organizations" {
                return tenant_not_found(tenant);
            }
            let v = if v2.is_empty() { "" } else { "/v2.0" };
            let body = json!({
                "token_endpoint": format!("https://{host}/{tenant}/oauth2{v}/token"),
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": format!("https://{host}/{tenant}/discovery{v}/keys"),
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": format!("https://{host}/{tenant}{v}"),
                "request_uri_parameter_supported": false,
                "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
                "authorization_endpoint": format!("https://{host}/{tenant}/oauth2{v}/authorize"),
                "device_authorization_endpoint": format!("https://{host}/{tenant}/oauth2{v}/devicecode"),
                "http_logout_supported": true,
                "frontchannel_logout_supported": true,
                "end_session_endpoint": format!("https://{host}/{tenant}/oauth2{v}/logout"),
                "claims_supported": ["sub", "iss", "aud", "exp", "iat"],
                "kerberos_endpoint": format!("https://{host}/{tenant}/kerberos"),
                "tenant_region_scope": "NA",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            });
            Resp::json(200, &body)
        }
        ("POST", [tenant, "oauth2", "token"]) => token(state, r, tenant, false),
        ("POST", [tenant, "oauth2", "v2.0", "token"]) => token(state, r, tenant, true),
        _ => aad_error(
            404,
            "invalid_request",
            900561,
            "AADSTS900561: The endpoint only accepts POST requests.",
        ),
    }
}

fn token(state: &State, r: &Req, tenant: &str, v2: bool) -> Resp {
    let form = parse_pairs(&String::from_utf8_lossy(&r.body));
    let f = |k: &str| crate::util::get(&form, k).filter(|s| !s.is_empty());
    // HTTP Basic client authentication (v2).
    let basic = r
        .header("authorization")
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':').map(|(a, b)| {
                (
                    crate::util::percent_decode(a, true),
                    crate::util::percent_decode(b, true),
                )
            })
        });
    let client_id = f("client_id")
        .map(str::to_string)
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let resp = token_inner(
        state,
        r,
        tenant,
        v2,
        &form,
        client_id.as_deref(),
        basic.as_ref().map(|b| b.1.as_str()),
    );
    resp.with_identity(client_id)
}

fn token_inner(
    state: &State,
    r: &Req,
    tenant: &str,
    v2: bool,
    form: &[(String, String)],
    client_id: Option<&str>,
    basic_secret: Option<&str>,
) -> Resp {
    let f = |k: &str| crate::util::get(form, k).filter(|s| !s.is_empty());
    if !known_tenant(state, tenant) {
        return tenant_not_found(tenant);
    }
    if f("grant_type") != Some("client_credentials") {
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            "AADSTS70003: The app requested an unsupported grant type.",
        );
    }
    let Some(client_id) = client_id else {
        return aad_error(
            400,
            "invalid_request",
            900144,
            "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
        );
    };
    // Federated credentials of the client: an application (service principal) or a
    // user-assigned identity can have them.
    let fics: Vec<&FederatedCredential> = state
        .scenario
        .federated_credentials
        .iter()
        .filter(|fc| fc.client_id.eq_ignore_ascii_case(client_id))
        .collect();
    let Some(id) = state.store.identities.iter().find(|i| {
        i.spec.client_id.eq_ignore_ascii_case(client_id)
            && (*i.kind() == IdentityKind::ServicePrincipal || !fics.is_empty())
            && i.spec.tenant.eq_ignore_ascii_case(tenant)
    }) else {
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            &format!("AADSTS700016: Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
        );
    };
    let host_cloud = cloud_by_aad_host(&r.host);
    // Resource / scope.
    let resource = if v2 {
        let Some(scope) = f("scope") else {
            return aad_error(
                400,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'scope'.",
            );
        };
        let res = scope
            .split(' ')
            .find_map(|s| s.strip_suffix("/.default"))
            .and_then(cloud_by_resource)
            .filter(|c| host_cloud.is_none() || host_cloud == Some(*c));
        match res {
            Some(c) => c.resource.to_string(),
            None => {
                return aad_error(
                    400,
                    "invalid_scope",
                    1002012,
                    &format!("AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."),
                )
            }
        }
    } else {
        let Some(res) = f("resource") else {
            return aad_error(
                400,
                "invalid_request",
                900144,
                "AADSTS900144: The request body must contain the following parameter: 'resource'.",
            );
        };
        match cloud_by_resource(res).filter(|c| host_cloud.is_none() || host_cloud == Some(*c)) {
            Some(_) => res.to_string(),
            None => {
                return aad_error(
                    400,
                    "invalid_resource",
                    500011,
                    &format!("AADSTS500011: The resource principal named {res} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."),
                )
            }
        }
    };
    // Credential.
    let secret = f("client_secret").or(basic_secret);
    if let Some(s) = secret {
        if id.spec.client_secret.as_deref() != Some(s) {
            return aad_error(
                401,
                "invalid_client",
                7000215,
                &format!("AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
            );
        }
    } else if let Some(assertion) = f("client_assertion") {
        if f("client_assertion_type")
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return aad_error(
                400,
                "invalid_request",
                50027,
                "AADSTS50027: Invalid client_assertion_type.",
            );
        }
        // AAD tells a certificate credential (thumbprint header) from a federated token
        // (issuer key id); without a thumbprint the federated credentials decide.
        let cert_shaped = crate::federated::parse(assertion).is_some_and(|p| {
            ["x5t", "x5t#S256", "x5c"]
                .iter()
                .any(|h| p.header.get(*h).is_some())
        });
        if !cert_shaped && (!fics.is_empty() || id.cert_der.is_none()) {
            if let Err(rej) = crate::federated::verify(assertion, &fics, &state.store.issuers) {
                return aad_error(rej.status, rej.error, rej.code, &rej.message);
            }
            return issue_token(state, id, &resource, v2);
        }
        let (Some(der), Some(key)) = (&id.cert_der, &id.cert_key) else {
            return aad_error(
                401,
                "invalid_client",
                700027,
                &format!(
                    "AADSTS700027: No certificate is registered on application '{client_id}'."
                ),
            );
        };
        let mut auds = Vec::new();
        for h in [
            r.host.as_str(),
            "login.microsoftonline.com",
            "login.windows.net",
        ] {
            for p in ["oauth2/token", "oauth2/v2.0/token"] {
                let u = format!("https://{h}/{tenant}/{p}");
                auds.push(format!("{u}?api-version=1.0"));
                auds.push(u);
            }
        }
        if let Err((code, msg)) =
            crate::token::verify_assertion(assertion, &id.spec.client_id, der, key, &auds)
        {
            return aad_error(401, "invalid_client", code, &msg);
        }
    } else {
        return aad_error(
            401,
            "invalid_client",
            7000216,
            "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        );
    }
    issue_token(state, id, &resource, v2)
}

fn issue_token(
    state: &State,
    id: &crate::material::IdentityState,
    resource: &str,
    v2: bool,
) -> Resp {
    let t = crate::token::issue(
        resource,
        &id.spec.client_id,
        &id.object_id,
        &id.spec.tenant,
        state.lifetime,
    );
    let lifetime = t.exp - t.iat;
    let body = if v2 {
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": t.jwt})
    } else {
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime.to_string(),
            "ext_expires_in": lifetime.to_string(),
            "expires_on": t.exp.to_string(),
            "not_before": t.iat.to_string(),
            "resource": resource,
            "access_token": t.jwt,
        })
    };
    Resp::json(200, &body)
}
