//! Synchronous replication from the commit path: a [`CommitHook`] that returns (and so
//! lets the commit return) only once the commit is stored in the replica.
//!
//! The hook runs after each durable, published commit, on the committing thread, before
//! the commit returns (for `fsqlite_mvcc::Coordinator`, for every transaction of a group
//! commit, before any of them returns). The first call of a batch ships everything
//! committed so far through the [`Follower`] (one file for the whole batch with the
//! default [`FollowOptions::max_txids_per_file`](crate::follow::FollowOptions)); the
//! other calls of the batch find their commit already stored and return at once. So the
//! cost of an upload is shared by every transaction in a batch.
//!
//! An upload that fails is retried (back-off up to 1 s) until it is stored, so a commit
//! is never acknowledged before it is in the replica; with
//! [`SyncReplication::with_timeout`] the hook gives up after that long instead, logs an
//! error, and counts the commit in [`SyncStatus::unacknowledged`].
//!
//! ```
//! use std::sync::Arc;
//! use fsqlite_replicate::follow::{FollowOptions, Follower};
//! use fsqlite_replicate::replica::{DirObjects, Replica, Target};
//! use fsqlite_replicate::sync::SyncReplication;
//! use fsqlite_types::{Cx, PageNumber};
//! use fsqlite_vfs::UnixVfs;
//! use fsqlite_wal::{Wal, WalOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let db = dir.path().join("app.db");
//! let cx = Cx::new();
//! let vfs = Arc::new(UnixVfs::new());
//! let mut wal = Wal::open(&cx, Arc::clone(&vfs), &db, WalOptions::default()).unwrap();
//! let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "");
//! let follower = Follower::open(Arc::clone(&vfs), &db, replica, FollowOptions::default()).unwrap();
//! let sync = SyncReplication::new(follower);
//! wal.set_commit_hook(Some(sync.hook()));
//! let mut tx = wal.begin_write(&cx).unwrap();
//! tx.write_page(&cx, PageNumber::new(1).unwrap(), &[7u8; 4096]).unwrap();
//! tx.commit(&cx, 1).unwrap(); // returns once the commit is in the replica
//! let (img, _) = sync.with_follower(|f| f.sink().restore_image(Target::Latest)).unwrap();
//! assert_eq!(&img[..4096], &[7u8; 4096][..]);
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fsqlite_vfs::Vfs;
use fsqlite_wal::hooks::{CommitAction, CommitHook, CommitInfo};
use parking_lot::Mutex;

use crate::follow::{Event, Follower, Sink};

const TRACE: &str = "fsqlite.replicate.sync";

/// Counters of a [`SyncReplication`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStatus {
    /// Commits acknowledged after their batch was stored.
    pub acknowledged: u64,
    /// Hook calls that shipped (one per stored batch).
    pub uploads: u64,
    /// Upload attempts that failed and were retried.
    pub retries: u64,
    /// Commits the hook gave up on (only with a timeout).
    pub unacknowledged: u64,
}

/// Synchronous replication through a commit hook (see the module docs).
pub struct SyncReplication<V: Vfs, S: Sink> {
    follower: Mutex<Follower<V, S>>,
    timeout: Option<Duration>,
    acknowledged: AtomicU64,
    uploads: AtomicU64,
    retries: AtomicU64,
    unacknowledged: AtomicU64,
}

impl<V: Vfs + 'static, S: Sink + Send + 'static> SyncReplication<V, S>
where
    Follower<V, S>: Send,
{
    /// Wraps a follower (which must follow the database the hook is installed on).
    pub fn new(follower: Follower<V, S>) -> Arc<Self> {
        Self::build(follower, None)
    }

    /// As [`SyncReplication::new`], giving up on a commit after `timeout` of failed
    /// uploads (the commit stands locally and is shipped by a later call).
    pub fn with_timeout(follower: Follower<V, S>, timeout: Duration) -> Arc<Self> {
        Self::build(follower, Some(timeout))
    }

    fn build(follower: Follower<V, S>, timeout: Option<Duration>) -> Arc<Self> {
        Arc::new(Self {
            follower: Mutex::new(follower),
            timeout,
            acknowledged: AtomicU64::new(0),
            uploads: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            unacknowledged: AtomicU64::new(0),
        })
    }

    /// The hook to install (`Wal::set_commit_hook`, `Coordinator::set_commit_hook`).
    pub fn hook(self: &Arc<Self>) -> CommitHook {
        let me = Arc::clone(self);
        Arc::new(move |c: &CommitInfo<'_>| {
            me.wait_stored(c.commit_frame);
            CommitAction::Nothing
        })
    }

    /// Runs `f` on the follower (for its status or its sink), between commits.
    pub fn with_follower<T>(&self, f: impl FnOnce(&mut Follower<V, S>) -> T) -> T {
        f(&mut self.follower.lock())
    }

    /// The counters.
    pub fn status(&self) -> SyncStatus {
        SyncStatus {
            acknowledged: self.acknowledged.load(Ordering::Relaxed),
            uploads: self.uploads.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            unacknowledged: self.unacknowledged.load(Ordering::Relaxed),
        }
    }

    fn wait_stored(&self, commit_frame: u32) {
        let mut f = self.follower.lock();
        // Already stored by an earlier call of the same batch: the commit frame is at or
        // before the last stored frame of the generation pinned since.
        if f.shipped()
            .is_some_and(|(_, frame, _)| frame >= commit_frame)
            && f.status().lag_frames() == 0
        {
            self.acknowledged.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let start = Instant::now();
        let mut backoff = Duration::from_millis(5);
        loop {
            match f.poll() {
                Ok(events)
                    if !events
                        .iter()
                        .any(|e| matches!(e, Event::UploadFailed { .. })) =>
                {
                    self.uploads.fetch_add(1, Ordering::Relaxed);
                    self.acknowledged.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(target: TRACE, error = %e, "synchronous replication: shipping failed; retrying");
                }
            }
            self.retries.fetch_add(1, Ordering::Relaxed);
            if self.timeout.is_some_and(|t| start.elapsed() >= t) {
                tracing::error!(target: TRACE, commit_frame, "synchronous replication: gave up on a commit after the timeout; it stands locally, unacknowledged by the replica");
                self.unacknowledged.fetch_add(1, Ordering::Relaxed);
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}
