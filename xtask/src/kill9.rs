//! `cargo xtask kill9 [--budget-secs N] [--seed S] [--keep-going]`: the multi-process
//! kill -9 soak (TESTING.md §2.8 (b)) in release, for a time budget.
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
//! Without `--seed` the seed comes from the clock (and is printed). The soak stops at the
//! first failed cycle; with `--keep-going` (`FSQLITE_KILL9_KEEP_GOING=1`) it records the
//! failure, starts a fresh database and goes on until the budget ends, then fails with
//! the failures counted by signature in the stats.

use std::fmt::Write as _;
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

fn value_of<'a>(args: &'a [String], name: &str) -> Result<Option<&'a str>, String> {
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

/// Runs the soak (see the module doc). `args` are the words after `kill9`.
pub fn run(args: &[String]) -> Result<(), String> {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !matches!(a.as_str(), "--budget-secs" | "--seed" | "--keep-going") {
            return Err(format!(
                "kill9: unknown option {a}; usage: cargo xtask kill9 [--budget-secs N] [--seed S] [--keep-going]"
            ));
        }
    }
    let keep_going = args.iter().any(|a| a == "--keep-going");
    let budget = match value_of(args, "--budget-secs")? {
        None => DEFAULT_BUDGET_SECS,
        Some(v) => v
            .parse()
            .map_err(|_| format!("--budget-secs takes whole seconds, got {v:?}"))?,
    };
    let seed = match value_of(args, "--seed")? {
        None => clock_seed(),
        Some(v) => parse_seed(v).ok_or_else(|| format!("--seed takes a number, got {v:?}"))?,
    };
    eprintln!("xtask kill9: seed {seed:#018x}, budget {budget} s (release build first)");
    let stats_path = fsqlite_testkit::stats::stats_dir().join(format!("{STATS_NAME}.json"));
    let _ = std::fs::remove_file(&stats_path);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "test",
        "--release",
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
        return Err(format!(
            "the kill9 soak failed ({status}); replay: cargo xtask kill9 --budget-secs {budget} --seed {seed:#x}"
        ));
    }
    summary.map(|_| ())
}

/// The headline figures of a `kill9.json`.
fn summarize(path: &std::path::Path) -> Result<String, String> {
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
