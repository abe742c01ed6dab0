//! `UnixVfs` on real files: I/O, truncate, sync, delete, access, paths, open flags, and the
//! database-file lock bytes between handles of one process (OFD locks), including their
//! conflict with classic POSIX locks.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::traits::iocap;
use fsqlite_vfs::unix::{KillHook, KillOp, PENDING_BYTE, RESERVED_BYTE, SHARED_FIRST, SHARED_SIZE};
use fsqlite_vfs::{UnixFile, UnixVfs, Vfs, VfsFile};

fn rw_create() -> VfsOpenFlags {
    VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB
}

fn open(vfs: &UnixVfs, path: &Path) -> UnixFile {
    vfs.open(&Cx::new(), Some(path), rw_create()).unwrap().0
}

#[test]
fn io_round_trip_short_read_zero_fill_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    assert_eq!(vfs.name(), "unix");
    let (mut f, flags) = vfs.open(&cx, Some(&p), rw_create()).unwrap();
    assert_eq!(flags, rw_create());
    assert_eq!(f.sector_size(), 4096);
    assert_eq!(f.device_characteristics(), iocap::POWERSAFE_OVERWRITE);
    assert_eq!(f.file_size(&cx).unwrap(), 0);

    f.write(&cx, b"hello", 0).unwrap();
    f.write(&cx, b"world", 10).unwrap(); // leaves a zero gap at 5..10
    assert_eq!(f.file_size(&cx).unwrap(), 15);
    let mut buf = [0xAAu8; 20];
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 15);
    assert_eq!(&buf[..], b"hello\0\0\0\0\0world\0\0\0\0\0");
    // Entirely past the end: nothing read, all zero.
    let mut buf = [0xAAu8; 4];
    assert_eq!(f.read(&cx, &mut buf, 100).unwrap(), 0);
    assert_eq!(buf, [0; 4]);
    // A large write/read crosses many pages.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    f.write(&cx, &big, 4096).unwrap();
    let mut back = vec![0u8; big.len()];
    assert_eq!(f.read(&cx, &mut back, 4096).unwrap(), big.len());
    assert_eq!(back, big);

    f.truncate(&cx, 7).unwrap();
    assert_eq!(f.file_size(&cx).unwrap(), 7);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 7);
    f.truncate(&cx, 8192).unwrap();
    assert_eq!(f.file_size(&cx).unwrap(), 8192);
    f.sync(&cx, SyncFlags::FULL).unwrap();
    f.sync(&cx, SyncFlags::NORMAL | SyncFlags::DATAONLY)
        .unwrap();
    drop(f);
    // Another handle sees the data.
    let g = open(&vfs, &p);
    let mut buf = [0xAAu8; 8];
    assert_eq!(g.read(&cx, &mut buf, 0).unwrap(), 8);
    assert_eq!(
        &buf, b"hello\0\0\0",
        "truncate dropped bytes 7.. and regrew with zeros"
    );
}

#[test]
fn open_flags_errors_and_readonly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("b.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    // Invalid combinations are rejected before touching the disk.
    assert!(vfs.open(&cx, Some(&p), VfsOpenFlags::MAIN_DB).is_err());
    assert!(
        vfs.open(&cx, Some(&p), VfsOpenFlags::READONLY | VfsOpenFlags::CREATE)
            .is_err()
    );
    assert!(!p.exists());
    // Opening a missing file without CREATE: CannotOpen naming the path.
    match vfs.open(&cx, Some(&p), VfsOpenFlags::READWRITE) {
        Err(FrankenError::CannotOpen { path, .. }) => assert_eq!(path, p),
        other => panic!("expected CannotOpen, got {other:?}"),
    }
    let f = open(&vfs, &p);
    drop(f);
    // EXCLUSIVE on an existing file fails.
    let excl = rw_create() | VfsOpenFlags::EXCLUSIVE;
    assert!(matches!(
        vfs.open(&cx, Some(&p), excl),
        Err(FrankenError::CannotOpen { .. })
    ));
    // READONLY handle refuses writes.
    let (mut ro, flags) = vfs.open(&cx, Some(&p), VfsOpenFlags::READONLY).unwrap();
    assert!(flags.contains(VfsOpenFlags::READONLY));
    assert!(ro.is_readonly());
    assert!(matches!(
        ro.write(&cx, b"x", 0),
        Err(FrankenError::ReadOnly)
    ));
    // A read-write open of a file we may not write falls back to read-only (not testable
    // as root, who may write anything).
    if !is_root() {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let (f, flags) = vfs.open(&cx, Some(&p), VfsOpenFlags::READWRITE).unwrap();
        assert!(flags.contains(VfsOpenFlags::READONLY));
        assert!(f.is_readonly());
    }
    // NOFOLLOW refuses a symlink.
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    assert!(vfs.open(&cx, Some(&link), VfsOpenFlags::READONLY).is_ok());
    assert!(matches!(
        vfs.open(
            &cx,
            Some(&link),
            VfsOpenFlags::READONLY | VfsOpenFlags::NOFOLLOW
        ),
        Err(FrankenError::CannotOpen { .. })
    ));
}

