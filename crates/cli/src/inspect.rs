//! `fsqlite inspect`: what is on disk and who holds which lock, without touching anything.
//!
//! The database header (first 100 bytes of the database file), the WAL header and its
//! valid prefix (scanned with [`WalFile::scan_labeled`], the same code recovery uses),
//! both `-shm` header copies and the checkpoint info ([`WalIndexHdr`], [`WalCkptInfo`],
//! validated with [`validate_header_copies`]), the lock bytes held right now
//! ([`crate::probe`]) and the hybrid coordinator record (`<db>.fsqlite-shm`: size, first
//! bytes, and the record decoded with fsqlite-mvcc's `CoordinatorRecord::decode`, which
//! owns its format).
//!
//! Every file is opened read-only; no lock is taken. Because nothing is locked, a
//! database under concurrent writes is seen as a snapshot that may be slightly
//! inconsistent between files (e.g. the WAL a commit ahead of the `-shm`).
//!
//! The report is [`InspectReport`]; its JSON form is documented field by field in
//! docs/cli.md and is stable (fields are only ever added).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use fsqlite_error::FrankenError;
use fsqlite_mvcc::lifecycle::{CoordinatorRecord, RECORD_SIZE, RecordState};
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs};
use fsqlite_wal::checksum::WAL_HEADER_SIZE;
use fsqlite_wal::db_header::{DB_HEADER_SIZE, DB_MAGIC, DbHeader};
use fsqlite_wal::format::{WalHeader, frame_offset, frames_in_file};
use fsqlite_wal::wal_index::{
    READMARK_NOT_USED, SHM_CKPT_INFO_OFFSET, SHM_HDR_COPY_A_OFFSET, SHM_HDR_COPY_B_OFFSET,
    WAL_CKPT_INFO_SIZE, WAL_INDEX_HDR_SIZE, WALINDEX_HDR_SIZE, WALINDEX_PGSZ, WalCkptInfo,
    WalIndexHdr, validate_header_copies,
};
use fsqlite_wal::{ScanReport, StopReason, WalFile};
use serde::Serialize;

use crate::files::{CliResult, DbFiles, file_size, hex, hex32, open_read_only, read_at};
use crate::probe::{LockProbe, LockState, probe_db_locks, probe_shm_locks};

/// How many leading bytes of the hybrid coordinator record are shown.
pub const HYBRID_PREVIEW_BYTES: usize = 64;

/// What `inspect` reports (see docs/cli.md for every field).
#[derive(Clone, Debug, Serialize)]
pub struct InspectReport {
    /// The database file.
    pub database: DatabaseInfo,
    /// The `-wal` file.
    pub wal: WalInfo,
    /// The `-shm` file.
    pub shm: ShmInfo,
    /// Lock bytes held right now.
    pub locks: LocksInfo,
    /// The hybrid coordinator record.
    pub hybrid: HybridInfo,
}

/// The database file.
#[derive(Clone, Debug, Serialize)]
pub struct DatabaseInfo {
    /// Path as given.
    pub path: String,
    /// File size in bytes.
    pub size_bytes: u64,
    /// The header, `None` for an empty (zero-byte) file.
    pub header: Option<DbHeaderInfo>,
}

/// The database header fields fsqlite reads.
#[derive(Clone, Debug, Serialize)]
pub struct DbHeaderInfo {
    /// Page size in bytes.
    pub page_size: u32,
    /// File-format write version (2 = WAL).
    pub write_version: u8,
    /// File-format read version (2 = WAL).
    pub read_version: u8,
    /// True when both versions are 2.
    pub wal_mode: bool,
    /// Bytes reserved at the end of each page.
    pub reserved_bytes: u8,
    /// True when pages reserve room for the 16-byte xxh3-128 trailer.
    pub page_trailers: bool,
    /// File change counter.
    pub change_counter: u32,
    /// In-header database size in pages.
    pub db_size_pages: u32,
    /// Whole pages in the file (`size_bytes / page_size`).
    pub file_pages: u64,
}

