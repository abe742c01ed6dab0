//! `BEGIN CONCURRENT`: many write transactions of one process at once, with page-level
//! versioning on the WAL and group commit.
//!
//! ```text
//! begin     snapshot := (newest published mxFrame, its database size, WAL generation);
//!           a read mark <= snapshot is held on the reader handle (a second descriptor of
//!           the database, so its locks are seen by everyone, this coordinator included);
//!           in-process transactions share the five slots by reference count
//! read      own write set, else the newest frame <= snapshot of the page (the version
//!           map), else the database file; the page joins the read set
//! write     into the private write set (bounded: CoordinatorOptions::max_txn_pages)
//! commit    queue for the group commit; the leader, under the coordinator's core lock:
//!   1 validate each queued transaction in ticket order: no page of its read set or
//!     write set has a frame newer than its snapshot (frames of transactions accepted
//!     earlier in the same batch count), and the database size rule; a loser gets
//!     SQLITE_BUSY_SNAPSHOT (517) naming the page and the frame, and writes nothing
//!   2 release the batch's read marks (validation needed them no longer), restart the
//!     WAL if a checkpointer backfilled everything and no reader remains
//!   3 append every accepted transaction in one run of writes, each ending in its own
//!     commit frame; one sync per SyncMode; index every frame in the legacy hash tables;
//!     publish the header once (both copies)
//!   4 only then extend the version map and the published snapshot, and wake the waiters
//! ```
//!
//! # Why a version map beside the `-shm` hash tables
//!
//! The WAL is the only version store: the map holds frame *numbers*, never page images.
//! For each page it lists the frames of the current WAL generation that hold it, in
//! order, so a snapshot read is a binary search and validation looks at the last entry,
//! without mapping `-shm` regions or taking the core lock (readers and validation never
//! wait for a batch's fsync). The coordinator is the only writer while it holds
//! `WAL_WRITE_LOCK`, so the map is exact: it is filled from the `-shm` page-number arrays
//! at takeover and extended by every batch, and cleared when the coordinator restarts the
//! WAL (which needs every read mark free, so no live snapshot spans a restart).
//!
//! # Why reads never see a later commit
//!
//! Frames are immutable until a WAL restart, and a restart needs `WAL_READ_LOCK(1..5)`
//! exclusively, which the reader handle's shared locks forbid. A page with no frame
//! `<= snapshot` is read from the database file; a checkpointer (a legacy SQLite process)
//! copies only frames `<=` the smallest read mark it cannot take, and the transaction's
//! mark is `<=` its snapshot, so it never copies a newer version of such a page.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber, PageSize, VfsOpenFlags};
use fsqlite_vfs::{ShmRegion, Vfs, VfsFile, wal_read_lock};
use fsqlite_wal::GroupedCommit;
use fsqlite_wal::WalSnapshot;
use fsqlite_wal::checkpoint_executor::wal_frame_data_offset;
use fsqlite_wal::hooks::{
    BusyHandler, CommitAction, CommitHook, CommitInfo, ReadMarkStatus, WalStatus,
};
use fsqlite_wal::locking_mode::LockingMode;
use fsqlite_wal::locks::{self, Patience};
use fsqlite_wal::savepoint::{Savepoint, UndoLog};
use fsqlite_wal::snapshot::{check_available, check_commit_frame};
use fsqlite_wal::wal_index::{
    HeaderMemory, HeaderRead, WAL_READ_MARK_COUNT, WALINDEX_PGSZ, WalIndex, WalIndexHdr,
    load_header_copies,
};
use parking_lot::{Mutex, RwLock};

use crate::compat::HybridShmState;
use crate::coordinator::{Hybrid, Takeover};
use crate::group_commit::GroupCommit;
use crate::lifecycle::CoordinatorRecord;

const TRACE: &str = "fsqlite.mvcc.concurrent";

/// The longest a group-commit leader waits for the previous batch's writers.
const MAX_GATHER: Duration = Duration::from_millis(1);

/// The longest a thread that lost a conflict waits for the batch in flight.
const MAX_BACKOFF: Duration = Duration::from_millis(5);

