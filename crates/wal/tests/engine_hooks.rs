//! What an engine plugs into `Wal`, each against real SQLite where SQLite has the feature:
//! savepoints in a write transaction, the commit hook (and the auto-checkpoint built on
//! it), `journal_size_limit`, the busy handler, and the one-call status.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::hooks::{CommitAction, CommitInfo, auto_checkpoint};
use fsqlite_wal::{CheckpointMode, LockingMode, Wal, WalOptions};
use rusqlite::Connection;

fn pg(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

fn opts() -> WalOptions {
    WalOptions {
        auto_checkpoint: None,
        busy_timeout: Duration::from_millis(200),
        ..WalOptions::default()
    }
}

fn open(db: &Path, o: WalOptions) -> Wal<UnixVfs> {
    Wal::open(&Cx::new(), Arc::new(UnixVfs::new()), db, o).unwrap()
}

/// A real SQLite database in WAL mode with `rows` rows; returns its page images.
fn sqlite_db(db: &Path, rows: i64) -> Vec<Vec<u8>> {
    let c = Connection::open(db).unwrap();
    c.pragma_update(None, "journal_mode", "wal").unwrap();
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        .unwrap();
    for i in 0..rows {
        c.execute("INSERT INTO t VALUES(?1, ?2)", (i, "z".repeat(300)))
            .unwrap();
    }
    drop(c); // the last close checkpoints: the database file holds everything
    let bytes = std::fs::read(db).unwrap();
    bytes.chunks(4096).map(<[u8]>::to_vec).collect()
}

fn sqlite_rows_and_check(db: &Path) -> (i64, String) {
    let c = Connection::open(db).unwrap();
    let n = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let ok = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    (n, ok)
}

#[test]
fn rolled_back_savepoint_writes_never_reach_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sp.db");
    let good = sqlite_db(&db, 40);
    let cx = Cx::new();
    let mut wal = open(&db, opts());
    let n = good.len() as u32;
    let garbage = vec![0xA5u8; 4096];
    {
        let mut tx = wal.begin_write(&cx).unwrap();
        // Rewrite every page with its own (good) image, then damage them inside nested
        // savepoints and roll back: what commits must be the good images only.
        for (i, img) in good.iter().enumerate() {
            tx.write_page(&cx, pg(i as u32 + 1), img).unwrap();
        }
        let outer = tx.savepoint();
        for p in 1..=n {
            tx.write_page(&cx, pg(p), &garbage).unwrap();
        }
        let inner = tx.savepoint();
        tx.write_page(&cx, pg(n + 1), &garbage).unwrap(); // a page past the end
        assert_eq!(inner.depth(), 2);
        tx.rollback_to(outer).unwrap(); // closes inner too
        assert!(tx.rollback_to(inner).is_err(), "inner is gone");
        let mut buf = vec![0u8; 4096];
        tx.read_page(&cx, pg(1), &mut buf).unwrap();
        assert_eq!(buf, good[0]);
        assert_eq!(tx.pages_written(), good.len());
        // Released writes are kept.
        let keep = tx.savepoint();
        tx.write_page(&cx, pg(n), &good[n as usize - 1]).unwrap();
        tx.release(keep).unwrap();
        tx.release(outer).unwrap();
        tx.commit(&cx, n).unwrap();
    }
    let (rows, ok) = sqlite_rows_and_check(&db);
    assert_eq!((rows, ok.as_str()), (40, "ok"));
    // The same pages as before, read back through the WAL.
    let r = wal.begin_read(&cx).unwrap();
    assert_eq!(r.db_size(), n);
    for (i, img) in good.iter().enumerate() {
        let mut buf = vec![0u8; 4096];
        r.read_page(&cx, pg(i as u32 + 1), &mut buf).unwrap();
        assert!(buf == *img, "page {}", i + 1);
    }
}

