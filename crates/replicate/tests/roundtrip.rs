//! Property tests: round trips, single-bit flips, truncations.

use fsqlite_replicate::ltx::{self, CHECKSUM_FLAG, HEADER_FLAG_NO_CHECKSUM, LtxHeader, Page};
use proptest::prelude::*;

/// A page image: runs of a few byte values, so LZ4 has both matches and literals.
fn page_data(page_size: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(page_size);
    while out.len() < page_size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % 40) as usize + 1;
        let byte = if x & 0x100 == 0 { 0 } else { (x >> 24) as u8 };
        for _ in 0..run.min(page_size - out.len()) {
            out.push(byte);
        }
        if x & 0x200 != 0 {
            out.push((x >> 32) as u8);
            out.truncate(page_size);
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Case {
    header: LtxHeader,
    pages: Vec<Page>,
    post: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(vec![512u32, 1024, 4096]),
        any::<bool>(),
        any::<bool>(),
        prop::collection::btree_set(1u32..60, 0..12),
        0u32..20,
        (1u64..1000, 0u64..1000),
        any::<(i64, u64, u64, u64)>(),
        prop::option::of((1i64..1 << 40, 0i64..1 << 30, any::<u32>(), any::<u32>())),
    )
        .prop_map(
            |(
                page_size,
                snapshot,
                no_checksum,
                pgnos,
                extra,
                (min, span),
                (ts, node, pre, post),
                wal,
            )| {
                let mut header = LtxHeader {
                    page_size,
                    timestamp_ms: ts,
                    node_id: node,
                    ..LtxHeader::default()
                };
                if let Some((off, size, s1, s2)) = wal {
                    header.wal_offset = off;
                    header.wal_size = size;
                    header.wal_salt1 = s1;
                    header.wal_salt2 = s2;
                }
                if no_checksum {
                    header.flags = HEADER_FLAG_NO_CHECKSUM;
                }
                let ps = page_size as usize;
                let (pages, post) = if snapshot {
                    header.min_txid = 1;
                    header.max_txid = 1 + span;
                    header.commit = pgnos.len() as u32;
                    let pages: Vec<Page> = (1..=header.commit)
                        .map(|p| Page {
                            pgno: p,
                            data: page_data(ps, node ^ u64::from(p)),
                        })
                        .collect();
                    let post = if no_checksum {
                        0
                    } else {
                        ltx::checksum_pages(&pages)
                    };
                    (pages, post)
                } else {
                    header.min_txid = min + 1;
                    header.max_txid = min + 1 + span;
                    header.commit = pgnos.iter().max().copied().unwrap_or(0) + extra;
                    if !no_checksum {
                        header.pre_apply_checksum = pre | CHECKSUM_FLAG;
                    }
                    let pages = pgnos
                        .iter()
                        .map(|&p| Page {
                            pgno: p,
                            data: page_data(ps, node ^ u64::from(p)),
                        })
                        .collect();
                    let post = if no_checksum {
                        0
                    } else if header.commit == 0 {
                        CHECKSUM_FLAG
                    } else {
                        post | CHECKSUM_FLAG
                    };
                    (pages, post)
                };
                Case {
                    header,
                    pages,
                    post,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn encode_decode_round_trip(c in case()) {
        let bytes = ltx::encode(&c.header, &c.pages, c.post).expect("encode");
        let f = ltx::decode(&bytes).expect("decode");
        prop_assert_eq!(&f.header, &c.header);
        prop_assert_eq!(&f.pages, &c.pages);
        prop_assert_eq!(f.post_apply_checksum, c.post);
        prop_assert_eq!(ltx::file_checksum(&bytes).expect("file checksum"), f.file_checksum);
        prop_assert_eq!(ltx::encode_file(&f).expect("re-encode"), bytes);
    }

    /// A flipped bit is rejected, or (where LZ4 can spell the same page two ways, e.g. a
    /// match offset inside a run of zeros) decodes to exactly the original content.
    #[test]
    fn single_bit_flips_are_caught(c in case(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let bytes = ltx::encode(&c.header, &c.pages, c.post).expect("encode");
        let mut bad = bytes.clone();
        let i = pos.index(bad.len());
        bad[i] ^= 1 << bit;
        if let Ok(f) = ltx::decode(&bad) {
            prop_assert_eq!(&f.header, &c.header, "flip at byte {} bit {} changed the header", i, bit);
            prop_assert_eq!(&f.pages, &c.pages, "flip at byte {} bit {} changed a page", i, bit);
            prop_assert_eq!(f.post_apply_checksum, c.post);
        }
    }

}

proptest! {
    // Each case decodes every prefix (quadratic in the file size): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn truncations_are_rejected(c in case()) {
        let bytes = ltx::encode(&c.header, &c.pages, c.post).expect("encode");
        for len in 0..bytes.len() {
            prop_assert!(ltx::decode(&bytes[..len]).is_err(), "truncation to {} of {} decoded", len, bytes.len());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(ltx::decode(&longer).is_err(), "an extra byte decoded");
    }
}

/// Every single-bit flip of a few small files, checksummed and not.
#[test]
fn every_bit_flip_of_small_files() {
    for no_checksum in [false, true] {
        for snapshot in [true, false] {
            let pages: Vec<Page> = (1..=3)
                .map(|p| Page {
                    pgno: p,
                    data: page_data(512, 99 + u64::from(p)),
                })
                .collect();
            let mut h = if snapshot {
                LtxHeader::snapshot(512, 3, 5, 1_700_000_000_000)
            } else {
                LtxHeader::incremental(512, 4, 6, 9, 1_700_000_000_000, CHECKSUM_FLAG | 0x1234)
            };
            let mut post = if snapshot {
                ltx::checksum_pages(&pages)
            } else {
                CHECKSUM_FLAG | 0x4d
            };
            if no_checksum {
                h.flags = HEADER_FLAG_NO_CHECKSUM;
                h.pre_apply_checksum = 0;
                post = 0;
            }
            let bytes = ltx::encode(&h, &pages, post).expect("encode");
            let mut same = 0;
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut bad = bytes.clone();
                    bad[i] ^= 1 << bit;
                    if let Ok(f) = ltx::decode(&bad) {
                        assert_eq!(f.header, h, "flip {i}/{bit} changed the header");
                        assert_eq!(f.pages, pages, "flip {i}/{bit} changed the pages");
                        same += 1;
                    }
                }
            }
            eprintln!(
                "no_checksum={no_checksum} snapshot={snapshot}: {} bits, {same} decode to the same content",
                bytes.len() * 8
            );
        }
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let e = ltx::decode(b"LTX2").unwrap_err().to_string();
    assert!(e.contains("100-byte header"), "{e}");
    let mut b = vec![0u8; 200];
    b[..4].copy_from_slice(b"XTL1");
    let e = ltx::decode(&b).unwrap_err().to_string();
    assert!(e.contains("magic") && e.contains("offset 0"), "{e}");
    let h = LtxHeader::snapshot(512, 1, 1, 0);
    let pages = vec![Page {
        pgno: 1,
        data: vec![1; 512],
    }];
    let mut bytes = ltx::encode(&h, &pages, ltx::checksum_pages(&pages)).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 1;
    let e = ltx::decode(&bytes).unwrap_err().to_string();
    assert!(e.contains("file checksum") && e.contains("expected"), "{e}");
    let e = ltx::encode(
        &LtxHeader {
            page_size: 1000,
            ..h.clone()
        },
        &pages,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("page size") && e.contains("1000"), "{e}");
}

#[test]
fn apply_checks_pre_and_post() {
    let ps = 512u32;
    let snap_pages: Vec<Page> = (1..=2)
        .map(|p| Page {
            pgno: p,
            data: vec![p as u8; 512],
        })
        .collect();
    let snap = ltx::decode(
        &ltx::encode(
            &LtxHeader::snapshot(ps, 2, 1, 0),
            &snap_pages,
            ltx::checksum_pages(&snap_pages),
        )
        .unwrap(),
    )
    .unwrap();
    let mut db = Vec::new();
    ltx::apply(&mut db, &snap).unwrap();
    let pre = ltx::database_checksum(&db, ps);
    let mut after = db.clone();
    after.extend_from_slice(&[9; 512]);
    let inc_pages = vec![Page {
        pgno: 3,
        data: vec![9; 512],
    }];
    let inc = ltx::decode(
        &ltx::encode(
            &LtxHeader::incremental(ps, 3, 2, 2, 0, pre),
            &inc_pages,
            ltx::database_checksum(&after, ps),
        )
        .unwrap(),
    )
    .unwrap();
    let mut wrong = db.clone();
    wrong[10] ^= 1;
    let e = ltx::apply(&mut wrong, &inc).unwrap_err().to_string();
    assert!(e.contains("pre-apply checksum"), "{e}");
    ltx::apply(&mut db, &inc).unwrap();
    assert_eq!(db, after);
    // Shrink to one page.
    let one = db[..512].to_vec();
    let shrink = ltx::decode(
        &ltx::encode(
            &LtxHeader::incremental(ps, 1, 3, 3, 0, ltx::database_checksum(&db, ps)),
            &[],
            ltx::database_checksum(&one, ps),
        )
        .unwrap(),
    )
    .unwrap();
    ltx::apply(&mut db, &shrink).unwrap();
    assert_eq!(db, one);
}
