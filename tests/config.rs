//! The node config `kv.json`: every setting observed through the real binary, as kubelet runs
//! it, against the emulator.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn secret(identity: Value) -> Value {
    let mut opts = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret"});
    for (k, v) in identity.as_object().unwrap() {
        opts[k] = v.clone();
    }
    opts
}

fn pod_identity() -> Value {
    secret(json!({"usepodidentity": "true"}))
}

fn node_identity() -> Value {
    secret(json!({"usevmmanagedidentity": "true"}))
}

#[track_caller]
fn assert_mounted(node: &Node, dir: &std::path::Path) {
    assert_eq!(node.mount_type(dir).as_deref(), Some("tmpfs"));
    assert_eq!(node.file(dir, "db-password"), b"s3cr3t-P@ssw0rd");
    node.unmount(dir).assert_success();
}

#[test]
fn deadline_seconds_bounds_the_wait_for_pod_identity() {
    let mut s = scenario();
    // MIC takes 30 s to assign the identity: longer than the node's deadline.
    s["nmi"]["bindings"][0]["pending_ms"] = json!(30_000);
    let node = Node::with(s, json!({"deadlineSeconds": 2}));
    let dir = node.volume_dir("v");
    let started = Instant::now();
    let c = node.mount(&dir, pod_identity());
    c.assert_failure("KV_NMI_NO_IDENTITY");
    assert!(
        c.message().contains("timed out after 2s"),
        "{}",
        c.message()
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    node.assert_nothing_left(&dir);
}

#[test]
fn nmi_port_changes_where_pod_identity_asks() {
    // The emulator's NMI listens on 2579 only.
    let node = Node::with(
        scenario(),
        json!({"nmiPort": 2580, "deadlineSeconds": 2, "policy": {"nmiPorts": [2579]}}),
    );
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, pod_identity());
    c.assert_failure("KV_NMI");
    assert!(c.message().contains("127.0.0.1:2580"), "{}", c.message());
    assert!(c.message().contains("nmiport"), "{}", c.message());
    node.assert_nothing_left(&dir);
    // The pod's own nmiport option wins over the node default when policy.nmiPorts allows it.
    let dir = node.volume_dir("v");
    let mut opts = pod_identity();
    opts["nmiport"] = json!("2579");
    node.mount(&dir, opts).assert_success();
    assert_mounted(&node, &dir);
    // Back to the default port: mounts.
    node.set_config(json!({}));
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
}

#[test]
fn tmpfs_max_bytes_caps_every_volume() {
    // 16 KiB: room for a small secret (one page; kv's headroom is cut to the cap), not for
    // 25 KB (seven pages).
    let node = Node::with(scenario(), json!({"tmpfsMaxBytes": 16384}));
    let dir = node.volume_dir("v");
    let mut opts = pod_identity();
    opts["keyvaultobjectnames"] = json!("big");
    let c = node.mount(&dir, opts);
    c.assert_failure("KV_MOUNT");
    assert!(c.message().contains("tmpfsMaxBytes"), "{}", c.message());
    node.assert_nothing_left(&dir);
    // A pod asking for more than the cap is refused before anything is fetched.
    let dir = node.volume_dir("v");
    let mut opts = pod_identity();
    opts["tmpfssize"] = json!("1048576");
    node.ns.clear_request_log();
    let c = node.mount(&dir, opts);
    c.assert_failure("KV_OPTIONS");
    assert!(c.message().contains("16384"), "{}", c.message());
    node.assert_nothing_left(&dir);
    // A small secret fits, and the tmpfs is the cap (the headroom cut to it).
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert!(
        node.ns
            .mountinfo()
            .lines()
            .any(|l| l.contains(&dir.to_string_lossy().to_string()) && l.contains("size=16k")),
        "{}",
        node.ns.mountinfo()
    );
    assert_mounted(&node, &dir);
    // The case a user reported: a 15-byte secret on a node capped at 64 KiB.
    node.set_config(json!({"tmpfsMaxBytes": 65536}));
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    // Raising the cap lets the big secret in.
    node.set_config(json!({"tmpfsMaxBytes": 1048576}));
    let dir = node.volume_dir("v");
    let mut opts = pod_identity();
    opts["keyvaultobjectnames"] = json!("big");
    node.mount(&dir, opts).assert_success();
    assert_eq!(node.file(&dir, "big").len(), 25600);
    node.unmount(&dir).assert_success();
}

