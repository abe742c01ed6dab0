//! # fsqlite-error
//!
//! One error type, [`FrankenError`], for every layer of the fsqlite WAL core. Each error
//! carries SQLite's primary result code ([`FrankenError::error_code`]), SQLite's extended
//! code where one exists ([`FrankenError::extended_code`]), a sentence a user can act on
//! (`Display`), and where it helps a next step ([`FrankenError::suggestion`]).
//!
//! ```
//! use fsqlite_error::{ErrorCode, FrankenError};
//!
//! let e = FrankenError::BusyRecovery;
//! assert_eq!(e.error_code(), ErrorCode::Busy);
//! assert_eq!(e.extended_code(), 261); // SQLITE_BUSY_RECOVERY
//! assert!(e.is_transient());
//! assert!(e.suggestion().is_some());
//! ```

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

use std::path::PathBuf;

/// `Result` with [`FrankenError`] as the default error.
pub type Result<T, E = FrankenError> = std::result::Result<T, E>;

/// SQLite's primary result codes, with SQLite's numeric values.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Ok = 0,
    Error = 1,
    Internal = 2,
    Perm = 3,
    Abort = 4,
    Busy = 5,
    Locked = 6,
    NoMem = 7,
    ReadOnly = 8,
    Interrupt = 9,
    IoErr = 10,
    Corrupt = 11,
    NotFound = 12,
    Full = 13,
    CantOpen = 14,
    Protocol = 15,
    Empty = 16,
    Schema = 17,
    TooBig = 18,
    Constraint = 19,
    Mismatch = 20,
    Misuse = 21,
    NoLfs = 22,
    Auth = 23,
    Format = 24,
    Range = 25,
    NotADb = 26,
    Notice = 27,
    Warning = 28,
    Row = 100,
    Done = 101,
}

impl ErrorCode {
    /// The numeric value SQLite uses.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }
}

/// SQLite's extended result codes that this crate produces.
pub mod extended {
    /// `SQLITE_BUSY_RECOVERY`
    pub const BUSY_RECOVERY: i32 = 261;
    /// `SQLITE_BUSY_SNAPSHOT`
    pub const BUSY_SNAPSHOT: i32 = 517;
    /// `SQLITE_BUSY_TIMEOUT`
    pub const BUSY_TIMEOUT: i32 = 773;
    /// SQLITE_ERROR_SNAPSHOT: the snapshot asked for is no longer available.
    pub const ERROR_SNAPSHOT: i32 = 769;
    /// `SQLITE_IOERR_READ`
    pub const IOERR_READ: i32 = 266;
    /// `SQLITE_IOERR_SHORT_READ`
    pub const IOERR_SHORT_READ: i32 = 522;
    /// `SQLITE_IOERR_WRITE`
    pub const IOERR_WRITE: i32 = 778;
    /// `SQLITE_IOERR_FSYNC`
    pub const IOERR_FSYNC: i32 = 1034;
    /// `SQLITE_IOERR_TRUNCATE`
    pub const IOERR_TRUNCATE: i32 = 1546;
    /// `SQLITE_IOERR_FSTAT`
    pub const IOERR_FSTAT: i32 = 1802;
    /// `SQLITE_IOERR_LOCK`
    pub const IOERR_LOCK: i32 = 3850;
    /// `SQLITE_IOERR_DELETE`
    pub const IOERR_DELETE: i32 = 2570;
    /// `SQLITE_IOERR_SHMOPEN`
    pub const IOERR_SHMOPEN: i32 = 4618;
    /// `SQLITE_IOERR_SHMSIZE`
    pub const IOERR_SHMSIZE: i32 = 4874;
    /// `SQLITE_IOERR_SHMLOCK`
    pub const IOERR_SHMLOCK: i32 = 5130;
    /// `SQLITE_IOERR_SHMMAP`
    pub const IOERR_SHMMAP: i32 = 5386;
    /// `SQLITE_IOERR_DIR_FSYNC`
    pub const IOERR_DIR_FSYNC: i32 = 1290;
    /// `SQLITE_CORRUPT_VTAB` is not used; `SQLITE_CANTOPEN_NOTEMPDIR` likewise.
    /// `SQLITE_READONLY_RECOVERY`
    pub const READONLY_RECOVERY: i32 = 264;
    /// `SQLITE_READONLY_CANTINIT`
    pub const READONLY_CANTINIT: i32 = 1288;
}

