//! loom model of the **reader side** of the read-mark protocol (FORMAT.md §6 steps 2–6,
//! SQLite's `walTryBeginRead`) against a concurrent checkpointer and a writer that moves
//! `mxFrame` (TESTING.md §2.8 (d), `read_mark_vs_checkpoint`).
//!
//! `loom_checkpoint.rs` already checks this property with a reader that always claims
//! slot 1 exclusively. This model runs the reader's whole algorithm, as
//! `connection.rs::begin_read_inner` does:
//!
//! 1. read the header (`mxFrame` stands for the whole 48-byte header: every commit
//!    changes it);
//! 2. if `nBackfill == mxFrame`: shared `READ_LOCK(0)` ("read the database file only"),
//!    re-check the header;
//! 3. otherwise pick the slot in `1..N` with the **largest mark ≤ mxFrame**; if there is
//!    none or it is below `mxFrame`, claim a slot (exclusive lock, store the mark, unlock);
//! 4. shared `READ_LOCK(slot)`, capture `minFrame = nBackfill + 1`, **re-check** that the
//!    mark and the header are unchanged, else release and retry.
//!
//! Shm words are loom `AtomicU32`s (Acquire/Release); a lock slot is an `AtomicU32` taken
//! by compare-and-swap (0 free, n shared holders, `EXCLUSIVE`), a try-lock like SQLite's
//! shm locks. The checkpointer is SQLite's PASSIVE `walCheckpoint`: `mxSafeFrame` from the
//! marks through the real [`compute_safe_frame`] (its callback stores the new mark while
//! holding the slot exclusive), then `READ_LOCK(0)` exclusive, copy up to it
//! (`db_has_frames_upto`), `nBackfill = mxSafeFrame`. The writer commits frames 3 and 4.
//!
//! Property (checked twice while the reader holds its lock, so a checkpointer step can
//! fall in between): **no frame newer than the reader's accepted snapshot is in the
//! database file**, i.e. the checkpointer never backfilled past a frame an active reader
//! still needs; and a reader on `READ_LOCK(0)` sees every frame of its snapshot in the
//! database. Three starting states cover the claim path (marks below `mxFrame`), the join
//! path (a mark equal to `mxFrame`) and the database-only path (`nBackfill == mxFrame`).
//!
//! Buggy twins (`#[should_panic]`): the reader skips step 4's re-check on the mark path,
//! and skips the header re-check on the `READ_LOCK(0)` path.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-wal --release --test loom_read_mark
//! -- --nocapture` (`LOOM_MAX_PREEMPTIONS`, default 2).
#![cfg(loom)]

use std::time::Instant;

use fsqlite_types::sync_primitives::{Arc, AtomicU32, Ordering, spawn};
use fsqlite_wal::checkpoint::{CheckpointMode, LockTry, compute_safe_frame};

const EXCLUSIVE: u32 = u32::MAX;
const NOT_USED: u32 = u32::MAX;
/// Read slots: 0 (database only) and marks 1 and 2.
const N: usize = 3;
/// Read attempts before the reader gives up (SQLite: 100, then SQLITE_PROTOCOL).
const ATTEMPTS: usize = 3;

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
    let n = iterations.load(std::sync::atomic::Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    println!("loom model {name}: bound {bound:?}, {n} interleavings, {secs:.2} s");
    let _ = fsqlite_testkit::stats::write_stats(
        &format!("loom_{name}"),
        fsqlite_testkit::serde_json::json!({
            "model": name,
            "preemption_bound": bound,
            "interleavings": n,
            "exhaustive": true,
            "seconds": secs,
        }),
    );
}

/// One shm lock slot (try-lock semantics).
struct LockSlot(AtomicU32);

impl LockSlot {
    fn new() -> Self {
        Self(AtomicU32::new(0))
    }

