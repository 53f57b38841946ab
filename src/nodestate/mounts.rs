//! The one reader of this process's mount table (`/proc/self/mountinfo`): which mount is on
//! top at a path, and whether it is one of kv's tmpfs volumes.
//!
//! One reading serves many lookups: with 500 volumes the table has 1000+ lines (the pods'
//! mounts and the agent's), and the kernel formats all of it for every read.

use crate::error::{Code, Error, Result};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One reading of the mount table.
pub struct MountTable(Vec<u8>);

/// The topmost mount at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// `major:minor` of the filesystem: two mounts of one tmpfs share it.
    pub dev: String,
    /// The filesystem type (`tmpfs`).
    pub fstype: String,
    /// The mount source (`kv` for kv's volumes).
    pub source: String,
}

impl Mount {
    /// Whether this is one of kv's volumes: a tmpfs with source `kv`.
    pub fn is_kv(&self) -> bool {
        self.fstype == "tmpfs" && self.source == "kv"
    }
}

impl MountTable {
    /// Reads `/proc/self/mountinfo`.
    pub fn read() -> Result<MountTable> {
        std::fs::read("/proc/self/mountinfo")
            .map(MountTable)
            .map_err(|e| {
                Error::new(
                    Code::Mount,
                    format!("cannot read /proc/self/mountinfo: {e}"),
                )
            })
    }

    /// The topmost mount at exactly `path` (the last one listed: what a process opening `path`
    /// sees), if `path` is a mount point.
    pub fn top(&self, path: &Path) -> Option<Mount> {
        // The path escaped as the table writes it, once, rather than every line unescaped.
        let want = escape(path.as_os_str().as_bytes());
        let line = self
            .0
            .split(|b| *b == b'\n')
            .rfind(|line| line.split(|b| *b == b' ').nth(4) == Some(&want[..]))?;
        let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
        let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
        let after = fields
            .iter()
            .position(|f| *f == b"-")
            .map(|i| &fields[i + 1..]);
        let (fstype, source) = match after {
            Some([fstype, source, ..]) => (text(fstype), text(source)),
            _ => (String::new(), String::new()),
        };
        Some(Mount {
            dev: fields.get(2).map(|d| text(d)).unwrap_or_default(),
            fstype,
            source,
        })
    }

    /// kv's volumes whose mount point is directly in `dir`, by name, with how many mount
    /// points show the same filesystem: one reading answers for every entry of `dir`.
    pub fn kv_volumes_in(&self, dir: &Path) -> HashMap<Vec<u8>, usize> {
        let prefix = [dir.as_os_str().as_bytes(), b"/"].concat();
        let mut per_dev: HashMap<&[u8], usize> = HashMap::new();
        let mut found: HashMap<Vec<u8>, (&[u8], bool)> = HashMap::new();
        for line in self.0.split(|b| *b == b'\n') {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let (Some(dev), Some(mp)) = (fields.get(2), fields.get(4)) else {
                continue;
            };
            *per_dev.entry(dev).or_default() += 1;
            let mp = unescape(mp);
            if let Some(name) = mp.strip_prefix(&prefix[..]).filter(|n| !n.contains(&b'/')) {
                let sep = fields.iter().position(|f| *f == b"-");
                let kv = sep.is_some_and(|i| {
                    fields.get(i + 1) == Some(&&b"tmpfs"[..])
                        && fields.get(i + 2) == Some(&&b"kv"[..])
                });
                // The last line for a mount point is the topmost mount.
                found.insert(name.to_vec(), (dev, kv));
            }
        }
        found
            .into_iter()
            .filter(|(_, (_, kv))| *kv)
            .map(|(name, (dev, _))| (name, per_dev.get(dev).copied().unwrap_or(0)))
            .collect()
    }

    /// The device of kv's volume at `path`, if the topmost mount there is one.
    pub fn kv_volume(&self, path: &Path) -> Option<String> {
        self.top(path).filter(Mount::is_kv).map(|m| m.dev)
    }
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn escape(path: &[u8]) -> Vec<u8> {
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

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &[u8]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"22 1 0:21 / / rw - ext4 /dev/root rw\n\
        30 22 0:40 / /a\\040b rw,nosuid - tmpfs kv rw,size=64k\n\
        31 30 0:41 / /a\\040b ro - tmpfs other rw\n\
        32 22 0:40 / /run/kv/mnt/x rw - tmpfs kv rw\n";

    #[test]
    fn the_topmost_mount_counts_and_paths_are_unescaped() {
        let t = MountTable(TABLE.to_vec());
        let top = t.top(Path::new("/a b")).unwrap();
        assert_eq!(
            (top.dev.as_str(), top.fstype.as_str(), top.source.as_str()),
            ("0:41", "tmpfs", "other")
        );
        assert_eq!(t.kv_volume(Path::new("/a b")), None);
        assert_eq!(
            t.kv_volume(Path::new("/run/kv/mnt/x")).as_deref(),
            Some("0:40")
        );
        assert!(t.top(Path::new("/missing")).is_none());
        assert_eq!(unescape(br"/x\04"), br"/x\04".to_vec());
        assert_eq!(unescape(br"/a\040b\134c"), b"/a b\\c".to_vec());
        assert_eq!(escape(b"/a b\\c\td"), br"/a\040b\134c\011d".to_vec());
    }
}
