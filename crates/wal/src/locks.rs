//! SQLite's WAL lock slots, taken through [`VfsFile::shm_lock`], with bounded waiting.
//!
//! A conflicting lock is `Err(Busy)` from the VFS; these helpers turn it into `false`
//! (`try_*`) or retry it with a capped exponential back-off until a time budget runs out
//! (`wait_*`, SQLite's busy handler). Waiting honours the caller's [`Cx`]. Cross-process
//! `fcntl` locks have no wake-up, so polling is the only portable way to wait for them.

use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, LockLevel};
use fsqlite_vfs::{SHM_EXCLUSIVE, SHM_LOCK, SHM_SHARED, SHM_UNLOCK, VfsFile};

use crate::hooks::BusyHandler;

/// How long a lock wait goes on: until a time budget runs out, or as long as a
/// [`BusyHandler`] says so (it replaces the budget when installed). Between attempts the
/// waiter sleeps a capped exponential back-off (20 µs doubling to 5 ms) either way.
#[derive(Clone)]
pub struct Patience {
    /// The time budget (`busy_timeout`), used when there is no handler.
    pub timeout: Duration,
    /// The user's busy handler, called with the number of earlier calls for this wait.
    pub handler: Option<BusyHandler>,
}

impl std::fmt::Debug for Patience {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Patience")
            .field("timeout", &self.timeout)
            .field("handler", &self.handler.is_some())
            .finish()
    }
}

impl From<Duration> for Patience {
    fn from(timeout: Duration) -> Self {
        Self::timeout(timeout)
    }
}

impl Patience {
    /// A time budget only.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            handler: None,
        }
    }

    /// After `attempt` failed tries (counting from 0) and `waited` so far: go on?
    pub fn keep_waiting(&self, attempt: u32, waited: Duration) -> bool {
        match &self.handler {
            Some(h) => h(attempt),
            None => waited < self.timeout,
        }
    }
}

/// First back-off step while waiting for a lock.
const FIRST_BACKOFF: Duration = Duration::from_micros(20);
/// Longest single sleep while waiting for a lock.
const MAX_BACKOFF: Duration = Duration::from_millis(5);

fn busy_to_false(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(FrankenError::Busy) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Tries an exclusive lock on slots `idx..idx+n`; `Ok(false)` when another holder conflicts.
pub fn try_exclusive<F: VfsFile + ?Sized>(f: &mut F, cx: &Cx, idx: u32, n: u32) -> Result<bool> {
    busy_to_false(f.shm_lock(cx, idx, n, SHM_LOCK | SHM_EXCLUSIVE))
}

/// Tries a shared lock on slot `idx`; `Ok(false)` when an exclusive holder conflicts.
pub fn try_shared<F: VfsFile + ?Sized>(f: &mut F, cx: &Cx, idx: u32) -> Result<bool> {
    busy_to_false(f.shm_lock(cx, idx, 1, SHM_LOCK | SHM_SHARED))
}

/// Releases an exclusive lock on slots `idx..idx+n`.
pub fn unlock_exclusive<F: VfsFile + ?Sized>(f: &mut F, cx: &Cx, idx: u32, n: u32) -> Result<()> {
    f.shm_lock(cx, idx, n, SHM_UNLOCK | SHM_EXCLUSIVE)
}

/// Releases a shared lock on slot `idx`.
pub fn unlock_shared<F: VfsFile + ?Sized>(f: &mut F, cx: &Cx, idx: u32) -> Result<()> {
    f.shm_lock(cx, idx, 1, SHM_UNLOCK | SHM_SHARED)
}

/// Repeats `attempt` with back-off until it returns `Ok(true)`, fails, or `timeout`
/// passes (then `Ok(false)`). A zero timeout makes exactly one attempt.
pub fn wait_until(
    cx: &Cx,
    timeout: Duration,
    attempt: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    wait_until_with(cx, &Patience::timeout(timeout), attempt)
}

/// [`wait_until`] with a [`Patience`]: with a busy handler, the handler decides after
/// each failed attempt whether to go on.
pub fn wait_until_with(
    cx: &Cx,
    patience: &Patience,
    mut attempt: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let start = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let mut calls = 0u32;
    loop {
        if attempt()? {
            return Ok(true);
        }
        let elapsed = start.elapsed();
        if !patience.keep_waiting(calls, elapsed) {
            return Ok(false);
        }
        calls = calls.saturating_add(1);
        cx.checkpoint()?;
        let mut nap = if patience.handler.is_some() {
            backoff
        } else {
            backoff.min(patience.timeout.saturating_sub(elapsed))
        };
        if let Some(rem) = cx.remaining() {
            nap = nap.min(rem);
        }
        std::thread::sleep(nap);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Waits up to `timeout` for an exclusive lock on slots `idx..idx+n`.
pub fn wait_exclusive<F: VfsFile + ?Sized>(
    f: &mut F,
    cx: &Cx,
    idx: u32,
    n: u32,
    timeout: Duration,
) -> Result<bool> {
    wait_until(cx, timeout, || try_exclusive(f, cx, idx, n))
}

/// Waits up to `timeout` for the file lock `level` (SQLite's database-file locks,
/// [`VfsFile::lock`]); `Ok(false)` when another handle kept it busy that long.
pub fn wait_file_lock<F: VfsFile + ?Sized>(
    f: &mut F,
    cx: &Cx,
    level: LockLevel,
    timeout: Duration,
) -> Result<bool> {
    wait_until(cx, timeout, || busy_to_false(f.lock(cx, level)))
}

/// [`wait_exclusive`] with a [`Patience`].
pub fn wait_exclusive_with<F: VfsFile + ?Sized>(
    f: &mut F,
    cx: &Cx,
    idx: u32,
    n: u32,
    patience: &Patience,
) -> Result<bool> {
    wait_until_with(cx, patience, || try_exclusive(f, cx, idx, n))
}

/// Waits up to `timeout` for a shared lock on slot `idx`.
pub fn wait_shared<F: VfsFile + ?Sized>(
    f: &mut F,
    cx: &Cx,
    idx: u32,
    timeout: Duration,
) -> Result<bool> {
    wait_until(cx, timeout, || try_shared(f, cx, idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_times_out_and_succeeds() {
        let cx = Cx::new();
        let t = Instant::now();
        assert!(!wait_until(&cx, Duration::from_millis(30), || Ok(false)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(30));
        let mut n = 0;
        assert!(
            wait_until(&cx, Duration::from_secs(5), || {
                n += 1;
                Ok(n > 3)
            })
            .unwrap()
        );
        // A busy handler decides instead of the clock, and is told the attempt count.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let p = Patience {
            timeout: Duration::ZERO,
            handler: Some(std::sync::Arc::new(move |n| {
                log.lock().unwrap().push(n);
                n < 3
            })),
        };
        assert!(!wait_until_with(&cx, &p, || Ok(false)).unwrap());
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 2, 3]);
        cx.cancel();
        assert!(matches!(
            wait_until(&cx, Duration::from_secs(5), || Ok(false)),
            Err(FrankenError::Interrupted)
        ));
    }
}
