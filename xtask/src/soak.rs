//! `cargo xtask soak --minutes N [--seed S] [--round-minutes R] [--no-docs]`: every
//! reliability harness, in rounds, for N minutes, with a progress line after each phase
//! and a summary at the end.
//!
//! A round of R minutes (default 6; the last round is shortened to fit) runs, with the
//! round's own seed (`seed + round`, so each round visits other crash points, fault
//! interleavings, damaged WALs and kill schedules):
//!
//! | share | phase |
//! |---:|---|
//! | 11% | kill -9 of single-writer WAL processes (`kill9`) |
//! | 5% | kill -9 of concurrent writers: a process of 8 threads, or 2-4 member processes (`kill9 --concurrent`) |
//! | 22% | fuzzing, every target in `fuzz/` for a fifth of it (the corpus grows from round to round) |
//! | 59% | the in-process harnesses (`fsqlite-reliability all`): crash simulation 17%, concurrent crash simulation 9%, I/O-error sweep 7%, concurrent I/O-error sweep 7%, differential recovery against SQLite 19% (it also takes what the sweeps leave) |
//!
//! (The rest is start-up.) The harnesses are built with the `soak` profile (release with
//! debug assertions and overflow checks: the workspace `Cargo.toml`), so every invariant the
//! code asserts is checked as well; fuzzing keeps its own build. After each phase a line shows the elapsed time and the totals
//! so far. At the end it writes `target/test-stats/soak.json` and `docs/SOAK.md` (the
//! totals, each round, the figures the soak aims at, and the fault-coverage table of all
//! rounds together), and puts the headline table into `docs/RELIABILITY.md` between the
//! `<!-- soak:begin -->` and `<!-- soak:end -->` markers (`--no-docs`: only the stats
//! file and `target/test-stats/soak.md`). It fails when any harness found a failure;
//! every phase still runs to the end of its round, and the failure is in the summary.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::many_single_char_names,
    reason = "seconds and percentages for the report; short names for the totals and stats files"
)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use fsqlite_testkit::serde_json::{self, Value, json};
use fsqlite_testkit::stats::thousands;

use crate::kill9::value_of;
use crate::reliability::{fuzz_for, reliability_bin, root};

/// The figures the soak aims at (issue: an hour-long soak).
const GOALS: [(&str, u64); 4] = [
    ("crash recoveries verified", 1_000_000),
    ("kill -9 of real processes", 10_000),
    ("differential checks against SQLite", 100_000),
    ("fuzz executions", 100_000_000),
];

fn number(args: &[String], name: &str, default: f64) -> Result<f64, String> {
    value_of(args, name)?.map_or(Ok(default), |v| {
        v.parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| format!("{name} takes a positive number, got {v:?}"))
    })
}

fn read_json(p: &Path) -> Value {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

fn u(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_f64().map(|f| f.max(0.0) as u64))
        .unwrap_or(0)
}

/// The running totals.
#[derive(Debug, Default, Clone)]
struct Totals {
    crash_recoveries: u64,
    concurrent_crash_recoveries: u64,
    crash_points: u64,
    faults_injected: u64,
    concurrent_faults: u64,
    diff_checks: u64,
    concurrent_diff_cases: u64,
    fuzz_execs: u64,
    fuzz_crashes: u64,
    kills_wal: u64,
    self_kills_wal: u64,
    kills_concurrent: u64,
    acked_checked: u64,
    lost: u64,
    failures: u64,
    errors: Vec<String>,
}

impl Totals {
    fn kills(&self) -> u64 {
        self.kills_wal + self.kills_concurrent
    }

    fn recoveries(&self) -> u64 {
        self.crash_recoveries + self.concurrent_crash_recoveries
    }