#[test]
fn log_path_is_used_when_kv_log_file_is_not_set() {
    let node = Node::new();
    let custom = node.root.join("custom/kv.log");
    std::fs::create_dir_all(custom.parent().unwrap()).unwrap();
    node.set_config(json!({"log": {"path": custom, "maxBytes": 1048576}}));
    let dir = node.volume_dir("v");
    let json = kubelet_options(&dir, pod_identity()).to_string();
    let out = node
        .ns
        .command(&node.kv)
        .args([std::ffi::OsStr::new("mount"), dir.as_os_str()])
        .arg(&json)
        .env_remove("KV_LOG_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    call(out).assert_success();
    let log = std::fs::read_to_string(&custom).expect("the log went to log.path");
    assert!(log.contains("\"pod\":\"demo/demo-pod\""), "{log}");
    assert!(!node.log.exists(), "the harness log was written");
    // KV_LOG_FILE still wins (the harness sets it).
    node.unmount(&dir).assert_success();
    assert!(node.log_text().contains("unmount"));
}

#[test]
fn custom_cloud_serves_azure_stack_cloud() {
    // Point the custom cloud at the public endpoints the emulator serves.
    let custom = json!({"authorityHost": "https://login.microsoftonline.com",
        "keyVaultDnsSuffix": "vault.azure.net", "keyVaultResource": "https://vault.azure.net"});
    let node = Node::with(scenario(), json!({"customCloud": custom}));
    let with_sp = |cloud: Option<&str>| {
        let mut opts = secret(json!({"tenantid": TENANT,
            "kubernetes.io/secret/clientid": b64(SP_ID), "kubernetes.io/secret/clientsecret": b64(SP_SECRET)}));
        if let Some(c) = cloud {
            opts["cloudname"] = json!(c);
        }
        opts
    };
    for identity in [with_sp(Some("AzureStackCloud")), {
        let mut o = pod_identity();
        o["cloudname"] = json!("azurestackcloud");
        o
    }] {
        let dir = node.volume_dir("v");
        node.mount(&dir, identity).assert_success();
        assert_mounted(&node, &dir);
    }
    // `cloud` makes it the default for pods that name none.
    node.set_config(json!({"cloud": "AzureStackCloud", "customCloud": custom}));
    let dir = node.volume_dir("v");
    node.mount(&dir, with_sp(None)).assert_success();
    assert_mounted(&node, &dir);

    // The endpoints really come from customCloud: a suffix the emulator does not serve fails
    // without reaching its Key Vault.
    node.set_config(json!({"deadlineSeconds": 2, "customCloud": {"authorityHost": "https://login.microsoftonline.com",
        "keyVaultDnsSuffix": "vault.contoso.local", "keyVaultResource": "https://vault.azure.net"}}));
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, with_sp(Some("AzureStackCloud")));
    assert_eq!(c.status(), "Failure", "{}", c.stdout);
    node.assert_nothing_left(&dir);
    let log = node.ns.request_log();
    assert!(log.iter().any(|r| r["endpoint"] == "aad"), "{log:?}");
    assert!(log.iter().all(|r| r["endpoint"] != "keyvault"), "{log:?}");

    // Without customCloud, AzureStackCloud is an options error, and nothing is requested.
    node.set_config(json!({}));
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, with_sp(Some("AzureStackCloud")));
    c.assert_failure("KV_OPTIONS");
    assert!(c.message().contains("customCloud"), "{}", c.message());
    node.assert_nothing_left(&dir);
    assert!(node.ns.request_log().is_empty());
}

#[test]
fn cloud_sets_the_default_cloud() {
    let node = Node::with(
        scenario(),
        json!({"cloud": "AzureChinaCloud", "deadlineSeconds": 2}),
    );
    // The default is now China: the vault is looked for at kvdemo.vault.azure.cn, which the
    // emulator does not serve, so no request reaches its (public-cloud) Key Vault.
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, node_identity());
    assert_eq!(c.status(), "Failure", "{}", c.stdout);
    node.assert_nothing_left(&dir);
    let log = node.ns.request_log();
    assert!(
        log.iter().all(|r| r["endpoint"] != "keyvault"),
        "the public-cloud vault was asked: {log:?}"
    );
    // A pod naming its cloud is not affected.
    let dir = node.volume_dir("v");
    let mut opts = node_identity();
    opts["cloudname"] = json!("AzurePublicCloud");
    node.mount(&dir, opts).assert_success();
    assert_mounted(&node, &dir);
}

