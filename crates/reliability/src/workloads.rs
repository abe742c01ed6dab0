//! The canonical workloads (TESTING.md §2.8 (a)) and the runner that drives one through
//! [`Wal`] while keeping the [`Model`] in step.
//!
//! # Workloads
//!
//! A [`Workload`] is a fixed list of [`Step`]s; only the page *contents* depend on the
//! run's seed ([`crate::model::page_image`]), so the number of VFS operations a workload
//! performs is the same for every seed, which is what crash-point enumeration needs.
//! Rules every workload keeps, so the model stays exact:
//!
//! - the first commit writes page 1 (a SQLite header in WAL mode, see [`crate::model`]);
//! - a commit that grows the database writes every new page (no page is ever read before
//!   it was written), and no commit shrinks the database;
//! - connections use `SyncMode::Full` ([`Workload::sync`]) and a zero busy timeout (every lock attempt is made
//!   exactly once, so runs are deterministic).
//!
//! | workload | what it covers |
//! |---|---|
//! | `single_frame` | ten one-frame commits (growing and overwriting), 4096-byte pages |
//! | `multi_frame` | six commits of 1-8 frames |
//! | `hash_boundary` | 512-byte pages: 64 pages rewritten until frame 4032, then commits ending at frames 4057, 4059, 4063 (crossing from hash region 0 into region 1 at 4062/4063), 4064, 4067; checkpoint; restart back into region 0 |
//! | `page_512` | 512-byte pages, FULL checkpoint |
//! | `page_65536` | 65536-byte pages (stored as 1 in the -shm), PASSIVE checkpoint |
//! | `ckpt_passive`, `ckpt_full`, `ckpt_restart`, `ckpt_truncate` | commits interleaved with three checkpoints of that mode |
//! | `wal_restart` | full backfill, then commits that restart the WAL in place (new salts) |
//! | `auto_checkpoint` | auto-checkpoint every 6 frames: checkpoints and restarts inside commits |
//! | `recovery_compound` | reopens (recoveries) mid-run; the crash simulator also crashes inside the reopen after each crash |
//! | `shm_loss` | the live -shm zeroed, garbaged, torn, given a bad checksum, deleted |
//! | `reader_snapshot` | a second connection holds a snapshot across commits and PASSIVE/RESTART checkpoints |
//! | `close_reopen` | the last connection closes (checkpoint, delete -wal/-shm), reopen |
//! | `journal_limit` | `journal_size_limit` of 3 frames: the `-wal` cut back after checkpoints and restarts |
//! | `exclusive_mode` | EXCLUSIVE locking mode for commits and a checkpoint, then NORMAL again |
//! | `snapshot_handle` | a snapshot handle taken, commits, `recover_snapshots`, `begin_read_at` reads the old state |
//! | `big_wal` | 65536-byte pages, 8.9 MiB of WAL, `-shm` deleted, reopen: the parallel recovery scan |
//!
//! # The runner
//!
//! [`run`] executes the steps in order on connection 0 (the "writer"), opened lazily with
//! [`Wal::open`]; [`Step::ReaderHold`] opens a second connection, holds a read transaction
//! across its nested steps and then checks that the snapshot still reads exactly the state
//! it started on. Before each commit the model records the state as *attempted*, after
//! `commit` returns `Ok` as *acknowledged*. The run stops at the first error (a crash point
//! or an injected fault) and reports it with the step that failed; a live read that does
//! not match the model is a [`RunOutcome::violation`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{Vfs, VfsFile};
use fsqlite_wal::wal_index::{WAL_INDEX_VERSION, WALINDEX_PGSZ, WalIndexHdr};
use fsqlite_wal::{CheckpointMode, LockingMode, ReadTxn, SyncMode, Wal, WalOptions};

use crate::model::{Model, Observed, page_digest, page_image};