/// The WAL file.
#[derive(Clone, Debug, Serialize)]
pub struct WalInfo {
    /// Path.
    pub path: String,
    /// Whether the file exists.
    pub exists: bool,
    /// File size in bytes (`None` when missing).
    pub size_bytes: Option<u64>,
    /// The header as stored (even when invalid), `None` when shorter than 32 bytes.
    pub header: Option<WalHeaderInfo>,
    /// True when the header passes magic, page size, checksum and version.
    pub header_valid: bool,
    /// Why the header is not valid (`None` when it is, or when the file is missing).
    pub header_problem: Option<String>,
    /// Whole frames the file could hold at the header's page size.
    pub frames_in_file: u32,
    /// Frames in the valid prefix (commit or not).
    pub valid_frames: u32,
    /// Commit frames in the valid prefix.
    pub commits: u32,
    /// The last valid commit frame (SQLite's `mxFrame` after recovery).
    pub mx_frame: u32,
    /// Database size in pages after that commit (0 without a commit).
    pub db_size_pages: u32,
    /// Valid frames after the last commit (an unfinished transaction).
    pub uncommitted_frames: u32,
    /// Distinct pages in frames `1..=mx_frame`.
    pub pages_touched: u32,
    /// Where and why the valid prefix ends (`None` when the file is missing).
    pub stop: Option<StopInfo>,
    /// An error reading the WAL (e.g. an unsupported version), else `None`.
    pub error: Option<String>,
    /// With `--frames`: every valid frame; otherwise `None`.
    pub frames: Option<Vec<FrameInfo>>,
}

/// The WAL header, field by field.
#[derive(Clone, Debug, Serialize)]
pub struct WalHeaderInfo {
    /// The magic, hex.
    pub magic: String,
    /// `little-endian` (magic 0x377f0682) or `big-endian` (0x377f0683) checksum words.
    pub checksum_word_order: &'static str,
    /// Format version (3007000).
    pub format_version: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// Salt-1, hex.
    pub salt1: String,
    /// Salt-2, hex.
    pub salt2: String,
    /// The stored header checksum, hex.
    pub checksum: [String; 2],
}

/// Where the valid prefix of the WAL ends.
#[derive(Clone, Debug, Serialize)]
pub struct StopInfo {
    /// `end_of_file`, `partial_frame`, `salt_mismatch`, `zero_page_number`,
    /// `checksum_mismatch` or `empty_or_invalid_header`.
    pub reason: &'static str,
    /// The first frame not accepted, if the scan stopped at a frame.
    pub frame: Option<u32>,
    /// File offset where the scan stopped.
    pub offset: u64,
    /// A sentence describing it.
    pub detail: String,
}

/// One valid frame (with `--frames`).
#[derive(Clone, Debug, Serialize)]
pub struct FrameInfo {
    /// Frame number (1-based).
    pub frame: u32,
    /// Page number.
    pub page: u32,
    /// Database size in pages for a commit frame, `None` otherwise.
    pub commit_db_size: Option<u32>,
    /// File offset of the frame header.
    pub offset: u64,
}

/// The `-shm` file.
#[derive(Clone, Debug, Serialize)]
pub struct ShmInfo {
    /// Path.
    pub path: String,
    /// Whether the file exists.
    pub exists: bool,
    /// File size in bytes.
    pub size_bytes: Option<u64>,
    /// 32 KiB regions (rounded up).
    pub regions: u64,
    /// True when the file holds the 136-byte header.
    pub initialized: bool,
    /// Header copy A (bytes 0..48).
    pub copy_a: Option<ShmHeaderCopy>,
    /// Header copy B (bytes 48..96).
    pub copy_b: Option<ShmHeaderCopy>,
    /// True when the copies are byte-identical.
    pub copies_equal: Option<bool>,
    /// True when copy A's checksum matches.
    pub checksum_ok: Option<bool>,
    /// True when a reader would accept the header (equal, initialized, checksum ok).
    pub header_valid: Option<bool>,
    /// Why a reader would refuse it (then the next connection runs recovery).
    pub defect: Option<String>,
    /// The checkpoint info (bytes 96..136).
    pub checkpoint_info: Option<CkptInfo>,
}

