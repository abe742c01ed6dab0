//! Byte-identical checkpoints: our `Wal::checkpoint` and SQLite's `PRAGMA
//! wal_checkpoint` on copies of the same SQLite-written WAL database leave the same
//! database file, byte for byte, and report the same `(busy, log, checkpointed)`.
//!
//! - For page sizes 512, 4096 and 65536, SQLite writes a WAL (a workload, a PASSIVE
//!   checkpoint so the WAL restarts with new salts over dead frames, more work). For each
//!   mode (PASSIVE, FULL, RESTART, TRUNCATE) one copy is checkpointed by us
//!   (`Wal::open(UnixVfs)`, no checkpoint on close) and one by SQLite
//!   (`testkit::sqlite::sqlite_checkpoint_copy`). Database files equal; `-wal` files equal
//!   (0 bytes after TRUNCATE on both sides); outcomes equal; `integrity_check` ok on ours.
//! - A shrinking database (a `DELETE` and a `VACUUM` in the WAL): the checkpoint must
//!   truncate the database file to the commit's page count, as SQLite does.
//! - A reader that holds an old snapshot (a rusqlite connection inside `BEGIN`) while
//!   another connection commits more: PASSIVE copies up to the reader's mark and is not
//!   busy; FULL, RESTART and TRUNCATE copy as much and report busy — on both sides, with
//!   the same counts and the same database bytes.
//! - A reader of the database file only (it began on a fully backfilled WAL, so it holds
//!   `READ_LOCK(0)`) while another connection commits: no checkpoint can copy; PASSIVE
//!   is not busy (SQLite turns the busy `READ_LOCK(0)` into success), the others are.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fsqlite_testkit::sqlite::{
    SqliteWalDb, integrity_check, open_existing, read_file, sqlite_checkpoint_copy, wal_path,
};
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};

/// Our busy timeout and SQLite's (the busy scenario waits this long on each side).
const BUSY: Duration = Duration::from_millis(100);

fn ours(db: &Path, mode: CheckpointMode) -> (i64, i64, i64) {
    let cx = Cx::new();
    let opts = WalOptions {
        checkpoint_on_close: false,
        auto_checkpoint: None,
        busy_timeout: BUSY,
        ..WalOptions::default()
    };
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), db, opts).unwrap();
    let o = w.checkpoint(&cx, mode).unwrap();
    w.close(&cx).unwrap();
    (
        i64::from(o.busy),
        i64::from(o.log_frames),
        i64::from(o.checkpointed_frames),
    )
}

/// SQLite's checkpoint through a connection whose busy handler waits [`BUSY`].
fn theirs_with_busy_timeout(db: &Path, mode: CheckpointMode) -> (i64, i64, i64) {
    let conn = open_existing(db).unwrap();
    conn.busy_timeout(BUSY).unwrap();
    let sql = format!("PRAGMA wal_checkpoint({})", mode.as_str());
    let row = conn
        .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    conn.close().unwrap();
    row
}

fn assert_same_files(what: &str, a: &Path, b: &Path) {
    assert_same_db(what, a, b);
    assert_same_wal(what, a, b);
}

fn assert_same_db(what: &str, a: &Path, b: &Path) {
    let (da, db) = (read_file(a).unwrap(), read_file(b).unwrap());
    assert_eq!(da.len(), db.len(), "{what}: database sizes differ");
    if da != db {
        let ps = u16::from_be_bytes([da[16], da[17]]) as usize;
        let ps = if ps == 1 { 65_536 } else { ps };
        let differing: Vec<usize> = (0..da.len() / ps)
            .filter(|&i| da[i * ps..(i + 1) * ps] != db[i * ps..(i + 1) * ps])
            .map(|i| i + 1)
            .collect();
        let scan = fsqlite_testkit::sqlite::wal_scan(&read_file(&wal_path(a)).unwrap()).unwrap();
        for &p in &differing {
            let frames: Vec<(u32, bool, bool)> = scan
                .frames
                .iter()
                .filter(|f| f.page == p as u32)
                .map(|f| {
                    (
                        f.index,
                        f.data == da[(p - 1) * ps..p * ps],
                        f.data == db[(p - 1) * ps..p * ps],
                    )
                })
                .collect();
            eprintln!(
                "page {p}: frames (index, = ours, = SQLite's): {frames:?}; mx {}",
                scan.mx_frame
            );
        }
        panic!(
            "{what}: database files differ in pages {differing:?} (ours {}, SQLite's {})",
            a.display(),
            b.display()
        );
    }
}

