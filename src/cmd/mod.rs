//! Front-ends: argv → one verb. FlexVolume verbs are matched by hand, exactly as kubelet sends
//! them ([`flexvolume`]); anything else kubelet might send answers "Not supported". Operator
//! commands (`kv fetch`, `kv doctor`, `kv logs`, `kv install`, `kv manifest`, `kv --version`) are for humans,
//! parsed with clap, and print text. Every front-end is thin: the work is in
//! [`crate::pipeline`], [`crate::volume`] and [`crate::install`].

pub mod agent;
pub mod doctor;
pub mod fetch;
mod flexvolume;
mod input;
pub mod logs;
pub mod manifest;

use crate::config::NodeConfig;
use crate::reply::Reply;
use std::ffi::OsString;

/// What `main` must do.
pub enum Outcome {
    /// Print this reply (FlexVolume verbs).
    Reply(Reply),
    /// Print this text and exit with this code (operator commands).
    Text(String, u8),
}

/// Commands for people (not kubelet): they may print text and progress.
const OPERATOR_COMMANDS: &[&str] = &[
    "install", "fetch", "doctor", "logs", "agent", "manifest", "help", "--help", "-h",
];

/// Whether kubelet (not a person) is calling: then stderr is redirected before anything runs.
pub fn is_flexvolume_call(args: &[OsString]) -> bool {
    !matches!(args.get(1).and_then(|a| a.to_str()),
        Some(v) if OPERATOR_COMMANDS.contains(&v) || matches!(v, "--version" | "version" | "-V"))
}

/// Operator commands.
#[derive(clap::Parser)]
#[command(
    name = "kv",
    about = "azure/kv FlexVolume driver: Azure Key Vault objects as files on a tmpfs",
    disable_version_flag = true
)]
enum Command {
    /// Copy this binary into the kubelet plugin dir atomically (the installer DaemonSet's job).
    Install(crate::install::InstallArgs),
    /// Run the mount pipeline by hand and write the files to a directory or stdout.
    Fetch(Box<fetch::FetchArgs>),
    /// Check this node: binary, plugin dir, config, tmpfs, IMDS, NMI, AAD, Key Vault.
    Doctor(doctor::DoctorArgs),
    /// Print one pod's lines from the driver log.
    Logs(logs::LogsArgs),
    /// Keep rotating volumes in step with Key Vault (`--once`: refresh all now; `status`).
    Agent(agent::AgentArgs),
    /// Print Kubernetes objects for using kv (`pv`: a PersistentVolume + claim for namespaces
    /// that refuse inline flexVolumes).
    Manifest(manifest::ManifestArgs),
}

fn operator(args: Vec<OsString>) -> Outcome {
    use clap::Parser;
    let parsed = match Command::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            return Outcome::Text(e.render().to_string(), code);
        }
    };
    let (text, code) = match parsed {
        Command::Install(a) => crate::install::run(a),
        Command::Fetch(a) => fetch::run(*a),
        Command::Doctor(a) => doctor::run(a),
        Command::Logs(a) => logs::run(a),
        Command::Agent(a) => agent::run(a),
        Command::Manifest(a) => manifest::run(a),
    };
    Outcome::Text(text, code)
}

/// Runs one call.
pub fn run(args: Vec<OsString>) -> Outcome {
    let verb = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    match verb {
        "init" => Outcome::Reply(Reply::init()),
        "mount" => Outcome::Reply(flexvolume::mount(&args)),
        "unmount" => Outcome::Reply(flexvolume::unmount(&args)),
        "--version" | "version" | "-V" => Outcome::Text(crate::version(), 0),
        v if OPERATOR_COMMANDS.contains(&v) => operator(args),
        _ => Outcome::Reply(Reply::not_supported()),
    }
}

/// Starts the call's log: `KV_LOG_FILE`, else the node config's path.
fn start_log(config: &NodeConfig, verb: &str) {
    let path = config.log_path(crate::env::get().log_file.clone());
    // kv's own log directory is private even when a hostPath volume created it 0755 first.
    if path == std::path::Path::new(crate::config::DEFAULT_LOG_PATH) {
        crate::log::private_dir(&path);
    }
    crate::log::init(path, config.log_max_bytes(), verb);
}
