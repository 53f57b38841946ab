//! The call's deadline and the retry loop the token sources share.

use crate::error::{Code, Error, Result};
use std::future::Future;
use std::time::{Duration, Instant};

/// One deadline for the whole call: tokens, fetches and the mount.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// A deadline `total` from now.
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The configured length, for messages.
    pub fn total(&self) -> Duration {
        self.total
    }

    /// The instant.
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The error when `what` ran out of time; `last` says what the service last answered.
    pub fn expired(&self, what: &str, last: Option<Error>) -> Error {
        let secs = self.total.as_secs_f64();
        match last {
            // The last answer is the real cause and has its own fix: keep its code.
            Some(e) => Error::new(
                e.code(),
                format!(
                    "timed out after {secs}s waiting for {what}: {}",
                    e.message()
                ),
            ),
            None => Error::new(
                Code::Timeout,
                format!("timed out after {secs}s waiting for {what}, which never answered"),
            ),
        }
    }
}

/// Time left for an attempt after a retry's wait, at least.
pub const RETRY_MARGIN: Duration = Duration::from_millis(300);

/// How long after the deadline the outermost timeout fires: every inner step times out at the
/// deadline itself and reports its specific cause; the outer one only catches what did not.
pub const OUTER_GRACE: Duration = Duration::from_millis(250);

/// What one attempt concluded.
pub enum Attempt<T> {
    /// Finished: success or a permanent failure.
    Done(Result<T>),
    /// Transient failure; try again after `after` (the server's Retry-After) or the backoff.
    Retry {
        /// Server-requested delay.
        after: Option<Duration>,
        /// What to report if no attempt succeeds.
        error: Error,
    },
}

/// Backoff shape for one endpoint.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub first: Duration,
    /// Cap.
    pub max: Duration,
    /// Attempts at most (bounds the requests a mount can make).
    pub max_attempts: u32,
}

/// Runs `attempt` until done, the attempts run out or the deadline passes; every attempt gets
/// the remaining time as its timeout.
pub async fn run<T, F, Fut>(
    what: &str,
    deadline: &Deadline,
    backoff: Backoff,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut delay = backoff.first;
    let mut last = None;
    for n in 1..=backoff.max_attempts {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(deadline.expired(what, last));
        }
        let outcome = match tokio::time::timeout(remaining, attempt(remaining)).await {
            Ok(outcome) => outcome,
            Err(_) => return Err(deadline.expired(what, last)),
        };
        match outcome {
            Attempt::Done(result) => {
                if n > 1 {
                    crate::log::info("retried", serde_json::json!({"what": what, "attempts": n}));
                }
                return result;
            }
            Attempt::Retry { after, error } => {
                crate::log::warn(
                    "retry",
                    serde_json::json!({"what": what, "attempt": n, "error": error.to_string()}),
                );
                let wait = after.unwrap_or_else(|| jitter(delay));
                last = Some(error);
                // Retry only if the attempt after the wait still has time to finish.
                if wait + RETRY_MARGIN >= deadline.remaining() {
                    return Err(deadline.expired(what, last));
                }
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::new(Code::Internal, format!("{what}: no attempt made"))))
}

/// ±25% so that many pods retrying together spread out.
pub fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    d.mul_f64(factor)
}

/// Parses `Retry-After` seconds (Key Vault and IMDS send integers).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("x-ms-retry-after-ms")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}
