//! `Wal` connection basics on `MemoryVfs`: commit, read back, two connections, locks,
//! checkpoint modes, reopen after close.
#![allow(clippy::many_single_char_names)]

use std::sync::Arc;
use std::time::Duration;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::MemoryVfs;
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalOptions};

const PS: usize = 4096;

/// A page-1 image that looks like a SQLite database in WAL mode.
fn page1(tag: u8) -> Vec<u8> {
    let mut p = vec![tag; PS];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    p[16..18].copy_from_slice(&(PS as u16).to_be_bytes());
    p[18] = 2;
    p[19] = 2;
    p[20] = 0;
    p
}

fn page(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

fn opts() -> WalOptions {
    WalOptions {
        busy_timeout: Duration::from_millis(50),
        auto_checkpoint: None,
        ..WalOptions::default()
    }
}

fn read(w: &mut Wal<MemoryVfs>, n: u32) -> Vec<u8> {
    let cx = Cx::new();
    let r = w.begin_read(&cx).unwrap();
    let mut buf = vec![0; PS];
    r.read_page(&cx, page(n), &mut buf).unwrap();
    buf
}

#[test]
fn commit_read_checkpoint_reopen() {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    // A power-safe-overwrite device: no padding frames, so frame numbers are exact.
    vfs.set_device_characteristics(fsqlite_vfs::traits::iocap::POWERSAFE_OVERWRITE);
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    assert_eq!(w.page_size(), 4096);
    for round in 0..5u8 {
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, page(1), &page1(round)).unwrap();
        t.write_page(&cx, page(2), &vec![round + 100; PS]).unwrap();
        let mx = t.commit(&cx, 2).unwrap();
        assert_eq!(mx, u32::from(round) * 2 + 2);
    }
    assert_eq!(read(&mut w, 2)[0], 104);
    assert_eq!(read(&mut w, 1)[100], 4);
    {
        let r = w.begin_read(&cx).unwrap();
        assert_eq!(r.db_size(), 2);
    }
    let o = w.checkpoint(&cx, CheckpointMode::Passive).unwrap();
    assert!(!o.busy);
    assert_eq!(o.log_frames, 10);
    assert_eq!(o.checkpointed_frames, 10);
    assert_eq!(
        vfs.live_contents(std::path::Path::new("/db"))
            .unwrap()
            .len(),
        2 * PS
    );
    // The WAL restarts on the next write (fully backfilled, nobody reading).
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(3), &vec![7; PS]).unwrap();
    assert_eq!(t.commit(&cx, 3).unwrap(), 1);
    assert_eq!(read(&mut w, 3)[0], 7);
    assert_eq!(read(&mut w, 2)[0], 104);
    w.close(&cx).unwrap();
    assert!(!vfs.file_exists(std::path::Path::new("/db-wal")));
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    assert_eq!(read(&mut w, 3)[0], 7);
    assert_eq!(read(&mut w, 1)[100], 4);
}

#[test]
fn recovery_after_crash_keeps_synced_commits() {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(1)).unwrap();
    t.commit(&cx, 1).unwrap();
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(2)).unwrap();
    t.commit(&cx, 1).unwrap();
    vfs.crash(fsqlite_vfs::CrashMode::DropAll);
    drop(w);
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    assert_eq!(w.recoveries(), 1);
    assert_eq!(read(&mut w, 1)[100], 2);
}

#[test]
fn two_connections_see_each_other_and_exclude_writers() {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    let mut a = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    let mut b = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    let mut t = a.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(9)).unwrap();
    assert!(matches!(b.begin_write(&cx), Err(FrankenError::Busy)));
    t.commit(&cx, 1).unwrap();
    assert_eq!(read(&mut b, 1)[100], 9);
    // A reader on b keeps its snapshot while a commits again.
    {
        let r = b.begin_read(&cx).unwrap();
        let mut t = a.begin_write(&cx).unwrap();
        t.write_page(&cx, page(1), &page1(10)).unwrap();
        t.commit(&cx, 1).unwrap();
        let mut buf = vec![0; PS];
        r.read_page(&cx, page(1), &mut buf).unwrap();
        assert_eq!(buf[100], 9);
        // A full checkpoint cannot pass b's reader: busy, and nothing it needs is lost.
        let o = a.checkpoint(&cx, CheckpointMode::Full).unwrap();
        assert!(o.busy, "{o:?}");
        r.read_page(&cx, page(1), &mut buf).unwrap();
        assert_eq!(buf[100], 9);
    }
    assert_eq!(read(&mut b, 1)[100], 10);
    let o = a.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
    assert!(!o.busy, "{o:?}");
    assert_eq!((o.log_frames, o.checkpointed_frames), (0, 0));
    assert_eq!(
        vfs.live_contents(std::path::Path::new("/db-wal"))
            .unwrap()
            .len(),
        0
    );
    assert_eq!(read(&mut b, 1)[100], 10);
    let mut t = b.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(11)).unwrap();
    t.commit(&cx, 1).unwrap();
    assert_eq!(read(&mut a, 1)[100], 11);
}

