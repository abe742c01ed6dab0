//! `FileLockOnly` is chosen where `<db>.fsqlite-shm` cannot be created (a directory is in
//! the way), where the VFS refuses it or only opens it read-only, when hybrid mode is
//! turned off, and where the VFS has no shared memory at all. In that mode
//! `BEGIN CONCURRENT` fails with `ConcurrentUnavailable` (SQLITE_ERROR, with a
//! suggestion). With a usable `-shm`, commits go through SQLite's own per-transaction
//! protocol (a legacy SQLite writer is *not* locked out between them) and SQLite reads every
//! commit live; without one, the database is held EXCLUSIVE with a heap WAL-index (SQLite
//! gets SQLITE_BUSY until close, then reads every commit).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Shadow, make_db, options, txn_sql};
use fsqlite_error::{ErrorCode, FrankenError, Result};
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::sqlite::{integrity_check, table_digest};
use fsqlite_types::{AccessFlags, Cx, LockLevel, PageNumber, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{ShmRegion, UnixFile, UnixVfs, Vfs, VfsFile};

/// What [`PickyVfs`] does with `<db>.fsqlite-shm`.
#[derive(Clone, Copy, Debug)]
enum Record {
    /// Refuse to open it.
    Refuse,
    /// Open it read-only (as a read-only directory or file would).
    ReadOnly,
}

/// `UnixVfs`, except for the coordinator record.
struct PickyVfs {
    inner: UnixVfs,
    record: Record,
}

impl Vfs for PickyVfs {
    type File = UnixFile;

    fn name(&self) -> &'static str {
        "picky"
    }

    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(UnixFile, VfsOpenFlags)> {
        if let Some(p) = path.filter(|p| p.to_string_lossy().ends_with(".fsqlite-shm")) {
            return match self.record {
                Record::Refuse => Err(FrankenError::cannot_open(p, "refused by this VFS")),
                Record::ReadOnly => {
                    if !p.exists() {
                        std::fs::write(p, b"").unwrap();
                    }
                    self.inner.open(cx, path, VfsOpenFlags::READONLY)
                }
            };
        }
        self.inner.open(cx, path, flags)
    }

    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        self.inner.delete(cx, path, sync_dir)
    }

    fn access(&self, cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool> {
        self.inner.access(cx, path, flags)
    }

    fn full_pathname(&self, cx: &Cx, path: &Path) -> Result<PathBuf> {
        self.inner.full_pathname(cx, path)
    }
}

fn run_file_lock_only<V: Vfs>(vfs: V, why: &str, opts: CoordinatorOptions) {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let record = dir.path().join("app.db.fsqlite-shm");
    if why == "directory" {
        std::fs::create_dir(&record).unwrap();
    }
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = Coordinator::open(&cx, Arc::new(vfs), &db, opts).unwrap();
    assert_eq!(coord.mode(), CompatMode::FileLockOnly, "{why}");
    eprintln!("{why}: {}", coord.mode_reason());
    assert!(coord.takeover().is_none() && coord.legacy_state().is_none());
    let e = coord.begin_concurrent(&cx).unwrap_err();
    assert!(matches!(e, FrankenError::ConcurrentUnavailable), "{e:?}");
    assert_eq!(e.error_code(), ErrorCode::Error);
    assert_eq!(e.error_code() as i32, 1, "SQLITE_ERROR");
    assert!(
        e.suggestion().is_some_and(|s| s.contains("fsqlite-shm")),
        "{e:?}"
    );
    let mut reader = LiveSqlite::spawn(
        &db,
        LiveOptions {
            busy_timeout: Duration::from_secs(2),
            ..LiveOptions::default()
        },
    )
    .unwrap();
    for i in 1..=5 {
        let (changes, db_size) = shadow.apply(&txn_sql(21, i));
        let pages: Vec<(PageNumber, &[u8])> =
            changes.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        coord.commit(&cx, &pages, db_size).unwrap();
        let n = reader.exec_ok("SELECT count(*) FROM t").unwrap()[0][0]
            .as_i64()
            .unwrap();
        assert_eq!(n, shadow.count_and_bytes().0, "{why}: after commit {i}");
    }
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
    // No lifetime write lock: a legacy writer commits between our transactions.
    let r = reader
        .exec("INSERT INTO t(id, v) VALUES (777777, x'07')")
        .unwrap();
    assert!(r.ok, "{why}: {r:?}");
    coord.close(&cx).unwrap();
    let n = reader.exec_ok("SELECT count(*) FROM t").unwrap()[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(n, shadow.count_and_bytes().0 + 1);
    reader.exit().unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
    if why == "directory" {
        assert!(record.is_dir());
    }
}

#[test]
fn record_path_blocked_by_a_directory() {
    run_file_lock_only(UnixVfs::new(), "directory", options());
}

#[test]
fn vfs_refuses_the_record() {
    let vfs = PickyVfs {
        inner: UnixVfs::new(),
        record: Record::Refuse,
    };
    run_file_lock_only(vfs, "refused", options());
}

#[test]
fn record_only_opens_read_only() {
    let vfs = PickyVfs {
        inner: UnixVfs::new(),
        record: Record::ReadOnly,
    };
    run_file_lock_only(vfs, "read-only", options());
}

#[test]
fn hybrid_turned_off() {
    let opts = CoordinatorOptions {
        hybrid: false,
        ..options()
    };
    run_file_lock_only(UnixVfs::new(), "option", opts);
}

/// `UnixVfs` whose files have no shared memory (`shm_map` / `shm_lock` are `Unsupported`).
struct NoShmVfs(UnixVfs);

struct NoShmFile(UnixFile);

impl Vfs for NoShmVfs {
    type File = NoShmFile;

    fn name(&self) -> &'static str {
        "no-shm"
    }

    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(NoShmFile, VfsOpenFlags)> {
        self.0.open(cx, path, flags).map(|(f, o)| (NoShmFile(f), o))
    }

    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        self.0.delete(cx, path, sync_dir)
    }

    fn access(&self, cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool> {
        self.0.access(cx, path, flags)
    }

    fn full_pathname(&self, cx: &Cx, path: &Path) -> Result<PathBuf> {
        self.0.full_pathname(cx, path)
    }
}

