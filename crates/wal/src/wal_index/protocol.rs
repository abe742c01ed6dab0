//! The lock-free header publish / read protocol and the checkpoint-info atomics, written
//! once over the tiny [`HeaderMemory`] trait so the same code runs on a real
//! [`ShmRegion`] and, in `tests/loom_index_header.rs`, on an image of loom atomics.
//! The contract is documented in the [parent module](super) ("Publish / read ordering").

use std::fmt;

use fsqlite_vfs::ShmRegion;

use super::header::{HDR_WORDS, WalCkptInfo, WalIndexHdr};
use super::{
    SHM_HDR_COPY_A_OFFSET, SHM_HDR_COPY_B_OFFSET, SHM_N_BACKFILL_ATTEMPTED_OFFSET,
    SHM_N_BACKFILL_OFFSET, SHM_NOT_USED0_OFFSET, SHM_READ_MARK_OFFSET, WAL_INDEX_VERSION,
    WAL_READ_MARK_COUNT, WALINDEX_HDR_SIZE,
};

/// Word index of header copy A (`-shm` byte 0).
pub const COPY_A_WORD: usize = SHM_HDR_COPY_A_OFFSET / 4;
/// Word index of header copy B (`-shm` byte 48).
pub const COPY_B_WORD: usize = SHM_HDR_COPY_B_OFFSET / 4;
/// Word index of `nBackfill` (byte 96).
pub const N_BACKFILL_WORD: usize = SHM_N_BACKFILL_OFFSET / 4;
/// Word index of `aReadMark[0]` (byte 100).
pub const READ_MARK_WORD: usize = SHM_READ_MARK_OFFSET / 4;
/// Word index of `nBackfillAttempted` (byte 128).
pub const N_BACKFILL_ATTEMPTED_WORD: usize = SHM_N_BACKFILL_ATTEMPTED_OFFSET / 4;
/// Word index of `notUsed0` (byte 132).
pub const NOT_USED0_WORD: usize = SHM_NOT_USED0_OFFSET / 4;
/// Words in the 136-byte region-0 header (34).
pub const WALINDEX_HDR_WORDS: usize = WALINDEX_HDR_SIZE / 4;

/// The 32-bit words of the start of WAL-index region 0, as the header protocol sees them.
///
/// `word` is a word index from the start of region 0 (`byte = 4 * word`,
/// `word < WALINDEX_HDR_WORDS`). Contract for implementations:
/// * `load_word` / `store_word` are single-copy atomic 32-bit accesses that need give no
///   ordering beyond per-word coherence (`Relaxed` is enough, and is what the
///   [`ShmRegion`] impl uses);
/// * `barrier` is a full two-way fence between the accesses before and after it
///   (`fence(SeqCst)`, SQLite's `walShmBarrier`).
///
/// Every ordering the protocol relies on comes from an explicit `barrier()` call placed
/// where SQLite places `walShmBarrier` (and, across processes, from the shm locks).
pub trait HeaderMemory {
    /// Loads word `word`.
    fn load_word(&self, word: usize) -> u32;
    /// Stores `v` into word `word`.
    fn store_word(&self, word: usize, v: u32);
    /// A full memory barrier.
    fn barrier(&self);

    /// `nBackfill` (lock-free read; only the CKPT-lock holder or recovery raises it, the
    /// WRITE-lock holder resets it to 0 on restart).
    fn n_backfill(&self) -> u32 {
        self.load_word(N_BACKFILL_WORD)
    }

    /// Stores `nBackfill`.
    fn set_n_backfill(&self, v: u32) {
        self.store_word(N_BACKFILL_WORD, v);
    }

    /// `aReadMark[i]`.
    ///
    /// # Panics
    /// If `i >= WAL_READ_MARK_COUNT` (a caller bug).
    fn read_mark(&self, i: usize) -> u32 {
        assert!(i < WAL_READ_MARK_COUNT, "read mark index {i} out of range");
        self.load_word(READ_MARK_WORD + i)
    }

    /// Stores `aReadMark[i]` (caller holds `WAL_READ_LOCK(i)` exclusively, or runs
    /// recovery).
    ///
    /// # Panics
    /// If `i >= WAL_READ_MARK_COUNT` (a caller bug).
    fn set_read_mark(&self, i: usize, v: u32) {
        assert!(i < WAL_READ_MARK_COUNT, "read mark index {i} out of range");
        self.store_word(READ_MARK_WORD + i, v);
    }

