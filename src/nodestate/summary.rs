//! What `kv doctor` shows of the node state: the cached tokens (whose, until when, how old;
//! never the token) and the hosts currently throttling. Reading creates nothing (a damaged entry
//! it meets is removed, as by any reader).

use super::key::Kind;
use super::throttle::Record;
use super::tokens::Entry;
use super::{private, unix_now, NodeState};
use std::fmt;
use std::time::Duration;

/// One cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// The identity's kind.
    pub kind: Kind,
    /// Secret-free description (client id, tenant, pod, resource).
    pub label: String,
    /// Unix seconds at which the token expires.
    pub expires_on: i64,
    /// How long ago the entry was written.
    pub age: Duration,
}

/// One host that answered 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleEntry {
    /// The host.
    pub host: String,
    /// How long other requests to it still wait.
    pub remaining: Duration,
}

/// How many files of each kind the node state holds: what bounds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Token cache entries.
    pub token_entries: usize,
    /// Lock files (token, volume and throttle locks): only held ones, plus a dead holder's.
    pub lock_files: usize,
    /// Slot files: only held ones, plus a dead holder's.
    pub slot_files: usize,
    /// Rotating volumes' records.
    pub volume_records: usize,
    /// The agent's mounts of rotating volumes.
    pub agent_mounts: usize,
}

/// The node state at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// File counts.
    pub counts: Counts,
    /// Cached tokens, soonest expiry first.
    pub tokens: Vec<TokenEntry>,
    /// Hosts throttling now.
    pub throttles: Vec<ThrottleEntry>,
}

impl NodeState {
    /// Reads the cache and throttle records as they are now (empty when there are none).
    pub fn summary(&self) -> Summary {
        let now = unix_now();
        let mut summary = Summary::default();
        for sub in ["locks", "throttle"] {
            if let Some(dir) = self.existing_dir(sub) {
                summary.counts.lock_files += private::names(&dir)
                    .iter()
                    .filter(|n| n.ends_with(".lock"))
                    .count();
            }
        }
        if let Some(dir) = self.existing_dir("slots") {
            summary.counts.slot_files = private::names(&dir).len();
        }
        summary.counts.volume_records = self.volumes().count();
        summary.counts.agent_mounts = self.agent_mount_count();
        if let Some(dir) = self.existing_dir("tokens") {
            for name in private::names(&dir) {
                if name.ends_with(".lock") {
                    summary.counts.lock_files += 1;
                    continue;
                }
                if name.starts_with('.') {
                    continue;
                }
                summary.counts.token_entries += 1;
                let Some(bytes) = private::read(&dir, &name) else {
                    continue;
                };
                let Ok(entry) = serde_json::from_slice::<Entry<'_>>(&bytes) else {
                    continue;
                };
                let written = private::mtime(&dir, &name).unwrap_or(0);
                summary.tokens.push(TokenEntry {
                    kind: entry.kind,
                    label: entry.label.into_owned(),
                    expires_on: entry.expires_on,
                    age: now.saturating_sub(Duration::from_secs(written.max(0) as u64)),
                });
            }
        }
        if let Some(dir) = self.existing_dir("throttle") {
            let now_ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
            for name in private::names(&dir) {
                let record = private::read(&dir, &name).and_then(|b| {
                    serde_json::from_slice::<Record<'_>>(&b)
                        .ok()
                        .map(|r| (r.host.into_owned(), r.until_ms))
                });
                if let Some((host, until_ms)) = record.filter(|(_, until)| *until > now_ms) {
                    summary.throttles.push(ThrottleEntry {
                        host,
                        remaining: Duration::from_millis(until_ms - now_ms),
                    });
                }
            }
        }
        summary.tokens.sort_by_key(|t| t.expires_on);
        summary.throttles.sort_by(|a, b| a.host.cmp(&b.host));
        summary
    }
}

impl fmt::Display for Summary {
    /// One line per entry, e.g. `token node-identity client 1234 for https://vault.azure.net:
    /// expires in 3540s, written 60s ago`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let now = unix_now().as_secs() as i64;
        let c = &self.counts;
        writeln!(
            f,
            "node state: {} token entries, {} lock files, {} slot files, {} volume records, {} agent mounts",
            c.token_entries, c.lock_files, c.slot_files, c.volume_records, c.agent_mounts
        )?;
        if self.tokens.is_empty() {
            writeln!(f, "token cache: empty")?;
        }
        for t in &self.tokens {
            let left = t.expires_on - now;
            let when = if left > 0 {
                format!("expires in {left}s")
            } else {
                format!("expired {}s ago", -left)
            };
            writeln!(
                f,
                "token {} {}: {when}, written {}s ago",
                t.kind.as_str(),
                t.label,
                t.age.as_secs()
            )?;
        }
        if self.throttles.is_empty() {
            writeln!(f, "throttled hosts: none")?;
        }
        for t in &self.throttles {
            writeln!(
                f,
                "throttled {}: {}ms left",
                t.host,
                t.remaining.as_millis()
            )?;
        }
        Ok(())
    }
}
