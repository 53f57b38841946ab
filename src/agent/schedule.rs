//! When each volume is refreshed: its interval (option `rotationpollinterval`, a Go-style
//! duration, bounded below by the node's minimum), a fixed per-volume phase so volumes with the
//! same interval spread over it instead of firing together, random jitter, and exponential
//! backoff after failures (capped at the interval).
//!
//! Times are [`Duration`]s since the Unix epoch: they are stored in status files and must mean
//! the same after an agent restart.

use crate::error::{printable, Error, Result};
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// The node's minimum interval unless its config sets another.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// First retry after a failure; doubles per failure up to the interval.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `30s`, `2m`, `1h30m`,
/// `1.5h`. `0` alone is zero. Negative durations are refused (an interval cannot be).
pub fn parse_duration(text: &str) -> Result<Duration> {
    let bad = |why: &str| {
        Error::options(format!(
            "duration \"{}\" {why}: write a number and a unit, e.g. 30s, 2m, 1h30m or 1.5h",
            printable(text)
        ))
    };
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err(bad("is negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad("is empty"));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let n = a.bytes().take_while(u8::is_ascii_digit).count();
                a.split_at(n)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad("has no number where one is expected"));
        }
        let unit_len = after
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map(|(i, _)| i)
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let nanos_per: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(bad("has a number without a unit")),
            _ => return Err(bad(&format!("has an unknown unit \"{}\"", printable(unit)))),
        };
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| bad("is too large"))?
        };
        // The fraction exactly, in nanoseconds of the unit (digits past 1e-18 cannot matter).
        let frac = &frac[..frac.len().min(18)];
        let frac_nanos = if frac.is_empty() {
            0
        } else {
            let digits: u128 = frac.parse().map_err(|_| bad("is not a number"))?;
            digits * nanos_per / 10u128.pow(frac.len() as u32)
        };
        total = whole
            .checked_mul(nanos_per)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .filter(|n| *n <= u64::MAX as u128)
            .ok_or_else(|| bad("is too large"))?;
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Whole seconds the way [`parse_duration`] reads them back: `45s`, `2m0s`, `1h30m0s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
}

/// The node's rotation settings (`rotation.*` in `kv.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `rotation.enabled` (default true).
    pub enabled: bool,
    /// `rotation.defaultInterval`: rotation for volumes that do not ask for it.
    pub default_interval: Option<Duration>,
    /// `rotation.minInterval` (default [`DEFAULT_MIN_INTERVAL`]).
    pub min_interval: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            default_interval: None,
            min_interval: DEFAULT_MIN_INTERVAL,
        }
    }
}

impl Policy {
    /// The interval of a volume whose `rotationpollinterval` is `asked` (parsed and non-zero,
    /// [`crate::options::VolumeSpec::rotation_interval`]); `None` when the volume does not
    /// rotate. A value below the node's minimum is raised to it.
    pub fn interval(&self, asked: Option<Duration>) -> Result<Option<Duration>> {
        if !self.enabled {
            return match asked {
                Some(_) => Err(Error::new(
                    crate::error::Code::Policy,
                    "rotationpollinterval is set but this node turns rotation off (node config rotation.enabled: false): remove the option or enable rotation on the node",
                )),
                None => Ok(None),
            };
        }
        Ok(asked
            .or(self.default_interval)
            .map(|d| d.max(self.min_interval)))
    }
}

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
    fn go_durations_parse() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("30s", s(30)),
            ("2m", s(120)),
            ("1h30m", s(5400)),
            ("1.5h", s(5400)),
            ("1h0m0s", s(3600)),
            ("90m", s(5400)),
            ("0", s(0)),
            ("+5s", s(5)),
            (".5s", Duration::from_millis(500)),
            ("2.s", s(2)),
            ("1m30.25s", Duration::from_millis(90_250)),
            ("300ms", Duration::from_millis(300)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
            ("1.000000001s", Duration::from_nanos(1_000_000_001)),
            ("0.1ns", Duration::ZERO),
        ] {
            assert_eq!(parse_duration(text).unwrap(), want, "{text}");
        }
        for bad in [
            "",
            "5",
            "s",
            "1d",
            "-5s",
            "1.5",
            "1h-5m",
            "..5s",
            "5 s",
            "1hh",
            "99999999999h",
            "2m\n",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert_eq!(e.code(), crate::error::Code::Options, "{bad}");
            assert!(e.message().contains("e.g. 30s"), "{bad}: {e}");
        }
    }

    #[test]
    fn durations_print_as_go_does() {
        for (secs, text) in [
            (0, "0s"),
            (45, "45s"),
            (120, "2m0s"),
            (5400, "1h30m0s"),
            (90061, "25h1m1s"),
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text).unwrap(), d);
        }
    }

    #[test]
    fn intervals_follow_the_node_policy() {
        let s = Duration::from_secs;
        let p = Policy::default();
        assert_eq!(p.interval(None).unwrap(), None);
        assert_eq!(p.interval(Some(s(120))).unwrap(), Some(s(120)));
        assert_eq!(
            p.interval(Some(s(5))).unwrap(),
            Some(s(30)),
            "raised to the minimum"
        );
        let defaulted = Policy {
            default_interval: Some(s(600)),
            min_interval: s(60),
            ..Policy::default()
        };
        assert_eq!(defaulted.interval(None).unwrap(), Some(s(600)));
        assert_eq!(defaulted.interval(Some(s(30))).unwrap(), Some(s(60)));
        let off = Policy {
            enabled: false,
            default_interval: Some(s(600)),
            ..Policy::default()
        };
        assert_eq!(off.interval(None).unwrap(), None);
        let e = off.interval(Some(s(120))).unwrap_err();
        assert_eq!(e.code(), crate::error::Code::Policy);
        assert!(e.message().contains("rotation.enabled"), "{e}");
    }

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
            let name = crate::agent::record::name_of(std::path::Path::new(&format!(
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
        let name = crate::agent::record::name_of(std::path::Path::new("/v"));
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
