//! Cross-process counting semaphores with a fair share per namespace:
//! `<root>/slots/<name>.<i>` for i in 0..n, each held with `flock`. Holding any one of the n
//! files is holding a slot, so at most n holders exist on the node at once, and a slot comes
//! free when its holder drops it or dies.
//!
//! A holder writes a tag of its owner (a hash of its namespace) into the file it holds, and
//! slots are taken under `<name>.lock`, so a taker sees who holds what. An owner holding its
//! share (n/4, at least 1) takes another slot only while more than a share stays free: one
//! namespace cannot take every slot while others wait, yet alone it may use most of them.
//!
//! Slot files follow the node state's one lock-file policy ([`flock`]): a slot file exists only
//! while its slot is held (the taker that looked at a free one it does not take removes it
//! again), so a set has at most n + 1 files, and Key Vault hosts map onto [`VAULT_BUCKETS`]
//! sets: whatever vaults pods name, the directory stays bounded.

use super::flock;
use super::NodeState;
use crate::error::{Code, Error, Result};
use rustix::fd::OwnedFd;
use rustix::fs::FlockOperation;
use rustix::io::Errno;
use sha2::{Digest, Sha256};
use std::time::Instant;

/// The semaphore for IMDS token requests.
pub const IMDS: &str = "imds";

/// IMDS serves a VM about 5 concurrent requests and answers 429 beyond.
pub const IMDS_SLOTS: usize = 5;

/// How many slot sets the vault hosts of the node share ([`vault_set`]): a fixed bound on the
/// files however many vaults pods name.
pub const VAULT_BUCKETS: usize = 16;

/// Bytes of the owner tag at the start of a held slot file.
const TAG_LEN: usize = 16;

/// The slot set of a Key Vault host: `vault-<first hex digit of sha256(host)>`.
pub fn vault_set(host: &str) -> String {
    let digest = Sha256::digest(host.to_ascii_lowercase().as_bytes());
    format!("vault-{:x}", digest[0] >> 4)
}

/// An owner's share of `n` slots: what it may hold however scarce they are.
pub fn fair_share(n: usize) -> usize {
    (n / 4).max(1)
}

/// One held slot; dropping it removes its file and releases it.
#[derive(Debug)]
pub struct SlotGuard {
    index: usize,
    _held: flock::Held,
}

impl SlotGuard {
    /// Which of the n slots this is (for logs).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl NodeState {
    /// Takes one of the `n` slots of semaphore `name`, blocking this thread until one is free
    /// or `deadline` passes. `name` is letters, digits, `.`, `-` and `_` (e.g. `imds`), at most
    /// 200 bytes. No owner: a plain counting semaphore.
    pub fn acquire(&self, name: &str, n: usize, deadline: Instant) -> Result<SlotGuard> {
        let dir = self.slot_dir(name, n)?;
        let held = flock::wait(deadline, || try_take(&dir, name, n, None));
        self.slot_result(name, n, held)
    }

    /// [`NodeState::acquire`] for async callers.
    pub async fn acquire_async(
        &self,
        name: &str,
        n: usize,
        deadline: Instant,
    ) -> Result<SlotGuard> {
        self.acquire_fair(name, n, None, deadline).await
    }

    /// Takes one of the `n` slots of `name` for `owner` (a namespace), waiting while none is
    /// free or while `owner` already holds its [`fair_share`] and taking another would leave
    /// no more than a share for the others.
    pub async fn acquire_fair(
        &self,
        name: &str,
        n: usize,
        owner: Option<&str>,
        deadline: Instant,
    ) -> Result<SlotGuard> {
        let dir = self.slot_dir(name, n)?;
        let tag = owner.map(tag_of);
        let held = flock::wait_async(deadline, || try_take(&dir, name, n, tag.as_ref())).await;
        self.slot_result(name, n, held)
    }

    fn slot_dir(&self, name: &str, n: usize) -> Result<OwnedFd> {
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
        self.open_dir("slots")
    }

    fn slot_result(
        &self,
        name: &str,
        n: usize,
        held: std::io::Result<Option<SlotGuard>>,
    ) -> Result<SlotGuard> {
        match held {
            Ok(Some(guard)) => Ok(guard),
            Ok(None) => Err(Error::new(
                Code::Timeout,
                format!("timed out waiting for one of the node's {n} {name} request slots"),
            )),
            Err(e) => Err(self.error(&format!("slots/{name}"), &e)),
        }
    }
}

/// The tag an owner writes into the slot it holds: no namespace names in `/run/kv`.
type Tag = [u8; TAG_LEN];

fn tag_of(owner: &str) -> Tag {
    let digest = hex::encode(Sha256::digest(owner.as_bytes()));
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&digest.as_bytes()[..TAG_LEN]);
    tag
}

/// The tag of a slot without an owner (never equal to an owner's hex tag).
const NO_OWNER: Tag = [b'-'; TAG_LEN];

/// One look at the set under its lock: the lowest free slot, held and tagged, if `owner` may
/// take it. `None` while another process looks, while none is free, or while the owner holds
/// its share and no more than a share is free.
fn try_take(
    dir: &OwnedFd,
    name: &str,
    n: usize,
    owner: Option<&Tag>,
) -> std::io::Result<Option<SlotGuard>> {
    let Some(_looking) = flock::try_file(dir, &format!("{name}.lock"))? else {
        return Ok(None);
    };
    let share = fair_share(n);
    let (mut mine, mut free) = (0, 0);
    let mut first_free: Option<(usize, OwnedFd)> = None;
    for index in 0..n {
        let slot = format!("{name}.{index}");
        let file = flock::open(dir, &slot)?;
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                free += 1;
                match first_free {
                    None => first_free = Some((index, file)),
                    // Free and not taken: gone again (only this taker looks at the set now).
                    Some(_) => super::private::remove(dir, &slot),
                }
                // Enough free that any owner may take one: no need to look (or create) further.
                if owner.is_none() || free > share {
                    break;
                }
            }
            Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                if owner.is_some_and(|tag| read_tag(&file) == Some(*tag)) {
                    mine += 1;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    let Some((index, file)) = first_free else {
        return Ok(None);
    };
    let held = flock::adopt(dir, &format!("{name}.{index}"), file)?;
    // `free` counts the free slots seen: all of them, or more than a share after an early stop.
    if owner.is_some() && mine >= share && free <= share {
        // Dropping `held` removes the file again.
        return Ok(None);
    }
    rustix::io::pwrite(held.file(), owner.unwrap_or(&NO_OWNER), 0)?;
    Ok(Some(SlotGuard { index, _held: held }))
}

fn read_tag(file: &OwnedFd) -> Option<Tag> {
    let mut tag = [0u8; TAG_LEN];
    match rustix::io::pread(file, &mut tag, 0) {
        Ok(TAG_LEN) => Some(tag),
        _ => None,
    }
}
