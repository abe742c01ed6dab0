//! `cargo xtask bench-vs-sqlite [--sizes 64,256] [--reps N] [--dir DIR] [--keep]`: our WAL
//! recovery and TRUNCATE checkpoint side by side with SQLite's, on identical copies of
//! WALs written by real SQLite (PERFORMANCE.md, "How to compare with SQLite").
//!
//! # Procedure
//!
//! ```text
//! for each size S (MiB):
//!   build src.db + src.db-wal with rusqlite (bundled SQLite): WAL mode, 4 KiB pages,
//!     wal_autocheckpoint=0, transactions of 64 inserts of 8000-byte random blobs until the
//!     WAL holds S MiB; close with SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE
//!   recovery: one fsynced copy (db + wal); N rounds, alternating which side goes first:
//!     delete the -shm, then a FRESH PROCESS (this binary re-executed, `__bench-child`):
//!       sqlite: time open + `PRAGMA schema_version` (SQLite's WAL recovery runs here)
//!       ours:   time `Wal::open` on UnixVfs (rebuilds the WAL-index from the WAL)
//!       floor:  time reading the WAL's bytes once, nothing else: `pread` of 63 frames
//!               of 4 KiB pages at a time into one buffer, one thread (what our scan
//!               reads, without checksums, WAL-index, `-shm` or locks); a recovery that
//!               checks every frame's checksum reads at least this much.
//!               `FSQLITE_FLOOR_THREADS=2`: two threads claiming chunks in turn, as our
//!               scan does
//!   checkpoint, synchronous OFF and FULL: N rounds, alternating; each side gets a fresh,
//!     fsynced copy (no -shm) and a fresh process:
//!       sqlite: open, `PRAGMA synchronous`, schema read (recovery, untimed), then time
//!               `PRAGMA wal_checkpoint(TRUNCATE)`
//!       ours:   `Wal::open` (recovery, untimed), then time `Wal::checkpoint(Truncate)`,
//!               which always includes the recovery barrier (full fsync of the database,
//!               read-back verification of every copied page)
//!     (after each child the parent fsyncs the files it wrote, untimed, so a sync-OFF
//!     run's dirty pages are not written back during the next measurement)
//!     then the two database files must be byte-identical and both WALs empty
//! ```
//!
//! Every child reports, as one JSON line on stdout, its timings, its peak RSS (`VmHWM`
//! from `/proc/self/status`) and the peak heap of this binary's counting global
//! allocator (Rust allocations only: SQLite's own `malloc` is not counted, so heap is
//! reported for our side). The parent prints medians, min/max and ratios, and writes
//! everything to `target/test-stats/bench-vs-sqlite.json`.
//!
//! A child run by hand with `RUST_LOG` set (e.g. `RUST_LOG=fsqlite.wal=debug xtask
//! __bench-child ckpt-ours DB FULL`) also prints the library's own phase timings.
//!
//! Timings are measured in release builds only: run from a debug build, the command
//! re-runs itself with `cargo run --release`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use fsqlite_testkit::serde_json::{self, Value, json};
use fsqlite_testkit::sqlite::SqliteWalDb;
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalOptions};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

/// The hidden subcommand a measurement child runs.
pub const CHILD_COMMAND: &str = "__bench-child";

/// Bytes of each inserted row's blob (about two pages: most frames are fresh pages).
const ROW_BYTES: i64 = 8000;
/// Rows per SQLite transaction while building a WAL.
const ROWS_PER_COMMIT: usize = 64;
/// Database page size.
const PAGE_SIZE: u32 = 4096;

// ---------------------------------------------------------------------------------------
// Counting allocator (peak heap of this binary's Rust allocations)
// ---------------------------------------------------------------------------------------

/// Bytes currently allocated through the global allocator.
static HEAP_NOW: AtomicUsize = AtomicUsize::new(0);
/// The largest `HEAP_NOW` seen since the last [`reset_heap_peak`].
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator plus two counters.
struct CountingAlloc;

/// Whether the counters run (on, except for `bench-concurrent`: see [`stop_counting_heap`]).
static COUNTING: AtomicBool = AtomicBool::new(true);

