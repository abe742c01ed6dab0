//! Post-checkpoint verification: read back the pages a checkpoint wrote and compare them
//! with the digests of the WAL frames they came from.
//!
//! # Two ways to know what a page should be
//!
//! - **Whole-page mode** ([`PageVerifyMode::WholePage`], stock SQLite databases): the
//!   expected checksum is the xxh3-128 digest of the frame's page image
//!   ([`crate::checksum::page_digest`]); the page read back must hash to it.
//! - **Trailer mode** ([`PageVerifyMode::Trailer`], databases that reserve
//!   [`PAGE_CHECKSUM_RESERVED_BYTES`] bytes per page, i.e. SQLite header byte 20 ≥ 16): the
//!   expected checksum is the page's 16-byte trailer. The trailer read back must equal it
//!   **and** the payload must still hash to the trailer
//!   ([`crate::checksum::verify_page_checksum`]), so a torn page whose trailer survived is
//!   caught.
//! - [`PageVerifyMode::Auto`] (the mode of the API-fixed functions) accepts a page that
//!   passes either test. A page a checkpoint copied from a frame passes the test matching
//!   how its expected value was made; a torn or stale page passes neither (short of an
//!   xxh3-128 collision).
//!
//! # Reading
//!
//! Expected pages are visited in page order; pages that are adjacent (or repeated) are
//! read with one `read` of up to [`VERIFY_MAX_READ_BYTES`] into one reused buffer. A read
//! that comes back short makes every page it did not cover a mismatch
//! ([`BadPageReason::ShortRead`]). `cx.checkpoint()` is called between reads.
//!
//! When the expected pages add up to at least [`VERIFY_PARALLEL_MIN_BYTES`] and a second
//! core is there ([`CheckpointThreads`]), the page-ordered list is cut in two halves that
//! are read and hashed at once, the upper half on a scoped thread, each with its own
//! buffer; the two reports are joined in page order (a run cut at the middle costs one
//! more `read`). The bytes checked and the verdict are the same as on one thread.

use std::fmt;
use std::fmt::Write as _;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber, PageSize};
use fsqlite_vfs::VfsFile;

use crate::checkpoint_executor::{CheckpointTarget, CheckpointThreads};
use crate::checksum::{
    PAGE_CHECKSUM_RESERVED_BYTES, Xxh3Checksum128, page_digest, read_page_checksum,
    verify_page_checksum,
};

/// The largest single read verification issues (a run of adjacent pages is split above
/// it; a single page larger than this is still read whole).
pub const VERIFY_MAX_READ_BYTES: usize = 1024 * 1024;

/// With [`CheckpointThreads::Auto`], verification of at least this many bytes of pages
/// reads and hashes on two threads (below it a thread would cost more than it saves).
pub const VERIFY_PARALLEL_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// How many bad pages an error message names before it says "and N more".
const MAX_PAGES_NAMED: usize = 16;

/// Whether the pages a checkpoint wrote read back as expected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointChecksumVerdict {
    /// Every page matched.
    Match,
    /// At least one page did not; this is the lowest-numbered one.
    Mismatch {
        /// The lowest-numbered page that did not match.
        first_bad_page: PageNumber,
    },
}

/// What one page should read back as (see the module doc for the two meanings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectedPageChecksum {
    /// The page.
    pub page: PageNumber,
    /// Its expected digest (whole-page digest, or trailer value).
    pub checksum: Xxh3Checksum128,
}

/// How expected checksums are compared with the pages read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PageVerifyMode {
    /// The xxh3-128 of the whole page must equal the expected value.
    WholePage,
    /// The page's 16-byte trailer must equal the expected value and its payload must hash
    /// to it.
    Trailer,
    /// Either of the above.
    #[default]
    Auto,
}

/// Why a page failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPageReason {
    /// The file ended before the page did.
    ShortRead,
    /// The page's digest differs from the expected one (whole-page mode).
    Digest,
    /// The stored trailer differs from the expected one (trailer mode).
    Trailer,
    /// The trailer is as expected but the payload does not hash to it: a torn page.
    TornPayload,
}

impl fmt::Display for BadPageReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ShortRead => "short read",
            Self::Digest => "digest differs",
            Self::Trailer => "trailer differs",
            Self::TornPayload => "torn (payload does not match its trailer)",
        })
    }
}

/// One page that failed verification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadPage {
    /// The page.
    pub page: PageNumber,
    /// Why.
    pub reason: BadPageReason,
}

/// Everything [`verify_checkpoint_pages`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageVerifyReport {
    /// Expected entries checked.
    pub pages_checked: u64,
    /// `read` calls issued.
    pub reads: u64,
    /// Bytes asked for.
    pub bytes_read: u64,
    /// Every bad page, in page order.
    pub bad_pages: Vec<BadPage>,
}