/// One thing a workload does.
#[derive(Clone, Debug)]
pub enum Step {
    /// A write transaction writing `pages` (images from [`page_image`]) and committing
    /// with database size `db_size`.
    Commit {
        /// Pages written.
        pages: Vec<u32>,
        /// The commit's database size.
        db_size: u32,
    },
    /// A checkpoint on the writer.
    Checkpoint(CheckpointMode),
    /// Drop the writer without closing it (a process exit without checkpoint) and open a
    /// new one: the next open rebuilds the WAL-index (recovery).
    Reopen,
    /// `Wal::close` (the last connection checkpoints and deletes `-wal`/`-shm`), then
    /// open a new writer.
    Close,
    /// Damage the live `-shm` while the writer has it mapped; the writer's next access
    /// must notice and recover.
    Shm(ShmDamage),
    /// Drop the writer, delete `-shm`, open a new writer.
    ShmDelete,
    /// Open a second connection, begin a read transaction, run the nested steps on the
    /// writer, then check that the read transaction still sees its snapshot and that a
    /// new read sees the latest acknowledged state.
    ReaderHold(Vec<Step>),
    /// Read every page through the writer and compare with the last acknowledged state.
    Verify,
    /// `Wal::set_journal_size_limit` on the writer.
    JournalLimit(Option<u64>),
    /// `Wal::set_locking_mode` on the writer: `true` EXCLUSIVE, `false` NORMAL.
    Exclusive(bool),
    /// A second connection takes a snapshot handle (`ReadTxn::snapshot`) and ends its read
    /// transaction; the nested steps run on the writer (no checkpoint among them); then
    /// the second connection recovers the snapshots (`Wal::recover_snapshots`), opens the
    /// handle (`Wal::begin_read_at`) and must read exactly the state it was taken at.
    SnapshotHold(Vec<Step>),
}

/// How [`Step::Shm`] (and the crash simulator, before a reopen) damages region 0 of the
/// `-shm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShmDamage {
    /// All 32 KiB zeroed (`isInit == 0`).
    Zeros,
    /// All 32 KiB random bytes.
    Random,
    /// A sealed, checksummed header of random fields in both copies, then one bit of copy
    /// A flipped (the two copies differ: a writer died mid-publish).
    TornCopies,
    /// Equal, initialized copies whose checksum is wrong.
    BadChecksum,
}

impl ShmDamage {
    /// Every kind.
    pub const ALL: [ShmDamage; 4] = [
        ShmDamage::Zeros,
        ShmDamage::Random,
        ShmDamage::TornCopies,
        ShmDamage::BadChecksum,
    ];

    /// A short name for stats.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Zeros => "zeros",
            Self::Random => "random",
            Self::TornCopies => "torn_copies",
            Self::BadChecksum => "bad_checksum",
        }
    }
}

/// A named, fixed sequence of steps (see the module doc).
#[derive(Clone, Debug)]
pub struct Workload {
    /// Name used on the command line and in stats.
    pub name: &'static str,
    /// One line on what it covers.
    pub about: &'static str,
    /// Page size of the database.
    pub page_size: u32,
    /// `WalOptions::auto_checkpoint` of its connections.
    pub auto_checkpoint: Option<u32>,
    /// When true the crash simulator also crashes *during* the reopen after each crash
    /// and reopens once more (a compound failure).
    pub compound: bool,
    /// The connections' sync mode: `Full` for every canonical workload (the oracle's
    /// durability bound assumes it); anything else is a deliberately broken workload.
    pub sync: SyncMode,
    /// The steps.
    pub steps: Vec<Step>,
}

impl Workload {
    /// The options of the workload's connections.
    pub fn options(&self) -> WalOptions {
        WalOptions {
            sync: self.sync,
            page_size: self.page_size,
            busy_timeout: Duration::ZERO,
            auto_checkpoint: self.auto_checkpoint,
            checkpoint_on_close: true,
        }
    }

    /// The options of a connection that only verifies a recovered database.
    pub fn verify_options(&self) -> WalOptions {
        WalOptions {
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..self.options()
        }
    }

    /// Number of commit steps (nested ones included).
    pub fn commit_count(&self) -> usize {
        fn count(steps: &[Step]) -> usize {
            steps
                .iter()
                .map(|s| match s {
                    Step::Commit { .. } => 1,
                    Step::ReaderHold(inner) | Step::SnapshotHold(inner) => count(inner),
                    _ => 0,
                })
                .sum()
        }
        count(&self.steps)
    }
}

/// Builds a step list that keeps the rules of the module doc.
struct Builder {
    steps: Vec<Step>,
    db_size: u32,
    rng: Rng,
}

impl Builder {
    fn new(tag: u64) -> Self {
        Self {
            steps: Vec::new(),
            db_size: 0,
            rng: Rng::new(tag),
        }
    }

