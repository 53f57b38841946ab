//! Root-only directories and files: a directory is created 0700 and used only when it is ours;
//! a file is trusted only when it is a regular file (not a link, FIFO or device), owned by root
//! or by us, unreadable by group and others, and small. Anything else is removed, so a bad entry
//! costs one cache miss and is replaced by the next write.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use std::io;
use std::path::Path;
use zeroize::Zeroizing;

/// The largest node-state file kv reads (a token is a few KiB).
pub(super) const MAX_FILE: u64 = 64 * 1024;

/// Root, or the user kv runs as (tests): nobody else may have written our state.
pub(super) fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == rustix::process::geteuid().as_raw()
}

/// Opens (creating 0700) the state root; only its last component is refused as a symlink,
/// because `/run` itself is a link on some distributions.
pub(super) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    match rustix::fs::mkdir(path, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::open(path, dir_flags(), Mode::empty())?;
    secure_dir(&fd, &path.display().to_string())?;
    Ok(fd)
}

/// Opens (creating 0700) the subdirectory `name` of `parent`.
pub(super) fn open_dir(parent: impl AsFd, name: &str) -> io::Result<OwnedFd> {
    let parent = parent.as_fd();
    match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let fd = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?;
    secure_dir(&fd, name)?;
    Ok(fd)
}

/// Opens the existing directory `path` as [`open_dir`] would, without creating anything:
/// `Ok(None)` when it does not exist, an error when it is not ours.
pub(super) fn open_existing(path: &Path) -> io::Result<Option<OwnedFd>> {
    let fd = match rustix::fs::open(path, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    secure_dir(&fd, &path.display().to_string())?;
    Ok(Some(fd))
}

/// Opens an existing directory for reading, if it is a trusted one; never creates anything.
pub(super) fn existing_dir(path: &Path) -> Option<OwnedFd> {
    let fd = rustix::fs::open(path, dir_flags(), Mode::empty()).ok()?;
    let st = rustix::fs::fstat(&fd).ok()?;
    trusted_owner(st.st_uid).then_some(fd)
}

fn dir_flags() -> OFlags {
    OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC
}

/// A directory owned by someone else is refused (they could have planted entries); one of ours
/// with a looser mode is tightened.
fn secure_dir(fd: &OwnedFd, what: &str) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if !trusted_owner(st.st_uid) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{what} is owned by uid {}, not root; remove it", st.st_uid),
        ));
    }
    if st.st_mode & 0o077 != 0 {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(0o700))?;
    }
    Ok(())
}

/// Reads `dir/name` if it is trustworthy; an untrustworthy entry (symlink, not a regular file,
/// foreign owner, group/world-readable, oversized) is removed. `None` when missing or removed.
pub(super) fn read(dir: &OwnedFd, name: &str) -> Option<Zeroizing<Vec<u8>>> {
    match read_checked(dir, name, MAX_FILE) {
        Ok(bytes) => bytes,
        Err(_) => {
            remove(dir, name);
            None
        }
    }
}

/// The one trusted-file reader of the node state: `dir/name` if it is a regular file (opened
/// with `O_NOFOLLOW|O_NONBLOCK`, so never through a link and never blocking on a FIFO), owned
/// by root or us, not accessible to group or others, and at most `max` bytes. `Ok(None)` when
/// missing; `Err` says why it is not trusted (never quoting its content).
pub(super) fn read_checked(
    dir: &OwnedFd,
    name: &str,
    max: u64,
) -> Result<Option<Zeroizing<Vec<u8>>>, String> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(file) => file,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err("a symlink".into()),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let st = rustix::fs::fstat(&file).map_err(|e| format!("cannot inspect: {e}"))?;
    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err("not a regular file".into());
    }
    if !trusted_owner(st.st_uid) || st.st_mode & 0o077 != 0 {
        return Err(format!(
            "owned by uid {} with mode {:04o}, not root and 0600",
            st.st_uid,
            st.st_mode & 0o7777
        ));
    }
    if size > max {
        return Err(format!("larger than {max} bytes"));
    }
    // Sized up front so the buffer never reallocates and leaves an unzeroed copy behind.
    let cap = usize::try_from(size.saturating_add(1).min(max + 1)).unwrap_or(0);
    let mut bytes = Zeroizing::new(vec![0u8; cap.max(1)]);
    let mut len = 0;
    loop {
        if len == bytes.len() {
            if len as u64 > max {
                return Err(format!("larger than {max} bytes"));
            }
            // Grew since fstat: read on into a fresh buffer, zeroing the old one.
            let mut bigger = Zeroizing::new(vec![0u8; (len * 2).min(max as usize + 1)]);
            bigger[..len].copy_from_slice(&bytes[..len]);
            bytes = bigger;
        }
        match rustix::io::read(&file, &mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(format!("cannot read: {e}")),
        }
    }
    if len as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    bytes.truncate(len);
    Ok(Some(bytes))
}

/// Atomically replaces `dir/name` with `bytes`, mode 0600 (the one atomic writer).
pub(super) fn write(dir: &OwnedFd, name: &str, bytes: &[u8]) -> io::Result<()> {
    crate::atomic::write_at(dir, name, bytes, 0o600, None)
}

/// Removes `dir/name` (a file or a link, never what a link points to); missing is fine.
pub(super) fn remove(dir: &OwnedFd, name: &str) {
    let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
}

/// The names in a directory, without `.` and `..`.
pub(super) fn names(dir: &OwnedFd) -> Vec<String> {
    let Ok(entries) = rustix::fs::Dir::read_from(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "." && n != "..")
        .collect()
}

/// Seconds since the Unix epoch of the file's last change, if it can be read.
pub(super) fn mtime(dir: &OwnedFd, name: &str) -> Option<i64> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| st.st_mtime)
}
