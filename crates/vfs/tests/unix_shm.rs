//! `UnixVfs` shared memory: `-shm` mappings shared between handles and processes, the
//! dead-man-switch protocol, shm lock rules, and lock release on unmap and drop.

mod unix_support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, LockLevel, VfsOpenFlags};
use fsqlite_vfs::unix::SHM_STALE_LEN;
use fsqlite_vfs::{
    SHM_EXCLUSIVE, SHM_LOCK, SHM_REGION_SIZE, SHM_SHARED, SHM_UNLOCK, UnixFile, UnixVfs, Vfs,
    VfsFile, WAL_WRITE_LOCK, wal_read_lock,
};
use unix_support::{PyChild, SHM_DRIVER};

const SZ: u32 = SHM_REGION_SIZE;
const EXCL: u32 = SHM_LOCK | SHM_EXCLUSIVE;
const SHRD: u32 = SHM_LOCK | SHM_SHARED;
const UNEXCL: u32 = SHM_UNLOCK | SHM_EXCLUSIVE;
const UNSHRD: u32 = SHM_UNLOCK | SHM_SHARED;

fn open(path: &Path) -> UnixFile {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    UnixVfs::new()
        .open(&Cx::new(), Some(path), flags)
        .unwrap()
        .0
}

fn busy<T: std::fmt::Debug>(r: &Result<T, FrankenError>) -> bool {
    if let Err(e) = r
        && !matches!(e, FrankenError::Busy)
    {
        panic!("expected Busy, got {e:?}");
    }
    r.is_err()
}

#[test]
fn two_handles_share_mapped_regions_and_growth_is_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let cx = Cx::new();
    let mut a = open(&db);
    let mut b = open(&db);
    let shm = a.shm_path();
    assert_eq!(shm, dir.path().join("s.db-shm"));

    // Readers never create a region.
    assert!(a.shm_map(&cx, 0, SZ, false).unwrap().is_none());
    let ra = a.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    assert_eq!(ra.len(), SZ as usize);
    let meta = std::fs::metadata(&shm).unwrap();
    assert_eq!(meta.len(), u64::from(SZ));
    // Grown by writing a byte into every 4 KiB block: really allocated, not sparse.
    assert!(
        meta.blocks() * 512 >= u64::from(SZ),
        "blocks {}",
        meta.blocks()
    );
    assert_eq!(
        meta.mode() & 0o777,
        std::fs::metadata(&db).unwrap().mode() & 0o777
    );

    let rb = b.shm_map(&cx, 0, SZ, false).unwrap().unwrap();
    ra.store_u32(200, 0xdead_beef, Ordering::Release);
    assert_eq!(rb.load_u32(200, Ordering::Acquire), 0xdead_beef);
    rb.store_u16(16386, 0x1234, Ordering::Release);
    assert_eq!(ra.load_u16(16386, Ordering::Acquire), 0x1234);
    // The mapping is cached per region.
    assert!(
        a.shm_map(&cx, 0, SZ, false)
            .unwrap()
            .unwrap()
            .same_memory(&ra)
    );

    // Region 2 does not exist for b until a grows the file.
    assert!(b.shm_map(&cx, 2, SZ, false).unwrap().is_none());
    let ra2 = a.shm_map(&cx, 2, SZ, true).unwrap().unwrap();
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), 3 * u64::from(SZ));
    let rb2 = b.shm_map(&cx, 2, SZ, false).unwrap().unwrap();
    rb2.store_u32(SZ as usize - 4, 77, Ordering::Release);
    assert_eq!(ra2.load_u32(SZ as usize - 4, Ordering::Acquire), 77);
    // Region 0 was not disturbed by growth.
    assert_eq!(rb.load_u32(200, Ordering::Acquire), 0xdead_beef);
    // A different region size for the same -shm is refused; so is a non-page multiple.
    assert!(a.shm_map(&cx, 0, 2 * SZ, false).is_err());
    let mut c = open(&db);
    assert!(c.shm_map(&cx, 0, 1000, true).is_err());
}

