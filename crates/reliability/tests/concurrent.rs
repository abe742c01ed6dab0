//! The concurrent harnesses (8 threads; 2 members × 4 threads) on a short budget, and
//! proof that their verification can fail.

use std::path::Path;
use std::time::Duration;

use fsqlite_reliability::concurrent::{
    self, Attempt, ConcurrentConfig, CrashVfs, DB, Outcome, SCENARIOS,
};
use fsqlite_vfs::CrashMode;

#[test]
fn crash_simulation_with_concurrent_writers_finds_nothing() {
    let mut cfg = ConcurrentConfig::new(0x636f_6e63, Duration::from_secs(20));
    cfg.max_passes = 1;
    let r = concurrent::run_crash(&cfg);
    assert!(r.passed(), "{}", r.failure_text());
    let recovered = r.stats["recoveries_verified"].as_u64().unwrap_or(0);
    assert!(recovered > 0, "{}", r.stats);
    for s in r.stats["scenarios"].as_array().unwrap() {
        assert!(
            s["counters"]["crash_points"].as_u64().unwrap_or(0) > 0,
            "no crash point in {s}"
        );
    }
}

#[test]
fn io_faults_with_concurrent_writers_are_verified_and_attributed() {
    let mut cfg = ConcurrentConfig::new(0x696f_6663, Duration::from_secs(20));
    cfg.scenarios = vec![SCENARIOS[0]];
    let r = concurrent::run_faults(&cfg, 6);
    assert!(r.passed(), "{}", r.failure_text());
    assert!(r.stats["faults_injected"].as_u64().unwrap_or(0) > 0);
    // Every fault was attributed to a call site of the WAL or the coordinator.
    let cov = r.stats["totals"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("cov|") && (k.ends_with("|once") || k.ends_with("|persistent")))
        .count();
    assert!(cov > 0, "{}", r.stats);
}

#[test]
fn verification_refuses_a_lost_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (bank, image) = concurrent::make_bank(dir.path()).unwrap();
    let vfs = CrashVfs::with_image(&image);
    assert!(vfs.mem.file_exists(Path::new(DB)));
    let scratch = dir.path().join("s");
    std::fs::create_dir(&scratch).unwrap();
    // Nothing was written, yet the log claims an acknowledged transfer.
    let log = vec![Attempt {
        id: 7,
        writes: vec![
            (3, 1, bank.initial_balance - 5),
            (4, 1, bank.initial_balance + 5),
        ],
        outcome: Outcome::Acked(2),
    }];
    let e = concurrent::verify(
        &vfs.mem.fork_crashed(CrashMode::DropAll),
        &bank,
        &log,
        &scratch,
    )
    .unwrap_err();
    assert!(e.contains("acknowledged attempt"), "{e}");
    // And the empty log passes on the same image.
    concurrent::verify(&vfs.mem.fork(), &bank, &[], &scratch).unwrap();
}
