//! Key Vault data plane: GET secrets / keys / certificates (latest, by version, version
//! listings), the listings of a vault's secrets / keys / certificates (`GET /secrets`, with
//! tags and `nextLink` paging like Key Vault), the 401 challenge, access policies, disabled
//! objects, errors.

use crate::exchange::{Req, Resp};
use crate::material::{x5t, CertVer, KeyVer, SecretVer, VaultState};
use crate::scenario::CLOUDS;
use crate::state::State;
use crate::token::TokenError;
use crate::util::{b64, random_guid};
use serde_json::{json, Map, Value};

/// Newest api-version served; GET shapes are unchanged since 7.x, and the current Python SDKs
/// default to 2026-04-01.
pub const LATEST_API_VERSION: &str = "2026-04-01";

/// Headers every Key Vault response carries.
pub fn kv_headers(r: Resp) -> Resp {
    let mut r = r
        .header("Cache-Control", "no-cache")
        .header("Pragma", "no-cache")
        .header("Expires", "-1")
        .header("x-ms-keyvault-region", "eastus")
        .header("x-ms-keyvault-service-version", "1.9.2179.1")
        .header(
            "x-ms-keyvault-network-info",
            "conn_type=Ipv4;addr=127.0.0.1;act_addr_fam=InterNetwork;",
        )
        .header(
            "Strict-Transport-Security",
            "max-age=31536000;includeSubDomains",
        )
        .header("X-Content-Type-Options", "nosniff");
    if !r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-ms-request-id"))
    {
        r = r.header("x-ms-request-id", &random_guid());
    }
    r
}

fn kv_error(status: u16, code: &str, message: &str, inner: Option<&str>) -> Resp {
    let mut e = json!({"code": code, "message": message});
    if let Some(i) = inner {
        e["innererror"] = json!({"code": i});
    }
    Resp::json(status, &json!({"error": e}))
}

fn api_version_ok(v: &str) -> bool {
    let base = v.split("-preview").next().unwrap_or(v);
    if let Some(minor) = base.strip_prefix("7.") {
        return minor.parse::<u32>().is_ok_and(|m| m <= 6);
    }
    let b = base.as_bytes();
    let is_date = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && base
            .chars()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    is_date && ("2015-06-01"..=LATEST_API_VERSION).contains(&base)
}

pub fn handle(state: &State, r: &Req) -> Resp {
    let mut resp = handle_inner(state, r);
    if let Some(c) = r.header("x-ms-client-request-id") {
        resp = resp.header("x-ms-client-request-id", c);
    }
    kv_headers(resp)
}

/// The vault a request is for and its throttle, when the scenario gives it one.
pub fn throttle_for_host<'a>(
    state: &'a State,
    host: &str,
) -> Option<(String, &'a crate::scenario::Throttle)> {
    let v = vault_for_host(state, host)?;
    let t = state
        .scenario
        .vaults
        .iter()
        .find(|sv| sv.name.eq_ignore_ascii_case(&v.name))?
        .throttle
        .as_ref()?;
    Some((v.name.to_ascii_lowercase(), t))
}

fn vault_for_host<'a>(state: &'a State, host: &str) -> Option<&'a VaultState> {
    for c in CLOUDS {
        if let Some(name) = host.strip_suffix(&format!(".{}", c.vault_suffix)) {
            return state
                .store
                .vaults
                .get(&name.to_ascii_lowercase())
                .filter(|v| v.cloud == c);
        }
    }
    None
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Secrets,
    Keys,
    Certificates,
}

impl Kind {
    fn word(self) -> &'static str {
        match self {
            Kind::Secrets => "secret",
            Kind::Keys => "key",
            Kind::Certificates => "certificate",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::Secrets => "secrets",
            Kind::Keys => "keys",
            Kind::Certificates => "certificates",
        }
    }
    fn not_found_code(self) -> &'static str {
        match self {
            Kind::Secrets => "SecretNotFound",
            Kind::Keys => "KeyNotFound",
            Kind::Certificates => "CertificateNotFound",
        }
    }
    fn disabled_code(self) -> &'static str {
        match self {
            Kind::Secrets => "SecretDisabled",
            Kind::Keys => "KeyDisabled",
            Kind::Certificates => "CertificateDisabled",
        }
    }
}

