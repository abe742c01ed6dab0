//! [`UnixVfs`]: real files on Linux, SQLite-compatible locks, and the `-shm` mapped with
//! `memmap2`, so that a real SQLite process on the same files is simply another
//! connection.
//!
//! # File I/O
//! `read` is a `pread` loop (short reads and `EINTR` retried; the part of the buffer past
//! the end of the file is zero-filled), `write` a `pwrite` loop, `truncate` is
//! `ftruncate`, `sync` is `fsync` (`fdatasync` with [`SyncFlags::DATAONLY`]). As in
//! SQLite's unix VFS, the **first successful sync of a file this handle created also
//! fsyncs its parent directory**, so the new directory entry (a new `-wal`, say) is durable
//! too. Files are opened with `O_CLOEXEC` (and `O_NOFOLLOW` when asked). A created file
//! gets mode `0o644` (before the umask); a `-wal` or `-journal` gets the permission bits
//! of its database file, as in SQLite. `DELETEONCLOSE` files are unlinked right after
//! they are opened (SQLite does the same), so they vanish even if the process dies; an
//! anonymous file (`path == None`) is such a file in [`std::env::temp_dir`].
//!
//! # Database-file locks (SQLite's lock bytes)
//!
//! | constant | byte(s) |
//! |---|---|
//! | [`PENDING_BYTE`] | `0x4000_0000` |
//! | [`RESERVED_BYTE`] | `PENDING_BYTE + 1` |
//! | [`SHARED_FIRST`] | `PENDING_BYTE + 2` |
//! | [`SHARED_SIZE`] | 510 bytes: `SHARED_FIRST .. SHARED_FIRST + SHARED_SIZE` |
//!
//! Transitions are SQLite's `unixLock` / `unixUnlock`:
//! 1. **SHARED**: read-lock `PENDING_BYTE`, read-lock the SHARED range, unlock
//!    `PENDING_BYTE` (so a connection waiting for EXCLUSIVE, which holds `PENDING_BYTE`,
//!    keeps new readers out).
//! 2. **RESERVED**: write-lock `RESERVED_BYTE`.
//! 3. **PENDING**: write-lock `PENDING_BYTE`.
//! 4. **EXCLUSIVE**: write-lock `PENDING_BYTE` (unless already held), then write-lock the
//!    SHARED range. If the second step fails the handle is left at PENDING, holding
//!    `PENDING_BYTE`, exactly like SQLite (new readers stay out while we retry). Like
//!    SQLite's `unixIsSharingShmNode`, EXCLUSIVE is also `Busy` while this handle has the
//!    `-shm` open and someone else holds the `-shm` dead-man-switch lock.
//! 5. `unlock(Shared)` downgrades the SHARED range to a read lock and releases `PENDING_BYTE`
//!    and `RESERVED_BYTE`; `unlock(None)` releases all of the bytes above.
//!
//! A `lock` above SHARED from NONE first takes SHARED and, if the rest fails, goes back to
//! NONE. A conflict is `Err(FrankenError::Busy)`; nothing ever waits.
//!
//! ## Why open-file-description locks
//! SQLite takes classic POSIX locks (`F_SETLK`), which belong to the *process*: they never
//! conflict between two connections of one process, and closing *any* descriptor of the
//! file drops all of them. SQLite therefore keeps a per-process table of inodes, shares
//! one descriptor per inode and arbitrates between its own connections in memory.
//! This VFS uses Linux **OFD locks** (`F_OFD_SETLK` / `F_OFD_GETLK`) instead. They belong to
//! the open file description created by each `open(2)`, so (a) each [`UnixFile`] handle
//! conflicts with every other handle in this process exactly as with another process, and
//! (b) closing another descriptor never drops a lock. No per-process table is needed.
//! OFD locks and classic POSIX locks conflict with each other (`fcntl(2)`), which is what
//! makes a SQLite process a peer (tested in-process in `tests/unix_basic.rs` and against
//! SQLite processes in `tests/unix_sqlite.rs`). One caveat: a `fork()` child that does not
//! `exec` shares its parent's open file descriptions, and so its locks.
//!
//! # Shared memory (`<path>-shm`)
//! Opened lazily by the first `shm_map` (or `shm_lock`) of a handle, with the handle's own
//! descriptor (`O_RDWR|O_CREAT|O_NOFOLLOW`, the database file's permission bits; if that
//! fails, `O_RDONLY` and the shm is read-only). Then the **dead-man switch** on
//! [`SHM_DMS_BYTE`] (FORMAT.md §5.2), with OFD locks:
//! 1. `F_OFD_GETLK` for a write lock on the DMS byte.
//! 2. Nobody holds it: we are the first user. Take the write lock, `ftruncate` the `-shm`
//!    to [`SHM_STALE_LEN`] (3) bytes, which throws away stale contents, then downgrade to a
//!    read lock. (A read-only shm here is `Err(ReadOnly)`: SQLite's READONLY_CANTINIT.)
//! 3. Someone holds a read lock: other live users; take a read lock.
//! 4. Someone holds the write lock: another user is initializing; `Err(Busy)`.
//!
//! The read lock is held until `shm_unmap` or drop.
//!
//! `shm_map(region, size, extend)` maps bytes `region*size .. (region+1)*size` with
//! `MAP_SHARED`. If the file is shorter and `extend` is set it is grown the way SQLite
//! grows it: **one zero byte written at the last byte of each new 4096-byte block**
//! ([`SHM_GROW_BLOCK`]), so the blocks are really allocated and a full disk shows up as a
//! write error here instead of `SIGBUS` later. Without `extend` a short file gives
//! `Ok(None)`. Mappings are cached per region. A read-only shm is mapped read-only (a
//! store through such a region faults, as it would in SQLite).
//!
//! `shm_lock(offset, n, flags)` takes `F_RDLCK` (shared) or `F_WRLCK` (exclusive) or
//! releases bytes `SHM_LOCK_BASE_BYTE + offset .. + n`. Each handle records what it holds:
//! releasing something not held is a no-op, taking something already held in the same
//! mode is a no-op, and changing the mode of a held slot directly (SQLite's "never
//! upgrade or downgrade") is an error.
//!
//! `shm_unmap` (and drop) explicitly releases every `-shm` lock of the handle before
//! closing its descriptor. This matters: a mapping keeps the open file description alive,
//! so a [`ShmRegion`] clone that outlives the handle would otherwise keep its OFD locks.
//!
//! # Differences from SQLite's unix VFS
//! - One `-shm` descriptor and mapping per handle instead of one per inode per process
//!   (OFD locks make the per-process table unnecessary).
//! - `access(EXISTS)` is plain existence (SQLite also calls an empty file "absent").
//! - `delete` of a missing file is `Err(Io)` whose source is `NotFound` (SQLite's
//!   `SQLITE_IOERR_DELETE_NOENT`); callers that do not care may ignore that kind.
//!
//! # Kill hook (crash tests)
//! `UnixVfs::with_kill_hook` (or `FSQLITE_KILL_AT=<op>:<n>[:after]` read by
//! `UnixVfs::from_env`) makes the process `kill(getpid(), SIGKILL)` just before (or
//! just after) its `n`th `KillOp` across all files of the VFS and its clones. Unset, it
//! costs one pointer test per operation. The hook and its types are public because the
//! kill -9 tests of other crates and `fsqlite torture` use them, but they are a
//! crash-testing facility, not part of the supported API: `#[doc(hidden)]`, and they may
//! change without a major version.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};

