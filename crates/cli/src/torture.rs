//! The crash harness behind `fsqlite torture` and `fsqlite demo`: writer processes that
//! commit through [`Wal`] on [`UnixVfs`] and acknowledge each commit, killed with SIGKILL
//! and restarted; then recovery, a checkpoint through the barrier, and SQLite's own
//! verdict on the result.
//!
//! # The database
//!
//! [`prepare_database`] has SQLite (rusqlite's bundled build) create a WAL-mode database
//! with page size [`PAGE_SIZE`] and the table [`SCHEMA`]:
//! `t(writer, seq, payload, PRIMARY KEY(writer, seq))`.
//!
//! # A writer ([`run_writer`], the hidden `fsqlite __writer` subcommand)
//!
//! ```text
//! open Wal (sync FULL, auto-checkpoint off, no checkpoint on close)
//! print "READY <pid>"
//! until stdin reaches end-of-file:
//!     begin_write                                   // WAL write lock, current snapshot
//!     pages := read pages 1..=db_size               // the current state
//!     next  := SQLite applies, on those pages (crate::sqlpages):
//!                seq = max(seq of this writer) + 1
//!                INSERT (writer, seq, payload(seed, writer, seq))
//!     write_page for every changed page; commit(db_size of next)
//!     print "ACK <writer> <seq> <mxFrame>"           // only after commit returned Ok
//!     print "RECOVERIES <n>" when this process rebuilt the WAL-index again
//! print "DONE"
//! ```
//!
//! An ACK line is at most a few dozen bytes, written with one `write` to a pipe, so it is
//! atomic; the pipe keeps it after the writer dies. A commit is **acknowledged** exactly
//! when the parent has read its complete ACK line.
//!
//! # The supervisor ([`run_crash`])
//!
//! ```text
//! start K writers (and, optionally, a legacy SQLite reader: python3's sqlite3)
//! until the deadline:
//!     every kill interval (random in [min, max]): SIGKILL a random writer, restart it
//!     a restarted writer may carry FSQLITE_KILL_AT=<write|sync>:<n>[:after]: the VFS
//!         kills it from inside, exactly before/after its n-th write or fsync, i.e.
//!         inside a commit (frames written but not synced, synced but not published, …)
//!     a writer that died by itself is counted and restarted
//!     every checkpoint interval: a checkpoint through the barrier, timed, alternately
//!         PASSIVE and RESTART (after which the next writer starts a new WAL generation)
//! stop the reader; SIGKILL every writer at once (mid-commit); close our connection
//! recover (crate::recover: nobody is attached, so the -shm is rebuilt from the WAL)
//! checkpoint TRUNCATE through the barrier (crate::checkpoint), with its read-back
//! SQLite: PRAGMA integrity_check; every row; every acknowledged (writer, seq) must be a
//! row whose payload is payload(seed, writer, seq)
//! ```
//!
//! Lost commits (acknowledged but absent) must be zero. Commits found but never
//! acknowledged are fine: the writer died after its commit became durable and before
//! the parent read its ACK.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_vfs::unix::KILL_AT_ENV;
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalOptions};
use rusqlite::{Connection, OpenFlags, params};
use serde::Serialize;

use crate::capture;
use crate::checkpoint::{CheckpointOptions, CheckpointReport, checkpoint};
use crate::files::{CliError, CliResult};
use crate::recover::{RecoverReport, recover};
use crate::sqlpages::{SqlPager, changed_pages};

/// Page size of the harness database.
pub const PAGE_SIZE: u32 = 4096;
/// The harness table.
pub const SCHEMA: &str = "CREATE TABLE t(writer INTEGER NOT NULL, seq INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY(writer, seq))";
/// The hidden subcommand that runs one writer.
pub const WRITER_SUBCOMMAND: &str = "__writer";
/// Shortest payload in bytes.
pub const PAYLOAD_MIN: u64 = 24;
/// Payload lengths are `PAYLOAD_MIN + hash % PAYLOAD_SPREAD`.
pub const PAYLOAD_SPREAD: u64 = 160;
/// How long a writer waits for the WAL write lock.
pub const WRITER_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the supervisor waits for a writer's READY line, or a reader's.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// SplitMix64: the harness's seeded PRNG.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform duration in `[lo, hi]`.
    pub fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_micros() as u64;
        lo + Duration::from_micros(self.below(span + 1))
    }
}

