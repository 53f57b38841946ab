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

/// The FlexVolume verbs kubelet may send, to redirect stderr before anything else runs.
pub fn is_flexvolume_call(args: &[OsString]) -> bool {
    !matches!(
        args.get(1).and_then(|a| a.to_str()),
        Some("--version" | "version" | "-V" | "help" | "--help")
    )
}

/// Runs one call.
pub fn run(args: Vec<OsString>) -> Outcome {
    let verb = args.get(1).and_then(|a| a.to_str()).unwrap_or("");
    match verb {
        "init" => Outcome::Reply(Reply::init()),
        "mount" => Outcome::Reply(reply(mount(&args))),
        "unmount" => Outcome::Reply(reply(unmount(&args))),
        "--version" | "version" | "-V" => Outcome::Text(version(), 0),
        _ => Outcome::Reply(Reply::not_supported()),
    }
}

/// `kv <version> (<git revision>)`.
pub fn version() -> String {
    format!(
        "kv {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("KV_GIT_REVISION").unwrap_or("unknown revision")
    )
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
                serde_json::json!({"status": "Failure", "code": e.code.as_str(), "message": e.message}),
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
    let _lock = crate::volume::lock(&dir)?;
    crate::volume::unmount(&dir)
}
