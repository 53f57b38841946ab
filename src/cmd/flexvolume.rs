//! The FlexVolume verbs kubelet calls: `mount <dir> <json>` and `unmount <dir>`. Each returns
//! exactly one [`Reply`]; the work is [`crate::pipeline`] (mount) and [`crate::volume`].

use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::options::{Identity, TokenFile, VolumeSpec};
use crate::pipeline;
use crate::reply::Reply;
use crate::volume;
use serde_json::json;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// `kv mount <dir> <json>` (kubelet ≥ 1.6) or `kv mount <dir> <device> <json>` (1.2–1.5).
pub fn mount(args: &[OsString]) -> Reply {
    reply(mount_call(args))
}

/// `kv unmount <dir>`.
pub fn unmount(args: &[OsString]) -> Reply {
    reply(unmount_call(args))
}

fn reply(result: Result<()>) -> Reply {
    match result {
        Ok(()) => {
            crate::log::info("reply", json!({"status": "Success"}));
            Reply::success()
        }
        Err(e) => {
            crate::log::error(
                "reply",
                json!({"status": "Failure", "code": e.code().as_str(), "message": e.message()}),
            );
            Reply::failure(&e)
        }
    }
}

fn mount_call(args: &[OsString]) -> Result<()> {
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
    super::start_log(config.as_ref().unwrap_or(&NodeConfig::default()), "mount");
    let config = config?;
    let json = json
        .to_str()
        .ok_or_else(|| Error::options("the options JSON is not valid UTF-8"))?;
    mount_volume(&PathBuf::from(dir), json, &config)
}

/// The mount pipeline at `dir`: every object in memory before the tmpfs appears there.
fn mount_volume(dir: &Path, json: &str, config: &NodeConfig) -> Result<()> {
    let deadline = crate::auth::Deadline::after(config.deadline());
    let mut spec = VolumeSpec::parse(json)?;
    log_context(dir, &spec);
    volume::validate_kubelet_dir(dir)?;
    if let Identity::WorkloadIdentity { token, .. } = &spec.identity {
        // The pod's own projected token, found from the mount dir kubelet gave.
        spec.token_file = Some(TokenFile::for_mount(dir, &spec.pod, token)?);
    }
    let cloud = pipeline::resolve(&spec, config)?;

    volume::ensure_dir(dir)?;
    let _lock = volume::lock(dir)?;
    if volume::already_mounted(dir)? {
        // kubelet normally checks this itself; a repeated call must not refetch.
        crate::log::info("already_mounted", json!({}));
        return Ok(());
    }
    let fetched = pipeline::fetch(&spec, &cloud, config, deadline)?;
    let layout = pipeline::layout(&spec, fetched, config)?;
    if deadline.remaining().is_zero() {
        return Err(Error::new(
            Code::Timeout,
            format!(
                "timed out after {}s: the objects arrived too late to mount them",
                deadline.total().as_secs_f64()
            ),
        ));
    }
    volume::mount(dir, &layout)?;
    crate::log::info(
        "mounted",
        json!({"files": layout.files.len(), "tmpfs_bytes": layout.size}),
    );
    Ok(())
}

fn log_context(dir: &Path, spec: &VolumeSpec) {
    let pod = format!(
        "{}/{}",
        spec.pod.namespace.as_deref().unwrap_or(""),
        spec.pod.name.as_deref().unwrap_or("")
    );
    crate::log::set_context("pod", pod);
    if let Some(uid) = &spec.pod.uid {
        crate::log::set_context("pod_uid", uid.as_str());
    }
    if let Some(v) = &spec.volume_name {
        crate::log::set_context("volume", v.as_str());
    }
    crate::log::set_context("dir", dir.to_string_lossy().as_ref());
    crate::log::info(
        "mount_start",
        json!({"identity": spec.identity.describe(), "vaults": spec.vaults(), "objects": spec.objects.iter().map(|o| &o.name).collect::<Vec<_>>()}),
    );
}

fn unmount_call(args: &[OsString]) -> Result<()> {
    let Some(dir) = args.get(2) else {
        return Err(Error::new(Code::Usage, "usage: kv unmount <mount-dir>"));
    };
    let dir = PathBuf::from(dir);
    let config = NodeConfig::load_beside_binary().unwrap_or_default();
    super::start_log(&config, "unmount");
    crate::log::set_context("dir", dir.to_string_lossy().as_ref());
    volume::validate_kubelet_dir(&dir)?;
    if let Some(uid) = volume::pod_uid(&dir) {
        crate::log::set_context("pod_uid", uid);
    }
    let _lock = volume::lock(&dir)?;
    volume::unmount(&dir)
}
