//! Node-wide admission and tokens: request slots held only on the wire with a fair share per
//! namespace, throttle windows scoped to who was throttled, bounded slot files, what a 401
//! evicts, `"system"` meaning system-assigned, workload-identity tokens bound to the pod.

use crate::common::*;
use kv_emulator::issuer::{ServiceAccountToken, TestIssuer};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

const WORKLOAD_APP: &str = "00000000-0000-0000-0000-00000000a007";
const USER_MI_RESOURCE: &str = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/kv-user";
const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";
const HOSTILE_SP: &str = "00000000-0000-0000-0000-0000000000e1";

/// One secret of kvdemo, in namespace `ns`, with this identity.
fn volume(ns: &str, identity: Value) -> Value {
    let mut o = json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                       "keyvaultobjecttypes": "secret", "kubernetes.io/pod.namespace": ns});
    for (k, v) in identity.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn node_identity() -> Value {
    json!({"usevmmanagedidentity": "true"})
}

fn service_principal(client_id: &str, secret: &str) -> Value {
    json!({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(client_id),
           "kubernetes.io/secret/clientsecret": b64(secret)})
}

fn count(node: &Node, endpoint: &str, status: Option<u64>) -> usize {
    node.ns
        .request_log()
        .iter()
        .filter(|r| r["endpoint"] == endpoint && status.is_none_or(|s| r["status"] == s))
        .count()
}

/// A `kv mount` started in the background, as kubelet starts a pod's mounts concurrently;
/// killed (if still running) when dropped.
struct Running(Child);

impl Running {
    fn start(node: &Node, dir: &Path, options: Value) -> Running {
        Running(node.start_mount(dir, options))
    }

