//! Crash simulation at every operation of a `Wal` workload on `MemoryVfs` (TESTING.md §2.8
//! (a), "exhaustive crash-point enumeration"; ARCHITECTURE.md invariants 1 and 2).
//!
//! A seeded workload ([`conn_model::Workload`]: single- and multi-page commits that grow and
//! shrink the database, PASSIVE/TRUNCATE/FULL/RESTART checkpoints, a reopen, a close with
//! checkpoint + delete and a reopen) is run once to count its VFS operations N. Then for
//! every k in 1..=N: a fresh `MemoryVfs::with_seed` (so the run is identical up to k),
//! `set_crash_at_op(k)`, the workload runs until its first error, and for each damage
//! variant (DropAll, KeepAll, KeepRandom ×2, Torn 512/4096, Garbage 512/4096) a
//! `fork_crashed` copy is reopened with `Wal::open` and read page by page. The database
//! must equal **exactly** the model state after some commit in
//! `acknowledged..=attempted` (never older than the last commit whose `commit` returned
//! `Ok` with `SyncMode::Full`, never a partial transaction). On one variant per crash
//! point the recovered database is then written again and crashed again (compound), and
//! another is crashed a second time *during* its recovery.
//!
//! The barrier-removed twin runs the same sweep with
//! `Wal::set_skip_checkpoint_barrier_for_tests(true)` (checkpoints skip the database
//! fsync) and must find at least one crash point that loses an acknowledged commit:
//! proof that the sweep detects a missing recovery barrier.
//!
//! Figures go to `target/test-stats/crash_commit.json`.

mod conn_model;

use std::sync::Arc;
use std::time::Instant;

use conn_model::{
    Model, Progress, RunFlags, Workload, check_state, content, observe, options, reopen_and_check,
    run,
};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{CrashMode, MemoryVfs};
use fsqlite_wal::Wal;

/// Damage variants applied at every crash point. `Garbage` uses 1-byte sectors: the
/// garbage stays inside the bytes a write covered, as on a device with power-safe
/// overwrite (what `UnixVfs` reports, and SQLite's default); sector-sized garbage that
/// also destroys the neighbouring, already synced bytes is the non-PSOW case, checked by
/// the test `non_psow_garbage_sectors` below.
fn crash_modes(k: u64) -> Vec<CrashMode> {
    let s = k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    vec![
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::KeepRandom { seed: s ^ 1 },
        CrashMode::Torn {
            seed: s ^ 3,
            sector: 512,
        },
        CrashMode::Torn {
            seed: s ^ 4,
            sector: 4096,
        },
        CrashMode::Garbage {
            seed: s ^ 5,
            sector: 1,
        },
        CrashMode::Garbage {
            seed: s ^ 6,
            sector: 1,
        },
    ]
}

/// Which variant (index into [`crash_modes`]) gets the compound and the
/// crash-in-recovery checks.
const COMPOUND_VARIANTS: [usize; 1] = [0];
const RECOVERY_CRASH_VARIANT: usize = 6;

#[derive(Debug, Default)]
struct SweepResult {
    ops: u64,
    crash_points: u64,
    variants: u64,
    recoveries_verified: u64,
    compound_verified: u64,
    crash_in_recovery_verified: u64,
    /// Crash points whose run had at least one acknowledged commit lost by some variant.
    lost_ack: u64,
    /// Recovered states newer than the last acknowledged commit (the in-flight commit
    /// survived).
    in_flight_survived: u64,
    violations: Vec<String>,
}

/// After a verified recovery to state `j`: write page 1 once more (commit tag
/// `COMPOUND_TXN`), crash without sync loss, and check the result.
const COMPOUND_TXN: u32 = 0x00C0_FFEE;

