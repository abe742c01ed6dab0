//! Locks of `MemoryVfs`: two handles of one path exclude each other like two processes
//! (database-file lock matrix, shm lock matrix and ranges), the shm dead-man-switch reset,
//! shared shm memory, and lock release on drop and on crash.

use std::path::Path;
use std::sync::atomic::Ordering;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, LockLevel, VfsOpenFlags};
use fsqlite_vfs::memory::{CrashMode, HandleLockState, MemoryFile};
use fsqlite_vfs::{
    MemoryVfs, SHM_EXCLUSIVE, SHM_LOCK, SHM_NLOCK, SHM_REGION_SIZE, SHM_SHARED, SHM_UNLOCK, Vfs,
    VfsFile, WAL_WRITE_LOCK, wal_read_lock,
};

const RWC: VfsOpenFlags = VfsOpenFlags::READWRITE
    .union(VfsOpenFlags::CREATE)
    .union(VfsOpenFlags::MAIN_DB);
const LOCK_SH: u32 = SHM_LOCK | SHM_SHARED;
const LOCK_EX: u32 = SHM_LOCK | SHM_EXCLUSIVE;
const UNLOCK_SH: u32 = SHM_UNLOCK | SHM_SHARED;
const UNLOCK_EX: u32 = SHM_UNLOCK | SHM_EXCLUSIVE;

fn open(vfs: &MemoryVfs, path: &str) -> MemoryFile {
    vfs.open(&Cx::new(), Some(Path::new(path)), RWC).unwrap().0
}

fn state_of(vfs: &MemoryVfs, f: &MemoryFile) -> HandleLockState {
    vfs.lock_state(f.path().unwrap())
        .into_iter()
        .find(|s| s.handle == f.handle_id())
        .unwrap()
}

fn busy(r: fsqlite_error::Result<()>) -> bool {
    match r {
        Ok(()) => false,
        Err(FrankenError::Busy) => true,
        Err(e) => panic!("expected Ok or Busy, got {e:?}"),
    }
}

/// A handle on `path` holding `level` (PENDING taken explicitly from SHARED).
fn at_level(vfs: &MemoryVfs, path: &str, level: LockLevel) -> MemoryFile {
    let cx = Cx::new();
    let mut f = open(vfs, path);
    if level != LockLevel::None {
        f.lock(&cx, LockLevel::Shared).unwrap();
    }
    if level > LockLevel::Shared {
        f.lock(&cx, level).unwrap();
    }
    f
}

#[test]
fn db_lock_matrix_between_two_handles() {
    use LockLevel::{Exclusive, None, Pending, Reserved, Shared};
    let cx = Cx::new();
    for held in [None, Shared, Reserved, Pending, Exclusive] {
        for wanted in [Shared, Reserved, Exclusive] {
            let vfs = MemoryVfs::new();
            let a = at_level(&vfs, "/db", held);
            let mut b = open(&vfs, "/db");
            let expect_ok = match wanted {
                Shared => held < Pending,
                Reserved => held < Reserved,
                _ => held == None,
            };
            let got_busy = busy(b.lock(&cx, wanted));
            assert_eq!(!got_busy, expect_ok, "A holds {held:?}, B wants {wanted:?}");
            let sb = state_of(&vfs, &b);
            if expect_ok {
                assert_eq!(sb.level, wanted);
            } else {
                assert_eq!(sb.level, None, "a failed lock from NONE goes back to NONE");
            }
            assert_eq!(state_of(&vfs, &a).level, held, "A is unaffected");
        }
    }
}

#[test]
fn failed_exclusive_stays_pending_and_blocks_new_readers() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = at_level(&vfs, "/db", LockLevel::Shared);
    let mut b = at_level(&vfs, "/db", LockLevel::Reserved);
    assert!(busy(b.lock(&cx, LockLevel::Exclusive)));
    assert_eq!(state_of(&vfs, &b).level, LockLevel::Pending);
    assert!(state_of(&vfs, &b).holds_reserved);
    let mut c = open(&vfs, "/db");
    assert!(
        busy(c.lock(&cx, LockLevel::Shared)),
        "PENDING keeps new readers out"
    );
    a.unlock(&cx, LockLevel::None).unwrap();
    b.lock(&cx, LockLevel::Exclusive).unwrap();
    assert_eq!(state_of(&vfs, &b).level, LockLevel::Exclusive);
    assert!(busy(c.lock(&cx, LockLevel::Shared)));
    b.unlock(&cx, LockLevel::Shared).unwrap();
    assert_eq!(state_of(&vfs, &b).level, LockLevel::Shared);
    assert!(!state_of(&vfs, &b).holds_reserved);
    c.lock(&cx, LockLevel::Shared).unwrap();
    // Other paths are independent.
    let mut other = open(&vfs, "/other");
    other.lock(&cx, LockLevel::Exclusive).unwrap();
}