fn challenge(v: &VaultState, code: &str, msg: &str) -> Resp {
    kv_error(401, code, msg, None).header(
        "WWW-Authenticate",
        &format!(
            "Bearer authorization=\"https://login.windows.net/{}\", resource=\"{}\"",
            v.tenant, v.cloud.resource
        ),
    )
}

fn handle_inner(state: &State, r: &Req) -> Resp {
    let Some(vault) = vault_for_host(state, &r.host) else {
        return kv_error(
            404,
            "VaultNotFound",
            &format!("No vault is served at host '{}' by this emulator.", r.host),
            None,
        );
    };
    match r.q("api-version") {
        None | Some("") => {
            return kv_error(
                400,
                "BadParameter",
                "The 'api-version' query parameter is missing.",
                None,
            );
        }
        Some(v) if !api_version_ok(v) => {
            return kv_error(
                400,
                "BadParameter",
                &format!("The specified version ({v}) is not recognized. Consider using the latest supported version ({LATEST_API_VERSION})."),
                None,
            );
        }
        _ => {}
    }
    // Authentication.
    let bearer = r.header("authorization").and_then(|h| {
        let (scheme, tok) = h.split_once(' ')?;
        (scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("pop"))
            .then(|| tok.trim())
    });
    let Some(tok) = bearer.filter(|t| !t.is_empty()) else {
        return challenge(
            vault,
            "Unauthorized",
            "AKV10000: Request is missing a Bearer or PoP token.",
        );
    };
    let claims = match crate::token::verify(tok) {
        Ok(c) => c,
        Err(TokenError::Expired) => {
            return challenge(
                vault,
                "Unauthorized",
                "[TokenExpired] Error validating token: 'S2S12086'.",
            );
        }
        Err(TokenError::NotYetValid) => {
            return challenge(
                vault,
                "Unauthorized",
                "[TokenNotYetValid] Error validating token: 'S2S12088'.",
            );
        }
        Err(_) => {
            return challenge(
                vault,
                "Unauthorized",
                "AKV10013: Invalid token, signature validation failed.",
            );
        }
    };
    let appid = claims["appid"].as_str().unwrap_or("").to_string();
    let oid = claims["oid"].as_str().unwrap_or("").to_string();
    let tid = claims["tid"].as_str().unwrap_or("").to_string();
    let aud = claims["aud"].as_str().unwrap_or("");
    if aud.trim_end_matches('/') != vault.cloud.resource {
        return challenge(
            vault,
            "Unauthorized",
            &format!(
                "AKV10022: Invalid audience. Expected {}, found: {aud}.",
                vault.cloud.resource
            ),
        )
        .with_identity(Some(appid));
    }
    if !tid.eq_ignore_ascii_case(&vault.tenant) {
        return challenge(
            vault,
            "Unauthorized",
            &format!(
                "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{}/, found https://sts.windows.net/{tid}/.",
                vault.tenant
            ),
        )
        .with_identity(Some(appid));
    }
    routed(state, r, vault, &appid, &oid, &tid).with_identity(Some(appid))
}

