//! The FlexVolume verbs kubelet calls: `mount <dir> <json>` and `unmount <dir>`. Each returns
//! exactly one [`Reply`]; the work is [`crate::pipeline`] (mount) and [`crate::volume`].

use crate::config::NodeConfig;
use crate::error::{Code, Error, Result};
use crate::nodestate::{NodeState, PodRef, Record, Status};
use crate::options::VolumeSpec;
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
    pipeline::use_pod_token(&mut spec, dir)?;
    let cloud = pipeline::resolve(&spec, config)?;
    let rotation = pipeline::rotation(&spec, config)?;

    volume::ensure_dir(dir)?;
    let node = config.node_state();
    // Only kv processes (root, the host's mount namespace) may unmount: the agent's mounts of
    // volumes that are gone are removed here and at unmount.
    node.sweep_agent_mounts();
    let _lock = node.lock_volume(dir, deadline.instant())?;
    if volume::already_mounted(dir)? {
        // kubelet normally checks this itself; a repeated call must not refetch. It does save
        // the record again: a mount killed between attaching and saving is retried this way.
        crate::log::info("already_mounted", json!({}));
        return match rotation {
            Some(interval) => save_record(&node, dir, json, &spec, interval, None),
            None => Ok(()),
        };
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
    let agent = match rotation {
        Some(_) => Some(node.agent_mount_point(dir)?),
        None => None,
    };
    let written = volume::mount(dir, &layout, agent.as_ref()).and_then(|()| {
        let Some(interval) = rotation else {
            return Ok(());
        };
        // What the mount wrote: the agent compares its fetches to it without reading the
        // volume. Without the record the pod would never rotate: the mount fails rather than
        // quietly giving less than the pod asked for.
        let perms = volume::versioned::Perms {
            dir_mode: layout.dir_mode,
            gid: layout.gid,
        };
        let written = agent
            .as_ref()
            .map(|a| -> Result<_> {
                let root = crate::atomic::open_dir(&a.path).map_err(|e| {
                    Error::new(
                        Code::Mount,
                        format!("cannot open {}: {e}", a.path.display()),
                    )
                })?;
                let version =
                    volume::versioned::current(rustix::fd::AsFd::as_fd(&root))?.unwrap_or_default();
                Ok(crate::nodestate::Written {
                    stamp: volume::versioned::stamp(rustix::fd::AsFd::as_fd(&root), &version)?,
                    digest: volume::versioned::digest(&layout.files, perms),
                    version,
                })
            })
            .transpose()?;
        save_record(&node, dir, json, &spec, interval, Some(written))
    });
    if let Err(e) = written {
        let _ = volume::unmount(dir);
        let _ = node.remove_agent_mount(dir);
        return Err(e);
    }
    if let Some(pods) = dir.ancestors().nth(4) {
        node.note_pods_dir(pods);
    }
    crate::log::info(
        "mounted",
        json!({"files": layout.files.len(), "tmpfs_bytes": layout.size, "rotation_secs": rotation.map(|d| d.as_secs())}),
    );
    Ok(())
}

/// Saves what `kv agent` needs to refresh the volume (root-only, in the node state); with
/// `written` (a fresh mount), also its first status: what is in the volume.
fn save_record(
    node: &NodeState,
    dir: &Path,
    json: &str,
    spec: &VolumeSpec,
    interval: std::time::Duration,
    written: Option<Option<crate::nodestate::Written>>,
) -> Result<()> {
    let mut record = Record::new(
        dir.to_path_buf(),
        PodRef {
            uid: spec.pod.uid.clone(),
            namespace: spec.pod.namespace.clone(),
            name: spec.pod.name.clone(),
            service_account: spec.pod.service_account.clone(),
        },
        json.to_string(),
        interval,
        &spec.identity.describe(),
        spec.read_only,
    );
    let agent_mount = node.agent_mount_path(dir);
    let table = crate::nodestate::MountTable::read()?;
    if table.kv_volume(&agent_mount).is_some() {
        record.agent_mount = Some(agent_mount);
    }
    let volumes = node.volumes();
    if let Some(written) = written {
        let status = Status {
            written,
            ..Status::default()
        };
        volumes.save_status(dir, &status)?;
    }
    volumes.save(&record)
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
    let node = config.node_state();
    let deadline = std::time::Instant::now() + config.deadline();
    let _lock = node.lock_volume(&dir, deadline)?;
    volume::unmount(&dir)?;
    node.remove_agent_mount(&dir)?;
    // The agent's record of a rotating volume goes with it. The volume is gone either way: a
    // record left behind is collected by the agent, so it never fails the unmount.
    if let Err(e) = node.volumes().remove(&dir) {
        crate::log::warn(
            "rotation_record_left",
            json!({"code": e.code().as_str(), "message": e.message()}),
        );
    }
    drop(_lock);
    node.sweep_agent_mounts();
    if let Some(swept) = node.sweep_if_due(SWEEP_EVERY) {
        crate::log::info(
            "node_state_swept",
            json!({"token_entries": swept.tokens, "lock_files": swept.locks}),
        );
    }
    Ok(())
}

/// How often `kv unmount` sweeps the node state (a node without the agent stays bounded too).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
