//! Lock files held with `flock`: exclusive across processes and threads (each open is its own
//! lock), released by the kernel when the holder closes the file or dies, so a crashed process
//! never leaves a lock held.
//!
//! The one lock-file policy of the node state: a lock file exists only while someone holds
//! it. The holder unlinks it while still holding it ([`Held`]'s drop), and every taker checks
//! after `flock` that the name still leads to the inode it locked; if not (the previous holder
//! removed it), that inode guards nothing and the taker tries again on a fresh file. So
//! removal never lets two holders in, and lock files never accumulate: one a dead holder left
//! behind is removed by the next taker of that name, or by the sweep ([`super::sweep`]).

use super::private;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

/// A held lock; dropping it removes the lock file and releases the lock.
#[derive(Debug)]
pub(super) struct Held {
    file: OwnedFd,
    /// The directory, for the unlink on release (a duplicate: the lock may outlive the caller's
    /// descriptor).
    dir: OwnedFd,
    name: String,
}

impl Held {
    /// The locked file (a slot writes its owner's tag into it).
    pub(super) fn file(&self) -> &OwnedFd {
        &self.file
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Still held: nobody else can have replaced the file at this name meanwhile.
        private::remove(&self.dir, &self.name);
        // `self.file` closes after this, releasing the lock.
        let _ = &self.file;
    }
}

/// Opens (creating 0600, no symlink followed) the lock file `dir/name`; a link or a file
/// someone else owns is removed and replaced.
pub(super) fn open(dir: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let flags =
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    for _ in 0..2 {
        match rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd)?;
                if FileType::from_raw_mode(st.st_mode) == FileType::RegularFile
                    && private::trusted_owner(st.st_uid)
                {
                    return Ok(fd);
                }
            }
            Err(Errno::LOOP) => {}
            Err(e) => return Err(e.into()),
        }
        private::remove(dir, name);
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("lock file {name} keeps being replaced by another user"),
    ))
}

/// Polling intervals until a deadline: short at first (a token fetch often ends within tens of
/// milliseconds), then up to [`Backoff::MAX`], never past the deadline.
pub(super) struct Backoff {
    deadline: Instant,
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(50);

    pub(super) fn until(deadline: Instant) -> Backoff {
        Backoff {
            deadline,
            next: Self::FIRST,
        }
    }

    /// How long to sleep before the next try, or `None` once the deadline has passed.
    pub(super) fn pause(&mut self) -> Option<Duration> {
        let left = self.deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        let pause = self.next.min(left);
        self.next = (self.next * 2).min(Self::MAX);
        Some(pause)
    }
}

/// Retries `attempt` (which must not block) until it yields a value or the deadline passes,
/// sleeping this thread in between.
pub(super) fn wait<T>(
    deadline: Instant,
    attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    futures::executor::block_on(poll(deadline, attempt, |pause| {
        std::thread::sleep(pause);
        std::future::ready(())
    }))
}

/// [`wait`] for async callers: sleeps on the runtime's timer instead of blocking its thread.
pub(super) async fn wait_async<T>(
    deadline: Instant,
    attempt: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    poll(deadline, attempt, tokio::time::sleep).await
}

async fn poll<T, F: Future<Output = ()>>(
    deadline: Instant,
    mut attempt: impl FnMut() -> io::Result<Option<T>>,
    sleep: impl Fn(Duration) -> F,
) -> io::Result<Option<T>> {
    let mut backoff = Backoff::until(deadline);
    loop {
        if let Some(value) = attempt()? {
            return Ok(Some(value));
        }
        match backoff.pause() {
            Some(pause) => sleep(pause).await,
            None => return Ok(None),
        }
    }
}

/// One try at the lock file `dir/name`: the held lock, or `None` while someone else holds it
/// (or removed it just now: the caller tries again).
pub(super) fn try_file(dir: &OwnedFd, name: &str) -> io::Result<Option<Held>> {
    let file = open(dir, name)?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let held = rustix::fs::fstat(&file)?;
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(now) if now.st_ino == held.st_ino && now.st_dev == held.st_dev => Ok(Some(Held {
            file,
            dir: rustix::io::dup(dir.as_fd())?,
            name: name.to_owned(),
        })),
        // Removed (or replaced) by the previous holder: this inode guards nothing.
        Ok(_) | Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A lock the caller took itself on `dir/name` (opened with [`open`]) while it alone could take
/// that name (under another lock guarding the name): held and removed on release like any.
pub(super) fn adopt(dir: &OwnedFd, name: &str, file: OwnedFd) -> io::Result<Held> {
    Ok(Held {
        file,
        dir: rustix::io::dup(dir.as_fd())?,
        name: name.to_owned(),
    })
}

/// Removes the lock files of `dir` that nobody holds (left by holders that died); returns how
/// many were removed. Taking each lock first makes the removal safe for any waiter.
pub(super) fn sweep(dir: &OwnedFd, is_lock: impl Fn(&str) -> bool) -> usize {
    private::names(dir)
        .into_iter()
        .filter(|n| is_lock(n))
        .filter(|n| matches!(try_file(dir, n), Ok(Some(_))))
        .count()
}
