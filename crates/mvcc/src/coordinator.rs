//! The hybrid-mode coordinator: [`Coordinator`] opens a database, picks the
//! [`CompatMode`], joins the other fsqlite processes that have it open (or, as the first,
//! recovers from a dead predecessor and takes over), commits pages so that legacy SQLite
//! readers see every commit, and keeps legacy SQLite writers out or admits them
//! ([`LegacyWriters`]). docs/design.md ("Concurrent writers across processes") has the
//! protocol and its crash cases.
//!
//! ```text
//! open     db file, SHARED lock (held for life)
//!          mode: HybridShm iff the legacy -shm opens AND <db>.fsqlite-shm opens read-write;
//!                else FileLockOnly: a plain fsqlite_wal::Wal connection (SQLite's own
//!                protocol, WAL_WRITE_LOCK per transaction), or, when the -shm itself is
//!                unusable, a Wal over HeapShmVfs (heap WAL-index, database EXCLUSIVE);
//!                one info line says which, and why
//! member   SHARED on <db>.fsqlite-shm for life; EXCLUSIVE granted -> first, else join
//! probe    (first) wait up to probe_timeout for WAL_WRITE_LOCK (exclusive) on the -shm;
//!          got it                                  -> NoCoordinator (we keep the lock)
//!          busy, record names a live process       -> Active   (open fails with Busy)
//!          busy past the timeout, nobody alive     -> Timeout  (open fails with Busy:
//!                                                     a legacy writer holds it)
//! takeover (first, holding WAL_WRITE_LOCK)
//!          plan := RecoveryPlan::inspect_shm(the real -shm)
//!          if plan.needs_recovery(): under the in-process RecoveryFence and the
//!              CKPT + RECOVER locks: rebuild the index from the WAL's valid prefix,
//!              or clear stale read marks / reset broken backfill counters
//!          record := {active, our pid + start time, generation + 1, LegacyWriters}
//!          then WAL_WRITE_LOCK: shared for life (Excluded) or released (Admitted)
//! join     same LegacyWriters as the record (else CannotOpen); WAL_WRITE_LOCK shared
//!          (Excluded); one serial section adopting the live -shm header
//! commit   (per group-commit batch) serial section: RESERVED on <db>.fsqlite-shm
//!          (Excluded) or WAL_WRITE_LOCK exclusive (Admitted) -> take up other writers'
//!          commits from the live -shm (rebuild a torn header) -> validate ->
//!          [restart the WAL if a checkpointer backfilled everything and no reader
//!          uses it] -> append frames (checksums chained) -> (kill: before_wal_sync)
//!          -> fsync per SyncMode -> (after_wal_sync) -> legacy hash tables
//!          -> (after_hash) -> HybridShmState::update_legacy_shm -> publish copy B,
//!          (mid_publish), barrier, copy A -> (after_publish) -> leave -> return
//! close    record := closed (when last) -> release the locks and the -shm -> if
//!          asked, a fsqlite_wal::Wal connection checkpoints and, when it is the last
//!          user, removes -wal and -shm (as SQLite's last connection does)
//! ```
//!
//! # Why the coordinator does not use `fsqlite_wal::Wal` in hybrid mode
//!
//! `Wal` takes `WAL_WRITE_LOCK` per write transaction and releases it at commit. A
//! coordinator holds it shared for life (Excluded) and serializes its batches with another
//! lock, and with open-file-description locks a second handle holding it would also block
//! the coordinator's own `Wal`. So the commit path is built
//! from `fsqlite-wal`'s pieces ([`WalFile`] append and sync, [`WalIndex`] hash tables,
//! [`publish_header`]) on the one database handle that holds the lock.
//!
//! # Crash safety
//!
//! A commit is acknowledged (returns `Ok`) only after its frames are synced (per
//! [`SyncMode`]), indexed and published. A kill at any earlier point leaves either the old
//! published header (the frames past it are overwritten by the next writer, or found by a
//! rebuild when nobody kept the `-shm` alive) or torn header copies (the next writer's
//! serial section, or a legacy SQLite reader when no member is left, rebuilds the index
//! from the WAL). Either
//! way nothing acknowledged is lost; the unacknowledged commit may or may not survive.
//!
//! # Kill points (tests)
//!
//! `FSQLITE_MVCC_KILL_AT=<point>[:<n>]` (read by [`CoordinatorOptions::default`]), or
//! [`CoordinatorOptions::kill_at`], makes the process `SIGKILL` itself at `<point>` of its
//! `n`th hybrid commit (default 1). Points: `before_wal_sync`, `after_wal_sync`,
//! `after_hash` (between the hash-table update and the header publish), `mid_publish`
//! (copy B written, copy A not), `after_publish` (before the commit returns). Unset, it
//! costs one branch per point.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::sync_primitives::Instant;
use fsqlite_types::{Cx, LockLevel, PageNumber, PageSize, VfsOpenFlags};
use fsqlite_vfs::{
    ShmRegion, Vfs, VfsFile, WAL_CKPT_LOCK, WAL_RECOVER_LOCK, WAL_WRITE_LOCK, wal_read_lock,
};
use fsqlite_wal::checksum::WAL_HEADER_SIZE;
use fsqlite_wal::db_header::{DB_HEADER_SIZE, DbHeader};
use fsqlite_wal::format::WalHeader;
use fsqlite_wal::hooks::{BusyHandler, CommitHook, WalStatus};
use fsqlite_wal::locks::{self, Patience};
use fsqlite_wal::recovery::{lock_for_recovery, rebuild_wal_index, unlock_after_recovery};
use fsqlite_wal::recovery_fence::{
    RECOVERY_FENCE_BACKOFF, RECOVERY_FENCE_MAX_RETRIES, RecoveryFence,
};
use fsqlite_wal::wal_index::{
    HeaderDefect, HeaderMemory, HeaderRead, READMARK_NOT_USED, WAL_READ_MARK_COUNT, WALINDEX_PGSZ,
    WalCkptInfo, WalIndex, WalIndexHdr, publish_header, unsupported_version_error,
};
use fsqlite_wal::{GroupedCommit, SyncMode, Wal, WalFile, WalOptions, WalState};
use parking_lot::Mutex;

use crate::compat::{
    CompatMode, CoordinatorProbeResult, HybridShmState, RecoveryPlan, ShmInspection,
    begin_concurrent_check,
};
use crate::concurrent::{ConcurrencyStats, ConcurrentTxn, HybridShared};
use crate::heap_shm::HeapShmVfs;
use crate::lifecycle::{CoordinatorRecord, RecordDefect, RecordState, record_path};

const TRACE: &str = "fsqlite.mvcc.coordinator";

/// The environment variable read by [`KillAt::from_env`].
// Hidden: a crash-test hook (the kill -9 tests and harnesses set it), not engine API.
#[doc(hidden)]
pub const KILL_AT_ENV: &str = "FSQLITE_MVCC_KILL_AT";

/// Where in a hybrid commit a test kill hook fires (see the module docs).
// Hidden: a crash-test hook, not engine API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KillPoint {
    /// Frames written, WAL not yet synced.
    BeforeWalSync,
    /// WAL synced, hash tables not yet updated.
    AfterWalSync,
    /// Hash tables updated, header not yet published.
    AfterHash,
    /// Header copy B written, copy A not.
    MidPublish,
    /// Header published, the commit has not returned.
    AfterPublish,
}

impl KillPoint {
    /// Every point, in commit order.
    pub const ALL: [KillPoint; 5] = [
        Self::BeforeWalSync,
        Self::AfterWalSync,
        Self::AfterHash,
        Self::MidPublish,
        Self::AfterPublish,
    ];

    /// The name used in [`KILL_AT_ENV`].
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::BeforeWalSync => "before_wal_sync",
            Self::AfterWalSync => "after_wal_sync",
            Self::AfterHash => "after_hash",
            Self::MidPublish => "mid_publish",
            Self::AfterPublish => "after_publish",
        }
    }
}

impl FromStr for KillPoint {
    type Err = FrankenError;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FrankenError::out_of_range("coordinator kill point", s))
    }
}

/// Kill the process at `point` of the `commit`th (1-based) hybrid commit.
// Hidden: a crash-test hook, not engine API.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KillAt {
    /// Where.
    pub point: KillPoint,
    /// Which commit of this coordinator (1-based).
    pub commit: u64,
}

impl FromStr for KillAt {
    type Err = FrankenError;

    /// `<point>` or `<point>:<n>` (n >= 1).
    fn from_str(s: &str) -> Result<Self> {
        let (point, n) = match s.split_once(':') {
            Some((p, n)) => (
                p,
                n.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| FrankenError::out_of_range(KILL_AT_ENV, s))?,
            ),
            None => (s, 1),
        };
        Ok(Self {
            point: point.parse()?,
            commit: n,
        })
    }
}

impl KillAt {
    /// The hook named by [`KILL_AT_ENV`], if set and well formed (a malformed value is
    /// logged and ignored).
    pub fn from_env() -> Option<Self> {
        let v = std::env::var(KILL_AT_ENV).ok()?;
        match v.parse() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(target: TRACE, %e, "ignoring malformed {KILL_AT_ENV}");
                None
            }
        }
    }
}