#[test]
fn node_identity_namespaces_deny_before_any_request() {
    let node = Node::with(
        scenario(),
        json!({"policy": {"nodeIdentityNamespaces": ["ops"]}}),
    );
    for identity in [
        node_identity(),
        secret(json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI})),
    ] {
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let c = node.mount(&dir, identity.clone());
        c.assert_failure("KV_POLICY");
        assert!(
            c.message().contains("\"demo\"") && c.message().contains("nodeIdentityNamespaces"),
            "{}",
            c.message()
        );
        node.assert_nothing_left(&dir);
        assert!(
            node.ns.request_log().is_empty(),
            "a denied mount reached Azure: {:?}",
            node.ns.request_log()
        );
        // The listed namespace may.
        let dir = node.volume_dir("v");
        let mut opts = identity;
        opts["kubernetes.io/pod.namespace"] = json!("ops");
        node.mount(&dir, opts).assert_success();
        assert_mounted(&node, &dir);
    }
    // Pod identity and service principals are not the node's identity.
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
}

#[test]
fn vaults_by_namespace_limits_which_vaults_a_namespace_names() {
    let node = Node::with(
        scenario(),
        json!({"policy": {"vaultsByNamespace": {"demo": ["KVDEMO"], "ops": ["kvother"]},
            "nodeIdentityNamespaces": ["demo", "ops", "unlisted"]}}),
    );
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity()).assert_success();
    assert_mounted(&node, &dir);
    for (namespace, opts) in [
        (
            "demo",
            json!({"keyvaultname":"kvother","keyvaultobjectnames":"other-secret","keyvaultobjecttypes":"secret","usevmmanagedidentity":"true"}),
        ),
        // One object in another vault is enough to deny the volume.
        (
            "demo",
            json!({"objects": "[{\"objectName\":\"db-password\",\"objectType\":\"secret\",\"keyvaultName\":\"kvdemo\"},{\"objectName\":\"other-secret\",\"objectType\":\"secret\",\"keyvaultName\":\"kvother\"}]",
                   "usevmmanagedidentity":"true"}),
        ),
        ("unlisted", node_identity()),
    ] {
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let mut opts = opts;
        opts["kubernetes.io/pod.namespace"] = json!(namespace);
        let c = node.mount(&dir, opts);
        c.assert_failure("KV_POLICY");
        assert!(c.message().contains("vaultsByNamespace"), "{}", c.message());
        assert!(c.message().contains(namespace), "{}", c.message());
        node.assert_nothing_left(&dir);
        assert!(node.ns.request_log().is_empty());
    }
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"keyvaultname":"kvother","keyvaultobjectnames":"other-secret","keyvaultobjecttypes":"secret","usevmmanagedidentity":"true",
               "kubernetes.io/pod.namespace":"ops"}),
    );
    c.assert_success();
    assert_eq!(node.file(&dir, "other-secret"), b"from the other vault");
    node.unmount(&dir).assert_success();
}