/// One copy of the WAL-index header.
#[derive(Clone, Debug, Serialize)]
pub struct ShmHeaderCopy {
    /// `iVersion` (3007000).
    pub version: u32,
    /// `iChange`, bumped by every commit.
    pub change_counter: u32,
    /// `isInit`.
    pub is_init: u8,
    /// `bigEndCksum`: the WAL's checksum word order.
    pub big_endian_checksum: bool,
    /// Page size (decoded; `None` for an invalid encoding).
    pub page_size: Option<u32>,
    /// `mxFrame`: the last committed frame readers may use.
    pub mx_frame: u32,
    /// `nPage`: database size in pages at `mxFrame`.
    pub n_page: u32,
    /// `aFrameCksum`, hex.
    pub frame_checksum: [String; 2],
    /// WAL salt-1 (as in the WAL header), hex.
    pub salt1: String,
    /// WAL salt-2, hex.
    pub salt2: String,
    /// `aCksum` as stored, hex.
    pub checksum: [String; 2],
    /// True when `aCksum` matches bytes 0..40.
    pub checksum_ok: bool,
}

/// `WalCkptInfo`.
#[derive(Clone, Debug, Serialize)]
pub struct CkptInfo {
    /// `nBackfill`: frames already copied into the database.
    pub n_backfill: u32,
    /// `nBackfillAttempted`: frames a checkpoint started to copy.
    pub n_backfill_attempted: u32,
    /// `aReadMark[0..5]`; 4294967295 (0xffffffff) marks an unused slot.
    pub read_marks: [u32; 5],
}

/// Lock bytes held right now.
#[derive(Clone, Debug, Serialize)]
pub struct LocksInfo {
    /// How locks were probed: `F_OFD_GETLK` (read-only; no lock taken).
    pub method: &'static str,
    /// Database-file lock bytes (`None` when the file is missing).
    pub database: Option<Vec<LockProbe>>,
    /// `-shm` lock bytes and the DMS byte (`None` when the file is missing).
    pub shm: Option<Vec<LockProbe>>,
    /// True when some process has the database open in WAL mode (DMS held).
    pub attached: bool,
}

/// The hybrid coordinator record.
#[derive(Clone, Debug, Serialize)]
pub struct HybridInfo {
    /// Path.
    pub path: String,
    /// Whether the file exists.
    pub exists: bool,
    /// File size in bytes.
    pub size_bytes: Option<u64>,
    /// The first bytes, lowercase hex (at most 64 bytes).
    pub first_bytes_hex: Option<String>,
    /// The record decoded with fsqlite-mvcc's `CoordinatorRecord::decode`, when it
    /// decodes.
    pub record: Option<HybridRecord>,
    /// Why it does not decode (e.g. a torn or foreign file), when it exists.
    pub record_problem: Option<String>,
}

/// A decoded hybrid coordinator record (format owned by fsqlite-mvcc's `lifecycle`).
#[derive(Clone, Debug, Serialize)]
pub struct HybridRecord {
    /// `active` (a coordinator was running, and may have died) or `closed`.
    pub state: &'static str,
    /// The coordinator's pid.
    pub pid: u32,
    /// Its start time in clock ticks after boot (0: unknown).
    pub start_time: u64,
    /// The takeover generation.
    pub generation: u64,
    /// True when the recorded process is alive now (same pid and start time).
    pub owner_alive: bool,
    /// What stock SQLite writers get from the fsqlite processes on this database
    /// (`excluded` or `admitted`, `CoordinatorOptions::legacy_writers`), when recorded.
    pub legacy_writers: Option<&'static str>,
}

/// A read-only scan of the WAL's valid prefix.
#[derive(Debug)]
pub struct WalScan {
    /// The scan report (`None` when the WAL is missing).
    pub report: Option<ScanReport>,
    /// The header bytes as stored (even when invalid).
    pub raw_header: Option<WalHeader>,
    /// Why the header is invalid, if it is.
    pub header_problem: Option<String>,
    /// Every valid frame: `(frame, page, commit db size or 0)`.
    pub frames: Vec<(u32, u32, u32)>,
    /// The WAL's size.
    pub size: Option<u64>,
    /// An error the scan returned (e.g. unsupported version).
    pub error: Option<FrankenError>,
}

