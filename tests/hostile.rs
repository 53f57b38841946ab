//! Hostile input through the real binary: options JSON of any shape, hostile `<dir>`s, and
//! hostile server answers the emulator can express. Every case: exactly one JSON reply, a clear
//! Failure (code + message) where failure is right, bounded time, nothing written outside the
//! volume, nothing left mounted. Also the regression tests for the fuzz targets' findings.

mod common;

use common::*;
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Every path under `root` (no symlinks followed), except the kv log and the node state
/// (`<root>/state`: the token cache and request slots outlive every mount by design).
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let state = root.join("state");
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p == state
                || p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("kv-driver.log"))
            {
                continue;
            }
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Runs `kv mount <dir> <raw options>` and checks the invariants common to every hostile case.
fn hostile_mount(node: &Node, dir: &Path, raw: impl AsRef<OsStr>) -> Call {
    let before = tree(&node.root);
    let mounted_before = node.mount_type(dir);
    let t = Instant::now();
    let c = node.kv(&[OsStr::new("mount"), dir.as_os_str(), raw.as_ref()]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(c.code, 0, "exit code");
    if c.status() == "Failure" {
        assert_eq!(
            node.mount_type(dir),
            mounted_before,
            "{} mounted after a Failure",
            dir.display()
        );
        assert_eq!(tree(&node.root), before, "files appeared: {}", c.stdout);
        assert_eq!(
            c.message()
                .split(": ")
                .next()
                .map(|code| code.starts_with("KV")),
            Some(true),
            "no catalogue code: {}",
            c.stdout
        );
    }
    c
}

fn base() -> Value {
    json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
           "usepodidentity": "true"})
}