#[test]
fn the_commit_hook_runs_after_each_durable_commit_before_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hook.db");
    sqlite_db(&db, 5);
    let cx = Cx::new();
    let mut wal = open(&db, opts());
    let seen: Arc<Mutex<Vec<(u32, u32, i64)>>> = Arc::default();
    let log = Arc::clone(&seen);
    let path = db.clone();
    wal.set_commit_hook(Some(Arc::new(move |c: &CommitInfo<'_>| {
        // A real SQLite connection inside the hook already sees the commit.
        let s = Connection::open(&path).unwrap();
        let f: i64 = s
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap();
        assert_eq!(c.db_path, path.canonicalize().unwrap().as_path());
        log.lock().unwrap().push((c.wal_frames, c.db_size, f));
        CommitAction::Nothing
    })));
    let page = {
        let r = wal.begin_read(&cx).unwrap();
        let mut b = vec![0u8; 4096];
        r.read_page(&cx, pg(2), &mut b).unwrap();
        b
    };
    let mut frames = Vec::new();
    for _ in 0..3 {
        let mut tx = wal.begin_write(&cx).unwrap();
        tx.write_page(&cx, pg(2), &page).unwrap();
        let size = tx.db_size();
        frames.push((tx.commit(&cx, size).unwrap(), size));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for ((mx, size), (wal_frames, db_size, sqlite_log)) in frames.iter().zip(&seen) {
        assert_eq!((*mx, *size), (*wal_frames, *db_size));
        assert_eq!(
            i64::from(*mx),
            *sqlite_log,
            "SQLite saw the WAL at the commit"
        );
    }
    // Removing the hook: no more calls.
    wal.set_commit_hook(None);
    let mut tx = wal.begin_write(&cx).unwrap();
    tx.write_page(&cx, pg(2), &page).unwrap();
    tx.commit(&cx, 2).unwrap();
}

#[test]
fn the_auto_checkpoint_is_a_commit_hook_and_a_hook_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("auto.db");
    let cx = Cx::new();
    let commit = |wal: &mut Wal<UnixVfs>, n: u8| {
        let mut tx = wal.begin_write(&cx).unwrap();
        tx.write_page(&cx, pg(1), &[n; 4096]).unwrap();
        tx.commit(&cx, 1).unwrap();
    };
    // WalOptions::auto_checkpoint = Some(4) installs hooks::auto_checkpoint(4).
    let mut wal = open(
        &db,
        WalOptions {
            auto_checkpoint: Some(4),
            ..opts()
        },
    );
    for n in 0..3 {
        commit(&mut wal, n);
    }
    assert_eq!(wal.status(&cx).unwrap().backfilled, 0);
    commit(&mut wal, 3);
    let st = wal.status(&cx).unwrap();
    assert_eq!(
        (st.wal_frames, st.backfilled),
        (4, 4),
        "PASSIVE ran at 4 frames"
    );
    // Our own hook replaces it: counting only, no checkpoint.
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = Arc::clone(&calls);
    wal.set_commit_hook(Some(Arc::new(move |_: &CommitInfo<'_>| {
        c2.fetch_add(1, Ordering::SeqCst);
        CommitAction::Nothing
    })));
    for n in 0..6 {
        commit(&mut wal, n);
    }
    let st = wal.status(&cx).unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!((st.wal_frames, st.backfilled), (6, 0));
    // And the built-in one can be put back, or a TRUNCATE policy of our own.
    wal.set_commit_hook(Some(auto_checkpoint(2)));
    commit(&mut wal, 9);
    assert_eq!(wal.status(&cx).unwrap().backfilled, 7);
    wal.set_commit_hook(Some(Arc::new(|c: &CommitInfo<'_>| {
        if c.wal_frames >= 1 {
            CommitAction::Checkpoint(CheckpointMode::Truncate)
        } else {
            CommitAction::Nothing
        }
    })));
    commit(&mut wal, 10);
    assert_eq!(wal.status(&cx).unwrap().wal_frames, 0);
    assert_eq!(
        std::fs::metadata(dir.path().join("auto.db-wal"))
            .unwrap()
            .len(),
        0
    );
}

