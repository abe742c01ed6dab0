//! Shared helpers for the coordinator tests: SQLite-made databases and a *shadow* copy that
//! turns SQL into the page images SQLite itself would write, so that every commit the
//! coordinator makes is a real SQLite transaction (legacy readers then see meaningful rows
//! and `integrity_check` stays `ok`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use rusqlite::Connection;

/// Page size of the test databases made by [`make_db`].
pub const PAGE_SIZE: usize = 4096;

/// Creates `dir/name` with SQLite: WAL mode, table `t(id INTEGER PRIMARY KEY, v BLOB)` with
/// an index, a few rows; closed normally, so the WAL is checkpointed and removed.
pub fn make_db(dir: &Path, name: &str) -> PathBuf {
    make_db_with(dir, name, PAGE_SIZE)
}

/// [`make_db`] with another page size.
pub fn make_db_with(dir: &Path, name: &str, page_size: usize) -> PathBuf {
    let path = dir.join(name);
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         CREATE INDEX t_v ON t(length(v));
         INSERT INTO t VALUES (1, x'00112233');",
    )
    .unwrap();
    conn.close().unwrap();
    assert!(!fsqlite_testkit::sqlite::wal_path(&path).exists());
    path
}

/// The SQL of transaction `i` of workload `seed`: deterministic (no `random()`), inserts
/// rows with payloads from 100 bytes to ~1.5 pages, and from time to time an update or a
/// delete.
pub fn txn_sql(seed: u64, i: u64) -> String {
    use std::fmt::Write as _;
    let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut sql = String::new();
    for k in 0..3 {
        let len = rng.range(100, 6000) as usize;
        let mut payload = vec![0u8; len];
        rng.fill(&mut payload);
        let hex = payload.iter().fold(String::new(), |mut h, b| {
            let _ = write!(h, "{b:02x}");
            h
        });
        let _ = write!(
            sql,
            "INSERT OR REPLACE INTO t(id, v) VALUES ({}, x'{hex}');",
            i * 10 + k + 100
        );
    }
    let _ = match rng.below(4) {
        0 => write!(sql, "DELETE FROM t WHERE id = {};", (i / 2) * 10 + 100),
        1 => write!(
            sql,
            "UPDATE t SET v = x'{:016x}' WHERE id % 7 = {};",
            rng.next_u64(),
            i % 7
        ),
        _ => Ok(()),
    };
    sql
}

/// A private SQLite copy of a database that produces the pages each transaction changes.
pub struct Shadow {
    path: PathBuf,
    conn: Connection,
    image: Vec<u8>,
    page_size: usize,
}

impl Shadow {
    /// Copies `db` (which must have no `-wal`) to `shadow` and opens it.
    pub fn create_from(db: &Path, shadow: &Path) -> Self {
        std::fs::copy(db, shadow).unwrap();
        let conn = Connection::open(shadow).unwrap();
        conn.execute_batch("PRAGMA synchronous=OFF; PRAGMA wal_autocheckpoint=0;")
            .unwrap();
        let image = std::fs::read(shadow).unwrap();
        let raw = usize::from(u16::from_be_bytes([image[16], image[17]]));
        let page_size = if raw == 1 { 65536 } else { raw };
        Self {
            path: shadow.to_path_buf(),
            conn,
            image,
            page_size,
        }
    }

    /// The shadow's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `sql` as one transaction and returns the pages it changed (SQLite's own images
    /// after a checkpoint) and the new database size in pages.
    pub fn apply(&mut self, sql: &str) -> (Vec<(PageNumber, Vec<u8>)>, u32) {
        self.conn
            .execute_batch(&format!("BEGIN IMMEDIATE; {sql} COMMIT;"))
            .unwrap();
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        let now = std::fs::read(&self.path).unwrap();
        let ps = self.page_size;
        assert_eq!(now.len() % ps, 0);
        let mut changed = Vec::new();
        for (i, page) in now.chunks(ps).enumerate() {
            let old = self.image.get(i * ps..(i + 1) * ps);
            if old != Some(page) {
                changed.push((PageNumber::new(i as u32 + 1).unwrap(), page.to_vec()));
            }
        }
        let db_size = (now.len() / ps) as u32;
        self.image = now;
        (changed, db_size)
    }

    /// `(rows, digest)` of table `t` in the shadow.
    pub fn digest(&self) -> (u64, u64) {
        fsqlite_testkit::sqlite::table_digest(&self.path, "t").unwrap()
    }

    /// `SELECT count(*), total(length(v)) FROM t` in the shadow.
    pub fn count_and_bytes(&self) -> (i64, i64) {
        self.conn
            .query_row(
                "SELECT count(*), CAST(total(length(v)) AS INTEGER) FROM t",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
    }
}

/// Commits a shadow's changes through the coordinator.
pub fn commit_changes(
    coord: &Coordinator<UnixVfs>,
    cx: &Cx,
    changes: &[(PageNumber, Vec<u8>)],
    db_size: u32,
) -> u32 {
    let pages: Vec<(PageNumber, &[u8])> = changes.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    coord.commit(cx, &pages, db_size).unwrap()
}

/// Options for tests: full sync, no env kill hook, short probe.
pub fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        probe_timeout: Duration::from_millis(500),
        kill_at: None,
        ..CoordinatorOptions::default()
    }
}

/// Opens a hybrid coordinator on `db` through `UnixVfs`.
pub fn open(db: &Path, opts: CoordinatorOptions) -> fsqlite_error::Result<Coordinator<UnixVfs>> {
    Coordinator::open(&Cx::new(), Arc::new(UnixVfs::new()), db, opts)
}

/// Installs a tracing subscriber once (RUST_LOG controls it), so failures show the log.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
