//! Checkpoint I/O: copy the planned WAL frames into the database, then the recovery
//! barrier (full fsync, read-back verification).
//!
//! The plan comes from [`crate::checkpoint::plan_backfill`]; the locks, the WAL fsync that
//! precedes the copy, and the counter updates that follow it are the caller's (see the
//! algorithm in [`crate::checkpoint`]). This module owns only the bytes.
//!
//! # Where a frame's page is in the WAL (FORMAT.md §1–§2)
//!
//! ```text
//! offset 0                      WAL header   (WAL_HEADER_SIZE = 32 bytes)
//! frame_offset(i)               frame header (WAL_FRAME_HEADER_SIZE = 24 bytes)
//! frame_offset(i) + 24          page data    (page_size bytes)
//! frame_offset(i) = WAL_HEADER_SIZE + (i - 1) × (WAL_FRAME_HEADER_SIZE + page_size), i ≥ 1
//! ```
//!
//! [`wal_frame_data_offset`] computes the page-data offset.
//!
//! # The copy (step 1.5 of the algorithm)
//!
//! The runs of adjacent pages (ascending page order) are cut into **chunks** of at most
//! [`CHECKPOINT_MAX_WRITE_BYTES`] (at least one page; the plans `Wal` builds have runs of
//! at most that size, so there a chunk is a run). For each chunk: the frames that hold it
//! are read, frames that are consecutive in the WAL with one scatter read
//! ([`VfsFile::read_vectored`], `preadv` on `UnixFile`) of at most
//! [`CHECKPOINT_MAX_WAL_READ_BYTES`] that puts each page straight into the chunk's buffer
//! and the frame headers between them aside (no copy of the pages in user space), a lone
//! frame with one `read` straight into the chunk's buffer; the expected checksum of each page is recorded (the
//! whole-page xxh3-128 digest, or in trailer mode the page's trailer); then the chunk is
//! written with **one** [`CheckpointTarget::write_pages`] call. Chunks are written in
//! plan order. When the copy is complete the database is truncated to `n_page` pages.
//!
//! With two cores and at least [`CHECKPOINT_PIPELINE_MIN_BYTES`] to copy, the copy is a
//! two-stage pipeline: a scoped thread reads the WAL and computes the expected checksums
//! into one of [`CHECKPOINT_PIPELINE_BUFFERS`] chunk buffers while the calling thread
//! writes the previous ones (the target is used on the calling thread only). The writes,
//! their order, their contents and the expected checksums are the same as on one thread;
//! only the WAL reads run ahead of the writes, by at most the buffers in flight.
//!
//! [`DbFileTarget`] asks the file to start writing back every
//! [`CHECKPOINT_WRITEBACK_BYTES`] it has written ([`VfsFile::start_writeback`]; a hint,
//! on Linux `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so the disk works while the copy
//! goes on and the final fsync has little left to wait for.
//!
//! # The recovery barrier
//!
//! Then a **full** fsync of the database (never retried) and the read-back of every
//! written page ([`crate::recovery_fence::verify_checkpoint_pages`], which reads and
//! hashes on two threads when the pages are many). Both must succeed before the call
//! returns `Ok`, and the caller resets or truncates the WAL only after that. Any error
//! (I/O, short WAL, cancellation, mismatch) is returned and the caller must leave the WAL
//! and `nBackfill` as they were; a failed fsync is the error reported, whatever the pages
//! read back as.
//!
//! - [`execute_checkpoint`] (any target) and [`execute_checkpoint_on_file`] on a file that
//!   cannot sync through a shared reference (or with one thread, or fewer than
//!   [`BARRIER_OVERLAP_MIN_BYTES`] of pages): the fsync
//!   ([`crate::recovery_fence::ensure_db_fsync_before_wal_truncate`] /
//!   [`fsync_db_file_full`]), then, once it returned, the read-back.
//! - [`execute_checkpoint_on_file`] on a file whose [`VfsFile::can_sync_shared`] is true
//!   (`UnixFile`), with two cores and at least [`BARRIER_OVERLAP_MIN_BYTES`] of pages: the
//!   read-back runs on a scoped thread **while** the calling thread waits in the fsync
//!   ([`crate::recovery_fence::fsync_db_file_full_shared`]), and the call returns when
//!   both have ended. The read-back reads the page cache, which holds the same bytes
//!   before and after the fsync returns, so it checks the same bytes and reaches the same
//!   verdict; what ARCHITECTURE.md's invariant 2 asks (the WAL never reset or truncated
//!   before the database is fully fsynced *and* checked) is kept, since the caller still
//!   waits for both. The read-back's cost (a few ms per 16 MiB) hides behind the disk
//!   wait (`docs/BENCHMARKS.md`, issue 19). [`CheckpointReport::barrier_overlapped`] says
//!   which way it ran.
//!
//! # Memory
//!
//! Whatever the WAL size: at most [`CHECKPOINT_PIPELINE_BUFFERS`] chunk buffers (one on a
//! single thread), each about 1 MiB, one buffer for the frame headers of a read (24 bytes
//! per frame) and one list of read buffers per read (16 bytes per frame), plus the
//! expected checksums (24 bytes per copied page; the plan itself holds 4). No allocation
//! per frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::sync_primitives::{Condvar, Mutex};
use fsqlite_types::{Cx, PageNumber, PageSize};
use fsqlite_vfs::VfsFile;