/// Sends SIGKILL to this process (a real kill -9, not an abort).
fn kill_self(point: KillPoint) -> ! {
    tracing::warn!(target: TRACE, point = point.as_str(), "kill hook: SIGKILL to self");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    std::process::abort()
}

/// Options for [`Coordinator::open`].
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    /// Durability of commits (default [`SyncMode::Full`]).
    pub sync: SyncMode,
    /// Page size of a new (empty) database; default 4096.
    pub page_size: u32,
    /// How long lock waits (the database SHARED lock, recovery locks) may take; 5 s.
    pub busy_timeout: Duration,
    /// How long the probe waits for `WAL_WRITE_LOCK`; 2 s.
    pub probe_timeout: Duration,
    /// Try hybrid mode at all (default true; false always gives `FileLockOnly`).
    pub hybrid: bool,
    /// On close, checkpoint and (when last) remove `-wal`/`-shm` like SQLite; default true.
    pub checkpoint_on_close: bool,
    /// Test kill hook; the default reads [`KILL_AT_ENV`]. Hidden: crash tests only.
    #[doc(hidden)]
    pub kill_at: Option<KillAt>,
    /// Most distinct pages one [`ConcurrentTxn`] may write (its private write set lives
    /// in memory); past it `write_page` fails with `OutOfRange`. Default 65,536 (256 MiB
    /// of 4 KiB pages).
    pub max_txn_pages: usize,
    /// Most pages one [`ConcurrentTxn`] tracks in its read set; past it the transaction
    /// counts as having read the whole database (any commit since its snapshot
    /// conflicts), so memory stays bounded. Default 1,048,576.
    pub max_read_set: usize,
    /// What stock SQLite writers get while fsqlite processes have the database open in
    /// hybrid mode (see [`LegacyWriters`]); default [`LegacyWriters::Excluded`]. Every
    /// process on one database must use the same setting (a mismatch fails the open).
    pub legacy_writers: LegacyWriters,
}

/// What stock SQLite writers get while fsqlite processes have a database open in hybrid
/// mode ([`CoordinatorOptions::legacy_writers`]). Either way any number of fsqlite
/// processes write the database concurrently, each with many `BEGIN CONCURRENT`
/// threads, and stock SQLite readers see every commit.
///
/// ```
/// use fsqlite_mvcc::{CoordinatorOptions, LegacyWriters};
/// // Let a stock SQLite process (a cron job, the sqlite3 shell) write too:
/// let opts = CoordinatorOptions { legacy_writers: LegacyWriters::Admitted, ..CoordinatorOptions::default() };
/// assert_ne!(opts.legacy_writers, LegacyWriters::default());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LegacyWriters {
    /// Kept out: a stock SQLite writer gets SQLITE_BUSY while any fsqlite process has the
    /// database open (each holds `WAL_WRITE_LOCK` shared for its whole life, so SQLite's
    /// exclusive request always fails). fsqlite processes serialize their group commits
    /// with the RESERVED lock of `<db>.fsqlite-shm`. The seed's hybrid behaviour.
    #[default]
    Excluded,
    /// Admitted: each group commit takes `WAL_WRITE_LOCK` exclusively for its serial
    /// section (refresh, validate, append, sync, publish), exactly as a SQLite writer
    /// does, so a stock SQLite writer commits between two batches as one more serialized
    /// writer, and concurrent transactions validate against its commits too.
    Admitted,
}

impl LegacyWriters {
    /// The setting recorded in the bytes of a `<db>.fsqlite-shm` file (read from offset
    /// 0), if a member wrote one: what `fsqlite inspect` shows, and what a joining
    /// process must match.
    ///
    /// ```
    /// use fsqlite_mvcc::LegacyWriters;
    /// assert_eq!(LegacyWriters::recorded(&[0u8; 48]), None);
    /// ```
    pub fn recorded(record_file: &[u8]) -> Option<Self> {
        let at = usize::try_from(MODE_OFFSET).ok()?;
        let m = record_file.get(at..at + MODE_MAGIC.len() + 1)?;
        if &m[..MODE_MAGIC.len()] != MODE_MAGIC {
            return None;
        }
        match m[MODE_MAGIC.len()] {
            b'X' => Some(Self::Excluded),
            b'A' => Some(Self::Admitted),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Self::Excluded => b'X',
            Self::Admitted => b'A',
        }
    }

    fn describe(code: u8) -> &'static str {
        match code {
            b'X' => "LegacyWriters::Excluded",
            b'A' => "LegacyWriters::Admitted",
            _ => "an unknown setting",
        }
    }
}

/// Where in `<db>.fsqlite-shm` the setting of the processes on the database is kept
/// (past the 48-byte record, whose trailing bytes readers ignore).
const MODE_OFFSET: u64 = 64;
const MODE_MAGIC: &[u8; 8] = b"FSQLMODE";

impl Default for CoordinatorOptions {
    fn default() -> Self {
        Self {
            sync: SyncMode::Full,
            page_size: 4096,
            busy_timeout: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
            hybrid: true,
            checkpoint_on_close: true,
            kill_at: KillAt::from_env(),
            max_txn_pages: 1 << 16,
            max_read_set: 1 << 20,
            legacy_writers: LegacyWriters::Excluded,
        }
    }
}

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// The verdict.
    pub result: CoordinatorProbeResult,
    /// The coordinator record, if one could be read and was valid.
    pub record: Option<CoordinatorRecord>,
    /// Why the record could not be used, if it could not.
    pub record_defect: Option<RecordDefect>,
    /// How long the probe waited.
    pub waited: Duration,
}

/// What happened when this coordinator took over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Takeover {
    /// The record left by the previous coordinator, if any.
    pub previous: Option<CoordinatorRecord>,
    /// The record said "active" although nobody held `WAL_WRITE_LOCK`: the previous
    /// coordinator died (or was dropped without [`Coordinator::close`]).
    pub previous_died: bool,
    /// What the live `-shm` needed.
    pub plan: RecoveryPlan,
    /// Why the header was not usable, if it was not.
    pub defect: Option<HeaderDefect>,
    /// Read-mark slots that were stale.
    pub stale_marks: Vec<usize>,
    /// Whether the WAL-index was rebuilt from the WAL.
    pub rebuilt: bool,
    /// `mxFrame` after the takeover.
    pub mx_frame: u32,
    /// This coordinator's generation.
    pub generation: u64,
    /// Other fsqlite processes had the database open: this one joined them (no
    /// recovery decisions; the live `-shm` is theirs and ours).
    pub joined: bool,
}

/// A database opened through the coordinator (see the module docs). `Send + Sync`:
/// share it between threads by reference (scoped threads) or in an `Arc`.
///
/// ```
/// use std::sync::Arc;
/// use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
/// use fsqlite_types::{Cx, PageNumber};
/// use fsqlite_vfs::UnixVfs;
///
/// let dir = tempfile::tempdir().unwrap();
/// let cx = Cx::new();
/// let db = Coordinator::open(&cx, Arc::new(UnixVfs::new()), dir.path().join("app.db"),
///                            CoordinatorOptions { kill_at: None, ..CoordinatorOptions::default() })?;
/// assert_eq!(db.mode(), CompatMode::HybridShm);
/// let ps = db.page_size() as usize;
/// // Grow the database to 4 pages first: the size is a conflict item, and four
/// // transactions that each changed it would conflict with one another.
/// db.commit(&cx, &[(PageNumber::new(1).unwrap(), &vec![0u8; ps])], 4)?;
/// std::thread::scope(|s| {
///     for t in 0..4u32 {
///         let db = &db;
///         s.spawn(move || {
///             let cx = Cx::new();
///             let page = PageNumber::new(t + 1).unwrap(); // one page each: no conflicts
///             let mut txn = db.begin_concurrent(&cx).unwrap();
///             txn.write_page(&cx, page, &vec![t as u8; ps]).unwrap();
///             let size = txn.db_size(); // 4: unchanged
///             txn.commit(&cx, size).unwrap(); // durable, group-committed with the others
///         });
///     }
/// });
/// let mut buf = vec![0u8; ps];
/// db.read_page(&cx, PageNumber::new(3).unwrap(), &mut buf)?;
/// assert!(buf.iter().all(|&b| b == 2));
/// assert_eq!(db.stats().commits, 5);
/// db.close(&cx)?;
/// # Ok::<(), fsqlite_error::FrankenError>(())
/// ```
pub struct Coordinator<V: Vfs> {
    db_path: PathBuf,
    mode: CompatMode,
    mode_reason: String,
    inner: Inner<V>,
    /// Commits in `FileLockOnly` mode (hybrid mode counts in [`HybridShared`]).
    plain_commits: std::sync::atomic::AtomicU64,
}

enum Inner<V: Vfs> {
    Hybrid(Box<HybridShared<V>>),
    /// SQLite's protocol on the shared `-shm`.
    FileLock(Mutex<Box<Wal<V>>>),
    /// No shared memory: heap WAL-index, database held EXCLUSIVE ([`HeapShmVfs`]).
    Exclusive(Mutex<Box<Wal<HeapShmVfs<V>>>>),
}

/// What [`choose_mode`] decided.
enum Choice<F> {
    /// Hybrid, with the open record file.
    Hybrid(F),
    /// SQLite's protocol on the shared `-shm`.
    FileLock,
    /// No usable shared memory.
    Exclusive,
}

