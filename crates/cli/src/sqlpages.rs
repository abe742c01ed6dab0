//! SQLite-valid page images for a commit, made by SQLite itself.
//!
//! The crash harness and the demo commit through [`fsqlite_wal::Wal`], which moves
//! *pages*; to keep the database a valid SQLite database at every commit, the pages must
//! be ones SQLite would have written. [`SqlPager`] gets them from SQLite:
//!
//! ```text
//! under the WAL write lock (begin_write):
//!   image := pages 1..=db_size read through the write transaction (the current state)
//!   image[18] := image[19] := 1        // see below
//!   in-memory SQLite := sqlite3_deserialize(image)
//!   run the SQL (e.g. one INSERT) on it
//!   next := sqlite3_serialize()        // every page of the next state, made by SQLite
//!   next[18] := next[19] := 2
//!   write_page(p, next[p]) for every page p that differs (or is new); commit(pages(next))
//! ```
//!
//! Header bytes 18 and 19 (`DB_WRITE_VERSION_OFFSET`, `DB_READ_VERSION_OFFSET`) are the
//! file-format versions: 2 marks a WAL-mode database. SQLite's in-memory VFS cannot run
//! WAL mode (it has no shared memory), so it would refuse a WAL-mode image; the image is
//! handed to it as a rollback-mode database (1/1) and the result is marked WAL again
//! (2/2). No other byte is changed: every other byte of every page is SQLite's own.
//! Because the write lock is held from the read of the current state to the commit,
//! each commit is a transition SQLite itself made from the exact state it commits on, so
//! the database is valid SQLite after every commit — which `PRAGMA integrity_check`
//! confirms at the end of a run, and a legacy SQLite reader can confirm during it.

use fsqlite_wal::db_header::{DB_READ_VERSION_OFFSET, DB_WRITE_VERSION_OFFSET};
use rusqlite::{Connection, MAIN_DB};

use crate::files::CliError;

/// The file-format version of a rollback-journal database.
pub const LEGACY_FORMAT_VERSION: u8 = 1;
/// The file-format version of a WAL-mode database.
pub const WAL_FORMAT_VERSION_BYTE: u8 = 2;

/// An in-memory SQLite connection that turns "current pages + SQL" into "next pages".
pub struct SqlPager {
    conn: Connection,
}

impl std::fmt::Debug for SqlPager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlPager").finish_non_exhaustive()
    }
}

fn sql_error(what: &str, e: &rusqlite::Error) -> CliError {
    CliError::Failed {
        what: format!("in-memory SQLite failed to {what}: {e}"),
        suggestion: None,
    }
}

fn set_format_versions(image: &mut [u8], v: u8) {
    if image.len() > DB_READ_VERSION_OFFSET {
        image[DB_WRITE_VERSION_OFFSET] = v;
        image[DB_READ_VERSION_OFFSET] = v;
    }
}

impl SqlPager {
    /// A pager with its own in-memory connection.
    pub fn new() -> Result<Self, CliError> {
        let conn = Connection::open_in_memory().map_err(|e| sql_error("open", &e))?;
        Ok(Self { conn })
    }

    /// Loads `image` (the whole current database, WAL-mode header), runs `f` on it, and
    /// returns the next image (WAL-mode header) and `f`'s value. `image` is left as given.
    pub fn apply<T>(
        &mut self,
        image: &mut [u8],
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<(Vec<u8>, T), CliError> {
        set_format_versions(image, LEGACY_FORMAT_VERSION);
        let loaded = self
            .conn
            .deserialize_read_exact(MAIN_DB, &*image, image.len(), false);
        set_format_versions(image, WAL_FORMAT_VERSION_BYTE);
        loaded.map_err(|e| sql_error("load the current pages", &e))?;
        let value = f(&self.conn).map_err(|e| sql_error("apply the change", &e))?;
        let mut next = self
            .conn
            .serialize(MAIN_DB)
            .map_err(|e| sql_error("serialize the next pages", &e))?
            .to_vec();
        set_format_versions(&mut next, WAL_FORMAT_VERSION_BYTE);
        Ok((next, value))
    }
}

/// Page numbers (1-based) of `next` whose bytes differ from `old` or that `old` lacks.
pub fn changed_pages(old: &[u8], next: &[u8], page_size: usize) -> Vec<u32> {
    next.chunks(page_size)
        .enumerate()
        .filter(|(i, chunk)| old.get(i * page_size..(i + 1) * page_size) != Some(*chunk))
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_wal_mode_image_and_changes_few_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "PRAGMA page_size=4096; PRAGMA journal_mode=WAL; CREATE TABLE t(x INTEGER PRIMARY KEY, y BLOB);",
            )
            .unwrap();
        }
        let mut image = std::fs::read(&path).unwrap();
        assert_eq!(image[18], 2);
        let before = image.clone();
        let mut pager = SqlPager::new().unwrap();
        let (next, n) = pager
            .apply(&mut image, |c| {
                c.execute("INSERT INTO t(y) VALUES (zeroblob(100))", [])?;
                c.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(image, before, "the input image is restored");
        assert_eq!(next[18], 2);
        assert_eq!(next[19], 2);
        let changed = changed_pages(&image, &next, 4096);
        assert!(!changed.is_empty() && changed.len() <= 3, "{changed:?}");
        // The next image is a valid WAL-mode database SQLite can open and check.
        std::fs::write(&path, &next).unwrap();
        let c = Connection::open(&path).unwrap();
        let ok: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
