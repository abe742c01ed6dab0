//! The engine hooks on the hybrid coordinator: the commit hook (every transaction of a
//! group commit, in commit order, durable and visible to SQLite before it runs, before
//! `commit` returns), the busy handler (waiting for a read-mark slot another connection
//! holds), and the one-call status against SQLite's own checkpoint counts. Plus the
//! short-file message on open.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{SHM_EXCLUSIVE, SHM_LOCK, SHM_UNLOCK, UnixVfs, Vfs, VfsFile, wal_read_lock};
use fsqlite_wal::hooks::{CommitAction, CommitInfo};
use fsqlite_wal::wal_index::WALINDEX_PGSZ;
use rusqlite::Connection;

const PS: usize = common::PAGE_SIZE;

fn sqlite_frames(db: &Path) -> i64 {
    let c = Connection::open(db).unwrap();
    // Under the coordinator, SQLite cannot write but may checkpoint; ask it for the
    // WAL's size only (a PASSIVE checkpoint reports it).
    c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
        .unwrap()
}

#[test]
fn the_commit_hook_sees_each_grouped_commit_in_order_before_commit_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "hook.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let threads = 8u32;
    // Grow the database first, so that the threads' commits keep its size.
    let mut grow = coord.begin_concurrent(&cx).unwrap();
    for t in 0..threads {
        grow.write_page(&cx, PageNumber::new(base + 1 + t).unwrap(), &[0; PS])
            .unwrap();
    }
    grow.commit(&cx, base + threads).unwrap();
    let log: Arc<Mutex<Vec<(u32, u32)>>> = Arc::default();
    let l2 = Arc::clone(&log);
    let path = db.clone();
    let sqlite_checked = Arc::new(AtomicU32::new(0));
    let checked = Arc::clone(&sqlite_checked);
    coord.set_commit_hook(Some(Arc::new(move |c: &CommitInfo<'_>| {
        // Every 16th call: a real SQLite reader already sees the batch in the -shm.
        if checked.fetch_add(1, Ordering::SeqCst).is_multiple_of(16) {
            assert!(sqlite_frames(&path) >= i64::from(c.commit_frame));
        }
        l2.lock().unwrap().push((c.commit_frame, c.wal_frames));
        CommitAction::Nothing
    })));
    let per = 25u32;
    let acked: Mutex<Vec<u32>> = Mutex::default();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (coord, log, acked) = (&coord, &log, &acked);
            s.spawn(move || {
                let cx = Cx::new();
                let page = PageNumber::new(base + 1 + t).unwrap();
                for i in 0..per {
                    let mut txn = coord.begin_concurrent(&cx).unwrap();
                    txn.write_page(&cx, page, &vec![i as u8; PS]).unwrap();
                    let size = txn.db_size();
                    let frame = txn.commit(&cx, size).unwrap();
                    // The hook ran for this commit before commit returned.
                    assert!(log.lock().unwrap().iter().any(|&(f, _)| f == frame));
                    acked.lock().unwrap().push(frame);
                }
            });
        }
    });
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), (threads * per) as usize);
    // Commit order: frames strictly increase within a WAL generation (the hook's SQLite
    // checkpoints let the coordinator restart the WAL, and frames start again at 1).
    let mut restarts = 0;
    for w in log.windows(2) {
        if w[1].0 < w[0].0 {
            restarts += 1;
            assert!(
                w[1].1 < w[0].0,
                "frames went back without a WAL restart: {w:?}"
            );
        } else {
            assert!(w[0].0 < w[1].0, "hook calls out of commit order: {w:?}");
        }
    }
    assert!(log.iter().all(|&(f, wal)| f <= wal));
    let mut acked = acked.into_inner().unwrap();
    acked.sort_unstable();
    let mut hooked: Vec<u32> = log.iter().map(|&(f, _)| f).collect();
    hooked.sort_unstable();
    assert_eq!(acked, hooked);
    eprintln!("{} commits, {restarts} WAL restarts", log.len());
    let stats = coord.stats();
    assert!(
        stats.batches < u64::from(threads * per),
        "no batch held two commits: {stats:?}"
    );
    coord.set_commit_hook(None);
    coord.close(&cx).unwrap();
}

