//! The two-thread frame loop of the WAL scan: the same valid prefix, the same
//! `on_frame` calls in the same order and the same [`ScanReport`] as the sequential
//! reference loop in [`crate::wal`], with the reading and checksumming spread over two
//! cores.
//!
//! # Why frames can be checked independently
//!
//! Frame `i` is valid when its salts match, its page number is not 0 and its stored
//! checksum equals the running checksum `c_i = checksum(frame_i[0..8] ++ page_i, c_{i-1})`.
//! The scan stops at the first invalid frame, so frame `i` only matters when frame
//! `i − 1` was valid, i.e. when `c_{i-1}` equals frame `i − 1`'s **stored** checksum.
//! Seeding frame `i`'s checksum with the stored value of frame `i − 1` (read from the
//! same buffer) therefore gives the right verdict for every frame that matters, and
//! needs nothing from other chunks. Only the first frame of a chunk lacks its
//! predecessor; for it the worker computes `g = checksum(frame[0..8] ++ page, [0, 0])`
//! and the merge applies the seed later: the checksum is linear in its seed,
//!
//! ```text
//! checksum(x, s) = A·s + checksum(x, [0, 0])      (wrapping u32 arithmetic)
//! A = | F(n-1)  F(n)   |      n = (8 + page_size) / 4 words, F = Fibonacci mod 2^32
//!     | F(n)    F(n+1) |      (columns: checksum(zeros(4n), [1,0]) and [0,1]; [`seed_matrix`])
//! ```
//!
//! # Work split
//!
//! ```text
//! frames 1..=n_frames, in windows of ParallelPlan::window_frames frames
//!   (at most WINDOW_BYTES of WAL and WINDOW_MAX_FRAMES frames, whole chunks):
//!   chunks of ParallelPlan::chunk_frames frames (PARALLEL_CHUNK_BYTES of WAL, >= 1 frame)
//!   next = 0, limit = +inf                        // atomics shared by both threads
//!   helper thread and calling thread, each:       // one scoped helper per window
//!       k = next++; stop if k >= chunks or k > limit
//!       pread the chunk into its own buffer; fill slot k (ChunkOut):
//!           frame 0: salt / page checks, g, stored checksum
//!           frame j > 0: salt / page checks, checksum seeded with frame j-1's stored one
//!           stop at the first rejected frame (ok = frames accepted so far)
//!       rejected frame, short read or I/O error in chunk k: limit = min(limit, k)
//!       mark slot k done
//!   calling thread, between its own chunks and after the helper is joined:
//!       merge slots in order (below); a stop ends the scan (limit = 0 stops the helper)
//! merge(slot k, first frame a):
//!   error            -> Err(error)                 // as the reference would have met it
//!   ok > 0 and A·running + g != stored(a)          -> ChecksumMismatch at a
//!   on_frame for frames a .. a+ok (in order); running = stored(a+ok-1); report updated
//!   ok < whole read  -> the worker's rejection (Salt / ZeroPage / Checksum) at a+ok
//!   whole < wanted   -> PartialFrame at a+whole (the file shrank)
//! ```
//!
//! # Memory (allocated once per scan, whatever the WAL size)
//!
//! | what | size |
//! |---|---|
//! | two read buffers | `2 × chunk_frames × frame size` (≤ 2 × [`PARALLEL_CHUNK_BYTES`], or two frames) |
//! | one [`ChunkOut`] per chunk of a window | `8` bytes per frame of a window (page number, commit size) + a few words |
//!
//! so at most `2 × 256 KiB + 8 × 131072 B` ≈ 1.5 MiB.
//!
//! # Errors
//!
//! A failed read (or cancellation) is kept in its chunk's slot and returned when the
//! merge reaches that chunk, so an error inside the valid prefix is an `Err` here as in
//! the reference, and an error on a chunk past the end of the valid prefix is dropped.
//! The two loops read different extents (256 KiB here, 1 MiB there), so a read error
//! in the bytes just past the valid prefix may surface in one loop and not the other.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::VfsFile;
use parking_lot::Mutex;

