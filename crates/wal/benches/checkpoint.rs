//! Checkpoint throughput: `Wal::checkpoint(Truncate)` of a 16 MiB WAL written by real
//! SQLite (bulk inserts, 4 KiB pages) into its database, with synchronous OFF and FULL.
//! Ours always ends with the recovery barrier (a full fsync of the database and the
//! read-back verification of every copied page). Each iteration makes a fresh, fsynced
//! copy of the database and WAL and opens it (recovery; untimed), then times the
//! checkpoint. The side-by-side run against SQLite on 64/256 MiB WALs is
//! `cargo xtask bench-vs-sqlite`.
//!
//! Then the copy + barrier alone (`checkpoint_executor::execute_checkpoint`, the
//! library's executor, on the same plan), with two targets, interleaved over 11 rounds,
//! phase times printed (median):
//!
//! | target | what it does |
//! |---|---|
//! | `DbFileTarget` | the library's: one `pwrite` per run, a full fsync at the end |
//! | prototype `overlap N MiB` | the same, plus `sync_file_range(SYNC_FILE_RANGE_WRITE)` over the last N MiB written (N = 1: every run), so the disk writes back while the copy goes on and the final fsync has little left to wait for (not the library's code) |
//!
//! `CHECKPOINT_BENCH_MIB` sets the WAL size (default 16).
//!
//! `cargo bench -p fsqlite-wal --bench checkpoint -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fsqlite_error::Result;
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs, VfsFile};
use fsqlite_wal::checkpoint::{BackfillPlan, max_run_pages_for, plan_backfill};
use fsqlite_wal::checkpoint_executor::{
    CheckpointJob, CheckpointReport, CheckpointTarget, DbFileTarget, execute_checkpoint,
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
    executor_prototype(&cx, &src, &db);
}

/// The prototype target: the library's `DbFileTarget`, plus an early writeback request
/// for every `batch` bytes it writes.
struct OverlapTarget<'a> {
    inner: DbFileTarget<'a, fsqlite_vfs::UnixFile>,
    raw: std::fs::File,
    batch: i64,
    /// Written but not yet handed to writeback: `[start, end)`.
    pending: Option<(i64, i64)>,
}

impl CheckpointTarget for OverlapTarget<'_> {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        self.inner.write_page(cx, page, data)
    }

    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        self.inner.truncate_db(cx, n_pages)
    }

    fn sync_db(&mut self, cx: &Cx) -> Result<()> {
        self.inner.sync_db(cx)
    }

    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        self.inner.write_pages(cx, first, page_size, data)?;
        let off = i64::from(first.get() - 1) * i64::from(page_size);
        let end = off + data.len() as i64;
        let (start, end) = self
            .pending
            .map_or((off, end), |(s, e)| (s.min(off), e.max(end)));
        if end - start < self.batch {
            self.pending = Some((start, end));
            return Ok(());
        }
        self.pending = None;
        // SAFETY: a plain syscall on a descriptor this value owns; it only starts the
        // writeback of dirty pages in the range and touches no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(
                self.raw.as_raw_fd(),
                start,
                end - start,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        assert_eq!(
            rc,
            0,
            "sync_file_range: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }
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

/// `overlap`: `None` for the library's target, `Some(bytes)` for the prototype.
fn run_executor(cx: &Cx, src: &Path, db: &Path, overlap: Option<i64>) -> CheckpointReport {
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
    let inner = DbFileTarget::new(&mut target_file, page_size).expect("target");
    if let Some(batch) = overlap {
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(db)
            .expect("open for sync_file_range");
        let mut t = OverlapTarget {
            inner,
            raw,
            batch,
            pending: None,
        };
        execute_checkpoint(cx, &wal, &job, &mut t, &readback).expect("checkpoint")
    } else {
        let mut t = inner;
        execute_checkpoint(cx, &wal, &job, &mut t, &readback).expect("checkpoint")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn executor_prototype(cx: &Cx, src: &Path, db: &Path) {
    let variants: [(&str, Option<i64>); 3] = [
        ("DbFileTarget", None),
        ("overlap 1 MiB", Some(1 << 20)),
        ("overlap 8 MiB", Some(8 << 20)),
    ];
    let mut rows: [Vec<CheckpointReport>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..11 {
        for k in 0..variants.len() {
            let v = (k + round) % variants.len();
            rows[v].push(run_executor(cx, src, db, variants[v].1));
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for ((name, _), reports) in variants.iter().zip(&rows) {
        let col = |f: &dyn Fn(&CheckpointReport) -> Duration| {
            med(&mut reports.iter().map(|r| ms(f(r))).collect())
        };
        let r = &reports[0];
        eprintln!(
            "executor {name:<20} {} pages in {} runs: total {:.1} ms (read {:.1}, write {:.1}, \
             truncate {:.1}, sync {:.1}, verify {:.1}; medians of 11)",
            r.pages_written,
            r.runs,
            col(&|r| r.total_time),
            col(&|r| r.read_time),
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
