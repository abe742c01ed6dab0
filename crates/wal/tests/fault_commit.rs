//! I/O-error sweep over a `Wal` workload on `MemoryVfs` (TESTING.md §2.8 (a), "I/O-error
//! sweep", SQLite style).
//!
//! For each fault kind — write fails, sync fails (and, as on Linux, drops the file's
//! unsynced writes), truncate fails, short read, disk full, `shm_map` fails — in two
//! modes (the fault fires once / from then on), the fault is armed at its Nth matching
//! operation for N = 1, 2, … until the workload completes without the fault firing (for
//! a full disk: the byte budget grows until the workload fits). Each run drives the
//! seeded workload of `conn_model` with retries (a failed commit is retried with the same
//! pages, after a reopen when the handle refuses more writes), and checks:
//!
//! - every call returns (no panic); an error is just counted by kind;
//! - after a sync failure surfaced from a commit or checkpoint, the handle is latched:
//!   `begin_write` and `checkpoint` fail until it is reopened;
//! - a read that returns `Ok` returns exactly the model's bytes (never zeros or stale
//!   data standing in for a failed or short read);
//! - at the end, with the faults cleared, the reopened database (as it is, and after a
//!   power loss that drops every unsynced write) equals the model state of some commit
//!   in `acknowledged..=attempted`.
//!
//! Figures go to `target/test-stats/fault_commit.json`.

mod conn_model;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use conn_model::{Model, Step, Workload, check_state, content, observe, options, reopen_and_check};
use fsqlite_error::FrankenError;
use fsqlite_testkit::serde_json;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryVfs};
use fsqlite_wal::Wal;

/// Commit attempts per step before the run gives up (persistent faults).
const COMMIT_TRIES: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Write,
    Sync,
    Truncate,
    ShortRead,
    DiskFull,
    ShmMap,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Write,
        Kind::Sync,
        Kind::Truncate,
        Kind::ShortRead,
        Kind::DiskFull,
        Kind::ShmMap,
    ];

    fn fault(self, n: u64, repeat: FaultRepeat, frame_bytes: u64) -> Fault {
        match self {
            Kind::Write => Fault::fail(FaultOp::Write, n, repeat),
            Kind::Sync => Fault::fail(FaultOp::Sync, n, repeat),
            Kind::Truncate => Fault::fail(FaultOp::Truncate, n, repeat),
            Kind::ShortRead => Fault::short_read(n, 7, repeat),
            Kind::DiskFull => Fault::disk_full((n - 1) * frame_bytes / 2),
            Kind::ShmMap => Fault::fail(FaultOp::ShmMap, n, repeat),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    runs: u64,
    faults_fired: u64,
    errors_by_kind: BTreeMap<String, u64>,
    latch_checks: u64,
    reads_verified: u64,
    recoveries_verified: u64,
    completed_runs: u64,
    violations: Vec<String>,
}

fn error_kind(e: &FrankenError) -> String {
    match e {
        FrankenError::Io { op, .. } => format!("Io({op})"),
        other => format!("{:?}", other.error_code()),
    }
}

fn is_sync_failure(e: &FrankenError) -> bool {
    matches!(e, FrankenError::Io { op: "sync", .. })
}

struct Driver<'a> {
    cx: Cx,
    vfs: Arc<MemoryVfs>,
    wl: &'a Workload,
    model: &'a Model,
    acked: u32,
    attempted: u32,
    tally: &'a mut Tally,
    label: String,
    /// Disk full "once": free the space after the first error.
    free_space_on_error: bool,
}

