//! Recovery: `Wal::open` on a database whose `-wal` (64 MiB, written by real SQLite with
//! 4 KiB pages) has no `-shm`, so the WAL-index is rebuilt from the WAL (PERFORMANCE.md:
//! "recovery … ≤ 0.25× SQLite's time"; the side-by-side run against SQLite itself is
//! `cargo xtask bench-vs-sqlite`). Each iteration deletes the `-shm` (untimed), times
//! `Wal::open`, and closes without a checkpoint. The WAL stays in the page cache, so this
//! measures the CPU side: reads, checksums, index build, `-shm` setup.
//!
//! Then the scan alone (valid prefix + checksums, no index), as `WalFile::scan` does it
//! and as three prototypes would (for comparison only; not the library's code):
//!
//! | bench | what it does |
//! |---|---|
//! | `scan/walfile` | `WalFile::scan` (the library): on a WAL this large, two threads claim 256 KiB chunks in turn, each frame's checksum seeded with the previous frame's stored one, chunk starts chained by the merge (`crate::scan_parallel`) |
//! | `scan/proto_sequential` | the library's previous loop: one thread, 1 MiB `pread`s, checksum chained frame by frame (the sequential reference) |
//! | `scan/proto_2threads` | two threads `pread` a half each and compute every frame's checksum from seed 0 (the closed form is linear in the seed); one cheap pass then chains `c_i = A·c_{i−1} + g_i` and checks each stored checksum |
//! | `scan/proto_mmap` | the WAL mapped read-only, checksum chain straight from the mapping (no copy to a buffer) |
//! | `scan/proto_mmap_2threads` | both |
//!
//! `cargo bench -p fsqlite-wal --bench recovery -- --warm-up-time 1 --measurement-time 5`

mod common;

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs};
use fsqlite_wal::checksum::wal_checksum;
use fsqlite_wal::{Wal, WalFile, WalOptions};

const WAL_BYTES: u64 = 64 << 20;

fn recovery(c: &mut Criterion) {
    let cx = Cx::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let t = Instant::now();
    let src = common::sqlite_wal(dir.path(), "src.db", WAL_BYTES);
    let db = dir.path().join("copy.db");
    common::fresh_copy(&src, &db);
    let wal_len = std::fs::metadata(common::sibling(&db, "-wal"))
        .expect("wal")
        .len();
    eprintln!("SQLite wrote a {wal_len}-byte WAL in {:?}", t.elapsed());
    let shm = common::sibling(&db, "-shm");
    let vfs = Arc::new(UnixVfs::new());
    let options = WalOptions {
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    };
    let open = |n: u64| {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            let _ = std::fs::remove_file(&shm);
            let t = Instant::now();
            let wal = Wal::open(&cx, Arc::clone(&vfs), &db, options.clone()).expect("open");
            total += t.elapsed();
            assert_eq!(wal.recoveries(), 1, "the open must have rebuilt the index");
            assert!(wal.cached_header().mx_frame > 0);
            wal.close(&cx).expect("close");
        }
        total
    };
    let mut group = c.benchmark_group("recovery");
    group.throughput(Throughput::Bytes(wal_len));
    group.sample_size(20);
    group.bench_function("open_64MiB_sqlite_wal_no_shm", |b| b.iter_custom(open));
    group.finish();
}

/// What every prototype scan returns: (mx_frame, last valid frame).
type ScanResult = (u32, u32);