/// Switches the counters off for the rest of the process, so multi-threaded benchmarks
/// do not pay two contended atomic updates per allocation (`bench-concurrent`).
pub fn stop_counting_heap() {
    COUNTING.store(false, Ordering::Relaxed);
}

fn heap_grew(bytes: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    let now = HEAP_NOW.fetch_add(bytes, Ordering::Relaxed) + bytes;
    HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
}

fn heap_shrank(bytes: usize) {
    if !COUNTING.load(Ordering::Relaxed) {
        return;
    }
    HEAP_NOW.fetch_sub(bytes, Ordering::Relaxed);
}

// SAFETY: every method forwards to `System` with the arguments it was given, under the
// caller's contract for that method, and only updates counters besides; a null result is
// passed through unchanged and not counted.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl comment).
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            heap_grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl comment).
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            heap_grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl comment).
        unsafe { System.dealloc(ptr, layout) };
        heap_shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged (see the impl comment).
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            heap_shrank(layout.size());
            heap_grew(new_size);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Starts a new peak measurement at the current heap size; returns that size.
fn reset_heap_peak() -> usize {
    let now = HEAP_NOW.load(Ordering::Relaxed);
    HEAP_PEAK.store(now, Ordering::Relaxed);
    now
}

fn heap_peak() -> usize {
    HEAP_PEAK.load(Ordering::Relaxed)
}

/// `VmHWM` (peak resident set) of this process in KiB, from `/proc/self/status`.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn sql_err(what: &str, path: &Path, e: &rusqlite::Error) -> String {
    format!("SQLite {what} on {}: {e}", path.display())
}

fn sync_name(s: SyncMode) -> &'static str {
    match s {
        SyncMode::Off => "OFF",
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    }
}

fn parse_sync(s: &str) -> Result<SyncMode, String> {
    match s {
        "OFF" => Ok(SyncMode::Off),
        "NORMAL" => Ok(SyncMode::Normal),
        "FULL" => Ok(SyncMode::Full),
        _ => Err(format!("unknown synchronous mode {s:?}")),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Copies the database and its `-wal` from `from` to `to`, fsyncing both copies (so no
/// dirty page cache of theirs is written back inside a timed region), and removes any
/// `-shm` at `to`.
fn fresh_copy(from: &Path, to: &Path) -> Result<(), String> {
    for suffix in ["", "-wal"] {
        let (a, b) = (sibling(from, suffix), sibling(to, suffix));
        std::fs::copy(&a, &b).map_err(|e| io_err("copy to", &b, &e))?;
        std::fs::File::open(&b)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_err("fsync", &b, &e))?;
    }
    remove_shm(to)
}

/// Fsyncs the database and its `-wal` (when present).
fn fsync_files(db: &Path) -> Result<(), String> {
    for suffix in ["", "-wal"] {
        let p = sibling(db, suffix);
        if p.exists() {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| io_err("fsync", &p, &e))?;
        }
    }
    Ok(())
}

fn remove_shm(db: &Path) -> Result<(), String> {
    let shm = sibling(db, "-shm");
    match std::fs::remove_file(&shm) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &shm, &e)),
    }
}

fn file_len(path: &Path) -> Result<u64, String> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| io_err("stat", path, &e))
}

/// Compares two files in 1 MiB chunks; `Ok(None)` when identical, else the first
/// differing byte offset (or the shorter length).
fn first_difference(a: &Path, b: &Path) -> Result<Option<u64>, String> {
    use std::io::Read;
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| io_err("open", p, &e));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (la, lb) = (file_len(a)?, file_len(b)?);
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < la.min(lb) {
        let n = ((la.min(lb) - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n])
            .map_err(|e| io_err("read", a, &e))?;
        fb.read_exact(&mut bb[..n])
            .map_err(|e| io_err("read", b, &e))?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(off + i as u64));
        }
        off += n as u64;
    }
    Ok(if la == lb { None } else { Some(la.min(lb)) })
}

// ---------------------------------------------------------------------------------------
// Children (one measurement each, in a fresh process)
// ---------------------------------------------------------------------------------------

