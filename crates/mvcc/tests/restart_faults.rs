//! Regression (found by the concurrent crash simulation, scenario `serial_restart`, in a
//! debug build): when the coordinator's WAL restart failed after the `WalFile` had already
//! moved to its new generation (its header fsync failed), the coordinator logged "appending
//! to the current WAL" and went on, with the file in the new generation and the legacy
//! header in the old one (a debug assertion caught it; in release only the `WalFile`'s own
//! latch stood between that state and a commit). A failed restart now latches the
//! coordinator: no commit is acknowledged until a reopen recovers from the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, BankOptions, Stamp};
use fsqlite_types::Cx;
use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryVfs};
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};

const DB: &str = "/bank.db";

fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        probe_timeout: Duration::from_millis(500),
        kill_at: None,
        ..CoordinatorOptions::default()
    }
}

/// Stamps account `id` with `txn` through one coordinator commit.
fn stamp(
    coord: &Coordinator<MemoryVfs>,
    bank: &bank::Bank,
    id: i64,
    txn: u64,
) -> fsqlite_error::Result<u32> {
    let cx = Cx::new();
    let page = bank.accounts.page(id).unwrap();
    let mut buf = vec![0u8; bank.page_size as usize];
    coord.read_page(&cx, page, &mut buf)?;
    bank::write_stamp(&mut buf, Stamp { seq: txn, txn })?;
    let size = coord.db_size(&cx)?;
    coord.commit(&cx, &[(page, &buf)], size)
}

#[test]
fn a_failed_wal_restart_latches_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let bank = bank::create(
        &dir.path().join("b.db"),
        &BankOptions {
            accounts: 4,
            ..BankOptions::default()
        },
    )
    .unwrap();
    let mem = MemoryVfs::new();
    mem.set_contents(Path::new(DB), &std::fs::read(&bank.path).unwrap());
    let cx = Cx::new();
    let coord = Coordinator::open(&cx, Arc::new(mem.clone()), DB, options()).unwrap();
    stamp(&coord, &bank, 1, 1).unwrap();
    // A legacy checkpointer copies every frame: the next batch restarts the WAL first.
    let mut ckpt = Wal::open(
        &cx,
        Arc::new(mem.clone()),
        DB,
        WalOptions {
            busy_timeout: Duration::ZERO,
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..WalOptions::default()
        },
    )
    .unwrap();
    ckpt.checkpoint(&cx, CheckpointMode::Passive).unwrap();
    drop(ckpt);
    // The restart's header fsync is the next sync of the -wal.
    mem.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once).on_path_suffix("-wal"));
    let second = stamp(&coord, &bank, 2, 2);
    let fired = mem.take_fired_faults();
    assert_eq!(fired.len(), 1, "{fired:?}");
    assert!(
        second.is_err(),
        "the commit after a failed restart was acknowledged"
    );
    // Latched: nothing more is acknowledged, even with the fault gone.
    let third = stamp(&coord, &bank, 3, 3);
    assert!(
        third.is_err(),
        "a latched coordinator acknowledged {third:?}"
    );
    drop(coord);
    // What the disk holds recovers: the first commit is there, the others are not.
    for img in [mem.fork(), mem.fork_crashed(CrashMode::DropAll)] {
        let c = Coordinator::open(&cx, Arc::new(img), DB, options()).unwrap();
        let mut buf = vec![0u8; bank.page_size as usize];
        for (id, want) in [(1, 1), (2, 0), (3, 0)] {
            c.read_page(&cx, bank.accounts.page(id).unwrap(), &mut buf)
                .unwrap();
            assert_eq!(bank::read_stamp(&buf).unwrap().txn, want, "account {id}");
        }
        stamp(&c, &bank, 4, 4).unwrap();
        c.close(&cx).unwrap();
    }
}