fn routed(state: &State, r: &Req, vault: &VaultState, appid: &str, oid: &str, tid: &str) -> Resp {
    let trimmed = r.path.strip_prefix('/').unwrap_or(&r.path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let segs: Vec<&str> = trimmed.split('/').collect();
    let kind = match segs.first().map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("secrets") => Kind::Secrets,
        Some("keys") => Kind::Keys,
        Some("certificates") => Kind::Certificates,
        _ => return kv_error(404, "NotFound", "Not found", None),
    };
    if r.method != "GET" {
        return kv_error(
            405,
            "MethodNotAllowed",
            &format!("HTTP {} not allowed", r.method),
            None,
        );
    }
    // `GET /secrets`: the vault's secrets (`list` permission), paged like the version listings.
    let collection = segs.len() == 1;
    let (name, version, list) = match segs.as_slice() {
        [_] => ("", None, true),
        [_, name] => (*name, None, false),
        [_, name, v] if v.eq_ignore_ascii_case("versions") => (*name, None, true),
        [_, name, v] => (*name, Some(*v), false),
        _ => return kv_error(404, "NotFound", "Not found", None),
    };
    let name = crate::util::percent_decode(name, false);
    let perm = if list { "list" } else { "get" };
    let allowed = state.scenario.access_policies.iter().any(|p| {
        p.identity.eq_ignore_ascii_case(appid)
            && p.vault.eq_ignore_ascii_case(&vault.name)
            && match kind {
                Kind::Secrets => &p.secrets,
                Kind::Keys => &p.keys,
                Kind::Certificates => &p.certificates,
            }
            .iter()
            .any(|x| x.eq_ignore_ascii_case(perm) || x.eq_ignore_ascii_case("all"))
    });
    if !allowed {
        return kv_error(
            403,
            "Forbidden",
            &format!(
                "The user, group or application 'appid={appid};oid={oid};iss=https://sts.windows.net/{tid}/' does not have {} {perm} permission on key vault '{};location={}'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                kind.plural(),
                vault.name,
                vault.location
            ),
            Some("AccessDenied"),
        );
    }
    let base = format!("https://{}.{}", vault.name, vault.cloud.vault_suffix);
    let api = r.q("api-version").unwrap_or("");
    if collection {
        return list_collection(r, vault, kind, &base, api);
    }
    let key = name.to_ascii_lowercase();
    let not_found = |what: &str| {
        kv_error(
            404,
            kind.not_found_code(),
            &format!(
                "A {} with (name/id) {what} was not found in this key vault. If you recently deleted this {} you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
                kind.word(),
                kind.word()
            ),
            None,
        )
    };
    // Version bookkeeping shared by all kinds.
    let metas: Option<Vec<(String, bool, i64)>> = match kind {
        Kind::Secrets => vault.secrets.get(&key).map(|v| {
            v.iter()
                .map(|s| (s.version.clone(), s.attrs.enabled, s.attrs.created))
                .collect()
        }),
        Kind::Keys => vault.keys.get(&key).map(|v| {
            v.iter()
                .map(|s| (s.version.clone(), s.attrs.enabled, s.attrs.created))
                .collect()
        }),
        Kind::Certificates => vault.certs.get(&key).map(|v| {
            v.iter()
                .map(|s| (s.version.clone(), s.attrs.enabled, s.attrs.created))
                .collect()
        }),
    };
    let Some(metas) = metas.filter(|m| !m.is_empty()) else {
        return not_found(&name);
    };
    if list {
        return list_versions(r, vault, kind, &key, &name, &base, api);
    }
    let idx = match version {
        Some(v) => match metas
            .iter()
            .position(|(ver, _, _)| ver.eq_ignore_ascii_case(v))
        {
            Some(i) => i,
            None => return not_found(&format!("{name}/{v}")),
        },
        None => latest_index(&metas),
    };
    if !metas[idx].1 {
        return kv_error(
            403,
            "Forbidden",
            &format!(
                "Operation get is not allowed on a disabled {}.",
                kind.word()
            ),
            Some(kind.disabled_code()),
        );
    }
    let body = match kind {
        Kind::Secrets => {
            let s = &vault.secrets[&key][idx];
            let out_pem = api >= "2025-07-01"
                && api.starts_with("20")
                && r.q("outContentType") == Some("application/x-pem-file")
                && s.content_type.as_deref() == Some("application/x-pkcs12");
            secret_json(s, &base, out_pem)
        }
        Kind::Keys => key_json(&vault.keys[&key][idx], &base),
        Kind::Certificates => cert_json(&vault.certs[&key][idx], &base),
    };
    Resp::json(200, &body)
}

/// Latest = the newest enabled version by `created`; if none is enabled, the newest.
fn latest_index(metas: &[(String, bool, i64)]) -> usize {
    let newest = |enabled_only: bool| {
        metas
            .iter()
            .enumerate()
            .filter(|(_, m)| !enabled_only || m.1)
            .max_by_key(|(i, m)| (m.2, *i))
            .map(|(i, _)| i)
    };
    newest(true).or_else(|| newest(false)).unwrap_or(0)
}

fn tags_into(
    m: &mut Map<String, Value>,
    tags: &Option<std::collections::BTreeMap<String, String>>,
) {
    if let Some(t) = tags {
        m.insert("tags".into(), json!(t));
    }
}

