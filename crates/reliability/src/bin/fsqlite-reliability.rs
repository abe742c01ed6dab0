//! `fsqlite-reliability`: runs the reliability harnesses in one (release) process; the
//! `cargo xtask reliability | crash-sim | io-fault | diff-case` commands call it.
//!
//! ```text
//! fsqlite-reliability all --budget-secs N [--seed S] [--threads T] [--fuzz-stats F]
//!                         [--concurrent-share F | --shares a,b,c,d,e]
//!                         [--out-md docs/RELIABILITY.md] [--out-json PATH] [--command TEXT]
//! fsqlite-reliability crash-sim --seed S --workload W --case K [--round R] [--variants D]
//! fsqlite-reliability io-fault --seed S --workload W --kind K --mode once|persistent --site N
//! fsqlite-reliability diff-case --seed S --case C
//! fsqlite-reliability coverage [--budget-secs N] [--seed S] [--out-md PATH]
//! fsqlite-reliability concurrent [--budget-secs N] [--seed S]   (both concurrent harnesses)
//! fsqlite-reliability coverage-merge --inputs A.json,B.json [--out-md P] [--out-json P]
//! fsqlite-reliability corpus --dir fuzz/corpus --per-target N [--seed S]
//! fsqlite-reliability fuzz-bodies --secs N [--seed S]     (in-process fuzz bodies)
//! ```
//!
//! `all` splits the budget: 38% crash simulation, 12% concurrent crash simulation (8
//! threads; 2 members x 4 threads), 15% I/O-error sweep, 15% concurrent I/O-error sweep,
//! 20% differential; `--concurrent-share F` moves the concurrent shares (default 0.27 of
//! the crash + fault time), `--shares a,b,c,d,e` sets all five (crash, concurrent crash,
//! I/O faults, concurrent I/O faults, differential; normalized). `coverage` runs both I/O-error sweeps and prints the table of
//! every I/O call site ([`fsqlite_reliability::coverage`]).
//! Exit status 1 when any harness found a failure.

#![allow(
    clippy::cast_precision_loss,
    reason = "only rates for the report are computed in f64"
)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use fsqlite_reliability::fuzz_bodies::{TARGETS, generate, run_target};
use fsqlite_reliability::{HarnessReport, concurrent, coverage, crashsim, diff, iofault, report};
use fsqlite_testkit::rng::{Rng, parse_seed};
use serde_json::{Value, json};

/// The markers of the soak's section in `docs/RELIABILITY.md`.
const SOAK_BEGIN: &str = "<!-- soak:begin -->";
/// See [`SOAK_BEGIN`].
const SOAK_END: &str = "<!-- soak:end -->";

/// The default seed of `all` (the bytes of "reliab!!").
const DEFAULT_SEED: u64 = 0x7265_6c69_6162_2121;

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str, default: u64) -> Result<u64, String> {
    match flag(args, name) {
        None => Ok(default),
        Some(v) => parse_seed(v).ok_or_else(|| format!("{name} takes a number, got {v:?}")),
    }
}

fn need<'a>(args: &'a [String], name: &str) -> Result<&'a str, String> {
    flag(args, name).ok_or_else(|| format!("{name} is required"))
}

fn print_report(r: &HarnessReport) {
    println!(
        "{}",
        serde_json::to_string_pretty(&r.stats).unwrap_or_default()
    );
    if r.passed() {
        println!("PASS: no failures");
    } else {
        println!("FAIL: {} failure(s)\n{}", r.failure_count, r.failure_text());
    }
}

