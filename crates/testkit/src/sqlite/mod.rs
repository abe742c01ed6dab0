//! Real SQLite files built with rusqlite (the bundled SQLite), and independent readers of
//! their WAL and WAL-index images, used as oracles by the interop and crash tests.
//!
//! - [`SqliteWalDb`]: a database in WAL mode with `wal_autocheckpoint=0`, kept open, with a
//!   deterministic workload ([`SqliteWalDb::run_workload`]) on the table [`TABLE`]
//!   `t(id INTEGER PRIMARY KEY, v BLOB)`, and [`SqliteWalDb::snapshot_files`] to copy the db,
//!   `-wal` and `-shm` while the connection is still open (so SQLite has neither
//!   checkpointed nor deleted the WAL).
//! - [`read_wal_header`], [`read_wal_frames`], [`wal_scan`] (module [`wal`]) and
//!   [`read_shm_header`] (module [`shm`]): byte-level readers that share no code with
//!   `fsqlite-wal`; each module documents its layout.
//! - [`sqlite_checkpoint_copy`], [`integrity_check`], [`table_digest`],
//!   [`sqlite_page_images`], [`query_rows`]: SQLite itself as a differential oracle on a
//!   file (usually a copy). They open the file with `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`, so
//!   closing the oracle connection does not checkpoint or delete the WAL behind the test's
//!   back; only the `-shm` may be rebuilt (SQLite recovers it when it is the first opener).
//!
//! # Digest
//!
//! [`table_digest`] hashes every row in `rowid` order with XXH3-64: for each row the column
//! count (u64 LE), then per column a type tag ([`TAG_NULL`] .. [`TAG_BLOB`]) and the value
//! (i64 LE; f64 bits LE; text/blob as length u64 LE followed by the bytes).

pub mod shm;
pub mod snapshot;
pub mod wal;

use std::path::{Path, PathBuf};

use fsqlite_error::{FrankenError, Result};
use rusqlite::config::DbConfig;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use xxhash_rust::xxh3::Xxh3;

use crate::rng::Rng;

pub use shm::{
    INDEX_HDR_SIZE, RawShmHeader, SHM_HEADER_SIZE, WAL_NREADER, WALINDEX_VERSION, decode_sz_page,
    read_shm_header,
};
pub use wal::{
    FRAME_HEADER_SIZE, RawFrame, RawWalHeader, WAL_FORMAT_VERSION, WAL_HEADER_SIZE, WAL_MAGIC,
    WalScan, read_wal_frames, read_wal_header, wal_checksum, wal_scan,
};

/// The workload table.
pub const TABLE: &str = "t";
/// Digest type tag of a NULL value.
pub const TAG_NULL: u8 = 0;
/// Digest type tag of an integer.
pub const TAG_INTEGER: u8 = 1;
/// Digest type tag of a real.
pub const TAG_REAL: u8 = 2;
/// Digest type tag of a text value.
pub const TAG_TEXT: u8 = 3;
/// Digest type tag of a blob.
pub const TAG_BLOB: u8 = 4;

/// The 16-byte magic at the start of every SQLite database file.
const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Offset of the big-endian u16 page size in the database header (1 means 65536).
const DB_HDR_PAGE_SIZE: usize = DB_MAGIC.len();
/// Largest payload the workload writes, whatever the page size.
const MAX_PAYLOAD: u64 = 24 * 1024;
/// Percentages of workload operations: inserts below the first bound, updates below the
/// second, deletes above.
const INSERT_PCT: u64 = 50;
const UPDATE_PCT: u64 = 80;

/// Turns a rusqlite error into a [`FrankenError`] that names the file and the statement.
fn sql_err(path: &Path, what: &str, e: &rusqlite::Error) -> FrankenError {
    use rusqlite::ErrorCode as C;
    let detail = format!("SQLite on {}: {what}: {e}", path.display());
    match e.sqlite_error_code() {
        Some(C::DatabaseBusy) => {
            tracing::debug!(target: "fsqlite.testkit.sqlite", "{detail}");
            FrankenError::Busy
        }
        Some(C::DatabaseLocked) => {
            tracing::debug!(target: "fsqlite.testkit.sqlite", "{detail}");
            FrankenError::Locked
        }
        Some(C::DatabaseCorrupt | C::NotADatabase) => FrankenError::db_corrupt(detail),
        Some(C::CannotOpen) => FrankenError::cannot_open(path, e.to_string()),
        _ => FrankenError::internal(detail),
    }
}

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| FrankenError::io("read", Some(path.to_path_buf()), e))
}

