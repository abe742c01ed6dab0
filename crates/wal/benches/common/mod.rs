//! Shared by the recovery and checkpoint benches: a WAL written by real SQLite.

use std::path::{Path, PathBuf};

use fsqlite_testkit::sqlite::SqliteWalDb;

/// Bytes of each inserted row's blob: about two pages, so most frames are fresh overflow
/// pages (a database that grows, as with bulk inserts).
const ROW_BYTES: usize = 8000;
/// Rows per transaction.
const ROWS_PER_COMMIT: usize = 64;

/// Creates `dir/name` with rusqlite (WAL mode, 4 KiB pages, `wal_autocheckpoint=0`) and
/// inserts rows until the `-wal` holds at least `wal_bytes`; closes with
/// `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, so the database file holds only the schema and
/// the `-wal` everything else. Returns the database path.
pub fn sqlite_wal(dir: &Path, name: &str, wal_bytes: u64) -> PathBuf {
    let db = SqliteWalDb::create(dir, name, 4096).expect("create the SQLite database");
    let wal = db.wal_path();
    let mut stmt = db
        .conn()
        .prepare("INSERT INTO t(v) VALUES (randomblob(?1))")
        .expect("prepare");
    while std::fs::metadata(&wal).map_or(0, |m| m.len()) < wal_bytes {
        db.exec("BEGIN").expect("begin");
        for _ in 0..ROWS_PER_COMMIT {
            stmt.execute([ROW_BYTES as i64]).expect("insert");
        }
        db.exec("COMMIT").expect("commit");
    }
    drop(stmt);
    let path = db.path().to_path_buf();
    db.close_without_checkpoint()
        .expect("close without checkpoint");
    path
}

/// `path` with `suffix` appended (`-wal`, `-shm`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Copies the database and its `-wal` to `to` (no `-shm`), fsyncing both copies so
/// that no dirty page cache of theirs is flushed inside a timed region.
pub fn fresh_copy(from: &Path, to: &Path) {
    for suffix in ["", "-wal"] {
        let (a, b) = (sibling(from, suffix), sibling(to, suffix));
        std::fs::copy(&a, &b).expect("copy");
        std::fs::File::open(&b)
            .and_then(|f| f.sync_all())
            .expect("fsync the copy");
    }
    let _ = std::fs::remove_file(sibling(to, "-shm"));
}
