//! `FileLockOnly` without shared memory: SQLite's exclusive-locking-mode WAL, where the
//! WAL-index lives in this process's heap (FORMAT.md §7.5 and §8.3 describe SQLite's
//! equivalent: in exclusive mode shm locks are no-ops and the index is private memory).
//!
//! [`HeapShmVfs`] wraps any [`Vfs`]. Its files delegate every call to the inner file except:
//!
//! | call | behaviour |
//! |---|---|
//! | `lock(level)` on the main database, `level >= Shared` | takes **EXCLUSIVE** on the inner file (SQLite's lock bytes), so no other process can read or write while the connection lives: nobody else could see the private index |
//! | `unlock(Shared)` | keeps EXCLUSIVE; `unlock(None)` releases everything (close) |
//! | `shm_map` | regions of a private heap index ([`ShmRegion::heap`]); `extend == false` never creates one |
//! | `shm_lock` | no-op (`Ok`): one connection owns the whole index |
//! | `shm_unmap` | drops the heap index (nothing on disk to delete) |
//!
//! The WAL file is SQLite's format as always, so after the connection closes (or dies) any
//! SQLite process, or any fsqlite connection, recovers and reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{ShmRegion, Vfs, VfsFile};

/// A [`Vfs`] whose files keep their WAL-index in the heap and hold the database EXCLUSIVE
/// (see the module docs).
#[derive(Debug)]
pub struct HeapShmVfs<V: Vfs> {
    inner: Arc<V>,
}

impl<V: Vfs> HeapShmVfs<V> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<V>) -> Self {
        Self { inner }
    }

    /// The wrapped VFS.
    pub fn inner(&self) -> &V {
        &self.inner
    }
}

impl<V: Vfs> Vfs for HeapShmVfs<V> {
    type File = HeapShmFile<V::File>;

    fn name(&self) -> &'static str {
        "heap-shm"
    }

    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(Self::File, VfsOpenFlags)> {
        let (inner, out) = self.inner.open(cx, path, flags)?;
        Ok((
            HeapShmFile {
                inner,
                main_db: flags.contains(VfsOpenFlags::MAIN_DB),
                regions: Vec::new(),
            },
            out,
        ))
    }

    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        self.inner.delete(cx, path, sync_dir)
    }

    fn access(&self, cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool> {
        self.inner.access(cx, path, flags)
    }

    fn full_pathname(&self, cx: &Cx, path: &Path) -> Result<PathBuf> {
        self.inner.full_pathname(cx, path)
    }

    fn randomness(&self, buf: &mut [u8]) {
        self.inner.randomness(buf);
    }

    fn current_pid(&self) -> u32 {
        self.inner.current_pid()
    }
}

/// A file of a [`HeapShmVfs`].
#[derive(Debug)]
pub struct HeapShmFile<F: VfsFile> {
    inner: F,
    main_db: bool,
    regions: Vec<ShmRegion>,
}

impl<F: VfsFile> HeapShmFile<F> {
    /// The wrapped file.
    pub fn inner(&self) -> &F {
        &self.inner
    }
}

impl<F: VfsFile> VfsFile for HeapShmFile<F> {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read(cx, buf, offset)
    }

    fn read_vectored(&self, cx: &Cx, bufs: &mut [&mut [u8]], offset: u64) -> Result<usize> {
        self.inner.read_vectored(cx, bufs, offset)
    }

    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write(cx, buf, offset)
    }

    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.inner.truncate(cx, size)
    }

    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.inner.sync(cx, flags)
    }

    fn start_writeback(&mut self, cx: &Cx, offset: u64, len: u64) -> Result<()> {
        self.inner.start_writeback(cx, offset, len)
    }

    fn can_sync_shared(&self) -> bool {
        self.inner.can_sync_shared()
    }

    fn sync_shared(&self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.inner.sync_shared(cx, flags)
    }

    fn file_size(&self, cx: &Cx) -> Result<u64> {
        self.inner.file_size(cx)
    }

    fn lock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        if self.main_db && level >= LockLevel::Shared {
            return self.inner.lock(cx, LockLevel::Exclusive);
        }
        self.inner.lock(cx, level)
    }

    fn unlock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        if self.main_db && level != LockLevel::None {
            return Ok(());
        }
        self.inner.unlock(cx, level)
    }

    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool> {
        self.inner.check_reserved_lock(cx)
    }

    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }

    fn device_characteristics(&self) -> u32 {
        self.inner.device_characteristics()
    }

    fn shm_map(
        &mut self,
        _cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>> {
        if size == 0 {
            return Err(FrankenError::out_of_range("shm region size", 0));
        }
        let i = region as usize;
        if i >= self.regions.len() {
            if !extend {
                return Ok(None);
            }
            self.regions
                .resize_with(i + 1, || ShmRegion::heap(size as usize));
        }
        Ok(Some(self.regions[i].clone()))
    }

    fn shm_lock(&mut self, _cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        fsqlite_vfs::shm::check_shm_lock_args(offset, n, flags).map(|_| ())
    }

    fn shm_barrier(&self) {
        self.inner.shm_barrier();
    }

    fn shm_unmap(&mut self, _cx: &Cx, _delete: bool) -> Result<()> {
        self.regions.clear();
        Ok(())
    }
}
