//! The connection-level handle: [`Wal`], [`ReadTxn`], [`WriteTxn`].
//!
//! A `Wal` is one connection to one database in WAL mode. It follows SQLite's locking and
//! read-mark protocol byte for byte (FORMAT.md §5–§8), so a SQLite process on the same
//! files is simply another connection, and so is a `Wal` in another process.
//!
//! ```text
//! open       db SHARED lock (held for life) → map -shm (the VFS runs the DMS protocol)
//!            → the first read's header step: if the header is not valid: WRITE lock,
//!              re-read, recovery under the in-process fence + CKPT/RECOVER locks; while
//!              a peer recovers, wait (BusyRecovery after busy_timeout)
//! begin_read walTryBeginRead: READ_LOCK(0) when the WAL is fully backfilled, else the
//!            largest read mark ≤ mxFrame (or claim a slot under its exclusive lock),
//!            shared READ_LOCK(i), then re-check mark and header; ≤ 100 tries → Protocol
//! read_page  newest frame in [nBackfill+1, mxFrame] (the connection's page → frame map,
//!            extended at each begin by the frames committed since; else the hash
//!            tables), else the db file
//! begin_write begin_read + WRITE lock (waiting up to busy_timeout → Busy)
//! commit     restart the WAL if fully backfilled and unused → append frames with the
//!            chained checksum, commit marker = new db size → sync per SyncMode → hash
//!            entries → publish the header (copy B, barrier, copy A) → only then return
//! checkpoint CKPT lock (+ WRITE for FULL/RESTART/TRUNCATE) → safe frame from read marks
//!            → READ_LOCK(0) exclusive → salt re-check → nBackfillAttempted → fsync WAL →
//!            copy pages in page order (coalesced; each page's newest frame ≤ mxFrame,
//!            skipped when past the safe frame, as SQLite) → truncate db when complete
//!            → recovery barrier (full fsync + read-back verification) → nBackfill
//!            → RESTART/TRUNCATE wait for readers and reset the WAL
//! close      db EXCLUSIVE (am I last?) → PASSIVE checkpoint → delete -wal and -shm
//! ```
//!
//! Design notes:
//! - A write transaction buffers every page in memory and writes nothing before
//!   `commit`, so a rollback never has frames to undo (SQLite's cache spill is not
//!   needed here).
//! - Read and write transactions capture the WAL-index regions of their snapshot when
//!   they begin, so `read_page(&self)` needs no locks and no mutation.
//! - An fsync or write failure latches the handle (fsyncgate): every later write or
//!   checkpoint fails with `PreviousIo` until the database is reopened.
//! - After a checkpoint copies pages, the recovery barrier (a **full** fsync of the
//!   database, then xxh3-128 verification of every copied page read back) must pass
//!   before `nBackfill` advances, and a RESTART/TRUNCATE only ever follows a complete,
//!   verified backfill.
//! - A database file of zero bytes whose `-wal` holds committed frames is recovered, not
//!   deleted (SQLite would delete such a WAL; we never drop committed frames). Likewise a
//!   database whose first bytes were torn by a crash during a checkpoint (page 1 still in
//!   the WAL) opens with the WAL header's page size, if recovery finds committed frames.
//! - A read that returns fewer bytes than asked inside a file is an I/O error, never
//!   zeros and never the end of the WAL's valid prefix (only the file's end is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, LockLevel, PageNumber, PageSize, VfsOpenFlags};
use fsqlite_vfs::{
    ShmRegion, Vfs, VfsFile, WAL_CKPT_LOCK, WAL_RECOVER_LOCK, WAL_WRITE_LOCK, wal_read_lock,
};

use crate::checkpoint::{
    BackfillDecision, CheckpointMode, CheckpointOutcome, LockTry, decide_backfill,
    max_run_pages_for, plan_backfill, try_compute_safe_frame,
};
use crate::checkpoint_executor::{
    CheckpointJob, CheckpointTarget, DbFileTarget, execute_checkpoint, execute_checkpoint_on_file,
    wal_frame_data_offset,
};
use crate::db_header::{DB_HEADER_SIZE, DbHeader};
use crate::format::FrameHeader;
use crate::frame_map::FrameMap;
use crate::hooks::{
    BusyHandler, CommitAction, CommitHook, CommitInfo, ReadMarkStatus, WalStatus, auto_checkpoint,
};
use crate::locking_mode::{LockedDb, LockingMode};
use crate::locks::{self, Patience};
use crate::recovery::{lock_for_recovery, rebuild_wal_index, unlock_after_recovery};
use crate::recovery_fence::{
    PageVerifyMode, RECOVERY_FENCE_BACKOFF, RECOVERY_FENCE_MAX_RETRIES, RecoveryFence,
};
use crate::savepoint::{Savepoint, UndoLog};
use crate::snapshot::WalSnapshot;
use crate::wal::{SyncMode, WalFile, WalState};
use crate::wal_index::{
    HashSegment, HeaderMemory, HeaderRead, READMARK_NOT_USED, WAL_READ_MARK_COUNT, WalIndex,
    WalIndexHdr, frame_region, load_header_copies, unsupported_version_error,
};

/// The hand-off of [`Wal::checkpoint_truncate_with`].
type HandOff<'a> = dyn FnMut(&WalSnapshot) -> Result<bool> + 'a;

/// Read attempts before `Protocol` (SQLite's limit in `walTryBeginRead`).
const MAX_READ_ATTEMPTS: u32 = 100;
/// Bytes of page buffers a connection keeps for reuse between write transactions.
const SPARE_PAGE_BYTES: usize = 1 << 20;
/// Largest coalesced checkpoint write.
const CHECKPOINT_RUN_BYTES: u32 = 1 << 20;

/// Options for [`Wal::open`].
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Durability of commits (default [`SyncMode::Full`]).
    pub sync: SyncMode,
    /// Page size, used only when the database is new; default 4096.
    pub page_size: u32,
    /// How long lock waits may take; default 5 s.
    pub busy_timeout: Duration,
    /// Auto-checkpoint (PASSIVE) once the WAL holds this many frames; default
    /// `Some(1000)`, like SQLite. `None` turns it off.
    pub auto_checkpoint: Option<u32>,
    /// The last connection checkpoints and removes `-wal`/`-shm` on close; default true.
    pub checkpoint_on_close: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Full,
            page_size: 4096,
            busy_timeout: Duration::from_secs(5),
            auto_checkpoint: Some(1000),
            checkpoint_on_close: true,
        }
    }
}

/// One connection to a database in WAL mode (see the module docs).
#[allow(
    clippy::struct_field_names,
    reason = "`wal` and `wal_path` name the -wal file, not the struct"
)]
pub struct Wal<V: Vfs> {
    vfs: Arc<V>,
    db_path: PathBuf,
    wal_path: PathBuf,
    shm_path: PathBuf,
    db: LockedDb<V::File>,
    wal: WalFile<V::File>,
    index: WalIndex,
    /// The cached WAL-index header: the snapshot of the last read.
    hdr: WalIndexHdr,
    page_size: PageSize,
    options: WalOptions,
    fence: std::sync::Arc<RecoveryFence>,
    /// Read-mark slot held (shared) by the open transaction.
    read_lock: Option<u32>,
    /// `nBackfill + 1` captured at read start.
    min_frame: u32,
    write_locked: bool,
    /// First failure of a checkpoint's durability step; writes refuse until reopen.
    latched: Option<String>,
    /// Checkpoint sequence of the current WAL generation.
    n_ckpt: u32,
    recoveries: u64,
    /// Test-only: checkpoints skip the database fsync of the recovery barrier.
    skip_barrier_for_tests: bool,
    /// Page → newest frame of the current WAL generation, up to the last snapshot.
    frame_map: FrameMap,
    /// The context of lock releases run from `Drop` (made once, not per transaction).
    drop_cx: Cx,
    /// Page buffers of finished write transactions, reused by the next ones (no
    /// allocation per written page in steady state).
    spare_pages: Vec<Vec<u8>>,
    /// Called after each durable commit (the auto-checkpoint is one such hook).
    commit_hook: Option<CommitHook>,
    /// Decides lock waits instead of `busy_timeout` when set.
    busy_handler: Option<BusyHandler>,
    /// `journal_size_limit`: the first commit after a WAL restart truncates `-wal` to it.
    journal_size_limit: Option<u64>,
    /// A WAL restart happened in this commit: apply `journal_size_limit` after it.
    truncate_on_commit: bool,
}

impl<V: Vfs> std::fmt::Debug for Wal<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("db_path", &self.db_path)
            .field("page_size", &self.page_size)
            .field("mx_frame", &self.hdr.mx_frame)
            .field("n_page", &self.hdr.n_page)
            .field("read_lock", &self.read_lock)
            .field("write_locked", &self.write_locked)
            .field("latched", &self.latched)
            .finish_non_exhaustive()
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// After a read of `want` bytes at `offset` returned only `got`: `Err` (an I/O error
/// naming the file and offset) when the file extends past `offset + got`, so the read
/// stopped short inside the file; `Ok` when the file really ends there.
fn short_read_error<F: VfsFile + ?Sized>(
    cx: &Cx,
    file: &F,
    path: &Path,
    offset: u64,
    got: usize,
    want: usize,
) -> Result<()> {
    let size = file.file_size(cx)?;
    if size > offset + got as u64 {
        return Err(FrankenError::io(
            "read",
            Some(path.to_path_buf()),
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "short read: {got} of {want} bytes at offset {offset}, but the file holds {size} bytes"
                ),
            ),
        ));
    }
    Ok(())
}