fn compound_check(
    cx: &Cx,
    vfs: &MemoryVfs,
    wl: &Workload,
    model: &Model,
    j: u32,
) -> Result<(), String> {
    let arc = Arc::new(vfs.clone());
    let mut w = Wal::open(cx, Arc::clone(&arc), &wl.db, options(wl.page_size))
        .map_err(|e| format!("compound: reopen failed: {e}"))?;
    let base = &model.states[j as usize];
    let size = base.db_size.max(1);
    {
        let mut t = w
            .begin_write(cx)
            .map_err(|e| format!("compound: begin_write failed: {e}"))?;
        t.write_page(
            cx,
            PageNumber::new(1).unwrap(),
            &content(wl.page_size, 1, COMPOUND_TXN),
        )
        .map_err(|e| format!("compound: write failed: {e}"))?;
        t.commit(cx, size)
            .map_err(|e| format!("compound: commit failed: {e}"))?;
    }
    drop(w);
    let crashed = vfs.fork_crashed(CrashMode::DropAll);
    let mut w = Wal::open(cx, Arc::new(crashed), &wl.db, options(wl.page_size))
        .map_err(|e| format!("compound: second reopen failed: {e}"))?;
    let obs = observe(cx, &mut w).map_err(|e| format!("compound: read failed: {e}"))?;
    let mut expect = base.clone();
    expect.db_size = size;
    expect.pages.insert(1, COMPOUND_TXN);
    if !conn_model::equals_state(wl.page_size, &obs, &expect) {
        return Err(format!(
            "compound: after recovery to state {j}, a commit and a crash, the database is not \
             state {j} + the new page 1 (size {} vs {})",
            obs.db_size, expect.db_size
        ));
    }
    Ok(())
}

/// Crash again during the recovery of `vfs` (at its `at`-th operation), then recover.
fn crash_in_recovery(
    cx: &Cx,
    vfs: &MemoryVfs,
    wl: &Workload,
    model: &Model,
    at: u64,
    lo: u32,
    hi: u32,
) -> Result<(), String> {
    let v = vfs.fork();
    v.set_crash_at_op(at);
    if let Ok(mut w) = Wal::open(cx, Arc::new(v.clone()), &wl.db, options(wl.page_size)) {
        let _ = observe(cx, &mut w);
    }
    v.crash(CrashMode::Torn {
        seed: at,
        sector: 512,
    });
    reopen_and_check(cx, &v, wl, model, lo, hi)
        .map(|_| ())
        .map_err(|e| format!("crash at op {at} of the recovery, then: {e}"))
}

