//! Secrets never leak: a representative set of mounts (every identity mode; successes and
//! failures, a wrong client secret among them) runs while a thread snapshots every process's
//! argv. Then kv's log, every reply (stdout and stderr), every argv seen (but kv's own options
//! argument, which kubelet necessarily passes) and the emulator's request log and stderr are
//! searched for every secret value of the scenario, the service principal's client secret (plain
//! and base64) and any token (`eyJ`, the start of every JWT the emulator issues). kv must also
//! never start a child process.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// pid → (ppid, argv) of every process seen.
type Seen = BTreeMap<u32, (u32, Vec<String>)>;

fn snapshot(seen: &mut Seen) {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if raw.is_empty() {
            continue;
        }
        let argv: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        seen.entry(pid)
            .and_modify(|(p, a)| {
                // pids are reused rarely within a test; keep every distinct argv.
                if *a != argv {
                    a.push("\u{0}".into());
                    a.extend(argv.iter().cloned());
                }
                *p = ppid;
            })
            .or_insert((ppid, argv));
    }
}

/// The process is (or became, after nsenter and env exec'd into it) the kv binary. A pid's
/// argv list holds every program it ran, separated by "\0".
fn is_kv(argv: &[String]) -> bool {
    argv.iter().any(|a| a.ends_with("/plugins/azure~kv/kv"))
}

/// Secret values of the scenario (every secret's value and versions' values).
fn secret_values(s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for v in s["vaults"].as_array().unwrap() {
        for sec in v["secrets"].as_array().unwrap() {
            if let Some(x) = sec["value"].as_str() {
                out.push(x.to_string());
            }
            for ver in sec["versions"].as_array().into_iter().flatten() {
                if let Some(x) = ver["value"].as_str() {
                    out.push(x.to_string());
                }
            }
        }
    }
    // The generated `big` secret's pattern, which no other text holds.
    out.push("0123456789abcdef0123456789abcdef".into());
    out.retain(|x| x.len() >= 6);
    out
}

#[test]
fn secrets_and_tokens_never_leak() {
    let mut scenario = scenario();
    // Each mount lasts long enough for the /proc watcher to see it (kv alone takes ~3 ms).
    scenario["latency_ms"] = json!({"imds": 40, "nmi": 40, "aad": 40, "keyvault": 40});
    let node = Node::with(scenario.clone(), json!({}));
    let seen = Arc::new(Mutex::new(Seen::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let seen = seen.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut local = Seen::new();
            while !stop.load(Ordering::Relaxed) {
                snapshot(&mut local);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            *seen.lock().unwrap() = local;
        })
    };
    let objects = json!({"keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;multiline;unicode;big;old-and-new;web-cert;rsa-key",
        "keyvaultobjecttypes": "secret;secret;secret;secret;secret;secret;key"});
    let sp = |secret: &str| {
        json!({"tenantid": TENANT, "kubernetes.io/secret/clientid": b64(SP_ID),
               "kubernetes.io/secret/clientsecret": b64(secret)})
    };
    let cases: Vec<(Value, bool)> = vec![
        (json!({"usepodidentity": "true"}), true),
        (json!({"usevmmanagedidentity": "true"}), true),
        (
            json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": USER_MI}),
            true,
        ),
        (sp(SP_SECRET), true),
        (sp(&format!("{SP_SECRET}\n")), true),
        (sp("wrong-secret-value"), false),
        (sp(&format!("{SP_SECRET}-but-longer")), false),
        (
            json!({"usevmmanagedidentity": "true", "vmmanagedidentityclientid": NO_ACCESS_MI}),
            false,
        ),
        (
            json!({"usepodidentity": "true", "kubernetes.io/pod.name": "unbound-pod"}),
            false,
        ),
        (
            json!({"usepodidentity": "true", "keyvaultobjectnames": "db-password;nope", "keyvaultobjecttypes": "secret;secret"}),
            false,
        ),
        (
            json!({"usepodidentity": "true", "keyvaultobjectnames": "disabled-secret", "keyvaultobjecttypes": "secret"}),
            false,
        ),
    ];
    // A short deadline so the unbound pod fails fast.
    node.set_config(json!({"deadlineSeconds": 3}));
    let mut outputs = Vec::new();
    for (identity, ok) in &cases {
        let dir = node.volume_dir("v");
        let mut o = objects.clone();
        for (k, v) in identity.as_object().unwrap() {
            o[k] = v.clone();
        }
        let c = node.mount(&dir, o);
        assert_eq!(c.status() == "Success", *ok, "{identity}: {}", c.stdout);
        outputs.push(c.stdout.clone());
        outputs.push(c.stderr.clone());
        let u = node.unmount(&dir);
        outputs.push(u.stdout.clone());
        outputs.push(u.stderr.clone());
    }
    // Operator verbs print too.
    for args in [vec!["init"], vec!["--version"]] {
        let out = node.ns.command(&node.kv).args(&args).output().unwrap();
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();

    let kv_pids: Vec<u32> = seen
        .iter()
        .filter(|(_, (_, argv))| is_kv(argv))
        .map(|(pid, _)| *pid)
        .collect();
    assert!(
        kv_pids.len() >= cases.len(),
        "the watcher saw {} kv processes",
        kv_pids.len()
    );
    let children: Vec<_> = seen
        .iter()
        .filter(|(_, (ppid, _))| kv_pids.contains(ppid))
        .collect();
    assert!(
        children.is_empty(),
        "kv started child processes: {children:?}"
    );
    // Every argv, with kv's options argument (argv[3] of `kv mount <dir> <json>`, wherever the
    // launcher put it) dropped.
    let mut argv_text = String::new();
    // This test's processes only (their argv names this node's root): other tests, or a local
    // cluster's kubelet, may run kv with their own secrets on the same machine.
    let root = node.root.to_string_lossy().to_string();
    for (_, argv) in seen
        .values()
        .filter(|(_, argv)| argv.iter().any(|a| a.contains(&root)))
    {
        let mut skip_at = None;
        for (i, a) in argv.iter().enumerate() {
            if a.ends_with("/plugins/azure~kv/kv")
                && argv.get(i + 1).map(String::as_str) == Some("mount")
            {
                skip_at = Some(i + 3);
            }
            if Some(i) != skip_at {
                argv_text.push_str(a);
                argv_text.push('\n');
            }
        }
    }

    let mut needles = secret_values(&scenario);
    needles.push(SP_SECRET.into());
    needles.push(b64(SP_SECRET));
    needles.push(b64(&format!("{SP_SECRET}\n")));
    needles.push("wrong-secret-value".into());
    needles.push(b64("wrong-secret-value"));
    needles.push("eyJ".into());
    let places = [
        ("kv log", node.log_text()),
        ("replies", outputs.join("\n")),
        ("argv of every process", argv_text),
        (
            "emulator request log",
            std::fs::read_to_string(node.ns.request_log_path()).unwrap_or_default(),
        ),
        ("emulator stderr", node.ns.emulator_stderr()),
    ];
    let mut hits = Vec::new();
    for (place, text) in &places {
        assert!(
            !text.is_empty() || *place == "emulator stderr",
            "{place} is empty"
        );
        for n in &needles {
            if text.contains(n.as_str()) {
                hits.push(format!("{n:?} in the {place}"));
            }
        }
    }
    assert!(hits.is_empty(), "leaks:\n{}", hits.join("\n"));
}
