//! Fault-injection matrix: every fault the emulator can inject (429 + Retry-After, 500, 503,
//! connection drop, stall past the deadline) on every service kv talks to (IMDS, NMI, AAD,
//! Key Vault), transient and permanent, plus TLS failure (an untrusted CA bundle).
//!
//! Transient faults (a few occurrences) must end in Success with the right files. Permanent
//! faults must end in one clear Failure reply, with the catalogue code first and the service
//! named, within the deadline (+2 s), leaving no mount, an empty `<dir>` and no secret byte on
//! disk (a per-test canary secret is searched for in the node's root, /run/kv and /tmp).
//!
//! Cases run in threads inside one test per service (each case has its own namespace and
//! emulator), so the whole matrix costs about one deadline per service.

#![allow(clippy::print_stderr, clippy::print_stdout)] // test diagnostics

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Short deadline for the permanent cases (node config `deadlineSeconds`).
const DEADLINE_S: u64 = 3;
/// Slack over the deadline a Failure may take (process start, nsenter, teardown).
const SLACK: Duration = Duration::from_secs(2);
/// A budget no mount exhausts: "permanent".
const FOREVER: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pod,
    Node,
    Sp,
}

impl Mode {
    fn options(self) -> Value {
        match self {
            Mode::Pod => json!({"usepodidentity": "true"}),
            Mode::Node => json!({"usevmmanagedidentity": "true"}),
            Mode::Sp => json!({"tenantid": TENANT,
                "kubernetes.io/secret/clientid": b64(SP_ID),
                "kubernetes.io/secret/clientsecret": b64(SP_SECRET)}),
        }
    }
}

/// A value unique to this process and case: it exists only in the emulator's scenario and,
/// on success, in the volume's tmpfs.
fn canary(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "canary-{tag}-{}-{}-Zq9",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn scenario_with(canary: &str, faults: Value) -> Value {
    let mut s = scenario();
    s["vaults"][0]["secrets"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "canary", "value": canary}));
    s["faults"] = faults;
    s
}

fn options(mode: Mode) -> Value {
    let mut o = json!({"keyvaultname": "kvdemo",
        "keyvaultobjectnames": "db-password;canary",
        "keyvaultobjecttypes": "secret;secret"});
    for (k, v) in mode.options().as_object().unwrap() {
        o[k] = v.clone();
    }
    o
}

/// Every file under `root` (no symlinks followed) that contains one of `needles`.
pub fn files_containing(
    root: &Path,
    needles: &[&[u8]],
    skip: &dyn Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if skip(&p) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && m.len() < 4 << 20 {
                // (kv binaries are bigger; a volume's files are at most a few hundred KB)
                if let Ok(bytes) = std::fs::read(&p) {
                    if needles
                        .iter()
                        .any(|n| bytes.windows(n.len()).any(|w| w == *n))
                    {
                        hits.push(p);
                    }
                }
            }
        }
    }
    hits
}

/// No file on disk holds `secret`: under the node's root (kubelet dirs, plugin dir, log) and
/// /run/kv, every place kv writes (minus the emulators' own dirs, which hold scenarios, i.e.
/// the Key Vault's side). Not all of /tmp: it can hold gigabytes (a CI checkout's target dir).
fn secret_on_disk(node: &Node, secret: &str) -> Vec<PathBuf> {
    let skip = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("kv-emulator-"))
    };
    let mut hits = Vec::new();
    for root in [node.root.clone(), PathBuf::from("/run/kv")] {
        hits.extend(files_containing(&root, &[secret.as_bytes()], &skip));
    }
    hits.sort();
    hits.dedup();
    hits
}

struct Case {
    name: String,
    mode: Mode,
    faults: Value,
    /// Extra scenario edits (NMI bindings).
    edit: Option<fn(&mut Value)>,
    deadline_s: Option<u64>,
    /// `None` = Success; else (code, words of which the message must contain one).
    expect: Option<(&'static [&'static str], &'static [&'static str])>,
    /// Run kv with this CA bundle instead of the emulator's.
    ca_override: Option<PathBuf>,
    /// A state of the scenario (not a fault) that must show in the request log: (endpoint,
    /// status, at least this many answers), e.g. NMI's 404 while the binding is pending.
    answered: Option<(&'static str, u16, usize)>,
}

