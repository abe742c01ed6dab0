//! The concurrent-writers part of `fsqlite demo`: N threads of one process move money
//! between accounts of a real SQLite database with `BEGIN CONCURRENT`
//! ([`fsqlite_mvcc::Coordinator::begin_concurrent`]), are killed with `kill -9` mid-run,
//! and stock SQLite checks the books; stock SQLite runs the same transfers with one
//! connection per thread, on the same machine, in the same run, for comparison.
//!
//! ```text
//! 1. SQLite makes two banks (fsqlite_testkit::bank): acct(id, bal, pad), one account per
//!    page, every balance 1,000,000, a stamp (sequence, last transaction) in each pad
//! 2. stock SQLite: N threads, a connection each, synchronous=FULL, wal_autocheckpoint=0,
//!    BEGIN IMMEDIATE; read two balances; UPDATE both; COMMIT — for `seconds`
//! 3. fsqlite: `rounds` times, a child process (`fsqlite __bank-writer`) opens a
//!    Coordinator and runs N threads: begin_concurrent, read the two account pages, move
//!    the money and bump both stamps in the page images, write both, commit (retry on
//!    SQLITE_BUSY_SNAPSHOT); after each Ok it prints an ACK line; after `seconds` the
//!    parent sends SIGKILL (threads are mid-commit), and the next round's child takes
//!    over from the dead coordinator
//! 4. stock SQLite opens what is left: integrity_check, the books (sum of balances), and
//!    every acknowledged transfer present (both accounts' stamps cover it)
//! ```
//!
//! Both sides do the same logical work per transaction (read two rows, write two rows)
//! with the same durability (`synchronous=FULL` / `SyncMode::Full`) and neither
//! checkpoints while it is measured.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, Accounts, BankOptions, Stamp};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::SyncMode;
use serde::Serialize;

use crate::files::{CliError, CliResult};
use crate::torture::Rng;

const TRACE: &str = "fsqlite.cli.bank";

/// Options of the concurrent-writers demo.
#[derive(Clone, Debug)]
pub struct BankDemoOptions {
    /// Writer threads (on both sides).
    pub threads: u32,
    /// Accounts in the bank.
    pub accounts: u32,
    /// How long each side runs per round.
    pub seconds: f64,
    /// fsqlite rounds, each ended by kill -9.
    pub rounds: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// The `fsqlite` executable (re-run as the writer process).
    pub exe: PathBuf,
}

/// What the concurrent-writers demo found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BankDemoReport {
    /// Writer threads per side.
    pub threads: u32,
    /// Accounts.
    pub accounts: u32,
    /// Stock SQLite: transfers committed per second.
    pub sqlite_commits_per_s: f64,
    /// Stock SQLite: transfers committed.
    pub sqlite_commits: u64,
    /// Stock SQLite: SQLITE_BUSY answers retried.
    pub sqlite_busy_retries: u64,
    /// fsqlite: transfers acknowledged per second (all rounds).
    pub ours_commits_per_s: f64,
    /// `ours_commits_per_s / sqlite_commits_per_s`.
    pub ratio: f64,
    /// fsqlite: transfers acknowledged (ACK lines read).
    pub acked: u64,
    /// fsqlite: transfers SQLite finds committed at the end.
    pub found: u64,
    /// Acknowledged transfers missing at the end (must be 0).
    pub lost: u64,
    /// A few missing transaction ids.
    pub lost_examples: Vec<u64>,
    /// Writer processes killed with SIGKILL.
    pub kills: u32,
    /// fsqlite: SQLITE_BUSY_SNAPSHOT conflicts retried (as last reported by the children).
    pub conflicts: u64,
    /// fsqlite: group-commit batches.
    pub batches: u64,
    /// fsqlite: WAL fsyncs.
    pub wal_syncs: u64,
    /// fsqlite: commits per fsync.
    pub commits_per_sync: f64,
    /// Sum of balances SQLite finds / expects.
    pub total_found: i64,
    /// The sum every transfer keeps.
    pub total_expected: i64,
    /// `PRAGMA integrity_check`.
    pub integrity: String,
    /// Errors reported by a writer process (must be empty).
    pub errors: Vec<String>,
    /// The verdict.
    pub passed: bool,
}