fn with(extra: Value) -> Value {
    let mut o = base();
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

#[test]
fn options_json_of_any_shape_fails_cleanly() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let kubelet = |v: Value| kubelet_options(&dir, v).to_string();
    // One argv string is at most 128 KiB (MAX_ARG_STRLEN): kubelet cannot pass more.
    let deep_array = format!("{{\"a\":{}{}}}", "[".repeat(60_000), "]".repeat(60_000));
    let deep_object = format!("{}{}", "{\"a\":".repeat(20_000), "}".repeat(20_000));
    let long = "x".repeat(120 * 1024);
    let bad_utf8_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([0xff, 0xfe, 0xc3, 0x28, b'a'])
    };
    let cases: Vec<(String, String, &str)> = vec![
        ("empty".into(), String::new(), "KV_OPTIONS"),
        ("array".into(), "[]".into(), "KV_OPTIONS"),
        ("string".into(), "\"x\"".into(), "KV_OPTIONS"),
        ("null".into(), "null".into(), "KV_OPTIONS"),
        ("number".into(), "1e999999".into(), "KV_OPTIONS"),
        (
            "trailing".into(),
            format!("{} {{}}", kubelet(base())),
            "KV_OPTIONS",
        ),
        (
            "truncated".into(),
            kubelet(base())[..40].to_string(),
            "KV_OPTIONS",
        ),
        ("deep array".into(), deep_array, "KV_OPTIONS"),
        ("deep object".into(), deep_object, "KV_OPTIONS"),
        (
            "nested value".into(),
            kubelet(with(
                json!({"keyvaultobjectnames": {"a": [1, {"b": null}]}}),
            )),
            "KV_OPTIONS",
        ),
        (
            "number value".into(),
            kubelet(with(json!({"usepodidentity": true}))),
            "KV_OPTIONS",
        ),
        (
            "120 KiB name".into(),
            kubelet(with(json!({"keyvaultobjectnames": long.clone()}))),
            "KV_OPTIONS",
        ),
        (
            "120 KiB alias".into(),
            kubelet(with(json!({"keyvaultobjectaliases": long.clone()}))),
            "KV_OPTIONS",
        ),
        (
            "120 KiB vault".into(),
            kubelet(with(json!({"keyvaultname": long.clone()}))),
            "KV_OPTIONS",
        ),
        (
            "120 KiB unknown key".into(),
            kubelet(with(json!({long.clone(): "v"}))),
            "",
        ),
        (
            "invalid UTF-8 in secretRef".into(),
            kubelet(
                json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
                "tenantid": TENANT, "kubernetes.io/secret/clientid": bad_utf8_b64.clone(), "kubernetes.io/secret/clientsecret": b64(SP_SECRET)}),
            ),
            "KV_OPTIONS",
        ),
        (
            "invalid base64 in secretRef".into(),
            kubelet(
                json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password", "keyvaultobjecttypes": "secret",
                "tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID), "kubernetes.io/secret/clientsecret": "%%%not base64"}),
            ),
            "KV_OPTIONS",
        ),
        (
            "duplicate keys differing in case".into(),
            format!(
                "{{{}, \"KeyVaultName\": \"kvother\"}}",
                &kubelet(base())[1..kubelet(base()).len() - 1]
            ),
            "KV_OPTIONS",
        ),
        (
            "exact duplicate key".into(),
            format!(
                "{{{}, \"keyvaultname\": \"kvother\"}}",
                &kubelet(base())[1..kubelet(base()).len() - 1]
            ),
            "KV_OPTIONS",
        ),
        (
            "NUL in name".into(),
            kubelet(with(json!({"keyvaultobjectnames": "db-pass\u{0}word"}))),
            "KV_OPTIONS",
        ),
        (
            "NUL in vault".into(),
            kubelet(with(json!({"keyvaultname": "kvdemo\u{0}"}))),
            "KV_OPTIONS",
        ),
        (
            "NUL in pod name".into(),
            kubelet(with(json!({"kubernetes.io/pod.name": "demo\u{0}pod"}))),
            "KV_OPTIONS",
        ),
        (
            "NUL in key".into(),
            kubelet(with(json!({"keyvaultname\u{0}": "x"}))),
            "",
        ),
        (
            "lone surrogate".into(),
            kubelet(base()).replace("db-password", "db-\\ud800password"),
            "KV_OPTIONS",
        ),
        (
            "fsGroup overflow".into(),
            kubelet(with(
                json!({"kubernetes.io/mounterArgs.FsGroup": "99999999999999999999"}),
            )),
            "KV_OPTIONS",
        ),
        (
            "negative fsGroup".into(),
            kubelet(with(json!({"kubernetes.io/mounterArgs.FsGroup": "-1"}))),
            "KV_OPTIONS",
        ),
        (
            "huge tmpfssize".into(),
            kubelet(with(json!({"tmpfssize": "99999999999999999999999G"}))),
            "KV_OPTIONS",
        ),
        (
            "mode with setuid".into(),
            kubelet(with(json!({"filepermission": "4755"}))),
            "KV_OPTIONS",
        ),
        (
            "objects not JSON".into(),
            kubelet(json!({"objects": "[{", "usepodidentity": "true"})),
            "KV_OPTIONS",
        ),
        (
            "objects deep".into(),
            kubelet(
                json!({"objects": format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)), "usepodidentity": "true"}),
            ),
            "KV_OPTIONS",
        ),
        (
            "objects too many".into(),
            kubelet(
                json!({"keyvaultname": "kvdemo", "objects": serde_json::to_string(&(0..1500).map(|i| json!({"objectName": format!("o{i}"), "objectType": "secret"})).collect::<Vec<_>>()).unwrap(), "usepodidentity": "true"}),
            ),
            "KV_OPTIONS",
        ),
    ];
    for (name, raw, code) in cases {
        let c = hostile_mount(&node, &dir, &raw);
        if code.is_empty() {
            // An unknown key is only a warning: the mount itself may succeed.
            if c.status() == "Success" {
                node.unmount(&dir).assert_success();
                std::fs::create_dir_all(node.ns.host_path(&dir)).unwrap();
            }
            continue;
        }
        assert_eq!(c.status(), "Failure", "{name}: {}", c.stdout);
        assert!(
            c.message().starts_with(&format!("{code}: ")),
            "{name}: {}",
            c.message()
        );
        assert!(
            c.stdout.len() < 4096,
            "{name}: a {} byte reply",
            c.stdout.len()
        );
        assert!(
            !c.stdout.contains(&long[..1000]),
            "{name}: the reply echoes the input"
        );
        node.assert_nothing_left(&dir);
    }
    // Options that are not UTF-8 at all.
    let mut raw = kubelet(base()).into_bytes();
    raw.insert(20, 0xff);
    let c = hostile_mount(&node, &dir, OsString::from_vec(raw));
    c.assert_failure("KV_OPTIONS");
}

