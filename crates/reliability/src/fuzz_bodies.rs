//! The bodies of the fuzz targets (TESTING.md §2.8 (c)) as plain functions: `fuzz/`
//! (cargo-fuzz, libFuzzer) calls them on mutated inputs, and `cargo test` calls them on a
//! few thousand seeded generated inputs ([`generate`]), fuzzcheck style, so CI runs the
//! same properties without cargo-fuzz. A body **panics** when a property fails (that is
//! how libFuzzer sees a finding); it never panics on any input otherwise.
//!
//! | target | input | properties |
//! |---|---|---|
//! | [`wal_header`] | raw bytes (first 32 = a WAL header) | `WalHeader::decode` accepts exactly what the reference accepts (magic, page size, checksum, version); `encode(decode(x)) == x` |
//! | [`wal_recover_raw`] | raw bytes = a whole WAL file | `WalFile::scan` never panics, stays in the file, and equals the reference scan ([`crate::walgen::scan`]); a connection opened on it reads exactly the reference's newest committed page images |
//! | [`wal_recover_struct`] | a recipe: page size, word order, salts, frames with commit markers, damage list (bit flip, zeroed sector, truncation, misdirected frame, garbage tail) | a valid WAL is built and damaged; scan == reference; the recovered `mxFrame` is at least the last commit before the first damaged byte (more only through a checksum collision, which is counted, not failed); the connection reads the reference's pages |
//! | [`shm_header`] | a 32 KiB `-shm` region image (or a recipe for a consistent header) | the lock-free header read accepts exactly the headers the independent reader calls consistent; hash lookups in region 0 and 1 terminate (a value or `WalCorrupt`) |
//! | [`engine_model`] | ops: commit / read / checkpoint / crash / crash-at-op | run on a `MemoryVfs` against the reference model; after every crash the reopened database is a committed state no older than the last acknowledged one |
//!
//! Input recipes are read with [`Bytes`], which yields zeros once the input is exhausted,
//! so every input (including the empty one) is a valid recipe.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fsqlite_testkit::rng::Rng;
use fsqlite_testkit::sqlite::read_shm_header;
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{CrashMode, MemoryVfs, Vfs};
use fsqlite_wal::format::WalHeader;
use fsqlite_wal::wal_index::{
    HashSegment, HeaderRead, HeapRegions, WALINDEX_PGSZ, WalIndexHdr, try_read_header,
};
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalFile, WalOptions};

use crate::model::{Bound, Model, page_digest, page_image};
use crate::walgen::{self, FRAME_HEADER_LEN, GenFrame, HEADER_LEN, WalSpec};
use crate::workloads::{commit_pages, observe};

/// The fuzz targets, by name.
pub const TARGETS: [&str; 6] = [
    "wal_header",
    "wal_recover_raw",
    "wal_recover_struct",
    "shm_header",
    "engine_model",
    "ltx_decode",
];

/// Checksum collisions seen by [`wal_recover_struct`] (damage the WAL checksum cannot see).
pub static CHECKSUM_COLLISIONS: AtomicU64 = AtomicU64::new(0);

/// Most pages a body reads through a connection.
const MAX_READ_PAGES: u32 = 64;

/// Runs the body of target `name` on `data`; `false` for an unknown name.
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "wal_header" => wal_header(data),
        "wal_recover_raw" => wal_recover_raw(data),
        "wal_recover_struct" => wal_recover_struct(data),
        "shm_header" => shm_header(data),
        "engine_model" => engine_model(data),
        "ltx_decode" => ltx_decode(data),
        _ => return false,
    }
    true
}

/// A reader of recipe bytes that yields zeros when exhausted.
#[derive(Debug)]
pub struct Bytes<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Bytes<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// The next byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// The next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// The next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// True when the input is exhausted.
    pub fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
}