thread_local! {
    /// The coordinator (address) on which this thread's last transaction lost a
    /// conflict, or 0 (see `HybridShared::back_off_after_conflict`).
    static LOST_CONFLICT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counters of the concurrent-writer machinery ([`crate::Coordinator::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConcurrencyStats {
    /// Transactions committed (concurrent and blind; read-only ones included).
    pub commits: u64,
    /// Transactions refused with SQLITE_BUSY_SNAPSHOT.
    pub conflicts: u64,
    /// Group-commit batches that wrote to the WAL.
    pub batches: u64,
    /// WAL syncs made by those batches (one per batch under `SyncMode::Full`).
    pub wal_syncs: u64,
}

#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    conflicts: AtomicU64,
    batches: AtomicU64,
    wal_syncs: AtomicU64,
}

/// The published state and, per page, the frames of the current WAL generation.
#[derive(Debug, Default)]
struct Versions {
    /// Newest published commit frame (the snapshot a new transaction takes).
    mx: u32,
    /// Database size after it.
    n_page: u32,
    /// WAL generation (bumped by every restart, ours or another writer's).
    generation: u64,
    /// The published WAL-index header of `mx` (what a snapshot handle names); its salts
    /// are the generation's (a change in the live header is a restart).
    hdr: WalIndexHdr,
    /// Page -> frames holding it, ascending, all `<= mx`.
    frames: HashMap<u32, Vec<u32>>,
    /// Commit frames (ascending) after which the database size changed.
    size_changes: Vec<u32>,
}

impl Versions {
    fn newest_at_or_below(&self, page: u32, snapshot: u32) -> Option<u32> {
        let list = self.frames.get(&page)?;
        let n = list.partition_point(|&f| f <= snapshot);
        n.checked_sub(1).map(|k| list[k])
    }

    fn newest(&self, page: u32) -> Option<u32> {
        self.frames.get(&page).and_then(|l| l.last().copied())
    }

    /// Takes up the published header `hdr` (a commit by this process, another fsqlite
    /// process or an admitted SQLite writer): the frames past `mx` from the `-shm`
    /// page-number arrays (`page_of`), a size change when `nPage` differs, and on new
    /// salts (a WAL restart) a new generation whose every frame is new. Monotone and
    /// idempotent: a header this map is already at (or past) changes nothing.
    fn catch_up(
        &mut self,
        hdr: &WalIndexHdr,
        mut page_of: impl FnMut(u32) -> Result<u32>,
    ) -> Result<()> {
        let restarted = hdr.wal_salts() != self.hdr.wal_salts();
        if !restarted && hdr.mx_frame <= self.mx {
            return Ok(());
        }
        if restarted {
            // A generation without frames (the first commit of a new WAL, or one that was
            // restarted before) has only frame-0 snapshots, which read the database file
            // alone; every frame of the new salts is newer than them, as in one generation.
            if self.mx > 0 {
                self.generation += 1;
            }
            self.mx = 0;
            self.frames.clear();
            self.size_changes.clear();
        }
        for frame in self.mx + 1..=hdr.mx_frame {
            let page = page_of(frame)?;
            self.frames.entry(page).or_default().push(frame);
        }
        let n_page = if hdr.mx_frame > 0 || hdr.n_page > 0 {
            hdr.n_page
        } else {
            self.n_page
        };
        if n_page != self.n_page {
            self.size_changes.push(hdr.mx_frame);
            self.n_page = n_page;
        }
        self.mx = hdr.mx_frame;
        self.hdr = *hdr;
        Ok(())
    }
}

/// A snapshot: what a transaction reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    frame: u32,
    db_size: u32,
    generation: u64,
    /// The published header of `frame` (the snapshot handle; its salts name the WAL
    /// generation).
    hdr: WalIndexHdr,
}

/// Read-mark slots held on the reader handle, shared by reference count.
struct ReadSlots<F> {
    file: F,
    region0: Option<ShmRegion>,
    /// The `-shm` regions seen through `file` (page numbers of other writers' frames).
    index: WalIndex,
    /// `(mark, references)` per slot (slot 0 is never used).
    held: [(u32, u32); WAL_READ_MARK_COUNT],
}

/// The hybrid coordinator shared by threads (see the module docs).
pub(crate) struct HybridShared<V: Vfs> {
    core: Mutex<Hybrid<V>>,
    slots: Mutex<ReadSlots<V::File>>,
    versions: RwLock<Versions>,
    wal_reader: V::File,
    db_reader: V::File,
    wal_path: PathBuf,
    db_path: PathBuf,
    group: GroupCommit<Request, Result<u32>>,
    counters: Counters,
    pub(crate) page_size: PageSize,
    pub(crate) takeover: Takeover,
    pub(crate) record: CoordinatorRecord,
    max_txn_pages: usize,
    max_read_set: usize,
    busy_timeout: Duration,
    hooks: RwLock<Hooks>,
    /// The validated batch being made durable, if any.
    in_flight: Mutex<InFlight>,
    /// Notified when a batch in flight is published (or fails).
    published: parking_lot::Condvar,
}

/// The batch between its validation and its publish.
#[derive(Default)]
struct InFlight {
    active: bool,
    /// Batches published so far (waiters compare it).
    published: u64,
    /// Page -> commit frame of the batch's transactions that wrote it.
    pages: HashMap<u32, u32>,
    /// Commit frame after which the batch changed the database size.
    size_change: Option<u32>,
    /// Database size after the batch.
    n_page: u32,
}

/// The engine hooks installed on the coordinator.
#[derive(Default)]
struct Hooks {
    commit: Option<CommitHook>,
    busy: Option<BusyHandler>,
}

/// What a transaction hands to the group commit.
struct Request {
    /// `None` for a blind write ([`crate::Coordinator::commit`]).
    snapshot: Option<Snapshot>,
    reads: HashSet<u32>,
    read_all: bool,
    writes: BTreeMap<u32, Box<[u8]>>,
    db_size: u32,
    /// The read-mark slot to release once validated.
    slot: Option<usize>,
}

/// A validated transaction's frames (page order) and database size.
struct Validated<'a> {
    frames: Vec<(PageNumber, &'a [u8])>,
    db_size: u32,
}

/// A validated transaction of a batch.
struct Accepted<'a> {
    index: usize,
    frames: Vec<(PageNumber, &'a [u8])>,
    db_size: u32,
}

impl<V: Vfs> HybridShared<V> {
    /// Wraps a coordinator that has taken over: opens the reader handles and fills the
    /// version map from the `-shm` page-number arrays.
    pub(crate) fn new(cx: &Cx, mut core: Hybrid<V>) -> Result<Self> {
        let ro = VfsOpenFlags::READWRITE;
        let (wal_reader, _) = core.vfs.open(
            cx,
            Some(&core.wal_path),
            VfsOpenFlags::READWRITE | VfsOpenFlags::WAL,
        )?;
        let (db_reader, _) = core
            .vfs
            .open(cx, Some(&core.db_path), ro | VfsOpenFlags::MAIN_DB)?;
        let (lock_file, _) = core
            .vfs
            .open(cx, Some(&core.db_path), ro | VfsOpenFlags::MAIN_DB)?;
        let hdr = core.state.legacy_hdr();
        let mut versions = Versions {
            mx: hdr.mx_frame,
            generation: 0,
            hdr,
            ..Versions::default()
        };
        versions.n_page = if hdr.mx_frame > 0 {
            hdr.n_page
        } else {
            let bytes = core.db.file_size(cx)?;
            u32::try_from(bytes / u64::from(core.page_size.get())).unwrap_or(u32::MAX)
        };
        for frame in 1..=hdr.mx_frame {
            if frame % 4096 == 0 {
                cx.checkpoint()?;
            }
            let page = core.index.frame_page(cx, &mut core.db, frame)?;
            versions.frames.entry(page.get()).or_default().push(frame);
        }
        let page_size = core.page_size;
        let takeover = core.takeover.clone();
        let record = core.record;
        let max_txn_pages = core.options.max_txn_pages.max(1);
        let max_read_set = core.options.max_read_set.max(1);
        let busy_timeout = core.options.busy_timeout;
        let wal_path = core.wal_path.clone();
        let db_path = core.db_path.clone();
        Ok(Self {
            core: Mutex::new(core),
            slots: Mutex::new(ReadSlots {
                file: lock_file,
                region0: None,
                index: WalIndex::new(),
                held: [(0, 0); WAL_READ_MARK_COUNT],
            }),
            versions: RwLock::new(versions),
            wal_reader,
            db_reader,
            wal_path,
            db_path,
            group: GroupCommit::new(),
            counters: Counters::default(),
            page_size,
            takeover,
            record,
            max_txn_pages,
            max_read_set,
            busy_timeout,
            hooks: RwLock::new(Hooks::default()),
            in_flight: Mutex::new(InFlight::default()),
            published: parking_lot::Condvar::new(),
        })
    }

    /// The core, for close (no transaction can be open: they borrow the coordinator).
    pub(crate) fn into_core(self) -> Hybrid<V> {
        let Self {
            core, mut slots, ..
        } = self;
        let slots = slots.get_mut();
        let cx = Cx::new();
        for slot in 1..WAL_READ_MARK_COUNT {
            if slots.held[slot].1 > 0 {
                let _ = locks::unlock_shared(&mut slots.file, &cx, wal_read_lock(slot as u32));
            }
        }
        slots.index.forget_mappings();
        let _ = slots.file.shm_unmap(&cx, false);
        core.into_inner()
    }

    pub(crate) fn stats(&self) -> ConcurrencyStats {
        ConcurrencyStats {
            commits: self.counters.commits.load(Ordering::Relaxed),
            conflicts: self.counters.conflicts.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            wal_syncs: self.counters.wal_syncs.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn legacy_state(&self) -> HybridShmState {
        self.core.lock().state.clone()
    }

    /// `(mxFrame, database size)` of the newest published commit.
    pub(crate) fn newest(&self) -> (u32, u32) {
        let v = self.versions.read();
        (v.mx, v.n_page)
    }

    pub(crate) fn begin(&self, cx: &Cx) -> Result<ConcurrentTxn<'_, V>> {
        self.back_off_after_conflict();
        let (snapshot, slot) = self.acquire_snapshot(cx)?;
        tracing::trace!(target: TRACE, snapshot = snapshot.frame, slot, "begin concurrent");
        Ok(self.txn(snapshot, slot))
    }

    /// `begin`, on the older snapshot `handle` names (see `Coordinator::begin_concurrent_at`).
    pub(crate) fn begin_at(&self, cx: &Cx, handle: &WalSnapshot) -> Result<ConcurrentTxn<'_, V>> {
        let hdr = handle.header();
        {
            let mut slots = self.slots.lock();
            self.catch_up_live(cx, &mut slots)?;
        }
        let target = {
            let v = self.versions.read();
            check_available(&hdr, v.hdr.wal_salts(), v.mx, None)?;
            if hdr.mx_frame == 0 && v.mx > 0 {
                return Err(FrankenError::SnapshotUnavailable {
                    reason:
                        "it predates the WAL's first commit (its database size is no longer known)"
                            .to_owned(),
                });
            }
            Snapshot {
                frame: hdr.mx_frame,
                db_size: if hdr.mx_frame > 0 {
                    hdr.n_page
                } else {
                    v.n_page
                },
                generation: v.generation,
                hdr,
            }
        };
        self.verify_commit_frame(cx, &hdr)?;
        let start = std::time::Instant::now();
        loop {
            let (snapshot, slot) = self.acquire_snapshot_for(cx, Some(target))?;
            // As SQLite's walBeginReadTransaction: under CKPT shared (no checkpoint in
            // progress), the mark now held keeps later checkpoints at or below the
            // snapshot; one that already ran must not have copied past it.
            let checked = {
                let mut guard = self.slots.lock();
                let slots = &mut *guard;
                let r0 = slots.region0.clone();
                if locks::try_shared(&mut slots.file, cx, fsqlite_vfs::WAL_CKPT_LOCK)? {
                    let r = r0.as_ref().map_or(Ok(()), |r0| {
                        let live = load_header_copies(r0)[0];
                        check_available(
                            &hdr,
                            live.wal_salts(),
                            live.mx_frame,
                            Some(r0.n_backfill_attempted()),
                        )
                    });
                    locks::unlock_shared(&mut slots.file, cx, fsqlite_vfs::WAL_CKPT_LOCK)?;
                    Some(r)
                } else {
                    None
                }
            };
            match checked {
                Some(Ok(())) => {
                    tracing::debug!(target: TRACE, snapshot = snapshot.frame, slot, "begin concurrent on a snapshot");
                    return Ok(self.txn(snapshot, slot));
                }
                Some(Err(e)) => {
                    self.release_slot(slot);
                    return Err(e);
                }
                None => {
                    // A checkpoint is running: retry once it is done.
                    self.release_slot(slot);
                    if start.elapsed() > self.busy_timeout {
                        return Err(FrankenError::Busy);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }

    /// A new transaction on `snapshot`, protected by read-mark `slot`.
    fn txn(&self, snapshot: Snapshot, slot: usize) -> ConcurrentTxn<'_, V> {
        ConcurrentTxn {
            shared: self,
            snapshot,
            slot,
            reads: HashSet::new(),
            read_all: false,
            writes: BTreeMap::new(),
            undo: UndoLog::new(),
            done: false,
        }
    }

    /// The commit frame a snapshot handle names must be in the WAL as it says.
    fn verify_commit_frame(&self, cx: &Cx, hdr: &WalIndexHdr) -> Result<()> {
        if hdr.mx_frame == 0 {
            return Ok(());
        }
        let mut b = [0u8; fsqlite_wal::format::WAL_FRAME_HEADER_SIZE];
        let off = wal_frame_data_offset(hdr.mx_frame, self.page_size.get()) - b.len() as u64;
        if self.wal_reader.read(cx, &mut b, off)? < b.len() {
            return Err(FrankenError::SnapshotUnavailable {
                reason: format!(
                    "frame {} lies past the end of {}",
                    hdr.mx_frame,
                    self.wal_path.display()
                ),
            });
        }
        let fh = fsqlite_wal::format::FrameHeader::from_bytes(&b);
        check_commit_frame(hdr, &fh, &self.wal_path)
    }

    /// Conflict back-off: a thread whose last transaction here lost a conflict, and that
    /// begins again while a batch is being made durable, waits for that batch to be
    /// published first (at most [`MAX_BACKOFF`]). Its retry then reads the winner's
    /// pages instead of a snapshot the batch in flight is about to make stale (on a hot
    /// page, the retry would otherwise lose again, one batch later, every time).
    fn back_off_after_conflict(&self) {
        let me = std::ptr::from_ref(self) as usize;
        if LOST_CONFLICT.with(|c| c.replace(0)) != me {
            return;
        }
        let mut flight = self.in_flight.lock();
        if flight.active {
            let seen = flight.published;
            let deadline = std::time::Instant::now() + MAX_BACKOFF;
            while flight.active && flight.published == seen {
                if self.published.wait_until(&mut flight, deadline).timed_out() {
                    break;
                }
            }
        }
    }

    fn note_conflict(&self) {
        let me = std::ptr::from_ref(self) as usize;
        LOST_CONFLICT.with(|c| c.set(me));
    }

    /// A snapshot of the newest commit and a read-mark slot that protects it (see the
    /// module docs), following SQLite's rule: lock first, then check that the snapshot
    /// is still the newest, else retry.
    fn acquire_snapshot(&self, cx: &Cx) -> Result<(Snapshot, usize)> {
        self.acquire_snapshot_for(cx, None)
    }

    /// [`HybridShared::acquire_snapshot`], or with `target` a read mark at or below that
    /// (older) snapshot.
    fn acquire_snapshot_for(&self, cx: &Cx, target: Option<Snapshot>) -> Result<(Snapshot, usize)> {
        let busy_timeout = self.busy_timeout;
        let busy = self.hooks.read().busy.clone();
        let start = std::time::Instant::now();
        let mut attempt = 0u32;
        loop {
            cx.checkpoint()?;
            if let Some(got) = self.try_acquire_snapshot(cx, target)? {
                return Ok(got);
            }
            let go_on = match &busy {
                Some(handler) => handler(attempt),
                None => start.elapsed() < busy_timeout,
            };
            attempt += 1;
            if !go_on {
                tracing::debug!(target: TRACE, attempt, "no read mark could be had");
                return Err(FrankenError::Busy);
            }
            std::thread::sleep(Duration::from_micros(u64::from(attempt.min(100)) * 20));
        }
    }

    pub(crate) fn set_commit_hook(&self, hook: Option<CommitHook>) {
        self.hooks.write().commit = hook;
    }

    pub(crate) fn set_busy_handler(&self, handler: Option<BusyHandler>) {
        self.hooks.write().busy = handler;
    }

    pub(crate) fn set_journal_size_limit(&self, limit: Option<u64>) {
        self.core.lock().journal_size_limit = limit;
    }

    fn patience(&self) -> Patience {
        Patience {
            timeout: self.busy_timeout,
            handler: self.hooks.read().busy.clone(),
        }
    }

    /// The one-call status (see [`WalStatus`]); read marks held by this process's
    /// transactions count as in use, the others are probed with a try-lock.
    pub(crate) fn status(&self, cx: &Cx) -> Result<WalStatus> {
        let st = self.legacy_state();
        let hdr = st.legacy_hdr();
        let (mx, n_page) = self.newest();
        let mut guard = self.slots.lock();
        let slots = &mut *guard;
        if slots.region0.is_none() {
            slots.region0 = slots.file.shm_map(cx, 0, WALINDEX_PGSZ as u32, false)?;
        }
        let Some(r0) = slots.region0.clone() else {
            return Err(FrankenError::internal("WAL-index region 0 is not mapped"));
        };
        let mut read_marks = Vec::with_capacity(WAL_READ_MARK_COUNT);
        for slot in 0..WAL_READ_MARK_COUNT {
            let in_use = if slots.held[slot].1 > 0 {
                true
            } else {
                let lock = wal_read_lock(slot as u32);
                let free = locks::try_exclusive(&mut slots.file, cx, lock, 1)?;
                if free {
                    locks::unlock_exclusive(&mut slots.file, cx, lock, 1)?;
                }
                !free
            };
            read_marks.push(ReadMarkStatus {
                slot,
                mark: r0.read_mark(slot),
                in_use,
            });
        }
        Ok(WalStatus {
            wal_frames: mx,
            backfilled: r0.n_backfill(),
            backfill_attempted: r0.n_backfill_attempted(),
            db_size: n_page,
            page_size: self.page_size.get(),
            read_marks,
            locking_mode: LockingMode::Normal,
            salts: hdr.wal_salts(),
        })
    }

    fn current(&self) -> Snapshot {
        let v = self.versions.read();
        Snapshot {
            frame: v.mx,
            db_size: v.n_page,
            generation: v.generation,
            hdr: v.hdr,
        }
    }

    /// At begin: takes up commits other writers published since (lock-free read of the
    /// live header, as a SQLite reader does; a header being written is skipped: the
    /// snapshot is then the last one seen, which is still a committed state).
    fn catch_up_live(&self, cx: &Cx, slots: &mut ReadSlots<V::File>) -> Result<()> {
        let mut live = WalIndexHdr::default();
        match slots
            .index
            .read_header(cx, &mut slots.file, false, &mut live)?
        {
            HeaderRead::Unchanged | HeaderRead::Changed => {}
            HeaderRead::UnsupportedVersion { .. } | HeaderRead::NeedsRecovery(_) => {
                return Ok(());
            }
        }
        {
            let v = self.versions.read();
            if v.hdr.wal_salts() == live.wal_salts() && live.mx_frame <= v.mx {
                return Ok(());
            }
        }
        let mut v = self.versions.write();
        let ReadSlots { file, index, .. } = slots;
        v.catch_up(&live, |f| {
            index.frame_page(cx, file, f).map(PageNumber::get)
        })
    }

    fn try_acquire_snapshot(
        &self,
        cx: &Cx,
        target: Option<Snapshot>,
    ) -> Result<Option<(Snapshot, usize)>> {
        let mut guard = self.slots.lock();
        let slots = &mut *guard;
        self.catch_up_live(cx, slots)?;
        let snap = target.unwrap_or_else(|| self.current());
        // With a target the snapshot need not be the newest: only its generation must
        // still be the live one (checked below, once a mark is held).
        let moved = |me: &Self| target.is_none() && me.current() != snap;
        // 1. join an in-process slot whose mark is this snapshot
        if let Some(i) =
            (1..WAL_READ_MARK_COUNT).find(|&i| slots.held[i].1 > 0 && slots.held[i].0 == snap.frame)
        {
            slots.held[i].1 += 1;
            return Ok(Some((snap, i)));
        }
        if slots.region0.is_none() {
            slots.region0 = slots.file.shm_map(cx, 0, WALINDEX_PGSZ as u32, false)?;
        }
        let Some(r0) = slots.region0.clone() else {
            return Err(FrankenError::internal(
                "WAL-index region 0 is not mapped although the coordinator holds it",
            ));
        };
        // 2. claim a slot nobody holds: mark := snapshot
        for i in 1..WAL_READ_MARK_COUNT {
            if slots.held[i].1 > 0 {
                continue;
            }
            let lock = wal_read_lock(i as u32);
            if !locks::try_exclusive(&mut slots.file, cx, lock, 1)? {
                continue;
            }
            r0.set_read_mark(i, snap.frame);
            match slots.file.shm_downgrade(cx, lock) {
                Ok(()) => {}
                Err(FrankenError::Busy) => {
                    locks::unlock_exclusive(&mut slots.file, cx, lock, 1)?;
                    if !locks::try_shared(&mut slots.file, cx, lock)? {
                        continue;
                    }
                }
                Err(e) => return Err(e),
            }
            r0.barrier();
            if r0.read_mark(i) != snap.frame
                || moved(self)
                || !live_salts_are(&r0, snap.hdr.wal_salts())
            {
                locks::unlock_shared(&mut slots.file, cx, lock)?;
                return Ok(None);
            }
            slots.held[i] = (snap.frame, 1);
            return Ok(Some((snap, i)));
        }
        // 3. join the in-process slot with the newest mark (<= the snapshot: marks are
        //    published frames of this generation, which cannot change while held)
        if let Some(i) = (1..WAL_READ_MARK_COUNT)
            .filter(|&i| slots.held[i].1 > 0 && slots.held[i].0 <= snap.frame)
            .max_by_key(|&i| slots.held[i].0)
        {
            slots.held[i].1 += 1;
            return Ok(Some((snap, i)));
        }
        // 4. share a slot another process holds with a mark <= the snapshot
        for i in 1..WAL_READ_MARK_COUNT {
            let m = r0.read_mark(i);
            if m > snap.frame {
                continue;
            }
            let lock = wal_read_lock(i as u32);
            if !locks::try_shared(&mut slots.file, cx, lock)? {
                continue;
            }
            r0.barrier();
            if r0.read_mark(i) != m || moved(self) || !live_salts_are(&r0, snap.hdr.wal_salts()) {
                locks::unlock_shared(&mut slots.file, cx, lock)?;
                return Ok(None);
            }
            slots.held[i] = (m, 1);
            return Ok(Some((snap, i)));
        }
        Ok(None)
    }

    fn release_slot(&self, slot: usize) {
        let mut guard = self.slots.lock();
        let slots = &mut *guard;
        let held = &mut slots.held[slot];
        debug_assert!(
            held.1 > 0,
            "read-mark slot {slot} released more often than taken"
        );
        held.1 = held.1.saturating_sub(1);
        if held.1 == 0 {
            let cx = Cx::new();
            if let Err(e) = locks::unlock_shared(&mut slots.file, &cx, wal_read_lock(slot as u32)) {
                tracing::warn!(target: TRACE, slot, error = %e, "releasing a read mark failed");
            }
        }
    }

    fn check_buf(&self, len: usize, what: &str) -> Result<()> {
        let ps = self.page_size.bytes();
        if len == ps {
            Ok(())
        } else {
            Err(FrankenError::out_of_range(
                format!("{what} length (page size {ps})"),
                len,
            ))
        }
    }

    /// Reads `page` as of `snapshot` (caller holds a read mark <= it).
    fn read_at(&self, cx: &Cx, snapshot: Snapshot, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        self.check_buf(buf.len(), "read buffer")?;
        cx.checkpoint()?;
        let frame = {
            let v = self.versions.read();
            debug_assert_eq!(
                v.generation, snapshot.generation,
                "a restart under a live snapshot"
            );
            v.newest_at_or_below(page.get(), snapshot.frame)
        };
        if let Some(frame) = frame {
            let off = wal_frame_data_offset(frame, self.page_size.get());
            if self.wal_reader.read(cx, buf, off)? < buf.len() {
                return Err(FrankenError::wal_corrupt(format!(
                    "frame {frame} (page {page}) lies past the end of {}",
                    self.wal_path.display()
                )));
            }
            return Ok(());
        }
        // Past the end of the file reads as zeros (VfsFile::read zero-fills).
        self.db_reader.read(
            cx,
            buf,
            u64::from(page.get() - 1) * self.page_size.bytes() as u64,
        )?;
        Ok(())
    }

    pub(crate) fn read_newest(&self, cx: &Cx, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        self.check_buf(buf.len(), "read buffer")?;
        let (snapshot, slot) = self.acquire_snapshot(cx)?;
        let r = self.read_at(cx, snapshot, page, buf);
        self.release_slot(slot);
        r
    }

    pub(crate) fn commit_blind(
        &self,
        cx: &Cx,
        pages: &[(PageNumber, &[u8])],
        db_size: u32,
    ) -> Result<u32> {
        cx.checkpoint()?;
        if db_size == 0 {
            return Err(FrankenError::out_of_range(
                "commit database size (pages)",
                0,
            ));
        }
        let mut writes = BTreeMap::new();
        for (p, d) in pages {
            self.check_buf(d.len(), &format!("page {p}"))?;
            writes.insert(p.get(), Box::<[u8]>::from(*d));
        }
        if !writes.keys().any(|&p| p <= db_size) {
            return Err(FrankenError::out_of_range(
                "pages in a commit (a commit needs at least one page at or below its database size)",
                0,
            ));
        }
        self.submit(Request {
            snapshot: None,
            reads: HashSet::new(),
            read_all: false,
            writes,
            db_size,
            slot: None,
        })
    }

    /// Validation against the published commits alone (step 1 without the batch).
    ///
    /// A transaction that conflicts with the batch being made durable is refused too:
    /// that batch commits unless its sync fails, and then the coordinator refuses
    /// everything anyway (`PreviousIo`).
    fn precheck(&self, req: &Request) -> Result<()> {
        let flight = self.in_flight.lock();
        let v = self.versions.read();
        if flight.active {
            validate(&v, req, &flight.pages, flight.size_change, flight.n_page).map(drop)
        } else {
            validate(&v, req, &HashMap::new(), None, v.n_page).map(drop)
        }
    }

    fn submit(&self, req: Request) -> Result<u32> {
        self.group
            .submit(req, |batch| self.run_batch(&batch))
            .unwrap_or_else(|| {
                Err(FrankenError::internal(
                    "the group-commit leader of this transaction's batch panicked; the \
                     transaction may or may not be durable (reopen to find out)",
                ))
            })
    }

    /// The leader's work for one batch (see the module docs, steps 1-4).
    fn run_batch(&self, batch: &[Request]) -> Vec<Result<u32>> {
        let cx = Cx::new();
        let mut results: Vec<Option<Result<u32>>> = (0..batch.len()).map(|_| None).collect();
        let mut core = self.core.lock();
        // The serial section across processes: other writers' commits are taken up
        // before anything is validated against them.
        let patience = self.patience();
        let entered = core.lock_batch(&cx, &patience).and_then(|()| {
            if core.refresh(&cx)? {
                let hdr = core.state.legacy_hdr();
                let c = &mut *core;
                self.versions.write().catch_up(&hdr, |f| {
                    c.index.frame_page(&cx, &mut c.db, f).map(PageNumber::get)
                })?;
            }
            Ok(())
        });
        if let Err(e) = entered {
            core.unlock_batch(&cx);
            drop(core);
            for req in batch {
                if let Some(slot) = req.slot {
                    self.release_slot(slot);
                }
            }
            tracing::debug!(target: TRACE, error = %e, "group commit could not enter its serial section");
            let busy = matches!(e, FrankenError::Busy | FrankenError::BusyRecovery);
            let text = e.to_string();
            let mut e = Some(e);
            return batch
                .iter()
                .map(|_| {
                    Err(e.take().unwrap_or_else(|| {
                        if busy {
                            FrankenError::Busy
                        } else {
                            FrankenError::internal(format!(
                                "the group commit could not start: {text}"
                            ))
                        }
                    }))
                })
                .collect();
        }
        let mut accepted: Vec<Accepted<'_>> = Vec::new();
        let mut flight: InFlight;
        {
            let v = self.versions.read();
            let mut batch_writes: HashMap<u32, u32> = HashMap::new();
            let mut batch_size_change: Option<u32> = None;
            let mut next_frame = v.mx;
            let mut cur_n = v.n_page;
            for (index, req) in batch.iter().enumerate() {
                match validate(&v, req, &batch_writes, batch_size_change, cur_n) {
                    Ok(Validated { frames, db_size }) if frames.is_empty() => {
                        // Read-only: serialized at its snapshot, nothing to write.
                        debug_assert_eq!(db_size, cur_n);
                        results[index] = Some(Ok(next_frame));
                    }
                    Ok(Validated { frames, db_size }) => {
                        let commit_frame = next_frame + frames.len() as u32;
                        for (p, _) in &frames {
                            batch_writes.insert(p.get(), commit_frame);
                        }
                        if db_size != cur_n {
                            batch_size_change = Some(commit_frame);
                        }
                        cur_n = db_size;
                        next_frame = commit_frame;
                        accepted.push(Accepted {
                            index,
                            frames,
                            db_size,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(target: TRACE, error = %e, "concurrent transaction refused");
                        results[index] = Some(Err(e));
                    }
                }
            }
            flight = InFlight {
                active: true,
                published: 0,
                pages: batch_writes,
                size_change: batch_size_change,
                n_page: cur_n,
            };
        }
        for req in batch {
            if let Some(slot) = req.slot {
                self.release_slot(slot);
            }
        }
        let mut restarted = false;
        if accepted.is_empty() {
            core.unlock_batch(&cx);
            drop(core);
        } else {
            let mut f = self.in_flight.lock();
            flight.published = f.published;
            *f = flight;
            drop(f);
            let r = core.maybe_restart(&cx, || {
                let mut v = self.versions.write();
                v.generation += 1;
                v.mx = 0;
                v.frames.clear();
                v.size_changes.clear();
                restarted = true;
            });
            match r {
                Ok(true) => {
                    self.versions.write().hdr = core.state.legacy_hdr();
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(target: TRACE, error = %e, "WAL restart failed; the coordinator refuses further commits until it is reopened");
                }
            }
            let txns: Vec<GroupedCommit<'_>> = accepted
                .iter()
                .map(|a| (a.frames.as_slice(), a.db_size))
                .collect();
            let first = core.state.legacy_hdr().mx_frame + 1;
            let started = std::time::Instant::now();
            let appended = core.append_batch(&cx, &txns);
            // Gathering: a new leader may wait up to half a sync for the writers of this
            // batch to come back (group_commit docs); nothing to gather without syncs, and
            // nothing to gain when at most one transaction of the batch committed (a hot
            // page: a bigger batch would only hold more losers).
            self.group.set_gather_limit(
                if core.options.sync.syncs_on_commit() && accepted.len() > 1 {
                    (started.elapsed() / 2).min(MAX_GATHER)
                } else {
                    Duration::ZERO
                },
            );
            match appended {
                Ok(ends) => {
                    let published = core.state.legacy_hdr();
                    let last = published.mx_frame;
                    let syncs = u64::from(core.options.sync.syncs_on_commit());
                    let mut v = self.versions.write();
                    if v.hdr.wal_salts() == published.wal_salts() && v.mx + 1 == first {
                        // The usual case: this batch's frames, exactly, in commit order.
                        let mut frame = first;
                        let mut prev_n = v.n_page;
                        for (a, &end) in accepted.iter().zip(&ends) {
                            for (p, _) in &a.frames {
                                v.frames.entry(p.get()).or_default().push(frame);
                                frame += 1;
                            }
                            if a.db_size != prev_n {
                                v.size_changes.push(end);
                            }
                            prev_n = a.db_size;
                        }
                        // Padding frames repeat the last page; reads find the same image
                        // at the commit frame, so they need no map entry.
                        v.mx = last;
                        v.n_page = published.n_page;
                        v.hdr = published;
                    } else {
                        // A begin already took up this header, or the WAL restarted under
                        // this batch: the -shm says which frames are whose.
                        let c = &mut *core;
                        let caught = v.catch_up(&published, |f| {
                            c.index.frame_page(&cx, &mut c.db, f).map(PageNumber::get)
                        });
                        if let Err(e) = caught {
                            core.latch(&e);
                        }
                    }
                    drop(v);
                    core.unlock_batch(&cx);
                    drop(core);
                    for (a, &end) in accepted.iter().zip(&ends) {
                        results[a.index] = Some(Ok(end));
                    }
                    if let Some(hook) = self.hooks.read().commit.clone() {
                        for (a, &end) in accepted.iter().zip(&ends) {
                            let action = hook(&CommitInfo {
                                db_path: &self.db_path,
                                wal_frames: last,
                                commit_frame: end,
                                db_size: a.db_size,
                            });
                            if let CommitAction::Checkpoint(mode) = action {
                                tracing::debug!(target: TRACE, ?mode, "commit hook asked for a checkpoint; the coordinator does not checkpoint during its life (a legacy connection or a later open does)");
                            }
                        }
                    }
                    self.counters.batches.fetch_add(1, Ordering::Relaxed);
                    self.counters.wal_syncs.fetch_add(syncs, Ordering::Relaxed);
                    tracing::debug!(target: TRACE, transactions = accepted.len(), mx_frame = last,
                        restarted, "group commit durable and published");
                }
                Err(e) => {
                    core.unlock_batch(&cx);
                    drop(core);
                    tracing::error!(target: TRACE, error = %e, transactions = accepted.len(), "group commit failed");
                    let text = e.to_string();
                    let mut e = Some(e);
                    for a in &accepted {
                        results[a.index] =
                            Some(Err(e.take().unwrap_or_else(|| FrankenError::PreviousIo {
                                first: text.clone(),
                            })));
                    }
                }
            }
        }
        {
            let mut flight = self.in_flight.lock();
            if flight.active {
                *flight = InFlight {
                    published: flight.published + 1,
                    ..InFlight::default()
                };
                // One waiting loser per publish, as a lock would let one writer in:
                // waking them all lets the rest burn the CPU the next winner needs
                // (the others go at the next publish, or after MAX_BACKOFF).
                self.published.notify_one();
            }
        }
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let r = r.unwrap_or_else(|| {
                Err(FrankenError::internal("a queued transaction got no result"))
            });
            match &r {
                Ok(_) => self.counters.commits.fetch_add(1, Ordering::Relaxed),
                Err(FrankenError::ConcurrentConflict { .. }) => {
                    self.counters.conflicts.fetch_add(1, Ordering::Relaxed)
                }
                Err(_) => 0,
            };
            out.push(r);
        }
        out
    }
}

/// True when the live header (copy A) still has `salts`: no writer restarted the WAL
/// since the snapshot was read (a mark held from now on keeps it so).
fn live_salts_are(r0: &ShmRegion, salts: [u32; 2]) -> bool {
    load_header_copies(r0)[0].wal_salts() == salts
}

fn conflict(item: String, frame: u32, snapshot: u32) -> FrankenError {
    FrankenError::ConcurrentConflict {
        item,
        frame,
        snapshot,
    }
}

/// Step 1 for one transaction: its frames (page order) and database size, or the
/// conflict that refuses it.
fn validate<'a>(
    v: &Versions,
    req: &'a Request,
    batch_writes: &HashMap<u32, u32>,
    batch_size_change: Option<u32>,
    cur_n: u32,
) -> Result<Validated<'a>> {
    let newer = |page: u32, s: u32| -> Option<u32> {
        batch_writes
            .get(&page)
            .copied()
            .or_else(|| v.newest(page).filter(|&f| f > s))
    };
    let final_size = match req.snapshot {
        None => req.db_size,
        Some(snap) => {
            let s = snap.frame;
            if snap.generation != v.generation {
                return Err(conflict("the WAL generation".to_owned(), v.mx, s));
            }
            if req.read_all
                && let Some(f) = batch_writes
                    .values()
                    .max()
                    .copied()
                    .or((v.mx > s).then_some(v.mx))
            {
                return Err(conflict(
                    "the database (this transaction read more pages than \
                     CoordinatorOptions::max_read_set tracks one by one)"
                        .to_owned(),
                    f,
                    s,
                ));
            }
            for &page in req.writes.keys().chain(req.reads.iter()) {
                if let Some(f) = newer(page, s) {
                    return Err(conflict(format!("page {page}"), f, s));
                }
            }
            let size_change =
                batch_size_change.or_else(|| v.size_changes.last().copied().filter(|&f| f > s));
            if req.db_size == snap.db_size {
                // Unchanged: keep the newest committed size, unless it no longer holds a
                // page this transaction wrote inside its own snapshot's size.
                if let Some(&p) = req.writes.keys().find(|&&p| p <= snap.db_size && p > cur_n) {
                    return Err(conflict(
                        format!(
                            "the database size (now {cur_n} pages, below page {p} written here)"
                        ),
                        size_change.unwrap_or(v.mx),
                        s,
                    ));
                }
                cur_n
            } else {
                if let Some(f) = size_change {
                    return Err(conflict("the database size".to_owned(), f, s));
                }
                req.db_size
            }
        }
    };
    let frames: Vec<(PageNumber, &[u8])> = req
        .writes
        .iter()
        .filter(|&(&p, _)| p <= final_size)
        .filter_map(|(&p, d)| PageNumber::new(p).map(|p| (p, &**d)))
        .collect();
    if frames.is_empty() && final_size != cur_n {
        return Err(FrankenError::out_of_range(
            "pages in a commit that changes the database size (it needs at least one page at \
             or below the new size; write page 1)",
            0,
        ));
    }
    Ok(Validated {
        frames,
        db_size: final_size,
    })
}

/// A `BEGIN CONCURRENT` transaction (see the module docs): reads a snapshot, writes
/// privately, commits through the group commit. Dropping it without
/// [`ConcurrentTxn::commit`] rolls back.
///
/// ```no_run
/// use std::sync::Arc;
/// use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
/// use fsqlite_types::{Cx, PageNumber};
/// use fsqlite_vfs::UnixVfs;
///
/// # fn main() -> fsqlite_error::Result<()> {
/// let cx = Cx::new();
/// let db = Coordinator::open(&cx, Arc::new(UnixVfs::new()), "app.db", CoordinatorOptions::default())?;
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         let db = &db;
///         s.spawn(move || -> fsqlite_error::Result<u32> {
///             let cx = Cx::new();
///             let page = PageNumber::new(2 + t).unwrap(); // a page of its own
///             loop {
///                 let mut txn = db.begin_concurrent(&cx)?;
///                 let mut buf = vec![0u8; db.page_size() as usize];
///                 txn.read_page(&cx, page, &mut buf)?;
///                 buf[0] = buf[0].wrapping_add(1);
///                 txn.write_page(&cx, page, &buf)?;
///                 let size = txn.db_size().max(page.get());
///                 match txn.commit(&cx, size) {
///                     Err(e) if e.extended_code() == 517 => continue, // conflict: retry
///                     r => return r,
///                 }
///             }
///         });
///     }
/// });
/// db.close(&cx)?;
/// # Ok(()) }
/// ```
pub struct ConcurrentTxn<'a, V: Vfs> {
    shared: &'a HybridShared<V>,
    snapshot: Snapshot,
    slot: usize,
    reads: HashSet<u32>,
    read_all: bool,
    writes: BTreeMap<u32, Box<[u8]>>,
    /// Savepoint levels and their undo images (counted against `max_txn_pages` with
    /// the write set).
    undo: UndoLog<u32, Box<[u8]>>,
    done: bool,
}

impl<V: Vfs> std::fmt::Debug for ConcurrentTxn<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrentTxn")
            .field("snapshot_frame", &self.snapshot.frame)
            .field("db_size", &self.snapshot.db_size)
            .field("read_mark_slot", &self.slot)
            .field("pages_read", &self.reads.len())
            .field("read_all", &self.read_all)
            .field("pages_written", &self.writes.len())
            .finish_non_exhaustive()
    }
}

