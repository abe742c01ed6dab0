//! Recovery: rebuild the WAL-index (`-shm`) from the WAL file (SQLite's
//! `walIndexRecover`, FORMAT.md §8.2).
//!
//! ```text
//! caller holds WRITE, CKPT and RECOVER (and the in-process RecoveryFence)
//! scan the WAL's valid prefix in 1 MiB chunks; index every valid frame into a private
//!   heap copy of the hash regions (uncommitted tail included, as SQLite does)
//! a short read inside the file is an I/O error, never "end of the valid prefix"
//! copy each region into the shared -shm (region 0 without its 136-byte header)
//! clear hash entries past mxFrame; publish the header (copy B, barrier, copy A)
//! nBackfill = 0, nBackfillAttempted = mxFrame, aReadMark[0] = 0,
//! aReadMark[1] = mxFrame (or NOT_USED), aReadMark[2..] = NOT_USED — each slot only
//!   if its exclusive lock can be taken (a live reader keeps its mark)
//! ```
//!
//! Used by the [`crate::Wal`] connection and by fsqlite-mvcc's coordinator takeover.

use std::path::Path;
use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageSize};
use fsqlite_vfs::{VfsFile, wal_read_lock};

use crate::locks;
use crate::wal::{ScanReport, StopReason, WalFile};
use crate::wal_index::{
    HeaderMemory, HeapRegions, READMARK_NOT_USED, WAL_READ_MARK_COUNT, WalIndex, WalIndexHdr,
    copy_region_into,
};

/// Takes `WAL_CKPT_LOCK` and `WAL_RECOVER_LOCK` exclusively (one range of two slots),
/// waiting up to `timeout`; `Busy` after that. The caller already holds WRITE.
pub fn lock_for_recovery<D: VfsFile>(cx: &Cx, db: &mut D, timeout: Duration) -> Result<()> {
    const _: () = assert!(fsqlite_vfs::WAL_RECOVER_LOCK == fsqlite_vfs::WAL_CKPT_LOCK + 1);
    if locks::wait_exclusive(db, cx, fsqlite_vfs::WAL_CKPT_LOCK, 2, timeout)? {
        Ok(())
    } else {
        Err(FrankenError::Busy)
    }
}

/// Releases what [`lock_for_recovery`] took.
pub fn unlock_after_recovery<D: VfsFile>(cx: &Cx, db: &mut D) -> Result<()> {
    locks::unlock_exclusive(db, cx, fsqlite_vfs::WAL_CKPT_LOCK, 2)
}

/// What [`rebuild_wal_index`] built.
#[derive(Debug, Clone)]
pub struct RebuiltIndex {
    /// The header it published.
    pub hdr: WalIndexHdr,
    /// The scan of the WAL's valid prefix.
    pub report: ScanReport,
    /// The page size in force: the database's, or the WAL's for an empty database.
    pub page_size: PageSize,
    /// Time the rebuild took.
    pub elapsed: Duration,
}