impl PageVerifyReport {
    /// True when no page was bad.
    pub fn is_match(&self) -> bool {
        self.bad_pages.is_empty()
    }

    /// The API-level verdict.
    pub fn verdict(&self) -> CheckpointChecksumVerdict {
        match self.bad_pages.first() {
            None => CheckpointChecksumVerdict::Match,
            Some(b) => CheckpointChecksumVerdict::Mismatch {
                first_bad_page: b.page,
            },
        }
    }

    /// A sentence naming the bad pages (at most 16, then "and N more").
    pub fn describe_bad_pages(&self) -> String {
        let mut s = String::new();
        for (i, b) in self.bad_pages.iter().take(MAX_PAGES_NAMED).enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "page {} ({})", b.page, b.reason);
        }
        if self.bad_pages.len() > MAX_PAGES_NAMED {
            let _ = write!(s, " and {} more", self.bad_pages.len() - MAX_PAGES_NAMED);
        }
        s
    }
}

fn check_page(
    data: &[u8],
    expected: Xxh3Checksum128,
    mode: PageVerifyMode,
) -> Option<BadPageReason> {
    let whole = |d: &[u8]| page_digest(d) == expected;
    // Pages are at least 512 bytes (validated), so the trailer helpers cannot fail.
    let trailer = |d: &[u8]| -> Option<BadPageReason> {
        match read_page_checksum(d) {
            Ok(t) if t == expected => match verify_page_checksum(d) {
                Ok(true) => None,
                _ => Some(BadPageReason::TornPayload),
            },
            _ => Some(BadPageReason::Trailer),
        }
    };
    match mode {
        PageVerifyMode::WholePage => (!whole(data)).then_some(BadPageReason::Digest),
        PageVerifyMode::Trailer => trailer(data),
        PageVerifyMode::Auto => {
            if whole(data) {
                None
            } else {
                match trailer(data) {
                    None => None,
                    Some(BadPageReason::TornPayload) => Some(BadPageReason::TornPayload),
                    Some(_) => Some(BadPageReason::Digest),
                }
            }
        }
    }
}

/// Reads back every expected page of `db_file` and reports each one that does not match
/// (see the module doc for modes and reading). An I/O error is returned as an error; a
/// short read is a bad page, not an error. `page_size` must be a valid SQLite page size.
/// Uses two threads for large lists ([`CheckpointThreads::Auto`]).
pub fn verify_checkpoint_pages(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    page_size: u32,
    expected: &[ExpectedPageChecksum],
    mode: PageVerifyMode,
) -> Result<PageVerifyReport> {
    verify_checkpoint_pages_with(
        cx,
        db_file,
        page_size,
        expected,
        mode,
        CheckpointThreads::Auto,
    )
}

/// [`verify_checkpoint_pages`] with an explicit thread policy.
pub fn verify_checkpoint_pages_with(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    page_size: u32,
    expected: &[ExpectedPageChecksum],
    mode: PageVerifyMode,
    threads: CheckpointThreads,
) -> Result<PageVerifyReport> {
    let ps = PageSize::try_new(page_size)?.bytes();
    debug_assert!(ps > PAGE_CHECKSUM_RESERVED_BYTES);
    if expected.is_empty() {
        return Ok(PageVerifyReport::default());
    }
    let mut order: Vec<&ExpectedPageChecksum> = expected.iter().collect();
    // Stable, and linear on the page-ordered lists a checkpoint produces.
    order.sort_by_key(|e| e.page);
    let bytes = order.len() as u64 * ps as u64;
    let report = if order.len() >= 2 && threads.use_two(bytes, VERIFY_PARALLEL_MIN_BYTES) {
        let (low, high) = order.split_at(order.len() / 2);
        let (low, high) = std::thread::scope(|s| {
            let spawned = std::thread::Builder::new()
                .name("fsqlite-ckpt-verify".to_owned())
                .spawn_scoped(s, || verify_sorted(cx, db_file, ps, high, mode));
            let low_report = verify_sorted(cx, db_file, ps, low, mode);
            let high_report = match spawned {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => {
                    tracing::warn!(
                        target: "fsqlite.wal.checkpoint",
                        error = %e,
                        "could not start a verification thread; verifying on one thread"
                    );
                    verify_sorted(cx, db_file, ps, high, mode)
                }
            };
            (low_report, high_report)
        });
        let (mut low, high) = (low?, high?);
        low.pages_checked += high.pages_checked;
        low.reads += high.reads;
        low.bytes_read += high.bytes_read;
        low.bad_pages.extend(high.bad_pages);
        low
    } else {
        verify_sorted(cx, db_file, ps, &order, mode)?
    };
    if !report.is_match() {
        tracing::error!(
            target: "fsqlite.wal.checkpoint",
            bad = report.bad_pages.len(),
            pages = %report.describe_bad_pages(),
            "checkpoint verification found pages that do not match the WAL"
        );
    }
    Ok(report)
}