/// `<db>-wal`.
pub fn wal_path(db: &Path) -> PathBuf {
    suffixed(db, "-wal")
}

/// `<db>-shm`.
pub fn shm_path(db: &Path) -> PathBuf {
    suffixed(db, "-shm")
}

fn suffixed(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Opens an existing database for an oracle check, with checkpoint-on-close disabled.
pub fn open_existing(db: &Path) -> Result<Connection> {
    if !db.is_file() {
        return Err(FrankenError::cannot_open(db, "no such database file"));
    }
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err(db, "open", &e))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| sql_err(db, "set SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", &e))?;
    Ok(conn)
}

fn close_conn(db: &Path, conn: Connection) -> Result<()> {
    conn.close().map_err(|(_, e)| sql_err(db, "close", &e))
}

/// Renders one SQLite value as text: NULL as `NULL`, numbers in decimal, text as is, blobs
/// as `x'<lowercase hex>'`.
fn value_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => {
            use std::fmt::Write as _;
            let mut s = String::with_capacity(3 + 2 * b.len());
            s.push_str("x'");
            for byte in b {
                let _ = write!(s, "{byte:02x}");
            }
            s.push('\'');
            s
        }
    }
}

fn rows_of(db: &Path, conn: &Connection, sql: &str) -> Result<Vec<Vec<String>>> {
    let err = |e: rusqlite::Error| sql_err(db, sql, &e);
    let mut stmt = conn.prepare(sql).map_err(err)?;
    let ncol = stmt.column_count();
    let mut rows = stmt.query([]).map_err(err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(err)? {
        let mut r = Vec::with_capacity(ncol);
        for i in 0..ncol {
            r.push(value_text(row.get_ref(i).map_err(err)?));
        }
        out.push(r);
    }
    Ok(out)
}

fn i64_of(db: &Path, conn: &Connection, sql: &str) -> Result<i64> {
    conn.query_row(sql, [], |r| r.get::<_, i64>(0))
        .map_err(|e| sql_err(db, sql, &e))
}

/// Checks that `name` is a plain identifier (so it can be quoted into SQL safely).
fn check_ident(name: &str) -> Result<()> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(FrankenError::out_of_range(
            "table name",
            format!("{name:?}"),
        ))
    }
}

fn digest_on(db: &Path, conn: &Connection, table: &str) -> Result<(u64, u64)> {
    check_ident(table)?;
    let sql = format!("SELECT * FROM \"{table}\" ORDER BY rowid");
    let err = |e: rusqlite::Error| sql_err(db, &sql, &e);
    let mut stmt = conn.prepare(&sql).map_err(err)?;
    let ncol = stmt.column_count();
    let mut rows = stmt.query([]).map_err(err)?;
    let mut h = Xxh3::new();
    let mut count = 0u64;
    while let Some(row) = rows.next().map_err(err)? {
        count += 1;
        h.update(&(ncol as u64).to_le_bytes());
        for i in 0..ncol {
            match row.get_ref(i).map_err(err)? {
                ValueRef::Null => h.update(&[TAG_NULL]),
                ValueRef::Integer(v) => {
                    h.update(&[TAG_INTEGER]);
                    h.update(&v.to_le_bytes());
                }
                ValueRef::Real(v) => {
                    h.update(&[TAG_REAL]);
                    h.update(&v.to_bits().to_le_bytes());
                }
                ValueRef::Text(t) => {
                    h.update(&[TAG_TEXT]);
                    h.update(&(t.len() as u64).to_le_bytes());
                    h.update(t);
                }
                ValueRef::Blob(b) => {
                    h.update(&[TAG_BLOB]);
                    h.update(&(b.len() as u64).to_le_bytes());
                    h.update(b);
                }
            }
        }
    }
    Ok((count, h.digest()))
}