    fn line(&self) -> String {
        format!(
            "crash recoveries {} ({} concurrent) | kill -9 {} ({} concurrent) | diff checks {} | fuzz execs {} | faults {} | lost {} | failures {}",
            self.recoveries(),
            self.concurrent_crash_recoveries,
            self.kills(),
            self.kills_concurrent,
            self.diff_checks,
            self.fuzz_execs,
            self.faults_injected + self.concurrent_faults,
            self.lost,
            self.failures + self.fuzz_crashes
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "crash_recoveries_verified": self.recoveries(),
            "single_writer_crash_recoveries": self.crash_recoveries,
            "concurrent_crash_recoveries": self.concurrent_crash_recoveries,
            "concurrent_crash_points": self.crash_points,
            "faults_injected": self.faults_injected,
            "concurrent_faults_injected": self.concurrent_faults,
            "diff_checks": self.diff_checks,
            "concurrent_diff_cases": self.concurrent_diff_cases,
            "fuzz_execs": self.fuzz_execs,
            "fuzz_crashes": self.fuzz_crashes,
            "kill9_sigkills": self.kills(),
            "kill9_wal_sigkills": self.kills_wal,
            "kill9_wal_hook_deaths": self.self_kills_wal,
            "kill9_concurrent_sigkills": self.kills_concurrent,
            "kill9_acked_checked": self.acked_checked,
            "lost_acknowledged_commits": self.lost,
            "failures": self.failures,
            "errors": self.errors,
        })
    }
}

struct Clock {
    start: Instant,
    total_secs: f64,
}

impl Clock {
    fn stamp(&self) -> String {
        let e = self.start.elapsed().as_secs();
        let t = self.total_secs as u64;
        format!(
            "{:02}:{:02}:{:02} / {:02}:{:02}:{:02}",
            e / 3600,
            e / 60 % 60,
            e % 60,
            t / 3600,
            t / 60 % 60,
            t % 60
        )
    }
}

/// Runs the soak (see the module doc).
pub fn run(args: &[String]) -> Result<(), String> {
    for a in args.iter().filter(|a| a.starts_with("--")) {
        if !matches!(
            a.as_str(),
            "--minutes" | "--seed" | "--round-minutes" | "--no-docs"
        ) {
            return Err(format!(
                "unknown flag {a}; usage: cargo xtask soak --minutes N [--seed S] [--round-minutes R] [--no-docs]"
            ));
        }
    }
    let minutes = number(args, "--minutes", 60.0)?;
    let round_minutes = number(args, "--round-minutes", 6.0)?;
    let seed = match value_of(args, "--seed")? {
        Some(s) => fsqlite_testkit::rng::parse_seed(s)
            .ok_or_else(|| format!("--seed takes a number, got {s:?}"))?,
        None => 0x736f_616b_2121_0001,
    };
    let write_docs = !args.iter().any(|a| a == "--no-docs");
    crate::use_soak_profile();
    let stats = fsqlite_testkit::stats::stats_dir();
    std::fs::create_dir_all(&stats).map_err(|e| format!("create {}: {e}", stats.display()))?;
    eprintln!(
        "soak: {minutes} minutes in rounds of {round_minutes}, seed {seed:#x}; building first (the clock starts after the builds)"
    );
    prebuild()?;
    let clock = Clock {
        start: Instant::now(),
        total_secs: minutes * 60.0,
    };
    let mut t = Totals::default();
    let mut rounds: Vec<Value> = Vec::new();
    let mut last_coverage = Value::Null;
    let mut round = 0u64;
    loop {
        let left = clock.total_secs - clock.start.elapsed().as_secs_f64();
        if left < 30.0 {
            break;
        }
        let secs = (round_minutes * 60.0).min(left);
        let rseed = seed.wrapping_add(round);
        let before = t.clone();
        run_round(
            &clock,
            round,
            secs,
            rseed,
            &stats,
            &mut t,
            &mut last_coverage,
        );
        rounds.push(json!({
            "round": round,
            "seed": format!("{rseed:#x}"),
            "secs": secs,
            "crash_recoveries": t.recoveries() - before.recoveries(),
            "kill9": t.kills() - before.kills(),
            "diff_checks": t.diff_checks - before.diff_checks,
            "fuzz_execs": t.fuzz_execs - before.fuzz_execs,
            "faults": t.faults_injected + t.concurrent_faults - before.faults_injected - before.concurrent_faults,
            "failures": t.failures + t.fuzz_crashes - before.failures - before.fuzz_crashes,
        }));
        round += 1;
    }
    let elapsed = clock.start.elapsed().as_secs_f64();
    // The coverage table of every round together (the rounds start their sweeps at
    // different places, see `iofault::run`).
    let inputs: Vec<String> = (0..round)
        .map(|r| {
            stats
                .join(format!("soak-round-{r}.json"))
                .display()
                .to_string()
        })
        .collect();
    let cov_json = stats.join("soak-coverage.json");
    let cov_s = cov_json.display().to_string();
    let joined = inputs.join(",");
    match reliability_bin(&[
        "coverage-merge",
        "--inputs",
        &joined,
        "--out-json",
        &cov_s,
        "--out-md",
        &stats.join("soak-coverage.md").display().to_string(),
    ]) {
        Ok(()) => last_coverage = read_json(&cov_json),
        Err(e) => t.errors.push(format!("coverage table: {e}")),
    }
    let summary = json!({
        "command": format!("cargo xtask soak --minutes {minutes} --seed {seed:#x}"),
        "date_utc": utc_now(),
        "git_rev": git_rev(),
        "minutes": minutes,
        "elapsed_secs": elapsed,
        "rounds": rounds,
        "totals": t.to_json(),
        "goals": GOALS.iter().map(|(k, v)| json!({"what": k, "goal": v})).collect::<Vec<_>>(),
        "coverage": last_coverage,
    });
    let path = stats.join("soak.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default() + "\n",
    )
    .map_err(|e| format!("write {}: {e}", path.display()))?;
    let md = render(&summary, &t);
    let md_path = if write_docs {
        root().join("docs").join("SOAK.md")
    } else {
        stats.join("soak.md")
    };
    std::fs::write(&md_path, &md).map_err(|e| format!("write {}: {e}", md_path.display()))?;
    if write_docs {
        let mut section = headline(&summary, &t);
        if let Some(md) = summary["coverage"]["markdown"].as_str() {
            let _ = write!(
                section,
                "\n### Fault coverage of the soak (every round together)\n\n{md}"
            );
        }
        splice_reliability(&section)?;
    }
    eprintln!("soak: done in {elapsed:.0} s: {}", t.line());
    eprintln!("soak: wrote {} and {}", path.display(), md_path.display());
    if t.failures + t.fuzz_crashes + t.lost > 0 || !t.errors.is_empty() {
        return Err(format!(
            "the soak found {} failure(s), {} fuzz crash(es), {} lost commit(s), {} harness error(s): see {}",
            t.failures,
            t.fuzz_crashes,
            t.lost,
            t.errors.len(),
            md_path.display()
        ));
    }
    Ok(())
}

