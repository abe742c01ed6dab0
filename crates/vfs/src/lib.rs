//! # fsqlite-vfs
//!
//! The file abstraction under the fsqlite WAL: the [`Vfs`] / [`VfsFile`] traits (SQLite's
//! `sqlite3_vfs` / `sqlite3_io_methods`, shared-memory calls included) and two
//! implementations:
//!
//! - [`MemoryVfs`]: files in memory that keep a *durable* image and the writes made since
//!   the last sync, so a test can **simulate a crash** (drop, keep a seeded subset of, or
//!   tear the unsynced writes) and **inject faults** on a schedule.
//! - [`UnixVfs`]: `pread`/`pwrite`, `fsync`/`fdatasync`, SQLite's lock bytes taken with
//!   Linux open-file-description locks, and the `-shm` mapped with `memmap2`, so a real
//!   SQLite process on the same files is simply another connection.
//!
//! Beyond SQLite's methods, `VfsFile` has optional ones with default bodies, which
//! `UnixFile` overrides to save work: `start_writeback` (`sync_file_range`, a hint during
//! long copies), `can_sync_shared` / `sync_shared` (an `fsync` through a shared
//! reference, so the checkpoint can read its pages back while the fsync waits on the
//! disk), `shm_downgrade` (an exclusive shm lock turned shared in place) and
//! `shm_unlock_slots` (several shm locks released with one call). `unsafe` code lives in
//! `shm` (the mapping) and `os` (the `sync_file_range` call) only.
//!
//! ```
//! use fsqlite_types::{Cx, VfsOpenFlags};
//! use fsqlite_vfs::{MemoryVfs, Vfs, VfsFile};
//! use std::path::Path;
//!
//! let cx = Cx::new();
//! let vfs = MemoryVfs::new();
//! let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
//! let (mut f, _) = vfs.open(&cx, Some(Path::new("/db")), flags).unwrap();
//! f.write(&cx, b"hello", 0).unwrap();
//! let mut buf = [0u8; 8];
//! assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), 5);
//! assert_eq!(&buf, b"hello\0\0\0");
//! ```

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod memory;
mod os;
pub mod shm;
pub mod traits;
pub mod unix;

pub use memory::{
    CrashMode, Fault, FaultOp, FaultRepeat, HandleLockState, IoSite, MemoryFile, MemoryVfs,
};
pub use shm::{
    SHM_EXCLUSIVE, SHM_LOCK, SHM_NLOCK, SHM_REGION_SIZE, SHM_SHARED, SHM_UNLOCK, ShmRegion,
    WAL_CKPT_LOCK, WAL_READ_LOCK_BASE, WAL_RECOVER_LOCK, WAL_WRITE_LOCK, wal_read_lock,
};
pub use traits::{Vfs, VfsFile};
pub use unix::{KillHook, KillOp, UnixFile, UnixVfs};
