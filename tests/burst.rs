//! Bursts of mounts on one node, through the shipped binary against the emulator: the node-wide
//! token cache (one token per identity, never shared with a caller that would not have received
//! it), IMDS's request slots and the node-wide memory of a 429's Retry-After.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SECRET_VALUE: &str = "s3cr3t-P@ssw0rd";

/// One secret of kvdemo with this identity.
fn secret(identity: Value) -> Value {
    let mut o = json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                       "keyvaultobjecttypes": "secret"});
    for (k, v) in identity.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn node_identity() -> Value {
    secret(json!({"usevmmanagedidentity": "true"}))
}

fn service_principal(client_secret: &str) -> Value {
    secret(
        json!({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID),
                  "kubernetes.io/secret/clientsecret": b64(client_secret)}),
    )
}

/// Requests the emulator logged for `endpoint` (`imds`, `aad`, `nmi`, `keyvault`).
fn requests(node: &Node, endpoint: &str) -> Vec<Value> {
    node.ns
        .request_log()
        .into_iter()
        .filter(|r| r["endpoint"] == endpoint)
        .collect()
}

fn count(node: &Node, endpoint: &str) -> usize {
    requests(node, endpoint).len()
}

#[track_caller]
fn assert_secret(node: &Node, dir: &Path) {
    assert_eq!(node.file(dir, "db-password"), SECRET_VALUE.as_bytes());
}

/// The cache entries (64 hex digits) in the node's token dir.
fn entries(node: &Node) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(node.state_dir().join("tokens")) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_second_mount_of_one_identity_reuses_the_token() {
    let node = Node::new();
    for options in [node_identity(), service_principal(SP_SECRET)] {
        let endpoint = if options.get("usevmmanagedidentity").is_some() {
            "imds"
        } else {
            "aad"
        };
        for _ in 0..3 {
            let dir = node.volume_dir("v");
            node.mount(&dir, options.clone()).assert_success();
            assert_secret(&node, &dir);
        }
        assert_eq!(count(&node, endpoint), 1, "{endpoint}: one token request");
    }
    // The log says where each token came from, without the token.
    let log = node.log_text();
    assert!(log.contains("\"cached\":true"), "{log}");
    assert!(!log.contains("eyJ"), "a token in the log");
}

#[test]
fn a_wrong_client_secret_never_mounts_via_a_cached_token() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    node.mount(&dir, service_principal(SP_SECRET))
        .assert_success();
    assert_eq!(count(&node, "aad"), 1);
    for wrong in ["wrong-secret", "emulator-sp-secreT", ""] {
        let dir = node.volume_dir("v");
        let c = node.mount(&dir, service_principal(wrong));
        if wrong.is_empty() {
            // An empty secret is refused before anything is asked.
            assert_eq!(c.status(), "Failure", "{}", c.stdout);
        } else {
            c.assert_failure("KV_AAD_CLIENT");
        }
        node.assert_nothing_left(&dir);
    }
    // Each wrong secret was presented to AAD (and refused), none answered from the cache.
    assert_eq!(count(&node, "aad"), 3);
    // The right secret still hits the cache.
    node.mount(&node.volume_dir("v"), service_principal(SP_SECRET))
        .assert_success();
    assert_eq!(count(&node, "aad"), 3);
}

#[test]
fn a_namespace_denied_the_node_identity_never_uses_a_cached_node_token() {
    let node = Node::with_exact(
        scenario(),
        json!({"policy": {"nodeIdentities": {"demo": ["system"]}}}),
    );
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity()).assert_success();
    assert_eq!(entries(&node).len(), 1, "the node token is cached");
    let imds = count(&node, "imds");
    let mut other = node_identity();
    other["kubernetes.io/pod.namespace"] = json!("other");
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, other);
    c.assert_failure("KV_POLICY");
    node.assert_nothing_left(&dir);
    assert_eq!(count(&node, "imds"), imds, "no token was asked for");
    assert_eq!(
        count(&node, "keyvault"),
        2,
        "only demo's challenge and GET reached the vault"
    );
}

