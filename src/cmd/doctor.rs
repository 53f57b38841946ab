//! `kv doctor`: checks a node the way kv will use it, one line per check with the fix.
//!
//! Every check is read-only for the node: tmpfs is tried as a detached mount that is never
//! attached, and object checks fetch into memory and report sizes, never values.

use crate::auth::{Deadline, Provider, Source};
use crate::cloud::Cloud;
use crate::config::NodeConfig;
use crate::error::Code;
use crate::options::{Identity, ManagedIdentity, TokenFile, VolumeSpec};
use crate::pipeline;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long doctor waits for IMDS or NMI to give a token: long enough for a healthy service,
/// short enough that a missing binding is reported in seconds.
const TOKEN_PROBE: Duration = Duration::from_secs(3);
/// How long doctor waits for DNS + TCP + TLS to AAD or a vault.
const REACH_PROBE: Duration = Duration::from_secs(5);
/// How long doctor waits for a TCP connect to NMI's port.
const CONNECT_PROBE: Duration = Duration::from_secs(2);
/// The most one object's check may take (the node's deadline if shorter).
const OBJECT_PROBE: Duration = Duration::from_secs(10);
/// The clock difference past which AAD's tokens are rejected as not yet valid or expired.
const MAX_CLOCK_SKEW_SECS: i64 = 300;

/// Arguments of `kv doctor`.
#[derive(clap::Args, Debug, Default)]
pub struct DoctorArgs {
    /// The volume to check (token and `get` on each object), as kubelet's options or a pod
    /// manifest.
    #[command(flatten)]
    pub input: super::input::OptionsInput,
    /// The kubelet volume plugin dir; its `azure~kv/kv.json` is the node config checked
    /// (default: the config beside this binary; the install check also looks where the running
    /// kubelet's flags say).
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// NMI port to probe (default: node config, else 2579).
    #[arg(long)]
    pub nmi_port: Option<u16>,
    /// With workload identity: the service-account token to check (default: the pod's
    /// projected token under kubelet's root, found from kubernetes.io/pod.uid).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// kubelet's root dir, where pods' projected tokens are (default: kubelet's --root-dir,
    /// else /var/lib/kubelet).
    #[arg(long, value_name = "DIR")]
    pub kubelet_root: Option<PathBuf>,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Not needed by every volume, or worth a look.
    Warn,
    /// A mount that needs this will fail.
    Fail,
}

struct Report {
    lines: Vec<(Verdict, String, String)>,
    tty: bool,
}

impl Report {
    fn add(&mut self, verdict: Verdict, check: &str, detail: impl Into<String>) {
        let detail = detail.into();
        if self.tty {
            // Progress for a person at a terminal; the report itself goes to stdout at the end.
            let _ = writeln!(std::io::stderr(), "… {check}");
        }
        self.lines.push((verdict, check.to_string(), detail));
    }

    fn render(&self) -> (String, u8) {
        let mut text = String::new();
        for (v, check, detail) in &self.lines {
            let tag = match v {
                Verdict::Pass => "PASS",
                Verdict::Warn => "WARN",
                Verdict::Fail => "FAIL",
            };
            text.push_str(&format!("{tag}  {check:<14} {detail}\n"));
        }
        let failed = self.lines.iter().filter(|l| l.0 == Verdict::Fail).count();
        let warned = self.lines.iter().filter(|l| l.0 == Verdict::Warn).count();
        text.push_str(&format!(
            "{} checks: {} passed, {failed} failed, {warned} warnings\n",
            self.lines.len(),
            self.lines.len() - failed - warned
        ));
        (text, u8::from(failed > 0))
    }
}

/// Plugin dirs of the common distributions, for when kubelet's flag cannot be read.
const PLUGIN_DIRS: &[&str] = &[
    "/usr/libexec/kubernetes/kubelet-plugins/volume/exec",
    "/etc/kubernetes/volumeplugins",
    "/home/kubernetes/flexvolume",
    "/var/lib/kubelet/volumeplugins",
    "/etc/kubernetes/kubelet-plugins/volume/exec",
];

