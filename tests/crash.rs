//! Crashes and races: `kv mount` SIGKILLed at any moment leaves either nothing or a complete
//! volume, the next call recovers; `kv unmount` cleans every leftover state; many concurrent
//! mounts under throttling each get exactly their own files; two mounts of one `<dir>` serialize.

#![allow(clippy::print_stderr, clippy::print_stdout)] // test diagnostics

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A tiny deterministic PRNG (xorshift), seeded per run and printed, so a failing kill time can
/// be replayed with `KV_CRASH_SEED`.
struct Rng(u64);
impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("KV_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("KV_CRASH_SEED={seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const OBJECTS: &str = "db-password;multiline;unicode;web-cert";
const TYPES: &str = "secret;secret;secret;secret";

fn opts() -> Value {
    json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": OBJECTS, "keyvaultobjecttypes": TYPES,
           "usepodidentity": "true"})
}

/// Whether the volume at `dir` is complete and right.
fn assert_complete(node: &Node, dir: &Path) {
    let names: Vec<String> = node.files(dir).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["db-password", "multiline", "unicode", "web-cert"]);
    assert_eq!(node.file(dir, "db-password"), b"s3cr3t-P@ssw0rd");
    assert_eq!(
        node.file(dir, "multiline"),
        b"line one\nline two\r\nline three\n"
    );
    assert!(node
        .file(dir, "web-cert")
        .starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
}

/// Every tmpfs kv made (source `kv`) in the namespace sits at a complete volume; returns them.
fn kv_mounts(node: &Node) -> Vec<String> {
    node.ns
        .mountinfo()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-").unwrap_or(f.len());
            f.get(sep + 1) == Some(&"tmpfs") && f.get(sep + 2) == Some(&"kv")
        })
        .map(|l| l.split(' ').nth(4).unwrap().replace("\\040", " "))
        .collect()
}

/// Files holding the scenario's secret values under the node's root and /run/kv.
fn secrets_on_disk(node: &Node) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    for root in [node.root.clone(), "/run/kv".into()] {
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(e.path());
                } else if m.is_file() && m.len() < 1 << 20 {
                    // (the plugin dir's kv binary copy is the only big file: skipped)
                    let b = std::fs::read(e.path()).unwrap_or_default();
                    for s in [&b"s3cr3t-P@ssw0rd"[..], b"line two\r\n", "密码".as_bytes()] {
                        if b.windows(s.len()).any(|w| w == s) {
                            hits.push(e.path());
                        }
                    }
                }
            }
        }
    }
    hits
}

/// Whether the kv log shows a mount of `dir` that started and never finished: the kill landed
/// in the middle of the mount (not before kv ran, not after it answered).
fn killed_mid_mount(node: &Node, dir: &Path) -> bool {
    let want = dir.to_string_lossy();
    let events: Vec<String> = node
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["dir"] == *want)
        .filter_map(|v| v["event"].as_str().map(str::to_string))
        .collect();
    events.iter().any(|e| e == "mount_start") && !events.iter().any(|e| e == "mounted")
}

/// Starts `kv mount` and SIGKILLs it after `after`; returns whether it had already finished.
fn mount_and_kill(node: &Node, dir: &Path, after: Duration) -> bool {
    let mut child = node.start_mount(dir, opts());
    std::thread::sleep(after);
    // nsenter and env exec, so the child's pid is kv's once it runs.
    let finished = matches!(child.try_wait(), Ok(Some(_)));
    let _ = child.kill();
    let _ = child.wait();
    finished
}

/// After a kill: `<dir>` is either a complete volume or not a mount point and empty; no tmpfs
/// of kv anywhere but complete volumes; no secret on disk. Then the next mount recovers.
fn check_after_kill(node: &Node, dir: &Path, what: &str) {
    match node.mount_type(dir) {
        Some(_) => assert_complete(node, dir),
        None => {
            let p = node.ns.host_path(dir);
            if p.exists() {
                let left: Vec<_> = std::fs::read_dir(&p)
                    .unwrap()
                    .flatten()
                    .map(|e| e.path())
                    .collect();
                assert!(left.is_empty(), "{what}: {} holds {left:?}", dir.display());
            }
        }
    }
    for m in kv_mounts(node) {
        assert_complete(node, Path::new(&m));
    }
    assert_eq!(
        secrets_on_disk(node),
        Vec::<std::path::PathBuf>::new(),
        "{what}"
    );
    // kubelet retries: the next call must succeed with the right files.
    node.mount(dir, opts()).assert_success();
    assert_complete(node, dir);
    node.unmount(dir).assert_success();
    assert_eq!(node.mount_type(dir), None, "{what}");
    assert!(!node.ns.host_path(dir).exists(), "{what}");
}