fn sql_failed(what: &str, e: &rusqlite::Error) -> CliError {
    CliError::failed(
        format!("stock SQLite failed during the concurrent demo ({what}): {e}"),
        "rerun with -v; this is a bug in the demo if it persists",
    )
}

/// One account's new balance and stamp, written into its page image.
fn apply(page: &mut [u8], delta: i64, txn: u64) -> Result<(), FrankenError> {
    let bal = bank::read_balance(page)?;
    let stamp = bank::read_stamp(page)?;
    bank::write_balance(page, bal + delta)?;
    bank::write_stamp(
        page,
        Stamp {
            seq: stamp.seq + 1,
            txn,
        },
    )
}

/// Picks two distinct accounts and an amount.
fn pick(rng: &mut Rng, ids: &[i64]) -> (i64, i64, i64) {
    let n = ids.len() as u64;
    let a = rng.below(n) as usize;
    let mut b = rng.below(n.saturating_sub(1).max(1)) as usize;
    if b >= a && n > 1 {
        b += 1;
    }
    (ids[a], ids[b.min(ids.len() - 1)], 1 + rng.below(100) as i64)
}

// ---- stock SQLite side ----

fn sqlite_side(db: &Path, opts: &BankDemoOptions, ids: &[i64]) -> CliResult<(u64, u64, f64)> {
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let busy = AtomicU64::new(0);
    let start = Instant::now();
    let r: CliResult<()> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.threads)
            .map(|t| {
                let (stop, commits, busy) = (&stop, &commits, &busy);
                s.spawn(move || -> CliResult<()> {
                    let conn = rusqlite::Connection::open(db).map_err(|e| sql_failed("open", &e))?;
                    conn.execute_batch(
                        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;",
                    )
                    .map_err(|e| sql_failed("pragmas", &e))?;
                    conn.busy_timeout(Duration::from_secs(10))
                        .map_err(|e| sql_failed("busy_timeout", &e))?;
                    let mut rng = Rng::new(opts.seed ^ (u64::from(t) << 32) ^ 0x5a5a);
                    while !stop.load(Ordering::Relaxed) {
                        let (a, b, amount) = pick(&mut rng, ids);
                        match sqlite_transfer(&conn, a, b, amount) {
                            Ok(()) => {
                                commits.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(rusqlite::Error::SqliteFailure(f, _))
                                if f.code == rusqlite::ErrorCode::DatabaseBusy =>
                            {
                                let _ = conn.execute_batch("ROLLBACK");
                                busy.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => return Err(sql_failed("transfer", &e)),
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(opts.seconds));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join()
                .map_err(|_| CliError::failed("a SQLite thread panicked", "report this bug"))??;
        }
        Ok(())
    });
    r?;
    let secs = start.elapsed().as_secs_f64();
    Ok((commits.into_inner(), busy.into_inner(), secs))
}

fn sqlite_transfer(
    conn: &rusqlite::Connection,
    a: i64,
    b: i64,
    amount: i64,
) -> rusqlite::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let bal = |id: i64| -> rusqlite::Result<i64> {
        conn.query_row(
            "SELECT CAST(bal AS INTEGER) FROM acct WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
    };
    let (ba, bb) = (bal(a)?, bal(b)?);
    let amount = amount.min(ba);
    let mut set = conn.prepare_cached("UPDATE acct SET bal = printf('%012d', ?1) WHERE id = ?2")?;
    set.execute((ba - amount, a))?;
    set.execute((bb + amount, b))?;
    conn.execute_batch("COMMIT")
}

// ---- fsqlite side: the writer process ----

/// Arguments of the hidden `__bank-writer` command.
#[derive(Clone, Debug)]
pub struct BankWriterArgs {
    /// The bank database.
    pub db: PathBuf,
    /// The accounts table's root page.
    pub root: u32,
    /// Writer threads.
    pub threads: u32,
    /// Seed (also makes the transaction ids of this round unique).
    pub seed: u64,
    /// Round number (high bits of every transaction id).
    pub round: u32,
}

fn say(out: &std::io::Stdout, line: &str) -> Result<(), FrankenError> {
    let mut o = out.lock();
    o.write_all(line.as_bytes())
        .and_then(|()| o.flush())
        .map_err(|e| FrankenError::io("write", None, e))
}

/// The writer process: prints `READY`, then `ACK <txn> <a> <seq a> <b> <seq b>` after
/// every acknowledged transfer and `STATS <commits> <conflicts> <batches> <syncs>` every
/// 100 ms, until it is killed (it never stops by itself).
pub fn run_bank_writer(args: &BankWriterArgs) -> CliResult<()> {
    let cx = Cx::new();
    let accounts = bank::scan(&args.db, args.root)?;
    let ids = accounts.ids();
    if ids.len() < 2 {
        return Err(CliError::failed(
            format!("{} holds fewer than two accounts", args.db.display()),
            "make the bank with at least two accounts",
        ));
    }
    let options = CoordinatorOptions {
        sync: SyncMode::Full,
        checkpoint_on_close: false,
        kill_at: None,
        ..CoordinatorOptions::default()
    };
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &args.db, options)?;
    if coord.mode() != CompatMode::HybridShm {
        return Err(CliError::failed(
            format!(
                "{} opened in {} mode: {}",
                args.db.display(),
                coord.mode(),
                coord.mode_reason()
            ),
            "run the demo in a directory where the -shm and .fsqlite-shm files can be created",
        ));
    }
    let out = std::io::stdout();
    say(&out, "READY\n")?;
    std::thread::scope(|s| {
        let coord = &coord;
        s.spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let st = coord.stats();
                let line = format!(
                    "STATS {} {} {} {}\n",
                    st.commits, st.conflicts, st.batches, st.wal_syncs
                );
                if say(&out, &line).is_err() {
                    return;
                }
            }
        });
        let workers: Vec<_> = (0..args.threads)
            .map(|t| {
                let (accounts, ids, out) = (&accounts, &ids, &out);
                s.spawn(move || writer_thread(coord, accounts, ids, args, t, out))
            })
            .collect();
        for w in workers {
            let r = w
                .join()
                .unwrap_or_else(|_| Err(FrankenError::internal("a writer thread panicked")));
            if let Err(e) = r {
                let _ = say(&out, &format!("ERROR {e}\n"));
                std::process::exit(3);
            }
        }
    });
    Ok(())
}

