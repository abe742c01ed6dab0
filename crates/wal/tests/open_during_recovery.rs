//! `Wal::open` while another connection is rebuilding the WAL-index (FORMAT.md §6 step 2,
//! §8.1): the opener must behave like SQLite's first read — wait (up to `busy_timeout`)
//! while the recoverer holds `WAL_RECOVER_LOCK`, then use the index it built (or build
//! it), and give `BusyRecovery` after a bounded wait if the recovery never ends —
//! never fail at once with `Busy` because the WAL-index header is being rebuilt.
//!
//! The "recovering peer" is a raw `MemoryVfs` handle (another process, for the VFS's
//! locks) that opened the `-shm` first (so its header is invalid) and holds
//! `WAL_WRITE_LOCK`, `WAL_CKPT_LOCK` and `WAL_RECOVER_LOCK` exclusively, as
//! `walIndexRecover` does.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{
    MemoryFile, MemoryVfs, SHM_EXCLUSIVE, SHM_LOCK, SHM_REGION_SIZE, SHM_UNLOCK, Vfs, VfsFile,
    WAL_WRITE_LOCK,
};
use fsqlite_wal::{Wal, WalOptions};

const PS: usize = 4096;

fn opts(busy_timeout: Duration) -> WalOptions {
    WalOptions {
        busy_timeout,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

fn page1(tag: u8) -> Vec<u8> {
    let mut p = vec![tag; PS];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    p[16..18].copy_from_slice(&(PS as u16).to_be_bytes());
    p[18] = 2;
    p[19] = 2;
    p[20] = 0;
    p
}

/// A database whose WAL holds one commit, with no connection open (so the next
/// `-shm` opener finds it empty).
fn database(cx: &Cx, path: &str) -> Arc<MemoryVfs> {
    let vfs = Arc::new(MemoryVfs::new());
    let mut w = Wal::open(cx, Arc::clone(&vfs), path, opts(Duration::from_millis(50))).unwrap();
    let mut t = w.begin_write(cx).unwrap();
    t.write_page(cx, PageNumber::new(1).unwrap(), &page1(7))
        .unwrap();
    t.commit(cx, 1).unwrap();
    drop(w);
    vfs
}

/// The peer: first `-shm` opener, holding WRITE + CKPT + RECOVER.
fn recovering_peer(cx: &Cx, vfs: &MemoryVfs, path: &str) -> MemoryFile {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB;
    let (mut peer, _) = vfs.open(cx, Some(Path::new(path)), flags).unwrap();
    peer.shm_map(cx, 0, SHM_REGION_SIZE, true).unwrap();
    peer.shm_lock(cx, WAL_WRITE_LOCK, 3, SHM_LOCK | SHM_EXCLUSIVE)
        .unwrap();
    peer
}

#[test]
fn open_waits_for_a_peer_that_is_recovering() {
    let cx = Cx::new();
    let vfs = database(&cx, "/a.db");
    let peer = recovering_peer(&cx, &vfs, "/a.db");
    let release = std::thread::spawn(move || {
        let mut peer = peer;
        std::thread::sleep(Duration::from_millis(100));
        peer.shm_lock(&Cx::new(), WAL_WRITE_LOCK, 3, SHM_UNLOCK | SHM_EXCLUSIVE)
            .unwrap();
        peer
    });
    let t0 = Instant::now();
    let opened = Wal::open(&cx, Arc::clone(&vfs), "/a.db", opts(Duration::from_secs(5)));
    let waited = t0.elapsed();
    let _peer = release.join().unwrap();
    let mut w = opened.unwrap_or_else(|e| {
        panic!("open failed after {waited:?} while a peer was recovering: {e}")
    });
    let r = w.begin_read(&cx).unwrap();
    let mut buf = vec![0u8; PS];
    r.read_page(&cx, PageNumber::new(1).unwrap(), &mut buf)
        .unwrap();
    assert_eq!(buf, page1(7));
}

#[test]
fn open_gives_busy_recovery_after_a_bounded_wait() {
    let cx = Cx::new();
    let vfs = database(&cx, "/b.db");
    let _peer = recovering_peer(&cx, &vfs, "/b.db");
    let timeout = Duration::from_millis(200);
    let t0 = Instant::now();
    let e = Wal::open(&cx, Arc::clone(&vfs), "/b.db", opts(timeout)).unwrap_err();
    let waited = t0.elapsed();
    assert!(matches!(e, FrankenError::BusyRecovery), "{e}");
    assert!(waited >= timeout, "gave up after {waited:?}");
    assert!(waited < Duration::from_secs(15), "waited {waited:?}");
}