#[test]
fn two_pods_with_pod_identity_never_share_a_token() {
    let mut s = scenario();
    s["nmi"]["bindings"].as_array_mut().unwrap().push(
        json!({"namespace": "demo", "pod": "other-pod", "client_id": NO_ACCESS_MI, "forbidden": true}),
    );
    let node = Node::with(s, json!({}));
    let pod =
        |name: &str| secret(json!({"usepodidentity": "true", "kubernetes.io/pod.name": name}));
    let dir = node.volume_dir("v");
    node.mount(&dir, pod("demo-pod")).assert_success();
    // Another pod of the namespace asks NMI itself (which refuses it) and gets nothing.
    let other = node.volume_dir("v");
    let c = node.mount(&other, pod("other-pod"));
    assert_eq!(c.status(), "Failure", "{}", c.stdout);
    node.assert_nothing_left(&other);
    let asked: Vec<String> = requests(&node, "nmi")
        .iter()
        .map(|r| r["podname"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(asked.contains(&"other-pod".to_string()), "{asked:?}");
    // A new incarnation of demo-pod (another uid) asks again; the same pod's second volume does not.
    let before = count(&node, "nmi");
    node.mount(&node.volume_dir("v"), pod("demo-pod"))
        .assert_success();
    assert_eq!(count(&node, "nmi"), before + 1, "a new pod uid asks NMI");
    node.unmount(&dir).assert_success();
    node.mount(&dir, pod("demo-pod")).assert_success();
    assert_eq!(
        count(&node, "nmi"),
        before + 1,
        "the same pod reuses its token"
    );
}

#[test]
fn cache_files_are_unreadable_by_others() {
    use std::os::unix::fs::MetadataExt;
    let node = Node::new();
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    let state = node.state_dir();
    for dir in [state.clone(), state.join("tokens"), state.join("slots")] {
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700, "{}", dir.display());
        assert_eq!(m.uid(), 0, "{}", dir.display());
    }
    let found = entries(&node);
    assert_eq!(found.len(), 1);
    for entry in std::fs::read_dir(state.join("tokens")).unwrap().flatten() {
        let m = entry.metadata().unwrap();
        assert!(m.is_file(), "{}", entry.path().display());
        assert_eq!(m.mode() & 0o077, 0, "{}", entry.path().display());
    }
    // The file name says nothing about the identity.
    let text = std::fs::read_to_string(&found[0]).unwrap();
    assert!(!found[0].to_string_lossy().contains(SYSTEM_MI));
    assert!(text.contains("expires_on"), "{text}");
}

#[test]
fn a_token_cached_under_one_cloud_is_not_used_after_the_cloud_changes() {
    let node = Node::new();
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    assert_eq!(count(&node, "imds"), 1);
    // A custom cloud with the very same endpoints is another cloud: a new token.
    node.set_config(json!({"cloud": "AzureStackCloud", "customCloud": {
        "authorityHost": "https://login.microsoftonline.com",
        "keyVaultDnsSuffix": "vault.azure.net",
        "keyVaultResource": "https://vault.azure.net"}}));
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    assert_eq!(count(&node, "imds"), 2);
    assert_eq!(entries(&node).len(), 2);
    // Back to the public cloud: its own entry again.
    node.set_config(json!({}));
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    assert_eq!(count(&node, "imds"), 2);
}

/// Mounts with the node identity once: the cache entry it leaves, and its JSON.
fn cached_node_token(node: &Node) -> (PathBuf, Value) {
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    let entry = entries(node).pop().expect("one entry");
    let v = serde_json::from_str(&std::fs::read_to_string(&entry).unwrap()).unwrap();
    (entry, v)
}

#[test]
fn stale_corrupt_symlinked_or_loose_cache_entries_are_ignored() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let (entry, v) = cached_node_token(&node);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut stale = v.clone();
    stale["expires_on"] = json!(now + 60);
    let mut planted = v.clone();
    planted["token"] = json!("planted-token");
    let decoy = node.root.join("decoy");
    std::fs::write(&decoy, planted.to_string()).unwrap();
    std::fs::set_permissions(&decoy, std::fs::Permissions::from_mode(0o600)).unwrap();
    type Plant = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Plant)> = vec![
        (
            "corrupt",
            Box::new(|p| std::fs::write(p, "{not json").unwrap()),
        ),
        ("stale", {
            let stale = stale.to_string();
            Box::new(move |p| std::fs::write(p, &stale).unwrap())
        }),
        ("symlink", {
            let decoy = decoy.clone();
            Box::new(move |p| std::os::unix::fs::symlink(&decoy, p).unwrap())
        }),
        ("group-readable", {
            let planted = planted.to_string();
            Box::new(move |p| {
                std::fs::write(p, &planted).unwrap();
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o640)).unwrap();
            })
        }),
        ("foreign owner", {
            let planted = planted.to_string();
            Box::new(move |p| {
                std::fs::write(p, &planted).unwrap();
                std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
            })
        }),
        ("oversized", {
            let mut big = planted.clone();
            big["label"] = json!("x".repeat(100 * 1024));
            let big = big.to_string();
            Box::new(move |p| std::fs::write(p, &big).unwrap())
        }),
    ];
    for (name, plant) in cases {
        let before = count(&node, "imds");
        let _ = std::fs::remove_file(&entry);
        plant(&entry);
        let dir = node.volume_dir("v");
        node.mount(&dir, node_identity()).assert_success();
        assert_secret(&node, &dir);
        assert_eq!(count(&node, "imds"), before + 1, "{name}: a new token");
        let m = std::fs::symlink_metadata(&entry).unwrap();
        assert!(m.is_file(), "{name}: replaced by a regular file");
        let now_text = std::fs::read_to_string(&entry).unwrap();
        assert!(!now_text.contains("planted-token"), "{name}");
    }
    // The decoy a link pointed at is untouched.
    assert!(std::fs::read_to_string(&decoy)
        .unwrap()
        .contains("planted-token"));
}

