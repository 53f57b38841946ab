//! The atomic-switch layout of a rotating volume, the way Kubernetes writes secret volumes
//! (`AtomicWriter`):
//!
//! ```text
//! <root>/..2026_11_30_10_05_45.123456789/   every file of one version (subdirs: web/0, web/1)
//! <root>/..data -> ..2026_11_30_10_05_45.123456789
//! <root>/tls.crt -> ..data/tls.crt          one link per top-level name
//! <root>/web -> ..data/web
//! ```
//!
//! A new version is written completely into a fresh `..<timestamp>` directory (created with no
//! permission bits and opened up only when complete), then a `..data_tmp` link to it is renamed
//! over `..data`: that rename is the one atomic step. Top-level links for new names are added
//! after it, links for names that went away are removed, and the old version directory is
//! deleted after a grace period ([`remove_version`]: a reader that resolved `..data` just before
//! the rename may still be opening files in it). A process killed at any point leaves `..data` naming a complete version (old or
//! new); [`recover`], run before every switch, removes the leftovers and completes the links.
//!
//! Everything is relative to directory descriptors opened with `O_NOFOLLOW` (the tmpfs root,
//! then each directory below it), never a path: no write follows a link, so a tree the pod
//! rearranges cannot redirect kv elsewhere on the host. Nothing here reads a file's content or
//! opens anything but a directory: what a switch wrote is remembered as a [`Written`] digest and
//! stamp, and a tree the pod touched ([`is_intact`]) simply gets a fresh version.

use super::VolumeFile;
use crate::error::{Code, Error, Result};
use crate::nodestate::Written;
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// The link naming the current version directory.
pub const DATA: &str = "..data";
/// The link renamed over [`DATA`] during a switch.
pub const DATA_TMP: &str = "..data_tmp";
/// The link renamed over a top-level link whose target must change.
const LINK_TMP: &str = "..link_tmp";

/// tmpfs charges whole pages for file data.
const PAGE: u64 = 4096;
/// Link targets longer than this take a page of their own on tmpfs (shorter ones live in the
/// inode).
const SHORT_SYMLINK: usize = 128;

/// Ownership and directory modes of every version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    /// Mode of the version directory and its subdirectories.
    pub dir_mode: u32,
    /// Group owner of directories and files (the pod's fsGroup).
    pub gid: Option<u32>,
}

/// What is free on the volume's tmpfs: a new version must fit beside the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Free bytes.
    pub bytes: u64,
    /// Free inodes.
    pub inodes: u64,
}

impl Budget {
    /// What the filesystem under `root` has free now.
    pub fn available(root: BorrowedFd<'_>) -> Result<Budget> {
        let st = rustix::fs::fstatvfs(root)
            .map_err(|e| err("cannot read the volume's free space", e))?;
        Ok(Budget {
            bytes: st.f_bavail.saturating_mul(st.f_frsize),
            inodes: st.f_favail,
        })
    }

    /// No limit (a plain directory in tests, or a caller that checked already).
    pub fn unlimited() -> Budget {
        Budget {
            bytes: u64::MAX,
            inodes: u64::MAX,
        }
    }
}

/// Bytes and inodes one version of `files` takes on tmpfs, links included: with the version in
/// place, a volume needs twice this (plus headroom) to switch.
pub fn needed(files: &[VolumeFile]) -> Result<Budget> {
    let tree = Tree::of(files)?;
    let data: u64 = files
        .iter()
        .map(|f| (f.bytes.len() as u64).div_ceil(PAGE).max(1) * PAGE)
        .sum();
    let long_links = tree
        .top
        .iter()
        .filter(|t| link_target(t).len() > SHORT_SYMLINK)
        .count() as u64;
    Ok(Budget {
        bytes: data + long_links * PAGE,
        // Files, the version dir and its subdirs, the top-level links, `..data` and `..data_tmp`.
        inodes: files.len() as u64 + 1 + tree.dirs.len() as u64 + tree.top.len() as u64 + 2,
    })
}

