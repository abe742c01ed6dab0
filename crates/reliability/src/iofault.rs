//! The I/O-error sweep (SQLite style; TESTING.md §2.8 (a), "I/O-error sweep").
//!
//! ```text
//! for each workload W, fault kind F, mode M in {once, persistent}:
//!   for n = 1, 2, ...:                          (a sweep over every failure site)
//!     fresh MemoryVfs; arm F at its n-th matching operation (M)
//!     run W (catch panics: a panic is a failure)
//!     if the fault never fired: the sweep is complete (n - 1 sites)
//!     on the first error:
//!       mode once: the fault is gone (a disk-full fault is cleared: space was freed);
//!         probe: commit a transaction that rewrites every page on the SAME handle.
//!         After a failed write, sync or truncate of a commit or checkpoint the handle
//!         must refuse (latched, fsyncgate); an acknowledged probe there is a failure
//!       clear all faults; drop the connections
//!     reopen (process restart: same files)      verify_recovered, Bound::Durable
//!     power loss (DropAll) then reopen          verify_recovered, Bound::Durable
//! ```
//!
//! Kinds ([`FaultKind`]): `write` (fails, no effect), `sync` (fails and drops every
//! unsynced write of the file: Linux after an fsync error), `truncate`, `short_read`
//! (returns fewer bytes, zero-filled), `disk_full` (writes past a byte quota fail with
//! `Full`; swept over the quota in frame-sized steps for the first 64 frames, then in
//! steps of 25%: [`disk_full_quota`]), `shm_map`, and two compound kinds
//! that hit the *recovery* of a crashed image (the workload crashed at a seeded op, then
//! `KeepRandom`): `recovery_read` (a read fails during the reopen) and
//! `recovery_short_read`. For the compound kinds the faulted reopen must either fail
//! cleanly or read a state the oracle accepts, and a clean reopen afterwards must pass.
//! The sweeps run over the worker threads, cheap kinds first, until the budget runs out;
//! the stats say which sweeps completed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_testkit::rng::Rng;
use fsqlite_types::Cx;
use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryVfs};
use fsqlite_wal::Wal;
use serde_json::json;

use crate::coverage::{Response, record_response};
use crate::crashsim::{count_ops, run_guarded, vfs_seed};
use crate::model::{Bound, Model, page_digest};
use crate::verify::{Verified, verify_recovered};
use crate::workloads::{self, Workload, commit_images, commit_pages, observe, worker_db_path};
use crate::{Counters, Failure, FailureSink, HarnessReport, mix_seed, name_hash, panic_text};

/// A kind of injected I/O failure (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// `write` fails.
    Write,
    /// `sync` fails and drops the file's unsynced writes.
    Sync,
    /// `truncate` fails.
    Truncate,
    /// `read` returns fewer bytes than asked (zero-filled).
    ShortRead,
    /// Writes fail with `Full` once a byte quota is used up.
    DiskFull,
    /// `shm_map` fails.
    ShmMap,
    /// Taking a database-file lock fails (SQLITE_IOERR_LOCK).
    Lock,
    /// Taking a shm lock fails (SQLITE_IOERR_SHMLOCK).
    ShmLock,
    /// A read fails while a crashed image is being recovered.
    RecoveryRead,
    /// A read is short while a crashed image is being recovered.
    RecoveryShortRead,
}

impl FaultKind {
    /// Every kind, in report order.
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Write,
        FaultKind::Sync,
        FaultKind::Truncate,
        FaultKind::ShortRead,
        FaultKind::DiskFull,
        FaultKind::ShmMap,
        FaultKind::Lock,
        FaultKind::ShmLock,
        FaultKind::RecoveryRead,
        FaultKind::RecoveryShortRead,
    ];

    /// The name used in stats.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Truncate => "truncate",
            Self::ShortRead => "short_read",
            Self::DiskFull => "disk_full",
            Self::ShmMap => "shm_map",
            Self::Lock => "lock",
            Self::ShmLock => "shm_lock",
            Self::RecoveryRead => "recovery_read",
            Self::RecoveryShortRead => "recovery_short_read",
        }
    }

    /// True for the kinds that fault a recovery rather than the workload.
    pub const fn is_compound(self) -> bool {
        matches!(self, Self::RecoveryRead | Self::RecoveryShortRead)
    }

    /// The modes swept for this kind.
    pub fn modes(self) -> &'static [FaultRepeat] {
        match self {
            Self::DiskFull | Self::RecoveryRead | Self::RecoveryShortRead => &[FaultRepeat::Once],
            _ => &[FaultRepeat::Once, FaultRepeat::Persistent],
        }
    }

    /// The fault armed at site `n` (1-based).
    pub fn fault(self, n: u64, repeat: FaultRepeat, page_size: u32, short_len: usize) -> Fault {
        match self {
            Self::Write => Fault::fail(FaultOp::Write, n, repeat),
            Self::Sync => Fault::fail(FaultOp::Sync, n, repeat),
            Self::Truncate => Fault::fail(FaultOp::Truncate, n, repeat),
            Self::ShortRead | Self::RecoveryShortRead => Fault::short_read(n, short_len, repeat),
            Self::DiskFull => Fault::disk_full(disk_full_quota(n, page_size)),
            Self::ShmMap => Fault::fail(FaultOp::ShmMap, n, repeat),
            Self::Lock => Fault::fail(FaultOp::Lock, n, repeat),
            Self::ShmLock => Fault::fail(FaultOp::ShmLock, n, repeat),
            Self::RecoveryRead => Fault::fail(FaultOp::Read, n, repeat),
        }
    }
}

