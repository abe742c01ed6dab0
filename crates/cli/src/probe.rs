//! Read-only lock probing: which of SQLite's lock bytes are held right now, by whom.
//!
//! A probe is `fcntl(F_OFD_GETLK)` on a descriptor opened read-only: the kernel answers
//! whether a lock *could* be placed and, if not, describes one conflicting lock. Nothing
//! is ever locked, so probing disturbs no one. OFD and classic POSIX locks conflict with
//! each other, so SQLite processes (POSIX locks) and fsqlite processes (OFD locks) are
//! both seen, including other descriptors of this very process. `holder_pid` is the
//! holder's pid for a POSIX lock; the kernel reports `-1` for an OFD lock, shown as
//! `None`.
//!
//! Each byte range is probed twice:
//!
//! ```text
//! probe F_RDLCK conflicts  -> someone holds a write lock  -> Exclusive
//! else probe F_WRLCK conflicts -> someone holds a read lock -> Shared
//! else                                                       Free
//! ```
//!
//! The bytes probed (FORMAT.md §5):
//!
//! | file | byte(s) | lock |
//! |---|---|---|
//! | `-shm` | `SHM_LOCK_BASE_BYTE + i` = 120 + i, i = 0..8 | WRITE, CKPT, RECOVER, READ0..READ4 |
//! | `-shm` | `SHM_DMS_BYTE` = 128 | the dead-man switch (a read lock per attached process) |
//! | db | `PENDING_BYTE` = 0x40000000 | PENDING |
//! | db | `RESERVED_BYTE` = PENDING + 1 | RESERVED |
//! | db | `SHARED_FIRST` = PENDING + 2, 510 bytes | SHARED (read) / EXCLUSIVE (write) |
//!
//! A probe is a snapshot: locks may change right after it.
//!
//! Caveat for library users: classic POSIX locks belong to the *process*, and closing any
//! descriptor of a file drops all of them. The probe opens and closes its own descriptor,
//! so do not call it from a process that holds SQLite (POSIX) locks on the same
//! database, e.g. through an open rusqlite connection (the `fsqlite` binary never does).

use std::fs::File;
use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_vfs::shm::{SHM_DMS_BYTE, SHM_LOCK_BASE_BYTE, SHM_NLOCK};
use fsqlite_vfs::unix::{PENDING_BYTE, RESERVED_BYTE, SHARED_FIRST, SHARED_SIZE};
use nix::fcntl::{FcntlArg, fcntl};
use serde::Serialize;

use crate::files::{CliResult, open_read_only};

/// Names of the eight `-shm` lock slots, in index order.
pub const SHM_LOCK_NAMES: [&str; SHM_NLOCK as usize] = [
    "WRITE", "CKPT", "RECOVER", "READ0", "READ1", "READ2", "READ3", "READ4",
];

/// The state of a probed byte range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockState {
    /// Nobody holds a lock on any byte of the range.
    Free,
    /// Someone holds a read (shared) lock and nobody a write lock.
    Shared,
    /// Someone holds a write (exclusive) lock.
    Exclusive,
}

impl LockState {
    /// `free`, `shared` or `exclusive`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Free => "free",
            Self::Shared => "shared",
            Self::Exclusive => "exclusive",
        }
    }
}

/// One probed range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LockProbe {
    /// The lock's name (`WRITE`, `DMS`, `SHARED`, …).
    pub name: &'static str,
    /// First byte of the range.
    pub byte: u64,
    /// Length of the range in bytes.
    pub len: u64,
    /// What is held.
    pub state: LockState,
    /// The pid of one holder, when the kernel knows it (classic POSIX locks); `None` for
    /// a free range or an OFD lock.
    pub holder_pid: Option<i32>,
}

fn getlk(
    file: &File,
    path: &Path,
    kind: libc::c_short,
    start: u64,
    len: u64,
) -> CliResult<Option<libc::flock>> {
    let mut fl = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    };
    fcntl(file, FcntlArg::F_OFD_GETLK(&mut fl)).map_err(|e| {
        FrankenError::io(
            "lock probe (F_OFD_GETLK)",
            Some(path.to_path_buf()),
            std::io::Error::from(e),
        )
    })?;
    Ok((fl.l_type != libc::F_UNLCK as libc::c_short).then_some(fl))
}