/// The newest frame of `page` in `[min_frame, mx_frame]` over a snapshot's regions.
fn lookup_frame(
    regions: &[ShmRegion],
    page: PageNumber,
    min_frame: u32,
    mx_frame: u32,
) -> Result<Option<u32>> {
    let min_frame = min_frame.max(1);
    if mx_frame == 0 || min_frame > mx_frame {
        return Ok(None);
    }
    for index in (frame_region(min_frame)..=frame_region(mx_frame)).rev() {
        let region = regions.get(index as usize).ok_or_else(|| {
            FrankenError::wal_corrupt(format!("WAL-index region {index} is not mapped"))
        })?;
        if let Some(f) = HashSegment::new(region, index).lookup(page.get(), min_frame, mx_frame)? {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

impl<V: Vfs> Wal<V> {
    /// Opens `db_path` in WAL mode through `vfs` (see the module docs). A new (empty)
    /// database uses `options.page_size`; an existing one must be a SQLite database in
    /// WAL mode, else `CannotOpen` says what to do.
    pub fn open(
        cx: &Cx,
        vfs: Arc<V>,
        db_path: impl AsRef<Path>,
        options: WalOptions,
    ) -> Result<Self> {
        let db_path = vfs.full_pathname(cx, db_path.as_ref())?;
        let open_flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE;
        let (mut db, _) = vfs.open(cx, Some(&db_path), open_flags | VfsOpenFlags::MAIN_DB)?;
        let size = db.file_size(cx)?;
        // A crash during the first checkpoint that wrote page 1 can leave the file's
        // first bytes torn (zeros or garbage) while the WAL still holds page 1: then the
        // WAL header decides the page size, and recovery must find committed frames.
        let mut bad_db_header = None;
        let mut page_size = if size == 0 {
            PageSize::try_new(options.page_size)?
        } else {
            let mut head = [0u8; DB_HEADER_SIZE];
            let got = db.read(cx, &mut head, 0)?;
            if got < head.len() {
                short_read_error(cx, &db, &db_path, 0, got, head.len())?;
            }
            match DbHeader::parse(&head[..got.min(head.len())], &db_path) {
                Ok(h) => {
                    h.require_wal_mode(&db_path)?;
                    h.page_size
                }
                Err(e) => {
                    bad_db_header = Some(e);
                    PageSize::try_new(options.page_size)?
                }
            }
        };
        if !locks::wait_file_lock(&mut db, cx, LockLevel::Shared, options.busy_timeout)? {
            return Err(FrankenError::Busy);
        }
        let wal_path = sibling(&db_path, "-wal");
        let shm_path = sibling(&db_path, "-shm");
        let (wal_file, _) = vfs.open(cx, Some(&wal_path), open_flags | VfsOpenFlags::WAL)?;
        let wal = WalFile::attach(wal_file, Some(wal_path.clone())).with_sync_mode(options.sync);
        let fence = RecoveryFence::for_path(&db_path);
        if size == 0 || bad_db_header.is_some() {
            // A new database: a WAL left by an earlier writer decides the page size.
            let mut whdr = [0u8; crate::checksum::WAL_HEADER_SIZE];
            if wal.file().read(cx, &mut whdr, 0)? == whdr.len()
                && let Ok(h) = crate::format::WalHeader::decode(&whdr)
                && let Some(ps) = PageSize::new(h.page_size)
            {
                page_size = ps;
            } else if let Some(e) = bad_db_header {
                return Err(e);
            }
        }
        let mut this = Self {
            vfs,
            db_path,
            wal_path,
            shm_path,
            db: LockedDb::new(db),
            wal,
            index: WalIndex::new(),
            hdr: WalIndexHdr::default(),
            page_size,
            options,
            fence,
            read_lock: None,
            min_frame: 1,
            write_locked: false,
            latched: None,
            n_ckpt: 0,
            recoveries: 0,
            skip_barrier_for_tests: false,
            frame_map: FrameMap::new(),
            drop_cx: Cx::new(),
            spare_pages: Vec::new(),
            commit_hook: None,
            busy_handler: None,
            journal_size_limit: None,
            truncate_on_commit: false,
        };
        this.commit_hook = this
            .options
            .auto_checkpoint
            .filter(|&n| n > 0)
            .map(auto_checkpoint);
        // Bring the WAL-index up (recovering it if needed) exactly as the first read
        // would: while another connection is recovering it, wait (BusyRecovery after
        // busy_timeout) instead of failing at once.
        this.begin_read_inner(cx, None)?;
        this.end_read(cx);
        if let Some(e) = bad_db_header
            && this.hdr.mx_frame == 0
        {
            return Err(e);
        }
        tracing::debug!(
            target: "fsqlite.wal.open",
            db = %this.db_path.display(),
            page_size = this.page_size.get(),
            mx_frame = this.hdr.mx_frame,
            "opened WAL connection"
        );
        Ok(this)
    }

    /// The database page size.
    pub fn page_size(&self) -> u32 {
        self.page_size.get()
    }

    /// The database path (absolute).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// How many times this connection rebuilt the WAL-index.
    pub fn recoveries(&self) -> u64 {
        self.recoveries
    }

    /// The WAL-index header this connection saw last.
    pub fn cached_header(&self) -> WalIndexHdr {
        self.hdr
    }

    /// **Test-only hook; never use it outside tests.** With `true`, checkpoints of this
    /// connection skip the database fsync of the recovery barrier (pages are still copied
    /// through a second handle and read back), and then advance `nBackfill` and reset the
    /// WAL as usual. This breaks crash safety on purpose, so that a crash sweep can prove
    /// it detects a missing barrier.
    #[doc(hidden)]
    pub fn set_skip_checkpoint_barrier_for_tests(&mut self, skip: bool) {
        if skip {
            tracing::warn!(target: "fsqlite.wal.checkpoint", db = %self.db_path.display(), "test hook: checkpoints skip the database fsync");
        }
        self.skip_barrier_for_tests = skip;
    }

    /// The connection's locking mode (see [`Wal::set_locking_mode`]).
    pub fn locking_mode(&self) -> LockingMode {
        self.db.mode()
    }

    /// Switches SQLite's locking mode (`PRAGMA locking_mode`, see
    /// [`crate::locking_mode`]).
    ///
    /// [`LockingMode::Exclusive`] takes the database file's EXCLUSIVE lock, waiting up to
    /// `busy_timeout` (then `Busy`): it is granted only while no other connection, in any
    /// process, has the database open, and keeps them all out until the mode ends. In
    /// return, transactions and checkpoints skip every `-shm` lock call (a one-page commit
    /// is then its `pwrite` and some bookkeeping). [`LockingMode::Normal`] returns to the
    /// SHARED lock, and other connections can open the database again.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::Cx;
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{LockingMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let vfs = Arc::new(MemoryVfs::new());
    /// let mut wal = Wal::open(&cx, Arc::clone(&vfs), "/own.db", WalOptions::default()).unwrap();
    /// wal.set_locking_mode(&cx, LockingMode::Exclusive).unwrap();
    /// // Nobody else can open the database now.
    /// let opts = WalOptions { busy_timeout: std::time::Duration::ZERO, ..WalOptions::default() };
    /// assert!(Wal::open(&cx, Arc::clone(&vfs), "/own.db", opts.clone()).is_err());
    /// wal.set_locking_mode(&cx, LockingMode::Normal).unwrap();
    /// assert!(Wal::open(&cx, vfs, "/own.db", opts).is_ok());
    /// ```
    pub fn set_locking_mode(&mut self, cx: &Cx, mode: LockingMode) -> Result<()> {
        if mode == self.db.mode() {
            return Ok(());
        }
        match mode {
            LockingMode::Exclusive => {
                let patience = self.patience();
                let db = &mut self.db;
                let got = locks::wait_until_with(cx, &patience, || {
                    match db.lock(cx, LockLevel::Exclusive) {
                        Ok(()) => Ok(true),
                        Err(FrankenError::Busy) => {
                            // Do not keep PENDING: it would block other connections' reads.
                            db.unlock(cx, LockLevel::Shared)?;
                            Ok(false)
                        }
                        Err(e) => Err(e),
                    }
                })?;
                if !got {
                    tracing::debug!(target: "fsqlite.wal", db = %self.db_path.display(), "exclusive locking mode refused: another connection has the database open");
                    return Err(FrankenError::Busy);
                }
                self.db.set_mode(LockingMode::Exclusive);
            }
            LockingMode::Normal => {
                self.db.set_mode(LockingMode::Normal);
                self.db.unlock(cx, LockLevel::Shared)?;
            }
        }
        tracing::debug!(target: "fsqlite.wal", db = %self.db_path.display(), ?mode, "locking mode changed");
        Ok(())
    }

    /// Starts a read transaction on the newest committed snapshot.
    pub fn begin_read(&mut self, cx: &Cx) -> Result<ReadTxn<'_, V>> {
        self.begin_read_inner(cx, None)?;
        let snapshot = match self.capture_snapshot(cx, None) {
            Ok(s) => s,
            Err(e) => {
                self.end_read(cx);
                return Err(e);
            }
        };
        Ok(ReadTxn {
            wal: self,
            snap: snapshot,
        })
    }

    /// Starts a read transaction on exactly `snapshot` (SQLite's `sqlite3_snapshot_open`;
    /// see [`crate::snapshot`]): it reads what a reader that began at that commit read,
    /// and holds a read mark at or below it, so checkpoints cannot pass it while open.
    /// `SnapshotUnavailable` (SQLITE_ERROR_SNAPSHOT) when the WAL no longer holds it: a
    /// checkpoint copied frames past it into the database, the WAL was restarted since,
    /// or the handle is not from this database's WAL.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let mut wal = Wal::open(&cx, Arc::new(MemoryVfs::new()), "/a.db", WalOptions::default()).unwrap();
    /// let mut tx = wal.begin_write(&cx).unwrap();
    /// tx.write_page(&cx, PageNumber::new(1).unwrap(), &[5u8; 4096]).unwrap();
    /// tx.commit(&cx, 1).unwrap();
    /// let snap = wal.begin_read(&cx).unwrap().snapshot();
    /// assert!(wal.begin_read_at(&cx, &snap).is_ok());
    /// wal.checkpoint(&cx, CheckpointMode::Truncate).unwrap(); // the WAL starts over
    /// let e = wal.begin_read_at(&cx, &snap).unwrap_err();
    /// assert_eq!(e.extended_code(), 769); // SQLITE_ERROR_SNAPSHOT
    /// ```
    pub fn begin_read_at(&mut self, cx: &Cx, snapshot: &WalSnapshot) -> Result<ReadTxn<'_, V>> {
        let target = *snapshot.hdr();
        self.begin_read_inner(cx, Some(&target))?;
        let snap = match self
            .verify_snapshot_frame(cx, &target)
            .and_then(|()| self.capture_snapshot(cx, Some(&target)))
        {
            Ok(s) => s,
            Err(e) => {
                self.end_read(cx);
                return Err(e);
            }
        };
        tracing::debug!(target: "fsqlite.wal.snapshot", db = %self.db_path.display(), mx_frame = target.mx_frame, "read transaction opened on a snapshot");
        Ok(ReadTxn { wal: self, snap })
    }

    /// Holds a read mark at the newest commit without a [`ReadTxn`] borrow, for a
    /// replicator that reads the `-wal` file itself: the mark is always in slot 1..=4
    /// (never READ_LOCK(0)), so while it is held no checkpoint copies frames past it and
    /// no connection restarts the WAL, and every frame up to the returned snapshot's
    /// `mx_frame` stays in the `-wal` file with the snapshot's salts. A mark held from an
    /// earlier call is released first. Released by [`Wal::unpin`], any `begin_*`
    /// call, or dropping the connection.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let vfs = Arc::new(MemoryVfs::new());
    /// let opts = || WalOptions {
    ///     auto_checkpoint: None,
    ///     busy_timeout: std::time::Duration::from_millis(20),
    ///     ..WalOptions::default()
    /// };
    /// let mut writer = Wal::open(&cx, Arc::clone(&vfs), "/p.db", opts()).unwrap();
    /// let mut replicator = Wal::open(&cx, vfs, "/p.db", opts()).unwrap();
    /// let mut tx = writer.begin_write(&cx).unwrap();
    /// tx.write_page(&cx, PageNumber::new(1).unwrap(), &[1u8; 4096]).unwrap();
    /// tx.commit(&cx, 1).unwrap();
    /// writer.checkpoint(&cx, CheckpointMode::Passive).unwrap(); // everything backfilled
    /// let pinned = replicator.pin(&cx).unwrap();
    /// assert_eq!(pinned.mx_frame(), writer.status(&cx).unwrap().wal_frames);
    /// // The pinned mark keeps a TRUNCATE checkpoint from restarting the WAL.
    /// assert!(writer.checkpoint(&cx, CheckpointMode::Truncate).unwrap().busy);
    /// replicator.unpin(&cx);
    /// assert!(!writer.checkpoint(&cx, CheckpointMode::Truncate).unwrap().busy);
    /// ```
    pub fn pin(&mut self, cx: &Cx) -> Result<WalSnapshot> {
        self.end_read(cx);
        self.begin_read_slot(cx, None, true)?;
        Ok(WalSnapshot::from_header(self.hdr))
    }

    /// Releases the mark taken by [`Wal::pin`] (nothing when none is held).
    pub fn unpin(&mut self, cx: &Cx) {
        self.end_read(cx);
    }

    /// A TRUNCATE checkpoint that runs only if the WAL, once this connection holds its
    /// WRITE lock, still ends exactly at `expect` (same salts, same `mxFrame`); otherwise
    /// it copies nothing and answers `busy`. A replicator that has shipped every frame up
    /// to `expect` uses it to let the WAL start over without a gap: when the answer is
    /// not busy, the WAL restarted right after `expect` and no commit came in between.
    /// Hold no read transaction or pin while calling it.
    pub fn checkpoint_truncate_at(
        &mut self,
        cx: &Cx,
        expect: &WalSnapshot,
    ) -> Result<CheckpointOutcome> {
        let (mx, salts) = (expect.mx_frame(), expect.salts());
        self.checkpoint_truncate_with(cx, |now| Ok(now.mx_frame() == mx && now.salts() == salts))
    }

    /// A TRUNCATE checkpoint with a hand-off: once this connection holds CKPT and the
    /// WRITE lock (so no commit can come in), `before` is called with the WAL's current
    /// end; it may do anything that needs no write lock (a replicator ships the frames up
    /// to it through its other connections) and returns whether to go on. `false` (or no
    /// WRITE lock) copies nothing and answers `busy`; `true` runs the checkpoint, and
    /// when it is not busy the WAL restarted right after that end, and this connection
    /// holds a pin ([`Wal::pin`]) on the restarted, empty WAL, taken before the WRITE
    /// lock was released (so no frame of the new generation can be missed; release it
    /// with [`Wal::unpin`]). Writers wait while `before` runs. Hold no read transaction
    /// or pin on this connection while calling it.
    pub fn checkpoint_truncate_with(
        &mut self,
        cx: &Cx,
        mut before: impl FnMut(&WalSnapshot) -> Result<bool>,
    ) -> Result<CheckpointOutcome> {
        self.check_writable()?;
        if !locks::try_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1)? {
            return Err(FrankenError::Busy);
        }
        let mut write_held = false;
        let mut r = self.checkpoint_locked(
            cx,
            CheckpointMode::Truncate,
            &mut write_held,
            Some(&mut before),
        );
        if write_held && matches!(&r, Ok(o) if !o.busy) {
            // Pinned before any writer can append: the new generation is followed from
            // its first frame.
            if let Err(e) = self.begin_read_slot(cx, None, true) {
                r = Err(e);
            }
        }
        if write_held {
            self.unlock_write(cx);
        }
        let _ = locks::unlock_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1);
        r
    }

    /// Makes snapshots available again after a restart of the process, as
    /// `sqlite3_snapshot_recover`: recovery sets `nBackfillAttempted` to `mxFrame` (how far
    /// an interrupted checkpoint got is unknown), which hides every older snapshot. This
    /// walks back from there over the frames not known to be backfilled and lowers
    /// `nBackfillAttempted` past each frame whose page the database file does not hold,
    /// stopping at the first one it does. Returns the new `nBackfillAttempted`: snapshots
    /// at or after that frame can be opened. `Busy` while a checkpoint runs.
    pub fn recover_snapshots(&mut self, cx: &Cx) -> Result<u32> {
        self.begin_read_inner(cx, None)?;
        let r = match locks::try_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1) {
            Ok(true) => {
                let r = self.recover_snapshots_locked(cx);
                let _ = locks::unlock_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1);
                r
            }
            Ok(false) => Err(FrankenError::Busy),
            Err(e) => Err(e),
        };
        self.end_read(cx);
        r
    }

    fn recover_snapshots_locked(&mut self, cx: &Cx) -> Result<u32> {
        let r0 = self.region0(cx, false)?;
        if load_header_copies(&r0)[0] != self.hdr {
            return Err(FrankenError::BusySnapshot);
        }
        let ps = self.page_size.bytes();
        let db_bytes = self.db.file_size(cx)?;
        let mut wal_page = vec![0u8; ps];
        let mut db_page = vec![0u8; ps];
        let floor = r0.n_backfill();
        let mut attempted = r0.n_backfill_attempted().min(self.hdr.mx_frame);
        while attempted > floor {
            let frame = attempted;
            let fh = self.read_frame_header_raw(cx, frame)?;
            let db_off = u64::from(fh.page_number.saturating_sub(1)) * ps as u64;
            if fh.page_number != 0 && db_off + ps as u64 <= db_bytes {
                let off = wal_frame_data_offset(frame, self.page_size.get());
                let a = self.wal.file().read(cx, &mut wal_page, off)?;
                let b = self.db.read(cx, &mut db_page, db_off)?;
                if a < ps || b < ps || wal_page == db_page {
                    // The database may hold this frame: snapshots before it stay gone.
                    break;
                }
            }
            attempted -= 1;
            r0.set_n_backfill_attempted(attempted);
        }
        tracing::info!(target: "fsqlite.wal.snapshot", db = %self.db_path.display(), n_backfill_attempted = attempted, "recovered snapshots");
        Ok(attempted)
    }

    fn read_frame_header_raw(&self, cx: &Cx, frame: u32) -> Result<FrameHeader> {
        let mut bytes = [0u8; crate::format::WAL_FRAME_HEADER_SIZE];
        let off = wal_frame_data_offset(frame, self.page_size.get()) - bytes.len() as u64;
        let got = self.wal.file().read(cx, &mut bytes, off)?;
        if got < bytes.len() {
            short_read_error(cx, self.wal.file(), &self.wal_path, off, got, bytes.len())?;
            return Err(FrankenError::wal_corrupt(format!(
                "frame {frame} lies past the end of {}",
                self.wal_path.display()
            )));
        }
        Ok(FrameHeader::from_bytes(&bytes))
    }

    /// The snapshot's commit frame must be in the WAL as the snapshot describes it.
    fn verify_snapshot_frame(&self, cx: &Cx, target: &WalIndexHdr) -> Result<()> {
        if target.mx_frame == 0 {
            return Ok(());
        }
        let fh = self.read_frame_header_raw(cx, target.mx_frame)?;
        crate::snapshot::check_commit_frame(target, &fh, &self.wal_path)
    }

    /// Installs (or with `None` removes) the commit hook, SQLite's `sqlite3_wal_hook`:
    /// called after each durable, published commit with the WAL's frame count; its
    /// answer can ask for a checkpoint. It replaces the auto-checkpoint of
    /// `WalOptions::auto_checkpoint` (itself the hook [`crate::hooks::auto_checkpoint`]),
    /// as in SQLite.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicU32, Ordering}};
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::hooks::{CommitAction, CommitInfo};
    /// use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let mut wal = Wal::open(&cx, Arc::new(MemoryVfs::new()), "/h.db", WalOptions::default()).unwrap();
    /// let calls = Arc::new(AtomicU32::new(0));
    /// let c2 = Arc::clone(&calls);
    /// // A policy of our own: a TRUNCATE checkpoint whenever the WAL holds a frame.
    /// wal.set_commit_hook(Some(Arc::new(move |c: &CommitInfo<'_>| {
    ///     c2.fetch_add(1, Ordering::SeqCst);
    ///     if c.wal_frames > 0 { CommitAction::Checkpoint(CheckpointMode::Truncate) } else { CommitAction::Nothing }
    /// })));
    /// for i in 0..3u8 {
    ///     let mut tx = wal.begin_write(&cx).unwrap();
    ///     tx.write_page(&cx, PageNumber::new(1).unwrap(), &[i; 4096]).unwrap();
    ///     tx.commit(&cx, 1).unwrap();
    ///     assert_eq!(wal.status(&cx).unwrap().wal_frames, 0); // the hook's checkpoint ran
    /// }
    /// assert_eq!(calls.load(Ordering::SeqCst), 3);
    /// ```
    pub fn set_commit_hook(&mut self, hook: Option<CommitHook>) {
        self.commit_hook = hook;
    }

    /// Installs (or with `None` removes) a busy handler, SQLite's `sqlite3_busy_handler`:
    /// every lock wait of this connection (for the write lock, a checkpoint's locks,
    /// recovery, the exclusive locking mode) asks it after each failed attempt, with the
    /// number of earlier calls for that wait, whether to go on; it replaces
    /// `busy_timeout` while installed. The connection sleeps a short back-off between
    /// attempts itself (20 µs doubling to 5 ms).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::Cx;
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let vfs = Arc::new(MemoryVfs::new());
    /// let mut a = Wal::open(&cx, Arc::clone(&vfs), "/b.db", WalOptions::default()).unwrap();
    /// let mut b = Wal::open(&cx, vfs, "/b.db", WalOptions::default()).unwrap();
    /// b.set_busy_handler(Some(Arc::new(|attempt| attempt < 3))); // three more tries, then Busy
    /// let _writing = a.begin_write(&cx).unwrap();
    /// assert!(b.begin_write(&cx).is_err());
    /// ```
    pub fn set_busy_handler(&mut self, handler: Option<BusyHandler>) {
        self.busy_handler = handler;
    }

    /// SQLite's `PRAGMA journal_size_limit`: after a checkpoint let the WAL start over,
    /// the next commit (which rewrites it from the start) truncates the `-wal` file to
    /// `limit` bytes, or to the end of its own frames if they reach further; `None` (the
    /// default, SQLite's -1) leaves the file at its largest size. A TRUNCATE checkpoint
    /// truncates to 0 regardless.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
    /// use fsqlite_vfs::{MemoryVfs, Vfs, VfsFile};
    /// use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let vfs = Arc::new(MemoryVfs::new());
    /// let opts = WalOptions { auto_checkpoint: None, ..WalOptions::default() };
    /// let mut wal = Wal::open(&cx, Arc::clone(&vfs), "/j.db", opts).unwrap();
    /// wal.set_journal_size_limit(Some(0));
    /// let mut tx = wal.begin_write(&cx).unwrap(); // a big transaction: 64 frames
    /// for p in 1..=64 {
    ///     tx.write_page(&cx, PageNumber::new(p).unwrap(), &[1u8; 4096]).unwrap();
    /// }
    /// tx.commit(&cx, 64).unwrap();
    /// wal.checkpoint(&cx, CheckpointMode::Passive).unwrap(); // everything backfilled
    /// let mut tx = wal.begin_write(&cx).unwrap(); // restarts the WAL, then truncates it
    /// tx.write_page(&cx, PageNumber::new(1).unwrap(), &[2u8; 4096]).unwrap();
    /// tx.commit(&cx, 64).unwrap();
    /// let (f, _) = vfs.open(&cx, Some("/j.db-wal".as_ref()), VfsOpenFlags::READWRITE | VfsOpenFlags::WAL).unwrap();
    /// assert!(f.file_size(&cx).unwrap() < 4 * 4120, "the WAL holds the last commit only");
    /// ```
    pub fn set_journal_size_limit(&mut self, limit: Option<u64>) {
        self.journal_size_limit = limit;
    }

    /// The limit set by [`Wal::set_journal_size_limit`].
    pub fn journal_size_limit(&self) -> Option<u64> {
        self.journal_size_limit
    }

    /// What a tool asks `PRAGMA`s for, in one call (see [`WalStatus`]): the WAL's frame
    /// count and how many are backfilled, the database size, the read marks and whether
    /// some connection holds each now, the locking mode. Reads the newest header (running
    /// recovery if the `-shm` needs it), as a read transaction would.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{CheckpointMode, LockingMode, Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let opts = WalOptions { auto_checkpoint: None, ..WalOptions::default() };
    /// let mut wal = Wal::open(&cx, Arc::new(MemoryVfs::new()), "/st.db", opts).unwrap();
    /// let mut tx = wal.begin_write(&cx).unwrap();
    /// tx.write_page(&cx, PageNumber::new(1).unwrap(), &[0u8; 4096]).unwrap();
    /// tx.commit(&cx, 1).unwrap();
    /// let st = wal.status(&cx).unwrap();
    /// assert!(st.wal_frames >= 1 && st.backfilled == 0 && st.db_size == 1);
    /// assert_eq!(st.locking_mode, LockingMode::Normal);
    /// assert!(st.read_marks.iter().all(|m| !m.in_use)); // no reader now
    /// wal.checkpoint(&cx, CheckpointMode::Passive).unwrap();
    /// let st = wal.status(&cx).unwrap();
    /// assert_eq!(st.backfilled, st.wal_frames);
    /// ```
    pub fn status(&mut self, cx: &Cx) -> Result<WalStatus> {
        self.begin_read_inner(cx, None)?;
        self.end_read(cx);
        let r0 = self.region0(cx, false)?;
        let normal = self.db.mode() == LockingMode::Normal;
        let mut read_marks = Vec::with_capacity(WAL_READ_MARK_COUNT);
        for slot in 0..WAL_READ_MARK_COUNT {
            let lock = wal_read_lock(slot as u32);
            let in_use = normal && {
                let free = locks::try_exclusive(&mut self.db, cx, lock, 1)?;
                if free {
                    locks::unlock_exclusive(&mut self.db, cx, lock, 1)?;
                }
                !free
            };
            read_marks.push(ReadMarkStatus {
                slot,
                mark: r0.read_mark(slot),
                in_use,
            });
        }
        let db_size = if self.hdr.mx_frame > 0 {
            self.hdr.n_page
        } else {
            u32::try_from(self.db.file_size(cx)? / u64::from(self.page_size.get()))
                .unwrap_or(u32::MAX)
        };
        Ok(WalStatus {
            wal_frames: self.hdr.mx_frame,
            backfilled: r0.n_backfill(),
            backfill_attempted: r0.n_backfill_attempted(),
            db_size,
            page_size: self.page_size.get(),
            read_marks,
            locking_mode: self.db.mode(),
            salts: self.hdr.wal_salts(),
        })
    }

    fn patience(&self) -> Patience {
        Patience {
            timeout: self.options.busy_timeout,
            handler: self.busy_handler.clone(),
        }
    }

    /// Starts a write transaction: a read snapshot plus the WAL write lock, waiting up to
    /// `busy_timeout` for another writer (then `Busy`).
    pub fn begin_write(&mut self, cx: &Cx) -> Result<WriteTxn<'_, V>> {
        self.check_writable()?;
        // Taken at the first retry: the uncontended path reads no clock.
        let mut start: Option<Instant> = None;
        let mut backoff = Duration::from_micros(20);
        let mut attempts = 0u32;
        loop {
            self.begin_read_inner(cx, None)?;
            // An error from here on must not leave the read (or write) lock behind: the
            // next transaction would begin with a stale read mark held (found by the
            // I/O-error sweep's shm_lock faults).
            let locked = match locks::try_exclusive(&mut self.db, cx, WAL_WRITE_LOCK, 1) {
                Ok(l) => l,
                Err(e) => {
                    self.end_read(cx);
                    return Err(e);
                }
            };
            if locked {
                self.write_locked = true;
                // In exclusive locking mode nobody else can have committed.
                let current = self.db.mode() == LockingMode::Exclusive
                    || match self.live_header_copy_a(cx) {
                        Ok(h) => h == self.hdr,
                        Err(e) => {
                            self.end_write_and_read(cx);
                            return Err(e);
                        }
                    };
                if current {
                    break;
                }
                // A commit landed between our read and the lock: start over on it.
                self.unlock_write(cx);
            }
            self.end_read(cx);
            cx.checkpoint()?;
            let waited = start.get_or_insert_with(Instant::now).elapsed();
            let patience = self.patience();
            if !patience.keep_waiting(attempts, waited) {
                return Err(FrankenError::Busy);
            }
            attempts = attempts.saturating_add(1);
            let nap = if patience.handler.is_some() {
                backoff
            } else {
                backoff.min(self.options.busy_timeout.saturating_sub(waited))
            };
            std::thread::sleep(nap);
            backoff = (backoff * 2).min(Duration::from_millis(5));
        }
        let snap = match self.capture_snapshot(cx, None) {
            Ok(s) => s,
            Err(e) => {
                self.unlock_write(cx);
                self.end_read(cx);
                return Err(e);
            }
        };
        Ok(WriteTxn {
            wal: self,
            snap,
            dirty: BTreeMap::new(),
            undo: UndoLog::new(),
            done: false,
        })
    }

    /// Runs a checkpoint (SQLite's `sqlite3_wal_checkpoint_v2`), through the recovery
    /// barrier: pages are copied, the database is fully fsynced and read back and
    /// verified, and only then does `nBackfill` advance or the WAL get reset.
    pub fn checkpoint(&mut self, cx: &Cx, mode: CheckpointMode) -> Result<CheckpointOutcome> {
        self.check_writable()?;
        if !locks::try_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1)? {
            return Err(FrankenError::Busy);
        }
        let mut write_held = false;
        let r = self.checkpoint_locked(cx, mode, &mut write_held, None);
        if write_held {
            self.unlock_write(cx);
        }
        let _ = locks::unlock_exclusive(&mut self.db, cx, WAL_CKPT_LOCK, 1);
        r
    }

    /// Closes the connection. The last connection (it gets the database EXCLUSIVE lock)
    /// checkpoints and, when everything was backfilled, deletes `-wal` and `-shm`, as
    /// SQLite does, unless `checkpoint_on_close` is false.
    pub fn close(mut self, cx: &Cx) -> Result<()> {
        let mut delete_files = false;
        let mut result = Ok(());
        if self.options.checkpoint_on_close && self.latched.is_none() {
            match self.db.lock(cx, LockLevel::Exclusive) {
                Ok(()) => match self.checkpoint(cx, CheckpointMode::Passive) {
                    Ok(o) => {
                        delete_files = !o.busy && o.checkpointed_frames == o.log_frames;
                    }
                    Err(e) => result = Err(e),
                },
                Err(FrankenError::Busy) => {}
                Err(e) => result = Err(e),
            }
        }
        self.index.forget_mappings();
        if delete_files {
            match self.vfs.delete(cx, &self.wal_path, false) {
                Ok(()) | Err(FrankenError::Io { .. }) => {}
                Err(e) => result = result.and(Err(e)),
            }
            result = result.and(self.db.shm_unmap(cx, true));
            tracing::debug!(target: "fsqlite.wal.close", db = %self.db_path.display(), "last connection: checkpointed and removed -wal/-shm");
        } else {
            result = result.and(self.db.shm_unmap(cx, false));
        }
        let _ = self.db.unlock(cx, LockLevel::None);
        result
    }

    // ----- internals -------------------------------------------------------------------

    /// Keeps the page buffers of a finished write transaction for the next one, up to
    /// [`SPARE_PAGE_BYTES`].
    fn recycle_pages(&mut self, dirty: BTreeMap<PageNumber, Vec<u8>>) {
        let ps = self.page_size.bytes();
        let keep = (SPARE_PAGE_BYTES / ps.max(1)).saturating_sub(self.spare_pages.len());
        self.spare_pages.extend(
            dirty
                .into_values()
                .filter(|b| b.capacity() == ps)
                .take(keep),
        );
    }

    fn check_writable(&self) -> Result<()> {
        if let Some(first) = &self.latched {
            return Err(FrankenError::PreviousIo {
                first: first.clone(),
            });
        }
        Ok(())
    }

    fn latch(&mut self, e: &FrankenError) {
        if self.latched.is_none() && !e.is_transient() {
            tracing::error!(target: "fsqlite.wal", error = %e, db = %self.db_path.display(), "I/O failure latched the connection; reopen to recover");
            self.latched = Some(e.to_string());
        }
    }

    fn region0(&mut self, cx: &Cx, extend: bool) -> Result<ShmRegion> {
        self.index
            .map_region(cx, &mut self.db, 0, extend)?
            .cloned()
            .ok_or_else(|| FrankenError::internal("WAL-index region 0 is not mapped"))
    }

    fn live_header_copy_a(&mut self, cx: &Cx) -> Result<WalIndexHdr> {
        let r0 = self.region0(cx, false)?;
        Ok(load_header_copies(&r0)[0])
    }

    fn unlock_write(&mut self, cx: &Cx) {
        if self.write_locked {
            let _ = locks::unlock_exclusive(&mut self.db, cx, WAL_WRITE_LOCK, 1);
            self.write_locked = false;
        }
    }

    /// `unlock_write` + `end_read` with one VFS call (one `fcntl` on `UnixFile`).
    fn end_write_and_read(&mut self, cx: &Cx) {
        let exclusive = if self.write_locked {
            1u8 << WAL_WRITE_LOCK
        } else {
            0
        };
        let shared = self.read_lock.map_or(0, |slot| 1u8 << wal_read_lock(slot));
        self.write_locked = false;
        self.read_lock = None;
        let _ = self.db.shm_unlock_slots(cx, exclusive, shared);
    }

    fn end_read(&mut self, cx: &Cx) {
        if let Some(slot) = self.read_lock.take() {
            let _ = locks::unlock_shared(&mut self.db, cx, wal_read_lock(slot));
        }
    }

    /// SQLite's `walIndexReadHdr`: the lock-free read, else WRITE lock + re-read +
    /// recovery. `Err(Busy)` when another connection holds the WRITE lock while the
    /// header is unreadable (the caller decides between retry and `BusyRecovery`).
    fn read_header_or_recover(&mut self, cx: &Cx) -> Result<bool> {
        match self
            .index
            .read_header(cx, &mut self.db, false, &mut self.hdr)?
        {
            HeaderRead::Unchanged => return Ok(false),
            HeaderRead::Changed => {
                self.adopt_header_page_size()?;
                return Ok(true);
            }
            HeaderRead::UnsupportedVersion { found } => {
                return Err(unsupported_version_error(&self.shm_path, found));
            }
            HeaderRead::NeedsRecovery(_) => {}
        }
        let had_write = self.write_locked;
        if !had_write {
            if !locks::try_exclusive(&mut self.db, cx, WAL_WRITE_LOCK, 1)? {
                return Err(FrankenError::Busy);
            }
            self.write_locked = true;
        }
        let r = (|| match self
            .index
            .read_header(cx, &mut self.db, true, &mut self.hdr)?
        {
            HeaderRead::Unchanged | HeaderRead::Changed => {
                self.adopt_header_page_size()?;
                Ok(true)
            }
            HeaderRead::UnsupportedVersion { found } => {
                Err(unsupported_version_error(&self.shm_path, found))
            }
            HeaderRead::NeedsRecovery(defect) => {
                tracing::info!(target: "fsqlite.wal.recovery", db = %self.db_path.display(), %defect, "WAL-index needs recovery");
                self.recover(cx)?;
                Ok(true)
            }
        })();
        if !had_write {
            self.unlock_write(cx);
        }
        r
    }

    fn adopt_header_page_size(&mut self) -> Result<()> {
        if self.hdr.mx_frame == 0 {
            return Ok(());
        }
        match self.hdr.page_size() {
            Some(ps) if ps == self.page_size => Ok(()),
            Some(ps) if self.hdr.n_page > 0 && self.db_file_pages_is_zero() => {
                self.page_size = ps;
                Ok(())
            }
            other => Err(FrankenError::wal_corrupt(format!(
                "the WAL-index page size {:?} differs from the database page size {} ({})",
                other.map(PageSize::get),
                self.page_size,
                self.shm_path.display()
            ))),
        }
    }

    fn db_file_pages_is_zero(&self) -> bool {
        self.db.file_size(&Cx::new()).is_ok_and(|s| s == 0)
    }

    /// SQLite's `walIndexRecover`: rebuild the WAL-index from the WAL's valid prefix.
    /// The caller holds the WRITE lock.
    fn recover(&mut self, cx: &Cx) -> Result<()> {
        let fence = Arc::clone(&self.fence);
        let mut guard = fence.acquire_for_recovery_cx(
            cx,
            RECOVERY_FENCE_MAX_RETRIES,
            RECOVERY_FENCE_BACKOFF,
        )?;
        let patience = self.patience();
        lock_for_recovery(cx, &mut self.db, patience)?;
        let r = self.recover_locked(cx);
        let _ = unlock_after_recovery(cx, &mut self.db);
        if r.is_ok() {
            guard.complete();
            self.recoveries += 1;
        }
        r
    }

    fn recover_locked(&mut self, cx: &Cx) -> Result<()> {
        // `recover` locks CKPT and RECOVER as one range of 2.
        const _: () = assert!(WAL_RECOVER_LOCK == WAL_CKPT_LOCK + 1);
        let db_is_empty = self.db.file_size(cx)? == 0;
        let rebuilt = rebuild_wal_index(
            cx,
            self.wal.file(),
            &self.wal_path,
            &mut self.db,
            &mut self.index,
            self.page_size,
            db_is_empty,
        )?;
        self.page_size = rebuilt.page_size;
        self.hdr = rebuilt.hdr;
        if let Some(h) = rebuilt.report.header {
            self.n_ckpt = h.checkpoint_seq;
        }
        if self.hdr.mx_frame > 0 {
            self.wal
                .set_state_from_index(cx, self.wal_state_from_hdr())?;
        }
        tracing::info!(
            target: "fsqlite.wal.recovery",
            db = %self.db_path.display(),
            frames = self.hdr.mx_frame,
            stop = %rebuilt.report.stop,
            elapsed_us = rebuilt.elapsed.as_micros() as u64,
            "recovered {} frames from WAL file {}",
            self.hdr.mx_frame,
            self.wal_path.display()
        );
        Ok(())
    }

    fn wal_state_from_hdr(&self) -> WalState {
        WalState {
            mx_frame: self.hdr.mx_frame,
            n_page: self.hdr.n_page,
            frame_checksum: self.hdr.a_frame_cksum,
            salt: self.hdr.wal_salts(),
            page_size: self.page_size,
            big_endian_cksum: self.hdr.big_end_cksum != 0,
            checkpoint_seq: self.n_ckpt,
        }
    }

    /// SQLite's `walTryBeginRead` loop (FORMAT.md §6). With `target` (a snapshot), the
    /// read mark is chosen at or below the snapshot's `mxFrame` and, once it is held, the
    /// snapshot is checked to be still available (`walBeginReadTransaction`).
    fn begin_read_inner(&mut self, cx: &Cx, target: Option<&WalIndexHdr>) -> Result<()> {
        self.begin_read_slot(cx, target, false)
    }

    /// [`Self::begin_read_inner`]; `wal_mark` never takes READ_LOCK(0), so the mark held
    /// (slot 1..=4) keeps the WAL from restarting while it is held.
    fn begin_read_slot(
        &mut self,
        cx: &Cx,
        target: Option<&WalIndexHdr>,
        wal_mark: bool,
    ) -> Result<()> {
        // A pin (the only read lock held between transactions) gives way to the next one.
        self.end_read(cx);
        // Taken at the first busy answer: the uncontended path reads no clock.
        let mut start: Option<Instant> = None;
        let mut recovery_waits = 0u32;
        for cnt in 0..=MAX_READ_ATTEMPTS {
            if cnt == MAX_READ_ATTEMPTS {
                return Err(FrankenError::Protocol);
            }
            if cnt > 5 {
                let micros = if cnt < 10 {
                    1
                } else {
                    u64::from((cnt - 9) * (cnt - 9) * 39)
                };
                std::thread::sleep(Duration::from_micros(micros));
            }
            cx.checkpoint()?;
            match self.read_header_or_recover(cx) {
                Ok(_) => {}
                Err(FrankenError::Busy) => {
                    if locks::try_shared(&mut self.db, cx, WAL_RECOVER_LOCK)? {
                        locks::unlock_shared(&mut self.db, cx, WAL_RECOVER_LOCK)?;
                        continue;
                    }
                    let waited = start.get_or_insert_with(Instant::now).elapsed();
                    let go_on = self.patience().keep_waiting(recovery_waits, waited);
                    recovery_waits = recovery_waits.saturating_add(1);
                    if go_on {
                        continue;
                    }
                    return Err(FrankenError::BusyRecovery);
                }
                Err(e) => return Err(e),
            }
            let r0 = self.region0(cx, false)?;
            if let Some(t) = target {
                self.snapshot_still_in_wal(t, r0.n_backfill_attempted())?;
            }
            let mx = target.map_or(self.hdr.mx_frame, |t| t.mx_frame);
            // The re-checks after a lock guard against other connections; in exclusive
            // locking mode there are none.
            let recheck = self.db.mode() == LockingMode::Normal;
            // When READ_LOCK(0) is busy (a checkpointer holds it), use a read mark. A
            // snapshot never reads from slot 0 (it may need frames the database lacks).
            if target.is_none()
                && !wal_mark
                && r0.n_backfill() == mx
                && locks::try_shared(&mut self.db, cx, wal_read_lock(0))?
            {
                if recheck {
                    r0.barrier();
                }
                if !recheck || load_header_copies(&r0)[0] == self.hdr {
                    self.read_lock = Some(0);
                    self.min_frame = mx + 1;
                    return Ok(());
                }
                locks::unlock_shared(&mut self.db, cx, wal_read_lock(0))?;
                continue;
            }
            let mut best: Option<(u32, u32)> = None; // (slot, mark)
            for i in 1..WAL_READ_MARK_COUNT as u32 {
                let m = r0.read_mark(i as usize);
                if m <= mx && best.is_none_or(|(_, bm)| m >= bm) {
                    best = Some((i, m));
                }
            }
            // True when the claimed slot is already held shared (downgraded in place).
            let mut held = false;
            if best.is_none_or(|(_, m)| m < mx) {
                for i in 1..WAL_READ_MARK_COUNT as u32 {
                    if locks::try_exclusive(&mut self.db, cx, wal_read_lock(i), 1)? {
                        r0.set_read_mark(i as usize, mx);
                        // SQLite unlocks, then locks shared below; a VFS that converts
                        // the lock atomically saves a call (the re-check below stays).
                        match self.db.shm_downgrade(cx, wal_read_lock(i)) {
                            Ok(()) => held = true,
                            Err(FrankenError::Busy) => {}
                            Err(e) => return Err(e),
                        }
                        best = Some((i, mx));
                        break;
                    }
                }
            }
            let Some((slot, mark)) = best else {
                continue;
            };
            if !held && !locks::try_shared(&mut self.db, cx, wal_read_lock(slot))? {
                continue;
            }
            self.min_frame = r0.n_backfill() + 1;
            if recheck {
                r0.barrier();
            }
            if recheck
                && (r0.read_mark(slot as usize) != mark || load_header_copies(&r0)[0] != self.hdr)
            {
                locks::unlock_shared(&mut self.db, cx, wal_read_lock(slot))?;
                continue;
            }
            if let Some(t) = target {
                // With the mark held no checkpoint can pass it from now on; one running
                // (CKPT held) may still be copying past the snapshot, so look under CKPT
                // shared, as SQLite does.
                if recheck && !locks::try_shared(&mut self.db, cx, WAL_CKPT_LOCK)? {
                    locks::unlock_shared(&mut self.db, cx, wal_read_lock(slot))?;
                    continue;
                }
                let ok = self.snapshot_still_in_wal(t, r0.n_backfill_attempted());
                if recheck {
                    locks::unlock_shared(&mut self.db, cx, WAL_CKPT_LOCK)?;
                }
                if let Err(e) = ok {
                    locks::unlock_shared(&mut self.db, cx, wal_read_lock(slot))?;
                    return Err(e);
                }
                // Frames 1..=mxFrame of the snapshot, newest first, then the database
                // file (which holds no frame past the snapshot).
                self.min_frame = 1;
            }
            self.read_lock = Some(slot);
            return Ok(());
        }
        Err(FrankenError::Protocol)
    }

    /// `SnapshotUnavailable` unless `t` is still in the WAL per the live header (`self.hdr`)
    /// and `nBackfillAttempted`.
    fn snapshot_still_in_wal(&self, t: &WalIndexHdr, n_backfill_attempted: u32) -> Result<()> {
        crate::snapshot::check_available(
            t,
            self.hdr.wal_salts(),
            self.hdr.mx_frame,
            Some(n_backfill_attempted),
        )
    }

    /// Maps every region the current snapshot (or `target`) needs and computes its
    /// database size.
    fn capture_snapshot(&mut self, cx: &Cx, target: Option<&WalIndexHdr>) -> Result<Snapshot> {
        let hdr = target.copied().unwrap_or(self.hdr);
        let mx = hdr.mx_frame;
        let mut regions = Vec::new();
        if self.read_lock != Some(0) && mx > 0 {
            for k in 0..=frame_region(mx) {
                let r = self
                    .index
                    .map_region(cx, &mut self.db, k, false)?
                    .cloned()
                    .ok_or_else(|| {
                        FrankenError::wal_corrupt(format!(
                            "WAL-index region {k} is missing although frames up to {mx} are indexed ({})",
                            self.shm_path.display()
                        ))
                    })?;
                regions.push(r);
            }
        }
        let db_size = if mx > 0 {
            hdr.n_page
        } else {
            let bytes = self.db.file_size(cx)?;
            u32::try_from(bytes / u64::from(self.page_size.get())).unwrap_or(u32::MAX)
        };
        // The private map describes the newest frames only: a snapshot reads the hash
        // tables, bounded by its own mxFrame.
        let use_map = target.is_none()
            && !regions.is_empty()
            && self.frame_map.sync_to(&regions, self.hdr.wal_salts(), mx)?;
        Ok(Snapshot {
            regions,
            use_map,
            mx_frame: if self.read_lock == Some(0) { 0 } else { mx },
            min_frame: self.min_frame,
            db_size,
            hdr,
        })
    }

    fn read_page_snapshot(
        &self,
        cx: &Cx,
        snap: &Snapshot,
        page: PageNumber,
        buf: &mut [u8],
    ) -> Result<()> {
        let ps = self.page_size.bytes();
        if buf.len() != ps {
            return Err(FrankenError::out_of_range(
                format!("read buffer length (page size {ps})"),
                buf.len(),
            ));
        }
        let frame = if snap.use_map {
            self.frame_map.find(page.get(), snap.min_frame)
        } else {
            lookup_frame(&snap.regions, page, snap.min_frame, snap.mx_frame)?
        };
        if let Some(frame) = frame {
            let off = wal_frame_data_offset(frame, self.page_size.get());
            let got = self.wal.file().read(cx, buf, off)?;
            if got < buf.len() {
                short_read_error(cx, self.wal.file(), &self.wal_path, off, got, buf.len())?;
                return Err(FrankenError::wal_corrupt(format!(
                    "frame {frame} (page {page}) lies past the end of {}",
                    self.wal_path.display()
                )));
            }
            return Ok(());
        }
        if page.get() > snap.db_size {
            // Past the snapshot's end the page does not exist: zeros, as SQLite's pager
            // returns, without racing a checkpoint that is growing the file.
            buf.fill(0);
            return Ok(());
        }
        let offset = u64::from(page.get() - 1) * ps as u64;
        let mut got = self.db.read(cx, buf, offset)?;
        if got < buf.len() {
            // A checkpoint may have grown the file since; read once more before judging.
            got = self.db.read(cx, buf, offset)?;
        }
        if got < buf.len() {
            // Past the end of the file a page reads as zeros (SQLite's short-read rule);
            // a read that stops short inside the file is an error, never zeros.
            short_read_error(cx, &self.db, &self.db_path, offset, got, buf.len())?;
        }
        Ok(())
    }

    /// SQLite's `walRestartHdr`: a new WAL generation in the WAL-index (salt-1 + 1, new
    /// salt-2, mxFrame 0, backfill counters and marks reset). The caller holds WRITE and
    /// READ_LOCK(1..4) exclusively (no reader uses the WAL). The WAL file itself is
    /// rewritten by the next commit.
    fn restart_hdr(&mut self, cx: &Cx) -> Result<u32> {
        let mut b = [0u8; 4];
        self.vfs.randomness(&mut b);
        let salt2 = u32::from_ne_bytes(b);
        let [s1, _] = self.hdr.wal_salts();
        self.n_ckpt = self.n_ckpt.wrapping_add(1);
        let mut hdr = self.hdr;
        hdr.mx_frame = 0;
        hdr.set_wal_salts([s1.wrapping_add(1), salt2]);
        self.index.publish_header(cx, &mut self.db, &mut hdr)?;
        self.hdr = hdr;
        let r0 = self.region0(cx, true)?;
        r0.set_n_backfill(0);
        r0.set_n_backfill_attempted(0);
        r0.set_read_mark(1, 0);
        for i in 2..WAL_READ_MARK_COUNT {
            r0.set_read_mark(i, READMARK_NOT_USED);
        }
        tracing::debug!(target: "fsqlite.wal.write", db = %self.db_path.display(), salt1 = s1.wrapping_add(1), salt2, "restarted the WAL");
        Ok(salt2)
    }

    fn commit_inner(
        &mut self,
        cx: &Cx,
        dirty: &BTreeMap<PageNumber, Vec<u8>>,
        db_size: u32,
    ) -> Result<u32> {
        self.check_writable()?;
        if db_size == 0 {
            return Err(FrankenError::out_of_range(
                "commit database size (pages)",
                0,
            ));
        }
        let frames: Vec<(PageNumber, &[u8])> = dirty
            .iter()
            .filter(|(p, _)| p.get() <= db_size)
            .map(|(p, d)| (*p, d.as_slice()))
            .collect();
        if frames.is_empty() {
            return Err(FrankenError::out_of_range(
                "pages in a commit (a commit needs at least one page at or below its database size)",
                0,
            ));
        }
        let r0 = self.region0(cx, true)?;
        // walRestartLog: a fully backfilled WAL nobody reads starts a new generation.
        if self.read_lock == Some(0)
            && r0.n_backfill() > 0
            && locks::try_exclusive(&mut self.db, cx, wal_read_lock(1), 4)?
        {
            let r = self.restart_hdr(cx);
            locks::unlock_exclusive(&mut self.db, cx, wal_read_lock(1), 4)?;
            r?;
            self.truncate_on_commit = true;
        }
        if self.hdr.mx_frame == 0 && self.hdr.a_salt == [0, 0] {
            let mut b = [0u8; 8];
            self.vfs.randomness(&mut b);
            self.hdr.set_wal_salts([
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
            ]);
            self.hdr.big_end_cksum = u8::from(cfg!(target_endian = "big"));
        }
        if self.hdr.mx_frame == 0 {
            self.hdr.big_end_cksum = u8::from(cfg!(target_endian = "big"));
        }
        let state = self.wal_state_from_hdr();
        let in_sync = self.wal.state().is_some_and(|s| {
            s.mx_frame == state.mx_frame
                && s.salt == state.salt
                && s.frame_checksum == state.frame_checksum
                && (state.mx_frame > 0 || self.wal.header_on_disk())
        });
        if !in_sync {
            self.wal.set_state_from_index(cx, state)?;
        }
        self.wal.rollback_uncommitted();
        let first = self.hdr.mx_frame + 1;
        let last = match self.wal.append_frames(cx, &frames, Some(db_size)) {
            Ok(l) => l,
            Err(e) => {
                self.latch(&e);
                return Err(e);
            }
        };
        // Frames past the transaction's own are padding (copies of its commit frame,
        // written on devices without power-safe overwrite); they are indexed too.
        debug_assert!(last as usize >= first as usize + frames.len() - 1);
        let commit_page = frames[frames.len() - 1].0;
        for frame in first..=last {
            let page = frames
                .get((frame - first) as usize)
                .map_or(commit_page, |(p, _)| *p);
            if let Err(e) = self.index.append(cx, &mut self.db, frame, page) {
                let _ = self.index.rollback_to(cx, &mut self.db, self.hdr.mx_frame);
                return Err(e);
            }
        }
        let mut hdr = self.hdr;
        hdr.mx_frame = last;
        hdr.n_page = db_size;
        hdr.a_frame_cksum = self.wal.frame_checksum();
        hdr.i_change = hdr.i_change.wrapping_add(1);
        hdr.set_page_size(self.page_size);
        self.index.publish_header(cx, &mut self.db, &mut hdr)?;
        self.hdr = hdr;
        tracing::trace!(target: "fsqlite.wal.write", mx_frame = last, pages = frames.len(), db_size, "committed");
        if std::mem::take(&mut self.truncate_on_commit)
            && let Some(limit) = self.journal_size_limit
        {
            self.limit_wal_size(cx, limit, last);
        }
        Ok(last)
    }

    /// SQLite's `walLimitSize`: truncates `-wal` to `limit` bytes, or to the end of frame
    /// `last` if that is further; a failure is logged, never the commit's.
    fn limit_wal_size(&mut self, cx: &Cx, limit: u64, last: u32) {
        let end =
            wal_frame_data_offset(last, self.page_size.get()) + u64::from(self.page_size.get());
        let size = limit.max(end);
        match self.wal.file().file_size(cx) {
            Ok(now) if now > size => match self.wal.file_mut().truncate(cx, size) {
                Ok(()) => {
                    tracing::debug!(target: "fsqlite.wal.write", from = now, to = size, "journal_size_limit: truncated the WAL");
                }
                Err(e) => {
                    tracing::warn!(target: "fsqlite.wal.write", error = %e, "journal_size_limit: could not truncate the WAL; the commit stands");
                }
            },
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(target: "fsqlite.wal.write", error = %e, "journal_size_limit: could not size the WAL; the commit stands");
            }
        }
    }

    fn checkpoint_locked(
        &mut self,
        cx: &Cx,
        mode: CheckpointMode,
        write_held: &mut bool,
        before: Option<&mut HandOff<'_>>,
    ) -> Result<CheckpointOutcome> {
        let mut busy = false;
        let mut eff_mode = mode;
        let patience = self.patience();
        if mode != CheckpointMode::Passive {
            if locks::wait_exclusive_with(&mut self.db, cx, WAL_WRITE_LOCK, 1, &patience)? {
                self.write_locked = true;
                *write_held = true;
            } else {
                eff_mode = CheckpointMode::Passive;
                busy = true;
            }
        }
        match self.read_header_or_recover(cx) {
            Ok(_) => {}
            Err(FrankenError::Busy) => return Err(FrankenError::BusyRecovery),
            Err(e) => return Err(e),
        }
        let r0 = self.region0(cx, false)?;
        let mx = self.hdr.mx_frame;
        let go_on = match before {
            Some(f) => *write_held && f(&WalSnapshot::from_header(self.hdr))?,
            None => true,
        };
        if !go_on {
            return Ok(CheckpointOutcome {
                busy: true,
                log_frames: mx,
                checkpointed_frames: r0.n_backfill().min(mx),
            });
        }
        let uses_busy = eff_mode != CheckpointMode::Passive;
        if r0.n_backfill() < mx {
            let marks: [u32; WAL_READ_MARK_COUNT] = std::array::from_fn(|i| r0.read_mark(i));
            let db = &mut self.db;
            let sf = try_compute_safe_frame(mx, &marks, eff_mode, |att| {
                let slot = att.slot as u32;
                let got = if att.use_busy_handler {
                    locks::wait_exclusive_with(db, cx, wal_read_lock(slot), 1, &patience)?
                } else {
                    locks::try_exclusive(db, cx, wal_read_lock(slot), 1)?
                };
                if got {
                    r0.set_read_mark(att.slot, att.new_mark);
                    locks::unlock_exclusive(db, cx, wal_read_lock(slot), 1)?;
                    Ok(LockTry::Acquired)
                } else {
                    Ok(LockTry::Busy)
                }
            })?;
            let safe = sf.safe_frame;
            let n_backfill = r0.n_backfill();
            if n_backfill < safe {
                // As SQLite's walIteratorNext + walCheckpoint: each page's newest frame
                // up to mxFrame; a page whose newest frame lies past the safe frame is
                // skipped (plan_backfill drops frames > safe), not copied in an older
                // version, so a partial checkpoint leaves the same bytes as SQLite's.
                let entries = self.index.checkpoint_frames(
                    cx,
                    &mut self.db,
                    n_backfill,
                    mx,
                    self.hdr.n_page,
                )?;
                let plan = plan_backfill(
                    entries.iter().map(|e| (e.page.get(), e.frame)),
                    n_backfill,
                    safe,
                    self.hdr.n_page,
                    max_run_pages_for(self.page_size.get(), CHECKPOINT_RUN_BYTES),
                );
                let got0 = if uses_busy {
                    locks::wait_exclusive_with(&mut self.db, cx, wal_read_lock(0), 1, &patience)?
                } else {
                    locks::try_exclusive(&mut self.db, cx, wal_read_lock(0), 1)?
                };
                if got0 {
                    let r = self.backfill(cx, &r0, &plan, safe);
                    locks::unlock_exclusive(&mut self.db, cx, wal_read_lock(0), 1)?;
                    if let Err(e) = r {
                        if !e.is_transient() {
                            self.latch(&e);
                        }
                        return Err(e);
                    }
                }
                // else: a reader of the database file holds READ_LOCK(0). As in SQLite
                // that is not an error and not `busy` by itself: PASSIVE succeeds with
                // less copied; the other modes report busy below (nBackfill < mxFrame).
            }
        }
        let n_backfill = r0.n_backfill();
        debug_assert!(n_backfill <= r0.n_backfill_attempted() || r0.n_backfill_attempted() == 0); // inv: NBACKFILL_LE_ATTEMPTED
        if eff_mode != CheckpointMode::Passive && n_backfill < mx {
            busy = true;
        } else if matches!(eff_mode, CheckpointMode::Restart | CheckpointMode::Truncate)
            && *write_held
            && !busy
        {
            if locks::wait_exclusive_with(&mut self.db, cx, wal_read_lock(1), 4, &patience)? {
                let r = if eff_mode == CheckpointMode::Truncate {
                    self.restart_hdr(cx).and_then(|salt2| {
                        self.wal.truncate_to_zero(cx, salt2).inspect_err(|e| {
                            tracing::error!(target: "fsqlite.wal.checkpoint", error = %e, "WAL truncate failed");
                        })
                    })
                } else {
                    Ok(())
                };
                locks::unlock_exclusive(&mut self.db, cx, wal_read_lock(1), 4)?;
                r?;
            } else {
                busy = true;
            }
        }
        let live = load_header_copies(&r0)[0];
        Ok(CheckpointOutcome {
            busy,
            log_frames: live.mx_frame,
            checkpointed_frames: r0.n_backfill().min(live.mx_frame),
        })
    }

    /// Steps (d)–(g) of SQLite's `walCheckpoint`, with the recovery barrier. The caller
    /// holds CKPT and READ_LOCK(0) exclusively.
    fn backfill(
        &mut self,
        cx: &Cx,
        r0: &ShmRegion,
        plan: &crate::checkpoint::BackfillPlan,
        safe: u32,
    ) -> Result<()> {
        let live = load_header_copies(r0)[0];
        match decide_backfill(r0.n_backfill(), safe, self.hdr.a_salt, live.a_salt) {
            BackfillDecision::NothingToCopy => return Ok(()),
            BackfillDecision::WalRestarted => {
                tracing::debug!(target: "fsqlite.wal.checkpoint", "WAL restarted during checkpoint; nothing copied");
                return Ok(());
            }
            BackfillDecision::Copy { .. } => {}
        }
        r0.set_n_backfill_attempted(safe);
        if self.options.sync != SyncMode::Off {
            self.wal.fsync(cx)?;
        }
        let complete = safe == live.mx_frame;
        let job = CheckpointJob {
            page_size: self.page_size.get(),
            plan,
            n_page: self.hdr.n_page,
            complete,
            verify_mode: PageVerifyMode::WholePage,
        };
        let report = if self.skip_barrier_for_tests {
            // Test hook: write through a second handle whose target never syncs.
            let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB;
            let (mut second, _) = self.vfs.open(cx, Some(&self.db_path), flags)?;
            let mut target = NoSyncTarget(DbFileTarget::new(&mut second, self.page_size.get())?);
            execute_checkpoint(cx, self.wal.file(), &job, &mut target, &self.db)?
        } else {
            execute_checkpoint_on_file(cx, self.wal.file(), &job, &mut self.db)?
        };
        // inv: BARRIER_BEFORE_NBACKFILL — the database is fsynced and verified here.
        r0.set_n_backfill(safe);
        tracing::debug!(
            target: "fsqlite.wal.checkpoint",
            pages = report.pages_written,
            runs = report.runs,
            safe_frame = safe,
            complete,
            "backfilled through the recovery barrier"
        );
        Ok(())
    }
}