use crate::checksum::{WAL_FRAME_HEADER_SIZE, wal_checksum};
use crate::format::{FRAME_CHECKSUMMED_BYTES, FrameHeader, WalHeader, frame_offset, frame_size};
use crate::wal::{ScanReport, StopReason};

/// WAL files at least this large are scanned by [`scan_frames`] (when the machine has
/// two cores): below it, the cost of a thread outweighs the gain.
pub(crate) const PARALLEL_MIN_BYTES: u64 = 8 << 20;
/// Bytes of WAL per chunk (rounded down to whole frames, at least one): small enough
/// that a chunk stays in a core's L2 cache between the `pread` and the checksum.
pub(crate) const PARALLEL_CHUNK_BYTES: usize = 256 << 10;
/// Bytes of WAL per window (rounded down to whole chunks).
pub(crate) const WINDOW_BYTES: usize = 64 << 20;
/// Frames per window at most: bounds the per-frame table to 8 bytes × this = 1 MiB.
pub(crate) const WINDOW_MAX_FRAMES: usize = 1 << 17;

/// How [`scan_frames`] cuts the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParallelPlan {
    /// Frames per chunk (one `pread`), at least 1.
    pub(crate) chunk_frames: u32,
    /// Frames per window, a multiple of `chunk_frames`.
    pub(crate) window_frames: u32,
}

impl ParallelPlan {
    /// The plan used by the library for `page_size` ([`PARALLEL_CHUNK_BYTES`],
    /// [`WINDOW_BYTES`], [`WINDOW_MAX_FRAMES`]).
    pub(crate) fn for_page_size(page_size: u32) -> Self {
        let fsz = frame_size(page_size) as usize;
        let chunk = (PARALLEL_CHUNK_BYTES / fsz).max(1);
        let window = (WINDOW_BYTES / fsz).min(WINDOW_MAX_FRAMES);
        Self::new(chunk as u32, (window / chunk).max(1) as u32)
    }

    /// `chunk_frames` frames per chunk and `window_chunks` chunks per window (both at
    /// least 1).
    pub(crate) fn new(chunk_frames: u32, window_chunks: u32) -> Self {
        let chunk_frames = chunk_frames.max(1);
        Self {
            chunk_frames,
            window_frames: chunk_frames.saturating_mul(window_chunks.max(1)),
        }
    }
}

/// The 2×2 matrix `A` with `checksum(x, s) = A·s + checksum(x, [0, 0])` for any input
/// `x` of `frame[0..8] ++ page` length (`8 + page_size` bytes), as `[column for s1,
/// column for s2]`: `[[F(n-1), F(n)], [F(n), F(n+1)]]` with `n = (8 + page_size) / 4`.
/// Independent of the word order (the seed is not read from bytes).
pub(crate) fn seed_matrix(page_size: u32) -> [[u32; 2]; 2] {
    let n = (FRAME_CHECKSUMMED_BYTES as u64 + u64::from(page_size)) / 4;
    // (f0, f1) = (F(k), F(k+1)), starting at k = n - 1.
    let (mut f0, mut f1) = (0u32, 1u32);
    for _ in 0..n - 1 {
        (f0, f1) = (f1, f0.wrapping_add(f1));
    }
    let f2 = f0.wrapping_add(f1);
    [[f0, f1], [f1, f2]]
}

/// `A·s + g` in wrapping arithmetic.
fn apply_seed(a: &[[u32; 2]; 2], s: [u32; 2], g: [u32; 2]) -> [u32; 2] {
    [
        a[0][0]
            .wrapping_mul(s[0])
            .wrapping_add(a[1][0].wrapping_mul(s[1]))
            .wrapping_add(g[0]),
        a[0][1]
            .wrapping_mul(s[0])
            .wrapping_add(a[1][1].wrapping_mul(s[1]))
            .wrapping_add(g[1]),
    ]
}

