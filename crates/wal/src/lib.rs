//! # fsqlite-wal
//!
//! SQLite-compatible write-ahead logging: the same `-wal` and `-shm` bytes and the same
//! lock bytes as SQLite, so a SQLite process on the same database is just another
//! connection. [`Wal`] is the connection handle; the modules below are its parts, split by
//! concern (each documents the structure it owns at its top):
//!
//! | module | what it owns |
//! |---|---|
//! | [`checksum`] | SQLite's cumulative WAL checksum (reference + closed-form SIMD) and the xxh3-128 page trailer |
//! | [`format`](mod@format) | the 32-byte WAL header and 24-byte frame header |
//! | [`wal`] | the WAL file: valid-prefix scan, append, restart, truncate, padding frames |
//! | [`wal_index`] | the `-shm`: header copies, checkpoint info, read marks, hash tables |
//! | [`frame_map`] | a connection's private page → newest-frame map (the lookup fast path) |
//! | [`recovery`] | rebuilding the `-shm` from the WAL |
//! | [`recovery_fence`] | one recovery at a time, fsync-before-truncate, the PID registry, post-checkpoint verification |
//! | [`checkpoint`], [`checkpoint_executor`] | checkpoint decisions (pure) and the copy + barrier (I/O) |
//! | [`connection`] | [`Wal`], [`ReadTxn`], [`WriteTxn`]: SQLite's locking and read-mark protocol |
//! | [`locking_mode`] | SQLite's normal and exclusive locking modes ([`LockingMode`]) |
//! | [`hooks`] | the busy handler, the commit hook and the one-call status ([`hooks::WalStatus`]) |
//!
//! ```
//! use std::sync::Arc;
//! use fsqlite_types::{Cx, PageNumber};
//! use fsqlite_vfs::MemoryVfs;
//! use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
//!
//! let cx = Cx::new();
//! let vfs = Arc::new(MemoryVfs::new());
//! let mut wal = Wal::open(&cx, vfs, "/app.db", WalOptions::default()).unwrap();
//! let page = vec![7u8; wal.page_size() as usize];
//! let mut tx = wal.begin_write(&cx).unwrap();
//! tx.write_page(&cx, PageNumber::new(2).unwrap(), &page).unwrap();
//! tx.commit(&cx, 2).unwrap(); // durable (SyncMode::Full) and visible to every reader
//! {
//!     let r = wal.begin_read(&cx).unwrap();
//!     let mut buf = vec![0u8; page.len()];
//!     r.read_page(&cx, PageNumber::new(2).unwrap(), &mut buf).unwrap();
//!     assert_eq!(buf, page);
//! }
//! let out = wal.checkpoint(&cx, CheckpointMode::Truncate).unwrap(); // through the barrier
//! assert!(!out.busy);
//! ```

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod checkpoint;
pub mod checkpoint_executor;
pub mod checksum;
pub mod connection;
pub mod db_header;
pub mod format;
pub mod frame_map;
pub mod hooks;
pub mod locking_mode;
pub mod locks;
pub mod recovery;
pub mod recovery_fence;
pub mod savepoint;
mod scan_parallel;
pub mod snapshot;
pub mod wal;
pub mod wal_index;

pub use checkpoint::{CheckpointMode, CheckpointOutcome};
pub use connection::{ReadTxn, Wal, WalOptions, WriteTxn};
pub use locking_mode::LockingMode;
pub use snapshot::WalSnapshot;
pub use wal::{GroupedCommit, ScanReport, StopReason, SyncMode, WalFile, WalState};
