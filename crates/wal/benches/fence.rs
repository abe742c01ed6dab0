//! Recovery-fence benchmarks (PERFORMANCE.md: "recovery fence, uncontended acquire +
//! release ≤ 2× a bare CAS + store"; "fence storm, 8 threads × 4 rounds, 10 µs held: max
//! ≤ 2 ms over 1,000 repetitions").
//!
//! - `fence/uncontended_acquire_release` vs `fence/bare_cas_store` (criterion; both sides
//!   are `#[inline(never)]` functions, so each pays one call), and first their ratio as
//!   the median of 41 alternating rounds (printed).
//! - The storm (a custom measurement, printed): 8 threads, each repetition starts them
//!   together (a barrier); each thread takes the fence 4 times with
//!   `acquire_for_recovery`, holds it for ~10 µs (busy), and records how long each acquire
//!   waited. Printed: median, p99, p99.9 and max wait over all repetitions
//!   (`FENCE_STORM_REPS`, default 1,000; 20 when not run with `--bench`).
//!
//! Run: `cargo bench -p fsqlite-wal --bench fence`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::Criterion;
use fsqlite_wal::recovery_fence::RecoveryFence;

#[inline(never)]
fn fence_once(fence: &RecoveryFence) {
    if let Some(mut guard) = black_box(fence).try_acquire_for_recovery() {
        guard.complete();
        black_box(&guard);
    }
}

#[inline(never)]
fn cas_store_once(flag: &AtomicBool) {
    let f = black_box(flag);
    let ok = f
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok();
    black_box(ok);
    f.store(false, Ordering::Release);
}

/// Median (p10, p90) of fence / CAS pair over 41 alternating rounds of `n` each, so load
/// from other processes hits both sides alike.
fn interleaved_ratio(fence: &RecoveryFence, flag: &AtomicBool, n: u32) -> (f64, f64, f64) {
    let time = |f: &dyn Fn()| {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        t.elapsed().as_secs_f64()
    };
    let mut ratios: Vec<f64> = (0..41)
        .map(|round| {
            let (a, b) = if round % 2 == 0 {
                let a = time(&|| fence_once(fence));
                (a, time(&|| cas_store_once(flag)))
            } else {
                let b = time(&|| cas_store_once(flag));
                (time(&|| fence_once(fence)), b)
            };
            a / b
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (ratios[20], ratios[4], ratios[36])
}

fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("fence");
    let fence = RecoveryFence::new();
    let flag = AtomicBool::new(false);
    let (med, p10, p90) = interleaved_ratio(&fence, &flag, 200_000);
    println!(
        "ratio fence uncontended acquire+complete+release / bare CAS + store: median {med:.2}x \
         (p10 {p10:.2}x, p90 {p90:.2}x) over 41 alternating rounds of 200k"
    );
    g.bench_function("uncontended_acquire_release", |b| {
        b.iter(|| fence_once(&fence));
    });
    g.bench_function("bare_cas_store", |b| b.iter(|| cas_store_once(&flag)));
    g.finish();
}

fn busy_for(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

fn storm(reps: usize) {
    const THREADS: usize = 8;
    const ROUNDS: usize = 4;
    const HOLD: Duration = Duration::from_micros(10);
    let fence = Arc::new(RecoveryFence::new());
    let start = Arc::new(Barrier::new(THREADS + 1));
    let done = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (fence, start, done) = (fence.clone(), start.clone(), done.clone());
            std::thread::spawn(move || {
                let mut waits = Vec::with_capacity(reps * ROUNDS);
                for _ in 0..reps {
                    start.wait();
                    for _ in 0..ROUNDS {
                        let t = Instant::now();
                        let mut g = fence
                            .acquire_for_recovery()
                            .expect("the storm never exceeds the 1 s budget");
                        waits.push(t.elapsed());
                        busy_for(HOLD);
                        g.complete();
                    }
                    done.wait();
                }
                waits
            })
        })
        .collect();
    let t = Instant::now();
    for _ in 0..reps {
        start.wait();
        done.wait();
    }
    let wall = t.elapsed();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("storm thread"))
        .collect();
    all.sort_unstable();
    // Quantile `per_mille`/1000 by rank.
    let q = |per_mille: usize| all[(all.len() - 1) * per_mille / 1000];
    println!(
        "fence storm: {THREADS} threads x {ROUNDS} rounds, {HOLD:?} held, {reps} repetitions, \
         {} acquires in {wall:.2?}: wait median {:?}, p99 {:?}, p99.9 {:?}, max {:?}; \
         generation {}",
        all.len(),
        q(500),
        q(990),
        q(999),
        all[all.len() - 1],
        fence.generation()
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default().configure_from_args();
    uncontended(&mut c);
    c.final_summary();
    let reps = std::env::var("FENCE_STORM_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 20 });
    storm(reps);
}
