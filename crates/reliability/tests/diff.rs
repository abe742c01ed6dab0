//! Differential recovery against SQLite with a small budget.

use std::time::Duration;

use fsqlite_reliability::diff::{DiffConfig, run};
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