/// Another process (python3 `mmap` on the same `-shm`) sees our stores at once, and we
/// see its stores.
#[test]
fn another_process_sees_the_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("p.db");
    let cx = Cx::new();
    let mut a = open(&db);
    let r = a.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    let shm = a.shm_path();
    let mut py = PyChild::spawn(SHM_DRIVER, &[shm.to_str().unwrap(), &SZ.to_string()]);
    r.store_u32(1000, 0x0102_0304, Ordering::Release);
    assert_eq!(py.ask("r 1000"), format!("ok {}", 0x0102_0304));
    assert_eq!(py.ask("w 2048 3735928559"), "ok");
    assert_eq!(r.load_u32(2048, Ordering::Acquire), 3_735_928_559);
    r.store_u32(2048, 5, Ordering::Release);
    assert_eq!(py.ask("r 2048"), "ok 5");
    py.quit();
}

#[test]
fn dms_first_opener_truncates_stale_shm_later_openers_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("d.db");
    let cx = Cx::new();
    let shm = dir.path().join("d.db-shm");
    std::fs::write(&shm, vec![0xABu8; 2 * SZ as usize]).unwrap();
    let mut a = open(&db);
    let mut b = open(&db);

    // a is the first user: stale contents go (3 bytes remain, SQLite's marker length), so
    // a reader's map finds nothing.
    assert!(a.shm_map(&cx, 0, SZ, false).unwrap().is_none());
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), SHM_STALE_LEN);
    let ra = a.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    let mut rest = vec![0u8; SZ as usize - 4];
    ra.read_bytes(4, &mut rest);
    assert!(
        rest.iter().all(|&x| x == 0),
        "growth must not resurrect stale bytes"
    );
    ra.store_u32(0, 3_007_000, Ordering::Release);

    // b joins while a holds its DMS read lock: no truncation, a's data is there.
    let rb = b.shm_map(&cx, 0, SZ, false).unwrap().unwrap();
    assert_eq!(rb.load_u32(0, Ordering::Acquire), 3_007_000);
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), u64::from(SZ));

    // Both handles' shm locks exclude each other.
    a.shm_lock(&cx, WAL_WRITE_LOCK, 1, EXCL).unwrap();
    assert!(busy(&b.shm_lock(&cx, WAL_WRITE_LOCK, 1, EXCL)));
    assert!(busy(&b.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHRD)));
    b.shm_lock(&cx, 1, 1, EXCL).unwrap();
    assert!(busy(&a.shm_lock(&cx, 1, 2, EXCL)));
    a.shm_lock(&cx, WAL_WRITE_LOCK, 1, UNEXCL).unwrap();
    b.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHRD).unwrap();
    b.shm_lock(&cx, wal_read_lock(1), 1, SHRD).unwrap();
    a.shm_lock(&cx, wal_read_lock(1), 1, SHRD).unwrap(); // shared + shared is fine
    a.shm_lock(&cx, wal_read_lock(1), 1, UNSHRD).unwrap();
    assert!(busy(&a.shm_lock(&cx, wal_read_lock(1), 4, EXCL)));
    assert!(busy(&a.shm_lock(&cx, wal_read_lock(0), 5, EXCL)));
    a.shm_lock(&cx, wal_read_lock(2), 3, EXCL).unwrap();
    assert!(busy(&b.shm_lock(&cx, wal_read_lock(3), 1, SHRD)));

    // A third party holding the DMS *write* lock (an initializer) makes openers Busy.
    drop(a);
    drop(b);
    drop((ra, rb));
    let raw = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shm)
        .unwrap();
    let fl = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 128,
        l_len: 1,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&raw, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    let mut c = open(&db);
    assert!(busy(&c.shm_map(&cx, 0, SZ, false)));
    assert!(busy(&c.shm_lock(&cx, 0, 1, EXCL)));
    drop(raw);
    // With everyone gone, the next opener is first again and truncates.
    assert!(c.shm_map(&cx, 0, SZ, false).unwrap().is_none());
    assert_eq!(std::fs::metadata(&shm).unwrap().len(), SHM_STALE_LEN);
}

