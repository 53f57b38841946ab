//! The kubelet contract, end to end: the shipped binary, real tmpfs, the emulator over real
//! HTTP/TLS on Azure's production addresses inside a private network namespace.

mod common;

use common::*;
use serde_json::json;

#[test]
fn init_states_every_capability_and_other_verbs_are_not_supported() {
    let node = Node::new();
    let init = node.kv(&["init"]);
    assert_eq!(init.code, 0);
    assert_eq!(
        init.reply,
        json!({"status":"Success","capabilities":{"attach":false,"selinuxRelabel":true,"fsGroup":false,"supportsMetrics":true,"requiresFSResize":false}})
    );
    for args in [
        vec!["attach", "{}", "node"],
        vec!["detach", "vol", "node"],
        vec!["getvolumename", "{}"],
        vec!["expandvolume", "{}", "/dev/x", "1", "2"],
        vec!["mountdevice", "/x", "/dev/x", "{}"],
        vec![],
        vec!["bogus-verb"],
    ] {
        let c = node.kv(&args);
        assert_eq!(c.reply, json!({"status":"Not supported"}), "{args:?}");
        assert_eq!(c.code, 0);
    }
    let usage = node.kv(&["mount"]);
    usage.assert_failure("KV_USAGE");
    assert_eq!(
        usage.code, 0,
        "a Failure exits 0 so kubelet never logs argv"
    );
}

fn all_kinds() -> serde_json::Value {
    json!({
        "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password; multiline;unicode;old-and-new ;old-and-new;rsa-key;ec-p521;web-cert;web-cert",
        "keyvaultobjecttypes": "secret;secret;secret;secret;secret;key;key;cert;secret",
        "keyvaultobjectversions": ";;;;0123456789abcdef0123456789abcdef;;;;",
        "keyvaultobjectaliases": ";;;;old-value;rsa.pem;ec.pem;web.crt;web.pem",
    })
}

fn expect_all_kinds(node: &Node, dir: &std::path::Path) {
    let files = node.files(dir);
    let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "db-password",
            "ec.pem",
            "multiline",
            "old-and-new",
            "old-value",
            "rsa.pem",
            "unicode",
            "web.crt",
            "web.pem"
        ]
    );
    assert_eq!(node.file(dir, "db-password"), b"s3cr3t-P@ssw0rd");
    assert_eq!(
        node.file(dir, "multiline"),
        b"line one\nline two\r\nline three\n"
    );
    assert_eq!(node.file(dir, "unicode"), "pässwörd ✓ 密码 🔑".as_bytes());
    assert_eq!(node.file(dir, "old-and-new"), b"new value");
    assert_eq!(node.file(dir, "old-value"), b"old value");
    // Public keys: exactly what openssl derives from the vault's key material.
    let material = kv_emulator::netns::example_scenario()
        .parent()
        .unwrap()
        .join("material");
    let rsa = openssl(
        &["pkey", "-pubout"],
        &std::fs::read(material.join("rsa-key.pem")).unwrap(),
    );
    assert_eq!(node.file(dir, "rsa.pem"), rsa);
    let ec = openssl(
        &["pkey", "-pubout"],
        &std::fs::read(material.join("ec-p521-key.pem")).unwrap(),
    );
    assert_eq!(node.file(dir, "ec.pem"), ec);
    // The certificate is the leaf, as PEM.
    let subject = openssl(&["x509", "-noout", "-subject"], &node.file(dir, "web.crt"));
    assert!(
        String::from_utf8_lossy(&subject).contains("web.kvdemo.example"),
        "{}",
        String::from_utf8_lossy(&subject)
    );
    // The cert-backed secret: private key first, and it matches the certificate.
    let pem = node.file(dir, "web.pem");
    assert!(
        pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"),
        "{}",
        String::from_utf8_lossy(&pem[..40.min(pem.len())])
    );
    let key_pub = openssl(&["pkey", "-pubout"], &pem);
    let cert_pub = openssl(&["x509", "-noout", "-pubkey"], &pem);
    assert_eq!(key_pub, cert_pub);
    // No fsGroup: world-readable files in a read-only-for-all directory, owned by root.
    for (name, _, mode, gid) in &files {
        assert_eq!(*mode, 0o444, "{name}");
        assert_eq!(*gid, 0, "{name}");
    }
}