/// What a rotating volume's tmpfs must hold (`size=`, `nr_inodes=`, before headroom): two
/// versions at once, the one in place and the one being written.
pub fn room_for_rotation(files: &[VolumeFile]) -> Result<Budget> {
    let one = needed(files)?;
    Ok(Budget {
        bytes: one.bytes * 2,
        inodes: one.inodes * 2,
    })
}

/// The paths of a version, validated: every component a plain name that cannot collide with
/// the `..` entries of the layout.
struct Tree {
    /// Top-level names (files or directories), each getting a link.
    top: BTreeSet<String>,
    /// Subdirectories, parents before children.
    dirs: BTreeSet<String>,
}

impl Tree {
    fn of(files: &[VolumeFile]) -> Result<Tree> {
        let mut top = BTreeSet::new();
        let mut dirs = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for f in files {
            let parts: Vec<&str> = f.path.split('/').collect();
            let bad = parts
                .iter()
                .any(|p| p.is_empty() || p.starts_with("..") || *p == "." || p.contains('\0'));
            if bad || !seen.insert(f.path.as_str()) {
                return Err(Error::new(
                    Code::Internal,
                    format!(
                        "volume path {} is not a unique relative path of plain names",
                        crate::error::printable(&f.path)
                    ),
                ));
            }
            top.insert(parts[0].to_string());
            for i in 1..parts.len() {
                dirs.insert(parts[..i].join("/"));
            }
        }
        // A name cannot be both a file and a directory.
        if let Some(f) = files.iter().find(|f| dirs.contains(&f.path)) {
            return Err(Error::new(
                Code::Internal,
                format!(
                    "volume path {} is both a file and a directory",
                    crate::error::printable(&f.path)
                ),
            ));
        }
        Ok(Tree { top, dirs })
    }
}

fn err(what: &str, e: rustix::io::Errno) -> Error {
    Error::new(Code::Mount, format!("{what}: {e}"))
}

fn link_target(top: &str) -> String {
    format!("{DATA}/{top}")
}

/// Writes the first version into an empty volume root (at mount, the detached tmpfs).
pub fn write_initial(
    root: BorrowedFd<'_>,
    files: &[VolumeFile],
    perms: Perms,
    budget: Budget,
) -> Result<Written> {
    let entries = rustix::fs::Dir::read_from(root).map_err(|e| err("cannot list the volume", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| err("cannot list the volume", e))?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            return Err(Error::new(
                Code::Mount,
                "the volume is not empty: the first version goes into an empty tmpfs",
            ));
        }
    }
    switch(root, files, perms, budget).map(|s| s.written)
}

/// What [`switch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// What is in the volume now.
    pub written: Written,
    /// The version directory it replaced (removed later, [`remove_version`]).
    pub replaced: Option<String>,
}

/// Makes `files` the volume's content in one step (see the module docs). On an error before the
/// `..data` rename the current version is untouched and the partial new one is removed.
pub fn switch(
    root: BorrowedFd<'_>,
    files: &[VolumeFile],
    perms: Perms,
    budget: Budget,
) -> Result<Switched> {
    let tree = Tree::of(files)?;
    let need = needed(files)?;
    if need.bytes > budget.bytes || need.inodes > budget.inodes {
        return Err(Error::new(
            Code::Mount,
            format!(
                "the new version needs {} bytes and {} inodes but the volume's tmpfs has {} bytes and {} inodes free: a rotating volume needs room for two versions (raise tmpfssize)",
                need.bytes, need.inodes, budget.bytes, budget.inodes
            ),
        ));
    }
    let old = current(root)?;
    let version = create_version_dir(root)?;
    let stamp =
        fill_version(root, &version, files, &tree, perms).and_then(|()| stamp(root, &version));
    let stamp = match stamp {
        Ok(stamp) => stamp,
        Err(e) => {
            let _ = remove_tree(root, &version);
            return Err(e);
        }
    };
    // The one atomic step: `..data` names the old version before, the new one after.
    let _ = rustix::fs::unlinkat(root, DATA_TMP, AtFlags::empty());
    rustix::fs::symlinkat(version.as_str(), root, DATA_TMP)
        .and_then(|()| rustix::fs::renameat(root, DATA_TMP, root, DATA))
        .map_err(|e| {
            let _ = rustix::fs::unlinkat(root, DATA_TMP, AtFlags::empty());
            let _ = remove_tree(root, &version);
            err("cannot switch ..data to the new version", e)
        })?;
    // From here the new version is what readers get; the rest is tidying that recover() redoes.
    sync_links(root, &tree.top, perms.gid)?;
    Ok(Switched {
        written: Written {
            version,
            digest: digest(files, perms),
            stamp,
        },
        replaced: old,
    })
}