#[allow(
    clippy::many_single_char_names,
    reason = "k (crash point), p (progress), v (variant), j (state) as in the module doc"
)]
fn sweep(
    name: &str,
    wl: &Workload,
    flags: RunFlags,
    vfs_seed: u64,
    modes_of: fn(u64) -> Vec<CrashMode>,
    full: bool,
) -> SweepResult {
    let cx = Cx::new();
    let model = wl.model();
    let mut res = SweepResult::default();

    // The reference run: counts the operations and checks the final state.
    let vfs = MemoryVfs::with_seed(vfs_seed);
    let mut p = Progress::default();
    run(
        &cx,
        &Arc::new(vfs.clone()),
        wl,
        flags,
        &mut p,
        |_, _| Ok(()),
    )
    .unwrap();
    res.ops = vfs.op_count();
    let last = model.states.len() as u32 - 1;
    assert_eq!(p.acked, last);
    let final_state = reopen_and_check(&cx, &vfs, wl, &model, last, last);
    assert_eq!(final_state, Ok(last), "{name}: clean run");

    for k in 1..=res.ops {
        let vfs = MemoryVfs::with_seed(vfs_seed);
        vfs.set_crash_at_op(k);
        let mut p = Progress::default();
        let r = run(
            &cx,
            &Arc::new(vfs.clone()),
            wl,
            flags,
            &mut p,
            |_, _| Ok(()),
        );
        if r.is_ok() && vfs.crashed_at().is_none() {
            continue;
        }
        res.crash_points += 1;
        let mut lost_here = false;
        let modes = modes_of(k);
        for (i, mode) in modes.into_iter().enumerate() {
            res.variants += 1;
            let v = vfs.fork_crashed(mode);
            match reopen_and_check(&cx, &v, wl, &model, p.acked, p.attempted) {
                Ok(j) => {
                    res.recoveries_verified += 1;
                    if j > p.acked {
                        res.in_flight_survived += 1;
                    }
                    if full && COMPOUND_VARIANTS.contains(&i) {
                        match compound_check(&cx, &v, wl, &model, j) {
                            Ok(()) => res.compound_verified += 1,
                            Err(e) => res
                                .violations
                                .push(format!("{name}: k={k} {mode:?} (state {j}): {e}")),
                        }
                    }
                    if full && i == RECOVERY_CRASH_VARIANT {
                        let at = 1 + k % 40;
                        match crash_in_recovery(&cx, &v, wl, &model, at, p.acked, p.attempted) {
                            Ok(()) => res.crash_in_recovery_verified += 1,
                            Err(e) => res.violations.push(format!("{name}: k={k} {mode:?}: {e}")),
                        }
                    }
                }
                Err(e) => {
                    // Did it lose an acknowledged commit (an older state)?
                    let v2 = vfs.fork_crashed(mode);
                    if let Ok(mut w) = Wal::open(&cx, Arc::new(v2), &wl.db, options(wl.page_size))
                        && let Ok(obs) = observe(&cx, &mut w)
                        && check_state(wl.page_size, &model, &obs, 0, p.acked.saturating_sub(1))
                            .is_ok()
                    {
                        lost_here = true;
                    }
                    res.violations.push(format!(
                        "{name}: crash at op {k} (acked {}, attempted {}), {mode:?}: {e}",
                        p.acked, p.attempted
                    ));
                }
            }
        }
        if lost_here {
            res.lost_ack += 1;
        }
    }
    res
}

fn report(name: &str, wl: &Workload, r: &SweepResult, secs: f64) -> serde_json::Value {
    println!(
        "{name}: page size {}, {} commits, {} steps, {} ops; {} crash points × variants = {} \
         recoveries verified, {} compound, {} crash-in-recovery, {} in-flight commits survived, \
         {} violations ({secs:.1} s)",
        wl.page_size,
        wl.commits(),
        wl.steps.len(),
        r.ops,
        r.crash_points,
        r.recoveries_verified,
        r.compound_verified,
        r.crash_in_recovery_verified,
        r.in_flight_survived,
        r.violations.len()
    );
    fsqlite_testkit::serde_json::json!({
        "workload": name,
        "page_size": wl.page_size,
        "commits": wl.commits(),
        "steps": wl.steps.len(),
        "ops": r.ops,
        "crash_points": r.crash_points,
        "op_coverage_pct": (r.crash_points * 100).checked_div(r.ops).unwrap_or(0),
        "variants": r.variants,
        "recoveries_verified": r.recoveries_verified,
        "compound_verified": r.compound_verified,
        "crash_in_recovery_verified": r.crash_in_recovery_verified,
        "in_flight_survived": r.in_flight_survived,
        "violations": r.violations.len(),
        "seconds": secs,
    })
}

use fsqlite_testkit::serde_json;