#[test]
fn rollback_and_sync_modes() {
    let cx = Cx::new();
    for sync in [SyncMode::Off, SyncMode::Normal, SyncMode::Full] {
        let vfs = Arc::new(MemoryVfs::new());
        let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", WalOptions { sync, ..opts() }).unwrap();
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, page(1), &page1(1)).unwrap();
        t.commit(&cx, 1).unwrap();
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, page(1), &page1(2)).unwrap();
        t.rollback(&cx).unwrap();
        {
            let mut t = w.begin_write(&cx).unwrap();
            t.write_page(&cx, page(1), &page1(3)).unwrap();
        } // dropped: rolled back
        assert_eq!(read(&mut w, 1)[100], 1);
        let pending = vfs.pending_op_count(std::path::Path::new("/db-wal"));
        assert_eq!(
            pending == 0,
            sync == SyncMode::Full,
            "{sync:?}: {pending} pending"
        );
    }
}

#[test]
fn fsync_failure_latches_and_reopen_recovers() {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(1)).unwrap();
    t.commit(&cx, 1).unwrap();
    vfs.inject(fsqlite_vfs::Fault::fail(
        fsqlite_vfs::FaultOp::Sync,
        1,
        fsqlite_vfs::FaultRepeat::Once,
    ));
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(1), &page1(2)).unwrap();
    assert!(t.commit(&cx, 1).is_err());
    // Latched: even though the fault was one-shot, nothing more is written.
    assert!(w.begin_write(&cx).is_err());
    drop(w);
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/db", opts()).unwrap();
    assert_eq!(read(&mut w, 1)[100], 1);
}

#[test]
fn not_a_database_and_not_wal_mode_are_clear_errors() {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    vfs.set_contents(std::path::Path::new("/junk"), &[7u8; 5000]);
    let e = Wal::open(&cx, Arc::clone(&vfs), "/junk", opts()).unwrap_err();
    assert!(e.to_string().contains("not a SQLite database"), "{e}");
    let mut p = page1(0);
    p[18] = 1;
    p[19] = 1;
    vfs.set_contents(std::path::Path::new("/rollback"), &p);
    let e = Wal::open(&cx, Arc::clone(&vfs), "/rollback", opts()).unwrap_err();
    assert!(e.to_string().contains("not in WAL mode"), "{e}");
    assert!(e.suggestion().is_some());
}

/// Exclusive locking mode: refused while another connection is open; then commits,
/// auto-checkpoints and a WAL restart run without `-shm` locks; a crash keeps every
/// synced commit; back in normal mode a second connection reads everything.
#[test]
fn exclusive_locking_mode_end_to_end() {
    use fsqlite_wal::LockingMode;
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::new());
    let o = WalOptions {
        auto_checkpoint: Some(40),
        ..opts()
    };
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/x", o.clone()).unwrap();
    let other = Wal::open(&cx, Arc::clone(&vfs), "/x", o.clone()).unwrap();
    assert!(matches!(
        w.set_locking_mode(&cx, LockingMode::Exclusive),
        Err(FrankenError::Busy)
    ));
    // The refusal released its PENDING attempt: the other connection still reads/writes.
    drop(other);
    w.set_locking_mode(&cx, LockingMode::Exclusive).unwrap();
    assert!(matches!(
        Wal::open(&cx, Arc::clone(&vfs), "/x", o.clone()),
        Err(FrankenError::Busy)
    ));
    for round in 0..150u32 {
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, page(1), &page1(round as u8)).unwrap();
        t.write_page(&cx, page(2 + round % 7), &vec![round as u8; PS])
            .unwrap();
        t.commit(&cx, 9).unwrap();
        if round == 100 {
            let c = w.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
            assert!(!c.busy);
        }
    }
    for p in 2..=8u32 {
        let newest = (0..150u32).rev().find(|r| 2 + r % 7 == p).unwrap();
        assert_eq!(read(&mut w, p)[9], newest as u8, "page {p}");
    }
    vfs.crash(fsqlite_vfs::CrashMode::DropAll);
    drop(w);
    let mut w = Wal::open(&cx, Arc::clone(&vfs), "/x", o.clone()).unwrap();
    assert_eq!(w.locking_mode(), LockingMode::Normal);
    assert_eq!(read(&mut w, 1)[100], 149);
    w.set_locking_mode(&cx, LockingMode::Exclusive).unwrap();
    let mut t = w.begin_write(&cx).unwrap();
    t.write_page(&cx, page(3), &vec![0xEE; PS]).unwrap();
    t.commit(&cx, 9).unwrap();
    w.set_locking_mode(&cx, LockingMode::Normal).unwrap();
    let mut r = Wal::open(&cx, Arc::clone(&vfs), "/x", o).unwrap();
    assert_eq!(read(&mut r, 3)[0], 0xEE);
    for p in [2u32, 4, 5, 6, 7, 8] {
        let newest = (0..150u32).rev().find(|x| 2 + x % 7 == p).unwrap();
        assert_eq!(read(&mut r, p)[9], newest as u8, "page {p}");
    }
}
