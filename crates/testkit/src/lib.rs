//! # fsqlite-testkit
//!
//! Shared test support for the fsqlite interop, crash and kill -9 tests (TESTING.md §2.8).
//! Nothing here depends on `fsqlite-wal`, so its readers can serve as independent oracles
//! for it.
//!
//! | module | what it gives a test |
//! |---|---|
//! | [`bank`] | a SQLite-made bank (one account per table-leaf page, fixed-width balances and stamps) whose balances are edited in page images, and its books checked by SQLite |
//! | [`sqlite`] | real SQLite WAL databases (rusqlite, bundled SQLite), file snapshots, independent WAL and `-shm` header readers, and SQLite as an oracle (checkpoint, `integrity_check`, digests, page images) |
//! | [`process`] | SQLite in another process: a python3 `sqlite3` connection driven over a pipe ([`process::LiveSqlite`]) and the `sqlite3` shell |
//! | [`child`] | the re-exec harness for kill -9 tests, with its ack channel |
//! | [`kill9`] | the kill -9 driver: victims spawned, killed on a schedule or by their own kill hook, acks collected, a caller's verification run, figures kept |
//! | [`rng`] | the seeded SplitMix64 PRNG every harness draws from, and the replay hint |
//! | [`stats`] | JSON figures in `target/test-stats/` |
//!
//! ```
//! use fsqlite_testkit::rng::Rng;
//!
//! let mut a = Rng::new(7);
//! let mut b = Rng::new(7);
//! assert_eq!(a.next_u64(), b.next_u64());
//! assert!(a.below(10) < 10);
//! ```

pub mod bank;
pub mod child;
pub mod kill9;
pub mod process;
pub mod rng;
pub mod sqlite;
pub mod stats;

pub use serde_json;
