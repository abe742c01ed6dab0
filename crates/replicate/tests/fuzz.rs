//! `fuzz_decode` over a few hundred thousand random and mutated inputs, time-bounded.

use std::time::{Duration, Instant};

use fsqlite_replicate::fuzz_decode;
use fsqlite_replicate::ltx::{self, CHECKSUM_FLAG, HEADER_FLAG_NO_CHECKSUM, LtxHeader, Page};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let p = |n: u32, b: u8| Page {
        pgno: n,
        data: (0..512).map(|i| if i % 3 == 0 { b } else { 0 }).collect(),
    };
    let snap = vec![p(1, 1), p(2, 2)];
    let mut out = vec![
        ltx::encode(
            &LtxHeader::snapshot(512, 2, 3, 1),
            &snap,
            ltx::checksum_pages(&snap),
        )
        .unwrap(),
        ltx::encode(
            &LtxHeader::incremental(512, 9, 4, 4, 2, CHECKSUM_FLAG | 0x5),
            &[p(3, 3), p(9, 9)],
            CHECKSUM_FLAG | 0x6,
        )
        .unwrap(),
    ];
    let mut h = LtxHeader::incremental(512, 0, 7, 8, 0, 0);
    h.flags = HEADER_FLAG_NO_CHECKSUM;
    out.push(ltx::encode(&h, &[], 0).unwrap());
    out
}

#[test]
fn fuzz_decode_survives_random_and_mutated_inputs() {
    let seeds = seeds();
    for s in &seeds {
        fuzz_decode(s);
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let start = Instant::now();
    let budget = Duration::from_millis(1500);
    let target = 300_000u64;
    let mut n = 0u64;
    while n < target && start.elapsed() < budget {
        let mut input = match rng.below(8) {
            0 => (0..rng.below(300)).map(|_| rng.next() as u8).collect(),
            _ => seeds[rng.below(seeds.len())].clone(),
        };
        for _ in 0..=rng.below(4) {
            if input.is_empty() {
                break;
            }
            let len = input.len();
            match rng.below(6) {
                0 => {
                    let i = rng.below(len);
                    input[i] ^= 1 << rng.below(8);
                }
                1 => {
                    let i = rng.below(len);
                    input[i] = rng.next() as u8;
                }
                2 => input.truncate(rng.below(len)),
                3 => {
                    let i = rng.below(len);
                    input.insert(i, rng.next() as u8);
                }
                4 => {
                    // Big values in length-like positions (page size, commit, sizes).
                    let i = rng.below(len.saturating_sub(4));
                    if i + 4 <= len {
                        input[i..i + 4].copy_from_slice(&[0xff, 0xff, 0xff, rng.next() as u8]);
                    }
                }
                _ => {
                    let i = rng.below(len);
                    input.remove(i);
                }
            }
        }
        fuzz_decode(&input);
        n += 1;
    }
    eprintln!("fuzz_decode: {n} inputs in {:?}", start.elapsed());
    assert!(n >= 100_000, "only {n} inputs ran in the time budget");
}
