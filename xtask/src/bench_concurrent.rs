//! `cargo xtask bench-concurrent`: `BEGIN CONCURRENT` writers (`fsqlite-mvcc`) side by
//! side with stock SQLite, one connection per thread (PERFORMANCE.md, "Concurrent
//! writers").
//!
//! ```text
//! flags    --secs S (1.5 per side per cell)  --quick (0.5 s)  --rounds N (1)
//!          --writers 1,2,4,8,16  --sync full,normal  --pattern disjoint,random,hot
//!          --rows N (1000)  --dir DIR (target/bench-concurrent)  --keep
//!          --sqlite-autocheckpoint N (0 = off, as ours; SQLite's default is 1000)
//!          --side ours|sqlite (one side only, for profiling; the ratios are then void)
//!          --processes 1,2,4 (default 1): each cell also runs with P processes of W
//!          writer threads each (P x W connections on each side: ours one coordinator
//!          per process, SQLite one connection per thread, in P processes too)
//! setup    template.db = fsqlite_testkit::bank::create (real SQLite, WAL mode, 4 KiB
//!          pages, CREATE TABLE acct(id INTEGER PRIMARY KEY, bal TEXT, pad BLOB), rows
//!          1..=N, bal = 12 zero-padded digits, pad = 3072 bytes: every row sits alone
//!          on its own table-leaf page; the bank maps id -> page)
//! cell     (writers W, sync, pattern), sides in alternating order, per round:
//!          a fresh fsynced copy of template.db (no -wal, no -shm); W threads start on a
//!          barrier and run transactions until S seconds have passed
//!   sqlite one rusqlite connection per thread, PRAGMA synchronous=FULL|NORMAL,
//!          wal_autocheckpoint per the flag, a busy handler that counts every call
//!          (a retry) and sleeps 20 us << min(n, 6); per transaction:
//!          BEGIN IMMEDIATE; UPDATE acct SET bal=? WHERE id=?; COMMIT
//!   ours   one Coordinator (UnixVfs, sync = Full|Normal, no checkpoint while open);
//!          per transaction: begin_concurrent, read the row's page, balance += 1 in
//!          the page image in place (bank::read_balance / write_balance, which parse
//!          the leaf each time), write_page, commit(db_size);
//!          SQLITE_BUSY_SNAPSHOT (517) -> count an abort, retry from begin;
//!          after close SQLite opens the copy (bank::books): sum(bal) must equal the
//!          commits and PRAGMA integrity_check must say ok
//! rows     disjoint: thread t cycles over the ids with (id - 1) mod W = t; random: uniform over
//!          1..=N; hot: every transaction updates row 1
//! report   commits/s (commits / wall time from the barrier to the last thread's end),
//!          p50/p99 latency of a transaction from its first begin to its successful
//!          commit (waits and retries included), our commits per WAL fsync and per
//!          batch, our abort rate conflicts / (commits + conflicts), SQLite's busy
//!          retries per commit; a markdown table on stdout, progress on stderr, JSON
//!          in target/test-stats/bench-concurrent.json
//! ```
//!
//! SQLite's side makes exactly one WAL fsync per commit under FULL (it has no group
//! commit), none under NORMAL; ours makes one per batch under FULL (each process its own
//! batches).
//!
//! With P > 1 processes the xtask binary re-runs itself as P workers (hidden subcommand
//! `__bench-concurrent-worker`), which open the database, wait for a common start time,
//! run their W threads (thread `t` of worker `i` is writer `i * W + t` of `P * W` for the
//! row patterns), and print one JSON line of counts and latencies; the wall time is the
//! slowest worker's.
//!
//! The xtask binary's counting allocator (see `bench_vs_sqlite`) is switched off for this
//! command, so our side does not pay for counters SQLite's `malloc` never touches.

#![allow(clippy::cast_precision_loss)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, Accounts, Bank, BankOptions};
use fsqlite_testkit::rng::Rng;
use fsqlite_testkit::serde_json::{Value, json};
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::SyncMode;
use rusqlite::Connection;

/// Database page size.
const PAGE_SIZE: usize = 4096;
/// The row every transaction of the `hot` pattern updates.
const HOT_ROW: u32 = 1;
/// SQLite's extended code for a refused concurrent commit (`SQLITE_BUSY_SNAPSHOT`).
const BUSY_SNAPSHOT: i32 = 517;

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pattern {
    Disjoint,
    Random,
    Hot,
}

impl Pattern {
    const ALL: [Self; 3] = [Self::Disjoint, Self::Random, Self::Hot];

