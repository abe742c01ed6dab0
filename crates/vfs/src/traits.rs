//! The `Vfs` and `VfsFile` traits: SQLite's `sqlite3_vfs` and `sqlite3_io_methods`.
//!
//! One-sentence contracts, as callers may rely on them:
//! - `read` fills `buf` from `offset`; on a short read (end of file) it zero-fills the rest
//!   and returns the number of bytes really read.
//! - `write` writes all of `buf` at `offset`, extending the file (with zeros) if needed.
//! - `sync` makes every earlier write durable; an `Err` means *nothing* since the last
//!   successful sync may be assumed durable (and may already have been dropped).
//! - `lock`/`unlock` move the database-file lock between SQLite's levels using SQLite's
//!   lock bytes; a conflict is `Err(Busy)`, never a wait.
//! - The shm calls act on `<path>-shm` (see [`crate::shm`]): `shm_map` returns region
//!   `region` of `size` bytes, or `None` when the region does not exist and `extend` is
//!   false; `shm_lock` takes SQLite's lock indices and flags; a conflict is `Err(Busy)`.

use std::path::{Path, PathBuf};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};

use crate::shm::ShmRegion;

/// A file system: SQLite's `sqlite3_vfs`.
pub trait Vfs: Send + Sync {
    /// The file type this VFS opens.
    type File: VfsFile;

    /// A short name (`"memory"`, `"unix"`).
    fn name(&self) -> &'static str;

    /// Opens (or creates) a file; returns the handle and the flags actually used.
    /// `path == None` opens an anonymous temporary file.
    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(Self::File, VfsOpenFlags)>;

    /// Deletes a file; with `sync_dir` the directory entry removal is made durable.
    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()>;