use crate::checkpoint::BackfillPlan;
use crate::checksum::{WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, page_digest, read_page_checksum};
use crate::recovery_fence::{
    ExpectedPageChecksum, PageVerifyMode, PageVerifyReport, fsync_db_file_full,
    fsync_db_file_full_shared, into_barrier_result, verify_checkpoint_pages_with,
};

/// The largest single WAL read the copy issues for consecutive frames.
pub const CHECKPOINT_MAX_WAL_READ_BYTES: usize = 1024 * 1024;

/// The largest piece of a run written with one [`CheckpointTarget::write_pages`] call
/// (a longer run is written in pieces of this size; a page larger than it is written
/// whole). It is also the size of each pipeline buffer.
pub const CHECKPOINT_MAX_WRITE_BYTES: usize = 1024 * 1024;

/// [`DbFileTarget`] asks the file to start writing back after each this many bytes
/// written (the default of [`DbFileTarget::set_writeback_bytes`]).
pub const CHECKPOINT_WRITEBACK_BYTES: u64 = 8 * 1024 * 1024;

/// With [`CheckpointThreads::Auto`], copies of fewer bytes run on the calling thread
/// alone (a thread costs tens of microseconds; below this the pipeline gains nothing).
pub const CHECKPOINT_PIPELINE_MIN_BYTES: u64 = 4 * 1024 * 1024;

/// Chunk buffers in flight between the WAL-reading thread and the writing thread.
pub const CHECKPOINT_PIPELINE_BUFFERS: usize = 4;

/// With [`CheckpointThreads::Auto`], a read-back of at least this many bytes of pages
/// runs beside the database fsync when the file can sync through a shared reference
/// ([`VfsFile::can_sync_shared`]); a smaller one, which takes about as long as starting a
/// thread, runs after it.
pub const BARRIER_OVERLAP_MIN_BYTES: u64 = 2 * 1024 * 1024;

/// How many threads the copy and the read-back may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointThreads {
    /// Two when the machine has at least two cores (and not under `--cfg loom`) and the
    /// work is large enough ([`CHECKPOINT_PIPELINE_MIN_BYTES`] to copy,
    /// [`crate::recovery_fence::VERIFY_PARALLEL_MIN_BYTES`] to read back); else one.
    #[default]
    Auto,
    /// The calling thread only.
    One,
    /// Two threads whatever the size and the machine (for tests and measurements; one
    /// under `--cfg loom`, see [`CheckpointThreads::Auto`]).
    Two,
}

impl CheckpointThreads {
    /// Whether work of `bytes` uses two threads, given the threshold for `Auto`.
    pub(crate) fn use_two(self, bytes: u64, auto_min_bytes: u64) -> bool {
        match self {
            Self::One => false,
            Self::Two => !cfg!(loom),
            Self::Auto => bytes >= auto_min_bytes && two_cores(),
        }
    }
}

/// True when a second thread can run beside this one. Under `--cfg loom` the facade's
/// locks are loom's and only work inside a model, so the executor stays on one thread.
fn two_cores() -> bool {
    !cfg!(loom) && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Where a checkpoint writes pages: normally the database file ([`DbFileTarget`]).
///
/// Object-safe. Any method beyond the three required ones has a default body, so an
/// implementation of the three keeps compiling.
pub trait CheckpointTarget {
    /// Writes one page (`data` is exactly one page) at `(page - 1) × page_size`.
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()>;

    /// Sets the database size to `n_pages` pages.
    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()>;

    /// Makes every earlier write and truncation durable: a **full** fsync (never
    /// `fdatasync`). An error must be returned, not retried.
    fn sync_db(&mut self, cx: &Cx) -> Result<()>;

    /// Writes `data.len() / page_size` adjacent pages starting at `first`. The default
    /// calls [`write_page`](Self::write_page) for each page; a file-backed target writes
    /// them with one call.
    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        let ps = page_size.max(1) as usize;
        for (k, chunk) in data.chunks(ps).enumerate() {
            let page = first
                .get()
                .checked_add(k as u32)
                .and_then(PageNumber::new)
                .ok_or_else(|| FrankenError::out_of_range("page number", first.get()))?;
            self.write_page(cx, page, chunk)?;
        }
        Ok(())
    }
}

