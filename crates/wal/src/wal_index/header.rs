//! The two fixed structures at the start of region 0: [`WalIndexHdr`] (48 bytes, stored
//! twice) and [`WalCkptInfo`] (40 bytes). The byte layout is documented once, in the
//! [parent module](super); this file holds the offsets (each derived from the previous
//! one) and the plain-value conversions. Nothing here touches shared memory.

use fsqlite_types::PageSize;

use crate::checksum::wal_checksum_native;

use super::{WAL_INDEX_VERSION, WAL_READ_MARK_COUNT};

// ---- WalIndexHdr field offsets (within one 48-byte copy) -------------------------------

/// Offset of `iVersion` (u32).
pub const HDR_I_VERSION_OFFSET: usize = 0;
/// Offset of `unused` (u32).
pub const HDR_UNUSED_OFFSET: usize = HDR_I_VERSION_OFFSET + 4;
/// Offset of `iChange` (u32).
pub const HDR_I_CHANGE_OFFSET: usize = HDR_UNUSED_OFFSET + 4;
/// Offset of `isInit` (u8).
pub const HDR_IS_INIT_OFFSET: usize = HDR_I_CHANGE_OFFSET + 4;
/// Offset of `bigEndCksum` (u8).
pub const HDR_BIG_END_CKSUM_OFFSET: usize = HDR_IS_INIT_OFFSET + 1;
/// Offset of `szPage` (u16, 65536 stored as 1).
pub const HDR_SZ_PAGE_OFFSET: usize = HDR_BIG_END_CKSUM_OFFSET + 1;
/// Offset of `mxFrame` (u32).
pub const HDR_MX_FRAME_OFFSET: usize = HDR_SZ_PAGE_OFFSET + 2;
/// Offset of `nPage` (u32).
pub const HDR_N_PAGE_OFFSET: usize = HDR_MX_FRAME_OFFSET + 4;
/// Offset of `aFrameCksum` (u32 x 2).
pub const HDR_A_FRAME_CKSUM_OFFSET: usize = HDR_N_PAGE_OFFSET + 4;
/// Offset of `aSalt` (u32 x 2, raw big-endian WAL header bytes).
pub const HDR_A_SALT_OFFSET: usize = HDR_A_FRAME_CKSUM_OFFSET + 8;
/// Offset of `aCksum` (u32 x 2).
pub const HDR_A_CKSUM_OFFSET: usize = HDR_A_SALT_OFFSET + 8;
/// Size of one [`WalIndexHdr`] copy: 48 bytes.
pub const WAL_INDEX_HDR_SIZE: usize = HDR_A_CKSUM_OFFSET + 8;
/// Bytes covered by `aCksum`: everything before it (40).
pub const HDR_CKSUM_INPUT_LEN: usize = HDR_A_CKSUM_OFFSET;
/// 32-bit words in one header copy (12).
pub const HDR_WORDS: usize = WAL_INDEX_HDR_SIZE / 4;

// ---- WalCkptInfo field offsets (within the 40-byte struct) -----------------------------

/// Offset of `nBackfill` (u32).
pub const CKPT_N_BACKFILL_OFFSET: usize = 0;
/// Offset of `aReadMark[0]` (u32 x [`WAL_READ_MARK_COUNT`]).
pub const CKPT_A_READ_MARK_OFFSET: usize = CKPT_N_BACKFILL_OFFSET + 4;
/// Offset of `aLock` (u8 x 8): the shm lock bytes, never read or written as data.
pub const CKPT_A_LOCK_OFFSET: usize = CKPT_A_READ_MARK_OFFSET + 4 * WAL_READ_MARK_COUNT;
/// Number of lock bytes in `aLock` (`SQLITE_SHM_NLOCK`).
pub const CKPT_A_LOCK_LEN: usize = 8;
/// Offset of `nBackfillAttempted` (u32).
pub const CKPT_N_BACKFILL_ATTEMPTED_OFFSET: usize = CKPT_A_LOCK_OFFSET + CKPT_A_LOCK_LEN;
/// Offset of `notUsed0` (u32).
pub const CKPT_NOT_USED0_OFFSET: usize = CKPT_N_BACKFILL_ATTEMPTED_OFFSET + 4;
/// Size of [`WalCkptInfo`]: 40 bytes.
pub const WAL_CKPT_INFO_SIZE: usize = CKPT_NOT_USED0_OFFSET + 4;