impl Driver<'_> {
    fn note(&mut self, e: &FrankenError) {
        *self.tally.errors_by_kind.entry(error_kind(e)).or_default() += 1;
        if self.free_space_on_error {
            self.vfs.clear_faults();
        }
    }

    fn open(&mut self) -> Option<Wal<MemoryVfs>> {
        for _ in 0..COMMIT_TRIES {
            match Wal::open(
                &self.cx,
                Arc::clone(&self.vfs),
                &self.wl.db,
                options(self.wl.page_size),
            ) {
                Ok(w) => return Some(w),
                Err(e) => self.note(&e),
            }
        }
        None
    }

    /// After a sync failure: the handle must refuse writes and checkpoints.
    fn check_latched(&mut self, w: &mut Wal<MemoryVfs>, what: &str) {
        self.tally.latch_checks += 1;
        if let Ok(t) = w.begin_write(&self.cx) {
            drop(t);
            self.tally.violations.push(format!(
                "{}: after a failed sync in {what}, begin_write still succeeds",
                self.label
            ));
        }
        if w.checkpoint(&self.cx, fsqlite_wal::CheckpointMode::Passive)
            .is_ok()
        {
            self.tally.violations.push(format!(
                "{}: after a failed sync in {what}, checkpoint still succeeds",
                self.label
            ));
        }
    }

    /// Reads every page; `Ok` data must equal the acknowledged state.
    fn verify_reads(&mut self, w: &mut Wal<MemoryVfs>) {
        match observe(&self.cx, w) {
            Ok(obs) => {
                self.tally.reads_verified += 1;
                if let Err(e) =
                    check_state(self.wl.page_size, self.model, &obs, self.acked, self.acked)
                {
                    self.tally.violations.push(format!(
                        "{}: a successful read returned wrong data: {e}",
                        self.label
                    ));
                }
            }
            Err(e) => self.note(&e),
        }
    }

    fn commit(
        w: &mut Wal<MemoryVfs>,
        cx: &Cx,
        wl: &Workload,
        pages: &[u32],
        txn: u32,
        db_size: u32,
    ) -> fsqlite_error::Result<u32> {
        let mut t = w.begin_write(cx)?;
        for p in pages {
            t.write_page(
                cx,
                PageNumber::new(*p).unwrap(),
                &content(wl.page_size, *p, txn),
            )?;
        }
        t.commit(cx, db_size)
    }

    /// Runs the workload; returns true when every step completed.
    fn run(&mut self) -> bool {
        let Some(mut w) = self.open() else {
            return false;
        };
        for step in &self.wl.steps {
            match step {
                Step::Commit {
                    txn,
                    pages,
                    db_size,
                } => {
                    let mut done = false;
                    for _ in 0..COMMIT_TRIES {
                        self.attempted = *txn;
                        match Self::commit(&mut w, &self.cx, self.wl, pages, *txn, *db_size) {
                            Ok(_) => {
                                self.acked = *txn;
                                done = true;
                                break;
                            }
                            Err(e) => {
                                self.note(&e);
                                if is_sync_failure(&e) {
                                    self.check_latched(&mut w, "a commit");
                                }
                                // Reopen (recovers whatever the failed commit left).
                                drop(w);
                                match self.open() {
                                    Some(n) => w = n,
                                    None => return false,
                                }
                            }
                        }
                    }
                    if !done {
                        return false;
                    }
                    self.verify_reads(&mut w);
                }
                Step::Checkpoint(mode) => match w.checkpoint(&self.cx, *mode) {
                    Ok(_) | Err(FrankenError::Busy) => {}
                    Err(e) => {
                        self.note(&e);
                        if is_sync_failure(&e) {
                            self.check_latched(&mut w, "a checkpoint");
                        }
                        drop(w);
                        match self.open() {
                            Some(n) => w = n,
                            None => return false,
                        }
                    }
                },
                Step::Reopen => {
                    drop(w);
                    match self.open() {
                        Some(n) => w = n,
                        None => return false,
                    }
                }
                Step::CloseReopen => {
                    if let Err(e) = w.close(&self.cx) {
                        self.note(&e);
                    }
                    match self.open() {
                        Some(n) => w = n,
                        None => return false,
                    }
                }
            }
        }
        match w.close(&self.cx) {
            Ok(()) => true,
            Err(e) => {
                self.note(&e);
                false
            }
        }
    }
}