    fn still_running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With the hostile mounts still busy, a victim namespace's mount of kvdemo with the node
/// identity, under a deadline of 5 s (much shorter than the hostile mounts' own), succeeds.
#[track_caller]
fn victim_mounts_beside(node: &Node, mut hostile: Vec<Running>) {
    node.set_config(json!({"vaultRequestsPerNode": 2, "deadlineSeconds": 5}));
    let dir = node.volume_dir("victim");
    node.mount(&dir, volume("victim", node_identity()))
        .assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    assert!(
        hostile.iter_mut().all(Running::still_running),
        "the hostile mounts were meant to be busy all along"
    );
}

/// Waits (up to 20 s) until `done` holds.
#[track_caller]
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < Duration::from_secs(20), "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- item 1: slots only on the wire, a fair share per namespace ------------------------------

/// H1: volumes whose workload-identity token never comes (a missing projected file) used to
/// hold the vault's node-wide slots while the SDK's challenge flow waited for the token; with
/// `vaultRequestsPerNode: 2` the victim's mount then timed out (`KV_TIMEOUT: timed out waiting
/// for one of the node's 2 vault-kvdemo.vault.azure.net request slots`).
#[test]
fn a_token_that_never_comes_holds_no_vault_slot() {
    let node = Node::with(
        scenario(),
        json!({"vaultRequestsPerNode": 2, "deadlineSeconds": 30}),
    );
    let hostile: Vec<Running> = (0..4)
        .map(|i| {
            let dir = node.volume_dir(&format!("hostile-{i}"));
            let options = volume(
                "hostile",
                json!({"useworkloadidentity": "true", "clientid": WORKLOAD_APP, "tenantid": TENANT,
                       "workloadidentitytokenpath": "nope/token"}),
            );
            Running::start(&node, &dir, options)
        })
        .collect();
    // Their challenges went out (at most 2 at once could before the fix), then they wait for
    // a token file that is never written.
    wait_until("the hostile volumes' challenges", || {
        count(&node, "keyvault", Some(401)) >= 2
    });
    std::thread::sleep(Duration::from_millis(500));
    victim_mounts_beside(&node, hostile);
}

/// H1, fairness: one namespace's slow but legitimate requests (the emulator stalls them for
/// 30 s) may not take every slot of a vault; before, two of them held both of
/// `vaultRequestsPerNode: 2` and the victim namespace's mount timed out.
#[test]
fn one_namespace_cannot_take_every_slot_of_a_vault() {
    let mut s = scenario();
    let vault = &mut s["vaults"][0];
    for i in 0..4 {
        vault["secrets"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": format!("slow-{i}"), "value": "slow"}));
    }
    s["faults"] = json!([{"endpoint": "keyvault", "path_contains": "/secrets/slow-",
                          "count": 100, "action": "stall", "ms": 30000}]);
    let node = Node::with(s, json!({"vaultRequestsPerNode": 2, "deadlineSeconds": 40}));
    let hostile: Vec<Running> = (0..4)
        .map(|i| {
            let dir = node.volume_dir(&format!("slow-{i}"));
            let mut options = volume("hostile", node_identity());
            options["keyvaultobjectnames"] = json!(format!("slow-{i}"));
            Running::start(&node, &dir, options)
        })
        .collect();
    // Each hostile mount sends its first request at once and it stalls there.
    std::thread::sleep(Duration::from_millis(1500));
    victim_mounts_beside(&node, hostile);
}

// --- item 4: throttle windows scoped to who was throttled ------------------------------------

/// M2: AAD answers 429 + `Retry-After: 30` to one application only. kv used to record the
/// window for the whole authority host, so the next service principal of any other
/// application failed at once: `KV429_THROTTLED: login.microsoftonline.com asked this node to
/// wait 29977ms`.
#[test]
fn one_applications_aad_throttling_does_not_stop_another() {
    let mut s = scenario();
    s["identities"].as_array_mut().unwrap().push(json!({
        "name": "hostile-sp", "kind": "service_principal", "client_id": HOSTILE_SP,
        "tenant": TENANT, "client_secret": "hostile-secret"}));
    s["faults"] = json!([{"endpoint": "aad", "body_contains": format!("client_id={HOSTILE_SP}"),
                          "count": 1000, "action": "status", "status": 429, "retry_after": 30}]);
    let node = Node::with(s, json!({"deadlineSeconds": 10}));
    let dir = node.volume_dir("hostile");
    let hostile = node.mount(
        &dir,
        volume("hostile", service_principal(HOSTILE_SP, "hostile-secret")),
    );
    assert_eq!(hostile.status(), "Failure", "{}", hostile.stdout);
    node.assert_nothing_left(&dir);
    let dir = node.volume_dir("victim");
    node.mount(&dir, volume("victim", service_principal(SP_ID, SP_SECRET)))
        .assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
}

/// A vault host's window stays node-wide (Key Vault throttles per vault): a mount of two of its
/// objects while the window outlasts the deadline fails at once with `KV429_THROTTLED` naming
/// the vault, not, its second object waiting for a connection the first never opened, with a
/// bare `KV_TIMEOUT` at the deadline.
#[test]
fn a_vault_window_past_the_deadline_is_reported_as_such() {
    let mut s = scenario();
    s["faults"] = json!([{"endpoint": "keyvault", "path_contains": "/secrets/db-password",
                          "count": 1, "action": "status", "status": 429, "retry_after": 30}]);
    let node = Node::with(s, json!({"deadlineSeconds": 10}));
    let dir = node.volume_dir("first");
    node.mount(&dir, volume("hostile", node_identity()))
        .assert_failure("KV429_THROTTLED");
    let dir = node.volume_dir("second");
    let mut options = volume("victim", node_identity());
    options["keyvaultobjectnames"] = json!("multiline;unicode");
    options["keyvaultobjecttypes"] = json!("secret;secret");
    let c = node.mount(&dir, options);
    c.assert_failure("KV429_THROTTLED");
    assert!(
        c.message().contains("kvdemo.vault.azure.net"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);
}

// --- item 6: slot files bounded whatever pods ask ---------------------------------------------

/// M4: one volume may name at most 16 vaults: beyond, one clear `KV_OPTIONS` Failure naming
/// the count and the cap, before any request (before: every vault was fetched, and left a slot
/// file of its own).
#[test]
fn a_volume_naming_too_many_vaults_is_refused() {
    let node = Node::new();
    let objects: Vec<Value> = (0..17)
        .map(|i| {
            json!({"objectName": "s", "objectType": "secret", "objectAlias": format!("s{i}"),
                   "keyvaultName": format!("vault{i:02}")})
        })
        .collect();
    let dir = node.volume_dir("many");
    let c = node.mount(
        &dir,
        json!({"objects": serde_json::to_string(&objects).unwrap(), "usevmmanagedidentity": "true"}),
    );
    c.assert_failure("KV_OPTIONS");
    assert!(
        c.message().contains("17 vaults") && c.message().contains("16"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);
    assert_eq!(count(&node, "keyvault", None), 0);
}

/// M4: slot files are a fixed set of buckets, not one per vault host a pod names: mounts naming
/// 80 vaults (16 each) leave at most 16 buckets × (2 slots + 1 lock) files (before: one file
/// per vault, 80).
#[test]
fn slot_files_are_bounded_whatever_vaults_pods_name() {
    let mut s = scenario();
    for i in 0..80 {
        let name = format!("kvmany{i:02}");
        s["vaults"].as_array_mut().unwrap().push(json!({
            "name": name, "tenant": TENANT, "secrets": [{"name": "s", "value": format!("v{i}")}]}));
        s["access_policies"]
            .as_array_mut()
            .unwrap()
            .push(json!({"identity": SP_ID, "vault": name, "secrets": ["get"]}));
    }
    let node = Node::with(s, json!({"vaultRequestsPerNode": 2}));
    for m in 0..5 {
        let objects: Vec<Value> = (0..16)
            .map(|i| {
                json!({"objectName": "s", "objectType": "secret", "objectAlias": format!("s{i}"),
                       "keyvaultName": format!("kvmany{:02}", m * 16 + i)})
            })
            .collect();
        let dir = node.volume_dir(&format!("m{m}"));
        let mut options = service_principal(SP_ID, SP_SECRET);
        options["objects"] = json!(serde_json::to_string(&objects).unwrap());
        node.mount(&dir, options).assert_success();
        assert_eq!(node.file(&dir, "s3"), format!("v{}", m * 16 + 3).as_bytes());
    }
    let files: Vec<String> = std::fs::read_dir(node.state_dir().join("slots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        files.len() <= 16 * 3,
        "{} slot files: {files:?}",
        files.len()
    );
}

// --- item 8: "system" means system-assigned ----------------------------------------------------

/// A scenario whose VM has no system-assigned identity and one user-assigned identity: IMDS
/// answers a request naming no identity with that one (an AKS node pool's kubelet identity).
fn vm_without_system_identity() -> Value {
    let mut s = scenario();
    s["imds"]["system"] = Value::Null;
    s["imds"]["user"] = json!([USER_MI]);
    s
}

/// M7: with `"system"` in the policy, a token IMDS hands out for a user-assigned identity
/// (its `xms_mirid` names `/userAssignedIdentities/`) is refused with `KV_POLICY` naming it;
/// before, the pod got the VM's only user-assigned identity.
#[test]
fn system_in_the_policy_never_means_a_user_assigned_identity() {
    let policy = json!({"policy": {"nodeIdentities": {"demo": ["system"]}}});
    let node = Node::with(vm_without_system_identity(), policy.clone());
    let dir = node.volume_dir("system");
    let c = node.mount(&dir, volume("demo", node_identity()));
    c.assert_failure("KV_POLICY");
    assert!(
        c.message()
            .to_ascii_lowercase()
            .contains(&USER_MI_RESOURCE.to_ascii_lowercase()),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);
    // The next mount does not get it from the cache either.
    let again = node.mount(&dir, volume("demo", node_identity()));
    again.assert_failure("KV_POLICY");

    // Named by its client id and listed as such, the same identity is fine.
    node.set_config(json!({"policy": {"nodeIdentities": {"demo": [USER_MI]}}}));
    let mut options = volume("demo", node_identity());
    options["vmmanagedidentityclientid"] = json!(USER_MI);
    node.mount(&dir, options).assert_success();

    // A namespace allowed any node identity ("*") keeps v0.0.17's behaviour: on this VM the
    // request without a client id is answered with the only user-assigned identity, and is
    // fine for it. The token it leaves in the node cache is still refused to a namespace
    // allowed only "system".
    node.set_config(json!({"policy": {"nodeIdentities": {"trusted": ["*"], "demo": ["system"]}}}));
    let trusted = node.volume_dir("trusted");
    node.mount(&trusted, volume("trusted", node_identity()))
        .assert_success();
    assert_eq!(node.file(&trusted, "db-password"), b"s3cr3t-P@ssw0rd");
    let strict = node.volume_dir("strict");
    node.mount(&strict, volume("demo", node_identity()))
        .assert_failure("KV_POLICY");
    node.assert_nothing_left(&strict);

    // On a VM with a system-assigned identity, "system" gets it.
    let node = Node::with(scenario(), policy);
    let dir = node.volume_dir("system");
    node.mount(&dir, volume("demo", node_identity()))
        .assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
}

// --- item 9: workload-identity tokens bound to the pod ----------------------------------------

fn workload(dir: &Path, token: &str) -> Value {
    project(dir, "azure-identity-token", "azure-identity-token", token);
    volume(
        "demo",
        json!({"useworkloadidentity": "true", "clientid": WORKLOAD_APP, "tenantid": TENANT,
               "kubernetes.io/serviceAccount.name": "workload"}),
    )
}

fn bound_token(dir: &Path) -> ServiceAccountToken {
    ServiceAccountToken::new("demo", "workload")
        .pod("demo-pod", &pod_uid(dir))
        .audiences(&["api://AzureADTokenExchange"])
}

/// L4: only a service-account token bound to this pod (its `kubernetes.io` claims name the
/// pod's uid, namespace and service account) is exchanged. A JWT with the right subject but no
/// such claims (from a projected configMap or secret), or another pod's, is refused with
/// `KV_SA_TOKEN` before any request; before, both were sent to AAD and mounted.
#[test]
fn a_workload_identity_token_must_be_bound_to_the_pod() {
    let node = Node::new();
    let unbound = node.volume_dir("unbound");
    let jwt = issuer().mint(&bound_token(&unbound).claim("kubernetes.io", Value::Null));
    let c = node.mount(&unbound, workload(&unbound, &jwt));
    c.assert_failure("KV_SA_TOKEN");
    assert!(c.message().contains("bound"), "{}", c.message());
    node.assert_nothing_left(&unbound);

    let other = node.volume_dir("other");
    let someone_elses = issuer().mint(&bound_token(&other));
    let mine = node.volume_dir("mine");
    let c = node.mount(&mine, workload(&mine, &someone_elses));
    c.assert_failure("KV_SA_TOKEN");
    assert!(c.message().contains(&pod_uid(&other)), "{}", c.message());
    node.assert_nothing_left(&mine);
    assert_eq!(count(&node, "aad", None), 0, "a refused token was sent");

    let good = node.volume_dir("good");
    node.mount(&good, workload(&good, &issuer().mint(&bound_token(&good))))
        .assert_success();
}

fn kv_fetch(node: &Node, token: &Path, extra: &[&str]) -> std::process::Output {
    node.ns
        .command(&node.kv)
        .args([
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--workload-identity",
            "--client-id",
            WORKLOAD_APP,
            "--tenant",
            TENANT,
            "--token-file",
        ])
        .arg(token)
        .args(extra)
        .arg("--stdout")
        .env("KV_LOG_FILE", &node.log)
        .output()
        .unwrap()
}

/// L4: `kv fetch --token-file` trusted the subject of any JWT and answered from the node's
/// token cache: a token signed by anyone, naming a service account whose token a pod had
/// cached, returned that pod's secret. Without `--namespace` and `--service-account` it now
/// asks AAD, which refuses the forgery; with them, the token must name that service account.
#[test]
fn kv_fetch_uses_the_node_cache_only_for_a_named_service_account() {
    let node = Node::new();
    let dir = node.volume_dir("pod");
    node.mount(&dir, workload(&dir, &issuer().mint(&bound_token(&dir))))
        .assert_success();
    let aad_before = count(&node, "aad", None);

    // Same issuer name and subject, but signed with a key the issuer never published.
    let forger = TestIssuer::from_pem(
        ISSUER,
        &std::fs::read_to_string(material("rsa-key.pem")).unwrap(),
    )
    .unwrap();
    let forged = node.root.join("forged-token");
    std::fs::write(&forged, forger.mint(&bound_token(&dir))).unwrap();
    let out = kv_fetch(&node, &forged, &[]);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout),
        "s3cr3t-P@ssw0rd",
        "a forged token was answered from the cache"
    );
    assert!(!out.status.success());
    assert_eq!(
        count(&node, "aad", None),
        aad_before + 1,
        "AAD was not asked"
    );

    // Naming the service account, a genuine token of it is served from the cache.
    let genuine = node.root.join("genuine-token");
    std::fs::write(&genuine, issuer().mint(&bound_token(&dir))).unwrap();
    let aad_before = count(&node, "aad", None);
    let out = kv_fetch(
        &node,
        &genuine,
        &["--namespace", "demo", "--service-account", "workload"],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "s3cr3t-P@ssw0rd",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        count(&node, "aad", None),
        aad_before,
        "the cache was not used"
    );
    // ... and a token of another service account is refused.
    let out = kv_fetch(
        &node,
        &genuine,
        &["--namespace", "demo", "--service-account", "other"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("KV_SA_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

// --- item 10: a 401 evicts only what it proves wrong ------------------------------------------

/// L5: a pod naming a vault of another tenant gets 401 AKV10032 (issuer mismatch) for the
/// node identity's shared token; that proves nothing about the token, so it stays cached and
/// the next victim mount costs no IMDS request (before: the entry was forgotten on any 401).
#[test]
fn a_foreign_tenant_vault_does_not_evict_the_node_token() {
    let mut s = scenario();
    s["vaults"].as_array_mut().unwrap().push(json!({
        "name": "kvforeign", "tenant": OTHER_TENANT, "secrets": [{"name": "x", "value": "x"}]}));
    let node = Node::with(s, json!({}));
    let dir = node.volume_dir("hostile");
    let mut options = volume("hostile", node_identity());
    options["keyvaultname"] = json!("kvforeign");
    options["keyvaultobjectnames"] = json!("x");
    let c = node.mount(&dir, options);
    c.assert_failure("KV401_UNAUTHORIZED");
    assert!(c.message().contains("AKV10032"), "{}", c.message());
    let imds = count(&node, "imds", None);
    assert_eq!(imds, 1);

    let dir = node.volume_dir("victim");
    node.mount(&dir, volume("victim", node_identity()))
        .assert_success();
    assert_eq!(
        count(&node, "imds", None),
        imds,
        "the victim's mount had to ask IMDS again"
    );
}
