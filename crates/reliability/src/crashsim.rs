//! Exhaustive crash-point enumeration with seeded damage (TH3 style; TESTING.md §2.8 (a)).
//!
//! ```text
//! for each workload W:
//!     N = VFS operations of one clean run of W              (MemoryVfs::op_count)
//! for round r = 0, 1, ... (until the budget or max_rounds):
//!   for each crash point k in 1..=N+1 (a seeded permutation; workloads interleaved):
//!     fresh MemoryVfs (same seed: same salts, same op sequence); crash point at op k
//!     run W: op k and every later op fail ("power loss"); k = N+1 never fires
//!     (the run must reach k exactly: a different op count is a failure)
//!     for each damage variant v in 0..D:
//!        image = fork_crashed(mode_v)      DropAll | KeepAll | KeepRandom | Torn 512/4096
//!                                          | Garbage 512/4096  (seeded by seed, W, k, r, v)
//!        Garbage that hit bytes no pending write changed breaks powersafe overwrite:
//!        that image is "beyond the fault model" (checked with Bound::AnyPrefix)
//!        W.compound: crash again at a seeded op inside a reopen of the image, then
//!        fork_crashed(second mode)          (recovery of a crashed recovery)
//!        every third variant: a damaged -shm (zeros / random / torn copies / bad
//!        checksum) is attached while the database is reopened
//!        verify::verify_recovered(image, model, bound)   (oracle + structure
//!                                          + continuation on every c-th variant)
//! ```
//!
//! Round 0 visits every crash point once (100% of op indices when the budget allows); later
//! rounds revisit them with fresh damage seeds (the deterministic modes DropAll and
//! KeepAll are replaced by seeded ones there). A failure names the seed, workload, case
//! `k`, round and variant, and the command that replays the case:
//! `cargo xtask crash-sim --seed S --workload W --case K [--round R]`.

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fsqlite_testkit::rng::Rng;
use fsqlite_types::Cx;
use fsqlite_vfs::{CrashMode, MemoryVfs};
use serde_json::json;

use crate::model::Bound;
use crate::verify::{Verified, reopen_ops, verify_recovered};
use crate::workloads::{self, ShmDamage, Workload, damage_shm, wal_path, worker_db_path};
use crate::{Counters, Failure, FailureSink, HarnessReport, mix_seed, name_hash, panic_text};

/// Damage variants per crash point unless configured otherwise.
pub const DEFAULT_VARIANTS: usize = 12;

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct CrashSimConfig {
    /// The one seed every choice derives from.
    pub seed: u64,
    /// Wall-clock budget (checked between cases).
    pub budget: Duration,
    /// Damage variants per crash point (D).
    pub variants: usize,
    /// The workloads (default: [`workloads::all`]).
    pub workloads: Vec<Workload>,
    /// Worker threads.
    pub threads: usize,
    /// Run the post-recovery continuation on every n-th variant (0: never).
    pub continuation_every: usize,
    /// Stop after this many rounds (1: one full enumeration).
    pub max_rounds: usize,
}

impl CrashSimConfig {
    /// Defaults: every workload, [`DEFAULT_VARIANTS`], one thread, continuation on every
    /// second variant, rounds until the budget runs out.
    pub fn new(seed: u64, budget: Duration) -> Self {
        Self {
            seed,
            budget,
            variants: DEFAULT_VARIANTS,
            workloads: workloads::all(),
            threads: 1,
            continuation_every: 2,
            max_rounds: usize::MAX,
        }
    }
}

/// A short name of a crash mode for stats.
pub fn mode_name(m: CrashMode) -> String {
    match m {
        CrashMode::DropAll => "drop_all".to_owned(),
        CrashMode::KeepAll => "keep_all".to_owned(),
        CrashMode::KeepRandom { .. } => "keep_random".to_owned(),
        CrashMode::Torn { sector, .. } => format!("torn_{sector}"),
        CrashMode::Garbage { sector, .. } => format!("garbage_{sector}"),
    }
}

