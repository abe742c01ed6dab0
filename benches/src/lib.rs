//! # fsqlite-benches
//!
//! Criterion benchmarks of the whole stack, kept out of the library crates (redb's
//! `crates/redb-bench` pattern). Run them with `cargo bench -p fsqlite-benches`.
//!
//! | bench | what it measures |
//! |---|---|
//! | `concurrent_commit` | `BEGIN CONCURRENT` commits through the group commit (`fsqlite-mvcc`), 1 and 8 writers on disjoint pages, `SyncMode::Full` and `Off`; the time per commit is wall time ÷ commits (inverse throughput) |
//!
//! The side-by-side comparison with SQLite is `cargo xtask bench-concurrent`
//! (`docs/BENCHMARKS.md`).