#[test]
fn reserved_and_check_reserved_lock() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = at_level(&vfs, "/db", LockLevel::Shared);
    let mut b = at_level(&vfs, "/db", LockLevel::Shared);
    assert!(!b.check_reserved_lock(&cx).unwrap());
    a.lock(&cx, LockLevel::Reserved).unwrap();
    assert!(a.check_reserved_lock(&cx).unwrap());
    assert!(b.check_reserved_lock(&cx).unwrap());
    assert!(busy(b.lock(&cx, LockLevel::Reserved)));
    assert_eq!(
        state_of(&vfs, &b).level,
        LockLevel::Shared,
        "B keeps SHARED"
    );
    // unlock accepts only SHARED and NONE.
    assert!(matches!(
        a.unlock(&cx, LockLevel::Reserved).unwrap_err(),
        FrankenError::OutOfRange { .. }
    ));
    a.unlock(&cx, LockLevel::Shared).unwrap();
    assert!(!b.check_reserved_lock(&cx).unwrap());
    b.lock(&cx, LockLevel::Reserved).unwrap();
    // A PENDING reached from SHARED does not hold RESERVED_BYTE (unix semantics).
    let vfs = MemoryVfs::new();
    let mut p = at_level(&vfs, "/db", LockLevel::Shared);
    let mut q = at_level(&vfs, "/db", LockLevel::Shared);
    p.lock(&cx, LockLevel::Pending).unwrap();
    assert!(!q.check_reserved_lock(&cx).unwrap());
    q.lock(&cx, LockLevel::Reserved).unwrap();
    assert!(
        busy(p.lock(&cx, LockLevel::Exclusive)),
        "q still holds SHARED"
    );
}

#[test]
fn exclusive_is_busy_while_another_handle_has_the_shm_open() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = at_level(&vfs, "/db", LockLevel::Shared);
    a.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap();
    let mut b = open(&vfs, "/db");
    b.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap();
    assert!(busy(a.lock(&cx, LockLevel::Exclusive)));
    assert_eq!(state_of(&vfs, &a).level, LockLevel::Pending);
    b.shm_unmap(&cx, false).unwrap();
    a.lock(&cx, LockLevel::Exclusive).unwrap();
}

#[test]
fn shm_lock_matrix_per_slot() {
    let cx = Cx::new();
    for slot in 0..SHM_NLOCK {
        for (a_flags, b_flags, ok) in [
            (LOCK_SH, LOCK_SH, true),
            (LOCK_SH, LOCK_EX, false),
            (LOCK_EX, LOCK_SH, false),
            (LOCK_EX, LOCK_EX, false),
        ] {
            let vfs = MemoryVfs::new();
            let mut a = open(&vfs, "/db");
            let mut b = open(&vfs, "/db");
            a.shm_lock(&cx, slot, 1, a_flags).unwrap();
            assert_eq!(!busy(b.shm_lock(&cx, slot, 1, b_flags)), ok, "slot {slot}");
            // Neighbouring slots are free.
            let other = (slot + 1) % SHM_NLOCK;
            b.shm_lock(&cx, other, 1, LOCK_EX).unwrap();
            // After A lets go, B gets it.
            let unlock = if a_flags == LOCK_SH {
                UNLOCK_SH
            } else {
                UNLOCK_EX
            };
            a.shm_lock(&cx, slot, 1, unlock).unwrap();
            if !ok {
                b.shm_lock(&cx, slot, 1, b_flags).unwrap();
            }
            let bits = 1u8 << slot | 1u8 << other;
            let sb = state_of(&vfs, &b);
            assert_eq!(sb.shm_shared | sb.shm_exclusive, bits);
            assert_eq!(
                state_of(&vfs, &a).shm_shared | state_of(&vfs, &a).shm_exclusive,
                0
            );
        }
    }
}