/// Target `wal_header` (see the module doc).
pub fn wal_header(data: &[u8]) {
    let n = data.len().min(HEADER_LEN);
    let ours = WalHeader::decode(&data[..n]);
    let (usable, version_ok) = walgen::header_validity(&data[..n]);
    match ours {
        Ok(h) => {
            assert!(
                version_ok,
                "decode accepted a header the reference rejects: {:02x?}",
                &data[..n]
            );
            assert_eq!(
                &h.encode()[..],
                &data[..HEADER_LEN],
                "encode(decode(x)) != x"
            );
            assert_eq!(
                WalHeader::decode(&h.encode()),
                Ok(h),
                "decode(encode(h)) != h"
            );
        }
        Err(e) => {
            assert!(
                !version_ok,
                "decode rejected a valid header ({e}): {:02x?}",
                &data[..n]
            );
            assert_eq!(
                e.is_cannot_open(),
                usable,
                "a usable header of another version must be CannotOpen, anything else an empty WAL ({e})"
            );
        }
    }
}

/// Opens a connection on `wal_bytes` (as the `-wal` of an empty database) and checks that
/// it reads the reference's newest committed image of each page (the first
/// [`MAX_READ_PAGES`]), zeros for pages the WAL does not hold.
fn check_connection_reads(wal_bytes: &[u8], reference: &walgen::RefScan, path: &str) {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(0x6675_7a7a);
    let db = Path::new(path);
    vfs.set_contents(&crate::workloads::wal_path(db), wal_bytes);
    let opts = WalOptions {
        sync: SyncMode::Full,
        page_size: 4096,
        busy_timeout: std::time::Duration::ZERO,
        auto_checkpoint: None,
        checkpoint_on_close: false,
    };
    let mut wal = match Wal::open(&cx, Arc::new(vfs), db, opts) {
        Ok(w) => w,
        Err(e) => panic!(
            "Wal::open failed on a WAL the reference reads ({} commits): {e}",
            reference.commits
        ),
    };
    let ps = wal.page_size();
    if reference.mx_frame > 0 {
        assert_eq!(
            ps, reference.page_size,
            "the connection did not adopt the WAL's page size"
        );
    }
    let txn = wal
        .begin_read(&cx)
        .unwrap_or_else(|e| panic!("begin_read failed: {e}"));
    let want_size = reference.n_page;
    assert_eq!(txn.db_size(), want_size, "recovered database size");
    let mut buf = vec![0u8; ps as usize];
    for p in 1..=want_size.min(MAX_READ_PAGES) {
        let page = PageNumber::new(p).unwrap_or_else(|| unreachable!("p >= 1"));
        txn.read_page(&cx, page, &mut buf)
            .unwrap_or_else(|e| panic!("read_page {p} failed: {e}"));
        match reference.newest(p) {
            Some(off) => assert!(
                buf[..] == wal_bytes[off..off + ps as usize],
                "page {p} differs from its newest committed frame"
            ),
            None => assert!(
                buf.iter().all(|&b| b == 0),
                "page {p} is in no committed frame but reads non-zero"
            ),
        }
    }
}

/// Scans `bytes` as a WAL with `WalFile::scan` and checks it against the reference.
fn scan_and_compare(bytes: &[u8], path: &str) -> walgen::RefScan {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(1);
    let p = Path::new(path);
    vfs.set_contents(p, bytes);
    let (file, _) = vfs
        .open(&cx, Some(p), VfsOpenFlags::READWRITE | VfsOpenFlags::WAL)
        .unwrap_or_else(|e| panic!("MemoryVfs open failed: {e}"));
    let ours = WalFile::scan(&cx, &file, |_, _, _| Ok(()));
    let r = walgen::scan(bytes);
    match ours {
        Err(e) => {
            assert!(
                r.header_ok && !r.version_ok && e.to_string().contains("version"),
                "scan failed ({e}) where the reference found header_ok={} version_ok={}",
                r.header_ok,
                r.version_ok
            );
        }
        Ok(s) => {
            assert_eq!(
                s.header.is_some(),
                r.version_ok,
                "header usability differs from the reference"
            );
            assert_eq!(
                (s.mx_frame, s.n_page, s.last_valid_frame, s.commits),
                (r.mx_frame, r.n_page, r.last_valid, r.commits),
                "scan differs from the reference (mx_frame, n_page, last_valid, commits); stop = {}",
                s.stop
            );
            if s.mx_frame > 0 {
                assert_eq!(
                    s.frame_checksum, r.frame_cksum,
                    "running checksum at mxFrame"
                );
            }
            assert!(
                s.stop_offset <= s.file_size,
                "scan stopped past the end of the file"
            );
            assert!(s.mx_frame <= s.last_valid_frame);
        }
    }
    r
}