use crate::os::{self, LockKind};
use crate::shm::{
    SHM_DMS_BYTE, SHM_LOCK, SHM_LOCK_BASE_BYTE, SHM_SHARED, ShmRegion, check_shm_lock_args,
};
use crate::traits::{Vfs, VfsFile, fallback_randomness, iocap};

/// SQLite's `PENDING_BYTE`: write-locked by a connection on its way to EXCLUSIVE.
pub const PENDING_BYTE: u64 = 0x4000_0000;
/// SQLite's `RESERVED_BYTE`: write-locked by the connection holding RESERVED.
pub const RESERVED_BYTE: u64 = PENDING_BYTE + 1;
/// First byte of SQLite's SHARED range (`SHARED_FIRST`).
pub const SHARED_FIRST: u64 = PENDING_BYTE + 2;
/// Length of SQLite's SHARED range (`SHARED_SIZE`).
pub const SHARED_SIZE: u64 = 510;
/// Bytes `PENDING_BYTE ..` covered by all of the database-file lock bytes.
const DB_LOCK_SPAN: u64 = SHARED_FIRST + SHARED_SIZE - PENDING_BYTE;
/// Bytes `PENDING_BYTE ..` covering `PENDING_BYTE` and `RESERVED_BYTE`.
const PENDING_RESERVED_SPAN: u64 = RESERVED_BYTE + 1 - PENDING_BYTE;
/// The `-shm` length the first user truncates to (any length below the 136-byte header
/// means "uninitialized"; 3 is SQLite's marker).
pub const SHM_STALE_LEN: u64 = 3;
/// The `-shm` is grown one block of this many bytes at a time (one byte written at the
/// end of each block), like SQLite.
pub const SHM_GROW_BLOCK: u64 = 4096;
/// Sector size reported by [`UnixFile`] (SQLite's unix default).
pub const UNIX_SECTOR_SIZE: u32 = 4096;
/// Permission bits of a newly created file (SQLite's `SQLITE_DEFAULT_FILE_PERMISSIONS`).
pub const DEFAULT_FILE_MODE: u32 = 0o644;
/// Environment variable read by [`UnixVfs::from_env`].
// Hidden: crash-testing hook (kill -9 tests in fsqlite-wal/fsqlite-mvcc, `fsqlite torture`),
// not part of the supported API; see the module docs.
#[doc(hidden)]
pub const KILL_AT_ENV: &str = "FSQLITE_KILL_AT";

const TRACE: &str = "fsqlite.vfs.unix";

// ---------------------------------------------------------------------------------------
// Kill hook
// ---------------------------------------------------------------------------------------

/// The operations a [`KillHook`] counts.
// Hidden: crash-testing hook (kill -9 tests in fsqlite-wal/fsqlite-mvcc, `fsqlite torture`),
// not part of the supported API; see the module docs.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KillOp {
    /// `VfsFile::write`.
    Write,
    /// `VfsFile::sync` (fsync or fdatasync).
    Sync,
    /// `VfsFile::truncate`.
    Truncate,
    /// `VfsFile::shm_lock` (taking or releasing).
    ShmLock,
    /// Any of the above.
    Any,
}

impl KillOp {
    fn counts(self, op: KillOp) -> bool {
        self == KillOp::Any || self == op
    }
}

impl FromStr for KillOp {
    type Err = FrankenError;

    /// `write`, `sync` (also `fsync`, `fdatasync`), `truncate`, `shm_lock` (or `shmlock`),
    /// `any`; case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "write" => Self::Write,
            "sync" | "fsync" | "fdatasync" => Self::Sync,
            "truncate" => Self::Truncate,
            "shm_lock" | "shmlock" => Self::ShmLock,
            "any" => Self::Any,
            _ => return Err(FrankenError::out_of_range("kill-hook operation", s)),
        })
    }
}

/// Kill the process just before (or, with `after`, just after) its `nth` (1-based)
/// operation of kind `op`, counted across all files of one [`UnixVfs`] and its clones.
// Hidden: crash-testing hook (kill -9 tests in fsqlite-wal/fsqlite-mvcc, `fsqlite torture`),
// not part of the supported API; see the module docs.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KillHook {
    /// Which operations are counted.
    pub op: KillOp,
    /// The 1-based index of the operation at which the process dies.
    pub nth: u64,
    /// Die right after the operation instead of right before it.
    pub after: bool,
}

