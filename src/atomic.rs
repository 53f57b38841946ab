//! Atomic file replacement, the one writer for files outside a volume's tmpfs (`kv install`,
//! `kv fetch --dir`, and node state such as caches): a reader sees the old file or the new one,
//! never a partial one, and never a file with looser permissions than asked.
//!
//! The file is created beside its destination as an exclusive `0600` temp file (no symlink
//! followed), written, fsynced, given its owner group and mode, renamed over the destination
//! relative to the directory's descriptor, and the directory fsynced.

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{Mode, OFlags};
use std::io;
use std::path::Path;

/// Opens a directory for [`write_at`] without following a symlink at its last component.
pub fn open_dir(dir: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Atomically replaces `dir/name` (one path component) with `bytes`, mode `mode`, group `gid`.
pub fn write(dir: &Path, name: &str, bytes: &[u8], mode: u32, gid: Option<u32>) -> io::Result<()> {
    write_at(&open_dir(dir)?, name, bytes, mode, gid)
}

/// [`write`] relative to an open directory.
pub fn write_at(
    dir: impl AsFd,
    name: &str,
    bytes: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> io::Result<()> {
    let dir = dir.as_fd();
    // Unique per attempt even for installer containers that all run as pid 1.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = format!(".{name}.{}-{nanos:09}.tmp", std::process::id());
    let file = rustix::fs::openat(
        dir,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let filled = fill(&file, bytes, mode, gid);
    // Closed before it is published: an executable that is still open for writing cannot be
    // run (ETXTBSY), and kubelet may exec the new kv the moment it is renamed.
    drop(file);
    let result = filled.and_then(|()| Ok(rustix::fs::renameat(dir, tmp.as_str(), dir, name)?));
    if result.is_err() {
        let _ = rustix::fs::unlinkat(dir, tmp.as_str(), rustix::fs::AtFlags::empty());
        return result;
    }
    // The rename durable too; best effort (some filesystems refuse fsync on directories).
    let _ = rustix::fs::fsync(dir);
    Ok(())
}

fn fill(file: &OwnedFd, mut bytes: &[u8], mode: u32, gid: Option<u32>) -> io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(file, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(g) = gid {
        rustix::fs::fchown(file, None, Some(rustix::fs::Gid::from_raw(g)))?;
    }
    // The mode only once the content is complete; the fsync makes both durable before the
    // rename publishes the file.
    rustix::fs::fchmod(file, Mode::from_raw_mode(mode))?;
    rustix::fs::fsync(file)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_mode_and_leaves_no_temp_file() {
        let dir = std::env::temp_dir().join(format!("kv-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir, "f", b"one", 0o640, None).unwrap();
        write(&dir, "f", b"two", 0o600, None).unwrap();
        assert_eq!(std::fs::read(dir.join("f")).unwrap(), b"two");
        let mode = std::fs::metadata(dir.join("f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f"]);
        // A symlinked directory is refused, not followed.
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(write(&link, "g", b"x", 0o600, None).is_err());
        assert!(!dir.join("g").exists());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