impl<T: CheckpointTarget + ?Sized> CheckpointTarget for &mut T {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        (**self).write_page(cx, page, data)
    }

    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        (**self).truncate_db(cx, n_pages)
    }

    fn sync_db(&mut self, cx: &Cx) -> Result<()> {
        (**self).sync_db(cx)
    }

    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        (**self).write_pages(cx, first, page_size, data)
    }
}

/// A [`CheckpointTarget`] over a database [`VfsFile`]: page `p` lives at
/// `(p - 1) × page_size`; a run of pages is one `write`; `sync_db` is `SyncFlags::FULL`.
///
/// After each [`CHECKPOINT_WRITEBACK_BYTES`] written (see
/// [`set_writeback_bytes`](Self::set_writeback_bytes)) it calls
/// [`VfsFile::start_writeback`] over the byte range written since the previous call
/// (from the lowest to the highest offset written), so the final `sync_db` finds most of
/// the data already on its way to the disk. The hint changes no byte and no ordering; if
/// the file reports an error for it, the target logs it and stops asking (the fsync
/// still reports any real write error).
#[derive(Debug)]
pub struct DbFileTarget<'a, F: VfsFile + ?Sized> {
    file: &'a mut F,
    page_size: u32,
    /// Bytes written between two writeback requests (0: never ask).
    writeback_bytes: u64,
    /// Written since the last request: `[start, end)` and how many bytes.
    pending: Option<(u64, u64)>,
    pending_bytes: u64,
}

impl<'a, F: VfsFile + ?Sized> DbFileTarget<'a, F> {
    /// A target writing pages of `page_size` bytes (a valid SQLite page size) into `file`.
    pub fn new(file: &'a mut F, page_size: u32) -> Result<Self> {
        PageSize::try_new(page_size)?;
        Ok(Self {
            file,
            page_size,
            writeback_bytes: CHECKPOINT_WRITEBACK_BYTES,
            pending: None,
            pending_bytes: 0,
        })
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The file, for reading.
    pub fn file(&self) -> &F {
        self.file
    }

    /// Asks for writeback after each `bytes` written (default
    /// [`CHECKPOINT_WRITEBACK_BYTES`]); 0 turns the requests off.
    pub fn set_writeback_bytes(&mut self, bytes: u64) {
        self.writeback_bytes = bytes;
    }

    fn check_len(&self, len: usize) -> Result<()> {
        if len == 0 || !len.is_multiple_of(self.page_size as usize) {
            return Err(FrankenError::internal(format!(
                "checkpoint write of {len} bytes is not a whole number of {}-byte pages",
                self.page_size
            )));
        }
        Ok(())
    }

    fn offset(&self, page: PageNumber) -> u64 {
        u64::from(page.get() - 1) * u64::from(self.page_size)
    }

    /// Notes `len` bytes written at `offset`; asks for writeback once enough are pending.
    fn written(&mut self, cx: &Cx, offset: u64, len: usize) {
        if self.writeback_bytes == 0 {
            return;
        }
        let end = offset + len as u64;
        let (start, end) = self
            .pending
            .map_or((offset, end), |(s, e)| (s.min(offset), e.max(end)));
        self.pending_bytes += len as u64;
        if self.pending_bytes < self.writeback_bytes {
            self.pending = Some((start, end));
            return;
        }
        self.pending = None;
        self.pending_bytes = 0;
        if let Err(e) = self.file.start_writeback(cx, start, end - start) {
            tracing::warn!(
                target: "fsqlite.wal.checkpoint",
                error = %e,
                offset = start,
                len = end - start,
                "early writeback request failed; no more requests in this checkpoint \
                 (the final fsync still makes the copy durable)"
            );
            self.writeback_bytes = 0;
        }
    }
}

impl<F: VfsFile + ?Sized> CheckpointTarget for DbFileTarget<'_, F> {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        if data.len() != self.page_size as usize {
            return Err(FrankenError::internal(format!(
                "checkpoint write of page {page}: {} bytes, expected {}",
                data.len(),
                self.page_size
            )));
        }
        let offset = self.offset(page);
        self.file.write(cx, data, offset)?;
        self.written(cx, offset, data.len());
        Ok(())
    }

    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        self.file
            .truncate(cx, u64::from(n_pages) * u64::from(self.page_size))
    }

    fn sync_db(&mut self, cx: &Cx) -> Result<()> {
        fsync_db_file_full(cx, self.file)
    }

    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        if page_size != self.page_size {
            return Err(FrankenError::internal(format!(
                "checkpoint run page size {page_size} differs from the target's {}",
                self.page_size
            )));
        }
        self.check_len(data.len())?;
        let offset = self.offset(first);
        self.file.write(cx, data, offset)?;
        self.written(cx, offset, data.len());
        Ok(())
    }
}