/// One run with `fault` armed; returns whether the fault fired (or, for a full disk,
/// whether the workload hit it).
fn one_run(
    wl: &Workload,
    model: &Model,
    kind: Kind,
    repeat: FaultRepeat,
    n: u64,
    tally: &mut Tally,
) -> bool {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::with_seed(0xFA17));
    let frame_bytes = u64::from(wl.page_size) + 24;
    vfs.inject(kind.fault(n, repeat, frame_bytes));
    let label = format!("{kind:?} {repeat:?} n={n}");
    tally.runs += 1;
    let errors_before: u64 = tally.errors_by_kind.values().sum();
    let (completed, acked, attempted) = {
        let mut d = Driver {
            cx: Cx::new(),
            vfs: Arc::clone(&vfs),
            wl,
            model,
            acked: 0,
            attempted: 0,
            tally,
            label: label.clone(),
            free_space_on_error: kind == Kind::DiskFull && repeat == FaultRepeat::Once,
        };
        let r = catch_unwind(AssertUnwindSafe(|| d.run()));
        let completed = match r {
            Ok(c) => c,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                d.tally.violations.push(format!("{label}: panic: {msg}"));
                false
            }
        };
        (completed, d.acked, d.attempted)
    };
    let errors = tally.errors_by_kind.values().sum::<u64>() - errors_before;
    // A one-shot fault disarms itself when it fires; a persistent one (and a full disk)
    // shows itself through errors.
    let fired = if kind != Kind::DiskFull && repeat == FaultRepeat::Once {
        vfs.armed_fault_count() == 0
    } else {
        errors > 0
    };
    if fired {
        tally.faults_fired += 1;
    }
    if completed {
        tally.completed_runs += 1;
        let last = model.states.len() as u32 - 1;
        if acked != last {
            tally
                .violations
                .push(format!("{label}: completed but acknowledged only {acked}"));
        }
    }
    // Recovery with the faults gone: as the files are, and after a power loss.
    vfs.clear_faults();
    for (what, v) in [
        ("live", vfs.fork()),
        ("after power loss", vfs.fork_crashed(CrashMode::DropAll)),
    ] {
        match reopen_and_check(&cx, &v, wl, model, acked, attempted) {
            Ok(_) => tally.recoveries_verified += 1,
            Err(e) => tally.violations.push(format!(
                "{label}: reopen {what} (acked {acked}, attempted {attempted}): {e}"
            )),
        }
    }
    fired
}

#[test]
fn io_error_sweep() {
    let wl = Workload::generate("faults", 0xFA_0001, 512, 12, 4);
    let model = wl.model();
    let start = Instant::now();
    let mut tally = Tally::default();
    let mut per_kind = Vec::new();
    for kind in Kind::ALL {
        for repeat in [FaultRepeat::Once, FaultRepeat::Persistent] {
            if kind == Kind::DiskFull && repeat == FaultRepeat::Persistent {
                // A full disk stays full until cleared: "Once" frees the space after the
                // first error, "Persistent" never does; both sweep the byte budget.
            }
            let fired_before = tally.faults_fired;
            let mut n = 1u64;
            let mut quiet = 0;
            // Stop after two consecutive runs in which the fault never fired.
            while quiet < 2 && n < 5000 {
                if one_run(&wl, &model, kind, repeat, n, &mut tally) {
                    quiet = 0;
                } else {
                    quiet += 1;
                }
                n += 1;
            }
            per_kind.push(serde_json::json!({
                "kind": format!("{kind:?}"),
                "repeat": format!("{repeat:?}"),
                "fault_points": n - 1,
                "fired": tally.faults_fired - fired_before,
            }));
            println!(
                "{kind:?} {repeat:?}: {} fault points, {} fired",
                n - 1,
                tally.faults_fired - fired_before
            );
        }
    }
    println!(
        "{} runs, {} faults fired, {} completed, {} latch checks, {} read checks, {} \
         recoveries verified, errors {:?}, {} violations ({:.1} s)",
        tally.runs,
        tally.faults_fired,
        tally.completed_runs,
        tally.latch_checks,
        tally.reads_verified,
        tally.recoveries_verified,
        tally.errors_by_kind,
        tally.violations.len(),
        start.elapsed().as_secs_f64()
    );
    let _ = fsqlite_testkit::stats::write_stats(
        "fault_commit",
        serde_json::json!({
            "runs": tally.runs,
            "faults_fired": tally.faults_fired,
            "completed_runs": tally.completed_runs,
            "latch_checks": tally.latch_checks,
            "reads_verified": tally.reads_verified,
            "recoveries_verified": tally.recoveries_verified,
            "errors_by_kind": tally.errors_by_kind,
            "violations": tally.violations.len(),
            "per_kind": per_kind,
            "seconds": start.elapsed().as_secs_f64(),
        }),
    );
    if let Ok(path) = std::env::var("FAULT_COMMIT_DUMP") {
        let _ = std::fs::write(path, tally.violations.join("\n"));
    }
    assert!(
        tally.violations.is_empty(),
        "{} violations, first ones:\n{}",
        tally.violations.len(),
        tally
            .violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
