//! Selections: a vault's objects of one type listed (Key Vault's list API, every page followed
//! through `nextLink`), and each selection ([`crate::options::Selection`]) turned into the
//! objects it matches, exactly as if the pod had named them.
//!
//! Cost: one list request per page (25 objects) per vault and type, however many selections
//! share it, then one GET per match, fetched concurrently with the named objects
//! ([`Fetcher::fetch_all`]). Listing needs the `list` permission; without it the Failure says
//! so. Each refresh of a rotating volume lists again, so an object that starts to match
//! appears in the next version and one that stops matching disappears from it.

use super::{kind_name, plural, role_noun, Credential, Fetcher, VaultAnswer, VaultClients};
use crate::error::{printable, Code, Error, Result};
use crate::options::{ObjectSpec, Selection};
use crate::render::ObjectKind;
use async_trait::async_trait;
use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};
use futures::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The most objects one listing may return: bounds the pages (25 each) and memory one
/// selection can cost, whatever the vault holds.
pub const MAX_LISTED: usize = 10_000;

/// One object of a listing: its name and tags (disabled objects are already left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed {
    name: String,
    tags: HashMap<String, String>,
}

/// The object name of a listed id: `https://<vault>/<secrets|keys|certificates>/<name>`
/// (Key Vault lists ids without a version). `None` for anything else.
fn name_of(id: Option<&str>, kind: ObjectKind) -> Option<String> {
    let url = url::Url::parse(id?).ok()?;
    let mut segments = url.path_segments()?;
    let (Some(collection), Some(name)) = (segments.next(), segments.next()) else {
        return None;
    };
    (collection.eq_ignore_ascii_case(plural(kind))
        && crate::options::validate_object_name(name).is_ok())
    .then(|| name.to_string())
}

/// Refuses a request to any host but the vault's: the pager follows `nextLink` as Key Vault
/// gives it, and the request carries the vault's token.
#[derive(Debug)]
struct VaultHostOnly {
    host: String,
}

#[async_trait]
impl Policy for VaultHostOnly {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let host = request.url().host_str().unwrap_or_default();
        if !host.eq_ignore_ascii_case(&self.host) || request.url().scheme() != "https" {
            let e = Error::new(
                Code::Vault,
                format!(
                    "Key Vault's listing continues at {}://{}; kv follows a nextLink only to https://{} (the request carries the vault's token)",
                    printable(request.url().scheme()),
                    printable(host),
                    self.host
                ),
            );
            return Err(azure_core::Error::new(
                azure_core::error::ErrorKind::Other,
                e,
            ));
        }
        next[0].send(ctx, request, &next[1..]).await
    }
}

impl Fetcher {
    /// The named objects followed by every selection's matches, in entry order, each match
    /// sorted by name; the file-collision rule is checked on the whole.
    pub async fn expand(
        &self,
        named: &[ObjectSpec],
        selections: &[Selection],
    ) -> Result<Vec<ObjectSpec>> {
        if selections.is_empty() {
            return Ok(named.to_vec());
        }
        // One listing per vault and type, shared by the selections that need it.
        let mut wanted: Vec<(&str, ObjectKind)> = Vec::new();
        for s in selections {
            let key = (s.template.vault.as_str(), s.template.kind);
            if !wanted.contains(&key) {
                wanted.push(key);
            }
        }
        let listings = tokio::time::timeout(
            self.deadline.remaining() + crate::retry::OUTER_GRACE,
            join_all(wanted.iter().map(|(vault, kind)| self.list(vault, *kind))),
        )
        .await
        .map_err(|_| self.stalled())?
        .into_iter()
        .collect::<Result<Vec<_>>>()?;

        let mut objects = named.to_vec();
        for s in selections {
            let key = (s.template.vault.as_str(), s.template.kind);
            let listed = wanted
                .iter()
                .position(|w| *w == key)
                .and_then(|i| listings.get(i))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut matches: Vec<&str> = listed
                .iter()
                .filter(|l| s.selects(&l.name, |k| l.tags.get(k).map(String::as_str)))
                .map(|l| l.name.as_str())
                .collect();
            matches.sort_unstable();
            matches.dedup();
            let what = format!("{} in vault {}", plural(s.template.kind), s.template.vault);
            crate::log::info(
                "selected",
                serde_json::json!({"entry": s.entry, "vault": s.template.vault, "type": kind_name(s.template.kind),
                    "listed": listed.len(), "matched": matches.len()}),
            );
            if matches.is_empty() {
                if s.template.optional {
                    crate::log::warn(
                        "selection_empty",
                        serde_json::json!({"entry": s.entry, "vault": s.template.vault, "type": kind_name(s.template.kind)}),
                    );
                    continue;
                }
                return Err(Error::new(
                    Code::NotFound,
                    format!(
                        "{} matches none of the {} enabled {what}; fix the pattern or tags, or mark the entry \"optional\": true",
                        s.describe(),
                        listed.len()
                    ),
                ));
            }
            if matches.len() > self.limits.max_files as usize {
                return Err(Error::new(
                    Code::Mount,
                    format!(
                        "{} matches {} {what}, more than this node's limit of {} files per volume (node config maxFilesPerVolume); narrow the selection",
                        s.describe(),
                        matches.len(),
                        self.limits.max_files
                    ),
                ));
            }
            objects.extend(matches.into_iter().map(|name| s.object(name)));
        }
        crate::options::check_unique_files(&objects)?;
        Ok(objects)
    }

