//! Which volume is refreshed when, by which worker: an event-driven scheduler, not lock-step
//! passes.
//!
//! Every recorded volume is a job with a due time ([`super::schedule`]). A fixed number of
//! worker threads each take the earliest due job whose namespace has fewer than its fair share
//! of workers busy (the workers divided by the namespaces with work, rounded up, and never more
//! than half of them while other namespaces have volumes), refresh it
//! ([`super::refresh_volume`]) and take the next; nobody waits for a slow refresh but the
//! worker running it. Each refresh has its own time budget (the node's deadline for the fetch,
//! a deadline on the volume's lock) and never blocks on anything a pod controls, so one slow or
//! hostile namespace holds at most its share of the workers for at most one budget each.
//!
//! The long-running agent ([`run`]) also rescans the records every second (new mounts, gone
//! ones), removes replaced versions after [`OLD_VERSION_GRACE`], sweeps the node state every
//! minute, and pauses while its node config is invalid. `kv agent --once` ([`run_pass`])
//! refreshes every volume once and waits for the clean-ups.

use super::refresh_volume::{refresh_one, remove_replaced, Outcome};
use super::schedule;
use crate::error::{Code, Error, Result};
use crate::nodestate::{MountTable, NodeState, Record, Status};
use crate::volume::Layout;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a replaced version stays after a switch: readers that resolved `..data` just
/// before the rename finish opening their files in it.
pub const OLD_VERSION_GRACE: Duration = Duration::from_secs(2);
/// How often the long-running agent looks for new and removed records.
pub const RESCAN: Duration = Duration::from_secs(1);
/// How often the long-running agent sweeps the node state.
pub const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long an identical failure of one volume stays out of the log once written.
pub const REPEAT_LOG_AFTER: Duration = Duration::from_secs(600);

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

    /// Whether refreshes may run now (the node config is valid); checked before each one.
    fn usable(&self) -> bool {
        true
    }
}

impl<F: Fn(&Record) -> Result<Fetched> + Sync> Refresh for F {
    fn fetch(&self, record: &Record) -> Result<Fetched> {
        self(record)
    }
}

/// How the agent runs.
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
}

/// Now, as a duration since the Unix epoch.
pub fn now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One volume's place in the schedule.
struct Job {
    record: Arc<Record>,
    status: Status,
    /// Waiting to be refreshed (in `--once`: not refreshed yet).
    pending: bool,
    running: bool,
    /// The record is gone from disk: dropped once its refresh ends.
    dropped: bool,
    /// The last failure written to the log, when, and how many identical ones were not.
    logged: Option<(String, Duration, u32)>,
}

impl Job {
    fn due(&self) -> Duration {
        Duration::from_millis(self.status.next_due_ms)
    }
}

/// A replaced version to remove after the grace period.
struct Cleanup {
    at: Duration,
    record: Arc<Record>,
    old: String,
}

#[derive(Default)]
struct State {
    jobs: BTreeMap<String, Job>,
    /// Namespace → refreshes running.
    busy: HashMap<String, usize>,
    cleanups: Vec<Cleanup>,
    report: PassReport,
    stop: bool,
    /// The mount table as of the last rescan: which volumes look gone before any work (each
    /// refresh checks again under its volume's lock).
    table: Option<Arc<MountTable>>,
}

struct Scheduler<'a> {
    node: &'a NodeState,
    /// One pass ([`run_pass`]): the volumes due at the start are refreshed once, then it ends.
    pass: bool,
    refresh: &'a dyn Refresh,
    opts: PassOptions,
    /// The clock: the given instant for a pass (tests), the real one for the agent.
    clock: &'a (dyn Fn() -> Duration + Sync),
    state: Mutex<State>,
    wake: Condvar,
}

