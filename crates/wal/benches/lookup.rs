//! WAL-index page lookup on a 100k-frame WAL (PERFORMANCE.md: "page lookup in the
//! WAL-index (100k-frame WAL) ≤ 50 ns median").
//!
//! The index is built with `WalIndex::append` over `HeapRegions` (25 regions): frame `f`
//! holds a page drawn uniformly from `1..=DB_PAGES` (50,000 pages, so a page has ~2
//! versions and its newest one is anywhere in the WAL). Lookups are of pages drawn from a
//! precomputed random sequence, `min_frame = 1`, `mx_frame = 100,000`:
//!
//! | bench | what is looked up |
//! |---|---|
//! | `find_frame/hit` | random pages of the database, nearly all in the WAL (SQLite's `walFindFrame` through the region cache) |
//! | `find_frame/miss` | pages past the database: every region is probed (the worst case) |
//! | `find_frame/newest_region` | pages written in the last region only |
//! | `segments/hit` | the same as `hit`, straight over `HashSegment`s (no region cache) |
//!
//! | `frame_map/{hit,miss}` | the library's connection-private map page → newest frame ([`FrameMap`], what `ReadTxn::read_page` uses), built from the `aPgno` arrays (build cost printed per frame) |
//!
//! One prototype, for comparison only (not the library's code):
//!
//! | bench | what it measures |
//! |---|---|
//! | `proto_plain/{hit,miss,newest_region}` | the same `walFindFrame` loop over plain `u32`/`u16` slices copied out of the regions: the cost when every shm word access inlines (the build time of such arrays with `walIndexAppend` is printed too; it must equal the library's regions) |
//!
//! Each iteration does [`BATCH`] lookups; ns/lookup is printed at the end as the median
//! over 31 timed batches, with p10/p90.
//!
//! `cargo bench -p fsqlite-wal --bench lookup -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::ShmRegion;
use fsqlite_wal::frame_map::FrameMap;
use fsqlite_wal::wal_index::{
    HASH_TABLE_OFFSET, HASHTABLE_NSLOT, HashSegment, HeapRegions, WALINDEX_PGSZ, WalIndex,
    frame_region, region_apgno_offset, region_capacity, region_i_zero, wal_hash,
};

const FRAMES: u32 = 100_000;
const DB_PAGES: u32 = 50_000;
/// Lookups per timed iteration.
const BATCH: usize = 4096;

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
}

struct Fixture {
    cx: Cx,
    index: WalIndex,
    heap: HeapRegions,
    /// The page of every frame (index 0 = frame 1).
    frame_pages: Vec<u32>,
}

fn build() -> Fixture {
    let cx = Cx::new();
    let mut heap = HeapRegions::new();
    let mut index = WalIndex::new();
    let mut rng = Xorshift(0x9e37_79b9_7f4a_7c15);
    let mut frame_pages = Vec::with_capacity(FRAMES as usize);
    let t = Instant::now();
    for frame in 1..=FRAMES {
        let page = rng.below(DB_PAGES) + 1;
        index
            .append(
                &cx,
                &mut heap,
                frame,
                PageNumber::new(page).expect("nonzero"),
            )
            .expect("append");
        frame_pages.push(page);
    }
    eprintln!(
        "built a {FRAMES}-frame WAL-index ({} regions) in {:?} ({:.1} ns/append)",
        heap.len(),
        t.elapsed(),
        t.elapsed().as_secs_f64() * 1e9 / f64::from(FRAMES)
    );
    Fixture {
        cx,
        index,
        heap,
        frame_pages,
    }
}

fn find_all(f: &mut Fixture, pages: &[PageNumber]) -> u64 {
    let mut acc = 0u64;
    for &p in pages {
        let r = f
            .index
            .find_frame(&f.cx, &mut f.heap, black_box(p), 1, FRAMES)
            .expect("find_frame");
        acc = acc.wrapping_add(u64::from(r.unwrap_or(0)));
    }
    acc
}

/// `walFindFrame` spelled out over `HashSegment`s of the already-mapped regions.
fn find_all_segments(f: &Fixture, pages: &[PageNumber]) -> u64 {
    let regions: Vec<_> = (0..f.heap.len() as u32)
        .map(|k| f.heap.get(k).expect("region").clone())
        .collect();
    let mut acc = 0u64;
    for &p in pages {
        let mut found = None;
        for k in (0..=frame_region(FRAMES)).rev() {
            if let Some(fr) = HashSegment::new(&regions[k as usize], k)
                .lookup(black_box(p).get(), 1, FRAMES)
                .expect("lookup")
            {
                found = Some(fr);
                break;
            }
        }
        acc = acc.wrapping_add(u64::from(found.unwrap_or(0)));
    }
    acc
}