/// Why a worker rejected a frame (checked in the reference's order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reject {
    Salt,
    ZeroPage,
    Checksum,
}

/// What a worker learned about one chunk.
#[derive(Debug, Default)]
struct ChunkOut {
    /// Frames asked for.
    want: u32,
    /// Whole frames read.
    whole: u32,
    /// Bytes of the first frame not read whole (when `whole < want`).
    partial_bytes: u64,
    /// Frames accepted from the chunk's first one (the first one's checksum still to be
    /// checked by the merge).
    ok: u32,
    /// Why frame `first + ok` was rejected, when `ok < whole`.
    reject: Option<Reject>,
    /// Checksum of the first frame from seed `[0, 0]`.
    first_g: [u32; 2],
    /// Stored checksum of the first frame.
    first_stored: [u32; 2],
    /// Stored checksum of frame `first + ok - 1`.
    last_stored: [u32; 2],
    /// Stored checksum of the last commit frame among the accepted ones.
    last_commit_stored: Option<[u32; 2]>,
    /// `[page number, commit size]` of each accepted frame.
    facts: Vec<[u32; 2]>,
    /// The chunk's read (or cancellation) failed.
    error: Option<FrankenError>,
}

/// One chunk's result, shared between the worker that fills it and the merge.
#[derive(Debug, Default)]
struct Slot {
    done: AtomicBool,
    out: Mutex<ChunkOut>,
}

/// Reads frames `first .. first + want` into `buf` and checks them (see the module doc).
/// Returns true when nothing after this chunk can be part of the valid prefix.
fn scan_chunk<F: VfsFile>(
    cx: &Cx,
    file: &F,
    header: &WalHeader,
    first: u32,
    want: u32,
    buf: &mut [u8],
    out: &mut ChunkOut,
) -> bool {
    out.want = want;
    out.whole = 0;
    out.partial_bytes = 0;
    out.ok = 0;
    out.reject = None;
    out.last_commit_stored = None;
    out.facts.clear();
    out.error = None;
    let fb = frame_size(header.page_size) as usize;
    let be = header.big_endian_checksum();
    let chunk = &mut buf[..want as usize * fb];
    let got = match cx
        .checkpoint()
        .and_then(|()| file.read(cx, chunk, frame_offset(first, header.page_size)))
    {
        Ok(got) => got,
        Err(e) => {
            out.error = Some(e);
            return true;
        }
    };
    let whole = got / fb;
    out.whole = whole as u32;
    out.partial_bytes = (got % fb) as u64;
    out.facts.reserve(whole);
    let mut prev = [0u32; 2];
    for (i, bytes) in chunk[..whole * fb].chunks_exact(fb).enumerate() {
        let Some((head, page)) = bytes.split_first_chunk::<WAL_FRAME_HEADER_SIZE>() else {
            // A frame is at least 24 + 512 bytes long.
            out.error = Some(FrankenError::internal("WAL frame shorter than its header"));
            return true;
        };
        let fh = FrameHeader::from_bytes(head);
        if fh.salt != header.salt {
            out.reject = Some(Reject::Salt);
            break;
        }
        if fh.page_number == 0 {
            out.reject = Some(Reject::ZeroPage);
            break;
        }
        let c = wal_checksum(&head[..FRAME_CHECKSUMMED_BYTES], be, prev);
        let c = wal_checksum(page, be, c);
        if i == 0 {
            out.first_g = c;
            out.first_stored = fh.checksum;
        } else if c != fh.checksum {
            out.reject = Some(Reject::Checksum);
            break;
        }
        prev = fh.checksum;
        out.facts.push([fh.page_number, fh.db_size_after_commit]);
        if fh.is_commit() {
            out.last_commit_stored = Some(fh.checksum);
        }
    }
    out.ok = out.facts.len() as u32;
    out.last_stored = prev;
    out.reject.is_some() || whole < want as usize
}