impl WalScan {
    /// The page size of a valid header.
    pub fn page_size(&self) -> Option<u32> {
        self.report.and_then(|r| r.header).map(|h| h.page_size)
    }

    /// The database size after commit frame `frame`, if `frame` is a valid commit frame.
    pub fn commit_db_size(&self, frame: u32) -> Option<u32> {
        let (f, _, size) = *self.frames.get(frame.checked_sub(1)? as usize)?;
        (f == frame && size != 0).then_some(size)
    }
}

/// Scans the WAL at `files.wal` read-only (the same valid-prefix code recovery uses).
pub fn scan_wal(cx: &Cx, files: &DbFiles) -> CliResult<WalScan> {
    let size = file_size(&files.wal)?;
    let mut out = WalScan {
        report: None,
        raw_header: None,
        header_problem: None,
        frames: Vec::new(),
        size,
        error: None,
    };
    if size.is_none() {
        return Ok(out);
    }
    if let Some(f) = open_read_only(&files.wal)? {
        let head = read_at(&f, &files.wal, 0, WAL_HEADER_SIZE)?;
        if let Some(b) = head.first_chunk::<WAL_HEADER_SIZE>() {
            out.raw_header = Some(WalHeader::decode_unchecked(b));
        }
        if let Err(e) = WalHeader::decode(&head) {
            out.header_problem = Some(e.to_string());
        }
    }
    let vfs = Arc::new(UnixVfs::new());
    let (file, _) = vfs.open(
        cx,
        Some(&files.wal),
        VfsOpenFlags::READONLY | VfsOpenFlags::WAL,
    )?;
    let frames = &mut out.frames;
    match WalFile::scan_labeled(cx, &file, Some(&files.wal), |frame, page, db_size| {
        frames.push((frame, page.get(), db_size));
        Ok(())
    }) {
        Ok(r) => out.report = Some(r),
        Err(e) => out.error = Some(e),
    }
    Ok(out)
}

/// The `-shm` header as read from the file (no mapping, no lock).
#[derive(Clone, Debug)]
pub struct ShmSnapshot {
    /// The file size, `None` when missing.
    pub size: Option<u64>,
    /// The whole file image (at most `max_len` bytes were read).
    pub image: Vec<u8>,
    /// Both header copies, when the file holds the 136-byte header.
    pub copies: Option<[WalIndexHdr; 2]>,
    /// The checkpoint info.
    pub ckpt: Option<WalCkptInfo>,
}

impl ShmSnapshot {
    /// The header a reader would accept, or why it would not.
    pub fn valid_header(&self) -> Option<Result<WalIndexHdr, String>> {
        self.copies
            .as_ref()
            .map(|c| validate_header_copies(c).map_err(|d| d.to_string()))
    }
}

/// Reads the `-shm` (at most `max_len` bytes of it) without mapping or locking it.
pub fn read_shm(files: &DbFiles, max_len: usize) -> CliResult<ShmSnapshot> {
    let size = file_size(&files.shm)?;
    let image = match open_read_only(&files.shm)? {
        Some(f) => read_at(&f, &files.shm, 0, max_len)?,
        None => Vec::new(),
    };
    let (copies, ckpt) = if image.len() >= WALINDEX_HDR_SIZE {
        let copy = |off: usize| {
            let mut b = [0u8; WAL_INDEX_HDR_SIZE];
            b.copy_from_slice(&image[off..off + WAL_INDEX_HDR_SIZE]);
            WalIndexHdr::from_bytes(&b)
        };
        let mut c = [0u8; WAL_CKPT_INFO_SIZE];
        c.copy_from_slice(&image[SHM_CKPT_INFO_OFFSET..SHM_CKPT_INFO_OFFSET + WAL_CKPT_INFO_SIZE]);
        (
            Some([copy(SHM_HDR_COPY_A_OFFSET), copy(SHM_HDR_COPY_B_OFFSET)]),
            Some(WalCkptInfo::from_bytes(&c)),
        )
    } else {
        (None, None)
    };
    Ok(ShmSnapshot {
        size,
        image,
        copies,
        ckpt,
    })
}