impl Scheduler<'_> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the records not known yet and drops those gone from disk.
    fn rescan(&self) -> Result<()> {
        let loaded = self.node.volumes().load_all()?;
        let table = Arc::new(MountTable::read()?);
        let now = (self.clock)();
        let mut state = self.lock();
        state.table = Some(table);
        for p in &loaded.problems {
            if !state.report.problems.contains(p) {
                crate::log::warn("rotation_record_skipped", json!({"problem": p}));
                state.report.problems.push(p.clone());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for record in loaded.records {
            let name = record.name();
            seen.insert(name.clone());
            let same = state
                .jobs
                .get(&name)
                .is_some_and(|j| j.record.mounted_at == record.mounted_at && !j.dropped);
            if same {
                continue;
            }
            let mut status = self.node.volumes().load_status(&record.dir);
            let interval = record.interval();
            let mut pending = true;
            if status.next_due_ms == 0 {
                status.next_due_ms = ms(schedule::first_due(now, &name, interval));
                // Keep the first due time stable across restarts.
                let _ = self.node.volumes().save_status(&record.dir, &status);
            }
            if self.pass && !self.opts.once && Duration::from_millis(status.next_due_ms) > now {
                pending = false;
                state.report.not_due += 1;
            }
            state.jobs.insert(
                name,
                Job {
                    record: Arc::new(record),
                    status,
                    pending,
                    running: false,
                    dropped: false,
                    logged: None,
                },
            );
        }
        for (name, job) in state.jobs.iter_mut() {
            if !seen.contains(name) {
                job.dropped = true;
            }
        }
        state.jobs.retain(|_, j| !j.dropped || j.running);
        drop(state);
        self.wake.notify_all();
        Ok(())
    }

    /// The next job a worker may take now, marked running.
    fn take(&self, state: &mut State) -> Option<(String, Arc<Record>, Status, Arc<MountTable>)> {
        if state.stop || !self.refresh.usable() {
            return None;
        }
        let now = (self.clock)();
        let ready = |j: &Job| j.pending && !j.running && (self.pass || j.due() <= now);
        // The namespaces with work: refreshing now or due.
        let mut with_work: std::collections::BTreeSet<&str> = state
            .busy
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(ns, _)| ns.as_str())
            .collect();
        with_work.extend(
            state
                .jobs
                .values()
                .filter(|j| ready(j))
                .map(|j| j.record.namespace()),
        );
        let workers = self.opts.concurrency.max(1);
        let mut share = workers.div_ceil(with_work.len().max(1));
        // While other namespaces have volumes, one namespace never takes more than half the
        // workers, even when the others have nothing due this moment: their next due volume
        // must not wait for a slow namespace's refreshes to end.
        let mut namespaces = state.jobs.values().map(|j| j.record.namespace());
        let first = namespaces.next();
        if namespaces.any(|ns| Some(ns) != first) {
            share = share.min(workers / 2);
        }
        let share = share.max(1);
        let (name, _) = state
            .jobs
            .iter()
            .filter(|(_, j)| ready(j))
            .filter(|(_, j)| state.busy.get(j.record.namespace()).copied().unwrap_or(0) < share)
            .min_by_key(|(_, j)| j.due())?;
        let name = name.clone();
        let table = state.table.clone()?;
        let job = state.jobs.get_mut(&name)?;
        job.running = true;
        let taken = (name, job.record.clone(), job.status.clone(), table);
        *state
            .busy
            .entry(taken.1.namespace().to_string())
            .or_default() += 1;
        Some(taken)
    }

    /// Whether a `--once` pass has nothing left to do.
    fn finished(&self, state: &State) -> bool {
        state.stop || state.jobs.values().all(|j| !j.pending && !j.running)
    }

    /// How long a worker may sleep before something may be due.
    fn idle_wait(&self, state: &State) -> Duration {
        let now = (self.clock)();
        state
            .jobs
            .values()
            .filter(|j| j.pending && !j.running)
            .map(|j| j.due().saturating_sub(now))
            .min()
            .unwrap_or(RESCAN)
            .clamp(Duration::from_millis(10), Duration::from_millis(500))
    }

    fn worker(&self) {
        let mut state = self.lock();
        loop {
            if (self.pass && self.finished(&state)) || state.stop {
                return;
            }
            let Some((name, record, status, table)) = self.take(&mut state) else {
                let wait = self.idle_wait(&state);
                state = self
                    .wake
                    .wait_timeout(state, wait)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            };
            drop(state);
            let now = (self.clock)();
            let (outcome, status) =
                refresh_one(self.node, self.refresh, &record, status, now, &table);
            state = self.lock();
            self.finish(&mut state, &name, &record, outcome, status, now);
            self.wake.notify_all();
        }
    }

    /// Records what a refresh did: status, report, log, and the job's next due time.
    fn finish(
        &self,
        state: &mut State,
        name: &str,
        record: &Arc<Record>,
        outcome: Outcome,
        status: Status,
        now: Duration,
    ) {
        if let Some(n) = state.busy.get_mut(record.namespace()) {
            *n = n.saturating_sub(1);
        }
        let dir = record.dir.clone();
        let mut drop_job = false;
        let mut logged = state.jobs.get(name).and_then(|j| j.logged.clone());
        match outcome {
            Outcome::Switched { replaced } => {
                if let Some(old) = replaced {
                    state.cleanups.push(Cleanup {
                        at: now + self.opts.grace,
                        record: record.clone(),
                        old,
                    });
                }
                state.report.switched.push(dir);
                logged = None;
            }
            Outcome::Unchanged => {
                state.report.unchanged.push(dir);
                logged = None;
            }
            Outcome::Failed(e) => {
                logged = log_failure(record, &e, status.failures, now, logged);
                state.report.failed.push((dir, e));
            }
            Outcome::Collected => {
                state.report.collected.push(dir);
                drop_job = true;
            }
            Outcome::Skipped => state.report.not_due += 1,
        }
        if let Some(job) = state.jobs.get_mut(name) {
            job.running = false;
            job.pending = !self.pass && !drop_job;
            job.status = status;
            job.logged = logged;
            if drop_job || job.dropped {
                state.jobs.remove(name);
            }
        }
    }

    /// Removes the replaced versions whose grace period is over (all of them with `all`).
    fn clean_up(&self, all: bool) {
        let now = (self.clock)();
        let due: Vec<Cleanup> = {
            let mut state = self.lock();
            let (due, later) = std::mem::take(&mut state.cleanups)
                .into_iter()
                .partition(|c| all || c.at <= now);
            state.cleanups = later;
            due
        };
        for c in due {
            if let Err(e) = remove_replaced(self.node, &c.record, &c.old) {
                // Recovery removes it before the volume's next switch.
                self.lock()
                    .report
                    .problems
                    .push(format!("{}: {e}", c.record.dir.display()));
            }
        }
    }
}