fn slow_scenario() -> Value {
    let mut s = scenario();
    s["latency_ms"] = json!({"imds": 0, "nmi": 150, "aad": 0, "keyvault": 120});
    s
}

#[test]
fn sigkill_at_random_times_leaves_nothing_or_a_complete_volume() {
    let node = Node::with(slow_scenario(), json!({"deadlineSeconds": 20}));
    // How long a whole mount takes here, to spread kill times over it: the fastest of three
    // (the first mount of a fresh node is slower than the ones that follow, and kill times
    // spread over a slow one would mostly land after the mount finished).
    let full = (0..3)
        .map(|_| {
            let dir = node.volume_dir("calibrate");
            let t = Instant::now();
            node.mount(&dir, opts()).assert_success();
            let took = t.elapsed().as_millis() as u64;
            node.unmount(&dir).assert_success();
            took
        })
        .min()
        .unwrap();
    let mut rng = Rng::new();
    let mut finished = 0;
    let mut mid_mount = 0;
    for i in 0..24 {
        let dir = node.volume_dir("v");
        let ms = rng.below(full + full / 4);
        if mount_and_kill(&node, &dir, Duration::from_millis(ms)) {
            finished += 1;
        }
        if killed_mid_mount(&node, &dir) {
            mid_mount += 1;
        }
        let t = Instant::now();
        check_after_kill(
            &node,
            &dir,
            &format!("iteration {i}, killed after {ms} ms of {full}"),
        );
        eprintln!(
            "iteration {i}: killed after {ms} ms, recovery took {:?}",
            t.elapsed()
        );
    }
    eprintln!("{finished} of 24 mounts had finished before the kill, {mid_mount} were killed mid-mount (full mount {full} ms)");
    // Kill times spread over 1.25 mounts: most must land inside one, or the test tested nothing.
    assert!(
        mid_mount >= 12,
        "only {mid_mount} of 24 kills landed mid-mount (full mount {full} ms)"
    );
}

#[test]
fn sigkill_while_waiting_for_the_token() {
    // NMI holds each pending answer 400 ms, 3 times: kv sits in the token wait.
    let mut s = scenario();
    s["nmi"]["bindings"][0]["pending_calls"] = json!(1000);
    s["nmi"]["bindings"][0]["pending_hold_ms"] = json!(400);
    let mut node = Node::with(s, json!({"deadlineSeconds": 20}));
    let mut dirs = Vec::new();
    for after in [30, 200, 450, 900] {
        let dir = node.volume_dir("v");
        assert!(!mount_and_kill(&node, &dir, Duration::from_millis(after)));
        if after >= 200 {
            // Past process start-up: kv was inside the mount, waiting for the token.
            assert!(killed_mid_mount(&node, &dir), "kill after {after} ms");
        }
        dirs.push(dir);
    }
    // The binding becomes ready: every retried mount recovers.
    node.ns.restart_emulator(scenario()).unwrap();
    for (i, dir) in dirs.iter().enumerate() {
        check_after_kill(&node, dir, &format!("token wait, kill {i}"));
    }
}

#[test]
fn sigkill_while_fetching_from_key_vault() {
    let mut s = scenario();
    s["latency_ms"] = json!({"imds": 0, "nmi": 0, "aad": 0, "keyvault": 700});
    let node = Node::with(s, json!({"deadlineSeconds": 20}));
    let mut mid_mount = 0;
    for after in [100, 400, 800, 1200, 1500] {
        let dir = node.volume_dir("v");
        mount_and_kill(&node, &dir, Duration::from_millis(after));
        if killed_mid_mount(&node, &dir) {
            mid_mount += 1;
        }
        check_after_kill(&node, &dir, &format!("vault fetch, kill after {after} ms"));
    }
    // Each vault request takes 700 ms, a mount at least two of them: the kills up to 1200 ms
    // land inside it.
    assert!(
        mid_mount >= 4,
        "only {mid_mount} of 5 kills landed mid-mount"
    );
}