/// The payload of row `(writer, seq)` in a run seeded with `seed`.
pub fn payload_for(seed: u64, writer: u32, seq: i64) -> Vec<u8> {
    let mut rng = Rng::new(
        seed ^ (u64::from(writer) << 40) ^ (seq as u64).wrapping_mul(0x2545_f491_4f6c_dd1d),
    );
    let len = PAYLOAD_MIN + rng.below(PAYLOAD_SPREAD);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn sql_failed(db: &Path, what: &str, e: &rusqlite::Error) -> CliError {
    CliError::failed(
        format!("SQLite could not {what} on {}: {e}", db.display()),
        "check that the directory is writable and the disk has room",
    )
}

/// Creates the harness database at `db` (which must not exist) with SQLite: WAL mode,
/// page size [`PAGE_SIZE`], table [`SCHEMA`].
pub fn prepare_database(db: &Path) -> CliResult<()> {
    if db.exists() {
        return Err(FrankenError::cannot_open(
            db,
            "the file already exists; the harness only works on a fresh database",
        )
        .into());
    }
    let c = Connection::open(db).map_err(|e| sql_failed(db, "create the database", &e))?;
    c.execute_batch(&format!(
        "PRAGMA page_size={PAGE_SIZE}; PRAGMA journal_mode=WAL; {SCHEMA};"
    ))
    .map_err(|e| sql_failed(db, "create the schema", &e))?;
    c.close().map_err(|(_, e)| sql_failed(db, "close", &e))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------

/// What a writer process is told.
#[derive(Clone, Debug)]
pub struct WriterArgs {
    /// The database.
    pub db: PathBuf,
    /// The writer id (column `writer`).
    pub id: u32,
    /// The run seed (payloads).
    pub seed: u64,
}

fn say(line: &str) -> CliResult<()> {
    let mut out = std::io::stdout().lock();
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    out.write_all(buf.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| FrankenError::io("write", None, e).into())
}

/// One commit: the next row of writer `id`, built by SQLite on the current pages.
fn commit_one(
    wal: &mut Wal<UnixVfs>,
    pager: &mut SqlPager,
    args: &WriterArgs,
) -> CliResult<(i64, u32)> {
    let cx = Cx::new();
    let ps = wal.page_size() as usize;
    let mut txn = wal.begin_write(&cx)?;
    let n = txn.db_size();
    let mut image = vec![0u8; n as usize * ps];
    for (i, chunk) in image.chunks_mut(ps).enumerate() {
        let page =
            PageNumber::new(i as u32 + 1).ok_or_else(|| FrankenError::internal("page number 0"))?;
        txn.read_page(&cx, page, chunk)?;
    }
    let (id, seed) = (args.id, args.seed);
    let (next, seq) = pager.apply(&mut image, |c| {
        let seq: i64 = c.query_row(
            "SELECT coalesce(max(seq), 0) + 1 FROM t WHERE writer = ?1",
            [id],
            |r| r.get(0),
        )?;
        c.execute(
            "INSERT INTO t(writer, seq, payload) VALUES (?1, ?2, ?3)",
            params![id, seq, payload_for(seed, id, seq)],
        )?;
        Ok(seq)
    })?;
    if next.len() % ps != 0 || next.is_empty() {
        return Err(CliError::failed(
            format!(
                "SQLite produced {} bytes, not whole {ps}-byte pages",
                next.len()
            ),
            "this is a bug in the harness; please report it",
        ));
    }
    for page in changed_pages(&image, &next, ps) {
        let off = (page as usize - 1) * ps;
        let p = PageNumber::new(page).ok_or_else(|| FrankenError::internal("page number 0"))?;
        txn.write_page(&cx, p, &next[off..off + ps])?;
    }
    let mx = txn.commit(&cx, (next.len() / ps) as u32)?;
    Ok((seq, mx))
}

/// Runs one writer until its stdin closes (see the module docs). Its stdout carries the
/// protocol lines.
pub fn run_writer(args: &WriterArgs) -> CliResult<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
            stop.store(true, Ordering::SeqCst);
        });
    }
    let cx = Cx::new();
    let options = WalOptions {
        sync: SyncMode::Full,
        busy_timeout: WRITER_BUSY_TIMEOUT,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    };
    let mut wal = Wal::open(&cx, Arc::new(UnixVfs::from_env()), &args.db, options)?;
    say(&format!("READY {}", std::process::id()))?;
    let mut pager = SqlPager::new()?;
    let mut reported = 0;
    while !stop.load(Ordering::SeqCst) {
        if wal.recoveries() != reported {
            reported = wal.recoveries();
            say(&format!("RECOVERIES {reported}"))?;
        }
        match commit_one(&mut wal, &mut pager, args) {
            Ok((seq, mx)) => say(&format!("ACK {} {seq} {mx}", args.id))?,
            Err(CliError::Franken(e)) if e.is_transient() => {
                tracing::debug!(target: "fsqlite.cli.torture", error = %e, "retrying a busy commit");
            }
            Err(e) => return Err(e),
        }
    }
    if wal.recoveries() != reported {
        say(&format!("RECOVERIES {}", wal.recoveries()))?;
    }
    wal.close(&cx)?;
    say("DONE")
}

