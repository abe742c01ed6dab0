//! What a database engine plugs into the WAL layer: a busy handler (SQLite's
//! `sqlite3_busy_handler`), a commit hook (SQLite's `sqlite3_wal_hook`), and the
//! `PRAGMA`-like status a tool reads in one call. Shared by [`crate::Wal`] and
//! `fsqlite_mvcc::Coordinator`.
//!
//! ```
//! use std::sync::Arc;
//! use fsqlite_wal::CheckpointMode;
//! use fsqlite_wal::hooks::{BusyHandler, CommitAction, CommitHook, CommitInfo};
//!
//! // Keep waiting for a lock for at most 20 attempts (the caller's own policy).
//! let busy: BusyHandler = Arc::new(|attempt: u32| attempt < 20);
//! assert!(busy(3) && !busy(20));
//! // A checkpoint policy: a TRUNCATE checkpoint once the WAL holds 500 frames.
//! let hook: CommitHook = Arc::new(|c: &CommitInfo<'_>| {
//!     if c.wal_frames >= 500 {
//!         CommitAction::Checkpoint(CheckpointMode::Truncate)
//!     } else {
//!         CommitAction::Nothing
//!     }
//! });
//! let info = CommitInfo { db_path: std::path::Path::new("app.db"), wal_frames: 12, commit_frame: 12, db_size: 3 };
//! assert_eq!(hook(&info), CommitAction::Nothing);
//! ```

use std::path::Path;
use std::sync::Arc;

use crate::checkpoint::CheckpointMode;
use crate::locking_mode::LockingMode;

/// Decides whether a lock wait goes on: called with the number of earlier calls for the
/// same wait (0 first), it returns `true` to wait a little more and `false` to give up
/// with `Busy`, like `sqlite3_busy_handler`'s callback. Installed beside the fixed
/// `busy_timeout`, it replaces it for the waits it covers.
pub type BusyHandler = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// What a [`CommitHook`] is told after a durable commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo<'a> {
    /// The database (absolute path).
    pub db_path: &'a Path,
    /// Frames in the WAL after the commit (`mxFrame`: what `sqlite3_wal_hook` passes).
    pub wal_frames: u32,
    /// The commit frame of this commit.
    pub commit_frame: u32,
    /// The database size in pages after it.
    pub db_size: u32,
}

/// What a [`CommitHook`] asks the connection to do once it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitAction {
    /// Nothing more.
    Nothing,
    /// Run a checkpoint of this mode now, on the committing thread, after the commit's
    /// locks are released (a `Busy` answer is ignored; the commit stands either way).
    /// The coordinator of `fsqlite-mvcc` does not checkpoint during its life and ignores it.
    Checkpoint(CheckpointMode),
}

/// Called after each durable, published commit (SQLite's `sqlite3_wal_hook`), on the
/// committing thread, before the commit returns; a checkpoint policy or a replicator
/// builds on it. Its answer can ask for a checkpoint ([`CommitAction`]). It must not call
/// back into the same connection. SQLite's auto-checkpoint is [`auto_checkpoint`].
pub type CommitHook = Arc<dyn Fn(&CommitInfo<'_>) -> CommitAction + Send + Sync>;

/// SQLite's built-in policy (`sqlite3_wal_autocheckpoint`) as a [`CommitHook`]: a PASSIVE
/// checkpoint after every commit that leaves at least `frames` frames in the WAL. A `Wal`
/// opened with `WalOptions::auto_checkpoint = Some(n)` starts with this hook installed;
/// installing another hook replaces it, as in SQLite.
///
/// ```
/// use fsqlite_wal::CheckpointMode;
/// use fsqlite_wal::hooks::{CommitAction, CommitInfo, auto_checkpoint};
///
/// let hook = auto_checkpoint(1000);
/// let at = |frames| CommitInfo { db_path: "a.db".as_ref(), wal_frames: frames, commit_frame: frames, db_size: 1 };
/// assert_eq!(hook(&at(999)), CommitAction::Nothing);
/// assert_eq!(hook(&at(1000)), CommitAction::Checkpoint(CheckpointMode::Passive));
/// ```
pub fn auto_checkpoint(frames: u32) -> CommitHook {
    Arc::new(move |c: &CommitInfo<'_>| {
        if frames > 0 && c.wal_frames >= frames {
            CommitAction::Checkpoint(CheckpointMode::Passive)
        } else {
            CommitAction::Nothing
        }
    })
}

/// Everything a tool asks `PRAGMA`s for, from one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalStatus {
    /// Frames in the WAL (`mxFrame` of the newest published header).
    pub wal_frames: u32,
    /// Frames already copied into the database (`nBackfill`).
    pub backfilled: u32,
    /// `nBackfillAttempted`.
    pub backfill_attempted: u32,
    /// Database size in pages after the newest commit.
    pub db_size: u32,
    /// Page size.
    pub page_size: u32,
    /// The read marks (`aReadMark[0..5]`) with whether another connection holds each
    /// one now (`in_use`: its lock could not be taken exclusively).
    pub read_marks: Vec<ReadMarkStatus>,
    /// The connection's locking mode.
    pub locking_mode: LockingMode,
    /// The WAL header salts of the current generation.
    pub salts: [u32; 2],
}

/// One read-mark slot in [`WalStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadMarkStatus {
    /// Slot index (0..5).
    pub slot: usize,
    /// `aReadMark[slot]` (`0xFFFFFFFF` = unused).
    pub mark: u32,
    /// Held by some connection (this one included) right now.
    pub in_use: bool,
}