    /// `nBackfillAttempted`.
    fn n_backfill_attempted(&self) -> u32 {
        self.load_word(N_BACKFILL_ATTEMPTED_WORD)
    }

    /// Stores `nBackfillAttempted`.
    fn set_n_backfill_attempted(&self, v: u32) {
        self.store_word(N_BACKFILL_ATTEMPTED_WORD, v);
    }

    /// A snapshot of the checkpoint info, field by field (not atomic as a whole).
    /// `a_lock` is returned as zeros: the lock bytes are never read as data.
    fn load_ckpt_info(&self) -> WalCkptInfo {
        WalCkptInfo {
            n_backfill: self.n_backfill(),
            a_read_mark: std::array::from_fn(|i| self.read_mark(i)),
            a_lock: [0; 8],
            n_backfill_attempted: self.n_backfill_attempted(),
            not_used0: self.load_word(NOT_USED0_WORD),
        }
    }

    /// Stores every checkpoint-info field except `a_lock` (the lock bytes are never
    /// written as data).
    fn store_ckpt_info(&self, info: &WalCkptInfo) {
        self.set_n_backfill(info.n_backfill);
        for (i, m) in info.a_read_mark.iter().enumerate() {
            self.set_read_mark(i, *m);
        }
        self.set_n_backfill_attempted(info.n_backfill_attempted);
        self.store_word(NOT_USED0_WORD, info.not_used0);
    }
}

/// Region 0 of a real WAL-index. Word accesses are `Relaxed` (SQLite's plain `volatile`
/// accesses); `barrier` is `std::sync::atomic::fence(SeqCst)`. It is `std`'s fence even
/// under `--cfg loom` because [`ShmRegion`] is built on `std` atomics (and on memory that
/// other processes share, which loom cannot see anyway).
impl HeaderMemory for ShmRegion {
    #[inline]
    fn load_word(&self, word: usize) -> u32 {
        self.load_u32(4 * word, std::sync::atomic::Ordering::Relaxed)
    }

    #[inline]
    fn store_word(&self, word: usize, v: u32) {
        self.store_u32(4 * word, v, std::sync::atomic::Ordering::Relaxed);
    }

    fn barrier(&self) {
        // SeqCst fence: SQLite's walShmBarrier (a full memory barrier).
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
}

/// Why a lock-free header read was refused (the caller then takes the WRITE lock, retries
/// and, if the header is still bad, runs recovery; FORMAT.md §8.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HeaderDefect {
    /// Region 0 is not mapped (the `-shm` is shorter than 32 KiB and the caller may not
    /// extend it).
    Unmapped,
    /// Copy A and copy B differ: a writer is mid-publish, or a writer died mid-publish.
    CopiesDiffer,
    /// The copies agree but `isInit == 0`: the header was never written (e.g. a new,
    /// zero-filled `-shm`).
    NotInitialized,
    /// The copies agree and are initialized but `aCksum` is wrong.
    ChecksumMismatch,
}

impl fmt::Display for HeaderDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unmapped => "WAL-index region 0 is not mapped",
            Self::CopiesDiffer => "the two WAL-index header copies differ",
            Self::NotInitialized => "the WAL-index header was never initialized",
            Self::ChecksumMismatch => "the WAL-index header checksum does not match",
        })
    }
}

/// Result of [`try_read_header`] (SQLite's `walIndexTryHdr` + the version check of
/// `walIndexReadHdr`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HeaderRead {
    /// A good header, byte-identical to the cached copy.
    Unchanged,
    /// A good header that differs from the cached copy; the cache now holds it.
    Changed,
    /// No consistent header could be read; see [`HeaderDefect`].
    NeedsRecovery(HeaderDefect),
    /// A good header (copies equal, initialized, checksum ok) whose `iVersion` is not
    /// [`WAL_INDEX_VERSION`]: the caller fails with `FrankenError::CannotOpen`
    /// (SQLITE_CANTOPEN). The cache is left unchanged.
    UnsupportedVersion {
        /// The `iVersion` found.
        found: u32,
    },
}

