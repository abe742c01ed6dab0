//! The WAL file format: the 32-byte file header and the 24-byte frame header.
//!
//! Every multi-byte integer in the WAL file is a **big-endian** `u32`, whatever the host.
//! (Only the *checksum words* may be read in either order; see rule 3 below.)
//!
//! # Layout
//!
//! ```text
//!  file offset 0                                   32
//!  +-----------------------------------------------+------------------+--------------+--
//!  | WAL header (32 bytes)                         | frame 1 header   | frame 1 page | frame 2 ...
//!  +-----------------------------------------------+------------------+--------------+--
//!                                                   <-- 24 bytes -->  <- page_size ->
//!  frame i (1-based) starts at  32 + (i - 1) * (page_size + 24)       (frame_offset)
//! ```
//!
//! WAL header ([`WalHeader`]):
//!
//! | offset | constant | field |
//! |---|---|---|
//! | 0  | [`HDR_MAGIC_OFFSET`] | magic: `0x377f0682` (little-endian checksum words) or `0x377f0683` (big-endian words) |
//! | 4  | [`HDR_VERSION_OFFSET`] | format version, [`WAL_FORMAT_VERSION`] = 3007000 |
//! | 8  | [`HDR_PAGE_SIZE_OFFSET`] | page size in bytes; 65536 is stored as 65536 (never as 1) |
//! | 12 | [`HDR_CHECKPOINT_SEQ_OFFSET`] | checkpoint sequence; never validated, only checksummed |
//! | 16 | [`HDR_SALT1_OFFSET`] | salt-1: random at creation, +1 (wrapping) at each restart |
//! | 20 | [`HDR_SALT2_OFFSET`] | salt-2: fresh random at creation and at each restart |
//! | 24 | [`HDR_CHECKSUM1_OFFSET`] | checksum-1 of bytes `0..24`, start state `(0, 0)` |
//! | 28 | [`HDR_CHECKSUM2_OFFSET`] | checksum-2 |
//!
//! Frame header ([`FrameHeader`]), followed by `page_size` bytes of page data:
//!
//! | offset | constant | field |
//! |---|---|---|
//! | 0  | [`FRAME_PAGE_NUMBER_OFFSET`] | page number (never 0) |
//! | 4  | [`FRAME_DB_SIZE_OFFSET`] | commit marker: database size in pages after the commit on the last frame of a transaction; 0 on every other frame |
//! | 8  | [`FRAME_SALT1_OFFSET`] | copy of the header's salt-1 |
//! | 12 | [`FRAME_SALT2_OFFSET`] | copy of the header's salt-2 |
//! | 16 | [`FRAME_CHECKSUM1_OFFSET`] | cumulative checksum-1 (stored big-endian whatever word order computed it) |
//! | 20 | [`FRAME_CHECKSUM2_OFFSET`] | cumulative checksum-2 |
//!
//! # Validity rules
//!
//! The header is usable when (checked in this order, as SQLite's `walIndexRecover` does):
//!
//! 1. the file is longer than [`WAL_HEADER_SIZE`] bytes (a file of 32 bytes or less is an
//!    empty WAL);
//! 2. `magic & !1 == 0x377f0682`;
//! 3. the page size is a power of two in `512..=65536`;
//! 4. the checksum of bytes `0..24`, in the word order the magic's low bit selects, equals
//!    the stored checksum.
//!
//! Failing any of 1–4 makes the whole WAL **empty** (not an error: a torn or zeroed header
//! is what a crash leaves). Only then is the version checked:
//!
//! 5. a header that passed 1–4 but whose version is not 3007000 is an error
//!    (SQLITE_CANTOPEN): the file is a WAL of a format we do not know.
//!
//! Frame `i` is valid when:
//!
//! 6. its salts equal the header's salts (frames of an older WAL generation fail here);
//! 7. its page number is not 0;
//! 8. its stored checksum equals the running checksum: the header checksum, chained through
//!    every earlier frame, then over this frame's header bytes `0..8` and its page data.
//!
//! Frames are read in order and the first invalid frame ends the **valid prefix**: nothing
//! after it is used, because every later checksum chains through it. Of the valid prefix,
//! only frames up to the last commit frame (non-zero db size) are committed.
//!
//! # The checksum
//!
//! ```text
//! checksum(bytes, (s1, s2)):            // bytes.len() % 8 == 0
//!     for each 8 bytes as words (a, b)  // big-endian words if magic & 1, else little-endian
//!         s1 = s1 + a + s2              // wrapping
//!         s2 = s2 + b + s1
//!     return (s1, s2)
//!
//! header.checksum = checksum(header[0..24], (0, 0))
//! c_0 = header.checksum
//! c_i = checksum(page_i, checksum(frame_header_i[0..8], c_{i-1}))   // salts excluded
//! ```
//!
//! The salts are compared, not checksummed. A writer continues the chain from the running
//! checksum of the last frame it keeps (SQLite's `aFrameCksum`, published in the WAL-index
//! header).