/// Damage variant `v` of crash point `k` in round `round` of workload `wi` (see the
/// module doc): the crash mode and the `-shm` damage, if any.
pub fn damage_variant(
    seed: u64,
    wi: u64,
    k: u64,
    round: usize,
    v: usize,
) -> (CrashMode, Option<ShmDamage>) {
    let s = mix_seed(&[seed, wi, k, round as u64, v as u64]);
    let slot = if v < 8 { v } else { 2 + (v - 8) % 6 };
    let slot = if round > 0 && slot < 2 {
        2 + (s as usize) % 6
    } else {
        slot
    };
    let mode = match slot {
        0 => CrashMode::DropAll,
        1 => CrashMode::KeepAll,
        3 => CrashMode::Torn {
            seed: s,
            sector: 512,
        },
        4 => CrashMode::Torn {
            seed: s,
            sector: 4096,
        },
        5 => CrashMode::Garbage {
            seed: s,
            sector: 512,
        },
        6 => CrashMode::Garbage {
            seed: s,
            sector: 4096,
        },
        _ => CrashMode::KeepRandom { seed: s },
    };
    let shm = (v % 3 == 2).then(|| ShmDamage::ALL[(v / 3 + round) % ShmDamage::ALL.len()]);
    (mode, shm)
}

/// True when no byte of `paths` changed by the crash was a byte that no pending write had
/// changed (durable == live before, different after): powersafe overwrite held.
pub fn psow_respected(pre: &MemoryVfs, post: &MemoryVfs, paths: &[PathBuf]) -> bool {
    for p in paths {
        let durable = pre.durable_contents(p).unwrap_or_default();
        let live = pre.live_contents(p).unwrap_or_default();
        let after = post.live_contents(p).unwrap_or_default();
        let n = durable.len().min(live.len()).min(after.len());
        if (0..n).any(|i| after[i] != durable[i] && live[i] == durable[i]) {
            return false;
        }
    }
    true
}

/// The VFS seed of workload `w` (salts and every VFS choice): fixed per (seed, workload)
/// so every case replays the same operation sequence.
pub fn vfs_seed(seed: u64, w: &Workload) -> u64 {
    mix_seed(&[seed, name_hash(w.name), 1])
}

/// The page-content seed of workload `w`.
pub fn content_seed(seed: u64, w: &Workload) -> u64 {
    mix_seed(&[seed, name_hash(w.name), 2])
}

/// Runs `w` on `vfs` (a clone of the handle) at `path` with `w`'s content seed, catching a
/// panic as its message.
pub fn run_guarded(
    cx: &Cx,
    vfs: &MemoryVfs,
    path: &Path,
    w: &Workload,
    seed: u64,
) -> Result<workloads::RunOutcome<MemoryVfs>, String> {
    catch_unwind(AssertUnwindSafe(|| {
        workloads::run(cx, &Arc::new(vfs.clone()), path, w, content_seed(seed, w))
    }))
    .map_err(|p| panic_text(p.as_ref()))
}

/// The replay command of a case.
pub fn replay_command(seed: u64, w: &str, k: u64, round: usize) -> String {
    let mut s = format!("cargo xtask crash-sim --seed {seed:#x} --workload {w} --case {k}");
    if round > 0 {
        let _ = write!(s, " --round {round}");
    }
    s
}

/// Counts the VFS operations of one clean run of `w` (and checks the run: it must finish
/// without error and its live reads must match the model).
pub fn count_ops(seed: u64, w: &Workload, worker: usize) -> Result<u64, String> {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(vfs_seed(seed, w));
    let path = worker_db_path(worker, w.name);
    let out = run_guarded(&cx, &vfs, &path, w, seed)
        .map_err(|p| format!("the clean run panicked: {p}"))?;
    if let Some(v) = out.violation {
        return Err(format!("the clean run read a wrong state: {v}"));
    }
    if let Some(e) = out.error {
        return Err(format!("the clean run failed: {e}"));
    }
    drop(out.conn);
    Ok(vfs.op_count())
}

/// Everything one case needs besides its number.
#[derive(Clone, Copy, Debug)]
pub struct CaseParams<'a> {
    /// The run seed.
    pub seed: u64,
    /// The workload.
    pub w: &'a Workload,
    /// A number for the workload mixed into damage seeds ([`name_hash`] of its name).
    pub wi: u64,
    /// Operations of a clean run (N).
    pub n_ops: u64,
    /// The round.
    pub round: usize,
    /// Damage variants (D).
    pub variants: usize,
    /// Continuation on every n-th variant (0: never).
    pub continuation_every: usize,
    /// The worker (chooses the database path).
    pub worker: usize,
}

