//! Small helpers: query/form decoding, base64 flavours, time, ids.

use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn now_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

pub fn b64(data: &[u8]) -> String {
    STANDARD.encode(data)
}

pub fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

pub fn b64url_padded(data: &[u8]) -> String {
    URL_SAFE.encode(data)
}

/// Decode base64url with or without padding (also tolerates standard alphabet).
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let t: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(t.as_bytes()).ok()
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s.trim().as_bytes()).ok()
}

pub fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex(&buf)
}

pub fn random_guid() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Deterministic 32-hex object version derived from a label.
pub fn version_id(label: &str) -> String {
    let d = Sha256::digest(label.as_bytes());
    hex(&d[..16])
}

pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let h = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Parse `a=b&c=d` (query string or form body).
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k, true), percent_decode(v, true)),
            None => (percent_decode(p, true), String::new()),
        })
        .collect()
}

pub fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

/// UTC date and time of a Unix timestamp with a pattern of `{Y}` (4 digits), `{M}`, `{D}`,
/// `{h}`, `{m}`, `{s}` (2 digits) and `{ms}` (3 digits): the one place dates are formatted.
pub fn utc(unix_millis: i128, pattern: &str) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(unix_millis * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    pattern
        .replace("{Y}", &format!("{:04}", t.year()))
        .replace("{M}", &format!("{:02}", u8::from(t.month())))
        .replace("{D}", &format!("{:02}", t.day()))
        .replace("{h}", &format!("{:02}", t.hour()))
        .replace("{ms}", &format!("{:03}", t.millisecond()))
        .replace("{m}", &format!("{:02}", t.minute()))
        .replace("{s}", &format!("{:02}", t.second()))
}

/// `utc` of a time in Unix seconds.
pub fn utc_secs(unix: i64, pattern: &str) -> String {
    utc(i128::from(unix) * 1000, pattern)
}

/// UTC timestamp `YYYY-MM-DD HH:MM:SSZ`.
pub fn aad_timestamp() -> String {
    utc(now_millis() as i128, "{Y}-{M}-{D} {h}:{m}:{s}Z")
}

/// RFC 3339 with milliseconds, for the request log.
pub fn rfc3339_now() -> String {
    utc(now_millis() as i128, "{Y}-{M}-{D}T{h}:{m}:{s}.{ms}Z")
}

/// PEM blocks `(label, der)`.
pub fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches('-').to_string());
            body.clear();
        } else if line.starts_with("-----END ") {
            if let Some(l) = label.take() {
                if let Some(der) = b64_decode(&body) {
                    out.push((l, der));
                }
            }
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_pairs() {
        let p = parse_pairs("resource=https%3A%2F%2Fvault.azure.net&x=a+b&bad=%zz&t=%4");
        assert_eq!(get(&p, "resource"), Some("https://vault.azure.net"));
        assert_eq!(get(&p, "x"), Some("a b"));
        assert_eq!(get(&p, "bad"), Some("%zz"));
        assert_eq!(get(&p, "t"), Some("%4"));
        assert_eq!(
            parse_pairs("resource=https://vault.azure.net")[0].1,
            "https://vault.azure.net"
        );
    }

    #[test]
    fn utc_formats() {
        assert_eq!(
            utc_secs(1_700_000_000, "{Y}-{M}-{D} {h}:{m}:{s}"),
            "2023-11-14 22:13:20"
        );
        assert_eq!(utc(1_700_000_000_123, "{s}.{ms}"), "20.123");
    }

    #[test]
    fn base64url_both_forms() {
        assert_eq!(b64url_decode("AQAB"), Some(vec![1, 0, 1]));
        assert_eq!(b64url_decode("AQ=="), Some(vec![1]));
        assert_eq!(b64url_decode("AQ"), Some(vec![1]));
    }
}