/// Reads and parses the database header; `Ok(None)` for a zero-byte file. A file that
/// is not a SQLite database is a `CannotOpen` error naming it.
pub fn read_db_header(files: &DbFiles) -> CliResult<(u64, Option<DbHeader>)> {
    let size = files.require_db_file()?;
    if size == 0 {
        return Ok((0, None));
    }
    let f = open_read_only(&files.db)?
        .ok_or_else(|| FrankenError::cannot_open(&files.db, "the file disappeared"))?;
    let head = read_at(&f, &files.db, 0, DB_HEADER_SIZE)?;
    if head.len() < DB_HEADER_SIZE || head[..DB_MAGIC.len()] != DB_MAGIC[..] {
        return Err(FrankenError::cannot_open(
            &files.db,
            format!(
                "not a SQLite database: it does not start with the 16-byte header \"SQLite format 3\" (first bytes: {})",
                hex(&head[..head.len().min(16)])
            ),
        )
        .into());
    }
    Ok((size, Some(DbHeader::parse(&head, &files.db)?)))
}

fn stop_info(r: &ScanReport) -> StopInfo {
    let reason = match r.stop {
        StopReason::EndOfFile => "end_of_file",
        StopReason::PartialFrame { .. } => "partial_frame",
        StopReason::SaltMismatch { .. } => "salt_mismatch",
        StopReason::ZeroPageNumber { .. } => "zero_page_number",
        StopReason::ChecksumMismatch { .. } => "checksum_mismatch",
        StopReason::EmptyOrInvalidHeader { .. } => "empty_or_invalid_header",
    };
    StopInfo {
        reason,
        frame: r.stop.frame(),
        offset: r.stop_offset,
        detail: r.stop.to_string(),
    }
}

fn header_copy(h: &WalIndexHdr) -> ShmHeaderCopy {
    let [s1, s2] = h.wal_salts();
    ShmHeaderCopy {
        version: h.i_version,
        change_counter: h.i_change,
        is_init: h.is_init,
        big_endian_checksum: h.big_end_cksum != 0,
        page_size: h.page_size().map(fsqlite_types::PageSize::get),
        mx_frame: h.mx_frame,
        n_page: h.n_page,
        frame_checksum: [hex32(h.a_frame_cksum[0]), hex32(h.a_frame_cksum[1])],
        salt1: hex32(s1),
        salt2: hex32(s2),
        checksum: [hex32(h.a_cksum[0]), hex32(h.a_cksum[1])],
        checksum_ok: h.checksum_ok(),
    }
}

/// Builds the `WalInfo` of a scan.
pub fn wal_info(files: &DbFiles, scan: &WalScan, with_frames: bool) -> WalInfo {
    let mut info = WalInfo {
        path: files.wal.display().to_string(),
        exists: scan.size.is_some(),
        size_bytes: scan.size,
        header: scan.raw_header.map(|h| WalHeaderInfo {
            magic: hex32(h.magic),
            checksum_word_order: if h.big_endian_checksum() {
                "big-endian"
            } else {
                "little-endian"
            },
            format_version: h.format_version,
            page_size: h.page_size,
            checkpoint_seq: h.checkpoint_seq,
            salt1: hex32(h.salt[0]),
            salt2: hex32(h.salt[1]),
            checksum: [hex32(h.checksum[0]), hex32(h.checksum[1])],
        }),
        header_valid: scan.report.is_some_and(|r| r.header.is_some()),
        header_problem: scan.header_problem.clone(),
        frames_in_file: 0,
        valid_frames: 0,
        commits: 0,
        mx_frame: 0,
        db_size_pages: 0,
        uncommitted_frames: 0,
        pages_touched: 0,
        stop: None,
        error: scan.error.as_ref().map(ToString::to_string),
        frames: None,
    };
    if info.exists && scan.size.unwrap_or(0) == 0 {
        info.header_problem = None;
    }
    if let Some(r) = &scan.report {
        if let Some(h) = r.header {
            info.frames_in_file = frames_in_file(r.file_size, h.page_size);
        }
        info.valid_frames = r.last_valid_frame;
        info.commits = r.commits;
        info.mx_frame = r.mx_frame;
        info.db_size_pages = r.n_page;
        info.uncommitted_frames = r.uncommitted_frames();
        info.stop = Some(stop_info(r));
        let touched: BTreeSet<u32> = scan
            .frames
            .iter()
            .filter(|(f, _, _)| *f <= r.mx_frame)
            .map(|(_, p, _)| *p)
            .collect();
        info.pages_touched = touched.len() as u32;
        if with_frames {
            let ps = r.header.map_or(0, |h| h.page_size);
            info.frames = Some(
                scan.frames
                    .iter()
                    .map(|&(frame, page, db)| FrameInfo {
                        frame,
                        page,
                        commit_db_size: (db != 0).then_some(db),
                        offset: frame_offset(frame, ps),
                    })
                    .collect(),
            );
        }
    }
    info
}

