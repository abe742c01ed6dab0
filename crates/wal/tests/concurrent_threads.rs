//! Concurrent connections in threads, over real files (`UnixVfs`: OFD locks per handle,
//! the `-shm` mmap'd and shared), and over `MemoryVfs`.
//!
//! Two writer threads, two reader threads and a checkpointer thread, each with its own
//! `Wal` on the same database. Every commit writes pages 2..=N with one new generation
//! number `g` (page 1 too, as a database header carrying `g`), so a consistent snapshot
//! has **the same generation on every page**. Checked: every read transaction sees one
//! generation on all pages (a torn snapshot would mix two: a checkpoint overwrote a page
//! it read from the database, or a restart reused frames it needed), each reader's
//! generations never go backwards, writers never lose a commit (the final state has the
//! highest generation committed), and checkpoint outcomes stay consistent. No timing is
//! asserted; lock waits use a generous `busy_timeout` and `Busy` is retried.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{MemoryVfs, UnixVfs, Vfs};
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};

const PS: usize = 1024;
const PAGES: u32 = 6;
const COMMITS_PER_WRITER: u32 = 300;
const READS_PER_READER: u32 = 600;

fn opts() -> WalOptions {
    WalOptions {
        page_size: PS as u32,
        busy_timeout: Duration::from_secs(5),
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

fn image(page: u32, generation: u32) -> Vec<u8> {
    let mut p = vec![(generation as u8) ^ (page as u8); PS];
    p[200..204].copy_from_slice(&generation.to_le_bytes());
    if page == 1 {
        p[..16].copy_from_slice(b"SQLite format 3\0");
        p[16..18].copy_from_slice(&(PS as u16).to_be_bytes());
        p[18] = 2;
        p[19] = 2;
        p[20] = 0;
    }
    p
}

fn generation_of(page: u32, buf: &[u8]) -> u32 {
    let g = u32::from_le_bytes([buf[200], buf[201], buf[202], buf[203]]);
    assert!(
        buf == image(page, g),
        "page {page} is not an image of generation {g}"
    );
    g
}

/// Retries `f` while it fails with a transient error.
fn retry<T>(mut f: impl FnMut() -> fsqlite_error::Result<T>) -> T {
    for _ in 0..1000 {
        match f() {
            Ok(v) => return v,
            Err(e) if e.is_transient() => std::thread::yield_now(),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("still busy after 1000 tries")
}

fn run<V: Vfs + Send + Sync + 'static>(vfs: &Arc<V>, db: &std::path::Path) -> (u32, u32) {
    let cx = Cx::new();
    {
        let mut w = Wal::open(&cx, Arc::clone(vfs), db, opts()).unwrap();
        let mut t = w.begin_write(&cx).unwrap();
        for p in 1..=PAGES {
            t.write_page(&cx, PageNumber::new(p).unwrap(), &image(p, 0))
                .unwrap();
        }
        t.commit(&cx, PAGES).unwrap();
        w.close(&cx).unwrap();
    }
    let next_gen = Arc::new(AtomicU32::new(1));
    let highest = Arc::new(AtomicU32::new(0));
    let busy_checkpoints = Arc::new(AtomicU32::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            let vfs = Arc::clone(vfs);
            let (next_gen, highest) = (Arc::clone(&next_gen), Arc::clone(&highest));
            s.spawn(move || {
                let cx = Cx::new();
                let mut w = Wal::open(&cx, vfs, db, opts()).unwrap();
                for _ in 0..COMMITS_PER_WRITER {
                    retry(|| {
                        let mut t = w.begin_write(&cx)?;
                        // Generations are handed out under the write lock: increasing.
                        let g = next_gen.fetch_add(1, Ordering::SeqCst);
                        for p in 1..=PAGES {
                            t.write_page(&cx, PageNumber::new(p).unwrap(), &image(p, g))?;
                        }
                        t.commit(&cx, PAGES)?;
                        highest.fetch_max(g, Ordering::SeqCst);
                        Ok(())
                    });
                }
            });
        }
        for _ in 0..2 {
            let vfs = Arc::clone(vfs);
            s.spawn(move || {
                let cx = Cx::new();
                let mut w = Wal::open(&cx, vfs, db, opts()).unwrap();
                let mut last = 0;
                let mut buf = vec![0u8; PS];
                for _ in 0..READS_PER_READER {
                    let t = w.begin_read(&cx).unwrap();
                    assert_eq!(t.db_size(), PAGES);
                    let mut g0 = None;
                    for p in (1..=PAGES).rev() {
                        t.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
                            .unwrap();
                        let g = generation_of(p, &buf);
                        assert_eq!(*g0.get_or_insert(g), g, "a torn snapshot: page {p}");
                        std::thread::yield_now();
                    }
                    let g = g0.unwrap();
                    assert!(
                        g >= last,
                        "a reader went back from generation {last} to {g}"
                    );
                    last = g;
                }
            });
        }
        {
            let vfs = Arc::clone(vfs);
            let busy = Arc::clone(&busy_checkpoints);
            s.spawn(move || {
                let cx = Cx::new();
                // A 2 ms busy timeout: opening while the first opener rebuilds the
                // WAL-index may give BusyRecovery; retry, as an application would.
                let mut w = retry(|| {
                    Wal::open(
                        &cx,
                        Arc::clone(&vfs),
                        db,
                        WalOptions {
                            busy_timeout: Duration::from_millis(2),
                            ..opts()
                        },
                    )
                });
                for k in 0..600usize {
                    let mode = CheckpointMode::ALL[k % 4];
                    match w.checkpoint(&cx, mode) {
                        Ok(o) => {
                            assert!(o.checkpointed_frames <= o.log_frames, "{o:?}");
                            if o.busy {
                                busy.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(FrankenError::Busy | FrankenError::BusyRecovery) => {}
                        Err(e) => panic!("checkpoint {mode:?}: {e}"),
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }
    });
    // Nothing acknowledged was lost: the newest state has the highest generation.
    let mut w = Wal::open(&cx, Arc::clone(vfs), db, opts()).unwrap();
    let top = highest.load(Ordering::SeqCst);
    {
        let t = w.begin_read(&cx).unwrap();
        let mut buf = vec![0u8; PS];
        for p in 1..=PAGES {
            t.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
                .unwrap();
            assert_eq!(generation_of(p, &buf), top, "page {p}");
        }
    }
    let o = w.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
    assert!(!o.busy, "{o:?}");
    w.close(&cx).unwrap();
    (top, busy_checkpoints.load(Ordering::Relaxed))
}

#[test]
fn threads_over_unix_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (top, busy) = run(&Arc::new(UnixVfs::new()), &tmp.path().join("t.db"));
    assert_eq!(top, 2 * COMMITS_PER_WRITER);
    println!("UnixVfs: {top} commits, {busy} busy checkpoints, snapshots consistent");
}

#[test]
fn threads_over_memory_vfs() {
    let (top, busy) = run(
        &Arc::new(MemoryVfs::new()),
        std::path::Path::new("/threads/t.db"),
    );
    assert_eq!(top, 2 * COMMITS_PER_WRITER);
    println!("MemoryVfs: {top} commits, {busy} busy checkpoints, snapshots consistent");
}