    fn name(self) -> &'static str {
        match self {
            Self::Disjoint => "disjoint",
            Self::Random => "random",
            Self::Hot => "hot",
        }
    }

    /// The row transaction `i` of thread `t` (of `writers`) updates.
    fn row(self, t: u32, writers: u32, rows: u32, i: u64, rng: &mut Rng) -> u32 {
        match self {
            Self::Disjoint => {
                // ids 1..=rows with (id - 1) % writers == t
                let own = (rows - t).div_ceil(writers);
                1 + t + writers * (i % u64::from(own)) as u32
            }
            Self::Random => 1 + rng.below(u64::from(rows)) as u32,
            Self::Hot => HOT_ROW,
        }
    }
}

fn sync_name(s: SyncMode) -> &'static str {
    match s {
        SyncMode::Off => "OFF",
        SyncMode::Normal => "NORMAL",
        SyncMode::Full => "FULL",
    }
}

struct Args {
    secs: f64,
    rounds: u32,
    writers: Vec<u32>,
    syncs: Vec<SyncMode>,
    patterns: Vec<Pattern>,
    rows: u32,
    dir: Option<PathBuf>,
    keep: bool,
    sqlite_autocheckpoint: u32,
    /// Run only this side (`--side ours|sqlite`, for profiling); both by default.
    only: Option<&'static str>,
    /// Process counts per cell (`--processes`).
    processes: Vec<u32>,
}

fn list<T>(v: &str, what: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',')
        .map(|x| f(x.trim()).ok_or_else(|| format!("{what}: cannot use {x:?}")))
        .collect()
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut out = Args {
        secs: 1.5,
        rounds: 1,
        writers: vec![1, 2, 4, 8, 16],
        syncs: vec![SyncMode::Full, SyncMode::Normal],
        patterns: Pattern::ALL.to_vec(),
        rows: 1000,
        dir: None,
        keep: false,
        sqlite_autocheckpoint: 0,
        only: None,
        processes: vec![1],
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("bench-concurrent: {a} needs a value"))
        };
        match a.as_str() {
            "--secs" => {
                let v = value()?;
                out.secs = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0 && s.is_finite())
                    .ok_or_else(|| format!("--secs takes a positive number, got {v:?}"))?;
            }
            "--quick" => out.secs = 0.5,
            "--rounds" => {
                let v = value()?;
                out.rounds =
                    v.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        format!("--rounds takes a positive whole number, got {v:?}")
                    })?;
            }
            "--writers" => {
                out.writers = list(&value()?, "--writers", |x| {
                    x.parse().ok().filter(|&n: &u32| (1..=256).contains(&n))
                })?;
            }
            "--sync" => {
                out.syncs = list(&value()?, "--sync (full, normal)", |x| {
                    match x.to_ascii_lowercase().as_str() {
                        "full" => Some(SyncMode::Full),
                        "normal" => Some(SyncMode::Normal),
                        _ => None,
                    }
                })?;
            }
            "--pattern" => {
                out.patterns = list(&value()?, "--pattern (disjoint, random, hot)", |x| {
                    Pattern::ALL.into_iter().find(|p| p.name() == x)
                })?;
            }
            "--rows" => {
                let v = value()?;
                out.rows = v
                    .parse()
                    .ok()
                    .filter(|&n| (1..=1_000_000).contains(&n))
                    .ok_or_else(|| format!("--rows takes 1..=1000000, got {v:?}"))?;
            }
            "--side" => {
                out.only = match value()?.as_str() {
                    "ours" => Some("ours"),
                    "sqlite" => Some("sqlite"),
                    "both" => None,
                    v => return Err(format!("--side takes ours, sqlite or both, got {v:?}")),
                };
            }
            "--processes" => {
                out.processes = list(&value()?, "--processes", |x| {
                    x.parse().ok().filter(|&n: &u32| (1..=64).contains(&n))
                })?;
            }
            "--dir" => out.dir = Some(PathBuf::from(value()?)),
            "--keep" => out.keep = true,
            "--sqlite-autocheckpoint" => {
                let v = value()?;
                out.sqlite_autocheckpoint = v.parse().map_err(|_| {
                    format!("--sqlite-autocheckpoint takes a whole number of pages, got {v:?}")
                })?;
            }
            other => return Err(format!("bench-concurrent: unknown argument {other:?}")),
        }
    }
    let most = out.processes.iter().max().copied().unwrap_or(1);
    if let Some(&w) = out.writers.iter().find(|&&w| w * most > out.rows) {
        return Err(format!(
            "--writers {w} x --processes {most} needs at least {} rows for the disjoint \
             pattern (--rows {})",
            w * most,
            out.rows
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Files and the machine
// ---------------------------------------------------------------------------------------

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn remove_db(db: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal", ".fsqlite-shm"] {
        let _ = std::fs::remove_file(sibling(db, suffix));
    }
}

/// The template: a `fsqlite_testkit::bank` of `rows` accounts at balance 0.
fn build_template(dir: &Path, rows: u32) -> Result<Bank, String> {
    let path = dir.join("template.db");
    remove_db(&path);
    let opts = BankOptions {
        accounts: rows,
        page_size: PAGE_SIZE as u32,
        initial_balance: 0,
    };
    bank::create(&path, &opts).map_err(|e| format!("building the bank {}: {e}", path.display()))
}

fn balance_text(v: u64) -> String {
    format!("{v:0w$}", w = bank::BALANCE_DIGITS)
}

/// A fresh, fsynced copy of the template (no `-wal`, no `-shm`).
fn fresh_copy(template: &Path, to: &Path) -> Result<(), String> {
    remove_db(to);
    std::fs::copy(template, to).map_err(|e| format!("copy to {}: {e}", to.display()))?;
    std::fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("fsync {}: {e}", to.display()))?;
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `(mount point, device, fstype)` of the mount that holds `dir`.
fn filesystem_of(dir: &Path) -> (String, String, String) {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let unescape = |s: &str| s.replace("\\040", " ").replace("\\011", "\t");
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (unescape(f[1]), f[0].to_owned(), f[2].to_owned()))
        })
        .filter(|(m, _, _)| dir.starts_with(m))
        .max_by_key(|(m, _, _)| m.len())
        .unwrap_or_else(|| ("?".into(), "?".into(), "unknown".into()))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned())
}