/// Publishes `hdr` as SQLite's `walIndexWriteHdr` does: [`WalIndexHdr::seal`] (isInit = 1,
/// iVersion, aCksum), then write **copy B, barrier, copy A**. `hdr` is updated in place
/// (it is the caller's cached header). Caller holds the WRITE lock (or runs recovery).
///
/// inv: HDR_PUBLISH_B_THEN_A
pub fn publish_header<M: HeaderMemory + ?Sized>(mem: &M, hdr: &mut WalIndexHdr) {
    hdr.seal();
    let words = hdr.to_words();
    for (i, w) in words.iter().enumerate() {
        mem.store_word(COPY_B_WORD + i, *w);
    }
    mem.barrier();
    for (i, w) in words.iter().enumerate() {
        mem.store_word(COPY_A_WORD + i, *w);
    }
}

/// Reads both header copies as a lock-free reader must: **copy A, barrier, copy B**.
/// Returns `[A, B]`; [`validate_header_copies`] decides whether they form a good header.
///
/// inv: HDR_READ_A_THEN_B
pub fn load_header_copies<M: HeaderMemory + ?Sized>(mem: &M) -> [WalIndexHdr; 2] {
    let a: [u32; HDR_WORDS] = std::array::from_fn(|i| mem.load_word(COPY_A_WORD + i));
    mem.barrier();
    let b: [u32; HDR_WORDS] = std::array::from_fn(|i| mem.load_word(COPY_B_WORD + i));
    [WalIndexHdr::from_words(&a), WalIndexHdr::from_words(&b)]
}

/// SQLite's acceptance rule, in SQLite's order: the copies are equal (all 48 bytes),
/// `isInit != 0`, and the checksum matches. The version is *not* checked here.
///
/// inv: HDR_NEVER_TORN — with [`publish_header`] / [`load_header_copies`], equal and
/// initialized copies are always exactly one published header (checked by loom in
/// `tests/loom_index_header.rs`, without relying on the checksum).
pub fn validate_header_copies(copies: &[WalIndexHdr; 2]) -> Result<WalIndexHdr, HeaderDefect> {
    let [a, b] = copies;
    if a != b {
        return Err(HeaderDefect::CopiesDiffer);
    }
    if a.is_init == 0 {
        return Err(HeaderDefect::NotInitialized);
    }
    if !a.checksum_ok() {
        return Err(HeaderDefect::ChecksumMismatch);
    }
    Ok(*a)
}

/// The lock-free header read (`walIndexTryHdr`): load the copies, validate them, check
/// the version, and replace `cached` if the header changed.
pub fn try_read_header<M: HeaderMemory + ?Sized>(mem: &M, cached: &mut WalIndexHdr) -> HeaderRead {
    match validate_header_copies(&load_header_copies(mem)) {
        Err(defect) => {
            tracing::debug!(
                target: "fsqlite.wal.index",
                %defect,
                "lock-free WAL-index header read refused"
            );
            HeaderRead::NeedsRecovery(defect)
        }
        Ok(h) if h.i_version != WAL_INDEX_VERSION => {
            HeaderRead::UnsupportedVersion { found: h.i_version }
        }
        Ok(h) if h == *cached => HeaderRead::Unchanged,
        Ok(h) => {
            *cached = h;
            HeaderRead::Changed
        }
    }
}

