//! A recorded volume as the agent reaches it: is it still kv's mount, and the root it writes
//! new versions into.
//!
//! A volume mounted by this kv has the agent's own mount of its tmpfs under the state dir
//! (`<state>/mnt/<name>`, always writable, reachable by root only): the agent writes there, so
//! it never remounts anything (no `CAP_SYS_ADMIN`), never writes through kubelet's pods
//! directory, and a read-only volume stays read-only for the pod throughout. A volume an older
//! kv mounted has no such mount: it is written through its mount dir if that is writable, and
//! a read-only one is refused (delete the pod to remount it).

use crate::error::{Code, Error, Result};
use crate::nodestate::{MountTable, Record};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};

/// Whether the record's volume is still mounted: kv's tmpfs at the mount dir and, for a volume
/// with an agent mount, the same tmpfs there.
pub fn is_live(table: &MountTable, record: &Record) -> bool {
    let Some(dev) = table.kv_volume(&record.dir) else {
        return false;
    };
    match &record.agent_mount {
        Some(agent) => table.kv_volume(agent).as_deref() == Some(dev.as_str()),
        None => true,
    }
}

/// The root the agent writes a volume's new versions into.
pub struct VolumeRoot {
    fd: OwnedFd,
}

impl VolumeRoot {
    /// Opens the agent's mount of the volume (no symlink followed), or the mount dir of a
    /// volume an older kv mounted.
    pub fn open(record: &Record) -> Result<VolumeRoot> {
        let path = record.agent_mount.as_deref().unwrap_or(&record.dir);
        let fd = crate::atomic::open_dir(path)
            .map_err(|e| Error::new(Code::Mount, format!("cannot open {}: {e}", path.display())))?;
        let st = rustix::fs::fstatvfs(&fd).map_err(|e| {
            Error::new(
                Code::Mount,
                format!("cannot inspect {}: {e}", path.display()),
            )
        })?;
        if st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(Error::new(
                Code::Mount,
                format!(
                    "{} is read-only and was mounted by an older kv without the agent's own mount: delete the pod to remount it, then it rotates",
                    path.display()
                ),
            ));
        }
        Ok(VolumeRoot { fd })
    }

    /// The root directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