/// Prototype: the regions' `aPgno` and `aHash` as plain slices.
struct PlainRegions {
    pgno: Vec<Vec<u32>>,
    hash: Vec<Vec<u16>>,
}

impl PlainRegions {
    /// SQLite's `walIndexAppend` for frames `1..=pages.len()` over plain arrays (the
    /// prototype of a private index build that needs no atomics).
    fn build(pages: &[u32]) -> Self {
        let mut out = Self {
            pgno: Vec::new(),
            hash: Vec::new(),
        };
        for (i, &page) in pages.iter().enumerate() {
            let frame = i as u32 + 1;
            let k = frame_region(frame) as usize;
            if k == out.pgno.len() {
                out.pgno.push(vec![0; region_capacity(k as u32) as usize]);
                out.hash.push(vec![0; HASHTABLE_NSLOT as usize]);
            }
            let idx = frame - region_i_zero(k as u32);
            let hs = &mut out.hash[k];
            let mut key = wal_hash(page) as usize;
            while hs[key] != 0 {
                key = (key + 1) & (HASHTABLE_NSLOT as usize - 1);
            }
            out.pgno[k][idx as usize - 1] = page;
            hs[key] = idx as u16;
        }
        out
    }

    fn from_heap(heap: &HeapRegions) -> Self {
        let image = heap.to_image();
        let mut pgno = Vec::new();
        let mut hash = Vec::new();
        for (k, region) in image.chunks_exact(WALINDEX_PGSZ).enumerate() {
            let k = k as u32;
            let start = region_apgno_offset(k);
            let cap = region_capacity(k) as usize;
            let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            pgno.push(
                region[start..start + 4 * cap]
                    .chunks_exact(4)
                    .map(word)
                    .collect(),
            );
            hash.push(
                region[HASH_TABLE_OFFSET..HASH_TABLE_OFFSET + 2 * HASHTABLE_NSLOT as usize]
                    .chunks_exact(2)
                    .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                    .collect(),
            );
        }
        Self { pgno, hash }
    }