fn open_sqlite(db: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| sql_err("open", db, &e))?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .map_err(|e| sql_err("set NO_CKPT_ON_CLOSE", db, &e))?;
    Ok(conn)
}

fn our_options(sync: SyncMode) -> WalOptions {
    WalOptions {
        sync,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

fn child_recover_sqlite(db: &Path) -> Result<Value, String> {
    let t = Instant::now();
    let conn = open_sqlite(db)?;
    let t_open = t.elapsed();
    let schema: i64 = conn
        .query_row("PRAGMA schema_version", [], |r| r.get(0))
        .map_err(|e| sql_err("PRAGMA schema_version", db, &e))?;
    let total = t.elapsed();
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|e| sql_err("PRAGMA page_count", db, &e))?;
    drop(conn);
    Ok(json!({
        "ns": total.as_nanos() as u64,
        "open_ns": t_open.as_nanos() as u64,
        "schema_version": schema,
        "n_page": pages,
        "vmhwm_kib": vm_hwm_kib(),
    }))
}

fn child_recover_ours(db: &Path) -> Result<Value, String> {
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let base = reset_heap_peak();
    let t = Instant::now();
    let wal = Wal::open(&cx, vfs, db, our_options(SyncMode::Full))
        .map_err(|e| format!("Wal::open {}: {e}", db.display()))?;
    let total = t.elapsed();
    let peak = heap_peak();
    let hdr = wal.cached_header();
    let recoveries = wal.recoveries();
    wal.close(&cx)
        .map_err(|e| format!("close {}: {e}", db.display()))?;
    if recoveries != 1 {
        return Err(format!(
            "Wal::open on {} did not rebuild the WAL-index ({recoveries} recoveries)",
            db.display()
        ));
    }
    Ok(json!({
        "ns": total.as_nanos() as u64,
        "mx_frame": hdr.mx_frame,
        "n_page": hdr.n_page,
        "heap_peak_bytes": peak - base,
        "heap_base_bytes": base,
        "vmhwm_kib": vm_hwm_kib(),
    }))
}

/// The read floor of a recovery (see the module doc): the `-wal` read once with
/// `pread`, in the scan's chunks (63 frames of 4 KiB pages), by one thread, or with
/// `FSQLITE_FLOOR_THREADS=2` by two threads claiming the chunks in turn (as the
/// library's scan does).
fn child_recover_floor(db: &Path) -> Result<Value, String> {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicU64;
    const BUF: usize = 63 * 4120;
    let wal = sibling(db, "-wal");
    let t = Instant::now();
    let file = std::fs::File::open(&wal).map_err(|e| io_err("open", &wal, &e))?;
    let len = file.metadata().map_err(|e| io_err("stat", &wal, &e))?.len();
    // The scan's reads: whole 4 KiB-page frames (4,120 bytes), 63 of them (259,560
    // bytes) at a time, from just past the 32-byte WAL header.
    let next = AtomicU64::new(32);
    let read_chunks = || -> Result<u64, String> {
        let mut buf = vec![0u8; BUF];
        let mut sum = 0u64;
        loop {
            let at = next.fetch_add(BUF as u64, Ordering::Relaxed);
            if at >= len {
                return Ok(sum);
            }
            let want = usize::try_from(len - at).unwrap_or(BUF).min(BUF);
            let got = file
                .read_at(&mut buf[..want], at)
                .map_err(|e| io_err("pread", &wal, &e))?;
            // Use the bytes read, so that the read cannot be optimised away.
            if let Some(&b) = buf[..got].last() {
                sum = sum.wrapping_add(u64::from(b));
            }
        }
    };
    let two = std::env::var("FSQLITE_FLOOR_THREADS").is_ok_and(|v| v == "2");
    let sum = if two {
        let (a, b) = std::thread::scope(|s| {
            let helper = s.spawn(read_chunks);
            let own = read_chunks();
            (own, helper.join())
        });
        let b = b.map_err(|_| "the floor's read thread panicked".to_string())?;
        a?.wrapping_add(b?)
    } else {
        read_chunks()?
    };
    let total = t.elapsed();
    Ok(json!({
        "ns": total.as_nanos() as u64,
        "bytes": len,
        "sum": sum,
    }))
}

fn child_checkpoint_sqlite(db: &Path, sync: SyncMode) -> Result<Value, String> {
    let conn = open_sqlite(db)?;
    conn.execute_batch(&format!("PRAGMA synchronous={}", sync_name(sync)))
        .map_err(|e| sql_err("PRAGMA synchronous", db, &e))?;
    conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0))
        .map_err(|e| sql_err("PRAGMA schema_version", db, &e))?;
    let t = Instant::now();
    let (busy, log, done): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| sql_err("PRAGMA wal_checkpoint(TRUNCATE)", db, &e))?;
    let total = t.elapsed();
    drop(conn);
    if busy != 0 {
        return Err(format!(
            "SQLite's TRUNCATE checkpoint of {} was busy ({log}, {done})",
            db.display()
        ));
    }
    Ok(json!({
        "ns": total.as_nanos() as u64,
        "log": log,
        "checkpointed": done,
        "vmhwm_kib": vm_hwm_kib(),
    }))
}