fn all(args: &[String]) -> Result<bool, String> {
    let budget = Duration::from_secs(num(args, "--budget-secs", 300)?);
    let seed = num(args, "--seed", DEFAULT_SEED)?;
    let threads = num(
        args,
        "--threads",
        std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    )? as usize;
    let share = flag(args, "--concurrent-share")
        .map_or(Ok(0.27), str::parse::<f64>)
        .map_err(|e| format!("--concurrent-share takes a fraction: {e}"))?
        .clamp(0.0, 1.0);
    // Shares of the budget: crash, concurrent crash, I/O faults, concurrent I/O faults;
    // the differential checker gets what is left.
    let mut shares = [
        0.5 * (1.0 - share),
        0.5 * share,
        0.3 * (1.0 - share),
        0.3 * share,
    ];
    if let Some(v) = flag(args, "--shares") {
        let parts: Vec<f64> = v
            .split(',')
            .map(|x| x.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--shares takes 5 fractions (crash,ccrash,io,cio,diff): {e}"))?;
        let sum: f64 = parts.iter().sum();
        if parts.len() != 5 || sum <= 0.0 {
            return Err(format!(
                "--shares takes 5 fractions (crash,ccrash,io,cio,diff), got {v:?}"
            ));
        }
        for (i, x) in shares.iter_mut().enumerate() {
            *x = parts[i] / sum;
        }
    }
    let start = Instant::now();
    let mut cs_cfg = crashsim::CrashSimConfig::new(seed, budget.mul_f64(shares[0]));
    cs_cfg.threads = threads;
    eprintln!("crash simulation: {:?} on {threads} threads", cs_cfg.budget);
    let cs = crashsim::run(&cs_cfg);
    let cc_cfg = concurrent::ConcurrentConfig::new(seed, budget.mul_f64(shares[1]));
    eprintln!("concurrent crash simulation: {:?}", cc_cfg.budget);
    let cc = concurrent::run_crash(&cc_cfg);
    let mut io_cfg = iofault::IoFaultConfig::new(seed, budget.mul_f64(shares[2]));
    io_cfg.threads = threads;
    eprintln!("I/O-error sweep: {:?}", io_cfg.budget);
    let io = iofault::run(&io_cfg);
    let ci_cfg = concurrent::ConcurrentConfig::new(seed, budget.mul_f64(shares[3]));
    eprintln!("concurrent I/O-error sweep: {:?}", ci_cfg.budget);
    let ci = concurrent::run_faults(&ci_cfg, 4096);
    let cov = coverage_of(&io, &ci);
    let left = budget
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    eprintln!("differential vs SQLite: {left:?}");
    let df = diff::run(&diff::DiffConfig {
        seed,
        budget: left,
        max_cases: u64::MAX,
    });
    let fuzz: Value = flag(args, "--fuzz-stats")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let kill9: Value = flag(args, "--kill9-stats")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    let failures: Vec<String> = [&cs, &cc, &io, &ci, &df]
        .iter()
        .flat_map(|r| r.failures.iter().map(ToString::to_string))
        .collect();
    let command = flag(args, "--command").map_or_else(
        || format!("fsqlite-reliability all --budget-secs {}", budget.as_secs()),
        str::to_owned,
    );
    let combined = json!({
        "command": command,
        "seed": format!("{seed:#018x}"),
        "date_utc": report::now_utc(),
        "git_rev": report::command_line("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        "machine": report::machine(),
        "sqlite_version": format!("(SQLite {})", rusqlite_version()),
        "crashsim": cs.stats,
        "crashsim_concurrent": cc.stats,
        "iofault": io.stats,
        "iofault_concurrent": ci.stats,
        "coverage": cov,
        "diff": df.stats,
        "fuzz": fuzz,
        "kill9": kill9,
        "failures": failures,
        "failure_count": cs.failure_count + cc.failure_count + io.failure_count + ci.failure_count + df.failure_count,
    });
    for (name, v) in [
        ("crashsim", &combined["crashsim"]),
        ("crashsim_concurrent", &combined["crashsim_concurrent"]),
        ("iofault", &combined["iofault"]),
        ("iofault_concurrent", &combined["iofault_concurrent"]),
        ("coverage", &combined["coverage"]),
        ("diff", &combined["diff"]),
    ] {
        let _ = fsqlite_testkit::stats::write_stats(name, v.clone());
    }
    let _ = fsqlite_testkit::stats::write_stats("reliability", combined.clone());
    if let Some(p) = flag(args, "--out-json") {
        let p = PathBuf::from(p);
        if let Some(d) = p.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&combined).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("write {}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    let mut md = report::render(&combined);
    if let Some(p) = flag(args, "--out-md") {
        // Keep the soak's section (`cargo xtask soak` writes it between these markers).
        if let Ok(old) = std::fs::read_to_string(p)
            && let (Some(a), Some(b)) = (old.find(SOAK_BEGIN), old.find(SOAK_END))
            && b > a
        {
            md = format!("{}\n\n{}\n", md.trim_end(), &old[a..b + SOAK_END.len()]);
        }
        std::fs::write(p, &md).map_err(|e| format!("write {p}: {e}"))?;
        eprintln!("wrote {p}");
    } else {
        println!("{md}");
    }
    for r in [&cs, &cc, &io, &ci, &df] {
        if !r.passed() {
            eprintln!("{}", r.failure_text());
        }
    }
    let failed = cs.failure_count
        + cc.failure_count
        + io.failure_count
        + ci.failure_count
        + df.failure_count;
    eprintln!(
        "reliability: {} + {} concurrent crash recoveries verified, {} + {} concurrent faults injected, {} differential checks, fault coverage {}% of {} reached sites; {failed} failure(s)",
        combined["crashsim"]["recoveries_verified"],
        combined["crashsim_concurrent"]["recoveries_verified"],
        combined["iofault"]["faults_injected"],
        combined["iofault_concurrent"]["faults_injected"],
        combined["diff"]["checks"],
        combined["coverage"]["coverage_pct"],
        combined["coverage"]["sites_reached"]
    );
    Ok(failed == 0)
}

/// The workspace root (this crate is `<root>/crates/reliability`).
fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("..")
}

/// The coverage table of both I/O-error sweeps, joined with the source scan.
fn coverage_of(io: &HarnessReport, ci: &HarnessReport) -> Value {
    let mut c = fsqlite_reliability::Counters::default();
    for r in [io, ci] {
        if let Some(obj) = r.stats["totals"].as_object() {
            for (k, v) in obj {
                if k.starts_with("cov|") {
                    c.add(k, v.as_u64().unwrap_or(0));
                }
            }
        }
    }
    let rows = coverage::table(&c, &coverage::scan_sources(&workspace_root()));
    let mut v = coverage::to_json(&rows);
    v["markdown"] = Value::from(coverage::to_markdown(&rows));
    v
}

/// `coverage`: both I/O-error sweeps, then the table (Markdown) on stdout or to a file.
fn coverage_cmd(args: &[String]) -> Result<bool, String> {
    let budget = Duration::from_secs(num(args, "--budget-secs", 240)?);
    let seed = num(args, "--seed", DEFAULT_SEED)?;
    let mut io_cfg = iofault::IoFaultConfig::new(seed, budget.mul_f64(0.5));
    io_cfg.threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    eprintln!(
        "I/O-error sweep (every kind, every workload): {:?}",
        io_cfg.budget
    );
    let io = iofault::run(&io_cfg);
    let ci_cfg = concurrent::ConcurrentConfig::new(seed, budget.mul_f64(0.5));
    eprintln!("concurrent I/O-error sweep: {:?}", ci_cfg.budget);
    let ci = concurrent::run_faults(&ci_cfg, 4096);
    let cov = coverage_of(&io, &ci);
    let _ = fsqlite_testkit::stats::write_stats("coverage", cov.clone());
    let md = cov["markdown"].as_str().unwrap_or_default().to_owned();
    if let Some(p) = flag(args, "--out-md") {
        std::fs::write(p, &md).map_err(|e| format!("write {p}: {e}"))?;
        eprintln!("wrote {p}");
    } else {
        println!("{md}");
    }
    for r in [&io, &ci] {
        if !r.passed() {
            eprintln!("{}", r.failure_text());
        }
    }
    eprintln!(
        "coverage: {} of {} reached sites injected fail-once and fail-always ({}%); {} + {} faults, {} + {} failures",
        cov["sites_covered"],
        cov["sites_reached"],
        cov["coverage_pct"],
        io.stats["faults_injected"],
        ci.stats["faults_injected"],
        io.failure_count,
        ci.failure_count
    );
    Ok(io.passed() && ci.passed())
}

/// `coverage-merge --inputs A,B,.. [--out-md P] [--out-json P]`: the coverage table of
/// several `all` runs (their `--out-json` files) together: the soak's rounds.
fn coverage_merge(args: &[String]) -> Result<bool, String> {
    let mut c = fsqlite_reliability::Counters::default();
    for p in need(args, "--inputs")?.split(',').filter(|p| !p.is_empty()) {
        let Ok(text) = std::fs::read_to_string(p) else {
            eprintln!("coverage-merge: {p} is missing; skipped");
            continue;
        };
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{p}: {e}"))?;
        for h in ["iofault", "iofault_concurrent"] {
            if let Some(obj) = v[h]["totals"].as_object() {
                for (k, n) in obj {
                    if k.starts_with("cov|") {
                        c.add(k, n.as_u64().unwrap_or(0));
                    }
                }
            }
        }
    }
    let rows = coverage::table(&c, &coverage::scan_sources(&workspace_root()));
    let mut v = coverage::to_json(&rows);
    let md = coverage::to_markdown(&rows);
    v["markdown"] = Value::from(md.clone());
    if let Some(p) = flag(args, "--out-json") {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&v).unwrap_or_default() + "\n",
        )
        .map_err(|e| format!("write {p}: {e}"))?;
    }
    if let Some(p) = flag(args, "--out-md") {
        std::fs::write(p, &md).map_err(|e| format!("write {p}: {e}"))?;
    } else {
        println!("{md}");
    }
    Ok(true)
}