const _: () = assert!(WAL_INDEX_HDR_SIZE == 48 && HDR_WORDS == 12);
const _: () = assert!(WAL_CKPT_INFO_SIZE == 40 && CKPT_A_LOCK_OFFSET == 24);

fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// `aSalt` value for the WAL header salts `salt_bytes` (= WAL header bytes 16..24, as they
/// are on disk): the raw bytes copied into two native `u32`s, exactly as SQLite's
/// `memcpy(pWal->hdr.aSalt, &aBuf[16], 8)` does.
pub fn salts_from_wal_header_bytes(salt_bytes: &[u8; 8]) -> [u32; 2] {
    [get_u32(salt_bytes, 0), get_u32(salt_bytes, 4)]
}

/// `aSalt` value for the numeric WAL salts (salt-1, salt-2 as decoded big-endian from the
/// WAL header or a frame header).
pub fn salts_from_wal_salts(salts: [u32; 2]) -> [u32; 2] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&salts[0].to_be_bytes());
    b[4..].copy_from_slice(&salts[1].to_be_bytes());
    salts_from_wal_header_bytes(&b)
}

/// SQLite's `WalIndexHdr`: one 48-byte copy of the WAL-index header, field for field.
///
/// All fields are native-endian in the `-shm`, except `a_salt`, which holds the WAL
/// header's salt **bytes** (big-endian on disk) copied raw; use [`WalIndexHdr::wal_salts`]
/// and [`WalIndexHdr::set_wal_salts`] for the numeric values. `sz_page` uses the
/// 65536-as-1 encoding; use [`WalIndexHdr::page_size`] / [`WalIndexHdr::set_page_size`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct WalIndexHdr {
    /// `iVersion`: [`WAL_INDEX_VERSION`] in a good header.
    pub i_version: u32,
    /// `unused`: 0.
    pub unused: u32,
    /// `iChange`: bumped by every commit (change detection only).
    pub i_change: u32,
    /// `isInit`: 1 once the header has been written; 0 means never initialized.
    pub is_init: u8,
    /// `bigEndCksum`: the WAL magic's low bit (word order of the frame checksums).
    pub big_end_cksum: u8,
    /// `szPage`: page size, 65536 stored as 1.
    pub sz_page: u16,
    /// `mxFrame`: the last valid commit frame.
    pub mx_frame: u32,
    /// `nPage`: database size in pages after that commit.
    pub n_page: u32,
    /// `aFrameCksum`: running WAL checksum after frame `mx_frame`.
    pub a_frame_cksum: [u32; 2],
    /// `aSalt`: WAL header bytes 16..24 copied raw.
    pub a_salt: [u32; 2],
    /// `aCksum`: native-order WAL checksum of bytes 0..40 of this struct, seed (0, 0).
    pub a_cksum: [u32; 2],
}

impl WalIndexHdr {
    /// The 48 bytes as they appear in the `-shm` (native byte order).
    pub fn to_bytes(&self) -> [u8; WAL_INDEX_HDR_SIZE] {
        let mut b = [0u8; WAL_INDEX_HDR_SIZE];
        put_u32(&mut b, HDR_I_VERSION_OFFSET, self.i_version);
        put_u32(&mut b, HDR_UNUSED_OFFSET, self.unused);
        put_u32(&mut b, HDR_I_CHANGE_OFFSET, self.i_change);
        b[HDR_IS_INIT_OFFSET] = self.is_init;
        b[HDR_BIG_END_CKSUM_OFFSET] = self.big_end_cksum;
        b[HDR_SZ_PAGE_OFFSET..HDR_SZ_PAGE_OFFSET + 2].copy_from_slice(&self.sz_page.to_ne_bytes());
        put_u32(&mut b, HDR_MX_FRAME_OFFSET, self.mx_frame);
        put_u32(&mut b, HDR_N_PAGE_OFFSET, self.n_page);
        for i in 0..2 {
            put_u32(
                &mut b,
                HDR_A_FRAME_CKSUM_OFFSET + 4 * i,
                self.a_frame_cksum[i],
            );
            put_u32(&mut b, HDR_A_SALT_OFFSET + 4 * i, self.a_salt[i]);
            put_u32(&mut b, HDR_A_CKSUM_OFFSET + 4 * i, self.a_cksum[i]);
        }
        b
    }