/// Builds the `ShmInfo` of a snapshot.
pub fn shm_info(files: &DbFiles, shm: &ShmSnapshot) -> ShmInfo {
    let valid = shm.valid_header();
    ShmInfo {
        path: files.shm.display().to_string(),
        exists: shm.size.is_some(),
        size_bytes: shm.size,
        regions: shm.size.unwrap_or(0).div_ceil(WALINDEX_PGSZ as u64),
        initialized: shm.copies.is_some(),
        copy_a: shm.copies.as_ref().map(|c| header_copy(&c[0])),
        copy_b: shm.copies.as_ref().map(|c| header_copy(&c[1])),
        copies_equal: shm.copies.as_ref().map(|c| c[0] == c[1]),
        checksum_ok: shm.copies.as_ref().map(|c| c[0].checksum_ok()),
        header_valid: valid.as_ref().map(Result::is_ok),
        defect: valid.and_then(Result::err),
        checkpoint_info: shm.ckpt.map(|c| CkptInfo {
            n_backfill: c.n_backfill,
            n_backfill_attempted: c.n_backfill_attempted,
            read_marks: c.a_read_mark,
        }),
    }
}

/// Runs `inspect` on the database at `db` (see the module docs).
pub fn inspect(db: &Path, with_frames: bool) -> CliResult<InspectReport> {
    let cx = Cx::new();
    let files = DbFiles::new(db);
    let (size, header) = read_db_header(&files)?;
    let database = DatabaseInfo {
        path: files.db.display().to_string(),
        size_bytes: size,
        header: header.map(|h| DbHeaderInfo {
            page_size: h.page_size.get(),
            write_version: h.write_version,
            read_version: h.read_version,
            wal_mode: h.is_wal_mode(),
            reserved_bytes: h.reserved_bytes,
            page_trailers: h.has_page_trailer(),
            change_counter: h.change_counter,
            db_size_pages: h.db_size_pages,
            file_pages: size / u64::from(h.page_size.get()),
        }),
    };
    let scan = scan_wal(&cx, &files)?;
    let wal = wal_info(&files, &scan, with_frames);
    let shm_snap = read_shm(&files, WALINDEX_HDR_SIZE)?;
    let shm = shm_info(&files, &shm_snap);
    let shm_locks = probe_shm_locks(&files.shm)?;
    let attached = shm_locks
        .as_ref()
        .and_then(|v| v.iter().find(|p| p.name == "DMS"))
        .is_some_and(|p| p.state != LockState::Free);
    let locks = LocksInfo {
        method: "F_OFD_GETLK",
        database: probe_db_locks(&files.db)?,
        shm: shm_locks,
        attached,
    };
    let hybrid = hybrid_info(&files)?;
    Ok(InspectReport {
        database,
        wal,
        shm,
        locks,
        hybrid,
    })
}

