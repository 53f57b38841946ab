//! argv → verb. FlexVolume verbs are matched by hand, exactly as kubelet sends them; anything
//! else kubelet might send answers "Not supported". Operator commands (`version`, ...) are
//! for humans and print text.

use crate::config::NodeConfig;
use crate::error::{Code, Error};
use crate::reply::Reply;
use std::ffi::OsString;
use std::path::PathBuf;

/// What `main` must do.
pub enum Outcome {
    /// Print this reply (FlexVolume verbs).
    Reply(Reply),
    /// Print this text and exit with this code (operator commands).
    Text(String, u8),
}

/// Commands for people (not kubelet): they may print text and progress.
const OPERATOR_COMMANDS: &[&str] = &["install", "fetch", "doctor", "logs", "help", "--help", "-h"];

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
    Fetch(Box<crate::fetch::FetchArgs>),
    /// Check this node: binary, plugin dir, config, tmpfs, IMDS, NMI, AAD, Key Vault.
    Doctor(crate::doctor::DoctorArgs),
    /// Print one pod's lines from the driver log.
    Logs(crate::logs::LogsArgs),
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
        Command::Fetch(a) => crate::fetch::run(*a),
        Command::Doctor(a) => crate::doctor::run(a),
        Command::Logs(a) => crate::logs::run(a),
    };
    Outcome::Text(text, code)
}

/// Runs one call.
pub fn run(args: Vec<OsString>) -> Outcome {
    let verb = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    match verb {
        "init" => Outcome::Reply(Reply::init()),
        "mount" => Outcome::Reply(reply(mount(&args))),
        "unmount" => Outcome::Reply(reply(unmount(&args))),
        "--version" | "version" | "-V" => Outcome::Text(crate::version(), 0),
        v if OPERATOR_COMMANDS.contains(&v) => operator(args),
        _ => Outcome::Reply(Reply::not_supported()),
    }
}

fn reply(result: Result<(), Error>) -> Reply {
    match result {
        Ok(()) => {
            crate::log::info("reply", serde_json::json!({"status": "Success"}));
            Reply::success()
        }
        Err(e) => {
            crate::log::error(
                "reply",
                serde_json::json!({"status": "Failure", "code": e.code().as_str(), "message": e.message()}),
            );
            Reply::failure(&e)
        }
    }
}

fn start_log(config: &NodeConfig, verb: &str) {
    let env = std::env::var_os("KV_LOG_FILE").map(PathBuf::from);
    crate::log::init(config.log_path(env), config.log_max_bytes(), verb);
}

fn mount(args: &[OsString]) -> Result<(), Error> {
    // kubelet ≥ 1.6: mount <dir> <json>; 1.2–1.5 sent mount <dir> <device> <json>.
    let (dir, json) = match args.len() {
        4 => (&args[2], &args[3]),
        5 => (&args[2], &args[4]),
        _ => {
            return Err(Error::new(
                Code::Usage,
                "usage: kv mount <mount-dir> <options-json> (as kubelet calls it)",
            ))
        }
    };
    let config = NodeConfig::load_beside_binary();
    start_log(config.as_ref().unwrap_or(&NodeConfig::default()), "mount");
    let config = config?;
    let json = json
        .to_str()
        .ok_or_else(|| Error::options("the options JSON is not valid UTF-8"))?;
    crate::mount::run(&PathBuf::from(dir), json, &config)
}

fn unmount(args: &[OsString]) -> Result<(), Error> {
    let Some(dir) = args.get(2) else {
        return Err(Error::new(Code::Usage, "usage: kv unmount <mount-dir>"));
    };
    let dir = PathBuf::from(dir);
    let config = NodeConfig::load_beside_binary().unwrap_or_default();
    start_log(&config, "unmount");
    crate::log::set_context("dir", dir.to_string_lossy().as_ref());
    crate::volume::validate_kubelet_dir(&dir)?;
    if let Some(uid) = crate::volume::pod_uid(&dir) {
        crate::log::set_context("pod_uid", uid);
    }
    let _lock = crate::volume::lock(&dir)?;
    crate::volume::unmount(&dir)
}
