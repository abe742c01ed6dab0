//! A real SQLite process (python3's sqlite3 module, in a child process driven over a pipe)
//! and `UnixVfs` are simply two connections: their database-file locks and their `-shm`
//! locks exclude each other, and land on the same bytes of the same inodes
//! (checked in `/proc/locks`).

mod unix_support;

use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, LockLevel, VfsOpenFlags};
use fsqlite_vfs::unix::{SHARED_FIRST, SHARED_SIZE};
use fsqlite_vfs::{
    SHM_EXCLUSIVE, SHM_LOCK, SHM_REGION_SIZE, SHM_SHARED, SHM_UNLOCK, UnixFile, UnixVfs, Vfs,
    VfsFile, WAL_WRITE_LOCK, wal_read_lock,
};
use unix_support::{PyChild, create_db, locks_on};

fn open(path: &Path) -> UnixFile {
    UnixVfs::new()
        .open(
            &Cx::new(),
            Some(path),
            VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB,
        )
        .unwrap()
        .0
}

/// Rollback mode: SQLite's RESERVED / EXCLUSIVE keep our writers out, and ours keep
/// SQLite's out.
#[test]
fn sqlite_and_unix_vfs_exclude_each_other_on_the_db_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    create_db(&db, "DELETE");
    let cx = Cx::new();
    let mut ours = open(&db);
    let mut py = PyChild::sql(&db);

    // SQLite holds RESERVED (BEGIN IMMEDIATE in rollback mode).
    py.exec_ok("BEGIN IMMEDIATE");
    py.exec_ok("INSERT INTO t VALUES (2)");
    ours.lock(&cx, LockLevel::Shared).unwrap();
    assert!(ours.check_reserved_lock(&cx).unwrap());
    assert!(matches!(
        ours.lock(&cx, LockLevel::Reserved),
        Err(FrankenError::Busy)
    ));
    assert!(matches!(
        ours.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    // (Our failed EXCLUSIVE left us holding PENDING, which would block SQLite's commit.)
    ours.unlock(&cx, LockLevel::None).unwrap();
    py.exec_ok("COMMIT");
    assert!(!ours.check_reserved_lock(&cx).unwrap());

    // SQLite holds EXCLUSIVE: we cannot even read.
    py.exec_ok("BEGIN EXCLUSIVE");
    assert!(matches!(
        ours.lock(&cx, LockLevel::Shared),
        Err(FrankenError::Busy)
    ));
    assert!(matches!(
        ours.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    assert_eq!(ours.lock_level(), LockLevel::None);
    py.exec_ok("COMMIT");

    // We hold RESERVED: SQLite may read but not start writing.
    ours.lock(&cx, LockLevel::Reserved).unwrap();
    py.exec_ok("SELECT count(*) FROM t");
    py.exec_locked("BEGIN IMMEDIATE");
    py.exec_locked("INSERT INTO t VALUES (3)");
    ours.unlock(&cx, LockLevel::Shared).unwrap();
    // We hold EXCLUSIVE: SQLite may not even read.
    ours.lock(&cx, LockLevel::Exclusive).unwrap();
    py.exec_locked("SELECT count(*) FROM t");
    ours.unlock(&cx, LockLevel::None).unwrap();
    assert_eq!(py.exec_ok("SELECT count(*) FROM t"), "ok [(2,)]");
    py.exec_ok("INSERT INTO t VALUES (3)");
    py.quit();
}

/// WAL mode: SQLite's locks on the db and `-shm` are where FORMAT.md says, ours land on the
/// same bytes, and the WAL write lock (shm byte 120) excludes in both directions.
#[test]
fn wal_mode_locks_share_bytes_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    create_db(&db, "WAL");
    let shm_path = dir.path().join("w.db-shm");
    let cx = Cx::new();

    let mut py = PyChild::sql(&db);
    py.exec_ok("INSERT INTO t VALUES (2)");
    py.exec_ok("BEGIN");
    assert_eq!(py.exec_ok("SELECT count(*) FROM t"), "ok [(2,)]");
    let pid = i64::from(py.pid());

    // SQLite: DMS read lock on 128, a read mark in 123..=127, SHARED range on the db.
    let theirs: Vec<_> = locks_on(&shm_path)
        .into_iter()
        .filter(|l| l.pid == pid)
        .collect();
    assert!(
        theirs.iter().any(|l| l.class == "POSIX"
            && l.access == "READ"
            && l.start == 128
            && l.end == Some(128)),
        "no DMS lock in {theirs:?}"
    );
    assert!(
        theirs.iter().any(|l| l.access == "READ"
            && (123..=127).contains(&l.start)
            && l.end == Some(l.start)),
        "no read-mark lock in {theirs:?}"
    );
    let shared_range = (SHARED_FIRST, Some(SHARED_FIRST + SHARED_SIZE - 1));
    assert!(
        locks_on(&db)
            .iter()
            .any(|l| l.pid == pid && l.access == "READ" && (l.start, l.end) == shared_range),
        "no SHARED lock in {:?}",
        locks_on(&db)
    );

    // Our handle: SHARED on the db, the shm mapped (SQLite already initialized it, so the
    // DMS protocol must not truncate it), a read mark taken.
    let mut ours = open(&db);
    let shm_len_before = std::fs::metadata(&shm_path).unwrap().len();
    ours.lock(&cx, LockLevel::Shared).unwrap();
    let r0 = ours
        .shm_map(&cx, 0, SHM_REGION_SIZE, false)
        .unwrap()
        .expect("SQLite created region 0");
    assert_eq!(std::fs::metadata(&shm_path).unwrap().len(), shm_len_before);
    // Header copy A, iVersion = 3007000, written by SQLite, visible through our mapping.
    assert_eq!(
        r0.load_u32(0, std::sync::atomic::Ordering::Acquire),
        3_007_000
    );
    ours.shm_lock(&cx, wal_read_lock(1), 1, SHM_LOCK | SHM_SHARED)
        .unwrap();
    let ofd: Vec<_> = locks_on(&shm_path)
        .into_iter()
        .filter(|l| l.class == "OFDLCK")
        .collect();
    for byte in [128u64, 124] {
        assert!(
            ofd.iter()
                .any(|l| l.access == "READ" && l.start == byte && l.end == Some(byte)),
            "our lock on shm byte {byte} missing in {ofd:?}"
        );
    }
    assert!(
        locks_on(&db)
            .iter()
            .any(|l| l.class == "OFDLCK" && l.access == "READ" && (l.start, l.end) == shared_range),
    );
    ours.shm_lock(&cx, wal_read_lock(1), 1, SHM_UNLOCK | SHM_SHARED)
        .unwrap();
    py.exec_ok("COMMIT");

    // SQLite writes (WAL_WRITE_LOCK, byte 120): our exclusive write lock is busy.
    py.exec_ok("BEGIN IMMEDIATE");
    assert!(
        locks_on(&shm_path)
            .iter()
            .any(|l| l.pid == pid && l.access == "WRITE" && l.start == 120 && l.end == Some(120))
    );
    assert!(matches!(
        ours.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHM_LOCK | SHM_EXCLUSIVE),
        Err(FrankenError::Busy)
    ));
    py.exec_ok("INSERT INTO t VALUES (3)");
    py.exec_ok("COMMIT");
    // We hold the write lock: SQLite's writer gets SQLITE_BUSY ("database is locked").
    ours.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHM_LOCK | SHM_EXCLUSIVE)
        .unwrap();
    py.exec_locked("INSERT INTO t VALUES (4)");
    ours.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHM_UNLOCK | SHM_EXCLUSIVE)
        .unwrap();
    py.exec_ok("INSERT INTO t VALUES (4)");
    // We cannot take EXCLUSIVE while SQLite reads the db (it keeps SHARED in WAL mode).
    assert!(matches!(
        ours.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    ours.unlock(&cx, LockLevel::None).unwrap();
    // (Whether SQLite's close now deletes the WAL while our handle still maps the shm
    // depends on its version: `unixIsSharingShmNode` is newer than the 3.40 here.)
    py.quit();
    // Now we are the only user: EXCLUSIVE works.
    ours.lock(&cx, LockLevel::Exclusive).unwrap();
    drop(ours);
    // SQLite reopens fine after us and sees every row.
    let mut py = PyChild::sql(&db);
    assert_eq!(py.exec_ok("SELECT count(*) FROM t"), "ok [(4,)]");
    py.quit();
}

/// SQLite's classic `F_GETLK` sees our OFD dead-man-switch lock: a SQLite process that
/// arrives while we use the `-shm` joins it instead of truncating it.
#[test]
fn sqlite_joins_our_shm_instead_of_truncating_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("j.db");
    create_db(&db, "WAL");
    let shm_path = dir.path().join("j.db-shm");
    assert!(!shm_path.exists(), "SQLite removes the -shm on last close");
    let cx = Cx::new();
    let mut ours = open(&db);
    ours.lock(&cx, LockLevel::Shared).unwrap();
    // We are the first user; grow the -shm to two regions (all zero: no valid header).
    ours.shm_map(&cx, 1, SHM_REGION_SIZE, true)
        .unwrap()
        .unwrap();
    let two_regions = 2 * u64::from(SHM_REGION_SIZE);
    assert_eq!(std::fs::metadata(&shm_path).unwrap().len(), two_regions);

    let mut py = PyChild::sql(&db);
    // SQLite finds no valid header, runs recovery in the shared file, and reads.
    assert_eq!(py.exec_ok("SELECT count(*) FROM t"), "ok [(1,)]");
    py.exec_ok("INSERT INTO t VALUES (2)");
    // Had SQLite not seen our DMS lock it would have truncated to 3 bytes and regrown
    // to one region.
    assert_eq!(std::fs::metadata(&shm_path).unwrap().len(), two_regions);
    let pid = i64::from(py.pid());
    let dms: Vec<_> = locks_on(&shm_path)
        .into_iter()
        .filter(|l| l.start == 128 && l.end == Some(128))
        .collect();
    assert!(
        dms.iter()
            .any(|l| l.class == "OFDLCK" && l.access == "READ"),
        "{dms:?}"
    );
    assert!(
        dms.iter().any(|l| l.pid == pid && l.access == "READ"),
        "{dms:?}"
    );
    // SQLite's commit is visible through our mapping (header copy A: iVersion, mxFrame).
    let r0 = ours
        .shm_map(&cx, 0, SHM_REGION_SIZE, false)
        .unwrap()
        .unwrap();
    assert_eq!(
        r0.load_u32(0, std::sync::atomic::Ordering::Acquire),
        3_007_000
    );
    assert!(r0.load_u32(16, std::sync::atomic::Ordering::Acquire) >= 1);
    py.quit();
}
