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

/// Regression (found by the group-commit crash sweep, when it lived in `fsqlite-mvcc`): on
/// a device without power-safe overwrite (`MemoryVfs` reports no
/// `SQLITE_IOCAP_POWERSAFE_OVERWRITE`, sector 4096), SQLite pads a synced commit with
/// copies of its commit frame up to a sector boundary, so that the next commit never
/// writes into a sector holding acknowledged bytes (FORMAT.md §9, `walcrash4.test`). The
/// coordinator's group commit did not: a torn or garbage write of the *next* batch's
/// first sector then destroyed the tail of an acknowledged commit frame.
#[test]
fn acked_commit_survives_damage_to_next_batch_sector() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
    use fsqlite_testkit::bank::{self, Stamp};
    use fsqlite_types::Cx;

    let dir = tempfile::tempdir().unwrap();
    let (bank, image) = concurrent::make_bank(dir.path()).unwrap();
    let ps = bank.page_size as usize;
    let wal = std::path::PathBuf::from(format!("{DB}-wal"));
    let cx = Cx::new();
    let stamped = |coord: &Coordinator<CrashVfs>, acct: i64, txn: u64| {
        let page = bank.accounts.page(acct).unwrap();
        let mut buf = vec![0u8; ps];
        coord.read_page(&cx, page, &mut buf).unwrap();
        bank::write_stamp(&mut buf, Stamp { seq: 1, txn }).unwrap();
        (page, buf)
    };
    let vfs = CrashVfs::with_image(&image);
    let sector = 4096usize;
    let coord = Coordinator::open(&cx, Arc::new(vfs.clone()), DB, concurrent::options()).unwrap();
    let (page, a) = stamped(&coord, 1, 7);
    let size = coord.db_size(&cx).unwrap();
    let frame = coord.commit(&cx, &[(page, &a)], size).unwrap();
    let wal_len = vfs.mem.live_contents(&wal).unwrap().len();
    // The next write starts at `wal_len`; it must lie in a later sector than the last
    // byte of the acknowledged commit frame.
    let commit_end = 32 + frame as usize * (24 + ps);
    let separated =
        |wal_len: usize, commit_end: usize| wal_len / sector > (commit_end - 1) / sector;
    // Commit B: its WAL write stays pending (the power fails at its sync).
    vfs.ctl.armed.store(2, Ordering::Release);
    vfs.ctl.counting.store(true, Ordering::Release);
    let (page_b, b) = stamped(&coord, 2, 8);
    assert!(coord.commit(&cx, &[(page_b, &b)], size).is_err());
    let mut lost = Vec::new();
    for seed in 0..32u64 {
        let img = vfs
            .mem
            .fork_crashed(CrashMode::Garbage { seed, sector: 512 });
        let c = Coordinator::open(&cx, Arc::new(img), DB, concurrent::options()).unwrap();
        let mut buf = vec![0u8; ps];
        c.read_page(&cx, page, &mut buf).unwrap();
        if bank::read_stamp(&buf).unwrap().txn != 7 {
            lost.push(seed);
        }
        drop(c);
    }
    drop(coord);
    // The plain WAL connection (FileLockOnly mode) pads; the group commit must do the same.
    let plain = CrashVfs::with_image(&image);
    let opts = CoordinatorOptions {
        hybrid: false,
        ..concurrent::options()
    };
    let c = Coordinator::open(&cx, Arc::new(plain.clone()), DB, opts).unwrap();
    let plain_frame = c.commit(&cx, &[(page, &a)], size).unwrap();
    let plain_len = plain.mem.live_contents(&wal).unwrap().len();
    drop(c);
    assert!(
        plain_frame >= 1 && separated(plain_len, 32 + (24 + ps)),
        "fsqlite_wal::Wal pads past the sector boundary (WAL {plain_len} bytes)"
    );
    assert!(
        separated(wal_len, commit_end) && lost.is_empty(),
        "after an acknowledged group commit (commit frame {frame}, ending at byte \
         {commit_end}) the WAL is {wal_len} bytes: no padding frame, so the next batch \
         writes into the {sector}-byte sector holding the commit's tail on a non-PSOW \
         device (the plain WAL connection pads to {plain_len} bytes); garbage there destroyed \
         the acknowledged commit for crash seeds {lost:?} of 0..32"
    );
}
