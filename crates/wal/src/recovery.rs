//! Recovery: rebuild the WAL-index (`-shm`) from the WAL file (SQLite's
//! `walIndexRecover`, FORMAT.md §8.2).
//!
//! ```text
//! caller holds WRITE, CKPT and RECOVER (and the in-process RecoveryFence)
//! scan the WAL's valid prefix (WalFile::scan: 256 KiB chunks, or two threads on a large
//!   WAL); index every valid frame (uncommitted tail included, as SQLite does) into ONE
//!   private region buffer (RegionBuilder: plain bytes, no atomics, walIndexAppend)
//! when a frame starts the next region, and after the scan: copy the finished region into
//!   the shared -shm with one write_bytes (region 0 without its 136-byte header)
//! a short read inside the file is an I/O error, never "end of the valid prefix"
//! clear hash entries past mxFrame; publish the header (copy B, barrier, copy A)
//! nBackfill = 0, nBackfillAttempted = mxFrame, aReadMark[0] = 0,
//! aReadMark[1] = mxFrame (or NOT_USED), aReadMark[2..] = NOT_USED — each slot only
//!   if its exclusive lock can be taken (a live reader keeps its mark)
//! ```
//!
//! # The private region (`RegionBuilder`)
//!
//! One `WALINDEX_PGSZ` (32 KiB) byte buffer laid out exactly as a `-shm` region
//! ([`crate::wal_index`]): native-order `u32` `aPgno` from [`region_apgno_offset`], native
//! `u16` `aHash` at [`HASH_TABLE_OFFSET`]. Frames arrive in order `1, 2, …`, so each
//! region is built from zero with no leftovers to clean; the heap used is one region
//! whatever the WAL size. As in SQLite's `walIndexRecover`, regions reach the `-shm`
//! while the scan goes on and the header is published only at the end: a scan that
//! fails leaves some regions rewritten (from the same WAL prefix) and the header as it
//! was, so the `-shm` still needs recovery.
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
    HASH_TABLE_OFFSET, HASHTABLE_NSLOT, HeaderMemory, READMARK_NOT_USED, WAL_READ_MARK_COUNT,
    WALINDEX_PGSZ, WalIndex, WalIndexHdr, frame_region, region_apgno_offset, region_i_zero,
    wal_hash,
};