#[test]
fn crash_at_every_op_of_commits_and_checkpoints() {
    let cases = [
        (
            "ps512",
            Workload::generate("ps512", 0x5EED_0001, 512, 24, 6),
            11u64,
        ),
        (
            "ps4096",
            Workload {
                // Auto-checkpoints (PASSIVE, inside `commit`) every 6 frames.
                auto_checkpoint: Some(6),
                ..Workload::generate("ps4096", 0x5EED_0002, 4096, 10, 4)
            },
            12,
        ),
        (
            "ps65536",
            Workload::generate("ps65536", 0x5EED_0003, 65_536, 3, 2),
            13,
        ),
    ];
    // The workloads are independent: one thread each (CI has 2 cores).
    let results: Vec<(SweepResult, f64)> = std::thread::scope(|sc| {
        let handles: Vec<_> = cases
            .iter()
            .map(|(name, wl, seed)| {
                sc.spawn(move || {
                    let t = Instant::now();
                    let r = sweep(name, wl, RunFlags::default(), *seed, crash_modes, true);
                    (r, t.elapsed().as_secs_f64())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut figures = Vec::new();
    let mut all_violations = Vec::new();
    let mut totals = (0u64, 0u64, 0u64);
    for ((name, wl, _), (r, secs)) in cases.iter().zip(results) {
        figures.push(report(name, wl, &r, secs));
        totals.0 += r.crash_points;
        totals.1 += r.recoveries_verified;
        totals.2 += r.compound_verified + r.crash_in_recovery_verified;
        all_violations.extend(r.violations);
    }
    println!(
        "total: {} crash points, {} recoveries verified, {} compound checks",
        totals.0, totals.1, totals.2
    );
    let _ = fsqlite_testkit::stats::write_stats(
        "crash_commit",
        serde_json::json!({
            "crash_points": totals.0,
            "recoveries_verified": totals.1,
            "compound_and_crash_in_recovery_verified": totals.2,
            "violations": all_violations.len(),
            "workloads": figures,
        }),
    );
    if let Ok(path) = std::env::var("CRASH_COMMIT_DUMP") {
        let _ = std::fs::write(path, all_violations.join("\n"));
    }
    assert!(
        all_violations.is_empty(),
        "{} violations, first ones:\n{}",
        all_violations.len(),
        all_violations
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn sweep_detects_a_missing_checkpoint_barrier() {
    let wl = Workload::generate("nobarrier", 0x5EED_0001, 512, 24, 6);
    let t = Instant::now();
    let r = sweep(
        "no-barrier",
        &wl,
        RunFlags { skip_barrier: true },
        11,
        |_| vec![CrashMode::DropAll],
        false,
    );
    let fig = report("no-barrier", &wl, &r, t.elapsed().as_secs_f64());
    let _ = fsqlite_testkit::stats::write_stats("crash_commit_no_barrier", fig);
    assert!(
        r.lost_ack > 0,
        "with the database fsync skipped, no crash point lost an acknowledged commit: the \
         sweep cannot detect a missing barrier ({} crash points, {} violations)",
        r.crash_points,
        r.violations.len()
    );
    println!(
        "no-barrier twin: {} of {} crash points lost an acknowledged commit; first: {}",
        r.lost_ack,
        r.crash_points,
        r.violations.first().cloned().unwrap_or_default()
    );
}

/// Sector-sized garbage (a device **without** power-safe overwrite, which is what
/// `MemoryVfs` reports: device characteristics 0): a crash during commit N+1 fills the
/// whole sector its first frame starts in, destroying the tail of commit N's synced
/// commit frame, so recovery falls back to commit N-1 and loses an acknowledged commit.
/// SQLite avoids this with padding frames up to the sector boundary after each synced
/// commit when the device lacks PSOW (FORMAT.md §9); `wal.rs` writes the same padding
/// frames (`WalFile::pad_to_sector`), which this sweep proves.
#[test]
fn non_psow_garbage_sectors() {
    let wl = Workload::generate("nonpsow", 0x5EED_0001, 512, 24, 6);
    let r = sweep(
        "non-psow",
        &wl,
        RunFlags::default(),
        11,
        |k| {
            vec![
                CrashMode::Garbage {
                    seed: k,
                    sector: 512,
                },
                // Sector > page size would also trash neighbouring database pages that
                // a later checkpoint's write shares a sector with — pages no longer in
                // the WAL. That is outside docs/design.md's media assumption 4 (and
                // SQLite's): the WAL's padding protects commits, not sub-sector pages.
                CrashMode::Garbage {
                    seed: k ^ 0xFF,
                    sector: 512,
                },
            ]
        },
        false,
    );
    assert!(
        r.violations.is_empty(),
        "{} violations, first: {}",
        r.violations.len(),
        r.violations.first().cloned().unwrap_or_default()
    );
}
