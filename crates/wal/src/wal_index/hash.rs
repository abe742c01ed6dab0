//! The per-region hash tables (`aPgno` + `aHash`, FORMAT.md §4.2): geometry functions
//! and [`HashSegment`], the operations on one mapped region (SQLite's `WalHashLoc`).
//! The algorithms are given as pseudo-code in the [parent module](super).

use std::sync::atomic::Ordering;

use fsqlite_error::{FrankenError, Result};
use fsqlite_vfs::ShmRegion;

use super::{
    HASH_TABLE_OFFSET, HASHTABLE_HASH_1, HASHTABLE_NPAGE, HASHTABLE_NPAGE_ONE, HASHTABLE_NSLOT,
    WALINDEX_HDR_SIZE, WALINDEX_PGSZ,
};

/// The region holding frame `frame` (1-based): `(frame + 33) / 4096`.
pub const fn frame_region(frame: u32) -> u32 {
    ((frame as u64 + (HASHTABLE_NPAGE - HASHTABLE_NPAGE_ONE - 1) as u64) / HASHTABLE_NPAGE as u64)
        as u32
}

/// `iZero` of region `region`: the frame number just before its first frame.
pub const fn region_i_zero(region: u32) -> u32 {
    if region == 0 {
        0
    } else {
        // At most 4062 + 1048575 * 4096 < 2^32 for every region a u32 frame can reach.
        HASHTABLE_NPAGE_ONE.wrapping_add((region - 1).wrapping_mul(HASHTABLE_NPAGE))
    }
}

/// Number of `aPgno` entries (frames) in region `region`: 4062 for region 0, else 4096.
pub const fn region_capacity(region: u32) -> u32 {
    if region == 0 {
        HASHTABLE_NPAGE_ONE
    } else {
        HASHTABLE_NPAGE
    }
}

/// Byte offset of `aPgno[0]` in region `region`: 136 for region 0, else 0.
pub const fn region_apgno_offset(region: u32) -> usize {
    if region == 0 { WALINDEX_HDR_SIZE } else { 0 }
}

/// First hash slot probed for `pgno`: `(pgno * 383) & 8191` (wrapping 32-bit multiply).
pub const fn wal_hash(pgno: u32) -> u32 {
    pgno.wrapping_mul(HASHTABLE_HASH_1) & (HASHTABLE_NSLOT - 1)
}

/// Next slot in a linear probe.
const fn next_hash(key: u32) -> u32 {
    (key + 1) & (HASHTABLE_NSLOT - 1)
}

/// Byte offset of `aHash[key]`.
const fn slot_offset(key: u32) -> usize {
    HASH_TABLE_OFFSET + 2 * key as usize
}

/// The hash table of one mapped region (SQLite's `WalHashLoc`).
///
/// Only the writer (holding `WAL_WRITE_LOCK`, or recovery on a private copy) calls the
/// mutating methods; any number of readers may call [`HashSegment::lookup`] concurrently.
#[derive(Clone, Copy, Debug)]
pub struct HashSegment<'a> {
    region: &'a ShmRegion,
    index: u32,
}

impl<'a> HashSegment<'a> {
    /// The hash table of region number `index`, mapped at `region`.
    ///
    /// # Panics
    /// If `region` is shorter than [`WALINDEX_PGSZ`] (callers check mapped sizes).
    pub fn new(region: &'a ShmRegion, index: u32) -> Self {
        assert!(
            region.len() >= WALINDEX_PGSZ,
            "WAL-index region {index} is {} bytes, need {WALINDEX_PGSZ}",
            region.len()
        );
        Self { region, index }
    }

    /// The region number.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// `iZero`: frame number of `aPgno[0]` minus one.
    pub fn i_zero(&self) -> u32 {
        region_i_zero(self.index)
    }

    /// Number of `aPgno` entries.
    pub fn capacity(&self) -> u32 {
        region_capacity(self.index)
    }

    fn apgno_offset(&self, j: u32) -> usize {
        region_apgno_offset(self.index) + 4 * j as usize
    }