/// Runs `kv doctor`.
pub fn run(args: DoctorArgs) -> (String, u8) {
    let mut r = Report {
        lines: Vec::new(),
        tty: std::io::stderr().is_terminal(),
    };
    check_binary(&mut r);
    let config = check_install_and_config(&mut r, args.plugin_dir.as_deref());
    check_tmpfs(&mut r);
    check_node_state(&mut r, &config);

    let spec = match args.input.read() {
        Ok(None) => None,
        Ok(Some(options)) => {
            match VolumeSpec::parse(&serde_json::Value::Object(options).to_string()) {
                Ok(s) => {
                    r.add(
                        Verdict::Pass,
                        "options",
                        format!(
                            "{} object(s){}, {}",
                            s.objects.len(),
                            match s.selections.len() {
                                0 => String::new(),
                                n => format!(" and {n} selection(s)"),
                            },
                            s.identity.describe()
                        ),
                    );
                    Some(s)
                }
                Err(e) => {
                    r.add(Verdict::Fail, "options", format!("{e}"));
                    None
                }
            }
        }
        Err(e) => {
            r.add(Verdict::Fail, "options", format!("{e}"));
            None
        }
    };
    let spec = spec.map(|s| workload_token(&mut r, &args, s));
    let cloud = match config.cloud(spec.as_ref().and_then(|s| s.cloud.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            r.add(Verdict::Fail, "cloud", e.to_string());
            return r.render();
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            r.add(Verdict::Fail, "runtime", e.to_string());
            return r.render();
        }
    };
    runtime.block_on(network_checks(
        &mut r,
        &args,
        &config,
        &cloud,
        spec.as_ref(),
    ));
    if let Some(spec) = &spec {
        check_objects(&mut r, spec, &config);
    }
    r.render()
}

/// The node state every kv process shares: the token cache (whose tokens, until when; never a
/// token) and the hosts whose 429s the node is waiting out. Reads only; creates nothing.
fn check_node_state(r: &mut Report, config: &NodeConfig) {
    let state = config.node_state();
    let summary = state.summary();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let cache = if config.token_cache() {
        format!(
            "on, {}: {} token(s)",
            state.root().join("tokens").display(),
            summary.tokens.len()
        )
    } else {
        "off (kv.json tokenCache: false): every mount asks its token source".to_string()
    };
    r.add(Verdict::Pass, "node cache", cache);
    let c = &summary.counts;
    r.add(
        Verdict::Pass,
        "node state",
        format!(
            "{}: {} token entries, {} lock files, {} slot files, {} volume records, {} agent mounts",
            state.root().display(),
            c.token_entries,
            c.lock_files,
            c.slot_files,
            c.volume_records,
            c.agent_mounts
        ),
    );
    for t in &summary.tokens {
        let left = t.expires_on - now;
        let when = if left > 0 {
            format!("expires in {left}s")
        } else {
            format!("expired {}s ago", -left)
        };
        r.add(
            Verdict::Pass,
            "cached token",
            format!(
                "{} {}: {when}, written {}s ago",
                t.kind.as_str(),
                t.label,
                t.age.as_secs()
            ),
        );
    }
    if summary.throttles.is_empty() {
        r.add(
            Verdict::Pass,
            "throttle",
            "no service is throttling this node",
        );
    }
    for t in &summary.throttles {
        r.add(
            Verdict::Warn,
            "throttle",
            format!(
                "{} answered HTTP 429: kv waits {}ms more before asking it again",
                t.host,
                t.remaining.as_millis()
            ),
        );
    }
}