// ---------------------------------------------------------------------------------------
// One side of one cell
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Cell {
    /// Writer threads per process.
    writers: u32,
    sync: SyncMode,
    pattern: Pattern,
    /// Processes (each with `writers` threads).
    processes: u32,
}

/// Where a process's threads sit among all writers of a cell.
#[derive(Clone, Copy, Debug)]
struct Slice {
    /// This process's index.
    index: u32,
    /// Writers in all processes.
    total: u32,
    /// Wall-clock time (ns since the epoch) the threads start at; `None`: at once.
    start_ns: Option<u128>,
}

impl Slice {
    const ALONE: Self = Self {
        index: 0,
        total: 0,
        start_ns: None,
    };

    /// Global writer index and count of thread `t` of `writers`.
    fn writer(self, t: u32, writers: u32) -> (u32, u32) {
        if self.total == 0 {
            (t, writers)
        } else {
            (self.index * writers + t, self.total)
        }
    }

    /// Sleeps until the common start.
    fn wait(self) {
        if let Some(at) = self.start_ns {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            if at > now {
                std::thread::sleep(Duration::from_nanos(
                    u64::try_from(at - now).unwrap_or(u64::MAX),
                ));
            }
        }
    }
}

/// What one side measured (summed over rounds).
#[derive(Default)]
struct SideResult {
    commits: u64,
    /// Ours: conflicts (517); SQLite: busy-handler calls.
    aborts: u64,
    elapsed: Duration,
    /// Per committed transaction, first begin to successful commit, in nanoseconds.
    latencies: Vec<u64>,
    batches: u64,
    wal_syncs: u64,
}

impl SideResult {
    fn add(&mut self, other: SideResult) {
        self.commits += other.commits;
        self.aborts += other.aborts;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
        self.batches += other.batches;
        self.wal_syncs += other.wal_syncs;
    }

    fn rate(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency percentile in microseconds (`latencies` sorted).
    fn pct_us(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let k = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        self.latencies[k] as f64 / 1e3
    }
}

/// Per thread: commits, aborts, latencies.
type ThreadOut = (u64, u64, Vec<u64>);

/// Runs `body(t)` on `writers` threads started together on a barrier; returns the wall
/// time from the barrier to the last thread's end and every thread's output.
fn run_threads(
    writers: u32,
    slice: Slice,
    body: impl Fn(u32, &Barrier) -> Result<ThreadOut, String> + Sync,
) -> Result<(Duration, Vec<ThreadOut>), String> {
    let barrier = Barrier::new(writers as usize + 1);
    slice.wait();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|t| {
                let body = &body;
                let barrier = &barrier;
                s.spawn(move || body(t, barrier))
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut outs = Vec::new();
        let mut first_err = None;
        for h in handles {
            match h.join() {
                Ok(Ok(o)) => outs.push(o),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some("a writer thread panicked".into())),
            }
        }
        let elapsed = start.elapsed();
        first_err.map_or(Ok((elapsed, outs)), Err)
    })
}

