//! The call's deadline and the one retry loop of every HTTP exchange (token sources and Key
//! Vault): a jittered, doubling backoff, the server's Retry-After when it gives one, a cap on
//! attempts, and no attempt that the deadline would cut off.

use crate::error::{Code, Error};
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
    Done(T),
    /// Transient; try again after `after` (the server's Retry-After) or the backoff.
    Retry {
        /// Server-requested delay.
        after: Option<Duration>,
        /// What this attempt got, returned if no later attempt is made.
        outcome: T,
        /// One line for the log (an error or a status; never a body).
        why: String,
    },
}

/// How [`run`] ended.
pub enum Ended<T> {
    /// An attempt finished.
    Done(T),
    /// Attempts ran out: the last outcome.
    OutOfAttempts(T),
    /// The deadline left no time for (another) attempt: the last outcome, if any.
    OutOfTime(Option<T>),
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
/// the remaining time as its timeout. A wait that would leave the next attempt less than
/// [`RETRY_MARGIN`] ends the loop at once with the last outcome, so the user sees what the
/// service answered ("throttled", "HTTP 500") rather than a bare timeout.
pub async fn run<T, F, Fut>(
    what: &str,
    deadline: &Deadline,
    backoff: Backoff,
    mut attempt: F,
) -> Ended<T>
where
    F: FnMut(Duration) -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let mut delay = backoff.first;
    let mut last = None;
    for n in 1..=backoff.max_attempts {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Ended::OutOfTime(last);
        }
        let outcome = match tokio::time::timeout(remaining, attempt(remaining)).await {
            Ok(outcome) => outcome,
            Err(_) => return Ended::OutOfTime(last),
        };
        match outcome {
            Attempt::Done(result) => {
                if n > 1 {
                    crate::log::info("retried", serde_json::json!({"what": what, "attempts": n}));
                }
                return Ended::Done(result);
            }
            Attempt::Retry {
                after,
                outcome,
                why,
            } => {
                let wait = after.unwrap_or_else(|| jitter(delay));
                crate::log::warn(
                    "retry",
                    serde_json::json!({"what": what, "attempt": n, "error": why, "wait_ms": wait.as_millis() as u64}),
                );
                if n == backoff.max_attempts {
                    return Ended::OutOfAttempts(outcome);
                }
                // Retry only if the attempt after the wait still has time to finish.
                if wait + RETRY_MARGIN >= deadline.remaining() {
                    return Ended::OutOfTime(Some(outcome));
                }
                last = Some(outcome);
                tokio::time::sleep(wait).await;
                delay = (delay * 2).min(backoff.max);
            }
        }
    }
    Ended::OutOfTime(last)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(max_attempts: u32) -> Backoff {
        Backoff {
            first: Duration::from_millis(1),
            max: Duration::from_millis(2),
            max_attempts,
        }
    }

    fn retry(n: u32) -> Attempt<u32> {
        Attempt::Retry {
            after: None,
            outcome: n,
            why: "x".into(),
        }
    }

    #[tokio::test]
    async fn stops_after_the_last_attempt_with_its_outcome() {
        let d = Deadline::after(Duration::from_secs(5));
        let mut n = 0;
        let ended = run("t", &d, backoff(3), |_| {
            n += 1;
            let k = n;
            async move { retry(k) }
        })
        .await;
        assert!(matches!(ended, Ended::OutOfAttempts(3)));
        let ended = run("t", &d, backoff(3), |_| async { Attempt::Done(7) }).await;
        assert!(matches!(ended, Ended::Done(7)));
    }

    #[tokio::test]
    async fn a_retry_after_past_the_deadline_ends_at_once() {
        let d = Deadline::after(Duration::from_secs(2));
        let started = Instant::now();
        let ended = run("t", &d, backoff(5), |_| async {
            Attempt::Retry {
                after: Some(Duration::from_secs(3600)),
                outcome: 1,
                why: "429".into(),
            }
        })
        .await;
        assert!(matches!(ended, Ended::OutOfTime(Some(1))));
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_stalled_attempt_is_cut_at_the_deadline() {
        let d = Deadline::after(Duration::from_millis(100));
        let ended: Ended<u32> = run("t", &d, backoff(5), |_| async {
            std::future::pending::<()>().await;
            Attempt::Done(0)
        })
        .await;
        assert!(matches!(ended, Ended::OutOfTime(None)));
    }
}
