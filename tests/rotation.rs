//! Rotation end to end: the shipped binary mounts rotating volumes as kubelet calls it
//! (`kv mount` with `rotationpollinterval`), and `kv agent` keeps them in step with the
//! emulator's Key Vault over real HTTP/TLS, in a private network namespace. Secrets change
//! through the emulator's SIGHUP reload of a scenario file the test owns.

mod common;

use common::rot::*;
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The version of `old-and-new` that a pinned file asks for (the example scenario's old one).
const PINNED: &str = "0123456789abcdef0123456789abcdef";

fn sp_options(extra: Value) -> Value {
    let mut o = json!({
        "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;old-and-new;old-and-new",
        "keyvaultobjecttypes": "secret;secret;secret",
        "keyvaultobjectversions": format!(";;{PINNED}"),
        "keyvaultobjectaliases": ";latest;pinned",
        "tenantid": TENANT,
        "kubernetes.io/secret/clientid": b64(SP_ID),
        "kubernetes.io/secret/clientsecret": b64(SP_SECRET),
    });
    for (k, v) in extra.as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

fn size_option(node: &Node, dir: &Path) -> String {
    let want = dir.to_string_lossy().to_string();
    let line = node
        .ns
        .mountinfo()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .unwrap()
        .to_string();
    line.split([' ', ','])
        .find(|o| o.starts_with("size="))
        .unwrap()
        .to_string()
}

#[test]
fn mount_writes_the_switch_layout_and_a_root_only_record() {
    let rot = Rot::new();
    let node = &rot.node;
    let dir = node.volume_dir("secrets");
    // 500ms is below the node's 1s minimum: raised to it.
    let c = node.mount(&dir, sp_options(json!({"rotationpollinterval": "500ms"})));
    c.assert_success();

    // The `..data` layout from the first mount: every name a link into the version dir.
    let version = rot.version(&dir);
    assert!(version.starts_with("..20"), "{version}");
    for (name, want) in [
        ("db-password", &b"s3cr3t-P@ssw0rd"[..]),
        ("latest", b"new value"),
        ("pinned", b"old value"),
    ] {
        let link = node.ns.host_path(dir.join(name));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("..data").join(name)
        );
        assert_eq!(node.file(&dir, name), want, "{name}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&link).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o444, "{name}");
    }
    assert_eq!(node.mount_type(&dir).as_deref(), Some("tmpfs"));
    // Room for two versions of three one-page files, plus the 64 KiB headroom.
    assert_eq!(size_option(node, &dir), "size=88k");

    // The record: root-only, with what the agent needs (the SP credential included).
    use std::os::unix::fs::MetadataExt;
    let volumes = rot.state.join("volumes");
    for d in [&rot.state, &volumes] {
        assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o777, 0o700);
    }
    let record_path = rot.record(&dir);
    let meta = std::fs::metadata(&record_path).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    let record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(record["dir"], json!(dir));
    assert_eq!(record["interval_secs"], 1);
    assert_eq!(record["pod"]["namespace"], "demo");
    assert_eq!(record["pod"]["name"], "demo-pod");
    assert_eq!(record["pod"]["uid"], json!(pod_uid(&dir)));
    assert_eq!(record["pod"]["service_account"], "default");
    let options: Value = serde_json::from_str(record["options"].as_str().unwrap()).unwrap();
    assert_eq!(
        options,
        kubelet_options(&dir, sp_options(json!({"rotationpollinterval": "500ms"})))
    );

    let (text, code) = rot.agent(&["status"]);
    assert_eq!(code, 0);
    assert!(text.starts_with(&format!("{}\n", dir.display())), "{text}");
    assert!(
        text.contains("pod demo/demo-pod (service account default)"),
        "{text}"
    );
    assert!(text.contains("every 1s"), "{text}");
    assert!(text.contains("last success: never"), "{text}");
    assert!(
        text.contains("next refresh: at the agent's next pass"),
        "{text}"
    );
    assert!(
        text.contains(&format!("current:      {version}\n")),
        "{text}"
    );
    assert!(!text.contains(&b64(SP_SECRET)) && !text.contains(SP_SECRET));

    // A mount killed after attaching the tmpfs but before saving the record is retried by
    // kubelet: the repeated call saves it.
    let saved = std::fs::read(&record_path).unwrap();
    std::fs::remove_file(&record_path).unwrap();
    node.mount(&dir, sp_options(json!({"rotationpollinterval": "500ms"})))
        .assert_success();
    assert_eq!(rot.version(&dir), version, "not mounted again");
    let again: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let saved: Value = serde_json::from_slice(&saved).unwrap();
    assert_eq!(
        (&again["dir"], &again["options"]),
        (&saved["dir"], &saved["options"])
    );

    // A volume without rotation keeps plain files and gets no record.
    let plain = node.volume_dir("plain");
    node.mount(&plain, sp_options(json!({}))).assert_success();
    let p = node.ns.host_path(plain.join("db-password"));
    assert!(std::fs::symlink_metadata(&p).unwrap().is_file());
    assert!(!node.ns.host_path(plain.join("..data")).exists());
    assert_eq!(size_option(node, &plain), "size=76k");
    assert!(!rot.record(&plain).exists());
    node.unmount(&plain).assert_success();

    // Unmount removes the record and the status.
    node.unmount(&dir).assert_success();
    node.assert_nothing_left(&dir);
    assert_eq!(std::fs::read_dir(&volumes).unwrap().count(), 0);
    let (text, _) = rot.agent(&["status"]);
    assert!(text.starts_with("no rotating volumes recorded"), "{text}");

    // Bad intervals: one-line Failures, nothing left behind.
    let bad = node.volume_dir("bad");
    let c = node.mount(&bad, sp_options(json!({"rotationpollinterval": "soon"})));
    c.assert_failure("KV_OPTIONS");
    assert!(
        c.message().contains("rotationpollinterval"),
        "{}",
        c.message()
    );
    node.assert_nothing_left(&bad);

    // A node that turns rotation off refuses the option, naming its setting.
    rot.config(json!({"rotation": {"enabled": false}}));
    let c = node.mount(&bad, sp_options(json!({"rotationpollinterval": "2m"})));
    c.assert_failure("KV_POLICY");
    assert!(c.message().contains("rotation.enabled"), "{}", c.message());
    node.assert_nothing_left(&bad);
    assert_eq!(std::fs::read_dir(&volumes).unwrap().count(), 0);

    // A node default rotates every volume.
    rot.config(json!({"rotation": {"defaultInterval": "2m"}}));
    let dflt = node.volume_dir("default");
    node.mount(&dflt, sp_options(json!({}))).assert_success();
    assert!(rot.version(&dflt).starts_with("..20"));
    let record: Value = serde_json::from_slice(&std::fs::read(rot.record(&dflt)).unwrap()).unwrap();
    assert_eq!(record["interval_secs"], 120);
    node.unmount(&dflt).assert_success();
    assert!(!rot.record(&dflt).exists());
    assert!(!node.log_text().contains(SP_SECRET));
}

#[test]
fn agent_once_follows_the_vault_and_keeps_files_on_errors() {
    let mut rot = Rot::new();
    let dir = rot.node.volume_dir("secrets");
    rot.node
        .mount(&dir, sp_options(json!({"rotationpollinterval": "30s"})))
        .assert_success();
    let first = rot.version(&dir);

    // Nothing changed in the vault: nothing is written.
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("0 switched, 1 unchanged, 0 failed, 0 collected\n"),
        "{out}"
    );
    assert_eq!(rot.version(&dir), first);

    // A new value, and a newer version of the object one file pins: the pinned file stays.
    rot.secrets()
        .iter_mut()
        .find(|x| x["name"] == "old-and-new")
        .unwrap()["versions"]
        .as_array_mut()
        .unwrap()
        .push(json!({"value": "newest value", "version": "aaaabbbbccccddddaaaabbbbccccdddd", "created": 1720000000}));
    rot.set_secret("db-password", Some("rotated-P@ss"));
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "switched   {}\n1 switched, 0 unchanged, 0 failed, 0 collected\n",
            dir.display()
        )
    );
    assert_eq!(rot.node.file(&dir, "db-password"), b"rotated-P@ss");
    assert_eq!(rot.node.file(&dir, "latest"), b"newest value");
    assert_eq!(rot.node.file(&dir, "pinned"), b"old value");
    let second = rot.version(&dir);
    assert_ne!(first, second);
    assert_eq!(
        rot.versions_on_disk(&dir),
        (vec![second.clone()], false),
        "old version removed"
    );
    let st = rot.status_of(&dir);
    assert_eq!(st["status"]["switches"], 1);
    assert_eq!(st["current"], json!(second));
    assert!(st["status"]["last_success"].as_u64().is_some());

    // Each failure keeps the files exactly as they are and is reported.
    let keeps = |rot: &Rot, code: &str, failures: u64| {
        let (out, exit) = rot.agent(&["--once"]);
        assert_eq!(exit, 1, "{out}");
        assert!(
            out.contains(&format!("failed     {}: {code}", dir.display())),
            "{out}"
        );
        assert_eq!(rot.version(&dir), second, "{code}");
        assert_eq!(rot.node.file(&dir, "db-password"), b"rotated-P@ss");
        let st = rot.status_of(&dir);
        assert_eq!(st["status"]["last_error"]["code"], code, "{st}");
        assert_eq!(st["status"]["failures"], failures, "{st}");
        let (text, _) = rot.agent(&["status"]);
        assert!(text.contains(&format!("last error:   {code} ")), "{text}");
        assert!(
            text.contains(&format!("({failures} failures in a row)")),
            "{text}"
        );
    };
    // The object is deleted.
    let kept = rot.secrets().clone();
    rot.set_secret("db-password", None);
    keeps(&rot, "KV404_NOT_FOUND", 1);
    // The service principal loses its access.
    *rot.secrets() = kept;
    let policies = rot.scenario["access_policies"].as_array_mut().unwrap();
    let all = policies.clone();
    policies.retain(|p| p["identity"] != SP_ID);
    rot.publish();
    keeps(&rot, "KV403_FORBIDDEN", 2);
    // The vault is unreachable.
    rot.scenario["access_policies"] = json!(all);
    std::fs::write(&rot.scenario_file, rot.scenario.to_string()).unwrap();
    rot.node.ns.stop_emulator();
    keeps(&rot, "KV_NETWORK", 3);
    rot.node
        .ns
        .restart_emulator(rot.scenario_file.clone())
        .unwrap();
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    let st = rot.status_of(&dir);
    assert_eq!(st["status"]["failures"], 0, "a success resets the count");
    assert_eq!(
        st["status"]["last_error"]["code"], "KV_NETWORK",
        "the last error stays visible"
    );

    // The client secret is in the root-only record only: never in output, status or the log.
    let (text, _) = rot.agent(&["status"]);
    let log = rot.node.log_text();
    for t in [&out, &text, &log] {
        assert!(
            !t.contains(SP_SECRET) && !t.contains(&b64(SP_SECRET)),
            "leaked: {t}"
        );
    }
    // One JSON line per failure, with the volume and the code.
    let failed: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("\"event\":\"rotation_failed\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let codes: Vec<&str> = failed.iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["KV404_NOT_FOUND", "KV403_FORBIDDEN", "KV_NETWORK"]);
    assert!(failed.iter().all(|l| l["volume"] == json!(dir)));

    // `kv logs --pod` shows the mount, the switch and the failures of the pod.
    let logs = rot
        .node
        .ns
        .command(&rot.node.kv)
        .args(["logs", "--pod", "demo/demo-pod", "--file"])
        .arg(&rot.node.log)
        .output()
        .unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    for event in ["mounted", "rotation_switched", "rotation_failed"] {
        assert!(
            logs.contains(&format!("\"event\":\"{event}\"")),
            "{event}: {logs}"
        );
    }

    // The pod is gone without an unmount (its tmpfs vanished): the record is collected.
    let unmounted = rot.node.ns.command("umount").arg(&dir).status().unwrap();
    assert!(unmounted.success());
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        out,
        format!(
            "collected  {} (its mount is gone)\n0 switched, 0 unchanged, 0 failed, 1 collected\n",
            dir.display()
        )
    );
    assert!(!rot.record(&dir).exists());
    let (text, _) = rot.agent(&["status"]);
    assert!(text.starts_with("no rotating volumes recorded"), "{text}");
}

