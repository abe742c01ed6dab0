//! `fsqlite demo`: the crash harness ([`crate::torture`]) on a built-in default, in a
//! temporary directory, with a legacy SQLite reader, ending in a short table.
//!
//! ```text
//! 1. SQLite (rusqlite's bundled build) creates demo.db: WAL mode, page size 4096,
//!    t(writer, seq, payload, PRIMARY KEY(writer, seq))
//! 2. a legacy reader starts: python3's sqlite3 counts rows every 20 ms and runs
//!    PRAGMA quick_check every tenth time (it must never see the count go down)
//! 3. 3 writer processes commit rows through fsqlite's Wal for 8 s; each commit's pages
//!    are made by SQLite itself on the current pages (crate::sqlpages); the parent kills
//!    a writer with SIGKILL every 150–600 ms and restarts it, half the restarts dying on
//!    their own inside a commit (VFS kill hook at a write or fsync), and runs a
//!    checkpoint through the recovery barrier every second, alternately PASSIVE and
//!    RESTART (so the WAL restarts with new salts during the run)
//! 4. the reader stops; every writer is killed at once, mid-commit
//! 5. recover: the -shm is rebuilt from the WAL (nobody is attached any more)
//! 6. checkpoint TRUNCATE through the barrier, with an independent read-back
//! 7. SQLite: PRAGMA integrity_check, and every acknowledged commit must be a row
//! 8. concurrent writers (crate::bank_demo): 8 threads of one process move money with
//!    BEGIN CONCURRENT, are killed with kill -9 mid-run (twice), and stock SQLite checks
//!    the books; stock SQLite's own transfers/s with a connection per thread beside it
//! ```
//!
//! Commits acknowledged = ACK lines the parent received; commits found = rows SQLite finds
//! at the end; lost = acknowledged but not found, which must be 0.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::bank_demo::{BankDemoOptions, BankDemoReport, run_bank_demo};
use crate::files::{CliError, CliResult};
use crate::torture::{CrashOptions, CrashReport, Progress, run_crash};

/// Options of the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// How long the writers run.
    pub duration: Duration,
    /// Writer processes.
    pub writers: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Run the python3 legacy reader.
    pub legacy_reader: bool,
    /// Where to make the scratch directory (default: the system temp dir).
    pub parent_dir: Option<PathBuf>,
    /// Keep the scratch directory afterwards.
    pub keep: bool,
    /// The `fsqlite` executable (re-run as writers).
    pub exe: PathBuf,
    /// Show a progress bar on stderr.
    pub show_progress: bool,
    /// The concurrent-writers part ([`crate::bank_demo`]): threads (0 = skip it).
    pub concurrent_threads: u32,
    /// Seconds per side and round of the concurrent-writers part.
    pub concurrent_seconds: f64,
}

/// What the demo reports: the crash run plus where it ran.
#[derive(Clone, Debug, Serialize)]
pub struct DemoReport {
    /// The scratch directory.
    pub directory: String,
    /// True when the directory was kept.
    pub kept: bool,
    /// The crash run.
    #[serde(flatten)]
    pub crash: CrashReport,
    /// The concurrent-writers part, when it ran.
    pub concurrent: Option<BankDemoReport>,
}

impl DemoReport {
    /// Both parts passed.
    pub fn passed(&self) -> bool {
        self.crash.passed && self.concurrent.as_ref().is_none_or(|c| c.passed)
    }
}

/// Runs the demo (see the module docs).
pub fn run_demo(opts: &DemoOptions) -> CliResult<DemoReport> {
    run_demo_with(opts, "demo", |_| {})
}

