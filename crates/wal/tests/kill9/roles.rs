//! What the re-executed test binary does in each role. Every role opens the shared
//! database through its own [`UnixVfs`] (`UnixVfs::from_env()`, so `FSQLITE_KILL_AT`
//! applies) and panics, which exits 101, on anything that breaks the contract; the
//! parent's driver turns that exit into a failure with this stderr.
//!
//! | role | loop | acks |
//! |---|---|---|
//! | `writer` | `begin_write`, read page 1 (= last txn `j`), stop at `K9_MAX_TXN`, write txn `j+1`'s pages, `commit(db_size)`; then maybe a checkpoint (seeded mode) | `(j+1, txn_hash)` after `commit` returned Ok |
//! | `reader` | `begin_read`, check the whole snapshot is exactly the state after the txn on page 1, release | `(j, state_hash(j))` |
//! | `reader-hold` | the same, but it acks **while** holding the read mark, then sleeps 1–5 ms before releasing | the same |
//! | `checkpointer` | checkpoint in a seeded mode, sleep 0–2 ms | `(n, log_frames << 32 \| backfilled)` |
//! | `verifier` | (alone, all victims dead) the checks of [`verifier`], SQLite as a differential oracle included | `(J, state_hash(J))` once |
//!
//! Busy (`Busy`, `BusyRecovery`) is retried for up to [`BUSY_LIMIT`]; it is the clean
//! error a survivor may see while another process recovers or checkpoints.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_error::{ErrorCode, FrankenError};
use fsqlite_testkit::child::ack;
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs};
use fsqlite_wal::checksum::WAL_FRAME_HEADER_SIZE;
use fsqlite_wal::format::frame_offset;
use fsqlite_wal::wal_index::{
    HeaderMemory, HeapRegions, WALINDEX_HDR_SIZE, load_header_copies, validate_header_copies,
};
use fsqlite_wal::{CheckpointMode, ScanReport, StopReason, SyncMode, Wal, WalFile, WalOptions};

use super::model::{Model, PageRead, Workload, parse_page};

/// Database path.
pub const ENV_DB: &str = "K9_DB";
/// [`Workload::encode`].
pub const ENV_WORKLOAD: &str = "K9_WORKLOAD";
/// [`ConnOpts::encode`].
pub const ENV_OPTS: &str = "K9_OPTS";
/// Writers stop (exit 0) once page 1 says this txn committed.
pub const ENV_MAX_TXN: &str = "K9_MAX_TXN";
/// Verifier: `floor:ceil`, the bounds on the txn it must find.
pub const ENV_BOUNDS: &str = "K9_BOUNDS";
/// Verifier: `keep` (exit without closing) or `checkpoint` (close: the last connection
/// checkpoints and deletes `-wal`/`-shm`, then the database file alone is checked).
pub const ENV_CLOSE: &str = "K9_CLOSE";
/// Writers only, for the harness's own self-test: a planted bug the checks must catch
/// (`ack_before_commit`: ack, sleep 3 ms, then commit; `split_commit`: commit page 1
/// alone, sleep 3 ms, then the rest of the txn as a second commit).
pub const ENV_BUG: &str = "K9_BUG";
/// The window a planted bug leaves open.
const BUG_WINDOW: Duration = Duration::from_millis(3);
/// Prefix of a counter line a child prints: `K9STAT <name> <n>`.
pub const STAT_PREFIX: &str = "K9STAT ";
/// Printed by a writer once its `Wal` is open: `K9OPEN ops=<kill-hook ops so far>`.
pub const OPEN_PREFIX: &str = "K9OPEN ";
/// How long a busy condition is retried before it counts as a stall.
pub const BUSY_LIMIT: Duration = Duration::from_secs(10);
/// Lock waits inside the engine.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// A checkpoint mode by seeded choice: PASSIVE 40 %, FULL, RESTART, TRUNCATE 20 % each.
fn pick_mode(rng: &mut Rng) -> CheckpointMode {
    match rng.below(5) {
        0 | 1 => CheckpointMode::Passive,
        2 => CheckpointMode::Full,
        3 => CheckpointMode::Restart,
        _ => CheckpointMode::Truncate,
    }
}