/// Three files of one generation: each names the generation, and is large enough (several
/// pages) that a partly written file would show.
fn generation(n: u32) -> Vec<(String, String)> {
    ["rot-a", "rot-b", "rot-c"]
        .iter()
        .map(|name| {
            (
                name.to_string(),
                format!("gen-{n:04}-{name}-{}-end", "x".repeat(9000)),
            )
        })
        .collect()
}

fn gen_of(bytes: &[u8], name: &str) -> u32 {
    let text = std::str::from_utf8(bytes).unwrap_or_else(|_| panic!("{name}: not text"));
    let n: u32 = text
        .strip_prefix("gen-")
        .and_then(|t| t.get(..4))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("{name}: not a generation: {:.40}", text));
    assert_eq!(
        text,
        generation(n)
            .into_iter()
            .find(|(f, _)| f == name)
            .unwrap()
            .1,
        "{name}: partial or foreign content"
    );
    n
}

fn publish_generation(rot: &mut Rot, n: u32) {
    let secrets = rot.secrets();
    secrets.retain(|x| !x["name"].as_str().unwrap().starts_with("rot-"));
    for (name, value) in generation(n) {
        secrets.push(json!({"name": name, "value": value}));
    }
    rot.publish();
}

/// A node serving generation 0 and a volume of its three files, mounted with node identity.
fn generation_volume(interval: &str) -> (Rot, PathBuf, PathBuf) {
    let mut rot = Rot::new();
    publish_generation(&mut rot, 0);
    let dir = rot.node.volume_dir("gen");
    rot.node
        .mount(&dir, generation_options(interval))
        .assert_success();
    let base = rot.node.ns.host_path(&dir);
    (rot, dir, base)
}

