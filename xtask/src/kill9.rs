//! `cargo xtask kill9 [--budget-secs N] [--seed S] [--keep-going]`: the multi-process
//! kill -9 soak (TESTING.md §2.8 (b)) in release, for a time budget; with `--concurrent`,
//! the kill -9 soak of `BEGIN CONCURRENT` writers (below).
//!
//! The harness lives in one place, `crates/wal/tests/kill9.rs` (the workload, the roles
//! and the verifier run as re-executions of that test binary). This command runs its
//! test `kill9_soak` (a 2 s smoke run by default):
//!
//! ```text
//! FSQLITE_KILL9_BUDGET_SECS=N FSQLITE_SEED=S \
//!   cargo test --release -p fsqlite-wal --test kill9 -- --exact kill9_soak --nocapture
//! ```
//!
//! which runs random-time, kill-hook-sweep and role-targeted cycles until the budget ends
//! and writes `target/test-stats/kill9.json` (kills by kind, acked txns checked, lost
//! acks, verifier runs, cycles/s, the verifier's counters). This command then prints the
//! headline figures from that file. A failure prints the seed and the replay command.
//! Without `--budget-secs` the budget is the test's own variable when set, else 60 s;
//! without `--seed` the seed comes from the clock (and is printed). The soak stops at the
//! first failed cycle; with `--keep-going` (`FSQLITE_KILL9_KEEP_GOING=1`) it records the
//! failure, starts a fresh database and goes on until the budget ends, then fails with
//! the failures counted by signature in the stats.
//!
//! `cargo xtask kill9 --concurrent [--budget-secs N] [--seed S]`: the kill -9 soak of
//! `BEGIN CONCURRENT` writers, `crates/mvcc/tests/concurrent_kill9.rs`, test
//! `kill9_concurrent_soak` (a 3 s smoke run by default):
//!
//! ```text
//! FSQLITE_CKILL9_BUDGET_SECS=N FSQLITE_SEED=S \
//!   cargo test --release -p fsqlite-mvcc --test concurrent_kill9 -- --exact kill9_concurrent_soak --nocapture
//! ```
//!
//! Each cycle kills either one process of 8 writer threads or 2-4 member processes of
//! 2-4 threads each (all of them, or one while the others carry on and then close), on
//! databases with either `LegacyWriters` setting; after every kill stock SQLite checks
//! integrity, the books and every acknowledged transfer. It writes
//! `target/test-stats/kill9_concurrent.json` (cycles by kind, SIGKILLs sent and per
//! second, processes, acks checked, lost, SQLite checks, databases); this command prints
//! the headline figures. It stops at the first failure (there is no `--keep-going`).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use fsqlite_testkit::rng::parse_seed;
use fsqlite_testkit::serde_json::{self, Value};

/// Default budget in seconds.
const DEFAULT_BUDGET_SECS: u64 = 60;
/// The environment variable the soak test reads its budget from.
const BUDGET_ENV: &str = "FSQLITE_KILL9_BUDGET_SECS";
/// The environment variable that makes the soak go on after a failed cycle.
const KEEP_GOING_ENV: &str = "FSQLITE_KILL9_KEEP_GOING";
/// The stats file name the soak test writes (`<target>/test-stats/kill9.json`).
const STATS_NAME: &str = "kill9";
/// The environment variable the concurrent-writers soak reads its budget from.
const CONCURRENT_BUDGET_ENV: &str = "FSQLITE_CKILL9_BUDGET_SECS";
/// The stats file the concurrent-writers soak writes.
const CONCURRENT_STATS_NAME: &str = "kill9_concurrent";
const USAGE: &str = "usage: cargo xtask kill9 [--budget-secs N] [--seed S] [--keep-going] | kill9 --concurrent [--budget-secs N] [--seed S]";

/// The value after flag `name`, if the flag is there (an error when it has none).
pub(crate) fn value_of<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .map(|v| Some(v.as_str()))
            .ok_or_else(|| format!("{name} needs a value")),
    }
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x6b69_6c6c_395f_736b, |d| {
            d.as_secs().rotate_left(32) ^ u64::from(d.subsec_nanos())
        })
}

/// The budget: `--budget-secs`, else the soak's own variable `budget_env` when it is set,
/// else `DEFAULT_BUDGET_SECS`; and `--seed` (or the clock).
fn budget_and_seed(args: &[String], budget_env: &str) -> Result<(u64, u64), String> {
    let from_env = std::env::var(budget_env).ok();
    let budget = match value_of(args, "--budget-secs")?.or(from_env.as_deref()) {
        None => DEFAULT_BUDGET_SECS,
        Some(v) => v.parse().map_err(|_| {
            format!("the budget (--budget-secs, {budget_env}) takes whole seconds, got {v:?}")
        })?,
    };
    let seed = match value_of(args, "--seed")? {
        None => clock_seed(),
        Some(v) => parse_seed(v).ok_or_else(|| format!("--seed takes a number, got {v:?}"))?,
    };
    Ok((budget, seed))
}