fn secret_json(s: &SecretVer, base: &str, out_pem: bool) -> Value {
    let mut m = Map::new();
    let (value, ct) = match (&s.pem_form, out_pem) {
        (Some(p), true) => (p.clone(), Some("application/x-pem-file".to_string())),
        _ => (s.value.clone(), s.content_type.clone()),
    };
    m.insert("value".into(), json!(value));
    if let Some(ct) = ct {
        m.insert("contentType".into(), json!(ct));
    }
    m.insert(
        "id".into(),
        json!(format!("{base}/secrets/{}/{}", s.name, s.version)),
    );
    m.insert("attributes".into(), s.attrs.to_json());
    tags_into(&mut m, &s.tags);
    if let Some(kid) = &s.kid {
        m.insert("kid".into(), json!(kid));
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

fn key_json(k: &KeyVer, base: &str) -> Value {
    let mut jwk = Map::new();
    jwk.insert(
        "kid".into(),
        json!(format!("{base}/keys/{}/{}", k.name, k.version)),
    );
    for (a, b) in &k.jwk {
        jwk.insert(a.clone(), b.clone());
    }
    jwk.insert("key_ops".into(), json!(k.key_ops));
    let mut m = Map::new();
    m.insert("key".into(), Value::Object(jwk));
    let mut attrs = k.attrs.to_json();
    attrs["exportable"] = json!(k.managed);
    m.insert("attributes".into(), attrs);
    tags_into(&mut m, &k.tags);
    if k.managed {
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

fn cert_json(c: &CertVer, base: &str) -> Value {
    let mut m = Map::new();
    m.insert(
        "id".into(),
        json!(format!("{base}/certificates/{}/{}", c.name, c.version)),
    );
    m.insert(
        "kid".into(),
        json!(format!("{base}/keys/{}/{}", c.name, c.version)),
    );
    m.insert(
        "sid".into(),
        json!(format!("{base}/secrets/{}/{}", c.name, c.version)),
    );
    m.insert("x5t".into(), json!(x5t(&c.cer)));
    m.insert("cer".into(), json!(b64(&c.cer)));
    m.insert("attributes".into(), c.attrs.to_json());
    let mut key_props = json!({"exportable": true, "kty": c.kty, "reuse_key": false});
    if let Some(s) = c.key_size {
        key_props["key_size"] = json!(s);
    }
    if let Some(crv) = &c.crv {
        key_props["crv"] = json!(crv);
    }
    let mut sans = json!({});
    if !c.dns_names.is_empty() {
        sans["dns_names"] = json!(c.dns_names);
    }
    m.insert(
        "policy".into(),
        json!({
            "id": format!("{base}/certificates/{}/policy", c.name),
            "key_props": key_props,
            "secret_props": {"contentType": c.content_type},
            "x509_props": {
                "subject": c.subject,
                "sans": sans,
                "ekus": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
                "key_usage": ["digitalSignature", "keyEncipherment"],
                "validity_months": c.validity_months,
                "basic_constraints": {"ca": false},
            },
            "lifetime_actions": [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}],
            "issuer": {"name": if c.self_signed { "Self" } else { "Unknown" }},
            "attributes": {"enabled": true, "created": c.attrs.created, "updated": c.attrs.updated},
        }),
    );
    tags_into(&mut m, &c.tags);
    Value::Object(m)
}

/// One page of a listing: `maxresults` (1-25, default 25) items from `$skiptoken` on, and a
/// `nextLink` (`next(skip, max)`) while more remain, `null` on the last page.
fn page(r: &Req, items: &[Value], next: impl Fn(usize, usize) -> String) -> Resp {
    let max = r
        .q("maxresults")
        .and_then(|m| m.parse::<usize>().ok())
        .unwrap_or(25)
        .clamp(1, 25);
    let skip = r
        .q("$skiptoken")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let page: Vec<Value> = items.iter().skip(skip).take(max).cloned().collect();
    let next = if skip + max < items.len() {
        json!(next(skip + max, max))
    } else {
        Value::Null
    };
    Resp::json(200, &json!({"value": page, "nextLink": next}))
}

/// The properties of a listed object version (no value, no key material).
fn secret_item(s: &SecretVer, id: String) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("attributes".into(), s.attrs.to_json());
    if let Some(ct) = &s.content_type {
        m.insert("contentType".into(), json!(ct));
    }
    tags_into(&mut m, &s.tags);
    if s.kid.is_some() {
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

fn key_item(k: &KeyVer, kid: String) -> Value {
    let mut m = Map::new();
    m.insert("kid".into(), json!(kid));
    m.insert("attributes".into(), k.attrs.to_json());
    tags_into(&mut m, &k.tags);
    if k.managed {
        m.insert("managed".into(), json!(true));
    }
    Value::Object(m)
}

fn cert_item(c: &CertVer, id: String) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), json!(id));
    m.insert("x5t".into(), json!(x5t(&c.cer)));
    m.insert("attributes".into(), c.attrs.to_json());
    tags_into(&mut m, &c.tags);
    Value::Object(m)
}

/// `GET /{secrets|keys|certificates}`: every object of the vault once, by name, with the
/// attributes and tags of its current version and its id without a version (Key Vault's list
/// shape; a disabled object is listed with `enabled: false`). The `nextLink` names the host
/// with `:443`, as Key Vault's do.
fn list_collection(r: &Req, vault: &VaultState, kind: Kind, base: &str, api: &str) -> Resp {
    /// The version GET-latest serves.
    fn current<T>(versions: &[T], meta: impl Fn(&T) -> (bool, i64)) -> Option<&T> {
        let metas: Vec<(String, bool, i64)> = versions
            .iter()
            .map(|v| {
                let (enabled, created) = meta(v);
                (String::new(), enabled, created)
            })
            .collect();
        versions.get(latest_index(&metas))
    }
    let id = |name: &str| format!("{base}/{}/{name}", kind.plural());
    let items: Vec<Value> = match kind {
        Kind::Secrets => vault
            .secrets
            .values()
            .filter_map(|v| current(v, |s| (s.attrs.enabled, s.attrs.created)))
            .map(|s| secret_item(s, id(&s.name)))
            .collect(),
        Kind::Keys => vault
            .keys
            .values()
            .filter_map(|v| current(v, |k| (k.attrs.enabled, k.attrs.created)))
            .map(|k| key_item(k, id(&k.name)))
            .collect(),
        Kind::Certificates => vault
            .certs
            .values()
            .filter_map(|v| current(v, |c| (c.attrs.enabled, c.attrs.created)))
            .map(|c| cert_item(c, id(&c.name)))
            .collect(),
    };
    let host = base.strip_prefix("https://").unwrap_or(base);
    page(r, &items, |skip, max| {
        format!(
            "https://{host}:443/{}?api-version={}&$skiptoken={skip}&maxresults={max}",
            kind.plural(),
            crate::util::percent_encode(api),
        )
    })
}

fn list_versions(
    r: &Req,
    vault: &VaultState,
    kind: Kind,
    key: &str,
    name: &str,
    base: &str,
    api: &str,
) -> Resp {
    let items: Vec<Value> = match kind {
        Kind::Secrets => vault.secrets[key]
            .iter()
            .map(|s| secret_item(s, format!("{base}/secrets/{}/{}", s.name, s.version)))
            .collect(),
        Kind::Keys => vault.keys[key]
            .iter()
            .map(|k| key_item(k, format!("{base}/keys/{}/{}", k.name, k.version)))
            .collect(),
        Kind::Certificates => vault.certs[key]
            .iter()
            .map(|c| cert_item(c, format!("{base}/certificates/{}/{}", c.name, c.version)))
            .collect(),
    };
    page(r, &items, |skip, max| {
        format!(
            "{base}/{}/{}/versions?api-version={}&$skiptoken={skip}&maxresults={max}",
            kind.plural(),
            crate::util::percent_encode(name),
            crate::util::percent_encode(api),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions() {
        for ok in [
            "7.4",
            "7.6",
            "7.4-preview.1",
            "2016-10-01",
            "2025-07-01",
            "2025-06-01",
        ] {
            assert!(api_version_ok(ok), "{ok}");
        }
        for bad in ["", "8.0", "7.7", "2026-05-01", "abc", "2025-7-1"] {
            assert!(!api_version_ok(bad), "{bad}");
        }
    }

    #[test]
    fn latest_prefers_newest_enabled() {
        let m = vec![("a".into(), true, 1), ("b".into(), false, 2)];
        assert_eq!(latest_index(&m), 0);
        let m = vec![("a".into(), false, 1)];
        assert_eq!(latest_index(&m), 0);
        let m = vec![("a".into(), true, 1), ("b".into(), true, 2)];
        assert_eq!(latest_index(&m), 1);
    }
}