/// Target `wal_recover_raw` (see the module doc).
pub fn wal_recover_raw(data: &[u8]) {
    let r = scan_and_compare(data, "/fz/raw-wal");
    if r.version_ok && r.commits > 0 {
        check_connection_reads(data, &r, "/fz/raw.db");
    }
}

/// One damage applied by [`wal_recover_struct`].
#[derive(Clone, Copy, Debug)]
enum Damage {
    Flip(u32),
    ZeroSector(u32),
    Truncate(u32),
    Misdirect(u32, u32),
    GarbageTail(u32),
}

/// Builds the valid WAL of a [`wal_recover_struct`] recipe: `(spec, frames, image)`.
fn build_struct_wal(b: &mut Bytes<'_>) -> (WalSpec, Vec<GenFrame>, Vec<u8>) {
    let ctl = b.u8();
    let spec = WalSpec {
        page_size: [512, 1024, 2048, 4096][usize::from(ctl & 3)],
        big_endian: ctl & 4 != 0,
        salt: [b.u32(), b.u32()],
        checkpoint_seq: b.u32(),
        version: walgen::VERSION,
    };
    let n = 1 + usize::from(b.u8() % 40);
    let content_seed = b.u64();
    let mut frames = Vec::with_capacity(n);
    let mut db = 0u32;
    for i in 0..n {
        let x = b.u8();
        let page = 1 + u32::from(x % 16);
        db = db.max(page);
        let commit = x & 0x30 == 0x30 || i + 1 == n && x & 0x40 != 0;
        let mut data = vec![0u8; spec.page_size as usize];
        Rng::new(content_seed ^ i as u64).fill(&mut data);
        frames.push(GenFrame {
            page,
            db_size: if commit { db } else { 0 },
            data,
        });
    }
    let img = walgen::encode(&spec, &frames);
    (spec, frames, img)
}

