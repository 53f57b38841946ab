//! `kv`: the `azure/kv` Kubernetes FlexVolume driver.
//!
//! kubelet runs the binary once per call, as root, and parses its combined stdout+stderr as
//! one JSON object: `kv init` answers with the capabilities, `kv mount <dir> <options-json>`
//! fetches every Key Vault object named in the options, renders it to bytes in memory and only
//! then mounts a tmpfs at `<dir>` holding the files, and `kv unmount <dir>` removes the tmpfs
//! and the directory. Any other verb answers `{"status":"Not supported"}`. A failure is a
//! `{"status":"Failure","message":...}` reply with exit code 0, because kubelet logs the whole
//! argv (secretRef values included) when a driver exits non-zero. Logs go to a file, never to
//! stdout or stderr.

//!
//! The tree follows the data path of one mount (see [`pipeline`]):
//! [`cmd`] (argv → verb) → [`options`] (kubelet's JSON → [`options::VolumeSpec`]) →
//! [`config`] + [`cloud`] (the node's policy and endpoints) → [`auth`] (one token source per
//! identity) → [`keyvault`] (every object, concurrently, over [`http`]) → [`render`] (object →
//! file bytes) → [`volume`] (tmpfs, attached in one step) → [`reply`] (the one JSON line).

pub mod agent;
pub mod atomic;
pub mod auth;
pub mod cloud;
pub mod cmd;
pub mod config;
pub mod duration;
pub mod env;
pub mod error;
pub mod http;
pub mod install;
pub mod keyvault;
pub mod log;
pub mod nodestate;
pub mod options;
pub mod pipeline;
pub mod render;
pub mod reply;
pub mod retry;
pub mod secret;
#[cfg(test)]
pub(crate) mod testutil;
pub mod volume;

/// `kv <version> (<git revision>)`, for `kv --version`, `kv install` and `kv doctor`.
pub fn version() -> String {
    format!(
        "kv {} ({})\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("KV_GIT_REVISION").unwrap_or("unknown revision")
    )
}
