//! Fault injection of `MemoryVfs`: failed fsync drops the unsynced writes (fsyncgate),
//! once vs persistent faults, Nth counting, path-suffix filters, short reads, a full disk,
//! bit flips, and the global crash-at-operation-k point.

use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::memory::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryFile};
use fsqlite_vfs::traits::iocap;
use fsqlite_vfs::{MemoryVfs, SHM_EXCLUSIVE, SHM_LOCK, SHM_UNLOCK, Vfs, VfsFile};

const RWC: VfsOpenFlags = VfsOpenFlags::READWRITE
    .union(VfsOpenFlags::CREATE)
    .union(VfsOpenFlags::MAIN_DB);

fn open(vfs: &MemoryVfs, path: &str) -> MemoryFile {
    vfs.open(&Cx::new(), Some(Path::new(path)), RWC).unwrap().0
}

fn read_all(f: &MemoryFile) -> Vec<u8> {
    let cx = Cx::new();
    let n = f.file_size(&cx).unwrap() as usize;
    let mut buf = vec![0u8; n];
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), n);
    buf
}

fn io_op(e: &FrankenError) -> &'static str {
    match e {
        FrankenError::Io { op, .. } => op,
        other => panic!("expected an Io error, got {other:?}"),
    }
}

#[test]
fn failed_sync_discards_unsynced_writes_for_good() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db-wal");
    f.write(&cx, b"committed", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    f.write(&cx, b"LOST", 0).unwrap();
    f.write(&cx, b"tail", 20).unwrap();
    vfs.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once));
    let e = f.sync(&cx, SyncFlags::FULL).unwrap_err();
    assert_eq!(io_op(&e), "sync");
    assert!(e.to_string().contains("/db-wal"), "{e}");
    // Reads show the durable image; nothing is pending any more.
    assert_eq!(read_all(&f), b"committed");
    assert_eq!(vfs.pending_op_count(Path::new("/db-wal")), 0);
    // A later sync succeeds and does not resurrect the lost writes.
    f.sync(&cx, SyncFlags::FULL).unwrap();
    vfs.crash(CrashMode::KeepAll);
    assert_eq!(
        vfs.live_contents(Path::new("/db-wal")).unwrap(),
        b"committed"
    );
}

#[test]
fn failed_first_sync_of_a_new_file_leaves_its_entry_volatile() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/new");
    f.write(&cx, b"data", 0).unwrap();
    vfs.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once));
    assert!(f.sync(&cx, SyncFlags::FULL).is_err());
    assert!(!vfs.durable_file_exists(Path::new("/new")));
    vfs.crash(CrashMode::KeepAll);
    assert!(!vfs.file_exists(Path::new("/new")));
}

#[test]
fn fail_once_and_persistent_and_nth_counting() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    // Writes before the injection do not count.
    f.write(&cx, b"a", 0).unwrap();
    f.write(&cx, b"b", 1).unwrap();
    vfs.inject(Fault::fail(FaultOp::Write, 2, FaultRepeat::Once));
    f.write(&cx, b"c", 2).unwrap();
    assert_eq!(io_op(&f.write(&cx, b"X", 3).unwrap_err()), "write");
    f.write(&cx, b"d", 3).unwrap();
    assert_eq!(read_all(&f), b"abcd", "the failed write wrote nothing");
    assert_eq!(vfs.armed_fault_count(), 0);

    vfs.inject(Fault::fail(FaultOp::Write, 2, FaultRepeat::Persistent));
    f.write(&cx, b"e", 4).unwrap();
    for i in 0..5 {
        assert!(f.write(&cx, b"X", 5 + i).is_err());
    }
    // Other ops are unaffected.
    f.truncate(&cx, 5).unwrap();
    assert_eq!(read_all(&f), b"abcde");
    vfs.clear_faults();
    f.write(&cx, b"f", 5).unwrap();
    assert_eq!(read_all(&f), b"abcdef");
}

#[test]
fn read_truncate_and_shm_map_faults() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    f.write(&cx, b"0123456789", 0).unwrap();
    vfs.inject(Fault::fail(FaultOp::Read, 1, FaultRepeat::Once));
    let mut buf = [0u8; 4];
    assert_eq!(io_op(&f.read(&cx, &mut buf, 0).unwrap_err()), "read");
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 4);

    vfs.inject(Fault::fail(FaultOp::Truncate, 1, FaultRepeat::Once));
    assert_eq!(io_op(&f.truncate(&cx, 2).unwrap_err()), "truncate");
    assert_eq!(f.file_size(&cx).unwrap(), 10);

    vfs.inject(Fault::fail(FaultOp::ShmMap, 1, FaultRepeat::Once).on_path_suffix("/db-shm"));
    let e = f.shm_map(&cx, 0, 32768, true).unwrap_err();
    assert_eq!(io_op(&e), "shm_map");
    assert!(e.to_string().contains("/db-shm"), "{e}");
    assert!(f.shm_map(&cx, 0, 32768, true).unwrap().is_some());
}

