//! SQLite's own snapshot API (`sqlite3_snapshot_get/open/cmp/recover`) through
//! rusqlite's raw handle, for tests that compare our snapshots with SQLite's. The bundled
//! SQLite is built with `SQLITE_ENABLE_SNAPSHOT` (and `SQLITE_ENABLE_DBPAGE_VTAB`, for
//! [`pages`]) by the workspace's `.cargo/config.toml`. This module holds the crate's only
//! `unsafe` (the FFI calls).

use std::ffi::CString;

use rusqlite::{Connection, ffi};

/// A `sqlite3_snapshot` SQLite allocated, or one we built from bytes.
pub enum Snap {
    Sqlite(*mut ffi::sqlite3_snapshot),
    Ours(Box<ffi::sqlite3_snapshot>),
}

impl Snap {
    fn ptr(&self) -> *mut ffi::sqlite3_snapshot {
        match self {
            Snap::Sqlite(p) => *p,
            // SQLite only reads a snapshot it is handed.
            Snap::Ours(b) => std::ptr::from_ref::<ffi::sqlite3_snapshot>(b).cast_mut(),
        }
    }

    /// The 48 bytes SQLite keeps (its copy of the WAL-index header).
    pub fn bytes(&self) -> [u8; 48] {
        // SAFETY: the pointer is a live sqlite3_snapshot (SQLite's allocation, freed
        // only in Drop, or our Box); the struct is exactly 48 bytes of `hidden`.
        unsafe { (*self.ptr()).hidden }
    }

    pub fn from_bytes(b: [u8; 48]) -> Self {
        Snap::Ours(Box::new(ffi::sqlite3_snapshot { hidden: b }))
    }
}

impl Drop for Snap {
    fn drop(&mut self) {
        if let Snap::Sqlite(p) = self {
            // SAFETY: `p` came from sqlite3_snapshot_get and is freed once, here.
            unsafe { ffi::sqlite3_snapshot_free(*p) };
        }
    }
}

fn main() -> CString {
    CString::new("main").unwrap()
}

/// `sqlite3_snapshot_get` inside a fresh read transaction (left open: the caller
/// ends it with COMMIT).
pub fn get(conn: &Connection) -> Snap {
    conn.execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
        .unwrap();
    let mut p: *mut ffi::sqlite3_snapshot = std::ptr::null_mut();
    // SAFETY: the handle is a live connection with a read transaction open; `p`
    // receives a snapshot SQLite allocates.
    let rc = unsafe { ffi::sqlite3_snapshot_get(conn.handle(), main().as_ptr(), &raw mut p) };
    assert_eq!(rc, ffi::SQLITE_OK, "sqlite3_snapshot_get");
    Snap::Sqlite(p)
}

/// `BEGIN` + `sqlite3_snapshot_open`: the result code; on success a read
/// transaction on the snapshot is open (end it with COMMIT).
pub fn open(conn: &Connection, snap: &Snap) -> i32 {
    // The pager opens the WAL at its first read; snapshot_open needs it open.
    conn.execute_batch("SELECT count(*) FROM sqlite_master; BEGIN")
        .unwrap();
    // SAFETY: a live connection inside BEGIN with no read yet; SQLite only copies
    // the snapshot's bytes.
    let rc = unsafe { ffi::sqlite3_snapshot_open(conn.handle(), main().as_ptr(), snap.ptr()) };
    if rc != ffi::SQLITE_OK {
        conn.execute_batch("COMMIT").unwrap();
    }
    rc
}

/// `sqlite3_snapshot_cmp`.
pub fn cmp(a: &Snap, b: &Snap) -> i32 {
    // SAFETY: both are live snapshots of the same database.
    unsafe { ffi::sqlite3_snapshot_cmp(a.ptr(), b.ptr()) }
}

/// `sqlite3_snapshot_recover` (no transaction open).
pub fn recover(conn: &Connection) -> i32 {
    // SAFETY: a live connection with no open transaction.
    unsafe { ffi::sqlite3_snapshot_recover(conn.handle(), main().as_ptr()) }
}

/// Every page of the snapshot `conn` has open, through `sqlite_dbpage`.
pub fn pages(conn: &Connection) -> Vec<Vec<u8>> {
    let mut st = conn
        .prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")
        .expect("sqlite_dbpage (SQLITE_ENABLE_DBPAGE_VTAB)");
    let rows = st
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .expect("query sqlite_dbpage");
    let mut out = Vec::new();
    for (i, row) in rows.enumerate() {
        let (pgno, data) = row.expect("a sqlite_dbpage row");
        assert_eq!(pgno, i as i64 + 1);
        out.push(data);
    }
    out
}

/// Every page of `snap` as SQLite reads it on a fresh connection to `db`, or the result
/// code of `sqlite3_snapshot_open` when SQLite refuses it.
pub fn pages_at(db: &std::path::Path, snap: &Snap) -> Result<Vec<Vec<u8>>, i32> {
    let c = Connection::open(db).expect("open the database with SQLite");
    let rc = open(&c, snap);
    if rc != ffi::SQLITE_OK {
        return Err(rc);
    }
    let out = pages(&c);
    c.execute_batch("COMMIT").expect("end the read transaction");
    Ok(out)
}
