//! `kv install`: the installer DaemonSet's command, run on real directories. The binary under
//! test is copied into a temp dir first so the file `kv install` copies is known.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Held while a file is open for writing and while a child is forked: a child forked while
/// another thread writes an executable would hold its fd and make exec fail with ETXTBSY.
static FORK_LOCK: Mutex<()> = Mutex::new(());

fn spawn(cmd: &mut Command) -> Child {
    let _g = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    cmd.spawn().expect("spawn")
}

fn output(cmd: &mut Command) -> Output {
    spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))
        .wait_with_output()
        .unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    let _g = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    std::fs::write(path, bytes).unwrap();
}

struct Tmp(PathBuf);

impl Tmp {
    fn new() -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "kv-install-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the kv under test at `<tmp>/<name>/kv`, optionally with bytes appended (an ELF
/// with trailing bytes still runs, but is a different build as far as install can tell).
fn kv_copy(tmp: &Tmp, name: &str, extra: &[u8]) -> PathBuf {
    let dir = tmp.0.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_kv")).unwrap();
    bytes.extend_from_slice(extra);
    let p = dir.join("kv");
    write(&p, &bytes);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn install(kv: &Path, args: &[&str]) -> Run {
    let out = output(Command::new(kv).arg("install").args(args));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn plugin(tmp: &Tmp) -> PathBuf {
    let p = tmp.0.join("plugins");
    std::fs::create_dir_all(&p).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn installs_into_azure_kv_and_second_install_is_a_no_op() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    let target = plugin(&tmp);
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    let installed = target.join("azure~kv/kv");
    let version = format!("kv {} (", env!("CARGO_PKG_VERSION"));
    assert!(
        r.stdout.starts_with(&format!("installed {version}")),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains(&format!("to {}", installed.display())),
        "{}",
        r.stdout
    );
    let dir_meta = std::fs::metadata(target.join("azure~kv")).unwrap();
    assert_eq!(dir_meta.mode() & 0o777, 0o755);
    let meta = std::fs::metadata(&installed).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&kv).unwrap()
    );
    // Only kv: no temp files left, no kv.json without --config.
    let names: Vec<String> = std::fs::read_dir(target.join("azure~kv"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert_eq!(names, ["kv"]);
    // The installed copy works as kubelet runs it.
    let init = output(Command::new(&installed).arg("init"));
    assert!(String::from_utf8_lossy(&init.stdout).contains("\"status\":\"Success\""));

    std::thread::sleep(Duration::from_millis(20));
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("is up to date"), "{}", r.stdout);
    let again = std::fs::metadata(&installed).unwrap();
    assert_eq!(
        again.ino(),
        meta.ino(),
        "an identical install replaced the file"
    );
    assert_eq!(again.mtime_nsec(), meta.mtime_nsec());
    assert_eq!(again.ctime_nsec(), meta.ctime_nsec());

    // A different build replaces it (a new inode, by rename).
    let other = kv_copy(&tmp, "image2", b"\0another build");
    let r = install(&other, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.starts_with("installed "), "{}", r.stdout);
    assert_ne!(std::fs::metadata(&installed).unwrap().ino(), meta.ino());
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&other).unwrap()
    );
}

#[test]
fn replacement_is_atomic_under_concurrent_exec() {
    let tmp = Tmp::new();
    let a = kv_copy(&tmp, "a", b"");
    let b = kv_copy(&tmp, "b", &[0x5a; 65536]);
    let target = plugin(&tmp);
    let r = install(&a, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    let installed = target.join("azure~kv/kv");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let installed = installed.clone();
        std::thread::spawn(move || {
            let mut runs = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let out = output(Command::new(&installed).arg("init").stdin(Stdio::null()));
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.starts_with("{\"status\":\"Success\""),
                    "exec #{runs} of a file being replaced failed: {out:?}"
                );
                runs += 1;
            }
            runs
        })
    };
    let installs = 20;
    for i in 0..installs {
        let from = if i % 2 == 0 { &b } else { &a };
        let r = install(from, &["--target-dir", s(&target)]);
        assert_eq!(r.code, 0, "{}", r.stdout);
        assert!(r.stdout.starts_with("installed "), "{}", r.stdout);
    }
    stop.store(true, Ordering::SeqCst);
    let runs = reader
        .join()
        .expect("the reader saw a partial or non-executable kv");
    assert!(runs >= 5, "the reader ran only {runs} times");
    // installs alternated b, a, ...: a is installed last.
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(&a).unwrap()
    );
    let dots: Vec<_> = std::fs::read_dir(target.join("azure~kv"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "kv")
        .collect();
    assert!(dots.is_empty(), "left behind: {dots:?}");
}