    /// A commit of `new` new pages and `old` overwrites of existing ones.
    fn grow(&mut self, new: u32, old: u32) -> &mut Self {
        let mut pages: Vec<u32> = Vec::new();
        let start = self.db_size;
        for k in 0..old.min(start) {
            let p = if k == 0 && start > 0 {
                1
            } else {
                1 + self.rng.below(u64::from(start)) as u32
            };
            if !pages.contains(&p) {
                pages.push(p);
            }
        }
        pages.extend(start + 1..=start + new);
        if start == 0 && !pages.contains(&1) {
            pages.insert(0, 1);
        }
        self.db_size = start + new;
        self.steps.push(Step::Commit {
            pages,
            db_size: self.db_size,
        });
        self
    }

    /// A commit of exactly `pages`; pages above the current size grow the database (the
    /// caller lists every new page).
    fn pages(&mut self, pages: Vec<u32>) -> &mut Self {
        self.db_size = self.db_size.max(pages.iter().copied().max().unwrap_or(0));
        self.steps.push(Step::Commit {
            pages,
            db_size: self.db_size,
        });
        self
    }

    fn step(&mut self, s: Step) -> &mut Self {
        self.steps.push(s);
        self
    }

    fn ckpt(&mut self, mode: CheckpointMode) -> &mut Self {
        self.step(Step::Checkpoint(mode))
    }

    fn take(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.steps)
    }
}

fn workload(name: &'static str, about: &'static str, page_size: u32, steps: Vec<Step>) -> Workload {
    Workload {
        name,
        about,
        page_size,
        auto_checkpoint: None,
        compound: false,
        sync: SyncMode::Full,
        steps,
    }
}

/// Frames in region 0 of the WAL-index hash tables (frames 1..=4062).
pub const FIRST_HASH_REGION_FRAMES: u32 = 4062;

fn checkpoint_workload(name: &'static str, about: &'static str, mode: CheckpointMode) -> Workload {
    let mut b = Builder::new(0x636b_7074 ^ mode as u64);
    b.grow(3, 0)
        .grow(2, 2)
        .grow(0, 2)
        .ckpt(mode)
        .grow(1, 2)
        .grow(0, 1);
    b.ckpt(mode)
        .grow(2, 1)
        .step(Step::Verify)
        .ckpt(mode)
        .grow(0, 2);
    workload(name, about, 4096, b.take())
}

