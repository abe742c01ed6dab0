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
    Read {
        offset: u64,
        len: usize,
    },
    Write {
        offset: u64,
        len: usize,
    },
    Truncate {
        size: u64,
    },
    Sync {
        flags: SyncFlags,
    },
    /// A `sync_shared` began (its end is logged as `Sync`).
    SyncBegin,
    TargetWrite {
        page: u32,
    },
    TargetTruncate {
        pages: u32,
    },
    TargetSync,
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub data: Vec<u8>,
    pub fail_sync: bool,
    pub fail_write: bool,
    /// `can_sync_shared` answers this.
    pub sync_shared_ok: bool,
    /// `sync_shared` sleeps this long between `SyncBegin` and `Sync`.
    pub sync_delay: std::time::Duration,
    /// `sync_shared` also waits (10 s at most) until a read of this file has begun
    /// after its `SyncBegin`.
    pub sync_waits_for_read: bool,
    /// Reads see byte `offset` flipped (the disk handing back a bad page).
    pub flip_on_read: Option<usize>,
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

    /// Lets `sync_shared` work, sleeping `delay` inside it.
    pub fn set_shared_sync(&self, delay: std::time::Duration) {
        let mut s = self.shared.lock().unwrap();
        s.sync_shared_ok = true;
        s.sync_delay = delay;
    }

    /// `sync_shared` returns only once a read has begun during it (or after 10 s).
    pub fn set_sync_waits_for_read(&self) {
        self.shared.lock().unwrap().sync_waits_for_read = true;
    }

    pub fn set_flip_on_read(&self, at: Option<usize>) {
        self.shared.lock().unwrap().flip_on_read = at;
    }

    fn sync_result(&self) -> Result<()> {
        if self.shared.lock().unwrap().fail_sync {
            return Err(FrankenError::io(
                "fsync",
                None,
                std::io::Error::from_raw_os_error(5),
            ));
        }
        Ok(())
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
        if let Some(at) = s.flip_on_read
            && (start..start + n).contains(&at)
        {
            buf[at - start] ^= 0x40;
        }
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
        self.sync_result()
    }

    fn can_sync_shared(&self) -> bool {
        self.shared.lock().unwrap().sync_shared_ok
    }

    fn sync_shared(&self, _cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.push(Op::SyncBegin);
        let (delay, wait) = {
            let s = self.shared.lock().unwrap();
            (s.sync_delay, s.sync_waits_for_read)
        };
        std::thread::sleep(delay);
        let read_during = || {
            let log = self.log.lock().unwrap();
            let begin = log.iter().rposition(|o| matches!(o, Op::SyncBegin));
            begin.is_some_and(|b| log[b..].iter().any(|o| matches!(o, Op::Read { .. })))
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while wait && !read_during() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        self.push(Op::Sync { flags });
        self.sync_result()
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