#[test]
fn wal_inherits_db_mode_and_new_files_get_0644() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("m.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    drop(open(&vfs, &db));
    assert_eq!(
        std::fs::metadata(&db).unwrap().permissions().mode() & 0o777,
        0o644 & !current_umask()
    );
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o600)).unwrap();
    let wal = dir.path().join("m.db-wal");
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL;
    let (mut w, _) = vfs.open(&cx, Some(&wal), flags).unwrap();
    assert_eq!(
        std::fs::metadata(&wal).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // First sync of a created file also fsyncs the directory; it must simply succeed.
    w.write(&cx, &[1; 32], 0).unwrap();
    w.sync(&cx, SyncFlags::FULL).unwrap();
    w.sync(&cx, SyncFlags::FULL | SyncFlags::DATAONLY).unwrap();
}

/// True when running as root (who may write any file, so permission checks do not apply).
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

fn current_umask() -> u32 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text.lines().find(|l| l.starts_with("Umask:")).unwrap();
    u32::from_str_radix(line.split_whitespace().nth(1).unwrap(), 8).unwrap()
}

#[test]
fn delete_access_full_pathname() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    assert!(!vfs.access(&cx, &p, AccessFlags::EXISTS).unwrap());
    drop(open(&vfs, &p));
    assert!(vfs.access(&cx, &p, AccessFlags::EXISTS).unwrap());
    assert!(vfs.access(&cx, &p, AccessFlags::READ).unwrap());
    assert!(vfs.access(&cx, &p, AccessFlags::READWRITE).unwrap());
    if !is_root() {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(vfs.access(&cx, &p, AccessFlags::READ).unwrap());
        assert!(!vfs.access(&cx, &p, AccessFlags::READWRITE).unwrap());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    vfs.delete(&cx, &p, true).unwrap();
    assert!(!p.exists());
    assert!(!vfs.access(&cx, &p, AccessFlags::EXISTS).unwrap());
    // Deleting a missing file is an I/O error naming the file.
    match vfs.delete(&cx, &p, false) {
        Err(FrankenError::Io { op, path, source }) => {
            assert_eq!(op, "delete");
            assert_eq!(path.as_deref(), Some(p.as_path()));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected Io, got {other:?}"),
    }

    // full_pathname: absolute, `.` removed, parent canonicalized (through a symlink).
    let canon_dir = dir.path().canonicalize().unwrap();
    let link_dir = dir.path().join("ld");
    std::os::unix::fs::symlink(&canon_dir, &link_dir).unwrap();
    let got = vfs
        .full_pathname(&cx, &link_dir.join(".").join("x.db"))
        .unwrap();
    assert_eq!(got, canon_dir.join("x.db"));
    // A missing parent is returned as an absolute path without canonicalizing.
    let missing = dir.path().join("nope").join("y.db");
    assert_eq!(vfs.full_pathname(&cx, &missing).unwrap(), missing);
    // Relative paths are made absolute against the current directory.
    let rel = vfs.full_pathname(&cx, Path::new("rel-fsqlite.db")).unwrap();
    assert!(rel.is_absolute());
    assert_eq!(
        rel,
        std::env::current_dir()
            .unwrap()
            .canonicalize()
            .unwrap()
            .join("rel-fsqlite.db")
    );
    assert!(vfs.full_pathname(&cx, Path::new("")).is_err());
}

#[test]
fn anonymous_and_delete_on_close_files_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let (mut t, flags) = vfs
        .open(&cx, None, VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE)
        .unwrap();
    assert!(flags.contains(VfsOpenFlags::DELETEONCLOSE));
    assert!(!t.path().exists(), "anonymous file has no name while open");
    t.write(&cx, b"scratch", 0).unwrap();
    let mut b = [0u8; 7];
    assert_eq!(t.read(&cx, &mut b, 0).unwrap(), 7);
    assert_eq!(&b, b"scratch");
    // No -shm for a nameless file.
    assert!(t.shm_map(&cx, 0, 32768, true).is_err());

    let p = dir.path().join("doc.tmp");
    let (mut d, _) = vfs
        .open(&cx, Some(&p), rw_create() | VfsOpenFlags::DELETEONCLOSE)
        .unwrap();
    d.write(&cx, b"x", 0).unwrap();
    d.sync(&cx, SyncFlags::FULL).unwrap();
    drop(d);
    assert!(!p.exists());
}