    /// The enabled objects of one type in one vault, every page.
    async fn list(&self, vault: &str, kind: ObjectKind) -> Result<Vec<Listed>> {
        use futures::TryStreamExt;
        let started = Instant::now();
        // The list goes with the token like every object after a vault's first: it waits for
        // the token instead of taking a challenge round trip of its own.
        self.provider.token(&self.cloud.vault_resource).await?;
        let url = self.cloud.vault_url(vault);
        let host = url::Url::parse(&url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
            .unwrap_or_default();
        // Through the node's admission of the vault's host like every Key Vault request.
        let client = crate::http::client_with(self.tls.clone(), None)?;
        let admission = self.admission(&host);
        let mut options = self.client_options(true, &client, &admission);
        options
            .per_call_policies
            .push(Arc::new(VaultHostOnly { host }));
        let clients = VaultClients::new(&url, &Credential(self.provider.clone()), options)?;
        let map = |e| self.list_error(vault, kind, e);
        let mut listed = Vec::new();
        // The three pagers have different item types with the same shape.
        macro_rules! collect_enabled {
            ($pager:expr, $id:ident) => {{
                let mut pager = $pager.map_err(map)?;
                while let Some(item) = pager.try_next().await.map_err(map)? {
                    if listed.len() >= MAX_LISTED {
                        return Err(Error::new(
                            Code::Vault,
                            format!(
                                "vault {vault} lists more than {MAX_LISTED} {}; a selection takes at most that many: name the objects instead, or use a vault of their own",
                                plural(kind)
                            ),
                        ));
                    }
                    let enabled = item.attributes.as_ref().and_then(|a| a.enabled) != Some(false);
                    if let (true, Some(name)) = (enabled, name_of(item.$id.as_deref(), kind)) {
                        listed.push(Listed {
                            name,
                            tags: item.tags.unwrap_or_default(),
                        });
                    }
                }
            }};
        }
        match kind {
            ObjectKind::Secret => {
                collect_enabled!(clients.secrets.list_secret_properties(None), id)
            }
            ObjectKind::Key => collect_enabled!(clients.keys.list_key_properties(None), kid),
            ObjectKind::Cert => {
                collect_enabled!(clients.certs.list_certificate_properties(None), id)
            }
        }
        crate::log::info(
            "listed",
            serde_json::json!({"vault": vault, "type": kind_name(kind), "objects": listed.len(),
                "ms": started.elapsed().as_secs_f64() * 1000.0}),
        );
        Ok(listed)
    }

    /// A listing's error: a 403 names the missing `list` permission; the rest as for a GET.
    fn list_error(&self, vault: &str, kind: ObjectKind, e: azure_core::Error) -> Error {
        use azure_core::error::ErrorKind;
        let ErrorKind::HttpResponse {
            status,
            raw_response,
            ..
        } = e.kind()
        else {
            let listing = ObjectSpec {
                vault: vault.to_string(),
                name: "(list)".to_string(),
                kind,
                version: None,
                file: String::new(),
                render: Default::default(),
                permission: None,
                version_history: 1,
                optional: false,
                json_fields: Vec::new(),
                selected_by: None,
            };
            return self.map_sdk_error(&listing, None, e);
        };
        let status = u16::from(*status);
        let answer = VaultAnswer::parse(
            status,
            raw_response
                .as_ref()
                .map(|r| r.body().as_ref())
                .unwrap_or(b""),
        );
        crate::log::error(
            "keyvault_error",
            serde_json::json!({"vault": vault, "list": plural(kind), "status": status, "code": answer.code, "innererror": answer.inner}),
        );
        if status == 401 {
            self.provider.distrust_token();
        }
        let who = self.provider.identity_name();
        let what = format!("the list of {} in vault {vault}", plural(kind));
        match answer.classify(&what, &who, kind) {
            e if e.code() == Code::Forbidden => Error::new(
                Code::Forbidden,
                format!(
                    "{who} may not list {} in vault {vault} ({}): an objectNamePattern/objectTags selection lists the vault; grant it `list` (and `get`) on {} in the vault's access policy, or the Key Vault {} User role",
                    plural(kind),
                    printable(if answer.inner.is_empty() { &answer.code } else { &answer.inner }),
                    plural(kind),
                    role_noun(kind)
                ),
            ),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keyvault/");

    fn fixture(name: &str) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(format!("{FIXTURES}{name}")).unwrap()).unwrap()
    }

    #[test]
    fn names_come_from_the_listed_ids() {
        // Key Vault's own list bodies (REST specification examples).
        for (file, field, kind, want) in [
            (
                "GetSecrets-200-spec-7.4-example.json",
                "id",
                ObjectKind::Secret,
                vec!["listsecrettest0"],
            ),
            (
                "GetKeys-200-spec-7.4-example.json",
                "kid",
                ObjectKind::Key,
                vec!["sdktestkey"],
            ),
            (
                "GetCertificates-200-spec-7.4-example.json",
                "id",
                ObjectKind::Cert,
                vec!["listCert01", "listCert02"],
            ),
        ] {
            let body = fixture(file);
            let names: Vec<String> = body["value"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|item| name_of(item[field].as_str(), kind))
                .collect();
            assert_eq!(names, want, "{file}");
        }
        let v = "https://v.vault.azure.net";
        assert_eq!(
            name_of(Some(&format!("{v}/secrets/a/1234")), ObjectKind::Secret),
            Some("a".into()),
            "a versioned id still names its object"
        );
        for bad in [
            format!("{v}/keys/a"),
            format!("{v}/secrets/"),
            format!("{v}/secrets/a%2F..%2Fb"),
            format!("{v}/secrets/a.b"),
            "not a url".to_string(),
        ] {
            assert_eq!(name_of(Some(&bad), ObjectKind::Secret), None, "{bad}");
        }
    }

    /// The next policy: answers an error saying it was reached.
    #[derive(Debug)]
    struct Reached;

    #[async_trait]
    impl Policy for Reached {
        async fn send(&self, _: &Context, _: &mut Request, _: &[Arc<dyn Policy>]) -> PolicyResult {
            Err(azure_core::Error::new(
                azure_core::error::ErrorKind::Other,
                Error::new(Code::Internal, "reached"),
            ))
        }
    }

    #[test]
    fn a_next_link_to_another_host_is_not_followed() {
        let policy = VaultHostOnly {
            host: "kvdemo.vault.azure.net".into(),
        };
        let send = |url: &str| {
            let mut request =
                Request::new(url::Url::parse(url).unwrap(), azure_core::http::Method::Get);
            let next: [Arc<dyn Policy>; 1] = [Arc::new(Reached)];
            let e = futures::executor::block_on(policy.send(&Context::new(), &mut request, &next))
                .err()
                .unwrap();
            e.downcast_ref::<Error>().unwrap().message().to_string()
        };
        // The vault's own host, with Key Vault's explicit :443 and any case: passed on.
        assert_eq!(
            send("https://kvdemo.vault.azure.net:443/secrets?$skiptoken=x"),
            "reached"
        );
        assert_eq!(send("https://KVDEMO.vault.azure.net/secrets"), "reached");
        for other in [
            "https://evil.example/secrets?$skiptoken=x",
            "https://kvdemo.vault.azure.net.evil.example/secrets",
            "http://kvdemo.vault.azure.net/secrets",
        ] {
            let m = send(other);
            assert!(
                m.contains("kv follows a nextLink only to https://kvdemo.vault.azure.net"),
                "{other}: {m}"
            );
        }
    }

    #[test]
    fn the_sdk_models_read_the_recorded_list_bodies() {
        // The pager deserializes each page into these models: the fields kv reads are there.
        let secrets: azure_security_keyvault_secrets::models::ListSecretPropertiesResult =
            serde_json::from_value(fixture("GetSecrets-200-spec-7.4-example.json")).unwrap();
        let item = &secrets.value[0];
        assert_eq!(item.attributes.as_ref().unwrap().enabled, Some(true));
        assert!(secrets.next_link.unwrap().contains("$skiptoken="));
        let keys: azure_security_keyvault_keys::models::ListKeyPropertiesResult =
            serde_json::from_value(fixture("GetKeys-200-spec-7.4-example.json")).unwrap();
        assert!(keys.value[0].kid.is_some());
        let certs: azure_security_keyvault_certificates::models::ListCertificatePropertiesResult =
            serde_json::from_value(fixture("GetCertificates-200-spec-7.4-example.json")).unwrap();
        assert_eq!(certs.value.len(), 2);
        assert!(certs.next_link.is_none());
    }
}