/// Runs crash point `k` (see the module doc) and verifies every damage variant.
pub fn run_case(p: &CaseParams<'_>, k: u64, counters: &mut Counters, failures: &mut FailureSink) {
    let cx = Cx::new();
    let w = p.w;
    let path = worker_db_path(p.worker, w.name);
    let fail = |failures: &mut FailureSink, variant: String, message: String| {
        failures.push(Failure {
            harness: "crashsim",
            workload: w.name.to_owned(),
            case: k,
            variant,
            seed: p.seed,
            message,
            replay: replay_command(p.seed, w.name, k, p.round),
        });
    };
    let vfs = MemoryVfs::with_seed(vfs_seed(p.seed, w));
    let crashes = k <= p.n_ops;
    if crashes {
        vfs.set_crash_at_op(k);
    }
    let out = match run_guarded(&cx, &vfs, &path, w, p.seed) {
        Ok(o) => o,
        Err(e) => {
            fail(
                failures,
                "run".into(),
                format!("panic while running to the crash point: {e}"),
            );
            return;
        }
    };
    counters.inc("cases");
    if let Some(v) = &out.violation {
        fail(
            failures,
            "run".into(),
            format!("live read before the crash: {v}"),
        );
        return;
    }
    let model = out.model;
    drop(out.conn);
    if crashes && vfs.crashed_at() != Some(k) {
        fail(
            failures,
            "run".into(),
            format!(
                "crash point {k} was not reached (crashed at {:?}; the clean run has {} ops): the operation sequence is not deterministic{}",
                vfs.crashed_at(),
                p.n_ops,
                out.error
                    .as_ref()
                    .map(|e| format!("; error: {e}"))
                    .unwrap_or_default()
            ),
        );
        return;
    }
    if !crashes && let Some(e) = &out.error {
        fail(
            failures,
            "run".into(),
            format!("the run failed without a crash point: {e}"),
        );
        return;
    }
    if !crashes {
        counters.inc("clean_completions");
    }
    let paths = [path.clone(), wal_path(&path)];
    for v in 0..p.variants {
        let (mode, shm) = damage_variant(p.seed, p.wi, k, p.round, v);
        let label = format!(
            "round {} variant {v} ({}{})",
            p.round,
            mode_name(mode),
            shm.map(|d| format!(" + shm {}", d.name()))
                .unwrap_or_default()
        );
        let mut image = vfs.fork_crashed(mode);
        let mut bound = Bound::Durable;
        if matches!(mode, CrashMode::Garbage { .. }) && !psow_respected(&vfs, &image, &paths) {
            bound = Bound::AnyPrefix;
            counters.inc("garbage_beyond_psow");
        }
        let vseed = mix_seed(&[p.seed, p.wi, k, p.round as u64, v as u64, 7]);
        let mut rng = Rng::new(vseed);
        if w.compound {
            match compound_crash(&cx, &image, &path, w, &model, &mut rng) {
                Ok(Some(next)) => {
                    image = next;
                    counters.inc("compound_crashes");
                }
                Ok(None) => {}
                Err(msg) => {
                    fail(failures, label, msg);
                    continue;
                }
            }
        }
        let hold = match shm.map(|d| damage_shm(&cx, &image, &path, d, &mut rng)) {
            None => None,
            Some(Ok(f)) => {
                counters.inc("shm_damaged_reopens");
                Some(f)
            }
            Some(Err(e)) => {
                fail(
                    failures,
                    label,
                    format!("could not plant the damaged -shm: {e}"),
                );
                continue;
            }
        };
        let cont = (p.continuation_every > 0 && v % p.continuation_every == 0).then_some(vseed);
        let r = catch_unwind(AssertUnwindSafe(|| {
            verify_recovered(&cx, &image, &path, w, &model, bound, cont, hold, counters)
        }));
        counters.inc(&format!("mode.{}", mode_name(mode)));
        match r {
            Err(e) => fail(
                failures,
                label,
                format!(
                    "panic during recovery or verification: {}",
                    panic_text(e.as_ref())
                ),
            ),
            Ok(Err(msg)) => fail(
                failures,
                label,
                format!(
                    "{msg} (acked state {}, attempted {}, crash {})",
                    model.acked(),
                    model.attempted(),
                    if crashes {
                        format!("at op {k} of {}", p.n_ops)
                    } else {
                        "after the run".into()
                    }
                ),
            ),
            Ok(Ok(Verified::Matched { .. })) => {
                if bound == Bound::Durable {
                    counters.inc("recoveries_verified");
                } else {
                    counters.inc("beyond_model_matched");
                }
            }
            Ok(Ok(Verified::CleanError(_) | Verified::Unmatched(_))) => {}
        }
    }
}