fn writer_thread(
    coord: &Coordinator<UnixVfs>,
    accounts: &Accounts,
    ids: &[i64],
    args: &BankWriterArgs,
    t: u32,
    out: &std::io::Stdout,
) -> Result<(), FrankenError> {
    let cx = Cx::new();
    let ps = coord.page_size() as usize;
    let mut rng = Rng::new(args.seed ^ (u64::from(t) << 40) ^ (u64::from(args.round) << 20));
    let (mut pa, mut pb) = (vec![0u8; ps], vec![0u8; ps]);
    let mut counter = 0u64;
    loop {
        let (a, b, amount) = pick(&mut rng, ids);
        counter += 1;
        let txn = (u64::from(args.round) << 48) | (u64::from(t) << 32) | counter;
        let page = |id: i64| {
            accounts
                .page(id)
                .ok_or_else(|| FrankenError::internal(format!("account {id} has no page")))
        };
        let (page_a, page_b) = (page(a)?, page(b)?);
        loop {
            let mut tx = coord.begin_concurrent(&cx)?;
            tx.read_page(&cx, page_a, &mut pa)?;
            tx.read_page(&cx, page_b, &mut pb)?;
            let amount = amount.min(bank::read_balance(&pa)?);
            apply(&mut pa, -amount, txn)?;
            apply(&mut pb, amount, txn)?;
            let (seq_a, seq_b) = (bank::read_stamp(&pa)?.seq, bank::read_stamp(&pb)?.seq);
            tx.write_page(&cx, page_a, &pa)?;
            tx.write_page(&cx, page_b, &pb)?;
            let size = tx.db_size();
            match tx.commit(&cx, size) {
                Ok(_) => {
                    say(out, &format!("ACK {txn} {a} {seq_a} {b} {seq_b}\n"))?;
                    break;
                }
                Err(e) if e.extended_code() == 517 => {
                    tracing::trace!(target: TRACE, %e, "transfer conflicted; retrying");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

// ---- fsqlite side: the parent ----

#[derive(Clone, Copy, Debug)]
struct Ack {
    txn: u64,
    a: i64,
    seq_a: u64,
    b: i64,
    seq_b: u64,
}

fn parse_ack(rest: &str) -> Option<Ack> {
    let v: Vec<&str> = rest.split_whitespace().collect();
    if v.len() != 5 {
        return None;
    }
    Some(Ack {
        txn: v[0].parse().ok()?,
        a: v[1].parse().ok()?,
        seq_a: v[2].parse().ok()?,
        b: v[3].parse().ok()?,
        seq_b: v[4].parse().ok()?,
    })
}

#[derive(Default)]
struct RoundOutcome {
    acks: Vec<Ack>,
    stats: [u64; 4],
    errors: Vec<String>,
    seconds: f64,
}

fn ours_round(
    db: &Path,
    root: PageNumber,
    opts: &BankDemoOptions,
    round: u32,
) -> CliResult<RoundOutcome> {
    let mut child = Command::new(&opts.exe)
        .arg("__bank-writer")
        .arg("--db")
        .arg(db)
        .arg("--root")
        .arg(root.get().to_string())
        .arg("--threads")
        .arg(opts.threads.to_string())
        .arg("--seed")
        .arg(opts.seed.to_string())
        .arg("--round")
        .arg(round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CliError::failed(
                format!(
                    "could not start the writer process {}: {e}",
                    opts.exe.display()
                ),
                "check that the fsqlite executable can be run",
            )
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CliError::failed("the writer process has no stdout", "report this bug"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut out = RoundOutcome::default();
    // Wait for READY (the coordinator is open: takeover and recovery are done).
    loop {
        match lines.next() {
            Some(Ok(l)) if l == "READY" => break,
            Some(Ok(l)) => out.errors.push(l),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(CliError::failed(
                    format!(
                        "the writer process ended before it was ready: {}",
                        out.errors.join(" | ")
                    ),
                    "rerun with -v to see its log",
                ));
            }
        }
    }
    let ready = Instant::now();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let seconds = opts.seconds;
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs_f64(seconds));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        Instant::now()
    });
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("ACK ") {
            match parse_ack(rest) {
                Some(a) => out.acks.push(a),
                None => out.errors.push(format!("bad ACK line {line:?}")),
            }
        } else if let Some(rest) = line.strip_prefix("STATS ") {
            let v: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if let [c, k, b, s] = v[..] {
                out.stats = [c, k, b, s];
            }
        } else {
            out.errors.push(line);
        }
    }
    let killed_at = killer
        .join()
        .map_err(|_| CliError::failed("the kill timer panicked", "report this bug"))?;
    let status = child
        .wait()
        .map_err(|e| CliError::failed(format!("waiting for the writer: {e}"), "report this bug"))?;
    use std::os::unix::process::ExitStatusExt as _;
    if status.signal() != Some(libc::SIGKILL) {
        out.errors
            .push(format!("the writer process ended by itself: {status}"));
    }
    out.seconds = killed_at.duration_since(ready).as_secs_f64();
    Ok(out)
}

/// Runs the concurrent-writers demo in `dir` (see the module docs); `progress` gets a
/// short line per step.
#[allow(clippy::cast_precision_loss)] // counts far below 2^52, turned into rates
pub fn run_bank_demo(
    dir: &Path,
    opts: &BankDemoOptions,
    mut progress: impl FnMut(&str),
) -> CliResult<BankDemoReport> {
    let bank_opts = BankOptions {
        accounts: opts.accounts.max(2),
        ..BankOptions::default()
    };
    let ours_db = dir.join("bank.db");
    let sqlite_db = dir.join("bank-sqlite.db");
    let ours = bank::create(&ours_db, &bank_opts)?;
    let theirs = bank::create(&sqlite_db, &bank_opts)?;
    let ids = theirs.accounts.ids();
    let root = ours
        .accounts
        .root()
        .ok_or_else(|| CliError::failed("the bank has no table root page", "report this bug"))?;
    let mut r = BankDemoReport {
        threads: opts.threads,
        accounts: bank_opts.accounts,
        total_expected: ours.total(),
        ..BankDemoReport::default()
    };
    progress(&format!(
        "concurrent writers: stock SQLite, {} threads, {:.1} s",
        opts.threads, opts.seconds
    ));
    let (commits, busy, secs) = sqlite_side(&sqlite_db, opts, &ids)?;
    r.sqlite_commits = commits;
    r.sqlite_busy_retries = busy;
    r.sqlite_commits_per_s = commits as f64 / secs.max(1e-9);
    let mut acks = Vec::new();
    let mut ours_secs = 0.0;
    for round in 1..=opts.rounds.max(1) {
        progress(&format!(
            "concurrent writers: fsqlite round {round}, {} threads, kill -9 after {:.1} s",
            opts.threads, opts.seconds
        ));
        let o = ours_round(&ours_db, root, opts, round)?;
        r.kills += 1;
        ours_secs += o.seconds;
        acks.extend(o.acks);
        r.conflicts += o.stats[1];
        r.batches += o.stats[2];
        r.wal_syncs += o.stats[3];
        r.errors.extend(o.errors);
    }
    r.acked = acks.len() as u64;
    r.ours_commits_per_s = r.acked as f64 / f64::max(ours_secs, 1e-9);
    r.ratio = r.ours_commits_per_s / r.sqlite_commits_per_s.max(1e-9);
    r.commits_per_sync = if r.wal_syncs == 0 {
        0.0
    } else {
        r.acked as f64 / r.wal_syncs as f64
    };
    progress("concurrent writers: stock SQLite checks the books");
    let books = bank::books(&ours_db)?;
    r.total_found = books.total;
    r.integrity.clone_from(&books.integrity);
    r.found = u64::try_from(books.writes / 2).unwrap_or(0);
    let rows = bank::rows(&ours_db)?;
    let stamp = |id: i64| rows.iter().find(|x| x.id == id).map(|x| x.stamp);
    for a in &acks {
        let present = stamp(a.a).is_some_and(|s| s.covers(a.seq_a, a.txn))
            && stamp(a.b).is_some_and(|s| s.covers(a.seq_b, a.txn));
        if !present {
            r.lost += 1;
            if r.lost_examples.len() < 5 {
                r.lost_examples.push(a.txn);
            }
        }
    }
    r.passed = r.lost == 0
        && r.errors.is_empty()
        && books
            .check(i64::from(bank_opts.accounts), ours.total())
            .is_ok()
        && r.found >= r.acked;
    tracing::info!(target: TRACE, acked = r.acked, found = r.found, lost = r.lost, ratio = r.ratio, "concurrent demo done");
    Ok(r)
}

/// The lines the demo prints for this part.
pub fn render_bank_table(r: &BankDemoReport) -> String {
    let mut o = String::new();
    let row = |o: &mut String, k: &str, v: String| {
        let _ = writeln!(o, "  {k:<30} {v}");
    };
    let _ = writeln!(
        o,
        "concurrent writers: {} threads of one process moving money between {} accounts (BEGIN CONCURRENT, synchronous FULL)",
        r.threads, r.accounts
    );
    row(
        &mut o,
        "transfers per second",
        format!(
            "{:.0} fsqlite vs {:.0} stock SQLite ({} threads, a connection each): {:.2}x",
            r.ours_commits_per_s, r.sqlite_commits_per_s, r.threads, r.ratio
        ),
    );
    row(
        &mut o,
        "group commit",
        format!(
            "{:.1} transfers per fsync ({} batches, {} fsyncs); {} conflicts retried",
            r.commits_per_sync, r.batches, r.wal_syncs, r.conflicts
        ),
    );
    row(
        &mut o,
        "transfers acknowledged",
        format!(
            "{}   (found {}, {} committed but killed before their ACK was read)",
            r.acked,
            r.found,
            r.found.saturating_sub(r.acked)
        ),
    );
    row(
        &mut o,
        "lost",
        if r.lost == 0 {
            "0".to_owned()
        } else {
            format!("{}   e.g. transactions {:?}", r.lost, r.lost_examples)
        },
    );
    row(
        &mut o,
        "writer processes killed",
        format!("{} (kill -9 mid-run; each next one took over)", r.kills),
    );
    row(
        &mut o,
        "books (stock SQLite)",
        format!(
            "sum of balances {} (expected {}), integrity_check {}",
            r.total_found, r.total_expected, r.integrity
        ),
    );
    if !r.errors.is_empty() {
        row(&mut o, "writer errors", r.errors.join(" | "));
    }
    row(
        &mut o,
        "verdict",
        if r.passed {
            "PASS: every acknowledged transfer is there and the books balance".to_owned()
        } else {
            "FAIL (see above)".to_owned()
        },
    );
    o
}
