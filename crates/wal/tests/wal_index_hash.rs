//! WAL-index hash tables against a naive model (FORMAT.md §4.2).
//!
//! Random append sequences (repeating pages, colliding pages, crossing the 4062/4063 and
//! 8158/8159 region boundaries), rollbacks (`rollback_to`) and dead writers (frames left
//! behind, cleaned by the next append) are applied both to a [`WalIndex`] over
//! [`HeapRegions`] and to a `Vec` of page numbers. Lookups at random snapshots must agree
//! with the model, the checkpoint list must agree with the model, and the regions must be
//! byte-identical to a fresh build of the surviving frames ("rollback then append ==
//! never written").

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_wal::wal_index::{
    BackfillEntry, HeapRegions, RegionSource, WALINDEX_PGSZ, WalIndex, frame_region,
};
use proptest::prelude::*;

fn pg(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

/// A deterministic xorshift generator (the proptest seed drives it).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n.max(1))) as u32
    }

    /// A page number: mostly small (many repeats), sometimes colliding with a small one
    /// (`p + k * 8192` hashes like `p`), sometimes large.
    fn page(&mut self) -> u32 {
        match self.below(10) {
            0 => 1 + self.below(40) + 8192 * (1 + self.below(3)),
            1 => 1 + self.below(1_000_000),
            _ => 1 + self.below(300),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Append this many frames of random pages.
    Append(u32),
    /// Roll back this many frames with `rollback_to`.
    Rollback(u32),
    /// A writer dies: forget this many frames without cleaning (the next append must).
    Crash(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u32..400).prop_map(Op::Append),
        1 => (0u32..500).prop_map(Op::Rollback),
        1 => (0u32..500).prop_map(Op::Crash),
    ]
}

fn prefix_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => 0u32..200,
        3 => 3900u32..4300,
        1 => 8000u32..8300,
    ]
}

struct Harness {
    cx: Cx,
    heap: HeapRegions,
    index: WalIndex,
    /// `model[f - 1]` = page of frame f, for the live frames 1..=model.len().
    model: Vec<u32>,
    /// A writer died and nobody appended or rolled back since: stale entries past the
    /// live frames are expected (SQLite leaves them too, until the next append).
    stale_tail: bool,
    rng: Rng,
}

impl Harness {
    fn new(seed: u64) -> Self {
        Self {
            cx: Cx::new(),
            heap: HeapRegions::new(),
            index: WalIndex::new(),
            model: Vec::new(),
            stale_tail: false,
            rng: Rng(seed | 1),
        }
    }

    fn append(&mut self, n: u32) {
        for _ in 0..n {
            let p = self.rng.page();
            let frame = self.model.len() as u32 + 1;
            self.index
                .append(&self.cx, &mut self.heap, frame, pg(p))
                .unwrap();
            self.model.push(p);
            self.stale_tail = false;
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Append(n) => self.append(n),
            Op::Rollback(back) => {
                let keep = self.model.len().saturating_sub(back as usize);
                self.model.truncate(keep);
                self.index
                    .rollback_to(&self.cx, &mut self.heap, keep as u32)
                    .unwrap();
                self.stale_tail = false;
            }
            Op::Crash(back) => {
                let keep = self.model.len().saturating_sub(back as usize);
                self.stale_tail |= keep < self.model.len();
                self.model.truncate(keep);
            }
        }
    }

    fn naive_find(&self, p: u32, min: u32, mx: u32) -> Option<u32> {
        (min.max(1)..=mx)
            .rev()
            .find(|&f| self.model[f as usize - 1] == p)
    }

    fn check_lookups(&mut self, n: u32) {
        let cur = self.model.len() as u32;
        for _ in 0..n {
            let mx = self.rng.below(cur + 1);
            let min = if self.rng.below(2) == 0 {
                1
            } else {
                1 + self.rng.below(mx + 1)
            };
            let p = if cur > 0 && self.rng.below(4) != 0 {
                self.model[self.rng.below(cur) as usize]
            } else {
                self.rng.page()
            };
            let got = self
                .index
                .find_frame(&self.cx, &mut self.heap, pg(p), min, mx)
                .unwrap();
            assert_eq!(
                got,
                self.naive_find(p, min, mx),
                "page {p} in [{min}, {mx}]"
            );
        }
    }

    fn check_checkpoint_list(&mut self) {
        let cur = self.model.len() as u32;
        let safe = self.rng.below(cur + 1);
        let nb = self.rng.below(safe + 1);
        let n_page = if self.rng.below(2) == 0 {
            u32::MAX
        } else {
            self.rng.below(400)
        };
        let got = self
            .index
            .checkpoint_frames(&self.cx, &mut self.heap, nb, safe, n_page)
            .unwrap();
        let mut newest = std::collections::BTreeMap::new();
        for f in nb + 1..=safe {
            let p = self.model[f as usize - 1];
            if p <= n_page {
                newest.insert(p, f);
            }
        }
        let want: Vec<BackfillEntry> = newest
            .into_iter()
            .map(|(p, frame)| BackfillEntry { page: pg(p), frame })
            .collect();
        assert_eq!(
            got, want,
            "checkpoint list for ({nb}, {safe}], n_page {n_page}"
        );
    }