/// Probes `len` bytes at `start` of `file` (see the module docs). Takes no lock.
pub fn probe_range(
    file: &File,
    path: &Path,
    name: &'static str,
    start: u64,
    len: u64,
) -> CliResult<LockProbe> {
    let pid = |fl: &libc::flock| (fl.l_pid > 0).then_some(fl.l_pid);
    let (state, holder_pid) =
        if let Some(fl) = getlk(file, path, libc::F_RDLCK as libc::c_short, start, len)? {
            (LockState::Exclusive, pid(&fl))
        } else if let Some(fl) = getlk(file, path, libc::F_WRLCK as libc::c_short, start, len)? {
            (LockState::Shared, pid(&fl))
        } else {
            (LockState::Free, None)
        };
    Ok(LockProbe {
        name,
        byte: start,
        len,
        state,
        holder_pid,
    })
}

/// Probes the eight `-shm` lock bytes and the DMS byte of the `-shm` at `shm`; `None`
/// when the file does not exist.
pub fn probe_shm_locks(shm: &Path) -> CliResult<Option<Vec<LockProbe>>> {
    let Some(file) = open_read_only(shm)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(SHM_LOCK_NAMES.len() + 1);
    for (i, name) in SHM_LOCK_NAMES.iter().enumerate() {
        out.push(probe_range(
            &file,
            shm,
            name,
            SHM_LOCK_BASE_BYTE + i as u64,
            1,
        )?);
    }
    out.push(probe_range(&file, shm, "DMS", SHM_DMS_BYTE, 1)?);
    Ok(Some(out))
}

/// Probes the database file's PENDING, RESERVED and SHARED lock bytes; `None` when the
/// file does not exist.
pub fn probe_db_locks(db: &Path) -> CliResult<Option<Vec<LockProbe>>> {
    let Some(file) = open_read_only(db)? else {
        return Ok(None);
    };
    Ok(Some(vec![
        probe_range(&file, db, "PENDING", PENDING_BYTE, 1)?,
        probe_range(&file, db, "RESERVED", RESERVED_BYTE, 1)?,
        probe_range(&file, db, "SHARED", SHARED_FIRST, SHARED_SIZE)?,
    ]))
}

/// The DMS probe of the `-shm`: `Some(probe)` when somebody holds the dead-man switch
/// (another process has the database open in WAL mode), `None` when it is free or the
/// `-shm` does not exist.
pub fn dms_holder(shm: &Path) -> CliResult<Option<LockProbe>> {
    let Some(file) = open_read_only(shm)? else {
        return Ok(None);
    };
    let p = probe_range(&file, shm, "DMS", SHM_DMS_BYTE, 1)?;
    Ok((p.state != LockState::Free).then_some(p))
}

/// Somebody holding any database-file lock byte (a connection in any journal mode), or
/// `None`.
pub fn db_lock_holder(db: &Path) -> CliResult<Option<LockProbe>> {
    Ok(probe_db_locks(db)?.and_then(|v| v.into_iter().find(|p| p.state != LockState::Free)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn setlk(f: &File, kind: libc::c_short, start: u64, len: u64) {
        let fl = libc::flock {
            l_type: kind,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: start as libc::off_t,
            l_len: len as libc::off_t,
            l_pid: 0,
        };
        fcntl(f.as_fd(), FcntlArg::F_OFD_SETLK(&fl)).unwrap();
    }

    #[test]
    fn sees_shared_and_exclusive_locks_of_other_descriptors() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        let shm = dir.path().join("x.db-shm");
        std::fs::write(&db, b"").unwrap();
        std::fs::write(&shm, vec![0u8; 136]).unwrap();
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&shm)
            .unwrap();
        let probes = probe_shm_locks(&shm).unwrap().unwrap();
        assert!(probes.iter().all(|p| p.state == LockState::Free));
        setlk(
            &holder,
            libc::F_WRLCK as libc::c_short,
            SHM_LOCK_BASE_BYTE,
            1,
        );
        setlk(&holder, libc::F_RDLCK as libc::c_short, SHM_DMS_BYTE, 1);
        setlk(
            &holder,
            libc::F_RDLCK as libc::c_short,
            SHM_LOCK_BASE_BYTE + 4,
            1,
        );
        let probes = probe_shm_locks(&shm).unwrap().unwrap();
        let state = |n: &str| probes.iter().find(|p| p.name == n).unwrap().state;
        assert_eq!(state("WRITE"), LockState::Exclusive);
        assert_eq!(state("READ1"), LockState::Shared);
        assert_eq!(state("DMS"), LockState::Shared);
        assert_eq!(state("CKPT"), LockState::Free);
        // OFD locks report no pid.
        assert!(probes.iter().all(|p| p.holder_pid.is_none()));
        assert!(dms_holder(&shm).unwrap().is_some());
        assert!(db_lock_holder(&db).unwrap().is_none());
        drop(holder);
        assert!(dms_holder(&shm).unwrap().is_none());
        assert!(
            probe_shm_locks(&dir.path().join("missing-shm"))
                .unwrap()
                .is_none()
        );
    }
}