/// Sites of a disk-full sweep that advance one frame at a time; after them the quota
/// grows by a quarter per site.
pub const DISK_FULL_LINEAR_SITES: u64 = 64;

/// The byte quota of disk-full site `n` (1-based): `(n - 1)` frames for the first
/// [`DISK_FULL_LINEAR_SITES`] sites (every write of the first 64 frames' worth of bytes
/// fails in turn), then 25% more per site, so a large workload is sampled, not walked.
pub fn disk_full_quota(n: u64, page_size: u32) -> u64 {
    let frame = u64::from(page_size) + 24;
    let n = n.max(1);
    if n <= DISK_FULL_LINEAR_SITES {
        return (n - 1) * frame;
    }
    let mut q = (DISK_FULL_LINEAR_SITES - 1) * frame;
    for _ in DISK_FULL_LINEAR_SITES..n {
        q += (q / 4).max(frame);
    }
    q
}

/// The name of a mode.
pub const fn repeat_name(r: FaultRepeat) -> &'static str {
    match r {
        FaultRepeat::Once => "once",
        FaultRepeat::Persistent => "persistent",
    }
}

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct IoFaultConfig {
    /// The one seed.
    pub seed: u64,
    /// Wall-clock budget.
    pub budget: Duration,
    /// Workloads (default: all).
    pub workloads: Vec<Workload>,
    /// Fault kinds (default: all).
    pub kinds: Vec<FaultKind>,
    /// Worker threads.
    pub threads: usize,
    /// Largest site number tried per sweep (a bound for disk-full sweeps on big WALs).
    pub max_sites: u64,
}

impl IoFaultConfig {
    /// Defaults: every workload and kind, one thread, at most 4096 sites per sweep.
    pub fn new(seed: u64, budget: Duration) -> Self {
        Self {
            seed,
            budget,
            workloads: workloads::all(),
            kinds: FaultKind::ALL.to_vec(),
            threads: 1,
            max_sites: 4096,
        }
    }
}

/// The replay hint of a fault case.
fn replay_command(seed: u64, w: &str, kind: FaultKind, repeat: FaultRepeat, n: u64) -> String {
    format!(
        "cargo xtask io-fault --seed {seed:#x} --workload {w} --kind {} --mode {} --site {n}",
        kind.name(),
        repeat_name(repeat)
    )
}

/// Result of one faulted run.
struct SiteResult {
    fired: bool,
}

/// Expected to latch: a failed write, sync or truncate (or a full disk) in a commit or a
/// checkpoint.
fn latch_expected(kind: &str, e: &FrankenError) -> bool {
    matches!(kind, "commit" | "checkpoint")
        && match e {
            FrankenError::Full => true,
            FrankenError::Io { op, .. } => matches!(*op, "write" | "sync" | "truncate"),
            _ => false,
        }
}

/// Commits a transaction rewriting pages `1..=max(db_size)` on `conn` (its result is
/// fully determined whatever state it builds on). Returns whether it was acknowledged.
fn probe_commit(
    cx: &Cx,
    conn: &mut Wal<MemoryVfs>,
    model: &mut Model,
    seed: u64,
    txn: u64,
    page_size: u32,
) -> bool {
    let m = model.max_db_size().max(1);
    let pages: Vec<u32> = (1..=m).collect();
    let images = commit_images(seed, txn, &pages, page_size, m);
    let digests: Vec<(u32, u64)> = images.iter().map(|(p, b)| (*p, page_digest(b))).collect();
    let idx = model.attempt(txn, &digests, m);
    match commit_pages(cx, conn, &images, m) {
        Ok(_) => {
            model.ack(idx);
            true
        }
        Err(_) => false,
    }
}

