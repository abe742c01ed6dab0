//! The checkpoint executor and the recovery barrier on `MemoryVfs`, with simulated crashes
//! and injected faults: what the barrier reports OK is durable, and every fault the
//! barrier cannot prove harmless is an error (after which the caller keeps the WAL).

use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryFile, MemoryVfs, Vfs, VfsFile};
use fsqlite_wal::checkpoint::plan_backfill;
use fsqlite_wal::checkpoint_executor::{CheckpointJob, DbFileTarget, execute_checkpoint_on_file};
use fsqlite_wal::recovery_fence::{
    CheckpointChecksumVerdict, ExpectedPageChecksum, PageVerifyMode, execute_recovery_barrier,
    verify_checkpoint_checksum_prefix,
};

const PS: usize = 4096;
const DB: &str = "/m/test.db";
const WAL: &str = "/m/test.db-wal";

fn image(seed: u32) -> Vec<u8> {
    (0..PS)
        .map(|i| (seed.wrapping_mul(2_654_435_761) ^ (i as u32).wrapping_mul(40503)) as u8)
        .collect()
}

fn open(vfs: &MemoryVfs, cx: &Cx, path: &str) -> MemoryFile {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    vfs.open(cx, Some(Path::new(path)), flags).unwrap().0
}

/// A database of 6 zero pages (durable; the checkpoint truncates it to 4) and a WAL whose frame `i` holds page `i` (durable).
fn setup() -> (MemoryVfs, Cx, MemoryFile, MemoryFile) {
    let vfs = MemoryVfs::with_seed(7);
    let cx = Cx::new();
    let mut db = open(&vfs, &cx, DB);
    db.write(&cx, &vec![0u8; 6 * PS], 0).unwrap();
    db.sync(&cx, fsqlite_types::SyncFlags::FULL).unwrap();
    let mut wal = open(&vfs, &cx, WAL);
    let mut bytes = vec![0u8; 32];
    for p in 1..=4u32 {
        bytes.extend_from_slice(&[0u8; 24]);
        bytes.extend_from_slice(&image(p));
    }
    wal.write(&cx, &bytes, 0).unwrap();
    wal.sync(&cx, fsqlite_types::SyncFlags::FULL).unwrap();
    vfs.sync_dir(Path::new("/m")).unwrap();
    (vfs, cx, db, wal)
}

fn run(cx: &Cx, wal: &MemoryFile, db: &mut MemoryFile) -> Result<(), FrankenError> {
    let plan = plan_backfill((1..=4u32).map(|f| (f, f)), 0, 4, 4, 64);
    let job = CheckpointJob {
        page_size: PS as u32,
        plan: &plan,
        n_page: 4,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };
    execute_checkpoint_on_file(cx, wal, &job, db).map(|_| ())
}

#[test]
fn what_the_barrier_accepts_survives_a_crash() {
    let (vfs, cx, mut db, wal) = setup();
    run(&cx, &wal, &mut db).unwrap();
    vfs.crash(CrashMode::DropAll);
    let durable = vfs.durable_contents(Path::new(DB)).unwrap();
    assert_eq!(durable.len(), 4 * PS);
    for p in 1..=4usize {
        assert_eq!(
            &durable[(p - 1) * PS..p * PS],
            &image(p as u32)[..],
            "page {p}"
        );
    }
}

#[test]
fn a_failed_fsync_is_an_error_and_not_retried() {
    let (vfs, cx, mut db, wal) = setup();
    vfs.inject(Fault::Fail {
        op: FaultOp::Sync,
        nth: 1,
        repeat: FaultRepeat::Once,
        path_suffix: Some("test.db".into()),
    });
    let e = run(&cx, &wal, &mut db).unwrap_err();
    assert!(matches!(e, FrankenError::Io { .. }), "{e:?}");
    // A retry would have "succeeded" (the fault fired once) over dropped pages; the
    // durable database must still be the old one, and the error told the caller so.
    vfs.crash(CrashMode::DropAll);
    let durable = vfs.durable_contents(Path::new(DB)).unwrap();
    assert_eq!(durable.len(), 6 * PS);
    assert!(durable.iter().all(|&b| b == 0));
}

#[test]
fn read_back_faults_are_mismatches() {
    let (vfs, cx, mut db, wal) = setup();
    run(&cx, &wal, &mut db).unwrap();
    let expected: Vec<ExpectedPageChecksum> = (1..=4u32)
        .map(|p| ExpectedPageChecksum {
            page: fsqlite_types::PageNumber::new(p).unwrap(),
            checksum: fsqlite_wal::checksum::page_digest(&image(p)),
        })
        .collect();
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &db, PS as u32, &expected).unwrap(),
        CheckpointChecksumVerdict::Match
    );
    // A short read of the database.
    vfs.inject(Fault::ShortRead {
        nth: 1,
        len: 2 * PS + 10,
        repeat: FaultRepeat::Once,
        path_suffix: Some("test.db".into()),
    });
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &db, PS as u32, &expected).unwrap(),
        CheckpointChecksumVerdict::Mismatch {
            first_bad_page: fsqlite_types::PageNumber::new(3).unwrap()
        }
    );
    // A flipped bit on the way back: the barrier refuses.
    vfs.inject(Fault::BitFlip {
        nth: 1,
        repeat: FaultRepeat::Once,
        path_suffix: Some("test.db".into()),
    });
    let mut target_file = open(&vfs, &cx, DB);
    let mut target = DbFileTarget::new(&mut target_file, PS as u32).unwrap();
    let e = execute_recovery_barrier(&cx, &mut target, &db, PS as u32, &expected).unwrap_err();
    assert!(matches!(e, FrankenError::DatabaseCorrupt { .. }), "{e:?}");
    // Without faults it passes again.
    execute_recovery_barrier(&cx, &mut target, &db, PS as u32, &expected).unwrap();
}

#[test]
fn a_failed_write_stops_before_truncate_and_sync() {
    let (vfs, cx, mut db, wal) = setup();
    vfs.inject(Fault::Fail {
        op: FaultOp::Write,
        nth: 1,
        repeat: FaultRepeat::Persistent,
        path_suffix: Some("test.db".into()),
    });
    assert!(run(&cx, &wal, &mut db).is_err());
    vfs.clear_faults();
    // Not truncated, nothing pending, nothing synced: the database is as it was.
    assert_eq!(vfs.live_contents(Path::new(DB)).unwrap().len(), 6 * PS);
    assert_eq!(vfs.pending_op_count(Path::new(DB)), 0);
}
