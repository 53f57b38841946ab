//! One refresh of one volume: collect it if its mount is gone, else fetch it again and switch
//! it when anything changed.
//!
//! "Changed" is decided without reading the volume: the fresh fetch's digest is compared with
//! the one the status says kv last wrote, and the tree is checked with `fstatat` only
//! ([`crate::volume::versioned::is_intact`]); a tree the pod touched counts as changed and gets
//! a fresh version. Writes go through the agent's own mount of the volume under the state dir,
//! under the volume's lock taken with a deadline. Any error leaves the files as they are, goes
//! to the status, and backs off.

use super::root::{is_live, VolumeRoot};
use super::schedule;
use super::scheduler::Refresh;
use crate::error::{Code, Error, Result};
use crate::nodestate::{LastError, MountTable, NodeState, Record, Status};
use crate::volume::versioned::{self as layout, Budget, Perms};
use serde_json::json;
use std::time::{Duration, Instant};

/// The longest a refresh or a clean-up waits for its volume's lock (a mount or unmount of the
/// volume running meanwhile): a hung holder costs one refresh, never the worker.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// What one refresh did.
pub enum Outcome {
    /// Switched, with the replaced version to remove after the grace period.
    Switched {
        /// The old version directory.
        replaced: Option<String>,
    },
    /// Fetched; nothing changed.
    Unchanged,
    /// Failed; the files are as they were.
    Failed(Error),
    /// The mount is gone: the record was removed.
    Collected,
    /// Nothing to do now (mounted again during the collection).
    Skipped,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refreshes the volume of `record` at `now`; returns what happened and its new status (saved).
/// `table` is a recent reading of the mount table: a volume gone there is collected without a
/// fetch (the refresh checks again under the volume's lock).
pub fn refresh_one(
    node: &NodeState,
    refresh: &dyn Refresh,
    record: &Record,
    mut status: Status,
    now: Duration,
    table: &MountTable,
) -> (Outcome, Status) {
    let dir = &record.dir;
    if !is_live(table, record) {
        let outcome = match collect(node, record) {
            Ok(true) => {
                crate::log::info(
                    "rotation_record_collected",
                    json!({"volume": dir.to_string_lossy(), "pod": record.pod_label(), "pod_uid": record.pod.uid}),
                );
                Outcome::Collected
            }
            Ok(false) => Outcome::Skipped,
            Err(e) => Outcome::Failed(e),
        };
        return (outcome, status);
    }
    let interval = record.interval();
    let random = schedule::random_u64();
    let outcome = match refresh_volume(node, refresh, record, &mut status) {
        // Unmounted during the fetch: the record went under the lock, no status to save.
        Ok(Outcome::Collected) => return (Outcome::Collected, status),
        Ok(outcome) => {
            status.last_success = Some(now.as_secs());
            status.failures = 0;
            if let Outcome::Switched { .. } = outcome {
                status.switches += 1;
                status.last_switch = Some(now.as_secs());
                crate::log::info(
                    "rotation_switched",
                    json!({"volume": dir.to_string_lossy(), "pod": record.pod_label(), "pod_uid": record.pod.uid}),
                );
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
            Outcome::Failed(e)
        }
    };
    if let Err(e) = save_status(node, record, &status) {
        crate::log::error(
            "rotation_status_unsaved",
            json!({"volume": dir.to_string_lossy(), "message": e.message()}),
        );
    }
    (outcome, status)
}

/// Saves the status under the volume's lock, only while its record is still the one refreshed:
/// an unmount during the refresh removed both, and must not get a status file back.
fn save_status(node: &NodeState, record: &Record, status: &Status) -> Result<()> {
    let _lock = node.lock_volume(&record.dir, Instant::now() + LOCK_WAIT)?;
    let volumes = node.volumes();
    if volumes
        .load(&record.dir)
        .is_some_and(|r| r.mounted_at == record.mounted_at)
    {
        volumes.save_status(&record.dir, status)?;
    }
    Ok(())
}

/// Removes the record of a volume whose mount is gone, and the agent's mount of it where the
/// agent may unmount (else the next `kv mount`/`kv unmount` sweeps it); `false` if it is
/// mounted again. Under the volume's lock: a mount at the same dir saves its record holding it.
fn collect(node: &NodeState, record: &Record) -> Result<bool> {
    let _lock = node.lock_volume(&record.dir, Instant::now() + LOCK_WAIT)?;
    if is_live(&MountTable::read()?, record) {
        return Ok(false);
    }
    node.volumes().remove(&record.dir)?;
    let _ = node.remove_agent_mount(&record.dir);
    Ok(true)
}

/// Fetches the volume and switches it if anything changed. Every error leaves the files as
/// they were.
fn refresh_volume(
    node: &NodeState,
    refresh: &dyn Refresh,
    record: &Record,
    status: &mut Status,
) -> Result<Outcome> {
    let fetched = refresh.fetch(record)?;
    // Held from the check of the mount to the end of the switch: an unmount waits.
    let _lock = node.lock_volume(&record.dir, Instant::now() + LOCK_WAIT)?;
    if !is_live(&MountTable::read()?, record) {
        node.volumes().remove(&record.dir)?;
        let _ = node.remove_agent_mount(&record.dir);
        return Ok(Outcome::Collected);
    }
    let root = VolumeRoot::open(record)?;
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
    let perms = Perms {
        dir_mode: fetched.layout.dir_mode,
        gid: fetched.layout.gid,
    };
    // Versions count once known: right after mount the status has none.
    let new_version = !status.versions.is_empty() && fetched.versions != status.versions;
    let same = status.written.as_ref().is_some_and(|w| {
        w.digest == layout::digest(files, perms) && layout::is_intact(root.fd(), w)
    });
    status.versions = fetched.versions;
    if same && !new_version {
        return Ok(Outcome::Unchanged);
    }
    let budget = Budget::available(root.fd())?;
    let switched = layout::switch(root.fd(), files, perms, budget)?;
    status.written = Some(switched.written);
    Ok(Outcome::Switched {
        replaced: switched.replaced,
    })
}

/// Removes a replaced version after the grace period. The volume is reopened (under its lock,
/// if still mounted) rather than kept open meanwhile: 500 switched volumes would otherwise hold
/// 500 descriptors, and each would keep its tmpfs busy for an unmount.
pub fn remove_replaced(node: &NodeState, record: &Record, old: &str) -> Result<()> {
    let _lock = node.lock_volume(&record.dir, Instant::now() + LOCK_WAIT)?;
    if !is_live(&MountTable::read()?, record) {
        return Ok(());
    }
    let root = VolumeRoot::open(record)?;
    layout::remove_version(root.fd(), old)
}