fn generation_options(interval: &str) -> Value {
    json!({
        "keyvaultname": "kvdemo",
        "keyvaultobjectnames": "rot-a;rot-b;rot-c",
        "keyvaultobjecttypes": "secret;secret;secret",
        "rotationpollinterval": interval,
        "usevmmanagedidentity": "true",
    })
}

#[test]
fn the_agent_switches_whole_volumes_under_a_reader_and_stops_on_sigterm() {
    let (mut rot, dir, base) = generation_volume("1s");

    // The reader: every file by name (always there, always whole, never older than before),
    // and every file through one open of `..data` (always one generation).
    let stop = AtomicBool::new(false);
    let rounds = 5;
    std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let names = ["rot-a", "rot-b", "rot-c"];
            let mut last = [0u32; 3];
            let (mut reads, mut snapshots) = (0u64, 0u64);
            let mut seen = BTreeSet::new();
            let root = rustix::fs::open(
                &base,
                rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                rustix::fs::Mode::empty(),
            )
            .unwrap();
            while !stop.load(Ordering::SeqCst) {
                for (i, name) in names.iter().enumerate() {
                    let bytes = std::fs::read(base.join(name))
                        .unwrap_or_else(|e| panic!("{name} missing during a switch: {e}"));
                    let n = gen_of(&bytes, name);
                    assert!(n >= last[i], "{name} went back from {} to {n}", last[i]);
                    last[i] = n;
                    reads += 1;
                }
                let data = rustix::fs::openat(
                    &root,
                    "..data",
                    rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::RDONLY,
                    rustix::fs::Mode::empty(),
                )
                .unwrap();
                let gens: BTreeSet<u32> = names
                    .iter()
                    .map(|name| {
                        let fd = rustix::fs::openat(
                            &data,
                            *name,
                            rustix::fs::OFlags::RDONLY,
                            rustix::fs::Mode::empty(),
                        )
                        .unwrap_or_else(|e| panic!("{name} missing in ..data: {e}"));
                        let bytes = std::fs::read(format!(
                            "/proc/self/fd/{}",
                            rustix::fd::AsRawFd::as_raw_fd(&fd)
                        ))
                        .unwrap();
                        gen_of(&bytes, name)
                    })
                    .collect();
                assert_eq!(gens.len(), 1, "one open of ..data saw a mix: {gens:?}");
                seen.extend(gens);
                snapshots += 1;
            }
            (reads, snapshots, seen)
        });

        let mut agent = rot.spawn_agent(&[]);
        let mut took = Vec::new();
        for n in 1..=rounds {
            publish_generation(&mut rot, n);
            let started = Instant::now();
            loop {
                let now = std::fs::read(base.join("rot-c")).unwrap();
                if gen_of(&now, "rot-c") == n {
                    break;
                }
                // Interval 1s, the 2s grace of a pass that switched, jitter: well under 6s.
                assert!(
                    started.elapsed() < Duration::from_secs(6),
                    "generation {n} did not arrive within 6s"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            took.push(started.elapsed());
        }
        stop.store(true, Ordering::SeqCst);
        let (reads, snapshots, seen) = reader.join().unwrap();
        println!("switch latency per round: {took:?}; reader: {reads} file reads, {snapshots} ..data snapshots, generations {seen:?}");
        assert!(seen.len() >= 2, "the reader saw switches: {seen:?}");

        let pid = rustix::process::Pid::from_raw(agent.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = agent.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed().as_secs() < 10, "kv agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let out = agent.wait_with_output().unwrap();
        assert!(status.success(), "{status}");
        assert!(out.stdout.is_empty() && out.stderr.is_empty());
    });
    let st = rot.status_of(&dir);
    assert_eq!(st["status"]["switches"], rounds);
    let log = rot.node.log_text();
    assert!(log.contains("\"event\":\"agent_stopped\""), "{log}");
    assert_eq!(rot.versions_on_disk(&dir).0.len(), 1);
    rot.node.unmount(&dir).assert_success();
}

