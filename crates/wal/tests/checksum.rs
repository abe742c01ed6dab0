//! The fast WAL checksum is bit-identical to the scalar reference at every SIMD level this
//! CPU runs: every length up to three blocks and more, random start states, both word
//! orders, sub-slices at every offset mod 64; plus known vectors and the xxh3-128 trailer.

use fsqlite_error::FrankenError;
use fsqlite_wal::checksum::{
    ChecksumLevel, PAGE_CHECKSUM_RESERVED_BYTES, Xxh3Checksum128, page_digest, read_page_checksum,
    simd_level, verify_page_checksum, wal_checksum, wal_checksum_native, wal_checksum_scalar,
    wal_checksum_with, write_page_checksum,
};
use proptest::prelude::*;

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn all_levels_agree(data: &[u8], be: bool, seed: [u32; 2]) {
    let want = wal_checksum_scalar(data, be, seed);
    assert_eq!(
        wal_checksum(data, be, seed),
        want,
        "dispatch, len {}",
        data.len()
    );
    for level in ChecksumLevel::available() {
        assert_eq!(
            wal_checksum_with(level, data, be, seed),
            Some(want),
            "{level:?} len {} be {be} seed {seed:?}",
            data.len()
        );
    }
}

#[test]
fn levels_report_what_they_run() {
    let available = ChecksumLevel::available();
    assert!(available.contains(&ChecksumLevel::Scalar));
    assert!(available.contains(&ChecksumLevel::Portable));
    assert!(ChecksumLevel::ALL.iter().any(|l| l.name() == simd_level()));
    for level in ChecksumLevel::ALL {
        let r = wal_checksum_with(level, &[0u8; 64], false, [0, 0]);
        assert_eq!(r.is_some(), level.is_available());
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        assert_ne!(simd_level(), "portable");
    }
}

#[test]
fn exhaustive_lengths_up_to_three_pages() {
    // Three 4 KiB pages and more: several whole steps of every level's lanes (at most 128
    // words = 512 bytes) plus every possible tail length.
    let max = 3 * 4096 + 1024;
    let data = noise(max + 64, 7);
    for len in (0..=max).step_by(8) {
        let seed = [
            len as u32 ^ 0xa5a5_a5a5,
            (len as u32).wrapping_mul(0x9e37_79b9),
        ];
        for be in [false, true] {
            all_levels_agree(&data[..len], be, seed);
        }
    }
}

#[test]
fn every_alignment_and_word_order() {
    let data = noise(16384 + 128, 11);
    for offset in 0..64 {
        for len in [8usize, 64, 120, 4096, 4104, 8192 + 56, 16384] {
            for be in [false, true] {
                all_levels_agree(&data[offset..offset + len], be, [offset as u32, 3]);
            }
        }
    }
}

#[test]
fn extreme_values_wrap_identically() {
    for fill in [0x00u8, 0xff, 0x80, 0x7f] {
        let data = vec![fill; 3 * 4096 + 8];
        for seed in [
            [0, 0],
            [u32::MAX, u32::MAX],
            [u32::MAX, 0],
            [0x8000_0000, 1],
        ] {
            for be in [false, true] {
                all_levels_agree(&data, be, seed);
            }
        }
    }
}

#[test]
fn known_vectors() {
    // Hand-computed: words (1, 2): s1 = 0 + 1 + 0 = 1; s2 = 0 + 2 + 1 = 3.
    let le = [1u8, 0, 0, 0, 2, 0, 0, 0];
    assert_eq!(wal_checksum_scalar(&le, false, [0, 0]), [1, 3]);
    assert_eq!(wal_checksum(&le, false, [0, 0]), [1, 3]);
    let be = [0u8, 0, 0, 1, 0, 0, 0, 2];
    assert_eq!(wal_checksum(&be, true, [0, 0]), [1, 3]);
    // Then (3, 4) from (1, 3): s1 = 1 + 3 + 3 = 7; s2 = 3 + 4 + 7 = 14.
    let le2 = [1u8, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0];
    assert_eq!(wal_checksum(&le2, false, [0, 0]), [7, 14]);
    assert_eq!(
        wal_checksum_native(&le2, [0, 0]),
        wal_checksum(&le2, cfg!(target_endian = "big"), [0, 0])
    );
    assert_eq!(wal_checksum(&[], false, [5, 6]), [5, 6]);
}