// ---------------------------------------------------------------------------------------
// The legacy reader
// ---------------------------------------------------------------------------------------

/// The python3 program of the legacy reader: `python3 -c READER_PY <db> <interval-s>`.
/// It prints `READY <sqlite version>`, then every interval `R <rows>` (a row count), and
/// every tenth time `Q <quick_check result>`; `E <message>` for an error; it stops when
/// its stdin closes.
pub const READER_PY: &str = r#"
import select, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
interval = float(sys.argv[2])
print("READY", sqlite3.sqlite_version, flush=True)
i = 0
while True:
    ready, _, _ = select.select([sys.stdin], [], [], interval)
    if ready and not sys.stdin.readline():
        break
    i += 1
    try:
        n = conn.execute("SELECT count(*) FROM t").fetchone()[0]
        print("R", n, flush=True)
        if i % 10 == 0:
            q = conn.execute("PRAGMA quick_check").fetchone()[0]
            print("Q", q, flush=True)
    except Exception as e:
        print("E", str(e).replace("\n", " "), flush=True)
conn.close()
print("BYE", flush=True)
"#;

/// What the legacy reader saw.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReaderStats {
    /// SQLite's version in the reader process.
    pub sqlite_version: String,
    /// Row-count queries answered.
    pub queries: u64,
    /// The largest row count seen.
    pub max_rows_seen: u64,
    /// Times a count was lower than the previous one (a commit vanished): must be 0.
    pub went_backwards: u64,
    /// `PRAGMA quick_check` runs.
    pub quick_checks: u64,
    /// `quick_check` results other than `ok`: must be 0.
    pub quick_check_failures: u64,
    /// Errors SQLite reported (first few).
    pub errors: Vec<String>,
    /// Errors in total.
    pub error_count: u64,
}

