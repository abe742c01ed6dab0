//! # fsqlite-reliability
//!
//! The reliability suite of TESTING.md §2.8: harnesses that try, systematically and
//! within a time budget, to make the WAL lose or invent a committed transaction.
//!
//! | module | harness / role |
//! |---|---|
//! | [`model`] | the reference model (committed state sequence) and the oracle |
//! | [`workloads`] | the canonical workloads and the runner that keeps the model in step |
//! | [`verify`] | what is checked after a recovery: oracle, structure, continuation |
//! | [`crashsim`] | exhaustive crash-point enumeration × seeded damage variants |
//! | [`concurrent`] | concurrent writers (8 threads; 2 members × 4 threads) under crashes and I/O faults |
//! | [`coverage`] | every I/O call site of the WAL and the coordinator, and what each fault there did |
//! | [`iofault`] | the I/O-error sweep: every failure site, fail-once and persistent |
//! | [`diff`] | differential recovery of damaged SQLite-written WALs against SQLite |
//! | [`walgen`] | an independent WAL encoder and reference scanner (fuzz oracles) |
//! | [`fuzz_bodies`] | the fuzz targets' bodies, run by cargo-fuzz and by `cargo test` |
//! | [`report`] | the `docs/RELIABILITY.md` table and machine description |
//!
//! Every harness takes one `u64` seed and a `budget`, returns a [`HarnessReport`] (its
//! counts as JSON, and its failures), and prints for each failure the seed and the command
//! that replays it.

#![allow(
    clippy::many_single_char_names,
    reason = "harness code names its workload w, crash point k, variant v, params p"
)]
#![allow(
    clippy::cast_precision_loss,
    reason = "only percentages and rates for reports are computed in f64"
)]

pub mod concurrent;
pub mod coverage;
pub mod crashsim;
pub mod diff;
pub mod fuzz_bodies;
pub mod iofault;
pub mod model;
pub mod report;
pub mod verify;
pub mod walgen;
pub mod workloads;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The most failures a harness keeps in full (the rest are only counted).
pub const MAX_KEPT_FAILURES: usize = 64;

/// One oracle violation (or panic, or unexpected error) found by a harness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// The harness (`"crashsim"`, `"iofault"`, `"diff"`, ...).
    pub harness: &'static str,
    /// The workload or image name.
    pub workload: String,
    /// The case (crash point, fault site, image number).
    pub case: u64,
    /// The damage variant or fault mode, if any.
    pub variant: String,
    /// The run's seed.
    pub seed: u64,
    /// What went wrong.
    pub message: String,
    /// The command that replays the case.
    pub replay: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] workload {} case {} {}: {}\n  seed {:#018x}; replay: {}",
            self.harness,
            self.workload,
            self.case,
            self.variant,
            self.message,
            self.seed,
            self.replay
        )
    }
}

/// What a harness returns: its counts (JSON) and its failures.
#[derive(Clone, Debug)]
pub struct HarnessReport {
    /// The counts, as written to the stats file.
    pub stats: serde_json::Value,
    /// Failures kept (at most [`MAX_KEPT_FAILURES`]).
    pub failures: Vec<Failure>,
    /// Failures found in total.
    pub failure_count: u64,
}

impl HarnessReport {
    /// True when no failure was found.
    pub fn passed(&self) -> bool {
        self.failure_count == 0
    }

    /// All kept failures, one per paragraph.
    pub fn failure_text(&self) -> String {
        let mut s = String::new();
        for f in &self.failures {
            s.push_str(&f.to_string());
            s.push('\n');
        }
        if self.failure_count > self.failures.len() as u64 {
            let _ = writeln!(
                s,
                "... and {} more",
                self.failure_count - self.failures.len() as u64
            );
        }
        s
    }
}

/// Named counters that merge by addition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub BTreeMap<String, u64>);

impl Counters {
    /// Adds `n` to counter `name`.
    pub fn add(&mut self, name: &str, n: u64) {
        *self.0.entry(name.to_owned()).or_insert(0) += n;
    }

    /// Adds one to counter `name`.
    pub fn inc(&mut self, name: &str) {
        self.add(name, 1);
    }

    /// The value of `name` (0 when absent).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    /// Adds every counter of `other`.
    pub fn merge(&mut self, other: &Counters) {
        for (k, v) in &other.0 {
            self.add(k, *v);
        }
    }

    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(*v)))
                .collect(),
        )
    }
}

/// Mixes values into one 64-bit seed (SplitMix64 finalizer over a running sum), so each
/// case and variant of a harness draws from its own stream.
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    for p in parts {
        x = x
            .wrapping_add(*p)
            .wrapping_add(fsqlite_testkit::rng::GOLDEN_GAMMA);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x = z ^ (z >> 31);
    }
    x
}

/// A stable number for a name (FNV-1a), for seed mixing.
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The text of a panic payload.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Collects failures up to [`MAX_KEPT_FAILURES`] and counts the rest.
#[derive(Debug, Default)]
pub struct FailureSink {
    /// Kept failures.
    pub kept: Vec<Failure>,
    /// All failures.
    pub count: u64,
}

impl FailureSink {
    /// Records one failure (and logs it).
    pub fn push(&mut self, f: Failure) {
        tracing::error!(target: "fsqlite.reliability", "{f}");
        self.count += 1;
        if self.kept.len() < MAX_KEPT_FAILURES {
            self.kept.push(f);
        }
    }

    /// Adds another sink's failures.
    pub fn merge(&mut self, other: FailureSink) {
        self.count += other.count;
        for f in other.kept {
            if self.kept.len() < MAX_KEPT_FAILURES {
                self.kept.push(f);
            }
        }
    }
}
