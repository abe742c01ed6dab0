//! The one place that chooses concurrency primitives.
//!
//! Normally these are `parking_lot`'s locks and `std`'s atomics and threads. Built with
//! `RUSTFLAGS="--cfg loom"` every one of them is loom's, so code written against this
//! module can be model-checked (run such code only inside `loom::model`). The two halves
//! have the same API: `Mutex::lock` returns the guard directly (no poisoning), and
//! `Condvar::wait`/`wait_for` take and return the guard by value.
//!
//! Under loom, [`Instant`] is a deterministic logical clock: every `now()` advances it by
//! one microsecond, so time-bounded loops terminate inside a model.
//!
//! Orderings: code on this facade avoids `SeqCst` *accesses* (loom models them as
//! `AcqRel` and reports false alarms); where a total order is needed it uses an explicit
//! [`fence`]`(SeqCst)` with a comment.

pub use imp::*;

#[cfg(not(loom))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    pub use std::thread::{spawn, yield_now};
    pub use std::time::Instant;

    pub use parking_lot::{Mutex, MutexGuard};

    /// A condition variable paired with [`Mutex`].
    #[derive(Debug, Default)]
    pub struct Condvar(parking_lot::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub const fn new() -> Self {
            Self(parking_lot::Condvar::new())
        }

        /// Blocks until notified (spurious wake-ups possible).
        pub fn wait<'a, T>(&self, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0.wait(&mut guard);
            guard
        }

        /// Blocks until notified or `timeout` passes; the flag is true on time-out.
        pub fn wait_for<'a, T>(
            &self,
            mut guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            let r = self.0.wait_for(&mut guard, timeout);
            (guard, r.timed_out())
        }

        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// A CPU hint inside a spin loop.
    #[inline]
    pub fn spin_loop() {
        std::hint::spin_loop();
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::MutexGuard;
    pub use loom::sync::atomic::{
        AtomicBool, AtomicU8, AtomicU16, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence,
    };
    pub use loom::thread::{spawn, yield_now};

    /// loom's mutex with the parking_lot-shaped API (no poisoning).
    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    impl<T> Mutex<T> {
        /// A new mutex.
        pub fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }

        /// Locks, returning the guard.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Locks if free.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok()
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    /// loom's condition variable with the facade's API.
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }

        /// Blocks until notified.
        pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            self.0
                .wait(guard)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// Under loom a timed wait is an untimed one that may also return at once as a
        /// time-out; models must not depend on the time-out firing.
        pub fn wait_for<'a, T>(
            &self,
            guard: MutexGuard<'a, T>,
            timeout: std::time::Duration,
        ) -> (MutexGuard<'a, T>, bool) {
            let (g, r) = self
                .0
                .wait_timeout(guard, timeout)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (g, r.timed_out())
        }

        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }

        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Inside a model a spin must yield, or loom's unfair scheduler never ends it.
    #[inline]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }

    /// A deterministic logical clock for models: each `now()` advances one microsecond.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Instant(u64);

    static CLOCK_MICROS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    impl Instant {
        /// The logical time, advanced by one microsecond.
        pub fn now() -> Self {
            Self(CLOCK_MICROS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
        }

        /// Logical time since `earlier` (zero if `earlier` is later).
        pub fn duration_since(&self, earlier: Instant) -> std::time::Duration {
            std::time::Duration::from_micros(self.0.saturating_sub(earlier.0))
        }

        /// Logical time since this instant.
        pub fn elapsed(&self) -> std::time::Duration {
            Self::now().duration_since(*self)
        }
    }

    impl std::ops::Add<std::time::Duration> for Instant {
        type Output = Instant;
        fn add(self, d: std::time::Duration) -> Instant {
            Instant(self.0 + d.as_micros() as u64)
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn condvar_wakes_waiter() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = Arc::clone(&pair);
        let h = spawn(move || {
            *p2.0.lock() = true;
            p2.1.notify_all();
        });
        let mut g = pair.0.lock();
        while !*g {
            let (ng, _) = pair.1.wait_for(g, Duration::from_secs(5));
            g = ng;
        }
        drop(g);
        h.join().unwrap();
        let t = Instant::now();
        assert!(t.elapsed() < Duration::from_mins(1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// A trivial model: two threads increment a counter under the facade's mutex.
    #[test]
    fn loom_mutex_counter() {
        loom::model(|| {
            let m = Arc::new(Mutex::new(0u32));
            let a = AtomicU32::new(0);
            a.store(1, Ordering::Release);
            let m2 = Arc::clone(&m);
            let h = spawn(move || {
                *m2.lock() += 1;
            });
            *m.lock() += 1;
            h.join().unwrap();
            assert_eq!(*m.lock(), 2);
            assert_eq!(a.load(Ordering::Acquire), 1);
            let t0 = Instant::now();
            assert!(Instant::now() > t0);
        });
    }
}