/// Everything a site run needs.
struct SiteParams<'a> {
    seed: u64,
    w: &'a Workload,
    n_ops: u64,
    kind: FaultKind,
    repeat: FaultRepeat,
    worker: usize,
}

/// The sites a fault hit: the first for fail-once, every distinct one for fail-always.
pub fn distinct_sites(
    fired: Vec<fsqlite_vfs::IoSite>,
    repeat: FaultRepeat,
) -> Vec<fsqlite_vfs::IoSite> {
    let mut out: Vec<fsqlite_vfs::IoSite> = Vec::new();
    for s in fired {
        if !out.contains(&s) {
            out.push(s);
        }
        if repeat == FaultRepeat::Once {
            break;
        }
    }
    out
}

/// One run with the fault at site `n`.
fn run_site(
    p: &SiteParams<'_>,
    n: u64,
    counters: &mut Counters,
    failures: &mut FailureSink,
) -> SiteResult {
    let cx = Cx::new();
    let w = p.w;
    let path = worker_db_path(p.worker, w.name);
    let fail = |failures: &mut FailureSink, message: String| {
        failures.push(Failure {
            harness: "iofault",
            workload: w.name.to_owned(),
            case: n,
            variant: format!("{} {}", p.kind.name(), repeat_name(p.repeat)),
            seed: p.seed,
            message,
            replay: replay_command(p.seed, w.name, p.kind, p.repeat, n),
        });
    };
    let case_seed = mix_seed(&[p.seed, name_hash(w.name), name_hash(p.kind.name()), n]);
    let mut rng = Rng::new(case_seed);
    let short_len = rng.below(24) as usize;
    let fault = p.kind.fault(n, p.repeat, w.page_size, short_len);
    let vfs = MemoryVfs::with_seed(vfs_seed(p.seed, w));
    if p.kind.is_compound() {
        return run_recovery_site(p, n, &vfs, fault, &mut rng, counters, failures);
    }
    vfs.inject(fault);
    let out = match run_guarded(&cx, &vfs, &path, w, p.seed) {
        Ok(o) => o,
        Err(e) => {
            fail(failures, format!("panic under the fault: {e}"));
            return SiteResult { fired: true };
        }
    };
    // A persistent sweep only visits sites the once sweep saw fire.
    let fired = match p.kind {
        FaultKind::DiskFull => out
            .error
            .as_ref()
            .is_some_and(|e| matches!(e.error, FrankenError::Full)),
        _ => p.repeat == FaultRepeat::Persistent || vfs.armed_fault_count() == 0,
    };
    counters.inc("runs");
    if let Some(v) = &out.violation {
        fail(
            failures,
            format!("a live read under the fault returned a wrong state: {v}"),
        );
    }
    let mut model = out.model;
    let mut conn = out.conn;
    // Fail-once hits one site; fail-always hits every site it fails from the n-th on.
    let hits = distinct_sites(vfs.take_fired_faults(), p.repeat);
    let mut response = if out.error.is_some() {
        Response::Error
    } else {
        Response::Absorbed
    };
    if let Some(e) = &out.error {
        counters.inc(&format!("errors.{}", e.kind));
        if p.repeat == FaultRepeat::Once {
            vfs.clear_faults();
            if let Some(c) = conn.as_mut() {
                let expect = latch_expected(e.kind, &e.error);
                let acked = catch_unwind(AssertUnwindSafe(|| {
                    probe_commit(&cx, c, &mut model, case_seed, out.txns + 1, w.page_size)
                }));
                match acked {
                    Err(e) => fail(
                        failures,
                        format!("panic in the probe commit: {}", panic_text(e.as_ref())),
                    ),
                    Ok(acked) => {
                        counters.inc("latch_probes");
                        if expect {
                            counters.inc("latch_expected");
                            if acked {
                                fail(
                                    failures,
                                    format!(
                                        "the handle acknowledged a commit after a failed {} ({}) without a reopen: {e}",
                                        e.kind, e.error
                                    ),
                                );
                            } else {
                                counters.inc("latched");
                                response = Response::Latched;
                            }
                        } else if acked {
                            counters.inc("probe_acknowledged");
                            response = Response::Continued;
                        } else {
                            response = Response::Latched;
                        }
                    }
                }
            }
        }
    }
    if fired {
        counters.inc(&format!(
            "faults_injected.{}.{}",
            p.kind.name(),
            repeat_name(p.repeat)
        ));
        counters.inc("faults_injected");
        for site in &hits {
            record_response(counters, site, p.repeat, response);
        }
    }
    drop(conn);
    vfs.clear_faults();
    let reopen = vfs.fork();
    match catch_unwind(AssertUnwindSafe(|| {
        let mut c = Counters::default();
        let r = verify_recovered(
            &cx,
            &reopen,
            &path,
            w,
            &model,
            Bound::Durable,
            Some(case_seed),
            None,
            &mut c,
        );
        (r, c)
    })) {
        Err(e) => fail(
            failures,
            format!(
                "panic in the reopen after the fault: {}",
                panic_text(e.as_ref())
            ),
        ),
        Ok((Err(msg), _)) => fail(
            failures,
            format!(
                "reopen after the fault: {msg} (acked {}, attempted {}{})",
                model.acked(),
                model.attempted(),
                out.error
                    .as_ref()
                    .map(|e| format!("; the run stopped at {e}"))
                    .unwrap_or_default()
            ),
        ),
        Ok((Ok(_), c)) => {
            counters.merge(&c);
            counters.inc("recoveries_verified");
        }
    }
    let lost = vfs.fork_crashed(CrashMode::DropAll);
    match catch_unwind(AssertUnwindSafe(|| {
        let mut c = Counters::default();
        let r = verify_recovered(
            &cx,
            &lost,
            &path,
            w,
            &model,
            Bound::Durable,
            None,
            None,
            &mut c,
        );
        (r, c)
    })) {
        Err(e) => fail(
            failures,
            format!(
                "panic in the reopen after power loss: {}",
                panic_text(e.as_ref())
            ),
        ),
        Ok((Err(msg), _)) => fail(
            failures,
            format!(
                "power loss after the fault: {msg} (acked {}, attempted {})",
                model.acked(),
                model.attempted()
            ),
        ),
        Ok((Ok(_), c)) => {
            counters.merge(&c);
            counters.inc("recoveries_verified");
        }
    }
    let _ = p.n_ops;
    SiteResult { fired }
}