#[test]
fn aliases_and_names_cannot_escape_the_volume() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let outside = node.root.join("kubelet/pods");
    for alias in [
        "..",
        ".",
        "../x",
        "../../../../../../tmp/kv-escape",
        "a/b",
        "/etc/passwd",
        "/",
        "x/..",
        "a\\b",
        "a\nb",
        "a\u{0}b",
        "\u{202e}evil",
        "...",
        "..data",
    ] {
        let c = hostile_mount(
            &node,
            &dir,
            kubelet_options(&dir, with(json!({"keyvaultobjectaliases": alias}))).to_string(),
        );
        if c.status() == "Success" {
            // Only names that are one harmless file name may be accepted.
            let names: Vec<String> = node.files(&dir).into_iter().map(|f| f.0).collect();
            assert_eq!(names, [alias.to_string()], "{alias:?}");
            node.unmount(&dir).assert_success();
            std::fs::create_dir_all(node.ns.host_path(&dir)).unwrap();
        } else {
            c.assert_failure("KV_OPTIONS");
        }
    }
    // Object names that look like paths or devices: refused before anything is fetched.
    for name in [
        "../secrets/db-password",
        "db-password/versions",
        "/dev/sda",
        "con:",
        "a b",
        "db-password?x=1",
        "db-password#",
    ] {
        let before = node.ns.request_log().len();
        let c = hostile_mount(
            &node,
            &dir,
            kubelet_options(&dir, with(json!({"keyvaultobjectnames": name}))).to_string(),
        );
        c.assert_failure("KV_OPTIONS");
        assert_eq!(
            node.ns.request_log().len(),
            before,
            "{name:?} reached the vault"
        );
    }
    // Device-like and reserved file names are ordinary files on Linux, inside the tmpfs.
    for alias in ["null", "CON", "zero", "-rf", "~"] {
        let c = hostile_mount(
            &node,
            &dir,
            kubelet_options(&dir, with(json!({"keyvaultobjectaliases": alias}))).to_string(),
        );
        c.assert_success();
        assert_eq!(node.file(&dir, alias), b"s3cr3t-P@ssw0rd");
        node.unmount(&dir).assert_success();
        std::fs::create_dir_all(node.ns.host_path(&dir)).unwrap();
    }
    assert!(!Path::new("/tmp/kv-escape").exists());
    assert!(outside.is_dir());
}

#[test]
fn hostile_mount_dirs_are_refused() {
    let node = Node::new();
    let opts = |dir: &Path| kubelet_options_lenient(dir);
    // Not kubelet's shape.
    for bad in [
        node.root.join("elsewhere/v"),
        node.root.join("kubelet/pods/u/volumes/other~drv/v"),
        node.root.join("kubelet/pods/u/volumes/azure~kv/.hidden"),
        PathBuf::from("relative/pods/u/volumes/azure~kv/v"),
        PathBuf::from("/"),
        PathBuf::from("/etc"),
    ] {
        let c = hostile_mount(&node, &bad, opts(&bad));
        c.assert_failure("KV_DIR");
        if bad.is_absolute() && bad.starts_with(&node.root) {
            node.assert_nothing_left(&bad);
        }
    }
    // `..` and non-normal forms of a kubelet path.
    let real = node.volume_dir("v");
    for s in [
        format!("{}/../v", real.display()),
        format!("{}/", real.display()),
        format!("{}", real.display()).replace("/azure~kv/", "/azure~kv//"),
        format!("{}", real.display()).replace("/azure~kv/", "/azure~kv/./"),
    ] {
        let p = PathBuf::from(&s);
        hostile_mount(&node, &p, opts(&p)).assert_failure("KV_DIR");
    }
    assert_eq!(node.mount_type(&real), None);

    // The `azure~kv` directory replaced by a symlink to a directory elsewhere.
    let target = node.root.join("elsewhere");
    std::fs::create_dir_all(target.join("v")).unwrap();
    std::fs::write(target.join("v/precious"), b"keep me").unwrap();
    let pod = node.root.join("kubelet/pods/symlinked-pod/volumes");
    std::fs::create_dir_all(&pod).unwrap();
    std::os::unix::fs::symlink(&target, pod.join("azure~kv")).unwrap();
    let dir = pod.join("azure~kv/v");
    let c = hostile_mount(&node, &dir, opts(&dir));
    c.assert_failure("KV_DIR");
    assert!(c.message().contains("symlink"), "{}", c.message());
    assert_eq!(node.mount_type(&target.join("v")), None);
    assert_eq!(node.mount_type(&dir), None);
    // unmount through the symlink must not delete the target's files.
    node.unmount(&dir).assert_failure("KV_DIR");
    assert_eq!(
        std::fs::read(target.join("v/precious")).unwrap(),
        b"keep me"
    );
    let listing: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(listing, [OsString::from("v")]);

    // The volume dir itself a symlink (to a dir, to a file, dangling).
    let vols = node.root.join("kubelet/pods/p2/volumes/azure~kv");
    std::fs::create_dir_all(&vols).unwrap();
    std::os::unix::fs::symlink(target.join("v"), vols.join("to-dir")).unwrap();
    std::os::unix::fs::symlink(target.join("v/precious"), vols.join("to-file")).unwrap();
    std::os::unix::fs::symlink(node.root.join("nope"), vols.join("dangling")).unwrap();
    for name in ["to-dir", "to-file", "dangling"] {
        let dir = vols.join(name);
        hostile_mount(&node, &dir, opts(&dir)).assert_failure("KV_DIR");
        node.unmount(&dir).assert_failure("KV_DIR");
    }
    assert_eq!(
        std::fs::read(target.join("v/precious")).unwrap(),
        b"keep me"
    );
    assert!(!node.root.join("nope").exists());

    // `<dir>` is a regular file.
    let file_dir = node.root.join("kubelet/pods/p3/volumes/azure~kv/file");
    std::fs::create_dir_all(file_dir.parent().unwrap()).unwrap();
    std::fs::write(&file_dir, b"not a dir").unwrap();
    let c = hostile_mount(&node, &file_dir, opts(&file_dir));
    c.assert_failure("KV_DIR");
    assert_eq!(std::fs::read(&file_dir).unwrap(), b"not a dir");

    // Bytes that are not UTF-8 in the path: one JSON reply, no mount.
    let mut raw = node
        .root
        .join("kubelet/pods/p4/volumes/azure~kv/")
        .into_os_string()
        .into_vec();
    raw.extend_from_slice(b"v\xff\n");
    let odd = PathBuf::from(OsString::from_vec(raw));
    let c = node.kv(&[
        OsStr::new("mount"),
        odd.as_os_str(),
        OsStr::new(&base().to_string()),
    ]);
    if c.status() == "Success" {
        node.unmount(&odd).assert_success();
    }
    assert_eq!(node.mount_type(&odd), None);
}