/// The target of [`Wal::set_skip_checkpoint_barrier_for_tests`]: database writes whose
/// `sync_db` does nothing (test hook only).
struct NoSyncTarget<'a, F: VfsFile>(DbFileTarget<'a, F>);

impl<F: VfsFile> CheckpointTarget for NoSyncTarget<'_, F> {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        self.0.write_page(cx, page, data)
    }

    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        self.0.truncate_db(cx, n_pages)
    }

    fn sync_db(&mut self, _cx: &Cx) -> Result<()> {
        Ok(())
    }

    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        self.0.write_pages(cx, first, page_size, data)
    }
}

/// What a transaction reads: the header's frames, the regions mapped for them.
#[derive(Debug)]
struct Snapshot {
    regions: Vec<ShmRegion>,
    /// `Wal::frame_map` describes exactly frames `1..=mx_frame` of this snapshot.
    use_map: bool,
    mx_frame: u32,
    min_frame: u32,
    db_size: u32,
    /// The header the snapshot is of (its `mx_frame` even when reading the db file only).
    hdr: WalIndexHdr,
}

/// A read transaction: a consistent snapshot, protected by a read mark until dropped.
pub struct ReadTxn<'a, V: Vfs> {
    wal: &'a mut Wal<V>,
    snap: Snapshot,
}