#[test]
fn shm_exclusive_ranges_and_mode_rules() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = open(&vfs, "/db");
    let mut b = open(&vfs, "/db");
    let mut c = open(&vfs, "/db");
    // Restart-style range: READ_LOCK(1..4) exclusive together.
    a.shm_lock(&cx, wal_read_lock(1), 4, LOCK_EX).unwrap();
    assert_eq!(state_of(&vfs, &a).shm_exclusive, 0b1111_0000);
    b.shm_lock(&cx, wal_read_lock(0), 1, LOCK_SH).unwrap();
    assert!(busy(b.shm_lock(&cx, wal_read_lock(2), 1, LOCK_SH)));
    c.shm_lock(&cx, WAL_WRITE_LOCK, 3, LOCK_EX).unwrap();
    assert!(busy(c.shm_lock(&cx, wal_read_lock(0), 2, LOCK_EX)));
    // Same mode again is a no-op; unlocking what is not held is a no-op.
    a.shm_lock(&cx, wal_read_lock(2), 1, LOCK_EX).unwrap();
    b.shm_lock(&cx, 7, 1, UNLOCK_SH).unwrap();
    b.shm_lock(&cx, 6, 1, UNLOCK_EX).unwrap();
    // Unlocking in the other mode is a misuse (as in UnixVfs) and releases nothing.
    assert!(matches!(
        a.shm_lock(&cx, wal_read_lock(1), 1, UNLOCK_SH).unwrap_err(),
        FrankenError::Internal(_)
    ));
    assert!(busy(b.shm_lock(&cx, wal_read_lock(1), 1, LOCK_SH)));
    // Never upgrade or downgrade directly.
    assert!(matches!(
        b.shm_lock(&cx, wal_read_lock(0), 1, LOCK_EX).unwrap_err(),
        FrankenError::Internal(_)
    ));
    assert!(matches!(
        a.shm_lock(&cx, wal_read_lock(1), 1, LOCK_SH).unwrap_err(),
        FrankenError::Internal(_)
    ));
    // Bad arguments.
    assert!(a.shm_lock(&cx, 7, 2, LOCK_EX).is_err());
    assert!(a.shm_lock(&cx, 0, 2, LOCK_SH).is_err());
    assert!(a.shm_lock(&cx, 0, 1, SHM_LOCK).is_err());
    // Partial unlock of a range.
    a.shm_lock(&cx, wal_read_lock(1), 2, UNLOCK_EX).unwrap();
    assert_eq!(state_of(&vfs, &a).shm_exclusive, 0b1100_0000);
    b.shm_lock(&cx, wal_read_lock(2), 1, LOCK_SH).unwrap();
}

#[test]
fn shm_memory_is_shared_and_dms_resets_only_for_the_first_opener() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = open(&vfs, "/db");
    let mut b = open(&vfs, "/db");
    assert!(a.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap().is_none());
    let ra = a.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    assert_eq!(ra.len(), SHM_REGION_SIZE as usize);
    ra.store_u32(8, 0xdead_beef, Ordering::Release);
    // B opens while A has it open: no reset, same memory, writes seen both ways.
    let rb = b.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap().unwrap();
    assert!(ra.same_memory(&rb));
    assert_eq!(rb.load_u32(8, Ordering::Acquire), 0xdead_beef);
    rb.store_u32(12, 42, Ordering::Release);
    assert_eq!(ra.load_u32(12, Ordering::Acquire), 42);
    // Region 2 with extend creates regions 1 and 2; others see them.
    a.shm_map(&cx, 2, SHM_REGION_SIZE, true).unwrap().unwrap();
    assert!(b.shm_map(&cx, 1, SHM_REGION_SIZE, false).unwrap().is_some());
    assert_eq!(vfs.shm_region_count(Path::new("/db")), Some(3));
    // A region size that does not match is refused; so is a size that is no multiple of 4096.
    assert!(b.shm_map(&cx, 0, 65536, false).is_err());
    assert!(b.shm_map(&cx, 0, 1000, true).is_err());
    // A leaves; B still has it open; C joins without a reset.
    drop(a);
    let mut c = open(&vfs, "/db");
    let rc = c.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap().unwrap();
    assert_eq!(rc.load_u32(8, Ordering::Acquire), 0xdead_beef);
    // Everybody leaves: the contents stay (SQLite does not zero on close) ...
    b.shm_unmap(&cx, false).unwrap();
    drop(c);
    assert_eq!(vfs.shm_region_count(Path::new("/db")), Some(3));
    // An unlock on a handle without the shm open does not open it (no reset).
    let mut idle = open(&vfs, "/db");
    idle.shm_lock(&cx, 0, 1, UNLOCK_EX).unwrap();
    assert!(!state_of(&vfs, &idle).shm_open);
    assert_eq!(vfs.shm_region_count(Path::new("/db")), Some(3));
    // ... until the next first opener throws them away.
    let mut d = open(&vfs, "/db");
    assert!(d.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap().is_none());
    assert_eq!(vfs.shm_region_count(Path::new("/db")), Some(0));
    let rd = d.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    assert!(!rd.same_memory(&ra));
    assert_eq!(rd.load_u32(8, Ordering::Acquire), 0);
    // A handle that re-opens its own shm alone also resets it.
    rd.store_u32(0, 1, Ordering::Relaxed);
    d.shm_unmap(&cx, false).unwrap();
    let rd2 = d.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    assert_eq!(rd2.load_u32(0, Ordering::Relaxed), 0);
}

