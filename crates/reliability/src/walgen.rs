//! An independent WAL encoder and reference scanner, written from FORMAT.md alone (it
//! shares no code with `fsqlite-wal`), used as the oracle of the fuzz bodies and of the
//! crash simulator's structural check.
//!
//! # Layout (all integers big-endian)
//!
//! ```text
//! header (HEADER_LEN = 32):  magic | version | page size | checkpoint seq | salt1 | salt2 | cksum1 | cksum2
//!                            0       4         8           12               16      20      24       28
//! frame i (1-based) at HEADER_LEN + (i-1) * (FRAME_HEADER_LEN + page_size):
//!   frame header (FRAME_HEADER_LEN = 24): page | db size after commit (0: not a commit) | salt1 | salt2 | cksum1 | cksum2
//!                                         0      4                                        8       12      16       20
//!   then page_size bytes of page data
//! ```
//!
//! Checksum: `s1 += a + s2; s2 += b + s1` (wrapping) over 8-byte word pairs, big-endian
//! words when the magic's low bit is set, little-endian otherwise. Header checksum: bytes
//! `0..24` from `(0, 0)`. Frame `i`: header bytes `0..8` then the page, from frame `i-1`'s
//! checksum (the header's for frame 1).
//!
//! Reference scan: the header is usable when the file is longer than 32 bytes, the magic
//! (low bit ignored) is `0x377f0682`, the page size is a power of two in `512..=65536`
//! and the checksum matches; a usable header with a version other than 3007000 makes the
//! WAL unreadable ([`RefScan::version_ok`] false). Frames are accepted in order while the
//! salts match, the page number is non-zero and the running checksum matches; the last
//! accepted frame with a non-zero db size is `mx_frame`.

/// Bytes of the WAL header.
pub const HEADER_LEN: usize = 32;
/// Bytes of a frame header.
pub const FRAME_HEADER_LEN: usize = 24;
/// The WAL magic (little-endian checksum words); `| 1` selects big-endian words.
pub const MAGIC: u32 = 0x377f_0682;
/// The WAL format version.
pub const VERSION: u32 = 3_007_000;
/// Offset of the checksummed part's end in a frame header (page + db size).
const FRAME_CKSUM_INPUT: usize = 8;
/// Offset of the salts in a frame header.
const FRAME_SALT: usize = 8;
/// Offset of the checksum in a frame header.
const FRAME_CKSUM: usize = 16;
/// Offset of the checksum in the WAL header.
const HDR_CKSUM: usize = 24;

fn be(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// The WAL checksum of `data` (a multiple of 8 bytes) from `init`.
pub fn checksum(big_endian_words: bool, data: &[u8], init: [u32; 2]) -> [u32; 2] {
    let [mut s1, mut s2] = init;
    for w in data.chunks_exact(8) {
        let (a, b) = if big_endian_words {
            (be(w, 0), be(w, 4))
        } else {
            (
                u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
                u32::from_le_bytes([w[4], w[5], w[6], w[7]]),
            )
        };
        s1 = s1.wrapping_add(a).wrapping_add(s2);
        s2 = s2.wrapping_add(b).wrapping_add(s1);
    }
    [s1, s2]
}

/// The header fields of a WAL to encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalSpec {
    /// Page size (written as is).
    pub page_size: u32,
    /// Big-endian checksum words (magic `0x377f0683`).
    pub big_endian: bool,
    /// Salt-1, salt-2.
    pub salt: [u32; 2],
    /// Checkpoint sequence.
    pub checkpoint_seq: u32,
    /// Format version (normally [`VERSION`]).
    pub version: u32,
}

/// One frame to encode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenFrame {
    /// Page number.
    pub page: u32,
    /// Database size after commit (0: not a commit frame).
    pub db_size: u32,
    /// Page data (`page_size` bytes).
    pub data: Vec<u8>,
}

/// The 32 header bytes of `spec`, checksum filled in.
pub fn encode_header(spec: &WalSpec) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    let magic = if spec.big_endian { MAGIC | 1 } else { MAGIC };
    for (i, v) in [
        magic,
        spec.version,
        spec.page_size,
        spec.checkpoint_seq,
        spec.salt[0],
        spec.salt[1],
    ]
    .iter()
    .enumerate()
    {
        h[4 * i..4 * i + 4].copy_from_slice(&v.to_be_bytes());
    }
    let c = checksum(spec.big_endian, &h[..HDR_CKSUM], [0, 0]);
    h[HDR_CKSUM..HDR_CKSUM + 4].copy_from_slice(&c[0].to_be_bytes());
    h[HDR_CKSUM + 4..].copy_from_slice(&c[1].to_be_bytes());
    h
}

