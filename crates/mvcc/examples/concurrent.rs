//! `BEGIN CONCURRENT` on a real file: eight threads of one process commit at once. Each
//! transaction increments a counter on the thread's own page (never a conflict) and, every
//! fourth time, one on a shared page (conflicts, retried from a fresh begin). Commits that
//! arrive together share one WAL write and one fsync.
//!
//! `cargo run -p fsqlite-mvcc --example concurrent`

use std::sync::Arc;
use std::time::Instant;

use fsqlite_error::{FrankenError, Result, extended};
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;

const THREADS: u32 = 8;
const TXNS_PER_THREAD: u64 = 25;
/// The page every thread updates now and then.
const SHARED: u32 = 2;

/// The counter kept in the first eight bytes of a page.
fn counter(buf: &[u8]) -> u64 {
    u64::from_le_bytes(buf[..8].try_into().expect("eight bytes"))
}

fn bump(buf: &mut [u8]) {
    let next = counter(buf) + 1;
    buf[..8].copy_from_slice(&next.to_le_bytes());
}

fn page(n: u32) -> PageNumber {
    PageNumber::new(n).expect("page numbers start at 1")
}

/// One thread's work; returns how many of its commits lost a conflict and were retried.
fn worker(db: &Coordinator<UnixVfs>, t: u32) -> Result<u64> {
    let cx = Cx::new();
    let own = page(SHARED + 1 + t);
    let size = SHARED + THREADS;
    let mut buf = vec![0u8; db.page_size() as usize];
    let mut retries = 0;
    for i in 0..TXNS_PER_THREAD {
        loop {
            let mut txn = db.begin_concurrent(&cx)?; // a snapshot, held by a read mark
            txn.read_page(&cx, own, &mut buf)?;
            bump(&mut buf);
            txn.write_page(&cx, own, &buf)?; // private until commit
            if i % 4 == 0 {
                txn.read_page(&cx, page(SHARED), &mut buf)?;
                bump(&mut buf);
                txn.write_page(&cx, page(SHARED), &buf)?;
            }
            let db_size = txn.db_size().max(size);
            match txn.commit(&cx, db_size) {
                Ok(_frame) => break,
                Err(e @ FrankenError::ConcurrentConflict { .. }) => {
                    debug_assert_eq!(e.extended_code(), extended::BUSY_SNAPSHOT);
                    retries += 1; // nothing was written: start again from a fresh snapshot
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(retries)
}

fn main() -> Result<()> {
    let dir = tempfile::tempdir().map_err(|e| FrankenError::io("tempdir", None, e))?;
    let path = dir.path().join("counters.db");
    let cx = Cx::new();
    let db = Coordinator::open(
        &cx,
        Arc::new(UnixVfs::new()),
        &path,
        CoordinatorOptions::default(),
    )?;
    println!("mode {:?}: {}", db.mode(), db.mode_reason());
    if db.mode() != CompatMode::HybridShm {
        println!("BEGIN CONCURRENT needs hybrid mode here; stopping");
        return db.close(&cx);
    }

    let start = Instant::now();
    let retries: Vec<Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let db = &db; // Coordinator is Send + Sync: share it by reference
                s.spawn(move || worker(db, t))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker thread panicked"))
            .collect()
    });
    let elapsed = start.elapsed();
    let retries = retries.into_iter().collect::<Result<Vec<u64>>>()?;

    let mut buf = vec![0u8; db.page_size() as usize];
    for t in 0..THREADS {
        db.read_page(&cx, page(SHARED + 1 + t), &mut buf)?;
        println!(
            "thread {t}: own counter {} ({} conflicts retried)",
            counter(&buf),
            retries[t as usize]
        );
    }
    db.read_page(&cx, page(SHARED), &mut buf)?;
    let expected = u64::from(THREADS) * TXNS_PER_THREAD.div_ceil(4);
    println!(
        "shared counter {} (expected {expected}: no update lost)",
        counter(&buf)
    );
    let st = db.stats();
    println!(
        "{} commits in {elapsed:.2?}: {} conflicts, {} batches, {} WAL syncs ({:.1} commits per sync)",
        st.commits,
        st.conflicts,
        st.batches,
        st.wal_syncs,
        // A few hundred commits: they fit a u32, which f64 holds exactly.
        f64::from(u32::try_from(st.commits).unwrap_or(u32::MAX))
            / f64::from(u32::try_from(st.wal_syncs.max(1)).unwrap_or(u32::MAX))
    );
    db.close(&cx)
}