fn child_checkpoint_ours(db: &Path, sync: SyncMode) -> Result<Value, String> {
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let mut wal = Wal::open(&cx, vfs, db, our_options(sync))
        .map_err(|e| format!("Wal::open {}: {e}", db.display()))?;
    let frames = wal.cached_header().mx_frame;
    let base = reset_heap_peak();
    let t = Instant::now();
    let o = wal
        .checkpoint(&cx, CheckpointMode::Truncate)
        .map_err(|e| format!("checkpoint {}: {e}", db.display()))?;
    let total = t.elapsed();
    let peak = heap_peak();
    wal.close(&cx)
        .map_err(|e| format!("close {}: {e}", db.display()))?;
    if o.busy || o.log_frames != 0 {
        return Err(format!(
            "our TRUNCATE checkpoint of {} did not complete: {o:?}",
            db.display()
        ));
    }
    Ok(json!({
        "ns": total.as_nanos() as u64,
        "frames": frames,
        "heap_peak_bytes": peak - base,
        "vmhwm_kib": vm_hwm_kib(),
    }))
}

/// `__bench-child <recover-sqlite|recover-ours|ckpt-sqlite|ckpt-ours> <db> [OFF|FULL]`:
/// one measurement; prints one JSON line.
pub fn child(args: &[String]) -> Result<(), String> {
    if std::env::var_os("RUST_LOG").is_some() {
        // Diagnostics only (e.g. `RUST_LOG=fsqlite.wal.checkpoint=debug`): the library's
        // own phase timings, on stderr.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let kind = args.first().map(String::as_str).unwrap_or_default();
    let db = PathBuf::from(args.get(1).ok_or("the child needs a database path")?);
    let sync = || parse_sync(args.get(2).map(String::as_str).unwrap_or_default());
    let v = match kind {
        "recover-sqlite" => child_recover_sqlite(&db)?,
        "recover-ours" => child_recover_ours(&db)?,
        "recover-floor" => child_recover_floor(&db)?,
        "ckpt-sqlite" => child_checkpoint_sqlite(&db, sync()?)?,
        "ckpt-ours" => child_checkpoint_ours(&db, sync()?)?,
        other => return Err(format!("unknown bench child {other:?}")),
    };
    println!("{v}");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Parent
// ---------------------------------------------------------------------------------------

/// Runs one child measurement and returns its JSON report.
fn measure(kind: &str, db: &Path, sync: Option<SyncMode>) -> Result<Value, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_COMMAND).arg(kind).arg(db);
    if let Some(s) = sync {
        cmd.arg(sync_name(s));
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not start the {kind} child: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the {kind} child on {} failed ({}): {}",
            db.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| format!("the {kind} child printed no report: {text:?}"))?;
    serde_json::from_str(line).map_err(|e| format!("bad report from the {kind} child: {e}"))
}

fn ns_of(v: &Value) -> f64 {
    v["ns"].as_f64().unwrap_or(0.0)
}

/// Median, min and max of `xs` (not empty).
fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    };
    (med, v[0], v[n - 1])
}