#[test]
fn randomness_is_random() {
    let vfs = UnixVfs::new();
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    vfs.randomness(&mut a);
    vfs.randomness(&mut b);
    assert_ne!(a, b);
    assert_ne!(a, [0; 32]);
}

/// Two handles of one process conflict exactly as two processes would.
#[test]
fn db_locks_between_handles_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("l.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let mut a = open(&vfs, &p);
    let mut b = open(&vfs, &p);

    a.lock(&cx, LockLevel::Shared).unwrap();
    b.lock(&cx, LockLevel::Shared).unwrap();
    assert!(!a.check_reserved_lock(&cx).unwrap());
    a.lock(&cx, LockLevel::Reserved).unwrap();
    assert!(b.check_reserved_lock(&cx).unwrap());
    assert!(a.check_reserved_lock(&cx).unwrap());
    assert!(matches!(
        b.lock(&cx, LockLevel::Reserved),
        Err(FrankenError::Busy)
    ));
    // a cannot get EXCLUSIVE while b reads; it is left at PENDING, which keeps new readers
    // out.
    assert!(matches!(
        a.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    assert_eq!(a.lock_level(), LockLevel::Pending);
    let mut c = open(&vfs, &p);
    assert!(matches!(
        c.lock(&cx, LockLevel::Shared),
        Err(FrankenError::Busy)
    ));
    assert_eq!(c.lock_level(), LockLevel::None);
    // Closing an unrelated descriptor of the same file drops nothing (unlike POSIX locks).
    drop(c);
    assert!(b.check_reserved_lock(&cx).unwrap());
    b.unlock(&cx, LockLevel::None).unwrap();
    a.lock(&cx, LockLevel::Exclusive).unwrap();
    assert_eq!(a.lock_level(), LockLevel::Exclusive);
    assert!(matches!(
        b.lock(&cx, LockLevel::Shared),
        Err(FrankenError::Busy)
    ));
    // Downgrade to SHARED lets readers in but not a second writer-to-be past EXCLUSIVE.
    a.unlock(&cx, LockLevel::Shared).unwrap();
    assert_eq!(a.lock_level(), LockLevel::Shared);
    assert!(!b.check_reserved_lock(&cx).unwrap());
    b.lock(&cx, LockLevel::Shared).unwrap();
    assert!(matches!(
        b.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    b.unlock(&cx, LockLevel::Shared).unwrap();
    a.unlock(&cx, LockLevel::None).unwrap();
    b.unlock(&cx, LockLevel::None).unwrap();
    // NONE -> EXCLUSIVE climbs through SHARED; on failure it returns to NONE.
    a.lock(&cx, LockLevel::Exclusive).unwrap();
    assert!(matches!(
        b.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    assert_eq!(b.lock_level(), LockLevel::None);
    // Dropping a handle releases its locks.
    drop(a);
    b.lock(&cx, LockLevel::Exclusive).unwrap();
    // Unlocking to a level above SHARED is a caller error.
    assert!(b.unlock(&cx, LockLevel::Reserved).is_err());
}

fn posix_lock(file: &File, kind: i32, start: u64, len: u64) -> nix::Result<()> {
    let fl = libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    };
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_SETLK(&fl)).map(|_| ())
}

/// fcntl(2): OFD locks and classic POSIX record locks conflict, even inside one process.
/// This is what lets a SQLite process (POSIX locks) be a peer of `UnixVfs` (OFD locks).
#[test]
fn ofd_locks_conflict_with_classic_posix_locks() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("posix.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let mut ours = open(&vfs, &p);
    let theirs = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();

    // POSIX write lock on RESERVED_BYTE: our RESERVED is busy, and we can see it.
    posix_lock(&theirs, libc::F_WRLCK, RESERVED_BYTE, 1).unwrap();
    ours.lock(&cx, LockLevel::Shared).unwrap();
    assert!(ours.check_reserved_lock(&cx).unwrap());
    assert!(matches!(
        ours.lock(&cx, LockLevel::Reserved),
        Err(FrankenError::Busy)
    ));
    posix_lock(&theirs, libc::F_UNLCK, RESERVED_BYTE, 1).unwrap();
    // POSIX read lock on the SHARED range: our EXCLUSIVE is busy.
    posix_lock(&theirs, libc::F_RDLCK, SHARED_FIRST, SHARED_SIZE).unwrap();
    assert!(matches!(
        ours.lock(&cx, LockLevel::Exclusive),
        Err(FrankenError::Busy)
    ));
    // ... and we hold PENDING now, so the POSIX side cannot start a new SHARED.
    assert!(posix_lock(&theirs, libc::F_RDLCK, PENDING_BYTE, 1).is_err());
    posix_lock(&theirs, libc::F_UNLCK, SHARED_FIRST, SHARED_SIZE).unwrap();
    ours.lock(&cx, LockLevel::Exclusive).unwrap();
    // The other direction: our OFD locks refuse POSIX lockers.
    assert!(posix_lock(&theirs, libc::F_RDLCK, SHARED_FIRST, 1).is_err());
    ours.unlock(&cx, LockLevel::None).unwrap();
    posix_lock(&theirs, libc::F_WRLCK, SHARED_FIRST, SHARED_SIZE).unwrap();
    // Closing our descriptor drops the process's POSIX locks on the file (POSIX rule),
    // which is exactly why SQLite needs its inode table and we use OFD locks.
    drop(ours);
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut other = open(&vfs, &p);
    other.lock(&cx, LockLevel::Exclusive).unwrap();
    drop(probe);
}

#[test]
fn kill_hook_specs_parse() {
    assert_eq!(
        "write:3".parse::<KillHook>().unwrap(),
        KillHook {
            op: KillOp::Write,
            nth: 3,
            after: false
        }
    );
    assert_eq!(
        "fdatasync:1:after".parse::<KillHook>().unwrap(),
        KillHook {
            op: KillOp::Sync,
            nth: 1,
            after: true
        }
    );
    assert_eq!(
        "shm_lock:7".parse::<KillHook>().unwrap().op,
        KillOp::ShmLock
    );
    assert_eq!("ANY:2:before".parse::<KillHook>().unwrap().op, KillOp::Any);
    assert_eq!(
        "truncate:9".parse::<KillHook>().unwrap().op,
        KillOp::Truncate
    );
    for bad in [
        "",
        "write",
        "write:0",
        "write:x",
        "jump:1",
        "write:1:later",
        "write:1:after:x",
    ] {
        assert!(bad.parse::<KillHook>().is_err(), "{bad:?}");
    }
    let vfs = UnixVfs::with_kill_hook("sync:1000".parse().unwrap());
    let clone = vfs.clone();
    assert_eq!(clone.kill_hook().unwrap().nth, 1000);
    assert!(UnixVfs::new().kill_hook().is_none());
    // The counter is shared by clones and counts only matching operations.
    let dir = tempfile::tempdir().unwrap();
    let cx = Cx::new();
    let mut f = open(&vfs, &dir.path().join("k.db"));
    let mut g = open(&clone, &dir.path().join("k2.db"));
    f.write(&cx, b"a", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    g.sync(&cx, SyncFlags::FULL).unwrap();
    assert_eq!(vfs.kill_ops_counted(), 2);
    assert_eq!(UnixVfs::new().kill_ops_counted(), 0);
}

#[test]
fn types_are_send_sync_clone_default() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<UnixVfs>();
    send_sync::<UnixFile>();
    let v = UnixVfs::default();
    let w = v.clone();
    assert_eq!(w.name(), "unix");
    assert_eq!(w.current_pid(), std::process::id());
}

/// `UnixFile::read_vectored` (`preadv`) against the trait's default (one `read`, copied
/// out) on the same file: the same bytes in every buffer and the same count, for splits
/// with empty buffers, more buffers than one `preadv` takes (1,024), and extents that
/// run past the end of the file or start beyond it (zero-filled).
#[test]
fn read_vectored_matches_one_read_copied_out() {
    struct Plain<'a>(&'a UnixFile);
    impl VfsFile for Plain<'_> {
        fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> fsqlite_error::Result<usize> {
            self.0.read(cx, buf, offset)
        }
        fn write(&mut self, _: &Cx, _: &[u8], _: u64) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn truncate(&mut self, _: &Cx, _: u64) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn sync(&mut self, _: &Cx, _: SyncFlags) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn file_size(&self, cx: &Cx) -> fsqlite_error::Result<u64> {
            self.0.file_size(cx)
        }
        fn lock(&mut self, _: &Cx, _: LockLevel) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn unlock(&mut self, _: &Cx, _: LockLevel) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn check_reserved_lock(&self, _: &Cx) -> fsqlite_error::Result<bool> {
            unreachable!()
        }
        fn shm_map(
            &mut self,
            _: &Cx,
            _: u32,
            _: u32,
            _: bool,
        ) -> fsqlite_error::Result<Option<fsqlite_vfs::ShmRegion>> {
            unreachable!()
        }
        fn shm_lock(&mut self, _: &Cx, _: u32, _: u32, _: u32) -> fsqlite_error::Result<()> {
            unreachable!()
        }
        fn shm_unmap(&mut self, _: &Cx, _: bool) -> fsqlite_error::Result<()> {
            unreachable!()
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.db");
    let cx = Cx::new();
    let vfs = UnixVfs::new();
    let mut f = open(&vfs, &p);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    f.write(&cx, &data, 0).unwrap();
    let plain = Plain(&f);
    // (buffer sizes, offset)
    let cases: Vec<(Vec<usize>, u64)> = vec![
        (vec![10, 0, 24, 4096, 0, 24, 4096], 0),
        (vec![4096; 30], 7),
        (vec![24, 4096, 24, 4096], 99_000), // runs past the end
        (vec![5, 6], 200_000),              // starts past the end
        (vec![0, 0], 3),
        (vec![1; 2_500], 12_345), // three preadv calls
        ((0..300).map(|i| i % 97).collect(), 50_000),
    ];
    for (sizes, offset) in cases {
        let mut a: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xEE; n]).collect();
        let mut b = a.clone();
        let mut ra: Vec<&mut [u8]> = a.iter_mut().map(Vec::as_mut_slice).collect();
        let mut rb: Vec<&mut [u8]> = b.iter_mut().map(Vec::as_mut_slice).collect();
        let got_a = f.read_vectored(&cx, &mut ra, offset).unwrap();
        let got_b = plain.read_vectored(&cx, &mut rb, offset).unwrap();
        let total: usize = sizes.iter().sum();
        let want = (data.len() as u64).saturating_sub(offset).min(total as u64) as usize;
        assert_eq!(got_a, want, "sizes {sizes:?} at {offset}");
        assert_eq!(got_b, want, "default, sizes {sizes:?} at {offset}");
        assert_eq!(a, b, "sizes {sizes:?} at {offset}");
    }
}