/// What [`SqliteWalDb::run_workload`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Transactions committed.
    pub commits: u64,
    /// Rows inserted.
    pub inserts: u64,
    /// Rows updated.
    pub updates: u64,
    /// Rows deleted.
    pub deletes: u64,
    /// Rows in the table afterwards.
    pub rows: u64,
}

/// A real SQLite database in WAL mode (`wal_autocheckpoint=0`), kept open by rusqlite.
///
/// Dropping it closes the connection normally (SQLite then checkpoints and deletes the
/// WAL); use [`SqliteWalDb::close_without_checkpoint`] to keep the WAL.
pub struct SqliteWalDb {
    conn: Connection,
    path: PathBuf,
    page_size: u32,
}

impl std::fmt::Debug for SqliteWalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWalDb")
            .field("path", &self.path)
            .field("page_size", &self.page_size)
            .finish_non_exhaustive()
    }
}

impl SqliteWalDb {
    /// Creates `dir/name` (which must not exist) with the given page size (a power of two
    /// in 512..=65536), switches it to WAL mode, disables auto-checkpoints and creates the
    /// table [`TABLE`] `t(id INTEGER PRIMARY KEY, v BLOB)`.
    pub fn create(dir: &Path, name: &str, page_size: u32) -> Result<Self> {
        if !page_size.is_power_of_two() || !(512..=65_536).contains(&page_size) {
            return Err(FrankenError::out_of_range("SQLite page size", page_size));
        }
        let path = dir.join(name);
        if path.exists() {
            return Err(FrankenError::cannot_open(
                &path,
                "the database already exists",
            ));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sql_err(&path, "create", &e))?;
        let db = Self {
            conn,
            path,
            page_size,
        };
        db.exec(&format!("PRAGMA page_size={page_size}"))?;
        let mode: String = db
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(|e| sql_err(&db.path, "PRAGMA journal_mode=WAL", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(FrankenError::internal(format!(
                "SQLite refused WAL mode on {}: journal_mode is {mode}",
                db.path.display()
            )));
        }
        db.exec("PRAGMA wal_autocheckpoint=0")?;
        db.exec(&format!(
            "CREATE TABLE {TABLE}(id INTEGER PRIMARY KEY, v BLOB)"
        ))?;
        let actual = db.query_i64("PRAGMA page_size")?;
        if actual != i64::from(page_size) {
            return Err(FrankenError::internal(format!(
                "SQLite used page size {actual} instead of {page_size} on {}",
                db.path.display()
            )));
        }
        tracing::debug!(target: "fsqlite.testkit.sqlite", path = %db.path.display(), page_size, "created WAL database");
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The `-wal` file.
    pub fn wal_path(&self) -> PathBuf {
        wal_path(&self.path)
    }

    /// The `-shm` file.
    pub fn shm_path(&self) -> PathBuf {
        shm_path(&self.path)
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The open rusqlite connection, for anything the helpers do not cover.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Runs one or more statements (rows, if any, are discarded).
    pub fn exec(&self, sql: &str) -> Result<()> {
        self.conn
            .execute_batch(sql)
            .map_err(|e| sql_err(&self.path, sql, &e))
    }

    /// The first column of the first row of `sql`, as an integer.
    pub fn query_i64(&self, sql: &str) -> Result<i64> {
        i64_of(&self.path, &self.conn, sql)
    }

    /// All rows of `sql`, each value rendered as text (NULL as `NULL`, blobs as `x'..'`).
    pub fn query_rows(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        rows_of(&self.path, &self.conn, sql)
    }

    /// `(row count, digest)` of `table` through this connection (see [`table_digest`]).
    pub fn table_digest(&self, table: &str) -> Result<(u64, u64)> {
        digest_on(&self.path, &self.conn, table)
    }

    /// A deterministic workload on [`TABLE`]: `commits` transactions (`BEGIN IMMEDIATE` ..
    /// `COMMIT`) of `ops_per_commit` operations each; every operation is an insert (50%, or
    /// always while the table is empty), an update of a random existing row (30%) or a
    /// delete of one (20%). Payloads are random blobs of 16 bytes up to 1.5 pages
    /// (at most 24 KiB), so rows overflow and each commit touches many pages. The same
    /// seed on the same starting table gives byte-identical contents.
    pub fn run_workload(
        &mut self,
        seed: u64,
        commits: u32,
        ops_per_commit: u32,
    ) -> Result<WorkloadSummary> {
        let mut rng = Rng::new(seed);
        let mut ids: Vec<i64> = self
            .query_rows(&format!("SELECT id FROM {TABLE} ORDER BY id"))?
            .iter()
            .filter_map(|r| r.first().and_then(|v| v.parse().ok()))
            .collect();
        let mut next_id = ids.last().map_or(1, |m| m + 1);
        let max_payload = (u64::from(self.page_size) * 3 / 2).min(MAX_PAYLOAD);
        let mut sum = WorkloadSummary::default();
        let mut payload = Vec::new();
        for _ in 0..commits {
            self.exec("BEGIN IMMEDIATE")?;
            let txn = (|| -> Result<()> {
                for _ in 0..ops_per_commit {
                    let pick = rng.below(100);
                    payload.resize(16 + rng.below(max_payload - 15) as usize, 0);
                    rng.fill(&mut payload);
                    if ids.is_empty() || pick < INSERT_PCT {
                        let sql = format!("INSERT INTO {TABLE}(id, v) VALUES (?1, ?2)");
                        self.conn
                            .execute(&sql, rusqlite::params![next_id, payload])
                            .map_err(|e| sql_err(&self.path, &sql, &e))?;
                        ids.push(next_id);
                        next_id += 1;
                        sum.inserts += 1;
                    } else if pick < UPDATE_PCT {
                        let id = ids[rng.below(ids.len() as u64) as usize];
                        let sql = format!("UPDATE {TABLE} SET v = ?2 WHERE id = ?1");
                        self.conn
                            .execute(&sql, rusqlite::params![id, payload])
                            .map_err(|e| sql_err(&self.path, &sql, &e))?;
                        sum.updates += 1;
                    } else {
                        let id = ids.swap_remove(rng.below(ids.len() as u64) as usize);
                        let sql = format!("DELETE FROM {TABLE} WHERE id = ?1");
                        self.conn
                            .execute(&sql, rusqlite::params![id])
                            .map_err(|e| sql_err(&self.path, &sql, &e))?;
                        sum.deletes += 1;
                    }
                }
                Ok(())
            })();
            if let Err(e) = txn {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(e);
            }
            self.exec("COMMIT")?;
            sum.commits += 1;
        }
        sum.rows = ids.len() as u64;
        Ok(sum)
    }

    /// Copies the db, `-wal` and `-shm` into `dest_dir` (created if needed) under the same
    /// file names, while the connection stays open. Returns `(db, wal, shm)`.
    pub fn snapshot_files(&self, dest_dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
        std::fs::create_dir_all(dest_dir)
            .map_err(|e| FrankenError::io("create_dir_all", Some(dest_dir.to_path_buf()), e))?;
        let name = self.path.file_name().ok_or_else(|| {
            FrankenError::internal(format!("{} has no file name", self.path.display()))
        })?;
        let db = dest_dir.join(name);
        let out = (db.clone(), wal_path(&db), shm_path(&db));
        for (from, to) in [
            (self.path.clone(), &out.0),
            (self.wal_path(), &out.1),
            (self.shm_path(), &out.2),
        ] {
            std::fs::copy(&from, to)
                .map_err(|e| FrankenError::io("copy", Some(from.clone()), e))?;
        }
        Ok(out)
    }

    /// The current `-shm` header, read from the file while the connection is open.
    pub fn shm_header(&self) -> Result<RawShmHeader> {
        read_shm_header(&read_file(&self.shm_path())?)
    }

    /// The current `-wal` file, scanned with the valid-prefix rule.
    pub fn wal_scan(&self) -> Result<WalScan> {
        wal_scan(&read_file(&self.wal_path())?)
    }

    /// Closes the connection with `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE` set: the `-wal` and
    /// `-shm` files stay on disk exactly as the last commit left them.
    pub fn close_without_checkpoint(self) -> Result<()> {
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(|e| sql_err(&self.path, "set SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE", &e))?;
        close_conn(&self.path, self.conn)
    }

    /// Closes the connection normally (the last connection checkpoints and deletes the WAL).
    pub fn close(self) -> Result<()> {
        close_conn(&self.path, self.conn)
    }
}

/// Opens `db` (usually a copy) with rusqlite and runs `PRAGMA wal_checkpoint(<mode>)`,
/// `mode` being `PASSIVE`, `FULL`, `RESTART` or `TRUNCATE` (any case). Returns SQLite's
/// `(busy, log, checkpointed)` row: `log` is the WAL's mxFrame after SQLite's own recovery
/// (-1 when the db is not in WAL mode). The connection closes without a further checkpoint.
pub fn sqlite_checkpoint_copy(db: &Path, mode: &str) -> Result<(i64, i64, i64)> {
    let upper = mode.to_ascii_uppercase();
    if !matches!(upper.as_str(), "PASSIVE" | "FULL" | "RESTART" | "TRUNCATE") {
        return Err(FrankenError::out_of_range("checkpoint mode", mode));
    }
    let conn = open_existing(db)?;
    let sql = format!("PRAGMA wal_checkpoint({upper})");
    let row = conn
        .query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .map_err(|e| sql_err(db, &sql, &e))?;
    close_conn(db, conn)?;
    Ok(row)
}

/// `PRAGMA integrity_check` on `db` through rusqlite: `"ok"`, or SQLite's messages joined
/// by newlines.
pub fn integrity_check(db: &Path) -> Result<String> {
    let conn = open_existing(db)?;
    let rows = rows_of(db, &conn, "PRAGMA integrity_check")?;
    close_conn(db, conn)?;
    Ok(rows
        .into_iter()
        .map(|r| r.join(" "))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// All rows of `sql` on `db` (opened afresh), rendered as in [`SqliteWalDb::query_rows`].
pub fn query_rows(db: &Path, sql: &str) -> Result<Vec<Vec<String>>> {
    let conn = open_existing(db)?;
    let rows = rows_of(db, &conn, sql)?;
    close_conn(db, conn)?;
    Ok(rows)
}

/// `(row count, XXH3 digest of all rows in rowid order)` of `table` in `db` (see the module
/// doc for what is hashed). Equal contents give equal digests on any connection.
pub fn table_digest(db: &Path, table: &str) -> Result<(u64, u64)> {
    let conn = open_existing(db)?;
    let out = digest_on(db, &conn, table)?;
    close_conn(db, conn)?;
    Ok(out)
}

/// The page images of `db` after SQLite has checkpointed its WAL into it:
/// runs `PRAGMA wal_checkpoint(TRUNCATE)` (an error if SQLite reports busy), then reads the
/// file and splits it by the page size from its header. Element `i` is page `i + 1`.
pub fn sqlite_page_images(db: &Path) -> Result<Vec<Vec<u8>>> {
    let conn = open_existing(db)?;
    let sql = "PRAGMA wal_checkpoint(TRUNCATE)";
    let busy = i64_of(db, &conn, sql)?;
    close_conn(db, conn)?;
    if busy != 0 {
        return Err(FrankenError::internal(format!(
            "{sql} on {} could not complete (busy)",
            db.display()
        )));
    }
    let bytes = read_file(db)?;
    if bytes.len() < DB_HDR_PAGE_SIZE + 2 || &bytes[..DB_MAGIC.len()] != DB_MAGIC {
        return Err(FrankenError::db_corrupt(format!(
            "{} does not start with the SQLite header magic",
            db.display()
        )));
    }
    let raw = u16::from_be_bytes([bytes[DB_HDR_PAGE_SIZE], bytes[DB_HDR_PAGE_SIZE + 1]]);
    let page_size = if raw == 1 { 65_536 } else { usize::from(raw) };
    if !page_size.is_power_of_two() || page_size < 512 || !bytes.len().is_multiple_of(page_size) {
        return Err(FrankenError::db_corrupt(format!(
            "{}: page size {page_size} (offset {DB_HDR_PAGE_SIZE}) does not divide the file \
             size {}",
            db.display(),
            bytes.len()
        )));
    }
    Ok(bytes.chunks(page_size).map(<[u8]>::to_vec).collect())
}
