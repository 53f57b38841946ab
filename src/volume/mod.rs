//! The volume: a tmpfs built detached, filled, then attached at `<dir>` in one step.
//!
//! kubelet treats any mount point at `<dir>` as a finished volume and never calls the driver
//! again, so a half-written tmpfs must never be visible there. kv uses Linux's mount API
//! (fsopen/fsmount, Linux ≥ 5.2): the tmpfs exists only as a file descriptor while its files are
//! written through `openat` on it, and `move_mount` attaches the finished tree atomically. If kv
//! dies at any point before that, the descriptor closes and the kernel frees the tmpfs: there is
//! no staging mount or temp file to clean up, and no secret byte ever touches a disk. Older
//! kernels fall back to mounting at `<dir>` directly and unmounting on any error.
//!
//! A rotating volume gets a second mount of the same tmpfs, the agent's, in the node state
//! ([`crate::nodestate::AgentMountPoint`]): the agent writes new versions there and never
//! through kubelet's directory, and a read-only volume is read-only per mount for the pod
//! (`mount_setattr` before it is attached) while its superblock stays writable.

mod mount_attr;
pub mod versioned;

use crate::error::{Code, Error, Result};
use crate::nodestate::{AgentMountPoint, MountTable};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use zeroize::Zeroizing;

/// One file of the volume.
pub struct VolumeFile {
    /// Relative path: a name, or `name/<n>` for version history.
    pub path: String,
    /// Contents.
    pub bytes: Zeroizing<Vec<u8>>,
    /// Final mode.
    pub mode: u32,
}

/// Everything needed to build the tmpfs.
pub struct Layout {
    /// The files.
    pub files: Vec<VolumeFile>,
    /// Mode of the root and any sub-directory.
    pub dir_mode: u32,
    /// Group owner (the pod's fsGroup).
    pub gid: Option<u32>,
    /// tmpfs `size=` in bytes.
    pub size: u64,
    /// Attach read-only (the pod's `flexVolume.readOnly: true`, `kubernetes.io/readwrite: ro`).
    pub read_only: bool,
    /// The volume rotates: written in the `..data` layout of [`versioned`] (a
    /// version directory and links) so `kv agent` can switch it in one step later.
    pub rotating: bool,
}

const PAGE: u64 = 4096;
/// Room for kubelet/runtime metadata (SELinux relabel xattrs) beyond the files, when the
/// node's cap allows it.
pub const HEADROOM: u64 = 64 * 1024;

/// Bytes of tmpfs one file of `len` bytes takes (tmpfs charges whole pages).
pub fn page_bytes(len: usize) -> u64 {
    (len as u64).div_ceil(PAGE).max(1) * PAGE
}

/// Bytes of tmpfs the files need, without headroom.
pub fn needed_bytes(files: &[VolumeFile]) -> u64 {
    files.iter().map(|f| page_bytes(f.bytes.len())).sum()
}

/// Checks `<dir>` has kubelet's shape `<root>/pods/<uid>/volumes/azure~kv/<name>`: absolute, no
/// `.`/`..`, and no symlink in any existing component (a planted symlink could redirect the
/// mount or the cleanup anywhere on the host).
pub fn validate_kubelet_dir(dir: &Path) -> Result<()> {
    let bad = |why: &str| {
        Error::new(
            Code::Dir,
            format!(
                "mount directory {} {why}; kubelet passes <kubelet-root>/pods/<pod-uid>/volumes/azure~kv/<volume>",
                crate::error::printable(&dir.to_string_lossy())
            ),
        )
    };
    if !dir.is_absolute() {
        return Err(bad("is not absolute"));
    }
    // The mount table holds normalised paths: `a//b`, `a/./b` or a trailing `/` would never
    // match it, and a repeated mount would stack instead of being recognised.
    let raw = dir.as_os_str().as_bytes();
    if raw.windows(2).any(|w| w == b"//")
        || raw.windows(3).any(|w| w == b"/./")
        || raw.ends_with(b"/")
        || raw.ends_with(b"/.")
    {
        return Err(bad("is not in normal form"));
    }
    let names: Vec<&OsStr> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::RootDir => None,
            _ => Some(Err(())),
        })
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("contains . or .."))?;
    let n = names.len();
    let shaped = n >= 5
        && names[n - 2] == "azure~kv"
        && names[n - 3] == "volumes"
        && names[n - 5] == "pods"
        && names[n - 1].as_bytes().first() != Some(&b'.');
    if !shaped {
        return Err(bad("does not have kubelet's shape"));
    }
    let mut prefix = PathBuf::from("/");
    for name in &names {
        prefix.push(name);
        match std::fs::symlink_metadata(&prefix) {
            Ok(m) if m.file_type().is_symlink() => return Err(bad("goes through a symlink")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(bad(&format!("cannot be inspected ({e})"))),
        }
    }
    Ok(())
}

