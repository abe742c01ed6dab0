//! An independent reader of the 136-byte header at the start of a WAL-index (`-shm`)
//! image, used as an oracle (it shares no code with `fsqlite-wal`). Facts from
//! FORMAT.md §4.1. Every field is in the host's native byte order.
//!
//! # Layout
//!
//! `WalIndexHdr` (48 bytes) appears twice: copy A at [`SHM_COPY_A`] = 0, copy B at
//! [`SHM_COPY_B`] = 48. Offsets within a copy:
//!
//! | off | type | field |
//! |---|---|---|
//! | [`IDX_VERSION`] = 0 | u32 | iVersion (3007000) |
//! | [`IDX_UNUSED`] = 4 | u32 | unused |
//! | [`IDX_CHANGE`] = 8 | u32 | iChange |
//! | [`IDX_IS_INIT`] = 12 | u8 | isInit |
//! | [`IDX_BIG_END_CKSUM`] = 13 | u8 | bigEndCksum |
//! | [`IDX_SZ_PAGE`] = 14 | u16 | szPage, `(sz & 0xff00) \| (sz >> 16)` so 65536 is 1 |
//! | [`IDX_MX_FRAME`] = 16 | u32 | mxFrame |
//! | [`IDX_N_PAGE`] = 20 | u32 | nPage |
//! | [`IDX_FRAME_CKSUM`] = 24 | u32 ×2 | aFrameCksum |
//! | [`IDX_SALT`] = 32 | u8 ×8 | aSalt: a raw copy of WAL header bytes 16..24 (big-endian) |
//! | [`IDX_CKSUM`] = 40 | u32 ×2 | aCksum over bytes `0..40`, native word order |
//!
//! `WalCkptInfo` at [`SHM_CKPT_INFO`] = 96:
//!
//! | off | type | field |
//! |---|---|---|
//! | [`SHM_N_BACKFILL`] = 96 | u32 | nBackfill |
//! | [`SHM_READ_MARK`] = 100 | u32 ×5 | aReadMark |
//! | [`SHM_LOCK_BYTES`] = 120 | u8 ×8 | aLock (lock bytes, never data) |
//! | [`SHM_N_BACKFILL_ATTEMPTED`] = 128 | u32 | nBackfillAttempted |
//! | [`SHM_NOT_USED0`] = 132 | u32 | notUsed0 |
//! | [`SHM_HEADER_SIZE`] = 136 | | end |
//!
//! A reader accepts the header only if copy A == copy B (all 48 bytes), isInit ≠ 0 and the
//! checksum matches ([`RawShmHeader::is_consistent`]).

use fsqlite_error::{FrankenError, Result};

/// Size of one `WalIndexHdr` copy.
pub const INDEX_HDR_SIZE: usize = IDX_CKSUM + 8;
/// Offset of copy A.
pub const SHM_COPY_A: usize = 0;
/// Offset of copy B.
pub const SHM_COPY_B: usize = SHM_COPY_A + INDEX_HDR_SIZE;
/// Offset of `WalCkptInfo`.
pub const SHM_CKPT_INFO: usize = SHM_COPY_B + INDEX_HDR_SIZE;
/// Offset of nBackfill.
pub const SHM_N_BACKFILL: usize = SHM_CKPT_INFO;
/// Number of read marks.
pub const WAL_NREADER: usize = 5;
/// Offset of `aReadMark[0]`.
pub const SHM_READ_MARK: usize = SHM_N_BACKFILL + 4;
/// Offset of the eight lock bytes.
pub const SHM_LOCK_BYTES: usize = SHM_READ_MARK + 4 * WAL_NREADER;
/// Number of shm lock bytes.
pub const SHM_NLOCK: usize = 8;
/// Offset of nBackfillAttempted.
pub const SHM_N_BACKFILL_ATTEMPTED: usize = SHM_LOCK_BYTES + SHM_NLOCK;
/// Offset of notUsed0.
pub const SHM_NOT_USED0: usize = SHM_N_BACKFILL_ATTEMPTED + 4;
/// Size of the whole header (`WALINDEX_HDR_SIZE`).
pub const SHM_HEADER_SIZE: usize = SHM_NOT_USED0 + 4;

/// Offset of iVersion within a copy.
pub const IDX_VERSION: usize = 0;
/// Offset of the unused u32 within a copy.
pub const IDX_UNUSED: usize = IDX_VERSION + 4;
/// Offset of iChange within a copy.
pub const IDX_CHANGE: usize = IDX_UNUSED + 4;
/// Offset of isInit within a copy.
pub const IDX_IS_INIT: usize = IDX_CHANGE + 4;
/// Offset of bigEndCksum within a copy.
pub const IDX_BIG_END_CKSUM: usize = IDX_IS_INIT + 1;
/// Offset of szPage within a copy.
pub const IDX_SZ_PAGE: usize = IDX_BIG_END_CKSUM + 1;
/// Offset of mxFrame within a copy.
pub const IDX_MX_FRAME: usize = IDX_SZ_PAGE + 2;
/// Offset of nPage within a copy.
pub const IDX_N_PAGE: usize = IDX_MX_FRAME + 4;
/// Offset of aFrameCksum within a copy.
pub const IDX_FRAME_CKSUM: usize = IDX_N_PAGE + 4;
/// Offset of aSalt within a copy.
pub const IDX_SALT: usize = IDX_FRAME_CKSUM + 8;
/// Offset of aCksum within a copy.
pub const IDX_CKSUM: usize = IDX_SALT + 8;