#[test]
fn pod_identity_mounts_every_kind_then_unmount_removes_everything() {
    let node = Node::new();
    let dir = node.volume_dir("secrets");
    let mut opts = all_kinds();
    opts["usepodidentity"] = json!("true");
    let c = node.mount(&dir, opts);
    c.assert_success();
    assert_eq!(c.reply, json!({"status":"Success"}));
    assert_eq!(node.mount_type(&dir).as_deref(), Some("tmpfs"));
    expect_all_kinds(&node, &dir);
    // One token, at most one challenge for the vault, one request per object.
    let log = node.ns.request_log();
    let count = |endpoint: &str, status: u64| {
        log.iter()
            .filter(|r| r["endpoint"] == endpoint && r["status"] == status)
            .count()
    };
    assert_eq!(count("nmi", 200), 1, "{log:?}");
    assert!(count("keyvault", 401) <= 1, "{log:?}");
    assert_eq!(count("keyvault", 200), 9, "{log:?}");
    assert_eq!(log.len(), 1 + count("keyvault", 401) + 9, "{log:?}");

    // A repeated mount of a complete volume succeeds without fetching again.
    let before = node.ns.request_log().len();
    node.mount(&dir, json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usepodidentity":"true"}))
        .assert_success();
    assert_eq!(
        node.ns.request_log().len(),
        before,
        "a complete volume was fetched again"
    );

    node.unmount(&dir).assert_success();
    assert_eq!(node.mount_type(&dir), None);
    assert!(!node.ns.host_path(&dir).exists(), "unmount leaves the dir");
    // unmount again, of a missing dir: still Success.
    node.unmount(&dir).assert_success();

    let log = node.log_text();
    assert!(
        log.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "log lines are JSON"
    );
    assert!(log.contains("\"pod\":\"demo/demo-pod\""));
    assert!(!log.contains("s3cr3t-P@ssw0rd"));
}

#[test]
fn node_managed_identities_and_service_principal_mount() {
    let node = Node::new();
    let cases = [
        json!({"usevmmanagedidentity": "true"}),
        json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI}),
        json!({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID), "kubernetes.io/secret/clientsecret": b64(&format!("{SP_SECRET}\n"))}),
    ];
    for identity in cases {
        let dir = node.volume_dir("v");
        let mut opts = all_kinds();
        for (k, v) in identity.as_object().unwrap() {
            opts[k] = v.clone();
        }
        node.mount(&dir, opts).assert_success();
        expect_all_kinds(&node, &dir);
        node.unmount(&dir).assert_success();
        assert_eq!(node.mount_type(&dir), None);
    }
    assert!(
        !node.log_text().contains(SP_SECRET),
        "client secret in the log"
    );
}

#[test]
fn fs_group_and_permissions_are_applied_by_kv() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password;unicode","keyvaultobjecttypes":"secret;secret",
               "keyvaultobjectpermissions":";0400","usepodidentity":"true","kubernetes.io/mounterArgs.FsGroup":"2000"}),
    );
    c.assert_success();
    let files = node.files(&dir);
    assert_eq!(files[0].0, "db-password");
    assert_eq!((files[0].2, files[0].3), (0o440, 2000));
    assert_eq!((files[1].2, files[1].3), (0o400, 2000));
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata(node.ns.host_path(&dir)).unwrap();
    assert_eq!((root.mode() & 0o7777, root.gid()), (0o550, 2000));
    node.unmount(&dir).assert_success();
}