    fn find(&self, page: u32, min_frame: u32, mx_frame: u32) -> Option<u32> {
        for k in (frame_region(min_frame)..=frame_region(mx_frame)).rev() {
            let (pg, hs) = (&self.pgno[k as usize], &self.hash[k as usize]);
            let i_zero = region_i_zero(k);
            let mut key = wal_hash(page) as usize;
            let mut found = None;
            loop {
                let s = u32::from(hs[key]);
                if s == 0 {
                    break;
                }
                let f = i_zero + s;
                if f >= min_frame && f <= mx_frame && pg[s as usize - 1] == page {
                    found = Some(f);
                }
                key = (key + 1) & (HASHTABLE_NSLOT as usize - 1);
            }
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

/// Median, p10 and p90 ns/lookup over 31 timed batches.
fn ns_per_lookup(mut batch: impl FnMut() -> u64) -> (f64, f64, f64) {
    for _ in 0..5 {
        black_box(batch());
    }
    let mut v: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            black_box(batch());
            t.elapsed().as_secs_f64() * 1e9 / f64::from(BATCH as u32)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[15], v[3], v[27])
}

fn lookups(c: &mut Criterion) {
    let mut f = build();
    let mut rng = Xorshift(0x2545_f491_4f6c_dd1d);
    let page = |n: u32| PageNumber::new(n).expect("nonzero");
    let hit: Vec<PageNumber> = (0..BATCH).map(|_| page(rng.below(DB_PAGES) + 1)).collect();
    let miss: Vec<PageNumber> = (0..BATCH)
        .map(|_| page(DB_PAGES + 1 + rng.below(DB_PAGES)))
        .collect();
    let last_region_start = FRAMES - 4096;
    let newest: Vec<PageNumber> = (0..BATCH)
        .map(|_| {
            let fr = last_region_start + rng.below(4096);
            page(f.frame_pages[fr as usize])
        })
        .collect();
    // Correctness of the fixture: a hit finds the newest frame of its page.
    for &p in hit.iter().take(64) {
        let want = f
            .frame_pages
            .iter()
            .rposition(|&q| q == p.get())
            .map(|i| i as u32 + 1);
        let got = f
            .index
            .find_frame(&f.cx, &mut f.heap, p, 1, FRAMES)
            .expect("find_frame");
        assert_eq!(got, want, "page {p}");
    }
    let found = hit
        .iter()
        .filter(|&&p| f.frame_pages.contains(&p.get()))
        .count();

    let plain = PlainRegions::from_heap(&f.heap);
    let t = Instant::now();
    let built = PlainRegions::build(&f.frame_pages);
    eprintln!(
        "proto_plain: walIndexAppend of {FRAMES} frames over plain arrays in {:?} ({:.1} ns/append)",
        t.elapsed(),
        t.elapsed().as_secs_f64() * 1e9 / f64::from(FRAMES)
    );
    assert!(built.pgno == plain.pgno && built.hash == plain.hash);
    let regions: Vec<ShmRegion> = (0..f.heap.len() as u32)
        .map(|k| f.heap.get(k).expect("region").clone())
        .collect();
    let mut map = FrameMap::new();
    let t = Instant::now();
    assert!(map.sync_to(&regions, [1, 2], FRAMES).expect("sync_to"));
    eprintln!(
        "frame_map: built from {FRAMES} aPgno entries in {:?} ({:.1} ns/frame, {} pages, {} KiB)",
        t.elapsed(),
        t.elapsed().as_secs_f64() * 1e9 / f64::from(FRAMES),
        map.len(),
        map.heap_bytes() / 1024
    );
    for &p in hit.iter().chain(&miss).take(2 * BATCH) {
        let want = f
            .index
            .find_frame(&f.cx, &mut f.heap, p, 1, FRAMES)
            .expect("find_frame");
        assert_eq!(plain.find(p.get(), 1, FRAMES), want, "plain, page {p}");
        assert_eq!(map.find(p.get(), 1), want, "map, page {p}");
    }
    let plain_all = |pages: &[PageNumber]| {
        pages.iter().fold(0u64, |acc, &p| {
            acc.wrapping_add(u64::from(
                plain.find(black_box(p).get(), 1, FRAMES).unwrap_or(0),
            ))
        })
    };
    let map_all = |pages: &[PageNumber]| {
        pages.iter().fold(0u64, |acc, &p| {
            acc.wrapping_add(u64::from(map.find(black_box(p).get(), 1).unwrap_or(0)))
        })
    };

    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("find_frame/hit", |b| b.iter(|| find_all(&mut f, &hit)));
    group.bench_function("find_frame/miss", |b| b.iter(|| find_all(&mut f, &miss)));
    group.bench_function("find_frame/newest_region", |b| {
        b.iter(|| find_all(&mut f, &newest));
    });
    group.bench_function("segments/hit", |b| b.iter(|| find_all_segments(&f, &hit)));
    group.bench_function("proto_plain/hit", |b| b.iter(|| plain_all(&hit)));
    group.bench_function("proto_plain/miss", |b| b.iter(|| plain_all(&miss)));
    group.bench_function("frame_map/hit", |b| b.iter(|| map_all(&hit)));
    group.bench_function("frame_map/miss", |b| b.iter(|| map_all(&miss)));
    group.finish();

    let rows = [
        ("find_frame/hit", ns_per_lookup(|| find_all(&mut f, &hit))),
        ("find_frame/miss", ns_per_lookup(|| find_all(&mut f, &miss))),
        (
            "find_frame/newest_region",
            ns_per_lookup(|| find_all(&mut f, &newest)),
        ),
        (
            "segments/hit",
            ns_per_lookup(|| find_all_segments(&f, &hit)),
        ),
        ("proto_plain/hit", ns_per_lookup(|| plain_all(&hit))),
        ("proto_plain/miss", ns_per_lookup(|| plain_all(&miss))),
        (
            "proto_plain/newest_region",
            ns_per_lookup(|| plain_all(&newest)),
        ),
        ("frame_map/hit", ns_per_lookup(|| map_all(&hit))),
        ("frame_map/miss", ns_per_lookup(|| map_all(&miss))),
    ];
    eprintln!(
        "lookup on a {FRAMES}-frame WAL-index, {DB_PAGES} db pages ({found} of {BATCH} hit pages are in the WAL):"
    );
    for (name, (med, p10, p90)) in rows {
        eprintln!("  {name:<26} median {med:6.1} ns/lookup (p10 {p10:.1}, p90 {p90:.1})");
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    lookups(&mut c);
    c.final_summary();
}
