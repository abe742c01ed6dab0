//! The hybrid coordinator against real SQLite processes (python3's `sqlite3` and the
//! `sqlite3` shell), on real files through `UnixVfs`:
//!
//! 1. a live SQLite reader sees every coordinator commit (row count and bytes equal the
//!    shadow's after each commit; `integrity_check` = ok; the `-shm` header SQLite reads is
//!    the one the coordinator published);
//! 2. a SQLite writer gets `SQLITE_BUSY` for the coordinator's whole life and writes again
//!    once it closes;
//! 3. the probe reports `Active` (a live coordinator), `Timeout` (a legacy writer holds
//!    `WAL_WRITE_LOCK`) and `NoCoordinator`; a second coordinator joins the first;
//! 4. after a legacy checkpoint copied everything, the next commit restarts the WAL (new
//!    salts) and SQLite still reads every row;
//! 5. a coordinator dropped without `close` is detected by the next opener;
//! 6. with 64 KiB pages the published `szPage` is 1 and SQLite reads every commit.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Shadow, commit_changes, make_db, open, options, txn_sql};
use fsqlite_error::FrankenError;
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorProbeResult, RecordState};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite, sqlite3_cli};
use fsqlite_testkit::sqlite::{
    integrity_check, read_file, read_shm_header, shm_path, table_digest,
};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;

fn live(db: &std::path::Path, busy: Duration) -> LiveSqlite {
    LiveSqlite::spawn(
        db,
        LiveOptions {
            busy_timeout: busy,
            ..LiveOptions::default()
        },
    )
    .unwrap()
}

fn count_and_bytes(reader: &mut LiveSqlite) -> (i64, i64) {
    let rows = reader
        .exec_ok("SELECT count(*), CAST(total(length(v)) AS INTEGER) FROM t")
        .unwrap();
    (rows[0][0].as_i64().unwrap(), rows[0][1].as_i64().unwrap())
}

#[test]
fn legacy_reader_sees_every_commit() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = open(&db, options()).unwrap();
    assert_eq!(
        coord.mode(),
        CompatMode::HybridShm,
        "{}",
        coord.mode_reason()
    );
    let takeover = coord.takeover().unwrap().clone();
    assert!(takeover.previous.is_none());
    assert!(takeover.rebuilt, "a fresh -shm is rebuilt (empty WAL)");
    assert_eq!(coord.record().unwrap().generation, 1);
    let mut reader = live(&db, Duration::from_secs(2));
    assert_eq!(count_and_bytes(&mut reader), shadow.count_and_bytes());
    let mut commit_times = Vec::new();
    for i in 1..=24u64 {
        let (changes, db_size) = shadow.apply(&txn_sql(7, i));
        let t = Instant::now();
        let mx = commit_changes(&coord, &cx, &changes, db_size);
        commit_times.push(t.elapsed());
        // The legacy reader sees this commit at once.
        assert_eq!(
            count_and_bytes(&mut reader),
            shadow.count_and_bytes(),
            "after commit {i}"
        );
        // SQLite reads exactly the header we published.
        let shm = read_shm_header(&read_file(&shm_path(&db)).unwrap()).unwrap();
        let ours = coord.legacy_state().unwrap().legacy_hdr();
        assert!(shm.is_consistent(), "-shm header after commit {i}");
        assert_eq!(shm.copy_a, ours.to_bytes(), "after commit {i}");
        assert_eq!(shm.mx_frame, mx);
        assert_eq!(ours.mx_frame, mx);
        assert_eq!(shm.n_page, db_size);
        if i % 8 == 0 {
            let ic = reader.exec_ok("PRAGMA integrity_check").unwrap();
            assert_eq!(ic[0][0].as_str(), Some("ok"), "integrity after commit {i}");
            // A one-shot sqlite3 shell (3.40) reads it too.
            let out = sqlite3_cli(&db, "SELECT count(*) FROM t").unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let n: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
            assert_eq!(n, shadow.count_and_bytes().0);
        }
        // Our own read path agrees with SQLite's pages.
        let mut buf = vec![0u8; common::PAGE_SIZE];
        for (p, data) in &changes {
            coord.read_page(&cx, *p, &mut buf).unwrap();
            assert_eq!(&buf, data, "page {p} after commit {i}");
        }
    }
    let shadow_pages = std::fs::metadata(shadow.path()).unwrap().len() / common::PAGE_SIZE as u64;
    assert_eq!(u64::from(coord.db_size(&cx).unwrap()), shadow_pages);
    // An independent SQLite connection in this process (POSIX locks, a peer of our OFD
    // locks) computes the same digest as the shadow.
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
    assert_eq!(integrity_check(&db).unwrap(), "ok");
    coord.close(&cx).unwrap();
    assert_eq!(count_and_bytes(&mut reader), shadow.count_and_bytes());
    reader.exit().unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
    commit_times.sort();
    let med = commit_times[commit_times.len() / 2];
    let max = commit_times[commit_times.len() - 1];
    eprintln!("hybrid commit latency (full sync, ~4 pages): median {med:?}, max {max:?}");
}

