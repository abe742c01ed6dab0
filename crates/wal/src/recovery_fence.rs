//! The recovery fence and the durability barrier around checkpoints.
//!
//! This module owns four things, each documented at its item:
//!
//! 1. [`RecoveryFence`]: the **in-process** half of "recovery runs once at a time per
//!    database" (ARCHITECTURE.md invariant 3). The cross-process half is SQLite's
//!    `WAL_RECOVER_LOCK` (FORMAT.md §5.1), taken by the caller *after* the fence. A process
//!    holds one fence per database path ([`RecoveryFence::for_path`]).
//! 2. The **fsync-before-truncate** rule (invariant 2, TESTING.md §2.2 "fsyncgate"):
//!    [`ensure_db_fsync_before_wal_truncate`] and [`fsync_db_file_full`]. An fsync error is
//!    returned to the caller and never retried: after a failed writeback Linux may have
//!    dropped the dirty pages, so a second fsync that "succeeds" proves nothing.
//! 3. The **PID-owned lock registry** ([`PidOwnedLockRegistry`], in `pid_registry`):
//!    which process holds which page lock, so a survivor can release a crashed owner's
//!    entries ([`pid_alive_os`], [`pid_start_time`]).
//! 4. **Post-checkpoint verification** ([`verify_checkpoint_checksum_prefix`],
//!    [`verify_checkpoint_pages`], [`execute_recovery_barrier`], in `verify`): after the
//!    database file is fully fsynced, the pages a checkpoint wrote are read back and
//!    compared with the digests of the WAL frames they came from. Only a `Match` allows the
//!    caller to advance `nBackfill` and reset or truncate the WAL.
//!
//! # The fence word
//!
//! All fence state that the fast path touches lives in one `AtomicU64`, so an uncontended
//! acquire is one read-modify-write and a release is one more (PERFORMANCE.md: "recovery
//! fence, uncontended acquire + release ≤ 2× a bare CAS + store"):
//!
//! | bits | name | meaning |
//! | --- | --- | --- |
//! | 0 | `HELD` | a recovery is in progress (a [`RecoveryFenceGuard`] exists) |
//! | 1 | `LAST_INCOMPLETE` | the last guard was dropped without [`RecoveryFenceGuard::complete`] (or while panicking) |
//! | 2..=23 | waiters | threads parked on the condition variable (22 bits) |
//! | 24..=63 | generation | releases so far (40 bits, wraps) |
//!
//! Rules (tag `FENCE-1` .. `FENCE-4`, checked by `tests/loom_fence.rs`):
//! - `FENCE-1` mutual exclusion: `HELD` is set only by a `fetch_or` that saw it clear.
//! - `FENCE-2` the generation grows by exactly one per release, and a new holder sees the
//!   generation (and `LAST_INCOMPLETE`) its predecessor published: the release is one
//!   `fetch_add` with `Release` ordering; the acquire is `Acquire`.
//! - `FENCE-3` no lost wake-up: a waiter registers (waiters += 1) and re-tries the fence
//!   while holding the wait mutex; a releaser that sees waiters > 0 in the value its
//!   `fetch_add` replaced takes the same mutex before `notify_all`. Both are
//!   read-modify-writes of one word, so either the waiter's re-try sees `HELD` clear or the
//!   releaser sees the waiter.
//! - `FENCE-4` bounded wait: a waiter gives up with [`FrankenError::BusyRecovery`] once
//!   `max_retries × backoff` has passed since the call began; it never sleeps blindly, it
//!   is woken by the release.
//!
//! Only the holder changes `LAST_INCOMPLETE` (waiters add or subtract `WAITER_ONE`, acquirers
//! `fetch_or(HELD)`, which changes nothing while held), so the holder can fold "clear HELD,
//! set or clear LAST_INCOMPLETE, bump generation" into one wrapping `fetch_add`.
//!
//! # Concurrency primitives
//!
//! Everything here uses `fsqlite_types::sync_primitives`, so `tests/loom_fence.rs` can
//! model-check it. The one exception is the process-wide registry behind
//! [`RecoveryFence::for_path`], a `std::sync::OnceLock` holding a `parking_lot::Mutex`: a
//! static cannot hold loom types (which exist only inside a model), and the registry is
//! only a map lookup, not part of the protocol. Under `--cfg loom` it is replaced by a
//! function that returns a new fence per call. (`pid_registry` also caches this process's
//! start time in a `std::sync::OnceLock`: a constant, not a protocol.)

use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::sync_primitives::{
    AtomicU64, Condvar, Instant, Mutex, Ordering, spin_loop, yield_now,
};
use fsqlite_types::{Cx, SyncFlags};
use fsqlite_vfs::VfsFile;

