//! Throughput of SQLite's WAL checksum at every level this CPU runs (the scalar reference,
//! the portable closed form, AVX2, AVX-512) on a cached 4 KiB page and a 1 MiB buffer, in
//! both word orders, and of the xxh3-128 page digest.
//!
//! `cargo bench -p fsqlite-wal --bench checksum -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fsqlite_wal::checksum::{
    ChecksumLevel, page_digest, simd_level, wal_checksum, wal_checksum_with,
};

fn buffer(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The speed-up of each level over the scalar reference, measured by alternating the two
/// (41 rounds, median ratio), so that load from other processes hits both alike.
fn interleaved_ratios() {
    let time = |level: ChecksumLevel, data: &[u8], be: bool, iters: usize| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(wal_checksum_with(
                level,
                black_box(data),
                be,
                black_box([1, 2]),
            ));
        }
        start.elapsed().as_secs_f64()
    };
    for len in [4096usize, 1 << 20] {
        let data = buffer(len);
        let iters = (4 << 20) / len;
        for be in [false, true] {
            for level in ChecksumLevel::available().into_iter().skip(1) {
                let mut ratios: Vec<f64> = (0..41)
                    .map(|_| {
                        let slow = time(ChecksumLevel::Scalar, &data, be, iters);
                        slow / time(level, &data, be, iters)
                    })
                    .collect();
                ratios.sort_by(f64::total_cmp);
                eprintln!(
                    "ratio {:>6} bytes {} {:>8} vs scalar: median {:.2}x (p10 {:.2}x, p90 {:.2}x)",
                    len,
                    if be { "be" } else { "le" },
                    level.name(),
                    ratios[20],
                    ratios[4],
                    ratios[36]
                );
            }
        }
    }
}

fn checksum_levels(c: &mut Criterion) {
    eprintln!("wal_checksum uses the {} level on this CPU", simd_level());
    interleaved_ratios();
    for (name, len) in [("4KiB", 4096usize), ("1MiB", 1 << 20)] {
        let data = buffer(len);
        let mut group = c.benchmark_group(format!("wal_checksum/{name}"));
        group.throughput(Throughput::Bytes(len as u64));
        for level in ChecksumLevel::available() {
            for be in [false, true] {
                let order = if be { "be" } else { "le" };
                group.bench_function(format!("{}/{order}", level.name()), |b| {
                    b.iter(|| wal_checksum_with(level, black_box(&data), be, black_box([1, 2])));
                });
            }
        }
        group.bench_function("dispatch/le", |b| {
            b.iter(|| wal_checksum(black_box(&data), false, black_box([1, 2])));
        });
        group.finish();
    }
}

fn xxh3_digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("xxh3_128");
    for (name, len) in [("4KiB", 4096usize), ("1MiB", 1 << 20)] {
        let data = buffer(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(name, |b| b.iter(|| page_digest(black_box(&data))));
    }
    group.finish();
}

criterion_group!(benches, checksum_levels, xxh3_digest);
criterion_main!(benches);