/// The offset of frame `frame`'s page data in a WAL of `page_size` pages (`frame >= 1`).
pub fn wal_frame_data_offset(frame: u32, page_size: u32) -> u64 {
    let frame_size = (WAL_FRAME_HEADER_SIZE as u64) + u64::from(page_size);
    WAL_HEADER_SIZE as u64
        + u64::from(frame.saturating_sub(1)) * frame_size
        + WAL_FRAME_HEADER_SIZE as u64
}

/// What to copy and how to check it.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointJob<'p> {
    /// The page size of the WAL and the database.
    pub page_size: u32,
    /// The runs to copy (from [`crate::checkpoint::plan_backfill`]).
    pub plan: &'p BackfillPlan,
    /// The database size in pages after the last commit (`hdr.nPage`).
    pub n_page: u32,
    /// Whether the copy reaches the live `mxFrame` (then the database is truncated to
    /// `n_page` pages), from [`crate::checkpoint::plan_after_copy`].
    pub complete: bool,
    /// How written pages are verified: `WholePage` (and `Auto`) record whole-page digests;
    /// `Trailer` records each page's trailer (databases reserving 16 bytes per page).
    pub verify_mode: PageVerifyMode,
}

/// What [`execute_checkpoint`] did, with the time of each phase. With the pipeline the
/// WAL reads and expected checksums run on the second thread, beside the writes, so
/// the phase times can add up to more than `total_time`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Pages written to the database.
    pub pages_written: u64,
    /// Bytes written to the database.
    pub bytes_written: u64,
    /// Runs of the plan copied (each written with one `write_pages` call per
    /// [`CHECKPOINT_MAX_WRITE_BYTES`]).
    pub runs: u64,
    /// WAL reads issued.
    pub wal_reads: u64,
    /// Bytes read from the WAL.
    pub wal_bytes_read: u64,
    /// The size the database was truncated to, in pages (complete copies only).
    pub truncated_to_pages: Option<u32>,
    /// Whether the copy ran as a two-thread pipeline.
    pub pipelined: bool,
    /// Time reading frames from the WAL.
    pub read_time: Duration,
    /// Time computing the expected checksums.
    pub digest_time: Duration,
    /// Time in the target's writes.
    pub write_time: Duration,
    /// Time truncating the database.
    pub truncate_time: Duration,
    /// Wall time of the copy (reads, checksums and writes, overlapped or not, and the
    /// truncation), before the fsync.
    pub copy_time: Duration,
    /// Time in the database fsync.
    pub sync_time: Duration,
    /// Time reading back and verifying.
    pub verify_time: Duration,
    /// Whether the read-back ran beside the database fsync (see the module doc).
    pub barrier_overlapped: bool,
    /// Wall time of the whole call.
    pub total_time: Duration,
    /// The verification's findings (always a match when the call succeeded).
    pub verify: PageVerifyReport,
}

/// Copies the plan's runs from `wal` into `target`, truncates when complete, then runs the
/// recovery barrier (full fsync through `target`, read-back through `db_file`, which
/// must see the target's writes: the same file, or another handle to it).
pub fn execute_checkpoint<T, D>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    target: &mut T,
    db_file: &D,
) -> Result<CheckpointReport>
where
    T: CheckpointTarget + ?Sized,
    D: VfsFile + ?Sized,
{
    execute_checkpoint_with(cx, wal, job, target, db_file, CheckpointThreads::Auto)
}

/// [`execute_checkpoint`] with an explicit thread policy.
pub fn execute_checkpoint_with<T, D>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    target: &mut T,
    db_file: &D,
    threads: CheckpointThreads,
) -> Result<CheckpointReport>
where
    T: CheckpointTarget + ?Sized,
    D: VfsFile + ?Sized,
{
    let start = Instant::now();
    let (expected, mut report) = copy_phase(cx, wal, job, target, threads)?;
    let t = Instant::now();
    crate::recovery_fence::ensure_db_fsync_before_wal_truncate(cx, target)?;
    report.sync_time = t.elapsed();
    verify_phase(cx, db_file, job, &expected, threads, &mut report)?;
    report.total_time = start.elapsed();
    log_report(&report);
    Ok(report)
}

/// [`execute_checkpoint`] with the database file as both the target ([`DbFileTarget`])
/// and the read-back handle.
pub fn execute_checkpoint_on_file<F>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    db_file: &mut F,
) -> Result<CheckpointReport>
where
    F: VfsFile + ?Sized,
{
    execute_checkpoint_on_file_with(cx, wal, job, db_file, CheckpointThreads::Auto)
}