#[test]
fn sigkill_during_switches_leaves_old_or_new_and_the_next_pass_completes() {
    let (mut rot, dir, base) = generation_volume("1m");
    let consistent = |rot: &Rot| -> u32 {
        let gens: BTreeSet<u32> = ["rot-a", "rot-b", "rot-c"]
            .iter()
            .map(|name| {
                let bytes = std::fs::read(base.join(name))
                    .unwrap_or_else(|e| panic!("{name} missing after a kill: {e}"));
                gen_of(&bytes, name)
            })
            .collect();
        assert_eq!(gens.len(), 1, "mixed generations after a kill: {gens:?}");
        assert!(!rot.version(&dir).is_empty());
        gens.into_iter().next().unwrap()
    };
    let (mut mid_write, mut during_grace, mut before, mut after) = (0, 0, 0, 0);
    let rounds = 16;
    for n in 1..=rounds {
        publish_generation(&mut rot, n);
        let current = rot.version(&dir);
        let mut agent = rot.spawn_agent(&["--once"]);
        if n % 2 == 0 {
            // Kill as soon as a new version directory appears: in the middle of its writing.
            let started = Instant::now();
            while rot.versions_on_disk(&dir).0.len() < 2 && started.elapsed().as_secs() < 5 {
                std::hint::spin_loop();
            }
        } else {
            // Anywhere in the pass's start, fetch, write and switch (the fetch is tens of ms).
            let ms = keyvault_flexvolume::agent::schedule::random_u64() % 150;
            std::thread::sleep(Duration::from_millis(ms));
        }
        let _ = agent.kill();
        let _ = agent.wait();
        let (versions, tmp) = rot.versions_on_disk(&dir);
        let gen = consistent(&rot);
        let switched = rot.version(&dir) != current;
        match (versions.len() > 1 || tmp, switched) {
            (true, false) => mid_write += 1,
            (true, true) => during_grace += 1,
            (false, false) => before += 1,
            (false, true) => after += 1,
        }
        assert!(gen == n || gen == n - 1, "generation {gen} after round {n}");
        // The next pass removes what the killed one left and completes the switch.
        let (out, code) = rot.agent(&["--once"]);
        assert_eq!(code, 0, "{out}");
        assert_eq!(consistent(&rot), n);
        let (versions, tmp) = rot.versions_on_disk(&dir);
        assert_eq!((versions.len(), tmp), (1, false), "{versions:?}");
    }
    println!(
        "{rounds} SIGKILLs: {mid_write} while a new version was being written, {during_grace} after the switch before the old version was removed, {before} before any write, {after} after the pass's work"
    );
    assert!(
        mid_write + during_grace >= 3,
        "too few kills landed mid-switch to test anything: {mid_write} + {during_grace}"
    );
    rot.node.unmount(&dir).assert_success();
}