/// Connection options shared by a lineage's processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnOpts {
    /// Commit durability.
    pub sync: SyncMode,
    /// Auto-checkpoint threshold (0 = off).
    pub auto_checkpoint: u32,
    /// Percent chance that a writer checkpoints after a commit.
    pub writer_ckpt_pct: u64,
}

impl ConnOpts {
    /// `<off|normal|full>:<auto_checkpoint>:<writer_ckpt_pct>`.
    pub fn encode(&self) -> String {
        let sync = match self.sync {
            SyncMode::Off => "off",
            SyncMode::Normal => "normal",
            SyncMode::Full => "full",
        };
        format!("{sync}:{}:{}", self.auto_checkpoint, self.writer_ckpt_pct)
    }

    /// Parses [`ConnOpts::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let sync = match it.next()? {
            "off" => SyncMode::Off,
            "normal" => SyncMode::Normal,
            "full" => SyncMode::Full,
            _ => return None,
        };
        Some(Self {
            sync,
            auto_checkpoint: it.next()?.parse().ok()?,
            writer_ckpt_pct: it.next()?.parse().ok()?,
        })
    }

    fn wal_options(&self, page_size: u32, checkpoint_on_close: bool) -> WalOptions {
        WalOptions {
            sync: self.sync,
            page_size,
            busy_timeout: BUSY_TIMEOUT,
            auto_checkpoint: (self.auto_checkpoint > 0).then_some(self.auto_checkpoint),
            checkpoint_on_close,
        }
    }
}

