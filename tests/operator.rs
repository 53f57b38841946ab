//! Operators' tools against the emulator: `kv fetch`, `kv doctor`, `kv logs`.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;

fn run(node: &Node, args: &[&str]) -> (String, String, i32) {
    let out = node
        .ns
        .command(&node.kv)
        .args(args)
        .env("KV_LOG_FILE", &node.log)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

fn opts(identity: serde_json::Value) -> serde_json::Value {
    let mut o = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password;web-cert;rsa-key","keyvaultobjecttypes":"secret;secret;key",
                       "keyvaultobjectaliases":";tls.pem;","kubernetes.io/pod.name":"demo-pod","kubernetes.io/pod.namespace":"demo"});
    for (k, v) in identity.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

#[test]
fn fetch_writes_the_bytes_a_mount_would_for_every_identity() {
    let node = Node::new();
    let secret_file = node.root.join("sp-secret");
    std::fs::write(&secret_file, format!("{SP_SECRET}\n")).unwrap();
    let identities = [
        (
            json!({"usepodidentity":"true"}),
            vec!["--pod-identity", "demo/demo-pod"],
        ),
        (
            json!({"usevmmanagedidentity":"true"}),
            vec!["--node-identity"],
        ),
        (
            json!({"tenantid":TENANT,"kubernetes.io/secret/clientid":b64(SP_ID),"kubernetes.io/secret/clientsecret":b64(SP_SECRET)}),
            vec![
                "--tenant",
                TENANT,
                "--client-id",
                SP_ID,
                "--client-secret-file",
                secret_file.to_str().unwrap(),
            ],
        ),
    ];
    for (identity, flags) in identities {
        let options = opts(identity);
        let vol = node.volume_dir("v");
        node.mount(&vol, options.clone()).assert_success();
        let mounted = node.files(&vol);

        // A plain directory may be on disk: the same bytes and group, modes cut to 0600.
        let mounted: Vec<_> = mounted
            .into_iter()
            .map(|(name, bytes, mode, gid)| (name, bytes, mode & 0o600, gid))
            .collect();

        // The options JSON exactly as kubelet passes it, from a file (it may hold secretRef
        // values, which never go on the command line).
        let options_file = node.root.join(format!("options-{}.json", rand_suffix()));
        std::fs::write(&options_file, kubelet_options(&vol, options).to_string()).unwrap();
        let out_dir = node.root.join(format!("fetch-{}", rand_suffix()));
        let (stdout, _, code) = run(
            &node,
            &[
                "fetch",
                "--options-file",
                options_file.to_str().unwrap(),
                "--dir",
                out_dir.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(
            dir_files(&out_dir),
            mounted,
            "kv fetch --dir differs from the mount"
        );

        // The same objects from flags.
        let flag_dir = node.root.join(format!("flags-{}", rand_suffix()));
        let mut args = vec![
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--object",
            "web-cert:secret::tls.pem",
            "--object",
            "rsa-key:key",
            "--dir",
            flag_dir.to_str().unwrap(),
        ];
        args.extend(flags.iter().copied());
        let (stdout, _, code) = run(&node, &args);
        assert_eq!(code, 0, "{stdout}");
        assert_eq!(
            dir_files(&flag_dir),
            mounted,
            "kv fetch from flags differs from the mount"
        );
        node.unmount(&vol).assert_success();
    }
    // --stdout prints one object's bytes.
    let (stdout, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--node-identity",
            "--stdout",
        ],
    );
    assert_eq!((stdout.as_str(), code), ("s3cr3t-P@ssw0rd", 0));
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn dir_files(dir: &Path) -> Vec<(String, Vec<u8>, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
                m.mode() & 0o7777,
                m.gid(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn fetch_dry_run_makes_no_request_and_exit_codes_classify() {
    let node = Node::new();
    let (stdout, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--object",
            "web-cert:cert:0123456789abcdef0123456789abcdef:web.crt",
            "--node-identity",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        plan["objects"][1]["url"],
        "https://kvdemo.vault.azure.net/certificates/web-cert/0123456789abcdef0123456789abcdef"
    );
    assert_eq!(plan["objects"][1]["files"], json!(["web.crt"]));
    assert_eq!(plan["objects"][0]["mode"], "0444");
    assert_eq!(plan["identity"], "node system-assigned managed identity");
    assert!(
        node.ns.request_log().is_empty(),
        "--dry-run made requests: {:?}",
        node.ns.request_log()
    );

    let (out, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "nope",
            "--node-identity",
            "--stdout",
        ],
    );
    assert_eq!(code, 4, "not found: {out}");
    assert!(out.contains("KV404_NOT_FOUND"));
    let (out, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--node-identity",
            NO_ACCESS_MI,
            "--stdout",
        ],
    );
    assert_eq!(code, 5, "forbidden: {out}");
    let (out, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--node-identity",
            "12345678-0000-0000-0000-000000000000",
            "--stdout",
        ],
    );
    assert_eq!(code, 3, "auth: {out}");
    let (out, _, code) = run(
        &node,
        &[
            "fetch",
            "--vault",
            "bad--name",
            "--object",
            "x",
            "--node-identity",
            "--dry-run",
        ],
    );
    assert_eq!(code, 2, "usage: {out}");
}

#[test]
fn fetch_reads_a_pod_manifest() {
    let node = Node::new();
    let manifest = node.root.join("pod.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: Pod
metadata: {name: demo-pod, namespace: demo}
spec:
  securityContext: {fsGroup: 3000}
  containers: [{name: app, image: busybox}]
  volumes:
  - name: secrets
    flexVolume:
      driver: "azure/kv"
      options:
        usepodidentity: "true"
        keyvaultname: "kvdemo"
        keyvaultobjectnames: "db-password"
        keyvaultobjecttypes: "secret"
"#,
    )
    .unwrap();
    let out_dir = node.root.join("from-manifest");
    let (stdout, _, code) = run(
        &node,
        &[
            "fetch",
            "--pod-manifest",
            manifest.to_str().unwrap(),
            "--dir",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    let files = dir_files(&out_dir);
    // The pod's 0440 with its fsGroup, cut to 0400 outside a tmpfs.
    assert_eq!(
        files,
        vec![(
            "db-password".to_string(),
            b"s3cr3t-P@ssw0rd".to_vec(),
            0o400,
            3000
        )]
    );
}

#[test]
fn fetch_dir_is_private_and_follows_no_link() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let node = Node::new();
    let fetch_into = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "fetch",
            "--vault",
            "kvdemo",
            "--object",
            "db-password",
            "--pod-identity",
            "demo/demo-pod",
            "--dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&node, &args)
    };
    // A new directory is created 0700; the file 0400 (0444 cut to 0600).
    let fresh = node.root.join("fresh/nested");
    let (out, _, code) = fetch_into(&fresh, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(dir_files(&fresh)[0].2, 0o400);
    // --mode says otherwise.
    let (out, _, code) = fetch_into(&fresh, &["--mode", "0644"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(dir_files(&fresh)[0].2, 0o644);

    // An existing directory others can write is refused, and nothing is written there.
    let open = node.root.join("world-writable");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (out, _, code) = fetch_into(&open, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("that no one else can write"), "{out}");
    assert!(dir_files(&open).is_empty());

    // A symlink is not followed, whatever it points at.
    let target = node.root.join("link-target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = node.root.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let (out, _, code) = fetch_into(&link, &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is a symlink"), "{out}");
    assert!(dir_files(&target).is_empty());
}

#[test]
fn fetch_refuses_secrets_on_the_command_line() {
    let node = Node::new();
    let options = json!({"keyvaultname":"kvdemo","keyvaultobjectnames":"db-password","keyvaultobjecttypes":"secret",
        "tenantid":TENANT,"kubernetes.io/secret/clientid":b64(SP_ID),"kubernetes.io/secret/clientsecret":b64(SP_SECRET)});
    let (out, _, code) = run(
        &node,
        &["fetch", "--options", &options.to_string(), "--stdout"],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("--client-secret-file"), "{out}");
    assert!(
        !out.contains(SP_SECRET) && !out.contains(&b64(SP_SECRET)),
        "{out}"
    );
    assert!(
        node.ns.request_log().is_empty(),
        "a refused fetch made requests"
    );
}

#[test]
fn dry_run_lists_the_paths_a_mount_writes_for_history_and_split() {
    let node = Node::new();
    let options = json!({"usepodidentity":"true","kubernetes.io/pod.name":"demo-pod","kubernetes.io/pod.namespace":"demo",
        "keyvaultname":"kvdemo",
        "objects": json!([{"objectName":"web-cert","objectType":"secret","objectAlias":"web",
            "objectVersionHistory":2,"splitCertAndKey":true}]).to_string()});
    let options_file = node.root.join("history.json");
    std::fs::write(&options_file, options.to_string()).unwrap();
    let (stdout, _, code) = run(
        &node,
        &[
            "fetch",
            "--options-file",
            options_file.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stdout}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let planned: Vec<String> = serde_json::from_value(plan["objects"][0]["files"].clone()).unwrap();
    assert_eq!(
        planned,
        [
            "web/0",
            "web/0.crt",
            "web/0.key",
            "web/1",
            "web/1.crt",
            "web/1.key"
        ]
    );
    // The mount writes those names (web-cert has one version: the /0 files).
    let vol = node.volume_dir("history");
    node.mount(&vol, options).assert_success();
    let written: Vec<String> = node.files(&vol).into_iter().map(|f| f.0).collect();
    assert_eq!(written, ["web/0", "web/0.crt", "web/0.key"]);
    assert!(written.iter().all(|w| planned.contains(w)));
    node.unmount(&vol).assert_success();
}

fn doctor(node: &Node, extra: &[&str]) -> (String, i32) {
    let plugin = node
        .kv
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let mut args = vec!["doctor", "--plugin-dir", plugin.as_str()];
    args.extend_from_slice(extra);
    let (out, _, code) = run(node, &args);
    (out, code)
}

fn line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l[6..].starts_with(check))
        .unwrap_or_else(|| panic!("no {check} line in:\n{out}"))
}

#[test]
fn doctor_passes_on_a_healthy_node() {
    let node = Node::new();
    let o = opts(json!({"usepodidentity":"true"})).to_string();
    let (out, code) = doctor(&node, &["--options", &o]);
    assert_eq!(code, 0, "{out}");
    for check in [
        "install",
        "tmpfs",
        "imds",
        "nmi",
        "aad",
        "vault kvdemo",
        "object 1",
        "object 2",
        "object 3",
    ] {
        assert!(line(&out, check).starts_with("PASS"), "{check}: {out}");
    }
    assert!(!out.contains("s3cr3t"), "doctor printed a secret value");
    assert!(out.contains("failed, "), "{out}");
}

#[test]
fn doctor_reads_the_node_config_only_from_roots_places() {
    let node = Node::new();
    // A process that calls itself kubelet points at a plugin dir holding another kv.json.
    let planted = node.root.join("planted");
    std::fs::create_dir_all(planted.join("azure~kv")).unwrap();
    std::fs::write(planted.join("azure~kv/kv.json"), r#"{"planted": true}"#).unwrap();
    // In a PID namespace of its own, with its own /proc: the only kubelet doctor can see is
    // this fake one, whatever else runs on the machine.
    let script = format!(
        "(exec -a {root}/kubelet sh -c 'sleep 30; true' --volume-plugin-dir={planted}) & \
         while ! grep -qs volume-plugin-dir /proc/[0-9]*/cmdline; do sleep 0.02; done; \
         KV_LOG_FILE={log} {kv} doctor; kill %1",
        root = node.root.display(),
        planted = planted.display(),
        log = node.log.display(),
        kv = node.kv.display(),
    );
    let out = node
        .ns
        .command("unshare")
        .args(["--pid", "--fork", "--mount-proc", "bash", "-c", &script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).to_string();
    // The install check may look where kubelet looks; the config is the one beside kv.
    assert!(line(&out, "install").contains("planted"), "{out}");
    let config = line(&out, "config");
    assert!(config.starts_with("PASS"), "{out}");
    assert!(
        config.contains(
            &node
                .kv
                .parent()
                .unwrap()
                .join("kv.json")
                .display()
                .to_string()
        ),
        "{out}"
    );
}

#[test]
fn doctor_names_each_failure_and_its_fix() {
    // No IMDS identity on the node.
    let mut s = scenario();
    s["imds"]["system"] = serde_json::Value::Null;
    let node = Node::with(s, json!({}));
    let (out, code) = doctor(
        &node,
        &[
            "--options",
            &opts(json!({"usevmmanagedidentity":"true"})).to_string(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        line(&out, "imds").starts_with("FAIL")
            && line(&out, "imds").contains("assign the identity"),
        "{out}"
    );
    drop(node);

    let node = Node::with(scenario(), json!({"deadlineSeconds": 3}));
    // NMI without a binding for the pod.
    let mut o = opts(json!({"usepodidentity":"true"}));
    o["kubernetes.io/pod.name"] = json!("unbound");
    let (out, _) = doctor(&node, &["--options", &o.to_string()]);
    assert!(
        line(&out, "nmi").starts_with("FAIL") && line(&out, "nmi").contains("AzureIdentityBinding"),
        "{out}"
    );
    assert!(
        line(&out, "token").starts_with("FAIL")
            && line(&out, "token").contains("KV_NMI_NO_IDENTITY"),
        "{out}"
    );
    // Missing access policy.
    let (out, _) = doctor(
        &node,
        &[
            "--options",
            &opts(json!({"usevmmanagedidentity":"true","vmmanagedidentityclientid":NO_ACCESS_MI}))
                .to_string(),
        ],
    );
    assert!(
        line(&out, "object 1").starts_with("FAIL")
            && line(&out, "object 1").contains("KV403_FORBIDDEN"),
        "{out}"
    );
    assert!(line(&out, "object 1").contains("grant it `get`"), "{out}");
    // Unknown vault: DNS.
    let mut o = opts(json!({"usevmmanagedidentity":"true"}));
    o["keyvaultname"] = json!("kvnowhere");
    let (out, _) = doctor(&node, &["--options", &o.to_string()]);
    assert!(
        line(&out, "vault kvnowhere").starts_with("FAIL")
            && line(&out, "vault kvnowhere").contains("DNS"),
        "{out}"
    );
    // Wrong plugin dir.
    let (out, code) = {
        let (o, _, c) = run(&node, &["doctor", "--plugin-dir", "/nonexistent/plugins"]);
        (o, c)
    };
    assert_eq!(code, 1);
    assert!(
        line(&out, "install").starts_with("FAIL")
            && line(&out, "install").contains("not installed"),
        "{out}"
    );
}

#[test]
fn doctor_reports_untrusted_tls() {
    let node = Node::new();
    // A CA the emulator's certificate does not chain to.
    let other = other_ca(&node.root);
    let plugin = node.kv.parent().unwrap().parent().unwrap().to_path_buf();
    // Built by hand: Namespace::command sets SSL_CERT_FILE to the emulator's CA.
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &node.ns.holder_pid().to_string(),
            "-n",
            "-m",
            "--",
            "env",
        ])
        .arg(format!("SSL_CERT_FILE={}", other.display()))
        .arg(&node.kv)
        .args([
            "doctor",
            "--plugin-dir",
            plugin.to_str().unwrap(),
            "--options",
            &opts(json!({"usevmmanagedidentity":"true"})).to_string(),
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        line(&out, "vault kvdemo").starts_with("FAIL")
            && line(&out, "vault kvdemo").contains("not trusted"),
        "{out}"
    );
}

#[test]
fn logs_pull_one_pods_story() {
    let node = Node::new();
    let a = node.volume_dir("a");
    node.mount(&a, opts(json!({"usepodidentity":"true"})))
        .assert_success();
    let b = node.volume_dir("b");
    let mut other = opts(json!({"usevmmanagedidentity":"true"}));
    other["kubernetes.io/pod.name"] = json!("other-pod");
    node.mount(&b, other).assert_success();
    node.unmount(&a).assert_success();
    let (out, _, code) = run(&node, &["logs", "--pod", "demo/demo-pod"]);
    assert_eq!(code, 0);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.iter().any(|e| e["event"] == "mounted"));
    assert!(
        events.iter().any(|e| e["verb"] == "unmount"),
        "unmount lines follow the pod uid: {out}"
    );
    assert!(events.iter().all(|e| e["pod"] != "demo/other-pod"));
    assert!(
        events.iter().any(|e| e["event"] == "keyvault_response"
            && e["request_id"].as_str().is_some_and(|r| !r.is_empty())),
        "request ids are logged"
    );
}
