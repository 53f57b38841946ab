//! Test harness: the shipped `kv` binary, run as kubelet runs it, inside a private network
//! namespace where the emulator serves Azure's real addresses.
//!
//! Each [`Node`] copies the binary into its own plugin dir (`<tmp>/plugins/azure~kv/kv`) with
//! its own `kv.json`, so tests are isolated from each other and from the host. kv runs in the
//! namespace's mount namespace; its tmpfs mounts are inspected through `/proc/<holder>/`.

#![allow(dead_code)]

pub mod rot;

use kv_emulator::netns::{emulator_binary, example_scenario, Namespace};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const SYSTEM_MI: &str = "00000000-0000-0000-0000-00000000a001";
pub const USER_MI: &str = "00000000-0000-0000-0000-00000000a002";
pub const POD_MI: &str = "00000000-0000-0000-0000-00000000a003";
pub const SP_ID: &str = "00000000-0000-0000-0000-00000000a004";
pub const SP_SECRET: &str = "emulator-sp-secret";
pub const NO_ACCESS_MI: &str = "00000000-0000-0000-0000-00000000a006";

/// The example scenario as JSON, with its material dir made absolute so it can be edited.
pub fn scenario() -> Value {
    let path = example_scenario();
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = path.parent().unwrap().to_path_buf();
    v["material_dir"] = json!(dir.to_string_lossy());
    v
}

/// The kv binary cargo built for these tests.
pub fn kv_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kv"))
}

/// A node: emulator namespace, plugin dir with kv + kv.json, kubelet root.
pub struct Node {
    pub ns: Namespace,
    pub root: PathBuf,
    pub kv: PathBuf,
    pub log: PathBuf,
}

/// What one kv call printed.
pub struct Call {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
    pub reply: Value,
}

impl Call {
    pub fn status(&self) -> &str {
        self.reply["status"].as_str().unwrap_or("")
    }
    pub fn message(&self) -> &str {
        self.reply["message"].as_str().unwrap_or("")
    }
    #[track_caller]
    pub fn assert_success(&self) {
        assert_eq!(self.status(), "Success", "reply: {}", self.stdout);
    }
    #[track_caller]
    pub fn assert_failure(&self, code: &str) {
        assert_eq!(self.status(), "Failure", "reply: {}", self.stdout);
        assert!(
            self.message().starts_with(&format!("{code}: ")),
            "want {code}, got: {}",
            self.message()
        );
    }
}

impl Node {
    pub fn new() -> Node {
        Node::with(scenario(), json!({}))
    }

    /// A node with this scenario and this `kv.json` (`null` = no file); a config without a
    /// `policy` gets one letting every pod use any node identity, as most tests need (kv
    /// refuses node identities when no policy names them): see [`trusting`].
    pub fn with(scenario: Value, config: Value) -> Node {
        Node::with_exact(scenario, trusting(config))
    }