/// Writes a `rotation_failed` line unless a failure of this volume with the same code was
/// written less than [`REPEAT_LOG_AFTER`] ago; returns what was last written.
fn log_failure(
    record: &Record,
    e: &Error,
    failures: u32,
    now: Duration,
    last: Option<(String, Duration, u32)>,
) -> Option<(String, Duration, u32)> {
    // The code, not the message: messages carry request ids and timings.
    let key = e.code().as_str().to_string();
    if let Some((k, at, suppressed)) = &last {
        if *k == key && now.saturating_sub(*at) < REPEAT_LOG_AFTER {
            return Some((key, *at, suppressed + 1));
        }
    }
    let suppressed = last.map_or(0, |(_, _, n)| n);
    crate::log::error(
        "rotation_failed",
        json!({"volume": record.dir.to_string_lossy(), "pod": record.pod_label(),
               "pod_uid": record.pod.uid, "code": e.code().as_str(), "message": e.message(),
               "failures": failures, "not_logged_since_last": suppressed}),
    );
    Some((key, now, 0))
}

/// One pass at `now`: every recorded volume that is due (all of them with `opts.once`) is
/// refreshed once, by `opts.concurrency` workers with a fair share per namespace; then the
/// replaced versions are removed after the grace period.
pub fn run_pass(
    node: &NodeState,
    refresh: &dyn Refresh,
    opts: PassOptions,
    now: Duration,
) -> Result<PassReport> {
    let clock = move || now;
    let s = Scheduler {
        node,
        pass: true,
        refresh,
        opts,
        clock: &clock,
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    };
    s.rescan()?;
    let workers = opts.concurrency.max(1);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| s.worker());
        }
    });
    let waiting = !s.lock().cleanups.is_empty();
    if waiting {
        std::thread::sleep(opts.grace);
        s.clean_up(true);
    }
    let state = s
        .state
        .into_inner()
        .map_err(|_| Error::new(Code::Internal, "a refresh worker panicked"))?;
    Ok(state.report)
}

/// The agent: refreshes volumes as they fall due until `stop` is set.
pub fn run(
    node: &NodeState,
    refresh: &dyn Refresh,
    opts: PassOptions,
    stop: &AtomicBool,
) -> Result<()> {
    crate::log::info(
        "agent_started",
        json!({"state": node.root().to_string_lossy(), "workers": opts.concurrency}),
    );
    let clock = now;
    let s = Scheduler {
        node,
        pass: false,
        refresh,
        opts: PassOptions {
            once: false,
            ..opts
        },
        clock: &clock,
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    };
    let mut last_sweep: Option<Instant> = None;
    std::thread::scope(|scope| {
        for _ in 0..opts.concurrency.max(1) {
            scope.spawn(|| s.worker());
        }
        while !stop.load(Ordering::SeqCst) {
            if let Err(e) = s.rescan() {
                crate::log::error(
                    "agent_rescan_failed",
                    json!({"code": e.code().as_str(), "message": e.message()}),
                );
            }
            s.clean_up(false);
            if last_sweep.is_none_or(|t| t.elapsed() >= SWEEP_EVERY) {
                last_sweep = Some(Instant::now());
                sweep(node);
            }
            let report = std::mem::take(&mut s.lock().report);
            if !report.switched.is_empty()
                || !report.failed.is_empty()
                || !report.collected.is_empty()
            {
                crate::log::info(
                    "agent_progress",
                    json!({"switched": report.switched.len(), "unchanged": report.unchanged.len(), "failed": report.failed.len(), "collected": report.collected.len()}),
                );
            }
            let until = Instant::now() + RESCAN;
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        s.lock().stop = true;
        s.wake.notify_all();
    });
    // Running refreshes finished (the scope joined the workers); their old versions go after
    // the grace period.
    if !s.lock().cleanups.is_empty() {
        std::thread::sleep(opts.grace);
        s.clean_up(true);
    }
    crate::log::info("agent_stopped", json!({}));
    Ok(())
}

/// Sweeps the node state; the agent's own mounts of gone volumes only where it may unmount.
pub fn sweep(node: &NodeState) {
    let swept = node.sweep();
    let mounts = node.sweep_agent_mounts();
    if swept.tokens + swept.locks + mounts > 0 {
        crate::log::info(
            "node_state_swept",
            json!({"token_entries": swept.tokens, "lock_files": swept.locks, "agent_mounts": mounts}),
        );
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