/// [`execute_checkpoint_on_file`] with an explicit thread policy.
pub fn execute_checkpoint_on_file_with<F>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    db_file: &mut F,
    threads: CheckpointThreads,
) -> Result<CheckpointReport>
where
    F: VfsFile + ?Sized,
{
    let start = Instant::now();
    let (expected, mut report) = {
        let mut target = DbFileTarget::new(&mut *db_file, job.page_size)?;
        copy_phase(cx, wal, job, &mut target, threads)?
    };
    if let Some(r) = barrier_overlapped(cx, &*db_file, job, &expected, threads, &mut report) {
        r?;
    } else {
        let t = Instant::now();
        fsync_db_file_full(cx, db_file).inspect_err(log_fsync_failure)?;
        report.sync_time = t.elapsed();
        verify_phase(cx, &*db_file, job, &expected, threads, &mut report)?;
    }
    report.total_time = start.elapsed();
    log_report(&report);
    Ok(report)
}

fn log_fsync_failure(e: &FrankenError) {
    tracing::error!(
        target: "fsqlite.wal.checkpoint",
        error = %e,
        "database fsync failed; the WAL must not be truncated"
    );
}

/// The recovery barrier with the read-back on a scoped thread while the calling thread
/// waits for the database fsync (see the module doc). `None` when it does not apply
/// (the file cannot sync through a shared reference, one thread or few pages, or the
/// thread could not start): nothing was done, and the caller runs the barrier in order.
fn barrier_overlapped<F: VfsFile + ?Sized>(
    cx: &Cx,
    db_file: &F,
    job: &CheckpointJob<'_>,
    expected: &[ExpectedPageChecksum],
    threads: CheckpointThreads,
    report: &mut CheckpointReport,
) -> Option<Result<()>> {
    let bytes = expected.len() as u64 * u64::from(job.page_size);
    if !db_file.can_sync_shared() || !threads.use_two(bytes, BARRIER_OVERLAP_MIN_BYTES) {
        return None;
    }
    std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("fsqlite-ckpt-verify".to_owned())
            .spawn_scoped(s, || read_back(cx, db_file, job, expected, threads));
        let verifier = match spawned {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(
                    target: "fsqlite.wal.checkpoint",
                    error = %e,
                    "could not start the read-back thread; fsync, then read back"
                );
                return None;
            }
        };
        let t = Instant::now();
        let synced = fsync_db_file_full_shared(cx, db_file);
        report.sync_time = t.elapsed();
        let (verified, verify_time) = verifier
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        report.verify_time = verify_time;
        report.barrier_overlapped = true;
        // Both must succeed; a failed fsync is the error reported, whatever the pages
        // read back as.
        Some(synced.inspect_err(log_fsync_failure).and_then(|()| {
            report.verify = into_barrier_result(verified?)?;
            Ok(())
        }))
    })
}

fn log_report(r: &CheckpointReport) {
    tracing::debug!(
        target: "fsqlite.wal.checkpoint",
        pages = r.pages_written,
        runs = r.runs,
        wal_reads = r.wal_reads,
        pipelined = r.pipelined,
        copy_us = r.copy_time.as_micros() as u64,
        read_us = r.read_time.as_micros() as u64,
        digest_us = r.digest_time.as_micros() as u64,
        write_us = r.write_time.as_micros() as u64,
        sync_us = r.sync_time.as_micros() as u64,
        verify_us = r.verify_time.as_micros() as u64,
        overlapped = r.barrier_overlapped,
        total_us = r.total_time.as_micros() as u64,
        "checkpoint copy verified"
    );
}

fn verify_phase(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    expected: &[ExpectedPageChecksum],
    threads: CheckpointThreads,
    report: &mut CheckpointReport,
) -> Result<()> {
    let (v, verify_time) = read_back(cx, db_file, job, expected, threads);
    report.verify_time = verify_time;
    report.verify = into_barrier_result(v?)?;
    Ok(())
}

/// Reads back and checks the written pages; returns the findings and the time taken.
fn read_back(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    expected: &[ExpectedPageChecksum],
    threads: CheckpointThreads,
) -> (Result<PageVerifyReport>, Duration) {
    let t = Instant::now();
    let v = verify_checkpoint_pages_with(
        cx,
        db_file,
        job.page_size,
        expected,
        job.verify_mode,
        threads,
    );
    (v, t.elapsed())
}

/// One piece of a run: its first page and the frames holding its pages, in page order.
#[derive(Clone, Copy, Debug)]
struct Chunk<'p> {
    first_page: PageNumber,
    frames: &'p [u32],
}

/// The plan's runs cut into chunks of at most `chunk_pages` pages, in plan order.
fn chunks(plan: &BackfillPlan, chunk_pages: usize) -> impl Iterator<Item = Result<Chunk<'_>>> {
    plan.runs.iter().flat_map(move |run| {
        run.frames
            .chunks(chunk_pages)
            .enumerate()
            .map(move |(i, frames)| {
                let first = u64::from(run.first_page.get()) + (i * chunk_pages) as u64;
                let first_page = u32::try_from(first)
                    .ok()
                    .and_then(PageNumber::new)
                    .ok_or_else(|| FrankenError::out_of_range("checkpoint page number", first))?;
                Ok(Chunk { first_page, frames })
            })
    })
}

