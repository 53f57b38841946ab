//! When each volume is refreshed: its interval (option `rotationpollinterval`, a Go-style
//! duration, bounded below by the node's minimum), a fixed per-volume phase so volumes with the
//! same interval spread over it instead of firing together, random jitter, and exponential
//! backoff after failures (capped at the interval).
//!
//! Times are [`Duration`]s since the Unix epoch: they are stored in status files and must mean
//! the same after an agent restart.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// First retry after a failure; doubles per failure up to the interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// A random number source for jitter (std's per-process random hash keys; nothing here needs
/// more than "not the same on every node").
pub fn random_u64() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// A fraction of `d` in `[0, 1)` taken from `r`.
fn scaled(d: Duration, r: u64) -> Duration {
    Duration::from_nanos(((d.as_nanos() * (r as u128 >> 11)) >> 53) as u64)
}

/// The volume's fixed phase within its interval, from its record name (a hex SHA-256): stable
/// across restarts, uniform across volumes.
pub fn phase(name: &str, interval: Duration) -> Duration {
    let seed = u64::from_str_radix(name.get(..16).unwrap_or("0"), 16).unwrap_or(0);
    scaled(interval, seed)
}

/// The first instant at or after `t` that is at the volume's phase of the interval.
fn at_phase(t: Duration, name: &str, interval: Duration) -> Duration {
    let i = interval.as_nanos().max(1);
    let offset = phase(name, interval).as_nanos();
    let t = t.as_nanos();
    let mut at = t - t % i + offset;
    if at < t {
        at += i;
    }
    Duration::from_nanos(at as u64)
}

/// Up to 5% of the interval, at random.
fn jitter(interval: Duration, random: u64) -> Duration {
    scaled(interval / 20, random)
}

/// First refresh of a volume the agent has no status for: the next instant at or after `now`
/// that is at its phase of the interval (so 500 volumes with one interval spread evenly over
/// it), plus jitter.
pub fn first_due(now: Duration, name: &str, interval: Duration) -> Duration {
    at_phase(now, name, interval) + jitter(interval, random_u64())
}

/// Next refresh after a successful one at `now`: the volume's next phase point at least half an
/// interval away, plus jitter. A volume refreshed on time is refreshed again one interval later;
/// one refreshed off its phase (`kv agent --once`, a retry) returns to it, so volumes stay spread
/// however often an operator refreshes them all at once.
pub fn after_success(now: Duration, name: &str, interval: Duration, random: u64) -> Duration {
    at_phase(now + interval / 2, name, interval) + jitter(interval, random)
}

/// Next refresh after the `failures`-th failure in a row at `now`: [`FIRST_RETRY`] doubling per
/// failure, capped at the interval, with "equal jitter" (half fixed, half random).
pub fn after_failure(now: Duration, interval: Duration, failures: u32, random: u64) -> Duration {
    let exp = failures.saturating_sub(1).min(20);
    let base = FIRST_RETRY
        .saturating_mul(1u32 << exp)
        .min(interval.max(FIRST_RETRY));
    now + base / 2 + scaled(base / 2, random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_validated_with_the_other_options() {
        let parse = |v: &str| {
            crate::options::VolumeSpec::parse(
                &serde_json::json!({
                    "keyvaultname": "kvdemo",
                    "keyvaultobjectnames": "a",
                    "keyvaultobjecttypes": "secret",
                    "usepodidentity": "true",
                    "kubernetes.io/pod.name": "p",
                    "kubernetes.io/pod.namespace": "n",
                    "RotationPollInterval": v,
                })
                .to_string(),
            )
        };
        let spec = parse("1h30m").unwrap();
        assert_eq!(spec.rotation_interval, Some(Duration::from_secs(5400)));
        assert!(spec.unknown_keys.is_empty(), "{:?}", spec.unknown_keys);
        for (bad, why) in [("soon", "rotationpollinterval: duration"), ("0s", "is 0")] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code(), crate::error::Code::Options);
            assert!(e.message().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn five_hundred_volumes_spread_over_the_interval() {
        let interval = Duration::from_secs(120);
        let now = Duration::from_secs(1_800_000_000) + Duration::from_millis(12_345);
        let mut buckets = [0u32; 12];
        let mut per_second = std::collections::BTreeMap::<u64, u32>::new();
        for i in 0..500 {
            let name = crate::nodestate::volumes::name_of(std::path::Path::new(&format!(
                "/var/lib/kubelet/pods/{i}/volumes/azure~kv/secrets"
            )));
            let due = first_due(now, &name, interval);
            assert!(
                due >= now && due < now + interval + interval / 20,
                "{i}: {due:?}"
            );
            let offset = (due - now).as_secs();
            buckets[(offset / 10).min(11) as usize] += 1;
            *per_second.entry(offset).or_default() += 1;
            // The phase is a property of the volume, not of the moment asked.
            assert_eq!(phase(&name, interval), phase(&name, interval));
        }
        // 500 over 12 ten-second buckets is ~42 each: no bucket empty or crowded.
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (20..=70).contains(n),
                "bucket {i}: {n} of 500 ({buckets:?})"
            );
        }
        let worst = per_second.values().max().unwrap();
        assert!(*worst <= 15, "{worst} volumes due in the same second");
    }

    #[test]
    fn jitter_and_backoff_stay_in_bounds() {
        let now = Duration::from_secs(1000);
        let i = Duration::from_secs(120);
        let name = crate::nodestate::volumes::name_of(std::path::Path::new("/v"));
        let p = at_phase(now, &name, i);
        for r in [0, u64::MAX, 1 << 63, random_u64()] {
            // On time: one interval later. Off phase: back to the phase, at least i/2 away.
            let next = after_success(p, &name, i, r);
            assert!(next >= p + i && next <= p + i + i / 20, "{next:?}");
            for off in [1, 30, 59, 61, 119] {
                let t = p + Duration::from_secs(off);
                let next = after_success(t, &name, i, r);
                assert!(
                    next >= t + i / 2 && next <= t + i + i / 2 + i / 20,
                    "{off}: {next:?}"
                );
                assert!(at_phase(next - jitter(i, r), &name, i) == next - jitter(i, r));
            }
            for failures in 1..=12 {
                let d = after_failure(now, i, failures, r) - now;
                let base = (FIRST_RETRY * (1 << (failures - 1).min(20))).min(i);
                assert!(
                    d >= base / 2 && d <= base,
                    "failure {failures}: {d:?} vs {base:?}"
                );
                assert!(d <= i, "capped at the interval");
                if failures > 6 {
                    assert!(d >= i / 2);
                }
            }
        }
        // Two volumes failing together retry at different times.
        let a = after_failure(now, i, 3, random_u64());
        let b = after_failure(now, i, 3, random_u64());
        let c = after_failure(now, i, 3, random_u64());
        assert!(a != b || b != c);
    }
}