/// A compound site: crash the workload at a seeded op, then fault the n-th matching read
/// of the recovery.
#[allow(clippy::too_many_arguments, reason = "internal")]
fn run_recovery_site(
    p: &SiteParams<'_>,
    n: u64,
    vfs: &MemoryVfs,
    fault: Fault,
    rng: &mut Rng,
    counters: &mut Counters,
    failures: &mut FailureSink,
) -> SiteResult {
    let cx = Cx::new();
    let w = p.w;
    let path = worker_db_path(p.worker, w.name);
    let fail = |failures: &mut FailureSink, message: String| {
        failures.push(Failure {
            harness: "iofault",
            workload: w.name.to_owned(),
            case: n,
            variant: format!("{} {}", p.kind.name(), repeat_name(p.repeat)),
            seed: p.seed,
            message,
            replay: replay_command(p.seed, w.name, p.kind, p.repeat, n),
        });
    };
    // The crash point is fixed per sweep (not per site), so the sites of one sweep fault
    // the same recovery.
    let k = 1 + mix_seed(&[p.seed, name_hash(w.name), 0x636f_6d70]) % p.n_ops.max(1);
    vfs.set_crash_at_op(k);
    let out = match run_guarded(&cx, vfs, &path, w, p.seed) {
        Ok(o) => o,
        Err(e) => {
            fail(failures, format!("panic before the crash: {e}"));
            return SiteResult { fired: true };
        }
    };
    let model = out.model;
    drop(out.conn);
    let image = vfs.fork_crashed(CrashMode::KeepRandom {
        seed: mix_seed(&[p.seed, k]),
    });
    image.inject(fault);
    let max_pages = model.max_db_size().saturating_mul(2).saturating_add(16);
    let faulted = catch_unwind(AssertUnwindSafe(|| {
        Wal::open(&cx, Arc::new(image.clone()), &path, w.verify_options())
            .and_then(|mut c| observe(&cx, &mut c, max_pages))
    }));
    let fired = image.armed_fault_count() == 0;
    counters.inc("runs");
    let recovered = matches!(faulted, Ok(Ok(_)));
    match faulted {
        Err(e) => fail(
            failures,
            format!(
                "panic in a recovery under the fault: {}",
                panic_text(e.as_ref())
            ),
        ),
        Ok(Ok(obs)) => {
            if fired {
                counters.inc("faulted_recoveries_succeeded");
            }
            if let Err(v) = model.judge(&obs, Bound::Durable) {
                fail(
                    failures,
                    format!(
                        "a recovery under a {} fault read a wrong state: {v}",
                        p.kind.name()
                    ),
                );
            }
        }
        Ok(Err(_)) => counters.inc("faulted_recoveries_failed_cleanly"),
    }
    if fired {
        counters.inc(&format!("faults_injected.{}.once", p.kind.name()));
        counters.inc("faults_injected");
        if let Some(site) = image.take_fired_faults().first() {
            let r = if recovered {
                Response::Absorbed
            } else {
                Response::Error
            };
            record_response(counters, site, FaultRepeat::Once, r);
        }
    }
    image.clear_faults();
    let _ = rng;
    match catch_unwind(AssertUnwindSafe(|| {
        let mut c = Counters::default();
        let r = verify_recovered(
            &cx,
            &image.fork(),
            &path,
            w,
            &model,
            Bound::Durable,
            None,
            None,
            &mut c,
        );
        (r, c)
    })) {
        Err(e) => fail(
            failures,
            format!("panic in the clean reopen: {}", panic_text(e.as_ref())),
        ),
        Ok((Err(msg), _)) => fail(
            failures,
            format!("clean reopen after a faulted recovery: {msg}"),
        ),
        Ok((
            Ok(Verified::Matched { .. } | Verified::CleanError(_) | Verified::Unmatched(_)),
            c,
        )) => {
            counters.merge(&c);
            counters.inc("recoveries_verified");
        }
    }
    SiteResult { fired }
}