/// The WAL header facts a scan needs.
#[derive(Clone, Copy)]
struct Hdr {
    page_size: usize,
    be: bool,
    salt: [u8; 8],
    checksum: [u32; 2],
    frames: usize,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn read_hdr(file: &File) -> Hdr {
    let mut h = [0u8; 32];
    file.read_exact_at(&mut h, 0).expect("read the WAL header");
    let page_size = be32(&h[8..]) as usize;
    let len = file.metadata().expect("stat").len() as usize;
    Hdr {
        page_size,
        be: be32(&h) & 1 == 1,
        salt: h[16..24].try_into().expect("8 bytes"),
        checksum: [be32(&h[24..]), be32(&h[28..])],
        frames: (len - 32) / (page_size + 24),
    }
}

/// One frame's facts from the seed-free pass: `g` = checksum from seed (0, 0).
#[derive(Clone, Copy, Default)]
struct Part {
    g: [u32; 2],
    stored: [u32; 2],
    pgno: u32,
    commit: u32,
    salt_ok: bool,
}

fn part(frame: &[u8], h: &Hdr) -> Part {
    let (head, page) = frame.split_at(24);
    Part {
        g: wal_checksum(page, h.be, wal_checksum(&head[..8], h.be, [0, 0])),
        stored: [be32(&head[16..]), be32(&head[20..])],
        pgno: be32(head),
        commit: be32(&head[4..]),
        salt_ok: head[8..16] == h.salt,
    }
}

/// The linear part of one frame's checksum: `A·s` = checksum of zeros from seed `s`.
fn seed_matrix(h: &Hdr) -> [[u32; 2]; 2] {
    let zeros = vec![0u8; h.page_size + 8];
    [
        wal_checksum(&zeros, h.be, [1, 0]),
        wal_checksum(&zeros, h.be, [0, 1]),
    ]
}

/// Chains the parts: `c_i = A·c_{i-1} + g_i`; stops at the first invalid frame.
fn chain(parts: &[Part], h: &Hdr) -> ScanResult {
    let a = seed_matrix(h);
    let mut c = h.checksum;
    let (mut mx, mut last) = (0, 0);
    for (i, p) in parts.iter().enumerate() {
        if !p.salt_ok || p.pgno == 0 {
            break;
        }
        let next = [
            a[0][0]
                .wrapping_mul(c[0])
                .wrapping_add(a[1][0].wrapping_mul(c[1]))
                .wrapping_add(p.g[0]),
            a[0][1]
                .wrapping_mul(c[0])
                .wrapping_add(a[1][1].wrapping_mul(c[1]))
                .wrapping_add(p.g[1]),
        ];
        if next != p.stored {
            break;
        }
        c = next;
        last = i as u32 + 1;
        if p.commit != 0 {
            mx = last;
        }
    }
    (mx, last)
}

/// Seed-free parts of frames `range` via 1 MiB `pread`s.
fn parts_pread(file: &File, h: &Hdr, range: std::ops::Range<usize>) -> Vec<Part> {
    let fsz = h.page_size + 24;
    let per = (1 << 20) / fsz;
    let mut buf = vec![0u8; per * fsz];
    let mut out = Vec::with_capacity(range.len());
    let mut f = range.start;
    while f < range.end {
        let n = per.min(range.end - f);
        let chunk = &mut buf[..n * fsz];
        file.read_exact_at(chunk, 32 + (f * fsz) as u64)
            .expect("pread");
        out.extend(chunk.chunks_exact(fsz).map(|fr| part(fr, h)));
        f += n;
    }
    out
}

fn scan_2threads(file: &File, h: &Hdr) -> ScanResult {
    let mid = h.frames / 2;
    let (a, b) = std::thread::scope(|s| {
        let t = s.spawn(|| parts_pread(file, h, mid..h.frames));
        let a = parts_pread(file, h, 0..mid);
        (a, t.join().expect("scan thread"))
    });
    let mut parts = a;
    parts.extend(b);
    chain(&parts, h)
}

/// A read-only shared mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: std::ptr::NonNull<std::ffi::c_void>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing `&[u8]` views of it
// between threads is as safe as sharing any immutable byte slice.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, populate: bool) -> Self {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        let len = file.metadata().expect("stat").len() as usize;
        let mut flags = MapFlags::MAP_SHARED;
        if populate {
            flags |= MapFlags::MAP_POPULATE;
        }
        // SAFETY: a fresh read-only mapping of a whole file we keep open while it is
        // used; nothing truncates the benchmark's private copy meanwhile.
        let ptr = unsafe {
            mmap(
                None,
                std::num::NonZeroUsize::new(len).expect("non-empty WAL"),
                ProtFlags::PROT_READ,
                flags,
                file,
                0,
            )
        }
        .expect("mmap");
        Self { ptr, len }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for the life of `self` (see `new`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `new` made; no view of it outlives `self`.
        let _ = unsafe { nix::sys::mman::munmap(self.ptr, self.len) };
    }
}