/// Runs `cmd` (a soak test), then prints `summarize(stats file)`; the error names the
/// replay command when the soak failed.
fn run_soak(
    mut cmd: Command,
    stats_name: &str,
    summarize: fn(&Path) -> Result<String, String>,
    replay: &str,
) -> Result<(), String> {
    let stats_path = fsqlite_testkit::stats::stats_dir().join(format!("{stats_name}.json"));
    let _ = std::fs::remove_file(&stats_path);
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    let summary = summarize(&stats_path);
    match &summary {
        Ok(s) => eprintln!("{s}"),
        Err(e) => eprintln!("xtask kill9: no stats: {e}"),
    }
    if !status.success() {
        return Err(format!("the soak failed ({status}); replay: {replay}"));
    }
    summary.map(|_| ())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs the soak (see the module doc). `args` are the words after `kill9`.
pub fn run(args: &[String]) -> Result<(), String> {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !matches!(
            a.as_str(),
            "--budget-secs" | "--seed" | "--keep-going" | "--concurrent"
        ) {
            return Err(format!("kill9: unknown option {a}; {USAGE}"));
        }
    }
    if args.iter().any(|a| a == "--concurrent") {
        return run_concurrent(args);
    }
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let (budget, seed) = budget_and_seed(args, BUDGET_ENV)?;
    eprintln!("xtask kill9: seed {seed:#018x}, budget {budget} s (release build first)");
    let mut cmd = cargo();
    cmd.arg("test")
        .args(crate::release_args())
        .args([
            "-p",
            "fsqlite-wal",
            "--test",
            "kill9",
            "--",
            "--exact",
            "kill9_soak",
            "--nocapture",
        ])
        .env(BUDGET_ENV, budget.to_string())
        .env(fsqlite_testkit::rng::SEED_ENV, format!("{seed:#x}"))
        .env(KEEP_GOING_ENV, if keep_going { "1" } else { "0" });
    run_soak(
        cmd,
        STATS_NAME,
        summarize,
        &format!("cargo xtask kill9 --budget-secs {budget} --seed {seed:#x}"),
    )
}

/// `cargo xtask kill9 --concurrent [--budget-secs N] [--seed S]`: the kill -9 soak of
/// concurrent writers, one process and several (see the module doc). `args` are the
/// words after `kill9`.
pub fn run_concurrent(args: &[String]) -> Result<(), String> {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !matches!(a.as_str(), "--budget-secs" | "--seed" | "--concurrent") {
            return Err(format!("kill9 --concurrent: unknown option {a}; {USAGE}"));
        }
    }
    let (budget, seed) = budget_and_seed(args, CONCURRENT_BUDGET_ENV)?;
    eprintln!(
        "xtask kill9 --concurrent: seed {seed:#018x}, budget {budget} s (release build first)"
    );
    let mut cmd = cargo();
    cmd.arg("test")
        .args(crate::release_args())
        .args([
            "-p",
            "fsqlite-mvcc",
            "--test",
            "concurrent_kill9",
            "--",
            "--exact",
            "kill9_concurrent_soak",
            "--nocapture",
        ])
        .env(CONCURRENT_BUDGET_ENV, budget.to_string())
        .env(fsqlite_testkit::rng::SEED_ENV, format!("{seed:#x}"));
    run_soak(
        cmd,
        CONCURRENT_STATS_NAME,
        summarize_concurrent,
        &format!("cargo xtask kill9 --concurrent --budget-secs {budget} --seed {seed:#x}"),
    )
}

/// The headline figures of a `kill9_concurrent.json`.
fn summarize_concurrent(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let (lost, failures) = (n("lost"), n("failures"));
    let out = format!(
        "xtask kill9 --concurrent: {} cycles in {:.1} s ({} single-process, {} multi-process: {} all killed, {} one killed; {} on LegacyWriters::Admitted databases), {} processes, {} SIGKILLs ({:.1} kills/s), {} acks checked, {} SQLite checks, {} databases, lost {lost}{}, failures {failures}\n  stats: {}",
        n("cycles"),
        f("elapsed_secs"),
        n("single_process_cycles"),
        n("multiprocess_cycles"),
        n("multiprocess_kill_all_cycles"),
        n("multiprocess_kill_one_cycles"),
        n("admitted_cycles"),
        n("processes_spawned"),
        n("sigkills"),
        f("kills_per_sec"),
        n("acks_checked"),
        n("sqlite_checks"),
        n("databases"),
        if lost == 0 { "" } else { "  <-- MUST BE 0" },
        path.display()
    );
    if lost > 0 || failures > 0 {
        return Err(out);
    }
    Ok(out)
}

/// The headline figures of a `kill9.json`.
fn summarize(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let lost = n("lost_acks");
    let mut out = format!(
        "xtask kill9: {} cycles in {:.1} s ({:.1} cycles/s), {} processes, {} SIGKILLs sent + {} kill-hook deaths, {} acks checked, {} verifier runs, lost acks {lost}{}\n  kills by kind: {}\n  stats: {}",
        n("cycles"),
        v.get("elapsed_secs").and_then(Value::as_f64).unwrap_or(0.0),
        v.get("cycles_per_sec")
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        n("victims_spawned"),
        n("kills_sent"),
        n("self_kills"),
        n("acked_checked"),
        n("verifier_runs"),
        if lost == 0 { "" } else { "  <-- MUST BE 0" },
        v.get("kills_by_kind")
            .map_or_else(String::new, Value::to_string),
        path.display()
    );
    if let Some(f) = v
        .get("failure_signatures")
        .filter(|f| f.as_object().is_some_and(|o| !o.is_empty()))
    {
        let _ = write!(out, "\n  FAILURES by signature: {f}");
    }
    if let Some(c) = v.get("counters") {
        let _ = write!(out, "\n  counters: {c}");
    }
    if lost > 0 {
        return Err(out);
    }
    Ok(out)
}
