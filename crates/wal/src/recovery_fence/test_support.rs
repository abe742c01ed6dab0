//! Test-only files and targets: a `VfsFile` over a shared `Vec<u8>` that logs every
//! operation and can fail syncs or writes on request, and a recording checkpoint target.

use std::sync::{Arc, Mutex};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, LockLevel, PageNumber, SyncFlags};
use fsqlite_vfs::{ShmRegion, VfsFile};

use crate::checkpoint_executor::CheckpointTarget;

/// One logged operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Read { offset: u64, len: usize },
    Write { offset: u64, len: usize },
    Truncate { size: u64 },
    Sync { flags: SyncFlags },
    TargetWrite { page: u32 },
    TargetTruncate { pages: u32 },
    TargetSync,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub data: Vec<u8>,
    pub fail_sync: bool,
    pub fail_write: bool,
}

/// An in-memory file; clones are handles to the same bytes and the same log.
#[derive(Clone, Debug, Default)]
pub(crate) struct VecFile {
    pub shared: Arc<Mutex<Shared>>,
    pub log: Arc<Mutex<Vec<Op>>>,
}

impl VecFile {
    pub fn with_data(data: Vec<u8>) -> Self {
        let f = Self::default();
        f.shared.lock().unwrap().data = data;
        f
    }

    pub fn data(&self) -> Vec<u8> {
        self.shared.lock().unwrap().data.clone()
    }

    pub fn set_data(&self, data: Vec<u8>) {
        self.shared.lock().unwrap().data = data;
    }

    pub fn ops(&self) -> Vec<Op> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.log.lock().unwrap().clear();
    }

    pub fn set_fail_sync(&self, v: bool) {
        self.shared.lock().unwrap().fail_sync = v;
    }

    pub fn set_fail_write(&self, v: bool) {
        self.shared.lock().unwrap().fail_write = v;
    }

    fn push(&self, op: Op) {
        self.log.lock().unwrap().push(op);
    }
}

impl VfsFile for VecFile {
    fn read(&self, _cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.push(Op::Read {
            offset,
            len: buf.len(),
        });
        let s = self.shared.lock().unwrap();
        let start = (offset as usize).min(s.data.len());
        let n = (s.data.len() - start).min(buf.len());
        buf[..n].copy_from_slice(&s.data[start..start + n]);
        buf[n..].fill(0);
        Ok(n)
    }

    fn write(&mut self, _cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.push(Op::Write {
            offset,
            len: buf.len(),
        });
        let mut s = self.shared.lock().unwrap();
        if s.fail_write {
            return Err(FrankenError::io(
                "write",
                None,
                std::io::Error::from_raw_os_error(5),
            ));
        }
        let end = offset as usize + buf.len();
        if s.data.len() < end {
            s.data.resize(end, 0);
        }
        s.data[offset as usize..end].copy_from_slice(buf);
        Ok(())
    }

    fn truncate(&mut self, _cx: &Cx, size: u64) -> Result<()> {
        self.push(Op::Truncate { size });
        self.shared.lock().unwrap().data.resize(size as usize, 0);
        Ok(())
    }

    fn sync(&mut self, _cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.push(Op::Sync { flags });
        if self.shared.lock().unwrap().fail_sync {
            return Err(FrankenError::io(
                "fsync",
                None,
                std::io::Error::from_raw_os_error(5),
            ));
        }
        Ok(())
    }

    fn file_size(&self, _cx: &Cx) -> Result<u64> {
        Ok(self.shared.lock().unwrap().data.len() as u64)
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

/// A checkpoint target that only records calls (into a log it may share with a file).
#[derive(Debug, Default)]
pub(crate) struct RecordingTarget {
    pub log: Arc<Mutex<Vec<Op>>>,
    pub fail_sync: bool,
    pub syncs: u32,
}

impl CheckpointTarget for RecordingTarget {
    fn write_page(&mut self, _cx: &Cx, page: PageNumber, _data: &[u8]) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Op::TargetWrite { page: page.get() });
        Ok(())
    }

    fn truncate_db(&mut self, _cx: &Cx, n_pages: u32) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(Op::TargetTruncate { pages: n_pages });
        Ok(())
    }

    fn sync_db(&mut self, _cx: &Cx) -> Result<()> {
        self.syncs += 1;
        self.log.lock().unwrap().push(Op::TargetSync);
        if self.fail_sync {
            return Err(FrankenError::io(
                "fsync",
                None,
                std::io::Error::from_raw_os_error(5),
            ));
        }
        Ok(())
    }
}

/// A deterministic page image: `page_size` bytes derived from `seed`.
pub(crate) fn page_image(seed: u32, page_size: usize) -> Vec<u8> {
    let mut x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..page_size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
