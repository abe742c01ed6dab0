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
//! For each run of adjacent pages (ascending page order): the frames that hold it are
//! read, frames that are consecutive in the WAL with one `read` (into a reused buffer,
//! then copied out), a lone frame straight into the run's write buffer; then the run is
//! written with **one** [`CheckpointTarget::write_pages`] call. For each page the
//! expected checksum is recorded (the whole-page xxh3-128 digest, or in trailer mode the
//! page's trailer). When the copy is complete the database is truncated to `n_page`
//! pages. Then [`crate::recovery_fence::execute_recovery_barrier_with`]: a full fsync of the
//! database and the read-back of every written page. Any error (I/O, short WAL,
//! cancellation, mismatch) is returned and the caller must leave the WAL and `nBackfill`
//! as they were; an fsync error is never retried.

use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber, PageSize};
use fsqlite_vfs::VfsFile;

use crate::checkpoint::BackfillPlan;
use crate::checksum::{WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, page_digest, read_page_checksum};
use crate::recovery_fence::{
    ExpectedPageChecksum, PageVerifyMode, PageVerifyReport, fsync_db_file_full,
    into_barrier_result, verify_checkpoint_pages,
};

/// The largest single WAL read the copy issues for consecutive frames.
pub const CHECKPOINT_MAX_WAL_READ_BYTES: usize = 1024 * 1024;

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
#[derive(Debug)]
pub struct DbFileTarget<'a, F: VfsFile + ?Sized> {
    file: &'a mut F,
    page_size: u32,
}