#[test]
fn path_suffix_filter() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut db = open(&vfs, "/db");
    let mut wal = open(&vfs, "/db-wal");
    vfs.inject(Fault::fail(FaultOp::Write, 1, FaultRepeat::Persistent).on_path_suffix("-wal"));
    db.write(&cx, b"fine", 0).unwrap();
    db.write(&cx, b"fine", 4).unwrap();
    assert!(wal.write(&cx, b"nope", 0).is_err());
    assert!(wal.write(&cx, b"nope", 0).is_err());
    db.sync(&cx, SyncFlags::FULL).unwrap();
    // The filter also applies to the Nth count: only -wal writes count.
    vfs.clear_faults();
    vfs.inject(Fault::fail(FaultOp::Write, 2, FaultRepeat::Once).on_path_suffix("-wal"));
    db.write(&cx, b"x", 0).unwrap();
    db.write(&cx, b"x", 0).unwrap();
    wal.write(&cx, b"1", 0).unwrap();
    db.write(&cx, b"x", 0).unwrap();
    assert!(wal.write(&cx, b"2", 1).is_err());
    wal.write(&cx, b"2", 1).unwrap();
    // Anonymous files never match a suffix.
    vfs.inject(Fault::fail(FaultOp::Write, 1, FaultRepeat::Persistent).on_path_suffix(""));
    let (mut t, _) = vfs
        .open(&cx, None, VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE)
        .unwrap();
    t.write(&cx, b"ok", 0).unwrap();
    assert!(
        db.write(&cx, b"x", 0).is_err(),
        "the empty suffix matches every named file"
    );
}

#[test]
fn short_read_zero_fills_and_returns_the_count() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    vfs.set_contents(Path::new("/db"), &[7u8; 100]);
    let f = open(&vfs, "/db");
    vfs.inject(Fault::short_read(2, 10, FaultRepeat::Once));
    let mut buf = [0xffu8; 50];
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 50);
    buf = [0xff; 50];
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 10);
    assert_eq!(&buf[..10], &[7u8; 10]);
    assert!(buf[10..].iter().all(|&b| b == 0));
    buf = [0xff; 50];
    assert_eq!(
        f.read(&cx, &mut buf, 80).unwrap(),
        20,
        "plain end-of-file short read"
    );
    assert!(buf[20..].iter().all(|&b| b == 0));
    assert_eq!(f.read(&cx, &mut buf, 200).unwrap(), 0);
    assert!(buf.iter().all(|&b| b == 0));
}

#[test]
fn disk_full_after_n_bytes() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    vfs.inject(Fault::disk_full(100));
    f.write(&cx, &[1; 60], 0).unwrap();
    let before = vfs.pending_op_count(Path::new("/db"));
    assert!(matches!(
        f.write(&cx, &[2; 50], 60).unwrap_err(),
        FrankenError::Full
    ));
    assert_eq!(
        vfs.pending_op_count(Path::new("/db")),
        before,
        "nothing written"
    );
    assert_eq!(read_all(&f), vec![1u8; 60]);
    f.write(&cx, &[3; 40], 60).unwrap();
    assert!(matches!(
        f.write(&cx, &[4; 1], 100).unwrap_err(),
        FrankenError::Full
    ));
    f.sync(&cx, SyncFlags::FULL).unwrap();
    vfs.clear_faults();
    f.write(&cx, &[5; 1000], 100).unwrap();
    assert_eq!(f.file_size(&cx).unwrap(), 1100);
}

#[test]
fn bit_flip_changes_exactly_one_bit_deterministically() {
    let cx = Cx::new();
    let flip_position = |seed: u64| {
        let vfs = MemoryVfs::with_seed(seed);
        vfs.set_contents(Path::new("/db"), &[0u8; 4096]);
        let f = open(&vfs, "/db");
        vfs.inject(Fault::bit_flip(1, FaultRepeat::Once));
        let mut buf = vec![0u8; 4096];
        assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 4096);
        let ones: u32 = buf.iter().map(|b| b.count_ones()).sum();
        assert_eq!(ones, 1);
        // The file itself is unchanged and the next read is clean.
        assert_eq!(read_all(&f), vec![0u8; 4096]);
        buf.iter().position(|&b| b != 0).unwrap()
    };
    assert_eq!(flip_position(3), flip_position(3));
    let positions: std::collections::BTreeSet<usize> = (0..8).map(flip_position).collect();
    assert!(
        positions.len() > 1,
        "the flipped bit should depend on the seed"
    );
}