/// Every canonical workload, in report order.
pub fn all() -> Vec<Workload> {
    let mut out = Vec::new();

    let mut b = Builder::new(1);
    b.grow(1, 0);
    for i in 0..9 {
        if i % 3 == 0 {
            b.grow(1, 0);
        } else {
            b.grow(0, 1);
        }
    }
    b.step(Step::Verify);
    out.push(workload(
        "single_frame",
        "ten one-frame commits (growing and overwriting)",
        4096,
        b.take(),
    ));

    let mut b = Builder::new(2);
    b.grow(4, 0)
        .grow(3, 3)
        .grow(0, 5)
        .grow(6, 2)
        .step(Step::Verify)
        .grow(1, 6)
        .grow(0, 8);
    out.push(workload(
        "multi_frame",
        "six commits of 1-8 frames each",
        4096,
        b.take(),
    ));

    // 64 pages rewritten until frame 4032, then commits ending at frames 4057, 4059,
    // 4063 (crossing from hash region 0 into region 1), 4064, 4067; a checkpoint; a
    // restart back into region 0.
    let mut b = Builder::new(3);
    b.grow(64, 0);
    for _ in 0..62 {
        b.pages((1..=64).collect());
    }
    b.pages((1..=25).collect())
        .pages(vec![3, 7])
        .pages(vec![10, 11, 12, 13])
        .pages(vec![1])
        .pages(vec![64, 65, 66])
        .ckpt(CheckpointMode::Passive)
        .pages(vec![2, 5])
        .step(Step::Verify);
    out.push(workload(
        "hash_boundary",
        "512-byte pages; commits ending at frames 4057, 4059, 4063 (crossing the first hash-region boundary 4062/4063), 4064, 4067",
        512,
        b.take(),
    ));

    let mut b = Builder::new(4);
    b.grow(6, 0)
        .grow(2, 4)
        .grow(0, 7)
        .ckpt(CheckpointMode::Full)
        .grow(3, 3)
        .grow(0, 2);
    out.push(workload(
        "page_512",
        "512-byte pages, multi-frame commits, FULL checkpoint",
        512,
        b.take(),
    ));

    let mut b = Builder::new(5);
    b.grow(2, 0)
        .grow(1, 1)
        .grow(0, 2)
        .ckpt(CheckpointMode::Passive)
        .grow(1, 1)
        .grow(0, 1);
    out.push(workload(
        "page_65536",
        "65536-byte pages (encoded as 1), PASSIVE checkpoint",
        65_536,
        b.take(),
    ));

    out.push(checkpoint_workload(
        "ckpt_passive",
        "commits interleaved with PASSIVE checkpoints",
        CheckpointMode::Passive,
    ));
    out.push(checkpoint_workload(
        "ckpt_full",
        "commits interleaved with FULL checkpoints",
        CheckpointMode::Full,
    ));
    out.push(checkpoint_workload(
        "ckpt_restart",
        "commits interleaved with RESTART checkpoints",
        CheckpointMode::Restart,
    ));
    out.push(checkpoint_workload(
        "ckpt_truncate",
        "commits interleaved with TRUNCATE checkpoints (WAL truncated to 0 bytes)",
        CheckpointMode::Truncate,
    ));

    let mut b = Builder::new(6);
    b.grow(3, 0)
        .grow(0, 2)
        .ckpt(CheckpointMode::Passive)
        .grow(1, 1)
        .grow(0, 2)
        .ckpt(CheckpointMode::Passive)
        .grow(0, 1)
        .step(Step::Verify)
        .grow(2, 1);
    out.push(workload(
        "wal_restart",
        "full backfill, then commits that restart the WAL (new salts) in place",
        1024,
        b.take(),
    ));

    let mut b = Builder::new(7);
    b.grow(2, 0);
    for i in 0..12 {
        b.grow(u32::from(i % 4 == 0), 1 + i % 3);
    }
    let mut w = workload(
        "auto_checkpoint",
        "auto-checkpoint every 6 frames: passive checkpoints and restarts inside commit",
        1024,
        b.take(),
    );
    w.auto_checkpoint = Some(6);
    out.push(w);

    let mut b = Builder::new(8);
    b.grow(3, 0)
        .grow(0, 2)
        .step(Step::Reopen)
        .grow(1, 2)
        .ckpt(CheckpointMode::Passive)
        .grow(0, 2)
        .step(Step::Reopen)
        .grow(0, 1)
        .step(Step::Verify);
    let mut w = workload(
        "recovery_compound",
        "reopens (recovery) mid-run; every crash is followed by a crash during the reopen itself, then a second reopen",
        4096,
        b.take(),
    );
    w.compound = true;
    out.push(w);

    let mut b = Builder::new(9);
    b.grow(3, 0)
        .grow(0, 2)
        .step(Step::Shm(ShmDamage::Random))
        .grow(1, 1)
        .step(Step::Verify)
        .step(Step::Shm(ShmDamage::TornCopies))
        .step(Step::Verify)
        .step(Step::ShmDelete)
        .grow(0, 2)
        .step(Step::Shm(ShmDamage::BadChecksum))
        .ckpt(CheckpointMode::Full)
        .step(Step::Shm(ShmDamage::Zeros))
        .grow(1, 1)
        .step(Step::Verify);
    out.push(workload(
        "shm_loss",
        "the -shm garbaged, torn, zeroed and deleted under a live connection",
        4096,
        b.take(),
    ));

    let mut inner = Builder::new(10);
    inner.db_size = 4;
    inner
        .grow(1, 2)
        .ckpt(CheckpointMode::Passive)
        .ckpt(CheckpointMode::Restart)
        .grow(0, 2);
    let nested = inner.take();
    let mut b = Builder::new(11);
    b.grow(4, 0).grow(0, 2);
    b.step(Step::ReaderHold(nested));
    b.db_size = inner.db_size;
    b.ckpt(CheckpointMode::Truncate).grow(1, 1).grow(0, 2);
    out.push(workload(
        "reader_snapshot",
        "a second connection holds a snapshot across commits and PASSIVE/RESTART checkpoints",
        4096,
        b.take(),
    ));

    let mut b = Builder::new(12);
    b.grow(3, 0)
        .grow(0, 2)
        .step(Step::Close)
        .grow(1, 1)
        .step(Step::Close)
        .grow(0, 2)
        .step(Step::Verify);
    out.push(workload(
        "close_reopen",
        "the last connection closes (checkpoint, delete -wal/-shm) and the database is reopened",
        2048,
        b.take(),
    ));

    let mut b = Builder::new(13);
    b.step(Step::JournalLimit(Some(3 * (1024 + 24))))
        .grow(6, 0)
        .grow(0, 4)
        .ckpt(CheckpointMode::Passive)
        .grow(0, 3)
        .ckpt(CheckpointMode::Restart)
        .grow(1, 2)
        .ckpt(CheckpointMode::Full)
        .grow(0, 2)
        .step(Step::Verify);
    out.push(workload(
        "journal_limit",
        "journal_size_limit of 3 frames: the WAL file is cut back after checkpoints and restarts",
        1024,
        b.take(),
    ));

    let mut b = Builder::new(14);
    b.grow(3, 0)
        .step(Step::Exclusive(true))
        .grow(0, 2)
        .grow(1, 1)
        .ckpt(CheckpointMode::Passive)
        .grow(0, 2)
        .step(Step::Exclusive(false))
        .grow(0, 1)
        .step(Step::Verify);
    out.push(workload(
        "exclusive_mode",
        "EXCLUSIVE locking mode (the -shm lock calls stop) for commits and a checkpoint, then back to NORMAL",
        4096,
        b.take(),
    ));

    let mut inner = Builder::new(15);
    inner.db_size = 5;
    inner.grow(0, 2).grow(1, 1).grow(0, 3);
    let nested = inner.take();
    let mut b = Builder::new(16);
    // Backfilled first, then a commit that restarts the WAL: the handle, taken after it,
    // reads most pages from the database file.
    b.grow(5, 0)
        .grow(0, 2)
        .ckpt(CheckpointMode::Passive)
        .grow(0, 1);
    b.step(Step::SnapshotHold(nested));
    b.db_size = inner.db_size;
    b.grow(0, 2).step(Step::Verify);
    out.push(workload(
        "snapshot_handle",
        "a snapshot handle taken, commits, the snapshots recovered and the handle opened (begin_read_at)",
        2048,
        b.take(),
    ));

    // More than PARALLEL_MIN_BYTES (8 MiB) of WAL: the reopen recovers with the parallel
    // scan.
    let mut b = Builder::new(17);
    b.grow(8, 0);
    for _ in 0..16 {
        b.pages((1..=8).collect());
    }
    b.step(Step::ShmDelete).step(Step::Verify).grow(0, 2);
    out.push(workload(
        "big_wal",
        "65536-byte pages, 136 frames (8.9 MiB of WAL), then the -shm deleted and a reopen: recovery scans the WAL in parallel chunks",
        65_536,
        b.take(),
    ));

    out
}

