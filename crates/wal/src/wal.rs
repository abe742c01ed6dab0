//! [`WalFile`]: one WAL file on any [`VfsFile`] — create, scan (recovery's valid prefix),
//! append frames, read frames, restart and truncate.
//!
//! The byte format is documented once, in [`crate::format`]; this module owns the
//! *procedures* on it and the state a writer carries between transactions.
//!
//! # State
//!
//! | field | meaning |
//! |---|---|
//! | `header` | the WAL header in force; `None` until one is known (an empty or invalid WAL) |
//! | `header_on_disk` | false after [`WalFile::truncate_to_zero`] or [`WalFile::set_state_from_index`] with `mx_frame == 0`: the next append writes the header first ([`WalFile::ensure_header`]) |
//! | `mx_frame` | the last **commit** frame (SQLite's `mxFrame`); frames after it are not part of the WAL |
//! | `n_page` | database size in pages after that commit (0: take it from the db file) |
//! | `frame_checksum` | running checksum at `mx_frame` (the header checksum when `mx_frame == 0`) |
//! | `last_frame` | the last frame of the transaction being written: `mx_frame`, or more after a non-commit [`WalFile::append_frames`] (a cache spill) |
//!
//! # Scanning (recovery)
//!
//! [`WalFile::scan`] applies the validity rules of [`crate::format`]:
//!
//! ```text
//! if file_size <= 32 or the header fails magic / page size / checksum:  empty WAL (Ok)
//! if the header is intact but version != 3007000:                      Err(CannotOpen)
//! c = header.checksum
//! for i in 1 ..= (file_size - 32) / (page_size + 24):      // read ~256 KiB of frames at a time
//!     stop unless frame.salt == header.salt                // SaltMismatch
//!     stop if frame.page_number == 0                       // ZeroPageNumber
//!     c = checksum(frame.page, checksum(frame.header[0..8], c))
//!     stop unless c == frame.checksum                      // ChecksumMismatch
//!     on_frame(i, page_number, db_size)                    // every valid frame, in order
//!     if frame.db_size != 0: mx_frame = i; n_page = db_size; frame_checksum = c
//! ```
//!
//! Two frame loops implement this, with identical results (reports, `on_frame` calls in
//! order, errors) on any file that does not change during the scan:
//!
//! | loop | when | how |
//! |---|---|---|
//! | sequential (the reference) | WAL < `PARALLEL_MIN_BYTES` (8 MiB), or one core | chunks of [`SCAN_CHUNK_BYTES`] (whole frames, at least one) into one buffer allocated once and never larger than the file; the checksum chained frame by frame |
//! | two threads (`scan_parallel`, private) | otherwise | 256 KiB chunks claimed in turn by a scoped helper and the calling thread, each frame's checksum seeded with the previous frame's *stored* checksum, chunk starts chained by the in-order merge (`c = A·c + g`); heap ≤ ~1.5 MiB whatever the WAL size |
//!
//! `cx.checkpoint()` is called between chunks. A torn, truncated, zeroed or foreign file
//! never panics: it just ends the valid prefix.
//!
//! # Appending
//!
//! [`WalFile::append_frames`] writes frames at `last_frame + 1` (after a commit or a fresh
//! open that is `mx_frame + 1`, so an uncommitted tail left by a crash is overwritten),
//! each checksum chained from the previous frame (or the header for frame 1), the commit
//! marker on the last frame of a commit. Frames are assembled in one reused buffer and
//! written with one `write` per [`APPEND_CHUNK_BYTES`].
//!
//! # Sync rules ([`SyncMode`], FORMAT.md §9)
//!
//! | mode | after a new / restarted header | at a commit |
//! |---|---|---|
//! | `Off` | nothing | nothing |
//! | `Normal` | fsync (before the first frame is written) | nothing |
//! | `Full` (default) | fsync (before the first frame is written) | fsync |
//!
//! Every sync is a real `fsync` ([`SyncFlags::FULL`]). A failed write or sync latches the
//! handle: every later write returns [`FrankenError::PreviousIo`] (after a failed fsync
//! nothing written since the last good one may be assumed durable).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber, PageSize, SyncFlags};
use fsqlite_vfs::VfsFile;
use fsqlite_vfs::traits::iocap;

use crate::checksum::{WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, wal_checksum};
use crate::format::{
    FRAME_CHECKSUMMED_BYTES, FrameHeader, WalHeader, WalHeaderError, frame_checksum, frame_offset,
    frame_size, frames_in_file,
};
use crate::scan_parallel::{self, PARALLEL_MIN_BYTES, ParallelPlan};

/// Bytes read per I/O call while scanning (rounded down to whole frames, at least one):
/// small enough that a chunk is still in the core's L2 cache when the checksum reads it
/// after the `pread` (1 MiB chunks were 30–40 % slower on a 4 MiB WAL on the 512 KiB-L2
/// AMD host, `docs/BENCHMARKS.md`), as the two-thread loop's chunks are.
pub const SCAN_CHUNK_BYTES: usize = 256 << 10;
/// Bytes written per I/O call while appending (rounded down to whole frames, at least one).
pub const APPEND_CHUNK_BYTES: usize = 1 << 20;

/// How much durability a commit buys (SQLite's `PRAGMA synchronous` in WAL mode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SyncMode {
    /// Never fsync: a power loss may lose or tear recent commits (never a crash of the
    /// process alone).
    Off,
    /// Fsync the WAL after writing a new or restarted header, not at commits: a power loss
    /// may lose the last commits but never corrupts the database.
    Normal,
    /// As `Normal`, plus an fsync of the WAL at every commit: a commit is durable when it
    /// returns.
    #[default]
    Full,
}

impl SyncMode {
    /// True when a commit fsyncs the WAL (`Full`).
    pub const fn syncs_on_commit(self) -> bool {
        matches!(self, Self::Full)
    }

    /// True when a new or restarted WAL header is fsynced before frames follow it
    /// (`Normal`, `Full`).
    pub const fn syncs_header(self) -> bool {
        !matches!(self, Self::Off)
    }

    /// True when a checkpoint fsyncs the WAL before copying and the database after
    /// (`Normal`, `Full`).
    pub const fn syncs_checkpoint(self) -> bool {
        !matches!(self, Self::Off)
    }
}