    /// Tests existence (`AccessFlags::EXISTS`) or permission.
    fn access(&self, cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool>;

    /// The absolute, canonical form of `path`.
    fn full_pathname(&self, cx: &Cx, path: &Path) -> Result<PathBuf>;

    /// Fills `buf` with random bytes (WAL salts). Deterministic on a seeded `MemoryVfs`.
    fn randomness(&self, buf: &mut [u8]) {
        fallback_randomness(buf);
    }

    /// The current process id as the VFS sees it (a `MemoryVfs` may fake it).
    fn current_pid(&self) -> u32 {
        std::process::id()
    }
}

/// Random bytes from the clock, the pid and a counter, for VFSes without a better source.
pub fn fallback_randomness(buf: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    for chunk in buf.chunks_mut(8) {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let bytes = z.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// An open file: SQLite's `sqlite3_io_methods`.
///
/// The methods that can fail on a real disk (`read`, `write`, `truncate`, `sync`, `lock`,
/// `shm_map`, `shm_lock`) are `#[track_caller]`: an implementation can ask
/// [`std::panic::Location::caller`] for the line that called it, through any wrapper VFS
/// that is itself a plain `VfsFile` forwarding its calls. [`crate::MemoryVfs`] records
/// these call sites so the I/O-error sweep can say which line of the WAL a fault hit.
pub trait VfsFile: Send + Sync {
    /// Reads into `buf` from `offset`; returns the bytes read and zero-fills the rest.
    #[track_caller]
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize>;

    /// Reads the bytes from `offset` on into `bufs`, one after the other (a scatter read,
    /// `preadv(2)`); returns the bytes read and zero-fills the rest of the buffers. The
    /// checkpoint reads runs of WAL frames with it, pages straight into its write buffer
    /// and frame headers aside.
    ///
    /// Default: one [`VfsFile::read`] of the whole extent into a temporary buffer, then
    /// copied out, so a VFS that counts or fails reads sees one read as before.
    #[track_caller]
    fn read_vectored(&self, cx: &Cx, bufs: &mut [&mut [u8]], offset: u64) -> Result<usize> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut tmp = vec![0u8; total];
        let got = self.read(cx, &mut tmp, offset)?;
        let mut at = 0;
        for b in bufs.iter_mut() {
            b.copy_from_slice(&tmp[at..at + b.len()]);
            at += b.len();
        }
        Ok(got)
    }

    /// Writes all of `buf` at `offset`.
    #[track_caller]
    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()>;

    /// Sets the file size.
    #[track_caller]
    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()>;

    /// Makes earlier writes durable (`fsync`, or `fdatasync` with `DATAONLY`).
    #[track_caller]
    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()>;

    /// True when [`VfsFile::sync_shared`] can make this file's writes durable now.
    /// Default: false.
    fn can_sync_shared(&self) -> bool {
        false
    }

    /// [`VfsFile::sync`] through a shared reference, so that other threads can read this
    /// file while the sync waits on the disk (the checkpoint reads back the pages it
    /// wrote beside the database fsync). Only for a file whose
    /// [`VfsFile::can_sync_shared`] is true: the default is an error, and a file whose
    /// `sync` has more to do than the system call (a new file's directory to sync) says
    /// false until a `sync` has done it. Durability and errors are those of `sync`.
    #[track_caller]
    fn sync_shared(&self, _cx: &Cx, _flags: SyncFlags) -> Result<()> {
        Err(FrankenError::internal(
            "this file cannot sync through a shared reference (can_sync_shared is false); \
             call sync",
        ))
    }

    /// Starts writing back dirty data in `offset .. offset + len` without waiting for it.
    ///
    /// A hint for long copies (the checkpoint calls it every few MiB so the final `sync`
    /// finds little left to write); it makes nothing durable, and an error it would hide is
    /// still reported by the next `sync`. Default: does nothing.
    fn start_writeback(&mut self, _cx: &Cx, _offset: u64, _len: u64) -> Result<()> {
        Ok(())
    }

    /// The file size in bytes.
    fn file_size(&self, cx: &Cx) -> Result<u64>;

    /// Raises the database-file lock to `level` (SQLite's lock bytes).
    #[track_caller]
    fn lock(&mut self, cx: &Cx, level: LockLevel) -> Result<()>;

    /// Lowers the database-file lock to `level` (`Shared` or `None`).
    fn unlock(&mut self, cx: &Cx, level: LockLevel) -> Result<()>;

    /// True when some connection holds RESERVED or higher.
    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool>;

    /// The sector size in bytes (SQLite's `xSectorSize`).
    fn sector_size(&self) -> u32 {
        4096
    }

    /// SQLite's `SQLITE_IOCAP_*` bits.
    fn device_characteristics(&self) -> u32 {
        0
    }

    /// Maps region `region` (of `size` bytes, normally 32768) of `<path>-shm`.
    #[track_caller]
    fn shm_map(
        &mut self,
        cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>>;

    /// Takes or releases shm locks `offset..offset+n` (SQLite's indices and flags).
    #[track_caller]
    fn shm_lock(&mut self, cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()>;

    /// Turns this handle's exclusive lock on shm slot `offset` into a shared one.
    ///
    /// SQLite releases and re-takes (`xShmLock` has no downgrade), which lets another
    /// connection take the slot in between; a VFS that can convert the lock atomically
    /// (an `fcntl` read lock over the held write lock) overrides this, saving one system
    /// call and that window. `Err(Busy)` means the slot was lost in between (only
    /// possible with the default); the caller retries as after a failed shared lock.
    /// Default: `shm_lock` UNLOCK|EXCLUSIVE, then LOCK|SHARED.
    #[track_caller]
    fn shm_downgrade(&mut self, cx: &Cx, offset: u32) -> Result<()> {
        use crate::shm::{SHM_EXCLUSIVE, SHM_LOCK, SHM_SHARED, SHM_UNLOCK};
        self.shm_lock(cx, offset, 1, SHM_UNLOCK | SHM_EXCLUSIVE)?;
        self.shm_lock(cx, offset, 1, SHM_LOCK | SHM_SHARED)
    }

    /// Releases this handle's exclusive locks on the shm slots in `exclusive` and its
    /// shared locks on the slots in `shared` (bit `i` = slot `i`), e.g. WRITE and a read
    /// mark at the end of a write transaction. A VFS whose unlock of a byte range
    /// releases only its own locks overrides this with one call over the whole range.
    /// Default: one `shm_lock` UNLOCK per slot.
    fn shm_unlock_slots(&mut self, cx: &Cx, exclusive: u8, shared: u8) -> Result<()> {
        unlock_slots_one_by_one(self, cx, exclusive, shared)
    }

    /// A full memory fence between shm accesses.
    fn shm_barrier(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// Unmaps the shm of this handle; `delete` also removes `<path>-shm`.
    fn shm_unmap(&mut self, cx: &Cx, delete: bool) -> Result<()>;
}

/// [`VfsFile::shm_unlock_slots`] as one `shm_lock` UNLOCK per slot (the default, and the
/// fallback of VFSs that override it); every slot is tried, the first error is returned.
pub fn unlock_slots_one_by_one<F: VfsFile + ?Sized>(
    file: &mut F,
    cx: &Cx,
    exclusive: u8,
    shared: u8,
) -> Result<()> {
    use crate::shm::{SHM_EXCLUSIVE, SHM_SHARED, SHM_UNLOCK};
    let mut first_err = Ok(());
    for slot in 0..8u32 {
        for (mask, mode) in [(exclusive, SHM_EXCLUSIVE), (shared, SHM_SHARED)] {
            if mask & (1 << slot) != 0 {
                let r = file.shm_lock(cx, slot, 1, SHM_UNLOCK | mode);
                if first_err.is_ok() {
                    first_err = r;
                }
            }
        }
    }
    first_err
}

/// `SQLITE_IOCAP_*` device-characteristic bits.
pub mod iocap {
    pub const ATOMIC: u32 = 0x0000_0001;
    pub const ATOMIC512: u32 = 0x0000_0002;
    pub const ATOMIC4K: u32 = 0x0000_0010;
    pub const SAFE_APPEND: u32 = 0x0000_0200;
    pub const SEQUENTIAL: u32 = 0x0000_0400;
    pub const UNDELETABLE_WHEN_OPEN: u32 = 0x0000_0800;
    pub const POWERSAFE_OVERWRITE: u32 = 0x0000_1000;
}