    /// Parses 48 native-order bytes (one copy as stored in the `-shm`). Every bit
    /// pattern is a value; validity is [`WalIndexHdr::checksum_ok`] plus `is_init` and
    /// `i_version` (see the module docs).
    pub fn from_bytes(b: &[u8; WAL_INDEX_HDR_SIZE]) -> Self {
        let pair = |off: usize| [get_u32(b, off), get_u32(b, off + 4)];
        Self {
            i_version: get_u32(b, HDR_I_VERSION_OFFSET),
            unused: get_u32(b, HDR_UNUSED_OFFSET),
            i_change: get_u32(b, HDR_I_CHANGE_OFFSET),
            is_init: b[HDR_IS_INIT_OFFSET],
            big_end_cksum: b[HDR_BIG_END_CKSUM_OFFSET],
            sz_page: u16::from_ne_bytes([b[HDR_SZ_PAGE_OFFSET], b[HDR_SZ_PAGE_OFFSET + 1]]),
            mx_frame: get_u32(b, HDR_MX_FRAME_OFFSET),
            n_page: get_u32(b, HDR_N_PAGE_OFFSET),
            a_frame_cksum: pair(HDR_A_FRAME_CKSUM_OFFSET),
            a_salt: pair(HDR_A_SALT_OFFSET),
            a_cksum: pair(HDR_A_CKSUM_OFFSET),
        }
    }

    /// The header as its 12 native-order words (word `i` = bytes `4i..4i+4`).
    pub fn to_words(&self) -> [u32; HDR_WORDS] {
        let b = self.to_bytes();
        std::array::from_fn(|i| get_u32(&b, 4 * i))
    }

    /// Inverse of [`WalIndexHdr::to_words`].
    pub fn from_words(words: &[u32; HDR_WORDS]) -> Self {
        let mut b = [0u8; WAL_INDEX_HDR_SIZE];
        for (i, w) in words.iter().enumerate() {
            put_u32(&mut b, 4 * i, *w);
        }
        Self::from_bytes(&b)
    }

    /// SQLite's header checksum: the WAL checksum of bytes `0..40` in native word order,
    /// seed (0, 0).
    pub fn compute_checksum(&self) -> [u32; 2] {
        wal_checksum_native(&self.to_bytes()[..HDR_CKSUM_INPUT_LEN], [0, 0])
    }

    /// True when `a_cksum` matches [`WalIndexHdr::compute_checksum`].
    pub fn checksum_ok(&self) -> bool {
        self.a_cksum == self.compute_checksum()
    }

    /// Sets what `walIndexWriteHdr` sets before publishing: `is_init = 1`,
    /// `i_version = WAL_INDEX_VERSION` and `a_cksum`. (It does not bump `i_change`; a
    /// commit does that itself.)
    pub fn seal(&mut self) {
        self.is_init = 1;
        self.i_version = WAL_INDEX_VERSION;
        self.a_cksum = self.compute_checksum();
    }

    /// The decoded page size, `None` if `sz_page` is not a valid encoding (e.g. a zeroed
    /// header).
    pub fn page_size(&self) -> Option<PageSize> {
        PageSize::from_u16_encoding(self.sz_page)
    }

    /// Stores `size` with the 65536-as-1 encoding.
    pub fn set_page_size(&mut self, size: PageSize) {
        self.sz_page = size.to_u16_encoding();
    }

    /// The numeric WAL salts (salt-1, salt-2), as a WAL header or frame header holds them
    /// after big-endian decoding.
    pub fn wal_salts(&self) -> [u32; 2] {
        let b = self.salt_bytes();
        [
            u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        ]
    }

    /// Stores the numeric WAL salts (salt-1, salt-2) as SQLite does (raw big-endian bytes).
    pub fn set_wal_salts(&mut self, salts: [u32; 2]) {
        self.a_salt = salts_from_wal_salts(salts);
    }

    /// The salt bytes exactly as in WAL header bytes 16..24.
    pub fn salt_bytes(&self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.a_salt[0].to_ne_bytes());
        b[4..].copy_from_slice(&self.a_salt[1].to_ne_bytes());
        b
    }
}