/// Why a WAL counts as empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmptyWalReason {
    /// The file holds no frame: it is 32 bytes or smaller.
    TooSmall {
        /// The file size.
        file_size: u64,
    },
    /// The header fails magic, page size or checksum.
    InvalidHeader(WalHeaderError),
}

impl fmt::Display for EmptyWalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooSmall { file_size } => {
                write!(
                    f,
                    "the file is {file_size} bytes, too small to hold a frame"
                )
            }
            Self::InvalidHeader(e) => write!(f, "{e}"),
        }
    }
}

/// Why and where a scan stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Every frame in the file was valid and the file ends on a frame boundary.
    EndOfFile,
    /// Every whole frame was valid; `bytes` trailing bytes of frame `frame` are a torn,
    /// partial frame.
    PartialFrame {
        /// The frame number the partial bytes would have been.
        frame: u32,
        /// How many bytes of it are present.
        bytes: u64,
    },
    /// Frame `frame` carries other salts than the header (an older WAL generation).
    SaltMismatch {
        /// The first invalid frame.
        frame: u32,
    },
    /// Frame `frame` has page number 0.
    ZeroPageNumber {
        /// The first invalid frame.
        frame: u32,
    },
    /// Frame `frame`'s stored checksum is not the running checksum.
    ChecksumMismatch {
        /// The first invalid frame.
        frame: u32,
    },
    /// The WAL is empty: no usable header.
    EmptyOrInvalidHeader {
        /// What is wrong.
        why: EmptyWalReason,
    },
}

impl StopReason {
    /// The first frame that was not accepted, if the scan stopped at a frame.
    pub const fn frame(&self) -> Option<u32> {
        match *self {
            Self::PartialFrame { frame, .. }
            | Self::SaltMismatch { frame }
            | Self::ZeroPageNumber { frame }
            | Self::ChecksumMismatch { frame } => Some(frame),
            Self::EndOfFile | Self::EmptyOrInvalidHeader { .. } => None,
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndOfFile => write!(f, "end of file"),
            Self::PartialFrame { frame, bytes } => {
                write!(f, "frame {frame} is partial ({bytes} bytes)")
            }
            Self::SaltMismatch { frame } => write!(f, "frame {frame} has other salts"),
            Self::ZeroPageNumber { frame } => write!(f, "frame {frame} has page number 0"),
            Self::ChecksumMismatch { frame } => write!(f, "frame {frame} fails its checksum"),
            Self::EmptyOrInvalidHeader { why } => write!(f, "empty WAL: {why}"),
        }
    }
}

/// The result of scanning a WAL's valid prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// The valid header, `None` for an empty WAL.
    pub header: Option<WalHeader>,
    /// The file size when the scan started.
    pub file_size: u64,
    /// The last valid commit frame (0: none).
    pub mx_frame: u32,
    /// Database size in pages after that commit (0 when `mx_frame == 0`).
    pub n_page: u32,
    /// The running checksum at `mx_frame`: SQLite's `aFrameCksum` after recovery, so
    /// `[0, 0]` when there is no commit frame.
    pub frame_checksum: [u32; 2],
    /// The last valid frame (commit or not); `>= mx_frame`.
    pub last_valid_frame: u32,
    /// The running checksum at `last_valid_frame` (the header checksum when it is 0).
    pub last_valid_checksum: [u32; 2],
    /// Valid commit frames seen.
    pub commits: u32,
    /// Why the scan stopped.
    pub stop: StopReason,
    /// File offset where the scan stopped: the first rejected (or partial) frame, the end
    /// of the file, or 0 for an empty WAL.
    pub stop_offset: u64,
}

impl ScanReport {
    /// Valid frames after the last commit: a transaction that never committed. They are
    /// excluded, and the next append overwrites them.
    pub const fn uncommitted_frames(&self) -> u32 {
        self.last_valid_frame - self.mx_frame
    }

    /// True when the WAL has no usable header.
    pub const fn is_empty_wal(&self) -> bool {
        self.header.is_none()
    }
}

/// The WAL state a connection learns from the shared WAL-index header, enough to continue
/// the checksum chain without rescanning ([`WalFile::set_state_from_index`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalState {
    /// The last commit frame.
    pub mx_frame: u32,
    /// Database size in pages after it.
    pub n_page: u32,
    /// Running checksum at `mx_frame` (ignored when `mx_frame == 0`).
    pub frame_checksum: [u32; 2],
    /// The WAL header salts as numbers (the WAL-index keeps their big-endian bytes).
    pub salt: [u32; 2],
    /// The page size.
    pub page_size: PageSize,
    /// The checksum word order (the WAL-index's `bigEndCksum`).
    pub big_endian_cksum: bool,
    /// The checkpoint sequence for a header this handle writes when `mx_frame == 0`.
    pub checkpoint_seq: u32,
}