const WORKLOAD_APP: &str = "00000000-0000-0000-0000-00000000a007";

#[test]
fn every_identity_rotates_and_node_identity_policy_is_rechecked() {
    let mut rot = Rot::new();
    rot.config(json!({"policy": {"nodeIdentities": {"demo": ["system"]}}}));
    let node = &rot.node;
    let one = |extra: Value| {
        let mut o = json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                           "keyvaultobjecttypes": "secret", "rotationpollinterval": "1m"});
        for (k, v) in extra.as_object().unwrap() {
            o[k] = v.clone();
        }
        o
    };
    let sp = node.volume_dir("sp");
    node.mount(
        &sp,
        one(
            json!({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID),
                   "kubernetes.io/secret/clientsecret": b64(SP_SECRET)}),
        ),
    )
    .assert_success();
    let mi = node.volume_dir("mi");
    node.mount(&mi, one(json!({"usevmmanagedidentity": "true"})))
        .assert_success();
    let pod = node.volume_dir("pod");
    node.mount(&pod, one(json!({"usepodidentity": "true"})))
        .assert_success();
    let wi = node.volume_dir("wi");
    let token = |dir: &Path| {
        issuer().mint(
            &kv_emulator::issuer::ServiceAccountToken::new("demo", "workload")
                .pod("demo-pod", &pod_uid(dir))
                .audiences(&["api://AzureADTokenExchange"]),
        )
    };
    project(
        &wi,
        "azure-identity-token",
        "azure-identity-token",
        &token(&wi),
    );
    node.mount(
        &wi,
        one(
            json!({"useworkloadidentity": "true", "clientid": WORKLOAD_APP, "tenantid": TENANT,
                   "kubernetes.io/serviceAccount.name": "workload"}),
        ),
    )
    .assert_success();
    let all = [&sp, &mi, &pod, &wi];
    let identities: Vec<String> = all
        .iter()
        .map(|d| rot.status_of(d)["identity"].as_str().unwrap().to_string())
        .collect();
    println!("identities: {identities:?}");

    rot.set_secret("db-password", Some("rotated-for-everyone"));
    // kubelet refreshed the projected token meanwhile: the agent reads the new one.
    project(
        &wi,
        "azure-identity-token",
        "azure-identity-token",
        &token(&wi),
    );
    rot.node.ns.clear_request_log();
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.ends_with("4 switched, 0 unchanged, 0 failed, 0 collected\n"),
        "{out}"
    );
    for d in all {
        assert_eq!(
            rot.node.file(d, "db-password"),
            b"rotated-for-everyone",
            "{}",
            d.display()
        );
    }
    // Each volume used its own identity again: NMI is asked for the pod at every refresh; the
    // node identity, the service principal and the workload identity reuse the node's cached
    // tokens (their keys still hold the identity); Key Vault saw each identity's token.
    let log = rot.node.ns.request_log();
    let count = |endpoint: &str| {
        log.iter()
            .filter(|l| l["endpoint"] == endpoint && l["status"] == 200)
            .count()
    };
    assert_eq!(
        (count("imds"), count("nmi"), count("aad")),
        (0, 1, 0),
        "{log:?}"
    );
    let mut vault_clients: Vec<&str> = log
        .iter()
        .filter(|l| l["endpoint"] == "keyvault" && l["status"] == 200)
        .filter_map(|l| l["client_id"].as_str())
        .collect();
    vault_clients.sort();
    assert_eq!(
        vault_clients,
        [
            SYSTEM_MI,
            POD_MI,
            SP_ID,
            "00000000-0000-0000-0000-00000000a007"
        ],
        "{log:?}"
    );

    // The namespace loses the right to the node identity: that volume stops rotating (its
    // files stay), the others go on.
    rot.config(json!({"policy": {"nodeIdentities": {"other": ["system"]}}}));
    rot.set_secret("db-password", Some("rotated-again"));
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("failed     {}: KV_POLICY", mi.display())),
        "{out}"
    );
    assert!(
        out.ends_with("3 switched, 0 unchanged, 1 failed, 0 collected\n"),
        "{out}"
    );
    assert_eq!(rot.node.file(&mi, "db-password"), b"rotated-for-everyone");
    for d in [&sp, &pod, &wi] {
        assert_eq!(rot.node.file(d, "db-password"), b"rotated-again");
    }
    assert_eq!(
        rot.status_of(&mi)["status"]["last_error"]["code"],
        "KV_POLICY"
    );
    for d in all {
        rot.node.unmount(d).assert_success();
    }
    assert_eq!(
        std::fs::read_dir(rot.state.join("volumes"))
            .unwrap()
            .count(),
        0
    );
}