/// SQLite's `WalCkptInfo` (40 bytes at `-shm` offset 96), field for field.
///
/// `a_lock` is the span of the eight shm lock bytes; it is never read or written as data
/// (see the module docs), so [`WalCkptInfo::to_bytes`] emits it as given (normally zero)
/// and shared-memory accessors never touch it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct WalCkptInfo {
    /// `nBackfill`: frames `1..=n_backfill` are already in the database file.
    pub n_backfill: u32,
    /// `aReadMark[0..5]`: reader snapshots; slot 0 always 0, unused slots
    /// [`READMARK_NOT_USED`](super::READMARK_NOT_USED).
    pub a_read_mark: [u32; WAL_READ_MARK_COUNT],
    /// `aLock[8]`: the lock bytes (never data).
    pub a_lock: [u8; 8],
    /// `nBackfillAttempted`: the checkpoint's safe frame, set before copying.
    pub n_backfill_attempted: u32,
    /// `notUsed0`: 0.
    pub not_used0: u32,
}

impl WalCkptInfo {
    /// The 40 bytes as they appear in the `-shm` (native byte order).
    pub fn to_bytes(&self) -> [u8; WAL_CKPT_INFO_SIZE] {
        let mut b = [0u8; WAL_CKPT_INFO_SIZE];
        put_u32(&mut b, CKPT_N_BACKFILL_OFFSET, self.n_backfill);
        for (i, m) in self.a_read_mark.iter().enumerate() {
            put_u32(&mut b, CKPT_A_READ_MARK_OFFSET + 4 * i, *m);
        }
        b[CKPT_A_LOCK_OFFSET..CKPT_A_LOCK_OFFSET + CKPT_A_LOCK_LEN].copy_from_slice(&self.a_lock);
        put_u32(
            &mut b,
            CKPT_N_BACKFILL_ATTEMPTED_OFFSET,
            self.n_backfill_attempted,
        );
        put_u32(&mut b, CKPT_NOT_USED0_OFFSET, self.not_used0);
        b
    }