/// The `-wal` size after: a commit of `big` pages, a full checkpoint, then a one-page
/// commit (which restarts the WAL), with `limit` set on the connection that commits.
fn wal_size_ours(dir: &Path, limit: Option<u64>, big: u32) -> (u64, u32) {
    let db = dir.join(format!("ours-{limit:?}.db"));
    let cx = Cx::new();
    let mut wal = open(&db, opts());
    wal.set_journal_size_limit(limit);
    let mut tx = wal.begin_write(&cx).unwrap();
    for p in 1..=big {
        tx.write_page(&cx, pg(p), &[p as u8; 4096]).unwrap();
    }
    tx.commit(&cx, big).unwrap();
    let out = wal.checkpoint(&cx, CheckpointMode::Passive).unwrap();
    assert_eq!(out.checkpointed_frames, big);
    let mut tx = wal.begin_write(&cx).unwrap();
    tx.write_page(&cx, pg(1), &[0; 4096]).unwrap();
    let mx = tx.commit(&cx, big).unwrap();
    let size = std::fs::metadata(dir.join(format!("ours-{limit:?}.db-wal")))
        .unwrap()
        .len();
    (size, mx)
}

fn wal_size_sqlite(dir: &Path, limit: Option<u64>, big: u32) -> (u64, u32) {
    let db = dir.join(format!("sqlite-{limit:?}.db"));
    let c = Connection::open(&db).unwrap();
    c.pragma_update(None, "journal_mode", "wal").unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    c.pragma_update(None, "journal_size_limit", limit.map_or(-1, |l| l as i64))
        .unwrap();
    c.execute_batch("CREATE TABLE b(x BLOB)").unwrap();
    c.execute(
        "INSERT INTO b VALUES(zeroblob(?1))",
        (i64::from(big) * 4096 - 20_000,),
    )
    .unwrap();
    let (_, log, done): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(log, done);
    c.execute_batch("CREATE TABLE small(x)").unwrap();
    let size = std::fs::metadata(dir.join(format!("sqlite-{limit:?}.db-wal")))
        .unwrap()
        .len();
    // The frames of that last commit (a PASSIVE checkpoint reports the WAL's size).
    let (_, log, _): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    drop(c);
    (size, log as u32)
}
#[test]
fn journal_size_limit_truncates_the_wal_as_sqlite_does() {
    let dir = tempfile::tempdir().unwrap();
    let frame = 24 + 4096u64;
    let expect = |limit: Option<u64>, frames: u32, before: u64| match limit {
        Some(l) => l.max(32 + u64::from(frames) * frame).min(before),
        None => before,
    };
    let big = 40;
    let (ours_unlimited, _) = wal_size_ours(dir.path(), None, big);
    let (sqlite_unlimited, _) = wal_size_sqlite(dir.path(), None, big);
    // Without a limit both keep the file at its largest size.
    assert_eq!(ours_unlimited, 32 + u64::from(big) * frame);
    assert!(sqlite_unlimited >= 32 + 30 * frame, "{sqlite_unlimited}");
    for limit in [0u64, 3 * frame + 32, 1 << 20] {
        let (ours, ours_mx) = wal_size_ours(dir.path(), Some(limit), big);
        let (theirs, theirs_mx) = wal_size_sqlite(dir.path(), Some(limit), big);
        assert_eq!(
            ours,
            expect(Some(limit), ours_mx, ours_unlimited),
            "ours, limit {limit}"
        );
        assert_eq!(
            theirs,
            expect(Some(limit), theirs_mx, sqlite_unlimited),
            "SQLite, limit {limit}"
        );
    }
}

