//! "Whoever answered 429 asked to be left alone until T", shared by every kv process on the
//! node, so after one throttled answer the others wait instead of adding to the storm.
//!
//! A record is keyed by whom the service throttles: a host where the limit is the host's
//! (IMDS's per-VM limit, one vault), `<authority host>/<tenant>/<client id>` for AAD, which
//! throttles per application and tenant (one tenant's throttled app must not stop another's
//! mounts). One file per key, `<root>/throttle/<sha256(key)>`, holding the key and the Unix
//! millisecond until which to wait. Updates (keep the later time, drop expired entries) run
//! under `throttle/.lock` so concurrent 429s cannot shorten a wait; readers need no lock because
//! files are replaced atomically.

use super::flock;
use super::{private, unix_now, NodeState};
use crate::error::{Code, Error, Result};
use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::time::{Duration, Instant};

/// The longest wait a Retry-After can impose on the node (a hostile or confused server asking
/// for hours must not stall every mount).
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The wait recorded when a 429 carries no usable Retry-After.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(1);

const LOCK: &str = ".lock";

/// The node's throttle records.
#[derive(Debug)]
pub struct Throttle {
    dir: OwnedFd,
}

#[derive(Serialize, Deserialize)]
pub(super) struct Record<'a> {
    /// The key (named `host` since the first format, when every key was a host).
    #[serde(borrow)]
    pub(super) host: Cow<'a, str>,
    pub(super) until_ms: u64,
}

impl NodeState {
    /// Opens the throttle records (creating `throttle/` on first use).
    pub fn throttle(&self) -> Result<Throttle> {
        Ok(Throttle {
            dir: self.open_dir("throttle")?,
        })
    }
}

impl Throttle {
    /// Remembers that the service asked `key` (e.g. `myvault.vault.azure.net`, or
    /// `login.microsoftonline.com/<tenant>/<client id>`; case-insensitive) to leave it alone for
    /// `retry_after` (capped at [`MAX_WAIT`]); an existing later time is kept.
    pub fn record(&self, key: &str, retry_after: Duration) -> Result<()> {
        let key = key.to_ascii_lowercase();
        let until_ms = now_ms().saturating_add(millis(retry_after.min(MAX_WAIT)));
        // Serialise updates; if a holder is stuck, write anyway rather than drop the record.
        let _lock = flock::wait(Instant::now() + Duration::from_secs(1), || {
            flock::try_file(&self.dir, LOCK)
        })
        .ok()
        .flatten();
        let name = file_name(&key);
        let until_ms = until_ms.max(self.until_ms(&key).unwrap_or(0));
        self.prune(&name);
        let record = Record {
            host: Cow::Borrowed(&key),
            until_ms,
        };
        serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| private::write(&self.dir, &name, &bytes))
            .map_err(|e| {
                Error::new(
                    Code::Internal,
                    format!("cannot record the throttle of {key}: {e}"),
                )
            })
    }

    /// How long to wait before asking again for `key`, if the service is throttling it.
    pub fn wait_time(&self, key: &str) -> Option<Duration> {
        let until_ms = self.until_ms(&key.to_ascii_lowercase())?;
        let left = until_ms.checked_sub(now_ms()).filter(|&ms| ms > 0)?;
        Some(Duration::from_millis(left).min(MAX_WAIT))
    }

    /// The stored time for `key` (lower case), if its record is intact and really for it.
    fn until_ms(&self, key: &str) -> Option<u64> {
        let name = file_name(key);
        let bytes = private::read(&self.dir, &name)?;
        match serde_json::from_slice::<Record<'_>>(&bytes) {
            Ok(r) if r.host == key => Some(r.until_ms),
            _ => {
                private::remove(&self.dir, &name);
                None
            }
        }
    }

    /// Drops expired records of other keys (called under the lock, so no fresh record is lost).
    fn prune(&self, keep: &str) {
        let now = now_ms();
        for name in private::names(&self.dir) {
            if name.starts_with('.') || name == keep {
                continue;
            }
            let expired = private::read(&self.dir, &name)
                .and_then(|b| {
                    serde_json::from_slice::<Record<'_>>(&b)
                        .ok()
                        .map(|r| r.until_ms)
                })
                .is_none_or(|until| until <= now);
            if expired {
                private::remove(&self.dir, &name);
            }
        }
    }
}

/// The record's file name: no host names or client ids in the listing, and no path tricks.
fn file_name(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    millis(unix_now())
}