/// Builds the case's node (namespace, emulator, plugin dir with its own kv copy).
///
/// Nodes are built one after the other before any case runs: a kv copy being written while
/// another thread forks would leak its write descriptor into that child, and exec of the copy
/// would then fail with ETXTBSY ("Text file busy").
fn prepare(case: Case) -> (Case, Node, String) {
    let secret = canary(&case.name.replace(' ', "_"));
    let mut s = scenario_with(&secret, case.faults.clone());
    if let Some(edit) = case.edit {
        edit(&mut s);
    }
    let config = match case.deadline_s {
        Some(d) => json!({"deadlineSeconds": d}),
        None => json!({}),
    };
    let node = Node::with(s, config);
    (case, node, secret)
}

fn run_case((case, node, secret): (Case, Node, String)) -> Result<String, String> {
    let dir = node.volume_dir("v");
    let started = Instant::now();
    let c = match &case.ca_override {
        None => node.mount(&dir, options(case.mode)),
        Some(ca) => {
            // `ns.command` sets SSL_CERT_FILE through `env`; a second `env` overrides it.
            let json = kubelet_options(&dir, options(case.mode)).to_string();
            let out = node
                .ns
                .command("env")
                .arg(format!("SSL_CERT_FILE={}", ca.display()))
                .arg(&node.kv)
                .arg("mount")
                .arg(&dir)
                .arg(json)
                .env("KV_LOG_FILE", &node.log)
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| e.to_string())?;
            call(out)
        }
    };
    let elapsed = started.elapsed();
    let mut problems = Vec::new();
    match case.expect {
        None => {
            if c.status() != "Success" {
                problems.push(format!("want Success, got {}", c.stdout.trim()));
            } else {
                if node.file(&dir, "canary") != secret.as_bytes() {
                    problems.push("canary file has the wrong content".into());
                }
                if node.file(&dir, "db-password") != b"s3cr3t-P@ssw0rd" {
                    problems.push("db-password has the wrong content".into());
                }
                let u = node.unmount(&dir);
                if u.status() != "Success" {
                    problems.push(format!("unmount: {}", u.stdout.trim()));
                }
            }
        }
        Some((codes, words)) => {
            let msg = c.message();
            if c.status() != "Failure" {
                problems.push(format!("want Failure, got {}", c.stdout.trim()));
            }
            if !codes
                .iter()
                .any(|code| msg.starts_with(&format!("{code}: ")))
            {
                problems.push(format!("want code {codes:?}, got: {msg}"));
            }
            let lower = msg.to_lowercase();
            if !words.iter().any(|w| lower.contains(&w.to_lowercase())) {
                problems.push(format!("message names none of {words:?}: {msg}"));
            }
            // Token services' bodies never reach a Failure (hardening item 3): the emulator's
            // fault bodies carry these texts.
            for body_text in [
                "fault injected",
                "Failed to retrieve",
                "A transient error has occurred",
                "Trace ID",
            ] {
                if msg.contains(body_text) {
                    problems.push(format!("a service's body ({body_text:?}) in: {msg}"));
                }
            }
            let limit = Duration::from_secs(case.deadline_s.unwrap_or(60)) + SLACK;
            if elapsed >= limit {
                problems.push(format!("took {elapsed:?}, limit {limit:?}"));
            }
            if c.code != 0 {
                problems.push(format!("exit code {}", c.code));
            }
        }
    }
    if let Some(t) = node.mount_type(&dir) {
        problems.push(format!("{} still mounted ({t})", dir.display()));
    }
    let host = node.ns.host_path(&dir);
    if host.exists() && std::fs::read_dir(&host).map(|d| d.count()).unwrap_or(0) != 0 {
        problems.push(format!("{} is not empty", dir.display()));
    }
    // The fault must have fired: a case whose injection never happened proves nothing.
    let log = node.ns.request_log();
    for f in case.faults.as_array().into_iter().flatten() {
        let endpoint = f["endpoint"].as_str().unwrap_or("");
        let fired = log
            .iter()
            .filter(|r| r["endpoint"] == endpoint && r.get("fault").is_some())
            .count() as u64;
        let count = f["count"].as_u64().unwrap_or(1);
        let ok = if count >= FOREVER {
            fired >= 1
        } else {
            fired == count
        };
        if !ok {
            problems.push(format!(
                "fault {f} fired {fired} times (want {})",
                if count >= FOREVER {
                    "at least once".to_string()
                } else {
                    count.to_string()
                }
            ));
        }
    }
    if let Some((endpoint, status, at_least)) = case.answered {
        let seen = log
            .iter()
            .filter(|r| r["endpoint"] == endpoint && r["status"] == status)
            .count();
        if seen < at_least {
            problems.push(format!(
                "{endpoint} answered {status} {seen} times, want at least {at_least}"
            ));
        }
    }
    let on_disk = secret_on_disk(&node, &secret);
    if !on_disk.is_empty() {
        problems.push(format!("secret bytes on disk: {on_disk:?}"));
    }
    for leaked in [secret.as_str(), "s3cr3t-P@ssw0rd", SP_SECRET, "eyJ"] {
        if c.stdout.contains(leaked) || node.log_text().contains(leaked) {
            problems.push(format!("{leaked:?} in the reply or the log"));
        }
    }
    let summary = format!(
        "{}: {:?} {} in {:?}",
        case.name,
        case.mode,
        c.stdout.trim(),
        elapsed
    );
    if problems.is_empty() {
        Ok(summary)
    } else {
        Err(format!("{summary}\n    {}", problems.join("\n    ")))
    }
}