#[test]
fn failures_are_clear_and_leave_nothing_behind() {
    let node = Node::new();
    let cases = [
        (
            json!({"keyvaultobjectnames":"db-password;nope","keyvaultobjecttypes":"secret;secret","usepodidentity":"true"}),
            "KV404_NOT_FOUND",
            "nope",
        ),
        (
            json!({"keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usevmmanagedidentity":"true","vmmanagedidentityclientid":NO_ACCESS_MI}),
            "KV403_FORBIDDEN",
            NO_ACCESS_MI,
        ),
        (
            json!({"keyvaultobjectnames":"disabled-secret","keyvaultobjecttypes":"secret","usepodidentity":"true"}),
            "KV403_DISABLED",
            "disabled-secret",
        ),
        (
            json!({"keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","tenantid":TENANT,
                "kubernetes.io/secret/clientid":b64(SP_ID),"kubernetes.io/secret/clientsecret":b64("wrong")}),
            "KV_AAD_CLIENT",
            "AADSTS7000215",
        ),
        (
            json!({"keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usevmmanagedidentity":"true","vmmanagedidentityclientid":"12345678-0000-0000-0000-000000000000"}),
            "KV_IMDS_NO_IDENTITY",
            "12345678",
        ),
        (
            json!({"keyvaultobjectnames":"a;b","keyvaultobjecttypes":"secret","usepodidentity":"true"}),
            "KV_OPTIONS",
            "keyvaultobjecttypes",
        ),
        (
            json!({"keyvaultobjectnames":"a","keyvaultobjecttypes":"secret","keyvaultobjectaliases":"../../../etc/x","usepodidentity":"true"}),
            "KV_OPTIONS",
            "safe file name",
        ),
        (
            json!({"keyvaultobjectnames":"a","keyvaultobjecttypes":"secret","usepodidentity":"true","usevmmanagedidentity":"true"}),
            "KV_OPTIONS",
            "more than one identity",
        ),
    ];
    for (opts, code, needle) in cases {
        let dir = node.volume_dir("v");
        let mut opts = opts;
        opts["keyvaultname"] = json!("kvdemo");
        let c = node.mount(&dir, opts.clone());
        c.assert_failure(code);
        assert!(
            c.message().contains(needle),
            "{code}: {} lacks {needle}",
            c.message()
        );
        assert_eq!(c.code, 0);
        node.assert_nothing_left(&dir);
        assert!(!c.stdout.contains("emulator-sp-secret") && !c.stdout.contains("s3cr3t"));
    }
}

#[test]
fn nmi_without_binding_times_out_with_the_binding_named() {
    let node = Node::with(scenario(), json!({"deadlineSeconds": 2}));
    let dir = node.volume_dir("v");
    let started = std::time::Instant::now();
    let c = node.mount(
        &dir,
        json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usepodidentity":"true",
               "kubernetes.io/pod.name":"unbound-pod"}),
    );
    c.assert_failure("KV_NMI_NO_IDENTITY");
    assert!(
        c.message().contains("timed out after 2s"),
        "{}",
        c.message()
    );
    assert!(
        c.message().contains("AzureIdentityBinding"),
        "{}",
        c.message()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    node.assert_nothing_left(&dir);
}

#[test]
fn transient_faults_still_mount() {
    let mut s = scenario();
    s["faults"] = json!([
        {"endpoint": "keyvault", "count": 1, "action": "status", "status": 429, "retry_after": 1, "path_contains": "db-password"},
        {"endpoint": "imds", "count": 2, "action": "status", "status": 500},
    ]);
    s["nmi"]["bindings"][0]["pending_calls"] = json!(2);
    let node = Node::with(s, json!({}));
    let mut fired = Vec::new();
    for identity in [
        json!({"usepodidentity":"true"}),
        json!({"usevmmanagedidentity":"true"}),
    ] {
        let dir = node.volume_dir("v");
        let mut opts = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password;unicode","keyvaultobjecttypes":"secret;secret"});
        for (k, v) in identity.as_object().unwrap() {
            opts[k] = v.clone();
        }
        node.ns.clear_request_log();
        let c = node.mount(&dir, opts);
        c.assert_success();
        assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
        node.unmount(&dir).assert_success();
        // Each injected fault fired (once per node: the counts are the emulator's).
        fired.extend(node.ns.request_log());
    }
    let count = |endpoint: &str, what: &str| {
        fired
            .iter()
            .filter(|r| {
                r["endpoint"] == endpoint
                    && (r["fault"] == what || (what == "404" && r["status"] == 404))
            })
            .count()
    };
    assert_eq!(count("keyvault", "status 429"), 1, "{fired:#?}");
    assert_eq!(count("imds", "status 500"), 2, "{fired:#?}");
    assert!(count("nmi", "404") >= 2, "{fired:#?}");
}

#[test]
fn options_with_spaces_quotes_and_unicode_round_trip() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        json!({"keyvaultname":" kvdemo ","keyvaultobjectnames":"db-password ; unicode","keyvaultobjecttypes":" secret;secret ",
               "keyvaultobjectaliases":"pass word \"quoted\";ünïcødé","usepodidentity":"True","resourcegroup":"rg","subscriptionid":"sub"}),
    );
    c.assert_success();
    let names: Vec<String> = node.files(&dir).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["pass word \"quoted\"", "ünïcødé"]);
    assert!(
        node.log_text().contains("resourcegroup"),
        "unknown keys are logged as a warning"
    );
    node.unmount(&dir).assert_success();
}