/// The workload called `name`.
pub fn by_name(name: &str) -> Option<Workload> {
    all().into_iter().find(|w| w.name == name)
}

/// The database path a harness worker uses: one per worker thread, so that the
/// process-wide recovery-fence registry (keyed by path) is never shared by two workers.
pub fn worker_db_path(worker: usize, name: &str) -> PathBuf {
    PathBuf::from(format!("/rel/w{worker}/{name}.db"))
}

/// The `-shm` path of `db`.
pub fn shm_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

/// The `-wal` path of `db`.
pub fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// The page images of transaction `txn`: `(page, image)` in step order.
pub fn commit_images(
    seed: u64,
    txn: u64,
    pages: &[u32],
    page_size: u32,
    db_size: u32,
) -> Vec<(u32, Vec<u8>)> {
    pages
        .iter()
        .map(|&p| (p, page_image(seed, txn, p, page_size, db_size)))
        .collect()
}

fn page_number(p: u32) -> Result<PageNumber> {
    PageNumber::new(p).ok_or_else(|| FrankenError::out_of_range("page number", 0))
}

/// Writes `images` in one write transaction and commits it with `db_size`.
pub fn commit_pages<V: Vfs>(
    cx: &Cx,
    wal: &mut Wal<V>,
    images: &[(u32, Vec<u8>)],
    db_size: u32,
) -> Result<u32> {
    let mut t = wal.begin_write(cx)?;
    for (p, img) in images {
        t.write_page(cx, page_number(*p)?, img)?;
    }
    t.commit(cx, db_size)
}

