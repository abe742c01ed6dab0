//! SQLite's two locking modes for a WAL connection, and the database-file wrapper that
//! implements them.
//!
//! - [`LockingMode::Normal`]: the connection holds a SHARED lock on the database file for
//!   life and takes the `-shm` lock slots (WRITE, CKPT, RECOVER, READ(0..5)) around each
//!   transaction and checkpoint, so any number of connections and processes (SQLite
//!   included) share the database. A one-page commit costs six `fcntl` lock calls.
//! - [`LockingMode::Exclusive`] (SQLite's `PRAGMA locking_mode=EXCLUSIVE` in WAL mode): the
//!   connection holds the database file's EXCLUSIVE lock, which it can only get while no
//!   other connection has the database open, and which keeps every other connection
//!   (every SQLite process too) from opening it until the mode ends. With nobody else able
//!   to reach the `-shm`, its lock slots guard nothing, so the `-shm` lock calls are
//!   skipped (`sqlite3WalExclusiveMode`: SQLite's `walLockShared`/`walLockExclusive`
//!   return at once in this mode). Everything else is unchanged: the same `-wal` and
//!   `-shm` bytes, the same recovery barrier, the same durability per `SyncMode`.
//!
//! `LockedDb` is the database file with that switch: every [`VfsFile`] call goes to the
//! inner file, except `shm_lock`, which succeeds without a system call while the mode is
//! exclusive.

use fsqlite_error::Result;
use fsqlite_types::{Cx, LockLevel, SyncFlags};
use fsqlite_vfs::{ShmRegion, VfsFile};

/// SQLite's locking mode of a connection (see the module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockingMode {
    /// Share the database: `-shm` locks around every transaction.
    #[default]
    Normal,
    /// Own the database: an EXCLUSIVE lock on the database file, no `-shm` lock calls.
    Exclusive,
}

/// The database file of a connection, with the locking-mode switch (see the module docs).
#[derive(Debug)]
pub(crate) struct LockedDb<F> {
    file: F,
    mode: LockingMode,
}

impl<F: VfsFile> LockedDb<F> {
    pub(crate) fn new(file: F) -> Self {
        Self {
            file,
            mode: LockingMode::Normal,
        }
    }

    pub(crate) fn mode(&self) -> LockingMode {
        self.mode
    }

    /// Sets the mode; the caller holds the database-file lock the mode needs (and no
    /// `-shm` lock, i.e. no transaction is open).
    pub(crate) fn set_mode(&mut self, mode: LockingMode) {
        self.mode = mode;
    }
}

impl<F: VfsFile> VfsFile for LockedDb<F> {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.file.read(cx, buf, offset)
    }

    fn read_vectored(&self, cx: &Cx, bufs: &mut [&mut [u8]], offset: u64) -> Result<usize> {
        self.file.read_vectored(cx, bufs, offset)
    }

    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.file.write(cx, buf, offset)
    }

    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.file.truncate(cx, size)
    }

    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.file.sync(cx, flags)
    }

    fn start_writeback(&mut self, cx: &Cx, offset: u64, len: u64) -> Result<()> {
        self.file.start_writeback(cx, offset, len)
    }

    fn can_sync_shared(&self) -> bool {
        self.file.can_sync_shared()
    }

    fn sync_shared(&self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.file.sync_shared(cx, flags)
    }

    fn file_size(&self, cx: &Cx) -> Result<u64> {
        self.file.file_size(cx)
    }

    fn lock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.file.lock(cx, level)
    }

    fn unlock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.file.unlock(cx, level)
    }

    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool> {
        self.file.check_reserved_lock(cx)
    }

    fn sector_size(&self) -> u32 {
        self.file.sector_size()
    }

    fn device_characteristics(&self) -> u32 {
        self.file.device_characteristics()
    }

    fn shm_map(
        &mut self,
        cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>> {
        self.file.shm_map(cx, region, size, extend)
    }

    fn shm_lock(&mut self, cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        match self.mode {
            LockingMode::Normal => self.file.shm_lock(cx, offset, n, flags),
            // Validate the request all the same, so a wrong call fails in both modes.
            LockingMode::Exclusive => {
                fsqlite_vfs::shm::check_shm_lock_args(offset, n, flags).map(drop)
            }
        }
    }

    fn shm_downgrade(&mut self, cx: &Cx, offset: u32) -> Result<()> {
        match self.mode {
            LockingMode::Normal => self.file.shm_downgrade(cx, offset),
            LockingMode::Exclusive => fsqlite_vfs::shm::check_shm_lock_args(
                offset,
                1,
                fsqlite_vfs::SHM_LOCK | fsqlite_vfs::SHM_SHARED,
            )
            .map(drop),
        }
    }

    fn shm_unlock_slots(&mut self, cx: &Cx, exclusive: u8, shared: u8) -> Result<()> {
        match self.mode {
            LockingMode::Normal => self.file.shm_unlock_slots(cx, exclusive, shared),
            LockingMode::Exclusive => Ok(()),
        }
    }

    fn shm_barrier(&self) {
        self.file.shm_barrier();
    }

    fn shm_unmap(&mut self, cx: &Cx, delete: bool) -> Result<()> {
        self.file.shm_unmap(cx, delete)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fsqlite_types::VfsOpenFlags;
    use fsqlite_vfs::{MemoryVfs, SHM_EXCLUSIVE, SHM_LOCK, SHM_UNLOCK, Vfs};

    #[test]
    fn exclusive_mode_skips_only_the_shm_locks() {
        let cx = Cx::new();
        let vfs = MemoryVfs::new();
        let flags = VfsOpenFlags::MAIN_DB | VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE;
        let (a, _) = vfs.open(&cx, Some("/m.db".as_ref()), flags).unwrap();
        let (mut b, _) = vfs.open(&cx, Some("/m.db".as_ref()), flags).unwrap();
        let mut a = LockedDb::new(a);
        a.shm_map(&cx, 0, 32768, true).unwrap();
        b.shm_map(&cx, 0, 32768, true).unwrap();
        let x = SHM_LOCK | SHM_EXCLUSIVE;
        b.shm_lock(&cx, 0, 1, x).unwrap();
        // Normal: b's WRITE lock excludes a.
        assert!(matches!(
            a.shm_lock(&cx, 0, 1, x),
            Err(fsqlite_error::FrankenError::Busy)
        ));
        a.set_mode(LockingMode::Exclusive);
        assert_eq!(a.mode(), LockingMode::Exclusive);
        a.shm_lock(&cx, 0, 1, x).unwrap();
        a.shm_lock(&cx, 0, 1, SHM_UNLOCK | SHM_EXCLUSIVE).unwrap();
        // Bad arguments are still errors.
        assert!(a.shm_lock(&cx, 7, 3, x).is_err());
        // Everything else goes to the file: a write through `a` is seen through `b`.
        a.write(&cx, &[9u8; 16], 0).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(b.read(&cx, &mut buf, 0).unwrap(), 16);
        assert_eq!(buf, [9u8; 16]);
        assert_eq!(a.sector_size(), b.sector_size());
        assert_eq!(a.device_characteristics(), b.device_characteristics());
    }
}
