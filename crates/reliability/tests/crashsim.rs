//! The crash simulator with a small budget (the full enumeration runs in release via
//! `cargo xtask reliability`), plus proof that it can fail: a workload whose commits are
//! not synced (`SyncMode::Off`) must be reported as losing acknowledged commits.

use std::time::Duration;

use fsqlite_reliability::crashsim::{CrashSimConfig, count_ops, replay, run};
use fsqlite_reliability::workloads::{self, Workload};
use fsqlite_testkit::rng::{replay_hint, seed_from_env};
use fsqlite_wal::SyncMode;

fn pick(names: &[&str]) -> Vec<Workload> {
    names
        .iter()
        .map(|n| workloads::by_name(n).unwrap_or_else(|| panic!("no workload {n}")))
        .collect()
}

#[test]
fn every_workload_runs_clean_and_has_a_fixed_op_count() {
    let seed = seed_from_env(11);
    let all = workloads::all();
    assert!(all.len() >= 12, "TESTING.md asks for at least 12 workloads");
    for w in &all {
        let a = count_ops(seed, w, 0)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", w.name, replay_hint(seed, "every_workload")));
        // A different seed changes salts and page contents, never the operation sequence.
        let b = count_ops(seed ^ 0xdead_beef, w, 1).unwrap_or_else(|e| panic!("{}: {e}", w.name));
        assert_eq!(a, b, "{}: the op count depends on the seed", w.name);
        assert!(a > 20, "{}: only {a} ops", w.name);
    }
}

#[test]
fn crash_points_recover_to_a_committed_state() {
    let seed = seed_from_env(0x00c0_ffee);
    let mut cfg = CrashSimConfig::new(seed, Duration::from_secs(10));
    cfg.workloads = pick(&[
        "single_frame",
        "ckpt_truncate",
        "shm_loss",
        "recovery_compound",
        "reader_snapshot",
        "auto_checkpoint",
        "close_reopen",
    ]);
    cfg.variants = 8;
    cfg.threads = 2;
    cfg.continuation_every = 3;
    cfg.max_rounds = 1;
    let r = run(&cfg);
    assert!(
        r.passed(),
        "{}\n{}",
        r.failure_text(),
        replay_hint(seed, "crash_points_recover")
    );
    let verified = r.stats["recoveries_verified"].as_u64().unwrap_or(0);
    assert!(
        verified >= 100,
        "only {verified} recoveries verified: {}",
        r.stats
    );
    assert!(
        r.stats["totals"]["compound_crashes"].as_u64().unwrap_or(0) > 0,
        "{}",
        r.stats
    );
    assert!(
        r.stats["totals"]["shm_damaged_reopens"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
}

#[test]
fn the_hash_boundary_workload_crosses_frame_4062() {
    let w = workloads::by_name("hash_boundary").unwrap_or_else(|| unreachable!());
    let frames: usize = w
        .steps
        .iter()
        .take_while(|s| !matches!(s, workloads::Step::Checkpoint(_)))
        .map(|s| match s {
            workloads::Step::Commit { pages, .. } => pages.len(),
            _ => 0,
        })
        .sum();
    assert!(
        frames > workloads::FIRST_HASH_REGION_FRAMES as usize + 3,
        "{frames}"
    );
    let seed = seed_from_env(5);
    // A crash point in the commit that crosses the boundary, replayed with every variant.
    let r = replay(seed, "hash_boundary", 600, 0, 4).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.passed(), "{}", r.failure_text());
}

#[test]
fn a_broken_workload_is_caught() {
    // SyncMode::Off: commits are acknowledged without an fsync, so a power loss that drops
    // unsynced writes must lose acknowledged commits, and the harness must say so.
    let seed = seed_from_env(3);
    let mut w = workloads::by_name("single_frame").unwrap_or_else(|| unreachable!());
    w.name = "single_frame_sync_off";
    w.sync = SyncMode::Off;
    let mut cfg = CrashSimConfig::new(seed, Duration::from_secs(20));
    cfg.workloads = vec![w];
    cfg.variants = 1; // variant 0 is DropAll
    cfg.continuation_every = 0;
    cfg.max_rounds = 1;
    let r = run(&cfg);
    assert!(
        !r.passed(),
        "the oracle missed lost acknowledged commits: {}",
        r.stats
    );
    let text = r.failure_text();
    assert!(text.contains("acknowledged commit lost"), "{text}");
    assert!(
        text.contains("cargo xtask crash-sim --seed"),
        "no replay command: {text}"
    );
}