use std::fmt;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::PageSize;

use crate::checksum::wal_checksum;
pub use crate::checksum::{WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE};

/// The WAL magic with little-endian checksum words. `WAL_MAGIC | 1` selects big-endian
/// words; a reader accepts both.
pub const WAL_MAGIC: u32 = 0x377f_0682;
/// The WAL magic with big-endian checksum words.
pub const WAL_MAGIC_BIG_ENDIAN: u32 = WAL_MAGIC | 1;
/// The only WAL format version (SQLite's `WAL_MAX_VERSION`).
pub const WAL_FORMAT_VERSION: u32 = 3_007_000;

/// Bytes in one header field.
const U32_BYTES: usize = 4;

/// Offset of the magic in the WAL header.
pub const HDR_MAGIC_OFFSET: usize = 0;
/// Offset of the format version.
pub const HDR_VERSION_OFFSET: usize = HDR_MAGIC_OFFSET + U32_BYTES;
/// Offset of the page size.
pub const HDR_PAGE_SIZE_OFFSET: usize = HDR_VERSION_OFFSET + U32_BYTES;
/// Offset of the checkpoint sequence.
pub const HDR_CHECKPOINT_SEQ_OFFSET: usize = HDR_PAGE_SIZE_OFFSET + U32_BYTES;
/// Offset of salt-1.
pub const HDR_SALT1_OFFSET: usize = HDR_CHECKPOINT_SEQ_OFFSET + U32_BYTES;
/// Offset of salt-2.
pub const HDR_SALT2_OFFSET: usize = HDR_SALT1_OFFSET + U32_BYTES;
/// Offset of checksum-1; the checksum covers the bytes before it.
pub const HDR_CHECKSUM1_OFFSET: usize = HDR_SALT2_OFFSET + U32_BYTES;
/// Offset of checksum-2.
pub const HDR_CHECKSUM2_OFFSET: usize = HDR_CHECKSUM1_OFFSET + U32_BYTES;
/// Bytes of the WAL header covered by its checksum.
pub const HDR_CHECKSUMMED_BYTES: usize = HDR_CHECKSUM1_OFFSET;

/// Offset of the page number in a frame header.
pub const FRAME_PAGE_NUMBER_OFFSET: usize = 0;
/// Offset of the commit marker (database size after commit, or 0).
pub const FRAME_DB_SIZE_OFFSET: usize = FRAME_PAGE_NUMBER_OFFSET + U32_BYTES;
/// Offset of the salt-1 copy.
pub const FRAME_SALT1_OFFSET: usize = FRAME_DB_SIZE_OFFSET + U32_BYTES;
/// Offset of the salt-2 copy.
pub const FRAME_SALT2_OFFSET: usize = FRAME_SALT1_OFFSET + U32_BYTES;
/// Offset of cumulative checksum-1.
pub const FRAME_CHECKSUM1_OFFSET: usize = FRAME_SALT2_OFFSET + U32_BYTES;
/// Offset of cumulative checksum-2.
pub const FRAME_CHECKSUM2_OFFSET: usize = FRAME_CHECKSUM1_OFFSET + U32_BYTES;
/// Bytes of the frame header covered by the checksum (page number and commit marker).
pub const FRAME_CHECKSUMMED_BYTES: usize = FRAME_SALT1_OFFSET;

