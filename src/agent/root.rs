//! A rotating volume's tmpfs, as the agent reaches it: is it still kv's mount, and its root
//! opened for writing for the time of one switch.
//!
//! A read-only volume (`kubernetes.io/readwrite: ro`) is a read-only tmpfs. kv makes it
//! writable only while it writes a new version (a remount of the tmpfs, keeping nosuid, nodev
//! and noexec) and read-only again as soon as the version is in place, also after an error; a
//! volume found writable after the agent was killed in that window is made read-only on its
//! next refresh. Files and directories stay root-owned with their read-only modes throughout,
//! so only a root process in the pod could write during that window.

use crate::error::{Code, Error, Result};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::mount::MountFlags;
use serde_json::json;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether `dir` is still a volume of kv's: the topmost mount there is a tmpfs with source
/// `kv`. A missing dir is not.
pub fn is_live(dir: &Path) -> Result<bool> {
    Ok(Mounts::read()?.is_live(dir))
}

/// One reading of this process's mount table. A pass checks every recorded volume against one
/// reading instead of reading the table once per volume: with 500 volumes the table has 500+
/// lines, and the kernel formats all of it for every read.
pub struct Mounts(Vec<u8>);

impl Mounts {
    /// Reads `/proc/self/mountinfo`.
    pub fn read() -> Result<Mounts> {
        std::fs::read("/proc/self/mountinfo")
            .map(Mounts)
            .map_err(|e| {
                Error::new(
                    Code::Mount,
                    format!("cannot read /proc/self/mountinfo: {e}"),
                )
            })
    }

    /// Whether the topmost mount at `dir` is a tmpfs with source `kv`.
    pub fn is_live(&self, dir: &Path) -> bool {
        let want = escape_mountinfo(dir.as_os_str().as_bytes());
        let top = self
            .0
            .split(|b| *b == b'\n')
            .rfind(|line| line.split(|b| *b == b' ').nth(4) == Some(&want[..]));
        let Some(line) = top else { return false };
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        match fields.iter().position(|f| *f == b"-") {
            Some(i) => {
                fields.get(i + 1) == Some(&&b"tmpfs"[..]) && fields.get(i + 2) == Some(&&b"kv"[..])
            }
            None => false,
        }
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn escape_mountinfo(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{b:03o}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// The flags every kv tmpfs keeps across remounts.
const KEEP: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// The volume's root, writable until dropped; a read-only volume is read-only again after.
pub struct VolumeRoot {
    fd: OwnedFd,
    /// Set when the volume must be read-only once the switch is done.
    reprotect: Option<PathBuf>,
}

impl VolumeRoot {
    /// Opens `dir` (the mount point: no symlink followed) for writing. `read_only`: the volume
    /// was mounted read-only, whatever state it is found in.
    pub fn open(dir: &Path, read_only: bool) -> Result<VolumeRoot> {
        let fd = crate::atomic::open_dir(dir)
            .map_err(|e| Error::new(Code::Mount, format!("cannot open {}: {e}", dir.display())))?;
        let st = rustix::fs::fstatvfs(&fd).map_err(|e| {
            Error::new(
                Code::Mount,
                format!("cannot inspect {}: {e}", dir.display()),
            )
        })?;
        let is_ro = st.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
        let root = VolumeRoot {
            fd,
            reprotect: (read_only || is_ro).then(|| dir.to_path_buf()),
        };
        if is_ro {
            rustix::mount::mount_remount(dir, KEEP, "").map_err(|e| {
                Error::new(
                    Code::Mount,
                    format!(
                        "cannot make the read-only volume {} writable for the switch: {e}",
                        dir.display()
                    ),
                )
            })?;
        }
        Ok(root)
    }

    /// The root directory.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the volume goes back to read-only when this is dropped.
    pub fn reprotects(&self) -> bool {
        self.reprotect.is_some()
    }
}

impl Drop for VolumeRoot {
    fn drop(&mut self) {
        if let Some(dir) = &self.reprotect {
            if let Err(e) = rustix::mount::mount_remount(dir, KEEP | MountFlags::RDONLY, "") {
                // The next refresh of this volume tries again.
                crate::log::error(
                    "rotation_reprotect_failed",
                    json!({"volume": dir.to_string_lossy(), "message": e.to_string()}),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Tmpfs;

    fn read_only(dir: &Path) -> bool {
        rustix::fs::statvfs(dir)
            .unwrap()
            .f_flag
            .contains(rustix::fs::StatVfsMountFlags::RDONLY)
    }

    #[test]
    fn a_read_only_volume_is_writable_only_while_open() {
        let fs = Tmpfs::new("root-ro", 1 << 20);
        rustix::mount::mount_remount(&fs.dir, KEEP | MountFlags::RDONLY, "").unwrap();
        assert!(read_only(&fs.dir));
        {
            let root = VolumeRoot::open(&fs.dir, true).unwrap();
            assert!(root.reprotects() && !read_only(&fs.dir));
            rustix::fs::mkdirat(root.fd(), "x", rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        }
        assert!(read_only(&fs.dir));
        assert!(fs.dir.join("x").is_dir());
        // Found writable after a crash in that window: read-only again after the next use.
        rustix::mount::mount_remount(&fs.dir, KEEP, "").unwrap();
        drop(VolumeRoot::open(&fs.dir, true).unwrap());
        assert!(read_only(&fs.dir));
        // A read-write volume stays so.
        let rw = Tmpfs::new("root-rw", 1 << 20);
        let root = VolumeRoot::open(&rw.dir, false).unwrap();
        assert!(!root.reprotects());
        drop(root);
        assert!(!read_only(&rw.dir));
    }

    #[test]
    fn only_kv_tmpfs_mounts_are_live() {
        let fs = Tmpfs::new("root-live", 1 << 20);
        assert!(is_live(&fs.dir).unwrap());
        assert!(!is_live(fs.dir.parent().unwrap()).unwrap());
        assert!(!is_live(&fs.dir.join("missing")).unwrap());
        rustix::mount::mount("other", &fs.dir, "tmpfs", MountFlags::empty(), c"size=64k").unwrap();
        assert!(!is_live(&fs.dir).unwrap(), "the topmost mount counts");
        rustix::mount::unmount(&fs.dir, rustix::mount::UnmountFlags::empty()).unwrap();
        assert!(is_live(&fs.dir).unwrap());
    }

    #[test]
    fn mountinfo_paths_are_escaped() {
        assert_eq!(
            escape_mountinfo(b"/a b\\c\td"),
            b"/a\\040b\\134c\\011d".to_vec()
        );
    }
}
