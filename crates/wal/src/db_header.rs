//! The part of SQLite's 100-byte database header that the WAL layer reads.
//!
//! ```text
//! offset size field
//!      0   16 magic "SQLite format 3\0"
//!     16    2 page size, big-endian; 1 means 65536
//!     18    1 file-format write version: 1 = rollback journal, 2 = WAL
//!     19    1 file-format read version:  1 = rollback journal, 2 = WAL
//!     20    1 bytes reserved at the end of each page (16 when pages carry an xxh3 trailer)
//!     24    4 file change counter
//!     28    4 database size in pages ("in-header database size")
//! ```
//!
//! Validity rules used at open: (1) the magic must match, else "not a database";
//! (2) the page size must decode to a power of two in 512..=65536; (3) read version 2
//! means WAL mode, a read version above 2 cannot be read, a write version above 2 means
//! read-only (SQLite's rules, FORMAT.md §10).

use std::path::Path;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::PageSize;

/// The 16-byte magic at the start of every SQLite database.
pub const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Length of the database header.
pub const DB_HEADER_SIZE: usize = 100;
/// Offset of the big-endian u16 page size.
pub const DB_PAGE_SIZE_OFFSET: usize = DB_MAGIC.len();
/// Offset of the write version byte.
pub const DB_WRITE_VERSION_OFFSET: usize = DB_PAGE_SIZE_OFFSET + 2;
/// Offset of the read version byte.
pub const DB_READ_VERSION_OFFSET: usize = DB_WRITE_VERSION_OFFSET + 1;
/// Offset of the reserved-bytes-per-page byte.
pub const DB_RESERVED_OFFSET: usize = DB_READ_VERSION_OFFSET + 1;
/// Offset of the big-endian file change counter.
pub const DB_CHANGE_COUNTER_OFFSET: usize = 24;
/// Offset of the big-endian in-header database size.
pub const DB_SIZE_OFFSET: usize = DB_CHANGE_COUNTER_OFFSET + 4;

/// The fields of the database header the WAL layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbHeader {
    /// Page size.
    pub page_size: PageSize,
    /// File-format write version (2 = WAL).
    pub write_version: u8,
    /// File-format read version (2 = WAL).
    pub read_version: u8,
    /// Bytes reserved at the end of each page.
    pub reserved_bytes: u8,
    /// File change counter.
    pub change_counter: u32,
    /// In-header database size in pages.
    pub db_size_pages: u32,
}

impl DbHeader {
    /// Parses the first 100 bytes of a database file. `path` names the file in errors.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < DB_HEADER_SIZE || &bytes[..DB_MAGIC.len()] != DB_MAGIC {
            return Err(FrankenError::cannot_open(
                path,
                "not a SQLite database (the file does not start with \"SQLite format 3\")",
            ));
        }
        let raw = u16::from_be_bytes([bytes[DB_PAGE_SIZE_OFFSET], bytes[DB_PAGE_SIZE_OFFSET + 1]]);
        let page_size = PageSize::from_u16_encoding(raw).ok_or_else(|| {
            FrankenError::cannot_open(
                path,
                format!("the database header has an invalid page size ({raw})"),
            )
        })?;
        let be32 =
            |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        Ok(Self {
            page_size,
            write_version: bytes[DB_WRITE_VERSION_OFFSET],
            read_version: bytes[DB_READ_VERSION_OFFSET],
            reserved_bytes: bytes[DB_RESERVED_OFFSET],
            change_counter: be32(DB_CHANGE_COUNTER_OFFSET),
            db_size_pages: be32(DB_SIZE_OFFSET),
        })
    }

    /// True when the header marks the database as being in WAL mode (bytes 18/19 = 2).
    pub fn is_wal_mode(&self) -> bool {
        self.read_version == 2 && self.write_version == 2
    }

    /// True when pages reserve room for the 16-byte xxh3 trailer.
    pub fn has_page_trailer(&self) -> bool {
        usize::from(self.reserved_bytes) >= crate::checksum::PAGE_CHECKSUM_RESERVED_BYTES
    }

    /// Checks the open rules for a WAL connection; the error says what to do.
    pub fn require_wal_mode(&self, path: &Path) -> Result<()> {
        if self.read_version > 2 {
            return Err(FrankenError::cannot_open(
                path,
                format!(
                    "the database's read version is {} (newer than this library understands)",
                    self.read_version
                ),
            ));
        }
        if !self.is_wal_mode() {
            return Err(FrankenError::cannot_open(
                path,
                "the database is not in WAL mode; run `PRAGMA journal_mode=WAL` with sqlite3 first",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(ps: u16, wv: u8, rv: u8) -> Vec<u8> {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(DB_MAGIC);
        h[16..18].copy_from_slice(&ps.to_be_bytes());
        h[18] = wv;
        h[19] = rv;
        h[28..32].copy_from_slice(&7u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_and_checks_wal_mode() {
        let p = Path::new("/x.db");
        let h = DbHeader::parse(&header(1, 2, 2), p).unwrap();
        assert_eq!(h.page_size.get(), 65536);
        assert_eq!(h.db_size_pages, 7);
        assert!(h.require_wal_mode(p).is_ok());
        let h = DbHeader::parse(&header(4096, 1, 1), p).unwrap();
        let e = h.require_wal_mode(p).unwrap_err();
        assert!(e.to_string().contains("not in WAL mode"), "{e}");
        assert!(DbHeader::parse(b"hello", p).is_err());
        assert!(DbHeader::parse(&header(1000, 2, 2), p).is_err());
        let mut bad = header(4096, 2, 2);
        bad[0] = b'X';
        assert!(
            DbHeader::parse(&bad, p)
                .unwrap_err()
                .to_string()
                .contains("not a SQLite database")
        );
    }
}