fn wal_options(options: &CoordinatorOptions) -> WalOptions {
    WalOptions {
        sync: options.sync,
        page_size: options.page_size,
        busy_timeout: options.busy_timeout,
        checkpoint_on_close: options.checkpoint_on_close,
        ..WalOptions::default()
    }
}

fn wal_commit<W: Vfs>(
    w: &mut Wal<W>,
    cx: &Cx,
    pages: &[(PageNumber, &[u8])],
    db_size: u32,
) -> Result<u32> {
    let mut tx = w.begin_write(cx)?;
    for (page, data) in pages {
        tx.write_page(cx, *page, data)?;
    }
    tx.commit(cx, db_size)
}

impl<V: Vfs> std::fmt::Debug for Coordinator<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Coordinator");
        d.field("db_path", &self.db_path)
            .field("mode", &self.mode)
            .field("mode_reason", &self.mode_reason);
        if let Inner::Hybrid(h) = &self.inner {
            d.field("generation", &h.record.generation)
                .field("stats", &h.stats());
        }
        d.finish_non_exhaustive()
    }
}

/// The hybrid coordinator's state (one database handle holding `WAL_WRITE_LOCK`).
pub(crate) struct Hybrid<V: Vfs> {
    pub(crate) vfs: Arc<V>,
    pub(crate) db_path: PathBuf,
    pub(crate) db: V::File,
    pub(crate) wal: WalFile<V::File>,
    pub(crate) wal_path: PathBuf,
    pub(crate) shm_path: PathBuf,
    pub(crate) record_file: V::File,
    pub(crate) index: WalIndex,
    pub(crate) state: HybridShmState,
    pub(crate) page_size: PageSize,
    pub(crate) options: CoordinatorOptions,
    pub(crate) record: CoordinatorRecord,
    pub(crate) takeover: Takeover,
    pub(crate) commits: u64,
    pub(crate) latched: Option<String>,
    /// The serial section of a batch is held (see [`LegacyWriters`]).
    batch_held: bool,
    /// `journal_size_limit` (see [`Coordinator::set_journal_size_limit`]).
    pub(crate) journal_size_limit: Option<u64>,
    /// The WAL was restarted in this batch: apply `journal_size_limit` after it.
    truncate_on_commit: bool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads and decodes the coordinator record (`Ok(Err(defect))` for a bad one).
fn read_record<F: VfsFile + ?Sized>(
    cx: &Cx,
    file: &F,
) -> Result<std::result::Result<CoordinatorRecord, RecordDefect>> {
    let mut buf = [0u8; crate::lifecycle::RECORD_SIZE];
    let n = file.read(cx, &mut buf, 0)?;
    Ok(CoordinatorRecord::decode(&buf[..n]))
}

/// Waits up to `timeout` for `WAL_WRITE_LOCK` on `db`'s `-shm`, stopping early when the
/// record names a live coordinator. On `NoCoordinator` the lock stays held.
fn probe_locked<F: VfsFile + ?Sized>(
    cx: &Cx,
    db: &mut F,
    record_file: Option<&F>,
    timeout: Duration,
) -> Result<ProbeReport> {
    let start = Instant::now();
    let mut got = false;
    let mut live = false;
    let mut record = Err(RecordDefect::TooShort { len: 0 });
    locks::wait_until(cx, timeout, || {
        if locks::try_exclusive(db, cx, WAL_WRITE_LOCK, 1)? {
            got = true;
            return Ok(true);
        }
        if let Some(f) = record_file {
            record = read_record(cx, f)?;
        }
        live = record.as_ref().is_ok_and(CoordinatorRecord::owner_alive_os);
        Ok(live)
    })?;
    if got && let Some(f) = record_file {
        record = read_record(cx, f)?;
    }
    let result = if got {
        CoordinatorProbeResult::NoCoordinator
    } else if live {
        CoordinatorProbeResult::Active
    } else {
        CoordinatorProbeResult::Timeout
    };
    let (record, record_defect) = match record {
        Ok(r) => (Some(r), None),
        Err(d) => (None, Some(d)),
    };
    let waited = Instant::now().duration_since(start);
    tracing::debug!(target: TRACE, ?result, ?record, ?record_defect, waited_us = waited.as_micros() as u64, "coordinator probe");
    Ok(ProbeReport {
        result,
        record,
        record_defect,
        waited,
    })
}

/// Opens `db_path`'s main file and reads its page size (`options.page_size` for an empty
/// file); the file must be a SQLite database in WAL mode.
fn open_db<V: Vfs>(
    cx: &Cx,
    vfs: &V,
    db_path: &Path,
    flags: VfsOpenFlags,
    default_page_size: u32,
) -> Result<(V::File, PageSize)> {
    let (db, _) = vfs.open(cx, Some(db_path), flags | VfsOpenFlags::MAIN_DB)?;
    let page_size = if db.file_size(cx)? == 0 {
        PageSize::try_new(default_page_size)?
    } else {
        let mut head = [0u8; DB_HEADER_SIZE];
        let got = db.read(cx, &mut head, 0)?;
        let h = DbHeader::parse(&head[..got.min(head.len())], db_path)?;
        h.require_wal_mode(db_path)?;
        h.page_size
    };
    Ok((db, page_size))
}

impl<V: Vfs> Coordinator<V> {
    /// Opens `db_path` (see the module docs): picks the mode and says which in an `info`
    /// line (target `fsqlite.mvcc.coordinator`). In hybrid mode it joins the fsqlite
    /// processes that already have the database open, or, as the first, probes, recovers
    /// if the previous writer died, and takes over. `Busy` when a stock SQLite writer
    /// keeps `WAL_WRITE_LOCK` past `probe_timeout` ([`CoordinatorProbeResult::Timeout`]);
    /// `CannotOpen` when the processes already there use another
    /// [`CoordinatorOptions::legacy_writers`].
    pub fn open(
        cx: &Cx,
        vfs: Arc<V>,
        db_path: impl AsRef<Path>,
        options: CoordinatorOptions,
    ) -> Result<Self> {
        let db_path = vfs.full_pathname(cx, db_path.as_ref())?;
        let rw = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE;
        let (mut db, page_size) = open_db(cx, &*vfs, &db_path, rw, options.page_size)?;
        if !locks::wait_file_lock(&mut db, cx, LockLevel::Shared, options.busy_timeout)? {
            return Err(FrankenError::Busy);
        }
        let (choice, reason) = choose_mode(cx, &*vfs, &mut db, &db_path, &options)?;
        let mode = match choice {
            Choice::Hybrid(_) => CompatMode::HybridShm,
            Choice::FileLock | Choice::Exclusive => CompatMode::FileLockOnly,
        };
        tracing::info!(
            target: TRACE,
            db = %db_path.display(),
            %mode,
            reason = %reason,
            "opening {} in {mode} mode: {reason}",
            db_path.display()
        );
        let open_failed = |e: &FrankenError| {
            tracing::error!(target: TRACE, db = %db_path.display(), error = %e, "file-lock-only open failed");
        };
        let inner = match choice {
            Choice::Hybrid(record_file) => Inner::Hybrid(Box::new(HybridShared::new(
                cx,
                Hybrid::open(cx, vfs, &db_path, db, record_file, page_size, options)?,
            )?)),
            Choice::FileLock | Choice::Exclusive => {
                let exclusive = matches!(choice, Choice::Exclusive);
                let _ = db.shm_unmap(cx, false);
                let _ = db.unlock(cx, LockLevel::None);
                drop(db);
                if exclusive {
                    let heap = Arc::new(HeapShmVfs::new(vfs));
                    let wal = Wal::open(cx, heap, &db_path, wal_options(&options))
                        .inspect_err(open_failed)?;
                    Inner::Exclusive(Mutex::new(Box::new(wal)))
                } else {
                    let wal = Wal::open(cx, vfs, &db_path, wal_options(&options))
                        .inspect_err(open_failed)?;
                    Inner::FileLock(Mutex::new(Box::new(wal)))
                }
            }
        };
        Ok(Self {
            db_path,
            mode,
            mode_reason: reason,
            inner,
            plain_commits: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Probes `db_path` for a live coordinator without taking over: waits up to `timeout`
    /// for `WAL_WRITE_LOCK` (released again at once when obtained) and reads the record.
    pub fn probe(
        cx: &Cx,
        vfs: &V,
        db_path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<ProbeReport> {
        let db_path = vfs.full_pathname(cx, db_path.as_ref())?;
        let (mut db, _) = open_db(cx, vfs, &db_path, VfsOpenFlags::READWRITE, 4096)?;
        let rpath = record_path(&db_path);
        let record_file = vfs
            .open(cx, Some(&rpath), VfsOpenFlags::READONLY)
            .ok()
            .map(|(f, _)| f);
        let r = probe_locked(cx, &mut db, record_file.as_ref(), timeout);
        if matches!(&r, Ok(p) if p.result == CoordinatorProbeResult::NoCoordinator) {
            let _ = locks::unlock_exclusive(&mut db, cx, WAL_WRITE_LOCK, 1);
        }
        let _ = db.shm_unmap(cx, false);
        r
    }

    /// The mode chosen at open.
    pub fn mode(&self) -> CompatMode {
        self.mode
    }

    /// Why that mode was chosen (the text of the open log line).
    pub fn mode_reason(&self) -> &str {
        &self.mode_reason
    }

    /// The database path (absolute).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Begins a `BEGIN CONCURRENT` transaction (see [`ConcurrentTxn`] and the crate docs):
    /// a snapshot of the newest commit, held by a read mark, with a private write set.
    /// `Err(ConcurrentUnavailable)` in `FileLockOnly` mode (never a silent downgrade to a
    /// single writer); `Busy` when every read mark stays taken by other processes.
    pub fn begin_concurrent(&self, cx: &Cx) -> Result<ConcurrentTxn<'_, V>> {
        begin_concurrent_check(self.mode)?;
        match &self.inner {
            Inner::Hybrid(h) => h.begin(cx),
            Inner::FileLock(_) | Inner::Exclusive(_) => Err(FrankenError::ConcurrentUnavailable),
        }
    }

    /// Begins a `BEGIN CONCURRENT` transaction on an older snapshot (SQLite's
    /// `sqlite3_snapshot_open` for a writer): `snapshot` comes from
    /// [`ConcurrentTxn::snapshot`] (or from `fsqlite_wal::ReadTxn::snapshot`, or SQLite's
    /// `sqlite3_snapshot_get` through its 48 bytes). The transaction reads exactly that
    /// commit and holds a read mark at or below it; if it writes, its commit is validated
    /// as any other, against everything committed since that snapshot.
    /// `SnapshotUnavailable` (769) when the WAL no longer holds it (a checkpoint copied
    /// past it, or the WAL was restarted), `ConcurrentUnavailable` in `FileLockOnly` mode.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::UnixVfs;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let cx = Cx::new();
    /// let db = Coordinator::open(&cx, Arc::new(UnixVfs::new()), dir.path().join("s.db"),
    ///                            CoordinatorOptions { kill_at: None, ..CoordinatorOptions::default() }).unwrap();
    /// let p = PageNumber::new(1).unwrap();
    /// let ps = db.page_size() as usize;
    /// db.commit(&cx, &[(p, &vec![1u8; ps])], 1).unwrap();
    /// let then = db.begin_concurrent(&cx).unwrap().snapshot();
    /// db.commit(&cx, &[(p, &vec![2u8; ps])], 1).unwrap();
    /// let mut old = db.begin_concurrent_at(&cx, &then).unwrap();
    /// let mut buf = vec![0u8; ps];
    /// old.read_page(&cx, p, &mut buf).unwrap();
    /// assert_eq!(buf[0], 1); // as of the snapshot
    /// old.rollback(&cx).unwrap();
    /// db.close(&cx).unwrap();
    /// ```
    pub fn begin_concurrent_at(
        &self,
        cx: &Cx,
        snapshot: &fsqlite_wal::WalSnapshot,
    ) -> Result<ConcurrentTxn<'_, V>> {
        begin_concurrent_check(self.mode)?;
        match &self.inner {
            Inner::Hybrid(h) => h.begin_at(cx, snapshot),
            Inner::FileLock(_) | Inner::Exclusive(_) => Err(FrankenError::ConcurrentUnavailable),
        }
    }

    /// Installs (or with `None` removes) the commit hook (SQLite's `sqlite3_wal_hook`,
    /// see [`fsqlite_wal::hooks`]): called after each durable, published commit, for
    /// every transaction of a group commit in commit order, on the thread that made the
    /// batch durable, before any of them returns. In hybrid mode a
    /// [`CommitAction::Checkpoint`](fsqlite_wal::hooks::CommitAction) answer is ignored
    /// (the coordinator does not checkpoint during its life); in `FileLockOnly` mode the
    /// connection runs it.
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
    /// use fsqlite_types::{Cx, PageNumber};
    /// use fsqlite_vfs::UnixVfs;
    /// use fsqlite_wal::hooks::{CommitAction, CommitInfo};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let cx = Cx::new();
    /// let db = Coordinator::open(&cx, Arc::new(UnixVfs::new()), dir.path().join("h.db"), CoordinatorOptions::default()).unwrap();
    /// let frames = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&frames);
    /// db.set_commit_hook(Some(Arc::new(move |c: &CommitInfo<'_>| {
    ///     log.lock().unwrap().push(c.commit_frame);
    ///     CommitAction::Nothing
    /// })));
    /// let mut txn = db.begin_concurrent(&cx).unwrap();
    /// txn.write_page(&cx, PageNumber::new(1).unwrap(), &vec![0u8; db.page_size() as usize]).unwrap();
    /// let frame = txn.commit(&cx, 1).unwrap();
    /// assert_eq!(*frames.lock().unwrap(), vec![frame]);
    /// db.close(&cx).unwrap();
    /// ```
    pub fn set_commit_hook(&self, hook: Option<CommitHook>) {
        match &self.inner {
            Inner::Hybrid(h) => h.set_commit_hook(hook),
            Inner::FileLock(w) => w.lock().set_commit_hook(hook),
            Inner::Exclusive(w) => w.lock().set_commit_hook(hook),
        }
    }

    /// SQLite's `PRAGMA journal_size_limit` (see `fsqlite_wal::Wal::set_journal_size_limit`):
    /// after a checkpoint let the WAL start over, the batch that restarts it truncates the
    /// `-wal` file to `limit` bytes (or to the end of its own frames). `None`, the default,
    /// leaves the file at its largest size. No effect in `FileLockOnly` mode other than
    /// the connection's own setting.
    pub fn set_journal_size_limit(&self, limit: Option<u64>) {
        match &self.inner {
            Inner::Hybrid(h) => h.set_journal_size_limit(limit),
            Inner::FileLock(w) => w.lock().set_journal_size_limit(limit),
            Inner::Exclusive(w) => w.lock().set_journal_size_limit(limit),
        }
    }

    /// Installs (or with `None` removes) a busy handler (SQLite's `sqlite3_busy_handler`):
    /// asked after each failed attempt, with the count of earlier calls, whether a lock
    /// wait goes on (in hybrid mode: waiting for a free read-mark slot); it replaces
    /// `busy_timeout` while installed.
    pub fn set_busy_handler(&self, handler: Option<BusyHandler>) {
        match &self.inner {
            Inner::Hybrid(h) => h.set_busy_handler(handler),
            Inner::FileLock(w) => w.lock().set_busy_handler(handler),
            Inner::Exclusive(w) => w.lock().set_busy_handler(handler),
        }
    }

    /// The `PRAGMA`-like status in one call ([`WalStatus`]): WAL frames, backfilled
    /// frames, database size, the read marks and whether each is in use, the locking mode.
    pub fn status(&self, cx: &Cx) -> Result<WalStatus> {
        match &self.inner {
            Inner::Hybrid(h) => h.status(cx),
            Inner::FileLock(w) => w.lock().status(cx),
            Inner::Exclusive(w) => w.lock().status(cx),
        }
    }

    /// Counters of the concurrent-writer machinery (zero in `FileLockOnly` mode except
    /// `commits`).
    pub fn stats(&self) -> ConcurrencyStats {
        match &self.inner {
            Inner::Hybrid(h) => h.stats(),
            Inner::FileLock(_) | Inner::Exclusive(_) => ConcurrencyStats {
                commits: self
                    .plain_commits
                    .load(std::sync::atomic::Ordering::Relaxed),
                ..ConcurrencyStats::default()
            },
        }
    }

    /// What happened at takeover (hybrid mode only).
    pub fn takeover(&self) -> Option<&Takeover> {
        match &self.inner {
            Inner::Hybrid(h) => Some(&h.takeover),
            Inner::FileLock(_) | Inner::Exclusive(_) => None,
        }
    }

    /// This coordinator's record (hybrid mode only).
    pub fn record(&self) -> Option<CoordinatorRecord> {
        match &self.inner {
            Inner::Hybrid(h) => Some(h.record),
            Inner::FileLock(_) | Inner::Exclusive(_) => None,
        }
    }

    /// A copy of the legacy `-shm` state the coordinator publishes (hybrid mode only).
    pub fn legacy_state(&self) -> Option<HybridShmState> {
        match &self.inner {
            Inner::Hybrid(h) => Some(h.legacy_state()),
            Inner::FileLock(_) | Inner::Exclusive(_) => None,
        }
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        match &self.inner {
            Inner::Hybrid(h) => h.page_size.get(),
            Inner::FileLock(w) => w.lock().page_size(),
            Inner::Exclusive(w) => w.lock().page_size(),
        }
    }

    /// Commits `pages` (each exactly one page; those above `db_size` are dropped) with the
    /// database size `db_size` as a blind write (no snapshot, so it never conflicts) and
    /// returns its commit frame. In hybrid mode it joins the group commit like any
    /// [`ConcurrentTxn`]. When this returns `Ok`, the commit is durable per [`SyncMode`]
    /// and visible to every new reader, legacy SQLite processes included.
    pub fn commit(&self, cx: &Cx, pages: &[(PageNumber, &[u8])], db_size: u32) -> Result<u32> {
        let r = match &self.inner {
            Inner::Hybrid(h) => return h.commit_blind(cx, pages, db_size),
            Inner::FileLock(w) => wal_commit(&mut w.lock(), cx, pages, db_size),
            Inner::Exclusive(w) => wal_commit(&mut w.lock(), cx, pages, db_size),
        };
        if r.is_ok() {
            self.plain_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Reads the newest committed version of `page` into `buf` (one page).
    pub fn read_page(&self, cx: &Cx, page: PageNumber, buf: &mut [u8]) -> Result<()> {
        match &self.inner {
            Inner::Hybrid(h) => h.read_newest(cx, page, buf),
            Inner::FileLock(w) => w.lock().begin_read(cx)?.read_page(cx, page, buf),
            Inner::Exclusive(w) => w.lock().begin_read(cx)?.read_page(cx, page, buf),
        }
    }

    /// The database size in pages after the last commit.
    pub fn db_size(&self, cx: &Cx) -> Result<u32> {
        match &self.inner {
            Inner::Hybrid(h) => Ok(h.newest().1),
            Inner::FileLock(w) => Ok(w.lock().begin_read(cx)?.db_size()),
            Inner::Exclusive(w) => Ok(w.lock().begin_read(cx)?.db_size()),
        }
    }

    /// Closes: in hybrid mode marks the record closed and releases `WAL_WRITE_LOCK` (legacy
    /// writers may write again), then, with `checkpoint_on_close`, checkpoints through a
    /// `fsqlite_wal::Wal` connection that removes `-wal` and `-shm` when it is the last user.
    pub fn close(self, cx: &Cx) -> Result<()> {
        match self.inner {
            Inner::Hybrid(h) => h.into_core().close(cx),
            Inner::FileLock(w) => w.into_inner().close(cx),
            Inner::Exclusive(w) => w.into_inner().close(cx),
        }
    }
}

/// How many times an opening process asks for the record file's EXCLUSIVE lock (with
/// short random pauses between, holding nothing) before it joins the members there.
const MEMBERSHIP_ATTEMPTS: u32 = 6;

/// Decides the mode (and, in hybrid mode, opens the record file).
fn choose_mode<V: Vfs>(
    cx: &Cx,
    vfs: &V,
    db: &mut V::File,
    db_path: &Path,
    options: &CoordinatorOptions,
) -> Result<(Choice<V::File>, String)> {
    // Busy means another process is initializing the -shm (DMS): wait, do not give up.
    let mapped = locks::wait_until(cx, options.busy_timeout, || {
        match db.shm_map(cx, 0, WALINDEX_PGSZ as u32, false) {
            Ok(_) => Ok(true),
            Err(FrankenError::Busy) => Ok(false),
            Err(e) => Err(e),
        }
    });
    match mapped {
        Ok(true) => {}
        Ok(false) => return Err(FrankenError::Busy),
        Err(e @ FrankenError::Interrupted) => return Err(e),
        Err(e) => {
            return Ok((
                Choice::Exclusive,
                format!(
                    "the legacy -shm of {} cannot be used ({e}); the WAL-index lives in this \
                 process and the database is held EXCLUSIVE (other processes get SQLITE_BUSY)",
                    db_path.display()
                ),
            ));
        }
    }
    if !options.hybrid {
        return Ok((
            Choice::FileLock,
            "hybrid mode is turned off (CoordinatorOptions::hybrid)".to_owned(),
        ));
    }
    let rpath = record_path(db_path);
    Ok(
        match vfs.open(
            cx,
            Some(&rpath),
            VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE,
        ) {
            Ok((_, flags)) if flags.contains(VfsOpenFlags::READONLY) => (
                Choice::FileLock,
                format!("{} can only be opened read-only", rpath.display()),
            ),
            Ok((f, _)) => (
                Choice::Hybrid(f),
                format!(
                    "{} and the legacy -shm are available; this process coordinates",
                    rpath.display()
                ),
            ),
            Err(e) => (
                Choice::FileLock,
                format!("{} cannot be created: {e}", rpath.display()),
            ),
        },
    )
}

/// `HeaderMemory` over region 0 that can kill the process between copy B and copy A.
struct PublishTarget<'a> {
    region: &'a ShmRegion,
    kill_mid_publish: bool,
}

impl HeaderMemory for PublishTarget<'_> {
    fn load_word(&self, word: usize) -> u32 {
        HeaderMemory::load_word(self.region, word)
    }

    fn store_word(&self, word: usize, v: u32) {
        HeaderMemory::store_word(self.region, word, v);
    }

    fn barrier(&self) {
        // publish_header calls this exactly once, between copy B and copy A.
        if self.kill_mid_publish {
            kill_self(KillPoint::MidPublish);
        }
        HeaderMemory::barrier(self.region);
    }
}

impl<V: Vfs> Hybrid<V> {
    fn open(
        cx: &Cx,
        vfs: Arc<V>,
        db_path: &Path,
        mut db: V::File,
        record_file: V::File,
        page_size: PageSize,
        options: CoordinatorOptions,
    ) -> Result<Self> {
        // Membership: every fsqlite process on the database holds SHARED on the record
        // file for its life; the first one (EXCLUSIVE granted) takes over, the others join.
        //
        // Two processes opening at once can each hold SHARED while asking for EXCLUSIVE,
        // and both be refused: then nobody would take over (found by the concurrent
        // kill -9 soak). A refused process lets go of everything and tries again after a
        // short random pause, a few times, before it concludes that a member is there.
        let mut record_file = record_file;
        let mut first = false;
        for attempt in 1..=MEMBERSHIP_ATTEMPTS {
            if !locks::wait_file_lock(
                &mut record_file,
                cx,
                LockLevel::Shared,
                options.busy_timeout,
            )? {
                tracing::info!(target: TRACE, db = %db_path.display(), "another fsqlite process kept taking over for longer than busy_timeout");
                return Err(FrankenError::Busy);
            }
            match record_file.lock(cx, LockLevel::Exclusive) {
                Ok(()) => {
                    first = true;
                    break;
                }
                Err(FrankenError::Busy) if attempt < MEMBERSHIP_ATTEMPTS => {
                    record_file.unlock(cx, LockLevel::None)?;
                    let mut b = [0u8; 2];
                    vfs.randomness(&mut b);
                    let micros = 100 + u64::from(u16::from_le_bytes(b)) % 1900;
                    std::thread::sleep(Duration::from_micros(micros));
                }
                Err(FrankenError::Busy) => record_file.unlock(cx, LockLevel::Shared)?,
                Err(e) => return Err(e),
            }
        }
        if !first {
            return Self::join(cx, vfs, db_path, db, record_file, page_size, options);
        }
        let probe = probe_locked(cx, &mut db, Some(&record_file), options.probe_timeout)?;
        match probe.result {
            CoordinatorProbeResult::NoCoordinator => {}
            CoordinatorProbeResult::Active => {
                let pid = probe.record.map_or(0, |r| r.pid);
                tracing::info!(target: TRACE, db = %db_path.display(), pid,
                    "the record names a live coordinator that is not a member (an older fsqlite?)");
                return Err(FrankenError::Busy);
            }
            CoordinatorProbeResult::Timeout => {
                tracing::info!(target: TRACE, db = %db_path.display(), waited_ms = probe.waited.as_millis() as u64,
                    "WAL_WRITE_LOCK stayed busy and no fsqlite process has the database open (a legacy writer?)");
                return Err(FrankenError::Busy);
            }
        }
        // From here on we hold WAL_WRITE_LOCK; dropping `db` on an error releases it.
        let previous = probe.record;
        let mut this = Self::assemble(
            cx,
            vfs,
            db_path,
            (db, record_file),
            page_size,
            options,
            previous,
            false,
        )?;
        this.state.mark_write_lock_held(Instant::now());
        this.take_over(cx)?;
        // The lock of the serial section: kept shared for life (Excluded), or let go and
        // taken per batch (Admitted).
        match this.options.legacy_writers {
            LegacyWriters::Excluded => match this.db.shm_downgrade(cx, WAL_WRITE_LOCK) {
                Ok(()) => {}
                // A VFS without an atomic downgrade lets go first; take it shared again.
                Err(FrankenError::Busy) => {
                    let db = &mut this.db;
                    if !locks::wait_until(cx, this.options.probe_timeout, || {
                        locks::try_shared(db, cx, WAL_WRITE_LOCK)
                    })? {
                        return Err(FrankenError::Busy);
                    }
                }
                Err(e) => return Err(e),
            },
            LegacyWriters::Admitted => {
                locks::unlock_exclusive(&mut this.db, cx, WAL_WRITE_LOCK, 1)?;
                this.state.mark_write_lock_released();
            }
        }
        this.record_file.unlock(cx, LockLevel::Shared)?;
        Ok(this)
    }

    /// The state of a member before its takeover or join: the WAL file opened (the
    /// coordinator places every sync itself, so the `WalFile` never syncs), an empty
    /// legacy-`-shm` copy, the record of this process one generation past `previous`.
    #[allow(
        clippy::too_many_arguments,
        reason = "the two callers (take over, join) pass what open received"
    )]
    fn assemble(
        cx: &Cx,
        vfs: Arc<V>,
        db_path: &Path,
        (db, record_file): (V::File, V::File),
        page_size: PageSize,
        options: CoordinatorOptions,
        previous: Option<CoordinatorRecord>,
        joined: bool,
    ) -> Result<Self> {
        let generation = previous.map_or(0, |r| r.generation).wrapping_add(1);
        let wal_path = sibling(db_path, "-wal");
        let shm_path = sibling(db_path, "-shm");
        let (wal_file, _) = vfs.open(
            cx,
            Some(&wal_path),
            VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL,
        )?;
        let wal = WalFile::attach(wal_file, Some(wal_path.clone())).with_sync_mode(SyncMode::Off);
        Ok(Self {
            vfs,
            db_path: db_path.to_path_buf(),
            db,
            wal,
            wal_path,
            shm_path,
            record_file,
            index: WalIndex::new(),
            state: HybridShmState::new(WalIndexHdr::default(), WalCkptInfo::default()),
            page_size,
            options,
            record: CoordinatorRecord::for_this_process(generation),
            takeover: Takeover {
                previous,
                // A member that takes over over an "active" record: its writer died.
                previous_died: !joined && previous.is_some_and(|r| r.state == RecordState::Active),
                plan: RecoveryPlan::default(),
                defect: None,
                stale_marks: Vec::new(),
                rebuilt: false,
                mx_frame: 0,
                generation,
                joined,
            },
            commits: 0,
            latched: None,
            batch_held: false,
            journal_size_limit: None,
            truncate_on_commit: false,
        })
    }