/// Removes a version directory that `..data` no longer names (the one a [`switch`] replaced).
///
/// Not part of [`switch`]: a reader that resolved `..data` just before the rename is still
/// opening files in the old directory, so the caller removes it after a grace period
/// (the agent waits [`crate::agent::scheduler::OLD_VERSION_GRACE`]);
/// [`recover`] removes any that are left.
pub fn remove_version(root: BorrowedFd<'_>, name: &str) -> Result<()> {
    if !is_version_name(name) || current(root)?.as_deref() == Some(name) {
        return Err(Error::new(
            Code::Internal,
            format!(
                "{} is not a replaced version directory",
                crate::error::printable(name)
            ),
        ));
    }
    remove_tree(root, name)
}

/// The version directory `..data` names, if any.
pub fn current(root: BorrowedFd<'_>) -> Result<Option<String>> {
    match rustix::fs::readlinkat(root, DATA, Vec::new()) {
        Ok(target) => {
            let target = target.to_string_lossy().into_owned();
            if is_version_name(&target) {
                Ok(Some(target))
            } else {
                Err(Error::new(
                    Code::Mount,
                    format!(
                        "{DATA} points to {} rather than a version directory",
                        crate::error::printable(&target)
                    ),
                ))
            }
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(err(&format!("cannot read {DATA}"), e)),
    }
}

/// `..<anything but "data...">`: a version directory's name.
fn is_version_name(name: &str) -> bool {
    name.len() > 2
        && name.starts_with("..")
        && !name.starts_with(DATA)
        && !name[2..].contains('/')
        && !name[2..].starts_with('.')
}

/// What [`recover`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// A `..data_tmp` link left by an interrupted switch was removed.
    pub removed_tmp_link: bool,
    /// Version directories no longer (or not yet) named by `..data`, removed.
    pub removed_versions: Vec<String>,
    /// Top-level links added or removed to match the current version.
    pub fixed_links: usize,
}

impl Recovered {
    /// Whether anything was left over.
    pub fn any(&self) -> bool {
        self.removed_tmp_link || !self.removed_versions.is_empty() || self.fixed_links > 0
    }
}

/// Completes or undoes an interrupted [`switch`]: removes a stray `..data_tmp`, every version
/// directory `..data` does not name, and makes the top-level links match the current version.
/// A volume without `..data` (plain files, or not yet written) is left alone.
pub fn recover(root: BorrowedFd<'_>) -> Result<Recovered> {
    let mut report = Recovered::default();
    for tmp in [DATA_TMP, LINK_TMP] {
        match rustix::fs::unlinkat(root, tmp, AtFlags::empty()) {
            Ok(()) => report.removed_tmp_link = true,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(err(&format!("cannot remove {tmp}"), e)),
        }
    }
    let Some(live) = current(root)? else {
        return Ok(report);
    };
    for (name, is_dir) in list(root)? {
        if is_dir && is_version_name(&name) && name != live {
            remove_tree(root, &name)?;
            report.removed_versions.push(name);
        }
    }
    let data = open_dir_at(root, &live).map_err(|e| err("cannot open the current version", e))?;
    let top: BTreeSet<String> = list(data.as_fd())?.into_iter().map(|(n, _)| n).collect();
    let gid = rustix::fs::fstat(&data)
        .map(|st| st.st_gid)
        .map_err(|e| err("cannot inspect the current version", e))?;
    report.fixed_links = sync_links(root, &top, Some(gid))?;
    Ok(report)
}