const _: () = assert!(HDR_CHECKSUM2_OFFSET + U32_BYTES == WAL_HEADER_SIZE);
const _: () = assert!(FRAME_CHECKSUM2_OFFSET + U32_BYTES == WAL_FRAME_HEADER_SIZE);

fn get_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_be_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

fn put_u32(bytes: &mut [u8], offset: usize, value: u32) {
    bytes[offset..offset + U32_BYTES].copy_from_slice(&value.to_be_bytes());
}

/// Bytes of one frame: header plus page.
pub const fn frame_size(page_size: u32) -> u64 {
    page_size as u64 + WAL_FRAME_HEADER_SIZE as u64
}

/// File offset of frame `frame_no` (1-based): `32 + (frame_no - 1) * (page_size + 24)`.
/// Frame 0 does not exist; it maps to where frame 1 starts.
pub const fn frame_offset(frame_no: u32, page_size: u32) -> u64 {
    WAL_HEADER_SIZE as u64 + frame_no.saturating_sub(1) as u64 * frame_size(page_size)
}

/// Whole frames a file of `file_size` bytes can hold (SQLite's `iLastFrame`); a partial
/// trailing frame does not count. Saturates at `u32::MAX`.
pub const fn frames_in_file(file_size: u64, page_size: u32) -> u32 {
    if file_size <= WAL_HEADER_SIZE as u64 {
        return 0;
    }
    let n = (file_size - WAL_HEADER_SIZE as u64) / frame_size(page_size);
    if n > u32::MAX as u64 {
        u32::MAX
    } else {
        n as u32
    }
}

/// The running checksum after a frame: `seed` chained over the frame header's first 8
/// bytes (`page_number`, `db_size_after_commit`) and then the page data.
///
/// # Panics
/// If `page.len()` is not a multiple of 8 (every page size is).
pub fn frame_checksum(
    seed: [u32; 2],
    page_number: u32,
    db_size_after_commit: u32,
    page: &[u8],
    big_endian_words: bool,
) -> [u32; 2] {
    let mut head = [0u8; FRAME_CHECKSUMMED_BYTES];
    put_u32(&mut head, FRAME_PAGE_NUMBER_OFFSET, page_number);
    put_u32(&mut head, FRAME_DB_SIZE_OFFSET, db_size_after_commit);
    let s = wal_checksum(&head, big_endian_words, seed);
    wal_checksum(page, big_endian_words, s)
}

/// The 32-byte WAL file header, decoded (all fields as stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct WalHeader {
    /// [`WAL_MAGIC`] or [`WAL_MAGIC_BIG_ENDIAN`].
    pub magic: u32,
    /// [`WAL_FORMAT_VERSION`].
    pub format_version: u32,
    /// Page size in bytes (65536 stored as 65536).
    pub page_size: u32,
    /// Checkpoint sequence number.
    pub checkpoint_seq: u32,
    /// Salt-1 and salt-2.
    pub salt: [u32; 2],
    /// The header checksum (of bytes `0..24`).
    pub checksum: [u32; 2],
}