#[test]
fn legacy_writer_busy_for_coordinator_life() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = open(&db, options()).unwrap();
    let mut writer = live(&db, Duration::ZERO);
    let opened = Instant::now();
    for i in 1..=6u64 {
        let r = writer
            .exec("INSERT INTO t(id, v) VALUES (999999, x'01')")
            .unwrap();
        assert!(!r.ok && r.is_locked(), "attempt {i}: {r:?}");
        assert_eq!(
            r.code.map(|c| c & 0xff),
            Some(5),
            "SQLITE_BUSY, attempt {i}: {r:?}"
        );
        let r = writer.begin_immediate().unwrap();
        assert!(
            !r.ok && r.is_locked(),
            "BEGIN IMMEDIATE, attempt {i}: {r:?}"
        );
        // The same writer can read, and sees our commits.
        assert_eq!(count_and_bytes(&mut writer), shadow.count_and_bytes());
        let (changes, db_size) = shadow.apply(&txn_sql(11, i));
        commit_changes(&coord, &cx, &changes, db_size);
        std::thread::sleep(Duration::from_millis(40));
    }
    // The sqlite3 shell cannot write either.
    let out = sqlite3_cli(&db, "INSERT INTO t(id, v) VALUES (999998, x'02')").unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("locked"),
        "{out:?}"
    );
    let held = coord
        .legacy_state()
        .unwrap()
        .lock_held_duration(fsqlite_types::sync_primitives::Instant::now())
        .unwrap();
    assert!(held >= opened.elapsed().saturating_sub(Duration::from_millis(50)));
    coord.close(&cx).unwrap();
    let r = writer
        .exec("INSERT INTO t(id, v) VALUES (999999, x'01')")
        .unwrap();
    assert!(r.ok, "after close: {r:?}");
    let (n, _) = count_and_bytes(&mut writer);
    assert_eq!(n, shadow.count_and_bytes().0 + 1);
    let out = sqlite3_cli(&db, "INSERT INTO t(id, v) VALUES (999998, x'02')").unwrap();
    assert!(out.status.success(), "{out:?}");
    writer.exit().unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
}

#[test]
fn probe_reports_active_timeout_and_none() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let coord = open(&db, options()).unwrap();
    let me = std::process::id();
    let p = Coordinator::<UnixVfs>::probe(&cx, &vfs, &db, Duration::from_millis(300)).unwrap();
    assert_eq!(p.result, CoordinatorProbeResult::Active);
    assert_eq!(p.record.unwrap().pid, me);
    assert_eq!(p.record.unwrap().state, RecordState::Active);
    assert!(
        p.waited < Duration::from_millis(250),
        "a live record ends the wait: {:?}",
        p.waited
    );
    // A second fsqlite process (here: a second coordinator, its own descriptors) joins
    // instead of failing: both write, and the probe still reports a live coordinator.
    let second = open(&db, options()).unwrap();
    let t = second.takeover().unwrap();
    assert!(t.joined && !t.previous_died, "{t:?}");
    assert!(t.generation > coord.record().unwrap().generation);
    let ps = common::PAGE_SIZE;
    let mut page1 = vec![0u8; ps];
    coord
        .read_page(&cx, PageNumber::new(1).unwrap(), &mut page1)
        .unwrap();
    let size = second.db_size(&cx).unwrap();
    let f1 = second
        .commit(&cx, &[(PageNumber::new(1).unwrap(), &page1)], size)
        .unwrap();
    let f2 = coord
        .commit(&cx, &[(PageNumber::new(1).unwrap(), &page1)], size)
        .unwrap();
    assert!(f2 > f1, "the first coordinator took up the second's commit");
    let p = Coordinator::<UnixVfs>::probe(&cx, &vfs, &db, Duration::from_millis(300)).unwrap();
    assert_eq!(p.result, CoordinatorProbeResult::Active);
    let joined_generation = second.record().unwrap().generation;
    second.close(&cx).unwrap();
    coord.close(&cx).unwrap();

    let p = Coordinator::<UnixVfs>::probe(&cx, &vfs, &db, Duration::from_millis(300)).unwrap();
    assert_eq!(p.result, CoordinatorProbeResult::NoCoordinator);
    assert_eq!(p.record.unwrap().state, RecordState::Closed);

    // A legacy writer in the middle of a transaction holds WAL_WRITE_LOCK.
    let mut writer = live(&db, Duration::ZERO);
    assert!(writer.begin_immediate().unwrap().ok);
    assert!(
        writer
            .exec("INSERT INTO t(id, v) VALUES (5, x'05')")
            .unwrap()
            .ok
    );
    let p = Coordinator::<UnixVfs>::probe(&cx, &vfs, &db, Duration::from_millis(300)).unwrap();
    assert_eq!(p.result, CoordinatorProbeResult::Timeout);
    assert!(p.waited >= Duration::from_millis(300));
    let blocked = open(&db, options());
    assert!(matches!(blocked, Err(FrankenError::Busy)), "{blocked:?}");
    assert!(writer.commit().unwrap().ok);
    let coord = open(&db, options()).unwrap();
    assert_eq!(
        coord.record().unwrap().generation,
        joined_generation + 1,
        "failed opens take nothing over"
    );
    let t = coord.takeover().unwrap();
    assert!(!t.previous_died, "the previous coordinator closed cleanly");
    coord.close(&cx).unwrap();
    writer.exit().unwrap();
}

