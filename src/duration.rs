//! Go-style durations (`30s`, `2m`, `1h30m`, `1.5h`), as Kubernetes users write them in the
//! CSI provider's `rotationPollInterval` and in `kv.json`.

use crate::error::{printable, Error, Result};
use std::time::Duration;

/// Parses a Go `time.ParseDuration` string: a sequence of decimal numbers with optional
/// fraction and a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`), e.g. `30s`, `2m`, `1h30m`,
/// `1.5h`. `0` alone is zero. Negative durations are refused (an interval cannot be).
pub fn parse(text: &str) -> Result<Duration> {
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

/// Whole seconds the way [`parse`] reads them back: `45s`, `2m0s`, `1h30m0s`.
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s / 60 % 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m{sec}s"),
        (h, m, sec) => format!("{h}h{m}m{sec}s"),
    }
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
            assert_eq!(parse(text).unwrap(), want, "{text}");
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
            let e = parse(bad).unwrap_err();
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
            assert_eq!(format(d), text);
            assert_eq!(parse(text).unwrap(), d);
        }
    }
}