    /// Joins the fsqlite processes that have the database open: same setting, the
    /// write lock for life (Excluded), then, inside one serial section, the live `-shm`
    /// header adopted (recovered first if a dead member left it torn).
    fn join(
        cx: &Cx,
        vfs: Arc<V>,
        db_path: &Path,
        mut db: V::File,
        record_file: V::File,
        page_size: PageSize,
        options: CoordinatorOptions,
    ) -> Result<Self> {
        let mut marker = [0u8; 9];
        let got = record_file.read(cx, &mut marker, MODE_OFFSET)?;
        if got == marker.len()
            && &marker[..8] == MODE_MAGIC
            && marker[8] != options.legacy_writers.code()
        {
            return Err(FrankenError::cannot_open(
                db_path,
                format!(
                    "the fsqlite processes that have it open use {}, this one asks for {:?};                      open every process on one database with the same                      CoordinatorOptions::legacy_writers",
                    LegacyWriters::describe(marker[8]),
                    options.legacy_writers
                ),
            ));
        }
        if options.legacy_writers == LegacyWriters::Excluded {
            let ok = locks::wait_until(cx, options.probe_timeout, || {
                locks::try_shared(&mut db, cx, WAL_WRITE_LOCK)
            })?;
            if !ok {
                tracing::info!(target: TRACE, db = %db_path.display(),
                    "WAL_WRITE_LOCK stayed held exclusively while other fsqlite processes have the database open (a process with LegacyWriters::Admitted mid-batch?)");
                return Err(FrankenError::Busy);
            }
        }
        let previous = read_record(cx, &record_file)?.ok();
        let mut this = Self::assemble(
            cx,
            vfs,
            db_path,
            (db, record_file),
            page_size,
            options,
            previous,
            true,
        )?;
        if this.options.legacy_writers == LegacyWriters::Excluded {
            this.state.mark_write_lock_held(Instant::now());
        }
        let patience = Patience::timeout(this.options.probe_timeout);
        this.lock_batch(cx, &patience)?;
        let r = this.join_locked(cx);
        this.unlock_batch(cx);
        r?;
        Ok(this)
    }

