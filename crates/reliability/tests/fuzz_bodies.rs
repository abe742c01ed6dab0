//! The fuzz targets' bodies over seeded generated inputs (fuzzcheck style), so CI checks
//! the same properties as `cargo xtask fuzz` without cargo-fuzz. A failure prints the
//! target, the input in hex and the replay seed.

use fsqlite_reliability::fuzz_bodies::{TARGETS, generate, run_target};
use fsqlite_reliability::panic_text;
use fsqlite_testkit::rng::{Rng, replay_hint, seed_from_env};

fn run_corpus(target: &str, n: usize) {
    let seed = seed_from_env(0xf022);
    let mut rng = Rng::new(seed ^ fsqlite_reliability::name_hash(target));
    for i in 0..n {
        let input = generate(target, &mut rng);
        if let Err(p) = std::panic::catch_unwind(|| run_target(target, &input)) {
            panic!(
                "{target}: input {i} failed: {}\ninput ({} bytes): {:02x?}\n{}",
                panic_text(p.as_ref()),
                input.len(),
                input,
                replay_hint(seed, target)
            );
        }
    }
}

#[test]
fn wal_header() {
    run_corpus("wal_header", 4000);
}

#[test]
fn wal_recover_raw() {
    run_corpus("wal_recover_raw", 1200);
}

#[test]
fn wal_recover_struct() {
    run_corpus("wal_recover_struct", 600);
}

#[test]
fn shm_header() {
    run_corpus("shm_header", 1000);
}

#[test]
fn engine_model() {
    run_corpus("engine_model", 300);
}

#[test]
fn regression_inputs_in_the_fuzz_corpus_still_pass() {
    // Crash artifacts copied to fuzz/regressions/<target>/ are replayed here.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    for t in TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(t)) else {
            continue;
        };
        for e in dir.flatten() {
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            assert!(run_target(t, &bytes), "{t}");
        }
    }
}
