//! Syscall glue for [`crate::unix`]: Linux open-file-description (OFD) byte-range locks,
//! directory fsync and file-creation modes.
//!
//! Everything here is a thin wrapper: `nix::fcntl::fcntl` does the `fcntl(2)` calls and
//! `std::fs` most of the rest. The one `unsafe` block is the `sync_file_range(2)` call in
//! [`start_writeback`] (nix has no wrapper for it); it passes only integers.
//!
//! A lock request is `(kind, start, len)` over bytes `start .. start + len` of the file
//! (`len == 0` means "to the end of the file and beyond", as in `struct flock`). OFD locks
//! belong to the open file description, not to the process: two descriptors obtained from
//! two `open(2)` calls conflict with each other even inside one process, closing some
//! other descriptor of the same file never drops them, and they conflict with classic
//! POSIX (`F_SETLK`) locks held by any process (`fcntl(2)`, "Open file description
//! locks").

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, fcntl};

/// The kind of a byte-range lock request (`l_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// `F_RDLCK`: shared.
    Read,
    /// `F_WRLCK`: exclusive.
    Write,
    /// `F_UNLCK`: release.
    Unlock,
}

impl LockKind {
    fn l_type(self) -> libc::c_short {
        (match self {
            Self::Read => libc::F_RDLCK,
            Self::Write => libc::F_WRLCK,
            Self::Unlock => libc::F_UNLCK,
        }) as libc::c_short
    }
}

/// A `struct flock` for bytes `start .. start + len` (from `SEEK_SET`), `l_pid` zero as
/// the OFD commands require.
fn flock(kind: LockKind, start: u64, len: u64) -> libc::flock {
    libc::flock {
        l_type: kind.l_type(),
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: start as libc::off_t,
        l_len: len as libc::off_t,
        l_pid: 0,
    }
}

/// `F_OFD_SETLK`: takes (or releases) a lock without waiting.
///
/// Returns `Ok(true)` when done, `Ok(false)` when another open file description holds a
/// conflicting lock (`EAGAIN`/`EACCES`), and `Err` for any other failure.
pub(crate) fn ofd_setlk(file: &File, kind: LockKind, start: u64, len: u64) -> io::Result<bool> {
    let fl = flock(kind, start, len);
    loop {
        match fcntl(file, FcntlArg::F_OFD_SETLK(&fl)) {
            Ok(_) => return Ok(true),
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(false),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
}

/// `F_OFD_GETLK`: would `kind` on `start .. start + len` conflict with a lock held through
/// another open file description (or by any process with a classic POSIX lock)?
///
/// Returns the kind of one conflicting lock, or `None` when the request would succeed.
pub(crate) fn ofd_getlk(
    file: &File,
    kind: LockKind,
    start: u64,
    len: u64,
) -> io::Result<Option<LockKind>> {
    let mut fl = flock(kind, start, len);
    loop {
        match fcntl(file, FcntlArg::F_OFD_GETLK(&mut fl)) {
            Ok(_) => break,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(match i32::from(fl.l_type) {
        libc::F_UNLCK => None,
        libc::F_RDLCK => Some(LockKind::Read),
        _ => Some(LockKind::Write),
    })
}

/// The directory holding `path` (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fsyncs the directory holding `path`, so that a file creation or removal in it is
/// durable. File systems that cannot fsync a directory (`EINVAL`) count as success, as in
/// SQLite's unix VFS.
pub(crate) fn sync_parent_dir(path: &Path) -> io::Result<()> {
    let dir = File::open(parent_dir(path))?;
    match dir.sync_all() {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        other => other,
    }
}

/// The permission bits (`st_mode & 0o777`) of an open file.
pub(crate) fn mode_of(file: &File) -> io::Result<u32> {
    Ok(file.metadata()?.mode() & 0o777)
}

/// `sync_file_range(fd, offset, len, SYNC_FILE_RANGE_WRITE)`: starts writeback of the
/// dirty pages in `offset .. offset + len` and returns without waiting.
///
/// Only `SYNC_FILE_RANGE_WRITE`: the `WAIT_*` flags would collect a writeback error here
/// and the `fsync` that follows (the one that makes the data durable) would no longer see
/// it. On systems without the call (`ENOSYS`) or files that cannot do it (`EINVAL`,
/// `ESPIPE`) it is a no-op, since it is only a hint.
#[cfg(target_os = "linux")]
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (Ok(off), Ok(n)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Ok(());
    };
    loop {
        // SAFETY: `sync_file_range` takes a descriptor and three integers and touches no
        // memory of ours; the descriptor is open for as long as `file` is borrowed.
        let rc =
            unsafe { libc::sync_file_range(file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE) };
        if rc == 0 {
            return Ok(());
        }
        match Errno::last() {
            Errno::EINTR => {}
            Errno::ENOSYS | Errno::EINVAL | Errno::ESPIPE => return Ok(()),
            e => return Err(io::Error::from(e)),
        }
    }
}

/// Not Linux: writeback hints are a no-op.
#[cfg(not(target_os = "linux"))]
pub(crate) fn start_writeback(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}
