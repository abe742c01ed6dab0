//! The group-commit queue: callers that commit at the same time are served by one leader
//! in one batch (one WAL append, one sync), and everyone else parks on a watermark.
//!
//! ```text
//! submit(item):
//!     lock; ticket := next++; pending.push(ticket, item)
//!     loop:
//!         if done_through >= ticket: take my result; return it      (the watermark)
//!         if no leader: become leader; batch := all pending; unlock
//!                       results := run(batch)              (no queue lock held: new
//!                       lock; store results;                 callers queue up for the
//!                       done_through := last ticket of batch  next batch meanwhile)
//!                       leader := none; wake this batch's waiters
//!                       and one waiter of the next batch (the next leader); continue
//!         wait on my cohort's wake-up (the running batch's, if my ticket is in it,
//!         else the next batch's)
//! ```
//!
//! * Batches are FIFO: a leader takes every pending item, so the tickets of one batch are
//!   contiguous and `done_through` only grows. Frame order is ticket order.
//! * Hand-off: a leader's own item is always in the batch it runs (it queued before it
//!   looked for a leader), so it leads at most once per call; of the callers that queued
//!   while it ran, one is woken to become the next leader.
//! * Cohorts: waiters sleep on one of two condition variables by batch parity, so the end
//!   of a batch wakes that batch's waiters (and one next leader), not every waiter of the
//!   next batch too (a thundering herd that cost a fifth of the CPU on a hot page).
//! * Results are stored *before* the watermark passes their ticket (inv:
//!   GC_RESULT_BEFORE_WATERMARK), under the same lock, so a waiter that sees the
//!   watermark always finds its result.
//! * A leader that panics still moves the watermark and wakes everyone (its batch's
//!   callers get `None`), so no caller waits forever.
//! * Gathering ([`GroupCommit::set_gather_limit`], off by default): before taking the
//!   batch, a new leader waits, at most the limit, for the threads that were in the
//!   previous batch and are not queued yet. Without it, writers that return from batch N
//!   just miss batch N+1 (which the ones queued during N's sync form at once), and the
//!   batches alternate between two halves of the writers; with it, a thread that keeps
//!   committing rejoins its peers. A lone writer never waits (it is the previous batch).
//!
//! Built on [`fsqlite_types::sync_primitives`], so `tests/loom_group_commit.rs` checks
//! it under loom, with a deliberately broken twin per rule ([`Flaw`]).

use std::thread::ThreadId;
use std::time::Duration;

use fsqlite_types::sync_primitives::{AtomicU64, Condvar, Instant, Mutex, Ordering};

/// A deliberate bug, for the loom model's broken twins only.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flaw {
    /// The real protocol.
    None,
    /// The leader never wakes the waiters (a lost wake-up: loom reports a deadlock).
    NoWake,
    /// A leader does not mark itself as leading, so a second caller can lead a batch at
    /// the same time (two serial sections at once).
    NoLeaderFlag,
    /// The leader moves the watermark, wakes the waiters, unlocks, and only then stores
    /// the results (a waiter can see the watermark without its result).
    WatermarkBeforeResults,
}

struct Queue<T, R> {
    pending: Vec<(u64, ThreadId, T)>,
    /// The threads of the last batch (gathering waits for them).
    last_batch: Vec<ThreadId>,
    /// A leader is gathering: arrivals wake it.
    gathering: bool,
    next_ticket: u64,
    leader: bool,
    finished: Vec<(u64, R)>,
    done_through: u64,
    batches: u64,
    /// Batches taken by a leader so far; the running (or last) batch is number `epoch`.
    epoch: u64,
    /// Last ticket of the batch taken last.
    taken_through: u64,
}

/// The queue (see the module docs). `T` is what a caller submits, `R` its result.
pub struct GroupCommit<T, R> {
    queue: Mutex<Queue<T, R>>,
    /// Wake-ups by batch parity (see the module docs: cohorts).
    wake: [Condvar; 2],
    /// Arrivals while a leader gathers.
    arrivals: Condvar,
    /// Gathering limit in microseconds (0 = off).
    gather_us: AtomicU64,
    flaw: Flaw,
}

impl<T, R> std::fmt::Debug for GroupCommit<T, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.queue.lock();
        f.debug_struct("GroupCommit")
            .field("pending", &q.pending.len())
            .field("leader", &q.leader)
            .field("done_through", &q.done_through)
            .field("batches", &q.batches)
            .finish_non_exhaustive()
    }
}

impl<T, R> Default for GroupCommit<T, R> {
    fn default() -> Self {
        Self::new()
    }
}

/// Moves the watermark past a batch whose leader unwound, so nobody waits forever.
struct LeaderGuard<'a, T, R> {
    gc: &'a GroupCommit<T, R>,
    last_ticket: u64,
    armed: bool,
}

impl<T, R> Drop for LeaderGuard<'_, T, R> {
    fn drop(&mut self) {
        if self.armed {
            let mut q = self.gc.queue.lock();
            q.done_through = q.done_through.max(self.last_ticket);
            q.leader = false;
            drop(q);
            self.gc.wake_all();
        }
    }
}

