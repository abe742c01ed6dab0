//! The files of one database, read-only file access, the CLI's error type and its exit
//! statuses.
//!
//! | file | name | written by |
//! |---|---|---|
//! | database | `<db>` | checkpoints |
//! | WAL | `<db>-wal` | writers |
//! | WAL-index | `<db>-shm` | every connection (memory-mapped) |
//! | hybrid coordinator record | `<db>.fsqlite-shm` | fsqlite-mvcc's coordinator (hybrid mode only) |
//!
//! Exit statuses ([`ExitStatus`]): 0 success, 1 a check failed (or a crash run lost a
//! commit), 2 bad command line (clap), 3 the command could not run (an error), 4 refused
//! or busy because another process is using the database.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fsqlite_error::FrankenError;
use serde::Serialize;

/// Suffix of the WAL file.
pub const WAL_SUFFIX: &str = "-wal";
/// Suffix of the WAL-index file.
pub const SHM_SUFFIX: &str = "-shm";
/// Suffix of the hybrid-mode coordinator record (defined by fsqlite-mvcc).
pub const HYBRID_SUFFIX: &str = ".fsqlite-shm";

/// The process exit statuses of `fsqlite` (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// 0: the command did what was asked (verify: no check failed).
    Success,
    /// 1: a check failed, a commit was lost, or SQLite's integrity check failed.
    CheckFailed,
    /// 2: bad command line (clap's own status).
    Usage,
    /// 3: the command could not run (not a database, I/O error, damaged beyond use, …).
    Error,
    /// 4: refused or busy: another process is using the database.
    Refused,
}

impl ExitStatus {
    /// The numeric status.
    pub const fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::CheckFailed => 1,
            Self::Usage => 2,
            Self::Error => 3,
            Self::Refused => 4,
        }
    }
}

/// An error of a CLI command: what happened (one sentence), what to do, and the exit status.
#[derive(Debug)]
pub enum CliError {
    /// An error from the fsqlite crates.
    Franken(FrankenError),
    /// The command refused to act (e.g. the database is in use).
    Refused {
        /// What happened, naming the file.
        what: String,
        /// What the user can do.
        suggestion: String,
    },
    /// A command-level failure (e.g. a child process misbehaved).
    Failed {
        /// What happened.
        what: String,
        /// What the user can do, if anything.
        suggestion: Option<String>,
    },
}

impl CliError {
    /// A [`CliError::Failed`] with a suggestion.
    pub fn failed(what: impl Into<String>, suggestion: impl Into<String>) -> Self {
        Self::Failed {
            what: what.into(),
            suggestion: Some(suggestion.into()),
        }
    }

    /// The sentence describing the error.
    pub fn message(&self) -> String {
        match self {
            Self::Franken(e) => e.to_string(),
            Self::Refused { what, .. } | Self::Failed { what, .. } => what.clone(),
        }
    }

    /// What to do next, if there is something useful to say.
    pub fn suggestion(&self) -> Option<String> {
        match self {
            Self::Franken(e) => e.suggestion().map(str::to_owned),
            Self::Refused { suggestion, .. } => Some(suggestion.clone()),
            Self::Failed { suggestion, .. } => suggestion.clone(),
        }
    }

    /// The exit status for this error.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Franken(
                FrankenError::Busy | FrankenError::BusyRecovery | FrankenError::Locked,
            )
            | Self::Refused { .. } => ExitStatus::Refused,
            Self::Franken(_) | Self::Failed { .. } => ExitStatus::Error,
        }
    }

    /// SQLite's primary and extended result codes, where the error has them.
    pub fn codes(&self) -> Option<(i32, i32)> {
        match self {
            Self::Franken(e) => Some((e.error_code() as i32, e.extended_code())),
            _ => None,
        }
    }

    /// The stable JSON form: `{"error": {"message", "suggestion", "exit_status",
    /// "sqlite_code", "sqlite_extended_code"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let (code, ext) = self.codes().unzip();
        serde_json::json!({
            "error": {
                "message": self.message(),
                "suggestion": self.suggestion(),
                "exit_status": self.exit_status().code(),
                "sqlite_code": code,
                "sqlite_extended_code": ext,
            }
        })
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for CliError {}

impl From<FrankenError> for CliError {
    fn from(e: FrankenError) -> Self {
        Self::Franken(e)
    }
}

/// The result type of the CLI library.
pub type CliResult<T> = Result<T, CliError>;

/// The paths of one database's files (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DbFiles {
    /// The database file as given.
    pub db: PathBuf,
    /// `<db>-wal`.
    pub wal: PathBuf,
    /// `<db>-shm`.
    pub shm: PathBuf,
    /// `<db>.fsqlite-shm`.
    pub hybrid: PathBuf,
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl DbFiles {
    /// The files of the database at `db`.
    pub fn new(db: impl Into<PathBuf>) -> Self {
        let db = db.into();
        Self {
            wal: suffixed(&db, WAL_SUFFIX),
            shm: suffixed(&db, SHM_SUFFIX),
            hybrid: suffixed(&db, HYBRID_SUFFIX),
            db,
        }
    }

    /// Checks that the database path names an existing regular file; the error says what
    /// to do.
    pub fn require_db_file(&self) -> CliResult<u64> {
        match std::fs::metadata(&self.db) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(FrankenError::cannot_open(
                &self.db,
                "it is not a regular file (a directory or a device?); give the path of the database file",
            )
            .into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FrankenError::cannot_open(
                &self.db,
                "no such file; check the path (fsqlite never creates a database here)",
            )
            .into()),
            Err(e) => Err(FrankenError::io("stat", Some(self.db.clone()), e).into()),
        }
    }
}

/// Size of a file, `None` when it does not exist.
pub fn file_size(path: &Path) -> CliResult<Option<u64>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FrankenError::io("stat", Some(path.to_path_buf()), e).into()),
    }
}

/// Opens `path` read-only; `None` when it does not exist.
pub fn open_read_only(path: &Path) -> CliResult<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            Err(FrankenError::cannot_open(path, format!("cannot open it read-only: {e}")).into())
        }
    }
}

/// Reads up to `len` bytes at `offset` (fewer at the end of the file).
pub fn read_at(file: &File, path: &Path, offset: u64, len: usize) -> CliResult<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrankenError::io("read", Some(path.to_path_buf()), e).into()),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `0x`-prefixed 8-digit hex of a `u32`.
pub fn hex32(v: u32) -> String {
    format!("{v:#010x}")
}