impl WalHeader {
    /// A header for a new WAL generation, checksum filled in.
    pub fn new(
        page_size: PageSize,
        checkpoint_seq: u32,
        salt: [u32; 2],
        big_endian_cksum: bool,
    ) -> Self {
        let mut h = Self {
            magic: if big_endian_cksum {
                WAL_MAGIC_BIG_ENDIAN
            } else {
                WAL_MAGIC
            },
            format_version: WAL_FORMAT_VERSION,
            page_size: page_size.get(),
            checkpoint_seq,
            salt,
            checksum: [0, 0],
        };
        h.checksum = h.compute_checksum();
        h
    }

    /// True when checksum words are big-endian (the magic's low bit).
    pub const fn big_endian_checksum(&self) -> bool {
        self.magic & 1 == 1
    }

    /// The page size as a [`PageSize`], `None` when the stored value is not a valid size.
    pub const fn page_size_checked(&self) -> Option<PageSize> {
        PageSize::new(self.page_size)
    }

    /// The header of the next WAL generation (SQLite's `walRestartHdr`): salt-1 + 1
    /// (wrapping), salt-2 = `new_salt2`, checkpoint sequence + 1 (wrapping), checksum
    /// recomputed; magic, version and page size unchanged.
    #[must_use]
    pub fn restarted(&self, new_salt2: u32) -> Self {
        let mut h = *self;
        h.salt = [self.salt[0].wrapping_add(1), new_salt2];
        h.checkpoint_seq = self.checkpoint_seq.wrapping_add(1);
        h.checksum = h.compute_checksum();
        h
    }

    /// The 24 checksummed bytes (everything before the checksum).
    fn checksummed_bytes(&self) -> [u8; HDR_CHECKSUMMED_BYTES] {
        let mut b = [0u8; HDR_CHECKSUMMED_BYTES];
        put_u32(&mut b, HDR_MAGIC_OFFSET, self.magic);
        put_u32(&mut b, HDR_VERSION_OFFSET, self.format_version);
        put_u32(&mut b, HDR_PAGE_SIZE_OFFSET, self.page_size);
        put_u32(&mut b, HDR_CHECKPOINT_SEQ_OFFSET, self.checkpoint_seq);
        put_u32(&mut b, HDR_SALT1_OFFSET, self.salt[0]);
        put_u32(&mut b, HDR_SALT2_OFFSET, self.salt[1]);
        b
    }

    /// The checksum of bytes `0..24` of this header, start state `(0, 0)`, in the word
    /// order its magic selects.
    pub fn compute_checksum(&self) -> [u32; 2] {
        wal_checksum(
            &self.checksummed_bytes(),
            self.big_endian_checksum(),
            [0, 0],
        )
    }

    /// The 32 bytes on disk. The stored checksum is **computed** here from the other
    /// fields (the `checksum` field is not consulted).
    pub fn encode(&self) -> [u8; WAL_HEADER_SIZE] {
        let mut out = [0u8; WAL_HEADER_SIZE];
        out[..HDR_CHECKSUMMED_BYTES].copy_from_slice(&self.checksummed_bytes());
        let [c1, c2] = self.compute_checksum();
        put_u32(&mut out, HDR_CHECKSUM1_OFFSET, c1);
        put_u32(&mut out, HDR_CHECKSUM2_OFFSET, c2);
        out
    }

    /// Decodes the fields without checking anything (`bytes` must hold 32 bytes).
    pub fn decode_unchecked(bytes: &[u8; WAL_HEADER_SIZE]) -> Self {
        Self {
            magic: get_u32(bytes, HDR_MAGIC_OFFSET),
            format_version: get_u32(bytes, HDR_VERSION_OFFSET),
            page_size: get_u32(bytes, HDR_PAGE_SIZE_OFFSET),
            checkpoint_seq: get_u32(bytes, HDR_CHECKPOINT_SEQ_OFFSET),
            salt: [
                get_u32(bytes, HDR_SALT1_OFFSET),
                get_u32(bytes, HDR_SALT2_OFFSET),
            ],
            checksum: [
                get_u32(bytes, HDR_CHECKSUM1_OFFSET),
                get_u32(bytes, HDR_CHECKSUM2_OFFSET),
            ],
        }
    }