/// One compared figure: per-round times of both sides.
struct Figure {
    name: String,
    ours: Vec<f64>,
    sqlite: Vec<f64>,
    target: f64,
}

impl Figure {
    fn summary(&self) -> Value {
        let (om, omin, omax) = stats(&self.ours);
        let (sm, smin, smax) = stats(&self.sqlite);
        let ratios: Vec<f64> = self
            .ours
            .iter()
            .zip(&self.sqlite)
            .map(|(o, s)| o / s)
            .collect();
        let (rm, rmin, rmax) = stats(&ratios);
        json!({
            "name": self.name,
            "ours_ms": { "median": om / 1e6, "min": omin / 1e6, "max": omax / 1e6 },
            "sqlite_ms": { "median": sm / 1e6, "min": smin / 1e6, "max": smax / 1e6 },
            "ratio_of_medians": om / sm,
            "ratio_per_round": { "median": rm, "min": rmin, "max": rmax },
            "target_ratio": self.target,
            "met": om / sm <= self.target,
        })
    }
}

/// Builds `dir/src<size>.db` and its WAL of at least `mib` MiB with real SQLite.
fn build_sqlite_wal(dir: &Path, mib: u64) -> Result<(PathBuf, Value), String> {
    let t = Instant::now();
    let name = format!("src{mib}.db");
    let db = SqliteWalDb::create(dir, &name, PAGE_SIZE).map_err(|e| e.to_string())?;
    let wal = db.wal_path();
    let want = mib << 20;
    let mut commits = 0u64;
    {
        let mut stmt = db
            .conn()
            .prepare("INSERT INTO t(v) VALUES (randomblob(?1))")
            .map_err(|e| sql_err("prepare", db.path(), &e))?;
        while file_len(&wal)? < want {
            db.exec("BEGIN").map_err(|e| e.to_string())?;
            for _ in 0..ROWS_PER_COMMIT {
                stmt.execute([ROW_BYTES])
                    .map_err(|e| sql_err("insert", db.path(), &e))?;
            }
            db.exec("COMMIT").map_err(|e| e.to_string())?;
            commits += 1;
        }
    }
    let path = db.path().to_path_buf();
    db.close_without_checkpoint().map_err(|e| e.to_string())?;
    let info = json!({
        "wal_bytes": file_len(&wal)?,
        "db_bytes": file_len(&path)?,
        "commits": commits,
        "build_secs": t.elapsed().as_secs_f64(),
    });
    eprintln!(
        "xtask: SQLite built {} ({} WAL bytes, {commits} commits) in {:.1?}",
        path.display(),
        info["wal_bytes"],
        t.elapsed()
    );
    Ok((path, info))
}

