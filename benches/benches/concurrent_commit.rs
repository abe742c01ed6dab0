//! `BEGIN CONCURRENT` commit throughput of `fsqlite-mvcc` (our side only; the comparison
//! with SQLite is `cargo xtask bench-concurrent`).
//!
//! ```text
//! setup   a SQLite-made WAL database (4 KiB pages) in target/bench-tmp (a real disk,
//!         so SyncMode::Full fsyncs mean something), table t(id INTEGER PRIMARY KEY,
//!         pad BLOB) with rows of 3000 bytes: one row per leaf page
//! sample  W threads start on a barrier; thread t commits its share of the iterations,
//!         each a transaction that reads leaf page P_t (its own: disjoint), bumps a
//!         counter in the last 8 bytes of the page (inside the row's pad blob, so the
//!         database stays valid) and commits; the sample's time is the wall time from
//!         the barrier to the last thread's end, so criterion's time per iteration is
//!         wall time per commit (inverse throughput) and its slope drops the fixed
//!         cost of starting the threads
//! reopen  every REOPEN_AFTER commits, outside the timing, the coordinator closes
//!         (checkpoint, WAL removed) and reopens, so the WAL and the version map stay
//!         small
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::SyncMode;

const PAGE_SIZE: usize = 4096;
const ROWS: u32 = 64;
const REOPEN_AFTER: u64 = 20_000;
/// SQLite's extended code for a refused concurrent commit.
const BUSY_SNAPSHOT: i32 = 517;

fn make_db(dir: &Path) -> PathBuf {
    let path = dir.join("bench.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(&format!(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
         INSERT INTO t SELECT i, zeroblob(3000) FROM n;"
    ))
    .unwrap();
    conn.close().unwrap();
    path
}

/// Leaf pages of `t`, each holding one row: type 0x0d, one cell.
fn leaf_pages(db: &Path) -> Vec<u32> {
    let bytes = std::fs::read(db).unwrap();
    bytes
        .chunks_exact(PAGE_SIZE)
        .enumerate()
        .skip(1)
        .filter(|(_, p)| p[0] == 0x0d && u16::from_be_bytes([p[3], p[4]]) == 1)
        .map(|(i, _)| i as u32 + 1)
        .collect()
}

fn open(db: &Path, sync: SyncMode) -> Coordinator<UnixVfs> {
    let options = CoordinatorOptions {
        sync,
        kill_at: None,
        ..CoordinatorOptions::default()
    };
    Coordinator::open(&Cx::new(), Arc::new(UnixVfs::new()), db, options).unwrap()
}

/// One committed read-modify-write of `page` (retried on a conflict, which disjoint
/// pages never see).
fn bump(coord: &Coordinator<UnixVfs>, cx: &Cx, page: PageNumber, buf: &mut [u8]) {
    loop {
        let mut txn = coord.begin_concurrent(cx).unwrap();
        txn.read_page(cx, page, buf).unwrap();
        let tail = PAGE_SIZE - 8;
        let n = u64::from_le_bytes(buf[tail..].try_into().unwrap()) + 1;
        buf[tail..].copy_from_slice(&n.to_le_bytes());
        txn.write_page(cx, page, buf).unwrap();
        let size = txn.db_size();
        match txn.commit(cx, size) {
            Ok(frame) => {
                black_box(frame);
                return;
            }
            Err(e) if e.extended_code() == BUSY_SNAPSHOT => {}
            Err(e) => panic!("commit of page {page}: {e}"),
        }
    }
}

fn concurrent_commit(c: &mut Criterion) {
    let base = fsqlite_testkit::stats::target_dir().join("bench-tmp");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let db = make_db(dir.path());
    let pages = leaf_pages(&db);
    assert!(
        pages.len() >= 8,
        "expected one leaf per row, found {pages:?}"
    );
    let mut group = c.benchmark_group("concurrent_commit");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for sync in [SyncMode::Full, SyncMode::Off] {
        for writers in [1u32, 8] {
            let mut coord = Some(open(&db, sync));
            let mut since_open = 0u64;
            let id = BenchmarkId::new(format!("disjoint/{sync:?}"), writers);
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    if since_open >= REOPEN_AFTER {
                        coord.take().unwrap().close(&Cx::new()).unwrap();
                        coord = Some(open(&db, sync));
                        since_open = 0;
                    }
                    since_open += iters;
                    let coord = coord.as_ref().unwrap();
                    let barrier = Barrier::new(writers as usize + 1);
                    std::thread::scope(|s| {
                        for t in 0..writers {
                            let share = iters / u64::from(writers)
                                + u64::from(u64::from(t) < iters % u64::from(writers));
                            let page = PageNumber::new(pages[t as usize]).unwrap();
                            let barrier = &barrier;
                            s.spawn(move || {
                                let cx = Cx::new();
                                let mut buf = vec![0u8; PAGE_SIZE];
                                barrier.wait();
                                for _ in 0..share {
                                    bump(coord, &cx, page, &mut buf);
                                }
                            });
                        }
                        barrier.wait();
                        let start = Instant::now();
                        // the scope joins every writer before it returns
                        start
                    })
                    .elapsed()
                });
            });
            coord.take().unwrap().close(&Cx::new()).unwrap();
        }
    }
    group.finish();
}

criterion_group!(benches, concurrent_commit);
criterion_main!(benches);