/// With workload identity: where the pod's token is, and whether its claims would pass.
fn workload_token(r: &mut Report, args: &DoctorArgs, mut spec: VolumeSpec) -> VolumeSpec {
    let Identity::WorkloadIdentity { token, .. } = &spec.identity else {
        return spec;
    };
    let file = match (&args.token_file, &spec.pod.uid) {
        (Some(f), _) => TokenFile::File {
            path: f.clone(),
            // Checked against the options' namespace and service account when they name them.
            bound: spec.pod.namespace.is_some() && spec.pod.service_account.is_some(),
        },
        (None, Some(uid)) => {
            let root = args
                .kubelet_root
                .clone()
                .or_else(|| kubelet_flag("--root-dir"))
                .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBELET_ROOT));
            TokenFile::Projected {
                volumes: root.join("pods").join(uid).join("volumes"),
                path: token.clone(),
            }
        }
        (None, None) => {
            r.add(Verdict::Fail, "sa token", "no kubernetes.io/pod.uid in the options and no --token-file: kv cannot find the pod's token");
            return spec;
        }
    };
    let result = pipeline::block_on(async {
        let jwt = crate::auth::projected::read(&file, &Deadline::after(TOKEN_PROBE)).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let binding = crate::auth::projected::Binding::for_token(&file, &spec.pod)?;
        let claims = crate::auth::projected::check(&jwt, binding.as_ref(), now)?;
        Ok((claims, now))
    });
    match result {
        Ok((claims, now)) => r.add(
            Verdict::Pass,
            "sa token",
            format!(
                "{}: subject {} from issuer {}, expires in {}s (AAD needs a federated credential for exactly this issuer and subject)",
                file.describe(),
                crate::error::printable(&claims.subject),
                crate::error::printable(&claims.issuer),
                claims.expires - now
            ),
        ),
        Err(e) => r.add(Verdict::Fail, "sa token", e.to_string()),
    }
    spec.token_file = Some(file);
    spec
}

/// kubelet's default `--root-dir`.
const DEFAULT_KUBELET_ROOT: &str = "/var/lib/kubelet";

/// A dynamically linked kv fails where there is no loader (the distroless KCM container).
fn check_binary(r: &mut Report) {
    match std::fs::read("/proc/self/exe") {
        Ok(elf) => {
            if has_interpreter(&elf) {
                r.add(
                    Verdict::Warn,
                    "binary",
                    "dynamically linked: use the static release build (scripts/build-release)",
                );
            } else {
                r.add(
                    Verdict::Pass,
                    "binary",
                    format!("statically linked, {}", crate::version().trim()),
                );
            }
        }
        Err(e) => r.add(
            Verdict::Warn,
            "binary",
            format!("cannot read /proc/self/exe: {e}"),
        ),
    }
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) || elf.get(4) != Some(&2) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).any(|i| {
        elf.get(phoff + i * phentsize..phoff + i * phentsize + 4)
            .is_some_and(|t| t == [3, 0, 0, 0])
    })
}

/// The command line of the running kubelet, if one is found.
fn kubelet_args() -> Option<Vec<String>> {
    let procs = std::fs::read_dir("/proc").ok()?;
    for p in procs.flatten() {
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("kubelet")) {
            return Some(args);
        }
    }
    None
}

/// A path flag of the running kubelet (`--volume-plugin-dir`, `--root-dir`). Only to find
/// where kubelet looks; kv's own config is never read from a path found here.
fn kubelet_flag(flag: &str) -> Option<PathBuf> {
    let args = kubelet_args()?;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            return Some(PathBuf::from(v));
        }
        if a == flag {
            return args.get(i + 1).map(PathBuf::from);
        }
    }
    None
}

/// kubelet's `--volume-plugin-dir`, read from its command line or config file.
fn kubelet_plugin_dir() -> Option<PathBuf> {
    if let Some(dir) = kubelet_flag("--volume-plugin-dir") {
        return Some(dir);
    }
    let args = kubelet_args()?;
    let config = args
        .iter()
        .find_map(|a| a.strip_prefix("--config=").map(str::to_string))?;
    let text = std::fs::read_to_string(config).ok()?;
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix("volumePluginDir:")
            .map(|v| PathBuf::from(v.trim().trim_matches('"')))
    })
}