#[test]
fn the_busy_handler_decides_the_wait_for_a_read_mark_slot() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "busy.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    // Another connection holds all five read-mark locks exclusively.
    let vfs = UnixVfs::new();
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB;
    let (mut other, _) = vfs.open(&cx, Some(&db), flags).unwrap();
    other.shm_map(&cx, 0, WALINDEX_PGSZ as u32, false).unwrap();
    other
        .shm_lock(&cx, wal_read_lock(0), 5, SHM_LOCK | SHM_EXCLUSIVE)
        .unwrap();
    let calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let c2 = Arc::clone(&calls);
    coord.set_busy_handler(Some(Arc::new(move |n| {
        c2.lock().unwrap().push(n);
        n < 4
    })));
    let e = coord.begin_concurrent(&cx).unwrap_err();
    assert_eq!(e.extended_code(), 5, "{e}");
    assert_eq!(*calls.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    // Status sees the slots held by the other connection.
    let st = coord.status(&cx).unwrap();
    assert!(st.read_marks.iter().all(|m| m.in_use), "{st:?}");
    other
        .shm_lock(&cx, wal_read_lock(0), 5, SHM_UNLOCK | SHM_EXCLUSIVE)
        .unwrap();
    let txn = coord.begin_concurrent(&cx).unwrap();
    txn.rollback(&cx).unwrap();
    coord.set_busy_handler(None);
    coord.close(&cx).unwrap();
}

#[test]
fn status_matches_sqlite_checkpoint_counts() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "status.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    for i in 0..12u8 {
        let mut txn = coord.begin_concurrent(&cx).unwrap();
        txn.write_page(&cx, PageNumber::new(base + 1).unwrap(), &[i; PS])
            .unwrap();
        txn.commit(&cx, base + 1).unwrap();
    }
    let st = coord.status(&cx).unwrap();
    assert_eq!(st.db_size, base + 1);
    assert_eq!(st.page_size as usize, PS);
    // A concurrent transaction open here holds a read mark: status shows it in use.
    let txn = coord.begin_concurrent(&cx).unwrap();
    let with_txn = coord.status(&cx).unwrap();
    assert!(
        with_txn
            .read_marks
            .iter()
            .any(|m| m.in_use && m.mark == txn.snapshot_frame()),
        "{with_txn:?}"
    );
    // SQLite's checkpoint: the same frame count, and its backfill shows in our status.
    let c = Connection::open(&db).unwrap();
    let (_, log, done): (i64, i64, i64) = c
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    let after = coord.status(&cx).unwrap();
    assert_eq!(i64::from(st.wal_frames), log);
    assert_eq!(i64::from(after.backfilled), done);
    txn.rollback(&cx).unwrap();
    drop(c);
    coord.close(&cx).unwrap();
}

#[test]
fn opening_a_16_byte_file_names_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("short.db");
    std::fs::write(&db, b"SQLite format 3\0").unwrap();
    let e = common::open(&db, common::options()).unwrap_err();
    assert!(
        e.to_string()
            .contains("the file is 16 bytes, shorter than the 100-byte SQLite database header"),
        "{e}"
    );
}

/// The `-wal` size after: a 40-page commit, a full SQLite checkpoint, then a one-page
/// commit (which restarts the WAL), with `limit` set on the coordinator.
fn wal_size_after_restart(dir: &Path, limit: Option<u64>) -> (u64, u64) {
    let db = common::make_db(dir, &format!("jsl-{limit:?}.db"));
    let coord = common::open(&db, common::options()).unwrap();
    coord.set_journal_size_limit(limit);
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let pages: Vec<(PageNumber, Vec<u8>)> = (1..=40)
        .map(|i| (PageNumber::new(base + i).unwrap(), vec![i as u8; PS]))
        .collect();
    let refs: Vec<(PageNumber, &[u8])> = pages.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    coord.commit(&cx, &refs, base + 40).unwrap();
    let (log, done) = {
        let c = Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        })
        .unwrap()
    };
    assert_eq!(log, done, "the checkpoint copied everything");
    let before = std::fs::metadata(format!("{}-wal", db.display()))
        .unwrap()
        .len();
    let last = coord
        .commit(
            &cx,
            &[(PageNumber::new(base + 1).unwrap(), &[9; PS])],
            base + 40,
        )
        .unwrap();
    let after = std::fs::metadata(format!("{}-wal", db.display()))
        .unwrap()
        .len();
    coord.close(&cx).unwrap();
    assert!(last <= 2, "the commit restarted the WAL (frame {last})");
    (before, after)
}

#[test]
fn journal_size_limit_trims_the_wal_the_coordinator_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let frame = 24 + PS as u64;
    let (before, after) = wal_size_after_restart(dir.path(), None);
    assert_eq!(after, before, "without a limit the file keeps its size");
    let (before, after) = wal_size_after_restart(dir.path(), Some(0));
    assert!(before > 40 * frame);
    assert!(
        after <= 32 + 2 * frame,
        "trimmed to the restarting commit: {after}"
    );
    let limit = 10 * frame;
    let (_, after) = wal_size_after_restart(dir.path(), Some(limit));
    assert_eq!(after, limit, "trimmed to the limit");
}