/// The merge of one finished chunk starting at frame `first` (see the module doc):
/// `Ok(Some(..))` when the scan stops in it.
fn merge_chunk(
    out: &mut ChunkOut,
    first: u32,
    a: &[[u32; 2]; 2],
    running: &mut [u32; 2],
    report: &mut ScanReport,
    on_frame: &mut impl FnMut(u32, PageNumber, u32) -> Result<()>,
) -> Result<Option<(u32, StopReason)>> {
    if let Some(e) = out.error.take() {
        return Err(e);
    }
    if out.ok > 0 {
        if apply_seed(a, *running, out.first_g) != out.first_stored {
            return Ok(Some((first, StopReason::ChecksumMismatch { frame: first })));
        }
        let mut frame = first;
        for &[pgno, db_size] in &out.facts {
            let page = PageNumber::new(pgno)
                .ok_or_else(|| FrankenError::internal("scan accepted page number 0"))?;
            on_frame(frame, page, db_size)?;
            if db_size != 0 {
                report.mx_frame = frame;
                report.n_page = db_size;
                report.commits += 1;
            }
            frame += 1;
        }
        *running = out.last_stored;
        report.last_valid_frame = frame - 1;
        report.last_valid_checksum = out.last_stored;
        if let Some(c) = out.last_commit_stored {
            report.frame_checksum = c;
        }
    }
    let at = first + out.ok;
    if out.ok < out.whole {
        let stop = match out.reject {
            Some(Reject::Salt) => StopReason::SaltMismatch { frame: at },
            Some(Reject::ZeroPage) => StopReason::ZeroPageNumber { frame: at },
            Some(Reject::Checksum) => StopReason::ChecksumMismatch { frame: at },
            None => {
                return Err(FrankenError::internal(
                    "scan chunk stopped without a reason",
                ));
            }
        };
        return Ok(Some((at, stop)));
    }
    if out.whole < out.want {
        let frame = first + out.whole;
        return Ok(Some((
            frame,
            StopReason::PartialFrame {
                frame,
                bytes: out.partial_bytes,
            },
        )));
    }
    Ok(None)
}

/// The shared state of one window.
struct Window<'a, F> {
    cx: &'a Cx,
    file: &'a F,
    header: &'a WalHeader,
    /// First frame of the window.
    start: u32,
    /// Frames in the window.
    frames: u32,
    chunk_frames: u32,
    chunks: u32,
    slots: &'a [Slot],
    next: AtomicU32,
    /// No chunk past this one can hold part of the valid prefix.
    limit: AtomicU32,
}

impl<F: VfsFile> Window<'_, F> {
    /// First frame of chunk `k`.
    fn chunk_start(&self, k: u32) -> u32 {
        self.start + k * self.chunk_frames
    }

    /// Claims and scans the next chunk; false when none is left.
    fn work_one(&self, buf: &mut [u8]) -> bool {
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if k >= self.chunks || k > self.limit.load(Ordering::Acquire) {
            return false;
        }
        let first = self.chunk_start(k);
        let want = self.chunk_frames.min(self.start + self.frames - first);
        let slot = &self.slots[k as usize];
        let last = scan_chunk(
            self.cx,
            self.file,
            self.header,
            first,
            want,
            buf,
            &mut slot.out.lock(),
        );
        if last {
            self.limit.fetch_min(k, Ordering::AcqRel);
        }
        slot.done.store(true, Ordering::Release);
        true
    }
}