#[test]
fn mount_dir_must_have_kubelets_shape() {
    let node = Node::new();
    let bad = node.root.join("not-kubelet/vol");
    std::fs::create_dir_all(&bad).unwrap();
    let opts = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usepodidentity":"true",
                      "kubernetes.io/pod.name":"demo-pod","kubernetes.io/pod.namespace":"demo"});
    let c = node.kv(&["mount", bad.to_str().unwrap(), &opts.to_string()]);
    c.assert_failure("KV_DIR");
    node.assert_nothing_left(&bad);
    node.kv(&["unmount", bad.to_str().unwrap()])
        .assert_failure("KV_DIR");
    assert!(bad.exists(), "unmount must not delete a non-kubelet dir");
}

fn db_password(extra: serde_json::Value) -> serde_json::Value {
    let mut o = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret","usepodidentity":"true"});
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// Hardening item 7: a pod's `readOnly: true` (kubelet sends `kubernetes.io/readwrite: ro`)
/// gets a read-only tmpfs: no container can alter or fill the files the others read.
#[test]
fn read_only_volumes_cannot_be_written() {
    let node = Node::new();
    for (rw, writable) in [("ro", false), ("rw", true)] {
        let dir = node.volume_dir("v");
        node.mount(&dir, db_password(json!({"kubernetes.io/readwrite": rw})))
            .assert_success();
        assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
        // As root, so only a read-only mount can refuse.
        let new_file = std::fs::write(node.ns.host_path(dir.join("new")), b"x");
        let existing = std::fs::OpenOptions::new()
            .append(true)
            .open(node.ns.host_path(dir.join("db-password")));
        if writable {
            assert!(new_file.is_ok() && existing.is_ok(), "{rw}");
        } else {
            assert_eq!(new_file.unwrap_err().raw_os_error(), Some(30), "EROFS");
            assert_eq!(existing.unwrap_err().raw_os_error(), Some(30), "EROFS");
        }
        node.unmount(&dir).assert_success();
        node.assert_nothing_left(&dir);
    }
}

/// Hardening item 11: "already mounted" only for kv's own tmpfs.
#[test]
fn a_dir_mounted_by_something_else_is_refused() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    node.mount_foreign_tmpfs(&dir, "other");
    node.ns.clear_request_log();
    let c = node.mount(&dir, db_password(json!({})));
    c.assert_failure("KV_MOUNT");
    assert!(c.message().contains("not kv's tmpfs"), "{}", c.message());
    assert!(c.message().contains("from other"), "{}", c.message());
    assert!(node
        .ns
        .request_log()
        .iter()
        .all(|r| r["endpoint"] != "keyvault"));
    let out = node.ns.command("umount").arg(&dir).output().unwrap();
    assert!(out.status.success());
    // kv's own volume: a repeated call succeeds without fetching again.
    node.mount(&dir, db_password(json!({}))).assert_success();
    node.ns.clear_request_log();
    node.mount(&dir, db_password(json!({}))).assert_success();
    assert!(
        node.ns.request_log().is_empty(),
        "{:?}",
        node.ns.request_log()
    );
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    node.unmount(&dir).assert_success();
}

/// Hardening item 8: lock files are named by the sha256 of the volume dir, live under the
/// node's `stateDir`, and exist only while a call holds them.
#[test]
fn lock_files_are_named_by_sha256_and_removed_after_unmount() {
    use sha2::Digest;
    let node = Node::new();
    let lock = |dir: &std::path::Path| {
        let hash = hex::encode(sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes()));
        node.state_dir().join(format!("locks/{hash}.lock"))
    };
    let dir = node.volume_dir("v");
    node.mount(&dir, db_password(json!({}))).assert_success();
    assert!(node.state_dir().join("locks").is_dir());
    assert!(!lock(&dir).exists(), "{}", lock(&dir).display());
    node.unmount(&dir).assert_success();
    assert!(!lock(&dir).exists());
    // A failed mount leaves no lock either.
    let dir = node.volume_dir("v");
    node.mount(&dir, json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"nope","keyvaultobjecttypes":"secret","usepodidentity":"true"}))
        .assert_failure("KV404_NOT_FOUND");
    assert!(!lock(&dir).exists());
}