/// The WAL side of the copy: reads a chunk's frames and records its expected checksums.
struct WalReader<'w, W: VfsFile + ?Sized> {
    wal: &'w W,
    page_size: u32,
    ps: usize,
    frame_size: usize,
    max_frames_per_read: usize,
    mode: PageVerifyMode,
    /// Where a read of several consecutive frames puts the frame headers between their
    /// pages.
    rbuf: Vec<u8>,
    expected: Vec<ExpectedPageChecksum>,
    reads: u64,
    bytes_read: u64,
    read_time: Duration,
    digest_time: Duration,
}

impl<'w, W: VfsFile + ?Sized> WalReader<'w, W> {
    fn new(wal: &'w W, job: &CheckpointJob<'_>, ps: usize) -> Self {
        let frame_size = ps + WAL_FRAME_HEADER_SIZE;
        Self {
            wal,
            page_size: job.page_size,
            ps,
            frame_size,
            max_frames_per_read: (CHECKPOINT_MAX_WAL_READ_BYTES / frame_size).max(1),
            mode: job.verify_mode,
            rbuf: Vec::new(),
            expected: Vec::with_capacity(job.plan.page_count() as usize),
            reads: 0,
            bytes_read: 0,
            read_time: Duration::ZERO,
            digest_time: Duration::ZERO,
        }
    }

    /// Reads the chunk's pages into `out` (exactly `frames.len()` pages) and records
    /// their expected checksums.
    fn fill(&mut self, cx: &Cx, chunk: Chunk<'_>, out: &mut [u8]) -> Result<()> {
        let (ps, frames) = (self.ps, chunk.frames);
        debug_assert_eq!(out.len(), frames.len() * ps);
        let t = Instant::now();
        let mut k = 0;
        while k < frames.len() {
            // Frames consecutive in the WAL (frame f, f+1, ...) are read together.
            let mut m = 1;
            while k + m < frames.len()
                && m < self.max_frames_per_read
                && frames[k + m] == frames[k + m - 1].wrapping_add(1)
            {
                m += 1;
            }
            let first_frame = frames[k];
            if first_frame == 0 {
                return Err(FrankenError::internal(
                    "checkpoint plan names frame 0".to_owned(),
                ));
            }
            let off = wal_frame_data_offset(first_frame, self.page_size);
            if m == 1 {
                self.read(cx, &mut out[k * ps..(k + 1) * ps], off, first_frame)?;
            } else {
                // One scatter read: each page straight into `out`, the frame header
                // between two pages into the scratch buffer.
                let headers = (m - 1) * WAL_FRAME_HEADER_SIZE;
                if self.rbuf.len() < headers {
                    self.rbuf.resize(headers, 0);
                }
                let mut pages = out[k * ps..(k + m) * ps].chunks_exact_mut(ps);
                let mut heads = self.rbuf[..headers].chunks_exact_mut(WAL_FRAME_HEADER_SIZE);
                let mut bufs: Vec<&mut [u8]> = Vec::with_capacity(2 * m - 1);
                for q in 0..m {
                    if q > 0
                        && let Some(h) = heads.next()
                    {
                        bufs.push(h);
                    }
                    if let Some(p) = pages.next() {
                        bufs.push(p);
                    }
                }
                let span = (m - 1) * self.frame_size + ps;
                let got = self.wal.read_vectored(cx, &mut bufs, off)?;
                self.count_read(got, span, off, first_frame)?;
            }
            k += m;
        }
        self.read_time += t.elapsed();

        let t = Instant::now();
        for (q, page_data) in out.chunks_exact(ps).enumerate() {
            let page = chunk
                .first_page
                .get()
                .checked_add(q as u32)
                .and_then(PageNumber::new)
                .ok_or_else(|| {
                    FrankenError::out_of_range(
                        "checkpoint page number",
                        u64::from(chunk.first_page.get()) + q as u64,
                    )
                })?;
            let checksum = match self.mode {
                PageVerifyMode::Trailer => read_page_checksum(page_data)?,
                PageVerifyMode::WholePage | PageVerifyMode::Auto => page_digest(page_data),
            };
            self.expected.push(ExpectedPageChecksum { page, checksum });
        }
        self.digest_time += t.elapsed();
        Ok(())
    }

    /// One WAL read straight into (part of) a chunk buffer.
    fn read(&mut self, cx: &Cx, buf: &mut [u8], offset: u64, first_frame: u32) -> Result<()> {
        let got = self.wal.read(cx, buf, offset)?;
        self.count_read(got, buf.len(), offset, first_frame)
    }

