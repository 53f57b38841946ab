//! The rotation agent against pod-controlled content: FIFOs and links planted in a writable
//! volume, policy changes while it runs, bounded state, log and memory, read-only volumes.
//!
//! Each case drives the shipped binary as kubelet and the DaemonSet do (`kv mount`,
//! `kv unmount`, `kv agent`, `kv agent --once`) with a hostile and a victim namespace on one
//! node, and names the item of the tenant-isolation issue it pins.

use crate::common::rot::*;
use crate::common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of a rotating volume of one secret with the node identity, in namespace `ns`.
fn rotating(ns: &str, secret: &str, interval: &str) -> Value {
    json!({
        "keyvaultname": "kvdemo",
        "keyvaultobjectnames": secret,
        "keyvaultobjecttypes": "secret",
        "usevmmanagedidentity": "true",
        "rotationpollinterval": interval,
        "kubernetes.io/pod.namespace": ns,
        "kubernetes.io/pod.name": format!("{ns}-pod"),
    })
}

/// Runs `cmd` and kills it after `limit`: (stdout, exit code, or `None` if it had to be
/// killed).
fn run_within(mut cmd: Command, limit: Duration) -> (String, Option<i32>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            use std::io::Read;
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            return (out, status.code());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (String::new(), None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a long-running agent (SIGTERM, then SIGKILL) when dropped, also on a failed assert.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `file` of the volume holds `want`; how long that took, or `None` after `limit`.
fn wait_for_value(
    rot: &Rot,
    dir: &Path,
    file: &str,
    want: &[u8],
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::fs::read(rot.node.ns.host_path(dir.join(file)))
            .ok()
            .as_deref()
            == Some(want)
        {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A node with `config` and the victim: namespace `victim`'s volume of `victim-secret` (v0),
/// rotating every second.
fn with_victim(config: Value) -> (Rot, std::path::PathBuf) {
    let mut rot = Rot::new();
    rot.config(config);
    rot.set_secret("victim-secret", Some("v0"));
    let victim = rot.node.volume_dir("victim");
    rot.node
        .mount(&victim, rotating("victim", "victim-secret", "1s"))
        .assert_success();
    (rot, victim)
}

/// What a pod does as root in its container: a FIFO in its volume's current version.
fn plant_fifo(rot: &Rot, dir: &Path) {
    let made = rot
        .node
        .ns
        .command("mkfifo")
        .arg(dir.join("..data/x"))
        .status();
    assert!(made.unwrap().success());
}

/// Serves `victim-secret` = `v<round>` and waits until the victim's volume shows it.
fn rotate_victim(rot: &mut Rot, victim: &Path, round: u32, limit: Duration) -> Option<Duration> {
    let value = format!("v{round}");
    rot.set_secret("victim-secret", Some(&value));
    wait_for_value(rot, victim, "victim-secret", value.as_bytes(), limit)
}

/// Waits until the status of the volume at `dir` satisfies `done`; panics after `limit`.
fn wait_status(rot: &Rot, dir: &Path, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let st = rot.status_of(dir);
        if done(&st) {
            return st;
        }
        assert!(started.elapsed() < limit, "after {limit:?}: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Item 2: a FIFO, a huge file and a symlink planted (as root in the pod) in writable rotating
/// volumes of a hostile namespace. Before: `kv agent --once` hung forever in `open` of the
/// FIFO, the long-running agent stopped rotating every volume of the node, and `kv unmount`
/// of that volume hung on its lock.
#[test]
fn planted_fifos_links_and_huge_files_stall_no_one() {
    let (mut rot, victim) = with_victim(json!({"tmpfsMaxBytes": 64 << 20}));
    let mut hostile = Vec::new();
    for kind in ["fifo", "huge", "link"] {
        let dir = rot.node.volume_dir(kind);
        let mut o = rotating("hostile", "db-password", "1s");
        if kind == "huge" {
            o["tmpfssize"] = json!("48Mi");
        }
        rot.node.mount(&dir, o).assert_success();
        hostile.push((kind, dir));
    }
    // What the pod does as root in its container: the version directory is reached through
    // `..data` (root in a container has CAP_DAC_OVERRIDE).
    for (kind, dir) in &hostile {
        let data = rot.node.ns.host_path(dir.join("..data"));
        match *kind {
            "fifo" => plant_fifo(&rot, dir),
            "huge" => std::fs::write(data.join("junk"), vec![7u8; 40 << 20]).unwrap(),
            _ => {
                std::fs::remove_file(data.join("db-password")).unwrap();
                std::os::unix::fs::symlink("/dev/zero", data.join("db-password")).unwrap();
            }
        }
    }

    // `kv agent --once` finishes, switches the victim, and repairs the hostile volumes by
    // writing them a fresh version (tampering counts as a change).
    rot.set_secret("victim-secret", Some("v1"));
    let (out, code) = run_within(rot.agent_command(&["--once"]), Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "kv agent --once did not finish in 30s: {out}"
    );
    assert!(
        out.ends_with("4 switched, 0 unchanged, 0 failed, 0 collected\n"),
        "{out}"
    );
    assert_eq!(rot.node.file(&victim, "victim-secret"), b"v1");
    for (kind, dir) in &hostile {
        assert_eq!(
            rot.node.file(dir, "db-password"),
            b"s3cr3t-P@ssw0rd",
            "{kind}"
        );
        assert_eq!(
            rot.versions_on_disk(dir).0.len(),
            1,
            "{kind}: the tampered version is gone"
        );
    }

    // Again, with the long-running agent: the victim rotates on schedule while the FIFO is
    // back in place, and the hostile volume's unmount finishes within its deadline.
    let (_, fifo) = &hostile[0];
    plant_fifo(&rot, fifo);
    let _agent = Running(rot.spawn_agent(&[]));
    for round in 2..5 {
        let took = rotate_victim(&mut rot, &victim, round, Duration::from_secs(8));
        assert!(
            took.is_some(),
            "round {round}: the victim's volume stopped rotating"
        );
    }
    let mut unmount = rot.node.ns.command(&rot.node.kv);
    unmount
        .arg("unmount")
        .arg(fifo)
        .env("KV_LOG_FILE", &rot.node.log);
    let started = Instant::now();
    let (out, _) = run_within(unmount, Duration::from_secs(15));
    assert!(
        out.contains("\"Success\""),
        "kv unmount of the hostile volume: {out:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(rot.node.mount_type(fifo), None);
}

/// Item 2: volumes whose refresh waits its whole deadline (a workload-identity token that never
/// comes back) do not hold up another namespace's refresh. Before: every pass waited for its
/// slowest volume, so the victim was refreshed once per hostile deadline instead of every
/// second.
#[test]
fn a_slow_hostile_volume_does_not_delay_the_victim() {
    let (mut rot, victim) = with_victim(json!({"deadlineSeconds": 12}));
    let mut hostile = Vec::new();
    for i in 0..4 {
        let dir = rot.node.volume_dir(&format!("slow{i}"));
        let token = issuer().mint(
            // The emulator federates namespace demo's service account `workload`.
            &kv_emulator::issuer::ServiceAccountToken::new("demo", "workload")
                .pod("demo-pod", &pod_uid(&dir))
                .audiences(&["api://AzureADTokenExchange"]),
        );
        let projected = project(&dir, "azure-identity-token", "azure-identity-token", &token);
        rot.node
            .mount(
                &dir,
                json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                       "keyvaultobjecttypes": "secret", "rotationpollinterval": "1s",
                       "useworkloadidentity": "true", "clientid": "00000000-0000-0000-0000-00000000a007",
                       "tenantid": TENANT, "kubernetes.io/serviceAccount.name": "workload",
                       "kubernetes.io/pod.namespace": "demo", "kubernetes.io/pod.name": "demo-pod"}),
            )
            .assert_success();
        // The token never comes back: every refresh of this volume waits its whole deadline.
        std::fs::remove_dir_all(&projected).unwrap();
        hostile.push(dir);
    }
    let _agent = Running(rot.spawn_agent(&["--concurrency", "4"]));
    // Let the hostile volumes' refreshes start (they are due within their 1s interval).
    std::thread::sleep(Duration::from_secs(3));
    let mut lags = Vec::new();
    for round in 1..4 {
        lags.push(rotate_victim(
            &mut rot,
            &victim,
            round,
            Duration::from_secs(6),
        ));
    }
    println!("victim refresh lags: {lags:?}");
    // Every second when nothing else runs; the margin is for a loaded machine. Before the fix
    // a hostile deadline (12 s) passed between two refreshes of the victim.
    assert!(
        lags.iter()
            .all(|l| l.is_some_and(|d| d < Duration::from_secs(5))),
        "the victim waited for the hostile volumes: {lags:?}"
    );
    // The hostile volumes do fail, each on its own deadline.
    wait_status(&rot, &hostile[0], Duration::from_secs(20), |st| {
        st["status"]["last_error"]["code"] == "KV_SA_TOKEN"
    });
}

/// Item 5: the long-running agent follows `kv.json`. Before: it read the file once, so a
/// namespace whose node identity was revoked kept rotating with it.
#[test]
fn a_running_agent_follows_policy_changes_and_fails_closed() {
    let mut rot = Rot::new();
    let policy = |namespaces: &[&str]| {
        let map: serde_json::Map<String, Value> = namespaces
            .iter()
            .map(|ns| (ns.to_string(), json!(["system"])))
            .collect();
        json!({"policy": {"nodeIdentities": map}})
    };
    rot.config(policy(&["team", "other"]));
    rot.set_secret("team-secret", Some("t0"));
    rot.set_secret("other-secret", Some("o0"));
    let team = rot.node.volume_dir("team");
    rot.node
        .mount(&team, rotating("team", "team-secret", "1s"))
        .assert_success();
    let other = rot.node.volume_dir("other");
    rot.node
        .mount(&other, rotating("other", "other-secret", "1s"))
        .assert_success();
    let _agent = Running(rot.spawn_agent(&[]));
    rot.set_secret("team-secret", Some("t1"));
    assert!(wait_for_value(&rot, &team, "team-secret", b"t1", Duration::from_secs(8)).is_some());

    // The operator revokes the namespace's node identity.
    rot.config(policy(&["other"]));
    rot.set_secret("team-secret", Some("t2"));
    rot.set_secret("other-secret", Some("o2"));
    assert!(wait_for_value(&rot, &other, "other-secret", b"o2", Duration::from_secs(8)).is_some());
    // Still rotating after the revocation, before the fix.
    wait_status(&rot, &team, Duration::from_secs(8), |st| {
        st["status"]["last_error"]["code"] == "KV_POLICY"
    });
    assert_eq!(rot.node.file(&team, "team-secret"), b"t1", "the files stay");

    // A broken kv.json stops every refresh (fail closed) and says so in the log.
    std::fs::write(rot.node.kv.parent().unwrap().join("kv.json"), "{ not json").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    rot.set_secret("other-secret", Some("o3"));
    assert!(
        wait_for_value(&rot, &other, "other-secret", b"o3", Duration::from_secs(4)).is_none(),
        "refreshed with an invalid node config"
    );
    let log = rot.node.log_text();
    assert!(log.contains("\"event\":\"agent_config_invalid\""), "{log}");
    // Fixed: refreshes resume with the new policy.
    rot.config(policy(&["other", "team"]));
    assert!(wait_for_value(&rot, &other, "other-secret", b"o3", Duration::from_secs(8)).is_some());
    assert!(wait_for_value(&rot, &team, "team-secret", b"t2", Duration::from_secs(8)).is_some());
}

fn count(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| keep(&e.file_name().to_string_lossy()))
                .count()
        })
        .unwrap_or(0)
}

/// Item 6: `/run/kv` stays bounded whatever pods ask. Before: every failed identity left a
/// token lock file, every slot and volume lock stayed, the volume locks ignored `stateDir`, and
/// pod-identity token entries were never collected.
#[test]
fn churn_of_identities_and_pods_leaves_bounded_state() {
    let rot = Rot::new();
    let node = &rot.node;
    let state = rot.state.clone();
    // Failed service principals, each with another client id.
    for i in 0..20 {
        let dir = node.volume_dir("sp");
        let c = node.mount(
            &dir,
            json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                   "keyvaultobjecttypes": "secret", "tenantid": TENANT,
                   "kubernetes.io/secret/clientid": b64(&format!("00000000-0000-0000-0000-0000000{i:05}")),
                   "kubernetes.io/secret/clientsecret": b64("wrong"),
                   "kubernetes.io/pod.namespace": "hostile"}),
        );
        assert_eq!(c.status(), "Failure");
    }
    // Pods come and go, each with its own pod identity (a token entry per pod uid).
    let mut pods = Vec::new();
    for _ in 0..8 {
        let dir = node.volume_dir("pi");
        node.mount(
            &dir,
            json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                   "keyvaultobjecttypes": "secret", "usepodidentity": "true",
                   "rotationpollinterval": "1m"}),
        )
        .assert_success();
        pods.push(dir);
    }
    let tokens = state.join("tokens");
    let entries = |dir: &Path| count(dir, |n| !n.starts_with('.') && !n.ends_with(".lock"));
    assert!(entries(&tokens) >= 8, "one entry per pod identity");
    for dir in &pods {
        node.unmount(dir).assert_success();
        // kubelet removes the pod's directory after its volumes.
        std::fs::remove_dir_all(dir.ancestors().nth(3).unwrap()).unwrap();
        // Volume locks live under stateDir, and only while held.
        assert!(!Path::new("/run/kv/locks")
            .join(format!("{}.lock", name_of(dir)))
            .exists());
    }
    // The agent sweeps what is left over.
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    let locks = count(&tokens, |n| n.ends_with(".lock"));
    assert_eq!(
        locks,
        0,
        "token lock files left: {:?}",
        std::fs::read_dir(&tokens).unwrap().collect::<Vec<_>>()
    );
    assert_eq!(
        entries(&tokens),
        0,
        "token entries of gone pods are collected"
    );
    assert_eq!(
        count(&state.join("slots"), |_| true),
        0,
        "no slot file outlives its holder"
    );
    assert_eq!(
        count(&state.join("locks"), |_| true),
        0,
        "no volume lock outlives its holder"
    );
    assert_eq!(count(&state.join("volumes"), |_| true), 0);

    // `kv doctor` counts what is there.
    let out = node
        .ns
        .command(&node.kv)
        .args(["doctor"])
        .env("KV_LOG_FILE", &node.log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("0 token entries, 0 lock files, 0 slot files, 0 volume records"),
        "{text}"
    );
}