/// One thread, 1 MiB `pread`s, the checksum chained frame by frame.
fn scan_sequential(file: &File, h: &Hdr) -> ScanResult {
    let fsz = h.page_size + 24;
    let per = (1 << 20) / fsz;
    let mut buf = vec![0u8; per * fsz];
    let mut c = h.checksum;
    let (mut mx, mut last) = (0, 0);
    let mut f = 0;
    'chunks: while f < h.frames {
        let n = per.min(h.frames - f);
        let chunk = &mut buf[..n * fsz];
        file.read_exact_at(chunk, 32 + (f * fsz) as u64)
            .expect("pread");
        for fr in chunk.chunks_exact(fsz) {
            let (head, page) = fr.split_at(24);
            if head[8..16] != h.salt || be32(head) == 0 {
                break 'chunks;
            }
            let next = wal_checksum(page, h.be, wal_checksum(&head[..8], h.be, c));
            if next != [be32(&head[16..]), be32(&head[20..])] {
                break 'chunks;
            }
            c = next;
            f += 1;
            last = f as u32;
            if be32(&head[4..]) != 0 {
                mx = last;
            }
        }
    }
    (mx, last)
}

fn scan_mmap(file: &File, h: &Hdr, populate: bool) -> ScanResult {
    let map = Mapping::new(file, populate);
    let fsz = h.page_size + 24;
    let mut c = h.checksum;
    let (mut mx, mut last) = (0, 0);
    for (i, fr) in map.bytes()[32..32 + h.frames * fsz]
        .chunks_exact(fsz)
        .enumerate()
    {
        let (head, page) = fr.split_at(24);
        if head[8..16] != h.salt || be32(head) == 0 {
            break;
        }
        let n = wal_checksum(page, h.be, wal_checksum(&head[..8], h.be, c));
        if n != [be32(&head[16..]), be32(&head[20..])] {
            break;
        }
        c = n;
        last = i as u32 + 1;
        if be32(&head[4..]) != 0 {
            mx = last;
        }
    }
    (mx, last)
}

fn scan_mmap_2threads(file: &File, h: &Hdr) -> ScanResult {
    let map = Mapping::new(file, false);
    let fsz = h.page_size + 24;
    let frames = &map.bytes()[32..32 + h.frames * fsz];
    let mid = h.frames / 2;
    let (lo, hi) = frames.split_at(mid * fsz);
    let parts_of = |b: &[u8]| {
        b.chunks_exact(fsz)
            .map(|fr| part(fr, h))
            .collect::<Vec<_>>()
    };
    let (mut a, b) = std::thread::scope(|s| {
        let t = s.spawn(|| parts_of(hi));
        (parts_of(lo), t.join().expect("scan thread"))
    });
    a.extend(b);
    chain(&a, h)
}

fn scans(c: &mut Criterion) {
    let cx = Cx::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let src = common::sqlite_wal(dir.path(), "src.db", WAL_BYTES);
    // The same kind of copy `recovery` opens (fsynced, so no writeback runs meanwhile).
    let db = dir.path().join("copy.db");
    common::fresh_copy(&src, &db);
    let wal_path = common::sibling(&db, "-wal");
    let file = File::open(&wal_path).expect("open the WAL");
    let h = read_hdr(&file);
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::WAL;
    let (vfile, _) = UnixVfs::new()
        .open(&cx, Some(&wal_path), flags)
        .expect("open the WAL through UnixVfs");
    let reference = WalFile::scan(&cx, &vfile, |_, _, _| Ok(())).expect("scan");
    let want = (reference.mx_frame, reference.last_valid_frame);
    assert_eq!(scan_sequential(&file, &h), want);
    assert_eq!(scan_2threads(&file, &h), want);
    assert_eq!(scan_mmap(&file, &h, false), want);
    assert_eq!(scan_mmap(&file, &h, true), want);
    assert_eq!(scan_mmap_2threads(&file, &h), want);

    let mut group = c.benchmark_group("scan");
    group.throughput(Throughput::Bytes(file.metadata().expect("stat").len()));
    group.sample_size(20);
    group.bench_function("walfile", |b| {
        b.iter(|| black_box(WalFile::scan(&cx, &vfile, |_, _, _| Ok(())).expect("scan")));
    });
    group.bench_function("proto_sequential", |b| {
        b.iter(|| black_box(scan_sequential(&file, &h)));
    });
    group.bench_function("proto_2threads", |b| {
        b.iter(|| black_box(scan_2threads(&file, &h)));
    });
    group.bench_function("proto_mmap", |b| {
        b.iter(|| black_box(scan_mmap(&file, &h, false)));
    });
    group.bench_function("proto_mmap_populate", |b| {
        b.iter(|| black_box(scan_mmap(&file, &h, true)));
    });
    group.bench_function("proto_mmap_2threads", |b| {
        b.iter(|| black_box(scan_mmap_2threads(&file, &h)));
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    recovery(&mut c);
    scans(&mut c);
    c.final_summary();
}
