//! One refresh pass over every recorded volume, and the agent's loop of passes.
//!
//! For each record: a volume whose mount is gone (pod deleted, node rebooted, kubelet cleaned
//! up) loses its record; a volume that is due is fetched again through the pluggable
//! [`Refresh`] (the real one runs the mount pipeline's resolve → fetch → layout with the
//! volume's own identity); if any file's bytes or mode, or any object's version, changed, the
//! volume is switched to the new files in one step ([`crate::volume::versioned::switch`]). Any error leaves
//! the current files as they are, is written to the volume's status and log, and backs off.
//! Volumes are refreshed by a bounded number of worker threads.

use super::record::{LastError, Record, Status, Store};
use super::root::{is_live, Mounts, VolumeRoot};
use super::schedule;
use crate::error::{Code, Error, Result};
use crate::volume::versioned::{self as layout, Budget, Perms};
use crate::volume::Layout;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long a replaced version stays after a switch: readers that resolved `..data` just
/// before the rename finish opening their files in it.
pub const OLD_VERSION_GRACE: Duration = Duration::from_secs(2);
/// The longest the agent sleeps between passes, so new records are picked up promptly.
pub const MAX_SLEEP: Duration = Duration::from_secs(5);
/// The shortest time between the starts of two passes. Every pass reads every record and
/// status; with 500 volumes spread over a 2-minute interval one falls due every 240 ms, and a
/// pass per volume would cost more than the refreshes. Volumes due within this gap are
/// refreshed together, at most this much late (intervals are at least 1 s, normally 30 s).
pub const MIN_PASS_GAP: Duration = Duration::from_secs(1);

/// A fresh fetch of a volume.
pub struct Fetched {
    /// The files, modes, directory mode and group, as a mount would write them.
    pub layout: Layout,
    /// Object → version id of what was fetched (objects without one are left out).
    pub versions: BTreeMap<String, String>,
}

/// Fetches a recorded volume's objects again (with its own identity, under the node policy).
pub trait Refresh: Sync {
    /// The volume's files as they are in Key Vault now.
    fn fetch(&self, record: &Record) -> Result<Fetched>;
}

impl<F: Fn(&Record) -> Result<Fetched> + Sync> Refresh for F {
    fn fetch(&self, record: &Record) -> Result<Fetched> {
        self(record)
    }
}

/// How a pass runs.
#[derive(Debug, Clone, Copy)]
pub struct PassOptions {
    /// Refresh every volume now, whatever its due time (`kv agent --once`).
    pub once: bool,
    /// Volumes refreshed at the same time.
    pub concurrency: usize,
    /// See [`OLD_VERSION_GRACE`].
    pub grace: Duration,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            once: false,
            concurrency: 8,
            grace: OLD_VERSION_GRACE,
        }
    }
}

/// What a pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Volumes switched to new files.
    pub switched: Vec<PathBuf>,
    /// Volumes refreshed with nothing changed.
    pub unchanged: Vec<PathBuf>,
    /// Volumes whose refresh failed (files untouched), with the error.
    pub failed: Vec<(PathBuf, Error)>,
    /// Volumes not due yet.
    pub not_due: usize,
    /// Records removed because their mount is gone.
    pub collected: Vec<PathBuf>,
    /// Skipped record files and clean-up failures.
    pub problems: Vec<String>,
    /// The earliest next due time of the remaining volumes.
    pub next_due: Option<Duration>,
}

/// Now, as a duration since the Unix epoch.
pub fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A volume after its refresh.
enum Outcome {
    /// With the replaced version to remove after the grace period; `None` for a read-only
    /// volume, made read-only again at once (the next pass's recover removes the old version).
    Switched {
        replaced: Option<String>,
    },
    Unchanged,
    Failed(Error),
    NotDue,
    Collected,
}

