//! The agent's own mounts of rotating volumes: `<root>/mnt/<sha256 of the mount dir>`, a second
//! mount of the volume's tmpfs that only root can reach (`mnt/` is 0700).
//!
//! The pod's mount stays read-only per mount when the pod asked for it, and the agent never
//! writes through kubelet's pods directory: it writes new versions here, and the pod sees them
//! because both mounts are one filesystem. `kv mount` (root, the host's mount namespace) makes
//! this mount, `kv unmount` removes it with the pod's, and one whose volume is gone (a pod
//! cleaned up without an unmount) is removed by the next kv process that may unmount
//! ([`NodeState::sweep_agent_mounts`]). The agent itself needs no `CAP_SYS_ADMIN`.

use super::mounts::MountTable;
use super::volumes::{is_name, name_of};
use super::{private, NodeState};
use crate::error::Result;
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode};
use rustix::io::Errno;
use rustix::mount::UnmountFlags;
use std::path::{Path, PathBuf};

const DIR: &str = "mnt";

/// Where the agent's mount of one volume goes: an empty 0700 directory under `<root>/mnt`.
pub struct AgentMountPoint {
    /// `<root>/mnt`, for `move_mount` relative to it (no path walk outside the state dir).
    pub parent: OwnedFd,
    /// The directory's name in it.
    pub name: String,
    /// Its full path (for the record and messages).
    pub path: PathBuf,
}

impl NodeState {
    /// The path of the agent's mount of the volume at `dir`.
    pub fn agent_mount_path(&self, dir: &Path) -> PathBuf {
        self.root().join(DIR).join(name_of(dir))
    }

    /// Creates the (empty) mount point of the agent's mount of the volume at `dir`, removing
    /// whatever a crashed call left there.
    pub fn agent_mount_point(&self, dir: &Path) -> Result<AgentMountPoint> {
        let name = name_of(dir);
        let path = self.agent_mount_path(dir);
        self.remove_agent_mount_at(&path)?;
        let parent = self.open_dir(DIR)?;
        match rustix::fs::mkdirat(&parent, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(self.error(&format!("{DIR}/{name}"), &e.into())),
        }
        Ok(AgentMountPoint { parent, name, path })
    }

    /// Unmounts and removes the agent's mount of the volume at `dir`; nothing there is fine.
    pub fn remove_agent_mount(&self, dir: &Path) -> Result<()> {
        self.remove_agent_mount_at(&self.agent_mount_path(dir))
    }

    fn remove_agent_mount_at(&self, path: &Path) -> Result<()> {
        // Stacked mounts (a retried call) are all removed. Detached: the agent may still hold
        // a descriptor for a moment; the tmpfs goes with the last one.
        for _ in 0..16 {
            if MountTable::read()?.top(path).is_none() {
                break;
            }
            match rustix::mount::unmount(path, UnmountFlags::DETACH) {
                Ok(()) | Err(Errno::INVAL) | Err(Errno::NOENT) => {}
                Err(e) => {
                    return Err(self.error(
                        &format!(
                            "{DIR}/{}",
                            path.file_name().unwrap_or_default().to_string_lossy()
                        ),
                        &e.into(),
                    ))
                }
            }
        }
        match std::fs::remove_dir(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(self.error(&path.to_string_lossy(), &e))
            }
            _ => Ok(()),
        }
    }

    /// Removes the agent's mounts whose volume is gone: no record, or the record's mount dir
    /// no longer holds the same tmpfs. Each is checked under its volume's lock (skipped while
    /// a mount or unmount of it runs). Needs the right to unmount (kv mount/unmount as root);
    /// returns how many were removed.
    pub fn sweep_agent_mounts(&self) -> usize {
        let Ok(Some(parent)) = private::open_existing(&self.root().join(DIR)) else {
            return 0;
        };
        let volumes = self.volumes();
        let mut removed = 0;
        // One reading of the table finds the candidates cheaply (a live volume's tmpfs shows at
        // two mount points, the pod's and this one); each is then checked under its lock with
        // a fresh reading, since a mount or unmount may have run meanwhile.
        let Ok(first) = MountTable::read() else {
            return 0;
        };
        let shown = first.kv_volumes_in(&self.root().join(DIR));
        for name in private::names(&parent) {
            if !is_name(&name) {
                continue;
            }
            let path = self.root().join(DIR).join(&name);
            if shown.get(name.as_bytes()).is_some_and(|n| *n >= 2) {
                continue;
            }
            let Some(_lock) = self.try_lock_name(&name) else {
                continue;
            };
            let Ok(table) = MountTable::read() else {
                return removed;
            };
            let mine = table.kv_volume(&path);
            let live = match (&mine, volumes.load_named(&name)) {
                (Some(dev), Some(record)) => table.kv_volume(&record.dir).as_ref() == Some(dev),
                // An empty mount point: a crashed mount's, or the unmount's last step.
                (None, Some(record)) => table.kv_volume(&record.dir).is_some(),
                (_, None) => false,
            };
            if live {
                continue;
            }
            if self.remove_agent_mount_at(&path).is_ok() {
                removed += 1;
            } else if mine.is_none() {
                // Not a mount point, just a directory we could not remove: leave it.
                let _ = rustix::fs::unlinkat(&parent, name.as_str(), AtFlags::REMOVEDIR);
            }
        }
        removed
    }

    /// How many agent mounts there are (for `kv doctor`).
    pub(super) fn agent_mount_count(&self) -> usize {
        private::existing_dir(&self.root().join(DIR))
            .map(|d| private::names(&d).len())
            .unwrap_or(0)
    }
}