/// `concurrent`: the concurrent crash simulation and I/O-error sweep, half the budget each.
fn concurrent_cmd(args: &[String]) -> Result<bool, String> {
    let budget = Duration::from_secs(num(args, "--budget-secs", 60)?);
    let seed = num(args, "--seed", DEFAULT_SEED)?;
    let cc = concurrent::run_crash(&concurrent::ConcurrentConfig::new(seed, budget / 2));
    print_report(&cc);
    let ci = concurrent::run_faults(&concurrent::ConcurrentConfig::new(seed, budget / 2), 4096);
    print_report(&ci);
    let _ = fsqlite_testkit::stats::write_stats("crashsim_concurrent", cc.stats.clone());
    let _ = fsqlite_testkit::stats::write_stats("iofault_concurrent", ci.stats.clone());
    Ok(cc.passed() && ci.passed())
}

/// The bundled SQLite's version, through the testkit oracle (an in-memory database).
fn rusqlite_version() -> String {
    let Ok(dir) = tempfile::tempdir() else {
        return "?".into();
    };
    let p = dir.path().join("v.db");
    match fsqlite_testkit::sqlite::SqliteWalDb::create(dir.path(), "v.db", 4096) {
        Ok(db) => {
            let v = db
                .query_rows("SELECT sqlite_version()")
                .ok()
                .and_then(|r| r.first().and_then(|x| x.first().cloned()))
                .unwrap_or_else(|| "?".into());
            let _ = db.close();
            let _ = p;
            v
        }
        Err(_) => "?".into(),
    }
}

