//! Regression (found by the I/O-error sweep once it injected shm-lock faults,
//! `fsqlite-reliability`'s `shm_lock` kind): a failing WRITE-lock call in `begin_write`
//! (and a failing CKPT-lock call in `recover_snapshots`) returned with the read mark still
//! held, so the connection's next transaction began with a stale read lock (a debug
//! assertion caught it; in release the mark leaked and held back every later checkpoint).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{Fault, FaultOp, FaultRepeat, MemoryVfs};
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};

const DB: &str = "/lock.db";

fn options() -> WalOptions {
    WalOptions {
        page_size: 4096,
        busy_timeout: Duration::ZERO,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

fn commit(cx: &Cx, wal: &mut Wal<MemoryVfs>, v: u8) -> fsqlite_error::Result<()> {
    let mut txn = wal.begin_write(cx)?;
    let page = vec![v; 4096];
    txn.write_page(cx, PageNumber::new(1).unwrap(), &page)?;
    txn.commit(cx, 1)?;
    Ok(())
}

#[test]
fn a_failed_lock_call_never_leaves_a_read_mark_behind() {
    let cx = Cx::new();
    let mut failed_commits = 0;
    let mut n = 1;
    loop {
        let vfs = MemoryVfs::new();
        let mut wal = Wal::open(&cx, Arc::new(vfs.clone()), DB, options()).unwrap();
        commit(&cx, &mut wal, 1).unwrap();
        // The n-th shm lock taken from here on fails (once).
        vfs.inject(Fault::fail(FaultOp::ShmLock, n, FaultRepeat::Once));
        let r = commit(&cx, &mut wal, 2).and_then(|()| wal.recover_snapshots(&cx).map(|_| ()));
        if vfs.take_fired_faults().is_empty() {
            assert!(n > 1, "no shm lock was taken at all");
            break;
        }
        failed_commits += u32::from(r.is_err());
        vfs.clear_faults();
        // The connection goes on: a commit and a read transaction (a stale read lock
        // would trip the debug assertion in begin_read).
        commit(&cx, &mut wal, 3).unwrap();
        drop(wal.begin_read(&cx).unwrap());
        // No read mark is held: another connection's TRUNCATE checkpoint is not busy.
        let mut other = Wal::open(&cx, Arc::new(vfs.clone()), DB, options()).unwrap();
        other
            .checkpoint(&cx, CheckpointMode::Truncate)
            .unwrap_or_else(|e| panic!("shm lock fault {n}: the checkpoint found {e}"));
        assert_eq!(
            vfs.live_contents(Path::new("/lock.db-wal"))
                .map(|w| w.len()),
            Some(0),
            "shm lock fault {n}: the WAL was not truncated"
        );
        n += 1;
    }
    assert!(failed_commits > 0, "no fault made the commit fail");
}