/// The pod uid in a kubelet volume dir (`.../pods/<uid>/volumes/azure~kv/<name>`).
pub fn pod_uid(dir: &Path) -> Option<String> {
    let names: Vec<&OsStr> = dir.iter().collect();
    let n = names.len();
    (n >= 5).then(|| names[n - 4].to_string_lossy().to_string())
}

/// Whether `dir` is exactly a mount point, from this process's mount table.
pub fn is_mount_point(dir: &Path) -> Result<bool> {
    Ok(MountTable::read()?.top(dir).is_some())
}

/// Whether `dir` already holds kv's volume: `Ok(false)` when it is not a mount point,
/// `Ok(true)` when the topmost mount there is a tmpfs with source `kv` (a repeated call), and a
/// Failure for anything else mounted there: kv must not report someone else's filesystem (a
/// host path, another driver's volume) as the pod's secrets.
pub fn already_mounted(dir: &Path) -> Result<bool> {
    let Some(top) = MountTable::read()?.top(dir) else {
        return Ok(false);
    };
    if top.is_kv() {
        return Ok(true);
    }
    Err(Error::new(
        Code::Mount,
        format!(
            "{} is already a mount point of something else ({} from {}), not kv's tmpfs: unmount it (or delete and recreate the pod) and retry",
            dir.display(),
            crate::error::printable(&top.fstype),
            crate::error::printable(&top.source),
        ),
    ))
}

/// Makes sure `<dir>` exists (kubelet creates it with 0750 before calling; a manual call may not).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            Code::Dir,
            format!("{} exists and is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o750)
                .create(dir)
                .map_err(|e| Error::new(Code::Dir, format!("cannot create {}: {e}", dir.display())))
        }
        Err(e) => Err(Error::new(
            Code::Dir,
            format!("cannot inspect {}: {e}", dir.display()),
        )),
    }
}

fn mount_err(step: &str, e: rustix::io::Errno) -> Error {
    Error::new(Code::Mount, format!("{step}: {e}"))
}

/// Builds the tmpfs and attaches it at `dir`; a rotating volume also at `agent` (the agent's
/// own mount, always writable). On an error nothing is left at `dir` (the caller removes the
/// agent's mount).
pub fn mount(dir: &Path, layout: &Layout, agent: Option<&AgentMountPoint>) -> Result<()> {
    match rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => mount_detached(fs, dir, layout, agent),
        Err(rustix::io::Errno::NOSYS) => mount_in_place(dir, layout),
        Err(e) => Err(mount_err("cannot create a tmpfs (fsopen)", e)),
    }
}