/// Runs the cases concurrently, reports every failing one.
fn run_all(cases: Vec<Case>) {
    let prepared: Vec<_> = cases.into_iter().map(prepare).collect();
    let handles: Vec<_> = prepared
        .into_iter()
        .map(|c| {
            let name = c.0.name.clone();
            (name, std::thread::spawn(move || run_case(c)))
        })
        .collect();
    let mut failed = Vec::new();
    for (name, h) in handles {
        match h.join() {
            Ok(Ok(summary)) => eprintln!("ok   {summary}"),
            Ok(Err(e)) => failed.push(e),
            Err(p) => failed.push(format!(
                "{name}: panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            )),
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// The injectable faults: (label, fault fields, whether it can be permanent).
fn kinds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "429",
            json!({"action": "status", "status": 429, "retry_after": 1}),
        ),
        ("500", json!({"action": "status", "status": 500})),
        ("503", json!({"action": "status", "status": 503})),
        ("close", json!({"action": "close"})),
    ]
}

fn fault(endpoint: &str, kind: &Value, count: u64) -> Value {
    let mut f = kind.clone();
    f["endpoint"] = json!(endpoint);
    f["count"] = json!(count);
    f
}

type Expect = (&'static [&'static str], &'static [&'static str]);

/// The matrix for one endpoint reached in `mode`: transient (count 2, or one short stall) →
/// Success; permanent (every request, or a stall that never ends) → `permanent(kind)`.
fn matrix(endpoint: &str, mode: Mode, permanent: fn(&str) -> Expect) -> Vec<Case> {
    let mut cases = Vec::new();
    for (label, kind) in kinds() {
        cases.push(Case {
            name: format!("{endpoint} {label} x2"),
            mode,
            faults: json!([fault(endpoint, &kind, 2)]),
            edit: None,
            deadline_s: Some(20),
            expect: None,
            ca_override: None,
            answered: None,
        });
        cases.push(Case {
            name: format!("{endpoint} {label} forever"),
            mode,
            faults: json!([fault(endpoint, &kind, FOREVER)]),
            edit: None,
            deadline_s: Some(DEADLINE_S),
            expect: Some(permanent(label)),
            ca_override: None,
            answered: None,
        });
    }
    cases.push(Case {
        name: format!("{endpoint} stall 800ms x1"),
        mode,
        faults: json!([{"endpoint": endpoint, "count": 1, "action": "stall", "ms": 800}]),
        edit: None,
        deadline_s: Some(20),
        expect: None,
        ca_override: None,
        answered: None,
    });
    cases.push(Case {
        name: format!("{endpoint} stall_forever"),
        mode,
        faults: json!([{"endpoint": endpoint, "count": FOREVER, "action": "stall_forever"}]),
        edit: None,
        deadline_s: Some(DEADLINE_S),
        expect: Some(permanent("stall")),
        ca_override: None,
        answered: None,
    });
    cases
}

/// A permanent answer that is not retried: the Failure says the status, not the body.
fn refused(endpoint: &str, mode: Mode, status: u16, expect: Expect) -> Case {
    Case {
        name: format!("{endpoint} {status}"),
        mode,
        faults: json!([fault(
            endpoint,
            &json!({"action": "status", "status": status}),
            FOREVER
        )]),
        edit: None,
        deadline_s: Some(DEADLINE_S),
        expect: Some(expect),
        ca_override: None,
        answered: None,
    }
}