#[test]
#[should_panic(expected = "multiple of 8")]
fn odd_lengths_are_a_caller_bug() {
    let _ = wal_checksum(&[0u8; 12], false, [0, 0]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn fast_equals_scalar(
        words in 0usize..3000,
        offset in 0usize..64,
        seed in any::<[u32; 2]>(),
        be in any::<bool>(),
        data_seed in any::<u64>(),
    ) {
        let len = words / 2 * 8;
        let data = noise(len + offset, data_seed);
        let slice = &data[offset..];
        let want = wal_checksum_scalar(slice, be, seed);
        prop_assert_eq!(wal_checksum(slice, be, seed), want);
        for level in ChecksumLevel::available() {
            prop_assert_eq!(wal_checksum_with(level, slice, be, seed), Some(want));
        }
    }

    #[test]
    fn chaining_equals_one_pass(split in 0usize..1200, total in 0usize..1200, seed in any::<[u32; 2]>()) {
        let total = total * 8;
        let split = (split * 8).min(total);
        let data = noise(total, 99);
        let one = wal_checksum(&data, false, seed);
        let two = wal_checksum(&data[split..], false, wal_checksum(&data[..split], false, seed));
        prop_assert_eq!(one, two);
    }
}

// ---- xxh3-128 trailer ----

#[test]
fn page_trailer_round_trip() {
    for len in [17usize, 512, 4096, 65536] {
        let mut page = noise(len, len as u64);
        let digest = write_page_checksum(&mut page).unwrap();
        let split = len - PAGE_CHECKSUM_RESERVED_BYTES;
        assert_eq!(digest, page_digest(&page[..split]));
        assert_eq!(
            digest.to_u128(),
            xxhash_rust_reference(&page[..split]),
            "digest is xxh3-128 of the content"
        );
        assert_eq!(&page[split..split + 8], &digest.low.to_le_bytes());
        assert_eq!(&page[split + 8..], &digest.high.to_le_bytes());
        assert_eq!(read_page_checksum(&page).unwrap(), digest);
        assert!(verify_page_checksum(&page).unwrap());
        page[len / 3] ^= 1;
        assert!(!verify_page_checksum(&page).unwrap());
        page[len / 3] ^= 1;
        page[len - 1] ^= 0x80;
        assert!(!verify_page_checksum(&page).unwrap());
    }
}

/// xxh3-128 straight from xxhash-rust, checking the low/high split API.md fixes.
fn xxhash_rust_reference(data: &[u8]) -> u128 {
    let v = xxhash_rust::xxh3::xxh3_128(data);
    let d = Xxh3Checksum128::from_u128(v);
    assert_eq!((d.low, d.high), (v as u64, (v >> 64) as u64));
    v
}

#[test]
fn page_digest_known_value() {
    // xxh3-128 of the empty input (seed 0), the published test vector.
    let d = page_digest(b"");
    assert_eq!(d.to_u128(), 0x99aa_06d3_0147_98d8_6001_c324_468d_497f);
}

#[test]
fn short_pages_are_out_of_range() {
    for len in [0usize, 1, 15, 16] {
        let mut page = vec![0u8; len];
        assert!(matches!(
            write_page_checksum(&mut page),
            Err(FrankenError::OutOfRange { .. })
        ));
        assert!(matches!(
            read_page_checksum(&page),
            Err(FrankenError::OutOfRange { .. })
        ));
        assert!(matches!(
            verify_page_checksum(&page),
            Err(FrankenError::OutOfRange { .. })
        ));
    }
}