    /// `aPgno[j]` (`j < capacity()`): the page of frame `i_zero() + j + 1`, 0 if unset.
    pub fn pgno_at(&self, j: u32) -> u32 {
        debug_assert!(j < self.capacity());
        self.region
            .load_u32(self.apgno_offset(j), Ordering::Relaxed)
    }

    /// `aHash[key]` (`key < 8192`): a 1-based `aPgno` index, 0 = empty.
    pub fn slot(&self, key: u32) -> u16 {
        self.region.load_u16(slot_offset(key), Ordering::Acquire)
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> FrankenError {
        FrankenError::wal_corrupt(format!(
            "WAL-index region {} (frames {}..={}): {what}",
            self.index,
            self.i_zero() + 1,
            self.i_zero() + self.capacity()
        ))
    }

    /// Adds frame `frame` holding page `pgno` (SQLite's `walIndexAppend`).
    ///
    /// ```text
    /// idx = frame - iZero                       // 1-based
    /// if idx == 1: zero aPgno[..] and aHash[..] // erase an older WAL generation
    /// if aPgno[idx-1] != 0: cleanup(idx-1)      // leftovers of a dead/rolled-back writer
    /// key = hash(pgno); guard = idx
    /// while aHash[key] != 0: if guard == 0: CORRUPT; guard -= 1; key = next(key)
    /// aPgno[idx-1] = pgno                       // Relaxed
    /// aHash[key] = idx                          // Release: publishes aPgno[idx-1]
    /// ```
    pub fn append(&self, frame: u32, pgno: u32) -> Result<()> {
        let i_zero = self.i_zero();
        let idx = frame.wrapping_sub(i_zero);
        if frame <= i_zero || idx > self.capacity() || pgno == 0 {
            return Err(FrankenError::internal(format!(
                "WAL-index append of frame {frame} (page {pgno}) into region {} (frames {}..={})",
                self.index,
                i_zero + 1,
                i_zero + self.capacity()
            )));
        }
        if idx == 1 {
            let start = region_apgno_offset(self.index);
            self.region.zero(start, WALINDEX_PGSZ - start);
        }
        if self.pgno_at(idx - 1) != 0 {
            tracing::debug!(
                target: "fsqlite.wal.index",
                frame,
                region = self.index,
                "stale hash entries past the previous frame; cleaning up"
            );
            self.cleanup_after(idx - 1);
        }
        let mut key = wal_hash(pgno);
        let mut guard = idx;
        while self.slot(key) != 0 {
            if guard == 0 {
                return Err(self.corrupt(format_args!(
                    "hash table full while adding frame {frame} (page {pgno})"
                )));
            }
            guard -= 1;
            key = next_hash(key);
        }
        self.region
            .store_u32(self.apgno_offset(idx - 1), pgno, Ordering::Relaxed);
        // idx <= 4096 fits in the u16 slot.
        self.region
            .store_u16(slot_offset(key), idx as u16, Ordering::Release);
        Ok(())
    }

    /// Removes every entry after the first `limit` of this region (SQLite's
    /// `walCleanupHash` with `iLimit = limit`): hash slots holding an index > `limit` are
    /// cleared and `aPgno[limit..]` is zeroed. inv: HASH_ROLLBACK_CLEAN
    pub fn cleanup_after(&self, limit: u32) {
        // Slots are cleared a 32-bit word (two slots) at a time; only the writer stores
        // slots, so a plain load/store of the word cannot lose a concurrent update.
        for word in 0..HASHTABLE_NSLOT / 2 {
            let off = slot_offset(2 * word);
            let w = self.region.load_u32(off, Ordering::Relaxed);
            let mut halves = w.to_ne_bytes();
            let mut changed = false;
            for half in halves.chunks_exact_mut(2) {
                let v = u16::from_ne_bytes([half[0], half[1]]);
                if u32::from(v) > limit {
                    half.copy_from_slice(&[0, 0]);
                    changed = true;
                }
            }
            if changed {
                self.region
                    .store_u32(off, u32::from_ne_bytes(halves), Ordering::Release);
            }
        }
        let limit = limit.min(self.capacity());
        let start = self.apgno_offset(limit);
        let end = region_apgno_offset(self.index) + 4 * self.capacity() as usize;
        self.region.zero(start, end - start);
    }

    /// The newest frame in `[min_frame, mx_frame]` of this region holding `pgno`
    /// (SQLite's per-region part of `walFindFrame`).
    ///
    /// ```text
    /// key = hash(pgno); guard = 8192; found = none
    /// while (s = aHash[key]) != 0:
    ///     f = s + iZero
    ///     if min <= f <= mx and aPgno[s-1] == pgno: found = f   // the later insert wins
    ///     if guard == 0: CORRUPT; guard -= 1; key = next(key)
    /// ```
    ///
    /// inv: HASH_LOOKUP_NEWEST (together with [`WalIndex::find_frame`](super::WalIndex::find_frame)).
    ///
    /// A slot value larger than the region's capacity cannot be written by any writer and
    /// is reported as `WalCorrupt` (SQLite masks it and reads an unrelated word).
    pub fn lookup(&self, pgno: u32, min_frame: u32, mx_frame: u32) -> Result<Option<u32>> {
        let i_zero = self.i_zero();
        let mut key = wal_hash(pgno);
        let mut guard = HASHTABLE_NSLOT;
        let mut found = None;
        loop {
            let s = u32::from(self.slot(key));
            if s == 0 {
                return Ok(found);
            }
            if s > self.capacity() {
                return Err(self.corrupt(format_args!("hash slot {key} holds index {s}")));
            }
            let frame = i_zero + s;
            if frame <= mx_frame && frame >= min_frame && self.pgno_at(s - 1) == pgno {
                found = Some(frame);
            }
            if guard == 0 {
                return Err(self.corrupt(format_args!(
                    "no empty hash slot while looking up page {pgno}"
                )));
            }
            guard -= 1;
            key = next_hash(key);
        }
    }
}

/// Copies a privately built region into the shared one: all of it for region `index > 0`,
/// and bytes `136..32768` for region 0 (its 136-byte header is published separately),
/// as recovery does before publishing the header (FORMAT.md §8.2). Recovery itself now
/// builds each region in a plain byte buffer and writes it with one
/// [`ShmRegion::write_bytes`] (`crate::recovery`); this is the same copy between two
/// mapped regions, e.g. from a [`HeapRegions`](super::HeapRegions) image.
///
/// # Panics
/// If either region is shorter than [`WALINDEX_PGSZ`].
pub fn copy_region_into(src: &ShmRegion, dst: &ShmRegion, index: u32) {
    assert!(src.len() >= WALINDEX_PGSZ && dst.len() >= WALINDEX_PGSZ);
    let start = region_apgno_offset(index);
    for off in (start..WALINDEX_PGSZ).step_by(4) {
        dst.store_u32(off, src.load_u32(off, Ordering::Relaxed), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(frame_region(1), 0);
        assert_eq!(frame_region(4062), 0);
        assert_eq!(frame_region(4063), 1);
        assert_eq!(frame_region(8158), 1);
        assert_eq!(frame_region(8159), 2);
        assert_eq!(region_i_zero(0), 0);
        assert_eq!(region_i_zero(1), 4062);
        assert_eq!(region_i_zero(2), 8158);
        for f in [1u32, 4062, 4063, 8158, 8159, 100_000, u32::MAX] {
            let r = frame_region(f);
            assert!(f > region_i_zero(r));
            assert!(f - region_i_zero(r) <= region_capacity(r), "frame {f}");
        }
        assert_eq!(region_apgno_offset(0), 136);
        assert_eq!(region_apgno_offset(3), 0);
        assert_eq!(wal_hash(1), 383);
        assert_eq!(wal_hash(22), (22 * 383) & 8191);
        assert_eq!(wal_hash(u32::MAX), u32::MAX.wrapping_mul(383) & 8191);
    }

    #[test]
    fn append_and_lookup_in_one_region() {
        let r = ShmRegion::heap(WALINDEX_PGSZ);
        let seg = HashSegment::new(&r, 0);
        // Pages 1 and 1 + 8192 collide.
        seg.append(1, 1).unwrap();
        seg.append(2, 8193).unwrap();
        seg.append(3, 1).unwrap();
        assert_eq!(seg.slot(383), 1);
        assert_eq!(seg.slot(384), 2);
        assert_eq!(seg.slot(385), 3);
        assert_eq!(r.load_u32(136, Ordering::Relaxed), 1);
        assert_eq!(seg.lookup(1, 1, 3).unwrap(), Some(3));
        assert_eq!(seg.lookup(1, 1, 2).unwrap(), Some(1));
        assert_eq!(seg.lookup(1, 2, 2).unwrap(), None);
        assert_eq!(seg.lookup(8193, 1, 3).unwrap(), Some(2));
        assert_eq!(seg.lookup(2, 1, 3).unwrap(), None);
        // Rollback to frame 1 then re-append: frame 2 becomes page 5.
        seg.cleanup_after(1);
        assert_eq!(seg.slot(384), 0);
        assert_eq!(seg.slot(385), 0);
        seg.append(2, 5).unwrap();
        assert_eq!(seg.lookup(8193, 1, 3).unwrap(), None);
        assert_eq!(seg.lookup(5, 1, 2).unwrap(), Some(2));
        // Appending frame 1 again wipes the region.
        seg.append(1, 9).unwrap();
        assert_eq!(seg.lookup(5, 1, 4062).unwrap(), None);
        assert_eq!(seg.lookup(9, 1, 4062).unwrap(), Some(1));
    }

    #[test]
    fn crashed_writer_leftovers_are_cleaned_on_append() {
        let r = ShmRegion::heap(WALINDEX_PGSZ);
        let seg = HashSegment::new(&r, 1);
        for f in 4063..4073 {
            seg.append(f, f - 4000).unwrap();
        }
        // A writer "dies" after frame 4066 was committed; the next one appends 4067.
        seg.append(4067, 999).unwrap();
        assert_eq!(
            seg.lookup(67, 1, 5000).unwrap(),
            None,
            "frame 4067 old page gone"
        );
        assert_eq!(
            seg.lookup(68, 1, 5000).unwrap(),
            None,
            "frame 4068 gone too"
        );
        assert_eq!(seg.lookup(66, 1, 5000).unwrap(), Some(4066));
        assert_eq!(seg.lookup(999, 1, 5000).unwrap(), Some(4067));
        assert_eq!(seg.pgno_at(5), 0);
    }

    #[test]
    fn garbage_terminates_with_corruption() {
        let r = ShmRegion::heap(WALINDEX_PGSZ);
        let seg = HashSegment::new(&r, 1);
        // Every slot 1, every aPgno 7: probes never meet an empty slot.
        for key in 0..HASHTABLE_NSLOT {
            r.store_u16(slot_offset(key), 1, Ordering::Relaxed);
        }
        r.store_u32(0, 7, Ordering::Relaxed);
        let e = seg.lookup(3, 1, u32::MAX).unwrap_err();
        assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e:?}");
        let e = seg.append(4070, 3).unwrap_err();
        assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e:?}");
        // A slot value beyond the region's capacity.
        let r0 = ShmRegion::heap(WALINDEX_PGSZ);
        r0.store_u16(slot_offset(wal_hash(3)), 4063, Ordering::Relaxed);
        let e = HashSegment::new(&r0, 0).lookup(3, 1, 9000).unwrap_err();
        assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e:?}");
        // Out-of-region append is a caller bug reported as Internal.
        assert!(matches!(
            HashSegment::new(&r0, 0).append(4063, 1),
            Err(FrankenError::Internal(_))
        ));
    }

    #[test]
    fn copy_skips_region0_header() {
        let a = ShmRegion::heap(WALINDEX_PGSZ);
        let b = ShmRegion::heap(WALINDEX_PGSZ);
        a.write_bytes(0, &[1; 136]);
        HashSegment::new(&a, 0).append(1, 42).unwrap();
        copy_region_into(&a, &b, 0);
        let mut head = [0u8; 136];
        b.read_bytes(0, &mut head);
        assert_eq!(head, [0; 136]);
        assert_eq!(HashSegment::new(&b, 0).lookup(42, 1, 1).unwrap(), Some(1));
        let c = ShmRegion::heap(WALINDEX_PGSZ);
        copy_region_into(&a, &c, 1);
        c.read_bytes(0, &mut head);
        assert_eq!(head, [1; 136]);
    }
}