fn assert_same_wal(what: &str, a: &Path, b: &Path) {
    let (wa, wb) = (
        read_file(&wal_path(a)).unwrap(),
        read_file(&wal_path(b)).unwrap(),
    );
    assert_eq!(wa.len(), wb.len(), "{what}: -wal sizes differ");
    assert!(wa == wb, "{what}: -wal files differ");
}

/// Copies of one WAL database for every mode, ours and SQLite's.
fn copies(db: &SqliteWalDb, root: &Path) -> Vec<(CheckpointMode, PathBuf, PathBuf)> {
    CheckpointMode::ALL
        .iter()
        .map(|&m| {
            let (x, _, _) = db
                .snapshot_files(&root.join(format!("ours-{}", m.as_str())))
                .unwrap();
            let (y, _, _) = db
                .snapshot_files(&root.join(format!("sqlite-{}", m.as_str())))
                .unwrap();
            (m, x, y)
        })
        .collect()
}

fn compare_all_modes(label: &str, db: &SqliteWalDb, root: &Path) {
    let mx = db.wal_scan().unwrap().mx_frame;
    assert!(mx > 0, "{label}: the WAL must hold commits");
    for (mode, x, y) in copies(db, root) {
        let what = format!("{label}, {}", mode.as_str());
        let o = ours(&x, mode);
        let t = sqlite_checkpoint_copy(&y, mode.as_str()).unwrap();
        assert_eq!(o, t, "{what}: (busy, log, checkpointed) ours vs SQLite's");
        assert_same_files(&what, &x, &y);
        if mode == CheckpointMode::Truncate {
            assert_eq!(o, (0, 0, 0));
            assert_eq!(std::fs::metadata(wal_path(&x)).unwrap().len(), 0, "{what}");
        } else {
            assert_eq!(o, (0, i64::from(mx), i64::from(mx)), "{what}");
        }
        assert_eq!(integrity_check(&x).unwrap(), "ok", "{what}");
    }
    println!("{label}: {mx} frames; PASSIVE/FULL/RESTART/TRUNCATE byte-identical to SQLite");
}

fn restarted_wal(page_size: u32, seed: u64, commits: u32, ops: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "c.db", page_size).unwrap();
    db.run_workload(seed, commits, ops).unwrap();
    db.exec("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    db.run_workload(seed ^ 0x77, commits / 2, ops).unwrap();
    compare_all_modes(&format!("page size {page_size}"), &db, tmp.path());
    db.close_without_checkpoint().unwrap();
}

#[test]
fn byte_identical_512() {
    restarted_wal(512, 0xC512, 40, 6);
}

#[test]
fn byte_identical_4096() {
    restarted_wal(4096, 0xC4096, 30, 6);
}

#[test]
fn byte_identical_65536() {
    restarted_wal(65_536, 0x000C_6553, 6, 3);
}

/// A WAL of about 6 MiB, so that our checkpoints copy on two threads and read the pages
/// back beside the database fsync (`BARRIER_OVERLAP_MIN_BYTES`): still byte-identical.
#[test]
fn byte_identical_large_wal_read_back_beside_the_fsync() {
    let tmp = tempfile::tempdir().unwrap();
    let db = SqliteWalDb::create(tmp.path(), "big.db", 4096).unwrap();
    common::fill_large_wal(&db);
    db.exec("UPDATE t SET v = randomblob(3000) WHERE id % 3 = 0")
        .unwrap();
    let wal_bytes = std::fs::metadata(wal_path(db.path())).unwrap().len();
    assert!(wal_bytes > 5 << 20, "{wal_bytes}");
    compare_all_modes("large WAL", &db, tmp.path());
    db.close_without_checkpoint().unwrap();
}