/// `n` rotating volumes of one secret, mounted as kubelet mounts them (node identity).
fn many_volumes(rot: &Rot, n: usize, interval: &str) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..n).map(|_| rot.node.volume_dir("s")).collect();
    let options = json!({"keyvaultname": "kvdemo", "keyvaultobjectnames": "db-password",
                         "keyvaultobjecttypes": "secret", "usevmmanagedidentity": "true",
                         "rotationpollinterval": interval});
    std::thread::scope(|s| {
        for chunk in dirs.chunks(n.div_ceil(4)) {
            let options = &options;
            s.spawn(move || {
                for dir in chunk {
                    rot.node.mount(dir, options.clone()).assert_success();
                }
            });
        }
    });
    dirs
}

#[test]
fn sigkill_of_the_agent_mid_pass_leaves_every_volume_old_or_new() {
    const N: usize = 40;
    let mut rot = Rot::new();
    let dirs = many_volumes(&rot, N, "2m");
    let mut values = vec!["s3cr3t-P@ssw0rd".to_string()];
    let mut interrupted = 0;
    for round in 0..6 {
        let value = format!("value-{round}");
        rot.set_secret("db-password", Some(&value));
        values.push(value);
        let mut child = rot.spawn_agent(&["--once", "--concurrency", "4"]);
        let ms = 50 + keyvault_flexvolume::agent::schedule::random_u64() % 1500;
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        child.wait().unwrap();
        // Whatever the kill interrupted: every volume shows one complete version.
        let mut seen = BTreeSet::new();
        let mut left = false;
        for dir in &dirs {
            let got = String::from_utf8(rot.node.file(dir, "db-password")).unwrap();
            assert!(values.contains(&got), "{}: {got:?}", dir.display());
            seen.insert(got);
            let (versions, tmp) = rot.versions_on_disk(dir);
            left |= versions.len() != 1 || tmp;
        }
        // Killed between volumes, or between a switch and its clean-up.
        if seen.len() > 1 || left {
            interrupted += 1;
        }
    }
    assert!(interrupted > 0, "no kill landed in the middle of a pass");
    // The next pass completes the work and cleans up what the kills left.
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    for dir in &dirs {
        assert_eq!(rot.node.file(dir, "db-password"), b"value-5");
        assert_eq!(rot.versions_on_disk(dir).0.len(), 1, "{}", dir.display());
    }
}