/// Busy-handler calls of the SQLite side (reset per run).
static SQLITE_RETRIES: AtomicU64 = AtomicU64::new(0);

/// Counts the retry and sleeps 20 us << min(n, 6) (at most 1.28 ms): finer than
/// `sqlite3_busy_timeout`'s 1, 2, 5, 10 ... ms, so SQLite's waiters are not slowed by the
/// handler; gives up after a million calls.
fn sqlite_busy(n: i32) -> bool {
    SQLITE_RETRIES.fetch_add(1, Ordering::Relaxed);
    std::thread::sleep(Duration::from_micros(20 << n.clamp(0, 6)));
    n < 1_000_000
}

fn run_sqlite(db: &Path, cell: Cell, args: &Args, slice: Slice) -> Result<SideResult, String> {
    SQLITE_RETRIES.store(0, Ordering::Relaxed);
    let secs = Duration::from_secs_f64(args.secs);
    let sync = sync_name(cell.sync);
    let (elapsed, outs) = run_threads(cell.writers, slice, |t, barrier| {
        let (g, total) = slice.writer(t, cell.writers);
        let e = |what: &str, e: rusqlite::Error| format!("SQLite {what} (thread {t}): {e}");
        let conn = Connection::open(db).map_err(|x| e("open", x))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous={sync}; PRAGMA wal_autocheckpoint={};",
            args.sqlite_autocheckpoint
        ))
        .map_err(|x| e("pragma", x))?;
        conn.busy_handler(Some(sqlite_busy))
            .map_err(|x| e("busy_handler", x))?;
        let mut begin = conn
            .prepare("BEGIN IMMEDIATE")
            .map_err(|x| e("prepare", x))?;
        let mut update = conn
            .prepare("UPDATE acct SET bal=?1 WHERE id=?2")
            .map_err(|x| e("prepare", x))?;
        let mut commit = conn.prepare("COMMIT").map_err(|x| e("prepare", x))?;
        let mut rng = Rng::new(0x5eed ^ u64::from(g));
        let mut lat = Vec::with_capacity(1 << 16);
        let mut commits = 0u64;
        let mut own_busy = 0u64;
        barrier.wait();
        let deadline = Instant::now() + secs;
        let mut i = 0u64;
        while Instant::now() < deadline {
            let id = cell.pattern.row(g, total, args.rows, i, &mut rng);
            i += 1;
            let bal = balance_text(i);
            let t0 = Instant::now();
            loop {
                match begin.execute([]) {
                    Ok(_) => break,
                    Err(rusqlite::Error::SqliteFailure(f, _))
                        if f.code == rusqlite::ErrorCode::DatabaseBusy =>
                    {
                        own_busy += 1;
                    }
                    Err(x) => return Err(e("BEGIN IMMEDIATE", x)),
                }
            }
            let n = update
                .execute(rusqlite::params![bal, id])
                .map_err(|x| e("UPDATE", x))?;
            if n != 1 {
                return Err(format!("SQLite UPDATE of row {id} changed {n} rows"));
            }
            commit.execute([]).map_err(|x| e("COMMIT", x))?;
            lat.push(t0.elapsed().as_nanos() as u64);
            commits += 1;
        }
        Ok((commits, own_busy, lat))
    })?;
    let mut r = SideResult {
        elapsed,
        aborts: SQLITE_RETRIES.load(Ordering::Relaxed),
        ..SideResult::default()
    };
    for (c, busy, lat) in outs {
        r.commits += c;
        r.aborts += busy;
        r.latencies.extend(lat);
    }
    // FULL: one WAL fsync per commit (no group commit).
    r.batches = r.commits;
    r.wal_syncs = if cell.sync == SyncMode::Full {
        r.commits
    } else {
        0
    };
    Ok(r)
}

