//! `kv install`: puts this very binary into kubelet's plugin dir, the installer DaemonSet's job.
//!
//! kubelet watches `<plugin-dir>/azure~kv/` with inotify and re-runs `kv init` on any event
//! there, and it may exec `kv` for a mount at any moment. So `kv` is never written in place:
//! the new bytes go to a dot-named temp file in the same directory (kubelet ignores dot files),
//! which is fsynced, closed, made 0755 and then renamed over `kv` with rename(2). A concurrent
//! exec sees the old file or the new one, never a partial one, and never gets ETXTBSY. An
//! install of identical bytes changes nothing (no inotify event, no re-probe).
//!
//! The node config (`--config`, the mounted `kv-config` ConfigMap) is validated before anything
//! is touched and installed as `kv.json` the same way. With `--wait` the process stays up (a
//! DaemonSet pod must keep running), re-installs `kv.json` when the ConfigMap changes, and exits
//! 0 on SIGTERM/SIGINT. It never removes `kv`: kubelet needs it to unmount existing volumes.

use crate::config::{NodeConfig, FILE_NAME as CONFIG_NAME};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The driver's directory under the plugin dir (`azure/kv` with `/` escaped as `~`).
pub const DRIVER_DIR: &str = "azure~kv";
/// The executable kubelet runs: the last segment of the driver name.
pub const BINARY: &str = "kv";
/// v0.0.17's Go binary, which its `kv` shell wrapper called.
pub const LEGACY_BINARY: &str = "azurekeyvault-flexvolume";
/// Temp files of a crashed install older than this are removed.
const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// Arguments of `kv install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The kubelet volume plugin dir (kubelet's --volume-plugin-dir); kv goes to
    /// <DIR>/azure~kv/kv.
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// A node config file (the mounted kv-config ConfigMap) to validate and install as
    /// <DIR>/azure~kv/kv.json.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Remove v0.0.17's leftover <DIR>/azure~kv/azurekeyvault-flexvolume.
    #[arg(long)]
    pub remove_legacy: bool,
    /// Keep running after the install until SIGTERM or SIGINT (the DaemonSet's mode),
    /// re-installing kv.json when --config changes. kv stays installed on exit.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: how often to look at --config for changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, hide = true)]
    pub config_poll_seconds: u64,
}

/// Runs `kv install`: (text for stdout, exit code).
pub fn run(args: InstallArgs) -> (String, u8) {
    if !args.wait {
        return match install(&args) {
            Ok(lines) => (lines.concat(), 0),
            Err(e) => (format!("kv install: {e}\n"), 1),
        };
    }
    // Handlers first, so a SIGTERM during the install is honoured once it is complete.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return (format!("kv install: cannot start the runtime: {e}\n"), 1),
    };
    let signals = {
        let _guard = rt.enter();
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
    };
    let (mut term, mut int) = match signals {
        Ok(s) => s,
        Err(e) => return (format!("kv install: cannot handle signals: {e}\n"), 1),
    };
    let mut lines = match install(&args) {
        Ok(lines) => lines,
        Err(e) => return (format!("kv install: {e}\n"), 1),
    };
    lines.push("installed; waiting for SIGTERM (kv stays installed when this exits)\n".into());
    emit(&lines);

    let dir = args.target_dir.join(DRIVER_DIR);
    let poll = Duration::from_secs(args.config_poll_seconds.max(1));
    let signal_name = rt.block_on(async {
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut last_error = None;
        loop {
            tokio::select! {
                _ = term.recv() => return "SIGTERM",
                _ = int.recv() => return "SIGINT",
                _ = tick.tick() => {
                    if let Some(config) = &args.config {
                        let line = match sync_config(config, &dir) {
                            Ok(line) => {
                                last_error = None;
                                line
                            }
                            // Report a bad edit once; kv.json keeps the last good config.
                            Err(e) if last_error.as_ref() == Some(&e) => None,
                            Err(e) => {
                                let line = format!("kv install: {e}; keeping the installed kv.json\n");
                                last_error = Some(e);
                                Some(line)
                            }
                        };
                        if let Some(line) = line {
                            emit(&[line]);
                        }
                    }
                }
            }
        }
    });
    (
        format!("{signal_name} received; exiting (kv stays installed)\n"),
        0,
    )
}

