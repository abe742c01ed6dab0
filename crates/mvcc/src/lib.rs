//! # fsqlite-mvcc
//!
//! Page-level versioning for concurrent writers, compatible with legacy SQLite processes
//! (ARCHITECTURE.md, "fsqlite-mvcc"): pick the operating mode when a database is opened;
//! run many `BEGIN CONCURRENT` transactions at once ([`Coordinator::begin_concurrent`],
//! [`ConcurrentTxn`]: snapshot reads from the WAL, private write sets, validation at
//! commit, group commit), in one process or in many at once on the same database; keep
//! SQLite's `-shm` current on every commit so SQLite readers see our commits; keep stock
//! SQLite writers out with `SQLITE_BUSY` or admit them as one more serialized writer
//! ([`LegacyWriters`]); and recover from a dead process.
//!
//! It sits on [`fsqlite_wal`] (the WAL file, the WAL-index, recovery), which sits on
//! `fsqlite-vfs` (files, locks, shared memory). A database engine opens one
//! [`Coordinator`] per database and process and shares it by reference between threads;
//! other processes open their own, and all of them write concurrently.
//!
//! | module | what it owns |
//! |---|---|
//! | [`compat`] | the pure API: [`CompatMode`], [`begin_concurrent_check`], [`HybridShmState`], [`choose_reader_slot`], [`CoordinatorProbeResult`], [`RecoveryPlan`] (and its constructor that reads a real `-shm`) |
//! | [`lifecycle`] | [`process_alive_os`] and the coordinator record `<db>.fsqlite-shm`, byte by byte |
//! | [`coordinator`] | [`Coordinator`]: open (mode choice), probe, takeover and recovery, commit, close |
//! | [`concurrent`] | [`ConcurrentTxn`], [`ConcurrencyStats`]: snapshots, read marks shared in-process, validation, the group-commit batch |
//! | [`group_commit`] | the commit queue: one leader per batch, waiters on a watermark (loom-checked) |
//! | [`heap_shm`] | [`HeapShmVfs`]: `FileLockOnly` without shared memory (heap WAL-index, database held EXCLUSIVE) |
//!
//! ```
//! use fsqlite_mvcc::{CompatMode, begin_concurrent_check};
//!
//! assert!(begin_concurrent_check(CompatMode::HybridShm).is_ok());
//! let e = begin_concurrent_check(CompatMode::FileLockOnly).unwrap_err();
//! assert_eq!(e.error_code(), fsqlite_error::ErrorCode::Error);
//! assert!(e.suggestion().is_some());
//! ```

pub mod compat;
pub mod concurrent;
pub mod coordinator;
pub mod group_commit;
pub mod heap_shm;
pub mod lifecycle;

pub use compat::{
    CompatMode, CoordinatorProbeResult, HybridShmState, ReadLockOutcome, RecoveryPlan,
    ShmInspection, UpdatedLegacyShm, begin_concurrent_check, choose_reader_slot,
};
pub use concurrent::{ConcurrencyStats, ConcurrentTxn};
pub use coordinator::{
    Coordinator, CoordinatorOptions, KILL_AT_ENV, KillAt, KillPoint, LegacyWriters, ProbeReport,
    Takeover,
};
pub use fsqlite_wal::savepoint::Savepoint;
pub use heap_shm::{HeapShmFile, HeapShmVfs};
pub use lifecycle::{CoordinatorRecord, RecordDefect, RecordState, process_alive_os};
