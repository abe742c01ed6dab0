//! The I/O-error sweep with a small budget, and proof that it can fail.

use std::time::Duration;

use fsqlite_reliability::iofault::{FaultKind, IoFaultConfig, run};
use fsqlite_reliability::workloads;
use fsqlite_testkit::rng::{replay_hint, seed_from_env};
use fsqlite_wal::SyncMode;

#[test]
fn every_fault_kind_fails_cleanly_and_loses_nothing() {
    let seed = seed_from_env(0x10fa_u64);
    let mut cfg = IoFaultConfig::new(seed, Duration::from_secs(12));
    cfg.workloads = ["ckpt_full", "wal_restart"]
        .iter()
        .map(|n| workloads::by_name(n).unwrap_or_else(|| unreachable!()))
        .collect();
    cfg.threads = 2;
    let r = run(&cfg);
    assert!(
        r.passed(),
        "{}\n{}",
        r.failure_text(),
        replay_hint(seed, "every_fault_kind")
    );
    let t = &r.stats["totals"];
    for k in [FaultKind::Write, FaultKind::Sync, FaultKind::ShmMap] {
        let n = t[format!("faults_injected.{}.once", k.name())]
            .as_u64()
            .unwrap_or(0);
        assert!(n > 0, "no {} fault fired: {}", k.name(), r.stats);
    }
    assert!(
        t["latched"].as_u64().unwrap_or(0) > 0,
        "no latch was observed: {}",
        r.stats
    );
}

#[test]
fn a_broken_workload_is_caught() {
    let seed = seed_from_env(4);
    let mut w = workloads::by_name("multi_frame").unwrap_or_else(|| unreachable!());
    w.name = "multi_frame_sync_off";
    w.sync = SyncMode::Off;
    let mut cfg = IoFaultConfig::new(seed, Duration::from_secs(10));
    cfg.workloads = vec![w];
    cfg.kinds = vec![FaultKind::Write];
    cfg.max_sites = 3;
    let r = run(&cfg);
    assert!(
        !r.passed(),
        "power loss after unsynced commits went unnoticed: {}",
        r.stats
    );
    assert!(
        r.failure_text().contains("acknowledged commit lost"),
        "{}",
        r.failure_text()
    );
}