/// Verifies `order` (sorted by page) with one reused buffer.
fn verify_sorted(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    ps: usize,
    order: &[&ExpectedPageChecksum],
    mode: PageVerifyMode,
) -> Result<PageVerifyReport> {
    let mut report = PageVerifyReport::default();
    let max_pages_per_read = (VERIFY_MAX_READ_BYTES / ps).max(1) as u64;
    let mut buf: Vec<u8> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        cx.checkpoint()?;
        // The run: entries whose pages are adjacent or repeated, within the read limit.
        let first = u64::from(order[i].page.get());
        let mut j = i;
        while j + 1 < order.len() {
            let next = u64::from(order[j + 1].page.get());
            let cur = u64::from(order[j].page.get());
            if (next == cur || next == cur + 1) && next - first < max_pages_per_read {
                j += 1;
            } else {
                break;
            }
        }
        let last = u64::from(order[j].page.get());
        let len = ((last - first + 1) as usize) * ps;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        let offset = (first - 1) * ps as u64;
        let got = db_file.read(cx, &mut buf[..len], offset)?;
        report.reads += 1;
        report.bytes_read += len as u64;
        for e in &order[i..=j] {
            report.pages_checked += 1;
            let start = ((u64::from(e.page.get()) - first) as usize) * ps;
            let reason = if start + ps > got {
                Some(BadPageReason::ShortRead)
            } else {
                check_page(&buf[start..start + ps], e.checksum, mode)
            };
            if let Some(reason) = reason {
                report.bad_pages.push(BadPage {
                    page: e.page,
                    reason,
                });
            }
        }
        i = j + 1;
    }
    Ok(report)
}

/// Verifies the pages a checkpoint wrote ([`PageVerifyMode::Auto`]: a page matches if its
/// whole-page digest equals the expected value, or its trailer equals it and its payload
/// hashes to the trailer). A short read is a mismatch; an empty `expected` is `Match`.
pub fn verify_checkpoint_checksum_prefix(
    cx: &Cx,
    db_file: &(impl VfsFile + ?Sized),
    page_size: u32,
    expected: &[ExpectedPageChecksum],
) -> Result<CheckpointChecksumVerdict> {
    Ok(verify_checkpoint_pages(cx, db_file, page_size, expected, PageVerifyMode::Auto)?.verdict())
}

/// The barrier between a checkpoint's copy and any change to the WAL: a full fsync of the
/// database (`target.sync_db`), then verification of every expected page
/// ([`PageVerifyMode::Auto`]). A mismatch is [`FrankenError::DatabaseCorrupt`] naming the
/// bad pages; after any error the caller must not advance `nBackfill`, reset or truncate
/// the WAL.
pub fn execute_recovery_barrier(
    cx: &Cx,
    target: &mut (impl CheckpointTarget + ?Sized),
    db_file: &(impl VfsFile + ?Sized),
    page_size: u32,
    expected: &[ExpectedPageChecksum],
) -> Result<()> {
    execute_recovery_barrier_with(
        cx,
        target,
        db_file,
        page_size,
        expected,
        PageVerifyMode::Auto,
    )
    .map(|_| ())
}

/// [`execute_recovery_barrier`] with an explicit mode, returning the verification report.
pub fn execute_recovery_barrier_with(
    cx: &Cx,
    target: &mut (impl CheckpointTarget + ?Sized),
    db_file: &(impl VfsFile + ?Sized),
    page_size: u32,
    expected: &[ExpectedPageChecksum],
    mode: PageVerifyMode,
) -> Result<PageVerifyReport> {
    super::ensure_db_fsync_before_wal_truncate(cx, target)?;
    let report = verify_checkpoint_pages(cx, db_file, page_size, expected, mode)?;
    into_barrier_result(report)
}

/// Turns a report into the barrier's result.
pub(crate) fn into_barrier_result(report: PageVerifyReport) -> Result<PageVerifyReport> {
    if report.is_match() {
        Ok(report)
    } else {
        Err(FrankenError::db_corrupt(format!(
            "after the checkpoint {} of {} pages read back differently from the WAL: {}; \
             the WAL was left intact",
            report.bad_pages.len(),
            report.pages_checked,
            report.describe_bad_pages()
        )))
    }
}