/// One sweep: (workload, kind), every mode of the kind.
#[derive(Clone, Copy, Debug)]
struct Sweep {
    wi: usize,
    kind: FaultKind,
}

/// Runs the sweep (see the module doc): mode once over sites `1..` until the fault stops
/// firing (that finds the number of sites S), the cap, or the deadline; then mode
/// persistent over sites `1..=S`. Returns `(mode, sites, complete)` per mode.
fn run_sweep(
    cfg: &IoFaultConfig,
    s: Sweep,
    n_ops: u64,
    worker: usize,
    deadline: Instant,
    counters: &mut Counters,
    failures: &mut FailureSink,
) -> Vec<(FaultRepeat, u64, bool)> {
    let mut p = SiteParams {
        seed: cfg.seed,
        w: &cfg.workloads[s.wi],
        n_ops,
        kind: s.kind,
        repeat: FaultRepeat::Once,
        worker,
    };
    let mut out = Vec::new();
    let mut n = 1;
    let (sites, complete) = loop {
        if Instant::now() >= deadline || n > cfg.max_sites {
            break (n - 1, false);
        }
        if !run_site(&p, n, counters, failures).fired {
            break (n - 1, true);
        }
        n += 1;
    };
    out.push((FaultRepeat::Once, sites, complete));
    if s.kind.modes().contains(&FaultRepeat::Persistent) {
        p.repeat = FaultRepeat::Persistent;
        let mut done = 0;
        for n in 1..=sites {
            if Instant::now() >= deadline {
                break;
            }
            run_site(&p, n, counters, failures);
            done = n;
        }
        out.push((FaultRepeat::Persistent, done, complete && done == sites));
    }
    out
}