impl<'a, F: VfsFile + ?Sized> DbFileTarget<'a, F> {
    /// A target writing pages of `page_size` bytes (a valid SQLite page size) into `file`.
    pub fn new(file: &'a mut F, page_size: u32) -> Result<Self> {
        PageSize::try_new(page_size)?;
        Ok(Self { file, page_size })
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// The file, for reading.
    pub fn file(&self) -> &F {
        self.file
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
        self.file.write(cx, data, self.offset(page))
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
        self.file.write(cx, data, self.offset(first))
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

/// What [`execute_checkpoint`] did, with the time of each phase.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Pages written to the database.
    pub pages_written: u64,
    /// Bytes written to the database.
    pub bytes_written: u64,
    /// Runs (one write each).
    pub runs: u64,
    /// WAL reads issued.
    pub wal_reads: u64,
    /// Bytes read from the WAL.
    pub wal_bytes_read: u64,
    /// The size the database was truncated to, in pages (complete copies only).
    pub truncated_to_pages: Option<u32>,
    /// Time reading frames from the WAL.
    pub read_time: Duration,
    /// Time in the target's writes.
    pub write_time: Duration,
    /// Time truncating the database.
    pub truncate_time: Duration,
    /// Time in the database fsync.
    pub sync_time: Duration,
    /// Time reading back and verifying.
    pub verify_time: Duration,
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
    let start = Instant::now();
    let (expected, mut report) = copy_phase(cx, wal, job, target)?;
    let t = Instant::now();
    crate::recovery_fence::ensure_db_fsync_before_wal_truncate(cx, target)?;
    report.sync_time = t.elapsed();
    verify_phase(cx, db_file, job, &expected, &mut report)?;
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
    let start = Instant::now();
    let (expected, mut report) = {
        let mut target = DbFileTarget::new(&mut *db_file, job.page_size)?;
        copy_phase(cx, wal, job, &mut target)?
    };
    let t = Instant::now();
    fsync_db_file_full(cx, db_file).inspect_err(|e| {
        tracing::error!(
            target: "fsqlite.wal.checkpoint",
            error = %e,
            "database fsync failed; the WAL must not be truncated"
        );
    })?;
    report.sync_time = t.elapsed();
    verify_phase(cx, &*db_file, job, &expected, &mut report)?;
    report.total_time = start.elapsed();
    log_report(&report);
    Ok(report)
}

fn log_report(r: &CheckpointReport) {
    tracing::debug!(
        target: "fsqlite.wal.checkpoint",
        pages = r.pages_written,
        runs = r.runs,
        wal_reads = r.wal_reads,
        read_us = r.read_time.as_micros() as u64,
        write_us = r.write_time.as_micros() as u64,
        sync_us = r.sync_time.as_micros() as u64,
        verify_us = r.verify_time.as_micros() as u64,
        total_us = r.total_time.as_micros() as u64,
        "checkpoint copy verified"
    );
}

fn verify_phase(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    expected: &[ExpectedPageChecksum],
    report: &mut CheckpointReport,
) -> Result<()> {
    let t = Instant::now();
    let v = verify_checkpoint_pages(cx, db_file, job.page_size, expected, job.verify_mode)?;
    report.verify_time = t.elapsed();
    report.verify = into_barrier_result(v)?;
    Ok(())
}

/// Reads one WAL span into `buf`; a short read means the WAL-index points past the file.
fn read_wal(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    buf: &mut [u8],
    offset: u64,
    first_frame: u32,
    report: &mut CheckpointReport,
) -> Result<()> {
    let got = wal.read(cx, buf, offset)?;
    report.wal_reads += 1;
    report.wal_bytes_read += buf.len() as u64;
    if got < buf.len() {
        return Err(FrankenError::wal_corrupt(format!(
            "the WAL ends at byte {} while reading the data of frame {first_frame} and its \
             successors ({} bytes from offset {offset}), although the WAL-index lists them",
            offset + got as u64,
            buf.len()
        )));
    }
    Ok(())
}

fn copy_phase<T: CheckpointTarget + ?Sized>(
    cx: &Cx,
    wal: &(impl VfsFile + ?Sized),
    job: &CheckpointJob<'_>,
    target: &mut T,
) -> Result<(Vec<ExpectedPageChecksum>, CheckpointReport)> {
    let ps = PageSize::try_new(job.page_size)?.bytes();
    let frame_size = ps + WAL_FRAME_HEADER_SIZE;
    let max_frames_per_read = (CHECKPOINT_MAX_WAL_READ_BYTES / frame_size).max(1);
    let mut report = CheckpointReport::default();
    let mut expected = Vec::with_capacity(job.plan.page_count() as usize);
    let mut wbuf: Vec<u8> = Vec::new();
    let mut rbuf: Vec<u8> = Vec::new();

    for run in &job.plan.runs {
        cx.checkpoint()?;
        let n = run.frames.len();
        if n == 0 {
            continue;
        }
        if wbuf.len() < n * ps {
            wbuf.resize(n * ps, 0);
        }
        let t = Instant::now();
        let mut k = 0;
        while k < n {
            // Frames consecutive in the WAL (frame f, f+1, ...) are read together.
            let mut m = 1;
            while k + m < n
                && m < max_frames_per_read
                && run.frames[k + m] == run.frames[k + m - 1].wrapping_add(1)
            {
                m += 1;
            }
            let first_frame = run.frames[k];
            if first_frame == 0 {
                return Err(FrankenError::internal(
                    "checkpoint plan names frame 0".to_owned(),
                ));
            }
            let off = wal_frame_data_offset(first_frame, job.page_size);
            if m == 1 {
                read_wal(
                    cx,
                    wal,
                    &mut wbuf[k * ps..(k + 1) * ps],
                    off,
                    first_frame,
                    &mut report,
                )?;
            } else {
                let span = (m - 1) * frame_size + ps;
                if rbuf.len() < span {
                    rbuf.resize(span, 0);
                }
                read_wal(cx, wal, &mut rbuf[..span], off, first_frame, &mut report)?;
                for q in 0..m {
                    let src = q * frame_size;
                    wbuf[(k + q) * ps..(k + q + 1) * ps].copy_from_slice(&rbuf[src..src + ps]);
                }
            }
            k += m;
        }
        report.read_time += t.elapsed();

        let data = &wbuf[..n * ps];
        for (q, page_data) in data.chunks_exact(ps).enumerate() {
            let page = PageNumber::new(run.first_page.get() + q as u32)
                .ok_or_else(|| FrankenError::out_of_range("page number", 0))?;
            let checksum = match job.verify_mode {
                PageVerifyMode::Trailer => read_page_checksum(page_data)?,
                PageVerifyMode::WholePage | PageVerifyMode::Auto => page_digest(page_data),
            };
            expected.push(ExpectedPageChecksum { page, checksum });
        }

        let t = Instant::now();
        target.write_pages(cx, run.first_page, job.page_size, data)?;
        report.write_time += t.elapsed();
        report.runs += 1;
        report.pages_written += n as u64;
        report.bytes_written += (n * ps) as u64;
    }

    if job.complete {
        cx.checkpoint()?;
        let t = Instant::now();
        target.truncate_db(cx, job.n_page)?;
        report.truncate_time = t.elapsed();
        report.truncated_to_pages = Some(job.n_page);
    }
    Ok((expected, report))
}

#[cfg(all(test, not(loom)))]
mod tests;