/// A python3 process reading the database with SQLite in a loop.
pub struct LegacyReader {
    child: Child,
    stdin: Option<ChildStdin>,
    stats: Arc<Mutex<ReaderStats>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for LegacyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegacyReader")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

fn record_reader_line(stats: &Mutex<ReaderStats>, line: &str) {
    let Ok(mut s) = stats.lock() else { return };
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    match tag {
        "R" => {
            let n: u64 = rest.trim().parse().unwrap_or(0);
            s.queries += 1;
            if n < s.max_rows_seen {
                s.went_backwards += 1;
            }
            s.max_rows_seen = s.max_rows_seen.max(n);
        }
        "Q" => {
            s.quick_checks += 1;
            if rest.trim() != "ok" {
                s.quick_check_failures += 1;
                if s.errors.len() < 5 {
                    s.errors.push(format!("quick_check: {rest}"));
                }
            }
        }
        "E" => {
            s.error_count += 1;
            if s.errors.len() < 5 {
                s.errors.push(rest.to_owned());
            }
        }
        _ => {}
    }
}

impl LegacyReader {
    /// Starts the reader on `db`, querying every `interval`, and waits for its READY line.
    pub fn spawn(db: &Path, interval: Duration) -> CliResult<Self> {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(READER_PY)
            .arg(db)
            .arg(format!("{}", interval.as_secs_f64()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                CliError::failed(
                    format!("could not start python3 for the legacy SQLite reader: {e}"),
                    "install python3 (with its sqlite3 module), or run `fsqlite demo --no-reader`",
                )
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stats = Arc::new(Mutex::new(ReaderStats::default()));
        let (tx, rx) = channel::<String>();
        let thread = stdout.map(|out| {
            let stats = Arc::clone(&stats);
            std::thread::spawn(move || {
                let mut ready_sent = false;
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if !ready_sent && let Some(v) = line.strip_prefix("READY ") {
                        if let Ok(mut s) = stats.lock() {
                            v.clone_into(&mut s.sqlite_version);
                        }
                        ready_sent = true;
                        let _ = tx.send(line.clone());
                        continue;
                    }
                    record_reader_line(&stats, &line);
                }
            })
        });
        let mut me = Self {
            child,
            stdin,
            stats,
            thread,
        };
        if rx.recv_timeout(STARTUP_LIMIT).is_err() {
            me.kill();
            return Err(CliError::failed(
                "the legacy SQLite reader (python3) did not start",
                "check that `python3 -c 'import sqlite3'` works",
            ));
        }
        Ok(me)
    }

    /// The reader's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A copy of the statistics so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin, waits for it to close its connection and exit (then kills it
    /// after 10 s), and returns what it saw.
    pub fn stop(mut self) -> ReaderStats {
        drop(self.stdin.take());
        let start = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if start.elapsed() > Duration::from_secs(10) => {
                    self.kill();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for LegacyReader {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The supervisor
// ---------------------------------------------------------------------------------------

/// Options of a crash run.
#[derive(Clone, Debug)]
pub struct CrashOptions {
    /// The database (created by [`prepare_database`] if it does not exist).
    pub db: PathBuf,
    /// The `fsqlite` executable to re-run as writers.
    pub exe: PathBuf,
    /// How long writers run.
    pub duration: Duration,
    /// Writer processes.
    pub writers: u32,
    /// Seed of every random choice (and of the payloads).
    pub seed: u64,
    /// Shortest interval between two SIGKILLs.
    pub kill_min: Duration,
    /// Longest interval between two SIGKILLs.
    pub kill_max: Duration,
    /// Probability that a restarted writer carries a VFS kill hook.
    pub hook_probability: f64,
    /// Interval of checkpoints during the run, alternately PASSIVE and RESTART (`None`:
    /// none).
    pub checkpoint_every: Option<Duration>,
    /// Run a legacy SQLite reader (python3) during the run.
    pub legacy_reader: bool,
    /// Interval of the reader's queries.
    pub reader_interval: Duration,
}

impl CrashOptions {
    /// Defaults for a database `db` and executable `exe`: 3 writers for 8 s, a kill
    /// every 150–600 ms, half of the restarts with a kill hook, a checkpoint every second,
    /// no reader.
    pub fn new(db: PathBuf, exe: PathBuf) -> Self {
        Self {
            db,
            exe,
            duration: Duration::from_secs(8),
            writers: 3,
            seed: 0x00f5_9173,
            kill_min: Duration::from_millis(150),
            kill_max: Duration::from_millis(600),
            hook_probability: 0.5,
            checkpoint_every: Some(Duration::from_secs(1)),
            legacy_reader: false,
            reader_interval: Duration::from_millis(20),
        }
    }
}

/// One checkpoint during the run.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointSample {
    /// `passive` or `restart` (they alternate).
    pub mode: &'static str,
    /// Seconds since the run started.
    pub at_s: f64,
    /// Milliseconds in `Wal::checkpoint`.
    pub ms: f64,
    /// SQLite's triple.
    pub busy: bool,
    /// Frames in the WAL.
    pub log_frames: u32,
    /// Frames backfilled.
    pub checkpointed_frames: u32,
    /// Pages the barrier verified (captured; 0 when not observed).
    pub pages_verified: u64,
    /// An error, if the checkpoint failed.
    pub error: Option<String>,
}

/// Progress of a run (for a progress display).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    /// Seconds elapsed.
    pub elapsed_s: f64,
    /// Commits acknowledged so far.
    pub acked: u64,
    /// Writers killed so far.
    pub kills: u64,
}

/// What the writers phase did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WritersOutcome {
    /// Commits acknowledged (ACK lines received).
    pub acked: u64,
    /// Writer processes started (including restarts).
    pub spawned: u64,
    /// Writers killed by the supervisor's SIGKILL at a random time.
    pub killed_by_signal: u64,
    /// Writers killed from inside by the VFS kill hook at a write or fsync.
    pub killed_by_hook: u64,
    /// Writers SIGKILLed all at once at the end (mid-commit).
    pub killed_at_end: u64,
    /// Writers that exited with an error (first messages in `errors`).
    pub failed: u64,
    /// WAL-index rebuilds the writers performed.
    pub recoveries: u64,
    /// Checkpoints during the run.
    pub checkpoints: Vec<CheckpointSample>,
    /// The legacy reader's view (when one ran).
    pub reader: Option<ReaderStats>,
    /// Writer error messages (first few).
    pub errors: Vec<String>,
    /// Seconds the writers ran.
    pub seconds: f64,
    /// The acknowledged commits: writer id -> seqs.
    #[serde(skip)]
    pub acks: BTreeMap<u32, BTreeSet<i64>>,
}

/// SQLite's verdict on the final database.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SqliteCheck {
    /// `PRAGMA integrity_check` output lines (`["ok"]` when sound).
    pub integrity: Vec<String>,
    /// Rows in the table (= commits found).
    pub rows: u64,
    /// Acknowledged commits present with the right payload.
    pub acked_found: u64,
    /// Acknowledged commits missing: must be 0.
    pub lost: u64,
    /// Up to 10 lost `(writer, seq)`.
    pub lost_examples: Vec<(u32, i64)>,
    /// Rows whose payload is not the one their writer committed: must be 0.
    pub bad_payloads: u64,
    /// Rows present that were never acknowledged (died between commit and ACK).
    pub unacked_found: u64,
}

impl SqliteCheck {
    /// True when the integrity check says `ok` and nothing is lost or damaged.
    pub fn ok(&self) -> bool {
        self.integrity == ["ok"] && self.lost == 0 && self.bad_payloads == 0
    }
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct CrashReport {
    /// The database.
    pub database: String,
    /// The seed.
    pub seed: u64,
    /// Writer processes.
    pub writers: u32,
    /// The writers phase.
    pub run: WritersOutcome,
    /// The recovery after the final kill.
    pub recovery: RecoverReport,
    /// The final TRUNCATE checkpoint.
    pub final_checkpoint: CheckpointReport,
    /// SQLite's verdict.
    pub sqlite: SqliteCheck,
    /// Seconds for the whole run.
    pub total_seconds: f64,
    /// True when nothing was lost, SQLite's checks passed, no writer failed with an
    /// error, the reader never saw a commit vanish, and recovery and the final read-back
    /// matched.
    pub passed: bool,
}

/// One complete stdout line of the writer in `slot`.
struct Msg {
    slot: usize,
    line: String,
}

struct Slot {
    id: u32,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    hooked: bool,
    recoveries_reported: u64,
    stderr: Arc<Mutex<String>>,
    threads: Vec<JoinHandle<()>>,
}

const STDERR_TAIL: usize = 2048;

fn spawn_writer(
    opts: &CrashOptions,
    slot: usize,
    s: &mut Slot,
    hook: Option<String>,
    tx: &Sender<Msg>,
) -> CliResult<()> {
    let mut cmd = Command::new(&opts.exe);
    cmd.arg(WRITER_SUBCOMMAND)
        .arg("--db")
        .arg(&opts.db)
        .arg("--id")
        .arg(s.id.to_string())
        .arg("--seed")
        .arg(opts.seed.to_string())
        .env_remove(KILL_AT_ENV)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    s.hooked = hook.is_some();
    if let Some(h) = hook {
        cmd.env(KILL_AT_ENV, h);
    }
    let mut child = cmd.spawn().map_err(|e| {
        CliError::failed(
            format!(
                "could not start writer {} ({}): {e}",
                s.id,
                opts.exe.display()
            ),
            "run the fsqlite binary that is on disk (the harness re-executes itself)",
        )
    })?;
    s.stdin = child.stdin.take();
    s.recoveries_reported = 0;
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        s.threads.push(std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        // A line cut short by the kill has no newline: never counted.
                        if buf.last() != Some(&b'\n') {
                            break;
                        }
                        let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                        if tx.send(Msg { slot, line }).is_err() {
                            break;
                        }
                    }
                }
            }
        }));
    }
    if let Some(mut err) = child.stderr.take() {
        let tail = Arc::clone(&s.stderr);
        s.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = tail.lock() {
                    t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if t.len() > STDERR_TAIL {
                        let cut = t.len() - STDERR_TAIL;
                        let cut = (cut..t.len()).find(|i| t.is_char_boundary(*i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            }
        }));
    }
    s.child = Some(child);
    Ok(())
}

