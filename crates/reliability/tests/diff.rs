//! Differential recovery against SQLite with a small budget.

use std::time::{Duration, Instant};

use fsqlite_reliability::diff::{
    BaseSet, CONCURRENT_TRANSFERS, DiffConfig, build_concurrent_base, replay_kept, run, run_case,
    run_on,
};
use fsqlite_reliability::{Counters, FailureSink};
use fsqlite_testkit::rng::{replay_hint, seed_from_env};

#[test]
fn damaged_sqlite_wals_recover_like_sqlite() {
    let seed = seed_from_env(0xd1ff);
    let r = run(&DiffConfig {
        seed,
        budget: Duration::from_secs(10),
        max_cases: 150,
    });
    assert!(
        r.passed(),
        "{}\n{}",
        r.failure_text(),
        replay_hint(seed, "damaged_sqlite_wals")
    );
    let checks = r.stats["checks"].as_u64().unwrap_or(0);
    assert!(checks >= 20, "only {checks} checks: {}", r.stats);
    assert_eq!(r.stats["disagreements"].as_u64(), Some(0));
}

#[test]
fn damaged_concurrent_wals_recover_like_sqlite() {
    let seed = seed_from_env(0xc0c0);
    let cases = 24;
    let r = run_on(
        &DiffConfig {
            seed,
            budget: Duration::from_secs(30),
            max_cases: cases,
        },
        BaseSet::Concurrent,
    );
    assert!(
        r.passed(),
        "{}\n{}",
        r.failure_text(),
        replay_hint(seed, "damaged_concurrent_wals")
    );
    let s = &r.stats;
    assert_eq!(s["concurrent_bases"].as_u64(), Some(2), "{s}");
    assert_eq!(s["disagreements"].as_u64(), Some(0), "{s}");
    let ran = s["cases"].as_u64().unwrap_or(0);
    assert!(ran >= 8, "only {ran} cases: {s}");
    assert_eq!(s["concurrent_cases"].as_u64(), Some(ran), "{s}");
    // Every case and both undamaged bases checked the books.
    assert_eq!(s["books_checks"].as_u64(), Some(ran + 2), "{s}");
    let bases = s["base_images"].as_array().expect("base_images");
    for (b, label) in bases
        .iter()
        .zip(["coordinator 8 threads", "2 members x 4 threads"])
    {
        assert_eq!(b["label"].as_str(), Some(label), "{b}");
        assert!(
            b["mx_frame"].as_u64().unwrap_or(0) >= CONCURRENT_TRANSFERS,
            "{b}"
        );
        let bank = &b["bank"];
        assert_eq!(
            bank["transfers"].as_u64(),
            Some(CONCURRENT_TRANSFERS),
            "{b}"
        );
        assert!(bank["batches"].as_u64() > Some(0), "{b}");
    }
    eprintln!(
        "concurrent bases built in {:.2} s; {ran} cases, {} books checks; {}",
        s["concurrent_build_secs"].as_f64().unwrap_or(0.0),
        s["books_checks"],
        s["base_images"]
    );
}

/// A base whose recorded total is off by one unit fails every case on it, and the
/// failing case is kept where `replay_kept` finds it again.
#[test]
fn a_wrong_bank_total_is_detected_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut base = build_concurrent_base(0x70_7a1, dir.path(), 1, 2, 24).unwrap();
    eprintln!("small concurrent base in {:?}", t.elapsed());
    let bank = base.bank.as_mut().unwrap();
    assert_eq!(bank.transfers, 24);
    bank.total += 1;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let (mut counters, mut failures) = (Counters::default(), FailureSink::default());
    let seed = 0x0bad_b00c;
    let c = 8;
    run_case(
        seed,
        c,
        std::slice::from_ref(&base),
        &work,
        &mut counters,
        &mut failures,
    );
    assert_eq!(counters.get("books_checks"), 1);
    assert_eq!(counters.get("books_mismatches"), 1);
    assert_eq!(failures.count, 1);
    let f = &failures.kept[0];
    assert!(f.message.contains("do not balance"), "{}", f.message);
    let kept = fsqlite_reliability::diff::kept_case_dir(seed, c);
    assert!(
        f.message.contains(&kept.display().to_string()),
        "{}",
        f.message
    );
    for name in ["d.db", "d.db-wal", "undamaged.wal", "case.json"] {
        assert!(kept.join(name).is_file(), "{name} not kept in {kept:?}");
    }
    let again = replay_kept(&kept).unwrap();
    assert_eq!(again.failure_count, 1, "{}", again.stats);
    assert!(again.failures[0].message.contains("do not balance"));
    std::fs::remove_dir_all(&kept).unwrap();
}