use crate::checkpoint_executor::CheckpointTarget;

mod pid_registry;
mod verify;

pub use pid_registry::{
    PID_REGISTRY_FILE_MAGIC, PID_REGISTRY_MAX_FILE_BYTES, PidOwnedLockEntry, PidOwnedLockRegistry,
    pid_alive_os, pid_start_time,
};
pub(crate) use verify::into_barrier_result;
pub use verify::{
    BadPage, BadPageReason, CheckpointChecksumVerdict, ExpectedPageChecksum, PageVerifyMode,
    PageVerifyReport, VERIFY_MAX_READ_BYTES, VERIFY_PARALLEL_MIN_BYTES, execute_recovery_barrier,
    execute_recovery_barrier_with, verify_checkpoint_checksum_prefix, verify_checkpoint_pages,
    verify_checkpoint_pages_with,
};

/// How long one "retry" of [`RecoveryFence::acquire_for_recovery`] is worth: the total wait
/// is bounded by `RECOVERY_FENCE_MAX_RETRIES × RECOVERY_FENCE_BACKOFF` (one second).
pub const RECOVERY_FENCE_BACKOFF: Duration = Duration::from_millis(100);

/// How many backoff periods [`RecoveryFence::acquire_for_recovery`] waits in total.
pub const RECOVERY_FENCE_MAX_RETRIES: u32 = 10;

/// How many times an acquirer spins (with [`spin_loop`]) before it parks.
pub const RECOVERY_FENCE_SPIN_ATTEMPTS: u32 = 4096;

/// The longest a Cx-aware waiter sleeps before it looks at its `Cx` again.
pub const RECOVERY_FENCE_CX_POLL: Duration = Duration::from_millis(10);

/// The longest total wait honoured (a larger `max_retries × backoff` is clamped to this),
/// so the deadline arithmetic can never overflow.
const MAX_TOTAL_WAIT: Duration = Duration::from_hours(365 * 24);

/// Bit 0 of the fence word: a recovery is in progress.
const HELD: u64 = 1;
/// Bit 1 of the fence word: the last recovery did not complete.
const LAST_INCOMPLETE: u64 = 1 << 1;
/// The first bit of the waiter count.
const WAITER_SHIFT: u32 = 2;
/// Bits in the waiter count.
const WAITER_BITS: u32 = 22;
/// One waiter.
const WAITER_ONE: u64 = 1 << WAITER_SHIFT;
/// The waiter-count field.
const WAITER_MASK: u64 = ((1 << WAITER_BITS) - 1) << WAITER_SHIFT;
/// The first bit of the generation.
const GENERATION_SHIFT: u32 = WAITER_SHIFT + WAITER_BITS;
/// One generation.
const GENERATION_ONE: u64 = 1 << GENERATION_SHIFT;

/// Under loom every spin is a scheduler yield; a full 4096-step spin would only blow up the
/// state space without exploring anything new.
const EFFECTIVE_SPIN_ATTEMPTS: u32 = if cfg!(loom) {
    2
} else {
    RECOVERY_FENCE_SPIN_ATTEMPTS
};

/// The in-process recovery fence: at most one thread of this process runs WAL recovery
/// for a database at a time; the others wait (woken when it ends) or get
/// [`FrankenError::BusyRecovery`] after a bounded wait.
///
/// ```
/// use fsqlite_wal::recovery_fence::RecoveryFence;
/// let fence = RecoveryFence::new();
/// let g0 = fence.generation();
/// {
///     let mut guard = fence.try_acquire_for_recovery().unwrap();
///     assert!(fence.is_recovery_in_progress());
///     assert!(fence.try_acquire_for_recovery().is_none());
///     guard.complete();
/// }
/// assert!(!fence.is_recovery_in_progress());
/// assert_eq!(fence.generation(), g0 + 1);
/// assert!(fence.last_recovery_completed());
/// ```
#[derive(Debug)]
pub struct RecoveryFence {
    /// The fence word (see the module doc for its bits).
    word: AtomicU64,
    /// Guards dropped while their thread was panicking.
    poisoned: AtomicU64,
    /// The mutex waiters park under (it protects nothing but the wait itself).
    wait_lock: Mutex<()>,
    /// Signalled on every release that saw waiters.
    released: Condvar,
}