#[test]
fn malformed_or_unknown_config_fails_every_mount_naming_the_file() {
    let node = Node::new();
    let config_path = node.kv.parent().unwrap().join("kv.json");
    for (text, needle) in [
        ("{\"deadlineSeconds\": 5,", "EOF"),
        (r#"{"deadline": 5}"#, "deadline"),
        (
            r#"{"policy": {"nodeIdentityNamespace": ["ops"]}}"#,
            "nodeIdentityNamespace",
        ),
        (r#"{"nmiPort": 0}"#, "nmiPort"),
    ] {
        std::fs::write(&config_path, text).unwrap();
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let c = node.mount(&dir, pod_identity());
        c.assert_failure("KV_CONFIG");
        assert!(
            c.message().contains(config_path.to_str().unwrap()),
            "{}",
            c.message()
        );
        assert!(c.message().contains(needle), "{needle}: {}", c.message());
        node.assert_nothing_left(&dir);
        assert!(node.ns.request_log().is_empty());
        // Unmount keeps working: kubelet must be able to tear pods down.
        node.unmount(&dir).assert_success();
    }
    // No file at all: defaults.
    std::fs::remove_file(&config_path).unwrap();
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
}

/// Item 1 of the hardening: with no policy, no pod may use the node's managed identities
/// (v0.0.17 let every pod use every identity assigned to the node, the kubelet's included).
#[test]
fn node_identity_needs_a_policy_naming_it() {
    let node = Node::with_exact(scenario(), json!({}));
    for identity in [
        node_identity(),
        secret(json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI})),
    ] {
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let c = node.mount(&dir, identity);
        c.assert_failure("KV_POLICY");
        assert!(
            c.message().contains("policy.nodeIdentities"),
            "{}",
            c.message()
        );
        node.assert_nothing_left(&dir);
        assert!(
            node.ns.request_log().is_empty(),
            "{:?}",
            node.ns.request_log()
        );
    }
    // Pod identity needs no policy.
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
    // The one line that restores v0.0.17's behaviour for a namespace.
    node.set_config_exact(json!({"policy": {"nodeIdentities": {"demo": ["*"]}}}));
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity()).assert_success();
    assert_mounted(&node, &dir);
}

#[test]
fn node_identities_list_what_a_namespace_may_use() {
    let node = Node::with_exact(
        scenario(),
        json!({"policy": {"nodeIdentities": {"demo": ["system"], "ops": [USER_MI]}}}),
    );
    let user =
        secret(json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI}));
    // demo: the system-assigned identity only.
    let dir = node.volume_dir("v");
    node.mount(&dir, node_identity()).assert_success();
    assert_mounted(&node, &dir);
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(&dir, user.clone());
    c.assert_failure("KV_POLICY");
    assert!(c.message().contains(USER_MI), "{}", c.message());
    assert!(
        c.message().contains("policy.nodeIdentities"),
        "{}",
        c.message()
    );
    assert!(node.ns.request_log().is_empty());
    node.assert_nothing_left(&dir);
    // ops: that user-assigned identity only.
    let mut ops_user = user;
    ops_user["kubernetes.io/pod.namespace"] = json!("ops");
    let dir = node.volume_dir("v");
    node.mount(&dir, ops_user).assert_success();
    assert_mounted(&node, &dir);
    let mut ops_system = node_identity();
    ops_system["kubernetes.io/pod.namespace"] = json!("ops");
    let dir = node.volume_dir("v");
    node.mount(&dir, ops_system).assert_failure("KV_POLICY");
    node.assert_nothing_left(&dir);
}

/// Item 3: `nmiport` cannot point kv (and the pod's name) at any loopback port.
#[test]
fn nmiport_is_honoured_only_when_allowed() {
    let node = Node::new();
    for port in ["22", "2580"] {
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let mut opts = pod_identity();
        opts["nmiport"] = json!(port);
        let c = node.mount(&dir, opts);
        c.assert_failure("KV_POLICY");
        assert!(
            c.message().contains(&format!("nmiport {port}")),
            "{}",
            c.message()
        );
        assert!(c.message().contains("policy.nmiPorts"), "{}", c.message());
        node.assert_nothing_left(&dir);
        assert!(node.ns.request_log().is_empty());
    }
    // The node's own port is always allowed.
    let dir = node.volume_dir("v");
    let mut opts = pod_identity();
    opts["nmiport"] = json!("2579");
    node.mount(&dir, opts).assert_success();
    assert_mounted(&node, &dir);
}

/// Item 4 (second half): kv.json decides where credentials go; only root's file counts.
#[test]
fn config_not_owned_by_root_or_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let path = node.kv.parent().unwrap().join("kv.json");
    for (mode, owner) in [(0o664, 0), (0o646, 0), (0o644, 65534)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner), Some(0)).unwrap();
        node.ns.clear_request_log();
        let dir = node.volume_dir("v");
        let c = node.mount(&dir, pod_identity());
        c.assert_failure("KV_CONFIG");
        assert!(
            c.message().contains(path.to_str().unwrap()),
            "{}",
            c.message()
        );
        assert!(c.message().contains("owned by root"), "{}", c.message());
        node.assert_nothing_left(&dir);
        assert!(node.ns.request_log().is_empty());
    }
    std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
}

