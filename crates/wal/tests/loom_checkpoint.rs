//! loom models of the checkpoint protocol (TESTING.md §2.8 (d)), driving the pure decision
//! functions of `fsqlite_wal::checkpoint` over an image of the shm in loom atomics.
//!
//! The shm words (`mxFrame`, salt, `nBackfill`, `nBackfillAttempted`, `aReadMark[0..2]`)
//! are `AtomicU32`s; each lock slot (`READ_LOCK(i)`) is an `AtomicU32` taken with
//! compare-and-swap: 0 free, `n` shared holders, `EXCLUSIVE` one exclusive holder. Like
//! SQLite's shm locks they are try-locks: a conflict is BUSY, never a wait. Word accesses
//! use Acquire/Release.
//!
//! Models (each with a buggy twin under `#[should_panic]`):
//! - `read_mark_vs_checkpoint` (inv: the checkpointer never backfills past a frame an
//!   active reader still needs): a reader claims read mark 1 for its snapshot, takes the
//!   shared lock and **re-checks the mark**; a checkpointer computes mxSafeFrame with
//!   [`compute_safe_frame`] (its lock callback stores the new mark while holding the slot
//!   exclusive) and "copies" up to it; a writer commits two more frames. While the reader
//!   holds its lock, no frame above its snapshot may be in the database. Twins: the reader
//!   skips step 6's re-check entirely, or re-checks only the mark. (In this model the
//!   header comparison is what catches a checkpointer that raised the mark, computed a
//!   safe frame from a newer `mxFrame` and copied, before the reader's shared lock; the
//!   mark comparison alone is not enough. A variant with the header comparison only
//!   passes here: the mark comparison matters when a slot is reset to
//!   `READMARK_NOT_USED` without a commit in between, which needs a second read slot and
//!   a fourth thread, beyond this model.)
//! - `checkpoint_vs_wal_reset` (inv: `nBackfill` never counts frames of a WAL generation
//!   that was reset concurrently): the checkpointer caches the header (salt, mxFrame),
//!   takes `READ_LOCK(0)` exclusive and applies [`decide_backfill`] (the **salt
//!   re-check**); a writer holding `READ_LOCK(0)` shared resets the WAL (new salt,
//!   counters 0) and commits one frame of the new generation. The model's writer resets
//!   whenever it gets its lock (SQLite also requires `nBackfill == mxFrame`), which only
//!   makes the model stricter. Twin: no salt re-check.
//! - `backfill_counters` (inv `BACKFILL-1`: `nBackfill <= nBackfillAttempted <=
//!   mxFrame`): a checkpointer that may "crash" between any two steps (a third thread
//!   raises the crash flag) and then runs again, a writer appending frames, and the main
//!   thread observing the counters with [`check_backfill_invariant`]. Twin: `nBackfill`
//!   is set before the copy (and before `nBackfillAttempted`).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-wal --release --test
//! loom_checkpoint -- --nocapture` (`LOOM_MAX_PREEMPTIONS`, default 2).
#![cfg(loom)]

use std::time::Instant;

use fsqlite_types::sync_primitives::{Arc, AtomicBool, AtomicU32, Ordering, spawn};
use fsqlite_wal::checkpoint::{
    BackfillDecision, CheckpointMode, LockTry, check_backfill_invariant, compute_safe_frame,
    decide_backfill, plan_after_copy,
};

fn model<F: Fn() + Sync + Send + 'static>(name: &str, f: F) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let bound = builder.preemption_bound;
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&iterations);
    let start = Instant::now();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    println!(
        "loom model {name}: bound {bound:?}, {} interleavings, {:.2?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed()
    );
}

const EXCLUSIVE: u32 = u32::MAX;

/// One shm lock slot (try-lock semantics).
struct LockSlot(AtomicU32);

impl LockSlot {
    fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    fn try_exclusive(&self) -> LockTry {
        match self
            .0
            .compare_exchange(0, EXCLUSIVE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => LockTry::Acquired,
            Err(_) => LockTry::Busy,
        }
    }

