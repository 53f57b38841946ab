//! The driver's log: JSON lines appended to a file, never stdout or stderr.
//!
//! One line per step, each with a per-call id and the pod, so `jq 'select(.pod=="ns/name")'`
//! pulls one pod's story out of a node's log. Callers pass only names, ids, statuses and
//! durations: values, tokens and client secrets never reach this module. The file is rotated
//! to `<path>.1` past its size cap. A log that cannot be written never fails a mount.
//!
//! The file is created 0600 (and tightened to it if found looser), its directory 0700 when kv
//! creates it (`/var/log/kv/` by default): pod and vault names are nobody else's business. A
//! short call checks the size once; the long-running agent ([`long_running`]) checks it every
//! second or every [`RECHECK_LINES`] lines, and reopens the path when another process rotated
//! it, so it never writes into a renamed or unlinked file.

use serde_json::{Map, Value};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

struct Logger {
    path: PathBuf,
    /// Opened on the first line and kept for the call: one open per call, not per line.
    file: Option<std::fs::File>,
    max_bytes: u64,
    context: Map<String, Value>,
    started: Instant,
    /// Long-running: re-check size and path now and then (see [`long_running`]).
    recheck: bool,
    lines_since_check: u32,
    checked: Instant,
}

/// Lines between two checks of the long-running agent's log file.
pub const RECHECK_LINES: u32 = 64;
/// Time between two checks of the long-running agent's log file.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();

/// Starts logging for this call; later calls to [`init`] are ignored.
pub fn init(path: PathBuf, max_bytes: u64, verb: &str) {
    let mut context = Map::new();
    context.insert("call".into(), Value::String(call_id()));
    context.insert("verb".into(), Value::String(verb.into()));
    let _ = LOGGER.set(Mutex::new(Logger {
        path,
        file: None,
        max_bytes,
        context,
        started: Instant::now(),
        recheck: false,
        lines_since_check: 0,
        checked: Instant::now(),
    }));
}

/// Makes the directory of `path` 0700 if it exists, is root's (or ours) and is looser: for
/// kv's own log directory only.
pub fn private_dir(path: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(dir) = path.parent() else { return };
    if let Ok(m) = std::fs::symlink_metadata(dir) {
        let mine = m.uid() == 0 || m.uid() == rustix::process::geteuid().as_raw();
        if m.is_dir() && mine && m.mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
}

/// This process runs for long (the agent): its log is re-checked as it writes, rotated by size
/// and reopened when its path leads to another file.
pub fn long_running() {
    if let Some(l) = LOGGER.get() {
        if let Ok(mut l) = l.lock() {
            l.recheck = true;
        }
    }
}

/// Adds a field to every following line (pod, volume, dir).
pub fn set_context(key: &str, value: impl Into<Value>) {
    if let Some(l) = LOGGER.get() {
        if let Ok(mut l) = l.lock() {
            l.context.insert(key.into(), value.into());
        }
    }
}

/// The most bytes of one line: a pod's options (120 KiB names, thousands of unknown keys) must
/// not turn one call into megabytes of log. Longer lines keep their fields, each shortened.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// What a shortened line keeps of one string field (characters) or one array (items).
const SHORT_STRING: usize = 256;
const SHORT_ARRAY: usize = 5;

/// Writes one line: `event` plus the given fields.
pub fn event(level: &str, event: &str, fields: Value) {
    let Some(logger) = LOGGER.get() else { return };
    let Ok(mut logger) = logger.lock() else {
        return;
    };
    let mut line = Map::new();
    line.insert("ts".into(), Value::String(timestamp()));
    line.insert("level".into(), Value::String(level.into()));
    line.insert("event".into(), Value::String(event.into()));
    line.insert("elapsed_ms".into(), ms(logger.started.elapsed()));
    for (k, v) in &logger.context {
        line.insert(k.clone(), v.clone());
    }
    if let Value::Object(extra) = fields {
        line.extend(extra.into_iter().map(|(k, v)| (k, round(v))));
    }
    let mut text = Value::Object(line.clone()).to_string();
    if text.len() > MAX_LINE_BYTES {
        let full = text.len();
        for v in line.values_mut() {
            shorten(v);
        }
        line.insert("truncated_from_bytes".into(), Value::from(full));
        text = Value::Object(line).to_string();
        text.truncate(floor_char_boundary(&text, MAX_LINE_BYTES));
    }
    text.push('\n');
    logger.write(text.as_bytes());
}

/// Milliseconds at microsecond precision (`1.917`, not `1.9168530000000001`).
pub fn ms(d: std::time::Duration) -> Value {
    Value::from(d.as_micros() as f64 / 1000.0)
}

/// A list of names a pod chose (unknown option keys): how many, and the first few, each cut.
pub fn names(list: &[String]) -> Value {
    let first: Vec<String> = list
        .iter()
        .take(SHORT_ARRAY)
        .map(|n| crate::error::printable(n))
        .collect();
    serde_json::json!({"count": list.len(), "first": first})
}

/// Floats rounded to 3 decimals, wherever they are in the fields.
fn round(v: Value) -> Value {
    match v {
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .map(|f| Value::from((f * 1000.0).round() / 1000.0))
            .unwrap_or(Value::Null),
        Value::Array(a) => Value::Array(a.into_iter().map(round).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, round(v))).collect()),
        other => other,
    }
}