fn bench_size(
    dir: &Path,
    mib: u64,
    reps: usize,
    keep: bool,
) -> Result<(Value, Vec<Figure>), String> {
    let (src, info) = build_sqlite_wal(dir, mib)?;
    let mut figures = Vec::new();
    let mut details = json!({ "size_mib": mib, "source": info });

    // Recovery: one copy; the -shm is deleted before every open.
    let rec = dir.join(format!("recover{mib}.db"));
    fresh_copy(&src, &rec)?;
    let mut fig = Figure {
        name: format!("recovery {mib} MiB"),
        ours: Vec::new(),
        sqlite: Vec::new(),
        target: 0.25,
    };
    let mut floor = Figure {
        name: format!("recovery {mib} MiB, read floor (WAL `pread` only)"),
        ours: Vec::new(),
        sqlite: Vec::new(),
        target: 0.25,
    };
    let mut ours_heap = 0u64;
    let mut ours_rss = 0u64;
    let mut sqlite_rss = 0u64;
    // One untimed round of each first, so both start from the same warm page cache.
    for kind in ["recover-sqlite", "recover-ours"] {
        remove_shm(&rec)?;
        measure(kind, &rec, None)?;
    }
    let mut frames = None;
    for round in 0..reps {
        let order = if round % 2 == 0 {
            ["recover-sqlite", "recover-ours", "recover-floor"]
        } else {
            ["recover-floor", "recover-ours", "recover-sqlite"]
        };
        for kind in order {
            remove_shm(&rec)?;
            let v = measure(kind, &rec, None)?;
            let rss = v["vmhwm_kib"].as_u64().unwrap_or(0);
            if kind == "recover-floor" {
                floor.ours.push(ns_of(&v));
            } else if kind == "recover-ours" {
                fig.ours.push(ns_of(&v));
                ours_heap = ours_heap.max(v["heap_peak_bytes"].as_u64().unwrap_or(0));
                ours_rss = ours_rss.max(rss);
                frames = v["mx_frame"].as_u64();
            } else {
                fig.sqlite.push(ns_of(&v));
                sqlite_rss = sqlite_rss.max(rss);
            }
        }
    }
    details["recovery"] = json!({
        "ours_heap_peak_bytes": ours_heap,
        "ours_vmhwm_kib": ours_rss,
        "sqlite_vmhwm_kib": sqlite_rss,
        "frames": frames,
        "ours_ns": fig.ours,
        "sqlite_ns": fig.sqlite,
        "floor_ns": floor.ours,
    });
    // The floor is compared with the same rounds' SQLite times.
    floor.sqlite.clone_from(&fig.sqlite);
    figures.push(fig);
    figures.push(floor);

    // Checkpoint TRUNCATE, synchronous OFF and FULL, on fresh copies.
    let ours_db = dir.join(format!("ckpt-ours{mib}.db"));
    let sqlite_db = dir.join(format!("ckpt-sqlite{mib}.db"));
    for sync in [SyncMode::Off, SyncMode::Full] {
        let mut fig = Figure {
            name: format!("checkpoint TRUNCATE {mib} MiB, sync {}", sync_name(sync)),
            ours: Vec::new(),
            sqlite: Vec::new(),
            target: 0.5,
        };
        let mut identical = 0usize;
        let mut heap = 0u64;
        for round in 0..reps {
            let sqlite_first = round % 2 == 0;
            for side in 0..2 {
                let run_sqlite = (side == 0) == sqlite_first;
                let (db, kind) = if run_sqlite {
                    (&sqlite_db, "ckpt-sqlite")
                } else {
                    (&ours_db, "ckpt-ours")
                };
                fresh_copy(&src, db)?;
                let v = measure(kind, db, Some(sync))?;
                // A synchronous-OFF checkpoint leaves its database dirty in the page
                // cache; write it back now, untimed, so that the next measurement does
                // not share the disk with it.
                fsync_files(db)?;
                if run_sqlite {
                    fig.sqlite.push(ns_of(&v));
                } else {
                    fig.ours.push(ns_of(&v));
                    heap = heap.max(v["heap_peak_bytes"].as_u64().unwrap_or(0));
                }
            }
            if let Some(off) = first_difference(&sqlite_db, &ours_db)? {
                return Err(format!(
                    "after the TRUNCATE checkpoints (sync {}), {} and {} differ at byte {off}",
                    sync_name(sync),
                    sqlite_db.display(),
                    ours_db.display()
                ));
            }
            for db in [&sqlite_db, &ours_db] {
                let w = sibling(db, "-wal");
                let len = if w.exists() { file_len(&w)? } else { 0 };
                if len != 0 {
                    return Err(format!(
                        "{} holds {len} bytes after a TRUNCATE checkpoint",
                        w.display()
                    ));
                }
            }
            identical += 1;
        }
        details[format!("checkpoint_{}", sync_name(sync))] = json!({
            "byte_identical_rounds": identical,
            "db_bytes_after": file_len(&ours_db)?,
            "ours_heap_peak_bytes": heap,
            "ours_ns": fig.ours,
            "sqlite_ns": fig.sqlite,
        });
        figures.push(fig);
    }
    if !keep {
        for db in [&rec, &ours_db, &sqlite_db, &src] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(sibling(db, suffix));
            }
        }
    }
    Ok((details, figures))
}