#[test]
fn imds_faults() {
    let mut cases = matrix("imds", Mode::Node, |kind| match kind {
        "stall" => (&["KV_TIMEOUT"], &["IMDS"]),
        _ => (&["KV_IMDS"], &["IMDS"]),
    });
    cases.push(refused(
        "imds",
        Mode::Node,
        403,
        (&["KV_IMDS"], &["HTTP 403"]),
    ));
    run_all(cases);
}

#[test]
fn nmi_faults() {
    let mut cases = matrix("nmi", Mode::Pod, |kind| match kind {
        "stall" => (&["KV_TIMEOUT"], &["NMI"]),
        _ => (&["KV_NMI"], &["NMI"]),
    });
    cases.push(refused("nmi", Mode::Pod, 400, (&["KV_NMI"], &["HTTP 400"])));
    run_all(cases);
}

#[test]
fn aad_faults() {
    let mut cases = matrix("aad", Mode::Sp, |kind| match kind {
        "stall" => (&["KV_TIMEOUT"], &["AAD"]),
        "close" => (&["KV_NETWORK", "KV_AAD"], &["AAD"]),
        _ => (&["KV_AAD"], &["AAD"]),
    });
    cases.push(refused(
        "aad",
        Mode::Sp,
        400,
        (&["KV_AAD"], &["AADSTS90033"]),
    ));
    run_all(cases);
}

#[test]
fn keyvault_faults() {
    let mut cases = Vec::new();
    for mode in [Mode::Pod, Mode::Node, Mode::Sp] {
        let mut m = matrix("keyvault", mode, |kind| match kind {
            "429" => (&["KV429_THROTTLED"], &["throttl"]),
            "500" | "503" => (&["KV_VAULT"], &["Key Vault"]),
            "close" => (&["KV_NETWORK"], &["vault kvdemo"]),
            _ => (&["KV_TIMEOUT"], &["Key Vault"]),
        });
        // The full matrix on pod identity; the other modes get the permanent half.
        if mode != Mode::Pod {
            m.retain(|c| c.expect.is_some());
        }
        cases.extend(m);
    }
    run_all(cases);
}

/// NMI's own transient states (assignment pending, 403 while MIC assigns) are polled.
#[test]
fn nmi_pending_and_forbidden() {
    fn pending(s: &mut Value) {
        s["nmi"]["bindings"][0]["pending_calls"] = json!(3);
        s["nmi"]["bindings"][0]["pending_hold_ms"] = json!(100);
    }
    fn forever_pending(s: &mut Value) {
        s["nmi"]["bindings"][0]["pending_ms"] = json!(600_000);
    }
    fn forbidden(s: &mut Value) {
        s["nmi"]["bindings"][0]["forbidden"] = json!(true);
    }
    let case = |name: &str,
                edit: fn(&mut Value),
                expect: Option<Expect>,
                answered: Option<(&'static str, u16, usize)>| Case {
        name: name.into(),
        mode: Mode::Pod,
        faults: json!([]),
        edit: Some(edit),
        deadline_s: Some(DEADLINE_S),
        expect,
        ca_override: None,
        answered,
    };
    run_all(vec![
        case("nmi pending x3", pending, None, Some(("nmi", 404, 3))),
        case(
            "nmi pending forever",
            forever_pending,
            Some((&["KV_NMI_NO_IDENTITY"], &["AzureIdentityBinding"])),
            Some(("nmi", 404, 2)),
        ),
        case(
            "nmi forbidden",
            forbidden,
            Some((&["KV_NMI"], &["NMI"])),
            Some(("nmi", 403, 2)),
        ),
    ]);
}

#[test]
fn tls_failure_is_a_network_error_naming_the_certificate() {
    let tmp = std::env::temp_dir().join(format!("kv-faults-ca-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let ca = other_ca(&tmp);
    let mut cases = Vec::new();
    for mode in [Mode::Pod, Mode::Node, Mode::Sp] {
        cases.push(Case {
            name: format!("tls {mode:?}"),
            mode,
            faults: json!([]),
            edit: None,
            deadline_s: Some(DEADLINE_S),
            // IMDS and NMI are plain HTTP: the vault's handshake fails; for a service principal
            // AAD's fails too, and either may be reported first.
            expect: Some((&["KV_NETWORK"], &["certificate", "tls", "issuer"])),
            ca_override: Some(ca.clone()),
            answered: None,
        });
    }
    run_all(cases);
    let _ = std::fs::remove_dir_all(&tmp);
}