    fn unlock_exclusive(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn try_shared(&self) -> LockTry {
        let v = self.0.load(Ordering::Acquire);
        if v == EXCLUSIVE {
            return LockTry::Busy;
        }
        match self
            .0
            .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => LockTry::Acquired,
            Err(_) => LockTry::Busy, // a racing change: report busy, the caller retries
        }
    }

    fn unlock_shared(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

// ------------------------------------------------------------ read_mark_vs_checkpoint

/// Read slots 0 and 1 (slot 0 is never a mark).
const N: usize = 2;

struct MarkShm {
    mx_frame: AtomicU32,
    marks: [AtomicU32; N],
    locks: [LockSlot; N],
    /// The highest frame whose page the checkpointer has written into the database.
    db_has_frames_upto: AtomicU32,
}

/// What the reader re-checks after taking its shared lock (FORMAT.md §6 step 6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recheck {
    /// The mark and the live header (`mxFrame` here): SQLite's rule.
    MarkAndHeader,
    /// Only the mark.
    MarkOnly,
    /// Nothing (the twin).
    Nothing,
}

fn reader(shm: &MarkShm, recheck: Recheck) {
    for _attempt in 0..2 {
        let snapshot = shm.mx_frame.load(Ordering::Acquire);
        // Claim slot 1 for our snapshot (FORMAT.md §6 step 4).
        if shm.locks[1].try_exclusive() == LockTry::Busy {
            continue;
        }
        shm.marks[1].store(snapshot, Ordering::Release);
        shm.locks[1].unlock_exclusive();
        // Step 5: the shared lock for the whole read.
        if shm.locks[1].try_shared() == LockTry::Busy {
            continue;
        }
        // Step 6: the mark must still be ours and the header unchanged.
        let mark_moved = matches!(recheck, Recheck::MarkAndHeader | Recheck::MarkOnly)
            && shm.marks[1].load(Ordering::Acquire) != snapshot;
        let header_moved =
            recheck == Recheck::MarkAndHeader && shm.mx_frame.load(Ordering::Acquire) != snapshot;
        if mark_moved || header_moved {
            shm.locks[1].unlock_shared();
            continue;
        }
        // Reading pages: nothing newer than the snapshot may be in the database.
        let copied = shm.db_has_frames_upto.load(Ordering::Acquire);
        assert!(
            copied <= snapshot,
            "checkpoint copied frame {copied} while a reader of snapshot {snapshot} was active"
        );
        shm.locks[1].unlock_shared();
        return;
    }
}

fn checkpointer(shm: &MarkShm) {
    let mx = shm.mx_frame.load(Ordering::Acquire);
    let marks: [u32; N] = std::array::from_fn(|i| shm.marks[i].load(Ordering::Acquire));
    let safe = compute_safe_frame(mx, &marks, CheckpointMode::Passive, |attempt| {
        let slot = &shm.locks[attempt.slot];
        let r = slot.try_exclusive();
        if r == LockTry::Acquired {
            shm.marks[attempt.slot].store(attempt.new_mark, Ordering::Release);
            slot.unlock_exclusive();
        }
        r
    })
    .safe_frame;
    // Copy under READ_LOCK(0) exclusive (db-file-only readers are not modelled).
    if shm.locks[0].try_exclusive() == LockTry::Acquired {
        if safe > shm.db_has_frames_upto.load(Ordering::Acquire) {
            shm.db_has_frames_upto.store(safe, Ordering::Release);
        }
        shm.locks[0].unlock_exclusive();
    }
}

fn read_mark_model(recheck: Recheck) {
    let shm = Arc::new(MarkShm {
        mx_frame: AtomicU32::new(2),
        marks: [AtomicU32::new(0), AtomicU32::new(0)],
        locks: [LockSlot::new(), LockSlot::new()],
        db_has_frames_upto: AtomicU32::new(0),
    });
    let s1 = Arc::clone(&shm);
    let r = spawn(move || reader(&s1, recheck));
    let s2 = Arc::clone(&shm);
    let c = spawn(move || checkpointer(&s2));
    // The writer commits frames 3 and 4.
    shm.mx_frame.store(4, Ordering::Release);
    r.join().unwrap();
    c.join().unwrap();
}

#[test]
fn read_mark_vs_checkpoint() {
    model("read_mark_vs_checkpoint", || {
        read_mark_model(Recheck::MarkAndHeader);
    });
}

#[test]
#[should_panic(expected = "while a reader of snapshot")]
fn read_mark_vs_checkpoint_twin_without_header_recheck() {
    loom::model(|| read_mark_model(Recheck::MarkOnly));
}

#[test]
#[should_panic(expected = "while a reader of snapshot")]
fn read_mark_vs_checkpoint_twin_without_recheck() {
    loom::model(|| read_mark_model(Recheck::Nothing));
}

// ------------------------------------------------------------ checkpoint_vs_wal_reset

struct ResetShm {
    salt: AtomicU32,
    mx_frame: AtomicU32,
    n_backfill: AtomicU32,
    n_backfill_attempted: AtomicU32,
    read_lock0: LockSlot,
    /// The salt of the generation whose frames the checkpointer last counted in nBackfill.
    backfilled_salt: AtomicU32,
}

fn reset_checkpointer(shm: &ResetShm, salt_recheck: bool) {
    // The header as cached before READ_LOCK(0) (step 1.1 ran on this view).
    let cached_salt = shm.salt.load(Ordering::Acquire);
    let cached_mx = shm.mx_frame.load(Ordering::Acquire);
    let safe = compute_safe_frame(cached_mx, &[0u32], CheckpointMode::Passive, |_| {
        unreachable!("no read slots in this model")
    })
    .safe_frame;
    if shm.read_lock0.try_exclusive() == LockTry::Busy {
        return;
    }
    let live_salt = if salt_recheck {
        shm.salt.load(Ordering::Acquire)
    } else {
        cached_salt // BUG (twin): trust the cached header
    };
    let live_n_backfill = shm.n_backfill.load(Ordering::Acquire);
    if let BackfillDecision::Copy { to_inclusive, .. } =
        decide_backfill(live_n_backfill, safe, [cached_salt, 0], [live_salt, 0])
    {
        shm.n_backfill_attempted
            .store(to_inclusive, Ordering::Release);
        // ... copy frames ..= to_inclusive of generation `cached_salt` ...
        let after = plan_after_copy(to_inclusive, cached_mx, 4);
        shm.backfilled_salt.store(cached_salt, Ordering::Release);
        shm.n_backfill
            .store(after.new_n_backfill, Ordering::Release);
    }
    shm.read_lock0.unlock_exclusive();
}

fn reset_writer(shm: &ResetShm) {
    // A writer whose read holds READ_LOCK(0) restarts the WAL (walRestartHdr).
    if shm.read_lock0.try_shared() == LockTry::Acquired {
        shm.mx_frame.store(0, Ordering::Release);
        shm.salt.store(2, Ordering::Release);
        shm.n_backfill.store(0, Ordering::Release);
        shm.n_backfill_attempted.store(0, Ordering::Release);
        shm.read_lock0.unlock_shared();
        // First commit of the new generation: one frame.
        shm.mx_frame.store(1, Ordering::Release);
    }
}

fn reset_model(salt_recheck: bool) {
    let shm = Arc::new(ResetShm {
        salt: AtomicU32::new(1),
        mx_frame: AtomicU32::new(4),
        n_backfill: AtomicU32::new(0),
        n_backfill_attempted: AtomicU32::new(0),
        read_lock0: LockSlot::new(),
        backfilled_salt: AtomicU32::new(0),
    });
    let s1 = Arc::clone(&shm);
    let c = spawn(move || reset_checkpointer(&s1, salt_recheck));
    reset_writer(&shm);
    c.join().unwrap();
    let salt = shm.salt.load(Ordering::Acquire);
    let nb = shm.n_backfill.load(Ordering::Acquire);
    let na = shm.n_backfill_attempted.load(Ordering::Acquire);
    let mx = shm.mx_frame.load(Ordering::Acquire);
    if nb > 0 {
        let counted = shm.backfilled_salt.load(Ordering::Acquire);
        assert_eq!(
            counted, salt,
            "nBackfill counts {nb} frames of generation {counted}, but the WAL is generation \
             {salt}: frames of a reset generation"
        );
    }
    check_backfill_invariant(nb, na, mx).expect("BACKFILL-1");
}

#[test]
fn checkpoint_vs_wal_reset() {
    model("checkpoint_vs_wal_reset", || reset_model(true));
}

#[test]
#[should_panic(expected = "reset generation")]
fn checkpoint_vs_wal_reset_twin_without_salt_recheck() {
    loom::model(|| reset_model(false));
}

// ------------------------------------------------------------ backfill_counters

struct CounterShm {
    mx_frame: AtomicU32,
    n_backfill: AtomicU32,
    n_backfill_attempted: AtomicU32,
    crash: AtomicBool,
}

/// One checkpoint run; returns early ("crashes") when the crash flag is up between steps.
fn counters_checkpoint(shm: &CounterShm, may_crash: bool, buggy: bool) {
    let crashed = || may_crash && shm.crash.load(Ordering::Acquire);
    let mx = shm.mx_frame.load(Ordering::Acquire);
    let safe =
        compute_safe_frame(mx, &[0u32], CheckpointMode::Passive, |_| LockTry::Busy).safe_frame;
    let nb = shm.n_backfill.load(Ordering::Acquire);
    if nb >= safe || crashed() {
        return;
    }
    if buggy {
        // BUG (twin): nBackfill first.
        shm.n_backfill.store(safe, Ordering::Release);
        if crashed() {
            return;
        }
        shm.n_backfill_attempted.store(safe, Ordering::Release);
        return;
    }
    shm.n_backfill_attempted.store(safe, Ordering::Release);
    if crashed() {
        return; // crashed during the copy
    }
    let after = plan_after_copy(safe, shm.mx_frame.load(Ordering::Acquire), 8);
    shm.n_backfill
        .store(after.new_n_backfill, Ordering::Release);
}

fn observe(shm: &CounterShm) {
    // Read in the order that keeps a consistent protocol consistent: the value written
    // last first.
    let nb = shm.n_backfill.load(Ordering::Acquire);
    let na = shm.n_backfill_attempted.load(Ordering::Acquire);
    let mx = shm.mx_frame.load(Ordering::Acquire);
    if let Err(e) = check_backfill_invariant(nb, na, mx) {
        panic!("BACKFILL-1 broken: {e}");
    }
}

fn counters_model(buggy: bool) {
    let shm = Arc::new(CounterShm {
        mx_frame: AtomicU32::new(2),
        n_backfill: AtomicU32::new(0),
        n_backfill_attempted: AtomicU32::new(0),
        crash: AtomicBool::new(false),
    });
    let s1 = Arc::clone(&shm);
    let ckpt = spawn(move || {
        counters_checkpoint(&s1, true, buggy);
        // Restart after the crash (or a second run).
        counters_checkpoint(&s1, false, buggy);
    });
    let s2 = Arc::clone(&shm);
    let writer = spawn(move || {
        s2.mx_frame.store(3, Ordering::Release);
        s2.crash.store(true, Ordering::Release);
    });
    observe(&shm);
    writer.join().unwrap();
    observe(&shm);
    ckpt.join().unwrap();
    observe(&shm);
}

#[test]
fn backfill_counters() {
    model("backfill_counters", || counters_model(false));
}

#[test]
#[should_panic(expected = "BACKFILL-1 broken")]
fn backfill_counters_twin_sets_n_backfill_first() {
    loom::model(|| counters_model(true));
}