struct Args {
    sizes: Vec<u64>,
    reps: usize,
    dir: Option<PathBuf>,
    keep: bool,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        sizes: vec![64, 256],
        reps: 11,
        dir: None,
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--sizes" => {
                out.sizes = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse::<u64>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| {
                                format!("--sizes takes MiB counts like 64,256, got {s:?}")
                            })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--reps" => {
                let v = value()?;
                out.reps =
                    v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("--reps takes a positive whole number, got {v:?}")
                    })?;
            }
            "--dir" => out.dir = Some(PathBuf::from(value()?)),
            "--keep" => out.keep = true,
            other => return Err(format!("bench-vs-sqlite: unknown argument {other:?}")),
        }
    }
    Ok(out)
}

/// Re-runs this command from an optimized build (`cargo run --release`).
fn rerun_release(args: &[String]) -> Result<(), String> {
    eprintln!("xtask: bench-vs-sqlite measures optimized code; re-running with --release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
        .arg("bench-vs-sqlite")
        .args(args)
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the release run failed with {status}"))
    }
}

fn print_table(figures: &[Figure]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| figure | ours median (min–max) | SQLite median (min–max) | ratio of medians | per-round ratio median (min–max) | target | met? |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for f in figures {
        let (om, omin, omax) = stats(&f.ours);
        let (sm, smin, smax) = stats(&f.sqlite);
        let ratios: Vec<f64> = f.ours.iter().zip(&f.sqlite).map(|(o, s)| o / s).collect();
        let (rm, rmin, rmax) = stats(&ratios);
        let r = om / sm;
        let _ = writeln!(
            s,
            "| {} | {:.1} ms ({:.1}–{:.1}) | {:.1} ms ({:.1}–{:.1}) | {r:.2}× | {rm:.2}× ({rmin:.2}–{rmax:.2}) | ≤ {:.2}× | {} |",
            f.name,
            om / 1e6,
            omin / 1e6,
            omax / 1e6,
            sm / 1e6,
            smin / 1e6,
            smax / 1e6,
            f.target,
            if r <= f.target { "yes" } else { "no" }
        );
    }
    s
}

/// `cargo xtask bench-vs-sqlite …` (see the module doc).
pub fn run(args: &[String]) -> Result<(), String> {
    let parsed = parse_args(args)?;
    if cfg!(debug_assertions) {
        return rerun_release(args);
    }
    let dir = match &parsed.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, &e))?;
            tempfile::Builder::new()
                .prefix("bench-vs-sqlite-")
                .tempdir_in(d)
        }
        None => tempfile::Builder::new()
            .prefix("fsqlite-bench-vs-sqlite-")
            .tempdir(),
    }
    .map_err(|e| format!("could not create a scratch directory: {e}"))?;
    let dir_path = dir.path().to_path_buf();
    let _dir_guard = if parsed.keep {
        eprintln!("xtask: keeping {}", dir.keep().display());
        None
    } else {
        Some(dir)
    };
    let started = Instant::now();
    let load_before = load_average();
    eprintln!(
        "xtask: bench-vs-sqlite in {} (SQLite {}, checksum level {}, load {load_before}), sizes {:?} MiB, {} rounds each",
        dir_path.display(),
        rusqlite::version(),
        fsqlite_wal::checksum::simd_level(),
        parsed.sizes,
        parsed.reps
    );
    let mut all = Vec::new();
    let mut per_size = Vec::new();
    for &mib in &parsed.sizes {
        let (details, figures) = bench_size(&dir_path, mib, parsed.reps, parsed.keep)?;
        eprint!("{}", print_table(&figures));
        per_size.push(details);
        all.extend(figures);
    }
    let table = print_table(&all);
    let report = json!({
        "sqlite_version": rusqlite::version(),
        "checksum_level": fsqlite_wal::checksum::simd_level(),
        "reps": parsed.reps,
        "load_before": load_before,
        "load_after": load_average(),
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "figures": all.iter().map(Figure::summary).collect::<Vec<_>>(),
        "sizes": per_size,
    });
    let path = fsqlite_testkit::stats::write_stats("bench-vs-sqlite", report)
        .map_err(|e| format!("could not write the stats: {e}"))?;
    println!("{table}");
    println!(
        "load before {load_before}, after {}; {:.0?} in all; details in {}",
        load_average(),
        started.elapsed(),
        path.display()
    );
    Ok(())
}
