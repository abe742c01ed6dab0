//! The recovery barrier's read-back beside the database fsync, on real files
//! (`UnixVfs`): `UnixFile` can `fsync` through a shared reference once its directory is
//! synced, so `execute_checkpoint_on_file_with` reads the written pages back while the
//! fsync waits on the disk, with the same bytes and verdict as reading back after it.
//! A handle that created its file (its directory not yet synced) keeps the strict order.
//! A kill -9 sweep over every operation of such a checkpoint loses nothing.

use std::path::Path;

use fsqlite_testkit::sqlite::wal_path;
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

/// Where the kill -9 child finds its database.
const KILL_DB_ENV: &str = "FSQLITE_OVERLAP_KILL_DB";

/// Copies `db` and its WAL (no `-shm`) to `dir/name`; returns the copy's path.
fn copy_db(db: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let to = dir.join(name);
    std::fs::copy(db, &to).unwrap();
    std::fs::copy(wal_path(db), wal_path(&to)).unwrap();
    to
}

/// Kill -9 at every VFS operation (`FSQLITE_KILL_AT=any:k`: every write, fsync, truncate
/// and shm lock; 33 here) of a process that recovers a 6 MiB SQLite-written WAL and
/// checkpoints it (TRUNCATE) with the read-back beside the database fsync, before and
/// after each one, until the process gets through: every crashed state holds every
/// commit (real SQLite's `integrity_check` and the table's digest on a copy) and our
/// checkpoint of it leaves the database byte-identical to SQLite's checkpoint of the
/// uncrashed files. The database fsync is the overlapped one: killed entering it (the
/// read-back thread running) and right after it returned (before the WAL is truncated).
#[test]
fn kill9_at_every_fsync_of_an_overlapped_checkpoint_loses_nothing() {
    use fsqlite_testkit::child::{ChildSpec, child_role, spawn_self};
    use fsqlite_testkit::sqlite::{
        SqliteWalDb, integrity_check, sqlite_checkpoint_copy, table_digest,
    };
    use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    use std::sync::Arc;
    use std::time::Duration;

    let opts = || WalOptions {
        checkpoint_on_close: false,
        auto_checkpoint: None,
        ..WalOptions::default()
    };
    if child_role().is_some() {
        let db = std::path::PathBuf::from(std::env::var(KILL_DB_ENV).unwrap());
        let cx = Cx::new();
        let mut w = Wal::open(&cx, Arc::new(UnixVfs::from_env()), &db, opts()).unwrap();
        let o = w.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
        assert!(!o.busy, "{o:?}");
        w.close(&cx).unwrap();
        return;
    }

    let tmp = tempfile::tempdir().unwrap();
    let src = SqliteWalDb::create(tmp.path(), "src.db", 4096).unwrap();
    common::fill_large_wal(&src);
    let src_db = src.path().to_path_buf();
    src.close_without_checkpoint().unwrap();
    let digest = table_digest(&copy_db(&src_db, tmp.path(), "digest.db"), "t").unwrap();
    let want = {
        let c = copy_db(&src_db, tmp.path(), "want.db");
        sqlite_checkpoint_copy(&c, "TRUNCATE").unwrap();
        std::fs::read(&c).unwrap()
    };

    let mut kills = 0;
    'sweep: for k in 1..=400u32 {
        for after in [false, true] {
            let round = tmp.path().join(format!("r{k}-{after}"));
            std::fs::create_dir(&round).unwrap();
            let db = copy_db(&src_db, &round, "k.db");
            let at = format!("any:{k}{}", if after { ":after" } else { "" });
            let spec = ChildSpec {
                role: "ckpt".into(),
                seed: u64::from(k),
                env: vec![
                    ("FSQLITE_KILL_AT".into(), at.clone()),
                    (KILL_DB_ENV.into(), db.display().to_string()),
                ],
            };
            let mut child = spawn_self(
                "kill9_at_every_fsync_of_an_overlapped_checkpoint_loses_nothing",
                &spec,
            )
            .unwrap();
            let status = child
                .wait_timeout(Duration::from_mins(2))
                .unwrap()
                .expect("the child finished");
            let killed = child.was_killed_by_sigkill();
            assert!(
                killed || status.success(),
                "{at}: {status}; {}",
                child.stderr()
            );
            // SQLite on a copy of the crashed files: every commit, a sound database.
            let theirs = copy_db(&db, &round, "sqlite.db");
            assert_eq!(integrity_check(&theirs).unwrap(), "ok", "{at}");
            assert_eq!(table_digest(&theirs, "t").unwrap(), digest, "{at}");
            // Our recovery and checkpoint of another copy: SQLite's bytes.
            let ours = copy_db(&db, &round, "ours.db");
            let cx = Cx::new();
            let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), &ours, opts()).unwrap();
            assert!(
                !w.checkpoint(&cx, CheckpointMode::Truncate).unwrap().busy,
                "{at}"
            );
            w.close(&cx).unwrap();
            assert!(
                std::fs::read(&ours).unwrap() == want,
                "{at}: database differs"
            );
            std::fs::remove_dir_all(&round).unwrap();
            if !killed {
                println!("{kills} kill points verified; the process got through at {at}");
                break 'sweep;
            }
            kills += 1;
        }
    }
    // The open's locks, the WAL fsync, the copy's writes, the database fsync (the
    // overlapped one), the truncates and the unlocks: each before and after.
    assert!(kills >= 20, "only {kills} kill points");
}
