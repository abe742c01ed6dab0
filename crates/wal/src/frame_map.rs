//! [`FrameMap`]: a connection-private map page → newest frame, the fast path of a page
//! lookup.
//!
//! SQLite's `walFindFrame` probes the WAL-index hash tables newest region first; on a
//! 100k-frame WAL (25 regions) a page whose newest frame is old, or that is not in the
//! WAL at all, probes every region (≈ 0.8–1.8 µs). A connection instead keeps its own map
//! from page number to the newest frame holding it, extended each time it starts a
//! transaction by the frames committed since (read once from the `aPgno` arrays), and
//! answers a lookup with one or two probes of one array.
//!
//! ```text
//! slots: Vec<u64>, a power of two long, ≥ 2 × pages (load ≤ 1/2), linear probing
//! slot  = page << 32 | frame      (0 = empty; page numbers are never 0)
//! home  = (page * 0x9E37_79B1) >> (32 - log2(len))     (Fibonacci hashing)
//! ```
//!
//! The map describes one WAL generation (the header's salts) up to `built_to`:
//! - frames are added in increasing order, so an insert simply overwrites;
//! - new salts (a WAL restart), or a header whose `mxFrame` fell below `built_to`, clear
//!   it and it is rebuilt from frame 1;
//! - above [`FrameMap::MAX_PAGES`] distinct pages it switches itself off (memory stays
//!   bounded) until the next generation, and the caller falls back to the hash tables.
//!
//! Why it gives `walFindFrame`'s answer: a snapshot holds a read mark `mxFrame`, so no
//! writer restarts the WAL under it and the `aPgno` entries of frames `1..=mxFrame` are
//! fixed; the map then holds, for each page, the newest frame `f ≤ mxFrame`. The hash
//! tables answer "the newest frame in `[minFrame, mxFrame]`", which is `f` when
//! `f ≥ minFrame` and none otherwise (older frames are older than `f`).

use fsqlite_error::{FrankenError, Result};
use fsqlite_vfs::ShmRegion;

use crate::wal_index::{HashSegment, frame_region};

/// A connection-private map page → newest frame (see the module docs).
#[derive(Clone, Debug, Default)]
pub struct FrameMap {
    slots: Vec<u64>,
    /// Distinct pages held.
    pages: usize,
    /// Frames `1..=built_to` of generation `salts` are in the map.
    built_to: u32,
    salts: [u32; 2],
    /// Too many distinct pages in this generation: the map is off until the salts change.
    off: bool,
}

/// Smallest slot array.
const MIN_SLOTS: usize = 64;

impl FrameMap {
    /// Distinct pages above which the map switches itself off for the rest of a WAL
    /// generation (2^18 pages: at most 4 MiB of slots). SQLite's default auto-checkpoint
    /// keeps a WAL near 1,000 frames, far below.
    pub const MAX_PAGES: usize = 1 << 18;

    /// An empty map.
    pub const fn new() -> Self {
        Self {
            slots: Vec::new(),
            pages: 0,
            built_to: 0,
            salts: [0, 0],
            off: false,
        }
    }

    /// Frames `1..=built_to()` are in the map.
    pub fn built_to(&self) -> u32 {
        self.built_to
    }

    /// Distinct pages held.
    pub fn len(&self) -> usize {
        self.pages
    }