/// The environment every role reads.
struct ChildEnv {
    db: PathBuf,
    workload: Workload,
    opts: ConnOpts,
    max_txn: u64,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

impl ChildEnv {
    fn from_env() -> Self {
        Self {
            db: PathBuf::from(env(ENV_DB)),
            workload: Workload::decode(&env(ENV_WORKLOAD)).expect("K9_WORKLOAD"),
            opts: ConnOpts::decode(&env(ENV_OPTS)).expect("K9_OPTS"),
            max_txn: std::env::var(ENV_MAX_TXN)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(u64::MAX),
        }
    }
}

fn is_busy(e: &FrankenError) -> bool {
    e.error_code() == ErrorCode::Busy
}

fn pn(p: u32) -> PageNumber {
    PageNumber::new(p).expect("page numbers start at 1")
}

/// Prints a counter line for the parent.
fn stat(name: &str, n: u64) {
    println!("{STAT_PREFIX}{name} {n}");
}

/// Runs the role `role` (see the module doc).
pub fn child_main(role: &str, seed: u64) {
    let e = ChildEnv::from_env();
    match role {
        "writer" => writer(&e, seed),
        "reader" => reader(&e, seed, false),
        "reader-hold" => reader(&e, seed, true),
        "checkpointer" => checkpointer(&e, seed),
        "verifier" => verifier(&e),
        other => panic!("unknown kill9 role {other:?}"),
    }
}

fn open_wal(cx: &Cx, vfs: &Arc<UnixVfs>, e: &ChildEnv, checkpoint_on_close: bool) -> Wal<UnixVfs> {
    let start = Instant::now();
    loop {
        let opts = e
            .opts
            .wal_options(e.workload.page_size, checkpoint_on_close);
        match Wal::open(cx, Arc::clone(vfs), &e.db, opts) {
            Ok(w) => return w,
            Err(err) if is_busy(&err) && start.elapsed() < BUSY_LIMIT => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(err) => panic!(
                "Wal::open({}) failed after {:?}: {err}",
                e.db.display(),
                start.elapsed()
            ),
        }
    }
}

fn writer(e: &ChildEnv, seed: u64) {
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::from_env());
    let mut wal = open_wal(&cx, &vfs, e, true);
    println!("{OPEN_PREFIX}ops={}", vfs.kill_ops_counted());
    let mut model = Model::new(e.workload);
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; e.workload.page_size as usize];
    let bug = std::env::var(ENV_BUG).unwrap_or_default();
    loop {
        let start = Instant::now();
        let mut txn = loop {
            match wal.begin_write(&cx) {
                Ok(t) => break t,
                Err(err) if is_busy(&err) && start.elapsed() < BUSY_LIMIT => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(err) => panic!(
                    "writer: begin_write failed after {:?}: {err}",
                    start.elapsed()
                ),
            }
        };
        txn.read_page(&cx, PageNumber::ONE, &mut buf)
            .unwrap_or_else(|err| panic!("writer: read page 1: {err}"));
        let j = match parse_page(1, &buf) {
            Ok(PageRead::Zero) => 0,
            Ok(PageRead::Stamped { txn, page: 1 }) => txn,
            other => panic!("writer: page 1 of the write snapshot is {other:?}"),
        };
        let size = txn.db_size();
        assert_eq!(
            size,
            model.db_size(j),
            "writer: the write snapshot of txn {j} has the wrong size (db file {} bytes, wal {:?} bytes)",
            std::fs::metadata(&e.db).map_or(0, |m| m.len()),
            std::fs::metadata(sibling(&e.db, "-wal"))
                .map(|m| m.len())
                .ok()
        );
        if j >= e.max_txn {
            txn.rollback(&cx).expect("rollback");
            break;
        }
        let i = j + 1;
        let db_size = model.db_size(i);
        if bug == "ack_before_commit" {
            ack(i, model.txn_hash(i)).expect("ack");
            std::thread::sleep(BUG_WINDOW);
        }
        for p in model.pages(i) {
            let img = model.image(i, p);
            txn.write_page(&cx, pn(p), &img)
                .unwrap_or_else(|err| panic!("writer: write_page({p}) of txn {i}: {err}"));
            if bug == "split_commit" && p == 1 {
                txn.commit(&cx, db_size)
                    .unwrap_or_else(|err| panic!("writer: commit of txn {i} part 1: {err}"));
                std::thread::sleep(BUG_WINDOW);
                txn = wal
                    .begin_write(&cx)
                    .unwrap_or_else(|err| panic!("writer: begin_write for part 2: {err}"));
            }
        }
        txn.commit(&cx, db_size)
            .unwrap_or_else(|err| panic!("writer: commit of txn {i}: {err}"));
        if bug != "ack_before_commit" {
            ack(i, model.txn_hash(i)).expect("ack");
        }
        if rng.below(100) < e.opts.writer_ckpt_pct {
            match wal.checkpoint(&cx, pick_mode(&mut rng)) {
                Ok(_) => {}
                Err(err) if is_busy(&err) => {}
                Err(err) => panic!("writer: checkpoint after txn {i}: {err}"),
            }
        }
        if rng.chance(0.25) {
            std::thread::sleep(Duration::from_micros(rng.below(400)));
        }
    }
    wal.close(&cx)
        .unwrap_or_else(|err| panic!("writer: close: {err}"));
}

fn reader(e: &ChildEnv, seed: u64, hold: bool) {
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::from_env());
    let mut wal = open_wal(&cx, &vfs, e, false);
    let mut model = Model::new(e.workload);
    let mut rng = Rng::new(seed);
    let mut last = 0;
    loop {
        let start = Instant::now();
        let r = loop {
            match wal.begin_read(&cx) {
                Ok(r) => break r,
                Err(err) if is_busy(&err) && start.elapsed() < BUSY_LIMIT => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(err) => panic!(
                    "reader: begin_read failed after {:?}: {err}",
                    start.elapsed()
                ),
            }
        };
        let j = model
            .check_snapshot(r.db_size(), |p, b| {
                r.read_page(&cx, pn(p), b)
                    .map_err(|err| format!("read_page({p}): {err}"))
            })
            .unwrap_or_else(|msg| panic!("reader: snapshot at mxFrame {}: {msg}", r.mx_frame()));
        assert!(
            j >= last,
            "reader: went back in time from txn {last} to {j}"
        );
        last = j;
        if hold {
            ack(j, model.state_hash(j)).expect("ack");
            std::thread::sleep(Duration::from_micros(1000 + rng.below(4000)));
            drop(r);
        } else {
            drop(r);
            ack(j, model.state_hash(j)).expect("ack");
            std::thread::sleep(Duration::from_micros(100 + rng.below(500)));
        }
    }
}

