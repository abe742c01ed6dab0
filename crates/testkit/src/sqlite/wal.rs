//! An independent, deliberately simple reader of SQLite WAL files, used as an oracle
//! (it shares no code with `fsqlite-wal`). Facts from FORMAT.md §1–§3.
//!
//! # WAL header (32 bytes, eight big-endian u32)
//!
//! | off | field |
//! |---|---|
//! | [`HDR_MAGIC`] = 0 | magic `0x377f0682`, or `0x377f0683` when checksums use big-endian words |
//! | [`HDR_VERSION`] = 4 | format version, 3007000 |
//! | [`HDR_PAGE_SIZE`] = 8 | page size in bytes (65536 stored as 65536) |
//! | [`HDR_CKPT_SEQ`] = 12 | checkpoint sequence |
//! | [`HDR_SALT`] = 16 | salt-1, salt-2 |
//! | [`HDR_CKSUM`] = 24 | checksum of bytes `0..24`, starting state (0, 0) |
//!
//! # Frame header (24 bytes, six big-endian u32), then `page_size` bytes of page data
//!
//! | off | field |
//! |---|---|
//! | [`FRAME_PAGE`] = 0 | page number (≠ 0) |
//! | [`FRAME_DB_SIZE`] = 4 | database size in pages after the commit on a commit frame, else 0 |
//! | [`FRAME_SALT`] = 8 | copy of the WAL header salts |
//! | [`FRAME_CKSUM`] = 16 | cumulative checksum |
//!
//! Frame `i` (1-based) starts at `WAL_HEADER_SIZE + (i - 1) * (FRAME_HEADER_SIZE + page_size)`.
//!
//! # Checksum
//!
//! State `(s1, s2)`, wrapping u32 arithmetic; for each pair of words `(a, b)`:
//! `s1 += a + s2; s2 += b + s1`. Words are big-endian when the magic's low bit is 1, else
//! little-endian. Frame `k` continues from frame `k - 1`'s stored checksum (the header's for
//! frame 1) over its first 8 header bytes and then its page data.
//!
//! # Valid prefix ([`wal_scan`])
//!
//! Frames are checked in order; the first frame whose salts differ from the header's, whose
//! page number is 0, or whose checksum does not match ends the valid prefix. `mxFrame` is
//! the last valid frame with a nonzero db-size field (0 when there is none).

use fsqlite_error::{FrankenError, Result};

/// The WAL magic with the low (checksum byte order) bit clear.
pub const WAL_MAGIC: u32 = 0x377f_0682;
/// The only WAL format version SQLite writes and accepts.
pub const WAL_FORMAT_VERSION: u32 = 3_007_000;
/// Size of the WAL file header.
pub const WAL_HEADER_SIZE: usize = HDR_CKSUM + 8;
/// Size of a frame header.
pub const FRAME_HEADER_SIZE: usize = FRAME_CKSUM + 8;

/// Offset of the magic in the WAL header.
pub const HDR_MAGIC: usize = 0;
/// Offset of the format version in the WAL header.
pub const HDR_VERSION: usize = HDR_MAGIC + 4;
/// Offset of the page size in the WAL header.
pub const HDR_PAGE_SIZE: usize = HDR_VERSION + 4;
/// Offset of the checkpoint sequence in the WAL header.
pub const HDR_CKPT_SEQ: usize = HDR_PAGE_SIZE + 4;
/// Offset of salt-1 (salt-2 follows) in the WAL header.
pub const HDR_SALT: usize = HDR_CKPT_SEQ + 4;
/// Offset of checksum-1 (checksum-2 follows) in the WAL header.
pub const HDR_CKSUM: usize = HDR_SALT + 8;

/// Offset of the page number in a frame header.
pub const FRAME_PAGE: usize = 0;
/// Offset of the commit (db-size) field in a frame header.
pub const FRAME_DB_SIZE: usize = FRAME_PAGE + 4;
/// Offset of salt-1 (salt-2 follows) in a frame header.
pub const FRAME_SALT: usize = FRAME_DB_SIZE + 4;
/// Offset of checksum-1 (checksum-2 follows) in a frame header.
pub const FRAME_CKSUM: usize = FRAME_SALT + 8;