impl FromStr for KillHook {
    type Err = FrankenError;

    /// Parses `<op>:<n>[:after|:before]`, e.g. `write:3` or `sync:1:after`.
    fn from_str(spec: &str) -> Result<Self> {
        let bad = || FrankenError::out_of_range(format!("{KILL_AT_ENV} (<op>:<n>[:after])"), spec);
        let mut parts = spec.trim().split(':');
        let op: KillOp = parts.next().ok_or_else(bad)?.parse()?;
        let nth: u64 = parts
            .next()
            .and_then(|n| n.parse().ok())
            .filter(|&n| n > 0)
            .ok_or_else(bad)?;
        let after = match parts.next() {
            None | Some("before") => false,
            Some("after") => true,
            Some(_) => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self { op, nth, after })
    }
}

/// The hook plus the operation counter shared by a VFS, its clones and their files.
#[derive(Debug)]
struct KillState {
    hook: KillHook,
    count: AtomicU64,
}

impl KillState {
    /// Counts one `op`. Kills the process now when the hook says "before this one";
    /// returns true when it says "right after this one" (then call [`kill_self`]).
    fn before(&self, op: KillOp) -> bool {
        if !self.hook.op.counts(op) {
            return false;
        }
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if n != self.hook.nth {
            return false;
        }
        if self.hook.after {
            return true;
        }
        kill_self(op, n, "before");
    }
}

