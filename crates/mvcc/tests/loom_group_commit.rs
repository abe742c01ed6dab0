//! loom model of the group-commit queue ([`fsqlite_mvcc::group_commit`]): the commit
//! queue, the leader hand-off and the watermark wake-up.
//!
//! Checked in every interleaving (bounded preemptions):
//! * every caller returns, with the result of its own item (never another's, never none);
//! * every item is run exactly once, by exactly one leader, in ticket order;
//! * at most one leader runs at a time (inv: GC_ONE_LEADER);
//! * nobody waits forever: a caller that queued while a leader ran is woken and either
//!   finds its result or leads the next batch.
//!
//! Broken twins under `#[should_panic]` (each rule is load-bearing):
//! * `Flaw::NoWake`: the leader does not wake the waiters -> loom finds the deadlock;
//! * `Flaw::WatermarkBeforeResults`: the watermark passes a ticket before its result is
//!   stored -> a waiter returns without its result.
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-mvcc --release --test
//! loom_group_commit` (`LOOM_MAX_PREEMPTIONS`, default 2), or `cargo xtask loom`.
#![cfg(loom)]

use fsqlite_mvcc::group_commit::{Flaw, GroupCommit};
use fsqlite_types::sync_primitives::{AtomicBool, Mutex, Ordering, spawn};

struct Model {
    gc: GroupCommit<u32, u32>,
    /// Items in the order leaders ran them.
    ran: Mutex<Vec<u32>>,
    /// A leader is inside `run`.
    leading: AtomicBool,
}

fn caller(m: &Model, item: u32) {
    let r = m.gc.submit(item, |batch| {
        assert!(
            !m.leading.swap(true, Ordering::AcqRel),
            "two leaders ran at once"
        );
        m.ran.lock().extend(batch.iter().copied());
        let out = batch.iter().map(|x| x * 10).collect();
        m.leading.store(false, Ordering::Release);
        out
    });
    assert_eq!(r, Some(item * 10), "caller {item} got the wrong result");
}

fn run(flaw: Flaw, callers: u32) {
    loom::model(move || {
        // Leaked, and the join handles never dropped: when loom reports a deadlock (the
        // no-wake twin) it panics with threads blocked, and dropping loom objects while
        // unwinding would abort the test process instead of failing the test.
        let m: &'static Model = Box::leak(Box::new(Model {
            gc: GroupCommit::with_flaw(flaw),
            ran: Mutex::new(Vec::new()),
            leading: AtomicBool::new(false),
        }));
        let threads = std::mem::ManuallyDrop::new(
            (1..callers)
                .map(|item| spawn(move || caller(m, item)))
                .collect::<Vec<_>>(),
        );
        caller(m, 0);
        for t in std::mem::ManuallyDrop::into_inner(threads) {
            t.join().unwrap();
        }
        let mut ran = m.ran.lock().clone();
        assert_eq!(
            ran.len(),
            callers as usize,
            "an item ran twice or never: {ran:?}"
        );
        ran.sort_unstable();
        ran.dedup();
        assert_eq!(ran.len(), callers as usize, "an item ran twice: {ran:?}");
        assert!(m.gc.batches() >= 1 && m.gc.batches() <= u64::from(callers));
    });
}

#[test]
fn group_commit_two_callers() {
    run(Flaw::None, 2);
}

#[test]
fn group_commit_three_callers() {
    run(Flaw::None, 3);
}

#[test]
#[should_panic(expected = "deadlock")]
fn broken_twin_no_wake_deadlocks() {
    run(Flaw::NoWake, 3);
}

#[test]
#[should_panic(expected = "two leaders ran at once")]
fn broken_twin_no_leader_flag() {
    run(Flaw::NoLeaderFlag, 2);
}

#[test]
#[should_panic(expected = "got the wrong result")]
fn broken_twin_watermark_before_results() {
    // Three callers: only then does a batch hold a waiter that another caller leads
    // (the first leader runs alone; the two that queued meanwhile form the next batch).
    run(Flaw::WatermarkBeforeResults, 3);
}