fn mount_detached(
    fs: OwnedFd,
    dir: &Path,
    layout: &Layout,
    agent: Option<&AgentMountPoint>,
) -> Result<()> {
    let set = |k: &str, v: &str| {
        rustix::mount::fsconfig_set_string(&fs, k, v)
            .map_err(|e| mount_err(&format!("tmpfs option {k}={v}"), e))
    };
    set("source", "kv")?;
    set("size", &layout.size.to_string())?;
    set("nr_inodes", &nr_inodes(layout)?.to_string())?;
    set("mode", &format!("{:o}", layout.dir_mode))?;
    set("uid", "0")?;
    set("gid", &layout.gid.unwrap_or(0).to_string())?;
    rustix::mount::fsconfig_create(&fs).map_err(|e| mount_err("cannot create the tmpfs", e))?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV
            | MountAttrFlags::MOUNT_ATTR_NOEXEC,
    )
    .map_err(|e| mount_err("cannot create the tmpfs mount", e))?;
    write_files(&mnt, layout)?;
    let pod = match agent {
        None => mnt,
        Some(point) => {
            // The agent's mount first, in the root-only state dir; the pod's is a clone of it
            // (a detached mount can be cloned only once attached, on kernels before 6.15).
            rustix::mount::move_mount(
                &mnt,
                "",
                &point.parent,
                point.name.as_str(),
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
            )
            .map_err(|e| {
                mount_err(
                    &format!("cannot attach the tmpfs at {}", point.path.display()),
                    e,
                )
            })?;
            rustix::mount::open_tree(
                &point.parent,
                point.name.as_str(),
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map_err(|e| mount_err("cannot clone the tmpfs mount for the pod", e))?
        }
    };
    if layout.read_only {
        // Read-only for this mount only, before anyone can see it: every copy kubelet or mount
        // propagation makes of it is read-only too, and the agent's mount stays writable.
        mount_attr::set_read_only(pod.as_fd())
            .map_err(|e| mount_err("cannot make the pod's mount read-only", e))?;
    }
    rustix::mount::move_mount(
        &pod,
        "",
        rustix::fs::CWD,
        dir,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| mount_err(&format!("cannot attach the tmpfs at {}", dir.display()), e))
}

fn mount_in_place(dir: &Path, layout: &Layout) -> Result<()> {
    let data = format!(
        "size={},nr_inodes={},mode={:o},uid=0,gid={}",
        layout.size,
        nr_inodes(layout)?,
        layout.dir_mode,
        layout.gid.unwrap_or(0)
    );
    rustix::mount::mount(
        "kv",
        dir,
        "tmpfs",
        rustix::mount::MountFlags::NOSUID
            | rustix::mount::MountFlags::NODEV
            | rustix::mount::MountFlags::NOEXEC,
        std::ffi::CString::new(data)
            .map_err(|_| Error::new(Code::Internal, "tmpfs options contain NUL"))?
            .as_c_str(),
    )
    .map_err(|e| mount_err(&format!("cannot mount a tmpfs at {}", dir.display()), e))?;
    let result = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| mount_err("cannot open the new tmpfs", e))
    .and_then(|root| write_files(&root, layout))
    .and_then(|()| {
        if !layout.read_only {
            return Ok(());
        }
        rustix::mount::mount_remount(
            dir,
            rustix::mount::MountFlags::RDONLY
                | rustix::mount::MountFlags::NOSUID
                | rustix::mount::MountFlags::NODEV
                | rustix::mount::MountFlags::NOEXEC,
            "",
        )
        .map_err(|e| mount_err("cannot make the tmpfs read-only", e))
    });
    if result.is_err() {
        let _ = rustix::mount::unmount(dir, UnmountFlags::DETACH);
    }
    result
}

/// Inodes of the tmpfs: the files and their directories, twice for a rotating volume (the
/// current version and the next one during a switch, with their links), plus room.
fn nr_inodes(layout: &Layout) -> Result<u64> {
    if layout.rotating {
        Ok(versioned::room_for_rotation(&layout.files)?.inodes + 64)
    } else {
        Ok(layout.files.len() as u64 * 2 + 64)
    }
}

/// Writes every file below `root` (the tmpfs root). Files are created with no permission bits,
/// written, given their group, then their final mode: never more open than they end up. A
/// rotating volume gets its first version in the `..data` layout instead.
fn write_files(root: &OwnedFd, layout: &Layout) -> Result<()> {
    if layout.rotating {
        use versioned::{write_initial, Budget, Perms};
        let perms = Perms {
            dir_mode: layout.dir_mode,
            gid: layout.gid,
        };
        // fsmount's descriptor is O_PATH: the layout lists and fsyncs the directory, so it
        // gets a real one.
        let dir = rustix::fs::openat(
            root,
            ".",
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| mount_err("cannot open the new tmpfs", e))?;
        // The tmpfs size limit is the budget: it was sized for two versions.
        return write_initial(dir.as_fd(), &layout.files, perms, Budget::unlimited()).map(|_| ());
    }
    let perms = versioned::Perms {
        dir_mode: layout.dir_mode,
        gid: layout.gid,
    };
    let mut made_dirs: std::collections::BTreeMap<String, OwnedFd> = Default::default();
    for f in &layout.files {
        let (parent, name) = match f.path.split_once('/') {
            Some((sub, name)) => {
                if !made_dirs.contains_key(sub) {
                    let fd = versioned::make_dir(root.as_fd(), sub, perms).map_err(|e| {
                        mount_err(&format!("cannot create directory {sub} in the volume"), e)
                    })?;
                    made_dirs.insert(sub.to_string(), fd);
                }
                (
                    made_dirs
                        .get(sub)
                        .map(|fd| fd.as_fd())
                        .unwrap_or(root.as_fd()),
                    name,
                )
            }
            None => (root.as_fd(), f.path.as_str()),
        };
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| mount_err(&format!("cannot create {} in the volume", f.path), e))?;
        write_all(&fd, &f.bytes)
            .map_err(|e| mount_err(&format!("cannot write {} in the volume", f.path), e))?;
        if let Some(g) = layout.gid {
            rustix::fs::fchown(&fd, None, Some(rustix::fs::Gid::from_raw(g)))
                .map_err(|e| mount_err(&format!("cannot chown {}", f.path), e))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(f.mode))
            .map_err(|e| mount_err(&format!("cannot chmod {}", f.path), e))?;
    }
    Ok(())
}

