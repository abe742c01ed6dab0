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
//! Validity rules used at open: (0) a non-empty file must hold the whole 100-byte header,
//! else "the file is N bytes, shorter than the 100-byte SQLite database header";
//! (1) the magic must match, else "not a database";
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
    /// The error for a database file of `len` bytes, `0 < len < 100`: too short to hold
    /// the database header (`CannotOpen` naming the length, with what to do).
    pub fn too_short(path: &Path, len: u64) -> FrankenError {
        FrankenError::cannot_open(
            path,
            format!(
                "the file is {len} bytes, shorter than the {DB_HEADER_SIZE}-byte SQLite database header \
                 (a database file is either empty or holds at least one whole page): it was truncated, \
                 e.g. by an interrupted copy; restore it from a backup or copy it again"
            ),
        )
    }

    /// Parses the database header from `bytes`, what was read from offset 0 of a database
    /// file: at least [`DB_HEADER_SIZE`] bytes, or all of a shorter file (then the error
    /// is [`DbHeader::too_short`], naming its length). `path` names the file in errors.
    ///
    /// A header whose magic is followed by nothing but zeros (what a caller that pads a
    /// short read with zeros passes for a 16-byte file) is also reported as too short
    /// (or zeroed), not as an invalid page size.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < DB_HEADER_SIZE {
            if bytes.starts_with(&DB_MAGIC[..bytes.len().min(DB_MAGIC.len())]) {
                return Err(Self::too_short(path, bytes.len() as u64));
            }
            return Err(FrankenError::cannot_open(
                path,
                format!(
                    "not a SQLite database: the file is {} bytes and does not start with \"SQLite format 3\"",
                    bytes.len()
                ),
            ));
        }
        if &bytes[..DB_MAGIC.len()] != DB_MAGIC {
            return Err(FrankenError::cannot_open(
                path,
                "not a SQLite database (the file does not start with \"SQLite format 3\")",
            ));
        }
        if bytes[DB_MAGIC.len()..DB_HEADER_SIZE]
            .iter()
            .all(|&b| b == 0)
        {
            return Err(FrankenError::cannot_open(
                path,
                format!(
                    "the {DB_HEADER_SIZE}-byte SQLite database header holds only zeros after its magic \
                     \"SQLite format 3\": the file is shorter than the header (truncated, e.g. by an \
                     interrupted copy) or its header was zeroed; restore it from a backup or copy it again"
                ),
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

    #[test]
    fn a_file_shorter_than_the_header_names_its_length() {
        let p = Path::new("/x.db");
        // All of a 16-byte file: exactly the magic.
        let e = DbHeader::parse(DB_MAGIC, p).unwrap_err();
        assert!(matches!(e, FrankenError::CannotOpen { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains("the file is 16 bytes, shorter than the 100-byte SQLite database header"),
            "{m}"
        );
        assert!(m.contains("restore it from a backup"), "{m}");
        assert!(!m.contains("does not start with"), "{m}");
        // A prefix of the magic, and one byte short of a full header.
        let m = DbHeader::parse(b"SQLite", p).unwrap_err().to_string();
        assert!(m.contains("the file is 6 bytes, shorter than"), "{m}");
        let m = DbHeader::parse(&header(4096, 2, 2)[..99], p)
            .unwrap_err()
            .to_string();
        assert!(m.contains("the file is 99 bytes, shorter than"), "{m}");
        // A short file that is not a database at all.
        let m = DbHeader::parse(b"hello", p).unwrap_err().to_string();
        assert!(
            m.contains("not a SQLite database: the file is 5 bytes and does not start with"),
            "{m}"
        );
        // A caller that zero-pads a short read: the magic then only zeros.
        let mut padded = [0u8; DB_HEADER_SIZE];
        padded[..16].copy_from_slice(DB_MAGIC);
        let m = DbHeader::parse(&padded, p).unwrap_err().to_string();
        assert!(
            m.contains("holds only zeros after its magic") && m.contains("shorter than the header"),
            "{m}"
        );
        assert_eq!(
            DbHeader::too_short(p, 42).to_string(),
            DbHeader::parse(&header(4096, 2, 2)[..42], p)
                .unwrap_err()
                .to_string()
        );
    }
}