/// Takes `WAL_CKPT_LOCK` and `WAL_RECOVER_LOCK` exclusively (one range of two slots),
/// waiting as `patience` allows (a `Duration` is a plain time budget); `Busy` after that.
/// The caller already holds WRITE.
pub fn lock_for_recovery<D: VfsFile>(
    cx: &Cx,
    db: &mut D,
    patience: impl Into<locks::Patience>,
) -> Result<()> {
    const _: () = assert!(fsqlite_vfs::WAL_RECOVER_LOCK == fsqlite_vfs::WAL_CKPT_LOCK + 1);
    let patience = patience.into();
    if locks::wait_exclusive_with(db, cx, fsqlite_vfs::WAL_CKPT_LOCK, 2, &patience)? {
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
    let mut region = RegionBuilder::new();
    let report = WalFile::<W>::scan_labeled(cx, wal_file, Some(wal_path), |frame, page, _| {
        let k = frame_region(frame);
        if region.index != Some(k) {
            region.flush(cx, db, index)?;
            region.start(k);
        }
        region.append(frame, page.get())
    })?;
    region.flush(cx, db, index)?;
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

/// One WAL-index region built privately (see the module doc).
struct RegionBuilder {
    /// The region being built, `None` before the first frame or after a flush.
    index: Option<u32>,
    /// Its bytes, laid out as in the `-shm`.
    bytes: Vec<u8>,
}

impl RegionBuilder {
    fn new() -> Self {
        Self {
            index: None,
            bytes: vec![0; WALINDEX_PGSZ],
        }
    }

    /// Starts region `k` from zero.
    fn start(&mut self, k: u32) {
        self.bytes.fill(0);
        self.index = Some(k);
    }

    /// SQLite's `walIndexAppend` on a region built from zero in frame order: `aPgno[idx-1]
    /// = pgno`, then the first empty slot from `hash(pgno)` gets `idx`.
    fn append(&mut self, frame: u32, pgno: u32) -> Result<()> {
        let Some(k) = self.index else {
            return Err(FrankenError::internal("WAL-index append before a region"));
        };
        let idx = frame.wrapping_sub(region_i_zero(k));
        let at = region_apgno_offset(k) + 4 * (idx as usize).wrapping_sub(1);
        let Some(word) = self.bytes.get_mut(at..at + 4) else {
            return Err(FrankenError::internal(format!(
                "WAL-index append of frame {frame} outside region {k}"
            )));
        };
        word.copy_from_slice(&pgno.to_ne_bytes());
        let mut key = wal_hash(pgno);
        // At most 4096 entries in 8192 slots: an empty one is always found.
        for _ in 0..HASHTABLE_NSLOT {
            let off = HASH_TABLE_OFFSET + 2 * key as usize;
            let slot = &mut self.bytes[off..off + 2];
            if slot == [0, 0] {
                // idx <= 4096 fits in the u16 slot.
                slot.copy_from_slice(&(idx as u16).to_ne_bytes());
                return Ok(());
            }
            key = (key + 1) & (HASHTABLE_NSLOT - 1);
        }
        Err(FrankenError::internal(format!(
            "WAL-index region {k} has no free hash slot for frame {frame}"
        )))
    }

    /// Copies the region (region 0 without its header) into the shared `-shm`, mapping
    /// (and extending) it through `index`; nothing when no region is being built.
    fn flush<D: VfsFile>(&mut self, cx: &Cx, db: &mut D, index: &mut WalIndex) -> Result<()> {
        let Some(k) = self.index.take() else {
            return Ok(());
        };
        let dst = index
            .map_region(cx, db, k, true)?
            .ok_or_else(|| FrankenError::internal("could not extend the -shm"))?;
        let start = region_apgno_offset(k);
        dst.write_bytes(start, &self.bytes[start..]);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fsqlite_testkit::sqlite::SqliteWalDb;
    use fsqlite_vfs::UnixVfs;

    use crate::wal_index::{WALINDEX_HDR_SIZE, frame_region};
    use crate::{Wal, WalOptions};

    /// SQLite writes a WAL large enough for the two-thread scan (> 8 MiB, 1 KiB pages,
    /// several hash regions) and keeps its connection open; recovery of a copy without
    /// the `-shm` must rebuild hash regions byte-identical to SQLite's live ones, and the
    /// same header fields (isInit .. aSalt).
    #[test]
    fn recovered_shm_matches_sqlite_live_shm_on_a_large_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteWalDb::create(dir.path(), "big.db", 1024).unwrap();
        let wal = db.wal_path();
        let mut stmt = db
            .conn()
            .prepare("INSERT INTO t(v) VALUES (randomblob(?1))")
            .unwrap();
        while std::fs::metadata(&wal).map_or(0, |m| m.len())
            < crate::scan_parallel::PARALLEL_MIN_BYTES + (1 << 20)
        {
            db.exec("BEGIN").unwrap();
            for size in [3000i64, 9000, 100, 5000] {
                stmt.execute([size]).unwrap();
            }
            db.exec("COMMIT").unwrap();
        }
        drop(stmt);
        let (copy, _, copy_shm) = db.snapshot_files(&dir.path().join("copy")).unwrap();
        let theirs = std::fs::read(&copy_shm).unwrap();
        std::fs::remove_file(&copy_shm).unwrap();

        let cx = fsqlite_types::Cx::new();
        let options = WalOptions {
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..WalOptions::default()
        };
        let ours_wal = Wal::open(&cx, Arc::new(UnixVfs::new()), &copy, options).unwrap();
        assert_eq!(ours_wal.recoveries(), 1);
        let mx = ours_wal.cached_header().mx_frame;
        let ours = std::fs::read(&copy_shm).unwrap();
        let regions = frame_region(mx) as usize + 1;
        assert!(regions >= 3, "only {regions} regions");
        let end = regions * crate::wal_index::WALINDEX_PGSZ;
        assert!(ours.len() >= end && theirs.len() >= end);
        // Header copy A: isInit, bigEndCksum, szPage, mxFrame, nPage, aFrameCksum, aSalt.
        assert_eq!(ours[12..40], theirs[12..40], "header fields");
        assert!(
            ours[WALINDEX_HDR_SIZE..end] == theirs[WALINDEX_HDR_SIZE..end],
            "hash regions differ from SQLite's"
        );
        ours_wal.close(&cx).unwrap();
        drop(db);
    }
}