fn run_ours(
    db: &Path,
    accounts: &Accounts,
    cell: Cell,
    args: &Args,
    slice: Slice,
) -> Result<SideResult, String> {
    let cx = Cx::new();
    let options = CoordinatorOptions {
        sync: cell.sync,
        checkpoint_on_close: false,
        kill_at: None,
        ..CoordinatorOptions::default()
    };
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), db, options)
        .map_err(|e| format!("Coordinator::open {}: {e}", db.display()))?;
    if coord.page_size() as usize != PAGE_SIZE {
        return Err(format!(
            "{} has page size {}",
            db.display(),
            coord.page_size()
        ));
    }
    let secs = Duration::from_secs_f64(args.secs);
    let run = run_threads(cell.writers, slice, |t, barrier| {
        let (g, total) = slice.writer(t, cell.writers);
        let cx = Cx::new();
        let mut rng = Rng::new(0x5eed ^ u64::from(g));
        let mut buf = vec![0u8; PAGE_SIZE];
        let mut lat = Vec::with_capacity(1 << 16);
        let (mut commits, mut aborts) = (0u64, 0u64);
        barrier.wait();
        let deadline = Instant::now() + secs;
        let mut i = 0u64;
        while Instant::now() < deadline {
            let id = cell.pattern.row(g, total, args.rows, i, &mut rng);
            i += 1;
            let page = accounts
                .page(i64::from(id))
                .ok_or_else(|| format!("account {id} is not in the bank"))?;
            let page_no = page.get();
            let t0 = Instant::now();
            loop {
                let e = |what: &str, x: &dyn std::fmt::Display| {
                    format!("{what} (thread {t}, row {id}, page {page_no}): {x}")
                };
                let mut txn = coord
                    .begin_concurrent(&cx)
                    .map_err(|x| e("begin_concurrent", &x))?;
                txn.read_page(&cx, page, &mut buf)
                    .map_err(|x| e("read_page", &x))?;
                let bal = bank::read_balance(&buf).map_err(|x| e("read_balance", &x))?;
                bank::write_balance(&mut buf, bal + 1).map_err(|x| e("write_balance", &x))?;
                txn.write_page(&cx, page, &buf)
                    .map_err(|x| e("write_page", &x))?;
                let size = txn.db_size();
                match txn.commit(&cx, size) {
                    Ok(_) => break,
                    Err(x) if x.extended_code() == BUSY_SNAPSHOT => aborts += 1,
                    Err(x) => return Err(e("commit", &x)),
                }
            }
            lat.push(t0.elapsed().as_nanos() as u64);
            commits += 1;
        }
        Ok((commits, aborts, lat))
    });
    let stats = coord.stats();
    let closed = coord.close(&cx);
    let (elapsed, outs) = run?;
    closed.map_err(|e| format!("Coordinator::close {}: {e}", db.display()))?;
    let mut r = SideResult {
        elapsed,
        batches: stats.batches,
        wal_syncs: stats.wal_syncs,
        ..SideResult::default()
    };
    for (c, a, lat) in outs {
        r.commits += c;
        r.aborts += a;
        r.latencies.extend(lat);
    }
    if r.commits != stats.commits || r.aborts != stats.conflicts {
        return Err(format!(
            "our counts disagree with the coordinator's: {} commits / {} conflicts seen, \
             stats {stats:?}",
            r.commits, r.aborts
        ));
    }
    if slice.total == 0 {
        verify_ours(db, accounts.len(), r.commits)?;
    }
    Ok(r)
}

/// The hidden subcommand a multi-process cell runs in each worker.
pub const WORKER_COMMAND: &str = "__bench-concurrent-worker";