fn checkpointer(e: &ChildEnv, seed: u64) {
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::from_env());
    let mut wal = open_wal(&cx, &vfs, e, false);
    let mut rng = Rng::new(seed);
    for n in 1.. {
        let mode = pick_mode(&mut rng);
        match wal.checkpoint(&cx, mode) {
            Ok(o) => {
                let packed = (u64::from(o.log_frames) << 32) | u64::from(o.checkpointed_frames);
                ack(n, packed).expect("ack");
            }
            Err(err) if is_busy(&err) => {}
            Err(err) => panic!("checkpointer: {mode:?} checkpoint #{n}: {err}"),
        }
        std::thread::sleep(Duration::from_micros(rng.below(2000)));
    }
}

// ----- the verifier ---------------------------------------------------------------------

/// The database as the files hold it: the database file overlaid with the WAL's valid
/// committed frames (what any recovery must rebuild), read without the engine.
struct RawImage {
    db: Vec<u8>,
    wal: Vec<u8>,
    /// Newest committed frame of each page.
    newest: HashMap<u32, u32>,
    db_size: u32,
    page_size: u32,
}

impl RawImage {
    fn read(&self, p: u32, buf: &mut [u8]) {
        buf.fill(0);
        let ps = self.page_size as usize;
        if let Some(&f) = self.newest.get(&p) {
            let off = frame_offset(f, self.page_size) as usize + WAL_FRAME_HEADER_SIZE;
            buf.copy_from_slice(&self.wal[off..off + ps]);
            return;
        }
        let off = (p as usize - 1) * ps;
        if off < self.db.len() {
            let end = (off + ps).min(self.db.len());
            buf[..end - off].copy_from_slice(&self.db[off..end]);
        }
    }
}

fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_or_empty(path: &Path) -> Vec<u8> {
    match std::fs::read(path) {
        Ok(b) => b,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => panic!("verifier: read {}: {err}", path.display()),
    }
}

fn stop_name(stop: &StopReason) -> &'static str {
    match stop {
        StopReason::EndOfFile => "end_of_file",
        StopReason::PartialFrame { .. } => "partial_frame",
        StopReason::SaltMismatch { .. } => "salt_mismatch",
        StopReason::ZeroPageNumber { .. } => "zero_page_number",
        StopReason::ChecksumMismatch { .. } => "checksum_mismatch",
        StopReason::EmptyOrInvalidHeader { .. } => "empty_wal",
    }
}

/// Scans the WAL with [`WalFile::scan`] through a read-only handle; also returns
/// `(frame, page)` of every valid frame.
fn scan_wal(cx: &Cx, wal_path: &Path) -> Option<(ScanReport, Vec<(u32, u32)>)> {
    if !wal_path.exists() {
        return None;
    }
    let vfs = UnixVfs::new();
    let (file, _) = vfs
        .open(
            cx,
            Some(wal_path),
            VfsOpenFlags::READONLY | VfsOpenFlags::WAL,
        )
        .unwrap_or_else(|err| panic!("verifier: open {} read-only: {err}", wal_path.display()));
    let mut frames = Vec::new();
    let report = WalFile::scan(cx, &file, |f, p, _| {
        frames.push((f, p.get()));
        Ok(())
    })
    .unwrap_or_else(|err| panic!("verifier: scan {}: {err}", wal_path.display()));
    Some((report, frames))
}