    /// Decodes and validates a header in SQLite's order: length, magic, page size,
    /// checksum, then version (rules 1–5 of the module doc). Only
    /// [`WalHeaderError::BadVersion`] means "cannot open"; every other error means the WAL
    /// is empty.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, WalHeaderError> {
        let Some(bytes) = bytes.first_chunk::<WAL_HEADER_SIZE>() else {
            return Err(WalHeaderError::TooShort { len: bytes.len() });
        };
        let h = Self::decode_unchecked(bytes);
        if h.magic & !1 != WAL_MAGIC {
            return Err(WalHeaderError::BadMagic { found: h.magic });
        }
        if PageSize::new(h.page_size).is_none() {
            return Err(WalHeaderError::BadPageSize { found: h.page_size });
        }
        let computed = h.compute_checksum();
        if computed != h.checksum {
            return Err(WalHeaderError::BadChecksum {
                stored: h.checksum,
                computed,
            });
        }
        if h.format_version != WAL_FORMAT_VERSION {
            return Err(WalHeaderError::BadVersion {
                found: h.format_version,
            });
        }
        Ok(h)
    }
}

/// Why a WAL header is not usable (see [`WalHeader::decode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WalHeaderError {
    /// Fewer than 32 bytes.
    TooShort {
        /// Bytes available.
        len: usize,
    },
    /// The magic is neither `0x377f0682` nor `0x377f0683`.
    BadMagic {
        /// The stored magic.
        found: u32,
    },
    /// The page size is not a power of two in `512..=65536`.
    BadPageSize {
        /// The stored page size.
        found: u32,
    },
    /// The stored header checksum does not match bytes `0..24`.
    BadChecksum {
        /// The stored checksum.
        stored: [u32; 2],
        /// The checksum of the stored bytes.
        computed: [u32; 2],
    },
    /// The header is intact but its version is not 3007000.
    BadVersion {
        /// The stored version.
        found: u32,
    },
}

impl WalHeaderError {
    /// True for the one error SQLite reports (SQLITE_CANTOPEN) instead of treating the WAL
    /// as empty: an intact header of an unknown version.
    pub const fn is_cannot_open(&self) -> bool {
        matches!(self, Self::BadVersion { .. })
    }
}

impl fmt::Display for WalHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(
                f,
                "the WAL header needs {WAL_HEADER_SIZE} bytes but only {len} are present"
            ),
            Self::BadMagic { found } => write!(
                f,
                "bad WAL magic {found:#010x} (expected {WAL_MAGIC:#010x} or {WAL_MAGIC_BIG_ENDIAN:#010x})"
            ),
            Self::BadPageSize { found } => write!(
                f,
                "bad WAL page size {found} (must be a power of two in 512..=65536)"
            ),
            Self::BadChecksum { stored, computed } => write!(
                f,
                "WAL header checksum mismatch: stored {:#010x} {:#010x}, computed {:#010x} {:#010x}",
                stored[0], stored[1], computed[0], computed[1]
            ),
            Self::BadVersion { found } => write!(
                f,
                "unsupported WAL format version {found} (expected {WAL_FORMAT_VERSION})"
            ),
        }
    }
}

impl std::error::Error for WalHeaderError {}

/// The 24-byte frame header, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameHeader {
    /// The page this frame holds (0 makes the frame invalid).
    pub page_number: u32,
    /// Database size in pages after the commit this frame ends; 0 for a non-commit frame.
    pub db_size_after_commit: u32,
    /// Copies of the WAL header's salts.
    pub salt: [u32; 2],
    /// The cumulative checksum through this frame.
    pub checksum: [u32; 2],
}

impl FrameHeader {
    /// True when this frame ends a transaction.
    pub const fn is_commit(&self) -> bool {
        self.db_size_after_commit != 0
    }

