//! Azure's request limits, enforced when a scenario asks for them: IMDS's per-VM limits on
//! the managed-identity endpoint (concurrent requests in flight, requests per second) and a
//! per-vault token bucket. State lives across scenario reloads.

use crate::scenario::{ImdsLimits, Throttle};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Limits {
    imds: Mutex<ImdsState>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Default)]
struct ImdsState {
    in_flight: usize,
    /// Arrival times of the admitted requests of the last second.
    window: VecDeque<Instant>,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Why IMDS refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    Concurrency,
    Rate,
}

impl Exceeded {
    pub fn as_str(self) -> &'static str {
        match self {
            Exceeded::Concurrency => "concurrency",
            Exceeded::Rate => "rate",
        }
    }
}

/// Holds one IMDS request slot until dropped (the answer has been produced).
pub struct ImdsSlot(Arc<Limits>);

impl Drop for ImdsSlot {
    fn drop(&mut self) {
        let mut s = self.0.imds.lock().unwrap_or_else(|e| e.into_inner());
        s.in_flight = s.in_flight.saturating_sub(1);
    }
}

impl Limits {
    /// Admit an IMDS request or say which limit it exceeds. Refused requests count toward
    /// neither limit, so a client that backs off gets through.
    pub fn imds_admit(self: &Arc<Self>, cfg: &ImdsLimits) -> Result<ImdsSlot, Exceeded> {
        let mut s = self.imds.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while s
            .window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            s.window.pop_front();
        }
        if cfg.concurrency.is_some_and(|c| s.in_flight >= c) {
            return Err(Exceeded::Concurrency);
        }
        if cfg.rate_per_second.is_some_and(|r| s.window.len() >= r) {
            return Err(Exceeded::Rate);
        }
        s.in_flight += 1;
        s.window.push_back(now);
        Ok(ImdsSlot(self.clone()))
    }

    /// Take a token from `vault`'s bucket; Err: seconds until one is available (≥ 1).
    pub fn vault_take(&self, vault: &str, t: &Throttle) -> Result<(), u64> {
        let burst = t.burst.unwrap_or(t.requests_per_second).max(1.0);
        let mut m = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = m.entry(vault.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.duration_since(b.last).as_secs_f64() * t.requests_per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err((((1.0 - b.tokens) / t.requests_per_second).ceil() as u64).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imds_concurrency_and_rate() {
        let l = Arc::new(Limits::default());
        let cfg = ImdsLimits {
            concurrency: Some(2),
            rate_per_second: Some(3),
            retry_after: None,
        };
        let a = l.imds_admit(&cfg).expect("1");
        let b = l.imds_admit(&cfg).expect("2");
        assert_eq!(l.imds_admit(&cfg).err(), Some(Exceeded::Concurrency));
        drop(a);
        let _c = l.imds_admit(&cfg).expect("3");
        drop(b);
        assert_eq!(l.imds_admit(&cfg).err(), Some(Exceeded::Rate));
    }

    #[test]
    fn bucket_refuses_beyond_burst() {
        let l = Limits::default();
        let t = Throttle {
            requests_per_second: 1.0,
            burst: Some(2.0),
        };
        assert!(l.vault_take("v", &t).is_ok());
        assert!(l.vault_take("v", &t).is_ok());
        assert_eq!(l.vault_take("v", &t), Err(1));
        assert!(l.vault_take("other", &t).is_ok());
    }
}