/// Builds every harness (soak profile) and the fuzz targets before the clock starts.
fn prebuild() -> Result<(), String> {
    let root = root();
    for (pkg, test) in [
        ("fsqlite-wal", "kill9"),
        ("fsqlite-mvcc", "concurrent_kill9"),
    ] {
        crate::run(
            crate::cargo()
                .current_dir(&root)
                .arg("test")
                .args(crate::release_args())
                .args(["--no-run", "-p", pkg, "--test", test]),
        )?;
    }
    crate::run(
        crate::cargo()
            .current_dir(&root)
            .arg("build")
            .args(crate::release_args())
            .args(["-p", "fsqlite-reliability", "--bin", "fsqlite-reliability"]),
    )?;
    // Installs cargo-fuzz if needed and builds the targets (5 s of fuzzing, not counted).
    fuzz_for(5).map(|_| ())
}

#[allow(clippy::too_many_arguments, reason = "internal")]
fn run_round(
    clock: &Clock,
    round: u64,
    secs: f64,
    seed: u64,
    stats: &Path,
    t: &mut Totals,
    coverage: &mut Value,
) {
    let part = |f: f64| ((secs * f) as u64).max(5);
    let seed_s = format!("{seed:#x}");
    // 1. kill -9 of single-writer processes.
    let r = crate::kill9::run(&[
        "--budget-secs".into(),
        part(0.11).to_string(),
        "--seed".into(),
        seed_s.clone(),
    ]);
    let k = read_json(&stats.join("kill9.json"));
    t.kills_wal += u(&k["kills_sent"]);
    t.self_kills_wal += u(&k["self_kills"]);
    t.acked_checked += u(&k["acked_checked"]);
    t.lost += u(&k["lost_acks"]);
    t.failures += u(&k["failures"]);
    if let Err(e) = r {
        t.errors.push(format!("round {round} kill9: {e}"));
    }
    eprintln!("soak [{}] round {round} kill9: {}", clock.stamp(), t.line());
    // 2. kill -9 of concurrent writers.
    let r = crate::kill9::run_concurrent(&[
        "--budget-secs".into(),
        part(0.05).to_string(),
        "--seed".into(),
        seed_s.clone(),
    ]);
    let k = read_json(&stats.join("kill9_concurrent.json"));
    t.kills_concurrent += u(&k["sigkills"]);
    t.acked_checked += u(&k["acks_checked"]);
    t.lost += u(&k["lost"]);
    t.failures += u(&k["failures"]);
    if let Err(e) = r {
        t.errors
            .push(format!("round {round} kill9 --concurrent: {e}"));
    }
    eprintln!(
        "soak [{}] round {round} kill9 --concurrent: {}",
        clock.stamp(),
        t.line()
    );
    // 3. Fuzzing.
    let r = fuzz_for(part(0.22));
    let f = read_json(&stats.join("fuzz.json"));
    for target in f["targets"].as_array().into_iter().flatten() {
        t.fuzz_execs += u(&target["execs"]);
        t.fuzz_crashes += u(&target["crashes"]);
    }
    if let Err(e) = r {
        t.errors.push(format!("round {round} fuzz: {e}"));
    }
    eprintln!("soak [{}] round {round} fuzz: {}", clock.stamp(), t.line());
    // 4. The in-process harnesses.
    let json_path = stats.join(format!("soak-round-{round}.json"));
    let md_path = stats.join(format!("soak-round-{round}.md"));
    let budget = part(0.59).to_string();
    let json_s = json_path.display().to_string();
    let md_s = md_path.display().to_string();
    let r = reliability_bin(&[
        "all",
        "--budget-secs",
        &budget,
        "--seed",
        &seed_s,
        "--shares",
        "0.17,0.09,0.07,0.07,0.19",
        "--out-json",
        &json_s,
        "--out-md",
        &md_s,
        "--command",
        "cargo xtask soak",
    ]);
    let a = read_json(&json_path);
    t.crash_recoveries += u(&a["crashsim"]["recoveries_verified"]);
    t.concurrent_crash_recoveries += u(&a["crashsim_concurrent"]["recoveries_verified"]);
    t.crash_points += u(&a["crashsim_concurrent"]["crash_points"]);
    t.faults_injected += u(&a["iofault"]["faults_injected"]);
    t.concurrent_faults += u(&a["iofault_concurrent"]["faults_injected"]);
    t.diff_checks += u(&a["diff"]["checks"]);
    t.concurrent_diff_cases += u(&a["diff"]["concurrent_cases"]);
    t.failures += u(&a["failure_count"]);
    if !a["coverage"].is_null() {
        coverage.clone_from(&a["coverage"]);
    }
    if let Err(e) = r {
        // A harness failure is counted above; anything else is an error of its own.
        if u(&a["failure_count"]) == 0 {
            t.errors.push(format!("round {round} reliability: {e}"));
        }
    }
    eprintln!(
        "soak [{}] round {round} crash/fault/diff: {}",
        clock.stamp(),
        t.line()
    );
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The headline table: each figure against its goal.
fn headline(summary: &Value, t: &Totals) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Soak: `{}` on {} (git `{}`), {:.0} minutes in {} rounds ([SOAK.md](SOAK.md) has each round and the coverage table).\n",
        summary["command"].as_str().unwrap_or_default(),
        summary["date_utc"].as_str().unwrap_or_default(),
        summary["git_rev"].as_str().unwrap_or_default(),
        summary["elapsed_secs"].as_f64().unwrap_or(0.0) / 60.0,
        summary["rounds"].as_array().map_or(0, Vec::len)
    );
    let _ = writeln!(s, "| figure | reached | goal | |");
    let _ = writeln!(s, "|---|---:|---:|---|");
    let got = [t.recoveries(), t.kills(), t.diff_checks, t.fuzz_execs];
    for ((what, goal), n) in GOALS.iter().zip(got) {
        let _ = writeln!(
            s,
            "| {what} | {} | {} | {} |",
            thousands(n),
            thousands(*goal),
            if n >= *goal {
                "reached".to_owned()
            } else {
                format!("{:.0}% of it", 100.0 * n as f64 / *goal as f64)
            }
        );
    }
    let _ = writeln!(
        s,
        "| acknowledged commits lost | {} | 0 | {} |",
        t.lost,
        if t.lost == 0 { "met" } else { "**missed**" }
    );
    let _ = writeln!(
        s,
        "| disagreements and failures (every harness) | {} | 0 | {} |",
        t.failures,
        if t.failures == 0 { "met" } else { "**missed**" }
    );
    let _ = writeln!(
        s,
        "| fuzz crashes | {} | 0 | {} |",
        t.fuzz_crashes,
        if t.fuzz_crashes == 0 {
            "met"
        } else {
            "**missed**"
        }
    );
    let _ = writeln!(
        s,
        "\nOf these: {} concurrent crash recoveries (8 threads; 2 members × 4 threads), {} kill -9 of concurrent writers, {} differential cases on WALs written by concurrent writers; {} I/O faults injected ({} with concurrent writers); {} acknowledged commits checked after kill -9.",
        thousands(t.concurrent_crash_recoveries),
        thousands(t.kills_concurrent),
        thousands(t.concurrent_diff_cases),
        thousands(t.faults_injected + t.concurrent_faults),
        thousands(t.concurrent_faults),
        thousands(t.acked_checked)
    );
    s
}