    fn try_exclusive(&self) -> bool {
        self.0
            .compare_exchange(0, EXCLUSIVE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn unlock_exclusive(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn try_shared(&self) -> bool {
        let v = self.0.load(Ordering::Acquire);
        v != EXCLUSIVE
            && self
                .0
                .compare_exchange(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn unlock_shared(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Shm {
    /// The header (a commit changes it).
    mx_frame: AtomicU32,
    n_backfill: AtomicU32,
    marks: [AtomicU32; N],
    locks: [LockSlot; N],
    /// The newest frame whose page the checkpointer has written into the database.
    db_has_frames_upto: AtomicU32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// SQLite's algorithm.
    Correct,
    /// Twin: no re-check of mark and header after the shared `READ_LOCK(slot > 0)`.
    NoMarkPathRecheck,
    /// Twin: no header re-check after the shared `READ_LOCK(0)`.
    NoDbOnlyRecheck,
}

/// The checks a reader with an accepted snapshot makes while it holds its lock.
fn reading(shm: &Shm, snapshot: u32, db_only: bool) {
    for _ in 0..2 {
        let copied = shm.db_has_frames_upto.load(Ordering::Acquire);
        assert!(
            copied <= snapshot,
            "the checkpointer copied frame {copied} into the database while a reader of \
             snapshot {snapshot} (db only: {db_only}) was active"
        );
        if db_only {
            assert_eq!(
                copied, snapshot,
                "a database-only reader of snapshot {snapshot} finds only frames ..={copied} \
                 in the database"
            );
        }
        loom::thread::yield_now();
    }
}

fn reader(shm: &Shm, kind: Reader) {
    for _ in 0..ATTEMPTS {
        let mx = shm.mx_frame.load(Ordering::Acquire);
        // Step 3: a fully backfilled WAL is read from the database file only.
        if shm.n_backfill.load(Ordering::Acquire) == mx && shm.locks[0].try_shared() {
            if kind != Reader::NoDbOnlyRecheck && shm.mx_frame.load(Ordering::Acquire) != mx {
                shm.locks[0].unlock_shared();
                continue;
            }
            reading(shm, mx, true);
            shm.locks[0].unlock_shared();
            return;
        }
        // Step 4: the largest mark <= mxFrame, else claim a slot.
        let mut best: Option<(usize, u32)> = None;
        for i in 1..N {
            let m = shm.marks[i].load(Ordering::Acquire);
            if m <= mx && best.is_none_or(|(_, bm)| m > bm) {
                best = Some((i, m));
            }
        }
        if best.is_none_or(|(_, m)| m < mx) {
            for i in 1..N {
                if shm.locks[i].try_exclusive() {
                    shm.marks[i].store(mx, Ordering::Release);
                    shm.locks[i].unlock_exclusive();
                    best = Some((i, mx));
                    break;
                }
            }
        }
        let Some((slot, mark)) = best else {
            continue;
        };
        // Step 5: the shared lock for the whole read.
        if !shm.locks[slot].try_shared() {
            continue;
        }
        // Step 6: minFrame, then the re-check.
        let _min_frame = shm.n_backfill.load(Ordering::Acquire) + 1;
        if kind != Reader::NoMarkPathRecheck
            && (shm.marks[slot].load(Ordering::Acquire) != mark
                || shm.mx_frame.load(Ordering::Acquire) != mx)
        {
            shm.locks[slot].unlock_shared();
            continue;
        }
        // The snapshot reads frames minFrame..=mark.. mxFrame from the WAL, the rest
        // from the database: nothing newer than mxFrame may be in the database.
        reading(shm, mx, false);
        shm.locks[slot].unlock_shared();
        return;
    }
}

/// SQLite's PASSIVE checkpoint (FORMAT.md §7.4 step 1).
fn checkpointer(shm: &Shm) {
    let mx = shm.mx_frame.load(Ordering::Acquire);
    let nb = shm.n_backfill.load(Ordering::Acquire);
    if nb >= mx {
        return;
    }
    let marks: [u32; N] = std::array::from_fn(|i| shm.marks[i].load(Ordering::Acquire));
    let safe = compute_safe_frame(mx, &marks, CheckpointMode::Passive, |a| {
        let slot = &shm.locks[a.slot];
        if slot.try_exclusive() {
            shm.marks[a.slot].store(a.new_mark, Ordering::Release);
            slot.unlock_exclusive();
            LockTry::Acquired
        } else {
            LockTry::Busy
        }
    })
    .safe_frame;
    if nb < safe && shm.locks[0].try_exclusive() {
        if safe > shm.db_has_frames_upto.load(Ordering::Acquire) {
            shm.db_has_frames_upto.store(safe, Ordering::Release);
        }
        shm.n_backfill.store(safe, Ordering::Release);
        shm.locks[0].unlock_exclusive();
    }
}

/// Where the model starts.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// `mxFrame` 2, nothing backfilled, marks below it: the reader claims a slot.
    Claim,
    /// `mxFrame` 2, nothing backfilled, mark 2 equals it: the reader joins that slot.
    Join,
    /// `mxFrame` 2 fully backfilled: the reader takes `READ_LOCK(0)`.
    DbOnly,
}

fn run(start: Start, kind: Reader) {
    let (nb, marks) = match start {
        Start::Claim => (0, [0, 0, NOT_USED]),
        Start::Join => (0, [0, 1, 2]),
        Start::DbOnly => (2, [0, 2, NOT_USED]),
    };
    let shm = Arc::new(Shm {
        mx_frame: AtomicU32::new(2),
        n_backfill: AtomicU32::new(nb),
        marks: marks.map(AtomicU32::new),
        locks: [LockSlot::new(), LockSlot::new(), LockSlot::new()],
        db_has_frames_upto: AtomicU32::new(nb),
    });
    let s1 = Arc::clone(&shm);
    let r = spawn(move || reader(&s1, kind));
    let s2 = Arc::clone(&shm);
    let c = spawn(move || checkpointer(&s2));
    // The writer commits frame 3, then frame 4.
    shm.mx_frame.store(3, Ordering::Release);
    shm.mx_frame.store(4, Ordering::Release);
    r.join().unwrap();
    c.join().unwrap();
}

#[test]
fn read_mark_reader_claim_path() {
    model("read_mark_reader_claim", || {
        run(Start::Claim, Reader::Correct);
    });
}

#[test]
fn read_mark_reader_join_path() {
    model("read_mark_reader_join", || {
        run(Start::Join, Reader::Correct);
    });
}

#[test]
fn read_mark_reader_db_only_path() {
    model("read_mark_reader_db_only", || {
        run(Start::DbOnly, Reader::Correct);
    });
}

#[test]
#[should_panic(expected = "while a reader of snapshot")]
fn read_mark_reader_twin_without_recheck() {
    loom::model(|| run(Start::Claim, Reader::NoMarkPathRecheck));
}

#[test]
#[should_panic(expected = "while a reader of snapshot")]
fn read_mark_reader_twin_without_db_only_header_recheck() {
    loom::model(|| run(Start::DbOnly, Reader::NoDbOnlyRecheck));
}