fn write_all(fd: impl AsFd, mut bytes: &[u8]) -> rustix::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(&fd, bytes) {
            Ok(0) => return Err(rustix::io::Errno::NOSPC),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Unmounts everything at `dir`, removes what is left in it and the directory itself. Succeeds
/// on a missing, never-mounted or half-cleaned directory (kubelet retries teardown until success).
pub fn unmount(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::new(
                Code::Mount,
                format!("cannot inspect {}: {e}", dir.display()),
            ))
        }
        Ok(m) if !m.is_dir() => {
            return Err(Error::new(
                Code::Dir,
                format!("{} is not a directory", dir.display()),
            ))
        }
        Ok(_) => {}
    }
    // Stacked mounts (a retried old driver, a manual mount) are all removed.
    for _ in 0..16 {
        if !is_mount_point(dir)? {
            break;
        }
        match rustix::mount::unmount(dir, UnmountFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::BUSY) => rustix::mount::unmount(dir, UnmountFlags::DETACH)
                .map_err(|e| mount_err(&format!("cannot unmount {}", dir.display()), e))?,
            Err(rustix::io::Errno::INVAL) if !is_mount_point(dir)? => break,
            Err(e) => return Err(mount_err(&format!("cannot unmount {}", dir.display()), e)),
        }
    }
    if is_mount_point(dir)? {
        return Err(Error::new(
            Code::Mount,
            format!("{} is still a mount point after unmounting", dir.display()),
        ));
    }
    // Leftovers of an old driver that wrote to disk, or of a manual run: remove without
    // following symlinks (remove_dir_all does not follow them).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            let r = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::NotFound {
                    return Err(Error::new(
                        Code::Mount,
                        format!("cannot remove {}: {e}", path.display()),
                    ));
                }
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::new(
            Code::Mount,
            format!("cannot remove {}: {e}", dir.display()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_shape_is_required() {
        for ok in [
            "/var/lib/kubelet/pods/8c1e/volumes/azure~kv/vol",
            "/tmp/x/pods/u/volumes/azure~kv/v-1",
        ] {
            assert!(validate_kubelet_dir(Path::new(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "relative/pods/u/volumes/azure~kv/v",
            "/var/lib/kubelet/pods/u/volumes/azure~kv/../../../../etc",
            "/var/lib/kubelet/pods/u/volumes/other~drv/v",
            "/etc",
            "/var/lib/kubelet/pods/u/volumes/azure~kv/.hidden",
            "/var/lib/kubelet/pods/u/volumes/azure~kv/./v",
            "/var/lib/kubelet/pods/u/volumes/azure~kv//v",
            "/var/lib/kubelet/pods/u/volumes/azure~kv/v/",
        ] {
            assert_eq!(
                validate_kubelet_dir(Path::new(bad)).unwrap_err().code(),
                Code::Dir,
                "{bad}"
            );
        }
    }

    #[test]
    fn size_counts_pages() {
        let f = |n: usize| VolumeFile {
            path: "a".into(),
            bytes: Zeroizing::new(vec![0; n]),
            mode: 0o444,
        };
        assert_eq!(needed_bytes(&[f(0), f(1), f(4097)]), 4 * PAGE);
    }
}