/// `kv mount` logging where the node config says (without the harness's `KV_LOG_FILE`).
fn mount_logging_to_config(node: &Node, dir: &Path, options: Value) {
    let mut mount = node.ns.command(&node.kv);
    mount
        .arg("mount")
        .arg(dir)
        .arg(kubelet_options(dir, options).to_string())
        .env_remove("KV_LOG_FILE");
    assert!(String::from_utf8_lossy(&mount.output().unwrap().stdout).contains("Success"));
}

/// Item 7: the long-running agent's log rotates by size and follows a rotation done by another
/// process; repeated identical failures of one volume are written once; the log directory kv
/// creates is private. Before: the agent checked the size once per process and kept writing to
/// the renamed file, logged every failure, and created the directory 0755.
#[test]
fn the_agent_log_is_bounded() {
    let mut rot = Rot::new();
    let log_dir = rot.node.root.join("logs/kv");
    let log = log_dir.join("kv-driver.log");
    rot.config(json!({"log": {"path": log, "maxBytes": 6000}}));
    rot.set_secret("victim-secret", Some("v0"));
    let dir = rot.node.volume_dir("v");
    mount_logging_to_config(&rot.node, &dir, rotating("victim", "victim-secret", "1s"));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&log_dir), mode(&log)), (0o700, 0o600));
    let failing = rot.node.volume_dir("failing");
    rot.set_secret("doomed", Some("d0"));
    mount_logging_to_config(&rot.node, &failing, rotating("hostile", "doomed", "1s"));
    rot.set_secret("doomed", None);

    let mut cmd = rot.agent_command(&[]);
    cmd.env_remove("KV_LOG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _agent = Running(cmd.spawn().unwrap());
    // Switches every second fill the log past its cap.
    for round in 1..8 {
        let value = format!("v{round}");
        rot.set_secret("victim-secret", Some(&value));
        assert!(wait_for_value(
            &rot,
            &dir,
            "victim-secret",
            value.as_bytes(),
            Duration::from_secs(8)
        )
        .is_some());
    }
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(
        size <= 6000 + 8192,
        "the agent's log grew to {size} bytes past its 6000-byte cap"
    );
    let rotated = log_dir.join("kv-driver.log.1");
    assert!(rotated.exists());
    // Another process rotates the log: the agent follows the path to the new file.
    std::fs::rename(&log, &rotated).unwrap();
    rot.set_secret("victim-secret", Some("after"));
    assert!(wait_for_value(
        &rot,
        &dir,
        "victim-secret",
        b"after",
        Duration::from_secs(8)
    )
    .is_some());
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("\"event\":\"rotation_switched\""),
        "nothing after the rotation: {text}"
    );
    // The failing volume fails at every retry; its identical failures are written once.
    let status = wait_status(&rot, &failing, Duration::from_secs(30), |st| {
        st["status"]["failures"].as_u64().unwrap_or(0) >= 3
    });
    let failures = status["status"]["failures"].as_u64().unwrap_or(0);
    let all = format!(
        "{}{}",
        std::fs::read_to_string(&rotated).unwrap_or_default(),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let failed = all
        .lines()
        .filter(|l| {
            l.contains("\"event\":\"rotation_failed\"") && l.contains("hostile/hostile-pod")
        })
        .count();
    assert!(
        failed <= 1,
        "{failed} rotation_failed lines for {failures} identical failures"
    );
}