/// Crashes inside a reopen of `image` at a seeded operation, then crashes the result
/// again with a seeded mode. `Ok(None)` when the reopen performs no operation.
fn compound_crash(
    cx: &Cx,
    image: &MemoryVfs,
    path: &Path,
    w: &Workload,
    model: &crate::model::Model,
    rng: &mut Rng,
) -> Result<Option<MemoryVfs>, String> {
    let max_pages = model.max_db_size().saturating_mul(2).saturating_add(16);
    let probe = image.fork();
    let m = match catch_unwind(AssertUnwindSafe(|| {
        reopen_ops(cx, &probe, path, w, max_pages)
    })) {
        Ok(Ok(m)) => m,
        // The verification proper reports an open that fails.
        Ok(Err(_)) => return Ok(None),
        Err(e) => return Err(format!("panic in a reopen: {}", panic_text(e.as_ref()))),
    };
    if m == 0 {
        return Ok(None);
    }
    let j = 1 + rng.below(m);
    let second = image.fork();
    second.set_crash_at_op(j);
    let r = catch_unwind(AssertUnwindSafe(|| {
        if let Ok(mut wal) =
            fsqlite_wal::Wal::open(cx, Arc::new(second.clone()), path, w.verify_options())
        {
            let _ = workloads::observe(cx, &mut wal, max_pages);
        }
    }));
    if let Err(e) = r {
        return Err(format!(
            "panic in a reopen crashed at its op {j}: {}",
            panic_text(e.as_ref())
        ));
    }
    let s = rng.next_u64();
    let mode2 = match rng.below(4) {
        0 => CrashMode::DropAll,
        1 => CrashMode::KeepAll,
        2 => CrashMode::KeepRandom { seed: s },
        _ => CrashMode::Torn {
            seed: s,
            sector: 512,
        },
    };
    Ok(Some(second.fork_crashed(mode2)))
}

/// Per-workload bookkeeping of a run.
#[derive(Debug, Default)]
struct WorkloadStats {
    ops: u64,
    first_round_cases: u64,
    counters: Counters,
}