impl VfsFile for NoShmFile {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.0.read(cx, buf, offset)
    }
    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.0.write(cx, buf, offset)
    }
    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.0.truncate(cx, size)
    }
    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.0.sync(cx, flags)
    }
    fn file_size(&self, cx: &Cx) -> Result<u64> {
        self.0.file_size(cx)
    }
    fn lock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.0.lock(cx, level)
    }
    fn unlock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.0.unlock(cx, level)
    }
    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool> {
        self.0.check_reserved_lock(cx)
    }
    fn shm_map(&mut self, _: &Cx, _: u32, _: u32, _: bool) -> Result<Option<ShmRegion>> {
        Err(FrankenError::Unsupported)
    }
    fn shm_lock(&mut self, _: &Cx, _: u32, _: u32, _: u32) -> Result<()> {
        Err(FrankenError::Unsupported)
    }
    fn shm_unmap(&mut self, _: &Cx, _: bool) -> Result<()> {
        Ok(())
    }
}

#[test]
fn no_shared_memory_gives_exclusive_file_lock_only() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let cx = Cx::new();
    let coord = Coordinator::open(&cx, Arc::new(NoShmVfs(UnixVfs::new())), &db, options()).unwrap();
    assert_eq!(coord.mode(), CompatMode::FileLockOnly);
    assert!(
        coord.mode_reason().contains("EXCLUSIVE"),
        "{}",
        coord.mode_reason()
    );
    assert!(matches!(
        coord.begin_concurrent(&cx),
        Err(FrankenError::ConcurrentUnavailable)
    ));
    let mut reader = LiveSqlite::spawn(&db, LiveOptions::default()).unwrap();
    for i in 1..=4 {
        let (changes, db_size) = shadow.apply(&txn_sql(23, i));
        let pages: Vec<(PageNumber, &[u8])> =
            changes.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        coord.commit(&cx, &pages, db_size).unwrap();
        // Nobody else can see a private index: SQLite is locked out.
        let r = reader.exec("SELECT count(*) FROM t").unwrap();
        assert!(!r.ok && r.is_locked(), "{r:?}");
    }
    let mut buf = vec![0u8; common::PAGE_SIZE];
    let image = std::fs::read(shadow.path()).unwrap();
    for (n, page) in image.chunks(common::PAGE_SIZE).enumerate() {
        coord
            .read_page(&cx, PageNumber::new(n as u32 + 1).unwrap(), &mut buf)
            .unwrap();
        assert_eq!(&buf[..], page, "page {}", n + 1);
    }
    assert!(
        !fsqlite_testkit::sqlite::shm_path(&db).exists(),
        "no -shm on disk"
    );
    coord.close(&cx).unwrap();
    let n = reader.exec_ok("SELECT count(*) FROM t").unwrap()[0][0]
        .as_i64()
        .unwrap();
    assert_eq!(n, shadow.count_and_bytes().0);
    reader.exit().unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest());
}