impl<V: Vfs> ConcurrentTxn<'_, V> {
    /// `mxFrame` of the snapshot taken at begin.
    pub fn snapshot_frame(&self) -> u32 {
        self.snapshot.frame
    }

    /// The database size (pages) in that snapshot.
    pub fn db_size(&self) -> u32 {
        self.snapshot.db_size
    }

    /// A handle on this transaction's snapshot, to begin another transaction on it later
    /// with `Coordinator::begin_concurrent_at` (or, being the legacy `-shm` header of that
    /// commit, to open it in stock SQLite with `sqlite3_snapshot_open`, or through
    /// `fsqlite_wal::Wal::begin_read_at`).
    pub fn snapshot(&self) -> WalSnapshot {
        WalSnapshot::from_header(self.snapshot.hdr)
    }

    /// Pages written so far (the private write set).
    pub fn pages_written(&self) -> usize {
        self.writes.len()
    }

    /// Reads `page`: this transaction's own write, else the snapshot's version. The page
    /// joins the read set checked at commit.
    pub fn read_page(&mut self, cx: &Cx, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        if let Some(d) = self.writes.get(&page.get()) {
            self.shared.check_buf(buf.len(), "read buffer")?;
            buf.copy_from_slice(d);
            return Ok(());
        }
        self.shared.read_at(cx, self.snapshot, page, buf)?;
        if !self.read_all {
            self.reads.insert(page.get());
            if self.reads.len() > self.shared.max_read_set {
                // Past the limit the read set is "everything": any commit since the
                // snapshot conflicts (bounded memory, still serializable).
                self.reads = HashSet::new();
                self.read_all = true;
            }
        }
        Ok(())
    }

    /// Writes `page` into the private write set (visible to this transaction's reads
    /// only, until commit). At most `CoordinatorOptions::max_txn_pages` page images in
    /// all (distinct pages written plus the images savepoints keep to undo).
    pub fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        cx.checkpoint()?;
        self.shared.check_buf(data.len(), &format!("page {page}"))?;
        let key = page.get();
        let after = self.writes.len()
            + usize::from(!self.writes.contains_key(&key))
            + self.undo.images()
            + self.undo.cost_of_write(key, &self.writes);
        if after > self.shared.max_txn_pages {
            return Err(self.too_many_pages(after));
        }
        self.undo.record(key, &self.writes);
        match self.writes.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut o) => {
                o.get_mut().copy_from_slice(data);
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(Box::from(data));
            }
        }
        Ok(())
    }

    fn too_many_pages(&self, n: usize) -> FrankenError {
        let limit = self.shared.max_txn_pages;
        FrankenError::out_of_range(
            format!(
                "pages written by one concurrent transaction (limit \
                 CoordinatorOptions::max_txn_pages = {limit}, savepoint undo images \
                 included; commit in smaller transactions or raise the limit)"
            ),
            n,
        )
    }

    /// Opens a savepoint (nested inside any open one): [`ConcurrentTxn::rollback_to`]
    /// it to undo the writes made since, [`ConcurrentTxn::release`] it to keep them.
    /// Memory: one page image per page first overwritten inside the savepoint.
    ///
    /// ```no_run
    /// # fn f(db: &fsqlite_mvcc::Coordinator<fsqlite_vfs::UnixVfs>, cx: &fsqlite_types::Cx) -> fsqlite_error::Result<()> {
    /// use fsqlite_types::PageNumber;
    /// let (p, q) = (PageNumber::new(5).unwrap(), PageNumber::new(6).unwrap());
    /// let page = vec![1u8; db.page_size() as usize];
    /// let mut txn = db.begin_concurrent(cx)?;
    /// txn.write_page(cx, p, &page)?;
    /// let sp = txn.savepoint();
    /// txn.write_page(cx, q, &page)?;
    /// txn.rollback_to(sp)?;          // q is no longer written; p still is
    /// txn.release(sp)?;
    /// assert_eq!(txn.pages_written(), 1);
    /// let size = txn.db_size().max(6);
    /// txn.commit(cx, size)?;
    /// # Ok(()) }
    /// ```
    pub fn savepoint(&mut self) -> Savepoint {
        self.undo.savepoint()
    }

    /// Undoes every write made since `sp` was opened (nested savepoints inside it are
    /// closed); `sp` itself stays open, as SQLite's `ROLLBACK TO` leaves it. Pages read
    /// since stay in the read set (they were read).
    pub fn rollback_to(&mut self, sp: Savepoint) -> Result<()> {
        self.undo.rollback_to(sp, &mut self.writes)
    }

    /// Closes `sp` and every savepoint nested in it, keeping their writes (merged into
    /// the enclosing savepoint, if any).
    pub fn release(&mut self, sp: Savepoint) -> Result<()> {
        self.undo.release(sp)
    }

    /// Commits with database size `db_size` (the snapshot's size means "unchanged": the
    /// newest committed size is kept) and returns the transaction's own commit frame
    /// once it is durable per `SyncMode` and published in the legacy `-shm`. Fails with
    /// SQLITE_BUSY_SNAPSHOT ([`FrankenError::ConcurrentConflict`], extended code 517)
    /// when a page it read or wrote, or the database size it changed, has a newer
    /// commit; nothing of it is written then. A transaction that wrote nothing is
    /// validated the same way and returns the frame it serialized after.
    pub fn commit(mut self, cx: &Cx, db_size: u32) -> Result<u32> {
        cx.checkpoint()?;
        if db_size == 0 {
            return Err(FrankenError::out_of_range(
                "commit database size (pages)",
                0,
            ));
        }
        self.done = true;
        let req = Request {
            snapshot: Some(self.snapshot),
            reads: std::mem::take(&mut self.reads),
            read_all: self.read_all,
            writes: std::mem::take(&mut self.writes),
            db_size,
            slot: Some(self.slot),
        };
        // A conflict with a commit already published is final (the version map only
        // grows): refuse now instead of waiting for a batch to say so.
        if let Err(e) = self.shared.precheck(&req) {
            self.shared.note_conflict();
            self.shared.release_slot(self.slot);
            self.shared
                .counters
                .conflicts
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(target: TRACE, error = %e, "concurrent transaction refused before queueing");
            return Err(e);
        }
        // The leader releases the read mark right after validation (which uses the
        // version map only), so it can restart the WAL before appending the batch.
        let r = self.shared.submit(req);
        if matches!(r, Err(FrankenError::ConcurrentConflict { .. })) {
            self.shared.note_conflict();
        }
        r
    }

    /// Ends the transaction without writing anything.
    pub fn rollback(mut self, _cx: &Cx) -> Result<()> {
        self.done = true;
        self.shared.release_slot(self.slot);
        Ok(())
    }
}

impl<V: Vfs> Drop for ConcurrentTxn<'_, V> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.release_slot(self.slot);
        }
    }
}

// Compile-time proof of the contract: the coordinator is shared by reference across
// threads and a transaction can move to another thread.
#[allow(dead_code)]
fn _assert_send_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<crate::Coordinator<fsqlite_vfs::UnixVfs>>();
    send_sync::<crate::Coordinator<fsqlite_vfs::MemoryVfs>>();
    send::<ConcurrentTxn<'static, fsqlite_vfs::UnixVfs>>();
}