    /// A node with exactly this `kv.json` (`null` = no file).
    pub fn with_exact(scenario: Value, config: Value) -> Node {
        let ns = Namespace::start(emulator_binary().expect("emulator binary"), scenario)
            .unwrap_or_else(|e| panic!("emulator namespace: {e}"));
        let root = std::env::temp_dir().join(format!(
            "kv-it-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        let plugin = root.join("plugins/azure~kv");
        std::fs::create_dir_all(&plugin).unwrap();
        let kv = plugin.join("kv");
        // Copied by a child process: a write descriptor held by this (multi-threaded) test
        // process would leak into children other tests fork meanwhile, and their exec of this
        // binary would fail with ETXTBSY.
        let copied = std::process::Command::new("cp")
            .arg(kv_binary())
            .arg(&kv)
            .status()
            .expect("cp");
        assert!(copied.success(), "cp kv: {copied}");
        if !config.is_null() {
            std::fs::write(plugin.join("kv.json"), own_state(config, &root).to_string()).unwrap();
        }
        let log = root.join("kv-driver.log");
        Node { ns, root, kv, log }
    }

    /// Rewrites the node config (a config without `policy` gets [`trusting`]'s).
    pub fn set_config(&self, config: Value) {
        self.set_config_exact(trusting(config))
    }

    /// Rewrites the node config exactly (but for [`own_state`]).
    pub fn set_config_exact(&self, config: Value) {
        std::fs::write(
            self.kv.parent().unwrap().join("kv.json"),
            own_state(config, &self.root).to_string(),
        )
        .unwrap();
    }

    /// The node state directory (token cache, slots, throttle records) of this node's kv.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }

    /// A kubelet-style volume dir, created 0750 as kubelet does.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        let uid = format!("{:08x}-uid", NEXT.fetch_add(1, Ordering::SeqCst));
        let dir = self
            .root
            .join(format!("kubelet/pods/{uid}/volumes/azure~kv/{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        dir
    }

    /// Runs kv with these args inside the namespace, as kubelet does (no stdin, env inherited).
    pub fn kv<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Call {
        let out: Output = self
            .ns
            .command(&self.kv)
            .args(args)
            .env("KV_LOG_FILE", &self.log)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run kv");
        call(out)
    }

    /// `kv mount <dir> <options>` with kubelet's own keys added.
    pub fn mount(&self, dir: &Path, options: Value) -> Call {
        let json = kubelet_options(dir, options).to_string();
        self.kv(&[
            std::ffi::OsStr::new("mount"),
            dir.as_os_str(),
            std::ffi::OsStr::new(&json),
        ])
    }

    /// `kv mount <dir> <options>` started in the background (kubelet runs a pod's mounts
    /// concurrently), stdout and stderr piped; the caller waits for or kills it.
    pub fn start_mount(&self, dir: &Path, options: Value) -> std::process::Child {
        let json = kubelet_options(dir, options).to_string();
        self.ns
            .command(&self.kv)
            .arg("mount")
            .arg(dir)
            .arg(json)
            .env("KV_LOG_FILE", &self.log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn kv mount")
    }

    pub fn unmount(&self, dir: &Path) -> Call {
        self.kv(&[std::ffi::OsStr::new("unmount"), dir.as_os_str()])
    }

    /// Whether `dir` is a mount point in the namespace, and its fs type.
    pub fn mount_type(&self, dir: &Path) -> Option<String> {
        let want = dir.to_string_lossy().replace(' ', "\\040");
        self.ns.mountinfo().lines().find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.get(4) == Some(&want.as_str()) {
                let sep = f.iter().position(|x| *x == "-")?;
                Some(f.get(sep + 1)?.to_string())
            } else {
                None
            }
        })
    }

    /// Files in the volume as the pod would see them: (relative path, bytes, mode, gid).
    pub fn files(&self, dir: &Path) -> Vec<(String, Vec<u8>, u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let base = self.ns.host_path(dir);
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                let rel = e
                    .path()
                    .strip_prefix(&base)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                if m.is_dir() {
                    stack.push(e.path());
                } else {
                    out.push((
                        rel,
                        std::fs::read(e.path()).unwrap(),
                        m.mode() & 0o7777,
                        m.gid(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    pub fn file(&self, dir: &Path, name: &str) -> Vec<u8> {
        std::fs::read(self.ns.host_path(dir.join(name))).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Mounts a plain tmpfs with this source at `dir` in the namespace (not kv's volume).
    pub fn mount_foreign_tmpfs(&self, dir: &Path, source: &str) {
        let out = self
            .ns
            .command("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", source])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Key Vault requests answered 200 whose path satisfies `path`, from the request log.
    pub fn vault_gets(&self, path: impl Fn(&str) -> bool) -> usize {
        self.ns
            .request_log()
            .iter()
            .filter(|r| {
                r["endpoint"] == "keyvault"
                    && r["status"] == 200
                    && r["path"].as_str().is_some_and(&path)
            })
            .count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Asserts the invariant after a failure: `dir` is not a mount point and holds nothing.
    #[track_caller]
    pub fn assert_nothing_left(&self, dir: &Path) {
        assert_eq!(
            self.mount_type(dir),
            None,
            "{} is still mounted",
            dir.display()
        );
        let p = self.ns.host_path(dir);
        if p.exists() {
            assert_eq!(
                std::fs::read_dir(&p).unwrap().count(),
                0,
                "{} is not empty",
                dir.display()
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `config` plus, when it names none, a `stateDir` of the node's own (`<root>/state`): tests
/// run in parallel, and a token one test's kv cached in the default /run/kv would be another
/// test's cache hit (the emulators' tokens are valid across instances).
pub fn own_state(mut config: Value, root: &Path) -> Value {
    if let Some(m) = config.as_object_mut() {
        m.entry("stateDir")
            .or_insert(json!(root.join("state").to_string_lossy()));
    }
    config
}

/// `config` plus, when it has no `policy`, the one line that lets every namespace use every
/// node identity (v0.0.17's behaviour, which most tests were written for).
pub fn trusting(mut config: Value) -> Value {
    if let Some(m) = config.as_object_mut() {
        m.entry("policy")
            .or_insert(json!({"nodeIdentities": {"*": ["*"]}}));
    }
    config
}

/// Parses kv's output as kubelet does: stdout+stderr combined must be exactly one JSON object.
pub fn call(out: Output) -> Call {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.is_empty(), "kv wrote to stderr: {stderr:?}");
    let combined = format!("{stdout}{stderr}");
    let reply: Value = serde_json::from_str(combined.trim())
        .unwrap_or_else(|e| panic!("kubelet could not parse {combined:?}: {e}"));
    assert!(reply.is_object(), "not an object: {combined}");
    let status = reply["status"].as_str().unwrap_or("");
    assert!(
        ["Success", "Failure", "Not supported"].contains(&status),
        "status {status:?}"
    );
    Call {
        stdout,
        stderr,
        code: out.status.code().unwrap_or(-1),
        reply,
    }
}

/// Adds the keys kubelet adds to a pod's flexVolume options.
pub fn kubelet_options(dir: &Path, options: Value) -> Value {
    let mut m = options.as_object().cloned().unwrap_or_default();
    let vol = dir.file_name().unwrap().to_string_lossy().to_string();
    let uid = dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    for (k, v) in [
        ("kubernetes.io/fsType", ""),
        ("kubernetes.io/readwrite", "rw"),
        ("kubernetes.io/pvOrVolumeName", vol.as_str()),
        ("kubernetes.io/pod.uid", uid.as_str()),
        ("kubernetes.io/serviceAccount.name", "default"),
    ] {
        m.entry(k.to_string()).or_insert(json!(v));
    }
    m.entry("kubernetes.io/pod.name".to_string())
        .or_insert(json!("demo-pod"));
    m.entry("kubernetes.io/pod.namespace".to_string())
        .or_insert(json!("demo"));
    Value::Object(m)
}

pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `openssl` output for a command over stdin.
pub fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A CA bundle that does not hold the emulator's CA: every TLS handshake fails.
pub fn other_ca(dir: &Path) -> PathBuf {
    let key = dir.join("other-ca.key");
    let crt = dir.join("other-ca.pem");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the emulator",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crt
}

/// The example scenario's workload-identity issuer (its public key is trusted there).
pub const ISSUER: &str = "https://oidc.kv-emulator.test/cluster";

pub fn material(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("emulator/scenarios/material")
        .join(name)
}

pub fn issuer() -> kv_emulator::issuer::TestIssuer {
    kv_emulator::issuer::TestIssuer::from_pem(
        ISSUER,
        &std::fs::read_to_string(material("issuer-key.pem")).unwrap(),
    )
    .unwrap()
}

/// The pod's uid, from a kubelet-style mount dir `<root>/pods/<uid>/volumes/azure~kv/<name>`.
pub fn pod_uid(dir: &Path) -> String {
    dir.ancestors()
        .nth(3)
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string()
}

/// Writes `token` into the pod's projected volume the way kubelet's AtomicWriter does:
/// `..<timestamp>/<file>`, `..data` → that dir, `<file>` → `..data/<file>`.
pub fn project(dir: &Path, volume: &str, file: &str, token: &str) -> PathBuf {
    let vol = dir
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("kubernetes.io~projected")
        .join(volume);
    let stamp = "..2026_11_30_10_00_00.123456789";
    std::fs::create_dir_all(vol.join(stamp)).unwrap();
    std::fs::write(vol.join(stamp).join(file), token).unwrap();
    let _ = std::fs::remove_file(vol.join("..data"));
    std::os::unix::fs::symlink(stamp, vol.join("..data")).unwrap();
    let _ = std::fs::remove_file(vol.join(file));
    std::os::unix::fs::symlink(format!("..data/{file}"), vol.join(file)).unwrap();
    vol
}

/// Makes the emulator serve `scenario` without a restart: writes it to `file` (the scenario
/// file the emulator was started from, owned by the test), sends SIGHUP to the emulator's pid
/// from `<ns dir>/ready` and waits until the ready file's `generation` grows.
pub fn reload(ns: &Namespace, file: &Path, scenario: &Value) {
    let ready = ns.dir().join("ready");
    let read = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&ready).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    let before = read();
    let generation = before["generation"].as_u64().unwrap_or(0);
    let pid = before["pid"]
        .as_u64()
        .expect("emulator pid in the ready file") as i32;
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, scenario.to_string()).unwrap();
    std::fs::rename(&tmp, file).unwrap();
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let started = std::time::Instant::now();
    loop {
        let now = read();
        if let Some(e) = now["reload_error"].as_str() {
            panic!("emulator reload failed: {e}");
        }
        if now["generation"].as_u64().unwrap_or(0) > generation {
            return;
        }
        assert!(
            started.elapsed().as_secs() < 10,
            "emulator did not reload {}",
            file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
