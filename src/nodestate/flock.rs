//! Lock files held with `flock`: exclusive across processes and threads (each open is its own
//! lock), and released by the kernel when the holder closes the file or dies, so a crashed
//! mount never leaves a lock behind. Lock files themselves stay: removing one another process
//! may be waiting on would let two holders in.

use super::private;
use rustix::fd::OwnedFd;
use rustix::fs::{FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

/// A held lock; dropping it releases it.
#[derive(Debug)]
pub(super) struct Held {
    _file: OwnedFd,
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

/// One try at the lock file `dir/name`: the held lock, or `None` while someone else holds it.
pub(super) fn try_file(dir: &OwnedFd, name: &str) -> io::Result<Option<Held>> {
    let file = open(dir, name)?;
    match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(Held { _file: file })),
        Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
