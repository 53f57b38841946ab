//! Rotation against the emulator: the real `kv agent --once` refreshing a volume that has the
//! rotation layout, with a service principal's recorded credential, over real HTTP/TLS.
//!
//! Until `kv mount` writes the rotation layout itself, the test mounts the tmpfs (source `kv`)
//! in the node's namespace and writes the first version with the same library function mount
//! will use ([`layout::write_initial`]).

mod common;

use common::*;
use keyvault_flexvolume::agent::layout::{self, Budget, Perms};
use keyvault_flexvolume::agent::record::{Record, Store};
use keyvault_flexvolume::options::VolumeSpec;
use keyvault_flexvolume::volume::VolumeFile;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Output;
use zeroize::Zeroizing;

const PINNED: &str = "0123456789abcdef0123456789abcdef";

fn options(dir: &Path) -> Value {
    kubelet_options(
        dir,
        json!({
            "keyvaultname": "kvdemo",
            "keyvaultobjectnames": "db-password;old-and-new;old-and-new",
            "keyvaultobjecttypes": "secret;secret;secret",
            "keyvaultobjectversions": format!(";;{PINNED}"),
            "keyvaultobjectaliases": ";latest;pinned",
            "rotationpollinterval": "30s",
            "tenantid": TENANT,
            "kubernetes.io/secret/clientid": b64(SP_ID),
            "kubernetes.io/secret/clientsecret": b64(SP_SECRET),
        }),
    )
}

/// Mounts kv-sourced tmpfs volumes at `dirs` in the node's namespace.
fn mount_tmpfs(node: &Node, dirs: &[std::path::PathBuf], size: &str) {
    let script: String = dirs
        .iter()
        .map(|d| {
            format!(
                "mount -t tmpfs -o size={size},mode=0555 kv {} || exit 1\n",
                d.display()
            )
        })
        .collect();
    let mounted = node
        .ns
        .command("sh")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(mounted.success());
}

/// Makes the mounted `dir` a rotating volume as mount leaves it (with a stale db-password) and
/// records it.
fn make_rotating(node: &Node, state: &Path, dir: &Path, interval_secs: u64) {
    let file = |path: &str, bytes: &[u8]| VolumeFile {
        path: path.into(),
        bytes: Zeroizing::new(bytes.to_vec()),
        mode: 0o444,
    };
    let root = keyvault_flexvolume::atomic::open_dir(&node.ns.host_path(dir)).unwrap();
    layout::write_initial(
        rustix::fd::AsFd::as_fd(&root),
        &[
            file("db-password", b"stale"),
            file("latest", b"new value"),
            file("pinned", b"old value"),
        ],
        Perms {
            dir_mode: 0o555,
            gid: None,
        },
        Budget::unlimited(),
    )
    .unwrap();
    let json = options(dir).to_string();
    let spec = VolumeSpec::parse(&json).unwrap();
    Store::new(state)
        .save(&Record::for_volume(
            dir,
            &json,
            &spec,
            std::time::Duration::from_secs(interval_secs),
        ))
        .unwrap();
}

/// One rotating volume.
fn rotating_volume(node: &Node, state: &Path, interval_secs: u64) -> std::path::PathBuf {
    let dir = node.volume_dir("secrets");
    mount_tmpfs(node, std::slice::from_ref(&dir), "1m");
    make_rotating(node, state, &dir, interval_secs);
    dir
}

fn agent(node: &Node, state: &Path, args: &[&str]) -> (String, i32) {
    let out: Output = node
        .ns
        .command(&node.kv)
        .arg("agent")
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env("KV_LOG_FILE", &node.log)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "kv agent wrote to stderr: {stderr}");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        out.status.code().unwrap_or(-1),
    )
}

fn set_secret(s: &mut Value, name: &str, value: Option<&str>) {
    let secrets = s["vaults"][0]["secrets"].as_array_mut().unwrap();
    secrets.retain(|x| x["name"] != name);
    if let Some(v) = value {
        secrets.push(json!({"name": name, "value": v}));
    }
}