/// SHA-256 (hex) of a version as kv writes it: the directory mode and group, and every file's
/// path, mode and bytes. Equal digests mean equal volumes.
pub fn digest(files: &[VolumeFile], perms: Perms) -> String {
    let mut h = Sha256::new();
    h.update(perms.dir_mode.to_le_bytes());
    h.update(perms.gid.map_or(u64::MAX, u64::from).to_le_bytes());
    let mut sorted: Vec<&VolumeFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for f in sorted {
        for part in [f.path.as_bytes(), &f.bytes[..]] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update((f.mode & 0o7777).to_le_bytes());
    }
    hex::encode(h.finalize())
}

/// SHA-256 (hex) of the metadata of the version tree `version` (see [`Written::stamp`]), from
/// `fstatat` without following links and directory listings only: no file is opened, so
/// nothing the pod planted (a FIFO, a device, a huge file, a link) is read or waited on.
pub fn stamp(root: BorrowedFd<'_>, version: &str) -> Result<String> {
    let mut h = Sha256::new();
    let st = rustix::fs::statat(root, version, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| err("cannot inspect the version", e))?;
    stamp_entry(&mut h, "", &st);
    let dir = open_dir_at(root, version).map_err(|e| err("cannot open the version", e))?;
    stamp_tree(&mut h, dir.as_fd(), "", 0)?;
    Ok(hex::encode(h.finalize()))
}

/// Deeper than any tree kv writes (`name/<n>`): a deeper one is not kv's.
const MAX_DEPTH: usize = 8;

fn stamp_tree(h: &mut Sha256, dir: BorrowedFd<'_>, prefix: &str, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::new(
            Code::Mount,
            "the version tree is deeper than kv writes",
        ));
    }
    let mut entries = list(dir)?;
    entries.sort();
    for (name, is_dir) in entries {
        let path = format!("{prefix}{name}");
        let st = rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err(&format!("cannot inspect {path}"), e))?;
        stamp_entry(h, &path, &st);
        if is_dir {
            let sub =
                open_dir_at(dir, &name).map_err(|e| err(&format!("cannot open {path}"), e))?;
            stamp_tree(h, sub.as_fd(), &format!("{path}/"), depth + 1)?;
        }
    }
    Ok(())
}

fn stamp_entry(h: &mut Sha256, path: &str, st: &rustix::fs::Stat) {
    h.update((path.len() as u64).to_le_bytes());
    h.update(path.as_bytes());
    // The change time moves on every write, chmod, chown, link or rename, and cannot be set.
    #[allow(clippy::unnecessary_cast)]
    for v in [
        st.st_ino as u64,
        st.st_mode as u64,
        st.st_uid as u64,
        st.st_gid as u64,
        st.st_nlink as u64,
        st.st_size as u64,
        st.st_ctime as u64,
        st.st_ctime_nsec as u64,
    ] {
        h.update(v.to_le_bytes());
    }
}

/// Whether the volume still holds exactly what kv wrote (`written`): `..data` names its version
/// and the version tree's metadata is unchanged. `false` when anyone touched it.
pub fn is_intact(root: BorrowedFd<'_>, written: &Written) -> bool {
    matches!(current(root), Ok(Some(v)) if v == written.version)
        && stamp(root, &written.version).is_ok_and(|s| s == written.stamp)
}