fn choose_hook(rng: &mut Rng, p: f64) -> Option<String> {
    let per_million = (p.clamp(0.0, 1.0) * 1e6) as u64;
    if rng.below(1_000_000) >= per_million {
        return None;
    }
    let op = if rng.below(2) == 0 { "write" } else { "sync" };
    let n = 1 + rng.below(12);
    let when = if rng.below(2) == 0 { "" } else { ":after" };
    Some(format!("{op}:{n}{when}"))
}

fn handle_line(out: &mut WritersOutcome, slots: &mut [Slot], slot: usize, line: &str) {
    let mut parts = line.split_ascii_whitespace();
    match parts.next() {
        Some("ACK") => {
            let id = parts.next().and_then(|v| v.parse::<u32>().ok());
            let seq = parts.next().and_then(|v| v.parse::<i64>().ok());
            if let (Some(id), Some(seq)) = (id, seq)
                && out.acks.entry(id).or_default().insert(seq)
            {
                out.acked += 1;
            }
        }
        Some("RECOVERIES") => {
            if let Some(n) = parts.next().and_then(|v| v.parse::<u64>().ok()) {
                let s = &mut slots[slot];
                out.recoveries += n.saturating_sub(s.recoveries_reported);
                s.recoveries_reported = s.recoveries_reported.max(n);
            }
        }
        _ => {}
    }
}

