//! The volume: a tmpfs built detached, filled, then attached at `<dir>` in one step.
//!
//! kubelet treats any mount point at `<dir>` as a finished volume and never calls the driver
//! again, so a half-written tmpfs must never be visible there. kv uses Linux's mount API
//! (fsopen/fsmount, Linux ≥ 5.2): the tmpfs exists only as a file descriptor while its files are
//! written through `openat` on it, and `move_mount` attaches the finished tree atomically. If kv
//! dies at any point before that, the descriptor closes and the kernel frees the tmpfs: there is
//! no staging mount or temp file to clean up, and no secret byte ever touches a disk. Older
//! kernels fall back to mounting at `<dir>` directly and unmounting on any error.

pub mod versioned;

use crate::error::{Code, Error, Result};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags, UnmountFlags};
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
    Ok(top_mount(dir)?.is_some())
}

/// The mountinfo line of the topmost mount at `dir` (the last one listed: what a process
/// opening `dir` sees), if `dir` is a mount point.
fn top_mount(dir: &Path) -> Result<Option<Vec<u8>>> {
    let table = std::fs::read("/proc/self/mountinfo").map_err(|e| {
        Error::new(
            Code::Mount,
            format!("cannot read /proc/self/mountinfo: {e}"),
        )
    })?;
    let want = dir.as_os_str().as_bytes();
    Ok(table
        .split(|b| *b == b'\n')
        .rfind(|line| {
            line.split(|b| *b == b' ')
                .nth(4)
                .is_some_and(|mp| unescape_mountinfo(mp) == want)
        })
        .map(<[u8]>::to_vec))
}

/// Whether `dir` already holds kv's volume: `Ok(false)` when it is not a mount point,
/// `Ok(true)` when the topmost mount there is a tmpfs with source `kv` (a repeated call), and a
/// Failure for anything else mounted there: kv must not report someone else's filesystem (a
/// host path, another driver's volume) as the pod's secrets.
pub fn already_mounted(dir: &Path) -> Result<bool> {
    let Some(top) = top_mount(dir)? else {
        return Ok(false);
    };
    let fields: Vec<&[u8]> = top.split(|b| *b == b' ').collect();
    let after_separator = fields
        .iter()
        .position(|f| *f == b"-")
        .map(|i| &fields[i + 1..]);
    let (fstype, source) = match after_separator {
        Some([fstype, source, ..]) => (unescape_mountinfo(fstype), unescape_mountinfo(source)),
        _ => (Vec::new(), Vec::new()),
    };
    if fstype == b"tmpfs" && source == b"kv" {
        return Ok(true);
    }
    Err(Error::new(
        Code::Mount,
        format!(
            "{} is already a mount point of something else ({} from {}), not kv's tmpfs: unmount it (or delete and recreate the pod) and retry",
            dir.display(),
            crate::error::printable(&String::from_utf8_lossy(&fstype)),
            crate::error::printable(&String::from_utf8_lossy(&source)),
        ),
    ))
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// Where the per-directory locks live: outside kubelet's tree (kubelet treats every entry
/// under `volumes/azure~kv/` as a volume), on /run (a tmpfs: gone at reboot, like the mounts).
const LOCK_DIR: &str = "/run/kv/locks";

/// Holds the per-directory lock until dropped: two calls for one `<dir>` serialize.
///
/// Lifetime of a lock file: created by the first call for `<dir>`, it stays while `<dir>` is a
/// mount point (the volume exists) and is removed by whichever call leaves `<dir>` unmounted
/// (the unmount, or a mount that failed), while that call still holds the lock. A call that
/// opened the file before it was removed notices after `flock` (the path no longer leads to the
/// inode it locked) and opens the new file: removal never lets two calls in at once.
pub struct DirLock {
    #[allow(dead_code)] // held for its flock
    fd: OwnedFd,
    path: PathBuf,
    dir: PathBuf,
}

/// `<LOCK_DIR>/<sha256 of the path>.lock`: stable across releases and processes (std's hasher
/// is not), fixed length whatever the path.
pub fn lock_path(dir: &Path) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(dir.as_os_str().as_bytes());
    Path::new(LOCK_DIR).join(format!("{}.lock", hex::encode(digest)))
}

