//! Step 4 outside kubelet: a volume's files written into a plain directory (`kv fetch --dir`).
//! A mount writes into its detached tmpfs instead ([`crate::volume::mount`]).
//!
//! The directory is the operator's, but kv runs as root: it is created `0700`, an existing one
//! must belong to the caller and not be group/world-writable (another user could otherwise swap
//! files or links inside it), nothing is followed through a symlink, and each file is replaced
//! atomically ([`crate::atomic`]). A plain directory may be on disk and in backups, so files
//! there are at most `0600` unless the operator asks for a mode; on a tmpfs the volume's own
//! modes are kept.

use crate::error::{Code, Error, Result};
use crate::volume::Layout;
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use std::path::Path;

/// The most a file outside a tmpfs may allow without `--mode`.
pub const MAX_PLAIN_DIR_MODE: u32 = 0o600;

/// Writes every file of `layout` under `dir`; returns the mode each file got, in order.
pub fn to_dir(dir: &Path, layout: &Layout, mode: Option<u32>) -> Result<Vec<u32>> {
    let io = |what: &str, path: &Path, e: std::io::Error| {
        Error::new(
            Code::Mount,
            format!("cannot {what} {}: {e}", path.display()),
        )
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("create", dir, e))?;
        }
        Err(e) => return Err(io("inspect", dir, e)),
        Ok(m) if m.file_type().is_symlink() => return Err(symlink(dir)),
        Ok(_) => {}
    }
    // O_NOFOLLOW again at open: a link swapped in after the check is refused too (ENOTDIR).
    let root = crate::atomic::open_dir(dir).map_err(|e| {
        let errno = e.raw_os_error();
        if errno == Some(rustix::io::Errno::LOOP.raw_os_error())
            || errno == Some(rustix::io::Errno::NOTDIR.raw_os_error())
        {
            symlink(dir)
        } else {
            io("open directory", dir, e)
        }
    })?;
    check_owner(&root, dir)?;
    // `f_type`'s integer type differs between libcs (and 32-bit targets).
    #[allow(clippy::unnecessary_cast)]
    let on_tmpfs = rustix::fs::fstatfs(&root)
        .map(|s| s.f_type as i64 == TMPFS_MAGIC)
        .unwrap_or(false);
    let mut modes = Vec::with_capacity(layout.files.len());
    for f in &layout.files {
        let file_mode = match mode {
            Some(m) => m,
            None if on_tmpfs => f.mode,
            None => f.mode & MAX_PLAIN_DIR_MODE,
        };
        let (parent, name) =
            open_parent(&root, &f.path).map_err(|e| io("create", &dir.join(&f.path), e))?;
        crate::atomic::write_at(
            parent.as_ref().unwrap_or(&root),
            name,
            &f.bytes,
            file_mode,
            layout.gid,
        )
        .map_err(|e| io("write", &dir.join(&f.path), e))?;
        modes.push(file_mode);
    }
    Ok(modes)
}

fn symlink(dir: &Path) -> Error {
    Error::new(
        Code::Usage,
        format!(
            "--dir {} is a symlink or not a directory: give the real directory",
            dir.display()
        ),
    )
}

/// `TMPFS_MAGIC` from `linux/magic.h`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// An existing directory must be the caller's (root's) and writable by nobody else.
fn check_owner(root: &OwnedFd, dir: &Path) -> Result<()> {
    let st = rustix::fs::fstat(root).map_err(|e| {
        Error::new(
            Code::Mount,
            format!("cannot inspect {}: {e}", dir.display()),
        )
    })?;
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me || st.st_mode & 0o022 != 0 {
        return Err(Error::new(
            Code::Usage,
            format!(
                "--dir {} belongs to uid {} with mode {:04o}: kv writes secrets only into a directory owned by uid {me} that no one else can write (chown/chmod it, or name a new directory)",
                dir.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Opens (creating `0700`) the directories of a volume-relative path like `web/0.crt`, without
/// following symlinks; returns the innermost directory (`None` = the root) and the file name.
fn open_parent<'p>(root: &OwnedFd, path: &'p str) -> std::io::Result<(Option<OwnedFd>, &'p str)> {
    let mut parts: Vec<&str> = path.split('/').collect();
    let name = parts.pop().unwrap_or(path);
    let mut current: Option<OwnedFd> = None;
    for part in parts {
        let at = current.as_ref().unwrap_or(root);
        match rustix::fs::mkdirat(at, part, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        current = Some(rustix::fs::openat(
            at,
            part,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?);
    }
    Ok((current, name))
}
