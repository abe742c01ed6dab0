//! `cargo xtask <command>`: the project's own automation.
//!
//! | command | what it does |
//! |---|---|
//! | `ci` | exactly what `.ci/run` runs: fmt check, clippy, the workspace tests, rustdoc `-D warnings`, `cargo package` of the library crates, loom smoke |
//! | `loom [--bound N]` | the loom models (release, `--cfg loom`, bounded preemptions) |
//! | `bench-vs-sqlite [--sizes 64,256] [--reps N] [--dir DIR] [--keep]` | recovery and TRUNCATE checkpoint side by side with SQLite on identical WAL copies (release; see `xtask/src/bench_vs_sqlite.rs` and `docs/BENCHMARKS.md`) |
//! | `bench-concurrent [--secs S] [--quick] [--writers 1,8] [--sync full,normal] [--pattern disjoint,random,hot] [--rows N] [--rounds N] [--dir DIR] [--keep] [--sqlite-autocheckpoint N] [--side ours|sqlite] [--processes 1,2,4]` | `BEGIN CONCURRENT` writers side by side with SQLite, one connection per thread (release; see `xtask/src/bench_concurrent.rs` and `docs/BENCHMARKS.md`) |
//! | `bench-replication [--quick \| --full] [--rate N] [--secs S] [--restore-mib M] [--restore-commits N] [--reps N] [--sync-secs S] [--threads N] [--only lag,restore,sync] [--dir DIR] [--keep]` | replication side by side with a real Litestream 0.5 on a local SeaweedFS: lag, uploads per commit, restore time, synchronous vs asynchronous commits/s (release; see `xtask/src/bench_replication.rs` and `docs/BENCHMARKS.md`) |
//! | `kill9 [--budget-secs N] [--seed S] [--keep-going]` | the multi-process kill -9 soak (release) until the budget ends; writes `target/test-stats/kill9.json` (see [`kill9`]) |
//! | `kill9 --concurrent [--budget-secs N] [--seed S]` | the kill -9 soak of `BEGIN CONCURRENT` writers, one process of 8 threads or 2-4 member processes (release) until the budget ends; writes `target/test-stats/kill9_concurrent.json` (see [`kill9`]) |
//! | `reliability [--budget-secs N] [--seed S] [--coverage]`, `crash-sim`, `io-fault`, `diff-case`, `fuzz [--budget-secs N]` | the reliability suite, the fault-coverage table, and the replays (see [`reliability`]) |
//! | `soak [--minutes N] [--seed S] [--round-minutes R] [--no-docs]` | every harness in rounds for N minutes (default 60) with a progress line; writes `docs/SOAK.md`, the soak section of `docs/RELIABILITY.md` and `target/test-stats/soak.json` (see [`soak`]) |
//!
//! Long runs live here, never in CI: each takes a budget and writes its figures.

mod bench_concurrent;
mod bench_replication;
mod bench_vs_sqlite;
mod kill9;
mod reliability;
mod soak;

use std::env;
use std::process::{Command, ExitCode};

/// The crates `cargo package` checks in CI (fsqlite-cli is left out: its demo depends on
/// fsqlite-testkit, which is not published).
const LIBRARY_CRATES: &[&str] = &[
    "fsqlite-error",
    "fsqlite-types",
    "fsqlite-vfs",
    "fsqlite-wal",
    "fsqlite-mvcc",
];

/// The loom test targets, as `(package, test target)`.
const LOOM_TARGETS: &[(&str, &str)] = &[
    ("fsqlite-types", ""),
    ("fsqlite-wal", "loom_index_header"),
    ("fsqlite-wal", "loom_fence"),
    ("fsqlite-wal", "loom_checkpoint"),
    ("fsqlite-wal", "loom_read_mark"),
    ("fsqlite-mvcc", "loom_hybrid"),
    ("fsqlite-mvcc", "loom_group_commit"),
];

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("could not start {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// Set by `cargo xtask soak`: the harness builds use the `soak` profile.
static SOAK_PROFILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The profile flags of the harness builds (kill -9 soaks, the reliability binary):
/// `--release`, or `--profile soak` (release with debug assertions and overflow checks,
/// see the workspace `Cargo.toml`) once [`use_soak_profile`] ran.
pub(crate) fn release_args() -> &'static [&'static str] {
    if SOAK_PROFILE.load(std::sync::atomic::Ordering::Relaxed) {
        &["--profile", "soak"]
    } else {
        &["--release"]
    }
}

