//! loom models of the in-process recovery fence (`fsqlite_wal::recovery_fence`).
//!
//! inv: FENCE-1 (mutual exclusion), FENCE-2 (one generation per release, published to the
//! next holder) and FENCE-3 (no lost wake-up: a parked waiter is woken by the release).
//!
//! The property models drive the library's own [`RecoveryFence`]: two or three threads
//! take it with `acquire_for_recovery_with` (which spins, then parks on the condition
//! variable), increment a `loom::cell::UnsafeCell` counter inside (loom reports any two
//! unsynchronized accesses, so a second holder is a failure) and release. Under loom a
//! timed wait never times out, so a lost wake-up shows up as a deadlock, and the logical
//! clock keeps the budget from expiring.
//!
//! Buggy twins (`#[should_panic]`): [`TwinFence`] is the same fence word protocol written
//! out in this file with one step broken: a racy load-then-store acquire (breaks FENCE-1),
//! or a release that notifies without taking the wait mutex (breaks FENCE-3).
//!
//! Run: `RUSTFLAGS="--cfg loom" cargo test -p fsqlite-wal --release --test loom_fence --
//! --nocapture` (`LOOM_MAX_PREEMPTIONS`, default 2).
#![cfg(loom)]

use std::time::{Duration, Instant};

use fsqlite_types::sync_primitives::{Arc, AtomicU64, Condvar, Mutex, Ordering, spawn, yield_now};
use fsqlite_wal::recovery_fence::RecoveryFence;
use loom::cell::UnsafeCell;

/// Runs `f` under a loom builder whose preemption bound comes from `LOOM_MAX_PREEMPTIONS`
/// (default 2) and prints the iteration count and wall time.
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

/// A generous budget: under loom's logical clock (1 µs per `now()`) it never runs out.
const BUDGET_RETRIES: u32 = 10;
const BUDGET_BACKOFF: Duration = Duration::from_millis(100);

/// The critical section: an unsynchronized read-modify-write of a shared counter.
fn critical(counter: &UnsafeCell<u32>) {
    counter.with_mut(|p| {
        // SAFETY: only a fence holder touches the counter; loom checks that claim.
        unsafe { *p += 1 };
    });
}

fn read_counter(counter: &UnsafeCell<u32>) -> u32 {
    // SAFETY: called after every thread was joined.
    counter.with(|p| unsafe { *p })
}

#[test]
fn fence_mutual_exclusion_and_generation() {
    model("fence_mutual_exclusion_and_generation", || {
        let fence = Arc::new(RecoveryFence::new());
        let counter = Arc::new(UnsafeCell::new(0u32));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (fence, counter) = (Arc::clone(&fence), Arc::clone(&counter));
                spawn(move || {
                    let mut g = fence
                        .acquire_for_recovery_with(BUDGET_RETRIES, BUDGET_BACKOFF)
                        .expect("the budget cannot run out in the model");
                    let seen = g.generation_at_acquire();
                    critical(&counter);
                    // FENCE-2: the generation cannot move while we hold the fence.
                    assert_eq!(fence.generation(), seen);
                    assert!(fence.is_recovery_in_progress());
                    g.complete();
                })
            })
            .collect();
        if let Some(mut g) = fence.try_acquire_for_recovery() {
            critical(&counter);
            g.complete();
        }
        let mut holders = 0;
        for h in handles {
            h.join().unwrap();
            holders += 1;
        }
        let total = read_counter(&counter);
        assert!(total == holders || total == holders + 1);
        assert_eq!(fence.generation(), u64::from(total), "FENCE-2");
        assert!(!fence.is_recovery_in_progress());
        assert!(fence.last_recovery_completed());
    });
}