/// Reads and decodes the hybrid coordinator record, read-only.
pub fn hybrid_info(files: &DbFiles) -> CliResult<HybridInfo> {
    let size = file_size(&files.hybrid)?;
    let bytes = match open_read_only(&files.hybrid)? {
        Some(f) => Some(read_at(
            &f,
            &files.hybrid,
            0,
            HYBRID_PREVIEW_BYTES.max(RECORD_SIZE) + 16,
        )?),
        None => None,
    };
    let decoded = bytes.as_deref().map(CoordinatorRecord::decode);
    Ok(HybridInfo {
        path: files.hybrid.display().to_string(),
        exists: size.is_some(),
        size_bytes: size,
        first_bytes_hex: bytes
            .as_deref()
            .map(|b| hex(&b[..b.len().min(HYBRID_PREVIEW_BYTES)])),
        record: decoded.and_then(Result::ok).map(|r| HybridRecord {
            state: match r.state {
                RecordState::Active => "active",
                RecordState::Closed => "closed",
            },
            pid: r.pid,
            start_time: r.start_time,
            generation: r.generation,
            owner_alive: r.owner_alive_os(),
            legacy_writers: bytes
                .as_deref()
                .and_then(fsqlite_mvcc::LegacyWriters::recorded)
                .map(|m| match m {
                    fsqlite_mvcc::LegacyWriters::Excluded => "excluded",
                    fsqlite_mvcc::LegacyWriters::Admitted => "admitted",
                }),
        }),
        record_problem: decoded.and_then(Result::err).map(|d| d.to_string()),
    })
}

fn mark_text(m: u32) -> String {
    if m == READMARK_NOT_USED {
        "unused".to_owned()
    } else {
        m.to_string()
    }
}

fn locks_text(out: &mut String, title: &str, probes: Option<&Vec<LockProbe>>) {
    let Some(probes) = probes else {
        let _ = writeln!(out, "  {title}: (file missing)");
        return;
    };
    let held: Vec<String> = probes
        .iter()
        .filter(|p| p.state != LockState::Free)
        .map(|p| {
            let who = p
                .holder_pid
                .map_or_else(String::new, |pid| format!(" by pid {pid}"));
            format!("{} {}{who}", p.name, p.state.as_str())
        })
        .collect();
    if held.is_empty() {
        let _ = writeln!(out, "  {title}: none held");
    } else {
        let _ = writeln!(out, "  {title}: {}", held.join(", "));
    }
}

