//! `fsqlite demo` and `fsqlite torture`, short runs of the built binary: writer
//! processes killed with SIGKILL mid-commit, recovery, a checkpoint through the barrier,
//! and SQLite's verdict. No acknowledged commit may be lost.

mod common;

use common::{run, run_json, s};

#[test]
fn demo_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v, err) = run_json(&[
        "demo",
        "--seconds",
        "2",
        "--writers",
        "2",
        "--threads",
        "4",
        "--concurrent-seconds",
        "0.5",
        "--dir",
        s(dir.path()),
    ]);
    assert_eq!(code, 0, "{v}\n{err}");
    assert_eq!(v["passed"], true, "{v}");
    // The concurrent-writers part: killed twice mid-run, nothing acknowledged lost, the
    // books balance by stock SQLite, and stock SQLite ran the same transfers.
    let c = &v["concurrent"];
    assert_eq!(c["passed"], true, "{c}");
    assert_eq!(c["lost"], 0, "{c}");
    assert_eq!(c["kills"], 2, "{c}");
    assert_eq!(c["integrity"], "ok", "{c}");
    assert_eq!(c["total_found"], c["total_expected"], "{c}");
    let c_acked = c["acked"].as_u64().unwrap();
    assert!(
        c_acked > 0 && c["found"].as_u64().unwrap() >= c_acked,
        "{c}"
    );
    assert!(c["sqlite_commits"].as_u64().unwrap() > 0, "{c}");
    assert!(c["batches"].as_u64().unwrap() > 0, "{c}");
    let run = &v["run"];
    let sq = &v["sqlite"];
    let acked = run["acked"].as_u64().unwrap();
    assert!(acked > 0, "{v}");
    assert_eq!(sq["lost"], 0, "{v}");
    assert_eq!(sq["bad_payloads"], 0);
    assert_eq!(sq["integrity"][0], "ok");
    assert_eq!(sq["acked_found"].as_u64().unwrap(), acked);
    assert!(sq["rows"].as_u64().unwrap() >= acked);
    // Writers really died: the two killed at the end at least.
    assert!(run["killed_at_end"].as_u64().unwrap() >= 1, "{v}");
    // The legacy reader ran and never saw a commit vanish.
    let reader = &run["reader"];
    assert!(reader["queries"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(reader["went_backwards"], 0);
    assert_eq!(reader["quick_check_failures"], 0);
    // Recovery rebuilt the index after the final kill, and the final checkpoint verified.
    assert_eq!(v["recovery"]["rebuilt"], true);
    assert_eq!(v["recovery"]["matches_wal"], true);
    assert_eq!(v["final_checkpoint"]["mode"], "truncate");
    assert_eq!(
        v["final_checkpoint"]["read_back"]["status"], "verified",
        "{v}"
    );
    // The scratch directory is removed after a passing run.
    assert_eq!(v["kept"], false);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[test]
fn torture_in_a_user_directory_with_a_fixed_seed() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "torture",
        "--seconds",
        "1.5",
        "--writers",
        "2",
        "--seed",
        "0x1234",
        "--dir",
        s(dir.path()),
        "--keep",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("seed 0x1234"), "{text}");
    let row = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim_start().strip_prefix(key))
            .unwrap_or_else(|| panic!("no row {key}: {text}"))
            .trim()
            .to_owned()
    };
    assert_eq!(row("lost "), "0", "{text}");
    assert_eq!(row("integrity_check "), "ok", "{text}");
    assert!(row("verdict ").starts_with("PASS"), "{text}");
    // --keep: the subdirectory with the database is still there.
    let sub = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        sub.join("demo.db").exists() || sub.join("torture.db").exists(),
        "{}",
        sub.display()
    );
}

#[test]
fn help_on_everything_and_usage_errors() {
    for cmd in [
        &[][..],
        &["inspect"],
        &["verify"],
        &["checkpoint"],
        &["recover"],
        &["torture"],
        &["demo"],
    ] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push("--help");
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: fsqlite"), "{text}");
    }
    let top = String::from_utf8(run(&["--help"]).stdout).unwrap();
    for c in [
        "inspect",
        "verify",
        "checkpoint",
        "recover",
        "torture",
        "demo",
    ] {
        assert!(top.contains(c), "{top}");
    }
    assert!(!top.contains("__writer"), "the writer subcommand is hidden");
    let ck = String::from_utf8(run(&["checkpoint", "--help"]).stdout).unwrap();
    for w in ["--mode", "passive", "truncate", "--busy-timeout", "--json"] {
        assert!(ck.contains(w), "{ck}");
    }
    assert_eq!(
        run(&["checkpoint", "x.db", "--mode", "sideways"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["torture", "--seconds", "-1"]).status.code(), Some(2));
}