fn status(node: &Node, state: &Path) -> Value {
    let (out, code) = agent(node, state, &["status", "--json"]);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(out.lines().next().unwrap_or("null")).unwrap()
}

#[test]
fn agent_once_follows_the_vault_and_keeps_files_on_errors() {
    let mut node = Node::new();
    let state = node.root.join("state");
    let dir = rotating_volume(&node, &state, 30);
    let version_of = |node: &Node| {
        std::fs::read_link(node.ns.host_path(dir.join("..data")))
            .unwrap()
            .to_string_lossy()
            .to_string()
    };
    let first = version_of(&node);

    // The first pass finds the stale file and switches the whole volume.
    let (out, code) = agent(&node, &state, &["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("1 switched, 0 unchanged, 0 failed, 0 collected\n"),
        "{out}"
    );
    assert_eq!(node.file(&dir, "db-password"), b"s3cr3t-P@ssw0rd");
    assert_eq!(node.file(&dir, "latest"), b"new value");
    assert_eq!(node.file(&dir, "pinned"), b"old value");
    let second = version_of(&node);
    assert_ne!(first, second);
    assert!(
        !node.ns.host_path(dir.join(&first)).exists(),
        "the old version is removed"
    );

    // Nothing changed in the vault: nothing is written.
    let (out, _) = agent(&node, &state, &["--once"]);
    assert!(
        out.ends_with("0 switched, 1 unchanged, 0 failed, 0 collected\n"),
        "{out}"
    );
    assert_eq!(version_of(&node), second);

    // A new value, and a newer version of the object one file pins: the pinned file stays.
    let mut s = scenario();
    set_secret(&mut s, "db-password", Some("rotated-P@ss"));
    s["vaults"][0]["secrets"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|x| x["name"] == "old-and-new")
        .unwrap()["versions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "newest value", "version": "aaaabbbbccccddddaaaabbbbccccdddd", "created": 1720000000}));
    node.ns.restart_emulator(s.clone()).unwrap();
    let (out, code) = agent(&node, &state, &["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("switched   "), "{out}");
    assert_eq!(node.file(&dir, "db-password"), b"rotated-P@ss");
    assert_eq!(node.file(&dir, "latest"), b"newest value");
    assert_eq!(node.file(&dir, "pinned"), b"old value");
    let third = version_of(&node);

    // The object is deleted: the pass fails, the files stay, the status says why.
    set_secret(&mut s, "db-password", None);
    node.ns.restart_emulator(s).unwrap();
    let (out, code) = agent(&node, &state, &["--once"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("KV404_NOT_FOUND"), "{out}");
    assert_eq!(version_of(&node), third);
    assert_eq!(node.file(&dir, "db-password"), b"rotated-P@ss");
    let st = status(&node, &state);
    assert_eq!(st["dir"], json!(dir));
    assert_eq!(st["pod"]["namespace"], "demo");
    assert_eq!(st["status"]["last_error"]["code"], "KV404_NOT_FOUND");
    assert_eq!(st["status"]["failures"], 1);
    assert_eq!(st["status"]["switches"], 2);
    let (text, _) = agent(&node, &state, &["status"]);
    assert!(text.contains("last error:   KV404_NOT_FOUND"), "{text}");
    assert!(text.contains("every 30s"), "{text}");

    // The client secret is in the root-only record, never in output or the log.
    for text in [&out, &text, &node.log_text()] {
        assert!(!text.contains(SP_SECRET), "client secret leaked: {text}");
    }
    // `kv logs --pod` tells the volume's rotation story: the switches, then the error.
    let logs = std::process::Command::new(&node.kv)
        .args(["logs", "--pod", "demo/demo-pod", "--file"])
        .arg(&node.log)
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout).to_string();
    let events: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.split("\"event\":\"").nth(1)?.split('"').next())
        .filter(|e| e.starts_with("rotation_"))
        .collect();
    assert_eq!(
        events,
        ["rotation_switched", "rotation_switched", "rotation_failed"],
        "{logs}"
    );
    assert!(logs.contains("\"code\":\"KV404_NOT_FOUND\""), "{logs}");

    // The pod is gone (its tmpfs unmounted): the record is collected.
    let unmounted = node.ns.command("umount").arg(&dir).status().unwrap();
    assert!(unmounted.success());
    let (out, code) = agent(&node, &state, &["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("0 switched, 0 unchanged, 0 failed, 1 collected\n"),
        "{out}"
    );
    let (text, _) = agent(&node, &state, &["status"]);
    assert!(text.starts_with("no rotating volumes recorded"), "{text}");
}

#[test]
fn the_agent_switches_within_the_interval_and_stops_on_sigterm() {
    let mut node = Node::new();
    let state = node.root.join("state");
    // The node's 30s minimum is applied at mount; the agent follows the recorded interval.
    let dir = rotating_volume(&node, &state, 2);
    let mut child = node
        .ns
        .command(&node.kv)
        .args(["agent", "--state-dir"])
        .arg(&state)
        .env("KV_LOG_FILE", &node.log)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let file = node.ns.host_path(dir.join("db-password"));
    let wait_for = |want: &[u8], within: std::time::Duration| {
        let started = std::time::Instant::now();
        loop {
            if std::fs::read(&file).ok().as_deref() == Some(want) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "db-password did not become {:?} within {within:?}",
                String::from_utf8_lossy(want)
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(b"s3cr3t-P@ssw0rd", std::time::Duration::from_secs(10));
    let mut s = scenario();
    set_secret(&mut s, "db-password", Some("rotated-by-the-loop"));
    node.ns.restart_emulator(s).unwrap();
    // Interval 2s, plus the 2s grace of a pass that switched, plus jitter and margin.
    wait_for(b"rotated-by-the-loop", std::time::Duration::from_secs(8));

    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed().as_secs() < 10, "kv agent ignored SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(status.success(), "{status}");
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let log = node.log_text();
    assert!(log.contains("\"event\":\"agent_stopped\""), "{log}");
    assert!(log.contains("\"event\":\"rotation_switched\""), "{log}");
}

/// Scale: 500 rotating volumes (3 objects each, one service principal) refreshed by one
/// `kv agent --once` against the emulator. Asserts every volume was refreshed and the pass fits
/// well inside a 2-minute interval; the figures go to docs/rotation.md.
#[test]
fn five_hundred_volumes_fit_in_one_interval() {
    const N: usize = 500;
    let node = Node::new();
    let state = node.root.join("state");
    let dirs: Vec<std::path::PathBuf> = (0..N).map(|_| node.volume_dir("s")).collect();
    mount_tmpfs(&node, &dirs, "64k");
    for dir in &dirs {
        make_rotating(&node, &state, dir, 120);
    }
    let first = timed_pass(&node, &state, &format!("{N} switched, 0 unchanged"));
    let second = timed_pass(&node, &state, &format!("0 switched, {N} unchanged"));
    // For the figures in docs/rotation.md: KV_ROTATION_FIGURES=<file>.
    if let Some(path) = std::env::var_os("KV_ROTATION_FIGURES") {
        std::fs::write(
            path,
            format!("switching pass: {first}\nunchanged pass: {second}\n"),
        )
        .unwrap();
    }
    // A switching pass includes the 2 s grace; a pass must leave most of a 2-minute interval
    // free.
    for f in [&first, &second] {
        let wall: f64 = f
            .split(' ')
            .nth(1)
            .and_then(|w| w.trim_end_matches('s').parse().ok())
            .unwrap();
        assert!(wall < 60.0, "one pass over {N} volumes: {f}");
    }
    for dir in dirs.iter().step_by(50) {
        assert_eq!(node.file(dir, "db-password"), b"s3cr3t-P@ssw0rd");
    }
}

/// One `kv agent --once` under /usr/bin/time; returns its figures and request counts.
fn timed_pass(node: &Node, state: &Path, want: &str) -> String {
    node.ns.clear_request_log();
    let out = node
        .ns
        .command("/usr/bin/time")
        .args(["-f", "TIME %e %U %S %M"])
        .arg(&node.kv)
        .args(["agent", "--once", "--concurrency", "16", "--state-dir"])
        .arg(state)
        .env("KV_LOG_FILE", &node.log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(want), "{stdout}");
    let figures: Vec<&str> = stderr
        .lines()
        .find_map(|l| l.strip_prefix("TIME "))
        .unwrap_or_else(|| panic!("{stderr}"))
        .split(' ')
        .collect();
    let requests = node.ns.request_log();
    let count = |service: &str| {
        requests
            .iter()
            .filter(|r| r.to_string().contains(service))
            .count()
    };
    format!(
        "wall {}s user {}s sys {}s maxrss {} KiB, requests {} (vault {}, login {})",
        figures[0],
        figures[1],
        figures[2],
        figures[3],
        requests.len(),
        count("vault.azure.net"),
        count("login.microsoftonline.com")
    )
}

/// Names in a volume's root: (version directories, whether `..data_tmp` is there).
fn leftovers(node: &Node, dir: &Path) -> (usize, bool) {
    let names: Vec<String> = std::fs::read_dir(node.ns.host_path(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    (
        names.iter().filter(|n| n.starts_with("..2")).count(),
        names.iter().any(|n| n == "..data_tmp"),
    )
}

#[test]
fn sigkill_of_the_agent_mid_pass_leaves_every_volume_old_or_new() {
    const N: usize = 40;
    let mut node = Node::new();
    let state = node.root.join("state");
    let dirs: Vec<std::path::PathBuf> = (0..N).map(|_| node.volume_dir("s")).collect();
    mount_tmpfs(&node, &dirs, "64k");
    for dir in &dirs {
        make_rotating(&node, &state, dir, 120);
    }
    let mut values = vec!["stale".to_string()];
    let mut interrupted = 0;
    let mut seed = u64::from(std::process::id()) | 1;
    for round in 0..6 {
        let value = format!("value-{round}");
        let mut s = scenario();
        set_secret(&mut s, "db-password", Some(&value));
        node.ns.restart_emulator(s).unwrap();
        values.push(value);
        let mut child = node
            .ns
            .command(&node.kv)
            .args(["agent", "--once", "--concurrency", "4", "--state-dir"])
            .arg(&state)
            .env("KV_LOG_FILE", &node.log)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(std::time::Duration::from_millis(50 + seed % 1500));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever the kill interrupted: every volume shows one complete version.
        let mut seen = std::collections::BTreeSet::new();
        let mut left = false;
        for dir in &dirs {
            let got = String::from_utf8(node.file(dir, "db-password")).unwrap();
            assert!(values.contains(&got), "{}: {got:?}", dir.display());
            assert_eq!(node.file(dir, "latest"), b"new value");
            assert_eq!(node.file(dir, "pinned"), b"old value");
            seen.insert(got);
            left |= leftovers(&node, dir) != (1, false);
        }
        // Killed between volumes, or between a switch and its clean-up.
        if seen.len() > 1 || left {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no kill landed in the middle of a pass");
    // The next pass completes the work and cleans up what the kills left.
    let (out, code) = agent(&node, &state, &["--once"]);
    assert_eq!(code, 0, "{out}");
    for dir in &dirs {
        assert_eq!(node.file(dir, "db-password"), b"value-5");
        assert_eq!(leftovers(&node, dir), (1, false), "{}", dir.display());
    }
}