/// The human-readable form of an [`InspectReport`].
pub fn render_text(r: &InspectReport) -> String {
    let mut out = String::new();
    let db = &r.database;
    let _ = writeln!(out, "database {} ({} bytes)", db.path, db.size_bytes);
    match &db.header {
        Some(h) => {
            let _ = writeln!(
                out,
                "  page size {}, {} pages in the file (header says {}), {}, {} reserved bytes per page{}",
                h.page_size,
                h.file_pages,
                h.db_size_pages,
                if h.wal_mode {
                    "WAL mode"
                } else {
                    "NOT in WAL mode"
                },
                h.reserved_bytes,
                if h.page_trailers {
                    " (xxh3-128 page trailers)"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  empty file (a new database: its WAL, if any, holds every page)"
            );
        }
    }
    let wal = &r.wal;
    if wal.exists {
        let _ = writeln!(
            out,
            "wal {} ({} bytes)",
            wal.path,
            wal.size_bytes.unwrap_or(0)
        );
        if let Some(h) = &wal.header {
            let _ = writeln!(
                out,
                "  magic {} ({} checksums), version {}, page size {}, checkpoint seq {}, salts {} {}",
                h.magic,
                h.checksum_word_order,
                h.format_version,
                h.page_size,
                h.checkpoint_seq,
                h.salt1,
                h.salt2
            );
        }
        if let Some(p) = &wal.header_problem {
            let _ = writeln!(out, "  header INVALID: {p} (the WAL counts as empty)");
        }
        if let Some(e) = &wal.error {
            let _ = writeln!(out, "  error: {e}");
        }
        if let Some(s) = &wal.stop {
            let _ = writeln!(
                out,
                "  {} frames in file, {} valid, {} commits; mxFrame {}, database size {} pages, {} uncommitted, {} pages touched",
                wal.frames_in_file,
                wal.valid_frames,
                wal.commits,
                wal.mx_frame,
                wal.db_size_pages,
                wal.uncommitted_frames,
                wal.pages_touched
            );
            let _ = writeln!(
                out,
                "  valid prefix ends at offset {}: {}",
                s.offset, s.detail
            );
        }
        if let Some(frames) = &wal.frames {
            for f in frames {
                let commit = f
                    .commit_db_size
                    .map_or_else(String::new, |n| format!("  commit, db size {n}"));
                let _ = writeln!(
                    out,
                    "    frame {:>6} @ {:>10}: page {}{commit}",
                    f.frame, f.offset, f.page
                );
            }
        }
    } else {
        let _ = writeln!(
            out,
            "wal {} (missing: nothing to recover or checkpoint)",
            wal.path
        );
    }
    let shm = &r.shm;
    if shm.exists {
        let _ = writeln!(
            out,
            "shm {} ({} bytes, {} region(s))",
            shm.path,
            shm.size_bytes.unwrap_or(0),
            shm.regions
        );
        match (&shm.copy_a, &shm.copy_b) {
            (Some(a), Some(b)) => {
                for (name, c) in [("A", a), ("B", b)] {
                    let _ = writeln!(
                        out,
                        "  copy {name}: version {}, change {}, init {}, mxFrame {}, nPage {}, page size {}, salts {} {}, checksum {}",
                        c.version,
                        c.change_counter,
                        c.is_init,
                        c.mx_frame,
                        c.n_page,
                        c.page_size
                            .map_or_else(|| "invalid".to_owned(), |p| p.to_string()),
                        c.salt1,
                        c.salt2,
                        if c.checksum_ok { "ok" } else { "BAD" }
                    );
                }
                let _ = writeln!(
                    out,
                    "  copies {}; header {}",
                    if shm.copies_equal == Some(true) {
                        "equal"
                    } else {
                        "DIFFER"
                    },
                    match &shm.defect {
                        None => "valid".to_owned(),
                        Some(d) => format!("not usable ({d}): the next connection rebuilds it"),
                    }
                );
            }
            _ => {
                let _ = writeln!(out, "  uninitialized (shorter than the 136-byte header)");
            }
        }
        if let Some(c) = &shm.checkpoint_info {
            let marks: Vec<String> = c.read_marks.iter().map(|m| mark_text(*m)).collect();
            let _ = writeln!(
                out,
                "  nBackfill {}, nBackfillAttempted {}, read marks [{}]",
                c.n_backfill,
                c.n_backfill_attempted,
                marks.join(", ")
            );
        }
    } else {
        let _ = writeln!(out, "shm {} (missing)", shm.path);
    }
    let _ = writeln!(
        out,
        "locks (probed with {}, none taken){}",
        r.locks.method,
        if r.locks.attached {
            "; the database is open in another process"
        } else {
            ""
        }
    );
    locks_text(&mut out, "database", r.locks.database.as_ref());
    locks_text(&mut out, "shm", r.locks.shm.as_ref());
    let hy = &r.hybrid;
    if hy.exists {
        match (&hy.record, &hy.record_problem) {
            (Some(rec), _) => {
                let _ = writeln!(
                    out,
                    "hybrid coordinator record {}: {}, pid {} ({}), start time {}, generation {}{}",
                    hy.path,
                    rec.state,
                    rec.pid,
                    if rec.owner_alive {
                        "alive"
                    } else {
                        "not running"
                    },
                    rec.start_time,
                    rec.generation,
                    rec.legacy_writers
                        .map(|m| format!(", stock SQLite writers {m}"))
                        .unwrap_or_default()
                );
            }
            (None, problem) => {
                let _ = writeln!(
                    out,
                    "hybrid coordinator record {} ({} bytes, {}), first bytes {}",
                    hy.path,
                    hy.size_bytes.unwrap_or(0),
                    problem.as_deref().unwrap_or("not decoded"),
                    hy.first_bytes_hex.as_deref().unwrap_or("")
                );
            }
        }
    } else {
        let _ = writeln!(out, "hybrid coordinator record: none");
    }
    out
}