/// Runs one side of a cell in `cell.processes` worker processes; sums what they report.
fn run_processes(
    db: &Path,
    accounts: &Accounts,
    cell: Cell,
    args: &Args,
    ours: bool,
) -> Result<SideResult, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // Late enough for every worker to open the database first.
    let start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        + 400_000_000;
    let total = cell.processes * cell.writers;
    let mut children = Vec::new();
    for index in 0..cell.processes {
        let child = Command::new(&exe)
            .arg(WORKER_COMMAND)
            .args([
                if ours { "ours" } else { "sqlite" }.to_string(),
                db.display().to_string(),
                cell.writers.to_string(),
                sync_name(cell.sync).to_string(),
                cell.pattern.name().to_string(),
                args.rows.to_string(),
                args.secs.to_string(),
                args.sqlite_autocheckpoint.to_string(),
                index.to_string(),
                total.to_string(),
                start_ns.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start a worker: {e}"))?;
        children.push(child);
    }
    let mut sum = SideResult::default();
    let mut slowest = Duration::ZERO;
    for child in children {
        let out = child
            .wait_with_output()
            .map_err(|e| format!("a worker: {e}"))?;
        if !out.status.success() {
            return Err(format!("a worker failed with {}", out.status));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .ok_or_else(|| format!("a worker printed no result: {text:?}"))?;
        let v: Value = fsqlite_testkit::serde_json::from_str(line)
            .map_err(|e| format!("a worker's result {line:?}: {e}"))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        slowest = slowest.max(Duration::from_nanos(n("elapsed_ns")));
        sum.commits += n("commits");
        sum.aborts += n("aborts");
        sum.batches += n("batches");
        sum.wal_syncs += n("wal_syncs");
        if let Some(l) = v["latencies_ns"].as_array() {
            sum.latencies.extend(l.iter().filter_map(Value::as_u64));
        }
    }
    sum.elapsed = slowest;
    if ours {
        verify_ours(db, accounts.len(), sum.commits)?;
    }
    Ok(sum)
}

/// `__bench-concurrent-worker SIDE DB THREADS SYNC PATTERN ROWS SECS AUTOCKPT INDEX TOTAL
/// START_NS`: one process of a multi-process cell; prints one JSON line.
pub fn worker(argv: &[String]) -> Result<(), String> {
    let [
        side,
        db,
        threads,
        sync,
        pattern,
        rows,
        secs,
        ckpt,
        index,
        total,
        start,
    ] = argv
    else {
        return Err(format!(
            "{WORKER_COMMAND}: expected 11 arguments, got {argv:?}"
        ));
    };
    let num = |v: &str, what: &str| -> Result<u64, String> {
        v.parse()
            .map_err(|_| format!("{WORKER_COMMAND}: {what} {v:?}"))
    };
    let sync = match sync.as_str() {
        "FULL" => SyncMode::Full,
        "NORMAL" => SyncMode::Normal,
        other => return Err(format!("{WORKER_COMMAND}: sync {other:?}")),
    };
    let pattern = Pattern::ALL
        .into_iter()
        .find(|p| p.name() == pattern)
        .ok_or_else(|| format!("{WORKER_COMMAND}: pattern {pattern:?}"))?;
    let cell = Cell {
        writers: u32::try_from(num(threads, "threads")?).map_err(|e| e.to_string())?,
        sync,
        pattern,
        processes: 1,
    };
    let args = Args {
        secs: secs
            .parse()
            .map_err(|_| format!("{WORKER_COMMAND}: secs {secs:?}"))?,
        rows: u32::try_from(num(rows, "rows")?).map_err(|e| e.to_string())?,
        sqlite_autocheckpoint: u32::try_from(num(ckpt, "autocheckpoint")?)
            .map_err(|e| e.to_string())?,
        ..parse_args(&[])?
    };
    let slice = Slice {
        index: u32::try_from(num(index, "index")?).map_err(|e| e.to_string())?,
        total: u32::try_from(num(total, "total")?).map_err(|e| e.to_string())?,
        start_ns: Some(u128::from(num(start, "start")?)),
    };
    let db = PathBuf::from(db);
    crate::bench_vs_sqlite::stop_counting_heap();
    let r = if side == "ours" {
        let root = fsqlite_testkit::sqlite::query_rows(
            &db,
            "SELECT rootpage FROM sqlite_schema WHERE name = 'acct'",
        )
        .map_err(|e| e.to_string())?[0][0]
            .parse()
            .map_err(|e| format!("root page: {e}"))?;
        let accounts = bank::scan(&db, root).map_err(|e| e.to_string())?;
        run_ours(&db, &accounts, cell, &args, slice)?
    } else {
        run_sqlite(&db, cell, &args, slice)?
    };
    println!(
        "{}",
        json!({
            "commits": r.commits,
            "aborts": r.aborts,
            "batches": r.batches,
            "wal_syncs": r.wal_syncs,
            "elapsed_ns": r.elapsed.as_nanos() as u64,
            "latencies_ns": r.latencies,
        })
    );
    Ok(())
}

/// SQLite reads what we committed: every balance started at 0 and each commit added 1,
/// so the books hold exactly the commits (none lost), and `integrity_check` says ok.
fn verify_ours(db: &Path, accounts: usize, commits: u64) -> Result<(), String> {
    bank::books(db)
        .and_then(|b| b.check(accounts as i64, commits as i64))
        .map_err(|e| format!("{} after our run: {e}", db.display()))
}

// ---------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------

struct Row {
    cell: Cell,
    ours: SideResult,
    sqlite: SideResult,
}

fn fmt_rate(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn fmt_us(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

impl Row {
    fn ratio(&self) -> f64 {
        self.ours.rate() / self.sqlite.rate().max(1e-9)
    }

    fn per_fsync(&self) -> String {
        let o = &self.ours;
        let per_batch = o.commits as f64 / o.batches.max(1) as f64;
        if o.wal_syncs == 0 {
            format!("– ({per_batch:.1}/batch)")
        } else {
            format!("{:.1}", o.commits as f64 / o.wal_syncs as f64)
        }
    }

    fn abort_rate(&self) -> f64 {
        let o = &self.ours;
        o.aborts as f64 / (o.commits + o.aborts).max(1) as f64
    }

    fn markdown(&self) -> String {
        let (o, s) = (&self.ours, &self.sqlite);
        format!(
            "| {} | {} | {} | {} | {} | {} | **{:.2}×** | {} / {} | {} / {} | {} | {:.1} % | {:.2} |",
            self.cell.processes,
            self.cell.writers,
            sync_name(self.cell.sync),
            self.cell.pattern.name(),
            fmt_rate(o.rate()),
            fmt_rate(s.rate()),
            self.ratio(),
            fmt_us(o.pct_us(0.5)),
            fmt_us(o.pct_us(0.99)),
            fmt_us(s.pct_us(0.5)),
            fmt_us(s.pct_us(0.99)),
            self.per_fsync(),
            self.abort_rate() * 100.0,
            s.aborts as f64 / s.commits.max(1) as f64,
        )
    }

    fn json(&self) -> Value {
        let side = |r: &SideResult| {
            json!({
                "commits": r.commits,
                "aborts_or_retries": r.aborts,
                "elapsed_secs": r.elapsed.as_secs_f64(),
                "commits_per_sec": r.rate(),
                "p50_us": r.pct_us(0.5),
                "p99_us": r.pct_us(0.99),
                "batches": r.batches,
                "wal_syncs": r.wal_syncs,
            })
        };
        json!({
            "processes": self.cell.processes,
            "writers": self.cell.writers,
            "sync": sync_name(self.cell.sync),
            "pattern": self.cell.pattern.name(),
            "ratio": self.ratio(),
            "ours_abort_rate": self.abort_rate(),
            "ours": side(&self.ours),
            "sqlite": side(&self.sqlite),
        })
    }
}

const TABLE_HEAD: &str = "| processes | writers each | sync | pattern | ours commits/s | SQLite commits/s | ours ÷ SQLite | ours p50 / p99 µs | SQLite p50 / p99 µs | ours commits per fsync | ours abort rate | SQLite busy retries per commit |\n|---|---|---|---|---|---|---|---|---|---|---|---|";

// ---------------------------------------------------------------------------------------
// Entry
// ---------------------------------------------------------------------------------------

/// Re-runs this command from an optimized build (`cargo run --release`).
fn rerun_release(args: &[String]) -> Result<(), String> {
    eprintln!("xtask: bench-concurrent measures optimized code; re-running with --release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
        .arg("bench-concurrent")
        .args(args)
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the release run failed with {status}"))
    }
}

/// `cargo xtask bench-concurrent …` (see the module doc).
pub fn run(args: &[String]) -> Result<(), String> {
    let parsed = parse_args(args)?;
    if cfg!(debug_assertions) {
        return rerun_release(args);
    }
    crate::bench_vs_sqlite::stop_counting_heap();
    let base = parsed
        .dir
        .clone()
        .unwrap_or_else(|| fsqlite_testkit::stats::target_dir().join("bench-concurrent"));
    std::fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&base)
        .map_err(|e| {
            format!(
                "could not create a scratch directory in {}: {e}",
                base.display()
            )
        })?;
    let dir = scratch.path().to_path_buf();
    let _guard = if parsed.keep {
        eprintln!("xtask: keeping {}", scratch.keep().display());
        None
    } else {
        Some(scratch)
    };
    let (mount, device, fstype) = filesystem_of(&dir);
    if matches!(fstype.as_str(), "tmpfs" | "ramfs") {
        eprintln!(
            "xtask: WARNING: {} is on {fstype}: fsync costs nothing there, so FULL figures \
             mean nothing; use --dir on a real disk",
            dir.display()
        );
    }
    let started = Instant::now();
    let date = utc_now();
    let load_before = load_average();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpu = cpu_model();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned());
    let command = format!("cargo xtask bench-concurrent {}", args.join(" "));
    let machine = format!(
        "date {date}; {nproc} CPUs ({cpu}); Linux {kernel}; dir {} on {fstype} ({device} at \
         {mount}); SQLite {} (rusqlite bundled); load before {load_before}",
        dir.display(),
        rusqlite::version()
    );
    eprintln!("xtask: {machine}");
    let bank = build_template(&dir, parsed.rows)?;
    let template = bank.path.clone();
    let db = dir.join("bench.db");
    let mut cells = Vec::new();
    for &processes in &parsed.processes {
        for &sync in &parsed.syncs {
            for &pattern in &parsed.patterns {
                for &writers in &parsed.writers {
                    cells.push(Cell {
                        writers,
                        sync,
                        pattern,
                        processes,
                    });
                }
            }
        }
    }
    eprintln!(
        "xtask: {} cells × 2 sides × {} round(s) × {:.2} s, {} rows, SQLite \
         wal_autocheckpoint={}",
        cells.len(),
        parsed.rounds,
        parsed.secs,
        parsed.rows,
        parsed.sqlite_autocheckpoint
    );
    let mut rows = Vec::new();
    let mut turn = 0u32;
    for (k, &cell) in cells.iter().enumerate() {
        let mut ours = SideResult::default();
        let mut sqlite = SideResult::default();
        for _ in 0..parsed.rounds {
            let ours_first = turn % 2 == 1;
            turn += 1;
            for side in 0..2 {
                let is_ours = (side == 0) == ours_first;
                if parsed
                    .only
                    .is_some_and(|o| o != if is_ours { "ours" } else { "sqlite" })
                {
                    continue;
                }
                fresh_copy(&template, &db)?;
                if cell.processes > 1 {
                    let r = run_processes(&db, &bank.accounts, cell, &parsed, is_ours)?;
                    if is_ours {
                        ours.add(r);
                    } else {
                        sqlite.add(r);
                    }
                } else if is_ours {
                    ours.add(run_ours(&db, &bank.accounts, cell, &parsed, Slice::ALONE)?);
                } else {
                    sqlite.add(run_sqlite(&db, cell, &parsed, Slice::ALONE)?);
                }
                remove_db(&db);
            }
        }
        ours.latencies.sort_unstable();
        sqlite.latencies.sort_unstable();
        let row = Row { cell, ours, sqlite };
        eprintln!(
            "[{}/{}] {} x {} writers {} {}: ours {}/s, SQLite {}/s, {:.2}×, ours per fsync {}, \
             abort {:.1} %",
            k + 1,
            cells.len(),
            cell.processes,
            cell.writers,
            sync_name(cell.sync),
            cell.pattern.name(),
            fmt_rate(row.ours.rate()),
            fmt_rate(row.sqlite.rate()),
            row.ratio(),
            row.per_fsync(),
            row.abort_rate() * 100.0
        );
        rows.push(row);
    }
    let load_after = load_average();
    let mut table = String::new();
    let _ = writeln!(table, "{TABLE_HEAD}");
    for r in &rows {
        let _ = writeln!(table, "{}", r.markdown());
    }
    let report = json!({
        "date": date,
        "command": command,
        "nproc": nproc,
        "cpu": cpu,
        "kernel": kernel,
        "dir": dir.display().to_string(),
        "filesystem": {"type": fstype, "device": device, "mount": mount},
        "sqlite_version": rusqlite::version(),
        "sqlite_wal_autocheckpoint": parsed.sqlite_autocheckpoint,
        "secs_per_side": parsed.secs,
        "rounds": parsed.rounds,
        "rows": parsed.rows,
        "load_before": load_before,
        "load_after": load_after,
        "elapsed_secs": started.elapsed().as_secs_f64(),
        "cells": rows.iter().map(Row::json).collect::<Vec<_>>(),
    });
    let path = fsqlite_testkit::stats::write_stats("bench-concurrent", report)
        .map_err(|e| format!("could not write the stats: {e}"))?;
    println!("{command}\n\n{machine}; load after {load_after}\n");
    println!(
        "{:.2} s per side per cell, {} round(s), sides alternating; {} rows of ~{} bytes, \
         one per leaf page; SQLite wal_autocheckpoint={} (ours never checkpoints while open)\n",
        parsed.secs,
        parsed.rounds,
        parsed.rows,
        bank::pad_len(PAGE_SIZE as u32) + bank::BALANCE_DIGITS,
        parsed.sqlite_autocheckpoint
    );
    println!("{table}");
    println!(
        "{:.0?} in all; details in {}",
        started.elapsed(),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disjoint_rows_stay_in_the_threads_residue_class() {
        let mut rng = Rng::new(1);
        for writers in [1u32, 3, 8, 16] {
            for t in 0..writers {
                for i in 0..200 {
                    let id = Pattern::Disjoint.row(t, writers, 1000, i, &mut rng);
                    assert!((1..=1000).contains(&id));
                    assert_eq!((id - 1) % writers, t);
                }
            }
        }
    }

    #[test]
    fn sqlite_balance_text_is_the_banks_width() {
        assert_eq!(balance_text(42).len(), bank::BALANCE_DIGITS);
    }
}
