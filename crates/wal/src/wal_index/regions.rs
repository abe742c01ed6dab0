//! Mapping WAL-index regions ([`RegionSource`], [`HeapRegions`]) and the owning
//! [`WalIndex`], which runs the hash-table operations of [`super::hash`] over however
//! many regions a frame range needs.

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{ShmRegion, VfsFile};

use super::WALINDEX_PGSZ;
use super::hash::{HashSegment, frame_region, region_capacity, region_i_zero};
use super::header::WalIndexHdr;
use super::protocol::{HeaderDefect, HeaderRead, publish_header, try_read_header};

/// Something that can map WAL-index region `index` (32 KiB each).
///
/// With `extend == false` (every reader) a region beyond the current end of the index is
/// `Ok(None)`; with `extend == true` (only the WRITE-lock holder or recovery) the index
/// grows, zero-filled, so that the region exists.
pub trait RegionSource {
    /// Maps region `index`.
    fn region(&mut self, cx: &Cx, index: u32, extend: bool) -> Result<Option<ShmRegion>>;
}

/// Any VFS file maps its `-shm` through [`VfsFile::shm_map`].
impl<F: VfsFile + ?Sized> RegionSource for F {
    fn region(&mut self, cx: &Cx, index: u32, extend: bool) -> Result<Option<ShmRegion>> {
        // WALINDEX_PGSZ is 32768 and fits in u32.
        self.shm_map(cx, index, WALINDEX_PGSZ as u32, extend)
    }
}

/// A private, heap-backed WAL-index: what recovery builds before copying it into the
/// shared `-shm` (as SQLite does), what the "unreliable shm" mode reads from, and what
/// tests load a `-shm` image into.
///
/// The regions are [`ShmRegion::heap`] regions; handles returned by
/// [`RegionSource::region`] share memory with this value.
#[derive(Debug, Default)]
pub struct HeapRegions {
    regions: Vec<ShmRegion>,
}

impl HeapRegions {
    /// An empty index (no regions).
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads a `-shm` file image (split into 32 KiB regions; a partial last region is
    /// zero-padded).
    pub fn from_image(image: &[u8]) -> Self {
        let regions = image
            .chunks(WALINDEX_PGSZ)
            .map(|chunk| {
                let r = ShmRegion::heap(WALINDEX_PGSZ);
                let whole = chunk.len() / 4 * 4;
                r.write_bytes(0, &chunk[..whole]);
                if whole < chunk.len() {
                    let mut last = [0u8; 4];
                    last[..chunk.len() - whole].copy_from_slice(&chunk[whole..]);
                    r.write_bytes(whole, &last);
                }
                r
            })
            .collect();
        Self { regions }
    }

    /// The whole index as a `-shm` file image.
    pub fn to_image(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.regions.len() * WALINDEX_PGSZ];
        for (r, chunk) in self.regions.iter().zip(out.chunks_exact_mut(WALINDEX_PGSZ)) {
            r.read_bytes(0, chunk);
        }
        out
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when no region exists.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Region `index`, if it exists.
    pub fn get(&self, index: u32) -> Option<&ShmRegion> {
        self.regions.get(index as usize)
    }
}

impl RegionSource for HeapRegions {
    fn region(&mut self, _cx: &Cx, index: u32, extend: bool) -> Result<Option<ShmRegion>> {
        let i = index as usize;
        if i >= self.regions.len() {
            if !extend {
                return Ok(None);
            }
            self.regions
                .resize_with(i + 1, || ShmRegion::heap(WALINDEX_PGSZ));
        }
        Ok(Some(self.regions[i].clone()))
    }
}

/// One page to copy in a checkpoint: the newest frame of `page` in the backfill range.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackfillEntry {
    /// The database page.
    pub page: PageNumber,
    /// The WAL frame holding its newest version in the range.
    pub frame: u32,
}

/// The hash-table side of a WAL-index: a cache of mapped regions plus the operations that
/// span regions (SQLite keeps the same cache in `Wal.apWiData`).
///
/// One `WalIndex` belongs to one [`RegionSource`] (a connection's `-shm`, or one
/// [`HeapRegions`]): mapped handles are cached, so pass the same source every time, and
/// call [`WalIndex::forget_mappings`] after `shm_unmap`. Readers never extend the index;
/// [`WalIndex::append`] (the writer) does.
#[derive(Debug, Default, Clone)]
pub struct WalIndex {
    regions: Vec<Option<ShmRegion>>,
}