#[test]
fn byte_identical_after_vacuum_shrinks_the_database() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "v.db", 1024).unwrap();
    db.run_workload(0x7AC, 30, 8).unwrap();
    db.exec("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let before = std::fs::metadata(db.path()).unwrap().len();
    db.exec("DELETE FROM t WHERE id % 2 = 0").unwrap();
    db.exec("VACUUM").unwrap();
    let n_page = db.wal_scan().unwrap().n_page;
    assert!(
        u64::from(n_page) * 1024 < before,
        "the VACUUM must shrink the database ({n_page} pages vs {before} bytes)"
    );
    compare_all_modes("vacuum (shrinking)", &db, tmp.path());
    db.close_without_checkpoint().unwrap();
}

/// On `db`: a reader holds the snapshot of the recovered WAL (with `db_only`: of the
/// WAL emptied by a TRUNCATE checkpoint, so it holds READ_LOCK(0)), another connection
/// commits more, then `checkpoint` runs while the reader still reads. Returns the outcome.
fn with_old_reader(
    db: &Path,
    db_only: bool,
    checkpoint: impl FnOnce(&Path) -> (i64, i64, i64),
) -> (i64, i64, i64) {
    if db_only {
        let c = open_existing(db).unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        c.close().unwrap();
    }
    let reader = open_existing(db).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let n: i64 = reader
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    let writer = open_existing(db).unwrap();
    for k in 0..8 {
        writer
            .execute(
                "INSERT INTO t(v) SELECT v FROM t WHERE id = (SELECT min(id) FROM t) + ?1",
                [k],
            )
            .unwrap();
    }
    let o = checkpoint(db);
    reader.execute_batch("COMMIT").unwrap();
    drop(writer);
    drop(reader);
    o
}

#[test]
fn busy_outcomes_with_an_old_reader_match_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "r.db", 4096).unwrap();
    db.run_workload(0xBEEF, 20, 5).unwrap();
    let mx1 = i64::from(db.wal_scan().unwrap().mx_frame);
    for (mode, x, y) in copies(&db, tmp.path()) {
        let what = format!("old reader, {}", mode.as_str());
        // Both sides run the same script; only the checkpointer differs.
        let o = with_old_reader(&x, false, |p| ours(p, mode));
        let t = with_old_reader(&y, false, |p| theirs_with_busy_timeout(p, mode));
        assert_eq!(o, t, "{what}: (busy, log, checkpointed) ours vs SQLite's");
        let expect_busy = i64::from(mode != CheckpointMode::Passive);
        assert_eq!(o.0, expect_busy, "{what}: {o:?}");
        assert_eq!(o.2, mx1, "{what}: copies up to the reader's mark");
        assert!(o.1 > mx1, "{what}: the writer's frames are in the log");
        assert_same_files(&what, &x, &y);
        assert_eq!(integrity_check(&x).unwrap(), "ok", "{what}");
    }
    db.close_without_checkpoint().unwrap();
}

#[test]
fn busy_outcomes_with_a_database_only_reader_match_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "d.db", 4096).unwrap();
    db.run_workload(0xD0, 12, 5).unwrap();
    for (mode, x, y) in copies(&db, tmp.path()) {
        let what = format!("database-only reader, {}", mode.as_str());
        let o = with_old_reader(&x, true, |p| ours(p, mode));
        let t = with_old_reader(&y, true, |p| theirs_with_busy_timeout(p, mode));
        assert_eq!(o, t, "{what}: (busy, log, checkpointed) ours vs SQLite's");
        assert_eq!(
            o.0,
            i64::from(mode != CheckpointMode::Passive),
            "{what}: {o:?}"
        );
        assert_eq!(o.2, 0, "{what}: nothing can be copied past READ_LOCK(0)");
        // The WALs differ: each TRUNCATE drew its own random salt.
        assert_same_db(&what, &x, &y);
    }
    db.close_without_checkpoint().unwrap();
}