/// Runs the I/O-error sweep (see the module doc).
pub fn run(cfg: &IoFaultConfig) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let n_ops: Vec<u64> = cfg
        .workloads
        .iter()
        .map(|w| match count_ops(cfg.seed, w, 0) {
            Ok(n) => n,
            Err(msg) => {
                failures.push(Failure {
                    harness: "iofault",
                    workload: w.name.to_owned(),
                    case: 0,
                    variant: "clean run".into(),
                    seed: cfg.seed,
                    message: msg,
                    replay: String::new(),
                });
                0
            }
        })
        .collect();
    // The sites clean runs reach (the coverage table's rows).
    let mut seen = Counters::default();
    for w in &cfg.workloads {
        let vfs = MemoryVfs::with_seed(vfs_seed(cfg.seed, w));
        vfs.record_sites(true);
        if let Ok(out) = run_guarded(&Cx::new(), &vfs, &worker_db_path(0, w.name), w, cfg.seed) {
            drop(out.conn);
        }
        crate::coverage::record_seen(&mut seen, &vfs.seen_sites());
    }
    // Cheap kinds first, every workload of a kind before the next kind: a short budget
    // completes whole kinds rather than whole workloads.
    let cost = |k: FaultKind| match k {
        FaultKind::Truncate | FaultKind::ShmMap | FaultKind::Lock | FaultKind::ShmLock => 0,
        FaultKind::Sync | FaultKind::Write => 1,
        FaultKind::RecoveryRead | FaultKind::RecoveryShortRead => 2,
        FaultKind::ShortRead => 3,
        FaultKind::DiskFull => 4,
    };
    let mut kinds = cfg.kinds.clone();
    kinds.sort_by_key(|k| cost(*k));
    let mut order = Vec::new();
    for kind in &kinds {
        for (wi, n) in n_ops.iter().enumerate() {
            if *n > 0 {
                order.push(Sweep { wi, kind: *kind });
            }
        }
    }
    // Each seed starts elsewhere in the order, so runs with consecutive seeds (the soak's
    // rounds) between them complete every sweep even when one budget cannot.
    if !order.is_empty() {
        let k = (cfg.seed % order.len() as u64) as usize;
        order.rotate_left(k);
    }
    let next = AtomicUsize::new(0);
    type Done = (Sweep, Vec<(FaultRepeat, u64, bool)>);
    let results: Vec<(Counters, FailureSink, Vec<Done>)> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..cfg.threads.max(1))
            .map(|worker| {
                let order = &order;
                let next = &next;
                let n_ops = &n_ops;
                scope.spawn(move || {
                    let mut c = Counters::default();
                    let mut f = FailureSink::default();
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(s) = order.get(i).copied() else {
                            break;
                        };
                        if Instant::now() >= deadline {
                            break;
                        }
                        let modes =
                            run_sweep(cfg, s, n_ops[s.wi], worker, deadline, &mut c, &mut f);
                        done.push((s, modes));
                    }
                    (c, f, done)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Counters::default(), FailureSink::default(), Vec::new()))
            })
            .collect()
    });
    let mut totals = seen;
    let mut sweeps_json = Vec::new();
    let mut complete = 0u64;
    let mut sites_total = 0u64;
    for (c, f, done) in results {
        totals.merge(&c);
        failures.merge(f);
        for (s, modes) in done {
            for (repeat, sites, ok) in modes {
                complete += u64::from(ok);
                sites_total += sites;
                sweeps_json.push(json!({
                    "workload": cfg.workloads[s.wi].name,
                    "kind": s.kind.name(),
                    "mode": repeat_name(repeat),
                    "sites": sites,
                    "complete": ok,
                }));
            }
        }
    }
    let stats = json!({
        "harness": "iofault",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "threads": cfg.threads,
        "sweeps_planned": order.iter().map(|s| s.kind.modes().len()).sum::<usize>(),
        "sweeps_run": sweeps_json.len(),
        "sweeps_complete": complete,
        "fault_sites": sites_total,
        "faults_injected": totals.get("faults_injected"),
        "recoveries_verified": totals.get("recoveries_verified"),
        "totals": totals.to_json(),
        "sweeps": sweeps_json,
        "failures": failures.count,
    });
    HarnessReport {
        stats,
        failures: failures.kept,
        failure_count: failures.count,
    }
}

/// Replays one site (`cargo xtask io-fault`).
pub fn replay(
    seed: u64,
    name: &str,
    kind: &str,
    mode: &str,
    n: u64,
) -> Result<HarnessReport, String> {
    let w = workloads::by_name(name).ok_or_else(|| format!("no workload named {name:?}"))?;
    let kind = FaultKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .ok_or_else(|| format!("no fault kind {kind:?}"))?;
    let repeat = match mode {
        "once" => FaultRepeat::Once,
        "persistent" => FaultRepeat::Persistent,
        _ => return Err(format!("mode must be once or persistent, not {mode:?}")),
    };
    let n_ops = count_ops(seed, &w, 0)?;
    let p = SiteParams {
        seed,
        w: &w,
        n_ops,
        kind,
        repeat,
        worker: 0,
    };
    let mut c = Counters::default();
    let mut f = FailureSink::default();
    let r = run_site(&p, n, &mut c, &mut f);
    Ok(HarnessReport {
        stats: json!({"harness": "iofault-replay", "fired": r.fired, "counters": c.to_json()}),
        failures: f.kept,
        failure_count: f.count,
    })
}