/// Runs the crash simulator (see the module doc) and returns its stats and failures.
pub fn run(cfg: &CrashSimConfig) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let mut per: Vec<WorkloadStats> = cfg
        .workloads
        .iter()
        .map(|_| WorkloadStats::default())
        .collect();
    for (wi, w) in cfg.workloads.iter().enumerate() {
        match count_ops(cfg.seed, w, 0) {
            Ok(n) => per[wi].ops = n,
            Err(msg) => failures.push(Failure {
                harness: "crashsim",
                workload: w.name.to_owned(),
                case: 0,
                variant: "clean run".into(),
                seed: cfg.seed,
                message: msg,
                replay: replay_command(cfg.seed, w.name, 0, 0),
            }),
        }
    }
    // Round order: per workload a seeded permutation of 1..=N+1, workloads interleaved.
    let perms: Vec<Vec<u64>> = per
        .iter()
        .enumerate()
        .map(|(wi, s)| {
            if s.ops == 0 {
                return Vec::new();
            }
            let mut ks: Vec<u64> = (1..=s.ops + 1).collect();
            let mut rng = Rng::new(mix_seed(&[cfg.seed, wi as u64, 0x7065_726d]));
            for i in (1..ks.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                ks.swap(i, j);
            }
            ks
        })
        .collect();
    let longest = perms.iter().map(Vec::len).max().unwrap_or(0);
    let mut order: Vec<(usize, u64)> = Vec::new();
    for j in 0..longest {
        for (wi, ks) in perms.iter().enumerate() {
            if let Some(&k) = ks.get(j) {
                order.push((wi, k));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results = run_workers(cfg, &order, &per, &next, deadline);
    for (wi_counters, first_round, sink) in results {
        for (wi, c) in wi_counters.into_iter().enumerate() {
            per[wi].counters.merge(&c);
        }
        for (wi, n) in first_round.into_iter().enumerate() {
            per[wi].first_round_cases += n;
        }
        failures.merge(sink);
    }
    let taken = next
        .load(Ordering::Relaxed)
        .min(order.len().saturating_mul(cfg.max_rounds));
    let full_rounds = if order.is_empty() {
        0
    } else {
        taken / order.len()
    };
    let mut totals = Counters::default();
    let mut wl = Vec::new();
    for (w, s) in cfg.workloads.iter().zip(&per) {
        totals.merge(&s.counters);
        let points = if s.ops == 0 { 0 } else { s.ops + 1 };
        wl.push(json!({
            "name": w.name,
            "about": w.about,
            "page_size": w.page_size,
            "ops": s.ops,
            "crash_points": points,
            "crash_points_covered": s.first_round_cases,
            "coverage_pct": if points == 0 { 0.0 } else { 100.0 * s.first_round_cases as f64 / points as f64 },
            "counters": s.counters.to_json(),
        }));
    }
    let points: u64 = per
        .iter()
        .map(|s| if s.ops == 0 { 0 } else { s.ops + 1 })
        .sum();
    let covered: u64 = per.iter().map(|s| s.first_round_cases).sum();
    let stats = json!({
        "harness": "crashsim",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "threads": cfg.threads,
        "variants_per_point": cfg.variants,
        "workload_count": cfg.workloads.len(),
        "crash_points": points,
        "crash_points_covered": covered,
        "coverage_pct": if points == 0 { 0.0 } else { 100.0 * covered as f64 / points as f64 },
        "full_rounds": full_rounds,
        "cases_run": totals.get("cases"),
        "recoveries_verified": totals.get("recoveries_verified"),
        "totals": totals.to_json(),
        "workloads": wl,
        "failures": failures.count,
    });
    HarnessReport {
        stats,
        failures: failures.kept,
        failure_count: failures.count,
    }
}

type WorkerResult = (Vec<Counters>, Vec<u64>, FailureSink);

/// Runs the workers over `order` until the deadline or `max_rounds`.
fn run_workers(
    cfg: &CrashSimConfig,
    order: &[(usize, u64)],
    per: &[WorkloadStats],
    next: &AtomicUsize,
    deadline: Instant,
) -> Vec<WorkerResult> {
    if order.is_empty() {
        return Vec::new();
    }
    let nw = cfg.workloads.len();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..cfg.threads.max(1))
            .map(|worker| {
                scope.spawn(move || {
                    let mut counters = vec![Counters::default(); nw];
                    let mut first = vec![0u64; nw];
                    let mut sink = FailureSink::default();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let round = i / order.len();
                        if round >= cfg.max_rounds {
                            break;
                        }
                        let (wi, k) = order[i % order.len()];
                        let params = CaseParams {
                            seed: cfg.seed,
                            w: &cfg.workloads[wi],
                            wi: name_hash(cfg.workloads[wi].name),
                            n_ops: per[wi].ops,
                            round,
                            variants: cfg.variants,
                            continuation_every: cfg.continuation_every,
                            worker,
                        };
                        run_case(&params, k, &mut counters[wi], &mut sink);
                        if round == 0 {
                            first[wi] += 1;
                        }
                    }
                    (counters, first, sink)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Vec::new(), Vec::new(), FailureSink::default()))
            })
            .collect()
    })
}

/// Replays one case (`cargo xtask crash-sim`): crash point `k` of workload `name` in
/// `round`, with `variants` damage variants and the continuation on every variant.
pub fn replay(
    seed: u64,
    name: &str,
    k: u64,
    round: usize,
    variants: usize,
) -> Result<HarnessReport, String> {
    let all = workloads::all();
    let w = all.iter().find(|w| w.name == name).ok_or_else(|| {
        format!(
            "no workload named {name:?}; known: {}",
            all.iter().map(|w| w.name).collect::<Vec<_>>().join(", ")
        )
    })?;
    let n_ops = count_ops(seed, w, 0)?;
    let params = CaseParams {
        seed,
        w,
        wi: name_hash(w.name),
        n_ops,
        round,
        variants,
        continuation_every: 1,
        worker: 0,
    };
    let mut counters = Counters::default();
    let mut sink = FailureSink::default();
    run_case(&params, k, &mut counters, &mut sink);
    Ok(HarnessReport {
        stats: json!({
            "harness": "crashsim-replay",
            "seed": format!("{seed:#018x}"),
            "workload": name,
            "case": k,
            "round": round,
            "ops": n_ops,
            "counters": counters.to_json(),
        }),
        failures: sink.kept,
        failure_count: sink.count,
    })
}
