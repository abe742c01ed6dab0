//! The reliability commands: `reliability`, `crash-sim`, `io-fault`, `diff-case`, `fuzz`.
//!
//! The harnesses live in `crates/reliability` (`fsqlite-reliability`); these commands build
//! its binary in release and run it, so xtask itself stays free of heavy dependencies.
//!
//! | command | what it does |
//! |---|---|
//! | `reliability --coverage [--budget-secs N] [--seed S]` | both I/O-error sweeps (single writer; concurrent writers), then the table of every I/O call site of the WAL and the coordinator: fail-once and fail-always injected or not, and what the caller did (`fsqlite_reliability::coverage`) |
//! | `reliability [--budget-secs N] [--seed S] [--no-kill9] [--no-fuzz]` | the kill -9 soak (10% of the budget, `cargo xtask kill9`), fuzzing (20%; installs cargo-fuzz if missing), then crash simulation (35%), I/O-error sweep (21%) and differential recovery vs SQLite (14%); build times are not counted; writes `docs/RELIABILITY.md` and `target/test-stats/reliability.json` (every stats file goes to `fsqlite_testkit::stats::stats_dir()`) |
//! | `crash-sim --seed S --workload W --case K [--round R]` | replays one crash-simulation case |
//! | `io-fault --seed S --workload W --kind K --mode once\|persistent --site N` | replays one fault site |
//! | `diff-case --seed S --case C` | replays one differential case |
//! | `fuzz [--budget-secs N]` | cargo-fuzz (`--sanitizer=none`, stable) over every target in `fuzz/`, installing cargo-fuzz if missing; writes `target/test-stats/fuzz.json` |

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::{cargo, run};

/// The fuzz targets in `fuzz/fuzz_targets/`.
pub const FUZZ_TARGETS: [&str; 6] = [
    "wal_header",
    "wal_recover_raw",
    "wal_recover_struct",
    "shm_header",
    "engine_model",
    "ltx_decode",
];

/// The default seed (the bytes of "reliab!!").
const DEFAULT_SEED: &str = "0x72656c6961622121";

/// The workspace root (xtask's manifest dir is `<root>/xtask`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn budget(args: &[String], default: u64) -> Result<u64, String> {
    flag(args, "--budget-secs").map_or(Ok(default), |v| {
        v.parse()
            .map_err(|_| format!("--budget-secs takes a whole number, got {v:?}"))
    })
}

/// `cargo run --release -p fsqlite-reliability --bin fsqlite-reliability -- <args>`.
pub(crate) fn reliability_bin(args: &[&str]) -> Result<(), String> {
    let mut c = cargo();
    c.current_dir(root())
        .arg("run")
        .args(crate::release_args())
        .args([
            "--quiet",
            "-p",
            "fsqlite-reliability",
            "--bin",
            "fsqlite-reliability",
            "--",
        ]);
    c.args(args);
    run(&mut c)
}

/// Passes `args` through to the reliability binary (the replay commands).
pub fn passthrough(sub: &str, args: &[String]) -> Result<(), String> {
    let mut all: Vec<&str> = vec![sub];
    all.extend(args.iter().map(String::as_str));
    reliability_bin(&all)
}