    /// Counts a read of `len` bytes at `offset` that returned `got`; a short read means
    /// the WAL-index points past the file.
    fn count_read(&mut self, got: usize, len: usize, offset: u64, first_frame: u32) -> Result<()> {
        self.reads += 1;
        self.bytes_read += len as u64;
        if got < len {
            return Err(FrankenError::wal_corrupt(format!(
                "the WAL ends at byte {} while reading the data of frame {first_frame} and its \
                 successors ({len} bytes from offset {offset}), although the WAL-index lists them",
                offset + got as u64,
            )));
        }
        Ok(())
    }

    /// Moves the counters into `report`; returns the expected checksums.
    fn finish(self, report: &mut CheckpointReport) -> Vec<ExpectedPageChecksum> {
        report.wal_reads += self.reads;
        report.wal_bytes_read += self.bytes_read;
        report.read_time += self.read_time;
        report.digest_time += self.digest_time;
        self.expected
    }
}

fn copy_phase<T: CheckpointTarget + ?Sized>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    target: &mut T,
    threads: CheckpointThreads,
) -> Result<(Vec<ExpectedPageChecksum>, CheckpointReport)> {
    let start = Instant::now();
    let ps = PageSize::try_new(job.page_size)?.bytes();
    let chunk_pages = (CHECKPOINT_MAX_WRITE_BYTES / ps).max(1);
    let total_bytes = job.plan.page_count() * ps as u64;
    let mut report = CheckpointReport {
        pipelined: threads.use_two(total_bytes, CHECKPOINT_PIPELINE_MIN_BYTES),
        ..CheckpointReport::default()
    };
    let expected = if report.pipelined {
        match copy_pipelined(cx, wal, job, ps, chunk_pages, target, &mut report) {
            Pipelined::Done(r) => r?,
            Pipelined::NoThread(e) => {
                tracing::warn!(
                    target: "fsqlite.wal.checkpoint",
                    error = %e,
                    "could not start the WAL-reading thread; copying on one thread"
                );
                report.pipelined = false;
                let reader = WalReader::new(wal, job, ps);
                copy_sequential(cx, reader, job, chunk_pages, target, &mut report)?
            }
        }
    } else {
        let reader = WalReader::new(wal, job, ps);
        copy_sequential(cx, reader, job, chunk_pages, target, &mut report)?
    };
    report.runs = job
        .plan
        .runs
        .iter()
        .filter(|r| !r.frames.is_empty())
        .count() as u64;

    if job.complete {
        cx.checkpoint()?;
        let t = Instant::now();
        target.truncate_db(cx, job.n_page)?;
        report.truncate_time = t.elapsed();
        report.truncated_to_pages = Some(job.n_page);
    }
    report.copy_time = start.elapsed();
    Ok((expected, report))
}

/// Writes one filled chunk and counts it.
fn write_chunk<T: CheckpointTarget + ?Sized>(
    cx: &Cx,
    target: &mut T,
    page_size: u32,
    first_page: PageNumber,
    data: &[u8],
    report: &mut CheckpointReport,
) -> Result<()> {
    let t = Instant::now();
    target.write_pages(cx, first_page, page_size, data)?;
    report.write_time += t.elapsed();
    report.pages_written += (data.len() / page_size as usize) as u64;
    report.bytes_written += data.len() as u64;
    Ok(())
}

/// The copy on the calling thread: read a chunk, write it, next.
fn copy_sequential<W: VfsFile + ?Sized, T: CheckpointTarget + ?Sized>(
    cx: &Cx,
    mut reader: WalReader<'_, W>,
    job: &CheckpointJob<'_>,
    chunk_pages: usize,
    target: &mut T,
    report: &mut CheckpointReport,
) -> Result<Vec<ExpectedPageChecksum>> {
    let ps = reader.ps;
    let mut wbuf: Vec<u8> = Vec::new();
    for chunk in chunks(job.plan, chunk_pages) {
        cx.checkpoint()?;
        let chunk = chunk?;
        let len = chunk.frames.len() * ps;
        if wbuf.len() < len {
            wbuf.resize(len, 0);
        }
        reader.fill(cx, chunk, &mut wbuf[..len])?;
        write_chunk(
            cx,
            target,
            job.page_size,
            chunk.first_page,
            &wbuf[..len],
            report,
        )?;
    }
    Ok(reader.finish(report))
}

/// A chunk read from the WAL, waiting to be written.
struct Filled {
    first_page: PageNumber,
    len: usize,
    buf: Vec<u8>,
}

/// The hand-off between the WAL-reading thread and the writing thread: a fixed pool of
/// buffers that go round (free → filled by the reader → written → free).
struct Handoff {
    state: Mutex<HandoffState>,
    changed: Condvar,
}