fn many_versions(n: usize) -> Value {
    let mut s = scenario();
    let versions: Vec<Value> = (0..n)
        .map(|i| {
            json!({"generate": {"repeat": format!("v{i:02}-"), "bytes": 25600},
                   "version": format!("{i:032x}"), "created": 1_700_000_000 + i as i64})
        })
        .collect();
    s["vaults"][0]["secrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "many", "versions": versions}));
    s
}

fn version_gets(node: &Node) -> usize {
    node.vault_gets(|p| p.starts_with("/secrets/many/") && !p.contains("versions"))
}

/// Item 2: a volume over the tmpfs cap stops fetching at the cap, not after every version is
/// in memory.
#[test]
fn fetching_stops_at_the_tmpfs_cap() {
    // 20 versions of 25 KB (7 pages each) against a 128 KiB cap: the 5th version is over.
    let node = Node::with(many_versions(20), json!({"tmpfsMaxBytes": 131072}));
    let dir = node.volume_dir("v");
    let opts = json!({"usepodidentity": "true", "keyvaultname": "kvdemo",
        "objects": r#"[{"objectName":"many","objectType":"secret","objectVersionHistory":20}]"#});
    node.ns.clear_request_log();
    let c = node.mount(&dir, opts);
    c.assert_failure("KV_MOUNT");
    assert!(c.message().contains("tmpfsMaxBytes"), "{}", c.message());
    let gets = version_gets(&node);
    assert!(gets <= 5, "{gets} versions fetched past the cap");
    node.assert_nothing_left(&dir);
}

/// Item 2: the number of files of a volume is capped (node config `maxFilesPerVolume`).
#[test]
fn max_files_per_volume_caps_the_files() {
    let node = Node::with(many_versions(20), json!({"maxFilesPerVolume": 3}));
    // More objects than files allowed: refused before Key Vault is asked.
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"usepodidentity": "true", "keyvaultname": "kvdemo",
            "keyvaultobjectnames": "db-password;old-and-new;big;many",
            "keyvaultobjecttypes": "secret;secret;secret;secret"}),
    );
    c.assert_failure("KV_MOUNT");
    assert!(c.message().contains("maxFilesPerVolume"), "{}", c.message());
    assert!(node
        .ns
        .request_log()
        .iter()
        .all(|r| r["endpoint"] != "keyvault"));
    node.assert_nothing_left(&dir);
    // Version history over the cap stops at the 4th file.
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"usepodidentity": "true", "keyvaultname": "kvdemo",
            "objects": r#"[{"objectName":"many","objectType":"secret","objectVersionHistory":20}]"#}),
    );
    c.assert_failure("KV_MOUNT");
    assert!(c.message().contains("maxFilesPerVolume"), "{}", c.message());
    assert!(version_gets(&node) <= 4, "{}", version_gets(&node));
    node.assert_nothing_left(&dir);
    // Within the cap: mounts.
    let dir = node.volume_dir("v");
    node.mount(&dir, pod_identity()).assert_success();
    assert_mounted(&node, &dir);
}

/// Item 2: objects naming the same (vault, kind, name, version) are fetched once.
#[test]
fn identical_objects_are_fetched_once() {
    let node = Node::new();
    node.ns.clear_request_log();
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"usepodidentity": "true", "keyvaultname": "kvdemo",
            "objects": r#"[{"objectName":"db-password","objectType":"secret","objectAlias":"a"},
                          {"objectName":"db-password","objectType":"secret","objectAlias":"b"},
                          {"objectName":"db-password","objectType":"secret","objectAlias":"c"}]"#}),
    );
    c.assert_success();
    for f in ["a", "b", "c"] {
        assert_eq!(node.file(&dir, f), b"s3cr3t-P@ssw0rd");
    }
    let gets = node.vault_gets(|p| p.to_ascii_lowercase().starts_with("/secrets/db-password"));
    assert_eq!(gets, 1);
    node.unmount(&dir).assert_success();
}