/// Item 7: a rotating volume above the node's per-volume cap is refused at mount with one
/// clear Failure. Before: `rotation.maxVolumeBytes` did not exist (kv.json refused it).
#[test]
fn a_rotating_volume_above_the_cap_is_refused() {
    let mut rot = Rot::new();
    rot.config(json!({"rotation": {"minInterval": "1s", "maxVolumeBytes": 8192}}));
    rot.set_secret("big", Some(&"x".repeat(9000)));
    let dir = rot.node.volume_dir("big");
    let c = rot.node.mount(&dir, rotating("hostile", "big", "1m"));
    c.assert_failure("KV_POLICY");
    assert!(
        c.message().contains("rotation.maxVolumeBytes"),
        "{}",
        c.message()
    );
    rot.node.assert_nothing_left(&dir);
    assert!(!rot.record(&dir).exists());
    // Without rotation it mounts.
    let mut plain = rotating("hostile", "big", "1m");
    plain
        .as_object_mut()
        .unwrap()
        .remove("rotationpollinterval");
    rot.node.mount(&dir, plain).assert_success();
}

/// The mountinfo line of the topmost mount at `path` in the test's namespace.
fn mount_line(node: &Node, path: &Path) -> Option<String> {
    let want = path.to_string_lossy().to_string();
    node.ns
        .mountinfo()
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .map(str::to_string)
}

