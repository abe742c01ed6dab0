//! `fsqlite`: inspect, verify, checkpoint and recover SQLite WAL databases, and crash-test
//! them. The manual is docs/cli.md; the work is done by the `fsqlite_cli` library.
//!
//! Exit statuses: 0 success, 1 a check failed (or a crash run lost a commit), 2 bad
//! command line, 3 error, 4 refused or busy (another process is using the database).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fsqlite_cli::bank_demo;
use fsqlite_cli::capture::{CHECKPOINT_TARGET, CaptureLayer};
use fsqlite_cli::checkpoint::{self, CheckpointOptions};
use fsqlite_cli::demo::{self, DemoOptions};
use fsqlite_cli::files::{CliError, CliResult, ExitStatus};
use fsqlite_cli::torture::{self, CrashOptions, WriterArgs};
use fsqlite_cli::{inspect, recover, replication, verify};
use fsqlite_replicate::follow::FollowOptions;
use fsqlite_replicate::replica::Target;
use fsqlite_wal::CheckpointMode;
use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, filter::Targets};

/// Crash-safe, SQLite-compatible WAL tooling: look inside a SQLite WAL database, check it,
/// checkpoint or recover it through fsqlite's recovery barrier, and crash-test it.
#[derive(Debug, Parser)]
#[command(name = "fsqlite", version, propagate_version = true)]
#[command(
    after_help = "Exit status: 0 success, 1 a check failed, 2 bad usage, 3 error, 4 refused or busy.\nLogging: -v (info), -vv (debug), -vvv (trace), or RUST_LOG (e.g. RUST_LOG=fsqlite.wal=debug).\nManual: docs/cli.md"
)]
struct Cli {
    /// More log output on stderr (repeatable); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// SQLite's checkpoint modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// Copy what no reader needs; never wait, never block anyone.
    Passive,
    /// Wait for the writer, then copy every frame (waiting for readers).
    Full,
    /// FULL, then wait until no reader uses the WAL, so the next writer restarts it.
    Restart,
    /// RESTART, then truncate the WAL file to zero bytes.
    Truncate,
}

impl From<Mode> for CheckpointMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Passive => Self::Passive,
            Mode::Full => Self::Full,
            Mode::Restart => Self::Restart,
            Mode::Truncate => Self::Truncate,
        }
    }
}