    /// Regions `0..=region(cur)` equal a fresh build of the live frames.
    fn check_against_fresh_build(&mut self) {
        let cur = self.model.len() as u32;
        if cur == 0 || self.stale_tail {
            return;
        }
        let mut fresh = HeapRegions::new();
        let mut fresh_index = WalIndex::new();
        for (i, p) in self.model.iter().enumerate() {
            fresh_index
                .append(&self.cx, &mut fresh, i as u32 + 1, pg(*p))
                .unwrap();
        }
        let last = frame_region(cur) as usize;
        let ours = self.heap.to_image();
        let theirs = fresh.to_image();
        for r in 0..=last {
            let span = r * WALINDEX_PGSZ..(r + 1) * WALINDEX_PGSZ;
            assert!(
                ours[span.clone()] == theirs[span],
                "region {r} differs from a fresh build of {cur} frames"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// inv: HASH_LOOKUP_NEWEST — find_frame returns the newest frame in [min, mx].
    /// inv: HASH_ROLLBACK_CLEAN — after rollback or a dead writer, the regions equal a
    /// fresh build of the surviving frames.
    #[test]
    fn hash_index_matches_model(
        seed in any::<u64>(),
        prefix in prefix_len(),
        ops in proptest::collection::vec(op(), 0..10),
    ) {
        let mut h = Harness::new(seed);
        h.append(prefix);
        h.check_lookups(30);
        for op in &ops {
            h.apply(op);
            h.check_lookups(20);
        }
        h.check_checkpoint_list();
        h.check_against_fresh_build();
    }
}

#[test]
fn boundary_frames_4062_4063() {
    let mut h = Harness::new(7);
    // Page 5 in the last frame of region 0 and the first of region 1.
    for f in 1..=4064u32 {
        let p = if f == 4062 || f == 4063 { 5 } else { 1000 + f };
        h.index.append(&h.cx, &mut h.heap, f, pg(p)).unwrap();
        h.model.push(p);
    }
    assert_eq!(h.heap.len(), 2);
    let cx = Cx::new();
    let f = |h: &mut Harness, min, mx| {
        h.index
            .find_frame(&cx, &mut h.heap, pg(5), min, mx)
            .unwrap()
    };
    assert_eq!(f(&mut h, 1, 4064), Some(4063));
    assert_eq!(f(&mut h, 1, 4062), Some(4062));
    assert_eq!(f(&mut h, 4063, 4064), Some(4063));
    assert_eq!(f(&mut h, 4064, 4064), None);
    assert_eq!(h.index.frame_page(&cx, &mut h.heap, 4063).unwrap(), pg(5));
    assert_eq!(
        h.index.frame_page(&cx, &mut h.heap, 4064).unwrap(),
        pg(5064)
    );
    // Rolling back into region 0 and re-appending.
    h.index.rollback_to(&cx, &mut h.heap, 4061).unwrap();
    h.model.truncate(4061);
    h.append(5);
    h.check_lookups(200);
    h.check_against_fresh_build();
}

#[test]
fn missing_region_for_indexed_frames_is_an_error() {
    let cx = Cx::new();
    let mut heap = HeapRegions::new();
    let mut index = WalIndex::new();
    for f in 1..=10 {
        index.append(&cx, &mut heap, f, pg(f)).unwrap();
    }
    // The header claims 5000 frames but only region 0 exists: readers never extend.
    let mut reader = WalIndex::new();
    let e = reader
        .find_frame(&cx, &mut heap, pg(3), 1, 5000)
        .unwrap_err();
    assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e}");
    assert!(e.to_string().contains("region 1"), "{e}");
    assert_eq!(heap.len(), 1, "a reader must not extend the index");
    assert!(heap.region(&cx, 1, false).unwrap().is_none());
    // Within region 0 it works; a fresh WalIndex maps lazily.
    assert_eq!(
        reader.find_frame(&cx, &mut heap, pg(3), 1, 10).unwrap(),
        Some(3)
    );
    // A frame with no page number in the checkpoint range is corruption too.
    let e = index
        .checkpoint_frames(&cx, &mut heap, 0, 11, u32::MAX)
        .unwrap_err();
    assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e}");
}

#[test]
fn checkpoint_list_is_cancellable() {
    let cx = Cx::new();
    let mut heap = HeapRegions::new();
    let mut index = WalIndex::new();
    for f in 1..=10 {
        index.append(&cx, &mut heap, f, pg(f)).unwrap();
    }
    cx.cancel();
    let e = index
        .checkpoint_frames(&cx, &mut heap, 0, 10, 100)
        .unwrap_err();
    assert!(matches!(e, FrankenError::Interrupted), "{e:?}");
}
