//! The driver's log: JSON lines appended to a file, never stdout or stderr.
//!
//! One line per step, each with a per-call id and the pod, so `jq 'select(.pod=="ns/name")'`
//! pulls one pod's story out of a node's log. Callers pass only names, ids, statuses and
//! durations: values, tokens and client secrets never reach this module. The file is rotated
//! to `<path>.1` past its size cap. A log that cannot be written never fails a mount.

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
}

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
    }));
}

/// Adds a field to every following line (pod, volume, dir).
pub fn set_context(key: &str, value: impl Into<Value>) {
    if let Some(l) = LOGGER.get() {
        if let Ok(mut l) = l.lock() {
            l.context.insert(key.into(), value.into());
        }
    }
}

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
    line.insert(
        "elapsed_ms".into(),
        Value::from(logger.started.elapsed().as_secs_f64() * 1000.0),
    );
    for (k, v) in &logger.context {
        line.insert(k.clone(), v.clone());
    }
    if let Value::Object(extra) = fields {
        line.extend(extra);
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    logger.write(text.as_bytes());
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
        if self.file.is_none() {
            // Rotation is checked once per call: a call writes a few KiB at most.
            if let Ok(meta) = std::fs::metadata(&self.path) {
                if meta.len() + bytes.len() as u64 > self.max_bytes {
                    let mut rotated = self.path.clone().into_os_string();
                    rotated.push(".1");
                    let _ = std::fs::rename(&self.path, rotated);
                }
            }
            if let Some(parent) = self.path.parent() {
                if !parent.exists() {
                    let _ = std::fs::create_dir_all(parent);
                }
            }
            // O_APPEND makes each line one atomic append, so concurrent mounts never interleave.
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = self.file.as_mut() {
            let _ = f.write_all(bytes);
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