/// Smallest and largest page sizes SQLite accepts.
const MIN_PAGE_SIZE: u32 = 512;
const MAX_PAGE_SIZE: u32 = 65_536;

/// The decoded WAL file header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawWalHeader {
    /// Bytes `0..32` as read.
    pub raw: [u8; WAL_HEADER_SIZE],
    /// Magic number (`0x377f0682` or `0x377f0683`).
    pub magic: u32,
    /// Format version (3007000).
    pub version: u32,
    /// Page size in bytes.
    pub page_size: u32,
    /// Checkpoint sequence number.
    pub ckpt_seq: u32,
    /// Salt-1 and salt-2 as big-endian u32 values.
    pub salt: [u32; 2],
    /// The raw salt bytes (`16..24`), which the shm header's `aSalt` copies verbatim.
    pub salt_bytes: [u8; 8],
    /// Stored header checksum.
    pub checksum: [u32; 2],
}

impl RawWalHeader {
    /// Whether checksums use big-endian words (the magic's low bit).
    pub fn big_endian_words(&self) -> bool {
        self.magic & 1 == 1
    }

    /// Whether the magic is one of SQLite's two WAL magics.
    pub fn magic_ok(&self) -> bool {
        self.magic & !1 == WAL_MAGIC
    }

    /// Whether the page size is a power of two in 512..=65536.
    pub fn page_size_ok(&self) -> bool {
        self.page_size.is_power_of_two()
            && (MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&self.page_size)
    }

    /// Whether the stored header checksum matches bytes `0..24`.
    pub fn checksum_ok(&self) -> bool {
        wal_checksum(self.big_endian_words(), &self.raw[..HDR_CKSUM], [0, 0]) == self.checksum
    }

    /// Byte size of one frame (header plus page).
    pub fn frame_size(&self) -> usize {
        FRAME_HEADER_SIZE + self.page_size as usize
    }
}

/// One whole frame of a WAL file, decoded without any validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// 1-based frame number.
    pub index: u32,
    /// Byte offset of the frame header in the WAL file.
    pub offset: usize,
    /// Page number.
    pub page: u32,
    /// Commit field: db size in pages on a commit frame, else 0.
    pub db_size: u32,
    /// Salt-1 and salt-2 (big-endian u32 values).
    pub salt: [u32; 2],
    /// Stored cumulative checksum.
    pub checksum: [u32; 2],
    /// The page image.
    pub data: Vec<u8>,
}

impl RawFrame {
    /// Whether this is the last frame of a transaction.
    pub fn is_commit(&self) -> bool {
        self.db_size != 0
    }
}

/// The result of applying SQLite's valid-prefix rule to a WAL file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalScan {
    /// The header.
    pub header: RawWalHeader,
    /// Every whole frame in the file, valid or not.
    pub frames: Vec<RawFrame>,
    /// Number of frames in the valid prefix.
    pub valid_frames: u32,
    /// Last valid commit frame (0 if none): what recovery sets `mxFrame` to.
    pub mx_frame: u32,
    /// Database size in pages from that commit frame (0 if none).
    pub n_page: u32,
    /// Running checksum after frame `mx_frame` (the header's if `mx_frame` is 0).
    pub frame_cksum: [u32; 2],
}

impl WalScan {
    /// The committed frames (`1..=mx_frame`).
    pub fn committed(&self) -> &[RawFrame] {
        &self.frames[..self.mx_frame as usize]
    }

    /// The newest committed image of every page, by page number.
    pub fn committed_pages(&self) -> std::collections::BTreeMap<u32, &[u8]> {
        self.committed()
            .iter()
            .map(|f| (f.page, f.data.as_slice()))
            .collect()
    }
}

fn be32(bytes: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
}

/// SQLite's WAL checksum of `data` (a multiple of 8 bytes) continued from `init`, with
/// big-endian words when `big_endian_words`, else little-endian.
pub fn wal_checksum(big_endian_words: bool, data: &[u8], init: [u32; 2]) -> [u32; 2] {
    debug_assert!(
        data.len().is_multiple_of(8),
        "checksummed length must be a multiple of 8"
    );
    let [mut s1, mut s2] = init;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian_words {
            (be32(pair, 0), be32(pair, 4))
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s1 = s1.wrapping_add(a).wrapping_add(s2);
        s2 = s2.wrapping_add(b).wrapping_add(s1);
    }
    [s1, s2]
}