#[test]
fn faults_survive_a_crash() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    vfs.set_contents(Path::new("/db"), b"abc");
    vfs.inject(Fault::fail(FaultOp::Read, 1, FaultRepeat::Once));
    vfs.crash(CrashMode::DropAll);
    let f = open(&vfs, "/db");
    let mut b = [0u8; 3];
    assert!(
        f.read(&cx, &mut b, 0).is_err(),
        "a fault during recovery (compound failure)"
    );
    assert_eq!(f.read(&cx, &mut b, 0).unwrap(), 3);
}

#[test]
fn sector_size_and_device_characteristics() {
    let vfs = MemoryVfs::new();
    let f = open(&vfs, "/db");
    assert_eq!(f.sector_size(), 4096);
    assert_eq!(f.device_characteristics(), 0);
    vfs.set_sector_size(512);
    vfs.set_device_characteristics(iocap::POWERSAFE_OVERWRITE | iocap::SAFE_APPEND);
    assert_eq!(f.sector_size(), 512);
    assert_eq!(
        f.device_characteristics(),
        iocap::POWERSAFE_OVERWRITE | iocap::SAFE_APPEND
    );
}

/// A small WAL-like workload touching every counted kind of operation.
fn workload(vfs: &MemoryVfs) -> Result<(), FrankenError> {
    let cx = Cx::new();
    let (mut db, _) = vfs.open(&cx, Some(Path::new("/db")), RWC)?;
    db.lock(&cx, LockLevel::Shared)?;
    let exists = vfs.access(&cx, Path::new("/db-wal"), AccessFlags::EXISTS)?;
    if exists {
        // Only on the re-run after a crash.
        vfs.delete(&cx, Path::new("/db-wal"), true)?;
    }
    let (mut wal, _) = vfs.open(&cx, Some(Path::new("/db-wal")), RWC)?;
    for i in 0..5u8 {
        wal.write(&cx, &[i + 1; 64], 32 + u64::from(i) * 64)?;
    }
    wal.sync(&cx, SyncFlags::FULL)?;
    let region = db.shm_map(&cx, 0, 32768, true)?;
    assert!(region.is_some());
    db.shm_lock(&cx, 0, 1, SHM_LOCK | SHM_EXCLUSIVE)?;
    let mut page = [0u8; 64];
    wal.read(&cx, &mut page, 32)?;
    db.write(&cx, &page, 0)?;
    db.sync(&cx, SyncFlags::FULL)?;
    assert_eq!(db.file_size(&cx)?, 64);
    wal.truncate(&cx, 0)?;
    wal.sync(&cx, SyncFlags::FULL)?;
    db.shm_lock(&cx, 0, 1, SHM_UNLOCK | SHM_EXCLUSIVE)?;
    db.shm_unmap(&cx, true)?;
    db.unlock(&cx, LockLevel::None)?;
    drop(wal);
    vfs.delete(&cx, Path::new("/db-wal"), true)?;
    Ok(())
}

#[test]
fn crash_at_every_op_stops_everything_until_crash() {
    let counting = MemoryVfs::new();
    workload(&counting).unwrap();
    let n = counting.op_count();
    assert_eq!(n, 22);
    assert_eq!(counting.crashed_at(), None);
    for k in 1..=n + 1 {
        let vfs = MemoryVfs::new();
        vfs.set_crash_at_op(k);
        let r = workload(&vfs);
        if k > n {
            r.unwrap();
            assert_eq!(vfs.crashed_at(), None);
            continue;
        }
        let e = r.unwrap_err();
        assert!(e.to_string().contains("power loss"), "k={k}: {e}");
        assert_eq!(vfs.crashed_at(), Some(k));
        assert_eq!(vfs.op_count(), k, "op k is the one that failed");
        // Everything from here on fails, including ops of other files.
        let cx = Cx::new();
        assert!(
            vfs.access(&cx, Path::new("/db"), AccessFlags::EXISTS)
                .is_err()
        );
        assert!(vfs.open(&cx, Some(Path::new("/x")), RWC).is_err());
        vfs.crash(CrashMode::DropAll);
        assert_eq!(vfs.crashed_at(), Some(k), "kept after crash()");
        // Recovery can run: the durable state is a prefix of the workload.
        let f = vfs.open(&cx, Some(Path::new("/db")), RWC).unwrap().0;
        let db = read_all(&f);
        assert!(db.is_empty() || db == [1u8; 64], "k={k}: db {db:?}");
        if let Some(wal) = vfs.live_contents(Path::new("/db-wal")) {
            let mut full = vec![0u8; 32];
            for i in 0..5u8 {
                full.extend_from_slice(&[i + 1; 64]);
            }
            assert!(
                wal.is_empty() || wal == full,
                "k={k}: wal of {} bytes",
                wal.len()
            );
        }
        // The whole workload runs again after the crash.
        vfs.delete(&cx, Path::new("/db"), true).unwrap();
        drop(f);
        workload(&vfs).unwrap();
    }
}