fn corpus(args: &[String]) -> Result<bool, String> {
    let dir = PathBuf::from(need(args, "--dir")?);
    let per = num(args, "--per-target", 64)?;
    let mut rng = Rng::new(num(args, "--seed", DEFAULT_SEED)?);
    for t in TARGETS {
        let d = dir.join(t);
        std::fs::create_dir_all(&d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        for i in 0..per {
            let input = generate(t, &mut rng);
            std::fs::write(d.join(format!("seed-{i:04}")), input).map_err(|e| e.to_string())?;
        }
    }
    eprintln!("wrote {per} seed inputs per target under {}", dir.display());
    Ok(true)
}

fn fuzz_bodies(args: &[String]) -> Result<bool, String> {
    let secs = num(args, "--secs", 10)?;
    let mut rng = Rng::new(num(args, "--seed", DEFAULT_SEED)?);
    let mut targets = Vec::new();
    let mut ok = true;
    for t in TARGETS {
        let start = Instant::now();
        let mut n = 0u64;
        let mut crashes = 0u64;
        while start.elapsed().as_secs_f64() < secs as f64 / TARGETS.len() as f64 {
            let input = generate(t, &mut rng);
            if std::panic::catch_unwind(|| run_target(t, &input)).is_err() {
                crashes += 1;
                ok = false;
                eprintln!("{t}: failing input {input:02x?}");
            }
            n += 1;
        }
        let el = start.elapsed().as_secs_f64();
        targets.push(json!({"name": t, "secs": el, "execs": n, "exec_per_sec": (n as f64 / el.max(1e-9)) as u64, "crashes": crashes}));
    }
    println!(
        "{}",
        serde_json::to_string_pretty(
            &json!({"engine": "in-process generated inputs", "targets": targets})
        )
        .unwrap_or_default()
    );
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("all") => all(&args),
        Some("crash-sim") => (|| {
            let seed = num(&args, "--seed", DEFAULT_SEED)?;
            let r = crashsim::replay(
                seed,
                need(&args, "--workload")?,
                num(&args, "--case", 1)?,
                num(&args, "--round", 0)? as usize,
                num(&args, "--variants", crashsim::DEFAULT_VARIANTS as u64)? as usize,
            )?;
            print_report(&r);
            Ok(r.passed())
        })(),
        Some("io-fault") => (|| {
            let r = iofault::replay(
                num(&args, "--seed", DEFAULT_SEED)?,
                need(&args, "--workload")?,
                need(&args, "--kind")?,
                flag(&args, "--mode").unwrap_or("once"),
                num(&args, "--site", 1)?,
            )?;
            print_report(&r);
            Ok(r.passed())
        })(),
        Some("diff-case") => (|| {
            let r = diff::replay(num(&args, "--seed", DEFAULT_SEED)?, num(&args, "--case", 0)?)?;
            print_report(&r);
            Ok(r.passed())
        })(),
        Some("coverage") => coverage_cmd(&args),
        Some("concurrent") => concurrent_cmd(&args),
        Some("coverage-merge") => coverage_merge(&args),
        Some("corpus") => corpus(&args),
        Some("fuzz-bodies") => fuzz_bodies(&args),
        _ => Err("usage: fsqlite-reliability <all | crash-sim | io-fault | diff-case | coverage | coverage-merge | concurrent | corpus | fuzz-bodies> [flags] (see the source header)".into()),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fsqlite-reliability: {e}");
            ExitCode::from(2)
        }
    }
}