/// IMDS with Azure's documented limits and some latency.
fn limited_imds() -> Value {
    let mut s = scenario();
    s["imds"]["limits"] = json!({"concurrency": 5, "rate_per_second": 20});
    s["latency_ms"] = json!({"imds": 20, "nmi": 0, "aad": 20, "keyvault": 20});
    s
}

/// Runs `n` mounts at once, each in its own kv process; their replies in order.
fn burst(node: &Node, n: usize, options: &Value) -> Vec<Call> {
    let dirs: Vec<PathBuf> = (0..n).map(|_| node.volume_dir("v")).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .map(|dir| s.spawn(move || node.mount(dir, options.clone())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn thirty_concurrent_node_identity_mounts_make_at_most_two_imds_requests() {
    let node = Node::with(limited_imds(), json!({}));
    let calls = burst(&node, 30, &node_identity());
    for c in &calls {
        c.assert_success();
    }
    let imds = requests(&node, "imds");
    assert!(
        !imds.is_empty() && imds.len() <= 2,
        "{} IMDS requests: {imds:?}",
        imds.len()
    );
    assert!(imds.iter().all(|r| r["status"] == 200), "{imds:?}");
}

#[test]
fn thirty_concurrent_service_principal_mounts_make_one_aad_request() {
    let node = Node::with(limited_imds(), json!({}));
    let calls = burst(&node, 30, &service_principal(SP_SECRET));
    for c in &calls {
        c.assert_success();
    }
    assert_eq!(count(&node, "aad"), 1);
}

#[test]
fn without_the_cache_imds_slots_keep_a_burst_under_its_limits() {
    // Every mount asks IMDS; the node-wide slots keep them within 5 at a time, so IMDS's
    // concurrency limit never answers 429 (its rate limit may, and is retried).
    let node = Node::with(limited_imds(), json!({"tokenCache": false}));
    let calls = burst(&node, 12, &node_identity());
    for c in &calls {
        c.assert_success();
    }
    let imds = requests(&node, "imds");
    assert!(imds.iter().filter(|r| r["status"] == 200).count() >= 12);
    let concurrency_429 = imds
        .iter()
        .filter(|r| r["throttled"] == "concurrency")
        .count();
    assert_eq!(concurrency_429, 0, "{imds:?}");
    assert!(entries(&node).is_empty(), "nothing is cached");
}

fn ts(r: &Value) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(
        r["ts"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
}

#[test]
fn a_vault_429_makes_the_other_processes_wait() {
    let mut s = scenario();
    s["faults"] = json!([{"endpoint": "keyvault", "path_contains": "/secrets/db-password",
                          "count": 1, "action": "status", "status": 429, "retry_after": 3}]);
    let node = Node::with(s, json!({}));
    let first_dir = node.volume_dir("v");
    let options = node_identity();
    std::thread::scope(|scope| {
        let first = scope.spawn(|| node.mount(&first_dir, options.clone()));
        // Once the vault has throttled the first mount, the others start.
        let started = Instant::now();
        let throttled = loop {
            if let Some(r) = requests(&node, "keyvault")
                .into_iter()
                .find(|r| r["status"] == 429)
            {
                break r;
            }
            assert!(started.elapsed() < Duration::from_secs(20), "no 429");
            std::thread::sleep(Duration::from_millis(20));
        };
        let during = Instant::now();
        let (out, _) = doctor(&node);
        assert!(
            out.lines()
                .any(|l| l.starts_with("WARN  throttle") && l.contains("kvdemo.vault.azure.net")),
            "{out}"
        );
        let others = burst(&node, 5, &options);
        for c in &others {
            c.assert_success();
        }
        first.join().unwrap().assert_success();
        assert!(
            during.elapsed() >= Duration::from_millis(2500),
            "the others waited for the window"
        );
        // Nobody sent the vault anything during the 3 s it asked for.
        let at = ts(&throttled);
        let early: Vec<Value> = requests(&node, "keyvault")
            .into_iter()
            .filter(|r| {
                let t = ts(r);
                t > at && t < at + time::Duration::milliseconds(2800)
            })
            .collect();
        assert!(early.is_empty(), "requests inside the window: {early:?}");
    });
    let log = node.log_text();
    assert!(log.contains("throttle_wait"), "{log}");
}

/// The detail of doctor's `check` line.
fn check<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find_map(|l| {
            l.get(6..)?
                .strip_prefix(check)
                .filter(|rest| rest.starts_with(' '))
                .map(str::trim_start)
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

/// `kv doctor` output and exit code.
fn doctor(node: &Node) -> (String, i32) {
    let plugin = node.kv.parent().unwrap().parent().unwrap();
    let out = node
        .ns
        .command(&node.kv)
        .arg("doctor")
        .arg("--plugin-dir")
        .arg(plugin)
        .env("KV_LOG_FILE", &node.log)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn doctor_lists_cached_tokens_without_their_values() {
    let node = Node::new();
    node.mount(&node.volume_dir("v"), node_identity())
        .assert_success();
    node.mount(&node.volume_dir("v"), service_principal(SP_SECRET))
        .assert_success();
    let (out, _) = doctor(&node);
    assert!(check(&out, "node cache").starts_with("on, "), "{out}");
    assert!(out.contains(": 2 token(s)"), "{out}");
    let cached: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("PASS  cached token"))
        .collect();
    assert_eq!(cached.len(), 2, "{out}");
    assert!(
        cached
            .iter()
            .any(|l| l
                .contains("node-identity system-assigned for https://vault.azure.net: expires in")),
        "{out}"
    );
    assert!(
        cached.iter().any(|l| l.contains(&format!(
            "service-principal client {SP_ID} in tenant {TENANT}"
        ))),
        "{out}"
    );
    assert!(out.contains("PASS  throttle"), "{out}");
    // No token, secret or credential hash in the report.
    let entry = std::fs::read_to_string(&entries(&node)[0]).unwrap();
    let token = serde_json::from_str::<Value>(&entry).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!out.contains(&token));
    assert!(!out.contains(SP_SECRET));
    node.set_config(json!({"tokenCache": false}));
    let (out, _) = doctor(&node);
    assert!(check(&out, "node cache").starts_with("off"), "{out}");
}

#[test]
fn a_token_key_vault_rejects_is_dropped_from_the_cache() {
    let node = Node::new();
    let (entry, mut v) = cached_node_token(&node);
    // The entry now holds a token Key Vault does not accept (revoked, say).
    v["token"] = json!("eyJhbGciOiJIUzI1NiJ9.e30.not-a-valid-signature");
    std::fs::write(&entry, v.to_string()).unwrap();
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity())
        .assert_failure("KV401_UNAUTHORIZED");
    node.assert_nothing_left(&dir);
    assert_eq!(
        count(&node, "imds"),
        1,
        "the rejected token came from the cache"
    );
    assert!(!entry.exists(), "the rejected token is forgotten");
    // The next mount asks IMDS again and mounts.
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity()).assert_success();
    assert_secret(&node, &dir);
    assert_eq!(count(&node, "imds"), 2);
}

/// A workload-identity volume of `sa` in `dir`, its projected token minted by the test issuer.
fn workload(
    node: &Node,
    sa: &str,
    edit: impl Fn(kv_emulator::issuer::ServiceAccountToken) -> kv_emulator::issuer::ServiceAccountToken,
) -> (PathBuf, Value) {
    let dir = node.volume_dir("wi");
    let token = kv_emulator::issuer::ServiceAccountToken::new("demo", sa)
        .pod("demo-pod", &pod_uid(&dir))
        .audiences(&["api://AzureADTokenExchange"]);
    let jwt = issuer().mint(&edit(token));
    project(&dir, "azure-identity-token", "azure-identity-token", &jwt);
    let options = secret(
        json!({"useworkloadidentity": "true", "clientid": WORKLOAD_APP,
                                "tenantid": TENANT, "kubernetes.io/serviceAccount.name": sa}),
    );
    (dir, options)
}

const WORKLOAD_APP: &str = "00000000-0000-0000-0000-00000000a007";

#[test]
fn workload_identity_tokens_are_shared_only_by_the_same_service_account() {
    let node = Node::new();
    // Two pods of the federated service account: one token exchange.
    for _ in 0..2 {
        let (dir, options) = workload(&node, "workload", |t| t);
        node.mount(&dir, options).assert_success();
        assert_secret(&node, &dir);
    }
    assert_eq!(count(&node, "aad"), 1);
    // Another service account naming the same client id is asked about at AAD (which has no
    // federated credential for it), never handed the cached token.
    let (dir, options) = workload(&node, "intruder", |t| t);
    node.mount(&dir, options)
        .assert_failure("KV_AAD_FEDERATION");
    node.assert_nothing_left(&dir);
    assert_eq!(count(&node, "aad"), 2);
    // The federated account's expired token is refused before the cache is looked at.
    let (dir, options) = workload(&node, "workload", |t| t.issued_offset(-7200).ttl(3600));
    node.mount(&dir, options).assert_failure("KV_SA_TOKEN");
    assert_eq!(count(&node, "aad"), 2);
}