fn have_cargo_fuzz() -> bool {
    cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One target's libFuzzer figures (from `-print_final_stats=1` and the last status line).
#[derive(Debug, Default)]
struct FuzzFigures {
    execs: u64,
    exec_per_sec: u64,
    new_units: u64,
    cov: u64,
    ft: u64,
    corpus: u64,
    peak_rss_mb: u64,
    /// libFuzzer's own run time ("Done N runs in S second(s)"), without cargo's build.
    run_secs: Option<u64>,
}

fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn parse_fuzz_output(text: &str) -> FuzzFigures {
    let mut f = FuzzFigures::default();
    for line in text.lines() {
        if let Some(v) = number_after(line, "stat::number_of_executed_units:") {
            f.execs = v;
        } else if let Some(v) = number_after(line, "stat::average_exec_per_sec:") {
            f.exec_per_sec = v;
        } else if let Some(v) = number_after(line, "stat::new_units_added:") {
            f.new_units = v;
        } else if let Some(v) = number_after(line, "stat::peak_rss_mb:") {
            f.peak_rss_mb = v;
        }
        if line.starts_with("Done ") && line.contains(" runs in ") {
            f.run_secs = number_after(line, " runs in ");
        }
        if line.starts_with('#') && line.contains("cov:") {
            f.cov = number_after(line, "cov:").unwrap_or(f.cov);
            f.ft = number_after(line, "ft:").unwrap_or(f.ft);
            f.corpus = number_after(line, "corp:").unwrap_or(f.corpus);
        }
    }
    f
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `cargo xtask fuzz [--budget-secs N]`: every target for `N / 5` seconds.
pub fn fuzz(args: &[String]) -> Result<(), String> {
    let total = budget(args, 300)?;
    fuzz_for(total).map(|_| ())
}

/// Runs every fuzz target for `total / 5` seconds; writes `target/test-stats/fuzz.json`
/// and returns its path. Crashes are recorded (artifacts stay in `fuzz/artifacts/`) and
/// make the command fail after every target ran.
pub(crate) fn fuzz_for(total: u64) -> Result<PathBuf, String> {
    let root = root();
    if !have_cargo_fuzz() {
        eprintln!("xtask: cargo-fuzz is missing; installing it (a few minutes)");
        run(cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let corpus = root.join("fuzz").join("corpus");
    if !corpus.join(FUZZ_TARGETS[0]).is_dir() {
        reliability_bin(&[
            "corpus",
            "--dir",
            &corpus.display().to_string(),
            "--per-target",
            "64",
        ])?;
    }
    run(cargo()
        .current_dir(root.join("fuzz"))
        .args(["fuzz", "build", "--sanitizer=none", "-O"]))?;
    let per = (total / FUZZ_TARGETS.len() as u64).max(1);
    let mut entries = Vec::new();
    let mut crashed = Vec::new();
    for t in FUZZ_TARGETS {
        let dir = corpus.join(t);
        let _ = std::fs::create_dir_all(&dir);
        let start = Instant::now();
        eprintln!("xtask: fuzzing {t} for {per} s");
        let out = cargo()
            .current_dir(root.join("fuzz"))
            .args(["fuzz", "run", "--sanitizer=none", "-O", t])
            .arg(&dir)
            .args([
                "--",
                &format!("-max_total_time={per}"),
                "-print_final_stats=1",
                "-max_len=16384",
                "-timeout=20",
            ])
            .output()
            .map_err(|e| format!("could not start cargo fuzz: {e}"))?;
        let secs = start.elapsed().as_secs_f64();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let f = parse_fuzz_output(&text);
        #[allow(clippy::cast_precision_loss, reason = "seconds")]
        let secs = f.run_secs.map_or(secs, |s| s as f64);
        let crashes = u64::from(!out.status.success());
        if crashes > 0 {
            let tail: String = text
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            eprintln!("xtask: fuzz target {t} failed:\n{tail}");
            crashed.push(t);
        }
        let corpus_files = std::fs::read_dir(&dir).map_or(0, Iterator::count);
        entries.push(format!(
            "{{\"name\": \"{}\", \"secs\": {secs:.1}, \"execs\": {}, \"exec_per_sec\": {}, \"new_units\": {}, \"cov\": {}, \"ft\": {}, \"corpus\": {}, \"peak_rss_mb\": {}, \"crashes\": {crashes}}}",
            json_escape(t),
            f.execs,
            f.exec_per_sec,
            f.new_units,
            f.cov,
            f.ft,
            corpus_files.max(f.corpus as usize),
            f.peak_rss_mb
        ));
        eprintln!(
            "xtask: {t}: {} execs ({}/s), cov {} ft {}",
            f.execs, f.exec_per_sec, f.cov, f.ft
        );
    }
    let stats_dir = fsqlite_testkit::stats::stats_dir();
    std::fs::create_dir_all(&stats_dir)
        .map_err(|e| format!("create {}: {e}", stats_dir.display()))?;
    let path = stats_dir.join("fuzz.json");
    let body = format!(
        "{{\"engine\": \"cargo-fuzz / libFuzzer, --sanitizer=none\", \"budget_secs\": {total}, \"targets\": [\n  {}\n]}}\n",
        entries.join(",\n  ")
    );
    std::fs::write(&path, body).map_err(|e| format!("write {}: {e}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    if crashed.is_empty() {
        Ok(path)
    } else {
        Err(format!(
            "fuzz targets crashed: {} (artifacts in fuzz/artifacts/; copy them to fuzz/regressions/<target>/)",
            crashed.join(", ")
        ))
    }
}

/// `cargo xtask reliability [--budget-secs N] [--seed S] [--no-fuzz] [--no-kill9]`.
pub fn reliability(args: &[String]) -> Result<(), String> {
    if args.iter().any(|a| a == "--coverage") {
        // The fault-coverage table: both I/O-error sweeps, every call site.
        let b = budget(args, 240)?.to_string();
        let seed = flag(args, "--seed").unwrap_or(DEFAULT_SEED);
        return reliability_bin(&["coverage", "--budget-secs", &b, "--seed", seed]);
    }
    let total = budget(args, 300)?;
    let seed = flag(args, "--seed").unwrap_or(DEFAULT_SEED);
    let root = root();
    let stats_dir = fsqlite_testkit::stats::stats_dir();
    let start = Instant::now();
    let mut kill9_error = None;
    let kill9_stats = if args.iter().any(|a| a == "--no-kill9") {
        None
    } else {
        let b = (total / 10).max(10).to_string();
        let r = crate::kill9::run(&[
            "--budget-secs".to_owned(),
            b,
            "--seed".to_owned(),
            seed.to_owned(),
        ]);
        if let Err(e) = r {
            eprintln!("xtask: {e}");
            kill9_error = Some(e);
        }
        let p = stats_dir.join("kill9.json");
        p.is_file().then_some(p)
    };
    let mut fuzz_error = None;
    let fuzz_stats = if args.iter().any(|a| a == "--no-fuzz") {
        None
    } else {
        match fuzz_for(total / 5) {
            Ok(p) => Some(p),
            Err(e) => {
                // Keep going: the report says what the fuzzers found.
                eprintln!("xtask: {e}");
                fuzz_error = Some(e);
                let p = stats_dir.join("fuzz.json");
                p.is_file().then_some(p)
            }
        }
    };
    // Build times are not part of the budget: the in-process harnesses get 70% of it.
    let rest = (total * 7 / 10).max(30);
    let _ = start;
    let command = format!("cargo xtask reliability --budget-secs {total} --seed {seed}");
    let md = root.join("docs").join("RELIABILITY.md");
    let json = stats_dir.join("reliability.json");
    let rest_s = rest.to_string();
    let md_s = md.display().to_string();
    let json_s = json.display().to_string();
    let mut a: Vec<&str> = vec![
        "all",
        "--budget-secs",
        &rest_s,
        "--seed",
        seed,
        "--out-md",
        &md_s,
        "--out-json",
        &json_s,
        "--command",
        &command,
    ];
    let fz;
    if let Some(p) = &fuzz_stats {
        fz = p.display().to_string();
        a.extend(["--fuzz-stats", &fz]);
    }
    let k9;
    if let Some(p) = &kill9_stats {
        k9 = p.display().to_string();
        a.extend(["--kill9-stats", &k9]);
    }
    let r = reliability_bin(&a);
    match (r, fuzz_error.or(kill9_error)) {
        (Ok(()), None) => Ok(()),
        (Err(e), _) | (Ok(()), Some(e)) => Err(e),
    }
}
