//! Scanning the valid prefix of a synthetic 64 MiB WAL (4 KiB pages, commits of 16 frames)
//! in a temporary file through `UnixVfs` with `WalFile::scan`: on a WAL this large (and two
//! cores), two threads `pread` 256 KiB chunks in turn and checksum them (the closed form),
//! the calling thread merging the chunks in order. The file is in the page cache, so this
//! measures the CPU side of recovery.
//!
//! `cargo bench -p fsqlite-wal --bench scan -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fsqlite_types::{Cx, PageNumber, PageSize, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs};
use fsqlite_wal::wal::{SyncMode, WalFile};

const WAL_BYTES: u64 = 64 << 20;
const PAGE_SIZE: u32 = 4096;
const FRAMES_PER_COMMIT: usize = 16;

fn scan_64mib(c: &mut Criterion) {
    let cx = Cx::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db-wal");
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL;
    let (file, _) = UnixVfs::new().open(&cx, Some(&path), flags).expect("open");
    let mut wal = WalFile::create(
        &cx,
        file,
        PageSize::new(PAGE_SIZE).expect("page size"),
        [0x1111_2222, 0x3333_4444],
        0,
        false,
    )
    .expect("create")
    .with_sync_mode(SyncMode::Off);

    let frame = u64::from(PAGE_SIZE) + 24;
    let frames = ((WAL_BYTES - 32) / frame) as usize;
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let pages: Vec<Vec<u8>> = (0..FRAMES_PER_COMMIT)
        .map(|_| {
            (0..PAGE_SIZE)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        })
        .collect();
    let mut written = 0usize;
    while written < frames {
        let n = FRAMES_PER_COMMIT.min(frames - written);
        let batch: Vec<(PageNumber, &[u8])> = (0..n)
            .map(|i| {
                let page = PageNumber::new(((written + i) % 5000) as u32 + 1).expect("nonzero");
                (page, pages[i].as_slice())
            })
            .collect();
        wal.append_frames(&cx, &batch, Some(5000)).expect("append");
        written += n;
    }
    let file = wal.into_file();

    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(frames as u64 * frame + 32));
    group.sample_size(20);
    group.bench_function("64MiB_4KiB_pages", |b| {
        b.iter(|| {
            let mut n = 0u32;
            let r = WalFile::scan(&cx, &file, |_, _, _| {
                n += 1;
                Ok(())
            })
            .expect("scan");
            assert_eq!(r.last_valid_frame as usize, frames);
            black_box((r, n))
        });
    });
    group.finish();
}

criterion_group!(benches, scan_64mib);
criterion_main!(benches);