/// Decodes the 32-byte WAL header (no validation; see the `*_ok` methods).
pub fn read_wal_header(wal: &[u8]) -> Result<RawWalHeader> {
    let Some(head) = wal.get(..WAL_HEADER_SIZE) else {
        return Err(FrankenError::wal_corrupt(format!(
            "WAL image is {} bytes, shorter than its {WAL_HEADER_SIZE}-byte header",
            wal.len()
        )));
    };
    let mut raw = [0u8; WAL_HEADER_SIZE];
    raw.copy_from_slice(head);
    let mut salt_bytes = [0u8; 8];
    salt_bytes.copy_from_slice(&raw[HDR_SALT..HDR_SALT + 8]);
    Ok(RawWalHeader {
        raw,
        magic: be32(&raw, HDR_MAGIC),
        version: be32(&raw, HDR_VERSION),
        page_size: be32(&raw, HDR_PAGE_SIZE),
        ckpt_seq: be32(&raw, HDR_CKPT_SEQ),
        salt: [be32(&raw, HDR_SALT), be32(&raw, HDR_SALT + 4)],
        salt_bytes,
        checksum: [be32(&raw, HDR_CKSUM), be32(&raw, HDR_CKSUM + 4)],
    })
}

/// Decodes every whole frame after the header, valid or not (a partial trailing frame is
/// ignored). Fails only if the header is missing or its page size is not a SQLite page size.
pub fn read_wal_frames(wal: &[u8]) -> Result<Vec<RawFrame>> {
    let header = read_wal_header(wal)?;
    if !header.page_size_ok() {
        return Err(FrankenError::wal_corrupt(format!(
            "WAL header page size {} at offset {HDR_PAGE_SIZE} is not a power of two in \
             {MIN_PAGE_SIZE}..={MAX_PAGE_SIZE}",
            header.page_size
        )));
    }
    let frame_size = header.frame_size();
    let count = (wal.len() - WAL_HEADER_SIZE) / frame_size;
    let mut frames = Vec::with_capacity(count);
    for i in 0..count {
        let offset = WAL_HEADER_SIZE + i * frame_size;
        let h = &wal[offset..offset + FRAME_HEADER_SIZE];
        frames.push(RawFrame {
            index: (i + 1) as u32,
            offset,
            page: be32(h, FRAME_PAGE),
            db_size: be32(h, FRAME_DB_SIZE),
            salt: [be32(h, FRAME_SALT), be32(h, FRAME_SALT + 4)],
            checksum: [be32(h, FRAME_CKSUM), be32(h, FRAME_CKSUM + 4)],
            data: wal[offset + FRAME_HEADER_SIZE..offset + frame_size].to_vec(),
        });
    }
    Ok(frames)
}

/// Applies SQLite's recovery rule (FORMAT.md §3) to a WAL image. A header with a bad
/// magic, version, page size or checksum yields an empty valid prefix (SQLite then treats
/// the WAL as empty), not an error; only an image shorter than the header is an error.
pub fn wal_scan(wal: &[u8]) -> Result<WalScan> {
    let header = read_wal_header(wal)?;
    let header_ok = header.magic_ok()
        && header.version == WAL_FORMAT_VERSION
        && header.page_size_ok()
        && header.checksum_ok();
    let frames = if header.page_size_ok() {
        read_wal_frames(wal)?
    } else {
        Vec::new()
    };
    let mut scan = WalScan {
        frame_cksum: header.checksum,
        header,
        frames,
        valid_frames: 0,
        mx_frame: 0,
        n_page: 0,
    };
    if !header_ok {
        return Ok(scan);
    }
    let big = scan.header.big_endian_words();
    let mut running = scan.header.checksum;
    for frame in &scan.frames {
        if frame.salt != scan.header.salt || frame.page == 0 {
            break;
        }
        let head = &wal[frame.offset..frame.offset + FRAME_SALT];
        running = wal_checksum(big, head, running);
        running = wal_checksum(big, &frame.data, running);
        if running != frame.checksum {
            break;
        }
        scan.valid_frames = frame.index;
        if frame.is_commit() {
            scan.mx_frame = frame.index;
            scan.n_page = frame.db_size;
            scan.frame_cksum = running;
        }
    }
    Ok(scan)
}