impl<V: Vfs> std::fmt::Debug for ReadTxn<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadTxn")
            .field("mx_frame", &self.snap.mx_frame)
            .field("db_size", &self.snap.db_size)
            .finish_non_exhaustive()
    }
}

impl<V: Vfs> ReadTxn<'_, V> {
    /// The database size in pages at this snapshot.
    pub fn db_size(&self) -> u32 {
        self.snap.db_size
    }

    /// The snapshot's last commit frame (0 when it reads the database file only).
    pub fn mx_frame(&self) -> u32 {
        self.snap.mx_frame
    }

    /// A handle on this transaction's snapshot (SQLite's `sqlite3_snapshot_get`), to
    /// open it again later with [`Wal::begin_read_at`] (see [`crate::snapshot`]).
    pub fn snapshot(&self) -> WalSnapshot {
        let mut hdr = self.snap.hdr;
        hdr.seal();
        WalSnapshot::new(hdr)
    }

    /// Reads `page` as of this snapshot into `buf` (exactly one page). Pages past the end
    /// of the database file read as zeros.
    pub fn read_page(&self, cx: &Cx, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        self.wal.read_page_snapshot(cx, &self.snap, page, buf)
    }
}

impl<V: Vfs> Drop for ReadTxn<'_, V> {
    fn drop(&mut self) {
        let cx = self.wal.drop_cx.clone();
        self.wal.end_read(&cx);
    }
}