    /// Writes this member's record and the setting of the processes on the database.
    fn write_record(&mut self, cx: &Cx) -> Result<()> {
        self.record_file.write(
            cx,
            &record_bytes(&self.record, self.options.legacy_writers),
            0,
        )
    }

    fn join_locked(&mut self, cx: &Cx) -> Result<()> {
        // A brand-new state: whatever the live header is, it differs from it.
        self.refresh(cx)?;
        self.takeover.mx_frame = self.state.legacy_hdr().mx_frame;
        self.write_record(cx)?;
        tracing::info!(
            target: TRACE,
            db = %self.db_path.display(),
            pid = self.record.pid,
            mode = ?self.options.legacy_writers,
            mx_frame = self.takeover.mx_frame,
            "joined the fsqlite processes writing {}",
            self.db_path.display()
        );
        Ok(())
    }
}

/// The end of frame `frame` in the WAL file.
fn wal_frame_end(frame: u32, page_size: u32) -> u64 {
    fsqlite_wal::checkpoint_executor::wal_frame_data_offset(frame, page_size) + u64::from(page_size)
}

/// The record followed by the setting of the processes on the database, written in one
/// call (`MODE_OFFSET` past the record's 48 bytes, which readers of the record ignore).
fn record_bytes(record: &CoordinatorRecord, mode: LegacyWriters) -> Vec<u8> {
    let mut b = record.encode().to_vec();
    b.resize(MODE_OFFSET as usize, 0);
    b.extend_from_slice(MODE_MAGIC);
    b.push(mode.code());
    b
}

const _: () = assert!(WAL_RECOVER_LOCK == WAL_CKPT_LOCK + 1);

impl<V: Vfs> Hybrid<V> {
    pub(crate) fn latch(&mut self, e: &FrankenError) {
        if self.latched.is_none() {
            tracing::error!(target: TRACE, db = %self.db_path.display(), error = %e,
                "commit failed after its frames were written; the coordinator refuses further \
                 commits until it is reopened");
            self.latched = Some(e.to_string());
        }
    }

