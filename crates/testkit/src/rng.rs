//! A tiny seeded, deterministic PRNG (SplitMix64) shared by every harness, so that one
//! `u64` seed replays a whole run (TESTING.md §2.8: "one u64 seed drives every choice").
//!
//! # Generator
//!
//! SplitMix64 (Steele, Lea and Flood, 2014): the state advances by the odd constant
//! [`GOLDEN_GAMMA`] on every call and the output is the state passed through a 64-bit
//! finalizer (two xor-shift-multiply rounds and a final xor-shift). Every `u64` seed,
//! including 0, yields a full-period (2^64) stream. The stream is part of the test contract:
//! changing the constants would change what every recorded seed replays.
//!
//! # Derived draws
//!
//! - [`Rng::below`]`(n)`: uniform in `0..n` by rejection sampling (no modulo bias).
//! - [`Rng::fill`]: consecutive `next_u64` values, little-endian, the last one truncated.
//! - [`Rng::chance`]`(p)`: `true` with probability `p`, from the top 53 bits of one draw.
//!
//! # Replay
//!
//! [`seed_from_env`] reads [`SEED_ENV`] (`FSQLITE_SEED`, decimal or `0x` hex) so that a
//! failing run can be replayed with the command [`replay_hint`] prints.

/// The environment variable that overrides a harness's seed (decimal or `0x`-prefixed hex).
pub const SEED_ENV: &str = "FSQLITE_SEED";

/// SplitMix64's state increment (2^64 divided by the golden ratio, made odd).
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// First multiplier of the SplitMix64 finalizer.
const MIX_MUL_1: u64 = 0xbf58_476d_1ce4_e5b9;
/// Second multiplier of the SplitMix64 finalizer.
const MIX_MUL_2: u64 = 0x94d0_49bb_1331_11eb;
/// Bits of a draw used by [`Rng::chance`] (an `f64` mantissa plus the hidden bit).
const CHANCE_BITS: u32 = 53;

/// A SplitMix64 generator. Cloning it forks an identical stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator whose stream is fully determined by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(MIX_MUL_1);
        z = (z ^ (z >> 27)).wrapping_mul(MIX_MUL_2);
        z ^ (z >> 31)
    }

    /// A uniform value in `0..n`; `below(0)` returns 0 (there is no value to choose).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Reject the top `2^64 mod n` values so that every residue is equally likely.
        let zone = u64::MAX - (u64::MAX - n + 1) % n;
        loop {
            let x = self.next_u64();
            if x <= zone {
                return x % n;
            }
        }
    }

    /// A uniform value in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    /// `true` with probability `p` (`p <= 0` is never, `p >= 1` is always).
    #[allow(
        clippy::cast_precision_loss,
        reason = "both values are below 2^53, so exact"
    )]
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> (64 - CHANCE_BITS)) as f64 / (1u64 << CHANCE_BITS) as f64;
        unit < p
    }

    /// A new generator seeded from this one's next draw (an independent sub-stream, e.g.
    /// one per child process or per workload phase).
    #[must_use]
    pub fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }
}

/// Parses a seed written as decimal or `0x`-prefixed hex (underscores allowed).
pub fn parse_seed(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The seed from [`SEED_ENV`] if it is set and parses, else `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(v) => parse_seed(&v).unwrap_or_else(|| {
            tracing::warn!(target: "fsqlite.testkit.rng", value = %v, "unparsable {SEED_ENV}, using the default seed");
            default
        }),
        Err(_) => default,
    }
}

/// The line to print when a seeded test fails:
/// `replay: FSQLITE_SEED=0x<16 hex digits> cargo test -p <package> <test>`.
///
/// The package is the running test's `CARGO_PKG_NAME` (cargo sets it when it runs a
/// test binary), or `<package>` when that is unknown.
pub fn replay_hint(seed: u64, test: &str) -> String {
    let package = std::env::var("CARGO_PKG_NAME").unwrap_or_else(|_| "<package>".to_owned());
    format!("replay: {SEED_ENV}={seed:#018x} cargo test -p {package} {test}")
}
