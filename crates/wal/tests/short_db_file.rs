//! `Wal::open` on a database file shorter than the 100-byte database header (a copy
//! interrupted after the magic): a `CannotOpen` error that says so, never a panic, never
//! "does not start with \"SQLite format 3\"".

use std::sync::Arc;

use fsqlite_error::FrankenError;
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::db_header::{DB_MAGIC, DbHeader};
use fsqlite_wal::{Wal, WalOptions};

fn open_error(db: &std::path::Path) -> FrankenError {
    let cx = Cx::new();
    match Wal::open(&cx, Arc::new(UnixVfs::new()), db, WalOptions::default()) {
        Ok(_) => panic!(
            "Wal::open accepted a {}-byte database file",
            db.metadata().unwrap().len()
        ),
        Err(e) => e,
    }
}

#[test]
fn wal_open_on_a_16_byte_file_holding_the_magic_is_cannot_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("short.db");
    std::fs::write(&db, DB_MAGIC).unwrap();
    let e = open_error(&db);
    assert!(matches!(e, FrankenError::CannotOpen { .. }), "{e:?}");
    let m = e.to_string();
    assert!(m.contains(db.to_str().unwrap()), "{m}");
    assert!(
        m.contains("shorter than the header") || m.contains("shorter than the 100-byte"),
        "{m}"
    );
    assert!(!m.contains("does not start with"), "{m}");
    assert!(!m.contains("invalid page size"), "{m}");
    // The database file itself is left as it was.
    assert_eq!(std::fs::read(&db).unwrap(), DB_MAGIC);
}

/// What `Wal::open` reports once it passes the bytes it really read to
/// `DbHeader::parse` (`&head[..got]` in `connection.rs`), rather than the zero-padded
/// 100-byte buffer: the file's length.
#[test]
fn wal_open_on_a_16_byte_file_names_its_length() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("short.db");
    std::fs::write(&db, DB_MAGIC).unwrap();
    let m = open_error(&db).to_string();
    assert!(
        m.contains("the file is 16 bytes, shorter than the 100-byte SQLite database header"),
        "{m}"
    );
}

#[test]
fn the_header_parser_names_the_length_of_a_short_file() {
    let db = std::path::Path::new("/nowhere/short.db");
    for len in [1usize, 15, 16, 17, 50, 99] {
        let mut bytes = DB_MAGIC.to_vec();
        bytes.resize(100, 0);
        bytes[16..18].copy_from_slice(&4096u16.to_be_bytes());
        bytes[18] = 2;
        bytes[19] = 2;
        let e = DbHeader::parse(&bytes[..len], db).unwrap_err();
        assert!(matches!(e, FrankenError::CannotOpen { .. }), "{e:?}");
        let m = e.to_string();
        assert!(
            m.contains(&format!(
                "the file is {len} bytes, shorter than the 100-byte SQLite database header"
            )),
            "{len}: {m}"
        );
    }
}