/// Creates `..<UTC timestamp>.<nanoseconds>` with no permission bits (nobody but root can look
/// in until it is complete).
fn create_version_dir(root: BorrowedFd<'_>) -> Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let stamp = format!(
        "..{:04}_{:02}_{:02}_{:02}_{:02}_{:02}",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut nanos = now.nanosecond();
    for _ in 0..1000 {
        let name = format!("{stamp}.{nanos:09}");
        match rustix::fs::mkdirat(root, name.as_str(), Mode::empty()) {
            Ok(()) => return Ok(name),
            Err(rustix::io::Errno::EXIST) => nanos = nanos.wrapping_add(1) % 1_000_000_000,
            Err(e) => return Err(err("cannot create a version directory", e)),
        }
    }
    Err(Error::new(
        Code::Mount,
        "cannot create a version directory: every name is taken",
    ))
}

/// Writes every file into the version directory `version`, subdirectories first; files are
/// created with no permission bits and get their group and mode once written; the version
/// directory itself is opened up last. Every directory is reached through a descriptor opened
/// without following links, and every mode and owner is set on a descriptor, never by name.
fn fill_version(
    root: BorrowedFd<'_>,
    version: &str,
    files: &[VolumeFile],
    tree: &Tree,
    perms: Perms,
) -> Result<()> {
    let vdir = open_dir_at(root, version).map_err(|e| err("cannot open the new version", e))?;
    let gid = perms.gid.map(rustix::fs::Gid::from_raw);
    let mut dirs: BTreeMap<&str, OwnedFd> = BTreeMap::new();
    // Parents come before their children in the set's order.
    for d in &tree.dirs {
        let (parent, name) = match d.rsplit_once('/') {
            Some((p, n)) => match dirs.get(p) {
                Some(fd) => (fd.as_fd(), n),
                None => return Err(Error::new(Code::Internal, format!("no parent for {d}"))),
            },
            None => (vdir.as_fd(), d.as_str()),
        };
        let fd = make_dir(parent, name, perms)
            .map_err(|e| err(&format!("cannot create directory {d} in the volume"), e))?;
        dirs.insert(d.as_str(), fd);
    }
    for f in files {
        let (parent, name) = match f.path.rsplit_once('/') {
            Some((p, n)) => (dirs.get(p).map(|fd| fd.as_fd()).unwrap_or(vdir.as_fd()), n),
            None => (vdir.as_fd(), f.path.as_str()),
        };
        let fd = rustix::fs::openat(
            parent,
            name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(&format!("cannot create {} in the volume", f.path), e))?;
        let mut fd = std::fs::File::from(fd);
        std::io::Write::write_all(&mut fd, &f.bytes)
            .map_err(|e| Error::new(Code::Mount, format!("cannot write {}: {e}", f.path)))?;
        if let Some(g) = gid {
            rustix::fs::fchown(&fd, None, Some(g))
                .map_err(|e| err(&format!("cannot chown {}", f.path), e))?;
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(f.mode))
            .map_err(|e| err(&format!("cannot chmod {}", f.path), e))?;
    }
    rustix::fs::fchown(&vdir, None, gid).map_err(|e| err("cannot chown the new version", e))?;
    rustix::fs::fchmod(&vdir, Mode::from_raw_mode(perms.dir_mode))
        .map_err(|e| err("cannot chmod the new version", e))
}

/// Creates the directory `parent/name` with no permission bits, opens it without following a
/// link (whatever replaced it meanwhile: a link fails here, it is never followed), and gives it
/// its group and mode through that descriptor.
pub(super) fn make_dir(
    parent: BorrowedFd<'_>,
    name: &str,
    perms: Perms,
) -> rustix::io::Result<OwnedFd> {
    rustix::fs::mkdirat(parent, name, Mode::empty())?;
    #[cfg(test)]
    tests::after_mkdir(parent, name);
    let fd = open_dir_at(parent, name)?;
    rustix::fs::fchown(&fd, None, perms.gid.map(rustix::fs::Gid::from_raw))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(perms.dir_mode))?;
    Ok(fd)
}