    /// True when no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Bytes of heap held by the slots.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<u64>()
    }

    /// Forgets everything and starts generation `salts`.
    pub fn reset(&mut self, salts: [u32; 2]) {
        // `insert` allocates afresh (`grow`), so nothing is kept.
        self.slots = Vec::new();
        self.pages = 0;
        self.built_to = 0;
        self.salts = salts;
        self.off = false;
    }

    #[inline]
    fn home(page: u32, len: usize) -> usize {
        debug_assert!(len.is_power_of_two() && len >= MIN_SLOTS);
        let bits = len.trailing_zeros();
        (page.wrapping_mul(0x9E37_79B1) >> (32 - bits)) as usize
    }

    /// Records that `frame` holds `page`; frames must come in increasing order (a later
    /// frame replaces an earlier one). Returns false when the map switched itself off.
    pub fn insert(&mut self, page: u32, frame: u32) -> bool {
        debug_assert!(page != 0 && frame > self.built_to);
        if self.off {
            return false;
        }
        if (self.pages + 1) * 2 > self.slots.len() {
            if self.pages + 1 > Self::MAX_PAGES {
                self.switch_off();
                return false;
            }
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut k = Self::home(page, self.slots.len());
        loop {
            let s = self.slots[k];
            if s == 0 {
                self.pages += 1;
                break;
            }
            if (s >> 32) as u32 == page {
                break;
            }
            k = (k + 1) & mask;
        }
        self.slots[k] = (u64::from(page) << 32) | u64::from(frame);
        self.built_to = frame;
        true
    }

    fn switch_off(&mut self) {
        tracing::debug!(target: "fsqlite.wal.read", pages = self.pages, "page map switched off for this WAL generation (too many pages); lookups use the hash tables");
        self.slots = Vec::new();
        self.pages = 0;
        self.off = true;
    }

    fn grow(&mut self) {
        let len = (self.slots.len() * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![0; len]);
        let mask = len - 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            let mut k = Self::home((s >> 32) as u32, len);
            while self.slots[k] != 0 {
                k = (k + 1) & mask;
            }
            self.slots[k] = s;
        }
    }

    /// The newest frame `≤ built_to()` holding `page`, if any.
    #[inline]
    pub fn get(&self, page: u32) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut k = Self::home(page, self.slots.len());
        loop {
            let s = self.slots[k];
            if s == 0 {
                return None;
            }
            if (s >> 32) as u32 == page {
                return Some(s as u32);
            }
            k = (k + 1) & mask;
        }
    }

    /// `walFindFrame` through the map: the newest frame of `page` in
    /// `[min_frame, built_to()]`.
    #[inline]
    pub fn find(&self, page: u32, min_frame: u32) -> Option<u32> {
        self.get(page).filter(|&f| f >= min_frame)
    }

    /// Brings the map up to a snapshot: generation `salts`, frames `1..=mx_frame`,
    /// reading the new frames' pages from `regions` (the snapshot's regions, index 0
    /// first). Returns true when the map now describes exactly that snapshot, false when
    /// it is switched off (use the hash tables).
    ///
    /// # Errors
    /// `WalCorrupt` when a region is missing or a committed frame has no page number.
    pub fn sync_to(
        &mut self,
        regions: &[ShmRegion],
        salts: [u32; 2],
        mx_frame: u32,
    ) -> Result<bool> {
        if salts != self.salts || mx_frame < self.built_to {
            self.reset(salts);
        }
        if self.off {
            return Ok(false);
        }
        let mut frame = self.built_to + 1;
        while frame <= mx_frame {
            let index = frame_region(frame);
            let region = regions.get(index as usize).ok_or_else(|| {
                FrankenError::wal_corrupt(format!("WAL-index region {index} is not mapped"))
            })?;
            let seg = HashSegment::new(region, index);
            let last = mx_frame.min(seg.i_zero() + seg.capacity());
            for f in frame..=last {
                let page = seg.pgno_at(f - seg.i_zero() - 1);
                if page == 0 {
                    return Err(FrankenError::wal_corrupt(format!(
                        "WAL-index has no page number for committed frame {f} (mxFrame {mx_frame})"
                    )));
                }
                if !self.insert(page, f) {
                    return Ok(false);
                }
            }
            frame = last + 1;
        }
        self.built_to = mx_frame;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal_index::{HeapRegions, WalIndex};
    use fsqlite_types::{Cx, PageNumber};

    fn index_of(pages: &[u32]) -> (WalIndex, HeapRegions) {
        let cx = Cx::new();
        let mut heap = HeapRegions::new();
        let mut index = WalIndex::new();
        for (i, &p) in pages.iter().enumerate() {
            index
                .append(&cx, &mut heap, i as u32 + 1, PageNumber::new(p).unwrap())
                .unwrap();
        }
        (index, heap)
    }

    fn regions(heap: &HeapRegions) -> Vec<ShmRegion> {
        (0..heap.len() as u32)
            .map(|k| heap.get(k).unwrap().clone())
            .collect()
    }

    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: u32) -> u32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % u64::from(n)) as u32
        }
    }

    /// The map answers exactly what `WalIndex::find_frame` answers, for every page, at
    /// every snapshot it is synced to (grown incrementally across region boundaries) and
    /// every minimum frame.
    #[test]
    fn agrees_with_the_hash_tables() {
        let cx = Cx::new();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let frames = 9_000u32; // 3 regions
        let pages: Vec<u32> = (0..frames).map(|_| rng.below(700) + 1).collect();
        let (mut index, mut heap) = index_of(&pages);
        let regs = regions(&heap);
        let mut map = FrameMap::new();
        let salts = [7, 9];
        for mx in [1, 2, 100, 4_061, 4_062, 4_063, 5_000, 8_158, 8_159, 9_000] {
            assert!(map.sync_to(&regs, salts, mx).unwrap());
            assert_eq!(map.built_to(), mx);
            for min in [1, mx / 2, mx] {
                for p in 1..=710 {
                    let want = index
                        .find_frame(&cx, &mut heap, PageNumber::new(p).unwrap(), min, mx)
                        .unwrap();
                    assert_eq!(map.find(p, min), want, "page {p}, min {min}, mx {mx}");
                }
            }
        }
    }

    #[test]
    fn new_salts_or_a_smaller_mx_rebuild_from_frame_one() {
        let (_, heap_a) = index_of(&[1, 2, 3, 1]);
        let (_, heap_b) = index_of(&[5, 5, 6]);
        let mut map = FrameMap::new();
        assert!(map.sync_to(&regions(&heap_a), [1, 1], 4).unwrap());
        assert_eq!(map.get(1), Some(4));
        // Same salts, smaller mxFrame: rebuilt (a stale entry for page 1 would survive an
        // incremental update).
        assert!(map.sync_to(&regions(&heap_b), [1, 1], 3).unwrap());
        assert_eq!(
            (map.get(1), map.get(5), map.get(6)),
            (None, Some(2), Some(3))
        );
        // New salts, larger mxFrame: rebuilt too.
        let (_, heap_c) = index_of(&[8, 8, 8, 8, 9]);
        assert!(map.sync_to(&regions(&heap_c), [2, 1], 5).unwrap());
        assert_eq!(
            (map.get(5), map.get(8), map.get(9)),
            (None, Some(4), Some(5))
        );
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_committed_frame_without_a_page_is_corruption() {
        let (_, heap) = index_of(&[1, 2]);
        let mut map = FrameMap::new();
        let e = map.sync_to(&regions(&heap), [1, 1], 3).unwrap_err();
        assert!(e.to_string().contains("frame 3"), "{e}");
        let e = map.sync_to(&[], [1, 2], 1).unwrap_err();
        assert!(e.to_string().contains("region 0"), "{e}");
    }

    #[test]
    fn too_many_pages_switch_the_map_off_until_the_next_generation() {
        let mut map = FrameMap::new();
        map.reset([1, 1]);
        for p in 1..=FrameMap::MAX_PAGES as u32 {
            assert!(map.insert(p, p));
        }
        assert!(map.heap_bytes() <= 4 * FrameMap::MAX_PAGES * 8);
        assert_eq!(map.get(77), Some(77));
        assert!(!map.insert(
            FrameMap::MAX_PAGES as u32 + 1,
            FrameMap::MAX_PAGES as u32 + 1
        ));
        assert_eq!(map.heap_bytes(), 0);
        assert_eq!(map.get(77), None);
        let (_, heap) = index_of(&[3]);
        // Same generation: stays off.
        assert!(
            !map.sync_to(&regions(&heap), [1, 1], FrameMap::MAX_PAGES as u32 + 1)
                .unwrap()
        );
        // Next generation: on again.
        assert!(map.sync_to(&regions(&heap), [1, 2], 1).unwrap());
        assert_eq!(map.get(3), Some(1));
    }
}
