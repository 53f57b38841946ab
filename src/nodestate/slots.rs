//! Cross-process counting semaphores: `<root>/slots/<name>.<i>` for i in 0..n, each held with
//! `flock`. Holding any one of the n files is holding a slot, so at most n holders exist on the
//! node at once, and a slot comes free when its holder drops it or dies.

use super::flock::{self, Held};
use super::NodeState;
use crate::error::{Code, Error, Result};
use rustix::fd::OwnedFd;
use std::time::Instant;

/// The semaphore for IMDS token requests.
pub const IMDS: &str = "imds";

/// IMDS serves a VM about 5 concurrent requests and answers 429 beyond.
pub const IMDS_SLOTS: usize = 5;

/// One held slot; dropping it releases it.
#[derive(Debug)]
pub struct SlotGuard {
    index: usize,
    _held: Held,
}

impl SlotGuard {
    /// Which of the n slots this is (for logs).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl NodeState {
    /// Takes one of the `n` slots of semaphore `name`, blocking this thread until one is free
    /// or `deadline` passes. `name` is letters, digits, `.`, `-` and `_` (e.g. `imds`, or
    /// `vault-<host>`), at most 200 bytes.
    pub fn acquire(&self, name: &str, n: usize, deadline: Instant) -> Result<SlotGuard> {
        let (dir, names) = self.slot_files(name, n)?;
        let held = flock::wait(deadline, || try_any(&dir, &names));
        self.slot_result(name, n, held)
    }

    /// [`NodeState::acquire`] for async callers.
    pub async fn acquire_async(
        &self,
        name: &str,
        n: usize,
        deadline: Instant,
    ) -> Result<SlotGuard> {
        let (dir, names) = self.slot_files(name, n)?;
        let held = flock::wait_async(deadline, || try_any(&dir, &names)).await;
        self.slot_result(name, n, held)
    }

    fn slot_files(&self, name: &str, n: usize) -> Result<(OwnedFd, Vec<(usize, String)>)> {
        let valid = !name.is_empty()
            && name.len() <= 200
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid || n == 0 {
            return Err(Error::new(
                Code::Internal,
                format!(
                    "bad slot name {:?} or count {n}",
                    crate::error::printable(name)
                ),
            ));
        }
        // Start at a different slot in each process so contenders do not all try slot 0 first.
        let start = std::process::id() as usize % n;
        let names = (0..n)
            .map(|i| (start + i) % n)
            .map(|i| (i, format!("{name}.{i}")))
            .collect();
        Ok((self.open_dir("slots")?, names))
    }

    fn slot_result(
        &self,
        name: &str,
        n: usize,
        held: std::io::Result<Option<(usize, Held)>>,
    ) -> Result<SlotGuard> {
        match held {
            Ok(Some((index, held))) => Ok(SlotGuard { index, _held: held }),
            Ok(None) => Err(Error::new(
                Code::Timeout,
                format!("timed out waiting for one of the node's {n} {name} request slots"),
            )),
            Err(e) => Err(self.error(&format!("slots/{name}"), &e)),
        }
    }
}

/// One pass over the slot files: the first free one, held.
fn try_any(dir: &OwnedFd, slots: &[(usize, String)]) -> std::io::Result<Option<(usize, Held)>> {
    for (index, name) in slots {
        if let Some(held) = flock::try_file(dir, name)? {
            return Ok(Some((*index, held)));
        }
    }
    Ok(None)
}