fn check_install_and_config(r: &mut Report, given: Option<&Path>) -> NodeConfig {
    let (dir, source) = match given {
        Some(d) => (Some(d.to_path_buf()), "--plugin-dir"),
        None => match kubelet_plugin_dir() {
            Some(d) => (Some(d), "kubelet's --volume-plugin-dir"),
            None => (
                PLUGIN_DIRS
                    .iter()
                    .map(PathBuf::from)
                    .find(|d| d.join("azure~kv/kv").exists()),
                "the usual plugin dirs",
            ),
        },
    };
    let installed = dir.as_ref().map(|d| d.join("azure~kv/kv"));
    match &installed {
        Some(kv) if kv.exists() => {
            let same = std::fs::read(kv).ok() == std::fs::read("/proc/self/exe").ok();
            let mode = std::fs::metadata(kv).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).unwrap_or(0);
            if mode & 0o111 == 0 {
                r.add(Verdict::Fail, "install", format!("{} is not executable: chmod 0755 it, or rerun kv install", kv.display()));
            } else if same {
                r.add(Verdict::Pass, "install", format!("{} (found via {source}) is this binary", kv.display()));
            } else {
                r.add(Verdict::Warn, "install", format!("{} (found via {source}) differs from this binary: an upgrade may be rolling out", kv.display()));
            }
        }
        Some(kv) => r.add(
            Verdict::Fail,
            "install",
            format!(
                "kv is not installed at {} (plugin dir from {source}): run the installer DaemonSet with this plugin dir, or pass the right --plugin-dir",
                kv.display()
            ),
        ),
        None => r.add(
            Verdict::Fail,
            "install",
            format!("no azure~kv/kv in {}: install kv, or pass --plugin-dir", PLUGIN_DIRS.join(", ")),
        ),
    }
    // The node config only from a place root chose: --plugin-dir or beside this binary,
    // never from a path found in another process's command line.
    let config_path = match given {
        Some(d) => Some(
            d.join(crate::install::DRIVER_DIR)
                .join(crate::config::FILE_NAME),
        ),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join(crate::config::FILE_NAME))),
    };
    match config_path.as_ref().map(|p| (p, NodeConfig::load(p))) {
        Some((p, Ok(c))) => {
            let state = if p.exists() {
                format!("{} is valid", p.display())
            } else {
                format!("no {}: defaults", p.display())
            };
            r.add(
                if c.policy.is_some() || p.exists() {
                    Verdict::Pass
                } else {
                    Verdict::Warn
                },
                "config",
                state,
            );
            c
        }
        Some((_, Err(e))) => {
            r.add(Verdict::Fail, "config", e.to_string());
            NodeConfig::default()
        }
        None => NodeConfig::default(),
    }
}

/// Creates a tmpfs without attaching it anywhere: proves mounts work, leaves nothing.
fn check_tmpfs(r: &mut Report) {
    use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags};
    let result = rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).and_then(|fs| {
        rustix::mount::fsconfig_set_string(&fs, "size", "4096")?;
        rustix::mount::fsconfig_create(&fs)?;
        rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
            .map(drop)
    });
    match result {
        Ok(()) => r.add(Verdict::Pass, "tmpfs", "a tmpfs can be created (detached; nothing was mounted)"),
        Err(rustix::io::Errno::NOSYS) => r.add(Verdict::Warn, "tmpfs", "kernel lacks fsopen (Linux < 5.2): kv falls back to mounting in place"),
        Err(e) => r.add(Verdict::Fail, "tmpfs", format!("cannot create a tmpfs ({e}): run kv as root with CAP_SYS_ADMIN, in the host mount namespace")),
    }
}