/// (major:minor, per-mount options, superblock options) of a mountinfo line.
fn mount_fields(line: &str) -> (String, String, String) {
    let f: Vec<&str> = line.split(' ').collect();
    (
        f[2].to_string(),
        f[5].to_string(),
        f.last().unwrap().to_string(),
    )
}

/// Item 11: a read-only volume is read-only per mount for the pod (its superblock stays
/// writable), and the agent writes through a private clone under the state dir, with no
/// `CAP_SYS_ADMIN`. Before: the agent remounted the superblock writable for every due
/// refresh, which needs `CAP_SYS_ADMIN` (and the containerd AppArmor profile denies it).
#[test]
fn read_only_volumes_rotate_through_a_private_clone_without_sys_admin() {
    let mut rot = Rot::new();
    let dir = rot.node.volume_dir("ro");
    let mut o = rotating("team", "db-password", "1m");
    o["kubernetes.io/readwrite"] = json!("ro");
    rot.node.mount(&dir, o).assert_success();
    let (dev, per_mount, superblock) = mount_fields(&mount_line(&rot.node, &dir).unwrap());
    assert!(per_mount.split(',').any(|o| o == "ro"), "{per_mount}");
    assert!(superblock.split(',').any(|o| o == "rw"), "{superblock}");
    let clone = rot.state.join("mnt").join(name_of(&dir));
    let (clone_dev, clone_opts, _) =
        mount_fields(&mount_line(&rot.node, &clone).expect("the agent's clone"));
    assert_eq!(clone_dev, dev, "the clone is the same tmpfs");
    assert!(clone_opts.split(',').any(|o| o == "rw"), "{clone_opts}");
    use std::os::unix::fs::PermissionsExt;
    let mnt_mode = std::fs::metadata(rot.node.ns.host_path(rot.state.join("mnt")))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mnt_mode & 0o777, 0o700);

    // The agent without CAP_SYS_ADMIN, as in its container.
    rot.set_secret("db-password", Some("rotated-read-only"));
    let mut agent = rot.node.ns.command("setpriv");
    agent
        .args([
            "--bounding-set",
            "-sys_admin",
            "--inh-caps",
            "-sys_admin",
            "--",
        ])
        .arg(&rot.node.kv)
        .args(["agent", "--once"])
        .env("KV_LOG_FILE", &rot.node.log);
    let (out, code) = run_within(agent, Duration::from_secs(30));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("switched   "), "{out}");
    assert_eq!(rot.node.file(&dir, "db-password"), b"rotated-read-only");
    let (_, per_mount, superblock) = mount_fields(&mount_line(&rot.node, &dir).unwrap());
    assert!(per_mount.split(',').any(|o| o == "ro"), "{per_mount}");
    assert!(superblock.split(',').any(|o| o == "rw"), "{superblock}");
    // Writing through the pod's mount is refused.
    let e = std::fs::write(rot.node.ns.host_path(dir.join("planted")), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(30), "EROFS: {e}");

    // Unmount removes both mounts.
    rot.node.unmount(&dir).assert_success();
    assert!(mount_line(&rot.node, &clone).is_none());
    assert!(!rot.node.ns.host_path(&clone).exists());

    // A pod whose mount vanished without an unmount: its clone is swept by the next kv call
    // with the rights to unmount (here a mount of another volume).
    let gone = rot.node.volume_dir("gone");
    rot.node
        .mount(&gone, rotating("team", "db-password", "1m"))
        .assert_success();
    let gone_clone = rot.state.join("mnt").join(name_of(&gone));
    assert!(mount_line(&rot.node, &gone_clone).is_some());
    assert!(rot
        .node
        .ns
        .command("umount")
        .arg(&gone)
        .status()
        .unwrap()
        .success());
    let other = rot.node.volume_dir("other");
    rot.node
        .mount(&other, rotating("team", "db-password", "1m"))
        .assert_success();
    assert!(
        mount_line(&rot.node, &gone_clone).is_none(),
        "orphaned clone left mounted"
    );
}