impl RecoveryFence {
    /// A free fence at generation 0.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
            wait_lock: Mutex::new(()),
            released: Condvar::new(),
        }
    }

    /// A free fence at generation 0 (loom's atomics are not `const`).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            word: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
            wait_lock: Mutex::new(()),
            released: Condvar::new(),
        }
    }

    /// The one fence of this process for the database at `path`.
    ///
    /// The key is the canonical path (`std::fs::canonicalize`); for a file that does not
    /// exist yet, the canonical parent directory joined with the file name (so the key
    /// does not change when the file is created); failing that, the absolute path.
    /// Entries are never removed: a fence is a few words and a process opens few
    /// databases.
    #[cfg(not(loom))]
    pub fn for_path(path: impl AsRef<std::path::Path>) -> std::sync::Arc<RecoveryFence> {
        use std::collections::HashMap;
        use std::path::PathBuf;
        use std::sync::{Arc, OnceLock};

        static REGISTRY: OnceLock<parking_lot::Mutex<HashMap<PathBuf, Arc<RecoveryFence>>>> =
            OnceLock::new();
        let key = canonical_key(path.as_ref());
        let map = REGISTRY.get_or_init(|| parking_lot::Mutex::new(HashMap::new()));
        let mut map = map.lock();
        Arc::clone(
            map.entry(key)
                .or_insert_with(|| Arc::new(RecoveryFence::new())),
        )
    }

    /// Under `--cfg loom` there is no process-wide registry (a static cannot hold loom
    /// objects across model executions): every call returns a new fence, so a model that
    /// needs one fence per path shares an `Arc` itself.
    #[cfg(loom)]
    pub fn for_path(path: impl AsRef<std::path::Path>) -> std::sync::Arc<RecoveryFence> {
        let _ = path.as_ref();
        std::sync::Arc::new(RecoveryFence::new())
    }

    /// True while some thread holds the fence.
    #[inline]
    pub fn is_recovery_in_progress(&self) -> bool {
        self.word.load(Ordering::Acquire) & HELD != 0
    }

    /// The number of recoveries that have ended (released the fence) so far. It changes
    /// exactly once per release, so a thread that saw generation `g` before waiting knows
    /// that some recovery ran in between if it later sees a different value.
    pub fn generation(&self) -> u64 {
        self.word.load(Ordering::Acquire) >> GENERATION_SHIFT
    }

    /// False when the most recent recovery ended without [`RecoveryFenceGuard::complete`]
    /// (it returned an error, or panicked). True before any recovery.
    pub fn last_recovery_completed(&self) -> bool {
        self.word.load(Ordering::Acquire) & LAST_INCOMPLETE == 0
    }

    /// How many recoveries ended by a panic (their guard was dropped while unwinding).
    pub fn poisoned_recoveries(&self) -> u64 {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Takes the fence if it is free, without waiting.
    #[inline]
    pub fn try_acquire_for_recovery(&self) -> Option<RecoveryFenceGuard<'_>> {
        let prev = self.word.fetch_or(HELD, Ordering::Acquire);
        if prev & HELD != 0 {
            return None;
        }
        Some(RecoveryFenceGuard {
            fence: self,
            completed: false,
            prev_word: prev,
        })
    }

    /// [`acquire_for_recovery_with`](Self::acquire_for_recovery_with) with
    /// [`RECOVERY_FENCE_MAX_RETRIES`] and [`RECOVERY_FENCE_BACKOFF`] (at most one second).
    pub fn acquire_for_recovery(&self) -> Result<RecoveryFenceGuard<'_>> {
        self.acquire_for_recovery_with(RECOVERY_FENCE_MAX_RETRIES, RECOVERY_FENCE_BACKOFF)
    }

    /// Takes the fence, waiting at most `max_retries × backoff` in total.
    ///
    /// It first spins up to [`RECOVERY_FENCE_SPIN_ATTEMPTS`] times (a recovery of a small
    /// WAL ends within microseconds), yielding the CPU every 128 spins (on an
    /// oversubscribed machine the holder may be waiting for this CPU: measured, this cut
    /// the worst wait of the 8-thread storm from ~4 ms to ~0.3 ms), then parks on a condition variable that the
    /// releasing guard signals, so a waiter runs as soon as the fence is free; it never
    /// sleeps blindly. When the budget is spent it returns
    /// [`FrankenError::BusyRecovery`].
    pub fn acquire_for_recovery_with(
        &self,
        max_retries: u32,
        backoff: Duration,
    ) -> Result<RecoveryFenceGuard<'_>> {
        self.acquire_inner(None, max_retries, backoff)
    }

    /// Like [`acquire_for_recovery_with`](Self::acquire_for_recovery_with), but a
    /// cancelled `cx` (or one past its deadline) ends the wait with
    /// [`FrankenError::Interrupted`]. The waiter looks at `cx` at least every
    /// [`RECOVERY_FENCE_CX_POLL`] and never waits past the `cx` deadline.
    pub fn acquire_for_recovery_cx(
        &self,
        cx: &Cx,
        max_retries: u32,
        backoff: Duration,
    ) -> Result<RecoveryFenceGuard<'_>> {
        self.acquire_inner(Some(cx), max_retries, backoff)
    }

    fn acquire_inner(
        &self,
        cx: Option<&Cx>,
        max_retries: u32,
        backoff: Duration,
    ) -> Result<RecoveryFenceGuard<'_>> {
        if let Some(cx) = cx {
            cx.checkpoint()?;
        }
        if let Some(g) = self.try_acquire_for_recovery() {
            return Ok(g);
        }
        let budget = backoff.saturating_mul(max_retries).min(MAX_TOTAL_WAIT);
        let start = Instant::now();
        let deadline = start + budget;

        // Phase 1: spin (test, then test-and-set, so spinners do not bounce the line).
        for i in 0..EFFECTIVE_SPIN_ATTEMPTS {
            if self.word.load(Ordering::Relaxed) & HELD == 0
                && let Some(g) = self.try_acquire_for_recovery()
            {
                return Ok(g);
            }
            spin_loop();
            if i % 128 == 127 {
                // On an oversubscribed machine the holder may be waiting for our CPU.
                yield_now();
            }
            if i % 256 == 255 {
                if let Some(cx) = cx {
                    cx.checkpoint()?;
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
        }

        // Phase 2: park until a release wakes us (FENCE-3) or the budget ends (FENCE-4).
        let mut guard = self.wait_lock.lock();
        self.word.fetch_add(WAITER_ONE, Ordering::Relaxed);
        let outcome = loop {
            if let Some(g) = self.try_acquire_for_recovery() {
                break Ok(g);
            }
            if let Some(cx) = cx
                && let Err(e) = cx.checkpoint()
            {
                break Err(e);
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(FrankenError::BusyRecovery);
            }
            let mut slice = deadline.duration_since(now);
            if let Some(cx) = cx {
                slice = slice.min(RECOVERY_FENCE_CX_POLL);
                if let Some(left) = cx.remaining() {
                    // Wake just after the deadline so `checkpoint()` reports it.
                    slice = slice.min(left + Duration::from_micros(50));
                }
            }
            let (g, _timed_out) = self.released.wait_for(guard, slice);
            guard = g;
        };
        self.word.fetch_sub(WAITER_ONE, Ordering::Relaxed);
        drop(guard);
        if outcome.is_err() {
            tracing::debug!(
                target: "fsqlite.wal.recovery",
                waited_us = start.elapsed().as_micros() as u64,
                "recovery fence wait ended without the fence"
            );
        }
        outcome
    }
}