#[test]
fn the_busy_handler_decides_how_long_to_wait_for_a_sqlite_writer() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("busy.db");
    sqlite_db(&db, 3);
    let cx = Cx::new();
    let mut wal = open(&db, opts());
    let sqlite = Connection::open(&db).unwrap();
    sqlite.execute_batch("BEGIN IMMEDIATE").unwrap(); // SQLite holds the WAL write lock
    let calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let log = Arc::clone(&calls);
    wal.set_busy_handler(Some(Arc::new(move |n| {
        log.lock().unwrap().push(n);
        n < 5
    })));
    let e = wal.begin_write(&cx).unwrap_err();
    assert_eq!(e.extended_code(), 5, "{e}");
    assert_eq!(*calls.lock().unwrap(), vec![0, 1, 2, 3, 4, 5]);
    // A FULL checkpoint waits for the write lock through the handler too.
    calls.lock().unwrap().clear();
    let out = wal.checkpoint(&cx, CheckpointMode::Full).unwrap();
    assert!(out.busy);
    assert_eq!(calls.lock().unwrap().len(), 6);
    // A handler that waits until SQLite lets go: the write goes through.
    let released = Arc::new(AtomicU32::new(0));
    let flag = Arc::clone(&released);
    wal.set_busy_handler(Some(Arc::new(move |n| {
        if n == 3 {
            flag.store(1, Ordering::SeqCst);
        }
        n < 10_000
    })));
    let t = std::thread::spawn(move || {
        while released.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        sqlite.execute_batch("COMMIT").unwrap();
    });
    let tx = wal.begin_write(&cx).unwrap();
    tx.rollback(&cx).unwrap();
    t.join().unwrap();
    // Removing the handler brings back busy_timeout (200 ms here).
    wal.set_busy_handler(None);
    let s2 = Connection::open(&db).unwrap();
    s2.execute_batch("BEGIN IMMEDIATE").unwrap();
    let t0 = std::time::Instant::now();
    assert!(wal.begin_write(&cx).is_err());
    assert!(t0.elapsed() >= Duration::from_millis(200));
}

#[test]
fn status_agrees_with_sqlite_checkpoint_counts_and_sees_its_readers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("status.db");
    sqlite_db(&db, 3);
    let cx = Cx::new();
    let mut wal = open(&db, opts());
    let writer = Connection::open(&db).unwrap();
    writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    for i in 0..10 {
        writer
            .execute("INSERT INTO t VALUES(?1, 'x')", (100 + i,))
            .unwrap();
    }
    let st = wal.status(&cx).unwrap();
    assert_eq!(st.page_size, 4096);
    assert_eq!(st.locking_mode, LockingMode::Normal);
    assert_eq!(st.read_marks.len(), 5);
    assert!(st.read_marks.iter().all(|m| !m.in_use), "{st:?}");
    // A SQLite reader holding a snapshot shows as a read mark in use at its frame.
    let reader = Connection::open(&db).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM t;")
        .unwrap();
    writer
        .execute("INSERT INTO t VALUES(999, 'late')", [])
        .unwrap();
    let st = wal.status(&cx).unwrap();
    let held: Vec<_> = st.read_marks.iter().filter(|m| m.in_use).collect();
    assert_eq!(held.len(), 1, "{st:?}");
    assert!(held[0].mark < st.wal_frames);
    // SQLite's PASSIVE checkpoint reports the same frame count, and stops at the reader.
    let (_, log, done): (i64, i64, i64) = writer
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let st = wal.status(&cx).unwrap();
    assert_eq!(i64::from(st.wal_frames), log);
    assert_eq!(i64::from(st.backfilled), done);
    assert_eq!(done, i64::from(held[0].mark));
    assert_eq!(st.salts, wal.begin_read(&cx).unwrap().snapshot().salts());
    reader.execute_batch("COMMIT").unwrap();
    // In exclusive locking mode the status says so (nobody else can hold a mark).
    drop((reader, writer));
    wal.set_locking_mode(&cx, LockingMode::Exclusive).unwrap();
    let st = wal.status(&cx).unwrap();
    assert_eq!(st.locking_mode, LockingMode::Exclusive);
}