/// The fresh-process checks after a kill (all victims are dead):
///
/// 1. the crashed `-shm` (read as a file, before anyone opens it): if its header copies
///    are valid, `nBackfill <= nBackfillAttempted <= mxFrame`; if frames past `nBackfill`
///    remain, the WAL's salts equal the index's and the WAL's valid prefix reaches
///    `mxFrame` (no frame the index published is missing), and every page whose newest
///    frame `<= mxFrame` is `<= nBackfill` holds that frame's image in the database file
///    (backfill is durable; see [`check_backfill`]);
/// 2. the WAL's checksum chain ([`WalFile::scan`]): the valid committed prefix, where it
///    stops and why (counted);
/// 3. the raw image (database file + committed frames) is exactly the state after the
///    txn `J` on its page 1, with the model's size and page images; and real SQLite
///    agrees (differential recovery): a copy of the crashed database and WAL (no `-shm`)
///    checkpointed by SQLite (`PRAGMA wal_checkpoint(TRUNCATE)`, after SQLite's own WAL
///    recovery) holds exactly state `J` too (skipped for an empty database file, whose
///    WAL SQLite would delete);
/// 4. a fresh `Wal` (it is the only user, so it recovers) sees `mxFrame` = the scan's,
///    and exactly the same state `J`;
/// 5. `floor <= J <= ceil` (`K9_BOUNDS`): no acknowledged txn lost, nothing beyond the
///    last attempted;
/// 6. with `K9_CLOSE=checkpoint`: close (checkpoint, delete `-wal`/`-shm`) and check the
///    database file alone is still state `J`.
fn verifier(e: &ChildEnv) {
    let cx = Cx::new();
    let ps = e.workload.page_size;
    let mut model = Model::new(e.workload);
    let (floor, ceil) = {
        let b = env(ENV_BOUNDS);
        let (f, c) = b.split_once(':').expect("K9_BOUNDS floor:ceil");
        (
            f.parse::<u64>().expect("floor"),
            c.parse::<u64>().expect("ceil"),
        )
    };
    let wal_path = sibling(&e.db, "-wal");
    let shm_path = sibling(&e.db, "-shm");

    // 2. The WAL's checksum chain.
    let scan = scan_wal(&cx, &wal_path);
    let (mx_frame, n_page, salts) = if let Some((r, _)) = &scan {
        stat(&format!("verify.stop.{}", stop_name(&r.stop)), 1);
        stat(
            "verify.uncommitted_tail_frames",
            u64::from(r.uncommitted_frames()),
        );
        stat("verify.committed_frames", u64::from(r.mx_frame));
        if let Some(f) = r.stop.frame() {
            assert!(
                f > r.mx_frame,
                "verifier: the scan stopped at frame {f}, inside the committed prefix (mxFrame {})",
                r.mx_frame
            );
        }
        (r.mx_frame, r.n_page, r.header.map(|h| h.salt))
    } else {
        stat("verify.no_wal", 1);
        (0, 0, None)
    };
    let db_bytes = read_or_empty(&e.db);
    let wal_bytes = if mx_frame > 0 {
        read_or_empty(&wal_path)
    } else {
        Vec::new()
    };
    let mut newest = HashMap::new();
    if let Some((_, frames)) = &scan {
        for &(f, p) in frames.iter().filter(|(f, _)| *f <= mx_frame) {
            if p <= n_page {
                newest.insert(p, f);
            }
        }
    }
    let raw_size = if mx_frame > 0 {
        n_page
    } else {
        u32::try_from(db_bytes.len() as u64 / u64::from(ps)).expect("db size")
    };
    let raw = RawImage {
        db: db_bytes,
        wal: wal_bytes,
        newest,
        db_size: raw_size,
        page_size: ps,
    };

    // 1. The crashed -shm.
    let shm = read_or_empty(&shm_path);
    if shm.len() < WALINDEX_HDR_SIZE {
        stat("verify.shm.absent_or_reset", 1);
    } else {
        let regions = HeapRegions::from_image(&shm);
        let r0 = regions.get(0).expect("region 0");
        match validate_header_copies(&load_header_copies(r0)) {
            Err(defect) => stat(&format!("verify.shm.invalid.{defect:?}"), 1),
            Ok(h) => {
                stat("verify.shm.valid", 1);
                let (nb, nba) = (r0.n_backfill(), r0.n_backfill_attempted());
                assert!(
                    nb <= nba && nba <= h.mx_frame,
                    "verifier: crashed -shm breaks nBackfill {nb} <= nBackfillAttempted {nba} <= mxFrame {}",
                    h.mx_frame
                );
                if nb < h.mx_frame {
                    stat("verify.shm.frames_pending", 1);
                    assert_eq!(
                        salts,
                        Some(h.wal_salts()),
                        "verifier: the -shm publishes frames {}..={} not yet backfilled, but the WAL header has other salts",
                        nb + 1,
                        h.mx_frame
                    );
                    assert!(
                        mx_frame >= h.mx_frame,
                        "verifier: the -shm published mxFrame {} but the WAL's valid committed prefix ends at {mx_frame}",
                        h.mx_frame
                    );
                }
                if nb > 0 && salts == Some(h.wal_salts()) {
                    let facts = ShmFacts {
                        mx_frame: h.mx_frame,
                        n_page: h.n_page,
                        i_change: h.i_change,
                        salts: h.wal_salts(),
                        n_backfill: nb,
                        n_backfill_attempted: nba,
                        read_marks: std::array::from_fn(|i| r0.read_mark(i)),
                    };
                    let checked = check_backfill(&raw, scan.as_ref(), &facts, ps);
                    stat("verify.shm.backfilled_pages_checked", checked);
                }
            }
        }
    }

    // 3. The raw image is exactly a prefix state.
    let raw_j = model
        .check_snapshot(raw.db_size, |p, b| {
            raw.read(p, b);
            Ok(())
        })
        .unwrap_or_else(|msg| {
            panic!("verifier: raw image (db file + {mx_frame} WAL frames): {msg}")
        });

    // 3b. SQLite recovers the same state from a copy of the crashed files.
    sqlite_agrees(&e.db, &wal_path, &mut model, raw_j);

    // 4. A fresh Wal recovers the same state.
    let vfs = Arc::new(UnixVfs::new());
    let close = std::env::var(ENV_CLOSE).unwrap_or_default() == "checkpoint";
    let mut wal = open_wal(&cx, &vfs, e, close);
    if wal.recoveries() > 0 {
        stat("verify.recoveries", wal.recoveries());
    }
    let j = {
        let r = wal
            .begin_read(&cx)
            .unwrap_or_else(|err| panic!("verifier: begin_read: {err}"));
        assert_eq!(
            r.mx_frame(),
            mx_frame,
            "verifier: the recovered mxFrame differs from the WAL scan's"
        );
        model
            .check_snapshot(r.db_size(), |p, b| {
                r.read_page(&cx, pn(p), b)
                    .map_err(|err| format!("read_page({p}): {err}"))
            })
            .unwrap_or_else(|msg| panic!("verifier: recovered state: {msg}"))
    };
    assert_eq!(j, raw_j, "verifier: the engine and the raw image disagree");

    // 5. Bounds.
    assert!(
        j >= floor,
        "verifier: LOST ACKNOWLEDGED COMMIT: state is txn {j}, but txn {floor} was acknowledged (or observed)"
    );
    assert!(
        j <= ceil,
        "verifier: state is txn {j}, beyond the last attempted txn ({ceil})"
    );

    // 6. Close and check the database file alone.
    if close {
        wal.close(&cx)
            .unwrap_or_else(|err| panic!("verifier: close: {err}"));
        if !wal_path.exists() {
            stat("verify.closed_and_checkpointed", 1);
            let db = read_or_empty(&e.db);
            let only_db = RawImage {
                db_size: u32::try_from(db.len() as u64 / u64::from(ps)).expect("size"),
                db,
                wal: Vec::new(),
                newest: HashMap::new(),
                page_size: ps,
            };
            let jj = model
                .check_snapshot(only_db.db_size, |p, b| {
                    only_db.read(p, b);
                    Ok(())
                })
                .unwrap_or_else(|msg| panic!("verifier: database file after close: {msg}"));
            assert_eq!(jj, j, "verifier: closing changed the state");
        }
    } else {
        drop(wal);
    }
    ack(j, model.state_hash(j)).expect("ack");
}