/// The two-thread frame loop (see the module doc): frames `1..=n_frames` of the WAL
/// whose valid header is `header`. Returns the frame it stopped at and why
/// (`(n_frames + 1, None)` when every frame was valid), exactly as the reference loop.
pub(crate) fn scan_frames<F: VfsFile>(
    cx: &Cx,
    file: &F,
    header: &WalHeader,
    n_frames: u32,
    plan: ParallelPlan,
    report: &mut ScanReport,
    on_frame: &mut impl FnMut(u32, PageNumber, u32) -> Result<()>,
) -> Result<(u32, Option<StopReason>)> {
    if n_frames == 0 {
        return Ok((1, None));
    }
    let a = seed_matrix(header.page_size);
    let fb = frame_size(header.page_size) as usize;
    let chunk_frames = plan.chunk_frames.min(n_frames);
    let window_frames = plan.window_frames.min(n_frames).max(chunk_frames);
    let window_chunks = window_frames.div_ceil(chunk_frames);
    let slots: Vec<Slot> = (0..window_chunks).map(|_| Slot::default()).collect();
    let mut main_buf = vec![0u8; chunk_frames as usize * fb];
    let mut helper_buf = vec![0u8; chunk_frames as usize * fb];
    let mut running = header.checksum;
    let mut start = 1u32;
    while start <= n_frames {
        let frames = window_frames.min(n_frames - start + 1);
        let w = Window {
            cx,
            file,
            header,
            start,
            frames,
            chunk_frames,
            chunks: frames.div_ceil(chunk_frames),
            slots: &slots,
            next: AtomicU32::new(0),
            limit: AtomicU32::new(u32::MAX),
        };
        for s in &slots {
            s.done.store(false, Ordering::Relaxed);
        }
        let mut merged = 0u32;
        let mut end: Option<Result<(u32, StopReason)>> = None;
        let mut merge_ready = |w: &Window<'_, F>, wait: bool| {
            while end.is_none() && merged < w.chunks {
                let slot = &w.slots[merged as usize];
                if !slot.done.load(Ordering::Acquire) {
                    if wait {
                        // Only a chunk past `limit` is never scanned, and the chunk
                        // that set `limit` ends the scan before it.
                        end = Some(Err(FrankenError::internal(format!(
                            "WAL scan chunk {merged} of the window at frame {} was not scanned",
                            w.start
                        ))));
                    }
                    return;
                }
                let first = w.chunk_start(merged);
                match merge_chunk(
                    &mut slot.out.lock(),
                    first,
                    &a,
                    &mut running,
                    report,
                    on_frame,
                ) {
                    Ok(None) => merged += 1,
                    Ok(Some(stop)) => end = Some(Ok(stop)),
                    Err(e) => end = Some(Err(e)),
                }
                if end.is_some() {
                    // Nothing more is needed: let the helper stop.
                    w.limit.store(0, Ordering::Release);
                }
            }
        };
        std::thread::scope(|s| {
            if w.chunks > 1 {
                let helper = std::thread::Builder::new()
                    .name("fsqlite-wal-scan".into())
                    .spawn_scoped(s, || while w.work_one(&mut helper_buf) {});
                if let Err(e) = &helper {
                    // The calling thread scans every chunk alone.
                    tracing::debug!(target: "fsqlite.wal.recovery", "scan helper thread not started: {e}");
                }
            }
            while w.work_one(&mut main_buf) {
                merge_ready(&w, false);
            }
        });
        merge_ready(&w, true);
        if let Some(end) = end {
            let (frame, stop) = end?;
            return Ok((frame, Some(stop)));
        }
        start += frames;
    }
    Ok((n_frames + 1, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::WAL_HEADER_SIZE;

    #[test]
    fn seed_matrix_matches_the_checksum_of_zeros() {
        for ps in [512u32, 1024, 4096, 65536] {
            let zeros = vec![0u8; ps as usize + FRAME_CHECKSUMMED_BYTES];
            let a = seed_matrix(ps);
            for be in [false, true] {
                assert_eq!(a[0], wal_checksum(&zeros, be, [1, 0]), "ps {ps}");
                assert_eq!(a[1], wal_checksum(&zeros, be, [0, 1]), "ps {ps}");
            }
        }
    }

    #[test]
    fn checksum_is_affine_in_its_seed() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for ps in [512u32, 2048, 8192] {
            let a = seed_matrix(ps);
            let data: Vec<u8> = (0..ps as usize + 8).map(|_| next() as u8).collect();
            for be in [false, true] {
                let g = wal_checksum(&data, be, [0, 0]);
                for _ in 0..8 {
                    let s = [next() as u32, next() as u32];
                    assert_eq!(apply_seed(&a, s, g), wal_checksum(&data, be, s));
                }
            }
        }
    }

    /// One frame to write: page number, commit size, salts, page fill seed.
    #[derive(Clone, Copy)]
    struct Spec {
        pgno: u32,
        commit: u32,
        salt: [u32; 2],
        fill: u64,
    }

    const SALT: [u32; 2] = [0x0102_0304, 0xa0b0_c0d0];

    /// A WAL image: a valid header, then `frames`, each checksum chained from the last.
    fn build_wal(ps: u32, be: bool, frames: &[Spec]) -> Vec<u8> {
        let h = WalHeader::new(fsqlite_types::PageSize::new(ps).unwrap(), 7, SALT, be);
        let mut out = h.encode().to_vec();
        let mut running = h.checksum;
        for f in frames {
            let mut x = f.fill | 1;
            let page: Vec<u8> = (0..ps)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            running = crate::format::frame_checksum(running, f.pgno, f.commit, &page, be);
            let fh = FrameHeader {
                page_number: f.pgno,
                db_size_after_commit: f.commit,
                salt: f.salt,
                checksum: running,
            };
            out.extend_from_slice(&fh.encode());
            out.extend_from_slice(&page);
        }
        out
    }

    type Outcome = (
        std::result::Result<ScanReport, String>,
        Vec<(u32, u32, u32)>,
    );

    fn run(bytes: &[u8], mode: crate::wal::ScanMode, fail_at: Option<u32>) -> Outcome {
        use fsqlite_types::VfsOpenFlags;
        use fsqlite_vfs::{MemoryVfs, Vfs};
        let cx = Cx::new();
        let vfs = MemoryVfs::new();
        let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL;
        let (mut f, _) = vfs
            .open(&cx, Some(std::path::Path::new("/t.db-wal")), flags)
            .unwrap();
        if !bytes.is_empty() {
            f.write(&cx, bytes, 0).unwrap();
        }
        let mut calls = Vec::new();
        let r = crate::wal::scan_inner_with(&cx, &f, None, mode, |frame, page, commit| {
            if Some(frame) == fail_at {
                return Err(FrankenError::internal(format!("stop at {frame}")));
            }
            calls.push((frame, page.get(), commit));
            Ok(())
        });
        (r.map_err(|e| e.to_string()), calls)
    }

    /// Plans that put chunk and window boundaries everywhere in a small WAL.
    const PLANS: [(u32, u32); 6] = [(1, 1), (1, 2), (2, 3), (3, 1), (5, 4), (64, 64)];

    /// The parallel loop agrees with the reference on `bytes` for every plan.
    fn assert_same(bytes: &[u8], fail_at: Option<u32>, what: &str) {
        let want = run(bytes, crate::wal::ScanMode::Sequential, fail_at);
        for (c, w) in PLANS {
            let got = run(
                bytes,
                crate::wal::ScanMode::Parallel(ParallelPlan::new(c, w)),
                fail_at,
            );
            assert_eq!(got, want, "{what}; plan ({c}, {w})");
        }
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// A random WAL: page size, word order, page numbers (rarely 0), commits, a salt
    /// change from some frame on, then a flipped byte, a truncated tail and an
    /// `on_frame` failure, each sometimes.
    fn random_case(seed: u64) -> (Vec<u8>, Option<u32>, String) {
        let mut r = Rng(seed | 1);
        let ps = [512u32, 1024, 4096, 65536][r.below(4) as usize];
        let be = r.below(2) == 1;
        let n = if ps == 65536 { r.below(5) } else { r.below(40) } as u32;
        let salt_change = (r.below(3) == 0).then(|| r.below(u64::from(n) + 1) as u32);
        let frames: Vec<Spec> = (0..n)
            .map(|i| Spec {
                pgno: if r.below(30) == 0 {
                    0
                } else {
                    r.below(100) as u32 + 1
                },
                commit: if r.below(3) == 0 {
                    r.below(200) as u32 + 1
                } else {
                    0
                },
                salt: if salt_change.is_some_and(|s| i >= s) {
                    [SALT[0].wrapping_add(1), SALT[1]]
                } else {
                    SALT
                },
                fill: r.next(),
            })
            .collect();
        let mut bytes = build_wal(ps, be, &frames);
        let flip = (r.below(2) == 0).then(|| r.below(bytes.len() as u64) as usize);
        if let Some(at) = flip {
            bytes[at] ^= 1 << r.below(8);
        }
        let cut = (r.below(3) == 0).then(|| r.below(bytes.len() as u64 + 1) as usize);
        if let Some(len) = cut {
            bytes.truncate(len);
        }
        let fail_at = (r.below(5) == 0).then(|| r.below(u64::from(n) + 2) as u32);
        let what = format!(
            "seed {seed}: ps {ps} be {be} n {n} salt change {salt_change:?} flip {flip:?} \
             cut {cut:?} fail {fail_at:?}"
        );
        (bytes, fail_at, what)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(96))]
        #[test]
        fn parallel_scan_equals_sequential(seed in proptest::prelude::any::<u64>()) {
            let (bytes, fail_at, what) = random_case(seed);
            assert_same(&bytes, fail_at, &what);
        }
    }

    #[test]
    fn every_corrupted_byte_and_every_cut_agree() {
        for be in [false, true] {
            let frames: Vec<Spec> = (0..6u32)
                .map(|i| Spec {
                    pgno: i % 4 + 1,
                    commit: if i % 2 == 1 { 9 } else { 0 },
                    salt: SALT,
                    fill: u64::from(i) + 11,
                })
                .collect();
            let clean = build_wal(512, be, &frames);
            assert_same(&clean, None, "clean");
            // Every byte of the WAL header and of every frame header, every 29th page
            // byte (page bytes only enter the checksum), and the last byte.
            let fsz = frame_size(512) as usize;
            let interesting = |at: usize| {
                at < WAL_HEADER_SIZE
                    || (at - WAL_HEADER_SIZE) % fsz < WAL_FRAME_HEADER_SIZE
                    || at.is_multiple_of(29)
                    || at + 1 == clean.len()
            };
            for at in (0..clean.len()).filter(|&at| interesting(at)) {
                let mut bytes = clean.clone();
                bytes[at] ^= 0x80;
                assert_same(&bytes, None, &format!("be {be}, byte {at} flipped"));
            }
            // Every length within 2 bytes of a frame boundary, and every 31st.
            for len in 0..=clean.len() {
                let off = (len + fsz - WAL_HEADER_SIZE % fsz) % fsz;
                if len.is_multiple_of(31) || off <= 2 || off + 2 >= fsz {
                    assert_same(&clean[..len], None, &format!("be {be}, cut to {len}"));
                }
            }
        }
    }

    #[test]
    fn plan_geometry() {
        let p = ParallelPlan::for_page_size(4096);
        assert_eq!(p.chunk_frames, (256 << 10) / 4120);
        assert_eq!(p.window_frames % p.chunk_frames, 0);
        assert!(p.window_frames as usize * 4120 <= WINDOW_BYTES);
        let p = ParallelPlan::for_page_size(512);
        assert!(p.window_frames as usize <= WINDOW_MAX_FRAMES);
        let p = ParallelPlan::for_page_size(65536);
        assert_eq!(p.chunk_frames, 3);
        assert_eq!(ParallelPlan::new(0, 0), ParallelPlan::new(1, 1));
    }
}