#[test]
fn unmount_cleans_every_leftover_state() {
    let node = Node::new();
    // A dir with stray files and a sub-directory (an old driver wrote to disk).
    let dir = node.volume_dir("stray");
    let host = node.ns.host_path(&dir);
    std::fs::write(host.join("left-over"), b"x").unwrap();
    std::fs::create_dir(host.join("sub")).unwrap();
    std::fs::write(host.join("sub/file"), b"y").unwrap();
    node.unmount(&dir).assert_success();
    assert!(!host.exists());

    // Something else mounted at the dir: kv refuses to call it the pod's volume; unmount
    // still removes it.
    let dir = node.volume_dir("foreign");
    node.mount_foreign_tmpfs(&dir, "under");
    node.mount(&dir, opts()).assert_failure("KV_MOUNT");
    node.unmount(&dir).assert_success();
    assert_eq!(node.mount_type(&dir), None);
    assert!(!node.ns.host_path(&dir).exists());

    // A stacked double mount: kv's volume with a manual tmpfs on top.
    let dir = node.volume_dir("stacked");
    node.mount(&dir, opts()).assert_success();
    node.mount_foreign_tmpfs(&dir, "over");
    let count = |node: &Node| {
        node.ns
            .mountinfo()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .count()
    };
    assert_eq!(count(&node), 2);
    node.unmount(&dir).assert_success();
    assert_eq!(count(&node), 0);
    assert!(!node.ns.host_path(&dir).exists());

    // A missing dir, and a dir whose parent is missing.
    let dir = node.volume_dir("gone");
    std::fs::remove_dir(node.ns.host_path(&dir)).unwrap();
    node.unmount(&dir).assert_success();
    let deeper = node.root.join("kubelet/pods/nope/volumes/azure~kv/v");
    node.unmount(&deeper).assert_success();

    // A complete volume with a busy file inside still goes away (lazy unmount).
    let dir = node.volume_dir("busy");
    node.mount(&dir, opts()).assert_success();
    let _open = std::fs::File::open(node.ns.host_path(dir.join("db-password"))).unwrap();
    node.unmount(&dir).assert_success();
    assert_eq!(node.mount_type(&dir), None);
}

#[test]
fn fifty_concurrent_mounts_under_throttling_each_get_their_own_files() {
    const N: usize = 50;
    let mut s = scenario();
    for i in 0..N {
        for part in ["a", "b"] {
            s["vaults"][0]["secrets"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": format!("vol{i}-{part}"), "value": format!("value of volume {i} part {part}")}));
        }
    }
    s["faults"] = json!([{"endpoint": "keyvault", "count": 20, "action": "status", "status": 429, "retry_after": 1}]);
    s["latency_ms"] = json!({"imds": 0, "nmi": 20, "aad": 0, "keyvault": 50});
    let node = std::sync::Arc::new(Node::with(s, json!({"deadlineSeconds": 60})));
    let dirs: Vec<_> = (0..N)
        .map(|i| node.volume_dir(&format!("vol{i}")))
        .collect();
    let started = Instant::now();
    let handles: Vec<_> = dirs
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, dir)| {
            let node = node.clone();
            std::thread::spawn(move || {
                node.mount(
                    &dir,
                    json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": format!("vol{i}-a;vol{i}-b"),
                           "keyvaultobjecttypes": "secret;secret",
                           "keyvaultobjectaliases": format!("mine-{i}-a;mine-{i}-b"),
                           "usepodidentity": "true"}),
                )
            })
        })
        .collect();
    let calls: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    eprintln!("{N} mounts in {:?}", started.elapsed());
    for (i, (c, dir)) in calls.iter().zip(&dirs).enumerate() {
        c.assert_success();
        let files = node.files(dir);
        let got: Vec<(String, Vec<u8>)> = files.into_iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            got,
            vec![
                (
                    format!("mine-{i}-a"),
                    format!("value of volume {i} part a").into_bytes()
                ),
                (
                    format!("mine-{i}-b"),
                    format!("value of volume {i} part b").into_bytes()
                ),
            ],
            "volume {i}"
        );
    }
    let throttled = node
        .ns
        .request_log()
        .iter()
        .filter(|r| r["status"] == 429)
        .count();
    assert_eq!(throttled, 20, "the emulator throttled");
    for dir in &dirs {
        node.unmount(dir).assert_success();
    }
}

#[test]
fn two_mounts_of_one_dir_serialize() {
    let mut s = scenario();
    s["latency_ms"] = json!({"imds": 0, "nmi": 100, "aad": 0, "keyvault": 200});
    let node = std::sync::Arc::new(Node::with(s, json!({})));
    for round in 0..3 {
        let dir = node.volume_dir("same");
        node.ns.clear_request_log();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let node = node.clone();
                let dir = dir.clone();
                std::thread::spawn(move || node.mount(&dir, opts()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().assert_success();
        }
        let at_dir = node
            .ns
            .mountinfo()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .count();
        assert_eq!(
            at_dir,
            1,
            "round {round}: stacked mounts at {}",
            dir.display()
        );
        assert_complete(&node, &dir);
        let fetched = node.vault_gets(|p| p.contains("/secrets/db-password"));
        assert_eq!(
            fetched, 1,
            "round {round}: db-password fetched {fetched} times"
        );
        node.unmount(&dir).assert_success();
    }
}
