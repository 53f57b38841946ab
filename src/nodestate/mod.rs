//! The node's shared state: what every kv process on a node agrees on, kept in one root-only
//! directory on tmpfs (`stateDir`, default `/run/kv`, gone at reboot with the volumes it
//! describes). This module is its one owner: nothing else opens a file under it.
//!
//! Every kv mount is its own short-lived process, so anything that must be shared across a
//! burst of mounts (a token one identity already obtained, how many IMDS requests are in
//! flight, which host answered 429, which call works on a volume) lives here as files guarded
//! by `flock`, which the kernel releases when a process dies:
//!
//! ```text
//! <root>/            0700, owned by root (or the running user, for tests)
//!   tokens/          token cache: one 0600 file per identity key (see [`tokens`]), its
//!                    `<name>.lock` while one process fetches it, `.key` the node key
//!   slots/           `<name>.<i>`: cross-process counting semaphores with a fair share per
//!                    namespace (see [`slots`])
//!   throttle/        "who was throttled (a host, or an AAD app) until T" (see [`throttle`])
//!   locks/           `<sha256(mount dir)>.lock`: one call at a time per volume ([`locks`])
//!   volumes/         the rotation agent's record and status of each rotating volume
//!                    ([`volumes`])
//!   mnt/             the agent's own mount of each rotating volume ([`agent_mounts`])
//!   pods-dir         kubelet's pods directory, for sweeping ([`sweep`])
//! ```
//!
//! [`admission`] is how a request goes through slots and throttle windows: wait out the
//! window, take a slot, record a 429.
//!
//! One set of rules for every file: directories 0700 and ours ([`private`]), files read only
//! through the one trusted-file reader, written only atomically, lock files present only while
//! held ([`flock`]), and whatever a gone pod or a dead process left swept ([`sweep`]).
//! Every entry point takes the root from a [`NodeState`], so tests use a temporary directory.
//! See docs/node-state.md for the layout, owners and bounds.

pub mod admission;
mod agent_mounts;
mod flock;
mod key;
pub mod locks;
pub mod mounts;
mod private;
pub mod slots;
mod summary;
pub mod sweep;
pub mod throttle;
pub mod tokens;
pub mod volumes;

#[cfg(test)]
mod tests;

pub use admission::{Admission, Gate, Ticket};
pub use agent_mounts::AgentMountPoint;
pub use key::{CacheKey, Identity, Kind, NodeId};
pub use locks::VolumeLock;
pub use mounts::{Mount, MountTable};
pub use slots::SlotGuard;
pub use summary::{Counts, Summary, ThrottleEntry, TokenEntry};
pub use sweep::Swept;
pub use throttle::Throttle;
pub use tokens::{CachedToken, TokenCache, TokenLock};
pub use volumes::{LastError, Loaded, PodRef, Record, Status, Volumes, Written};

use crate::error::{Code, Error, Result};
use rustix::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the node's state lives in production.
const DEFAULT_ROOT: &str = "/run/kv";

/// The node state rooted at one directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    root: PathBuf,
}

impl NodeState {
    /// The node state at `root` (created 0700 on first use; its parent must exist).
    pub fn at(root: impl Into<PathBuf>) -> NodeState {
        NodeState { root: root.into() }
    }

    /// `/run/kv`: tmpfs on every systemd host, so the state goes with the volumes at reboot.
    pub fn default_root() -> &'static Path {
        Path::new(DEFAULT_ROOT)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating) the private subdirectory `name` of the root.
    fn open_dir(&self, name: &str) -> Result<OwnedFd> {
        private::open_root(&self.root)
            .and_then(|root| private::open_dir(&root, name))
            .map_err(|e| self.error(name, &e))
    }

    /// Opens the existing subdirectory `name` without creating anything (for reports).
    fn existing_dir(&self, name: &str) -> Option<OwnedFd> {
        private::existing_dir(&self.root.join(name))
    }

    /// An I/O failure under the root, with what to check.
    fn error(&self, what: &str, e: &std::io::Error) -> Error {
        Error::new(
            Code::Internal,
            format!(
                "node state {}: {e} (it must be a directory kv can write, owned by root, mode 0700)",
                self.root.join(what).display()
            ),
        )
    }
}

impl Default for NodeState {
    fn default() -> Self {
        NodeState::at(DEFAULT_ROOT)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}