/// Runs the crash harness on `<name>.db` in a fresh scratch directory `fsqlite-<name>-…`
/// (in `opts.parent_dir` or the system temp dir), after `tweak` adjusts the crash
/// options; `fsqlite torture` uses it with harsher kill intervals.
pub fn run_demo_with(
    opts: &DemoOptions,
    name: &str,
    tweak: impl FnOnce(&mut CrashOptions),
) -> CliResult<DemoReport> {
    let mut builder = tempfile::Builder::new();
    let prefix = format!("fsqlite-{name}-");
    builder.prefix(&prefix);
    let dir = match &opts.parent_dir {
        Some(p) => {
            std::fs::create_dir_all(p).map_err(|e| {
                fsqlite_error::FrankenError::io("create directory", Some(p.clone()), e)
            })?;
            builder.tempdir_in(p)
        }
        None => builder.tempdir(),
    }
    .map_err(|e| {
        CliError::failed(
            format!("could not create a scratch directory: {e}"),
            "pass --dir with a writable directory",
        )
    })?;
    let db = dir.path().join(format!("{name}.db"));
    let mut crash = CrashOptions::new(db, opts.exe.clone());
    crash.duration = opts.duration;
    crash.writers = opts.writers;
    crash.seed = opts.seed;
    crash.legacy_reader = opts.legacy_reader;
    tweak(&mut crash);
    let pb = if opts.show_progress {
        let pb = ProgressBar::new(opts.duration.as_millis() as u64);
        if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed} {msg}") {
            pb.set_style(style.progress_chars("=> "));
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let result = run_crash(&crash, |p: Progress| {
        pb.set_position((p.elapsed_s * 1e3) as u64);
        pb.set_message(format!(
            "{} commits acknowledged, {} writers killed",
            p.acked, p.kills
        ));
    });
    let report = result?;
    let concurrent = if opts.concurrent_threads > 0 {
        let bank = BankDemoOptions {
            threads: opts.concurrent_threads,
            accounts: 64,
            seconds: opts.concurrent_seconds,
            rounds: 2,
            seed: opts.seed,
            exe: opts.exe.clone(),
        };
        Some(run_bank_demo(dir.path(), &bank, |m| {
            pb.set_message(m.to_owned());
        })?)
    } else {
        None
    };
    pb.finish_and_clear();
    let kept = opts.keep || !report.passed || concurrent.as_ref().is_some_and(|c| !c.passed);
    let directory = if kept {
        dir.keep().display().to_string()
    } else {
        let d = dir.path().display().to_string();
        drop(dir);
        d
    };
    Ok(DemoReport {
        directory,
        kept,
        crash: report,
        concurrent,
    })
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The short table the demo prints (also used by `torture`).
pub fn render_table(title: &str, r: &CrashReport) -> String {
    let mut o = String::new();
    let run = &r.run;
    let s = &r.sqlite;
    let reader = run.reader.as_ref().map_or_else(
        || "no legacy reader".to_owned(),
        |x| format!("a legacy SQLite {} reader (python3)", x.sqlite_version),
    );
    let _ = writeln!(
        o,
        "{title}: {} writer processes committing through fsqlite's Wal for {:.1} s, {reader}, seed {:#x}",
        r.writers, run.seconds, r.seed
    );
    let row = |o: &mut String, k: &str, v: String| {
        let _ = writeln!(o, "  {k:<30} {v}");
    };
    row(&mut o, "commits acknowledged", format!("{}", run.acked));
    row(
        &mut o,
        "commits found",
        format!(
            "{}   ({} committed but killed before their ACK was read)",
            s.rows, s.unacked_found
        ),
    );
    row(
        &mut o,
        "lost",
        if s.lost == 0 {
            "0".to_owned()
        } else {
            format!("{}   e.g. (writer, seq) {:?}", s.lost, s.lost_examples)
        },
    );
    let kills = run.killed_by_signal + run.killed_by_hook + run.killed_at_end;
    row(
        &mut o,
        "writers killed (kill -9)",
        format!(
            "{kills}   ({} by SIGKILL at random times, {} by the VFS inside a commit, {} all at once at the end)",
            run.killed_by_signal, run.killed_by_hook, run.killed_at_end
        ),
    );
    if run.failed > 0 {
        row(
            &mut o,
            "writers that failed",
            format!("{}: {}", run.failed, run.errors.join(" | ")),
        );
    }
    let final_rec = u64::from(r.recovery.rebuilt);
    row(
        &mut o,
        "recoveries",
        format!(
            "{}   ({} by writers finding a torn -shm header, {final_rec} after the final kill)",
            run.recoveries + final_rec,
            run.recoveries
        ),
    );
    if let Some(x) = &run.reader {
        row(
            &mut o,
            "legacy reader",
            format!(
                "{} queries (up to {} rows), {} quick_checks {}, {}",
                x.queries,
                x.max_rows_seen,
                x.quick_checks,
                if x.quick_check_failures == 0 {
                    "ok".to_owned()
                } else {
                    format!("with {} FAILURES", x.quick_check_failures)
                },
                if x.went_backwards == 0 {
                    "never saw a commit vanish".to_owned()
                } else {
                    format!("saw the row count go DOWN {} times", x.went_backwards)
                }
            ),
        );
        if x.error_count > 0 {
            row(
                &mut o,
                "legacy reader errors",
                format!("{}: {}", x.error_count, x.errors.join(" | ")),
            );
        }
    }
    let ok: Vec<f64> = run
        .checkpoints
        .iter()
        .filter(|c| c.error.is_none())
        .map(|c| c.ms)
        .collect();
    if !run.checkpoints.is_empty() {
        let verified: u64 = run.checkpoints.iter().map(|c| c.pages_verified).sum();
        let min = ok.iter().copied().fold(f64::INFINITY, f64::min);
        let max = ok.iter().copied().fold(0.0, f64::max);
        row(
            &mut o,
            "checkpoints during the run",
            format!(
                "{} ({} PASSIVE, {} RESTART), median {:.1} ms (min {:.1}, max {:.1}); {verified} pages verified by the barrier",
                run.checkpoints.len(),
                run.checkpoints
                    .iter()
                    .filter(|c| c.mode == "passive")
                    .count(),
                run.checkpoints
                    .iter()
                    .filter(|c| c.mode == "restart")
                    .count(),
                median(ok).unwrap_or(0.0),
                if min.is_finite() { min } else { 0.0 },
                max
            ),
        );
    }
    let rec = &r.recovery;
    row(
        &mut o,
        "recovery after the final kill",
        format!(
            "{:.1} ms, {} commit frames ({} valid frames; prefix ends: {}), -shm {}",
            rec.elapsed_ms,
            rec.recovered_mx_frame,
            rec.wal.valid_frames,
            rec.wal.stop.as_ref().map_or("-", |x| x.detail.as_str()),
            if rec.matches_wal {
                "matches the WAL"
            } else {
                "DOES NOT match the WAL"
            }
        ),
    );
    let c = &r.final_checkpoint;
    row(
        &mut o,
        "final checkpoint (TRUNCATE)",
        format!(
            "{:.1} ms, {} frames, {} pages verified by the barrier (fsync {:.1} ms), read-back {} ({} pages)",
            c.checkpoint_ms,
            c.mx_frame_before,
            c.barrier.pages_verified,
            Duration::from_micros(c.barrier.db_fsync_us).as_secs_f64() * 1e3,
            c.read_back.status,
            c.read_back.pages
        ),
    );
    row(&mut o, "integrity_check", s.integrity.join("; "));
    if s.bad_payloads > 0 {
        row(
            &mut o,
            "rows with a wrong payload",
            s.bad_payloads.to_string(),
        );
    }
    row(
        &mut o,
        "verdict",
        if r.passed {
            "PASS: every acknowledged commit is in the database, and SQLite agrees it is sound"
                .to_owned()
        } else {
            "FAIL (see above)".to_owned()
        },
    );
    row(&mut o, "time", format!("{:.1} s in total", r.total_seconds));
    o
}