/// Target `wal_recover_struct` (see the module doc).
pub fn wal_recover_struct(data: &[u8]) {
    let mut b = Bytes::new(data);
    let (spec, frames, valid) = build_struct_wal(&mut b);
    let fs = FRAME_HEADER_LEN + spec.page_size as usize;
    let mut img = valid.clone();
    let n_damage = b.u8() % 4;
    let mut rng = Rng::new(b.u64());
    for _ in 0..n_damage {
        let d = match b.u8() % 5 {
            0 => Damage::Flip(b.u32()),
            1 => Damage::ZeroSector(b.u32()),
            2 => Damage::Truncate(b.u32()),
            3 => Damage::Misdirect(b.u32(), b.u32()),
            _ => Damage::GarbageTail(b.u32()),
        };
        let len = img.len() as u32;
        match d {
            Damage::Flip(x) if len > 0 => {
                let bit = x % (len * 8);
                img[(bit / 8) as usize] ^= 1 << (bit % 8);
            }
            Damage::ZeroSector(x) if len > 0 => {
                let start = ((x % len) / 512 * 512) as usize;
                let end = (start + 512).min(img.len());
                img[start..end].fill(0);
            }
            Damage::Truncate(x) => img.truncate((x % (len + 1)) as usize),
            Damage::Misdirect(a, c) if !frames.is_empty() => {
                let nf = ((img.len().saturating_sub(HEADER_LEN)) / fs) as u32;
                if nf >= 1 {
                    let from = HEADER_LEN + (a % nf) as usize * fs;
                    let to = HEADER_LEN + (c % nf) as usize * fs;
                    let copy = img[from..from + fs].to_vec();
                    img[to..to + fs].copy_from_slice(&copy);
                }
            }
            Damage::GarbageTail(x) => {
                let mut tail = vec![0u8; (x % (2 * fs as u32)) as usize];
                rng.fill(&mut tail);
                img.extend_from_slice(&tail);
            }
            _ => {}
        }
    }
    // The first byte that differs from the valid image (or is missing from it).
    let first_diff = valid
        .iter()
        .zip(&img)
        .position(|(a, c)| a != c)
        .unwrap_or_else(|| valid.len().min(img.len()));
    let r = scan_and_compare(&img, "/fz/struct-wal");
    let expect_min = if first_diff < HEADER_LEN {
        0
    } else {
        let first_bad_frame = ((first_diff - HEADER_LEN) / fs + 1) as u32;
        frames
            .iter()
            .enumerate()
            .filter(|(i, f)| (*i as u32 + 1) < first_bad_frame && f.db_size != 0)
            .map(|(i, _)| i as u32 + 1)
            .max()
            .unwrap_or(0)
    };
    if first_diff >= HEADER_LEN
        || img.len() >= HEADER_LEN && img[..HEADER_LEN] == valid[..HEADER_LEN]
    {
        assert!(
            r.mx_frame >= expect_min,
            "recovery cut undamaged committed frames: mx_frame {} < {expect_min} (first damaged byte {first_diff})",
            r.mx_frame
        );
    }
    if r.mx_frame > expect_min && first_diff < valid.len() {
        // Damaged bytes inside the accepted prefix: the checksum did not see them.
        CHECKSUM_COLLISIONS.fetch_add(1, Ordering::Relaxed);
    }
    if r.version_ok && r.commits > 0 {
        check_connection_reads(&img, &r, "/fz/struct.db");
    }
}

/// Target `shm_header` (see the module doc).
pub fn shm_header(data: &[u8]) {
    let mut b = Bytes::new(data);
    let ctl = b.u8();
    let mut img = vec![0u8; WALINDEX_PGSZ];
    if ctl & 1 == 1 {
        // A consistent header from recipe fields, maybe damaged.
        let mut h = WalIndexHdr {
            i_change: b.u32(),
            big_end_cksum: b.u8() & 1,
            sz_page: [512u16, 1024, 4096, 1][usize::from(b.u8() & 3)],
            mx_frame: b.u32() % 10_000,
            n_page: b.u32(),
            a_frame_cksum: [b.u32(), b.u32()],
            a_salt: [b.u32(), b.u32()],
            ..WalIndexHdr::default()
        };
        h.seal();
        if ctl & 2 == 2 {
            h.i_version = b.u32();
            h.a_cksum = h.compute_checksum();
        }
        let bytes = h.to_bytes();
        img[..bytes.len()].copy_from_slice(&bytes);
        img[bytes.len()..2 * bytes.len()].copy_from_slice(&bytes);
        if ctl & 4 == 4 {
            let bit = b.u32() as usize % (8 * 2 * bytes.len());
            img[bit / 8] ^= 1 << (bit % 8);
        }
        let rest = &data[data.len().min(b.pos)..];
        let n = rest.len().min(img.len() - 136);
        img[136..136 + n].copy_from_slice(&rest[..n]);
    } else {
        let rest = &data[1.min(data.len())..];
        let n = rest.len().min(img.len());
        img[..n].copy_from_slice(&rest[..n]);
        if ctl & 2 == 2 {
            // Repeat the input over the region so the hash tables fill up.
            for i in n..img.len() {
                img[i] = if n == 0 { 0xff } else { img[i % n.max(1)] };
            }
        }
    }
    let heap = HeapRegions::from_image(&img);
    let Some(region) = heap.get(0) else {
        panic!("HeapRegions::from_image made no region 0")
    };
    let mut cached = WalIndexHdr::default();
    let verdict = try_read_header(region, &mut cached);
    let ind = read_shm_header(&img).unwrap_or_else(|e| panic!("independent reader failed: {e}"));
    match verdict {
        HeaderRead::Changed | HeaderRead::Unchanged => {
            assert!(
                ind.is_consistent(),
                "accepted a header the independent reader calls inconsistent"
            );
            assert_eq!(ind.i_version, fsqlite_wal::wal_index::WAL_INDEX_VERSION);
            assert_eq!(cached.mx_frame, ind.mx_frame);
        }
        HeaderRead::UnsupportedVersion { found } => {
            assert!(
                ind.is_consistent(),
                "version verdict on an inconsistent header"
            );
            assert_eq!(found, ind.i_version);
        }
        HeaderRead::NeedsRecovery(_) => {
            assert!(
                !ind.is_consistent(),
                "refused a header the independent reader calls consistent"
            );
        }
    }
    for index in 0..2u32 {
        let seg = HashSegment::new(region, index);
        for _ in 0..4 {
            let pgno = b.u32();
            let min = b.u32() % 20_000;
            let max = b.u32() % 20_000;
            let _ = seg.lookup(pgno, min, max);
        }
        let _ = seg.lookup(ind.n_page, 1, ind.mx_frame);
    }
}