struct HandoffState {
    free: Vec<Vec<u8>>,
    filled: VecDeque<Filled>,
    /// The reader will fill no more buffers (finished, failed or panicked).
    reader_done: bool,
    /// The writer will take no more buffers (finished, failed or panicked).
    writer_done: bool,
}

impl Handoff {
    fn new(buffers: usize) -> Self {
        Self {
            state: Mutex::new(HandoffState {
                free: (0..buffers).map(|_| Vec::new()).collect(),
                filled: VecDeque::with_capacity(buffers),
                reader_done: false,
                writer_done: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// A free buffer for the reader; `None` once the writer has stopped.
    fn take_free(&self) -> Option<Vec<u8>> {
        let mut g = self.state.lock();
        loop {
            if g.writer_done {
                return None;
            }
            if let Some(b) = g.free.pop() {
                return Some(b);
            }
            g = self.changed.wait(g);
        }
    }

    fn push_filled(&self, f: Filled) {
        self.state.lock().filled.push_back(f);
        self.changed.notify_all();
    }

    /// The next chunk for the writer, in the order filled; `None` once the reader is
    /// done and everything it filled has been taken.
    fn next_filled(&self) -> Option<Filled> {
        let mut g = self.state.lock();
        loop {
            if let Some(f) = g.filled.pop_front() {
                return Some(f);
            }
            if g.reader_done {
                return None;
            }
            g = self.changed.wait(g);
        }
    }

    fn give_back(&self, buf: Vec<u8>) {
        self.state.lock().free.push(buf);
        self.changed.notify_all();
    }
}

/// Marks one side of a [`Handoff`] done when dropped (also on an error or a panic), so
/// the other side never waits for it forever.
struct DoneOnDrop<'a> {
    handoff: &'a Handoff,
    reader: bool,
}

impl Drop for DoneOnDrop<'_> {
    fn drop(&mut self) {
        let mut g = self.handoff.state.lock();
        if self.reader {
            g.reader_done = true;
        } else {
            g.writer_done = true;
        }
        drop(g);
        self.handoff.changed.notify_all();
    }
}

/// The copy as a pipeline: a scoped thread reads the WAL and computes the expected
/// checksums; the calling thread writes, in the same order as [`copy_sequential`]. A
/// write error stops the reader; a read error ends the writes after the chunks read
/// before it (exactly the chunks [`copy_sequential`] would have written).
fn copy_pipelined<T: CheckpointTarget + ?Sized>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    ps: usize,
    chunk_pages: usize,
    target: &mut T,
    report: &mut CheckpointReport,
) -> Pipelined {
    let handoff = &Handoff::new(CHECKPOINT_PIPELINE_BUFFERS);
    std::thread::scope(|s| {
        let spawned = std::thread::Builder::new()
            .name("fsqlite-ckpt-read".to_owned())
            .spawn_scoped(s, move || {
                let _done = DoneOnDrop {
                    handoff,
                    reader: true,
                };
                let mut reader = WalReader::new(wal, job, ps);
                for chunk in chunks(job.plan, chunk_pages) {
                    cx.checkpoint()?;
                    let chunk = chunk?;
                    let Some(mut buf) = handoff.take_free() else {
                        break; // the writer stopped; its error is the one reported
                    };
                    let len = chunk.frames.len() * ps;
                    if buf.len() < len {
                        buf.resize(len, 0);
                    }
                    reader.fill(cx, chunk, &mut buf[..len])?;
                    handoff.push_filled(Filled {
                        first_page: chunk.first_page,
                        len,
                        buf,
                    });
                }
                Ok::<_, FrankenError>(reader)
            });
        let read_thread = match spawned {
            Ok(h) => h,
            // Nothing was read or written yet.
            Err(e) => return Pipelined::NoThread(e),
        };
        let written = {
            let _done = DoneOnDrop {
                handoff,
                reader: false,
            };
            let mut r = Ok(());
            while let Some(f) = handoff.next_filled() {
                r = cx.checkpoint().and_then(|()| {
                    write_chunk(
                        cx,
                        target,
                        job.page_size,
                        f.first_page,
                        &f.buf[..f.len],
                        report,
                    )
                });
                if r.is_err() {
                    break;
                }
                handoff.give_back(f.buf);
            }
            r
        };
        let read = read_thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Pipelined::Done(written.and_then(|()| Ok(read?.finish(report))))
    })
}

/// How [`copy_pipelined`] ended.
enum Pipelined {
    /// It ran: the expected checksums, or the first error (a write error before a read
    /// error).
    Done(Result<Vec<ExpectedPageChecksum>>),
    /// The reading thread could not be started; nothing was done.
    NoThread(std::io::Error),
}

#[cfg(all(test, not(loom)))]
mod tests;
