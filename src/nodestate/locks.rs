//! Per-volume locks in `<root>/locks/<sha256 of the mount dir>.lock`: a mount, an unmount and
//! the agent's switch of one mount dir never run at once, in any process.
//!
//! Outside kubelet's tree (kubelet treats every entry under `volumes/azure~kv/` as a volume),
//! under the node's `stateDir` like everything else kv shares. Every taker waits at most until
//! its deadline (polling `LOCK_NB`): a stuck holder can delay, never hang, an unmount. The lock
//! file follows the one lock-file policy ([`super::flock`]): it exists only while held.

use super::flock::{self, Held};
use super::volumes::name_of;
use super::NodeState;
use crate::error::{Code, Error, Result};
use std::path::Path;
use std::time::Instant;

const DIR: &str = "locks";

/// Held until dropped: no other call works on the volume meanwhile.
#[derive(Debug)]
pub struct VolumeLock {
    _held: Held,
}

impl NodeState {
    /// Takes the lock of the volume at `dir`, waiting until `deadline` at most.
    pub fn lock_volume(&self, dir: &Path, deadline: Instant) -> Result<VolumeLock> {
        let locks = self.open_dir(DIR)?;
        let name = format!("{}.lock", name_of(dir));
        match flock::wait(deadline, || flock::try_file(&locks, &name)) {
            Ok(Some(held)) => Ok(VolumeLock { _held: held }),
            Ok(None) => Err(Error::new(
                Code::Timeout,
                format!(
                    "timed out waiting for another kv call working on {} (its lock {})",
                    dir.display(),
                    self.root().join(DIR).join(&name).display()
                ),
            )),
            Err(e) => Err(self.error(&format!("{DIR}/{name}"), &e)),
        }
    }

    /// The lock of the volume whose record name is `name`, if nobody holds it now (sweeps).
    pub(super) fn try_lock_name(&self, name: &str) -> Option<VolumeLock> {
        let locks = self.open_dir(DIR).ok()?;
        flock::try_file(&locks, &format!("{name}.lock"))
            .ok()
            .flatten()
            .map(|held| VolumeLock { _held: held })
    }
}