/// Power loss in [`engine_model`]: crash `vfs` with `mode`, reopen, and judge the state;
/// returns the crashed VFS, the new connection and the model continued from the state.
fn crash_and_judge(
    cx: &Cx,
    vfs: &MemoryVfs,
    mode: CrashMode,
    opts: &WalOptions,
    model: &Model,
) -> (MemoryVfs, Wal<MemoryVfs>, Model) {
    let db = Path::new(ENGINE_DB);
    let next = vfs.fork_crashed(mode);
    let mut c = Wal::open(cx, Arc::new(next.clone()), db, opts.clone())
        .unwrap_or_else(|e| panic!("reopen after a crash ({mode:?}) failed: {e}"));
    let obs = observe(cx, &mut c, model.max_db_size() + 16)
        .unwrap_or_else(|e| panic!("read after a crash ({mode:?}) failed: {e}"));
    match model.judge(&obs, Bound::Durable) {
        Ok(i) => (next, c, model.continue_from(i)),
        Err(v) => panic!("after a crash ({mode:?}): {v}"),
    }
}

/// The database of [`engine_model`].
const ENGINE_DB: &str = "/fz/engine.db";

/// Target `engine_model` (see the module doc).
pub fn engine_model(data: &[u8]) {
    const PAGE: u32 = 512;
    let mut b = Bytes::new(data);
    let cx = Cx::new();
    let seed = b.u64();
    let mut vfs = MemoryVfs::with_seed(seed);
    let opts = WalOptions {
        sync: SyncMode::Full,
        page_size: PAGE,
        busy_timeout: std::time::Duration::ZERO,
        auto_checkpoint: if b.u8() & 1 == 1 { Some(8) } else { None },
        checkpoint_on_close: false,
    };
    let mut conn = Wal::open(
        &cx,
        Arc::new(vfs.clone()),
        Path::new(ENGINE_DB),
        opts.clone(),
    )
    .unwrap_or_else(|e| panic!("open failed: {e}"));
    let mut model = Model::new(PAGE);
    let mut txn = 0u64;
    let mut armed = false;
    let mut ops = 0;
    while !b.done() && ops < 32 {
        ops += 1;
        let op = b.u8() % 6;
        let arg = b.u8();
        let mut result: fsqlite_error::Result<()> = Ok(());
        match op {
            0 | 1 => {
                let db_size = model.states()[model.attempted()].db_size;
                let grow = db_size == 0 || arg & 0x80 != 0;
                let new_size = if grow { db_size + 1 } else { db_size };
                let mut pages: Vec<u32> = vec![1 + u32::from(arg) % new_size, new_size];
                pages.sort_unstable();
                pages.dedup();
                txn += 1;
                let images: Vec<(u32, Vec<u8>)> = pages
                    .iter()
                    .map(|&p| (p, page_image(seed, txn, p, PAGE, new_size)))
                    .collect();
                let digests: Vec<(u32, u64)> =
                    images.iter().map(|(p, i)| (*p, page_digest(i))).collect();
                let idx = model.attempt(txn, &digests, new_size);
                result = commit_pages(&cx, &mut conn, &images, new_size).map(|_| model.ack(idx));
            }
            2 => match observe(&cx, &mut conn, model.max_db_size() + 16) {
                Ok(obs) => {
                    let want = model.acked_state();
                    assert!(
                        obs.db_size == want.db_size && obs.pages == *want.pages,
                        "a live read does not see the last acknowledged state"
                    );
                }
                Err(e) => result = Err(e),
            },
            3 => {
                let mode = [
                    CheckpointMode::Passive,
                    CheckpointMode::Full,
                    CheckpointMode::Restart,
                    CheckpointMode::Truncate,
                ][usize::from(arg % 4)];
                result = conn.checkpoint(&cx, mode).map(|_| ());
            }
            4 if !armed => {
                vfs.set_crash_at_op(vfs.op_count() + 1 + u64::from(arg % 48));
                armed = true;
            }
            _ => {}
        }
        let crashed = armed && vfs.crashed_at().is_some();
        if let Err(e) = &result
            && !crashed
        {
            panic!("operation {op} failed without a fault: {e}");
        }
        if !crashed && op != 5 {
            continue;
        }
        let s = b.u64();
        let mode = match b.u8() % 5 {
            0 => CrashMode::DropAll,
            1 => CrashMode::KeepAll,
            2 => CrashMode::KeepRandom { seed: s },
            3 => CrashMode::Torn {
                seed: s,
                sector: 512,
            },
            _ => CrashMode::Torn {
                seed: s,
                sector: 4096,
            },
        };
        drop(conn);
        (vfs, conn, model) = crash_and_judge(&cx, &vfs, mode, &opts, &model);
        armed = false;
    }
    drop(conn);
    let _ = crash_and_judge(&cx, &vfs, CrashMode::DropAll, &opts, &model);
}