fn render(summary: &Value, t: &Totals) -> String {
    let mut s = String::from("# Soak report\n\n");
    s.push_str(&headline(summary, t));
    let _ = writeln!(s, "\n## Rounds\n");
    let _ = writeln!(
        s,
        "| round | seed | seconds | crash recoveries | kill -9 | diff checks | fuzz execs | faults | failures |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in summary["rounds"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | `{}` | {:.0} | {} | {} | {} | {} | {} | {} |",
            r["round"],
            r["seed"].as_str().unwrap_or_default(),
            r["secs"].as_f64().unwrap_or(0.0),
            thousands(u(&r["crash_recoveries"])),
            thousands(u(&r["kill9"])),
            thousands(u(&r["diff_checks"])),
            thousands(u(&r["fuzz_execs"])),
            thousands(u(&r["faults"])),
            u(&r["failures"])
        );
    }
    if !t.errors.is_empty() {
        let _ = writeln!(s, "\n## Harness errors\n");
        for e in &t.errors {
            let _ = writeln!(s, "- {e}");
        }
    }
    if let Some(md) = summary["coverage"]["markdown"].as_str() {
        let _ = writeln!(s, "\n## Fault coverage (every round together)\n\n{md}");
    }
    let _ = writeln!(
        s,
        "\nRerun: `{}`. Each round's full figures are in `target/test-stats/soak-round-N.{{json,md}}`.",
        summary["command"].as_str().unwrap_or_default()
    );
    s
}

/// Replaces the text between the soak markers of `docs/RELIABILITY.md` (or appends the
/// section when the markers are missing).
fn splice_reliability(body: &str) -> Result<(), String> {
    let p: PathBuf = root().join("docs").join("RELIABILITY.md");
    let text = std::fs::read_to_string(&p).unwrap_or_default();
    let section = format!("{BEGIN}\n## The hour-long soak\n\n{body}{END}\n");
    let out = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}{section}{}",
                &text[..a],
                text[b + END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n\n{section}", text.trim_end()),
    };
    std::fs::write(&p, out).map_err(|e| format!("write {}: {e}", p.display()))
}

/// The markers of the soak section in `docs/RELIABILITY.md` (kept by
/// `cargo xtask reliability` when it rewrites the file).
pub const BEGIN: &str = "<!-- soak:begin -->";
/// See [`BEGIN`].
pub const END: &str = "<!-- soak:end -->";