#[test]
fn shm_unmap_delete_and_shm_name() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = open(&vfs, "/db");
    let mut b = open(&vfs, "/db");
    let ra = a.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    let rb = b.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    a.shm_lock(&cx, WAL_WRITE_LOCK, 1, LOCK_EX).unwrap();
    assert!(
        vfs.access(
            &cx,
            Path::new("/db-shm"),
            fsqlite_types::AccessFlags::EXISTS
        )
        .unwrap()
    );
    // Unmap releases A's shm locks; delete removes the name.
    a.shm_unmap(&cx, true).unwrap();
    assert!(
        !vfs.access(
            &cx,
            Path::new("/db-shm"),
            fsqlite_types::AccessFlags::EXISTS
        )
        .unwrap()
    );
    assert_eq!(vfs.shm_region_count(Path::new("/db")), None);
    b.shm_lock(&cx, WAL_WRITE_LOCK, 1, LOCK_EX).unwrap();
    // B keeps the unlinked shm; a new opener gets a fresh one (like an unlinked file).
    let mut c = open(&vfs, "/db");
    let rc = c.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
    assert!(rb.same_memory(&ra));
    assert!(!rc.same_memory(&rb));
    c.shm_lock(&cx, WAL_WRITE_LOCK, 1, LOCK_EX).unwrap();
    // Vfs::delete of the shm name works too.
    vfs.delete(&cx, Path::new("/db-shm"), false).unwrap();
    assert_eq!(vfs.shm_region_count(Path::new("/db")), None);
}

#[test]
fn dropping_a_handle_releases_its_locks() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = at_level(&vfs, "/db", LockLevel::Exclusive);
    a.shm_lock(&cx, 0, 8, LOCK_EX).unwrap();
    let mut b = open(&vfs, "/db");
    assert!(busy(b.lock(&cx, LockLevel::Shared)));
    assert!(busy(b.shm_lock(&cx, 3, 1, LOCK_SH)));
    drop(a);
    assert_eq!(vfs.lock_state(Path::new("/db")).len(), 1);
    b.lock(&cx, LockLevel::Exclusive).unwrap();
    b.shm_lock(&cx, 0, 8, LOCK_EX).unwrap();
}

#[test]
fn dead_handles_locks_are_gone_after_a_crash() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = at_level(&vfs, "/db", LockLevel::Exclusive);
    a.shm_lock(&cx, 0, 8, LOCK_EX).unwrap();
    vfs.crash(CrashMode::DropAll);
    assert!(vfs.lock_state(Path::new("/db")).is_empty());
    let mut b = open(&vfs, "/db");
    b.lock(&cx, LockLevel::Exclusive).unwrap();
    b.shm_lock(&cx, 0, 8, LOCK_EX).unwrap();
    // The dead handle cannot lock, and dropping it does not release B's locks.
    assert!(matches!(
        a.lock(&cx, LockLevel::Shared).unwrap_err(),
        FrankenError::Io { .. }
    ));
    assert!(a.shm_lock(&cx, 0, 1, UNLOCK_EX).is_err());
    drop(a);
    let sb = state_of(&vfs, &b);
    assert_eq!(sb.level, LockLevel::Exclusive);
    assert_eq!(sb.shm_exclusive, 0xff);
    let mut c = open(&vfs, "/db");
    assert!(busy(c.lock(&cx, LockLevel::Shared)));
    assert!(busy(c.shm_lock(&cx, 5, 1, LOCK_SH)));
}

#[test]
fn shm_exclusive_lock_gives_mutual_exclusion_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MemoryVfs>();
    assert_send_sync::<MemoryFile>();
    let vfs = MemoryVfs::new();
    let threads = 4;
    let iters = 500u32;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let vfs = vfs.clone();
            std::thread::spawn(move || {
                let cx = Cx::new();
                let mut f = open(&vfs, "/db");
                let r = f.shm_map(&cx, 0, SHM_REGION_SIZE, true).unwrap().unwrap();
                let mut done = 0;
                while done < iters {
                    if busy(f.shm_lock(&cx, WAL_WRITE_LOCK, 1, LOCK_EX)) {
                        std::thread::yield_now();
                        continue;
                    }
                    // A non-atomic read-modify-write: lost updates if exclusion failed.
                    let v = r.load_u32(64, Ordering::Relaxed);
                    std::thread::yield_now();
                    r.store_u32(64, v + 1, Ordering::Relaxed);
                    f.shm_lock(&cx, WAL_WRITE_LOCK, 1, UNLOCK_EX).unwrap();
                    done += 1;
                }
                f
            })
        })
        .collect();
    let files: Vec<MemoryFile> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let cx = Cx::new();
    let mut f0 = open(&vfs, "/db");
    let r = f0.shm_map(&cx, 0, SHM_REGION_SIZE, false).unwrap().unwrap();
    assert_eq!(r.load_u32(64, Ordering::Relaxed), threads * iters);
    drop(files);
}
