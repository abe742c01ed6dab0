//! What SQLite writes, we read (ARCHITECTURE.md invariant 5): SQLite-written WAL
//! databases read page by page through `Wal` + `ReadTxn` equal the page images SQLite
//! itself produces when it checkpoints another copy.
//!
//! For page sizes 512, 4096 and 65536, `SqliteWalDb` (rusqlite, bundled SQLite) runs a
//! seeded workload of inserts, updates and deletes in many commits (with
//! `wal_autocheckpoint=0`; one variant also checkpoints in the middle, so the WAL restarts
//! with new salts over older frames, and the 512-byte one runs past the first
//! WAL-index hash region, frame 4062). While SQLite still has the database open, the db,
//! `-wal` and `-shm` are copied twice:
//!
//! - copy A is opened with `Wal::open(UnixVfs)` (`checkpoint_on_close: false`,
//!   `auto_checkpoint: None`); SQLite's `-shm` copy is discarded by the dead-man switch, so
//!   our recovery rebuilds the index from SQLite's WAL; every page `1..=db_size` is read;
//! - copy B is checkpointed by SQLite (`sqlite_page_images`): the expected images.
//!
//! The sizes and every page must be equal. The original files are also read by a `Wal`
//! **while SQLite keeps them open**, i.e. through the `-shm` SQLite built (its hash
//! tables and header), and must give the same pages.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fsqlite_testkit::sqlite::{SqliteWalDb, sqlite_page_images};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{Wal, WalOptions};

fn options() -> WalOptions {
    WalOptions {
        checkpoint_on_close: false,
        auto_checkpoint: None,
        busy_timeout: Duration::from_secs(2),
        ..WalOptions::default()
    }
}

/// Every page of the newest snapshot of `db`, read through our `Wal`.
fn our_pages(db: &Path, expect_recovery: bool) -> (Vec<Vec<u8>>, u32) {
    let cx = Cx::new();
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), db, options()).unwrap();
    assert_eq!(
        w.recoveries(),
        u64::from(expect_recovery),
        "a copy's -shm is discarded (recovery); SQLite's live -shm is used as is"
    );
    let ps = w.page_size() as usize;
    let pages = {
        let r = w.begin_read(&cx).unwrap();
        (1..=r.db_size())
            .map(|p| {
                let mut buf = vec![0u8; ps];
                r.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
                    .unwrap();
                buf
            })
            .collect::<Vec<_>>()
    };
    let mx = w.cached_header().mx_frame;
    w.close(&cx).unwrap();
    (pages, mx)
}

fn compare(what: &str, ours: &[Vec<u8>], theirs: &[Vec<u8>]) {
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{what}: database size in pages differs (ours vs SQLite's checkpoint)"
    );
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(a == b, "{what}: page {} differs", i + 1);
    }
}

fn case(page_size: u32, seed: u64, commits: u32, ops: u32, mid_checkpoint: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "src.db", page_size).unwrap();
    let first = if mid_checkpoint {
        commits * 2 / 3
    } else {
        commits / 2
    };
    db.run_workload(seed, first, ops).unwrap();
    if mid_checkpoint {
        // Everything backfilled: the next commit restarts the WAL (new salts) and
        // overwrites its first frames; older frames stay behind, dead.
        db.exec("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    }
    db.run_workload(seed ^ 0xABCD, commits - first, ops)
        .unwrap();

    // Through SQLite's own live -shm, while it keeps the database open. This comes
    // first: SQLite's locks are POSIX locks of this process, and closing *any* descriptor
    // of its files in this process (a copy, a read) silently drops them, after which
    // its -shm would look abandoned.
    let (live, live_mx) = our_pages(db.path(), false);

    let scan = db.wal_scan().unwrap();
    let wal_len = std::fs::metadata(db.wal_path()).unwrap().len();
    let frame_bytes = u64::from(page_size) + 24;
    if mid_checkpoint {
        assert!(
            wal_len > 32 + u64::from(scan.mx_frame) * frame_bytes,
            "the restarted WAL should still hold dead frames of the first generation"
        );
    }
    let (a, _, _) = db.snapshot_files(&tmp.path().join("a")).unwrap();
    let (b, _, _) = db.snapshot_files(&tmp.path().join("b")).unwrap();

    assert_eq!(
        live_mx, scan.mx_frame,
        "mxFrame read from SQLite's -shm differs from the WAL's last commit frame"
    );

    let (ours, mx) = our_pages(&a, true);
    assert_eq!(
        mx, scan.mx_frame,
        "our recovery found another last commit frame than the independent WAL scan"
    );
    let theirs = sqlite_page_images(&b).unwrap();
    if page_size == 512 {
        assert!(
            scan.mx_frame > 4062,
            "the workload must reach WAL-index region 1"
        );
    }
    let label = format!("page size {page_size}, {} frames", scan.mx_frame);
    compare(&format!("{label} (recovered copy)"), &ours, &theirs);
    compare(&format!("{label} (SQLite's live -shm)"), &live, &theirs);
    println!(
        "page size {page_size}: {} pages equal, mxFrame {}, {} frames in the WAL file",
        ours.len(),
        scan.mx_frame,
        (wal_len - 32) / frame_bytes
    );
    db.close_without_checkpoint().unwrap();
}

#[test]
fn pages_512_past_the_first_hash_region() {
    // 512-byte pages: enough frames to cross frame 4062/4063 (region 0 → region 1).
    case(512, 0x512, 240, 12, false);
}

#[test]
fn pages_4096_with_a_restarted_wal() {
    case(4096, 0x4096, 60, 8, true);
}

#[test]
fn pages_65536() {
    case(65_536, 0x10000, 12, 4, false);
}
