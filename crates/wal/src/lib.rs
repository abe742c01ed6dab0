//! # fsqlite-wal
//!
//! SQLite-compatible write-ahead logging (being assembled; see the module docs).

pub mod checksum;
pub mod format;
pub mod wal;
pub mod wal_index;
pub mod recovery_fence;
pub mod checkpoint;
pub mod checkpoint_executor;
