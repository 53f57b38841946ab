//! Keeps the node state bounded whatever pods ask: expired token entries, pod-identity entries
//! of pods that are gone, and lock files nobody holds are removed.
//!
//! Run by the agent periodically and by `kv unmount` at most once a minute
//! ([`NodeState::sweep_if_due`]), so a node without the agent is bounded too. Everything is
//! removed under the same rules its users follow: a token entry is only ever replaced or
//! removed whole, and a lock file only while held ([`super::flock`]).

use super::flock;
use super::key::Kind;
use super::tokens::Entry;
use super::{private, unix_now, NodeState};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The file naming kubelet's pods directory (`<kubelet root>/pods`), noted by every mount, so
/// a sweep can tell which pods are gone.
const PODS_DIR_FILE: &str = "pods-dir";
/// The sweep's own lock and time stamp (its mtime is the last sweep).
const SWEEP_LOCK: &str = ".sweep.lock";
const SWEPT: &str = ".swept";

/// What a sweep removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Token entries (expired, or of a pod that is gone).
    pub tokens: usize,
    /// Lock and slot files nobody held.
    pub locks: usize,
    /// Rotation status files of volumes whose record is gone.
    pub statuses: usize,
}

impl NodeState {
    /// Notes kubelet's pods directory (the parent of `<uid>/volumes/...`), once per change.
    pub fn note_pods_dir(&self, pods: &Path) {
        let Ok(root) = private::open_root(self.root()) else {
            return;
        };
        let current = private::read(&root, PODS_DIR_FILE);
        if current.as_deref().map(|b| &b[..]) != Some(pods.as_os_str().as_encoded_bytes()) {
            let _ = private::write(&root, PODS_DIR_FILE, pods.as_os_str().as_encoded_bytes());
        }
    }

    fn pods_dir(&self) -> Option<PathBuf> {
        let root = private::existing_dir(self.root())?;
        let bytes = private::read(&root, PODS_DIR_FILE)?;
        let text = std::str::from_utf8(&bytes).ok()?;
        Some(PathBuf::from(text))
    }

    /// One sweep now (see the module docs).
    pub fn sweep(&self) -> Swept {
        let mut swept = Swept::default();
        let pods = self.pods_dir().filter(|p| p.is_dir());
        if let Some(dir) = self.existing_dir("tokens") {
            let now = i64::try_from(unix_now().as_secs()).unwrap_or(i64::MAX);
            for name in private::names(&dir) {
                if name.starts_with('.') || name.ends_with(".lock") {
                    continue;
                }
                let Some(bytes) = private::read(&dir, &name) else {
                    continue;
                };
                let gone = match serde_json::from_slice::<Entry<'_>>(&bytes) {
                    Ok(e) if e.expires_on <= now => true,
                    Ok(e) if e.kind == Kind::PodIdentity => pods
                        .as_deref()
                        .is_some_and(|pods| pod_is_gone(pods, &e.key)),
                    Ok(_) => false,
                    // Damaged: no reader would use it.
                    Err(_) => true,
                };
                if gone {
                    private::remove(&dir, &name);
                    swept.tokens += 1;
                }
            }
            swept.locks += flock::sweep(&dir, |n| n.ends_with(".lock"));
        }
        swept.statuses = self.volumes().sweep_statuses();
        for (sub, is_lock) in [
            ("slots", (|_: &str| true) as fn(&str) -> bool),
            ("locks", |n: &str| n.ends_with(".lock")),
            ("throttle", |n: &str| n == ".lock"),
        ] {
            if let Some(dir) = self.existing_dir(sub) {
                swept.locks += flock::sweep(&dir, is_lock);
            }
        }
        swept
    }

    /// [`NodeState::sweep`] unless another process swept within `every`; `None` when skipped.
    pub fn sweep_if_due(&self, every: Duration) -> Option<Swept> {
        let root = private::open_root(self.root()).ok()?;
        let _lock = flock::try_file(&root, SWEEP_LOCK).ok()??;
        let now = i64::try_from(unix_now().as_secs()).unwrap_or(i64::MAX);
        let last = private::mtime(&root, SWEPT).unwrap_or(0);
        if now.saturating_sub(last) < i64::try_from(every.as_secs()).unwrap_or(i64::MAX) {
            return None;
        }
        let _ = private::write(&root, SWEPT, b"");
        Some(self.sweep())
    }
}

/// Whether the pod of a pod-identity cache key (its canonical form holds the pod's uid) has no
/// directory under `pods` any more. A key kv cannot read is not kv's: gone.
fn pod_is_gone(pods: &Path, key: &str) -> bool {
    match super::key::pod_uid_of(key) {
        // A uid is a plain name (kubelet's UUID); anything else cannot be a pod's dir.
        Some(uid) if !uid.is_empty() && !uid.contains('/') && uid != "." && uid != ".." => {
            matches!(std::fs::symlink_metadata(pods.join(uid)), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        }
        _ => true,
    }
}