/// Takes the lock for `dir`.
pub fn lock(dir: &Path) -> Result<DirLock> {
    let locks = Path::new(LOCK_DIR);
    std::fs::create_dir_all(locks).map_err(|e| {
        Error::new(
            Code::Mount,
            format!("cannot create {}: {e}", locks.display()),
        )
    })?;
    let path = lock_path(dir);
    let err = |what: &str, e: rustix::io::Errno| {
        Error::new(
            Code::Mount,
            format!("cannot {what} lock {}: {e}", path.display()),
        )
    };
    // Each round loses only to a holder that removed the file; a few suffice.
    for _ in 0..64 {
        let fd = rustix::fs::open(
            &path,
            OFlags::CREATE | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err("open", e))?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| err("take", e))?;
        let held = rustix::fs::fstat(&fd).map_err(|e| err("inspect", e))?;
        match rustix::fs::stat(&path) {
            Ok(now) if now.st_ino == held.st_ino && now.st_dev == held.st_dev => {
                return Ok(DirLock {
                    fd,
                    path,
                    dir: dir.to_path_buf(),
                })
            }
            // Removed (or replaced) by the previous holder: this inode guards nothing.
            Ok(_) | Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => return Err(err("inspect", e)),
        }
    }
    Err(Error::new(
        Code::Mount,
        format!(
            "cannot take lock {}: it keeps being replaced",
            path.display()
        ),
    ))
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // No volume at <dir> any more: the lock guards nothing; remove it while still held.
        if !is_mount_point(&self.dir).unwrap_or(true) {
            let _ = std::fs::remove_file(&self.path);
        }
        // `self.fd` closes after this, releasing the lock.
    }
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

/// Builds the tmpfs and attaches it at `dir`.
pub fn mount(dir: &Path, layout: &Layout) -> Result<()> {
    match rustix::mount::fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => mount_detached(fs, dir, layout),
        Err(rustix::io::Errno::NOSYS) => mount_in_place(dir, layout),
        Err(e) => Err(mount_err("cannot create a tmpfs (fsopen)", e)),
    }
}

fn mount_detached(fs: OwnedFd, dir: &Path, layout: &Layout) -> Result<()> {
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
    if layout.read_only {
        // After fsmount the fs descriptor reconfigures the superblock: read-only before it is
        // attached, so no container of the pod ever sees it writable. (A per-mount
        // MOUNT_ATTR_RDONLY would need mount_setattr, which rustix does not wrap; this tmpfs
        // has one mount, so the superblock flag means the same to the pod.)
        rustix::mount::fsconfig_set_flag(&fs, "ro")
            .and_then(|()| rustix::mount::fsconfig_reconfigure(&fs))
            .map_err(|e| mount_err("cannot make the tmpfs read-only", e))?;
    }
    rustix::mount::move_mount(
        &mnt,
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
        return write_initial(dir.as_fd(), &layout.files, perms, Budget::unlimited());
    }
    let mut made_dirs = std::collections::BTreeSet::new();
    for f in &layout.files {
        if let Some((sub, _)) = f.path.split_once('/') {
            if made_dirs.insert(sub.to_string()) {
                rustix::fs::mkdirat(root, sub, Mode::empty()).map_err(|e| {
                    mount_err(&format!("cannot create directory {sub} in the volume"), e)
                })?;
                rustix::fs::chownat(
                    root,
                    sub,
                    None,
                    layout.gid.map(rustix::fs::Gid::from_raw),
                    rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|e| mount_err(&format!("cannot chown directory {sub}"), e))?;
                rustix::fs::chmodat(
                    root,
                    sub,
                    Mode::from_raw_mode(layout.dir_mode),
                    rustix::fs::AtFlags::empty(),
                )
                .map_err(|e| mount_err(&format!("cannot chmod directory {sub}"), e))?;
            }
        }
        let fd = rustix::fs::openat(
            root,
            f.path.as_str(),
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
    fn lock_names_are_the_sha256_of_the_path() {
        assert_eq!(
            lock_path(Path::new("/a")),
            Path::new(
                "/run/kv/locks/6a50dc8584134c7de537c0052ff6d236bf874355e050c90523e0c5ff2a543a28.lock"
            )
        );
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(br"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(unescape_mountinfo(br"/x\04"), br"/x\04".to_vec());
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