/// Runs one pass at `now`.
pub fn run_pass(
    store: &Store,
    refresh: &dyn Refresh,
    opts: PassOptions,
    now: Duration,
) -> Result<PassReport> {
    let loaded = store.load_all()?;
    let mut report = PassReport {
        problems: loaded.problems,
        ..PassReport::default()
    };
    for p in &report.problems {
        crate::log::warn("rotation_record_skipped", json!({"problem": p}));
    }
    let records = loaded.records;
    // Which volumes are still mounted, from one reading of the mount table; a volume that is
    // refreshed or collected is checked again under its lock.
    let mounts = Mounts::read()?;
    let next = AtomicUsize::new(0);
    let outcomes: Mutex<Vec<(PathBuf, Outcome, Option<Duration>)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.concurrency.clamp(1, records.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(record) = records.get(i) else { break };
                let (outcome, due) = refresh_one(store, refresh, record, &mounts, opts.once, now);
                if let Ok(mut o) = outcomes.lock() {
                    o.push((record.dir.clone(), outcome, due));
                }
            });
        }
    });
    let outcomes = outcomes
        .into_inner()
        .map_err(|_| Error::new(Code::Internal, "a refresh worker panicked"))?;
    let mut replaced = Vec::new();
    for (dir, outcome, due) in outcomes {
        if let Some(due) = due {
            report.next_due = Some(report.next_due.map_or(due, |d: Duration| d.min(due)));
        }
        match outcome {
            Outcome::Switched { replaced: old } => {
                if let Some(old) = old {
                    replaced.push((dir.clone(), old));
                }
                report.switched.push(dir);
            }
            Outcome::Unchanged => report.unchanged.push(dir),
            Outcome::Failed(e) => report.failed.push((dir, e)),
            Outcome::NotDue => report.not_due += 1,
            Outcome::Collected => report.collected.push(dir),
        }
    }
    if !replaced.is_empty() {
        std::thread::sleep(opts.grace);
        for (dir, old) in replaced {
            if let Err(e) = remove_replaced(&dir, &old) {
                // recover() removes it before the volume's next switch.
                report.problems.push(format!("{}: {e}", dir.display()));
            }
        }
    }
    Ok(report)
}

/// Refreshes one volume if it is due; returns what happened and its next due time.
fn refresh_one(
    store: &Store,
    refresh: &dyn Refresh,
    record: &Record,
    mounts: &Mounts,
    once: bool,
    now: Duration,
) -> (Outcome, Option<Duration>) {
    let dir = &record.dir;
    // `pod` and `pod_uid` as a mount logs them: `kv logs --pod` shows the rotation history.
    let fields = || json!({"volume": dir.to_string_lossy(), "pod": record.pod_label(), "pod_uid": record.pod.uid});
    if !mounts.is_live(dir) {
        return match collect(store, dir) {
            Ok(true) => {
                crate::log::info("rotation_record_collected", fields());
                (Outcome::Collected, None)
            }
            // Mounted again meanwhile: refreshed on a later pass.
            Ok(false) => (Outcome::NotDue, None),
            Err(e) => (Outcome::Failed(e), None),
        };
    }
    let mut status = store.load_status(dir);
    let interval = record.interval();
    let first = status.next_due_ms == 0;
    if first {
        status.next_due_ms = ms(schedule::first_due(now, &record.name(), interval));
    }
    let due = Duration::from_millis(status.next_due_ms);
    if !once && due > now {
        if first {
            // Keep the first due time stable across passes and restarts (and write nothing
            // for a volume that simply waits).
            let _ = store.save_status(dir, &status);
        }
        return (Outcome::NotDue, Some(due));
    }
    let result = refresh_volume(refresh, record, &status);
    let random = schedule::random_u64();
    let outcome = match result {
        Ok((outcome, versions)) => {
            status.last_success = Some(now.as_secs());
            status.failures = 0;
            status.versions = versions;
            if let Outcome::Switched { .. } = outcome {
                status.switches += 1;
                status.last_switch = Some(now.as_secs());
                crate::log::info("rotation_switched", fields());
            }
            status.next_due_ms = ms(schedule::after_success(
                now,
                &record.name(),
                interval,
                random,
            ));
            outcome
        }
        Err(e) => {
            status.failures = status.failures.saturating_add(1);
            status.last_error = Some(LastError {
                code: e.code().as_str().to_string(),
                message: e.message().to_string(),
                at: now.as_secs(),
            });
            status.next_due_ms = ms(schedule::after_failure(
                now,
                interval,
                status.failures,
                random,
            ));
            let mut f = fields();
            f["code"] = json!(e.code().as_str());
            f["message"] = json!(e.message());
            f["failures"] = json!(status.failures);
            crate::log::error("rotation_failed", f);
            Outcome::Failed(e)
        }
    };
    if let Err(e) = store.save_status(dir, &status) {
        crate::log::error(
            "rotation_status_unsaved",
            json!({"volume": dir.to_string_lossy(), "message": e.message()}),
        );
    }
    (outcome, Some(Duration::from_millis(status.next_due_ms)))
}