/// Reads pages `1..=db_size` of a read transaction. A database size above `max_pages` is
/// refused (a damaged header must not make the check loop for ever).
pub fn observe_txn<V: Vfs>(
    cx: &Cx,
    txn: &ReadTxn<'_, V>,
    page_size: u32,
    max_pages: u32,
) -> Result<Observed> {
    let n = txn.db_size();
    if n > max_pages {
        return Err(FrankenError::out_of_range(
            format!("database size in pages (at most {max_pages} expected)"),
            n,
        ));
    }
    let mut buf = vec![0u8; page_size as usize];
    let mut pages = Vec::with_capacity(n as usize);
    for p in 1..=n {
        txn.read_page(cx, page_number(p)?, &mut buf)?;
        pages.push(page_digest(&buf));
    }
    Ok(Observed { db_size: n, pages })
}

/// Begins a read transaction on `wal` and reads every page (see [`observe_txn`]).
pub fn observe<V: Vfs>(cx: &Cx, wal: &mut Wal<V>, max_pages: u32) -> Result<Observed> {
    let ps = wal.page_size();
    let txn = wal.begin_read(cx)?;
    observe_txn(cx, &txn, ps, max_pages)
}

/// Opens a raw handle on `db`, maps region 0 of its `-shm` (creating it) and writes
/// `damage` into it. The handle is returned: while it lives, the damaged `-shm` stays
/// attached (a later opener is not its first opener, so it is not reset).
pub fn damage_shm<V: Vfs>(
    cx: &Cx,
    vfs: &V,
    db: &Path,
    damage: ShmDamage,
    rng: &mut Rng,
) -> Result<V::File> {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    let (mut f, _) = vfs.open(cx, Some(db), flags)?;
    let region = f
        .shm_map(cx, 0, WALINDEX_PGSZ as u32, true)?
        .ok_or_else(|| FrankenError::internal("shm region 0 could not be mapped"))?;
    match damage {
        ShmDamage::Zeros => region.zero(0, WALINDEX_PGSZ),
        ShmDamage::Random => {
            let mut bytes = vec![0u8; WALINDEX_PGSZ];
            rng.fill(&mut bytes);
            region.write_bytes(0, &bytes);
        }
        ShmDamage::TornCopies | ShmDamage::BadChecksum => {
            let mut h = WalIndexHdr {
                i_change: rng.next_u64() as u32,
                mx_frame: rng.below(64) as u32,
                n_page: rng.below(64) as u32,
                a_frame_cksum: [rng.next_u64() as u32, rng.next_u64() as u32],
                a_salt: [rng.next_u64() as u32, rng.next_u64() as u32],
                sz_page: 4096,
                ..WalIndexHdr::default()
            };
            h.seal();
            debug_assert_eq!(h.i_version, WAL_INDEX_VERSION);
            let good = h.to_bytes();
            let mut a = good;
            if damage == ShmDamage::TornCopies {
                let bit = rng.below(8 * a.len() as u64) as usize;
                a[bit / 8] ^= 1 << (bit % 8);
            } else {
                a[40] ^= 1;
            }
            let b = if damage == ShmDamage::TornCopies {
                good
            } else {
                a
            };
            region.write_bytes(0, &a);
            region.write_bytes(a.len(), &b);
        }
    }
    Ok(f)
}

/// Where and why a run stopped early.
#[derive(Debug)]
pub struct StepError {
    /// The step's position (`"4"`, or `"6.2"` inside a reader hold).
    pub step: String,
    /// The step's kind (`"commit"`, `"checkpoint"`, ...).
    pub kind: &'static str,
    /// The error.
    pub error: FrankenError,
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {} ({}): {}", self.step, self.kind, self.error)
    }
}

/// What [`run`] did.
#[derive(Debug)]
pub struct RunOutcome<V: Vfs> {
    /// The model after the run.
    pub model: Model,
    /// The first error (the run stopped there), if any.
    pub error: Option<StepError>,
    /// A live read that contradicted the model (an engine bug), if any.
    pub violation: Option<String>,
    /// The writer connection as the run left it (for a latch probe).
    pub conn: Option<Wal<V>>,
    /// Transactions run so far (the next probe uses `txns + 1`).
    pub txns: u64,
    /// Live reads compared with the model.
    pub live_checks: u64,
    /// Snapshot-isolation checks made by reader holds.
    pub snapshot_checks: u64,
}