#[test]
fn legacy_checkpoint_then_restart() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = open(&db, options()).unwrap();
    let mut reader = live(&db, Duration::from_secs(2));
    for i in 1..=5u64 {
        let (changes, db_size) = shadow.apply(&txn_sql(3, i));
        commit_changes(&coord, &cx, &changes, db_size);
    }
    let before = coord.legacy_state().unwrap().legacy_hdr();
    // A legacy PASSIVE checkpoint copies every frame (FULL/RESTART/TRUNCATE would need
    // WAL_WRITE_LOCK and fall back or fail).
    let row = reader.exec_ok("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    let (busy, log, done) = (
        row[0][0].as_i64().unwrap(),
        row[0][1].as_i64().unwrap(),
        row[0][2].as_i64().unwrap(),
    );
    assert_eq!(
        (busy, log, done),
        (0, i64::from(before.mx_frame), i64::from(before.mx_frame))
    );
    let row = reader.exec_ok("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert_eq!(
        row[0][0].as_i64(),
        Some(1),
        "TRUNCATE needs the write lock: busy"
    );
    let (changes, db_size) = shadow.apply(&txn_sql(3, 6));
    let mx = commit_changes(&coord, &cx, &changes, db_size);
    let after = coord.legacy_state().unwrap().legacy_hdr();
    assert_eq!(
        mx as usize,
        changes.len(),
        "the WAL restarted: this commit starts at frame 1"
    );
    assert_eq!(after.wal_salts()[0], before.wal_salts()[0].wrapping_add(1));
    assert_ne!(after.wal_salts()[1], before.wal_salts()[1]);
    assert_eq!(count_and_bytes(&mut reader), shadow.count_and_bytes());
    for i in 7..=9u64 {
        let (changes, db_size) = shadow.apply(&txn_sql(3, i));
        commit_changes(&coord, &cx, &changes, db_size);
        assert_eq!(count_and_bytes(&mut reader), shadow.count_and_bytes());
    }
    let ic = reader.exec_ok("PRAGMA integrity_check").unwrap();
    assert_eq!(ic[0][0].as_str(), Some("ok"));
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
    coord.close(&cx).unwrap();
    reader.exit().unwrap();
}

#[test]
fn dropped_coordinator_is_detected_and_replaced() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &db, options()).unwrap();
    for i in 1..=3u64 {
        let (changes, db_size) = shadow.apply(&txn_sql(5, i));
        commit_changes(&coord, &cx, &changes, db_size);
    }
    let generation = coord.record().unwrap().generation;
    drop(coord);
    let coord = open(&db, options()).unwrap();
    let t = coord.takeover().unwrap().clone();
    assert!(t.previous_died, "{t:?}");
    assert_eq!(t.previous.unwrap().generation, generation);
    assert_eq!(t.generation, generation + 1);
    // Nobody kept the -shm alive: the index was rebuilt from the WAL.
    assert!(t.rebuilt && t.plan.reconstruct_wal_index, "{t:?}");
    let mut buf = vec![0u8; common::PAGE_SIZE];
    coord
        .read_page(&cx, PageNumber::new(1).unwrap(), &mut buf)
        .unwrap();
    assert_eq!(&buf[..16], b"SQLite format 3\0");
    let (changes, db_size) = shadow.apply(&txn_sql(5, 4));
    commit_changes(&coord, &cx, &changes, db_size);
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
    coord.close(&cx).unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
}

#[test]
fn legacy_reader_with_64k_pages() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db_with(dir.path(), "big.db", 65536);
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = open(&db, options()).unwrap();
    assert_eq!(coord.page_size(), 65536);
    let mut reader = live(&db, Duration::from_secs(2));
    for i in 1..=4u64 {
        let (changes, db_size) = shadow.apply(&txn_sql(13, i));
        commit_changes(&coord, &cx, &changes, db_size);
        assert_eq!(count_and_bytes(&mut reader), shadow.count_and_bytes());
    }
    let shm = read_shm_header(&read_file(&shm_path(&db)).unwrap()).unwrap();
    assert!(shm.is_consistent());
    assert_eq!((shm.sz_page_raw, shm.sz_page), (1, 65536));
    let ic = reader.exec_ok("PRAGMA integrity_check").unwrap();
    assert_eq!(ic[0][0].as_str(), Some("ok"));
    coord.close(&cx).unwrap();
    reader.exit().unwrap();
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
}