#[test]
fn shm_lock_bookkeeping_rules() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    let cx = Cx::new();
    let mut a = open(&db);
    let mut b = open(&db);
    // shm_lock opens the -shm lazily (with the DMS protocol).
    a.shm_lock(&cx, 3, 1, SHRD).unwrap();
    assert!(a.shm_path().exists());
    a.shm_lock(&cx, 3, 1, SHRD).unwrap(); // already held: no-op
    // Never upgrade or downgrade directly: an error, not Busy.
    let e = a.shm_lock(&cx, 3, 1, EXCL).unwrap_err();
    assert!(!matches!(e, FrankenError::Busy), "{e:?}");
    assert!(a.shm_lock(&cx, 3, 1, UNEXCL).is_err());
    a.shm_lock(&cx, 3, 1, UNSHRD).unwrap();
    a.shm_lock(&cx, 3, 1, UNSHRD).unwrap(); // not held: no-op
    a.shm_lock(&cx, 0, 3, EXCL).unwrap();
    a.shm_lock(&cx, 0, 3, EXCL).unwrap(); // already held: no-op
    assert!(a.shm_lock(&cx, 1, 1, SHRD).is_err());
    assert!(a.shm_lock(&cx, 2, 1, UNSHRD).is_err());
    // Releasing part of an exclusive range releases exactly that part.
    a.shm_lock(&cx, 1, 1, UNEXCL).unwrap();
    b.shm_lock(&cx, 1, 1, EXCL).unwrap();
    assert!(busy(&b.shm_lock(&cx, 0, 1, SHRD)));
    assert!(busy(&b.shm_lock(&cx, 2, 1, SHRD)));
    // Releasing a range only partly held is fine.
    a.shm_lock(&cx, 0, 8, UNEXCL).unwrap();
    b.shm_lock(&cx, 0, 1, SHRD).unwrap();
    b.shm_lock(&cx, 2, 1, SHRD).unwrap();
    // SQLite's argument rules.
    assert!(a.shm_lock(&cx, 0, 2, SHRD).is_err());
    assert!(a.shm_lock(&cx, 7, 2, EXCL).is_err());
    assert!(a.shm_lock(&cx, 0, 1, SHM_LOCK).is_err());
    assert!(a.shm_lock(&cx, 0, 0, EXCL).is_err());
}

/// A mapping keeps the open file description alive, so unmap must drop the OFD locks
/// explicitly: a `ShmRegion` clone that outlives `shm_unmap` carries no locks.
#[test]
fn unmap_and_drop_release_every_lock_even_with_live_region_clones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("u.db");
    let cx = Cx::new();
    let mut a = open(&db);
    let mut b = open(&db);
    let kept = a.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    kept.store_u32(8, 42, Ordering::Release);
    a.shm_lock(&cx, WAL_WRITE_LOCK, 1, EXCL).unwrap();
    b.shm_map(&cx, 0, SZ, false).unwrap().unwrap();
    assert!(busy(&b.shm_lock(&cx, WAL_WRITE_LOCK, 1, EXCL)));
    a.shm_unmap(&cx, false).unwrap();
    b.shm_lock(&cx, WAL_WRITE_LOCK, 1, EXCL).unwrap();
    assert_eq!(
        kept.load_u32(8, Ordering::Acquire),
        42,
        "clone stays valid memory"
    );
    drop(b);
    // a's DMS lock is gone too: the next opener is "first" and truncates. (From here on
    // `kept` must not be touched: its bytes were truncated away.)
    let mut c = open(&db);
    assert!(c.shm_map(&cx, 0, SZ, false).unwrap().is_none());
    assert_eq!(
        std::fs::metadata(c.shm_path()).unwrap().len(),
        SHM_STALE_LEN
    );
    drop(kept);

    // Drop releases db and shm locks.
    c.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    c.shm_lock(&cx, 1, 1, EXCL).unwrap();
    c.lock(&cx, LockLevel::Exclusive).unwrap();
    let region_clone = c.shm_map(&cx, 0, SZ, false).unwrap().unwrap();
    drop(c);
    let mut d = open(&db);
    d.lock(&cx, LockLevel::Exclusive).unwrap();
    d.shm_lock(&cx, 1, 1, EXCL).unwrap();
    drop(region_clone);
    // Unmap with delete removes the file; unmapping twice is harmless.
    let shm = d.shm_path();
    d.shm_unmap(&cx, true).unwrap();
    assert!(!shm.exists());
    d.shm_unmap(&cx, true).unwrap();
}

/// SQLite's `unixIsSharingShmNode`: with the `-shm` open, EXCLUSIVE on the db is Busy while
/// another handle holds the DMS lock, even if that handle holds no db lock at all.
#[test]
fn exclusive_is_busy_while_another_handle_uses_the_shm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let cx = Cx::new();
    let mut a = open(&db);
    let mut b = open(&db);
    let mut plain = open(&db);
    a.shm_map(&cx, 0, SZ, true).unwrap().unwrap();
    b.shm_map(&cx, 0, SZ, false).unwrap().unwrap();
    assert!(busy(&b.lock(&cx, LockLevel::Exclusive)));
    // A handle without the shm open is not affected (it cannot know about it).
    plain.lock(&cx, LockLevel::Exclusive).unwrap();
    plain.unlock(&cx, LockLevel::None).unwrap();
    a.shm_unmap(&cx, false).unwrap();
    b.lock(&cx, LockLevel::Exclusive).unwrap();
}