/// The WAL-index format version.
pub const WALINDEX_VERSION: u32 = 3_007_000;

/// The decoded WAL-index header. The `WalIndexHdr` fields are decoded from copy A; both
/// copies are kept raw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawShmHeader {
    /// Copy A (bytes `0..48`) as read.
    pub copy_a: [u8; INDEX_HDR_SIZE],
    /// Copy B (bytes `48..96`) as read.
    pub copy_b: [u8; INDEX_HDR_SIZE],
    /// iVersion.
    pub i_version: u32,
    /// iChange.
    pub i_change: u32,
    /// isInit.
    pub is_init: u8,
    /// bigEndCksum.
    pub big_end_cksum: u8,
    /// szPage as stored (65536 is stored as 1).
    pub sz_page_raw: u16,
    /// szPage decoded to a byte count.
    pub sz_page: u32,
    /// mxFrame.
    pub mx_frame: u32,
    /// nPage.
    pub n_page: u32,
    /// aFrameCksum.
    pub a_frame_cksum: [u32; 2],
    /// aSalt, raw bytes (equal to the WAL header's bytes 16..24).
    pub a_salt: [u8; 8],
    /// aCksum as stored.
    pub a_cksum: [u32; 2],
    /// nBackfill.
    pub n_backfill: u32,
    /// aReadMark[0..5].
    pub a_read_mark: [u32; WAL_NREADER],
    /// The eight lock bytes (normally all 0).
    pub a_lock: [u8; SHM_NLOCK],
    /// nBackfillAttempted.
    pub n_backfill_attempted: u32,
}

impl RawShmHeader {
    /// Whether the two copies are byte-identical.
    pub fn copies_equal(&self) -> bool {
        self.copy_a == self.copy_b
    }

    /// The checksum of copy A's bytes `0..40` (native words, starting state (0, 0)).
    pub fn computed_cksum(&self) -> [u32; 2] {
        native_checksum(&self.copy_a[..IDX_CKSUM])
    }

    /// Whether a reader would accept this header: copies equal, isInit set, checksum good.
    pub fn is_consistent(&self) -> bool {
        self.copies_equal() && self.is_init != 0 && self.computed_cksum() == self.a_cksum
    }
}

fn ne32(bytes: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
}

/// The WAL checksum with native-order words (as the wal-index header uses).
fn native_checksum(data: &[u8]) -> [u32; 2] {
    let [mut s1, mut s2] = [0u32, 0u32];
    for pair in data.chunks_exact(8) {
        s1 = s1.wrapping_add(ne32(pair, 0)).wrapping_add(s2);
        s2 = s2.wrapping_add(ne32(pair, 4)).wrapping_add(s1);
    }
    [s1, s2]
}

/// Decodes an szPage u16 to a byte count (`(v & 0xfe00) + ((v & 1) << 16)`).
pub fn decode_sz_page(v: u16) -> u32 {
    (u32::from(v) & 0xfe00) + ((u32::from(v) & 1) << 16)
}

/// Parses the first [`SHM_HEADER_SIZE`] bytes of a `-shm` image (native byte order).
pub fn read_shm_header(shm: &[u8]) -> Result<RawShmHeader> {
    let Some(h) = shm.get(..SHM_HEADER_SIZE) else {
        return Err(FrankenError::wal_corrupt(format!(
            "WAL-index image is {} bytes, shorter than its {SHM_HEADER_SIZE}-byte header",
            shm.len()
        )));
    };
    let mut copy_a = [0u8; INDEX_HDR_SIZE];
    copy_a.copy_from_slice(&h[SHM_COPY_A..SHM_COPY_A + INDEX_HDR_SIZE]);
    let mut copy_b = [0u8; INDEX_HDR_SIZE];
    copy_b.copy_from_slice(&h[SHM_COPY_B..SHM_COPY_B + INDEX_HDR_SIZE]);
    let a = &copy_a;
    let sz_page_raw = u16::from_ne_bytes([a[IDX_SZ_PAGE], a[IDX_SZ_PAGE + 1]]);
    let mut a_salt = [0u8; 8];
    a_salt.copy_from_slice(&a[IDX_SALT..IDX_SALT + 8]);
    let mut a_read_mark = [0u32; WAL_NREADER];
    for (i, m) in a_read_mark.iter_mut().enumerate() {
        *m = ne32(h, SHM_READ_MARK + 4 * i);
    }
    let mut a_lock = [0u8; SHM_NLOCK];
    a_lock.copy_from_slice(&h[SHM_LOCK_BYTES..SHM_LOCK_BYTES + SHM_NLOCK]);
    Ok(RawShmHeader {
        i_version: ne32(a, IDX_VERSION),
        i_change: ne32(a, IDX_CHANGE),
        is_init: a[IDX_IS_INIT],
        big_end_cksum: a[IDX_BIG_END_CKSUM],
        sz_page_raw,
        sz_page: decode_sz_page(sz_page_raw),
        mx_frame: ne32(a, IDX_MX_FRAME),
        n_page: ne32(a, IDX_N_PAGE),
        a_frame_cksum: [ne32(a, IDX_FRAME_CKSUM), ne32(a, IDX_FRAME_CKSUM + 4)],
        a_salt,
        a_cksum: [ne32(a, IDX_CKSUM), ne32(a, IDX_CKSUM + 4)],
        n_backfill: ne32(h, SHM_N_BACKFILL),
        a_read_mark,
        a_lock,
        n_backfill_attempted: ne32(h, SHM_N_BACKFILL_ATTEMPTED),
        copy_a,
        copy_b,
    })
}