/// Sends SIGKILL to this process (abort if, impossibly, that returns).
fn kill_self(op: KillOp, n: u64, when: &str) -> ! {
    tracing::warn!(target: TRACE, ?op, n, when, "kill hook: SIGKILL to self");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// Runs `f` between the hook's "before" and "after" points for `op`.
#[inline]
fn with_kill_point<T>(kill: Option<&KillState>, op: KillOp, f: impl FnOnce() -> T) -> T {
    match kill {
        None => f(),
        Some(k) => {
            let after = k.before(op);
            let out = f();
            if after {
                kill_self(op, k.hook.nth, "after");
            }
            out
        }
    }
}

// ---------------------------------------------------------------------------------------
// The VFS
// ---------------------------------------------------------------------------------------

/// Real files on Linux (see the module docs). Cheap to clone; clones share the kill hook
/// and its counter.
///
/// ```
/// use fsqlite_types::{Cx, LockLevel, SyncFlags, VfsOpenFlags};
/// use fsqlite_vfs::{UnixVfs, Vfs, VfsFile};
///
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("app.db");
/// let cx = Cx::new();
/// let vfs = UnixVfs::new();
/// let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
/// let (mut a, _) = vfs.open(&cx, Some(&path), flags).unwrap();
/// a.write(&cx, b"hello", 0).unwrap();
/// a.sync(&cx, SyncFlags::FULL).unwrap(); // fsync (and, the first time, the directory)
///
/// // Each handle is its own open file description, so its locks conflict with another
/// // handle of this process exactly as with another process (SQLite's lock bytes).
/// let (mut b, _) = vfs.open(&cx, Some(&path), flags).unwrap();
/// a.lock(&cx, LockLevel::Shared).unwrap();
/// a.lock(&cx, LockLevel::Exclusive).unwrap();
/// assert!(b.lock(&cx, LockLevel::Shared).is_err()); // Busy
/// a.unlock(&cx, LockLevel::None).unwrap();
/// b.lock(&cx, LockLevel::Shared).unwrap();
/// ```
#[derive(Clone, Debug, Default)]
pub struct UnixVfs {
    kill: Option<Arc<KillState>>,
}

impl UnixVfs {
    /// A VFS without a kill hook.
    pub fn new() -> Self {
        Self::default()
    }

    /// A VFS whose files kill the process at the point `hook` names.
    #[doc(hidden)] // crash-testing hook (see the module docs)
    pub fn with_kill_hook(hook: KillHook) -> Self {
        Self {
            kill: Some(Arc::new(KillState {
                hook,
                count: AtomicU64::new(0),
            })),
        }
    }

    /// Like [`UnixVfs::new`], unless `FSQLITE_KILL_AT=<op>:<n>[:after]` is set, in which
    /// case like [`UnixVfs::with_kill_hook`]. A malformed value is logged (error) and
    /// ignored.
    #[doc(hidden)] // crash-testing hook (see the module docs)
    pub fn from_env() -> Self {
        match std::env::var(KILL_AT_ENV) {
            Ok(spec) => match spec.parse::<KillHook>() {
                Ok(hook) => Self::with_kill_hook(hook),
                Err(e) => {
                    tracing::error!(target: TRACE, %e, "ignoring malformed {KILL_AT_ENV}");
                    Self::new()
                }
            },
            Err(_) => Self::new(),
        }
    }

    /// The kill hook, if one is set.
    #[doc(hidden)] // crash-testing hook (see the module docs)
    pub fn kill_hook(&self) -> Option<KillHook> {
        self.kill.as_ref().map(|k| k.hook)
    }

    /// How many operations the kill hook has counted so far (0 without a hook).
    #[doc(hidden)] // crash-testing hook (see the module docs)
    pub fn kill_ops_counted(&self) -> u64 {
        self.kill
            .as_ref()
            .map_or(0, |k| k.count.load(Ordering::SeqCst))
    }

    fn open_path(&self, path: &Path, flags: VfsOpenFlags) -> Result<(UnixFile, VfsOpenFlags)> {
        let rw = flags.contains(VfsOpenFlags::READWRITE);
        let create = flags.contains(VfsOpenFlags::CREATE);
        let exclusive = flags.contains(VfsOpenFlags::EXCLUSIVE);
        let mut custom = libc::O_CLOEXEC;
        if flags.contains(VfsOpenFlags::NOFOLLOW) {
            custom |= libc::O_NOFOLLOW;
        }
        let options = |write: bool| {
            let mut o = OpenOptions::new();
            o.read(true)
                .write(write)
                .custom_flags(custom)
                .mode(create_mode(path, flags));
            o
        };
        let cannot_open = |e: &io::Error| {
            FrankenError::cannot_open(path, format!("{e} (open flags {:#x})", flags.bits()))
        };

        let mut out_flags = flags;
        let mut created = false;
        let opened = if create && exclusive {
            created = true;
            options(true).create_new(true).open(path)
        } else if create {
            // Try to create first so we know whether this handle created the file (it
            // then owes its directory an fsync); fall back to opening an existing one.
            let mut attempt = 0;
            loop {
                attempt += 1;
                match options(true).create_new(true).open(path) {
                    Ok(f) => {
                        created = true;
                        break Ok(f);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        match options(true).open(path) {
                            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < 8 => {}
                            other => break other,
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        } else {
            options(rw).open(path)
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if rw && !exclusive && e.raw_os_error() != Some(libc::EISDIR) => {
                // Like SQLite: a read-write open that fails may still work read-only.
                let ro = options(false).open(path).map_err(|_| cannot_open(&e))?;
                tracing::debug!(target: TRACE, path = %path.display(), %e,
                    "read-write open failed; opened read-only");
                created = false;
                out_flags.remove(
                    VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::EXCLUSIVE,
                );
                out_flags.insert(VfsOpenFlags::READONLY);
                ro
            }
            Err(e) => return Err(cannot_open(&e)),
        };

        let delete_on_close = flags.contains(VfsOpenFlags::DELETEONCLOSE);
        if delete_on_close {
            std::fs::remove_file(path)
                .map_err(|e| FrankenError::io("delete", Some(path.to_path_buf()), e))?;
        }
        let readonly = out_flags.contains(VfsOpenFlags::READONLY);
        tracing::trace!(target: TRACE, path = %path.display(), created, readonly, "open");
        Ok((
            UnixFile::new(
                file,
                path.to_path_buf(),
                readonly,
                created && !delete_on_close,
                !delete_on_close,
                self.kill.clone(),
            ),
            out_flags,
        ))
    }

    fn open_anonymous(&self, flags: VfsOpenFlags) -> Result<(UnixFile, VfsOpenFlags)> {
        let dir = std::env::temp_dir();
        let mut last_err = None;
        for _ in 0..16 {
            let mut r = [0u8; 8];
            self.randomness(&mut r);
            let path = dir.join(format!("fsqlite-tmp-{:016x}", u64::from_le_bytes(r)));
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    std::fs::remove_file(&path)
                        .map_err(|e| FrankenError::io("delete", Some(path.clone()), e))?;
                    let mut out = flags;
                    out.insert(VfsOpenFlags::DELETEONCLOSE);
                    return Ok((
                        UnixFile::new(file, path, false, false, false, self.kill.clone()),
                        out,
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(FrankenError::cannot_open(
                        dir,
                        format!("cannot create an anonymous temporary file: {e}"),
                    ));
                }
            }
        }
        Err(FrankenError::cannot_open(
            dir,
            format!(
                "cannot create an anonymous temporary file: {}",
                last_err.map_or_else(String::new, |e| e.to_string())
            ),
        ))
    }
}

/// `path` with `suffix` appended to its last component (`db` -> `db-shm`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The mode for a file this open may create: a WAL or journal gets its database file's
/// permission bits (SQLite's `findCreateFileMode`), anything else [`DEFAULT_FILE_MODE`].
fn create_mode(path: &Path, flags: VfsOpenFlags) -> u32 {
    let suffix = if flags.contains(VfsOpenFlags::WAL) {
        "-wal"
    } else if flags.contains(VfsOpenFlags::MAIN_JOURNAL) {
        "-journal"
    } else {
        return DEFAULT_FILE_MODE;
    };
    let bytes = path.as_os_str().as_encoded_bytes();
    let Some(db) = bytes.strip_suffix(suffix.as_bytes()) else {
        return DEFAULT_FILE_MODE;
    };
    let db = Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(db));
    std::fs::metadata(db).map_or(DEFAULT_FILE_MODE, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
    })
}

impl Vfs for UnixVfs {
    type File = UnixFile;

    fn name(&self) -> &'static str {
        "unix"
    }

    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(UnixFile, VfsOpenFlags)> {
        let flags = flags.validate()?;
        cx.checkpoint()?;
        match path {
            Some(p) => self.open_path(p, flags),
            None => self.open_anonymous(flags),
        }
    }

    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        cx.checkpoint()?;
        std::fs::remove_file(path)
            .map_err(|e| FrankenError::io("delete", Some(path.to_path_buf()), e))?;
        if sync_dir {
            os::sync_parent_dir(path)
                .map_err(|e| FrankenError::io("sync_dir", Some(os::parent_dir(path)), e))?;
        }
        tracing::trace!(target: TRACE, path = %path.display(), sync_dir, "delete");
        Ok(())
    }

    fn access(&self, _cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool> {
        let mode = if flags.contains(AccessFlags::READWRITE) {
            nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK
        } else if flags.contains(AccessFlags::READ) {
            nix::unistd::AccessFlags::R_OK
        } else {
            nix::unistd::AccessFlags::F_OK
        };
        Ok(nix::unistd::access(path, mode).is_ok())
    }

    fn full_pathname(&self, _cx: &Cx, path: &Path) -> Result<PathBuf> {
        if path.as_os_str().is_empty() {
            return Err(FrankenError::out_of_range("path", "\"\" (empty)"));
        }
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| FrankenError::io("full_pathname", Some(path.to_path_buf()), e))?
                .join(path)
        };
        // `components()` drops `.` segments and repeated separators.
        let abs: PathBuf = abs.components().collect();
        Ok(match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => match parent.canonicalize() {
                Ok(dir) => dir.join(name),
                Err(_) => abs,
            },
            _ => abs.canonicalize().unwrap_or(abs),
        })
    }

    fn randomness(&self, buf: &mut [u8]) {
        use std::io::Read;
        let ok = File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(buf))
            .is_ok();
        if !ok {
            fallback_randomness(buf);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// The `-shm` state of one handle.
#[derive(Debug)]
struct Shm {
    file: File,
    path: PathBuf,
    readonly: bool,
    /// Region size fixed by the first `shm_map` (0 until then).
    region_size: u32,
    /// Cached mappings, indexed by region number.
    regions: Vec<Option<ShmRegion>>,
    /// Lock slots held shared / exclusive (bit i = lock index i).
    shared: u8,
    exclusive: u8,
}

impl Shm {
    fn io(&self, op: &'static str, e: io::Error) -> FrankenError {
        FrankenError::io(op, Some(self.path.clone()), e)
    }

    /// Releases every lock this handle holds on the `-shm` (DMS included).
    fn release_all(&mut self) -> io::Result<()> {
        self.shared = 0;
        self.exclusive = 0;
        os::ofd_setlk(&self.file, LockKind::Unlock, 0, 0).map(|_| ())
    }
}

/// An open file of a [`UnixVfs`]. Dropping it releases every lock (database file and
/// `-shm`) and unmaps its `-shm` regions. Clones of returned [`ShmRegion`]s stay mapped
/// but carry no locks; once a later first user has truncated the `-shm` (DMS protocol),
/// touching them faults (`SIGBUS`), so callers drop them with the handle.
#[derive(Debug)]
pub struct UnixFile {
    file: File,
    path: PathBuf,
    readonly: bool,
    /// This handle created the file and has not yet fsynced its directory.
    dir_sync_pending: bool,
    /// The file has a name `<path>-shm` can be derived from (false for anonymous and
    /// delete-on-close files).
    named: bool,
    level: LockLevel,
    shm: Option<Shm>,
    kill: Option<Arc<KillState>>,
}

impl UnixFile {
    fn new(
        file: File,
        path: PathBuf,
        readonly: bool,
        created: bool,
        named: bool,
        kill: Option<Arc<KillState>>,
    ) -> Self {
        Self {
            file,
            path,
            readonly,
            dir_sync_pending: created,
            named,
            level: LockLevel::None,
            shm: None,
            kill,
        }
    }

    /// The path this file was opened with (for an anonymous file, the temporary name it
    /// had before it was unlinked).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of this file's shared-memory file (`<path>-shm`).
    pub fn shm_path(&self) -> PathBuf {
        with_suffix(&self.path, "-shm")
    }

    /// The database-file lock level this handle holds.
    pub fn lock_level(&self) -> LockLevel {
        self.level
    }

    /// True when the file was opened (or fell back to) read-only.
    pub fn is_readonly(&self) -> bool {
        self.readonly
    }

    /// True when this handle's `-shm` is open read-only (false when not open).
    pub fn is_shm_readonly(&self) -> bool {
        self.shm.as_ref().is_some_and(|s| s.readonly)
    }

    fn io(&self, op: &'static str, e: io::Error) -> FrankenError {
        FrankenError::io(op, Some(self.path.clone()), e)
    }

    fn kill(&self) -> Option<&KillState> {
        self.kill.as_deref()
    }

    /// `fsync` (`fdatasync` with `DATAONLY`) of the file itself: the kill point and the
    /// system call of [`VfsFile::sync`] and [`VfsFile::sync_shared`].
    fn sync_file(&self, flags: SyncFlags) -> Result<()> {
        let full = flags.is_full_fsync();
        with_kill_point(self.kill(), KillOp::Sync, || {
            if full {
                self.file.sync_all()
            } else {
                self.file.sync_data()
            }
        })
        .map_err(|e| self.io(if full { "fsync" } else { "fdatasync" }, e))
    }

    /// One OFD lock request on the database file; `Ok(false)` on a conflict.
    fn db_lock(&self, op: &'static str, kind: LockKind, start: u64, len: u64) -> Result<bool> {
        os::ofd_setlk(&self.file, kind, start, len).map_err(|e| self.io(op, e))
    }

    /// Like [`Self::db_lock`] but a conflict is `Busy`.
    fn db_lock_or_busy(&self, kind: LockKind, start: u64, len: u64) -> Result<()> {
        if self.db_lock("lock", kind, start, len)? {
            Ok(())
        } else {
            Err(FrankenError::Busy)
        }
    }

    /// NONE -> SHARED.
    fn lock_shared(&mut self) -> Result<()> {
        self.db_lock_or_busy(LockKind::Read, PENDING_BYTE, 1)?;
        let got = self.db_lock("lock", LockKind::Read, SHARED_FIRST, SHARED_SIZE);
        let released = self.db_lock("unlock", LockKind::Unlock, PENDING_BYTE, 1);
        if !got? {
            released?;
            return Err(FrankenError::Busy);
        }
        if let Err(e) = released {
            let _ = self.db_lock("unlock", LockKind::Unlock, SHARED_FIRST, SHARED_SIZE);
            return Err(e);
        }
        self.level = LockLevel::Shared;
        Ok(())
    }

    /// SHARED or above -> `level` (> SHARED).
    fn lock_above_shared(&mut self, level: LockLevel) -> Result<()> {
        match level {
            LockLevel::Reserved => {
                self.db_lock_or_busy(LockKind::Write, RESERVED_BYTE, 1)?;
            }
            LockLevel::Pending => {
                self.db_lock_or_busy(LockKind::Write, PENDING_BYTE, 1)?;
            }
            LockLevel::Exclusive => {
                if self.level < LockLevel::Pending {
                    self.db_lock_or_busy(LockKind::Write, PENDING_BYTE, 1)?;
                    // From here on we hold PENDING_BYTE: a failure below leaves us at
                    // PENDING, as SQLite does, so that new readers stay out.
                    self.level = LockLevel::Pending;
                }
                if self.shm_is_shared()? {
                    return Err(FrankenError::Busy);
                }
                self.db_lock_or_busy(LockKind::Write, SHARED_FIRST, SHARED_SIZE)?;
            }
            LockLevel::None | LockLevel::Shared => {}
        }
        self.level = level;
        Ok(())
    }

    /// SQLite's `unixIsSharingShmNode`: with the `-shm` open, does anybody else hold its
    /// DMS lock?
    fn shm_is_shared(&self) -> Result<bool> {
        match &self.shm {
            None => Ok(false),
            Some(shm) => Ok(os::ofd_getlk(&shm.file, LockKind::Write, SHM_DMS_BYTE, 1)
                .map_err(|e| shm.io("lock", e))?
                .is_some()),
        }
    }

    /// The `-shm`, opened (with the DMS protocol) if this handle has not opened it yet.
    fn shm_open(&mut self) -> Result<&mut Shm> {
        if self.shm.is_none() {
            let shm = self.open_shm_file()?;
            self.shm = Some(shm);
        }
        self.shm
            .as_mut()
            .ok_or_else(|| FrankenError::internal("shm state vanished"))
    }

    fn open_shm_file(&self) -> Result<Shm> {
        let path = self.shm_path();
        if !self.named {
            return Err(FrankenError::cannot_open(
                path,
                "a temporary or delete-on-close file has no shared-memory file",
            ));
        }
        let mode = os::mode_of(&self.file).map_err(|e| self.io("file_size", e))?;
        let flags = libc::O_CLOEXEC | libc::O_NOFOLLOW;
        let rw = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(flags)
            .mode(mode)
            .open(&path);
        let (file, readonly) = match rw {
            Ok(f) => (f, false),
            Err(rw_err) => {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(flags)
                    .open(&path)
                    .map_err(|_| FrankenError::io("shm_open", Some(path.clone()), rw_err))?;
                (f, true)
            }
        };
        let shm = Shm {
            file,
            path,
            readonly,
            region_size: 0,
            regions: Vec::new(),
            shared: 0,
            exclusive: 0,
        };
        // The dead-man switch (FORMAT.md §5.2). On any failure `shm` is dropped, which
        // closes its descriptor and with it any lock taken here.
        match os::ofd_getlk(&shm.file, LockKind::Write, SHM_DMS_BYTE, 1)
            .map_err(|e| shm.io("shm_open", e))?
        {
            None => {
                if shm.readonly {
                    tracing::debug!(target: TRACE, path = %shm.path.display(),
                        "read-only -shm with no live user: cannot initialize it");
                    return Err(FrankenError::ReadOnly);
                }
                if !os::ofd_setlk(&shm.file, LockKind::Write, SHM_DMS_BYTE, 1)
                    .map_err(|e| shm.io("shm_open", e))?
                {
                    return Err(FrankenError::Busy);
                }
                shm.file
                    .set_len(SHM_STALE_LEN)
                    .map_err(|e| shm.io("shm_open", e))?;
                tracing::debug!(target: TRACE, path = %shm.path.display(),
                    "first -shm user: truncated stale contents");
            }
            Some(LockKind::Write) => return Err(FrankenError::Busy),
            Some(_) => {}
        }
        // Downgrades our write lock atomically, or joins the other readers.
        if !os::ofd_setlk(&shm.file, LockKind::Read, SHM_DMS_BYTE, 1)
            .map_err(|e| shm.io("shm_open", e))?
        {
            return Err(FrankenError::Busy);
        }
        Ok(shm)
    }

    /// Drops the `-shm` state: releases its locks, unmaps, closes.
    fn shm_close(&mut self) -> Result<()> {
        let Some(mut shm) = self.shm.take() else {
            return Ok(());
        };
        let released = shm.release_all();
        let path = shm.path.clone();
        drop(shm);
        released.map_err(|e| FrankenError::io("shm_lock", Some(path), e))
    }
}

impl Drop for UnixFile {
    fn drop(&mut self) {
        if let Err(e) = self.shm_close() {
            tracing::warn!(target: TRACE, %e, "releasing -shm locks on close failed");
        }
        if self.level != LockLevel::None
            && let Err(e) = os::ofd_setlk(&self.file, LockKind::Unlock, 0, 0)
        {
            tracing::warn!(target: TRACE, path = %self.path.display(), %e,
                "releasing database locks on close failed");
        }
    }
}

/// `pwrite` all of `buf` at `offset`, retrying short writes and `EINTR`.
fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "pwrite wrote no bytes",
                ));
            }
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl VfsFile for UnixFile {
    fn read(&self, _cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io("read", e)),
            }
        }
        buf[done..].fill(0);
        Ok(done)
    }

    fn read_vectored(&self, _cx: &Cx, bufs: &mut [&mut [u8]], offset: u64) -> Result<usize> {
        // Linux's UIO_MAXIOV: more buffers take more calls.
        const IOV_MAX: usize = 1024;
        let mut done = 0usize;
        // The first buffer not full yet, and how much of it is.
        let (mut i, mut filled) = (0usize, 0usize);
        while i < bufs.len() {
            let Ok(at) = libc::off_t::try_from(offset + done as u64) else {
                break;
            };
            let n = {
                let count = IOV_MAX.min(bufs.len() - i);
                let (head, tail) = bufs[i..].split_at_mut(1);
                let mut iov = Vec::with_capacity(count);
                iov.push(io::IoSliceMut::new(&mut head[0][filled..]));
                for b in tail.iter_mut().take(IOV_MAX - 1) {
                    iov.push(io::IoSliceMut::new(b));
                }
                match nix::sys::uio::preadv(&self.file, &mut iov, at) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(self.io("preadv", io::Error::from(e))),
                }
            };
            if n == 0 {
                break;
            }
            done += n;
            // Step over what this call filled.
            let mut left = n;
            while left > 0 && i < bufs.len() {
                let room = bufs[i].len() - filled;
                if left < room {
                    filled += left;
                    left = 0;
                } else {
                    left -= room;
                    i += 1;
                    filled = 0;
                }
            }
            while i < bufs.len() && bufs[i].len() == filled {
                i += 1;
                filled = 0;
            }
        }
        // Past the end of the file: zeros.
        if let Some((first, rest)) = bufs.get_mut(i..).and_then(|b| b.split_first_mut()) {
            first[filled..].fill(0);
            for b in rest {
                b.fill(0);
            }
        }
        Ok(done)
    }

    fn write(&mut self, _cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        if self.readonly {
            return Err(FrankenError::ReadOnly);
        }
        with_kill_point(self.kill(), KillOp::Write, || {
            write_all_at(&self.file, buf, offset)
        })
        .map_err(|e| self.io("write", e))
    }

    fn truncate(&mut self, _cx: &Cx, size: u64) -> Result<()> {
        if self.readonly {
            return Err(FrankenError::ReadOnly);
        }
        with_kill_point(self.kill(), KillOp::Truncate, || self.file.set_len(size))
            .map_err(|e| self.io("truncate", e))
    }

    fn sync(&mut self, _cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.sync_file(flags)?;
        if self.dir_sync_pending {
            os::sync_parent_dir(&self.path)
                .map_err(|e| FrankenError::io("sync_dir", Some(os::parent_dir(&self.path)), e))?;
            self.dir_sync_pending = false;
            tracing::trace!(target: TRACE, path = %self.path.display(), "fsynced new file's directory");
        }
        Ok(())
    }

    fn can_sync_shared(&self) -> bool {
        !self.dir_sync_pending
    }

    fn sync_shared(&self, _cx: &Cx, flags: SyncFlags) -> Result<()> {
        if self.dir_sync_pending {
            return Err(FrankenError::internal(format!(
                "{} was created by this handle and its directory is not synced yet: call \
                 sync (can_sync_shared is false)",
                self.path.display()
            )));
        }
        self.sync_file(flags)
    }

    fn start_writeback(&mut self, _cx: &Cx, offset: u64, len: u64) -> Result<()> {
        os::start_writeback(&self.file, offset, len).map_err(|e| self.io("sync_file_range", e))
    }

    fn file_size(&self, _cx: &Cx) -> Result<u64> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| self.io("file_size", e))
    }

    fn lock(&mut self, _cx: &Cx, level: LockLevel) -> Result<()> {
        if self.level >= level {
            return Ok(());
        }
        if self.level == LockLevel::None {
            self.lock_shared()?;
            if level == LockLevel::Shared {
                return Ok(());
            }
            let r = self.lock_above_shared(level);
            if r.is_err() {
                // Leave the handle as we found it.
                let _ = self.db_lock("unlock", LockKind::Unlock, PENDING_BYTE, DB_LOCK_SPAN);
                self.level = LockLevel::None;
            }
            return r;
        }
        self.lock_above_shared(level)
    }

    fn unlock(&mut self, _cx: &Cx, level: LockLevel) -> Result<()> {
        if level > LockLevel::Shared {
            return Err(FrankenError::out_of_range(
                "unlock level (Shared or None)",
                format!("{level:?}"),
            ));
        }
        if self.level <= level {
            return Ok(());
        }
        if self.level > LockLevel::Shared {
            if self.level == LockLevel::Exclusive {
                // Atomic downgrade of the SHARED range to a read lock.
                if !self.db_lock("unlock", LockKind::Read, SHARED_FIRST, SHARED_SIZE)? {
                    return Err(FrankenError::internal(
                        "downgrading EXCLUSIVE to SHARED conflicted with another lock",
                    ));
                }
            }
            self.db_lock(
                "unlock",
                LockKind::Unlock,
                PENDING_BYTE,
                PENDING_RESERVED_SPAN,
            )?;
            self.level = LockLevel::Shared;
        }
        if level == LockLevel::None {
            self.db_lock("unlock", LockKind::Unlock, PENDING_BYTE, DB_LOCK_SPAN)?;
            self.level = LockLevel::None;
        }
        Ok(())
    }

    fn check_reserved_lock(&self, _cx: &Cx) -> Result<bool> {
        if self.level >= LockLevel::Reserved {
            return Ok(true);
        }
        Ok(os::ofd_getlk(&self.file, LockKind::Write, RESERVED_BYTE, 1)
            .map_err(|e| self.io("lock", e))?
            .is_some())
    }

    fn sector_size(&self) -> u32 {
        UNIX_SECTOR_SIZE
    }

    fn device_characteristics(&self) -> u32 {
        iocap::POWERSAFE_OVERWRITE
    }

    fn shm_map(
        &mut self,
        _cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>> {
        if size == 0 || u64::from(size) % SHM_GROW_BLOCK != 0 {
            return Err(FrankenError::out_of_range(
                "shm region size (a positive multiple of 4096)",
                size,
            ));
        }
        let shm = self.shm_open()?;
        if shm.region_size != 0 && shm.region_size != size {
            return Err(FrankenError::out_of_range(
                format!("shm region size (this -shm uses {})", shm.region_size),
                size,
            ));
        }
        let idx = region as usize;
        if let Some(Some(r)) = shm.regions.get(idx) {
            return Ok(Some(r.clone()));
        }
        let start = u64::from(region) * u64::from(size);
        let needed = start + u64::from(size);
        let len = shm
            .file
            .metadata()
            .map_err(|e| shm.io("shm_size", e))?
            .len();
        if len < needed {
            if !extend {
                return Ok(None);
            }
            if shm.readonly {
                return Err(FrankenError::ReadOnly);
            }
            // One zero byte at the end of each new block; never touches existing bytes
            // because the first block written ends at or past the current length.
            for block in len / SHM_GROW_BLOCK..needed / SHM_GROW_BLOCK {
                write_all_at(&shm.file, &[0], block * SHM_GROW_BLOCK + SHM_GROW_BLOCK - 1)
                    .map_err(|e| shm.io("shm_size", e))?;
            }
            tracing::trace!(target: TRACE, path = %shm.path.display(), from = len, to = needed, "grew -shm");
        }
        let mut opts = memmap2::MmapOptions::new();
        opts.offset(start).len(size as usize);
        let map = if shm.readonly {
            opts.map_raw_read_only(&shm.file)
        } else {
            opts.map_raw(&shm.file)
        }
        .map_err(|e| shm.io("shm_map", e))?;
        let r = ShmRegion::from_mmap(Arc::new(map), 0, size as usize)
            .ok_or_else(|| FrankenError::internal("shm mapping is misaligned"))?;
        if shm.regions.len() <= idx {
            shm.regions.resize(idx + 1, None);
        }
        shm.regions[idx] = Some(r.clone());
        shm.region_size = size;
        Ok(Some(r))
    }

    fn shm_lock(&mut self, _cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        let (exclusive, lock) = check_shm_lock_args(offset, n, flags)?;
        let kill = self.kill.clone();
        with_kill_point(kill.as_deref(), KillOp::ShmLock, || {
            let shm = self.shm_open()?;
            let mask = (((1u32 << n) - 1) << offset) as u8;
            let start = SHM_LOCK_BASE_BYTE + u64::from(offset);
            let len = u64::from(n);
            let (same, other) = if exclusive {
                (shm.exclusive, shm.shared)
            } else {
                (shm.shared, shm.exclusive)
            };
            if other & mask != 0 {
                return Err(FrankenError::internal(format!(
                    "shm_lock(offset {offset}, n {n}, flags {flags:#x}): a slot is held in the \
                     other mode; SQLite's rule is release first, never upgrade or downgrade"
                )));
            }
            if lock {
                if same & mask == mask {
                    return Ok(());
                }
                let kind = if exclusive {
                    LockKind::Write
                } else {
                    LockKind::Read
                };
                if !os::ofd_setlk(&shm.file, kind, start, len).map_err(|e| shm.io("shm_lock", e))? {
                    return Err(FrankenError::Busy);
                }
                if exclusive {
                    shm.exclusive |= mask;
                } else {
                    shm.shared |= mask;
                }
            } else {
                if same & mask == 0 {
                    return Ok(());
                }
                os::ofd_setlk(&shm.file, LockKind::Unlock, start, len)
                    .map_err(|e| shm.io("shm_lock", e))?;
                if exclusive {
                    shm.exclusive &= !mask;
                } else {
                    shm.shared &= !mask;
                }
            }
            Ok(())
        })
    }

    fn shm_downgrade(&mut self, _cx: &Cx, offset: u32) -> Result<()> {
        check_shm_lock_args(offset, 1, SHM_LOCK | SHM_SHARED)?;
        let kill = self.kill.clone();
        with_kill_point(kill.as_deref(), KillOp::ShmLock, || {
            let shm = self.shm_open()?;
            let mask = 1u8 << offset;
            if shm.exclusive & mask == 0 {
                return Err(FrankenError::internal(format!(
                    "shm_downgrade(offset {offset}): the slot is not held exclusively"
                )));
            }
            // F_RDLCK over our own F_WRLCK converts it in place: nobody else holds any
            // lock on the byte, so this cannot conflict, and there is no unlocked window.
            let start = SHM_LOCK_BASE_BYTE + u64::from(offset);
            if !os::ofd_setlk(&shm.file, LockKind::Read, start, 1)
                .map_err(|e| shm.io("shm_downgrade", e))?
            {
                return Err(FrankenError::Busy);
            }
            shm.exclusive &= !mask;
            shm.shared |= mask;
            Ok(())
        })
    }

    fn shm_unlock_slots(&mut self, cx: &Cx, exclusive: u8, shared: u8) -> Result<()> {
        let both = exclusive | shared;
        if both == 0 {
            return Ok(());
        }
        let (lo, hi) = (both.trailing_zeros(), both.ilog2());
        let span = (((1u16 << (hi - lo + 1)) - 1) << lo) as u8;
        let plain = match self.shm.as_ref() {
            // One F_UNLCK over lo..=hi releases only this descriptor's locks, so it is
            // exact when every slot of the span that this handle holds is to be released
            // (and each in the mode the caller names).
            Some(shm) => {
                exclusive & shared != 0
                    || shm.exclusive & exclusive != exclusive
                    || shm.shared & shared != shared
                    || (shm.exclusive | shm.shared) & span & !both != 0
            }
            None => true,
        };
        if plain {
            return crate::traits::unlock_slots_one_by_one(self, cx, exclusive, shared);
        }
        let kill = self.kill.clone();
        with_kill_point(kill.as_deref(), KillOp::ShmLock, || {
            let shm = self.shm_open()?;
            let start = SHM_LOCK_BASE_BYTE + u64::from(lo);
            os::ofd_setlk(&shm.file, LockKind::Unlock, start, u64::from(hi - lo + 1))
                .map_err(|e| shm.io("shm_unlock_slots", e))?;
            shm.exclusive &= !exclusive;
            shm.shared &= !shared;
            Ok(())
        })
    }

    fn shm_unmap(&mut self, _cx: &Cx, delete: bool) -> Result<()> {
        if self.shm.is_none() {
            return Ok(());
        }
        let path = self.shm_path();
        self.shm_close()?;
        if delete {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(FrankenError::io("delete", Some(path), e)),
            }
        }
        Ok(())
    }
}
