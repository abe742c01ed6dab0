//! # fsqlite-wal
//!
//! SQLite-compatible write-ahead logging (being assembled; see the module docs).

pub mod checkpoint;
pub mod checkpoint_executor;
pub mod checksum;
pub mod connection;
pub mod db_header;
pub mod format;
pub mod locks;
pub mod recovery;
pub mod recovery_fence;
pub mod wal;
pub mod wal_index;

pub use checkpoint::{CheckpointMode, CheckpointOutcome};
pub use connection::{ReadTxn, Wal, WalOptions, WriteTxn};
pub use wal::{ScanReport, StopReason, SyncMode, WalFile, WalState};