/// Cuts long strings and arrays of an over-long line.
fn shorten(v: &mut Value) {
    match v {
        Value::String(s) if s.chars().count() > SHORT_STRING => {
            *s = format!("{}…", s.chars().take(SHORT_STRING).collect::<String>());
        }
        Value::Array(a) => {
            let len = a.len();
            a.truncate(SHORT_ARRAY);
            a.iter_mut().for_each(shorten);
            if len > SHORT_ARRAY {
                a.push(Value::String(format!("… {} more", len - SHORT_ARRAY)));
            }
        }
        Value::Object(o) => {
            if o.len() > 4 * SHORT_ARRAY {
                *v = Value::String(format!("{} fields", o.len()));
            } else {
                o.values_mut().for_each(shorten);
            }
        }
        _ => {}
    }
}

/// The largest index ≤ `at` on a char boundary of `s`.
fn floor_char_boundary(s: &str, at: usize) -> usize {
    (0..=at.min(s.len()))
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

/// An info line.
pub fn info(name: &str, fields: Value) {
    event("info", name, fields)
}

/// A warning line.
pub fn warn(name: &str, fields: Value) {
    event("warn", name, fields)
}

/// An error line.
pub fn error(name: &str, fields: Value) {
    event("error", name, fields)
}

impl Logger {
    fn write(&mut self, bytes: &[u8]) {
        if self.file.is_some() && self.recheck {
            self.lines_since_check += 1;
            if self.lines_since_check >= RECHECK_LINES || self.checked.elapsed() >= RECHECK_EVERY {
                self.lines_since_check = 0;
                self.checked = Instant::now();
                if self.moved_or_full(bytes.len() as u64) {
                    self.file = None;
                }
            }
        }
        if self.file.is_none() {
            self.open(bytes.len() as u64);
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(bytes);
        }
    }

    /// Whether the open file is no longer at the path (rotated by another process) or the
    /// next line would take it past its cap.
    fn moved_or_full(&self, next: u64) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Some(Ok(open)) = self.file.as_ref().map(|f| f.metadata()) else {
            return true;
        };
        match std::fs::metadata(&self.path) {
            Ok(now) if now.ino() == open.ino() && now.dev() == open.dev() => {
                open.len() + next > self.max_bytes
            }
            _ => true,
        }
    }

    /// Opens the path for appending, rotating it first if the next line would pass the cap.
    fn open(&mut self, next: u64) {
        if let Ok(meta) = std::fs::metadata(&self.path) {
            if meta.len() + next > self.max_bytes {
                let mut rotated = self.path.clone().into_os_string();
                rotated.push(".1");
                let _ = std::fs::rename(&self.path, rotated);
            }
        }
        if let Some(parent) = self.path.parent() {
            if !parent.exists() {
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent);
            }
        }
        // O_APPEND makes each line one atomic append, so concurrent mounts never interleave.
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .ok();
        if let Some(f) = &self.file {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            // A file created by someone else (kubelet's FileOrCreate makes 0644): tightened.
            if f.metadata().is_ok_and(|m| m.mode() & 0o077 != 0) {
                let _ = f.set_permissions(std::fs::Permissions::from_mode(0o600));
            }
        }
    }
}

fn timestamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A short id distinguishing concurrent calls in one log.
fn call_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:05x}{:05x}", std::process::id() & 0xfffff, nanos >> 12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_microsecond_precision() {
        assert_eq!(
            ms(std::time::Duration::from_nanos(1_916_853)).to_string(),
            "1.916"
        );
        assert_eq!(round(Value::from(1.9168530000000001)).to_string(), "1.917");
        assert_eq!(
            round(serde_json::json!({"a": [0.1 + 0.2]})).to_string(),
            r#"{"a":[0.3]}"#
        );
    }

    #[test]
    fn names_are_a_count_and_a_few() {
        let many: Vec<String> = (0..10_000).map(|i| format!("key{i}")).collect();
        let v = names(&many);
        assert_eq!(v["count"], 10_000);
        assert_eq!(v["first"].as_array().unwrap().len(), SHORT_ARRAY);
        let long = vec!["x".repeat(120 * 1024)];
        assert!(names(&long).to_string().len() < 200);
    }

    #[test]
    fn long_values_are_shortened() {
        let mut v =
            serde_json::json!({"a": "y".repeat(100_000), "b": (0..1000).collect::<Vec<_>>()});
        shorten(&mut v);
        assert!(v.to_string().len() < 1000, "{v}");
        assert_eq!(floor_char_boundary("aé", 2), 1);
    }
}