enum Stop {
    Error(StepError),
    Violation(String),
}

struct Runner<'a, V: Vfs> {
    cx: &'a Cx,
    vfs: &'a Arc<V>,
    path: &'a Path,
    w: &'a Workload,
    seed: u64,
    rng: Rng,
    model: Model,
    conn: Option<Wal<V>>,
    txn: u64,
    live_checks: u64,
    snapshot_checks: u64,
}

fn err(step: &str, kind: &'static str, error: FrankenError) -> Stop {
    Stop::Error(StepError {
        step: step.to_owned(),
        kind,
        error,
    })
}

impl<V: Vfs> Runner<'_, V> {
    fn max_pages(&self) -> u32 {
        self.model
            .max_db_size()
            .saturating_mul(2)
            .saturating_add(16)
    }

    fn writer(&mut self, at: &str) -> std::result::Result<&mut Wal<V>, Stop> {
        if self.conn.is_none() {
            let c = Wal::open(self.cx, Arc::clone(self.vfs), self.path, self.w.options())
                .map_err(|e| err(at, "open", e))?;
            self.conn = Some(c);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| err(at, "open", FrankenError::internal("no connection")))
    }

    fn steps(&mut self, steps: &[Step], prefix: &str) -> std::result::Result<(), Stop> {
        for (i, s) in steps.iter().enumerate() {
            let at = if prefix.is_empty() {
                i.to_string()
            } else {
                format!("{prefix}.{i}")
            };
            self.step(s, &at)?;
        }
        Ok(())
    }

    fn check_latest(&mut self, at: &str, what: &str) -> std::result::Result<(), Stop> {
        let max = self.max_pages();
        let cx = self.cx;
        let obs = observe(cx, self.writer(at)?, max).map_err(|e| err(at, "verify", e))?;
        self.live_checks += 1;
        let want = self.model.acked_state();
        if obs.db_size != want.db_size || obs.pages != *want.pages {
            return Err(Stop::Violation(format!(
                "{what} at step {at}: {}",
                match self.model.judge(&obs, crate::model::Bound::AnyPrefix) {
                    Ok(i) => format!(
                        "read state {i}, expected the acknowledged state {}",
                        self.model.acked()
                    ),
                    Err(v) => v.to_string(),
                }
            )));
        }
        Ok(())
    }

    fn step(&mut self, s: &Step, at: &str) -> std::result::Result<(), Stop> {
        let cx = self.cx;
        match s {
            Step::Commit { pages, db_size } => {
                self.txn += 1;
                let txn = self.txn;
                let images = commit_images(self.seed, txn, pages, self.w.page_size, *db_size);
                let digests: Vec<(u32, u64)> =
                    images.iter().map(|(p, b)| (*p, page_digest(b))).collect();
                let idx = self.model.attempt(txn, &digests, *db_size);
                let conn = self.writer(at)?;
                commit_pages(cx, conn, &images, *db_size).map_err(|e| err(at, "commit", e))?;
                self.model.ack(idx);
            }
            Step::Checkpoint(mode) => {
                let mode = *mode;
                self.writer(at)?
                    .checkpoint(cx, mode)
                    .map_err(|e| err(at, "checkpoint", e))?;
            }
            Step::Reopen => {
                self.conn = None;
                self.writer(at)?;
            }
            Step::Close => {
                if let Some(c) = self.conn.take() {
                    c.close(cx).map_err(|e| err(at, "close", e))?;
                }
                self.writer(at)?;
            }
            Step::Shm(kind) => {
                self.writer(at)?;
                let f = damage_shm(cx, self.vfs.as_ref(), self.path, *kind, &mut self.rng)
                    .map_err(|e| err(at, "shm damage", e))?;
                drop(f);
                self.check_latest(at, "read after -shm damage")?;
            }
            Step::ShmDelete => {
                self.conn = None;
                match self.vfs.delete(cx, &shm_path(self.path), false) {
                    Ok(()) | Err(FrankenError::Io { .. }) => {}
                    Err(e) => return Err(err(at, "delete -shm", e)),
                }
                self.writer(at)?;
            }
            Step::ReaderHold(inner) => {
                self.writer(at)?;
                let snap = self.model.acked();
                let max = self.max_pages();
                let mut reader = Wal::open(cx, Arc::clone(self.vfs), self.path, self.w.options())
                    .map_err(|e| err(at, "open reader", e))?;
                let ps = reader.page_size();
                {
                    let txn = reader
                        .begin_read(cx)
                        .map_err(|e| err(at, "begin read", e))?;
                    self.steps(inner, at)?;
                    let max = max.max(self.max_pages());
                    let obs =
                        observe_txn(cx, &txn, ps, max).map_err(|e| err(at, "snapshot read", e))?;
                    self.snapshot_checks += 1;
                    let want = &self.model.states()[snap];
                    if obs.db_size != want.db_size || obs.pages != *want.pages {
                        return Err(Stop::Violation(format!(
                            "a read transaction begun at state {snap} no longer reads it after step {at}: {}",
                            match self.model.judge(&obs, crate::model::Bound::AnyPrefix) {
                                Ok(i) => format!("it reads state {i}"),
                                Err(v) => v.to_string(),
                            }
                        )));
                    }
                }
                let obs = observe(cx, &mut reader, self.max_pages())
                    .map_err(|e| err(at, "reader read", e))?;
                let want = self.model.acked_state();
                if obs.db_size != want.db_size || obs.pages != *want.pages {
                    return Err(Stop::Violation(format!(
                        "a new read transaction on the second connection does not see the acknowledged state {} after step {at}",
                        self.model.acked()
                    )));
                }
                self.live_checks += 1;
            }
            Step::Verify => self.check_latest(at, "live read")?,
            Step::JournalLimit(limit) => self.writer(at)?.set_journal_size_limit(*limit),
            Step::Exclusive(on) => {
                let mode = if *on {
                    LockingMode::Exclusive
                } else {
                    LockingMode::Normal
                };
                self.writer(at)?
                    .set_locking_mode(cx, mode)
                    .map_err(|e| err(at, "locking mode", e))?;
            }
            Step::SnapshotHold(inner) => {
                self.writer(at)?;
                let state = self.model.acked();
                let mut reader = Wal::open(cx, Arc::clone(self.vfs), self.path, self.w.options())
                    .map_err(|e| err(at, "open reader", e))?;
                let ps = reader.page_size();
                let snap = reader
                    .begin_read(cx)
                    .map_err(|e| err(at, "begin read", e))?
                    .snapshot();
                self.steps(inner, at)?;
                reader
                    .recover_snapshots(cx)
                    .map_err(|e| err(at, "recover snapshots", e))?;
                let max = self.max_pages();
                let txn = reader
                    .begin_read_at(cx, &snap)
                    .map_err(|e| err(at, "begin read at a snapshot", e))?;
                let obs =
                    observe_txn(cx, &txn, ps, max).map_err(|e| err(at, "snapshot read", e))?;
                self.snapshot_checks += 1;
                let want = &self.model.states()[state];
                if obs.db_size != want.db_size || obs.pages != *want.pages {
                    return Err(Stop::Violation(format!(
                        "a snapshot handle taken at state {state} reads another state after step {at}"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Runs `w` on `vfs` at `path` with content seed `seed` (see the module doc).
pub fn run<V: Vfs>(cx: &Cx, vfs: &Arc<V>, path: &Path, w: &Workload, seed: u64) -> RunOutcome<V> {
    let mut r = Runner {
        cx,
        vfs,
        path,
        w,
        seed,
        rng: Rng::new(seed ^ 0x5348_4d5f_4441_4d47),
        model: Model::new(w.page_size),
        conn: None,
        txn: 0,
        live_checks: 0,
        snapshot_checks: 0,
    };
    let res = r.steps(&w.steps, "");
    let (error, violation) = match res {
        Ok(()) => (None, None),
        Err(Stop::Error(e)) => (Some(e), None),
        Err(Stop::Violation(v)) => (None, Some(v)),
    };
    RunOutcome {
        model: r.model,
        error,
        violation,
        conn: r.conn,
        txns: r.txn,
        live_checks: r.live_checks,
        snapshot_checks: r.snapshot_checks,
    }
}