/// Every error the fsqlite crates return.
///
/// `Display` is one sentence saying what happened (and to which file, offset or page);
/// [`FrankenError::suggestion`] says what to do next.
///
/// ```
/// use fsqlite_error::{ErrorCode, FrankenError, extended};
///
/// // A BEGIN CONCURRENT transaction that lost a conflict: retry from a fresh begin.
/// let e = FrankenError::ConcurrentConflict { item: "page 7".into(), frame: 42, snapshot: 40 };
/// assert_eq!(e.error_code(), ErrorCode::Busy);
/// assert_eq!(e.extended_code(), extended::BUSY_SNAPSHOT); // 517
/// assert!(e.to_string().contains("page 7"));
/// assert!(e.suggestion().unwrap().contains("begin_concurrent"));
///
/// // An OS error keeps its io::Error as source(); ENOSPC becomes Full.
/// let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
/// let e = FrankenError::io("write", Some("app.db-wal".into()), full);
/// assert!(matches!(e, FrankenError::Full));
/// assert_eq!(e.error_code(), ErrorCode::Full);
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrankenError {
    /// Another connection holds a lock we need.
    #[error("the database is busy: another connection holds a lock this operation needs")]
    Busy,
    /// Another connection is running WAL recovery.
    #[error("the database is busy: another connection is running WAL recovery")]
    BusyRecovery,
    /// The write transaction's snapshot is older than the newest commit.
    #[error("cannot write: another connection committed since this read snapshot was taken")]
    BusySnapshot,
    /// A `BEGIN CONCURRENT` transaction lost a write-write or read-write conflict: an item
    /// it read or wrote (a page, or the database size) has a commit newer than its
    /// snapshot. SQLITE_BUSY_SNAPSHOT (517); nothing of the transaction was written.
    #[error(
        "concurrent transaction conflict: {item} has a commit at WAL frame {frame}, newer than this transaction's snapshot (frame {snapshot}); nothing was written"
    )]
    ConcurrentConflict {
        /// What conflicted: `page N` or `the database size`.
        item: String,
        /// The commit frame of the newer commit that touched it.
        frame: u32,
        /// The transaction's snapshot (`mxFrame` at its begin).
        snapshot: u32,
    },
    /// A read transaction was asked for on a snapshot the WAL no longer holds (SQLite's
    /// SQLITE_ERROR_SNAPSHOT, 769): a checkpoint copied frames past it into the database,
    /// or the WAL was restarted since, or the handle belongs to another WAL.
    #[error("the snapshot is no longer available: {reason}")]
    SnapshotUnavailable {
        /// Why, in words.
        reason: String,
    },
    /// A lock held by this same connection conflicts (SQLite's SQLITE_LOCKED).
    #[error("the database is locked by an open transaction on this connection")]
    Locked,
    /// The database file is damaged.
    #[error("the database file is corrupt: {detail}")]
    DatabaseCorrupt { detail: String },
    /// The WAL (or WAL-index) is damaged beyond the valid-prefix rule.
    #[error("the write-ahead log is corrupt: {detail}")]
    WalCorrupt { detail: String },
    /// A value is outside the range the format allows.
    #[error("{what} is out of range: {value}")]
    OutOfRange { what: String, value: String },
    /// A bug or an impossible state.
    #[error("internal error: {0}")]
    Internal(String),
    /// BEGIN CONCURRENT was asked for where multi-writer mode is off.
    #[error("BEGIN CONCURRENT is unavailable: this database is open in file-lock-only mode")]
    ConcurrentUnavailable,
    /// The operation is not supported by this VFS or build.
    #[error("the operation is not supported here")]
    Unsupported,
    /// The file or connection is read-only.
    #[error("attempt to write a read-only database")]
    ReadOnly,
    /// A file could not be opened (or is not what it should be).
    #[error("cannot open {}: {detail}", path.display())]
    CannotOpen { path: PathBuf, detail: String },
    /// An operating-system I/O error.
    #[error("I/O error during {op}{}: {source}", path.as_ref().map(|p| format!(" on {}", p.display())).unwrap_or_default())]
    Io {
        op: &'static str,
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    /// The disk is full.
    #[error("the disk is full")]
    Full,
    /// A locking protocol could not make progress.
    #[error("locking protocol error: the WAL-index kept changing under this reader")]
    Protocol,
    /// The `Cx` was cancelled or ran past its deadline.
    #[error("interrupted: the operation was cancelled or ran past its deadline")]
    Interrupted,
    /// A read returned fewer bytes than asked for.
    #[error("short read: the file ended before the requested bytes")]
    ShortRead,
    /// An earlier fsync or write on this handle failed; nothing more is trusted until reopen.
    #[error("an earlier I/O failure ({first}) latched this handle; nothing more is written")]
    PreviousIo { first: String },
}

