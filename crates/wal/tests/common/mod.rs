//! Test helpers shared by the WAL tests: `VecFile`, an in-memory `VfsFile` whose bytes a
//! test can inspect and damage, plus small builders.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, LockLevel, PageNumber, SyncFlags};
use fsqlite_vfs::{ShmRegion, VfsFile};

/// An in-memory file. Clones share the bytes, so a test keeps one clone to damage or read
/// the image while a `WalFile` owns another. Counts reads, writes and syncs.
#[derive(Clone, Debug, Default)]
pub struct VecFile {
    pub inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
pub struct Inner {
    pub data: Vec<u8>,
    pub reads: u64,
    pub writes: u64,
    pub syncs: u64,
    pub truncates: u64,
    /// Fail every write and sync once set.
    pub fail_io: bool,
}

impl VecFile {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_bytes(data: Vec<u8>) -> Self {
        let f = Self::default();
        f.inner.lock().unwrap().data = data;
        f
    }

    pub fn bytes(&self) -> Vec<u8> {
        self.inner.lock().unwrap().data.clone()
    }

    pub fn set_bytes(&self, data: Vec<u8>) {
        self.inner.lock().unwrap().data = data;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().data.len()
    }

    pub fn flip_bit(&self, offset: usize, bit: u8) {
        self.inner.lock().unwrap().data[offset] ^= 1 << bit;
    }

    pub fn truncate_to(&self, len: usize) {
        self.inner.lock().unwrap().data.truncate(len);
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        let g = self.inner.lock().unwrap();
        (g.reads, g.writes, g.syncs)
    }

    pub fn set_fail_io(&self, fail: bool) {
        self.inner.lock().unwrap().fail_io = fail;
    }
}

fn injected() -> FrankenError {
    FrankenError::io("write", None, std::io::Error::other("injected failure"))
}

impl VfsFile for VecFile {
    /// A power-safe-overwrite device, like `UnixVfs`: no padding frames, so the tests'
    /// frame arithmetic is exact. (`wal_file.rs` checks padding on `MemoryVfs`.)
    fn device_characteristics(&self) -> u32 {
        fsqlite_vfs::traits::iocap::POWERSAFE_OVERWRITE
    }

    fn read(&self, _cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut g = self.inner.lock().unwrap();
        g.reads += 1;
        let start = usize::try_from(offset).unwrap().min(g.data.len());
        let n = buf.len().min(g.data.len() - start);
        buf[..n].copy_from_slice(&g.data[start..start + n]);
        buf[n..].fill(0);
        Ok(n)
    }

    fn write(&mut self, _cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        if g.fail_io {
            return Err(injected());
        }
        g.writes += 1;
        let start = usize::try_from(offset).unwrap();
        if g.data.len() < start + buf.len() {
            g.data.resize(start + buf.len(), 0);
        }
        g.data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn truncate(&mut self, _cx: &Cx, size: u64) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        if g.fail_io {
            return Err(injected());
        }
        g.truncates += 1;
        g.data.resize(usize::try_from(size).unwrap(), 0);
        Ok(())
    }

    fn sync(&mut self, _cx: &Cx, flags: SyncFlags) -> Result<()> {
        let mut g = self.inner.lock().unwrap();
        if g.fail_io {
            return Err(FrankenError::io(
                "sync",
                None,
                std::io::Error::other("injected failure"),
            ));
        }
        assert!(flags.is_full_fsync(), "the WAL must use a full fsync");
        g.syncs += 1;
        Ok(())
    }

    fn file_size(&self, _cx: &Cx) -> Result<u64> {
        Ok(self.inner.lock().unwrap().data.len() as u64)
    }

    fn lock(&mut self, _cx: &Cx, _level: LockLevel) -> Result<()> {
        Ok(())
    }

    fn unlock(&mut self, _cx: &Cx, _level: LockLevel) -> Result<()> {
        Ok(())
    }

    fn check_reserved_lock(&self, _cx: &Cx) -> Result<bool> {
        Ok(false)
    }

    fn shm_map(
        &mut self,
        _cx: &Cx,
        _region: u32,
        _size: u32,
        _extend: bool,
    ) -> Result<Option<ShmRegion>> {
        Err(FrankenError::Unsupported)
    }

    fn shm_lock(&mut self, _cx: &Cx, _offset: u32, _n: u32, _flags: u32) -> Result<()> {
        Err(FrankenError::Unsupported)
    }

    fn shm_unmap(&mut self, _cx: &Cx, _delete: bool) -> Result<()> {
        Ok(())
    }
}

/// A page number (test shorthand).
pub fn pg(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

/// Deterministic page content for (page, version).
pub fn page_bytes(page_size: usize, page: u32, version: u32) -> Vec<u8> {
    let mut x = u64::from(page) << 32 | u64::from(version) | 1;
    (0..page_size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Fills the table `t` of a SQLite-written database with 48 commits of 32 rows of
/// 3,500 random bytes: a WAL of about 6 MiB (4 KiB pages), above
/// `BARRIER_OVERLAP_MIN_BYTES`, so checkpoints of it read back beside the fsync.
pub fn fill_large_wal(db: &fsqlite_testkit::sqlite::SqliteWalDb) {
    for _ in 0..48 {
        db.exec(
            "INSERT INTO t(v) SELECT randomblob(3500) FROM \
             (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 32) \
              SELECT x FROM c)",
        )
        .unwrap();
    }
}