/// Rebuilds the shared WAL-index of `db`'s `-shm` from `wal_file` (see the module
/// docs). `index` caches `db`'s mapped regions. `db_page_size` is the database's page
/// size; when `db_is_empty`, the WAL's page size is adopted instead. A WAL whose page
/// size differs from a non-empty database's, with committed frames, is `WalCorrupt`.
/// The caller holds WRITE, CKPT and RECOVER.
pub fn rebuild_wal_index<W: VfsFile, D: VfsFile>(
    cx: &Cx,
    wal_file: &W,
    wal_path: &Path,
    db: &mut D,
    index: &mut WalIndex,
    db_page_size: PageSize,
    db_is_empty: bool,
) -> Result<RebuiltIndex> {
    let start = Instant::now();
    let mut heap = HeapRegions::new();
    let mut private = WalIndex::new();
    let report = WalFile::<W>::scan_labeled(cx, wal_file, Some(wal_path), |frame, page, _| {
        private.append(cx, &mut heap, frame, page)
    })?;
    check_scan_read_everything(cx, wal_file, wal_path, &report)?;
    let mut page_size = db_page_size;
    let mut hdr = WalIndexHdr::default();
    if let Some(h) = report.header {
        let ps = PageSize::try_new(h.page_size)?;
        if ps != page_size {
            if db_is_empty {
                page_size = ps;
            } else if report.mx_frame > 0 {
                return Err(FrankenError::wal_corrupt(format!(
                    "{} has page size {} but the database has {}",
                    wal_path.display(),
                    h.page_size,
                    page_size
                )));
            }
        }
        hdr.big_end_cksum = u8::from(h.big_endian_checksum());
        hdr.set_wal_salts(h.salt);
        hdr.mx_frame = report.mx_frame;
        hdr.n_page = report.n_page;
        hdr.a_frame_cksum = report.frame_checksum;
    }
    hdr.set_page_size(page_size);
    for k in 0..heap.len() as u32 {
        let Some(src) = heap.get(k).cloned() else {
            continue;
        };
        let dst = index
            .map_region(cx, db, k, true)?
            .cloned()
            .ok_or_else(|| FrankenError::internal("could not extend the -shm"))?;
        copy_region_into(&src, &dst, k);
    }
    // Stale entries past mxFrame would be cleaned by the next append; make sure the
    // region holding mxFrame carries none.
    index.rollback_to(cx, db, hdr.mx_frame)?;
    index.publish_header(cx, db, &mut hdr)?;
    let r0 = index
        .map_region(cx, db, 0, true)?
        .cloned()
        .ok_or_else(|| FrankenError::internal("WAL-index region 0 is not mapped"))?;
    r0.set_n_backfill(0);
    r0.set_n_backfill_attempted(hdr.mx_frame);
    r0.set_read_mark(0, 0);
    for i in 1..WAL_READ_MARK_COUNT as u32 {
        if locks::try_exclusive(db, cx, wal_read_lock(i), 1)? {
            let mark = if i == 1 && hdr.mx_frame > 0 {
                hdr.mx_frame
            } else {
                READMARK_NOT_USED
            };
            r0.set_read_mark(i as usize, mark);
            locks::unlock_exclusive(db, cx, wal_read_lock(i), 1)?;
        }
    }
    Ok(RebuiltIndex {
        hdr,
        report,
        page_size,
        elapsed: start.elapsed(),
    })
}

/// The scan counts a read that returns fewer bytes than asked as the end of the
/// file. Inside the file such a read is an I/O failure, and taking it for the end of
/// the valid prefix would let the next commit overwrite committed frames: `Err`
/// when the stop was a partial frame the file holds whole, or an invalid header that
/// reads back whole and valid.
fn check_scan_read_everything<W: VfsFile>(
    cx: &Cx,
    wal_file: &W,
    wal_path: &Path,
    report: &ScanReport,
) -> Result<()> {
    let short = |what: String| {
        FrankenError::io(
            "read",
            Some(wal_path.to_path_buf()),
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what),
        )
    };
    match report.stop {
        StopReason::PartialFrame { frame, bytes } => {
            let ps = report.header.map_or(0, |h| u64::from(h.page_size));
            let frame_bytes = crate::checksum::WAL_FRAME_HEADER_SIZE as u64 + ps;
            if report.stop_offset + frame_bytes <= report.file_size {
                return Err(short(format!(
                    "short read during recovery: frame {frame} read as {bytes} bytes at \
                     offset {}, but the file holds {} bytes",
                    report.stop_offset, report.file_size
                )));
            }
        }
        StopReason::EmptyOrInvalidHeader { .. }
            if report.file_size > crate::checksum::WAL_HEADER_SIZE as u64 =>
        {
            let mut head = [0u8; crate::checksum::WAL_HEADER_SIZE];
            let got = wal_file.read(cx, &mut head, 0)?;
            if got < head.len() || crate::format::WalHeader::decode(&head).is_ok() {
                return Err(short(format!(
                    "short read during recovery: the WAL header read as invalid, but \
                     the file holds {} bytes and its header reads back {}",
                    report.file_size,
                    if got < head.len() { "short" } else { "valid" }
                )));
            }
        }
        _ => {}
    }
    Ok(())
}