impl WalIndex {
    /// A `WalIndex` with nothing mapped yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every cached region handle (after `shm_unmap`, or to switch sources).
    pub fn forget_mappings(&mut self) {
        self.regions.clear();
    }

    /// Region `index`, mapped through `src` on first use and cached afterwards. `None`
    /// when the region does not exist and `extend` is false. A region shorter than 32 KiB
    /// is an `Internal` error.
    pub fn map_region<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        index: u32,
        extend: bool,
    ) -> Result<Option<&ShmRegion>> {
        let i = index as usize;
        if self.regions.get(i).is_none_or(Option::is_none) {
            let Some(region) = src.region(cx, index, extend)? else {
                return Ok(None);
            };
            if region.len() < WALINDEX_PGSZ {
                return Err(FrankenError::internal(format!(
                    "WAL-index region {index} mapped with {} bytes, need {WALINDEX_PGSZ}",
                    region.len()
                )));
            }
            if self.regions.len() <= i {
                self.regions.resize(i + 1, None);
            }
            self.regions[i] = Some(region);
        }
        Ok(self.regions[i].as_ref())
    }

    /// Like [`WalIndex::map_region`] without extending, but a missing region is an error:
    /// the header says frames up to `mx_frame` exist, so the `-shm` is shorter than it
    /// claims (recovery rebuilds it).
    fn require_region<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        index: u32,
        mx_frame: u32,
    ) -> Result<&ShmRegion> {
        self.map_region(cx, src, index, false)?.ok_or_else(|| {
            FrankenError::wal_corrupt(format!(
                "WAL-index region {index} (frames {}..={}) is missing although frames up to \
                 {mx_frame} are indexed; the -shm is shorter than its header claims and must \
                 be rebuilt by recovery",
                region_i_zero(index) + 1,
                region_i_zero(index) + region_capacity(index)
            ))
        })
    }

    /// Publishes `hdr` into region 0 (copy B, barrier, copy A; see
    /// [`publish_header`]). Writer or recovery only; maps region 0 with `extend`.
    pub fn publish_header<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        hdr: &mut WalIndexHdr,
    ) -> Result<()> {
        let region = self
            .map_region(cx, src, 0, true)?
            .ok_or_else(|| FrankenError::internal("WAL-index region 0 could not be created"))?;
        publish_header(region, hdr);
        Ok(())
    }

    /// The lock-free header read over region 0 (see [`try_read_header`]); an unmapped
    /// region 0 is [`HeaderDefect::Unmapped`]. Pass `extend = true` only while holding the
    /// WRITE lock.
    pub fn read_header<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        extend: bool,
        cached: &mut WalIndexHdr,
    ) -> Result<HeaderRead> {
        Ok(match self.map_region(cx, src, 0, extend)? {
            Some(region) => try_read_header(region, cached),
            None => HeaderRead::NeedsRecovery(HeaderDefect::Unmapped),
        })
    }

    /// Indexes frame `frame` as holding `page` (writer or recovery only; extends the
    /// index as needed). Frames are appended in order `mx_frame + 1, + 2, …`; appending
    /// frame 1 of a region wipes that region, and leftovers of a dead writer past
    /// `frame - 1` are removed first (see [`HashSegment::append`]).
    pub fn append<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        frame: u32,
        page: PageNumber,
    ) -> Result<()> {
        if frame == 0 {
            return Err(FrankenError::internal("WAL-index append of frame 0"));
        }
        let index = frame_region(frame);
        let region = self.map_region(cx, src, index, true)?.ok_or_else(|| {
            FrankenError::internal(format!("WAL-index region {index} could not be created"))
        })?;
        HashSegment::new(region, index).append(frame, page.get())
    }

    /// The newest frame `f` with `min_frame <= f <= mx_frame` holding `page`, or `None`
    /// (SQLite's `walFindFrame`; `min_frame` is `nBackfill + 1` captured at read start,
    /// 1 for snapshot readers; 0 is treated as 1).
    ///
    /// ```text
    /// if mx == 0: none
    /// for r in region(mx) down to region(min):
    ///     if (f = lookup in r) is some: return f   // newer regions hold newer frames
    /// none
    /// ```
    pub fn find_frame<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        page: PageNumber,
        min_frame: u32,
        mx_frame: u32,
    ) -> Result<Option<u32>> {
        let min_frame = min_frame.max(1);
        if mx_frame == 0 || min_frame > mx_frame {
            return Ok(None);
        }
        for index in (frame_region(min_frame)..=frame_region(mx_frame)).rev() {
            let region = self.require_region(cx, src, index, mx_frame)?;
            if let Some(f) =
                HashSegment::new(region, index).lookup(page.get(), min_frame, mx_frame)?
            {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// The page stored in frame `frame` according to the index (SQLite's
    /// `walFramePgno`); the frame must be indexed (`<= mxFrame`).
    pub fn frame_page<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        frame: u32,
    ) -> Result<PageNumber> {
        if frame == 0 {
            return Err(FrankenError::internal("WAL-index page lookup of frame 0"));
        }
        let index = frame_region(frame);
        let region = self.require_region(cx, src, index, frame)?;
        let seg = HashSegment::new(region, index);
        PageNumber::new(seg.pgno_at(frame - seg.i_zero() - 1)).ok_or_else(|| {
            FrankenError::wal_corrupt(format!("WAL-index has no page number for frame {frame}"))
        })
    }

    /// Forgets every frame after `mx_frame` (SQLite's `walCleanupHash`, run when a write
    /// transaction rolls back): in the region holding `mx_frame`, clears hash slots and
    /// `aPgno` entries past it. Later regions need no cleaning: they are wiped when their
    /// first frame is appended again, and lookups never look past `mxFrame`.
    /// `mx_frame == 0` does nothing (frame 1's append wipes region 0).
    pub fn rollback_to<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        mx_frame: u32,
    ) -> Result<()> {
        if mx_frame == 0 {
            return Ok(());
        }
        let index = frame_region(mx_frame);
        if let Some(region) = self.map_region(cx, src, index, false)? {
            HashSegment::new(region, index).cleanup_after(mx_frame - region_i_zero(index));
        }
        Ok(())
    }

    /// The checkpoint list: for the frames in `(n_backfill, safe_frame]`, the newest frame
    /// of each page `<= n_page`, in ascending page order (one allocation, sized by the
    /// frame count; sorting instead of SQLite's merge iterator).
    ///
    /// Note: SQLite's `walCheckpoint` picks the newest frame `<= mxFrame` and *skips* the
    /// page if that frame is past `mxSafeFrame`; this returns the newest frame
    /// `<= safe_frame` instead, which writes a version every reader with
    /// `mxFrame >= safe_frame` would read from the WAL anyway, so it is equally safe.
    pub fn checkpoint_frames<S: RegionSource + ?Sized>(
        &mut self,
        cx: &Cx,
        src: &mut S,
        n_backfill: u32,
        safe_frame: u32,
        n_page: u32,
    ) -> Result<Vec<BackfillEntry>> {
        if safe_frame <= n_backfill {
            return Ok(Vec::new());
        }
        let first = n_backfill + 1;
        let mut out = Vec::with_capacity((safe_frame - n_backfill) as usize);
        for index in frame_region(first)..=frame_region(safe_frame) {
            cx.checkpoint()?;
            let region = self.require_region(cx, src, index, safe_frame)?;
            let seg = HashSegment::new(region, index);
            let i_zero = seg.i_zero();
            let lo = first.max(i_zero + 1);
            let hi = safe_frame.min(i_zero + seg.capacity());
            for frame in lo..=hi {
                let pgno = seg.pgno_at(frame - i_zero - 1);
                let Some(page) = PageNumber::new(pgno) else {
                    return Err(FrankenError::wal_corrupt(format!(
                        "WAL-index has no page number for frame {frame} (checkpoint range \
                         {first}..={safe_frame})"
                    )));
                };
                if pgno <= n_page {
                    out.push(BackfillEntry { page, frame });
                }
            }
        }
        // Ascending page, newest frame first within a page; keep that first one.
        out.sort_unstable_by(|a, b| a.page.cmp(&b.page).then(b.frame.cmp(&a.frame)));
        out.dedup_by_key(|e| e.page);
        Ok(out)
    }
}