async fn network_checks(
    r: &mut Report,
    args: &DoctorArgs,
    config: &NodeConfig,
    cloud: &Cloud,
    spec: Option<&VolumeSpec>,
) {
    let http = match crate::http::client() {
        Ok(h) => h,
        Err(e) => {
            r.add(Verdict::Fail, "tls", e.to_string());
            return;
        }
    };
    let identity = spec.map(|s| &s.identity);
    let uses_imds = identity.map(|i| matches!(i, Identity::NodeManagedIdentity { .. }));
    let uses_nmi = identity.map(|i| matches!(i, Identity::PodIdentity { .. }));
    let uses_aad = identity.map(|i| matches!(i, Identity::ServicePrincipal { .. }));
    // Not needed by this volume (or no volume given): a missing service is only a warning.
    let severity = |used: Option<bool>| {
        if used == Some(true) {
            Verdict::Fail
        } else {
            Verdict::Warn
        }
    };

    // IMDS: which identity answers, through the same token source a mount uses.
    let client_id = match identity {
        Some(Identity::NodeManagedIdentity { id }) => id.clone(),
        _ => ManagedIdentity::System,
    };
    let imds = Provider::new(
        Source::Imds { id: client_id },
        http.clone(),
        Deadline::after(TOKEN_PROBE),
    );
    match imds.token(&cloud.vault_resource).await {
        Ok(token) => {
            let appid =
                token_claim(token.access_token.expose(), "appid").unwrap_or_else(|| "?".into());
            r.add(
                Verdict::Pass,
                "imds",
                format!(
                    "IMDS gives a token for {} (client id {appid})",
                    imds.identity_name()
                ),
            );
        }
        Err(e) => r.add(severity(uses_imds), "imds", e.to_string()),
    }

    // NMI: listening, and bound to the pod if a pod-identity volume is given.
    let port = args
        .nmi_port
        .or(match identity {
            Some(Identity::PodIdentity { nmi_port }) => *nmi_port,
            _ => None,
        })
        .unwrap_or(config.nmi_port());
    let listening = matches!(
        tokio::time::timeout(
            CONNECT_PROBE,
            tokio::net::TcpStream::connect(("127.0.0.1", port))
        )
        .await,
        Ok(Ok(_))
    );
    match (listening, uses_nmi, spec) {
        (false, _, _) => r.add(severity(uses_nmi), "nmi", format!("nothing listens on 127.0.0.1:{port}: pod identity needs aad-pod-identity's NMI on this node (or fix nmiport)")),
        (true, Some(true), Some(s)) => {
            let nmi = Provider::new(
                Source::Nmi {
                    port,
                    namespace: s.pod.namespace.clone().unwrap_or_default(),
                    pod: s.pod.name.clone().unwrap_or_default(),
                    uid: s.pod.uid.clone().unwrap_or_default(),
                },
                http.clone(),
                Deadline::after(TOKEN_PROBE),
            );
            match nmi.token(&cloud.vault_resource).await {
                Ok(_) => r.add(Verdict::Pass, "nmi", format!("NMI on 127.0.0.1:{port} gives a token to {}", nmi.identity_name())),
                Err(e) => r.add(Verdict::Fail, "nmi", e.to_string()),
            }
        }
        (true, _, _) => r.add(Verdict::Pass, "nmi", format!("NMI listens on 127.0.0.1:{port}")),
    }

    // AAD and Key Vault: DNS, TLS, clock.
    let aad = format!("{}/common/discovery/instance?api-version=1.1&authorization_endpoint={}/common/oauth2/authorize", cloud.authority_host, cloud.authority_host);
    reach(r, &http, "aad", &aad, severity(uses_aad.or(Some(false)))).await;
    if let Some(s) = spec {
        for vault in s.vaults() {
            reach(
                r,
                &http,
                &format!("vault {vault}"),
                &cloud.vault_url(vault),
                Verdict::Fail,
            )
            .await;
        }
    }
}