fn drain(rx: &Receiver<Msg>, out: &mut WritersOutcome, slots: &mut [Slot], wait: Duration) {
    let mut first = true;
    loop {
        let msg = if first {
            first = false;
            match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.try_recv() {
                Ok(m) => m,
                Err(_) => return,
            }
        };
        handle_line(out, slots, msg.slot, &msg.line);
    }
}

fn reap_threads(s: &mut Slot) {
    for t in s.threads.drain(..) {
        let _ = t.join();
    }
}

fn checkpoint_sample(
    wal: &mut Wal<UnixVfs>,
    mode: CheckpointMode,
    start: Instant,
) -> CheckpointSample {
    let cx = Cx::new();
    let _ = capture::take();
    let t = Instant::now();
    let r = wal.checkpoint(&cx, mode);
    let mode = crate::checkpoint::mode_name(mode);
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let pages_verified = capture::take()
        .iter()
        .filter(|e| e.get("verify_us").is_some())
        .map(|e| e.get("pages").unwrap_or(0))
        .sum();
    let at_s = start.elapsed().as_secs_f64();
    match r {
        Ok(o) => CheckpointSample {
            mode,
            at_s,
            ms,
            busy: o.busy,
            log_frames: o.log_frames,
            checkpointed_frames: o.checkpointed_frames,
            pages_verified,
            error: None,
        },
        Err(e) => CheckpointSample {
            mode,
            at_s,
            ms,
            busy: true,
            log_frames: 0,
            checkpointed_frames: 0,
            pages_verified,
            error: Some(e.to_string()),
        },
    }
}