/// Removes the record of a volume whose mount is gone; `false` if it is mounted again. Under
/// the volume's lock: a mount at the same dir saves its record while holding it, so a new
/// volume's record is never taken for the old one's.
fn collect(store: &Store, dir: &std::path::Path) -> Result<bool> {
    let _lock = crate::volume::lock(dir)?;
    if is_live(dir)? {
        return Ok(false);
    }
    store.remove(dir)?;
    Ok(true)
}

/// Fetches the volume and switches it if anything changed. Every error leaves the files as
/// they were.
fn refresh_volume(
    refresh: &dyn Refresh,
    record: &Record,
    status: &Status,
) -> Result<(Outcome, BTreeMap<String, String>)> {
    let fetched = refresh.fetch(record)?;
    // Held from the check of the mount to the end of the switch: an unmount waits.
    let _lock = crate::volume::lock(&record.dir)?;
    if !is_live(&record.dir)? {
        return Err(Error::new(
            Code::Mount,
            format!("{} was unmounted during the refresh", record.dir.display()),
        ));
    }
    let root = VolumeRoot::open(&record.dir, record.read_only)?;
    let recovered = layout::recover(root.fd())?;
    if recovered.any() {
        crate::log::warn(
            "rotation_recovered",
            json!({"volume": record.dir.to_string_lossy(), "removed_versions": recovered.removed_versions.len(), "fixed_links": recovered.fixed_links}),
        );
    }
    if layout::current(root.fd())?.is_none() {
        return Err(Error::new(
            Code::Mount,
            format!(
                "{} holds plain files, not the rotation layout (..data): it was mounted without rotation; delete the pod to remount it",
                record.dir.display()
            ),
        ));
    }
    let files = &fetched.layout.files;
    // Versions count once known: right after mount the status has none, and equal bytes mean
    // the volume is current.
    let new_version = !status.versions.is_empty() && fetched.versions != status.versions;
    let changed = new_version || !layout::matches(root.fd(), files)?;
    if !changed {
        return Ok((Outcome::Unchanged, fetched.versions));
    }
    let perms = Perms {
        dir_mode: fetched.layout.dir_mode,
        gid: fetched.layout.gid,
    };
    let budget = Budget::available(root.fd())?;
    let switched = layout::switch(root.fd(), files, perms, budget)?;
    let replaced = switched.replaced.filter(|_| !root.reprotects());
    Ok((Outcome::Switched { replaced }, fetched.versions))
}

/// Removes a replaced version after the grace period. The volume is reopened (under its lock,
/// if still mounted) rather than kept open meanwhile: a pass that switches 500 volumes would
/// otherwise hold 500 descriptors, and each would keep its tmpfs busy for an unmount.
fn remove_replaced(dir: &std::path::Path, old: &str) -> Result<()> {
    let _lock = crate::volume::lock(dir)?;
    if !is_live(dir)? {
        return Ok(());
    }
    let root = VolumeRoot::open(dir, false)?;
    layout::remove_version(root.fd(), old)
}

/// The agent: passes until `stop` is set, sleeping until the next volume is due (at most
/// [`MAX_SLEEP`], so newly mounted volumes are picked up).
pub fn run(
    store: &Store,
    refresh: &dyn Refresh,
    opts: PassOptions,
    stop: &AtomicBool,
) -> Result<()> {
    crate::log::info(
        "agent_started",
        json!({"state": store.dir().to_string_lossy()}),
    );
    while !stop.load(Ordering::SeqCst) {
        let started = now();
        let sleep_until = match run_pass(store, refresh, opts, started) {
            Ok(report) => {
                if !report.switched.is_empty()
                    || !report.failed.is_empty()
                    || !report.collected.is_empty()
                {
                    crate::log::info(
                        "agent_pass",
                        json!({"switched": report.switched.len(), "unchanged": report.unchanged.len(), "failed": report.failed.len(), "collected": report.collected.len()}),
                    );
                }
                report
                    .next_due
                    .unwrap_or(started + MAX_SLEEP)
                    .min(now() + MAX_SLEEP)
                    .max(started + MIN_PASS_GAP)
            }
            Err(e) => {
                crate::log::error(
                    "agent_pass_failed",
                    json!({"code": e.code().as_str(), "message": e.message()}),
                );
                now() + MAX_SLEEP
            }
        };
        while !stop.load(Ordering::SeqCst) && now() < sleep_until {
            std::thread::sleep(
                sleep_until
                    .saturating_sub(now())
                    .min(Duration::from_millis(200)),
            );
        }
    }
    crate::log::info("agent_stopped", json!({}));
    Ok(())
}

#[cfg(test)]
#[path = "pass_tests.rs"]
mod tests;
