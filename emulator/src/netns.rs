//! Run the emulator on the real Azure addresses inside a private network namespace, for
//! integration tests of the real driver binary (root required).
//!
//! Layout: `ip netns add kvt-<pid>-<n>` (loopback only, plus 169.254.169.254/32 on `lo`), a
//! hosts file in `/etc/netns/<ns>/hosts` resolving every AAD host and every scenario vault to
//! 127.0.0.1, and a *holder* process (`ip netns exec <ns> sh -c 'read _'`, which exits when
//! its stdin — held by the [`Namespace`] — closes, so it dies with the test process) that lives in the
//! netns and in the mount namespace `ip netns exec` creates (where `/etc/hosts` is the netns
//! hosts file). The emulator and every [`Namespace::command`] child join the holder's network
//! and mount namespaces with `nsenter -t <holder> -n -m`, so tmpfs mounts a child makes stay
//! visible (via `/proc/<holder>/mountinfo` and `/proc/<holder>/root/...`) until the
//! [`Namespace`] is dropped. Dropping it kills the emulator and the holder (which destroys the
//! mount namespace and its mounts), deletes the netns and removes `/etc/netns/<ns>`.
//!
//! ```no_run
//! use kv_emulator::netns::{emulator_binary, example_scenario, Namespace};
//! let ns = Namespace::start(emulator_binary().unwrap(), example_scenario()).unwrap();
//! let out = ns.command("curl").args(["-s", "https://kvdemo.vault.azure.net/"]).output().unwrap();
//! println!("{}", ns.mountinfo());
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A netns / emulator setup error.
#[derive(Debug, Clone)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error(msg.into()))
}

/// Where the scenario comes from.
#[derive(Debug, Clone)]
pub enum ScenarioSource {
    Path(PathBuf),
    /// Relative `pem_file` paths in an inline scenario resolve against its `material_dir`
    /// (absolute) — set it, or use absolute paths.
    Value(serde_json::Value),
}

impl From<PathBuf> for ScenarioSource {
    fn from(p: PathBuf) -> Self {
        ScenarioSource::Path(p)
    }
}

impl From<&Path> for ScenarioSource {
    fn from(p: &Path) -> Self {
        ScenarioSource::Path(p.to_path_buf())
    }
}

impl From<&str> for ScenarioSource {
    fn from(p: &str) -> Self {
        ScenarioSource::Path(PathBuf::from(p))
    }
}

impl From<serde_json::Value> for ScenarioSource {
    fn from(v: serde_json::Value) -> Self {
        ScenarioSource::Value(v)
    }
}

/// Deletes `kvt-<pid>-*` namespaces (and their `/etc/netns` dirs and temp dirs) whose process
/// is gone: a test process that was SIGKILLed cannot run its `Drop`.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name.strip_prefix("kvt-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("kv-emulator-{name}")));
    }
}

/// `emulator/scenarios/example.json` of this crate's source tree.
pub fn example_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/example.json")
}