    /// The 24 bytes on disk (fields as they are; nothing is computed).
    pub fn encode(&self) -> [u8; WAL_FRAME_HEADER_SIZE] {
        let mut out = [0u8; WAL_FRAME_HEADER_SIZE];
        self.encode_into(&mut out);
        out
    }

    /// Writes the 24 bytes into the start of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than 24 bytes.
    pub fn encode_into(&self, out: &mut [u8]) {
        put_u32(out, FRAME_PAGE_NUMBER_OFFSET, self.page_number);
        put_u32(out, FRAME_DB_SIZE_OFFSET, self.db_size_after_commit);
        put_u32(out, FRAME_SALT1_OFFSET, self.salt[0]);
        put_u32(out, FRAME_SALT2_OFFSET, self.salt[1]);
        put_u32(out, FRAME_CHECKSUM1_OFFSET, self.checksum[0]);
        put_u32(out, FRAME_CHECKSUM2_OFFSET, self.checksum[1]);
    }

    /// Decodes the fields of a 24-byte frame header.
    pub fn from_bytes(bytes: &[u8; WAL_FRAME_HEADER_SIZE]) -> Self {
        Self {
            page_number: get_u32(bytes, FRAME_PAGE_NUMBER_OFFSET),
            db_size_after_commit: get_u32(bytes, FRAME_DB_SIZE_OFFSET),
            salt: [
                get_u32(bytes, FRAME_SALT1_OFFSET),
                get_u32(bytes, FRAME_SALT2_OFFSET),
            ],
            checksum: [
                get_u32(bytes, FRAME_CHECKSUM1_OFFSET),
                get_u32(bytes, FRAME_CHECKSUM2_OFFSET),
            ],
        }
    }

    /// Decodes the first 24 bytes of `bytes`; fewer is `OutOfRange`. Nothing is validated
    /// (validity depends on the WAL header and the previous frame).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        bytes
            .first_chunk::<WAL_FRAME_HEADER_SIZE>()
            .map(Self::from_bytes)
            .ok_or_else(|| {
                FrankenError::out_of_range(
                    format!("WAL frame header length (needs {WAL_FRAME_HEADER_SIZE} bytes)"),
                    bytes.len(),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_chain() {
        assert_eq!(HDR_VERSION_OFFSET, 4);
        assert_eq!(HDR_PAGE_SIZE_OFFSET, 8);
        assert_eq!(HDR_CHECKPOINT_SEQ_OFFSET, 12);
        assert_eq!(HDR_SALT1_OFFSET, 16);
        assert_eq!(HDR_SALT2_OFFSET, 20);
        assert_eq!(HDR_CHECKSUM1_OFFSET, 24);
        assert_eq!(FRAME_SALT1_OFFSET, 8);
        assert_eq!(FRAME_CHECKSUM1_OFFSET, 16);
        assert_eq!(frame_offset(1, 4096), 32);
        assert_eq!(frame_offset(3, 4096), 32 + 2 * 4120);
        assert_eq!(frames_in_file(32 + 2 * 4120 + 100, 4096), 2);
        assert_eq!(frames_in_file(32, 4096), 0);
    }

    #[test]
    fn header_round_trip_and_errors() {
        let h = WalHeader::new(PageSize::new(65536).unwrap(), 7, [1, 2], false);
        let b = h.encode();
        assert_eq!(&b[8..12], &65536u32.to_be_bytes());
        assert_eq!(WalHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[0] ^= 0x10;
        assert!(matches!(
            WalHeader::decode(&bad),
            Err(WalHeaderError::BadMagic { .. })
        ));
        let mut bad = b;
        bad[17] ^= 1;
        assert!(matches!(
            WalHeader::decode(&bad),
            Err(WalHeaderError::BadChecksum { .. })
        ));
        assert!(matches!(
            WalHeader::decode(&b[..31]),
            Err(WalHeaderError::TooShort { len: 31 })
        ));
    }
}
