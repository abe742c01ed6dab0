//! Checkpoint throughput: `Wal::checkpoint(Truncate)` of a 16 MiB WAL written by real
//! SQLite (bulk inserts, 4 KiB pages) into its database, with synchronous OFF and FULL.
//! Ours always ends with the recovery barrier (a full fsync of the database and the
//! read-back verification of every copied page). Each iteration makes a fresh, fsynced
//! copy of the database and WAL and opens it (recovery; untimed), then times the
//! checkpoint. The side-by-side run against SQLite on 64/256 MiB WALs is
//! `cargo xtask bench-vs-sqlite`.
//!
//! Then the copy + barrier alone (`checkpoint_executor::execute_checkpoint_with`, the
//! library's executor, on the same plan, database written through a `DbFileTarget` and read
//! back through a second handle), in several variants interleaved over 11 rounds, phase
//! times printed (median):
//!
//! | # | variant | what it does |
//! |---|---|---|
//! | 0 | library (auto) | what `Wal::checkpoint` runs: pipeline on two cores, writeback every 8 MiB, two-thread read-back |
//! | 1 | 1 thread, wb 8 MiB | everything on the calling thread, writeback every 8 MiB |
//! | 2 | 1 thread, no wb | the executor as it was before (but with the faster `page_digest`): one thread, no early writeback |
//! | 3 | 2 threads, no wb | pipeline and two-thread read-back, no early writeback |
//! | 4, 5 | 2 threads, wb 4 / 16 MiB | other writeback batches |
//!
//! `CHECKPOINT_BENCH_VARIANTS=0,2` runs only the listed variants.
//!
//! `CHECKPOINT_BENCH_MIB` sets the WAL size (default 16).
//!
//! `cargo bench -p fsqlite-wal --bench checkpoint -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs, VfsFile};
use fsqlite_wal::checkpoint::{BackfillPlan, max_run_pages_for, plan_backfill};
use fsqlite_wal::checkpoint_executor::{
    CHECKPOINT_WRITEBACK_BYTES, CheckpointJob, CheckpointReport, CheckpointThreads, DbFileTarget,
    execute_checkpoint_with,
};
use fsqlite_wal::recovery_fence::PageVerifyMode;
use fsqlite_wal::wal_index::{HeapRegions, WalIndex};
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalFile, WalOptions};

fn wal_bytes() -> u64 {
    std::env::var("CHECKPOINT_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(16)
        << 20
}

fn checkpoint(c: &mut Criterion) {
    let cx = Cx::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = common::sqlite_wal(dir.path(), "src.db", wal_bytes());
    let wal_len = std::fs::metadata(common::sibling(&src, "-wal"))
        .expect("wal")
        .len();
    let db = dir.path().join("copy.db");
    let vfs = Arc::new(UnixVfs::new());
    let mut group = c.benchmark_group(format!("checkpoint_truncate_{}MiB", wal_bytes() >> 20));
    group.throughput(Throughput::Bytes(wal_len));
    group.sample_size(10);
    for (name, sync) in [("sync_off", SyncMode::Off), ("sync_full", SyncMode::Full)] {
        let options = WalOptions {
            sync,
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..WalOptions::default()
        };
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                let mut total = Duration::ZERO;
                for _ in 0..n {
                    common::fresh_copy(&src, &db);
                    let mut wal =
                        Wal::open(&cx, Arc::clone(&vfs), &db, options.clone()).expect("open");
                    let t = Instant::now();
                    let o = wal
                        .checkpoint(&cx, CheckpointMode::Truncate)
                        .expect("checkpoint");
                    total += t.elapsed();
                    assert!(!o.busy && o.log_frames == 0, "{o:?}");
                    wal.close(&cx).expect("close");
                }
                total
            });
        });
    }
    group.finish();
    executor_variants(&cx, &src, &db);
}

/// The plan for a full checkpoint of `wal`, built as `Wal::checkpoint` builds it.
fn full_plan(cx: &Cx, wal: &fsqlite_vfs::UnixFile) -> (BackfillPlan, u32, u32) {
    let mut heap = HeapRegions::new();
    let mut index = WalIndex::new();
    let report = WalFile::scan(cx, wal, |frame, page, _| {
        index.append(cx, &mut heap, frame, page)
    })
    .expect("scan");
    let h = report.header.expect("a valid WAL");
    let entries = index
        .checkpoint_frames(cx, &mut heap, 0, report.mx_frame, report.n_page)
        .expect("checkpoint frames");
    let plan = plan_backfill(
        entries.iter().map(|e| (e.page.get(), e.frame)),
        0,
        report.mx_frame,
        report.n_page,
        max_run_pages_for(h.page_size, 1 << 20),
    );
    (plan, report.n_page, h.page_size)
}