/// A write transaction: pages are buffered until [`WriteTxn::commit`]; dropping it
/// without committing rolls back.
pub struct WriteTxn<'a, V: Vfs> {
    wal: &'a mut Wal<V>,
    snap: Snapshot,
    dirty: BTreeMap<PageNumber, Vec<u8>>,
    /// Open savepoints and their undo images.
    undo: UndoLog<PageNumber, Vec<u8>>,
    done: bool,
}

impl<V: Vfs> std::fmt::Debug for WriteTxn<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTxn")
            .field("mx_frame", &self.snap.mx_frame)
            .field("dirty_pages", &self.dirty.len())
            .finish_non_exhaustive()
    }
}

impl<V: Vfs> WriteTxn<'_, V> {
    /// The database size in pages at the transaction's snapshot.
    pub fn db_size(&self) -> u32 {
        self.snap.db_size
    }

    /// Reads `page`: this transaction's own write if any, else the snapshot.
    pub fn read_page(&self, cx: &Cx, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        if let Some(d) = self.dirty.get(&page) {
            if buf.len() != d.len() {
                return Err(FrankenError::out_of_range(
                    format!("read buffer length (page size {})", d.len()),
                    buf.len(),
                ));
            }
            buf.copy_from_slice(d);
            return Ok(());
        }
        self.wal.read_page_snapshot(cx, &self.snap, page, buf)
    }

    /// Buffers a new image of `page` (exactly one page of bytes).
    pub fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        cx.checkpoint()?;
        let ps = self.wal.page_size.bytes();
        if data.len() != ps {
            return Err(FrankenError::out_of_range(
                format!("page length for page {page} (page size {ps})"),
                data.len(),
            ));
        }
        self.undo.record(page, &self.dirty);
        match self.dirty.entry(page) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                e.get_mut().copy_from_slice(data);
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                let mut buf = self.wal.spare_pages.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(data);
                e.insert(buf);
            }
        }
        Ok(())
    }

    /// Opens a savepoint (SQLite's `SAVEPOINT`), nested inside any open one:
    /// [`WriteTxn::rollback_to`] undoes the writes made since, [`WriteTxn::release`]
    /// keeps them. Memory: one saved image per page first overwritten inside a savepoint
    /// (pages first written inside it need none).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::MemoryVfs;
    /// use fsqlite_wal::{Wal, WalOptions};
    ///
    /// let cx = Cx::new();
    /// let mut wal = Wal::open(&cx, Arc::new(MemoryVfs::new()), "/sp.db", WalOptions::default()).unwrap();
    /// let (p1, p2) = (PageNumber::new(1).unwrap(), PageNumber::new(2).unwrap());
    /// let mut tx = wal.begin_write(&cx).unwrap();
    /// tx.write_page(&cx, p1, &[1u8; 4096]).unwrap();
    /// let sp = tx.savepoint();
    /// tx.write_page(&cx, p1, &[2u8; 4096]).unwrap();
    /// tx.write_page(&cx, p2, &[2u8; 4096]).unwrap();
    /// tx.rollback_to(sp).unwrap(); // page 1 is back to 1s, page 2 unwritten
    /// tx.release(sp).unwrap();
    /// let mut buf = [0u8; 4096];
    /// tx.read_page(&cx, p1, &mut buf).unwrap();
    /// assert_eq!(buf[0], 1);
    /// assert_eq!(tx.pages_written(), 1);
    /// tx.commit(&cx, 1).unwrap();
    /// ```
    pub fn savepoint(&mut self) -> Savepoint {
        self.undo.savepoint()
    }

    /// Undoes every write made since `sp` opened (savepoints nested in it close); `sp`
    /// stays open, as SQLite's `ROLLBACK TO` leaves it.
    pub fn rollback_to(&mut self, sp: Savepoint) -> Result<()> {
        self.undo.rollback_to(sp, &mut self.dirty)
    }

    /// Closes `sp` and the savepoints nested in it, keeping their writes (merged into the
    /// enclosing savepoint, if any).
    pub fn release(&mut self, sp: Savepoint) -> Result<()> {
        self.undo.release(sp)
    }

    /// Distinct pages written so far.
    pub fn pages_written(&self) -> usize {
        self.dirty.len()
    }

    /// Commits: appends the pages (those `<= db_size`) to the WAL with the commit marker
    /// `db_size`, syncs per `SyncMode`, indexes and publishes them, and returns the new
    /// `mxFrame`. When this returns `Ok` the commit is durable (per `SyncMode`) and
    /// visible to every new reader, SQLite processes included.
    pub fn commit(mut self, cx: &Cx, db_size: u32) -> Result<u32> {
        let dirty = std::mem::take(&mut self.dirty);
        let r = self.wal.commit_inner(cx, &dirty, db_size);
        self.wal.recycle_pages(dirty);
        self.done = true;
        self.wal.end_write_and_read(cx);
        let mx = r?;
        if let Some(hook) = self.wal.commit_hook.clone() {
            let action = hook(&CommitInfo {
                db_path: &self.wal.db_path,
                wal_frames: mx,
                commit_frame: mx,
                db_size,
            });
            if let CommitAction::Checkpoint(mode) = action {
                match self.wal.checkpoint(cx, mode) {
                    Ok(_) | Err(FrankenError::Busy | FrankenError::BusyRecovery) => {}
                    Err(e) => {
                        tracing::warn!(target: "fsqlite.wal.checkpoint", error = %e, ?mode, "checkpoint asked for by the commit hook failed; the commit stands");
                    }
                }
            }
        }
        Ok(mx)
    }

    /// Discards the buffered pages and releases the locks.
    pub fn rollback(mut self, cx: &Cx) -> Result<()> {
        self.finish(cx);
        Ok(())
    }

    fn finish(&mut self, cx: &Cx) {
        if !self.done {
            self.done = true;
            self.undo.clear();
            let dirty = std::mem::take(&mut self.dirty);
            self.wal.recycle_pages(dirty);
            self.wal.end_write_and_read(cx);
        }
    }
}

impl<V: Vfs> Drop for WriteTxn<'_, V> {
    fn drop(&mut self) {
        if !self.done {
            let cx = self.wal.drop_cx.clone();
            self.finish(&cx);
        }
    }
}
