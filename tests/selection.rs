//! Objects by selection (`objectNamePattern`, `objectTags`) and by field (`jsonFields`), end to
//! end: the shipped binary mounts as kubelet runs it, the emulator lists the vault page by page
//! like Key Vault, the files are read back from the tmpfs; `kv agent` re-lists at each refresh;
//! `kv fetch` and `kv doctor` understand both.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// More than one page of a listing (Key Vault pages by 25).
const BULK: usize = 30;

/// The example scenario plus: `bulk-00`…`bulk-29`, tagged secrets (one disabled), a tagged
/// certificate and key, and JSON secrets.
fn selection_scenario() -> Value {
    let mut s = scenario();
    let vault = &mut s["vaults"][0];
    let secrets = vault["secrets"].as_array_mut().unwrap();
    for i in 0..BULK {
        secrets.push(json!({"name": format!("bulk-{i:02}"), "value": format!("bulk value {i}")}));
    }
    secrets.extend([
        json!({"name": "app-a", "value": "a", "tags": {"team": "a", "env": "prod"}}),
        json!({"name": "app-b", "value": "b", "tags": {"team": "a"}, "enabled": false}),
        json!({"name": "app-c", "value": "c", "tags": {"team": "b"}}),
        json!({"name": "lib-a", "value": "lib", "tags": {"team": "a"}}),
        json!({"name": "db-conn", "value": r#"{"username": "app", "password": "s3cr:et\n", "port": 5432, "tls": {"mode": "verify-full"}, "hosts": ["a", "b"], "ro": false}"#}),
        json!({"name": "not-json", "value": "hunter2-plain"}),
    ]);
    vault["certificates"].as_array_mut().unwrap().push(json!({
        "name": "team-a-cert", "subject": "CN=team-a.example", "tags": {"cert-team": "a"},
        "key": {"kty": "EC", "crv": "P-256"}
    }));
    vault["keys"].as_array_mut().unwrap().push(
        json!({"name": "team-a-key", "kty": "EC", "crv": "P-256", "tags": {"key-team": "a"}}),
    );
    s
}

fn objects_options(objects: Value) -> Value {
    json!({"keyvaultname": "kvdemo", "objects": objects.to_string(), "usevmmanagedidentity": "true"})
}

fn names(files: &[(String, Vec<u8>, u32, u32)]) -> Vec<&str> {
    files.iter().map(|f| f.0.as_str()).collect()
}

/// Key Vault answers (200) to list requests of `collection` (`/secrets`, `/keys`, …).
fn lists(node: &Node, collection: &str) -> usize {
    node.vault_gets(|p| p.trim_end_matches('/') == collection)
}

#[test]
fn patterns_and_tags_select_objects_written_as_if_named() {
    let node = Node::with(selection_scenario(), json!({}));
    let dir = node.volume_dir("sel");
    let objects = json!([
        {"objectName": "db-password", "objectType": "secret"},
        {"objectNamePattern": "bulk-.*", "objectType": "secret", "filePermission": "0400"},
        {"objectTags": {"team": "a"}, "objectType": "secret"},
        {"objectNamePattern": "app-.*", "objectTags": {"team": "b"}, "objectType": "secret"},
        {"objectTags": {"cert-team": "a"}, "objectType": "cert", "objectFormat": "der"},
        {"objectTags": {"key-team": "a"}, "objectType": "key", "objectFormat": "jwk"}
    ]);
    let mut options = objects_options(objects);
    options["kubernetes.io/mounterArgs.FsGroup"] = json!("1234");
    node.mount(&dir, options).assert_success();
    let files = node.files(&dir);
    let mut want: Vec<String> = (0..BULK).map(|i| format!("bulk-{i:02}")).collect();
    // app-b is disabled: skipped. lib-a matches the tags; app-c the pattern and its tag.
    want.extend(
        [
            "app-a",
            "app-c",
            "db-password",
            "lib-a",
            "team-a-cert",
            "team-a-key",
        ]
        .map(String::from),
    );
    want.sort();
    assert_eq!(names(&files), want);
    for (name, bytes, mode, gid) in &files {
        let want_mode = if name.starts_with("bulk-") {
            0o400
        } else {
            0o440
        };
        assert_eq!((*mode, *gid), (want_mode, 1234), "{name}");
        if let Some(i) = name.strip_prefix("bulk-") {
            let i: usize = i.parse().unwrap();
            assert_eq!(bytes, format!("bulk value {i}").as_bytes());
        }
    }
    assert_eq!(node.file(&dir, "app-a"), b"a");
    assert_eq!(node.file(&dir, "lib-a"), b"lib");
    let jwk: Value = serde_json::from_slice(&node.file(&dir, "team-a-key")).unwrap();
    assert_eq!(jwk["kty"], "EC");

    // Byte for byte what the same objects named by the pod become.
    let named = node.volume_dir("named");
    node.mount(
        &named,
        objects_options(json!([
            {"objectName": "team-a-cert", "objectType": "cert", "objectFormat": "der"},
            {"objectName": "team-a-key", "objectType": "key", "objectFormat": "jwk"}
        ])),
    )
    .assert_success();
    assert_eq!(
        node.file(&named, "team-a-cert"),
        node.file(&dir, "team-a-cert")
    );
    assert_eq!(
        node.file(&named, "team-a-key"),
        node.file(&dir, "team-a-key")
    );

    // One listing per vault and type, shared by the selections, every page followed: 40+
    // secrets are two pages; certificates and keys one each.
    assert_eq!(lists(&node, "/secrets"), 2, "secret list pages");
    assert_eq!(lists(&node, "/certificates"), 1);
    assert_eq!(lists(&node, "/keys"), 1);
    let log = node.log_text();
    assert!(log.contains("\"event\":\"selected\""), "{log}");
    assert!(!log.contains("bulk value"), "values never reach the log");

    node.unmount(&dir).assert_success();
    node.unmount(&named).assert_success();
    assert_eq!(node.mount_type(&dir), None);
}

#[test]
fn a_selection_fails_clearly_and_leaves_nothing() {
    let node = Node::with(selection_scenario(), json!({"maxFilesPerVolume": 20}));
    let dir = node.volume_dir("v");
    let fail = |objects: Value, code: &str| -> String {
        let c = node.mount(&dir, objects_options(objects));
        c.assert_failure(code);
        node.assert_nothing_left(&dir);
        c.message().to_string()
    };

    // Nothing matches: the selection is named.
    let m = fail(
        json!([{"objectNamePattern": "nope-.*", "objectType": "secret"}]),
        "KV404_NOT_FOUND",
    );
    assert!(
        m.contains("objects[0] (objectNamePattern \"nope-.*\") matches none of the")
            && m.contains("enabled secrets in vault kvdemo")
            && m.contains("\"optional\": true"),
        "{m}"
    );
    // A disabled object never matches.
    let m = fail(
        json!([{"objectName": "db-password", "objectType": "secret"},
               {"objectNamePattern": "app-b", "objectType": "secret"}]),
        "KV404_NOT_FOUND",
    );
    assert!(
        m.contains("objects[1] (objectNamePattern \"app-b\")"),
        "{m}"
    );

    // More matches than the node's maxFilesPerVolume: the count and the limit.
    let m = fail(
        json!([{"objectNamePattern": "bulk-.*", "objectType": "secret"}]),
        "KV_MOUNT",
    );
    assert!(
        m.contains("matches 30 secrets in vault kvdemo, more than this node's limit of 20 files per volume"),
        "{m}"
    );

    // A match writing another entry's file: both are named.
    let m = fail(
        json!([{"objectName": "multiline", "objectType": "secret", "objectAlias": "app-a"},
               {"objectTags": {"team": "a"}, "objectType": "secret"}]),
        "KV_OPTIONS",
    );
    assert!(
        m.contains("objects `multiline` and `app-a` (matched by objects[1]) would both write the file \"app-a\""),
        "{m}"
    );

    // No `list` permission (the identity may only get secrets of kvother): said so.
    let m = fail(
        json!([{"objectNamePattern": ".*", "objectType": "secret", "keyvaultName": "kvother"}]),
        "KV403_FORBIDDEN",
    );
    assert!(
        m.contains("system-assigned managed identity may not list secrets in vault kvother")
            && m.contains("grant it `list`"),
        "{m}"
    );

    // A hostile pattern (a huge compiled program) is refused before any request.
    let listed = lists(&node, "/secrets");
    let m = fail(
        json!([{"objectNamePattern": "(\\w{1000}){1000}", "objectType": "secret"}]),
        "KV_OPTIONS",
    );
    assert!(
        m.contains("objects[0].objectNamePattern") && m.contains("compiles to more than"),
        "{m}"
    );
    assert_eq!(lists(&node, "/secrets"), listed);

    // optional: an empty selection is skipped and logged; the rest mounts.
    node.mount(
        &dir,
        objects_options(json!([
            {"objectName": "db-password", "objectType": "secret"},
            {"objectNamePattern": "nope-.*", "objectType": "secret", "optional": true}
        ])),
    )
    .assert_success();
    assert_eq!(names(&node.files(&dir)), ["db-password"]);
    assert!(node.log_text().contains("selection_empty"));
    node.unmount(&dir).assert_success();
}

#[test]
fn the_node_policy_covers_the_vaults_a_selection_lists() {
    let node = Node::with(
        selection_scenario(),
        json!({"policy": {"nodeIdentities": {"*": ["*"]}, "vaultsByNamespace": {"demo": ["kvdemo"]}}}),
    );
    let dir = node.volume_dir("v");
    let c = node.mount(
        &dir,
        objects_options(json!([
            {"objectName": "db-password", "objectType": "secret"},
            {"objectNamePattern": ".*", "objectType": "secret", "keyvaultName": "kvother"}
        ])),
    );
    c.assert_failure("KV_POLICY");
    assert!(c.message().contains("kvother"), "{}", c.message());
    node.assert_nothing_left(&dir);
    assert_eq!(lists(&node, "/secrets"), 0, "refused before any request");
}

#[test]
fn json_fields_become_files_of_their_own() {
    let node = Node::with(selection_scenario(), json!({}));
    let dir = node.volume_dir("fields");
    node.mount(
        &dir,
        objects_options(json!([
            {"objectName": "db-conn", "objectType": "secret", "filePermission": "0400", "jsonFields": [
                {"pointer": "/username", "objectAlias": "db-user"},
                {"pointer": "/password", "objectAlias": "db-pass"},
                {"pointer": "/port", "objectAlias": "db-port"},
                {"pointer": "/tls", "objectAlias": "db-tls"},
                {"pointer": "/hosts/1", "objectAlias": "db-host"},
                {"pointer": "/ro", "objectAlias": "db-ro"}
            ]},
            {"objectName": "db-conn", "objectType": "secret", "objectAlias": "db.json"}
        ])),
    )
    .assert_success();
    let files = node.files(&dir);
    assert_eq!(
        names(&files),
        ["db-host", "db-pass", "db-port", "db-ro", "db-tls", "db-user", "db.json"]
    );
    assert_eq!(node.file(&dir, "db-user"), b"app");
    assert_eq!(
        node.file(&dir, "db-pass"),
        b"s3cr:et\n",
        "a string's characters"
    );
    assert_eq!(node.file(&dir, "db-port"), b"5432");
    assert_eq!(node.file(&dir, "db-tls"), br#"{"mode":"verify-full"}"#);
    assert_eq!(node.file(&dir, "db-host"), b"b");
    assert_eq!(node.file(&dir, "db-ro"), b"false");
    assert!(node
        .file(&dir, "db.json")
        .starts_with(br#"{"username": "app""#));
    for (name, _, mode, _) in &files {
        assert_eq!(
            *mode,
            if name == "db.json" { 0o444 } else { 0o400 },
            "{name}"
        );
    }
    assert_eq!(
        node.vault_gets(|p| p.starts_with("/secrets/db-conn")),
        1,
        "one GET however many fields"
    );
    node.unmount(&dir).assert_success();

    // Not JSON, or nothing at the pointer: the object and the pointer, never the value.
    for (object, pointer, want) in [
        ("not-json", "/username", "value is not JSON"),
        (
            "db-conn",
            "/user",
            "value has nothing at jsonFields pointer \"/user\"",
        ),
    ] {
        let c = node.mount(
            &dir,
            objects_options(json!([{"objectName": object, "objectType": "secret",
                "jsonFields": [{"pointer": pointer, "objectAlias": "f"}]}])),
        );
        c.assert_failure("KV_RENDER");
        let m = c.message();
        assert!(
            m.contains(&format!("object `{object}`")) && m.contains(pointer) && m.contains(want),
            "{m}"
        );
        for value in ["hunter2", "s3cr", "app\"", "5432"] {
            assert!(!m.contains(value), "{m}");
        }
        node.assert_nothing_left(&dir);
    }
    let log = node.log_text();
    assert!(
        !log.contains("hunter2") && !log.contains("s3cr:et"),
        "{log}"
    );
}

/// `kv agent --once` in the node's namespace.
fn agent_once(node: &Node) -> String {
    let out = node
        .ns
        .command(&node.kv)
        .args(["agent", "--once"])
        .env("KV_LOG_FILE", &node.log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    stdout
}

/// The files a rotating volume shows (its `..data` layout hidden): name and bytes.
fn visible(node: &Node, dir: &Path) -> Vec<(String, Vec<u8>)> {
    let base: PathBuf = node.ns.host_path(dir);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with(".."))
        .map(|n| {
            let bytes = std::fs::read(base.join(&n)).unwrap();
            (n, bytes)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn each_refresh_lists_again() {
    let mut scenario = selection_scenario();
    let mut node = Node::with(scenario.clone(), json!({}));
    let scenario_file = node.root.join("scenario.json");
    std::fs::write(&scenario_file, scenario.to_string()).unwrap();
    node.ns.restart_emulator(scenario_file.clone()).unwrap();
    node.set_config(json!({"stateDir": node.root.join("state"), "rotation": {"minInterval": "1s"}, "deadlineSeconds": 5}));
    let dir = node.volume_dir("rot");
    let mut options = objects_options(json!([
        {"objectTags": {"team": "a"}, "objectType": "secret"}
    ]));
    options["rotationpollinterval"] = json!("30s");
    node.mount(&dir, options).assert_success();
    // The vault's secrets are two pages: one listing is two list requests.
    let per_listing = lists(&node, "/secrets");
    assert_eq!(per_listing, 2);
    let file_names =
        |node: &Node| -> Vec<String> { visible(node, &dir).into_iter().map(|f| f.0).collect() };
    assert_eq!(file_names(&node), ["app-a", "lib-a"]);

    // A new object with the tag appears; one whose tag changed disappears; one that is
    // disabled disappears.
    let secrets = scenario["vaults"][0]["secrets"].as_array_mut().unwrap();
    secrets.push(json!({"name": "new-a", "value": "new", "tags": {"team": "a"}}));
    for s in secrets.iter_mut() {
        if s["name"] == "lib-a" {
            s["tags"] = json!({"team": "c"});
        }
    }
    reload(&node.ns, &scenario_file, &scenario);
    let out = agent_once(&node);
    assert!(out.starts_with("switched "), "{out}");
    assert_eq!(
        visible(&node, &dir),
        [
            ("app-a".to_string(), b"a".to_vec()),
            ("new-a".to_string(), b"new".to_vec())
        ]
    );
    let secrets = scenario["vaults"][0]["secrets"].as_array_mut().unwrap();
    for s in secrets.iter_mut() {
        if s["name"] == "app-a" {
            s["enabled"] = json!(false);
        }
    }
    reload(&node.ns, &scenario_file, &scenario);
    agent_once(&node);
    assert_eq!(file_names(&node), ["new-a"]);
    // Nothing changed: nothing switched, the listing was made again.
    let before = lists(&node, "/secrets");
    let out = agent_once(&node);
    assert!(out.contains("0 switched, 1 unchanged"), "{out}");
    assert_eq!(lists(&node, "/secrets"), before + per_listing);
    node.unmount(&dir).assert_success();
}

fn run(node: &Node, args: &[&str]) -> (String, i32) {
    let out = node
        .ns
        .command(&node.kv)
        .args(args)
        .env("KV_LOG_FILE", &node.log)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

#[test]
fn fetch_and_doctor_understand_selections_and_fields() {
    let node = Node::with(selection_scenario(), json!({}));
    let options = json!({
        "keyvaultname": "kvdemo", "usevmmanagedidentity": "true",
        "kubernetes.io/pod.name": "demo-pod", "kubernetes.io/pod.namespace": "demo",
        "objects": json!([
            {"objectTags": {"team": "a"}, "objectType": "secret"},
            {"objectName": "db-conn", "objectType": "secret", "jsonFields": [{"pointer": "/username", "objectAlias": "db-user"}]}
        ]).to_string()
    })
    .to_string();

    // The plan shows the listing, and makes no request.
    let requests = node.ns.request_log().len();
    let (out, code) = run(&node, &["fetch", "--options", &options, "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("select    objects[0] (objectTags {\"team\": \"a\"}): lists https://kvdemo.vault.azure.net/secrets (every page)"),
        "{out}"
    );
    assert!(out.contains("→  db-user  mode"), "{out}");
    let (json_out, code) = run(
        &node,
        &["fetch", "--options", &options, "--dry-run", "--json"],
    );
    assert_eq!(code, 0, "{json_out}");
    let plan: Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(
        plan["selections"][0]["list"],
        "https://kvdemo.vault.azure.net/secrets"
    );
    assert_eq!(plan["selections"][0]["objectTags"], json!({"team": "a"}));
    assert_eq!(
        node.ns.request_log().len(),
        requests,
        "--dry-run made requests"
    );

    // --dir writes the matches and the field.
    let out_dir = node.root.join("fetched");
    let (out, code) = run(
        &node,
        &[
            "fetch",
            "--options",
            &options,
            "--dir",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    let mut written: Vec<String> = std::fs::read_dir(node.ns.host_path(&out_dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    written.sort();
    assert_eq!(written, ["app-a", "db-user", "lib-a"]);
    assert_eq!(
        std::fs::read(node.ns.host_path(&out_dir).join("db-user")).unwrap(),
        b"app"
    );

    // doctor: a PASS line per selection naming its matches; a missing list permission FAILs.
    let plugin = node.root.join("plugins").to_string_lossy().to_string();
    let (out, _) = run(
        &node,
        &["doctor", "--plugin-dir", &plugin, "--options", &options],
    );
    let line = out
        .lines()
        .find(|l| l.contains("objects[0]"))
        .unwrap_or_else(|| panic!("no selection line:\n{out}"));
    assert!(line.starts_with("PASS"), "{out}");
    assert!(
        line.contains("2 secrets match") && line.contains("app-a, lib-a"),
        "{line}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("PASS") && l.contains("object 1")),
        "{out}"
    );
    assert!(!out.contains("s3cr:et"), "{out}");
    let denied = json!({
        "keyvaultname": "kvother", "usevmmanagedidentity": "true",
        "kubernetes.io/pod.name": "demo-pod", "kubernetes.io/pod.namespace": "demo",
        "objects": json!([{"objectNamePattern": ".*", "objectType": "secret"}]).to_string()
    })
    .to_string();
    let (out, code) = run(
        &node,
        &["doctor", "--plugin-dir", &plugin, "--options", &denied],
    );
    assert_ne!(code, 0, "{out}");
    let line = out
        .lines()
        .find(|l| l.contains("objects[0]"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("FAIL")
            && line.contains("KV403_FORBIDDEN")
            && line.contains("may not list secrets in vault kvother"),
        "{line}"
    );
}