/// Target `ltx_decode`: an LTX file (Litestream's transaction file) decoded by
/// `fsqlite-replicate`; whatever decodes must re-encode to the same content,
/// deterministically, and nothing may panic ([`fsqlite_replicate::fuzz_decode`]).
pub fn ltx_decode(data: &[u8]) {
    fsqlite_replicate::fuzz_decode(data);
}

/// A well-formed LTX file of a few random pages (a snapshot or an incremental one).
fn generate_ltx(rng: &mut Rng) -> Vec<u8> {
    use fsqlite_replicate::ltx::{self, LtxHeader, Page};
    let page_size = 512u32 << rng.below(3);
    let commit = 1 + rng.below(6) as u32;
    let snapshot = rng.chance(0.5);
    let pgnos: Vec<u32> = if snapshot {
        (1..=commit).collect()
    } else {
        (1..=commit).filter(|_| rng.chance(0.6)).collect()
    };
    let pages: Vec<Page> = pgnos
        .into_iter()
        .map(|pgno| {
            let mut data = vec![0u8; page_size as usize];
            let n = rng.below(u64::from(page_size) / 4) as usize;
            rng.fill(&mut data[..n]);
            Page { pgno, data }
        })
        .collect();
    let txid = 1 + rng.below(1000);
    let header = if snapshot {
        LtxHeader::snapshot(page_size, commit, txid, 0)
    } else {
        // Litestream's own kind: no database checksums.
        let mut h = LtxHeader::incremental(page_size, commit, txid + 1, txid + 1, 0, 0);
        h.flags |= ltx::HEADER_FLAG_NO_CHECKSUM;
        h
    };
    let post = if header.flags & ltx::HEADER_FLAG_NO_CHECKSUM != 0 {
        0
    } else {
        ltx::checksum_pages(&pages)
    };
    ltx::encode(&header, &pages, post).unwrap_or_default()
}