impl<T, R> GroupCommit<T, R> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::with_flaw(Flaw::None)
    }

    /// A queue with a deliberate bug (loom's broken twins).
    #[doc(hidden)]
    pub fn with_flaw(flaw: Flaw) -> Self {
        Self {
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                last_batch: Vec::new(),
                gathering: false,
                next_ticket: 1,
                leader: false,
                finished: Vec::new(),
                done_through: 0,
                batches: 0,
                epoch: 0,
                taken_through: 0,
            }),
            wake: [Condvar::new(), Condvar::new()],
            arrivals: Condvar::new(),
            gather_us: AtomicU64::new(0),
            flaw,
        }
    }

    fn cohort(&self, epoch: u64) -> &Condvar {
        &self.wake[(epoch % 2) as usize]
    }

    fn wake_all(&self) {
        for cv in &self.wake {
            cv.notify_all();
        }
    }

    /// How long a new leader may wait for the previous batch's threads (see the module
    /// docs); zero turns gathering off.
    pub fn set_gather_limit(&self, limit: Duration) {
        self.gather_us.store(
            u64::try_from(limit.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Waits (at most the gathering limit) until every thread of the last batch is
    /// queued again; returns the guard.
    fn gather<'a>(
        &self,
        mut q: fsqlite_types::sync_primitives::MutexGuard<'a, Queue<T, R>>,
    ) -> fsqlite_types::sync_primitives::MutexGuard<'a, Queue<T, R>> {
        let limit = Duration::from_micros(self.gather_us.load(Ordering::Relaxed));
        if limit.is_zero() {
            return q;
        }
        let start = Instant::now();
        loop {
            let missing = q
                .last_batch
                .iter()
                .any(|t| !q.pending.iter().any(|(_, p, _)| p == t));
            let waited = start.elapsed();
            if !missing || waited >= limit {
                break;
            }
            q.gathering = true;
            q = self.arrivals.wait_for(q, limit.saturating_sub(waited)).0;
        }
        q.gathering = false;
        q
    }

    /// Batches run so far.
    pub fn batches(&self) -> u64 {
        self.queue.lock().batches
    }

    /// Queues `item` and returns its result once a leader (this caller or another) has
    /// run the batch holding it. `run` gets the batch in ticket order and must return one
    /// result per item, in the same order; it runs only if this caller becomes the
    /// leader. `None` when the leader of this item's batch panicked.
    pub fn submit(&self, item: T, run: impl FnOnce(Vec<T>) -> Vec<R>) -> Option<R> {
        let mut q = self.queue.lock();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.pending.push((ticket, std::thread::current().id(), item));
        if q.gathering {
            self.arrivals.notify_one();
        }
        let mut run = Some(run);
        loop {
            if q.done_through >= ticket {
                let pos = q.finished.iter().position(|(t, _)| *t == ticket)?;
                return Some(q.finished.swap_remove(pos).1);
            }
            if !q.leader
                && let Some(run) = run.take()
            {
                q.leader = self.flaw != Flaw::NoLeaderFlag;
                q = self.gather(q);
                let batch = std::mem::take(&mut q.pending);
                q.last_batch = batch.iter().map(|(_, t, _)| *t).collect();
                let last_ticket = batch.last().map_or(ticket, |(t, _, _)| *t);
                q.epoch += 1;
                q.taken_through = last_ticket;
                let epoch = q.epoch;
                drop(q);
                let mut guard = LeaderGuard {
                    gc: self,
                    last_ticket,
                    armed: true,
                };
                let tickets: Vec<u64> = batch.iter().map(|(t, _, _)| *t).collect();
                let results = run(batch.into_iter().map(|(_, _, item)| item).collect());
                debug_assert_eq!(results.len(), tickets.len(), "one result per item");
                q = self.queue.lock();
                if self.flaw == Flaw::WatermarkBeforeResults {
                    q.done_through = last_ticket;
                    drop(q);
                    self.wake_all();
                    q = self.queue.lock();
                }
                // inv: GC_RESULT_BEFORE_WATERMARK
                q.finished.extend(tickets.into_iter().zip(results));
                q.done_through = last_ticket;
                q.leader = false;
                q.batches += 1;
                guard.armed = false;
                drop(guard);
                if self.flaw != Flaw::NoWake {
                    self.cohort(epoch).notify_all();
                    self.cohort(epoch + 1).notify_one();
                }
                continue;
            }
            let cohort = if ticket <= q.taken_through {
                q.epoch
            } else {
                q.epoch + 1
            };
            q = self.cohort(cohort).wait(q);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_item_gets_its_own_result_in_fifo_batches() {
        let gc = Arc::new(GroupCommit::<u32, u32>::new());
        let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let gc = Arc::clone(&gc);
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    for k in 0..200u32 {
                        let item = t * 1000 + k;
                        let r = gc
                            .submit(item, |batch| {
                                seen.lock().push(batch.len());
                                batch.iter().map(|x| x * 2).collect()
                            })
                            .unwrap();
                        assert_eq!(r, item * 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let sizes = seen.lock();
        assert_eq!(sizes.iter().sum::<usize>(), 1600);
        assert_eq!(gc.batches() as usize, sizes.len());
    }

    #[test]
    fn a_panicking_leader_releases_its_batch() {
        let gc = GroupCommit::<u32, u32>::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gc.submit(1, |_| panic!("leader failed"))
        }));
        assert!(r.is_err());
        assert_eq!(gc.submit(2, |b| b), Some(2));
    }
}
