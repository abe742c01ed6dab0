//! Checksums: SQLite's cumulative WAL checksum and the xxh3-128 page trailer.
//!
//! (The fast closed form and the page trailer are being implemented; the signatures
//! below are fixed.)

/// Bytes in the WAL file header.
pub const WAL_HEADER_SIZE: usize = 32;
/// Bytes in a WAL frame header.
pub const WAL_FRAME_HEADER_SIZE: usize = 24;

/// SQLite's `walChecksumBytes`, the plain reference form: `data.len()` must be a multiple
/// of 8; words are read big-endian when `big_endian_words`, else little-endian; for each
/// pair `(a, b)`: `s1 += a + s2; s2 += b + s1` (wrapping).
///
/// # Panics
/// If `data.len()` is not a multiple of 8 (a caller bug: every WAL input is).
pub fn wal_checksum_scalar(data: &[u8], big_endian_words: bool, seed: [u32; 2]) -> [u32; 2] {
    assert!(data.len() % 8 == 0, "WAL checksum input must be a multiple of 8 bytes");
    let [mut s1, mut s2] = seed;
    for pair in data.chunks_exact(8) {
        let (a, b) = if big_endian_words {
            (
                u32::from_be_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_be_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
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

/// SQLite's WAL checksum, fastest available form (bit-identical to
/// [`wal_checksum_scalar`]).
pub fn wal_checksum(data: &[u8], big_endian_words: bool, seed: [u32; 2]) -> [u32; 2] {
    wal_checksum_scalar(data, big_endian_words, seed)
}

/// The checksum in the host's native word order (the WAL-index header checksum).
pub fn wal_checksum_native(data: &[u8], seed: [u32; 2]) -> [u32; 2] {
    wal_checksum(data, cfg!(target_endian = "big"), seed)
}
