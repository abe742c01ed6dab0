//! `Wal` on a real file in a temporary directory: commit transactions, keep a reader's
//! snapshot on a second connection while a third commit lands, checkpoint through the
//! recovery barrier, and reopen.
//!
//! `cargo run -p fsqlite-wal --example commit_and_read`

use std::path::Path;
use std::sync::Arc;

use fsqlite_error::Result;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::db_header::{
    DB_CHANGE_COUNTER_OFFSET, DB_MAGIC, DB_PAGE_SIZE_OFFSET, DB_READ_VERSION_OFFSET,
    DB_SIZE_OFFSET, DB_WRITE_VERSION_OFFSET,
};
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};

/// Page 1 as a b-tree layer would write it: SQLite's 100-byte header (magic, page size,
/// WAL mode, change counter, database size). A database file must start with it.
fn page_one(wal: &Wal<UnixVfs>, change: u32, db_size: u32) -> Vec<u8> {
    let mut p = vec![0u8; wal.page_size() as usize];
    p[..DB_MAGIC.len()].copy_from_slice(DB_MAGIC);
    let size = wal.page_size() as u16; // 4096 here; 65536 would be stored as 1
    p[DB_PAGE_SIZE_OFFSET..DB_PAGE_SIZE_OFFSET + 2].copy_from_slice(&size.to_be_bytes());
    p[DB_WRITE_VERSION_OFFSET] = 2; // 2 = WAL mode
    p[DB_READ_VERSION_OFFSET] = 2;
    p[DB_CHANGE_COUNTER_OFFSET..DB_CHANGE_COUNTER_OFFSET + 4]
        .copy_from_slice(&change.to_be_bytes());
    p[DB_SIZE_OFFSET..DB_SIZE_OFFSET + 4].copy_from_slice(&db_size.to_be_bytes());
    p
}

/// A page filled with `tag`.
fn page_of(wal: &Wal<UnixVfs>, tag: u8) -> Vec<u8> {
    vec![tag; wal.page_size() as usize]
}

/// The first byte of `page` as `wal` sees it now.
fn first_byte(cx: &Cx, wal: &mut Wal<UnixVfs>, page: PageNumber) -> Result<u8> {
    let mut buf = vec![0u8; wal.page_size() as usize];
    let r = wal.begin_read(cx)?;
    r.read_page(cx, page, &mut buf)?;
    Ok(buf[0])
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn main() -> Result<()> {
    let dir =
        tempfile::tempdir().map_err(|e| fsqlite_error::FrankenError::io("tempdir", None, e))?;
    let db = dir.path().join("app.db");
    let wal_path = dir.path().join("app.db-wal");
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let options = WalOptions {
        auto_checkpoint: None, // checkpoint by hand below
        ..WalOptions::default()
    };
    let p2 = PageNumber::new(2).expect("non-zero");
    let p3 = PageNumber::new(3).expect("non-zero");

    let mut writer = Wal::open(&cx, Arc::clone(&vfs), &db, options.clone())?;
    for tag in 1..=2u8 {
        let page = page_of(&writer, tag);
        let one = page_one(&writer, u32::from(tag), 3);
        let mut tx = writer.begin_write(&cx)?;
        tx.write_page(&cx, PageNumber::ONE, &one)?;
        tx.write_page(&cx, p2, &page)?;
        tx.write_page(&cx, p3, &page)?;
        let mx_frame = tx.commit(&cx, 3)?; // durable (SyncMode::Full) once this returns
        println!(
            "commit {tag}: mxFrame {mx_frame}, -wal is {} bytes",
            file_len(&wal_path)
        );
    }

    // A second connection takes a snapshot; a commit on the first does not change it.
    let mut reader = Wal::open(&cx, Arc::clone(&vfs), &db, options.clone())?;
    {
        let snapshot = reader.begin_read(&cx)?;
        let page = page_of(&writer, 3);
        let one = page_one(&writer, 3, 3);
        let mut tx = writer.begin_write(&cx)?;
        tx.write_page(&cx, PageNumber::ONE, &one)?;
        tx.write_page(&cx, p2, &page)?;
        let mx_frame = tx.commit(&cx, 3)?;
        let mut buf = vec![0u8; writer.page_size() as usize];
        snapshot.read_page(&cx, p2, &mut buf)?;
        println!(
            "commit 3: mxFrame {mx_frame}; the open snapshot (mxFrame {}) still reads page 2 = {}",
            snapshot.mx_frame(),
            buf[0]
        );
    }
    println!(
        "a new snapshot reads page 2 = {}",
        first_byte(&cx, &mut reader, p2)?
    );
    reader.close(&cx)?; // not the last connection: no checkpoint, the -wal stays
    println!(
        "after the reader's close: -wal {} bytes",
        file_len(&wal_path)
    );

    let out = writer.checkpoint(&cx, CheckpointMode::Passive)?;
    println!(
        "checkpoint PASSIVE: {} of {} frames copied into the database (after its fsync, the barrier)",
        out.checkpointed_frames, out.log_frames
    );
    let out = writer.checkpoint(&cx, CheckpointMode::Truncate)?; // reports 0/0, as SQLite does
    println!(
        "checkpoint TRUNCATE: busy {}; database {} bytes, -wal {} bytes",
        out.busy,
        file_len(&db),
        file_len(&wal_path)
    );
    writer.close(&cx)?;

    let mut again = Wal::open(&cx, vfs, &db, options)?;
    println!(
        "reopened: page 2 = {}, page 3 = {}",
        first_byte(&cx, &mut again, p2)?,
        first_byte(&cx, &mut again, p3)?
    );
    again.close(&cx)?;
    Ok(())
}