impl Default for RecoveryFence {
    fn default() -> Self {
        Self::new()
    }
}

/// The canonical key of `path` for [`RecoveryFence::for_path`].
#[cfg(not(loom))]
fn canonical_key(path: &std::path::Path) -> std::path::PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            parent
        };
        if let Ok(p) = std::fs::canonicalize(parent) {
            return p.join(name);
        }
    }
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Proof that this thread holds a [`RecoveryFence`]. Dropping it ends the recovery: the
/// generation grows by one, the fence is released and every waiter is woken. A guard
/// dropped without [`complete`](Self::complete), or while its thread panics, records the
/// recovery as not completed ([`RecoveryFence::last_recovery_completed`] turns false;
/// a panic also counts in [`RecoveryFence::poisoned_recoveries`]).
#[derive(Debug)]
#[must_use = "the fence is released as soon as the guard is dropped"]
pub struct RecoveryFenceGuard<'a> {
    fence: &'a RecoveryFence,
    completed: bool,
    /// The fence word this guard's acquire replaced (with `HELD` clear).
    prev_word: u64,
}

impl RecoveryFenceGuard<'_> {
    /// The fence this guard holds.
    pub fn fence(&self) -> &RecoveryFence {
        self.fence
    }

    /// Marks the recovery as completed; the release then records success.
    pub fn complete(&mut self) {
        self.completed = true;
    }

    /// True once [`complete`](Self::complete) was called.
    pub fn is_completed(&self) -> bool {
        self.completed
    }

    /// The fence generation when this guard acquired it.
    pub fn generation_at_acquire(&self) -> u64 {
        self.prev_word >> GENERATION_SHIFT
    }

    /// Whether the recovery before this one completed (false: it failed or panicked, so
    /// this holder should redo it rather than trust its result).
    pub fn previous_recovery_completed(&self) -> bool {
        self.prev_word & LAST_INCOMPLETE == 0
    }
}