/// One transaction of a group commit ([`WalFile::append_commits`]): its frames, in
/// order, and the database size its commit frame carries.
pub type GroupedCommit<'a> = (&'a [(PageNumber, &'a [u8])], u32);

/// One WAL file and the writer state carried between transactions (see the module doc).
///
/// ```
/// use std::path::Path;
/// use fsqlite_types::{Cx, PageNumber, PageSize, VfsOpenFlags};
/// use fsqlite_vfs::{MemoryVfs, Vfs};
/// use fsqlite_wal::WalFile;
///
/// let cx = Cx::new();
/// let vfs = MemoryVfs::new();
/// let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL;
/// let (file, _) = vfs.open(&cx, Some(Path::new("/app.db-wal")), flags).unwrap();
/// let ps = PageSize::new(4096).unwrap();
/// let mut wal = WalFile::create(&cx, file, ps, [1, 2], 0, false).unwrap();
///
/// // Group commit: two transactions, one run of writes, one sync; each keeps its own
/// // commit frame, so a crash keeps or drops each one whole, in order.
/// let (p2, p3) = (PageNumber::new(2).unwrap(), PageNumber::new(3).unwrap());
/// let a = vec![0xaa; 4096];
/// let b = vec![0xbb; 4096];
/// let first: &[(PageNumber, &[u8])] = &[(p2, &a)];
/// let second: &[(PageNumber, &[u8])] = &[(p2, &b), (p3, &b)];
/// let commit_frames = wal.append_commits(&cx, &[(first, 2), (second, 3)], false).unwrap();
/// assert_eq!(commit_frames.len(), 2);
/// assert!(commit_frames[0] < commit_frames[1]);
/// // MemoryVfs is not powersafe-overwrite, so the last commit was padded to a sector
/// // boundary with copies of its commit frame (SQLite does the same): mxFrame is past it.
/// assert!(wal.mx_frame() >= commit_frames[1]);
///
/// // Reopening scans the valid prefix: both commits are there.
/// let (reopened, report) = WalFile::open(&cx, wal.into_file()).unwrap();
/// assert_eq!(report.mx_frame, reopened.mx_frame());
/// assert_eq!(reopened.n_page(), 3);
/// ```
pub struct WalFile<F: VfsFile> {
    file: F,
    path: Option<PathBuf>,
    header: Option<WalHeader>,
    header_on_disk: bool,
    header_unsynced: bool,
    sync_mode: SyncMode,
    mx_frame: u32,
    n_page: u32,
    frame_checksum: [u32; 2],
    last_frame: u32,
    last_checksum: [u32; 2],
    failed: Option<String>,
    buf: Vec<u8>,
}

impl<F: VfsFile> fmt::Debug for WalFile<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WalFile")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("header_on_disk", &self.header_on_disk)
            .field("sync_mode", &self.sync_mode)
            .field("mx_frame", &self.mx_frame)
            .field("n_page", &self.n_page)
            .field("frame_checksum", &self.frame_checksum)
            .field("last_frame", &self.last_frame)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// A display label for an optional path.
fn label(path: Option<&Path>) -> String {
    path.map_or_else(|| "the WAL file".to_owned(), |p| p.display().to_string())
}

impl<F: VfsFile> WalFile<F> {
    /// Wraps `file` without any I/O: no header, no frames. Use
    /// [`WalFile::set_state_from_index`] or [`WalFile::init_header`] next.
    pub fn attach(file: F, path: Option<PathBuf>) -> Self {
        Self {
            file,
            path,
            header: None,
            header_on_disk: false,
            header_unsynced: false,
            sync_mode: SyncMode::default(),
            mx_frame: 0,
            n_page: 0,
            frame_checksum: [0, 0],
            last_frame: 0,
            last_checksum: [0, 0],
            failed: None,
            buf: Vec::new(),
        }
    }

    /// Starts a fresh WAL in `file`: truncates it to 0 bytes, then writes a 32-byte header
    /// (magic for `big_endian_cksum`, version 3007000, `page_size`, `checkpoint_seq`,
    /// `salts`). Whatever the file held is discarded. The header is fsynced (per the sync
    /// mode, [`SyncMode::Full`] unless changed with [`WalFile::set_sync_mode`]) before the
    /// first frame is written.
    pub fn create(
        cx: &Cx,
        file: F,
        page_size: PageSize,
        salts: [u32; 2],
        checkpoint_seq: u32,
        big_endian_cksum: bool,
    ) -> Result<Self> {
        let mut wal = Self::attach(file, None);
        wal.init_header(page_size, salts, checkpoint_seq, big_endian_cksum)?;
        wal.guarded(|w| w.file.truncate(cx, 0))?;
        wal.ensure_header(cx)?;
        Ok(wal)
    }

    /// Opens an existing WAL: scans its valid prefix and positions the writer after the
    /// last commit. An empty or invalid WAL is not an error (the report says why; call
    /// [`WalFile::init_header`] before appending); an intact header of an unknown version
    /// is [`FrankenError::CannotOpen`].
    pub fn open(cx: &Cx, file: F) -> Result<(Self, ScanReport)> {
        Self::open_with(cx, file, None, |_, _, _| Ok(()))
    }

    /// [`WalFile::open`] with a path label for messages and a callback called for every
    /// valid frame in order (the uncommitted tail included; filter by
    /// `report.mx_frame`), so a WAL-index can be rebuilt in the same pass.
    pub fn open_with(
        cx: &Cx,
        file: F,
        path: Option<PathBuf>,
        on_frame: impl FnMut(u32, PageNumber, u32) -> Result<()>,
    ) -> Result<(Self, ScanReport)> {
        let report = scan_inner(cx, &file, path.as_deref(), on_frame)?;
        let mut wal = Self::attach(file, path);
        if let Some(h) = report.header {
            wal.header = Some(h);
            wal.header_on_disk = true;
            wal.mx_frame = report.mx_frame;
            wal.n_page = report.n_page;
            wal.frame_checksum = if report.mx_frame == 0 {
                h.checksum
            } else {
                report.frame_checksum
            };
            wal.last_frame = wal.mx_frame;
            wal.last_checksum = wal.frame_checksum;
        }
        if report.n_page != 0 {
            tracing::info!(
                target: "fsqlite.wal.recovery",
                frames = report.mx_frame,
                wal = %label(wal.path.as_deref()),
                "recovered {} frames from WAL file {}",
                report.mx_frame,
                label(wal.path.as_deref())
            );
        }
        Ok((wal, report))
    }

    /// Scans the valid prefix of `file` without keeping it: calls `on_frame(frame_no,
    /// page, db_size)` for every valid frame in order (the uncommitted tail included) and
    /// reports where and why the prefix ends. See the module doc.
    pub fn scan(
        cx: &Cx,
        file: &F,
        on_frame: impl FnMut(u32, PageNumber, u32) -> Result<()>,
    ) -> Result<ScanReport> {
        scan_inner(cx, file, None, on_frame)
    }

    /// [`WalFile::scan`] with a path label for messages.
    pub fn scan_labeled(
        cx: &Cx,
        file: &F,
        path: Option<&Path>,
        on_frame: impl FnMut(u32, PageNumber, u32) -> Result<()>,
    ) -> Result<ScanReport> {
        scan_inner(cx, file, path, on_frame)
    }

    /// Sets the path used in messages.
    #[must_use]
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// Sets the sync mode.
    #[must_use]
    pub fn with_sync_mode(mut self, mode: SyncMode) -> Self {
        self.sync_mode = mode;
        self
    }

    /// Sets the sync mode.
    pub fn set_sync_mode(&mut self, mode: SyncMode) {
        self.sync_mode = mode;
    }

    /// The sync mode.
    pub fn sync_mode(&self) -> SyncMode {
        self.sync_mode
    }

    /// The path label, if one was given.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The header in force (on disk, or to be written by the next append).
    pub fn header(&self) -> Option<&WalHeader> {
        self.header.as_ref()
    }

    /// True when the header in force is on disk.
    pub fn header_on_disk(&self) -> bool {
        self.header_on_disk
    }

    /// The last commit frame (SQLite's `mxFrame`).
    pub fn mx_frame(&self) -> u32 {
        self.mx_frame
    }

    /// The last frame written: `mx_frame`, or more while a transaction has written
    /// non-commit frames.
    pub fn last_frame(&self) -> u32 {
        self.last_frame
    }

    /// Running checksum at `mx_frame` (the header checksum when `mx_frame == 0`): where
    /// the next transaction's chain starts.
    pub fn frame_checksum(&self) -> [u32; 2] {
        self.frame_checksum
    }

    /// Running checksum at `last_frame`.
    pub fn last_frame_checksum(&self) -> [u32; 2] {
        self.last_checksum
    }

    /// Database size in pages after the last commit (0: unknown, use the db file).
    pub fn n_page(&self) -> u32 {
        self.n_page
    }

    /// The page size, once a header is known.
    pub fn page_size(&self) -> Option<PageSize> {
        self.header.and_then(|h| h.page_size_checked())
    }

    /// The salts, once a header is known.
    pub fn salts(&self) -> Option<[u32; 2]> {
        self.header.map(|h| h.salt)
    }

    /// The checksum word order, once a header is known.
    pub fn big_endian_checksum(&self) -> Option<bool> {
        self.header.map(|h| h.big_endian_checksum())
    }

    /// The state to publish in a WAL-index header, once a header is known.
    pub fn state(&self) -> Option<WalState> {
        let h = self.header?;
        Some(WalState {
            mx_frame: self.mx_frame,
            n_page: self.n_page,
            frame_checksum: self.frame_checksum,
            salt: h.salt,
            page_size: h.page_size_checked()?,
            big_endian_cksum: h.big_endian_checksum(),
            checkpoint_seq: h.checkpoint_seq,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &F {
        &self.file
    }

    /// The underlying file, mutably (writing through it bypasses this handle's state).
    pub fn file_mut(&mut self) -> &mut F {
        &mut self.file
    }

    /// Gives the file back.
    pub fn into_file(self) -> F {
        self.file
    }

    fn label(&self) -> String {
        label(self.path.as_deref())
    }

    fn no_header_error(&self) -> FrankenError {
        FrankenError::internal(format!(
            "{} has no WAL header yet: create it or call init_header / set_state_from_index first",
            self.label()
        ))
    }

    /// Runs a write-path operation, latching the handle on failure.
    fn guarded<T>(&mut self, op: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        if let Some(first) = &self.failed {
            return Err(FrankenError::PreviousIo {
                first: first.clone(),
            });
        }
        op(self).inspect_err(|e| {
            if !matches!(e, FrankenError::Interrupted) {
                self.failed = Some(format!("{e} ({})", label(self.path.as_deref())));
            }
        })
    }

    /// Starts a new WAL generation in memory: a header for `page_size`, `salts`,
    /// `checkpoint_seq` and the word order, no frames. Nothing is written until the next
    /// append (or [`WalFile::ensure_header`]). Refused while committed frames exist
    /// (restart or truncate first).
    pub fn init_header(
        &mut self,
        page_size: PageSize,
        salts: [u32; 2],
        checkpoint_seq: u32,
        big_endian_cksum: bool,
    ) -> Result<()> {
        if self.mx_frame != 0 {
            return Err(FrankenError::internal(format!(
                "{} holds {} committed frames; restart or truncate it before starting a new header",
                self.label(),
                self.mx_frame
            )));
        }
        let h = WalHeader::new(page_size, checkpoint_seq, salts, big_endian_cksum);
        self.set_fresh_header(h, false);
        Ok(())
    }

    fn set_fresh_header(&mut self, h: WalHeader, on_disk: bool) {
        self.header = Some(h);
        self.header_on_disk = on_disk;
        self.header_unsynced = on_disk;
        self.mx_frame = 0;
        self.last_frame = 0;
        self.frame_checksum = h.checksum;
        self.last_checksum = h.checksum;
    }

    /// Writes the header in force if it is not on disk yet (after
    /// [`WalFile::truncate_to_zero`], [`WalFile::init_header`], or an index state with
    /// `mx_frame == 0`). It is fsynced before the next frames, per the sync mode.
    pub fn ensure_header(&mut self, cx: &Cx) -> Result<()> {
        let Some(h) = self.header else {
            return Err(self.no_header_error());
        };
        if self.header_on_disk {
            return Ok(());
        }
        self.guarded(|w| w.file.write(cx, &h.encode(), 0))?;
        self.header_on_disk = true;
        self.header_unsynced = true;
        tracing::debug!(
            target: "fsqlite.wal.write",
            wal = %self.label(),
            salt1 = h.salt[0],
            salt2 = h.salt[1],
            checkpoint_seq = h.checkpoint_seq,
            "wrote WAL header"
        );
        Ok(())
    }

    /// Takes the WAL state from a WAL-index header (another connection wrote the frames),
    /// so this handle continues the checksum chain without rescanning. With
    /// `mx_frame > 0` the on-disk header is read and must carry the same salts, page size
    /// and word order, and the file must hold `mx_frame` frames; with `mx_frame == 0` a
    /// header built from `state` is written by the next append.
    pub fn set_state_from_index(&mut self, cx: &Cx, state: WalState) -> Result<()> {
        if state.mx_frame == 0 {
            let h = WalHeader::new(
                state.page_size,
                state.checkpoint_seq,
                state.salt,
                state.big_endian_cksum,
            );
            let keep = self.header_on_disk && self.header == Some(h);
            self.set_fresh_header(h, keep);
            self.header_unsynced = false;
            self.n_page = state.n_page;
            return Ok(());
        }
        let mut bytes = [0u8; WAL_HEADER_SIZE];
        let got = self.file.read(cx, &mut bytes, 0)?;
        let h = WalHeader::decode(&bytes[..got]).map_err(|e| {
            FrankenError::wal_corrupt(format!(
                "the WAL-index says {} frames are committed in {}, but its header is unusable: {e}",
                state.mx_frame,
                self.label()
            ))
        })?;
        if h.salt != state.salt
            || h.page_size != state.page_size.get()
            || h.big_endian_checksum() != state.big_endian_cksum
        {
            return Err(FrankenError::wal_corrupt(format!(
                "the WAL-index (salts {:#010x} {:#010x}, page size {}) does not match the header of {} (salts {:#010x} {:#010x}, page size {})",
                state.salt[0],
                state.salt[1],
                state.page_size,
                self.label(),
                h.salt[0],
                h.salt[1],
                h.page_size
            )));
        }
        let size = self.file.file_size(cx)?;
        let have = frames_in_file(size, h.page_size);
        if have < state.mx_frame {
            return Err(FrankenError::wal_corrupt(format!(
                "the WAL-index says {} frames are committed but {} holds only {have} ({size} bytes)",
                state.mx_frame,
                self.label()
            )));
        }
        self.header = Some(h);
        self.header_on_disk = true;
        self.header_unsynced = false;
        self.mx_frame = state.mx_frame;
        self.n_page = state.n_page;
        self.frame_checksum = state.frame_checksum;
        self.last_frame = state.mx_frame;
        self.last_checksum = state.frame_checksum;
        Ok(())
    }

    /// Appends frames after `last_frame` (see the module doc) and returns the new last
    /// frame. With `commit_db_size = Some(n)` (n > 0) the last frame carries the commit
    /// marker, `mx_frame` becomes the new last frame, and the WAL is fsynced if the sync
    /// mode is [`SyncMode::Full`]. Every page must be exactly `page_size` bytes. A header
    /// not yet on disk is written (and fsynced, unless the mode is `Off`) first.
    pub fn append_frames(
        &mut self,
        cx: &Cx,
        frames: &[(PageNumber, &[u8])],
        commit_db_size: Option<u32>,
    ) -> Result<u32> {
        let Some(h) = self.header else {
            return Err(self.no_header_error());
        };
        let page_size = h.page_size as usize;
        if commit_db_size == Some(0) {
            return Err(FrankenError::out_of_range(
                "commit database size (must be at least 1 page)",
                0,
            ));
        }
        if let Some((page, data)) = frames.iter().find(|(_, d)| d.len() != page_size) {
            return Err(FrankenError::out_of_range(
                format!(
                    "page data length for page {page} in {} (page size {page_size})",
                    self.label()
                ),
                data.len(),
            ));
        }
        if frames.is_empty() {
            if commit_db_size.is_some() {
                return Err(FrankenError::internal(format!(
                    "a commit to {} needs at least one frame to carry the commit marker",
                    self.label()
                )));
            }
            return Ok(self.last_frame);
        }
        let count = u32::try_from(frames.len())
            .ok()
            .and_then(|n| self.last_frame.checked_add(n))
            .ok_or_else(|| {
                FrankenError::out_of_range(
                    format!("frame count of {} (max {})", self.label(), u32::MAX),
                    frames.len(),
                )
            })?;
        if let Some(first) = &self.failed {
            return Err(FrankenError::PreviousIo {
                first: first.clone(),
            });
        }
        self.ensure_header(cx)?;
        if self.header_unsynced {
            if self.sync_mode.syncs_header() {
                self.fsync(cx)?;
            }
            self.header_unsynced = false;
        }

        let last_index = frames.len() - 1;
        let marker = commit_db_size.unwrap_or(0);
        self.write_run(cx, &h, frames.len(), |index| {
            let (page, data) = frames[index];
            (page, data, if index == last_index { marker } else { 0 })
        })?;
        debug_assert_eq!(self.last_frame, count);
        let running = self.last_checksum;
        if let Some(db_size) = commit_db_size {
            let (page, data) = frames[last_index];
            let synced = self.sync_mode.syncs_on_commit();
            let (last, running) =
                self.pad_to_sector(cx, synced, &h, count, running, page, data, db_size)?;
            self.last_frame = last;
            self.last_checksum = running;
            self.mx_frame = last;
            self.n_page = db_size;
            self.frame_checksum = running;
            self.sync(cx, self.sync_mode)?;
        }
        tracing::trace!(
            target: "fsqlite.wal.write",
            wal = %self.label(),
            frames = frames.len(),
            last_frame = self.last_frame,
            commit = commit_db_size.unwrap_or(0),
            "appended frames"
        );
        Ok(self.last_frame)
    }

    /// Writes `n` frames after `last_frame` (frame `k` is `at(k)`: page, data, commit
    /// marker), one `write` per [`APPEND_CHUNK_BYTES`], chaining the checksums; on success
    /// `last_frame` and `last_checksum` move past them. No sync, no `mx_frame` change.
    fn write_run<'d>(
        &mut self,
        cx: &Cx,
        h: &WalHeader,
        n: usize,
        at: impl Fn(usize) -> (PageNumber, &'d [u8], u32),
    ) -> Result<()> {
        let be = h.big_endian_checksum();
        let fsz = h.page_size as usize + WAL_FRAME_HEADER_SIZE;
        let per_write = (APPEND_CHUNK_BYTES / fsz).max(1);
        let mut running = self.last_checksum;
        let mut next = self.last_frame + 1;
        let mut buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        let mut start = 0;
        while start < n {
            let end = (start + per_write).min(n);
            buf.clear();
            buf.reserve((end - start) * fsz);
            for index in start..end {
                let (page, data, db_size) = at(index);
                running = frame_checksum(running, page.get(), db_size, data, be);
                let fh = FrameHeader {
                    page_number: page.get(),
                    db_size_after_commit: db_size,
                    salt: h.salt,
                    checksum: running,
                };
                buf.extend_from_slice(&fh.encode());
                buf.extend_from_slice(data);
            }
            let offset = frame_offset(next, h.page_size);
            result = cx
                .checkpoint()
                .and_then(|()| self.guarded(|w| w.file.write(cx, &buf, offset)));
            if result.is_err() {
                break;
            }
            next += (end - start) as u32;
            start = end;
        }
        self.buf = buf;
        result?;
        self.last_frame = next - 1;
        self.last_checksum = running;
        Ok(())
    }

    /// Group commit: appends several transactions after `mx_frame` in one run of writes
    /// (one `write` per [`APPEND_CHUNK_BYTES`]), each `(frames, db_size)` ending in its own
    /// commit frame, so a crash keeps or drops each one whole and in order, then syncs
    /// once per this file's sync mode. Returns each transaction's commit frame. Every
    /// transaction needs at least one frame and a database size of at least 1.
    ///
    /// `caller_syncs`: the caller syncs the batch itself (a file attached with
    /// [`SyncMode::Off`] whose owner places the syncs). When the batch will be synced
    /// (by the caller or by this file's mode), its last commit is padded to a sector
    /// boundary on a device without powersafe overwrite, as SQLite does, so the next
    /// batch never writes into a sector holding acknowledged bytes.
    pub fn append_commits(
        &mut self,
        cx: &Cx,
        txns: &[GroupedCommit<'_>],
        caller_syncs: bool,
    ) -> Result<Vec<u32>> {
        let Some(h) = self.header else {
            return Err(self.no_header_error());
        };
        let page_size = h.page_size as usize;
        let mut flat: Vec<(PageNumber, &[u8], u32)> = Vec::new();
        let mut ends = Vec::with_capacity(txns.len());
        for (frames, db_size) in txns {
            if *db_size == 0 {
                return Err(FrankenError::out_of_range(
                    "commit database size (must be at least 1 page)",
                    0,
                ));
            }
            if frames.is_empty() {
                return Err(FrankenError::internal(format!(
                    "a commit to {} needs at least one frame to carry the commit marker",
                    self.label()
                )));
            }
            if let Some((page, data)) = frames.iter().find(|(_, d)| d.len() != page_size) {
                return Err(FrankenError::out_of_range(
                    format!(
                        "page data length for page {page} in {} (page size {page_size})",
                        self.label()
                    ),
                    data.len(),
                ));
            }
            let last = frames.len() - 1;
            flat.extend(
                frames
                    .iter()
                    .enumerate()
                    .map(|(k, &(p, d))| (p, d, if k == last { *db_size } else { 0 })),
            );
            ends.push(self.mx_frame as usize + flat.len());
        }
        let Some(&(last_page, last_data, last_size)) = flat.last() else {
            return Ok(Vec::new());
        };
        u32::try_from(self.mx_frame as usize + flat.len()).map_err(|_| {
            FrankenError::out_of_range(
                format!("frame count of {} (max {})", self.label(), u32::MAX),
                flat.len(),
            )
        })?;
        if let Some(first) = &self.failed {
            return Err(FrankenError::PreviousIo {
                first: first.clone(),
            });
        }
        self.rollback_uncommitted();
        self.ensure_header(cx)?;
        if self.header_unsynced {
            if self.sync_mode.syncs_header() {
                self.fsync(cx)?;
            }
            self.header_unsynced = false;
        }
        self.write_run(cx, &h, flat.len(), |k| flat[k])?;
        let synced = caller_syncs || self.sync_mode.syncs_on_commit();
        let (last, running) = self.pad_to_sector(
            cx,
            synced,
            &h,
            self.last_frame,
            self.last_checksum,
            last_page,
            last_data,
            last_size,
        )?;
        self.last_frame = last;
        self.last_checksum = running;
        self.mx_frame = last;
        self.n_page = last_size;
        self.frame_checksum = running;
        self.sync(cx, self.sync_mode)?;
        tracing::trace!(
            target: "fsqlite.wal.write",
            wal = %self.label(),
            transactions = txns.len(),
            frames = flat.len(),
            last_frame = self.last_frame,
            "appended a group commit"
        );
        Ok(ends.into_iter().map(|e| e as u32).collect())
    }

    /// SQLite's padding frames (FORMAT.md §9): on a device without power-safe overwrite,
    /// a commit that syncs repeats its commit frame until the WAL ends on a sector
    /// boundary, so the next commit never writes into a sector that holds this commit's
    /// synced bytes (a torn write there could otherwise destroy an acknowledged commit).
    /// Padding frames are real frames (counted in `mxFrame`, indexed). Returns the new
    /// last frame and running checksum.
    #[allow(clippy::too_many_arguments)]
    fn pad_to_sector(
        &mut self,
        cx: &Cx,
        synced: bool,
        h: &WalHeader,
        last: u32,
        running: [u32; 2],
        page: PageNumber,
        data: &[u8],
        db_size: u32,
    ) -> Result<(u32, [u32; 2])> {
        let psow = self.file.device_characteristics() & iocap::POWERSAFE_OVERWRITE != 0;
        if psow || !synced {
            return Ok((last, running));
        }
        let sector = u64::from(self.file.sector_size().clamp(512, 65536));
        let fsz = frame_size(h.page_size);
        let mut end = frame_offset(last + 1, h.page_size);
        let sync_point = end.div_ceil(sector) * sector;
        if end == sync_point {
            return Ok((last, running));
        }
        let be = h.big_endian_checksum();
        let mut running = running;
        let mut n = 0u32;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        while end < sync_point {
            running = frame_checksum(running, page.get(), db_size, data, be);
            let fh = FrameHeader {
                page_number: page.get(),
                db_size_after_commit: db_size,
                salt: h.salt,
                checksum: running,
            };
            buf.extend_from_slice(&fh.encode());
            buf.extend_from_slice(data);
            end += fsz;
            n += 1;
        }
        let offset = frame_offset(last + 1, h.page_size);
        let r = self.guarded(|w| w.file.write(cx, &buf, offset));
        self.buf = buf;
        r?;
        tracing::trace!(target: "fsqlite.wal.write", padding_frames = n, "padded the commit to a sector boundary");
        Ok((last + n, running))
    }

    /// Forgets frames written after `mx_frame` by a transaction that will not commit
    /// (SQLite's `sqlite3WalUndo`): the next append overwrites them. No I/O.
    pub fn rollback_uncommitted(&mut self) {
        self.last_frame = self.mx_frame;
        self.last_checksum = self.frame_checksum;
    }

    /// The commit-point sync for `mode`: an fsync for [`SyncMode::Full`], nothing
    /// otherwise.
    pub fn sync(&mut self, cx: &Cx, mode: SyncMode) -> Result<()> {
        if mode.syncs_on_commit() {
            self.fsync(cx)?;
        }
        Ok(())
    }

    /// An unconditional fsync of the WAL ([`SyncFlags::FULL`]).
    pub fn fsync(&mut self, cx: &Cx) -> Result<()> {
        self.guarded(|w| w.file.sync(cx, SyncFlags::FULL))
    }

    /// Reads the page data of frame `frame_no` into `buf` (`page_size` bytes).
    pub fn read_frame(&self, cx: &Cx, frame_no: u32, buf: &mut [u8]) -> Result<()> {
        let ps = self.checked_frame(frame_no)?;
        if buf.len() != ps as usize {
            return Err(FrankenError::out_of_range(
                format!(
                    "buffer length for a frame of {} (page size {ps})",
                    self.label()
                ),
                buf.len(),
            ));
        }
        let offset = frame_offset(frame_no, ps) + WAL_FRAME_HEADER_SIZE as u64;
        let got = self.file.read(cx, buf, offset)?;
        if got < buf.len() {
            return Err(self.past_end(cx, frame_no));
        }
        Ok(())
    }

    /// Reads and decodes the header of frame `frame_no` (not validated).
    pub fn read_frame_header(&self, cx: &Cx, frame_no: u32) -> Result<FrameHeader> {
        let ps = self.checked_frame(frame_no)?;
        let mut bytes = [0u8; WAL_FRAME_HEADER_SIZE];
        let got = self.file.read(cx, &mut bytes, frame_offset(frame_no, ps))?;
        if got < bytes.len() {
            return Err(self.past_end(cx, frame_no));
        }
        Ok(FrameHeader::from_bytes(&bytes))
    }

    fn checked_frame(&self, frame_no: u32) -> Result<u32> {
        let Some(h) = self.header else {
            return Err(self.no_header_error());
        };
        if frame_no == 0 {
            return Err(FrankenError::out_of_range(
                format!(
                    "frame number in {} (frames are numbered from 1)",
                    self.label()
                ),
                0,
            ));
        }
        Ok(h.page_size)
    }

    fn past_end(&self, cx: &Cx, frame_no: u32) -> FrankenError {
        let size = self
            .file
            .file_size(cx)
            .map_or_else(|_| "unknown".to_owned(), |s| s.to_string());
        FrankenError::wal_corrupt(format!(
            "frame {frame_no} lies past the end of {} ({size} bytes)",
            self.label()
        ))
    }

    /// Starts the next WAL generation in place (SQLite's `walRestartHdr`, used when every
    /// frame has been checkpointed): salt-1 + 1 (wrapping), salt-2 = `new_salt2`,
    /// checkpoint sequence + 1; the header is rewritten at once and fsynced before the next
    /// frames (per the sync mode). The file is **not** truncated: the old frames are dead
    /// because of the new salts. `mx_frame` becomes 0; `n_page` is kept.
    pub fn restart(&mut self, cx: &Cx, new_salt2: u32) -> Result<()> {
        let Some(h) = self.header else {
            return Err(self.no_header_error());
        };
        let next = h.restarted(new_salt2);
        self.guarded(|w| w.file.write(cx, &next.encode(), 0))?;
        self.set_fresh_header(next, true);
        tracing::debug!(
            target: "fsqlite.wal.write",
            wal = %self.label(),
            salt1 = next.salt[0],
            salt2 = next.salt[1],
            checkpoint_seq = next.checkpoint_seq,
            "restarted WAL"
        );
        Ok(())
    }

    /// Truncates the WAL to 0 bytes (a TRUNCATE checkpoint) and prepares the next
    /// generation's header in memory, as [`WalFile::restart`] would (salt-1 + 1, salt-2 =
    /// `new_salt2`, sequence + 1); the next append writes it first. Without a known header
    /// the file is still truncated and [`WalFile::init_header`] is needed before appending.
    pub fn truncate_to_zero(&mut self, cx: &Cx, new_salt2: u32) -> Result<()> {
        self.guarded(|w| w.file.truncate(cx, 0))?;
        if let Some(h) = self.header {
            self.set_fresh_header(h.restarted(new_salt2), false);
        } else {
            self.mx_frame = 0;
            self.last_frame = 0;
            self.header_on_disk = false;
        }
        tracing::debug!(target: "fsqlite.wal.write", wal = %self.label(), "truncated WAL to 0 bytes");
        Ok(())
    }
}

/// The scan itself (see the module doc), choosing the frame loop by [`ScanMode::Auto`].
fn scan_inner<F: VfsFile>(
    cx: &Cx,
    file: &F,
    path: Option<&Path>,
    on_frame: impl FnMut(u32, PageNumber, u32) -> Result<()>,
) -> Result<ScanReport> {
    scan_inner_with(cx, file, path, ScanMode::Auto, on_frame)
}

/// Which frame loop a scan runs. Both produce identical results (reports, `on_frame`
/// calls, errors) on every file that does not change during the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScanMode {
    /// [`ScanMode::Parallel`] with [`ParallelPlan::for_page_size`] when the file holds
    /// at least [`PARALLEL_MIN_BYTES`] and the machine has two or more cores, else
    /// [`ScanMode::Sequential`].
    Auto,
    /// One thread, [`SCAN_CHUNK_BYTES`] reads, the checksum chained frame by frame: the
    /// reference.
    Sequential,
    /// Two threads (see [`crate::scan_parallel`]).
    Parallel(ParallelPlan),
}

/// [`scan_inner`] with an explicit frame loop (tests compare the two).
pub(crate) fn scan_inner_with<F: VfsFile>(
    cx: &Cx,
    file: &F,
    path: Option<&Path>,
    mode: ScanMode,
    mut on_frame: impl FnMut(u32, PageNumber, u32) -> Result<()>,
) -> Result<ScanReport> {
    let file_size = file.file_size(cx)?;
    let empty = |why| ScanReport {
        header: None,
        file_size,
        mx_frame: 0,
        n_page: 0,
        frame_checksum: [0, 0],
        last_valid_frame: 0,
        last_valid_checksum: [0, 0],
        commits: 0,
        stop: StopReason::EmptyOrInvalidHeader { why },
        stop_offset: 0,
    };
    if file_size <= WAL_HEADER_SIZE as u64 {
        return Ok(empty(EmptyWalReason::TooSmall { file_size }));
    }
    let mut hdr_bytes = [0u8; WAL_HEADER_SIZE];
    let got = file.read(cx, &mut hdr_bytes, 0)?;
    let header = match WalHeader::decode(&hdr_bytes[..got]) {
        Ok(h) => h,
        Err(e) if e.is_cannot_open() => {
            return Err(FrankenError::cannot_open(
                path.map_or_else(|| PathBuf::from("<WAL file>"), Path::to_path_buf),
                e.to_string(),
            ));
        }
        Err(e) => {
            tracing::debug!(target: "fsqlite.wal.recovery", wal = %label(path), "empty WAL: {e}");
            return Ok(empty(EmptyWalReason::InvalidHeader(e)));
        }
    };

    let page_size = header.page_size;
    let fsz = frame_size(page_size);
    // One below u32::MAX so frame numbers never overflow (a 2 TiB WAL at the least).
    let n_frames = frames_in_file(file_size, page_size).min(u32::MAX - 1);
    let mode = match mode {
        ScanMode::Auto if file_size >= PARALLEL_MIN_BYTES && available_cores() >= 2 => {
            ScanMode::Parallel(ParallelPlan::for_page_size(page_size))
        }
        ScanMode::Auto => ScanMode::Sequential,
        m => m,
    };
    let mut report = ScanReport {
        header: Some(header),
        file_size,
        mx_frame: 0,
        n_page: 0,
        frame_checksum: [0, 0],
        last_valid_frame: 0,
        last_valid_checksum: header.checksum,
        commits: 0,
        stop: StopReason::EndOfFile,
        stop_offset: file_size,
    };
    let (frame, stop) = match mode {
        ScanMode::Parallel(plan) => scan_parallel::scan_frames(
            cx,
            file,
            &header,
            n_frames,
            plan,
            &mut report,
            &mut on_frame,
        )?,
        _ => scan_frames_sequential(cx, file, &header, n_frames, &mut report, &mut on_frame)?,
    };
    if let Some(s) = stop {
        report.stop = s;
        report.stop_offset = frame_offset(frame, page_size);
    } else {
        let end = WAL_HEADER_SIZE as u64 + u64::from(n_frames) * fsz;
        if file_size > end {
            report.stop = StopReason::PartialFrame {
                frame: n_frames + 1,
                bytes: file_size - end,
            };
            report.stop_offset = end;
        }
    }
    tracing::debug!(
        target: "fsqlite.wal.recovery",
        wal = %label(path),
        mx_frame = report.mx_frame,
        n_page = report.n_page,
        last_valid_frame = report.last_valid_frame,
        commits = report.commits,
        stop = %report.stop,
        "scanned WAL"
    );
    Ok(report)
}

/// The reference frame loop: frames `1..=n_frames` read [`SCAN_CHUNK_BYTES`] at a time
/// into one buffer, the checksum chained frame by frame from `running`. Returns the
/// frame it stopped at and why (`(n_frames + 1, None)` when every frame was valid).
fn scan_frames_sequential<F: VfsFile>(
    cx: &Cx,
    file: &F,
    header: &WalHeader,
    n_frames: u32,
    report: &mut ScanReport,
    on_frame: &mut impl FnMut(u32, PageNumber, u32) -> Result<()>,
) -> Result<(u32, Option<StopReason>)> {
    let page_size = header.page_size;
    let be = header.big_endian_checksum();
    let frame_bytes = frame_size(page_size) as usize;
    let per_read = (SCAN_CHUNK_BYTES / frame_bytes).max(1);
    // Never more than the file holds.
    let mut buf = vec![0u8; per_read.min(n_frames as usize) * frame_bytes];
    let mut running = header.checksum;
    let mut frame: u32 = 1;
    let mut stop = None;
    'chunks: while frame <= n_frames {
        cx.checkpoint()?;
        let want = per_read.min((n_frames - frame + 1) as usize);
        let chunk = &mut buf[..want * frame_bytes];
        let got = file.read(cx, chunk, frame_offset(frame, page_size))?;
        // A file that shrank under us: only whole frames that were really read count.
        let whole = got / frame_bytes;
        for bytes in chunk[..whole * frame_bytes].chunks_exact(frame_bytes) {
            let (head, page) = bytes.split_at(WAL_FRAME_HEADER_SIZE);
            let fh = FrameHeader::decode(head)?;
            if fh.salt != header.salt {
                stop = Some(StopReason::SaltMismatch { frame });
                break 'chunks;
            }
            let Some(page_no) = PageNumber::new(fh.page_number) else {
                stop = Some(StopReason::ZeroPageNumber { frame });
                break 'chunks;
            };
            let c = wal_checksum(&head[..FRAME_CHECKSUMMED_BYTES], be, running);
            let c = wal_checksum(page, be, c);
            if c != fh.checksum {
                stop = Some(StopReason::ChecksumMismatch { frame });
                break 'chunks;
            }
            running = c;
            on_frame(frame, page_no, fh.db_size_after_commit)?;
            report.last_valid_frame = frame;
            report.last_valid_checksum = c;
            if fh.is_commit() {
                report.mx_frame = frame;
                report.n_page = fh.db_size_after_commit;
                report.frame_checksum = c;
                report.commits += 1;
            }
            frame += 1;
        }
        if whole < want {
            let bytes = (got % frame_bytes) as u64;
            stop = Some(StopReason::PartialFrame { frame, bytes });
            break;
        }
    }
    Ok((frame, stop))
}

/// `std::thread::available_parallelism()`, asked once per process (it reads cgroup
/// files on Linux); 1 when unknown.
fn available_cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}