fn parse_seed(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    r.map_err(|e| format!("a seed is a decimal or 0x-hex u64 ({e})"))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("not a number of seconds ({e})"))?;
    if v.is_finite() && (0.1..=86_400.0).contains(&v) {
        Ok(v)
    } else {
        Err("seconds must be between 0.1 and 86400".to_owned())
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show the WAL header and valid prefix, both -shm header copies, checkpoint info, read
    /// marks and the lock bytes held right now. Read-only: opens nothing for writing and
    /// takes no lock.
    Inspect {
        /// The database file (its -wal and -shm are found beside it).
        db: PathBuf,
        /// Print the report as JSON (fields documented in docs/cli.md).
        #[arg(long)]
        json: bool,
        /// Also list every valid WAL frame (page number, commit marker, offset).
        #[arg(long)]
        frames: bool,
    },
    /// Check the WAL chain, the -shm against the WAL, backfilled pages and page trailers;
    /// one verdict line per check. Read-only. Exit status 1 when a check fails.
    Verify {
        /// The database file.
        db: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Commits that were never synced may be lost here (synchronous=OFF or NORMAL):
        /// commit frames past the WAL's first bad frame make `wal_chain` warn instead of
        /// fail.
        #[arg(long)]
        allow_lost_tail: bool,
    },
    /// Run a checkpoint through fsqlite's recovery barrier (copy, full fsync, read back and
    /// verify, only then advance nBackfill or reset the WAL) and print SQLite's triple.
    Checkpoint {
        /// The database file.
        db: PathBuf,
        /// SQLite's checkpoint mode.
        #[arg(long, value_enum, default_value_t = Mode::Passive)]
        mode: Mode,
        /// How long to wait for locks held by other connections, in milliseconds.
        #[arg(long, default_value_t = 5000, value_name = "MS")]
        busy_timeout: u64,
        /// Print the report as JSON (and no progress display).
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the -shm (WAL-index) from the WAL under the recovery fence. Refuses (exit
    /// status 4) while another process has the database open.
    Recover {
        /// The database file.
        db: PathBuf,
        /// Rebuild even when the old -shm shows that committed WAL frames are damaged
        /// (the rebuild then drops those commits for good).
        #[arg(long)]
        force: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Crash harness: K writer processes commit through fsqlite's Wal and acknowledge each
    /// commit; they are killed with SIGKILL at random times (and from inside commits) and
    /// restarted; afterwards every acknowledged commit must be in the database.
    Torture {
        /// How long the writers run, in seconds.
        #[arg(long, default_value = "10", value_parser = parse_seconds)]
        seconds: f64,
        /// Writer processes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
        writers: u32,
        /// Seed of every random choice (decimal or 0x-hex); random when omitted.
        #[arg(long, value_parser = parse_seed)]
        seed: Option<u64>,
        /// Scratch directory to work in (a new subdirectory is made inside it); default:
        /// the system temp directory.
        #[arg(long, value_name = "D")]
        dir: Option<PathBuf>,
        /// Keep the scratch subdirectory (it is always kept after a failure).
        #[arg(long)]
        keep: bool,
        /// Also run a legacy SQLite reader (python3's sqlite3) during the run.
        #[arg(long)]
        reader: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The demonstration: writers committing through fsqlite while a legacy SQLite reader
    /// reads, kill -9 mid-commit, recovery, checkpoint through the barrier, SQLite's
    /// integrity_check, and a table of the results. About 10 s.
    Demo {
        /// How long the writers run, in seconds.
        #[arg(long, default_value = "8", value_parser = parse_seconds)]
        seconds: f64,
        /// Writer processes.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=64))]
        writers: u32,
        /// Seed of every random choice (decimal or 0x-hex).
        #[arg(long, default_value = "0xf59173", value_parser = parse_seed)]
        seed: u64,
        /// Run without the legacy python3 reader.
        #[arg(long)]
        no_reader: bool,
        /// Threads of the concurrent-writers part (BEGIN CONCURRENT); 0 skips it.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(0..=256))]
        threads: u32,
        /// Seconds per side and round of the concurrent-writers part.
        #[arg(long, default_value = "1.5", value_parser = parse_seconds)]
        concurrent_seconds: f64,
        /// Where to make the temporary directory (default: the system temp directory).
        #[arg(long, value_name = "D")]
        dir: Option<PathBuf>,
        /// Keep the temporary directory (it is always kept after a failure).
        #[arg(long)]
        keep: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicate a live database continuously to S3 (or a directory) in Litestream 0.5's
    /// format: every commit, in order, as LTX files; snapshots on a schedule; a new
    /// generation (with a snapshot, said on stderr) wherever continuity cannot be proven.
    /// Runs until killed (safe at any moment: a restart resumes without a gap).
    Replicate {
        /// The database (in WAL mode; stock SQLite may write it meanwhile).
        db: PathBuf,
        /// The replica: s3://BUCKET/PREFIX or file:///DIR.
        #[arg(long, value_name = "URL")]
        to: String,
        /// S3 endpoint (default: AWS_ENDPOINT_URL, else AWS).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Time between polls of the WAL.
        #[arg(long, default_value = "100ms", value_parser = replication::parse_duration)]
        interval: Duration,
        /// A full snapshot this often.
        #[arg(long, default_value = "1h", value_parser = replication::parse_duration)]
        snapshot_interval: Duration,
        /// Let the WAL start over (a TRUNCATE checkpoint right after the last shipped
        /// frame) once it holds this many frames; 0 never.
        #[arg(long, default_value_t = 1000)]
        checkpoint_frames: u32,
        /// One file per transaction (exact restore to every TXID) instead of one per poll.
        #[arg(long)]
        per_commit: bool,
        /// Delete what no restore inside this window needs (e.g. 72h), after each snapshot.
        #[arg(long, value_parser = replication::parse_duration)]
        retain: Option<Duration>,
        /// Stop after this long.
        #[arg(long, value_parser = replication::parse_duration)]
        duration: Option<Duration>,
        /// Stop once caught up and idle this long (for scripts).
        #[arg(long, value_parser = replication::parse_duration)]
        exit_when_idle: Option<Duration>,
        /// Print the final report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a database from a replica as of its newest state, a TXID, or a time;
    /// checked by stock SQLite's integrity_check before it is moved into place.
    Restore {
        /// The replica: s3://BUCKET/PREFIX or file:///DIR.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The database to write (must not exist).
        #[arg(long, value_name = "DB")]
        to: PathBuf,
        /// S3 endpoint (default: AWS_ENDPOINT_URL, else AWS).
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// The newest state at or before this TXID.
        #[arg(long, conflicts_with = "at")]
        txid: Option<u64>,
        /// The newest state shipped at or before this time (RFC 3339 UTC or ms since the epoch).
        #[arg(long, value_parser = replication::parse_time)]
        at: Option<i64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replicas: `fsqlite replicas list --from URL`.
    Replicas {
        #[command(subcommand)]
        action: ReplicasAction,
    },
    /// (internal) The concurrent writer process of `demo`.
    #[command(name = "__bank-writer", hide = true)]
    BankWriter {
        /// The bank database.
        #[arg(long)]
        db: PathBuf,
        /// The accounts table's root page.
        #[arg(long)]
        root: u32,
        /// Writer threads.
        #[arg(long)]
        threads: u32,
        /// Run seed.
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
        /// Round number.
        #[arg(long)]
        round: u32,
    },
    /// (internal) One writer process of `torture`/`demo`.
    #[command(name = "__writer", hide = true)]
    Writer {
        /// The database.
        #[arg(long)]
        db: PathBuf,
        /// Writer id.
        #[arg(long)]
        id: u32,
        /// Run seed.
        #[arg(long, value_parser = parse_seed)]
        seed: u64,
    },
}

/// `fsqlite replicas` actions.
#[derive(Debug, Subcommand)]
enum ReplicasAction {
    /// Show the generations (snapshots), files and the covered time range.
    List {
        /// The replica: s3://BUCKET/PREFIX or file:///DIR.
        #[arg(long, value_name = "URL")]
        from: String,
        /// S3 endpoint.
        #[arg(long, value_name = "URL")]
        endpoint: Option<String>,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_filter(filter);
    let capture = CaptureLayer
        .with_filter(Targets::new().with_target(CHECKPOINT_TARGET, tracing::Level::DEBUG));
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(capture)
        .try_init();
}

/// Writes `text` to stdout. A closed stdout (`fsqlite inspect db | head`) is not an
/// error worth a panic: the rest of the output is dropped.
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Prints a demo or torture report (table or JSON); the exit status is its verdict.
fn report_demo(title: &str, r: &demo::DemoReport, json: bool) -> CliResult<ExitStatus> {
    if json {
        print_json(r)?;
    } else {
        emit(&demo::render_table(title, &r.crash));
        if let Some(c) = &r.concurrent {
            emit(&bank_demo::render_bank_table(c));
        }
        emit(&format!(
            "  {:<30} {}{}\n",
            "directory",
            r.directory,
            if r.kept { " (kept)" } else { " (removed)" }
        ));
    }
    Ok(if r.passed() {
        ExitStatus::Success
    } else {
        ExitStatus::CheckFailed
    })
}

fn print_json<T: Serialize>(v: &T) -> CliResult<()> {
    let mut s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::failed(format!("could not encode JSON: {e}"), "report this bug"))?;
    s.push('\n');
    emit(&s);
    Ok(())
}

fn show_progress(json: bool) -> bool {
    !json && std::io::stderr().is_terminal()
}

fn exe() -> CliResult<PathBuf> {
    std::env::current_exe().map_err(|e| {
        CliError::failed(
            format!("cannot find the fsqlite executable to re-run as writers: {e}"),
            "run fsqlite from a path that exists on disk",
        )
    })
}

fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

fn run(command: Command) -> CliResult<ExitStatus> {
    match command {
        Command::Inspect { db, json, frames } => {
            let r = inspect::inspect(&db, frames)?;
            if json {
                print_json(&r)?;
            } else {
                emit(&inspect::render_text(&r));
            }
            Ok(ExitStatus::Success)
        }
        Command::Verify {
            db,
            json,
            allow_lost_tail,
        } => {
            let r = verify::verify_with(&db, verify::VerifyOptions { allow_lost_tail })?;
            if json {
                print_json(&r)?;
            } else {
                emit(&verify::render_text(&r));
            }
            Ok(if r.ok {
                ExitStatus::Success
            } else {
                ExitStatus::CheckFailed
            })
        }
        Command::Checkpoint {
            db,
            mode,
            busy_timeout,
            json,
        } => {
            let opts = CheckpointOptions {
                mode: mode.into(),
                busy_timeout: Duration::from_millis(busy_timeout),
                show_progress: show_progress(json),
            };
            let r = checkpoint::checkpoint(&db, &opts)?;
            if json {
                print_json(&r)?;
            } else {
                emit(&checkpoint::render_text(&r));
            }
            Ok(if r.ok() {
                ExitStatus::Success
            } else {
                ExitStatus::CheckFailed
            })
        }
        Command::Recover { db, force, json } => {
            let r = recover::recover(&db, force)?;
            if json {
                print_json(&r)?;
            } else {
                emit(&recover::render_text(&r));
            }
            Ok(if r.matches_wal {
                ExitStatus::Success
            } else {
                ExitStatus::CheckFailed
            })
        }
        Command::Torture {
            seconds,
            writers,
            seed,
            dir,
            keep,
            reader,
            json,
        } => {
            let opts = DemoOptions {
                duration: Duration::from_secs_f64(seconds),
                writers,
                seed: seed.unwrap_or_else(random_seed),
                legacy_reader: reader,
                parent_dir: dir,
                keep,
                exe: exe()?,
                show_progress: show_progress(json),
                concurrent_threads: 0,
                concurrent_seconds: 0.0,
            };
            let r = demo::run_demo_with(&opts, "torture", |c: &mut CrashOptions| {
                c.kill_min = Duration::from_millis(50);
                c.kill_max = Duration::from_millis(300);
            })?;
            report_demo("fsqlite torture", &r, json)
        }
        Command::Demo {
            seconds,
            writers,
            seed,
            no_reader,
            threads,
            concurrent_seconds,
            dir,
            keep,
            json,
        } => {
            let opts = DemoOptions {
                duration: Duration::from_secs_f64(seconds),
                writers,
                seed,
                legacy_reader: !no_reader,
                parent_dir: dir,
                keep,
                exe: exe()?,
                show_progress: show_progress(json),
                concurrent_threads: threads,
                concurrent_seconds,
            };
            let r = demo::run_demo(&opts)?;
            report_demo("fsqlite demo", &r, json)
        }
        Command::BankWriter {
            db,
            root,
            threads,
            seed,
            round,
        } => {
            bank_demo::run_bank_writer(&bank_demo::BankWriterArgs {
                db,
                root,
                threads,
                seed,
                round,
            })?;
            Ok(ExitStatus::Success)
        }
        Command::Replicate {
            db,
            to,
            endpoint,
            interval,
            snapshot_interval,
            checkpoint_frames,
            per_commit,
            retain,
            duration,
            exit_when_idle,
            json,
        } => {
            let replica = replication::open_replica(&to, endpoint.as_deref())?;
            let opts = replication::ReplicateOptions {
                interval,
                duration,
                exit_when_idle,
                retain,
                follow: FollowOptions {
                    snapshot_interval: Some(snapshot_interval),
                    checkpoint_frames: (checkpoint_frames > 0).then_some(checkpoint_frames),
                    max_txids_per_file: if per_commit { 1 } else { u64::MAX },
                    ..FollowOptions::default()
                },
            };
            let r = replication::replicate(&db, replica, &opts)?;
            if json {
                print_json(&r)?;
            }
            Ok(ExitStatus::Success)
        }
        Command::Restore {
            from,
            to,
            endpoint,
            txid,
            at,
            json,
        } => {
            let replica = replication::open_replica(&from, endpoint.as_deref())?;
            let target = match (txid, at) {
                (Some(t), _) => Target::Txid(t),
                (None, Some(ms)) => Target::TimeMs(ms),
                (None, None) => Target::Latest,
            };
            let r = replication::restore(&replica, &to, target)?;
            if json {
                print_json(&r)?;
            } else {
                emit(&format!(
                    "restored {} at TXID {} (shipped {}): {} pages of {} bytes from {} files ({} bytes) in {:.2}s; integrity_check ok\n",
                    r.db.display(),
                    r.txid,
                    r.shipped_at,
                    r.pages,
                    r.page_size,
                    r.files,
                    r.bytes,
                    r.seconds
                ));
            }
            Ok(ExitStatus::Success)
        }
        Command::Replicas {
            action:
                ReplicasAction::List {
                    from,
                    endpoint,
                    json,
                },
        } => {
            let replica = replication::open_replica(&from, endpoint.as_deref())?;
            let (summary, text) = replication::list(&replica)?;
            if json {
                print_json(&serde_json::json!({
                    "url": summary.url,
                    "last_txid": summary.last_txid,
                    "restorable_from": summary.restorable_from,
                    "commit_files": summary.commit_files,
                    "bytes": summary.bytes,
                    "first_ms": summary.first_ms,
                    "last_ms": summary.last_ms,
                    "snapshots": summary.snapshots.iter().map(|(t, ms, p, b)| serde_json::json!({"txid": t, "ms": ms, "pages": p, "bytes": b})).collect::<Vec<_>>(),
                }))?;
            } else {
                emit(&text);
            }
            Ok(ExitStatus::Success)
        }
        Command::Writer { db, id, seed } => {
            torture::run_writer(&WriterArgs { db, id, seed })?;
            Ok(ExitStatus::Success)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let json = matches!(
        &cli.command,
        Command::Inspect { json: true, .. }
            | Command::Verify { json: true, .. }
            | Command::Checkpoint { json: true, .. }
            | Command::Recover { json: true, .. }
            | Command::Torture { json: true, .. }
            | Command::Demo { json: true, .. }
            | Command::Replicate { json: true, .. }
            | Command::Restore { json: true, .. }
            | Command::Replicas {
                action: ReplicasAction::List { json: true, .. }
            }
    );
    match run(cli.command) {
        Ok(status) => ExitCode::from(status.code()),
        Err(e) => {
            let hint = e
                .suggestion()
                .map_or_else(String::new, |s| format!("hint: {s}\n"));
            let msg = format!("error: {}\n{hint}", e.message());
            {
                use std::io::Write as _;
                let _ = std::io::stderr().write_all(msg.as_bytes());
            }
            if json {
                let _ = print_json(&e.to_json());
            }
            ExitCode::from(e.exit_status().code())
        }
    }
}