/// The `kv-emulator` binary next to the running test executable
/// (`target/<profile>/deps/test-xxx` → `target/<profile>/kv-emulator`), or `$KV_EMULATOR_BIN`.
pub fn emulator_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("KV_EMULATOR_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return err(format!("KV_EMULATOR_BIN={} does not exist", p.display()));
    }
    let exe = std::env::current_exe().map_err(|e| Error(format!("current_exe: {e}")))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let candidate = dir.join("kv-emulator");
    if candidate.is_file() {
        return Ok(candidate);
    }
    err(format!(
        "kv-emulator binary not found at {}: run cargo build --workspace --bins first",
        candidate.display()
    ))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error(format!("running {cmd}: {e}")))?;
    if !out.status.success() {
        return err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// A private network namespace with the emulator serving the real addresses.
pub struct Namespace {
    name: String,
    dir: PathBuf,
    holder: Option<Child>,
    holder_pid: u32,
    emulator: Option<Child>,
    /// Held open: the holder and the emulator exit when it closes (also if this process dies).
    holder_stdin: Option<std::process::ChildStdin>,
    emulator_stdin: Option<std::process::ChildStdin>,
    emulator_bin: PathBuf,
    extra_hosts: Vec<String>,
    netns_created: bool,
}

impl Namespace {
    /// Set up the namespace and start the emulator with `scenario`.
    pub fn start(
        emulator_bin: impl AsRef<Path>,
        scenario: impl Into<ScenarioSource>,
    ) -> Result<Namespace> {
        Self::start_with_hosts(emulator_bin, scenario, &[])
    }

    /// Like [`start`](Self::start), with extra host names resolved to 127.0.0.1.
    pub fn start_with_hosts(
        emulator_bin: impl AsRef<Path>,
        scenario: impl Into<ScenarioSource>,
        extra_hosts: &[&str],
    ) -> Result<Namespace> {
        if !is_root() {
            return err("kv_emulator::netns needs root (ip netns, nsenter)");
        }
        let emulator_bin = emulator_bin.as_ref().to_path_buf();
        if !emulator_bin.is_file() {
            return err(format!(
                "kv-emulator binary not found at {}: run cargo build --workspace --bins first",
                emulator_bin.display()
            ));
        }
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            remove_stale_namespaces();
        }
        let name = format!("kvt-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("kv-emulator-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("creating {}: {e}", dir.display())))?;
        let mut ns = Namespace {
            name,
            dir,
            holder: None,
            holder_pid: 0,
            emulator: None,
            holder_stdin: None,
            emulator_stdin: None,
            emulator_bin,
            extra_hosts: extra_hosts.iter().map(|s| s.to_string()).collect(),
            netns_created: false,
        };
        // On any error below, Drop tears down what was made.
        let scenario_path = ns.write_scenario(scenario.into())?;
        run("ip", &["netns", "add", &ns.name])?;
        ns.netns_created = true;
        run("ip", &["-n", &ns.name, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "-n",
                &ns.name,
                "addr",
                "add",
                "169.254.169.254/32",
                "dev",
                "lo",
            ],
        )?;
        ns.write_hosts(&scenario_path)?;
        // `read` returns at EOF: the holder dies with us even if we are SIGKILLed.
        let mut holder = Command::new("ip")
            .args(["netns", "exec", &ns.name, "sh", "-c", "read _ignored"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error(format!("starting holder: {e}")))?;
        ns.holder_pid = holder.id();
        ns.holder_stdin = holder.stdin.take();
        ns.holder = Some(holder);
        // Wait until `ip netns exec` has set up the namespaces and exec'd sh.
        let t0 = Instant::now();
        loop {
            let comm = std::fs::read_to_string(format!("/proc/{}/comm", ns.holder_pid))
                .unwrap_or_default();
            if comm.trim() == "sh" {
                break;
            }
            if let Some(h) = ns.holder.as_mut() {
                if let Ok(Some(st)) = h.try_wait() {
                    return err(format!(
                        "holder `ip netns exec {} sh` exited: {st}",
                        ns.name
                    ));
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return err("holder process did not start within 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        ns.start_emulator(&scenario_path)?;
        Ok(ns)
    }

    fn write_scenario(&self, s: ScenarioSource) -> Result<PathBuf> {
        match s {
            ScenarioSource::Path(p) => {
                let p = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir()
                        .map_err(|e| Error(e.to_string()))?
                        .join(p)
                };
                if !p.is_file() {
                    return err(format!("scenario {} not found", p.display()));
                }
                Ok(p)
            }
            ScenarioSource::Value(v) => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst);
                let p = self.dir.join(format!("scenario-{n}.json"));
                std::fs::write(&p, v.to_string())
                    .map_err(|e| Error(format!("writing {}: {e}", p.display())))?;
                Ok(p)
            }
        }
    }

    fn hosts_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    fn write_hosts(&self, scenario: &Path) -> Result<()> {
        let sc = crate::Scenario::from_file(scenario).map_err(Error)?;
        let mut names = vec!["localhost".to_string()];
        names.extend(sc.host_names());
        names.extend(self.extra_hosts.iter().cloned());
        let mut seen = std::collections::HashSet::new();
        names.retain(|n| seen.insert(n.clone()));
        let mut text = String::from("# written by kv_emulator::netns\n");
        for chunk in names.chunks(8) {
            text.push_str(&format!("127.0.0.1 {}\n", chunk.join(" ")));
        }
        text.push_str("::1 localhost ip6-localhost ip6-loopback\n");
        let dir = self.hosts_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error(format!("creating {}: {e}", dir.display())))?;
        // Write in place: the holder's /etc/hosts is a bind mount of this very file.
        std::fs::write(dir.join("hosts"), text).map_err(|e| Error(format!("writing hosts: {e}")))
    }

    fn start_emulator(&mut self, scenario: &Path) -> Result<()> {
        let ready = self.dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let stderr_path = self.dir.join("emulator.stderr");
        let stderr = std::fs::File::create(&stderr_path)
            .map_err(|e| Error(format!("creating stderr file: {e}")))?;
        let cache = std::env::temp_dir().join("kv-emulator-cache");
        let child = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder_pid.to_string())
            .args(["-n", "-m", "--"])
            .arg(&self.emulator_bin)
            .arg("--scenario")
            .arg(scenario)
            .arg("--ca-out")
            .arg(self.ca_path())
            .arg("--request-log")
            .arg(self.request_log_path())
            .arg("--ready-file")
            .arg(&ready)
            .arg("--cache-dir")
            .arg(&cache)
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error(format!("starting emulator via nsenter: {e}")))?;
        let mut child = child;
        self.emulator_stdin = child.stdin.take();
        self.emulator = Some(child);
        let t0 = Instant::now();
        loop {
            if ready.is_file() {
                return Ok(());
            }
            let exited = match self.emulator.as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if exited.is_some() || t0.elapsed() > Duration::from_secs(20) {
                let msg = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                self.stop_emulator();
                return err(format!(
                    "emulator did not become ready ({}): {}",
                    match exited {
                        Some(st) => format!("exited: {st}"),
                        None => "timeout 20 s".into(),
                    },
                    msg.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The netns name (`kvt-<pid>-<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// PID of the holder process (its network and mount namespaces are the test's).
    pub fn holder_pid(&self) -> u32 {
        self.holder_pid
    }

    /// Temp directory with ca.pem, requests.jsonl, emulator.stderr.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn request_log_path(&self) -> PathBuf {
        self.dir.join("requests.jsonl")
    }

    /// `nsenter -t HOLDER -n -m --wd=<cwd> -- env SSL_CERT_FILE=<ca> REQUESTS_CA_BUNDLE=<ca>
    /// CURL_CA_BUNDLE=<ca> KV_EMULATOR_REQUEST_LOG=<log> program`; add the program's arguments to it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid.to_string())
            .args(["-n", "-m"]);
        if let Ok(cwd) = std::env::current_dir() {
            let mut wd = std::ffi::OsString::from("--wd=");
            wd.push(cwd);
            c.arg(wd);
        }
        c.args(["--", "env"])
            .arg(format!("SSL_CERT_FILE={}", self.ca_path().display()))
            .arg(format!("REQUESTS_CA_BUNDLE={}", self.ca_path().display()))
            .arg(format!("CURL_CA_BUNDLE={}", self.ca_path().display()))
            .arg(format!(
                "KV_EMULATOR_REQUEST_LOG={}",
                self.request_log_path().display()
            ))
            .arg(program);
        c
    }

    /// `/proc/<holder>/mountinfo`: the mounts of the test's mount namespace.
    pub fn mountinfo(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.holder_pid)).unwrap_or_default()
    }

    /// A path as seen inside the namespace: `/proc/<holder>/root/<p>`.
    pub fn host_path(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        let rel = p.strip_prefix("/").unwrap_or(p);
        PathBuf::from(format!("/proc/{}/root", self.holder_pid)).join(rel)
    }

    /// The emulator's request log, one JSON value per request.
    pub fn request_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.request_log_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn clear_request_log(&self) {
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.request_log_path())
        {
            let _ = f.set_len(0);
        }
    }

    /// Stderr of the emulator so far.
    pub fn emulator_stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("emulator.stderr")).unwrap_or_default()
    }

    /// Stop the emulator (connections then fail with "connection refused").
    pub fn stop_emulator(&mut self) {
        self.emulator_stdin = None;
        if let Some(mut c) = self.emulator.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restart the emulator with another scenario (hosts file updated in place).
    pub fn restart_emulator(&mut self, scenario: impl Into<ScenarioSource>) -> Result<()> {
        self.stop_emulator();
        let p = self.write_scenario(scenario.into())?;
        self.write_hosts(&p)?;
        self.start_emulator(&p)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.stop_emulator();
        self.holder_stdin = None;
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        if self.netns_created {
            let _ = run("ip", &["netns", "del", &self.name]);
        }
        let _ = std::fs::remove_dir_all(self.hosts_dir());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