/// Runs the writers phase (see the module docs) and returns what happened; every writer
/// is dead when it returns.
pub fn run_writers(
    opts: &CrashOptions,
    mut progress: impl FnMut(Progress),
) -> CliResult<WritersOutcome> {
    if !opts.db.exists() {
        prepare_database(&opts.db)?;
    }
    let mut rng = Rng::new(opts.seed);
    let mut out = WritersOutcome::default();
    let reader = if opts.legacy_reader {
        Some(LegacyReader::spawn(&opts.db, opts.reader_interval)?)
    } else {
        None
    };
    let cx = Cx::new();
    let mut own = if opts.checkpoint_every.is_some() {
        let o = WalOptions {
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..WalOptions::default()
        };
        Some(Wal::open(&cx, Arc::new(UnixVfs::new()), &opts.db, o)?)
    } else {
        None
    };
    let (tx, rx) = channel::<Msg>();
    let mut slots: Vec<Slot> = (0..opts.writers.max(1))
        .map(|i| Slot {
            id: i + 1,
            child: None,
            stdin: None,
            hooked: false,
            recoveries_reported: 0,
            stderr: Arc::new(Mutex::new(String::new())),
            threads: Vec::new(),
        })
        .collect();
    for (i, s) in slots.iter_mut().enumerate() {
        spawn_writer(opts, i, s, None, &tx)?;
        out.spawned += 1;
    }
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut next_kill = start + rng.duration(opts.kill_min, opts.kill_max);
    let mut next_ckpt = opts.checkpoint_every.map(|d| start + d);
    let mut next_progress = start;
    while Instant::now() < deadline {
        drain(&rx, &mut out, &mut slots, Duration::from_millis(5));
        // Writers that died by themselves (kill hook) or failed.
        for i in 0..slots.len() {
            let Some(Ok(Some(status))) = slots[i].child.as_mut().map(Child::try_wait) else {
                continue;
            };
            slots[i].child = None;
            if status.signal() == Some(nix::sys::signal::Signal::SIGKILL as i32) {
                out.killed_by_hook += 1;
            } else if !status.success() {
                out.failed += 1;
                let tail = slots[i]
                    .stderr
                    .lock()
                    .map(|t| t.clone())
                    .unwrap_or_default();
                if out.errors.len() < 5 {
                    out.errors.push(format!(
                        "writer {} exited with {status}: {}",
                        slots[i].id,
                        tail.trim()
                    ));
                }
                if out.failed >= 5 && out.acked == 0 {
                    for s in &mut slots {
                        if let Some(c) = s.child.as_mut() {
                            let _ = c.kill();
                            let _ = c.wait();
                        }
                    }
                    return Err(CliError::failed(
                        format!("writers keep failing: {}", out.errors.join(" | ")),
                        "run `fsqlite verify` on the database, and check the directory is writable",
                    ));
                }
            }
            reap_threads(&mut slots[i]);
            let hook = choose_hook(&mut rng, opts.hook_probability);
            spawn_writer(opts, i, &mut slots[i], hook, &tx)?;
            out.spawned += 1;
        }
        let now = Instant::now();
        if now >= next_kill {
            next_kill = now + rng.duration(opts.kill_min, opts.kill_max);
            let i = rng.below(slots.len() as u64) as usize;
            if let Some(mut c) = slots[i].child.take() {
                let _ = c.kill();
                let _ = c.wait();
                out.killed_by_signal += 1;
                reap_threads(&mut slots[i]);
                let hook = choose_hook(&mut rng, opts.hook_probability);
                spawn_writer(opts, i, &mut slots[i], hook, &tx)?;
                out.spawned += 1;
            }
        }
        if let (Some(at), Some(wal), Some(every)) = (next_ckpt, own.as_mut(), opts.checkpoint_every)
            && now >= at
        {
            // PASSIVE and RESTART alternate: a RESTART waits for the writer and the
            // readers, so the next commit starts a new WAL generation (new salts).
            let mode = if out.checkpoints.len() % 2 == 0 {
                CheckpointMode::Passive
            } else {
                CheckpointMode::Restart
            };
            out.checkpoints.push(checkpoint_sample(wal, mode, start));
            next_ckpt = Some(Instant::now() + every);
        }
        if now >= next_progress {
            next_progress = now + Duration::from_millis(200);
            progress(Progress {
                elapsed_s: start.elapsed().as_secs_f64(),
                acked: out.acked,
                kills: out.killed_by_signal + out.killed_by_hook,
            });
        }
    }
    out.seconds = start.elapsed().as_secs_f64();
    // The reader first, while our connection still holds the database: its close then
    // cannot checkpoint and delete the WAL we want to recover.
    if let Some(r) = reader {
        out.reader = Some(r.stop());
    }
    for s in &mut slots {
        if let Some(mut c) = s.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            out.killed_at_end += 1;
        }
        drop(s.stdin.take());
    }
    drop(tx);
    for s in &mut slots {
        reap_threads(s);
    }
    drain(&rx, &mut out, &mut slots, Duration::from_millis(1));
    while let Ok(msg) = rx.try_recv() {
        handle_line(&mut out, &mut slots, msg.slot, &msg.line);
    }
    if let Some(w) = own.take() {
        w.close(&cx)?;
    }
    Ok(out)
}