#[test]
fn wait_stays_up_and_exits_zero_promptly_on_sigterm_and_sigint() {
    for (signal, name) in [
        (rustix::process::Signal::TERM, "SIGTERM"),
        (rustix::process::Signal::INT, "SIGINT"),
    ] {
        let tmp = Tmp::new();
        let kv = kv_copy(&tmp, "image", b"");
        let target = plugin(&tmp);
        let mut child = spawn(
            Command::new(&kv)
                .args(["install", "--target-dir", s(&target), "--wait"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        // The "waiting" line is printed once the handlers are in place.
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut seen = String::new();
        while !seen.contains("waiting for SIGTERM") {
            let mut line = String::new();
            let n = std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
            assert!(n > 0, "kv install --wait exited early: {seen}");
            seen.push_str(&line);
        }
        assert!(seen.starts_with("installed kv "), "{seen}");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "--wait did not stay up"
        );
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let sent = Instant::now();
        rustix::process::kill_process(pid, signal).unwrap();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(5),
                "still running after {name}"
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "took {:?} to exit on {name}",
            sent.elapsed()
        );
        assert_eq!(status.code(), Some(0), "{name}: {status:?}");
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        assert!(rest.contains(&format!("{name} received")), "{rest}");
        assert!(
            target.join("azure~kv/kv").exists(),
            "kv must stay installed after {name}"
        );
    }
}

#[test]
fn wait_reinstalls_the_config_when_the_configmap_changes() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    let target = plugin(&tmp);
    let config = tmp.0.join("kv-config.json");
    write(&config, br#"{"deadlineSeconds": 60}"#);
    let mut child = spawn(
        Command::new(&kv)
            .args([
                "install",
                "--target-dir",
                s(&target),
                "--config",
                s(&config),
            ])
            .args(["--wait", "--config-poll-seconds", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let installed = target.join("azure~kv/kv.json");
    let wait_for = |want: &[u8]| {
        let start = Instant::now();
        while std::fs::read(&installed).ok().as_deref() != Some(want) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "kv.json is {:?}",
                std::fs::read_to_string(&installed)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(br#"{"deadlineSeconds": 60}"#);
    write(&config, br#"{"deadlineSeconds": 30}"#);
    wait_for(br#"{"deadlineSeconds": 30}"#);
    // A bad edit keeps the last good config.
    write(&config, br#"{"deadlineSecs": 5}"#);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        br#"{"deadlineSeconds": 30}"#
    );
    assert!(child.try_wait().unwrap().is_none(), "a bad edit stopped it");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn missing_and_non_directory_targets_are_clear_errors() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    let missing = tmp.0.join("no/such/dir");
    let r = install(&kv, &["--target-dir", s(&missing)]);
    assert_eq!(r.code, 1);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("does not exist"), "{}", r.stdout);
    assert!(r.stdout.contains(s(&missing)), "{}", r.stdout);
    assert!(!missing.exists());

    let file = tmp.0.join("a-file");
    write(&file, b"x");
    let r = install(&kv, &["--target-dir", s(&file)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("is not a directory"), "{}", r.stdout);

    // azure~kv itself a file.
    let target = plugin(&tmp);
    write(&target.join("azure~kv"), b"x");
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("not a directory"), "{}", r.stdout);

    // Without --target-dir: a usage error.
    let r = install(&kv, &[]);
    assert_eq!(r.code, 2, "{}", r.stdout);
    assert!(r.stdout.contains("--target-dir"), "{}", r.stdout);
}

/// kubelet runs what is in azure~kv as root: a driver dir that is a symlink, not root's, or
/// writable by others is refused, and nothing is written into it or through it.
#[test]
fn driver_dir_that_is_a_symlink_or_not_root_0755_is_refused() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");

    // A symlink to an elsewhere dir that would otherwise pass every check.
    let target = plugin(&tmp);
    let elsewhere = tmp.0.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&elsewhere, target.join("azure~kv")).unwrap();
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    assert!(r.stdout.contains("is a symlink"), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);

    // Group- or world-writable, or another mode than 0755.
    for mode in [0o775, 0o777, 0o700] {
        let target = plugin(&tmp);
        let dir = target.join("azure~kv");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let r = install(&kv, &["--target-dir", s(&target)]);
        assert_eq!(r.code, 1, "mode {mode:o}: {}", r.stdout);
        assert!(
            r.stdout.contains(&format!("mode {mode:04o}")),
            "{}",
            r.stdout
        );
        assert!(r.stdout.contains("root-owned 0755"), "{}", r.stdout);
        assert!(!dir.join("kv").exists());
        std::fs::remove_dir(&dir).unwrap();
    }

    // Not root's.
    let target = plugin(&tmp);
    let dir = target.join("azure~kv");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(1000), Some(0)).unwrap();
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stdout.contains("owned by uid 1000"), "{}", r.stdout);
    assert!(!dir.join("kv").exists());

    // Root-owned 0755, made beforehand (as kubelet's hostPath DirectoryOrCreate does): fine.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert_eq!(
        std::fs::metadata(dir.join("kv")).unwrap().mode() & 0o7777,
        0o755
    );
}

/// Runs `kv install --target-dir <dir>` in a private mount namespace where `<dir>` is read-only
/// (nothing leaks into the host's mounts).
fn install_on_read_only(kv: &Path, dir: &Path, setup: &str) -> Run {
    let script = format!("{setup} && exec \"$2\" install --target-dir \"$1\"");
    let out = output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(script)
            .arg("sh")
            .arg(dir)
            .arg(kv),
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

#[test]
fn read_only_target_names_the_plugin_dir_to_use() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    // An empty read-only dir (GKE's /usr/libexec): creating azure~kv fails.
    let empty = plugin(&tmp);
    let r = install_on_read_only(&kv, &empty, "mount -t tmpfs -o ro kvtest \"$1\"");
    // A read-only dir that already has azure~kv: writing the temp file fails.
    let existing = tmp.0.join("existing");
    std::fs::create_dir_all(existing.join("azure~kv")).unwrap();
    let r2 = install_on_read_only(
        &kv,
        &existing,
        "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\"",
    );
    for r in [r, r2] {
        assert_eq!(r.code, 1, "{} {}", r.stdout, r.stderr);
        assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
        assert!(r.stdout.contains("read-only file system"), "{}", r.stdout);
        assert!(
            r.stdout.contains("/home/kubernetes/flexvolume"),
            "{}",
            r.stdout
        );
    }
    assert_eq!(
        std::fs::read_dir(existing.join("azure~kv"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn config_is_validated_then_installed_atomically() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    let target = plugin(&tmp);
    let config = tmp.0.join("kv.json");
    let good = br#"{"deadlineSeconds": 60, "policy": {"nodeIdentityNamespaces": ["ops"]}}"#;
    write(&config, good);
    let r = install(&kv, &["--target-dir", s(&target), "--config", s(&config)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("installed node config"), "{}", r.stdout);
    let installed = target.join("azure~kv/kv.json");
    assert_eq!(std::fs::read(&installed).unwrap(), good);
    assert_eq!(
        std::fs::metadata(&installed).unwrap().mode() & 0o7777,
        0o644
    );
    let r = install(&kv, &["--target-dir", s(&target), "--config", s(&config)]);
    assert!(r.stdout.contains("kv.json is up to date"), "{}", r.stdout);

    // Malformed, unknown key, bad value: non-zero, nothing replaced (not even kv).
    let other = kv_copy(&tmp, "image2", b"\0another build");
    for bad in [
        &b"{"[..],
        br#"{"deadlineSecs": 5}"#,
        br#"{"deadlineSeconds": 0}"#,
    ] {
        write(&config, bad);
        let r = install(
            &other,
            &["--target-dir", s(&target), "--config", s(&config)],
        );
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
        assert!(r.stdout.contains("is invalid"), "{}", r.stdout);
        assert!(r.stdout.contains(s(&config)), "{}", r.stdout);
        assert_eq!(std::fs::read(&installed).unwrap(), good);
        assert_eq!(
            std::fs::read(target.join("azure~kv/kv")).unwrap(),
            std::fs::read(&kv).unwrap()
        );
    }
    let r = install(
        &kv,
        &[
            "--target-dir",
            s(&target),
            "--config",
            s(&tmp.0.join("nope.json")),
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("does not exist"), "{}", r.stdout);
    assert_eq!(std::fs::read(&installed).unwrap(), good);
}

#[test]
fn legacy_binary_is_removed_only_with_the_flag() {
    let tmp = Tmp::new();
    let kv = kv_copy(&tmp, "image", b"");
    let target = plugin(&tmp);
    let dir = target.join("azure~kv");
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = dir.join("azurekeyvault-flexvolume");
    write(&legacy, b"v0.0.17 go binary");
    write(&dir.join("kv"), b"#!/bin/sh\n# v0.0.17 wrapper\n");

    let r = install(&kv, &["--target-dir", s(&target)]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(r.stdout.contains("--remove-legacy"), "{}", r.stdout);
    assert!(legacy.exists(), "removed without --remove-legacy");
    assert_eq!(
        std::fs::read(dir.join("kv")).unwrap(),
        std::fs::read(&kv).unwrap()
    );

    let r = install(&kv, &["--target-dir", s(&target), "--remove-legacy"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stdout.contains("removed v0.0.17 leftover"),
        "{}",
        r.stdout
    );
    assert!(!legacy.exists());
    assert!(dir.join("kv").exists(), "--remove-legacy removed kv");
    // Again: nothing to remove, still fine.
    let r = install(&kv, &["--target-dir", s(&target), "--remove-legacy"]);
    assert_eq!(r.code, 0, "{}", r.stdout);
    assert!(dir.join("kv").exists());
}

mod common;

/// Every azure/kv volume in examples/*.yaml mounts with the real binary against the emulator,
/// with its options passed as kubelet passes them (secretRef values, fsGroup, readOnly), inline
/// or through a claim bound to a PersistentVolume (the PV's options and secretRef, the claim's
/// readOnly).
#[test]
fn example_manifests_mount_against_the_emulator() {
    use serde_json::{json, Value};
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut volumes = Vec::new(); // (file, pod name, namespace, options, fsGroup)
    let mut files: Vec<PathBuf> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .collect();
        let find = |kind: &str, name: &str| {
            docs.iter()
                .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
                .unwrap_or_else(|| panic!("{}: no {kind} {name}", file.display()))
                .clone()
        };
        for d in &docs {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
            if d["kind"] != "Namespace" && d["kind"] != "PersistentVolume" {
                assert_ne!(ns, "default", "{}: use a namespace", file.display());
            }
            let (pod, spec) = match d["kind"].as_str() {
                Some("Pod") => (
                    d["metadata"]["name"].as_str().unwrap().to_string(),
                    &d["spec"],
                ),
                Some("Deployment") => (
                    format!(
                        "{}-5f7d8c9b4-x2x7q",
                        d["metadata"]["name"].as_str().unwrap()
                    ),
                    &d["spec"]["template"]["spec"],
                ),
                _ => continue,
            };
            for v in spec["volumes"].as_array().unwrap() {
                // A claim: kubelet mounts its PersistentVolume's flexVolume, read-only when the
                // pod's claim says so.
                let (flex, read_only) = match v["persistentVolumeClaim"]["claimName"].as_str() {
                    Some(claim) => {
                        let pv = find("PersistentVolumeClaim", claim)["spec"]["volumeName"].clone();
                        let pv = find("PersistentVolume", pv.as_str().unwrap());
                        let ro = v["persistentVolumeClaim"]["readOnly"] == true;
                        (pv["spec"]["flexVolume"].clone(), ro)
                    }
                    None => (v["flexVolume"].clone(), v["flexVolume"]["readOnly"] == true),
                };
                if flex["driver"] != "azure/kv" {
                    continue;
                }
                let mut opts = flex["options"].as_object().unwrap().clone();
                if read_only {
                    opts.insert("kubernetes.io/readwrite".into(), json!("ro"));
                }
                if let Some(g) = spec["securityContext"]["fsGroup"].as_u64() {
                    opts.insert(
                        "kubernetes.io/mounterArgs.FsGroup".into(),
                        json!(g.to_string()),
                    );
                }
                if let Some(name) = flex["secretRef"]["name"].as_str() {
                    let s = find("Secret", name);
                    assert_eq!(s["type"], "azure/kv", "{}", file.display());
                    // kubelet reads it from the PV's secretRef namespace, else the pod's.
                    let secret_ns = flex["secretRef"]["namespace"].as_str().unwrap_or(ns);
                    assert_eq!(s["metadata"]["namespace"], secret_ns, "{}", file.display());
                    for (k, val) in s["stringData"].as_object().unwrap() {
                        let mut val = val.as_str().unwrap().to_string();
                        if val.starts_with("REPLACE") {
                            val = common::SP_SECRET.into();
                        }
                        opts.insert(
                            format!("kubernetes.io/secret/{k}"),
                            json!(common::b64(&val)),
                        );
                    }
                }
                opts.insert("kubernetes.io/pod.name".into(), json!(pod));
                opts.insert("kubernetes.io/pod.namespace".into(), json!(ns));
                let sa = spec["serviceAccountName"].as_str().unwrap_or("default");
                opts.insert("kubernetes.io/serviceAccount.name".into(), json!(sa));
                volumes.push((
                    file.clone(),
                    pod.clone(),
                    ns.to_string(),
                    Value::Object(opts),
                ));
            }
        }
    }
    assert!(volumes.len() >= 5, "{} azure/kv volumes", volumes.len());
    let mut scenario = common::scenario();
    for (_, pod, ns, _) in &volumes {
        scenario["nmi"]["bindings"]
            .as_array_mut()
            .unwrap()
            .push(json!({"namespace": ns, "pod": pod, "client_id": common::POD_MI}));
    }
    // Workload identity: AAD trusts the example's service accounts (the test issuer's tokens).
    for sa in ["kv-demo-workload", "kv-demo-projected"] {
        for client_id in [
            "00000000-0000-0000-0000-00000000a007",
            "00000000-0000-0000-0000-00000000a008",
        ] {
            scenario["federated_credentials"].as_array_mut().unwrap().push(json!({
                "client_id": client_id, "name": format!("{sa}-{client_id}"), "issuer": common::ISSUER,
                "subject": format!("system:serviceaccount:kv-demo:{sa}")}));
        }
    }
    // The operator's policy the node-identity examples ask for (docs/install.md).
    let node = common::Node::with_exact(
        scenario,
        json!({"policy": {"nodeIdentities": {"kv-demo": ["*"]}}}),
    );
    for (file, _, ns, opts) in volumes {
        let dir = node.volume_dir("v");
        if opts.get("useworkloadidentity").is_some() {
            // kubelet has projected the pod's token before the volume is mounted.
            let (volume, name) = opts["workloadidentitytokenpath"]
                .as_str()
                .unwrap_or("azure-identity-token/azure-identity-token")
                .split_once('/')
                .unwrap();
            let sa = opts["kubernetes.io/serviceAccount.name"].as_str().unwrap();
            let token = kv_emulator::issuer::ServiceAccountToken::new(&ns, sa)
                .pod("p", &common::pod_uid(&dir))
                .audiences(&["api://AzureADTokenExchange"]);
            common::project(&dir, volume, name, &common::issuer().mint(&token));
        }
        let rotating = opts.get("rotationpollinterval").is_some();
        let c = node.mount(&dir, opts);
        assert_eq!(c.status(), "Success", "{}: {}", file.display(), c.stdout);
        let names: Vec<String> = if rotating {
            // The `..data` layout: each name is a link into the current version.
            let mut n: Vec<String> = std::fs::read_dir(node.ns.host_path(&dir))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".."))
                .collect();
            n.sort();
            for name in &n {
                assert!(
                    !node.file(&dir, name).is_empty(),
                    "{}: {name}",
                    file.display()
                );
            }
            n
        } else {
            node.files(&dir).into_iter().map(|f| f.0).collect()
        };
        if file.ends_with("nginx-tls.yaml") {
            assert_eq!(names, ["tls", "tls.crt", "tls.key"]);
            let key = node.file(&dir, "tls.key");
            assert!(key.starts_with(b"-----BEGIN PRIVATE KEY-----"));
            let crt = node.file(&dir, "tls.crt");
            assert!(crt.starts_with(b"-----BEGIN CERTIFICATE-----"));
        } else {
            assert!(!names.is_empty(), "{}", file.display());
        }
        node.unmount(&dir).assert_success();
    }
}
