//! The recovery barrier's read-back beside the database fsync, on real files
//! (`UnixVfs`): `UnixFile` can `fsync` through a shared reference once its directory is
//! synced, so `execute_checkpoint_on_file_with` reads the written pages back while the
//! fsync waits on the disk, with the same bytes and verdict as reading back after it.
//! A handle that created its file (its directory not yet synced) keeps the strict order.

use std::path::Path;

use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs, VfsFile};
use fsqlite_wal::checkpoint::plan_backfill;
use fsqlite_wal::checkpoint_executor::{
    BARRIER_OVERLAP_MIN_BYTES, CheckpointJob, CheckpointThreads, execute_checkpoint_on_file_with,
};
use fsqlite_wal::recovery_fence::PageVerifyMode;

const PS: usize = 4096;
const PAGES: u32 = 1024; // 4 MiB, above BARRIER_OVERLAP_MIN_BYTES

mod common;

fn page(p: u32) -> Vec<u8> {
    common::page_bytes(PS, p, 1)
}

/// A WAL image whose frame `i` holds page `i` (the executor reads only page data), and
/// an empty database file, both written with `std::fs` so the `UnixVfs` handles opened
/// afterwards did not create them.
fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut wal = vec![0u8; 32];
    for p in 1..=PAGES {
        wal.extend_from_slice(&[0u8; 24]);
        wal.extend_from_slice(&page(p));
    }
    let (db, w) = (dir.join("o.db"), dir.join("o.db-wal"));
    std::fs::write(&w, wal).unwrap();
    std::fs::write(&db, b"").unwrap();
    (db, w)
}

fn run(
    vfs: &UnixVfs,
    db: &mut impl VfsFile,
    wal_path: &Path,
) -> fsqlite_wal::checkpoint_executor::CheckpointReport {
    let cx = Cx::new();
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::WAL;
    let (wal, _) = vfs.open(&cx, Some(wal_path), flags).unwrap();
    let plan = plan_backfill((1..=PAGES).map(|p| (p, p)), 0, PAGES, PAGES, 256);
    let job = CheckpointJob {
        page_size: PS as u32,
        plan: &plan,
        n_page: PAGES,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };
    execute_checkpoint_on_file_with(&cx, &wal, &job, db, CheckpointThreads::Two).unwrap()
}

#[test]
fn a_unix_file_reads_back_beside_its_fsync_with_the_same_result() {
    let tmp = tempfile::tempdir().unwrap();
    let (db_path, wal_path) = files(tmp.path());
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB;
    let (mut db, _) = vfs.open(&cx, Some(&db_path), flags).unwrap();
    assert!(db.can_sync_shared());
    let rep = run(&vfs, &mut db, &wal_path);
    assert!(rep.bytes_written >= BARRIER_OVERLAP_MIN_BYTES);
    assert!(rep.barrier_overlapped, "{rep:?}");
    assert!(rep.verify.is_match());
    assert_eq!(rep.verify.pages_checked, u64::from(PAGES));
    let bytes = std::fs::read(&db_path).unwrap();
    let want: Vec<u8> = (1..=PAGES).flat_map(page).collect();
    assert!(bytes == want, "the database holds every page of the WAL");
}

#[test]
fn a_handle_that_created_its_file_syncs_before_reading_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, wal_path) = files(tmp.path());
    let db_path = tmp.path().join("new.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    let (mut db, _) = vfs.open(&cx, Some(&db_path), flags).unwrap();
    // Its directory must be synced by `sync` first.
    assert!(!db.can_sync_shared());
    assert!(db.sync_shared(&cx, fsqlite_types::SyncFlags::FULL).is_err());
    let rep = run(&vfs, &mut db, &wal_path);
    assert!(!rep.barrier_overlapped, "{rep:?}");
    assert!(rep.verify.is_match());
    // Its checkpoint's fsync synced the directory: the next one can overlap.
    assert!(db.can_sync_shared());
    let rep = run(&vfs, &mut db, &wal_path);
    assert!(rep.barrier_overlapped, "{rep:?}");
    assert!(rep.verify.is_match());
}