/// A wrapper whose own method is not `#[track_caller]`: the line inside it that calls
/// the VFS is the site (a `VfsFile` impl of a wrapper would inherit the attribute from the
/// trait and pass its caller's line through).
struct Forward(MemoryFile);

impl Forward {
    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> fsqlite_error::Result<()> {
        VfsFile::write(&mut self.0, cx, buf, offset)
    }
}

#[test]
fn call_sites_are_recorded_and_faults_name_theirs() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    vfs.record_sites(true);
    f.write(&cx, b"abc", 0).unwrap();
    let write_line = line!() - 1;
    f.write(&cx, b"abc", 3).unwrap();
    let second_line = line!() - 1;
    f.sync(&cx, SyncFlags::NORMAL).unwrap();
    let sites = vfs.seen_sites();
    let at = |line: u32| {
        sites
            .iter()
            .find(|(s, _)| s.line == line && s.file.ends_with("memory_faults.rs"))
            .map(|(s, n)| (s.op, *n))
    };
    assert_eq!(at(write_line), Some((FaultOp::Write, 1)), "{sites:?}");
    assert_eq!(at(second_line), Some((FaultOp::Write, 1)), "{sites:?}");
    assert!(
        sites.iter().any(|(s, _)| s.op == FaultOp::Sync),
        "{sites:?}"
    );

    // A lock fault fires at the caller's line and is reported there.
    vfs.inject(Fault::fail(FaultOp::Lock, 1, FaultRepeat::Once));
    let e = f.lock(&cx, LockLevel::Shared).unwrap_err();
    let lock_line = line!() - 1;
    assert_eq!(io_op(&e), "lock");
    f.lock(&cx, LockLevel::Shared).unwrap();
    let fired = vfs.take_fired_faults();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert_eq!((fired[0].op, fired[0].line), (FaultOp::Lock, lock_line));
    assert!(vfs.fired_faults().is_empty());

    // A shm lock fault; releases never fail.
    vfs.inject(Fault::fail(FaultOp::ShmLock, 1, FaultRepeat::Persistent));
    let e = f.shm_lock(&cx, 0, 1, SHM_LOCK | SHM_EXCLUSIVE).unwrap_err();
    assert_eq!(io_op(&e), "shm_lock");
    f.shm_lock(&cx, 0, 1, SHM_UNLOCK | SHM_EXCLUSIVE).unwrap();
    vfs.clear_faults();
    f.shm_lock(&cx, 0, 1, SHM_LOCK | SHM_EXCLUSIVE).unwrap();

    // Through a plain wrapper the site is the wrapper's call.
    let mut w = Forward(open(&vfs, "/other"));
    vfs.inject(Fault::fail(FaultOp::Write, 1, FaultRepeat::Once));
    assert!(w.write(&cx, b"x", 0).is_err());
    let fired = vfs.take_fired_faults();
    assert!(
        fired[0].file.ends_with("memory_faults.rs"),
        "wrapper site {fired:?}"
    );
}

/// Regression (found by the concurrent I/O-error sweep, `threads4_checkpointer`): a
/// legacy checkpointer's fsync of the `-wal` failed and dropped the coordinator's
/// unsynced batch; the coordinator's own fsync then succeeded and it acknowledged frames
/// that were gone. Linux (errseq, 4.13+) reports the error to every descriptor open at
/// the time, so the coordinator's fsync fails; `MemoryVfs` models that now.
#[test]
fn a_failed_sync_is_reported_to_every_handle_open_at_the_time() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut writer = open(&vfs, "/db-wal");
    let mut checkpointer = open(&vfs, "/db-wal");
    writer.write(&cx, b"batch", 0).unwrap();
    vfs.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once));
    assert_eq!(
        io_op(&checkpointer.sync(&cx, SyncFlags::NORMAL).unwrap_err()),
        "sync"
    );
    // The writer's batch is gone, and its own sync says so, once.
    assert_eq!(read_all(&writer), b"");
    assert_eq!(
        io_op(&writer.sync(&cx, SyncFlags::NORMAL).unwrap_err()),
        "sync"
    );
    writer.sync(&cx, SyncFlags::NORMAL).unwrap();
    // The handle that failed was told already; a handle opened later is not told.
    checkpointer.sync(&cx, SyncFlags::NORMAL).unwrap();
    let mut later = open(&vfs, "/db-wal");
    later.sync(&cx, SyncFlags::NORMAL).unwrap();
}
