//! The node-wide token cache in `<root>/tokens/`: one 0600 file per identity key, written
//! atomically, so a burst of mounts of one identity costs one token request.
//!
//! Callers follow get → lock → get again → fetch → put ([`TokenCache::get_or_fetch`] does it):
//! the lock (`flock` on `<name>.lock`) makes concurrent mounts of one identity, in any process,
//! wait for the one request in flight instead of each asking. An entry is used only if it is
//! trustworthy (see `private`), parses, names exactly the requested key, and is valid for
//! longer than the margin; anything else is a miss (and a damaged entry is removed).

use super::flock::{self, Held};
use super::key::{CacheKey, Identity, Kind, NodeKey};
use super::{private, unix_now, NodeState};
use crate::error::{Code, Error, Result};
use crate::secret::Secret;
use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::future::Future;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// A cached token is reused until this long before it expires (AAD tokens live 1–24 h; the
/// margin covers the longest mount and clock skew).
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedToken {
    /// The bearer token (never printed: [`Secret`]'s Debug is redacted).
    pub token: Secret,
    /// Unix seconds.
    pub expires_on: i64,
}

/// An entry as stored. Borrowed where it can be, so the token is not copied around.
#[derive(Serialize, Deserialize)]
pub(super) struct Entry<'a> {
    #[serde(borrow)]
    pub(super) key: Cow<'a, str>,
    pub(super) kind: Kind,
    #[serde(borrow)]
    pub(super) label: Cow<'a, str>,
    pub(super) expires_on: i64,
    #[serde(borrow)]
    token: Cow<'a, str>,
}

/// The open token cache.
pub struct TokenCache {
    dir: OwnedFd,
    node_key: NodeKey,
}

/// Held while this process fetches the token for one key; dropping it lets the next waiter in.
#[derive(Debug)]
pub struct TokenLock {
    _held: Held,
}

impl NodeState {
    /// Opens the token cache (creating `tokens/` and the node key on first use).
    pub fn tokens(&self) -> Result<TokenCache> {
        let dir = self.open_dir("tokens")?;
        let node_key = NodeKey::load_or_create(&dir).map_err(|e| self.error("tokens/.key", &e))?;
        Ok(TokenCache { dir, node_key })
    }
}

impl TokenCache {
    /// The cache key of `identity`.
    pub fn key(&self, identity: &Identity<'_>) -> Result<CacheKey> {
        CacheKey::new(identity, &self.node_key)
            .map_err(|e| Error::new(Code::Internal, format!("token cache key: {e}")))
    }

    /// The cached token for `key` if it is still valid for longer than `margin`.
    pub fn get(&self, key: &CacheKey, margin: Duration) -> Option<CachedToken> {
        let name = key.file_name();
        let bytes = private::read(&self.dir, name)?;
        let entry = match serde_json::from_slice::<Entry<'_>>(&bytes) {
            Ok(entry) if entry.key == key.canonical() && entry.kind == key.kind() => entry,
            _ => {
                private::remove(&self.dir, name);
                return None;
            }
        };
        let now = i64::try_from(unix_now().as_secs()).unwrap_or(i64::MAX);
        if entry.expires_on <= now {
            private::remove(&self.dir, name);
            return None;
        }
        let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX);
        (entry.expires_on.saturating_sub(now) > margin).then(|| CachedToken {
            token: Secret::new(entry.token.into_owned()),
            expires_on: entry.expires_on,
        })
    }

    /// Stores `token` for `key`, replacing any entry atomically.
    pub fn put(&self, key: &CacheKey, token: &CachedToken) -> Result<()> {
        let entry = Entry {
            key: Cow::Borrowed(key.canonical()),
            kind: key.kind(),
            label: Cow::Borrowed(key.label()),
            expires_on: token.expires_on,
            token: Cow::Borrowed(token.token.expose()),
        };
        let cannot = |e: &dyn std::fmt::Display| {
            Error::new(
                Code::Internal,
                format!("cannot cache the token for {}: {e}", key.label()),
            )
        };
        let bytes = Zeroizing::new(serde_json::to_vec(&entry).map_err(|e| cannot(&e))?);
        if bytes.len() as u64 > private::MAX_FILE {
            return Err(cannot(&"larger than 64 KiB"));
        }
        private::write(&self.dir, key.file_name(), &bytes).map_err(|e| cannot(&e))
    }

    /// Drops the entry for `key` (e.g. the service rejected the cached token).
    pub fn forget(&self, key: &CacheKey) {
        private::remove(&self.dir, key.file_name());
    }

    /// Waits (blocking this thread) until this process is the one fetching `key`'s token.
    pub fn lock(&self, key: &CacheKey, deadline: Instant) -> Result<TokenLock> {
        let name = lock_name(key);
        let held = flock::wait(deadline, || flock::try_file(&self.dir, &name));
        self.locked(key, held)
    }

    /// [`TokenCache::lock`] for async callers.
    pub async fn lock_async(&self, key: &CacheKey, deadline: Instant) -> Result<TokenLock> {
        let name = lock_name(key);
        let held = flock::wait_async(deadline, || flock::try_file(&self.dir, &name)).await;
        self.locked(key, held)
    }

    fn locked(&self, key: &CacheKey, held: std::io::Result<Option<Held>>) -> Result<TokenLock> {
        match held {
            Ok(Some(held)) => Ok(TokenLock { _held: held }),
            Ok(None) => Err(Error::new(
                Code::Timeout,
                format!(
                    "timed out waiting for another kv process to fetch the token for {}",
                    key.label()
                ),
            )),
            Err(e) => Err(Error::new(
                Code::Internal,
                format!("cannot lock the token cache for {}: {e}", key.label()),
            )),
        }
    }

    /// The cached token for `key`, or the one `fetch` obtains, fetched once per node however
    /// many processes ask at the same time: the others wait for it until `deadline`. A token
    /// that cannot be cached is still returned.
    pub async fn get_or_fetch<F, Fut>(
        &self,
        key: &CacheKey,
        margin: Duration,
        deadline: Instant,
        fetch: F,
    ) -> Result<CachedToken>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken>>,
    {
        if let Some(token) = self.get(key, margin) {
            return Ok(token);
        }
        let _lock = self.lock_async(key, deadline).await?;
        // Whoever held the lock before us may have just stored it.
        if let Some(token) = self.get(key, margin) {
            return Ok(token);
        }
        let token = fetch().await?;
        let _ = self.put(key, &token);
        Ok(token)
    }
}

fn lock_name(key: &CacheKey) -> String {
    format!("{}.lock", key.file_name())
}