/// Makes [`release_args`] name the `soak` profile.
pub(crate) fn use_soak_profile() {
    SOAK_PROFILE.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn loom(bound: u32) -> Result<(), String> {
    let target_dir = env::var("XTASK_LOOM_TARGET_DIR").unwrap_or_else(|_| "target/loom".into());
    for (pkg, test) in LOOM_TARGETS {
        let mut c = cargo();
        c.args(["test", "--release", "-p", pkg]);
        if test.is_empty() {
            c.arg("--lib");
        } else {
            c.args(["--test", test]);
        }
        c.env("RUSTFLAGS", "--cfg loom")
            .env("CARGO_TARGET_DIR", &target_dir)
            .env("LOOM_MAX_PREEMPTIONS", bound.to_string())
            .env("LOOM_MAX_BRANCHES", "10000");
        run(&mut c)?;
    }
    Ok(())
}

fn ci() -> Result<(), String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    let mut package = cargo();
    package.args(["package", "--allow-dirty"]);
    for krate in LIBRARY_CRATES {
        package.args(["-p", krate]);
    }
    run(&mut package)?;
    loom(2)?;
    soak::run(&["--minutes".into(), "2".into(), "--no-docs".into()])
}

fn usage() -> String {
    "usage: cargo xtask <ci | loom [--bound N] | bench-vs-sqlite [--sizes 64,256] [--reps N] [--dir DIR] [--keep] | bench-concurrent [--secs S] [--quick] [--writers 1,8] [--sync full,normal] [--pattern disjoint,random,hot] [--rows N] [--rounds N] [--dir DIR] [--keep] [--sqlite-autocheckpoint N] [--side ours|sqlite] [--processes 1,2,4] | bench-replication [--quick | --full] [--rate N] [--secs S] [--restore-mib M] [--restore-commits N] [--reps N] [--sync-secs S] [--threads N] [--only lag,restore,sync] [--dir DIR] [--keep] | kill9 [--concurrent] [--budget-secs N] [--seed S] [--keep-going] | reliability [--budget-secs N] [--seed S] [--coverage] | soak [--minutes N] [--seed S] [--round-minutes R] [--no-docs] | crash-sim --seed S --workload W --case K | io-fault ... | diff-case --seed S --case C | fuzz [--budget-secs N]>"
        .to_string()
}

fn parse_flag(args: &[String], name: &str) -> Result<Option<u64>, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| format!("{name} needs a value"))?;
            v.parse()
                .map(Some)
                .map_err(|_| format!("{name} takes a whole number, got {v:?}"))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("loom") => parse_flag(&args, "--bound")
            .and_then(|b| loom(u32::try_from(b.unwrap_or(2)).unwrap_or(2))),
        Some("bench-vs-sqlite") => bench_vs_sqlite::run(&args[1..]),
        Some("bench-concurrent") => bench_concurrent::run(&args[1..]),
        Some("bench-replication") => bench_replication::run(&args[1..]),
        Some("kill9") => kill9::run(&args[1..]),
        Some("reliability") => reliability::reliability(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("fuzz") => reliability::fuzz(&args[1..]),
        Some(sub @ ("crash-sim" | "io-fault" | "diff-case")) => {
            reliability::passthrough(sub, &args[1..])
        }
        Some(bench_vs_sqlite::CHILD_COMMAND) => bench_vs_sqlite::child(&args[1..]),
        Some(bench_concurrent::WORKER_COMMAND) => bench_concurrent::worker(&args[1..]),
        _ => Err(usage()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