/// Scale: 500 rotating volumes mounted by `kv mount` (one secret each, node identity), then
/// one `kv agent --once` that switches them all and one that finds nothing changed. Asserts each
/// pass fits well inside a 2-minute interval; `KV_ROTATION_FIGURES=<file>` writes the figures
/// (CPU, peak RSS, requests) for docs/benchmarks.md.
#[test]
fn five_hundred_volumes_fit_in_one_interval() {
    const N: usize = 500;
    let mut rot = Rot::new();
    let dirs = many_volumes(&rot, N, "2m");
    rot.set_secret("db-password", Some("rotated-at-scale"));
    let first = timed_pass(&rot, &format!("{N} switched, 0 unchanged"));
    let second = timed_pass(&rot, &format!("0 switched, {N} unchanged"));
    if let Some(path) = std::env::var_os("KV_ROTATION_FIGURES") {
        // The long-running agent, as deployed: its CPU over one whole 2-minute interval (plus
        // the jitter), in which every volume is refreshed once more.
        let running = timed_loop(&rot, Duration::from_secs(135));
        std::fs::write(
            path,
            format!("switching pass: {first}\nunchanged pass: {second}\nkv agent for {running}\n"),
        )
        .unwrap();
    }
    println!("switching pass: {first}\nunchanged pass: {second}");
    // A switching pass includes the 2 s grace; a pass must leave most of a 2-minute interval.
    for f in [&first, &second] {
        let wall: f64 = f
            .split(' ')
            .nth(1)
            .and_then(|w| w.trim_end_matches('s').parse().ok())
            .unwrap();
        assert!(wall < 60.0, "one pass over {N} volumes: {f}");
    }
    for dir in dirs.iter().step_by(50) {
        assert_eq!(rot.node.file(dir, "db-password"), b"rotated-at-scale");
    }
}