/// `shm_downgrade` turns the exclusive lock into a shared one in place: other handles can
/// then share the slot but not take it exclusively, and the bookkeeping follows (a
/// shared unlock releases it, an exclusive unlock is refused). Without the exclusive lock
/// it is an error.
#[test]
fn shm_downgrade_converts_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dg.db");
    let cx = Cx::new();
    let (mut a, mut b) = (open(&p), open(&p));
    a.shm_map(&cx, 0, SZ, true).unwrap();
    b.shm_map(&cx, 0, SZ, true).unwrap();
    let r1 = wal_read_lock(1);
    assert!(a.shm_downgrade(&cx, r1).is_err(), "not held: an error");
    a.shm_lock(&cx, r1, 1, EXCL).unwrap();
    assert!(busy(&b.shm_lock(&cx, r1, 1, SHRD)));
    a.shm_downgrade(&cx, r1).unwrap();
    b.shm_lock(&cx, r1, 1, SHRD).unwrap();
    b.shm_lock(&cx, r1, 1, UNSHRD).unwrap();
    assert!(
        busy(&b.shm_lock(&cx, r1, 1, EXCL)),
        "a still holds it shared"
    );
    // a's bookkeeping: shared now, so an exclusive unlock is the wrong mode.
    assert!(a.shm_lock(&cx, r1, 1, UNEXCL).is_err());
    assert!(busy(&b.shm_lock(&cx, r1, 1, EXCL)));
    a.shm_lock(&cx, r1, 1, UNSHRD).unwrap();
    b.shm_lock(&cx, r1, 1, EXCL).unwrap();
}

/// `shm_unlock_slots` releases exactly the named slots: in one call over the span when
/// this handle holds nothing else inside it, slot by slot when it does (a third slot held
/// inside the span survives); other handles' locks are never touched.
#[test]
#[allow(clippy::many_single_char_names)]
fn shm_unlock_slots_releases_exactly_the_named_slots() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("us.db");
    let cx = Cx::new();
    let (mut a, mut b, mut c) = (open(&p), open(&p), open(&p));
    for h in [&mut a, &mut b, &mut c] {
        h.shm_map(&cx, 0, SZ, true).unwrap();
    }
    let (w, r0, r1) = (WAL_WRITE_LOCK, wal_read_lock(0), wal_read_lock(1));
    for hold_r0 in [false, true] {
        a.shm_lock(&cx, w, 1, EXCL).unwrap();
        a.shm_lock(&cx, r1, 1, SHRD).unwrap();
        c.shm_lock(&cx, wal_read_lock(2), 1, SHRD).unwrap();
        if hold_r0 {
            a.shm_lock(&cx, r0, 1, SHRD).unwrap();
        }
        a.shm_unlock_slots(&cx, 1 << w, 1 << r1).unwrap();
        b.shm_lock(&cx, w, 1, EXCL).unwrap();
        b.shm_lock(&cx, r1, 1, EXCL).unwrap();
        b.shm_lock(&cx, w, 1, UNEXCL).unwrap();
        b.shm_lock(&cx, r1, 1, UNEXCL).unwrap();
        assert!(
            busy(&b.shm_lock(&cx, wal_read_lock(2), 1, EXCL)),
            "c's lock survives"
        );
        assert_eq!(busy(&b.shm_lock(&cx, r0, 1, EXCL)), hold_r0, "a's READ(0)");
        if hold_r0 {
            a.shm_lock(&cx, r0, 1, UNSHRD).unwrap();
        } else {
            b.shm_lock(&cx, r0, 1, UNEXCL).unwrap();
        }
        c.shm_lock(&cx, wal_read_lock(2), 1, UNSHRD).unwrap();
        // a's bookkeeping forgot both: taking them again works.
        a.shm_lock(&cx, w, 1, EXCL).unwrap();
        a.shm_lock(&cx, w, 1, UNEXCL).unwrap();
    }
}