    fn region0(&mut self, cx: &Cx) -> Result<ShmRegion> {
        self.index
            .map_region(cx, &mut self.db, 0, true)?
            .cloned()
            .ok_or_else(|| FrankenError::internal("WAL-index region 0 could not be mapped"))
    }

    /// The live header, which must be valid (after takeover or recovery).
    fn read_live_header(&mut self, cx: &Cx) -> Result<WalIndexHdr> {
        let mut hdr = WalIndexHdr::default();
        match self.index.read_header(cx, &mut self.db, true, &mut hdr)? {
            HeaderRead::Unchanged | HeaderRead::Changed => Ok(hdr),
            HeaderRead::UnsupportedVersion { found } => {
                Err(unsupported_version_error(&self.shm_path, found))
            }
            HeaderRead::NeedsRecovery(d) => Err(FrankenError::internal(format!(
                "the WAL-index header of {} is unusable ({d}) although this coordinator holds \
                 WAL_WRITE_LOCK and recovered it",
                self.shm_path.display()
            ))),
        }
    }

    /// Steps 2-4 of the takeover (see the module docs); the caller holds WAL_WRITE_LOCK.
    fn take_over(&mut self, cx: &Cx) -> Result<()> {
        let inspection = RecoveryPlan::inspect_shm(cx, &mut self.db, &self.shm_path)?;
        self.takeover.plan = inspection.plan;
        self.takeover.defect = inspection.defect;
        self.takeover
            .stale_marks
            .clone_from(&inspection.stale_marks);
        if inspection.plan.needs_recovery() {
            self.recover(cx, &inspection)?;
        }
        let mut hdr = self.read_live_header(cx)?;
        let synced = self
            .check_page_size(cx, &hdr)
            .and_then(|()| self.sync_wal_state(cx, &hdr));
        if let Err(e) = synced {
            if self.takeover.rebuilt {
                return Err(e);
            }
            tracing::warn!(target: TRACE, db = %self.db_path.display(), error = %e,
                "the -shm header does not match the WAL; rebuilding the WAL-index from the WAL");
            let rebuild = ShmInspection {
                plan: RecoveryPlan::from_header_state(false, false, false),
                ..inspection
            };
            self.takeover.plan.reconstruct_wal_index = true;
            self.takeover.plan.clear_stale_read_marks = true;
            self.takeover.plan.validate_backfill = true;
            self.recover(cx, &rebuild)?;
            hdr = self.read_live_header(cx)?;
            self.check_page_size(cx, &hdr)?;
            self.sync_wal_state(cx, &hdr)?;
        }
        let r0 = self.region0(cx)?;
        let mut state = HybridShmState::new(hdr, r0.load_ckpt_info());
        state.set_page_size(self.page_size);
        state.set_big_endian_checksum(
            self.wal
                .big_endian_checksum()
                .unwrap_or(cfg!(target_endian = "big")),
        );
        state.mark_write_lock_held(Instant::now());
        self.state = state;
        self.takeover.mx_frame = hdr.mx_frame;
        self.write_record(cx)?;
        tracing::info!(
            target: TRACE,
            db = %self.db_path.display(),
            generation = self.record.generation,
            pid = self.record.pid,
            previous_pid = self.takeover.previous.map_or(0, |r| r.pid),
            previous_died = self.takeover.previous_died,
            rebuilt = self.takeover.rebuilt,
            mx_frame = hdr.mx_frame,
            "took over as the hybrid coordinator (generation {}){}",
            self.record.generation,
            if self.takeover.previous_died {
                "; the previous coordinator had died"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// The header's page size must be the database's (a new, empty database adopts it).
    fn check_page_size(&mut self, cx: &Cx, hdr: &WalIndexHdr) -> Result<()> {
        if hdr.mx_frame == 0 {
            return Ok(());
        }
        match hdr.page_size() {
            Some(ps) if ps == self.page_size => Ok(()),
            Some(ps) if self.db.file_size(cx)? == 0 => {
                self.page_size = ps;
                Ok(())
            }
            other => Err(FrankenError::wal_corrupt(format!(
                "the WAL-index page size {:?} of {} differs from the database page size {}",
                other.map(PageSize::get),
                self.shm_path.display(),
                self.page_size
            ))),
        }
    }

    /// The checkpoint sequence of the WAL header on disk (0 without a valid one).
    fn disk_checkpoint_seq(&self, cx: &Cx) -> u32 {
        let mut b = [0u8; WAL_HEADER_SIZE];
        match self.wal.file().read(cx, &mut b, 0) {
            Ok(n) if n == b.len() => WalHeader::decode(&b).map_or(0, |h| h.checkpoint_seq),
            _ => 0,
        }
    }

    /// Points the WAL writer at the end of the published log (or prepares the header of a
    /// new one: the published salts, or fresh random salts for a brand-new index).
    fn sync_wal_state(&mut self, cx: &Cx, hdr: &WalIndexHdr) -> Result<()> {
        let checkpoint_seq = self.disk_checkpoint_seq(cx);
        let state = if hdr.mx_frame > 0 {
            WalState {
                mx_frame: hdr.mx_frame,
                n_page: hdr.n_page,
                frame_checksum: hdr.a_frame_cksum,
                salt: hdr.wal_salts(),
                page_size: self.page_size,
                big_endian_cksum: hdr.big_end_cksum != 0,
                checkpoint_seq,
            }
        } else {
            let salt = if hdr.a_salt == [0, 0] {
                let mut b = [0u8; 8];
                self.vfs.randomness(&mut b);
                [
                    u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                    u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                ]
            } else {
                hdr.wal_salts()
            };
            WalState {
                mx_frame: 0,
                n_page: hdr.n_page,
                frame_checksum: [0, 0],
                salt,
                page_size: self.page_size,
                big_endian_cksum: cfg!(target_endian = "big"),
                checkpoint_seq,
            }
        };
        self.wal.set_state_from_index(cx, state)
    }

    /// Runs `inspection.plan` under the recovery fence and the CKPT + RECOVER locks.
    fn recover(&mut self, cx: &Cx, inspection: &ShmInspection) -> Result<()> {
        let fence = RecoveryFence::for_path(&self.db_path);
        let mut guard = fence.acquire_for_recovery_cx(
            cx,
            RECOVERY_FENCE_MAX_RETRIES,
            RECOVERY_FENCE_BACKOFF,
        )?;
        lock_for_recovery(cx, &mut self.db, self.options.busy_timeout)?;
        let r = self.recover_locked(cx, inspection);
        let unlocked = unlock_after_recovery(cx, &mut self.db);
        r?;
        unlocked?;
        guard.complete();
        Ok(())
    }

    fn recover_locked(&mut self, cx: &Cx, inspection: &ShmInspection) -> Result<()> {
        let plan = inspection.plan;
        if plan.reconstruct_wal_index {
            self.rebuild_index(cx)?;
            self.takeover.rebuilt = true;
            return Ok(());
        }
        let r0 = self.region0(cx)?;
        if plan.clear_stale_read_marks {
            for &slot in &inspection.stale_marks {
                if slot == 0 {
                    r0.set_read_mark(0, 0);
                } else {
                    let lock = wal_read_lock(slot as u32);
                    if locks::try_exclusive(&mut self.db, cx, lock, 1)? {
                        r0.set_read_mark(slot, READMARK_NOT_USED);
                        locks::unlock_exclusive(&mut self.db, cx, lock, 1)?;
                    }
                }
            }
            tracing::info!(target: TRACE, db = %self.db_path.display(), slots = ?inspection.stale_marks, "cleared stale read marks");
        }
        if plan.validate_backfill {
            let hdr = self.read_live_header(cx)?;
            let (nb, na) = (r0.n_backfill(), r0.n_backfill_attempted());
            // inv: NBACKFILL_LE_MXFRAME
            if !(nb <= na && na <= hdr.mx_frame) {
                tracing::warn!(target: TRACE, db = %self.db_path.display(), n_backfill = nb,
                    n_backfill_attempted = na, mx_frame = hdr.mx_frame,
                    "backfill counters broke nBackfill <= nBackfillAttempted <= mxFrame; \
                     the next checkpoint copies the whole WAL again");
                r0.set_n_backfill(0);
                r0.set_n_backfill_attempted(hdr.mx_frame);
            }
        }
        Ok(())
    }

    /// SQLite's `walIndexRecover` with fsqlite-wal's pieces: scan the WAL's valid prefix
    /// into a private index, copy it into the `-shm`, publish the header, reset the
    /// checkpoint info and the read marks nobody holds.
    fn rebuild_index(&mut self, cx: &Cx) -> Result<()> {
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
        tracing::info!(
            target: TRACE,
            db = %self.db_path.display(),
            frames = rebuilt.hdr.mx_frame,
            stop = %rebuilt.report.stop,
            elapsed_us = rebuilt.elapsed.as_micros() as u64,
            "recovered {} frames from WAL file {}",
            rebuilt.hdr.mx_frame,
            self.wal_path.display()
        );
        Ok(())
    }

    /// Enters the serial section of a group commit (see [`LegacyWriters`]): the record
    /// file's RESERVED lock (Excluded) or `WAL_WRITE_LOCK` exclusively (Admitted), polled
    /// with a short back-off (10 µs doubling to 200 µs) as long as `patience` allows;
    /// `Busy` after that.
    pub(crate) fn lock_batch(&mut self, cx: &Cx, patience: &Patience) -> Result<()> {
        debug_assert!(!self.batch_held);
        let start = std::time::Instant::now();
        let mut nap = Duration::from_micros(10);
        let mut attempt = 0u32;
        loop {
            let got = match self.options.legacy_writers {
                LegacyWriters::Excluded => match self.record_file.lock(cx, LockLevel::Reserved) {
                    Ok(()) => true,
                    Err(FrankenError::Busy) => false,
                    Err(e) => return Err(e),
                },
                LegacyWriters::Admitted => {
                    locks::try_exclusive(&mut self.db, cx, WAL_WRITE_LOCK, 1)?
                }
            };
            if got {
                self.batch_held = true;
                self.state.mark_write_lock_held(Instant::now());
                return Ok(());
            }
            if !patience.keep_waiting(attempt, start.elapsed()) {
                tracing::debug!(target: TRACE, db = %self.db_path.display(), attempt, "the serial section of a group commit stayed busy");
                return Err(FrankenError::Busy);
            }
            attempt = attempt.saturating_add(1);
            cx.checkpoint()?;
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_micros(200));
        }
    }

    /// Leaves the serial section entered by [`Hybrid::lock_batch`].
    pub(crate) fn unlock_batch(&mut self, cx: &Cx) {
        if !std::mem::take(&mut self.batch_held) {
            return;
        }
        let r = match self.options.legacy_writers {
            LegacyWriters::Excluded => self.record_file.unlock(cx, LockLevel::Shared),
            LegacyWriters::Admitted => {
                self.state.mark_write_lock_released();
                locks::unlock_exclusive(&mut self.db, cx, WAL_WRITE_LOCK, 1)
            }
        };
        if let Err(e) = r {
            tracing::warn!(target: TRACE, error = %e, "releasing the serial section's lock failed");
        }
    }

    /// Inside the serial section: takes up what other writers (fsqlite peers, admitted
    /// SQLite writers) published since this process last looked, recovering the index
    /// first when a writer died mid-publish and left the header torn. Returns whether the
    /// live header differed from this process's copy.
    pub(crate) fn refresh(&mut self, cx: &Cx) -> Result<bool> {
        debug_assert!(self.batch_held);
        let mut hdr = WalIndexHdr::default();
        let live = match self.index.read_header(cx, &mut self.db, true, &mut hdr)? {
            HeaderRead::Unchanged | HeaderRead::Changed => hdr,
            HeaderRead::UnsupportedVersion { found } => {
                return Err(unsupported_version_error(&self.shm_path, found));
            }
            HeaderRead::NeedsRecovery(d) => {
                tracing::warn!(target: TRACE, db = %self.db_path.display(), defect = %d,
                    "the WAL-index header is unusable (a writer died while publishing?); rebuilding it from the WAL");
                let mut inspection = RecoveryPlan::inspect_shm(cx, &mut self.db, &self.shm_path)?;
                inspection.plan.reconstruct_wal_index = true;
                self.recover(cx, &inspection)?;
                self.read_live_header(cx)?
            }
        };
        let mine = self.state.legacy_hdr();
        if live == mine && self.wal.state().is_some() {
            return Ok(false);
        }
        self.check_page_size(cx, &live)?;
        self.sync_wal_state(cx, &live)?;
        let r0 = self.region0(cx)?;
        self.state.adopt_published(live, r0.load_ckpt_info());
        self.state.set_page_size(self.page_size);
        tracing::trace!(target: TRACE, from = mine.mx_frame, to = live.mx_frame, "took up other writers' commits");
        Ok(true)
    }

    /// Appends already-validated transactions as one group commit (see the module docs):
    /// one run of writes ([`WalFile::append_commits`]), one sync per [`SyncMode`], every
    /// frame (padding included) into the legacy hash tables, then one header publish.
    /// Returns each transaction's commit frame. A failure after the append latches the
    /// coordinator (it refuses further commits until reopened).
    pub(crate) fn append_batch(&mut self, cx: &Cx, txns: &[GroupedCommit<'_>]) -> Result<Vec<u32>> {
        cx.checkpoint()?;
        if let Some(first) = &self.latched {
            return Err(FrankenError::PreviousIo {
                first: first.clone(),
            });
        }
        let nth = self.commits + 1;
        let kill = self
            .options
            .kill_at
            .filter(|k| k.commit == nth)
            .map(|k| k.point);
        let mut appended = false;
        let r = self.append_batch_inner(cx, txns, kill, &mut appended);
        if let Err(e) = &r
            && (appended || !e.is_transient())
        {
            self.latch(e);
        }
        r
    }

    fn append_batch_inner(
        &mut self,
        cx: &Cx,
        txns: &[GroupedCommit<'_>],
        kill: Option<KillPoint>,
        appended: &mut bool,
    ) -> Result<Vec<u32>> {
        let hdr = self.state.legacy_hdr();
        if !self.wal.header_on_disk() {
            self.wal.ensure_header(cx)?;
            if self.options.sync.syncs_header() {
                self.wal.fsync(cx)?;
            }
        }
        self.wal.rollback_uncommitted();
        debug_assert_eq!(self.wal.mx_frame(), hdr.mx_frame);
        let first = hdr.mx_frame + 1;
        let ends = self
            .wal
            .append_commits(cx, txns, self.options.sync.syncs_on_commit())?;
        *appended = true;
        let last = self.wal.mx_frame();
        let db_size = self.wal.n_page();
        if kill == Some(KillPoint::BeforeWalSync) {
            kill_self(KillPoint::BeforeWalSync);
        }
        if self.options.sync.syncs_on_commit() {
            self.wal.fsync(cx)?;
        }
        if kill == Some(KillPoint::AfterWalSync) {
            kill_self(KillPoint::AfterWalSync);
        }
        let mut frame = first;
        let mut last_page = None;
        for (frames, _) in txns {
            for (page, _) in *frames {
                self.index.append(cx, &mut self.db, frame, *page)?;
                frame += 1;
                last_page = Some(*page);
            }
        }
        // Padding frames (non-PSOW devices) repeat the last commit frame's page.
        if let Some(page) = last_page {
            while frame <= last {
                self.index.append(cx, &mut self.db, frame, page)?;
                frame += 1;
            }
        }
        // inv: HYB_PUBLISH_AFTER_INDEX — every frame of the batch is in the hash tables
        // before the header that names it is published (loom: tests/loom_hybrid.rs).
        debug_assert!(
            last_page.is_none_or(|page| self
                .index
                .frame_page(cx, &mut self.db, last)
                .is_ok_and(|p| p == page)),
            "frame {last} is not indexed before the publish"
        );
        if kill == Some(KillPoint::AfterHash) {
            kill_self(KillPoint::AfterHash);
        }
        let salts = self
            .wal
            .salts()
            .ok_or_else(|| FrankenError::internal("the WAL has no header after an append"))?;
        let mut upd =
            self.state
                .update_legacy_shm(last, db_size, self.wal.frame_checksum(), salts)?;
        let r0 = self.region0(cx)?;
        publish_header(
            &PublishTarget {
                region: &r0,
                kill_mid_publish: kill == Some(KillPoint::MidPublish),
            },
            &mut upd.hdr,
        );
        debug_assert_eq!(upd.hdr, self.state.legacy_hdr());
        if kill == Some(KillPoint::AfterPublish) {
            kill_self(KillPoint::AfterPublish);
        }
        self.commits += 1;
        if std::mem::take(&mut self.truncate_on_commit)
            && let Some(limit) = self.journal_size_limit
        {
            // SQLite's walLimitSize: the first commit after a restart trims the file.
            let end = wal_frame_end(last, self.page_size.get());
            let size = limit.max(end);
            match self.wal.file().file_size(cx) {
                Ok(now) if now > size => {
                    if let Err(e) = self.wal.file_mut().truncate(cx, size) {
                        tracing::warn!(target: TRACE, error = %e, "journal_size_limit: could not truncate the WAL; the commit stands");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target: TRACE, error = %e, "journal_size_limit: could not size the WAL; the commit stands");
                }
            }
        }
        let n_backfill = r0.n_backfill();
        if n_backfill <= last {
            self.state.update_backfill(n_backfill)?;
        }
        tracing::trace!(target: TRACE, mx_frame = last, transactions = txns.len(), db_size, "group commit published");
        Ok(ends)
    }

    /// SQLite's `walRestartLog` for the coordinator: when a checkpointer has copied every
    /// frame into the database and no reader uses a read mark (READ_LOCK(1..5) exclusive),
    /// start a new WAL generation (salt-1 + 1, new salt-2) so the log does not grow forever.
    /// Returns whether the WAL was restarted; `on_restart` runs while every read mark is
    /// still held exclusively (so no reader can begin on the old generation meanwhile).
    pub(crate) fn maybe_restart(&mut self, cx: &Cx, on_restart: impl FnOnce()) -> Result<bool> {
        if self.latched.is_some() {
            return Ok(false);
        }
        let mx = self.state.legacy_hdr().mx_frame;
        if mx == 0 {
            return Ok(false);
        }
        let r0 = self.region0(cx)?;
        if r0.n_backfill() != mx {
            return Ok(false);
        }
        let readers = (WAL_READ_MARK_COUNT - 1) as u32;
        if !locks::try_exclusive(&mut self.db, cx, wal_read_lock(1), readers)? {
            return Ok(false);
        }
        let r = self.restart_locked(cx, &r0);
        match &r {
            Ok(()) => {
                self.truncate_on_commit = true;
                on_restart();
            }
            // The WAL file may already be in its new generation (in memory, or on disk
            // without its sync) while the legacy header still names the old one: appending
            // to either would be a guess. Refuse further commits until a reopen recovers
            // from what the disk holds.
            Err(e) => self.latch(e),
        }
        let unlocked = locks::unlock_exclusive(&mut self.db, cx, wal_read_lock(1), readers);
        r?;
        unlocked.map(|()| true)
    }

    fn restart_locked(&mut self, cx: &Cx, r0: &ShmRegion) -> Result<()> {
        let mut b = [0u8; 4];
        self.vfs.randomness(&mut b);
        let salt2 = u32::from_ne_bytes(b);
        self.wal.restart(cx, salt2)?;
        if self.options.sync.syncs_header() {
            self.wal.fsync(cx)?;
        }
        let salts = self
            .wal
            .salts()
            .ok_or_else(|| FrankenError::internal("the WAL has no header after a restart"))?;
        let n_page = self.state.legacy_hdr().n_page;
        let mut upd = self
            .state
            .update_legacy_shm(0, n_page, self.wal.frame_checksum(), salts)?;
        publish_header(r0, &mut upd.hdr);
        r0.set_n_backfill(upd.ckpt.n_backfill);
        r0.set_n_backfill_attempted(upd.ckpt.n_backfill_attempted);
        for i in 1..WAL_READ_MARK_COUNT {
            r0.set_read_mark(i, upd.ckpt.a_read_mark[i]);
        }
        tracing::debug!(target: TRACE, db = %self.db_path.display(), salt1 = salts[0], salt2 = salts[1], "restarted the WAL");
        Ok(())
    }

    fn close(mut self, cx: &Cx) -> Result<()> {
        let closed = CoordinatorRecord {
            state: RecordState::Closed,
            ..self.record
        };
        self.unlock_batch(cx);
        // The record says "closed" only when this is the last fsqlite process.
        let last = match self.record_file.lock(cx, LockLevel::Exclusive) {
            Ok(()) => true,
            Err(FrankenError::Busy) => false,
            Err(e) => {
                tracing::warn!(target: TRACE, error = %e, "could not tell whether other fsqlite processes remain");
                false
            }
        };
        // Generations only grow: a member that joined later may have written a newer one.
        let closed = CoordinatorRecord {
            generation: read_record(cx, &self.record_file)?
                .map_or(closed.generation, |r| r.generation.max(closed.generation)),
            ..closed
        };
        let mut result = if last {
            self.record_file.write(cx, &closed.encode(), 0)
        } else {
            Ok(())
        };
        if self.options.legacy_writers == LegacyWriters::Excluded {
            result = result.and(locks::unlock_shared(&mut self.db, cx, WAL_WRITE_LOCK));
        }
        let _ = self.record_file.unlock(cx, LockLevel::None);
        self.state.mark_write_lock_released();
        self.index.forget_mappings();
        result = result.and(self.db.shm_unmap(cx, false));
        let _ = self.db.unlock(cx, LockLevel::None);
        tracing::info!(target: TRACE, db = %self.db_path.display(), generation = self.record.generation,
            commits = self.commits, "coordinator closed; WAL_WRITE_LOCK released");
        let Self {
            vfs,
            db_path,
            db,
            wal,
            record_file,
            options,
            latched,
            page_size,
            ..
        } = self;
        drop((db, wal, record_file));
        result?;
        if options.checkpoint_on_close && latched.is_none() {
            let wal_options = WalOptions {
                sync: options.sync,
                page_size: page_size.get(),
                busy_timeout: options.busy_timeout,
                auto_checkpoint: None,
                checkpoint_on_close: true,
            };
            Wal::open(cx, vfs, &db_path, wal_options)?.close(cx)?;
        }
        Ok(())
    }
}