/// `kv agent` (the loop) for `span`: its CPU (from /proc), peak RSS and requests.
fn timed_loop(rot: &Rot, span: Duration) -> String {
    rot.node.ns.clear_request_log();
    let mut agent = rot.spawn_agent(&[]);
    let stat = || {
        let text = std::fs::read_to_string(format!("/proc/{}/stat", agent.id())).unwrap();
        let after_comm = &text[text.rfind(')').unwrap() + 2..];
        let f: Vec<u64> = after_comm
            .split(' ')
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        // utime and stime (fields 14 and 15 of stat, 11 and 12 after the command).
        (f[11], f[12])
    };
    std::thread::sleep(span);
    let (user, sys) = stat();
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.id())).unwrap();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .to_string();
    let pid = rustix::process::Pid::from_raw(agent.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert!(agent.wait().unwrap().success());
    let requests = rot.node.ns.request_log();
    let tick = 100.0; // USER_HZ
    format!(
        "{}s: user {:.2}s sys {:.2}s maxrss {hwm}, requests {} (keyvault {})",
        span.as_secs(),
        user as f64 / tick,
        sys as f64 / tick,
        requests.len(),
        requests
            .iter()
            .filter(|r| r["endpoint"] == "keyvault")
            .count()
    )
}

/// One `kv agent --once` under /usr/bin/time; returns its figures and request counts.
fn timed_pass(rot: &Rot, want: &str) -> String {
    rot.node.ns.clear_request_log();
    let out = rot
        .node
        .ns
        .command("/usr/bin/time")
        .args(["-f", "TIME %e %U %S %M"])
        .arg(&rot.node.kv)
        .args(["agent", "--once", "--concurrency", "16"])
        .env("KV_LOG_FILE", &rot.node.log)
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
    let requests = rot.node.ns.request_log();
    let count = |endpoint: &str| {
        requests
            .iter()
            .filter(|r| r["endpoint"] == endpoint)
            .count()
    };
    format!(
        "wall {}s user {}s sys {}s maxrss {} KiB, requests {} (keyvault {}, imds {})",
        figures[0],
        figures[1],
        figures[2],
        figures[3],
        requests.len(),
        count("keyvault"),
        count("imds")
    )
}

#[test]
fn a_read_only_volume_rotates_and_stays_read_only() {
    let mut rot = Rot::new();
    let dir = rot.node.volume_dir("ro");
    let options =
        sp_options(json!({"rotationpollinterval": "1m", "kubernetes.io/readwrite": "ro"}));
    rot.node.mount(&dir, options).assert_success();
    let read_only = |rot: &Rot| {
        let want = dir.to_string_lossy().to_string();
        let info = rot.node.ns.mountinfo();
        let line = info
            .lines()
            .rfind(|l| l.split(' ').nth(4) == Some(want.as_str()))
            .unwrap();
        let mount_opts = line.split(' ').nth(5).unwrap();
        let super_opts = line.rsplit(' ').next().unwrap();
        mount_opts.split(',').any(|o| o == "ro") || super_opts.split(',').any(|o| o == "ro")
    };
    assert!(read_only(&rot));
    rot.set_secret("db-password", Some("rotated-read-only"));
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("switched   "), "{out}");
    assert_eq!(rot.node.file(&dir, "db-password"), b"rotated-read-only");
    assert!(read_only(&rot), "read-only again after the switch");
    assert_eq!(rot.status_of(&dir)["read_only"], true);
    // The replaced version is gone by the next pass at the latest.
    let (out, code) = rot.agent(&["--once"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(rot.versions_on_disk(&dir), (vec![rot.version(&dir)], false));
    assert!(read_only(&rot));
    rot.node.unmount(&dir).assert_success();
}