/// A generated input for `target` (the in-test corpus and the cargo-fuzz seed corpus):
/// mostly well-formed inputs with some damage, some raw noise.
pub fn generate(target: &str, rng: &mut Rng) -> Vec<u8> {
    let noise = |max: u64, rng: &mut Rng| {
        let mut v = vec![0u8; rng.below(max + 1) as usize];
        rng.fill(&mut v);
        v
    };
    match target {
        "wal_header" => {
            if rng.chance(0.3) {
                return noise(40, rng);
            }
            let spec = WalSpec {
                page_size: 1 << (9 + rng.below(8)),
                big_endian: rng.chance(0.5),
                salt: [rng.next_u64() as u32, rng.next_u64() as u32],
                checkpoint_seq: rng.next_u64() as u32,
                version: if rng.chance(0.1) {
                    rng.next_u64() as u32
                } else {
                    walgen::VERSION
                },
            };
            let mut h = walgen::encode_header(&spec).to_vec();
            if rng.chance(0.4) {
                let bit = rng.below(256) as usize;
                h[bit / 8] ^= 1 << (bit % 8);
            }
            if rng.chance(0.1) {
                h.truncate(rng.below(32) as usize);
            }
            h
        }
        "wal_recover_raw" => {
            if rng.chance(0.2) {
                return noise(2048, rng);
            }
            let mut recipe = noise(64, rng);
            recipe.truncate(1 + 8 + 4 + 2 + 8 + 20);
            let (_, _, mut img) = build_struct_wal(&mut Bytes::new(&recipe));
            for _ in 0..rng.below(3) {
                if img.is_empty() {
                    break;
                }
                match rng.below(3) {
                    0 => {
                        let bit = rng.below(img.len() as u64 * 8) as usize;
                        img[bit / 8] ^= 1 << (bit % 8);
                    }
                    1 => img.truncate(rng.below(img.len() as u64 + 1) as usize),
                    _ => img.extend(noise(700, rng)),
                }
            }
            img
        }
        "wal_recover_struct" => noise(96, rng),
        "ltx_decode" => {
            if rng.chance(0.1) {
                return noise(300, rng);
            }
            let mut img = generate_ltx(rng);
            if rng.chance(0.5) && !img.is_empty() {
                let bit = rng.below(img.len() as u64 * 8) as usize;
                img[bit / 8] ^= 1 << (bit % 8);
            }
            if rng.chance(0.1) {
                img.truncate(rng.below(img.len() as u64 + 1) as usize);
            }
            img
        }
        "shm_header" => {
            let mut v = noise(200, rng);
            if !v.is_empty() && rng.chance(0.5) {
                v[0] |= 1;
            }
            v
        }
        _ => noise(80, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_inputs_are_valid_recipes() {
        for t in TARGETS {
            assert!(run_target(t, &[]));
        }
        assert!(!run_target("nope", &[]));
    }

    #[test]
    fn generated_ltx_files_decode() {
        let mut rng = Rng::new(7);
        for _ in 0..64 {
            let img = generate_ltx(&mut rng);
            fsqlite_replicate::ltx::decode(&img).unwrap();
        }
    }

    #[test]
    fn a_wal_of_another_version_is_refused_by_both_scanners() {
        let spec = WalSpec {
            page_size: 512,
            big_endian: false,
            salt: [7, 8],
            checkpoint_seq: 0,
            version: walgen::VERSION + 1,
        };
        let frames = vec![GenFrame {
            page: 1,
            db_size: 1,
            data: vec![3; 512],
        }];
        let img = walgen::encode(&spec, &frames);
        wal_header(&img);
        wal_recover_raw(&img);
        let r = walgen::scan(&img);
        assert!(r.header_ok && !r.version_ok);
    }
}