    /// Parses 40 native-order bytes.
    pub fn from_bytes(b: &[u8; WAL_CKPT_INFO_SIZE]) -> Self {
        let mut a_lock = [0u8; CKPT_A_LOCK_LEN];
        a_lock.copy_from_slice(&b[CKPT_A_LOCK_OFFSET..CKPT_A_LOCK_OFFSET + CKPT_A_LOCK_LEN]);
        Self {
            n_backfill: get_u32(b, CKPT_N_BACKFILL_OFFSET),
            a_read_mark: std::array::from_fn(|i| get_u32(b, CKPT_A_READ_MARK_OFFSET + 4 * i)),
            a_lock,
            n_backfill_attempted: get_u32(b, CKPT_N_BACKFILL_ATTEMPTED_OFFSET),
            not_used0: get_u32(b, CKPT_NOT_USED0_OFFSET),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> WalIndexHdr {
        WalIndexHdr {
            i_version: WAL_INDEX_VERSION,
            unused: 0,
            i_change: 0x0102_0304,
            is_init: 1,
            big_end_cksum: 0,
            sz_page: 4096,
            mx_frame: 77,
            n_page: 12,
            a_frame_cksum: [0xdead_beef, 0x1234_5678],
            a_salt: salts_from_wal_salts([0x1122_3344, 0x5566_7788]),
            a_cksum: [0, 0],
        }
    }

    #[test]
    fn offsets_match_format_md() {
        // FORMAT.md §4.1 table.
        assert_eq!(
            [
                HDR_I_VERSION_OFFSET,
                HDR_UNUSED_OFFSET,
                HDR_I_CHANGE_OFFSET,
                HDR_IS_INIT_OFFSET,
                HDR_BIG_END_CKSUM_OFFSET,
                HDR_SZ_PAGE_OFFSET,
                HDR_MX_FRAME_OFFSET,
                HDR_N_PAGE_OFFSET,
                HDR_A_FRAME_CKSUM_OFFSET,
                HDR_A_SALT_OFFSET,
                HDR_A_CKSUM_OFFSET,
                WAL_INDEX_HDR_SIZE
            ],
            [0, 4, 8, 12, 13, 14, 16, 20, 24, 32, 40, 48]
        );
        assert_eq!(
            [
                CKPT_N_BACKFILL_OFFSET,
                CKPT_A_READ_MARK_OFFSET,
                CKPT_A_LOCK_OFFSET,
                CKPT_N_BACKFILL_ATTEMPTED_OFFSET,
                CKPT_NOT_USED0_OFFSET,
                WAL_CKPT_INFO_SIZE
            ],
            [0, 4, 24, 32, 36, 40]
        );
    }

    #[test]
    fn header_bytes_at_documented_offsets() {
        let mut h = sample();
        h.seal();
        let b = h.to_bytes();
        let u = |off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(u(0), 3_007_000);
        assert_eq!(u(4), 0);
        assert_eq!(u(8), 0x0102_0304);
        assert_eq!(b[12], 1);
        assert_eq!(b[13], 0);
        assert_eq!(u16::from_ne_bytes([b[14], b[15]]), 4096);
        assert_eq!(u(16), 77);
        assert_eq!(u(20), 12);
        assert_eq!([u(24), u(28)], [0xdead_beef, 0x1234_5678]);
        // Salts: raw big-endian bytes, whatever the host order.
        assert_eq!(
            &b[32..40],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!([u(40), u(44)], h.a_cksum);
        assert_eq!(WalIndexHdr::from_bytes(&b), h);
        assert_eq!(WalIndexHdr::from_words(&h.to_words()), h);
        assert_eq!(h.to_words()[2], 0x0102_0304);
    }

    #[test]
    fn checksum_is_native_wal_checksum_of_first_40_bytes() {
        let mut h = sample();
        h.seal();
        assert!(h.checksum_ok());
        // Independent computation: native words, s1 += a + s2; s2 += b + s1.
        let b = h.to_bytes();
        let (mut s1, mut s2) = (0u32, 0u32);
        for pair in b[..40].chunks_exact(8) {
            let a = u32::from_ne_bytes(pair[..4].try_into().unwrap());
            let c = u32::from_ne_bytes(pair[4..].try_into().unwrap());
            s1 = s1.wrapping_add(a).wrapping_add(s2);
            s2 = s2.wrapping_add(c).wrapping_add(s1);
        }
        assert_eq!(h.a_cksum, [s1, s2]);
        // Any change in bytes 0..40 breaks it; a change in a_cksum itself too.
        let mut bad = h;
        bad.n_page += 1;
        assert!(!bad.checksum_ok());
        let mut bad = h;
        bad.a_cksum[1] ^= 1;
        assert!(!bad.checksum_ok());
    }

    #[test]
    fn page_size_encoding() {
        let mut h = WalIndexHdr::default();
        assert_eq!(h.page_size(), None);
        h.set_page_size(PageSize::new(65536).unwrap());
        assert_eq!(h.sz_page, 1);
        assert_eq!(h.to_bytes()[14..16], 1u16.to_ne_bytes());
        assert_eq!(h.page_size().unwrap().get(), 65536);
        h.set_page_size(PageSize::new(512).unwrap());
        assert_eq!(h.sz_page, 512);
        assert_eq!(h.page_size().unwrap().get(), 512);
    }

    #[test]
    fn salts_round_trip() {
        let wal_hdr_bytes = [0xa1, 0xb2, 0xc3, 0xd4, 0x01, 0x02, 0x03, 0x04];
        let a_salt = salts_from_wal_header_bytes(&wal_hdr_bytes);
        let h = WalIndexHdr {
            a_salt,
            ..WalIndexHdr::default()
        };
        assert_eq!(h.salt_bytes(), wal_hdr_bytes);
        assert_eq!(h.wal_salts(), [0xa1b2_c3d4, 0x0102_0304]);
        let mut h2 = WalIndexHdr::default();
        h2.set_wal_salts([0xa1b2_c3d4, 0x0102_0304]);
        assert_eq!(h2.a_salt, a_salt);
        if cfg!(target_endian = "little") {
            assert_eq!(a_salt, [0xd4c3_b2a1, 0x0403_0201]);
        }
    }

    #[test]
    fn ckpt_info_layout() {
        let c = WalCkptInfo {
            n_backfill: 5,
            a_read_mark: [0, 9, 0xffff_ffff, 3, 4],
            a_lock: [0; 8],
            n_backfill_attempted: 7,
            not_used0: 0,
        };
        let b = c.to_bytes();
        let u = |off: usize| u32::from_ne_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(u(0), 5);
        assert_eq!([u(4), u(8), u(12), u(16), u(20)], c.a_read_mark);
        assert_eq!(&b[24..32], &[0; 8]);
        assert_eq!(u(32), 7);
        assert_eq!(u(36), 0);
        assert_eq!(WalCkptInfo::from_bytes(&b), c);
    }
}