/// SQLite's verdict on `db` against the acknowledged commits.
pub fn sqlite_check(
    db: &Path,
    seed: u64,
    acks: &BTreeMap<u32, BTreeSet<i64>>,
) -> CliResult<SqliteCheck> {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| sql_failed(db, "open the database", &e))?;
    let mut check = SqliteCheck::default();
    {
        let mut st = c
            .prepare("PRAGMA integrity_check")
            .map_err(|e| sql_failed(db, "run integrity_check", &e))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| sql_failed(db, "run integrity_check", &e))?;
        for r in rows {
            check
                .integrity
                .push(r.map_err(|e| sql_failed(db, "run integrity_check", &e))?);
        }
        let mut st = c
            .prepare("SELECT writer, seq, payload FROM t")
            .map_err(|e| sql_failed(db, "read the rows", &e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| sql_failed(db, "read the rows", &e))?;
        let mut found: BTreeSet<(u32, i64)> = BTreeSet::new();
        for r in rows {
            let (w, s, p) = r.map_err(|e| sql_failed(db, "read a row", &e))?;
            check.rows += 1;
            if p != payload_for(seed, w, s) {
                check.bad_payloads += 1;
            }
            found.insert((w, s));
        }
        let mut acked_total = 0u64;
        for (w, seqs) in acks {
            for s in seqs {
                acked_total += 1;
                if found.contains(&(*w, *s)) {
                    check.acked_found += 1;
                } else {
                    check.lost += 1;
                    if check.lost_examples.len() < 10 {
                        check.lost_examples.push((*w, *s));
                    }
                }
            }
        }
        debug_assert_eq!(acked_total, check.acked_found + check.lost);
        check.unacked_found = check.rows.saturating_sub(check.acked_found);
    }
    c.close().map_err(|(_, e)| sql_failed(db, "close", &e))?;
    Ok(check)
}

/// The whole crash run: writers ([`run_writers`]), recovery, a TRUNCATE checkpoint,
/// SQLite's verdict.
pub fn run_crash(opts: &CrashOptions, progress: impl FnMut(Progress)) -> CliResult<CrashReport> {
    let start = Instant::now();
    let run = run_writers(opts, progress)?;
    let recovery = recover(&opts.db, false)?;
    let final_checkpoint = checkpoint(
        &opts.db,
        &CheckpointOptions {
            mode: CheckpointMode::Truncate,
            ..CheckpointOptions::default()
        },
    )?;
    let sqlite = sqlite_check(&opts.db, opts.seed, &run.acks)?;
    let reader_ok = run
        .reader
        .as_ref()
        .is_none_or(|r| r.went_backwards == 0 && r.quick_check_failures == 0);
    let passed = sqlite.ok()
        && reader_ok
        && run.failed == 0
        && final_checkpoint.ok()
        && recovery.matches_wal;
    Ok(CrashReport {
        database: opts.db.display().to_string(),
        seed: opts.seed,
        writers: opts.writers,
        run,
        recovery,
        final_checkpoint,
        sqlite,
        total_seconds: start.elapsed().as_secs_f64(),
        passed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_deterministic_and_distinct() {
        assert_eq!(payload_for(1, 2, 3), payload_for(1, 2, 3));
        assert_ne!(payload_for(1, 2, 3), payload_for(1, 2, 4));
        assert_ne!(payload_for(1, 2, 3), payload_for(1, 3, 3));
        let p = payload_for(9, 1, 1);
        assert!(p.len() as u64 >= PAYLOAD_MIN && (p.len() as u64) < PAYLOAD_MIN + PAYLOAD_SPREAD);
    }

    #[test]
    fn hooks_name_real_operations() {
        let mut rng = Rng::new(5);
        let mut seen = 0;
        for _ in 0..200 {
            if let Some(h) = choose_hook(&mut rng, 0.5) {
                seen += 1;
                h.parse::<fsqlite_vfs::KillHook>().unwrap();
            }
        }
        assert!(seen > 50 && seen < 150, "{seen}");
    }
}