/// A valid WAL image of `frames` (each frame's data must be `page_size` bytes).
pub fn encode(spec: &WalSpec, frames: &[GenFrame]) -> Vec<u8> {
    let h = encode_header(spec);
    let fs = FRAME_HEADER_LEN + spec.page_size as usize;
    let mut out = Vec::with_capacity(HEADER_LEN + frames.len() * fs);
    out.extend_from_slice(&h);
    let mut run = [be(&h, HDR_CKSUM), be(&h, HDR_CKSUM + 4)];
    for f in frames {
        let mut fh = [0u8; FRAME_HEADER_LEN];
        fh[..4].copy_from_slice(&f.page.to_be_bytes());
        fh[4..8].copy_from_slice(&f.db_size.to_be_bytes());
        fh[FRAME_SALT..FRAME_SALT + 4].copy_from_slice(&spec.salt[0].to_be_bytes());
        fh[FRAME_SALT + 4..FRAME_CKSUM].copy_from_slice(&spec.salt[1].to_be_bytes());
        run = checksum(spec.big_endian, &fh[..FRAME_CKSUM_INPUT], run);
        run = checksum(spec.big_endian, &f.data, run);
        fh[FRAME_CKSUM..FRAME_CKSUM + 4].copy_from_slice(&run[0].to_be_bytes());
        fh[FRAME_CKSUM + 4..].copy_from_slice(&run[1].to_be_bytes());
        out.extend_from_slice(&fh);
        out.extend_from_slice(&f.data);
    }
    out
}

/// Validity of a 32-byte header by the reference rules: `(usable, version_ok)`.
pub fn header_validity(h: &[u8]) -> (bool, bool) {
    if h.len() < HEADER_LEN {
        return (false, false);
    }
    let magic = be(h, 0);
    let ps = be(h, 8);
    let big = magic & 1 == 1;
    let usable = magic & !1 == MAGIC
        && ps.is_power_of_two()
        && (512..=65_536).contains(&ps)
        && checksum(big, &h[..HDR_CKSUM], [0, 0]) == [be(h, HDR_CKSUM), be(h, HDR_CKSUM + 4)];
    (usable, usable && be(h, 4) == VERSION)
}

/// What the reference scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefScan {
    /// The header is usable (magic, page size, checksum).
    pub header_ok: bool,
    /// The usable header has the known version.
    pub version_ok: bool,
    /// The header's page size (0 without a usable header).
    pub page_size: u32,
    /// Last accepted commit frame.
    pub mx_frame: u32,
    /// Its database size.
    pub n_page: u32,
    /// Last accepted frame.
    pub last_valid: u32,
    /// Accepted commit frames.
    pub commits: u32,
    /// Running checksum after `mx_frame` (`[0, 0]` when there is none).
    pub frame_cksum: [u32; 2],
    /// `(frame, page, byte offset of the page data)` of every accepted frame up to
    /// `mx_frame`.
    pub committed: Vec<(u32, u32, usize)>,
}

/// The reference scan of a WAL image (see the module doc).
pub fn scan(bytes: &[u8]) -> RefScan {
    let mut r = RefScan::default();
    if bytes.len() <= HEADER_LEN {
        return r;
    }
    let (ok, vok) = header_validity(bytes);
    r.header_ok = ok;
    r.version_ok = vok;
    if !vok {
        return r;
    }
    let h = &bytes[..HEADER_LEN];
    let big = be(h, 0) & 1 == 1;
    let ps = be(h, 8) as usize;
    r.page_size = ps as u32;
    let salt = [be(h, 16), be(h, 20)];
    let fs = FRAME_HEADER_LEN + ps;
    let n = (bytes.len() - HEADER_LEN) / fs;
    let mut run = [be(h, HDR_CKSUM), be(h, HDR_CKSUM + 4)];
    let mut pending: Vec<(u32, u32, usize)> = Vec::new();
    for i in 0..n {
        let off = HEADER_LEN + i * fs;
        let fh = &bytes[off..off + FRAME_HEADER_LEN];
        let page = be(fh, 0);
        if [be(fh, FRAME_SALT), be(fh, FRAME_SALT + 4)] != salt || page == 0 {
            break;
        }
        let c = checksum(big, &fh[..FRAME_CKSUM_INPUT], run);
        let c = checksum(big, &bytes[off + FRAME_HEADER_LEN..off + fs], c);
        if c != [be(fh, FRAME_CKSUM), be(fh, FRAME_CKSUM + 4)] {
            break;
        }
        run = c;
        let frame = (i + 1) as u32;
        r.last_valid = frame;
        pending.push((frame, page, off + FRAME_HEADER_LEN));
        let db_size = be(fh, 4);
        if db_size != 0 {
            r.mx_frame = frame;
            r.n_page = db_size;
            r.commits += 1;
            r.frame_cksum = c;
            r.committed.append(&mut pending);
        }
    }
    r
}

impl RefScan {
    /// The newest committed image offset of `page` (byte offset of its data), if any.
    pub fn newest(&self, page: u32) -> Option<usize> {
        self.committed
            .iter()
            .rev()
            .find(|(_, p, _)| *p == page)
            .map(|(_, _, off)| *off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_scan_round_trips() {
        let spec = WalSpec {
            page_size: 512,
            big_endian: true,
            salt: [1, 2],
            checkpoint_seq: 3,
            version: VERSION,
        };
        let frames: Vec<GenFrame> = (1..=5)
            .map(|i| GenFrame {
                page: i,
                db_size: if i % 2 == 0 { 9 } else { 0 },
                data: vec![i as u8; 512],
            })
            .collect();
        let img = encode(&spec, &frames);
        let s = scan(&img);
        assert!(s.header_ok && s.version_ok);
        assert_eq!(
            (s.mx_frame, s.last_valid, s.commits, s.n_page),
            (4, 5, 2, 9)
        );
        let mut bad = img.clone();
        bad[HEADER_LEN + 2 * (512 + 24) + 100] ^= 4;
        let s = scan(&bad);
        assert_eq!((s.mx_frame, s.last_valid), (2, 2));
    }
}