impl Drop for RecoveryFenceGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        // The common case, kept small: a completed recovery after a completed one, no
        // waiters — one `lock xadd` (clear HELD, generation + 1).
        if self.completed && self.prev_word & LAST_INCOMPLETE == 0 && !std::thread::panicking() {
            let prev = self
                .fence
                .word
                .fetch_add(GENERATION_ONE.wrapping_sub(HELD), Ordering::AcqRel);
            debug_assert!(
                prev & HELD != 0,
                "FENCE-1: released a fence that was not held"
            );
            if prev & WAITER_MASK != 0 {
                self.fence.release_slow(prev, true, false);
            }
            return;
        }
        self.release_general();
    }
}

impl RecoveryFenceGuard<'_> {
    /// The release of [`Drop`] for every other case (a failed or panicked recovery, or
    /// one after a failed recovery).
    #[cold]
    #[inline(never)]
    fn release_general(&mut self) {
        let panicking = std::thread::panicking();
        let completed = self.completed && !panicking;
        if panicking {
            self.fence.poisoned.fetch_add(1, Ordering::Relaxed);
        }
        // Only the holder changes LAST_INCOMPLETE, so its value now is the one this guard
        // saw at acquire time.
        let was_incomplete = self.prev_word & LAST_INCOMPLETE != 0;
        let mut delta = GENERATION_ONE.wrapping_sub(HELD);
        match (was_incomplete, completed) {
            (true, true) => delta = delta.wrapping_sub(LAST_INCOMPLETE),
            (false, false) => delta = delta.wrapping_add(LAST_INCOMPLETE),
            _ => {}
        }
        let prev = self.fence.word.fetch_add(delta, Ordering::AcqRel);
        debug_assert!(
            prev & HELD != 0,
            "FENCE-1: released a fence that was not held"
        );
        if prev & WAITER_MASK != 0 || !completed {
            self.fence.release_slow(prev, completed, panicking);
        }
    }
}

impl RecoveryFence {
    /// The release's rare part: wake the waiters (FENCE-3) and log a failed recovery.
    #[cold]
    #[inline(never)]
    fn release_slow(&self, prev: u64, completed: bool, panicking: bool) {
        if prev & WAITER_MASK != 0 {
            // FENCE-3: taking the mutex orders this notify after any waiter's re-check.
            let _g = self.wait_lock.lock();
            self.released.notify_all();
        }
        if !completed {
            tracing::warn!(
                target: "fsqlite.wal.recovery",
                panicking,
                generation = (prev >> GENERATION_SHIFT).wrapping_add(1),
                "recovery fence released by a recovery that did not complete"
            );
        }
    }
}

/// The fsync that must precede any reset or truncation of the WAL (ARCHITECTURE.md
/// invariant 2): a full `sync_db` on the checkpoint target. An error is returned as is and
/// never retried (fsyncgate, TESTING.md §2.2); the caller must then leave the WAL intact.
pub fn ensure_db_fsync_before_wal_truncate(
    cx: &Cx,
    target: &mut (impl CheckpointTarget + ?Sized),
) -> Result<()> {
    cx.checkpoint()?;
    let t = std::time::Instant::now();
    let r = target.sync_db(cx);
    match &r {
        Ok(()) => tracing::debug!(
            target: "fsqlite.wal.checkpoint",
            micros = t.elapsed().as_micros() as u64,
            "database fsync before WAL truncate"
        ),
        Err(e) => tracing::error!(
            target: "fsqlite.wal.checkpoint",
            error = %e,
            "database fsync failed; the WAL must not be truncated"
        ),
    }
    r
}

/// A full `fsync` of a database file (`SyncFlags::FULL`, never `DATAONLY`: the file size
/// may have changed, and that is metadata). An error is returned as is, never retried.
pub fn fsync_db_file_full(cx: &Cx, file: &mut (impl VfsFile + ?Sized)) -> Result<()> {
    cx.checkpoint()?;
    debug_assert!(SyncFlags::FULL.is_full_fsync());
    file.sync(cx, SyncFlags::FULL)
}

/// [`fsync_db_file_full`] through a shared reference ([`VfsFile::sync_shared`]), for a
/// file whose [`VfsFile::can_sync_shared`] is true, so that the read-back of the pages
/// can run on another thread meanwhile. An error is returned as is, never retried.
pub fn fsync_db_file_full_shared(cx: &Cx, file: &(impl VfsFile + ?Sized)) -> Result<()> {
    cx.checkpoint()?;
    file.sync_shared(cx, SyncFlags::FULL)
}

#[cfg(all(test, not(loom)))]
pub(crate) mod test_support;
#[cfg(all(test, not(loom)))]
mod tests;