/// The error for [`HeaderRead::UnsupportedVersion`]: `CannotOpen` naming the `-shm` path.
pub fn unsupported_version_error(
    shm_path: impl Into<std::path::PathBuf>,
    found: u32,
) -> fsqlite_error::FrankenError {
    fsqlite_error::FrankenError::cannot_open(
        shm_path,
        format!(
            "WAL-index header version {found} is not the supported version {WAL_INDEX_VERSION}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::super::{WALINDEX_PGSZ, header::WalIndexHdr};
    use super::*;

    fn region() -> ShmRegion {
        ShmRegion::heap(WALINDEX_PGSZ)
    }

    fn hdr(mx: u32) -> WalIndexHdr {
        WalIndexHdr {
            i_change: mx,
            sz_page: 4096,
            mx_frame: mx,
            n_page: 3,
            a_frame_cksum: [mx, !mx],
            a_salt: [7, 8],
            ..WalIndexHdr::default()
        }
    }

    #[test]
    fn publish_then_read() {
        let r = region();
        let mut cached = WalIndexHdr::default();
        // inv: HDR_NEVER_TORN — a zero-filled -shm is never accepted.
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::NeedsRecovery(HeaderDefect::NotInitialized)
        );
        let mut h = hdr(5);
        publish_header(&r, &mut h);
        assert_eq!(h.is_init, 1);
        assert_eq!(h.i_version, WAL_INDEX_VERSION);
        assert!(h.checksum_ok());
        let mut a = [0u8; 48];
        let mut b = [0u8; 48];
        r.read_bytes(0, &mut a);
        r.read_bytes(48, &mut b);
        assert_eq!(a, h.to_bytes());
        assert_eq!(b, h.to_bytes());
        assert_eq!(try_read_header(&r, &mut cached), HeaderRead::Changed);
        assert_eq!(cached, h);
        assert_eq!(try_read_header(&r, &mut cached), HeaderRead::Unchanged);
    }

    #[test]
    fn torn_headers_need_recovery() {
        let r = region();
        let mut h1 = hdr(5);
        publish_header(&r, &mut h1);
        let mut h2 = hdr(9);
        h2.seal();
        let mut cached = h1;
        // Writer died after copy B: copies differ. inv: HDR_NEVER_TORN
        r.write_bytes(48, &h2.to_bytes());
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::NeedsRecovery(HeaderDefect::CopiesDiffer)
        );
        assert_eq!(cached, h1, "a refused read leaves the cache alone");
        // Same torn word in both copies: equal, but the checksum catches it.
        let mut torn = h2;
        torn.i_change = h1.i_change;
        r.write_bytes(0, &torn.to_bytes());
        r.write_bytes(48, &torn.to_bytes());
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::NeedsRecovery(HeaderDefect::ChecksumMismatch)
        );
        // isInit == 0 with a matching checksum is still refused.
        let mut uninit = h2;
        uninit.is_init = 0;
        uninit.a_cksum = uninit.compute_checksum();
        r.write_bytes(0, &uninit.to_bytes());
        r.write_bytes(48, &uninit.to_bytes());
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::NeedsRecovery(HeaderDefect::NotInitialized)
        );
        // All-zero header.
        r.zero(0, 96);
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::NeedsRecovery(HeaderDefect::NotInitialized)
        );
    }

    #[test]
    fn wrong_version_is_distinct() {
        let r = region();
        let mut h = hdr(5);
        h.seal();
        h.i_version = 3_007_001;
        h.a_cksum = h.compute_checksum();
        r.write_bytes(0, &h.to_bytes());
        r.write_bytes(48, &h.to_bytes());
        let mut cached = WalIndexHdr::default();
        assert_eq!(
            try_read_header(&r, &mut cached),
            HeaderRead::UnsupportedVersion { found: 3_007_001 }
        );
        assert_eq!(cached, WalIndexHdr::default());
        let e = unsupported_version_error("/x/db-shm", 3_007_001);
        assert!(matches!(e, fsqlite_error::FrankenError::CannotOpen { .. }));
    }

    #[test]
    fn ckpt_info_words_and_lock_bytes_untouched() {
        let r = region();
        // Pretend the lock bytes hold something: accessors must never read or write them.
        r.write_bytes(120, &[0xaa; 8]);
        let info = WalCkptInfo {
            n_backfill: 3,
            a_read_mark: [0, 10, super::super::READMARK_NOT_USED, 4, 5],
            a_lock: [0x55; 8],
            n_backfill_attempted: 9,
            not_used0: 0,
        };
        r.store_ckpt_info(&info);
        let mut lock = [0u8; 8];
        r.read_bytes(120, &mut lock);
        assert_eq!(lock, [0xaa; 8]);
        let back = r.load_ckpt_info();
        assert_eq!(
            back,
            WalCkptInfo {
                a_lock: [0; 8],
                ..info
            }
        );
        let mut raw = [0u8; 40];
        r.read_bytes(96, &mut raw);
        let parsed = WalCkptInfo::from_bytes(&raw);
        assert_eq!(parsed.n_backfill, 3);
        assert_eq!(parsed.a_read_mark, info.a_read_mark);
        assert_eq!(parsed.n_backfill_attempted, 9);
        r.set_read_mark(2, 77);
        assert_eq!(r.read_mark(2), 77);
        r.set_n_backfill(4);
        r.set_n_backfill_attempted(6);
        assert_eq!((r.n_backfill(), r.n_backfill_attempted()), (4, 6));
    }
}