/// One way to run the executor: its thread policy and the target's writeback batch.
#[derive(Clone, Copy)]
struct Variant {
    name: &'static str,
    threads: CheckpointThreads,
    writeback_bytes: u64,
}

fn run_executor(cx: &Cx, src: &Path, db: &Path, v: Variant) -> CheckpointReport {
    common::fresh_copy(src, db);
    let vfs = UnixVfs::new();
    let flags = VfsOpenFlags::READWRITE;
    let (mut wal, _) = vfs
        .open(
            cx,
            Some(&common::sibling(db, "-wal")),
            flags | VfsOpenFlags::WAL,
        )
        .expect("open the WAL");
    let (mut target_file, _) = vfs
        .open(cx, Some(db), flags | VfsOpenFlags::MAIN_DB)
        .expect("open the database");
    let (readback, _) = vfs
        .open(cx, Some(db), flags | VfsOpenFlags::MAIN_DB)
        .expect("open the database again");
    let (plan, n_page, page_size) = full_plan(cx, &wal);
    // As `Wal::checkpoint` does before copying (sync != Off).
    wal.sync(cx, fsqlite_types::SyncFlags::FULL)
        .expect("fsync the WAL");
    let job = CheckpointJob {
        page_size,
        plan: &plan,
        n_page,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };
    let mut target = DbFileTarget::new(&mut target_file, page_size).expect("target");
    target.set_writeback_bytes(v.writeback_bytes);
    execute_checkpoint_with(cx, &wal, &job, &mut target, &readback, v.threads).expect("checkpoint")
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn executor_variants(cx: &Cx, src: &Path, db: &Path) {
    const MIB: u64 = 1 << 20;
    let variants = [
        Variant {
            name: "library (auto)",
            threads: CheckpointThreads::Auto,
            writeback_bytes: CHECKPOINT_WRITEBACK_BYTES,
        },
        Variant {
            name: "1 thread, wb 8 MiB",
            threads: CheckpointThreads::One,
            writeback_bytes: 8 * MIB,
        },
        Variant {
            name: "1 thread, no wb",
            threads: CheckpointThreads::One,
            writeback_bytes: 0,
        },
        Variant {
            name: "2 threads, no wb",
            threads: CheckpointThreads::Two,
            writeback_bytes: 0,
        },
        Variant {
            name: "2 threads, wb 4 MiB",
            threads: CheckpointThreads::Two,
            writeback_bytes: 4 * MIB,
        },
        Variant {
            name: "2 threads, wb 16 MiB",
            threads: CheckpointThreads::Two,
            writeback_bytes: 16 * MIB,
        },
    ];
    let only: Option<Vec<usize>> = std::env::var("CHECKPOINT_BENCH_VARIANTS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let chosen: Vec<usize> = (0..variants.len())
        .filter(|k| only.as_ref().is_none_or(|o| o.contains(k)))
        .collect();
    let mut rows: Vec<Vec<CheckpointReport>> = vec![Vec::new(); variants.len()];
    for round in 0..11 {
        for k in 0..chosen.len() {
            let v = chosen[(k + round) % chosen.len()];
            rows[v].push(run_executor(cx, src, db, variants[v]));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for &k in &chosen {
        let reports = &rows[k];
        let col = |f: &dyn Fn(&CheckpointReport) -> Duration| {
            med(&mut reports.iter().map(|r| ms(f(r))).collect())
        };
        let r = &reports[0];
        eprintln!(
            "executor {:<22} {} pages in {} runs, pipelined {}: total {:.1} ms (read {:.1}, \
             digests {:.1}, write {:.1}, truncate {:.1}, sync {:.1}, verify {:.1}; medians of 11)",
            variants[k].name,
            r.pages_written,
            r.runs,
            r.pipelined,
            col(&|r| r.total_time),
            col(&|r| r.read_time),
            col(&|r| r.digest_time),
            col(&|r| r.write_time),
            col(&|r| r.truncate_time),
            col(&|r| r.sync_time),
            col(&|r| r.verify_time),
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    checkpoint(&mut c);
    c.final_summary();
}