impl FrankenError {
    /// Builds [`FrankenError::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// Builds [`FrankenError::Io`], mapping `ENOSPC` to [`FrankenError::Full`].
    pub fn io(op: &'static str, path: Option<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::StorageFull {
            return Self::Full;
        }
        Self::Io { op, path, source }
    }

    /// Builds [`FrankenError::WalCorrupt`].
    pub fn wal_corrupt(detail: impl Into<String>) -> Self {
        Self::WalCorrupt {
            detail: detail.into(),
        }
    }

    /// Builds [`FrankenError::DatabaseCorrupt`].
    pub fn db_corrupt(detail: impl Into<String>) -> Self {
        Self::DatabaseCorrupt {
            detail: detail.into(),
        }
    }

    /// Builds [`FrankenError::OutOfRange`].
    pub fn out_of_range(what: impl Into<String>, value: impl std::fmt::Display) -> Self {
        Self::OutOfRange {
            what: what.into(),
            value: value.to_string(),
        }
    }

    /// Builds [`FrankenError::CannotOpen`].
    pub fn cannot_open(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Self::CannotOpen {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// SQLite's primary result code for this error.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Self::Busy
            | Self::BusyRecovery
            | Self::BusySnapshot
            | Self::ConcurrentConflict { .. } => ErrorCode::Busy,
            Self::Locked => ErrorCode::Locked,
            Self::DatabaseCorrupt { .. } | Self::WalCorrupt { .. } => ErrorCode::Corrupt,
            Self::OutOfRange { .. } => ErrorCode::Range,
            Self::Internal(_) => ErrorCode::Internal,
            Self::ConcurrentUnavailable | Self::SnapshotUnavailable { .. } => ErrorCode::Error,
            Self::Unsupported => ErrorCode::Misuse,
            Self::ReadOnly => ErrorCode::ReadOnly,
            Self::CannotOpen { .. } => ErrorCode::CantOpen,
            Self::Io { .. } | Self::ShortRead | Self::PreviousIo { .. } => ErrorCode::IoErr,
            Self::Full => ErrorCode::Full,
            Self::Protocol => ErrorCode::Protocol,
            Self::Interrupted => ErrorCode::Interrupt,
        }
    }

    /// SQLite's extended result code (equal to the primary code where SQLite has none).
    pub fn extended_code(&self) -> i32 {
        match self {
            Self::BusyRecovery => extended::BUSY_RECOVERY,
            Self::BusySnapshot | Self::ConcurrentConflict { .. } => extended::BUSY_SNAPSHOT,
            Self::ShortRead => extended::IOERR_SHORT_READ,
            Self::SnapshotUnavailable { .. } => extended::ERROR_SNAPSHOT,
            Self::Io { op, .. } => match *op {
                "read" => extended::IOERR_READ,
                "write" => extended::IOERR_WRITE,
                "sync" | "fsync" | "fdatasync" => extended::IOERR_FSYNC,
                "truncate" => extended::IOERR_TRUNCATE,
                "fstat" | "file_size" => extended::IOERR_FSTAT,
                "lock" | "unlock" => extended::IOERR_LOCK,
                "delete" => extended::IOERR_DELETE,
                "sync_dir" => extended::IOERR_DIR_FSYNC,
                "shm_open" => extended::IOERR_SHMOPEN,
                "shm_size" => extended::IOERR_SHMSIZE,
                "shm_lock" => extended::IOERR_SHMLOCK,
                "shm_map" => extended::IOERR_SHMMAP,
                _ => ErrorCode::IoErr.as_i32(),
            },
            Self::PreviousIo { .. } => extended::IOERR_FSYNC,
            other => other.error_code().as_i32(),
        }
    }

    /// What the user can do next, where there is something useful to say.
    pub fn suggestion(&self) -> Option<&'static str> {
        Some(match self {
            Self::Busy => {
                "retry later, or raise the busy timeout so the call waits for the other connection"
            }
            Self::BusyRecovery => {
                "another connection is rebuilding the WAL-index; retry in a moment"
            }
            Self::BusySnapshot => {
                "end this transaction and begin a new one to see the newest commit, then retry the write"
            }
            Self::ConcurrentConflict { .. } => {
                "retry the whole transaction from a fresh begin_concurrent: it then reads the newer commit"
            }
            Self::SnapshotUnavailable { .. } => {
                "take a new snapshot; to keep one available, keep a read transaction open on it (checkpoints do not pass an open reader), and after a restart call recover_snapshots first"
            }
            Self::Locked => "finish or roll back the open transaction on this connection first",
            Self::DatabaseCorrupt { .. } => {
                "keep the -wal file (do not delete it); run `fsqlite verify` and restore from a backup if the database file is damaged"
            }
            Self::WalCorrupt { .. } => {
                "run `fsqlite verify` to see where the valid prefix ends; committed frames before it are safe"
            }
            Self::ConcurrentUnavailable => {
                "use plain BEGIN, or open the database where the .fsqlite-shm file can be created (hybrid mode)"
            }
            Self::Full => {
                "free disk space, then reopen the database; nothing acknowledged was lost"
            }
            Self::ReadOnly => {
                "open the database read-write, or check the file and directory permissions"
            }
            Self::CannotOpen { .. } => {
                "check that the path exists, is a SQLite database in WAL mode, and is readable"
            }
            Self::Io { .. } => "check the disk and the file system; reopen the database to recover",
            Self::PreviousIo { .. } => {
                "close and reopen the database: recovery will rebuild state from what is durable"
            }
            Self::Protocol => "retry; if it persists, another process may be misbehaving",
            Self::Interrupted => "the caller cancelled the operation or its deadline passed",
            Self::ShortRead => "the file is shorter than expected; run `fsqlite verify`",
            Self::OutOfRange { .. } => "check the value against the documented range",
            Self::Internal(_) | Self::Unsupported => return None,
        })
    }

    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Busy | Self::BusyRecovery | Self::Locked | Self::Interrupted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_codes() {
        assert_eq!(
            FrankenError::ConcurrentUnavailable.error_code(),
            ErrorCode::Error
        );
        assert_eq!(FrankenError::BusyRecovery.error_code(), ErrorCode::Busy);
        assert_eq!(FrankenError::BusyRecovery.extended_code(), 261);
        assert_eq!(FrankenError::BusySnapshot.extended_code(), 517);
        assert_eq!(FrankenError::ShortRead.extended_code(), 522);
        assert_eq!(
            FrankenError::wal_corrupt("x").error_code(),
            ErrorCode::Corrupt
        );
        assert_eq!(
            FrankenError::db_corrupt("x").error_code(),
            ErrorCode::Corrupt
        );
        assert_eq!(
            FrankenError::out_of_range("a", 1).error_code(),
            ErrorCode::Range
        );
        assert_eq!(
            FrankenError::internal("x").error_code(),
            ErrorCode::Internal
        );
        assert_eq!(FrankenError::Full.error_code(), ErrorCode::Full);
        assert_eq!(FrankenError::ReadOnly.error_code(), ErrorCode::ReadOnly);
        assert_eq!(FrankenError::Protocol.error_code(), ErrorCode::Protocol);
        assert_eq!(FrankenError::Interrupted.error_code(), ErrorCode::Interrupt);
        assert_eq!(ErrorCode::NotADb as i32, 26);
        assert_eq!(ErrorCode::Row as i32, 100);
        assert_eq!(ErrorCode::Done as i32, 101);
    }

    #[test]
    fn suggestions_exist_where_required() {
        for e in [
            FrankenError::ConcurrentUnavailable,
            FrankenError::BusyRecovery,
            FrankenError::Busy,
            FrankenError::db_corrupt("x"),
            FrankenError::Full,
        ] {
            assert!(e.suggestion().is_some(), "{e:?}");
        }
    }

    #[test]
    fn enospc_maps_to_full_and_io_keeps_source() {
        let e = FrankenError::io("write", None, std::io::Error::from_raw_os_error(28));
        assert!(matches!(e, FrankenError::Full));
        let e = FrankenError::io(
            "write",
            Some("/x/y".into()),
            std::io::Error::from_raw_os_error(5),
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.to_string().contains("/x/y"));
        assert_eq!(e.extended_code(), extended::IOERR_WRITE);
    }

    #[test]
    fn transient() {
        assert!(FrankenError::Busy.is_transient());
        assert!(!FrankenError::Full.is_transient());
        assert!(!FrankenError::wal_corrupt("x").is_transient());
    }
}