/// Makes the top-level links exactly `..data/<name>` for each of `top`: adds the missing ones,
/// retargets wrong ones, removes kv's links for names no longer there. Returns how many changed.
/// Entries that are not links into `..data` are not kv's and are left alone.
fn sync_links(root: BorrowedFd<'_>, top: &BTreeSet<String>, gid: Option<u32>) -> Result<usize> {
    let mut changed = 0;
    let mut existing = BTreeMap::new();
    for (name, _) in list(root)? {
        if name.starts_with("..") {
            continue;
        }
        if let Ok(target) = rustix::fs::readlinkat(root, name.as_str(), Vec::new()) {
            existing.insert(name, target.to_string_lossy().into_owned());
        }
    }
    for name in top {
        let want = link_target(name);
        match existing.get(name) {
            Some(t) if *t == want => continue,
            Some(_) => {
                // Retarget in one step: a new link renamed over the old one.
                let _ = rustix::fs::unlinkat(root, LINK_TMP, AtFlags::empty());
                rustix::fs::symlinkat(want.as_str(), root, LINK_TMP)
                    .and_then(|()| rustix::fs::renameat(root, LINK_TMP, root, name.as_str()))
                    .map_err(|e| err(&format!("cannot relink {name}"), e))?;
            }
            None => rustix::fs::symlinkat(want.as_str(), root, name.as_str())
                .map_err(|e| err(&format!("cannot link {name}"), e))?,
        }
        if let Some(g) = gid {
            let _ = rustix::fs::chownat(
                root,
                name.as_str(),
                None,
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            );
        }
        changed += 1;
    }
    for (name, target) in &existing {
        if !top.contains(name) && target.starts_with(&format!("{DATA}/")) {
            rustix::fs::unlinkat(root, name.as_str(), AtFlags::empty())
                .map_err(|e| err(&format!("cannot remove the link {name}"), e))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// `(name, is a real directory)` of every entry but `.` and `..`.
fn list(dir: BorrowedFd<'_>) -> Result<Vec<(String, bool)>> {
    // A fresh descriptor: `Dir` reads from the descriptor's offset.
    let fd = rustix::fs::openat(
        dir,
        ".",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("cannot open a volume directory", e))?;
    let entries =
        rustix::fs::Dir::read_from(&fd).map_err(|e| err("cannot list a volume directory", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| err("cannot list a volume directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = match entry.file_type() {
            rustix::fs::FileType::Directory => true,
            rustix::fs::FileType::Unknown => {
                rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| {
                        rustix::fs::FileType::from_raw_mode(st.st_mode)
                            == rustix::fs::FileType::Directory
                    })
                    .unwrap_or(false)
            }
            _ => false,
        };
        out.push((name, is_dir));
    }
    Ok(out)
}

/// Opens the directory `dir/name`: never through a link, never anything but a directory (so
/// never blocking on a FIFO).
pub(super) fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Removes `dir/name` and everything below it, never following a link.
fn remove_tree(dir: BorrowedFd<'_>, name: &str) -> Result<()> {
    match open_dir_at(dir, name) {
        Ok(sub) => {
            for (entry, is_dir) in list(sub.as_fd())? {
                if is_dir {
                    remove_tree(sub.as_fd(), &entry)?;
                } else {
                    match rustix::fs::unlinkat(&sub, entry.as_str(), AtFlags::empty()) {
                        Ok(()) | Err(rustix::io::Errno::NOENT) => {}
                        Err(e) => return Err(err(&format!("cannot remove {name}/{entry}"), e)),
                    }
                }
            }
            match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
                Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                Err(e) => Err(err(&format!("cannot remove {name}"), e)),
            }
        }
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(err(&format!("cannot open {name} for removal"), e)),
    }
}

#[cfg(test)]
#[path = "versioned_tests.rs"]
mod tests;