/// Copies the crashed database and WAL (not the `-shm`) into `<db dir>/sqlite-oracle/`,
/// lets SQLite recover and checkpoint the copy, and checks its pages are state `j`.
fn sqlite_agrees(db: &Path, wal_path: &Path, model: &mut Model, j: u64) {
    let db_len = std::fs::metadata(db).map_or(0, |m| m.len());
    if db_len == 0 {
        stat("verify.sqlite.skipped_empty_db", 1);
        return;
    }
    let dir = db
        .parent()
        .expect("db in a directory")
        .join("sqlite-oracle");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the oracle directory");
    let copy = dir.join("copy.db");
    std::fs::copy(db, &copy).expect("copy the database");
    if wal_path.exists() {
        std::fs::copy(wal_path, sibling(&copy, "-wal")).expect("copy the WAL");
    }
    let pages = fsqlite_testkit::sqlite::sqlite_page_images(&copy)
        .unwrap_or_else(|err| panic!("verifier: SQLite could not checkpoint a copy: {err}"));
    let size = u32::try_from(pages.len()).expect("page count");
    let sj = model
        .check_snapshot(size, |p, b| {
            b.copy_from_slice(&pages[p as usize - 1]);
            Ok(())
        })
        .unwrap_or_else(|msg| panic!("verifier: SQLite's recovery of the crashed files: {msg}"));
    assert_eq!(
        sj, j,
        "verifier: SQLite recovers txn {sj} from the crashed files, our raw image holds txn {j}"
    );
    stat("verify.sqlite.agreed", 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pages whose newest frame `<= mxFrame` (of the crashed `-shm`) is `<= nBackfill` must
/// hold that frame's image in the database file. (A page with a newer frame in
/// `(nBackfill, mxFrame]` may legitimately still hold an older image: SQLite's checkpoint
/// copies each page's newest frame only, and skips the page when that frame lies past the
/// safe frame; every reader then finds the newer frame in the WAL.) Returns how many
/// pages were checked; panics with a summary (how many pages differ, the `-shm` and WAL
/// headers) if any differs.
fn check_backfill(
    raw: &RawImage,
    scan: Option<&(ScanReport, Vec<(u32, u32)>)>,
    shm: &ShmFacts,
    ps: u32,
) -> u64 {
    let (nb, nba, mx) = (shm.n_backfill, shm.n_backfill_attempted, shm.mx_frame);
    let Some((report, frames)) = scan else {
        return 0;
    };
    if mx > report.mx_frame || raw.wal.is_empty() {
        return 0;
    }
    let mut newest: BTreeMap<u32, u32> = BTreeMap::new();
    for &(f, p) in frames.iter().filter(|(f, _)| *f <= mx) {
        newest.insert(p, f);
    }
    let psz = ps as usize;
    let mut checked = 0;
    let mut bad = Vec::new();
    for (&p, &f) in &newest {
        if f > nb {
            continue;
        }
        let off = frame_offset(f, ps) as usize + WAL_FRAME_HEADER_SIZE;
        let frame_img = &raw.wal[off..off + psz];
        let db_off = (p as usize - 1) * psz;
        let db_img = raw.db.get(db_off..db_off + psz);
        checked += 1;
        if db_img != Some(frame_img) {
            bad.push(format!(
                "page {p}: frame {f} holds {:?}, the database file {:?}",
                parse_page(p, frame_img),
                db_img.map(|b| parse_page(p, b))
            ));
        }
    }
    assert!(
        bad.is_empty(),
        "verifier: the crashed -shm says frames 1..={nb} are backfilled (nBackfillAttempted {nba}, mxFrame {mx}), but {} of {checked} pages whose newest frame is backfilled differ in the database file; -shm {shm:?}; WAL header {:?}, committed prefix {} frames; first: {}",
        bad.len(),
        report.header,
        report.mx_frame,
        bad.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
    );
    checked
}

/// What the verifier read from the crashed `-shm`.
#[derive(Debug)]
#[allow(dead_code, reason = "read through Debug in failure messages")]
struct ShmFacts {
    mx_frame: u32,
    n_page: u32,
    i_change: u32,
    salts: [u32; 2],
    n_backfill: u32,
    n_backfill_attempted: u32,
    read_marks: [u32; 5],
}