/// kubelet's keys without deriving the uid from the path (the path may be any shape).
fn kubelet_options_lenient(_dir: &Path) -> String {
    let mut o = base();
    o["kubernetes.io/pod.name"] = json!("demo-pod");
    o["kubernetes.io/pod.namespace"] = json!("demo");
    o.to_string()
}

#[test]
fn hostile_vault_answers_fail_cleanly() {
    let mut s = scenario();
    let secrets = s["vaults"][0]["secrets"].as_array_mut().unwrap();
    // Key Vault's limit is 25 KB; the emulator serves whatever it is told.
    secrets.push(json!({"name": "big-200k", "generate": {"repeat": "0123456789abcdef", "bytes": 200 * 1024}}));
    secrets.push(json!({"name": "huge-2m", "generate": {"repeat": "0123456789abcdef", "bytes": 2 * 1024 * 1024}}));
    secrets.push(json!({"name": "not-base64", "value": "%%% not base64 \u{1} \u{7f}"}));
    secrets.push(json!({"name": "pfx-type-garbage", "value": "garbage", "content_type": "application/x-pkcs12"}));
    secrets.push(json!({"name": "pem-type-garbage", "value": "-----BEGIN PRIVATE KEY-----\nAAAA\n", "content_type": "application/x-pem-file"}));
    s["vaults"][0]["keys"].as_array_mut().unwrap().extend([
        json!({"name": "sym", "kty": "oct"}),
        json!({"name": "k1", "kty": "EC", "crv": "P-256K"}),
    ]);
    let node = Node::with(s, json!({"deadlineSeconds": 10}));
    let run = |names: &str, types: &str, extra: Value| {
        let dir = node.volume_dir("v");
        let mut o = with(json!({"keyvaultobjectnames": names, "keyvaultobjecttypes": types}));
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        let c = hostile_mount(&node, &dir, kubelet_options(&dir, o).to_string());
        (dir, c)
    };
    // 200 KB: over Key Vault's limit but under kv's 1 MiB bound: mounted whole.
    let (dir, c) = run("big-200k", "secret", json!({}));
    c.assert_success();
    assert_eq!(node.file(&dir, "big-200k").len(), 200 * 1024);
    node.unmount(&dir).assert_success();
    // 2 MB: cut off at 1 MiB, never read whole.
    let (dir, c) = run("huge-2m", "secret", json!({}));
    assert_eq!(c.status(), "Failure", "{}", c.stdout);
    c.assert_failure("KV_VAULT");
    assert!(
        c.message().contains("larger than 1048576 bytes"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&dir);
    // A value that is not base64 asked to be decoded as base64.
    let (dir, c) = run(
        "not-base64",
        "secret",
        json!({"keyvaultobjectencodings": "base64"}),
    );
    c.assert_failure("KV_RENDER");
    assert!(
        !c.message().contains("%%%"),
        "the value is echoed: {}",
        c.message()
    );
    node.assert_nothing_left(&dir);
    let (dir, c) = run(
        "not-base64",
        "secret",
        json!({"keyvaultobjectencodings": "hex"}),
    );
    c.assert_failure("KV_RENDER");
    node.assert_nothing_left(&dir);
    // Symmetric and unsupported-curve keys: no public part to write.
    for k in ["sym", "k1"] {
        let (dir, c) = run(k, "key", json!({}));
        c.assert_failure("KV_RENDER");
        assert!(c.message().contains(k), "{}", c.message());
        node.assert_nothing_left(&dir);
    }
    // Plain secrets whose content type claims PFX/PEM are written as stored (not parsed).
    for name in ["pfx-type-garbage", "pem-type-garbage"] {
        let (dir, c) = run(name, "secret", json!({}));
        c.assert_success();
        node.unmount(&dir).assert_success();
    }
    // Asking for pfx output of a plain secret.
    let (dir, c) = run(
        "db-password",
        "secret",
        json!({"keyvaultobjectformats": "pfx"}),
    );
    // A plain secret has no certificate to convert: `pfx` is ignored and the value is written
    // as stored.
    c.assert_success();
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    node.unmount(&dir).assert_success();
}

/// Regression inputs for the fuzz targets, through the library (fast, no namespace).
#[test]
fn fuzz_regressions_through_the_library() {
    use keyvault_flexvolume::render::{self, KeyMaterial, RenderOptions};
    let opts = [
        RenderOptions::default(),
        RenderOptions {
            split_cert_and_key: true,
            ..Default::default()
        },
    ];
    let inputs: Vec<Vec<u8>> = vec![
        vec![],
        b"\x30\x80\x30\x80\x00\x00\x00\x00".to_vec(),
        b"\x30\x84\xff\xff\xff\xff".to_vec(),
        vec![0x30; 4096],
        b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_vec(),
        b"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n".to_vec(),
    ];
    for input in &inputs {
        let text = String::from_utf8_lossy(input);
        for o in &opts {
            for ct in [
                None,
                Some("application/x-pkcs12"),
                Some("application/x-pem-file"),
            ] {
                let _ = render::render_secret("o", &text, ct, true, o);
                use base64::Engine;
                let b64 = base64::engine::general_purpose::STANDARD.encode(input);
                let _ = render::render_secret("o", &b64, ct, true, o);
            }
        }
        let _ = render::render_cert("o", input, &RenderOptions::default());
        let _ = render::render_key(
            "o",
            &KeyMaterial {
                kty: "RSA".into(),
                n: Some(input.clone()),
                e: Some(input.clone()),
                ..Default::default()
            },
            &RenderOptions::default(),
        );
        let _ = keyvault_flexvolume::options::VolumeSpec::parse(&text);
        let _ = keyvault_flexvolume::config::NodeConfig::parse(&text);
    }
}

/// Hardening item 9: a pod cannot flood the node's log. 100 unknown option keys of 1 KiB each
/// (the options argument is near argv's 128 KiB limit) are logged as a count and the first few
/// names, and no line of the log is over the line cap.
#[test]
fn unknown_option_keys_cannot_flood_the_log() {
    let node = Node::new();
    let dir = node.volume_dir("v");
    let mut o = base();
    for i in 0..100 {
        o[format!("unknown-{i:03}-{}", "x".repeat(1000))] = json!("v");
    }
    let c = hostile_mount(&node, &dir, kubelet_options(&dir, o).to_string());
    c.assert_success();
    node.unmount(&dir).assert_success();
    let log = node.log_text();
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 8 * 1024, "a log line of {longest} bytes");
    let unknown: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "unknown_options")
        .expect("unknown_options logged");
    assert_eq!(unknown["count"], 100, "{unknown}");
    assert_eq!(
        unknown["first"].as_array().map(Vec::len),
        Some(5),
        "{unknown}"
    );
    // Numbers carry at most microsecond precision.
    for l in log.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let ms = v["elapsed_ms"].to_string();
        let decimals = ms.split('.').nth(1).map(str::len).unwrap_or(0);
        assert!(decimals <= 3, "elapsed_ms {ms}");
    }
}