#[test]
fn fence_parked_waiter_is_woken() {
    model("fence_parked_waiter_is_woken", || {
        let fence = Arc::new(RecoveryFence::new());
        let guard = fence.try_acquire_for_recovery().unwrap();
        let f2 = Arc::clone(&fence);
        let waiter = spawn(move || {
            // Spins (2 yields under loom), then parks until the release wakes it.
            let g = f2
                .acquire_for_recovery_with(BUDGET_RETRIES, BUDGET_BACKOFF)
                .expect("woken by the release");
            assert_eq!(g.generation_at_acquire(), 1, "FENCE-2: sees the release");
            assert!(!g.previous_recovery_completed());
        });
        // Give the waiter time to spin out and park (each spin is a yield under loom).
        for _ in 0..4 {
            yield_now();
        }
        drop(guard); // not completed
        waiter.join().unwrap();
        assert_eq!(fence.generation(), 2);
    });
}

// ------------------------------------------------------------------ buggy twins

const HELD: u64 = 1;
const WAITER_ONE: u64 = 1 << 2;
const WAITER_MASK: u64 = ((1 << 22) - 1) << 2;

/// The fence protocol, re-stated with switchable bugs.
struct TwinFence {
    word: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
    racy_acquire: bool,
    notify_without_lock: bool,
}

impl TwinFence {
    fn new(racy_acquire: bool, notify_without_lock: bool) -> Self {
        Self {
            word: AtomicU64::new(0),
            lock: Mutex::new(()),
            cv: Condvar::new(),
            racy_acquire,
            notify_without_lock,
        }
    }

    fn try_acquire(&self) -> bool {
        if self.racy_acquire {
            // BUG: test, then set, as two steps.
            let w = self.word.load(Ordering::Acquire);
            if w & HELD != 0 {
                return false;
            }
            self.word.store(w | HELD, Ordering::Release);
            return true;
        }
        self.word.fetch_or(HELD, Ordering::Acquire) & HELD == 0
    }

    fn acquire(&self) {
        if self.try_acquire() {
            return;
        }
        let mut g = self.lock.lock();
        self.word.fetch_add(WAITER_ONE, Ordering::Relaxed);
        while !self.try_acquire() {
            g = self.cv.wait(g);
        }
        self.word.fetch_sub(WAITER_ONE, Ordering::Relaxed);
        drop(g);
    }

    fn release(&self) {
        let prev = self.word.fetch_and(!HELD, Ordering::Release);
        if prev & WAITER_MASK != 0 {
            if self.notify_without_lock {
                // BUG: a waiter between its re-try and its wait misses this.
                self.cv.notify_all();
            } else {
                let _g = self.lock.lock();
                self.cv.notify_all();
            }
        }
    }
}

fn twin_model(racy_acquire: bool, notify_without_lock: bool) {
    loom::model(move || {
        let fence = Arc::new(TwinFence::new(racy_acquire, notify_without_lock));
        let counter = Arc::new(UnsafeCell::new(0u32));
        let (f2, c2) = (Arc::clone(&fence), Arc::clone(&counter));
        let t = spawn(move || {
            f2.acquire();
            critical(&c2);
            f2.release();
        });
        fence.acquire();
        critical(&counter);
        fence.release();
        t.join().unwrap();
        assert_eq!(read_counter(&counter), 2);
    });
}

#[test]
fn twin_without_bugs_passes() {
    twin_model(false, false);
}

#[test]
#[should_panic(expected = "Causality violation")]
fn twin_racy_acquire_is_caught() {
    twin_model(true, false);
}

/// The lost wake-up twin deadlocks, and loom's deadlock report aborts the process (a
/// second panic while unwinding), which `#[should_panic]` cannot catch. So the twin runs
/// in a child process (this test binary, filtered to [`twin_lost_wakeup_child`]) and the
/// parent panics when the child failed.
#[test]
#[should_panic(expected = "caught")]
fn twin_notify_without_lock_is_caught() {
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "twin_lost_wakeup_child",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(TWIN_ENV, "lost_wakeup")
        .output()
        .expect("run the child model");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() || !stderr.contains("deadlock"),
        "caught: the lost wake-up made the model deadlock ({})",
        out.status
    );
}

const TWIN_ENV: &str = "FSQLITE_LOOM_TWIN";

/// Runs the lost wake-up twin only when the parent asks for it.
#[test]
fn twin_lost_wakeup_child() {
    if std::env::var(TWIN_ENV).as_deref() == Ok("lost_wakeup") {
        twin_model(false, true);
    }
}