/// DNS + TCP + TLS to `url`, and the server clock against ours.
async fn reach(r: &mut Report, http: &reqwest::Client, check: &str, url: &str, on_error: Verdict) {
    match http.get(url).timeout(REACH_PROBE).send().await {
        Ok(resp) => {
            let skew = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| {
                    time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc2822)
                        .ok()
                })
                .map(|server| {
                    (time::OffsetDateTime::now_utc() - server)
                        .whole_seconds()
                        .abs()
                });
            match skew {
                Some(s) if s > MAX_CLOCK_SKEW_SECS => r.add(Verdict::Fail, check, format!("{url} reachable, but the clocks differ by {s}s: tokens will be rejected; fix NTP")),
                _ => r.add(Verdict::Pass, check, format!("{url} reachable over TLS (HTTP {})", resp.status().as_u16())),
            }
        }
        Err(e) => {
            let mut cause = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                cause = s.to_string();
                src = s.source();
            }
            let fix = if cause.contains("certificate")
                || cause.contains("UnknownIssuer")
                || cause.contains("TLS")
            {
                "TLS failed: the server's certificate is not trusted (CA bundle: SSL_CERT_FILE or /etc/ssl/certs/ca-certificates.crt; a TLS-inspecting proxy?)"
            } else if cause.contains("dns")
                || cause.contains("resolve")
                || cause.contains("lookup")
                || cause.contains("Name or service not known")
                || cause.contains("failed to lookup")
            {
                "DNS cannot resolve it: check the vault name and the cloud, or the node's DNS / private endpoint zone"
            } else {
                "cannot connect: check egress, firewall (SNI), proxy"
            };
            r.add(
                on_error,
                check,
                format!("{url}: {fix} ({})", crate::error::printable(&cause)),
            );
        }
    }
}

/// A claim of a JWT, read without verifying (for display only).
fn token_claim(jwt: &str, claim: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get(claim)?.as_str().map(str::to_string)
}

/// A token and `get` on each object, `list` and `get` for each selection: the real fetch,
/// values kept in memory and dropped.
fn check_objects(r: &mut Report, spec: &VolumeSpec, config: &NodeConfig) {
    // The same policy check and cloud as a mount.
    let cloud = match pipeline::resolve(spec, config) {
        Ok(c) => c,
        Err(e) => {
            r.add(Verdict::Fail, "policy", e.to_string());
            return;
        }
    };
    // One probe per named object, then one per selection, each its own fetch.
    let named = spec.objects.iter().enumerate().map(|(i, o)| {
        let one = VolumeSpec {
            objects: vec![o.clone()],
            selections: Vec::new(),
            ..spec.clone()
        };
        (format!("object {}", i + 1), one)
    });
    let selected = spec.selections.iter().map(|s| {
        let one = VolumeSpec {
            objects: Vec::new(),
            selections: vec![s.clone()],
            ..spec.clone()
        };
        (format!("objects[{}]", s.entry), one)
    });
    for (check, one) in named.chain(selected) {
        let deadline = Deadline::after(config.deadline().min(OBJECT_PROBE));
        match pipeline::fetch(&one, &cloud, config, deadline) {
            Ok(fetched) => r.add(Verdict::Pass, &check, probe_passed(&one, &fetched)),
            Err(e) => {
                let auth = e.code().exit_class() == 3 || e.code() == Code::Timeout;
                r.add(
                    Verdict::Fail,
                    if auth { "token" } else { &check },
                    e.to_string(),
                );
                if auth {
                    // Every other object would wait for the same token and fail the same way.
                    return;
                }
            }
        }
    }
}

/// What a probe of one object or one selection found (names and sizes, never values).
fn probe_passed(one: &VolumeSpec, fetched: &pipeline::FetchedVolume) -> String {
    let bytes: usize = fetched
        .fetched
        .iter()
        .flat_map(|f| f.files.iter())
        .map(|(_, f)| f.bytes.len())
        .sum();
    match (one.objects.first(), one.selections.first()) {
        (Some(o), _) => format!(
            "{} `{}` in {}: get allowed ({bytes} bytes, not shown)",
            crate::keyvault::kind_name(o.kind),
            o.name,
            o.vault
        ),
        (None, Some(s)) => {
            let names: Vec<&str> = fetched.objects.iter().map(|o| o.name.as_str()).collect();
            format!(
                "{}: list and get allowed in {}; {} {} match ({bytes} bytes, not shown): {}",
                s.describe(),
                s.template.vault,
                names.len(),
                crate::keyvault::plural(s.template.kind),
                crate::error::printable(&names.join(", "))
            )
        }
        (None, None) => String::new(),
    }
}