fn emit(lines: &[String]) {
    let mut out = io::stdout().lock();
    for l in lines {
        let _ = out.write_all(l.as_bytes());
    }
    let _ = out.flush();
}

/// Installs once; returns the lines to print.
fn install(args: &InstallArgs) -> Result<Vec<String>, String> {
    let target = &args.target_dir;
    check_target(target)?;
    // Everything that can be wrong with the inputs is found before anything is touched.
    let config = args.config.as_deref().map(read_config).transpose()?;
    let exe = read_self()?;

    let dir = target.join(DRIVER_DIR);
    match fs::create_dir(&dir) {
        Ok(()) => {
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .map_err(|e| io_error("cannot chmod", &dir, &e, target))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => check_driver_dir(&dir)?,
        Err(e) => return Err(io_error("cannot create", &dir, &e, target)),
    }
    remove_stale_temp_files(&dir);

    let mut lines = Vec::new();
    let version = crate::version();
    let version = version.trim();
    let kv = dir.join(BINARY);
    if replace(&dir, BINARY, &exe, 0o755, target)? {
        lines.push(format!("installed {version} to {}\n", kv.display()));
    } else {
        lines.push(format!(
            "kv at {} is up to date ({version}); nothing changed\n",
            kv.display()
        ));
    }
    if let Some((path, text)) = config {
        lines.push(config_line(
            replace(&dir, CONFIG_NAME, text.as_bytes(), 0o644, target)?,
            &path,
            &dir,
        ));
    }
    let legacy = dir.join(LEGACY_BINARY);
    if args.remove_legacy {
        // After `kv` is replaced: v0.0.17's `kv` wrapper was the only user of this binary.
        match fs::remove_file(&legacy) {
            Ok(()) => lines.push(format!("removed v0.0.17 leftover {}\n", legacy.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot remove", &legacy, &e, target)),
        }
        sync_dir(&dir);
    } else if fs::symlink_metadata(&legacy).is_ok() {
        lines.push(format!(
            "note: v0.0.17 leftover {} is unused by this kv; pass --remove-legacy to remove it\n",
            legacy.display()
        ));
    }
    Ok(lines)
}

fn config_line(changed: bool, source: &Path, dir: &Path) -> String {
    let dest = dir.join(CONFIG_NAME);
    if changed {
        format!(
            "installed node config {} as {}\n",
            source.display(),
            dest.display()
        )
    } else {
        format!("{} is up to date\n", dest.display())
    }
}

/// With `--wait`: re-installs kv.json when the mounted ConfigMap changed.
fn sync_config(source: &Path, dir: &Path) -> Result<Option<String>, String> {
    let (path, text) = read_config(source)?;
    let target = dir.parent().unwrap_or(dir);
    if replace(dir, CONFIG_NAME, text.as_bytes(), 0o644, target)? {
        Ok(Some(config_line(true, &path, dir)))
    } else {
        Ok(None)
    }
}

/// kubelet runs whatever is in the driver dir as root: a dir someone else owns or can write,
/// or a symlink to such a place, would let them choose what runs. The DaemonSet mounts only
/// this dir, which kubelet creates root-owned 0755.
fn check_driver_dir(dir: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(dir)
        .map_err(|e| format!("cannot access driver dir {}: {e}", dir.display()))?;
    if meta.file_type().is_symlink() {
        return Err(format!(
            "driver dir {} is a symlink; kubelet runs its contents as root, so replace it with a real directory (root-owned, mode 0755)",
            dir.display()
        ));
    }
    if !meta.is_dir() {
        return Err(format!(
            "{} exists and is not a directory; remove it so kv can be installed",
            dir.display()
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if meta.uid() != 0 || mode != 0o755 {
        return Err(format!(
            "driver dir {} is owned by uid {} with mode {mode:04o}; kubelet runs its contents as root, so it must be root-owned 0755 (chown 0:0 and chmod 0755 it)",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

fn check_target(target: &Path) -> Result<(), String> {
    match fs::metadata(target) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!(
            "target dir {} is not a directory; pass kubelet's volume plugin dir (--volume-plugin-dir)",
            target.display()
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(format!(
            "target dir {} does not exist; pass kubelet's volume plugin dir (--volume-plugin-dir), e.g. /usr/libexec/kubernetes/kubelet-plugins/volume/exec, /etc/kubernetes/volumeplugins on AKS, /home/kubernetes/flexvolume on GKE",
            target.display()
        )),
        Err(e) => Err(format!("cannot access target dir {}: {e}", target.display())),
    }
}

/// Reads and validates a node config; returns its path and text.
fn read_config(path: &Path) -> Result<(PathBuf, String), String> {
    let text = fs::read_to_string(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "config file {} does not exist (is the kv-config ConfigMap mounted?); nothing was installed",
                path.display()
            )
        } else {
            format!("cannot read config file {}: {e}; nothing was installed", path.display())
        }
    })?;
    NodeConfig::parse(&text).map_err(|e| {
        format!(
            "node config {} is invalid: {}; nothing was installed or replaced",
            path.display(),
            e.message()
        )
    })?;
    Ok((path.to_path_buf(), text))
}

/// The bytes of the running binary. `/proc/self/exe` is the running file even if its path was
/// replaced meanwhile; the path from `current_exe` is the fallback.
fn read_self() -> Result<Vec<u8>, String> {
    fs::read("/proc/self/exe")
        .or_else(|_| std::env::current_exe().and_then(fs::read))
        .map_err(|e| format!("cannot read the running kv binary: {e}"))
}

/// Whether `dir/name` already holds exactly these bytes as a regular file with this mode.
fn is_current(path: &Path, bytes: &[u8], mode: u32) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() && m.mode() & 0o7777 == mode && m.len() == bytes.len() as u64 => {
            fs::read(path).is_ok_and(|old| old == bytes)
        }
        _ => false,
    }
}

/// Atomically replaces `dir/name` with `bytes` unless it already holds them; true if replaced.
/// The one atomic writer ([`crate::atomic`]): an exclusive `0600` temp file, written, given its
/// mode and fsynced before it is renamed over `name` (kubelet never runs a partial binary).
fn replace(dir: &Path, name: &str, bytes: &[u8], mode: u32, target: &Path) -> Result<bool, String> {
    let dest = dir.join(name);
    if is_current(&dest, bytes, mode) {
        return Ok(false);
    }
    crate::atomic::write(dir, name, bytes, mode, None)
        .map_err(|e| io_error("cannot write", &dest, &e, target))?;
    Ok(true)
}

/// Makes renames and removals in `dir` durable; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes `.kv.*.tmp` / `.kv.json.*.tmp` files a crashed install left behind.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours =
            (name.starts_with(".kv.") || name.starts_with(".kv.json.")) && name.ends_with(".tmp");
        let old = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_TEMP_AGE);
        if ours && old {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// One line for an I/O failure, with the fix for the cases operators hit.
fn io_error(what: &str, path: &Path, e: &io::Error, target: &Path) -> String {
    match e.kind() {
        io::ErrorKind::ReadOnlyFilesystem => format!(
            "{what} {}: target dir {} is on a read-only file system (GKE's Container-Optimized OS and Flatcar mount /usr read-only); use the writable plugin dir kubelet's --volume-plugin-dir names instead: /home/kubernetes/flexvolume on GKE (installer/overlays/gke), /var/lib/kubelet/volumeplugins on Flatcar",
            path.display(),
            target.display()
        ),
        io::ErrorKind::PermissionDenied => format!(
            "{what} {}: permission denied; kv install must run as root to write kubelet's plugin dir",
            path.display()
        ),
        _ => format!("{what} {}: {e}", path.display()),
    }
}
