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

/// The node state at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
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
        if let Some(dir) = self.existing_dir("tokens") {
            for name in private::names(&dir) {
                if name.starts_with('.') || name.ends_with(".lock") {
                    continue;
                }
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
