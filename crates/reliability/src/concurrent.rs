//! Concurrent writers in the crash simulator and the I/O-error sweep: 8 `BEGIN
//! CONCURRENT` threads through one [`Coordinator`], and 2 coordinators ("members", as two
//! processes would be: own handles, own locks) × 4 threads, on a [`MemoryVfs`].
//!
//! # The workload
//!
//! The database is a bank (`fsqlite_testkit::bank`, made by real SQLite: one account per
//! table-leaf page, fixed-width balances, and a stamp `(sequence, last writer)` per
//! account). Each thread runs a few transfers: some between two accounts of its own
//! (disjoint pages), some with one of two hot accounts every thread uses (conflicts and
//! retries). Every attempt reads both pages, moves money, bumps each stamp's sequence and
//! writes its own attempt id as the last writer, so every page image names the attempt
//! that made it. The log of attempts says which were acknowledged (`commit` returned
//! `Ok`), refused (a conflict: nothing may reach the disk), failed (an error: may or may
//! not be durable) or never submitted.
//!
//! # What is checked after every recovery ([`verify`])
//!
//! 1. every account carries the initial stamp or the data of an attempt that was not
//!    refused, with exactly that attempt's balance;
//! 2. **all or nothing**: an attempt seen on one account is there on all its accounts;
//! 3. **no acknowledged commit lost**: every acknowledged attempt is there on all its
//!    accounts (its version or a later one of the same chain);
//! 4. **the books balance**, and real SQLite agrees: its own recovery of the same bytes
//!    reads the same rows, `integrity_check` ok;
//! 5. the recovered coordinator commits one more transfer and reads it back.
//!
//! # Crash simulation ([`run_crash`])
//!
//! ```text
//! for each scenario S (threads8, members2x4), pass p = 0, 1, ...:
//!   for k = 1, 2, ...:
//!     fresh MemoryVfs holding the bank; open the coordinator(s); count writes,
//!     truncates and syncs from now on; the k-th one arms the power loss: it and every
//!     later operation fail (CrashVfs)
//!     run S; if fewer than k operations ran, the pass is complete
//!     for each crash mode (DropAll, KeepAll, KeepRandom, Torn 512, Torn 4096,
//!                          Garbage 512): image = fork_crashed(mode); verify(image)
//! ```
//!
//! Batching depends on timing, so runs differ in how many operations they make; each pass
//! crashes other batch shapes. A failure names the scenario, pass, crash point and mode;
//! since the interleaving is not replayable, the failure message carries the attempts.
//!
//! # I/O-error sweep ([`run_faults`])
//!
//! For each scenario, fault kind (write, sync, truncate, short read, lock, shm lock, shm
//! map) and mode (once, persistent), for n = 1, 2, ...: a fresh disk, the fault armed at
//! the n-th matching operation *before* the coordinators open (so open and recovery are
//! swept too), run S; the sweep ends when the fault did not fire. Then the faults are
//! cleared and the disk is checked twice with [`verify`]: as left (a process restart) and
//! after a power loss (`DropAll`). The call site the fault hit and what the caller did
//! (returned the error, or carried on) go to the coverage table
//! ([`crate::coverage`]).

use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fsqlite_error::Result;
use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, Bank, BankOptions, Stamp};
use fsqlite_types::{AccessFlags, Cx, LockLevel, PageNumber, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{
    CrashMode, Fault, FaultOp, FaultRepeat, MemoryFile, MemoryVfs, ShmRegion, Vfs, VfsFile,
};
use serde_json::json;

use crate::coverage::{Response, record_response};
use crate::{Counters, Failure, FailureSink, HarnessReport, mix_seed, panic_text};

/// The database path inside the [`MemoryVfs`].
pub const DB: &str = "/bank.db";
/// Accounts of the bank.
pub const ACCOUNTS: u32 = 24;
/// Accounts every thread uses (overlapping pages).
const HOT: [i64; 2] = [1, 2];
/// Retries of one transfer after a conflict.
const MAX_RETRIES: u32 = 400;

/// One shape of concurrent writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    /// Name in stats.
    pub name: &'static str,
    /// Coordinators on the database (members).
    pub members: usize,
    /// Threads per member.
    pub threads: u64,
    /// Transfers per thread.
    pub txns: u64,
    /// A plain `fsqlite_wal::Wal` connection (a legacy SQLite process, as far as the
    /// coordinator can tell) runs PASSIVE checkpoints while the writers run, so the
    /// coordinator restarts the WAL; with `journal_limit` the restart cuts the file back.
    pub checkpointer: bool,
    /// `Coordinator::set_journal_size_limit`.
    pub journal_limit: Option<u64>,
    /// The first writer thread itself runs a PASSIVE checkpoint through a plain `Wal`
    /// after every second one of its transfers (deterministic where `checkpointer` is timing: with one
    /// thread, every run restarts the WAL at the same operations).
    pub serial_checkpoint: bool,
    /// The first thread asks the coordinator for its `status` at the start, and runs one
    /// attempt on an older snapshot (`begin_concurrent_at` with the handle of its first
    /// transaction).
    pub engine_calls: bool,
}

/// The scenarios: one coordinator with 8 threads; 2 members × 4 threads; 4 threads beside
/// a legacy checkpointer, with a journal size limit; one thread that checkpoints after
/// every transfer (so the coordinator restarts the WAL at the same points every run).
pub const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "threads8",
        members: 1,
        threads: 8,
        txns: 3,
        checkpointer: false,
        journal_limit: None,
        serial_checkpoint: false,
        engine_calls: true,
    },
    Scenario {
        name: "members2x4",
        members: 2,
        threads: 4,
        txns: 3,
        checkpointer: false,
        journal_limit: None,
        serial_checkpoint: false,
        engine_calls: true,
    },
    Scenario {
        name: "threads4_checkpointer",
        members: 1,
        threads: 4,
        txns: 4,
        checkpointer: true,
        journal_limit: Some(2 * (4096 + 24)),
        serial_checkpoint: false,
        engine_calls: true,
    },
    Scenario {
        name: "serial_restart",
        members: 1,
        threads: 1,
        txns: 6,
        checkpointer: false,
        journal_limit: Some(4096 + 24),
        serial_checkpoint: true,
        engine_calls: false,
    },
];

/// The coordinators' options: short waits (a `MemoryVfs` answers at once).
pub fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        probe_timeout: Duration::from_millis(500),
        busy_timeout: Duration::from_secs(2),
        kill_at: None,
        ..CoordinatorOptions::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------
// The crash-point VFS
// ---------------------------------------------------------------------------------------

/// Shared by a [`CrashVfs`] and its files.
#[derive(Debug, Default)]
pub struct Ctl {
    /// Count write/truncate/sync from now on.
    pub counting: AtomicBool,
    /// Such operations seen so far.
    pub seen: AtomicU64,
    /// Arm the crash at this one (0: never).
    pub armed: AtomicU64,
    /// Serializes counted operations with the arming (so exactly the k-th one fails).
    gate: Mutex<()>,
    /// What the crash hit: `(k, "sync /bank.db-wal")`.
    pub hit: Mutex<Option<(u64, String)>>,
}

/// A [`MemoryVfs`] whose k-th write, truncate or sync (after [`Ctl::counting`] is set)
/// arms the `MemoryVfs` crash point: that operation and every later one fail.
#[derive(Clone, Debug)]
pub struct CrashVfs {
    /// The disk.
    pub mem: MemoryVfs,
    /// The counter.
    pub ctl: Arc<Ctl>,
}

/// A file of a [`CrashVfs`].
#[derive(Debug)]
pub struct CrashFile {
    inner: MemoryFile,
    mem: MemoryVfs,
    ctl: Arc<Ctl>,
}

impl CrashVfs {
    /// A fresh disk holding `image` at [`DB`].
    pub fn with_image(image: &[u8]) -> Self {
        let mem = MemoryVfs::new();
        mem.set_contents(Path::new(DB), image);
        Self {
            mem,
            ctl: Arc::new(Ctl::default()),
        }
    }
}

impl CrashFile {
    /// Counts one write/truncate/sync; the armed one sets the crash point at itself.
    fn count(&self, what: &str) {
        if !self.ctl.counting.load(Ordering::Acquire) {
            return;
        }
        let _gate = lock(&self.ctl.gate);
        let n = self.ctl.seen.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.ctl.armed.load(Ordering::Acquire) {
            self.mem.set_crash_at_op(self.mem.op_count() + 1);
            let path = self
                .inner
                .path()
                .map_or_else(|| "<anonymous>".to_owned(), |p| p.display().to_string());
            *lock(&self.ctl.hit) = Some((n, format!("{what} {path}")));
        }
    }
}

impl Vfs for CrashVfs {
    type File = CrashFile;

    fn name(&self) -> &'static str {
        "crash-memory"
    }

    fn open(
        &self,
        cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(CrashFile, VfsOpenFlags)> {
        let (inner, f) = self.mem.open(cx, path, flags)?;
        Ok((
            CrashFile {
                inner,
                mem: self.mem.clone(),
                ctl: Arc::clone(&self.ctl),
            },
            f,
        ))
    }

    fn delete(&self, cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        self.mem.delete(cx, path, sync_dir)
    }

    fn access(&self, cx: &Cx, path: &Path, flags: AccessFlags) -> Result<bool> {
        self.mem.access(cx, path, flags)
    }

    fn full_pathname(&self, cx: &Cx, path: &Path) -> Result<PathBuf> {
        self.mem.full_pathname(cx, path)
    }

    fn randomness(&self, buf: &mut [u8]) {
        self.mem.randomness(buf);
    }

    fn current_pid(&self) -> u32 {
        self.mem.current_pid()
    }
}

// Every method forwards directly (no closure), so `#[track_caller]` (inherited from the
// trait) passes the WAL's call site through to the `MemoryVfs`.
impl VfsFile for CrashFile {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read(cx, buf, offset)
    }

    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.count("write");
        self.inner.write(cx, buf, offset)
    }

    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.count("truncate");
        self.inner.truncate(cx, size)
    }

    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.count("sync");
        self.inner.sync(cx, flags)
    }

    fn file_size(&self, cx: &Cx) -> Result<u64> {
        self.inner.file_size(cx)
    }

    fn lock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.inner.lock(cx, level)
    }

    fn unlock(&mut self, cx: &Cx, level: LockLevel) -> Result<()> {
        self.inner.unlock(cx, level)
    }

    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool> {
        self.inner.check_reserved_lock(cx)
    }

    fn sector_size(&self) -> u32 {
        self.inner.sector_size()
    }

    fn device_characteristics(&self) -> u32 {
        self.inner.device_characteristics()
    }

    fn shm_map(
        &mut self,
        cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>> {
        self.inner.shm_map(cx, region, size, extend)
    }

    fn shm_lock(&mut self, cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        self.inner.shm_lock(cx, offset, n, flags)
    }

    fn shm_downgrade(&mut self, cx: &Cx, offset: u32) -> Result<()> {
        self.inner.shm_downgrade(cx, offset)
    }

    fn shm_unlock_slots(&mut self, cx: &Cx, exclusive: u8, shared: u8) -> Result<()> {
        self.inner.shm_unlock_slots(cx, exclusive, shared)
    }

    fn shm_barrier(&self) {
        self.inner.shm_barrier();
    }

    fn shm_unmap(&mut self, cx: &Cx, delete: bool) -> Result<()> {
        self.inner.shm_unmap(cx, delete)
    }
}

// ---------------------------------------------------------------------------------------
// The workload and its log
// ---------------------------------------------------------------------------------------

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `commit` returned `Ok(frame)`: acknowledged.
    Acked(u32),
    /// A conflict (SQLITE_BUSY_SNAPSHOT): refused, nothing written.
    Conflict,
    /// Any other error at commit: may or may not be durable.
    Failed(String),
    /// Never reached commit (begin, read or write failed).
    NotSubmitted,
}

/// One attempt of one transfer: `(account, sequence written, balance written)` per page.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Its id (the stamp's last writer).
    pub id: u64,
    /// What it wrote.
    pub writes: Vec<(i64, u64, i64)>,
    /// What became of it.
    pub outcome: Outcome,
}

/// The accounts transfer `k` of global thread `t` touches (from, to).
fn accounts_of(t: u64, k: u64) -> (i64, i64) {
    let own = |i: u64| (HOT.len() as u64 + 1 + 2 * t + i) as i64;
    if k.is_multiple_of(2) {
        (own(0), own(1))
    } else {
        (own(k / 2 % 2), HOT[((t + k) % 2) as usize])
    }
}

fn page_of(bank: &Bank, id: i64) -> Result<PageNumber> {
    bank.accounts
        .page(id)
        .ok_or_else(|| fsqlite_error::FrankenError::internal(format!("no account {id}")))
}

/// Runs every member's threads to completion (or to their first error); returns every
/// attempt and the first error each thread stopped on.
pub fn run_workload<V: Vfs + Clone>(
    vfs: &V,
    coords: &[Coordinator<V>],
    bank: &Bank,
    s: &Scenario,
) -> (Vec<Attempt>, Vec<String>) {
    let log = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    let next_id = AtomicU64::new(1);
    let ps = bank.page_size as usize;
    let writers_done = AtomicBool::new(false);
    let running = AtomicU64::new(coords.len() as u64 * s.threads);
    if let Some(limit) = s.journal_limit {
        for c in coords {
            c.set_journal_size_limit(Some(limit));
        }
    }
    std::thread::scope(|scope| {
        if s.checkpointer {
            let (errors, writers_done) = (&errors, &writers_done);
            scope.spawn(move || {
                let cx = Cx::new();
                let mut wal = match fsqlite_wal::Wal::open(
                    &cx,
                    Arc::new(vfs.clone()),
                    DB,
                    checkpointer_options(),
                ) {
                    Ok(w) => w,
                    Err(e) => {
                        lock(errors).push(format!("checkpointer open: {e}"));
                        return;
                    }
                };
                while !writers_done.load(Ordering::Acquire) {
                    match wal.checkpoint(&cx, fsqlite_wal::CheckpointMode::Passive) {
                        Ok(_) | Err(fsqlite_error::FrankenError::Busy) => {}
                        Err(e) if e.extended_code() & 0xff == 5 => {}
                        Err(e) => {
                            lock(errors).push(format!("checkpointer: {e}"));
                            return;
                        }
                    }
                    std::thread::sleep(Duration::from_micros(300));
                }
            });
        }
        for (m, coord) in coords.iter().enumerate() {
            for t in 0..s.threads {
                let (log, errors, next_id) = (&log, &errors, &next_id);
                let (running, writers_done) = (&running, &writers_done);
                let gt = m as u64 * s.threads + t;
                scope.spawn(move || {
                    let _last_out = LastOut(running, writers_done);
                    let cx = Cx::new();
                    let mut snapshot = None;
                    if s.engine_calls
                        && gt == 0
                        && let Err(e) = coord.status(&cx)
                    {
                        lock(errors).push(format!("status: {e}"));
                        return;
                    }
                    let mut serial = None;
                    if s.serial_checkpoint && gt == 0 {
                        match fsqlite_wal::Wal::open(
                            &cx,
                            Arc::new(vfs.clone()),
                            DB,
                            checkpointer_options(),
                        ) {
                            Ok(w) => serial = Some(w),
                            Err(e) => {
                                lock(errors).push(format!("checkpointer open: {e}"));
                                return;
                            }
                        }
                    }
                    'txns: for k in 0..s.txns {
                        let (from, to) = accounts_of(gt, k);
                        let amount = (gt * 10 + k + 1) as i64;
                        for _ in 0..MAX_RETRIES {
                            let id = next_id.fetch_add(1, Ordering::Relaxed);
                            let mut at = Attempt {
                                id,
                                writes: Vec::new(),
                                outcome: Outcome::NotSubmitted,
                            };
                            let snap = (gt == 0 && s.engine_calls).then_some(&mut snapshot);
                            let r = transfer(coord, &cx, bank, ps, from, to, amount, &mut at, snap);
                            let retry = matches!(at.outcome, Outcome::Conflict);
                            lock(log).push(at);
                            if let Err(e) = r {
                                lock(errors).push(e.to_string());
                                break 'txns;
                            }
                            if !retry {
                                // Every second transfer, so the WAL has grown past what the
                                // restarted one needs and the journal limit trims it.
                                if let Some(w) = serial.as_mut()
                                    && k % 2 == 1
                                    && let Err(e) =
                                        w.checkpoint(&cx, fsqlite_wal::CheckpointMode::Passive)
                                {
                                    lock(errors).push(format!("checkpointer: {e}"));
                                    break 'txns;
                                }
                                continue 'txns;
                            }
                        }
                        lock(errors).push(format!(
                            "thread {gt} transfer {k}: {MAX_RETRIES} conflicts in a row"
                        ));
                        break;
                    }
                });
            }
        }
    });
    (
        log.into_inner().unwrap_or_else(PoisonError::into_inner),
        errors.into_inner().unwrap_or_else(PoisonError::into_inner),
    )
}

/// The options of the legacy checkpointer's `Wal` connection.
fn checkpointer_options() -> fsqlite_wal::WalOptions {
    fsqlite_wal::WalOptions {
        busy_timeout: Duration::ZERO,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..fsqlite_wal::WalOptions::default()
    }
}

/// Counts a writer thread out when it ends (also by a panic); the last one tells the
/// checkpointer to stop.
struct LastOut<'a>(&'a AtomicU64, &'a AtomicBool);

impl Drop for LastOut<'_> {
    fn drop(&mut self) {
        if self.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.1.store(true, Ordering::Release);
        }
    }
}

/// One attempt; `Err` when the thread should stop (anything but a conflict).
#[allow(clippy::too_many_arguments, reason = "internal")]
fn transfer<V: Vfs>(
    coord: &Coordinator<V>,
    cx: &Cx,
    bank: &Bank,
    ps: usize,
    from: i64,
    to: i64,
    amount: i64,
    at: &mut Attempt,
    snapshot: Option<&mut Option<fsqlite_wal::WalSnapshot>>,
) -> Result<()> {
    let mut txn = match snapshot.as_ref().and_then(|s| s.as_ref()) {
        // An older snapshot (engine feature): validated against everything since.
        Some(snap) => match coord.begin_concurrent_at(cx, snap) {
            Ok(t) => t,
            Err(fsqlite_error::FrankenError::SnapshotUnavailable { .. }) => {
                coord.begin_concurrent(cx)?
            }
            Err(e) => return Err(e),
        },
        None => coord.begin_concurrent(cx)?,
    };
    if let Some(slot) = snapshot {
        // Keep the first snapshot seen; use it once.
        *slot = match slot.take() {
            Some(_) => None,
            None => Some(txn.snapshot()),
        };
    }
    let mut bufs = [vec![0u8; ps], vec![0u8; ps]];
    for (acct, buf) in [from, to].into_iter().zip(bufs.iter_mut()) {
        txn.read_page(cx, page_of(bank, acct)?, buf)?;
        let delta = if acct == from { -amount } else { amount };
        let bal = bank::read_balance(buf)? + delta;
        let seq = bank::read_stamp(buf)?.seq + 1;
        bank::write_balance(buf, bal)?;
        bank::write_stamp(buf, Stamp { seq, txn: at.id })?;
        txn.write_page(cx, page_of(bank, acct)?, buf)?;
        at.writes.push((acct, seq, bal));
    }
    let size = txn.db_size();
    match txn.commit(cx, size) {
        Ok(frame) => {
            at.outcome = Outcome::Acked(frame);
            Ok(())
        }
        Err(e) if e.extended_code() == 517 => {
            at.outcome = Outcome::Conflict;
            Ok(())
        }
        Err(e) => {
            at.outcome = Outcome::Failed(e.to_string());
            Err(e)
        }
    }
}

/// Acknowledged attempts of a log.
pub fn acked(log: &[Attempt]) -> u64 {
    log.iter()
        .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
        .count() as u64
}

// ---------------------------------------------------------------------------------------
// Verification of one recovered image
// ---------------------------------------------------------------------------------------

/// Checks 1-5 of the module doc on `img`; `Err(description)` on a violation. `scratch`
/// is a directory for SQLite's copy.
pub fn verify(
    img: &MemoryVfs,
    bank: &Bank,
    log: &[Attempt],
    scratch: &Path,
) -> std::result::Result<(), String> {
    let cx = Cx::new();
    // Real SQLite reads the same bytes (taken before our recovery touches anything).
    let db_file = scratch.join("bank.db");
    let wal_file = scratch.join("bank.db-wal");
    for p in [&db_file, &wal_file, &scratch.join("bank.db-shm")] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::write(
        &db_file,
        img.live_contents(Path::new(DB))
            .ok_or("the database vanished")?,
    )
    .map_err(|e| format!("write {}: {e}", db_file.display()))?;
    if let Some(w) = img.live_contents(Path::new(&format!("{DB}-wal"))) {
        std::fs::write(&wal_file, w).map_err(|e| format!("write {}: {e}", wal_file.display()))?;
    }
    let coord = Coordinator::open(&cx, Arc::new(img.clone()), DB, options())
        .map_err(|e| format!("recovery failed: {e}"))?;
    let ps = bank.page_size as usize;
    let mut seen: BTreeMap<i64, (i64, Stamp)> = BTreeMap::new();
    let mut buf = vec![0u8; ps];
    for (id, page) in bank.accounts.iter() {
        coord
            .read_page(&cx, page, &mut buf)
            .map_err(|e| format!("read account {id}: {e}"))?;
        let bal = bank::read_balance(&buf).map_err(|e| format!("account {id}: {e}"))?;
        let stamp = bank::read_stamp(&buf).map_err(|e| format!("account {id}: {e}"))?;
        seen.insert(id, (bal, stamp));
    }
    let by_id: BTreeMap<u64, &Attempt> = log.iter().map(|a| (a.id, a)).collect();
    // 1. Only data of attempts that may have committed, each page image whole.
    let mut present = HashSet::new();
    for (&acct, &(bal, st)) in &seen {
        if st.txn == 0 {
            if st.seq != 0 || bal != bank.initial_balance {
                return Err(format!(
                    "account {acct}: initial stamp with {st:?} balance {bal}"
                ));
            }
            continue;
        }
        let a = by_id
            .get(&st.txn)
            .ok_or_else(|| format!("account {acct} names unknown attempt {}", st.txn))?;
        if matches!(a.outcome, Outcome::Conflict | Outcome::NotSubmitted) {
            return Err(format!(
                "account {acct} holds attempt {} which never committed: {a:?}",
                a.id
            ));
        }
        if !a.writes.contains(&(acct, st.seq, bal)) {
            return Err(format!(
                "account {acct} = ({bal}, {st:?}) is not what attempt {a:?} wrote"
            ));
        }
        present.insert(a.id);
    }
    // 2 + 3. All or nothing; nothing acknowledged lost.
    for a in log {
        let is_acked = matches!(a.outcome, Outcome::Acked(_));
        if !(is_acked || present.contains(&a.id)) {
            continue;
        }
        for &(acct, seq, _) in &a.writes {
            let st = seen.get(&acct).map(|v| v.1).unwrap_or_default();
            if !st.covers(seq, a.id) {
                return Err(if is_acked {
                    format!("acknowledged attempt {a:?} lost: account {acct} has {st:?}")
                } else {
                    format!("attempt {a:?} half there: account {acct} has {st:?}")
                });
            }
        }
    }
    let total: i64 = seen.values().map(|v| v.0).sum();
    if total != bank.total() {
        return Err(format!(
            "the books do not balance: {total} != {}",
            bank.total()
        ));
    }
    // 4. SQLite's own recovery of the same bytes agrees.
    let books = bank::books(&db_file).map_err(|e| format!("SQLite: {e}"))?;
    books
        .check(i64::from(ACCOUNTS), bank.total())
        .map_err(|e| format!("SQLite: {e}"))?;
    let rows = bank::rows(&db_file).map_err(|e| format!("SQLite rows: {e}"))?;
    for r in &rows {
        if seen.get(&r.id) != Some(&(r.balance, r.stamp)) {
            return Err(format!(
                "SQLite reads {r:?}, the recovered coordinator {:?}",
                seen.get(&r.id)
            ));
        }
    }
    // 5. Life goes on.
    let mut at = Attempt {
        id: u64::MAX,
        writes: Vec::new(),
        outcome: Outcome::NotSubmitted,
    };
    transfer(&coord, &cx, bank, ps, 3, 4, 1, &mut at, None)
        .map_err(|e| format!("commit after recovery: {e}"))?;
    coord
        .read_page(&cx, page_of(bank, 3).map_err(|e| e.to_string())?, &mut buf)
        .map_err(|e| e.to_string())?;
    if bank::read_stamp(&buf).map_err(|e| e.to_string())?.txn != u64::MAX {
        return Err("the commit after recovery is not read back".to_owned());
    }
    coord
        .close(&cx)
        .map_err(|e| format!("close after recovery: {e}"))?;
    Ok(())
}

/// The pristine bank: made once by SQLite in `dir`; returns it and its file's bytes.
pub fn make_bank(dir: &Path) -> std::result::Result<(Bank, Vec<u8>), String> {
    let bank = bank::create(
        &dir.join("pristine.db"),
        &BankOptions {
            accounts: ACCOUNTS,
            ..BankOptions::default()
        },
    )
    .map_err(|e| format!("make the bank: {e}"))?;
    let image = std::fs::read(&bank.path).map_err(|e| format!("read the bank: {e}"))?;
    Ok((bank, image))
}

fn open_members<V: Vfs + Clone>(
    vfs: &V,
    s: &Scenario,
) -> std::result::Result<Vec<Coordinator<V>>, fsqlite_error::FrankenError> {
    let cx = Cx::new();
    (0..s.members)
        .map(|_| Coordinator::open(&cx, Arc::new(vfs.clone()), DB, options()))
        .collect()
}

/// The crash modes of crash point `k` in pass `pass`.
fn crash_modes(seed: u64) -> [CrashMode; 6] {
    [
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::KeepRandom { seed },
        CrashMode::Torn {
            seed: seed ^ 0x7072,
            sector: 512,
        },
        CrashMode::Torn {
            seed: seed ^ 0x7073,
            sector: 4096,
        },
        CrashMode::Garbage {
            seed: seed ^ 0x6761,
            sector: 512,
        },
    ]
}

/// What [`run_crash`] and [`run_faults`] do.
#[derive(Clone, Debug)]
pub struct ConcurrentConfig {
    /// The seed (crash-mode seeds and the report).
    pub seed: u64,
    /// Wall-clock budget.
    pub budget: Duration,
    /// The scenarios (default: [`SCENARIOS`]).
    pub scenarios: Vec<Scenario>,
    /// Stop after this many passes per scenario (crash simulation).
    pub max_passes: u64,
}

impl ConcurrentConfig {
    /// Every scenario, passes until the budget runs out.
    pub fn new(seed: u64, budget: Duration) -> Self {
        Self {
            seed,
            budget,
            scenarios: SCENARIOS.to_vec(),
            max_passes: u64::MAX,
        }
    }
}

fn failure(
    harness: &'static str,
    s: &Scenario,
    case: u64,
    variant: String,
    seed: u64,
    message: String,
) -> Failure {
    Failure {
        harness,
        workload: s.name.to_owned(),
        case,
        variant,
        seed,
        message,
        replay: format!(
            "cargo run --release -p fsqlite-reliability --bin fsqlite-reliability -- concurrent --seed {seed:#x} (thread interleavings are not replayable; the message lists the attempts)"
        ),
    }
}

/// Runs the concurrent crash simulation (see the module doc).
pub fn run_crash(cfg: &ConcurrentConfig) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let mut totals = Counters::default();
    let mut per = Vec::new();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return setup_failure("crashsim_concurrent", &format!("temp dir: {e}")),
    };
    let (bank, image) = match make_bank(dir.path()) {
        Ok(b) => b,
        Err(e) => return setup_failure("crashsim_concurrent", &e),
    };
    let scratch = dir.path().join("scratch");
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return setup_failure("crashsim_concurrent", &format!("scratch dir: {e}"));
    }
    // Scenarios take turns, one pass at a time, so a short budget covers both.
    let mut passes = vec![0u64; cfg.scenarios.len()];
    let mut counters: Vec<Counters> = vec![Counters::default(); cfg.scenarios.len()];
    // Counted operations of a clean run of each scenario: a pass ends at the first run
    // past that count which does not reach its crash point.
    let mut baseline = Vec::new();
    for s in &cfg.scenarios {
        let vfs = CrashVfs::with_image(&image);
        let n = match open_members(&vfs, s) {
            Ok(coords) => {
                vfs.ctl.counting.store(true, Ordering::Release);
                let (log, errors) = run_workload(&vfs, &coords, &bank, s);
                vfs.ctl.counting.store(false, Ordering::Release);
                if !errors.is_empty() || acked(&log) != s.members as u64 * s.threads * s.txns {
                    failures.push(failure(
                        "crashsim_concurrent",
                        s,
                        0,
                        "clean run".into(),
                        cfg.seed,
                        format!("the clean run failed: {errors:?}"),
                    ));
                }
                let cx = Cx::new();
                for c in coords {
                    let _ = c.close(&cx);
                }
                vfs.ctl.seen.load(Ordering::Acquire)
            }
            Err(e) => {
                failures.push(failure(
                    "crashsim_concurrent",
                    s,
                    0,
                    "clean run".into(),
                    cfg.seed,
                    format!("open: {e}"),
                ));
                0
            }
        };
        baseline.push(n);
    }
    'outer: loop {
        let mut any = false;
        for (si, s) in cfg.scenarios.iter().enumerate() {
            if passes[si] >= cfg.max_passes {
                continue;
            }
            if Instant::now() >= deadline {
                break 'outer;
            }
            any = true;
            let c = &mut counters[si];
            let pass = passes[si];
            let mut k = 0u64;
            loop {
                k += 1;
                if Instant::now() >= deadline {
                    break 'outer;
                }
                if k > 4 * baseline[si] + 16 {
                    // Runs keep growing (retries after conflicts); end the pass.
                    break;
                }
                let vfs = CrashVfs::with_image(&image);
                let coords = match open_members(&vfs, s) {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(failure(
                            "crashsim_concurrent",
                            s,
                            k,
                            format!("pass {pass}"),
                            cfg.seed,
                            format!("open: {e}"),
                        ));
                        break 'outer;
                    }
                };
                vfs.ctl.armed.store(k, Ordering::Release);
                vfs.ctl.counting.store(true, Ordering::Release);
                let run = catch_unwind(AssertUnwindSafe(|| run_workload(&vfs, &coords, &bank, s)));
                vfs.ctl.counting.store(false, Ordering::Release);
                let (log, _errors) = match run {
                    Ok(r) => r,
                    Err(p) => {
                        failures.push(failure(
                            "crashsim_concurrent",
                            s,
                            k,
                            format!("pass {pass}"),
                            cfg.seed,
                            format!("panic in the workload: {}", panic_text(p.as_ref())),
                        ));
                        continue;
                    }
                };
                let grouped = coords.iter().any(|c| {
                    let st = c.stats();
                    st.batches < st.commits
                });
                c.add("grouped_runs", u64::from(grouped));
                let hit = lock(&vfs.ctl.hit).clone();
                let Some((_, what)) = hit else {
                    // The run made fewer than k counted operations.
                    let cx = Cx::new();
                    for co in coords {
                        let _ = co.close(&cx);
                    }
                    if k > baseline[si] {
                        break;
                    }
                    c.inc("points_past_run_end");
                    continue;
                };
                c.inc("crash_points");
                let kind: String = what
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                c.inc(&format!("hit.{kind}"));
                c.add("acked_checked", acked(&log));
                c.add(
                    "failed_in_flight",
                    log.iter()
                        .filter(|a| matches!(a.outcome, Outcome::Failed(_)))
                        .count() as u64,
                );
                for mode in crash_modes(mix_seed(&[cfg.seed, si as u64, pass, k])) {
                    let img = vfs.mem.fork_crashed(mode);
                    let r = catch_unwind(AssertUnwindSafe(|| verify(&img, &bank, &log, &scratch)));
                    c.inc(&format!("mode.{}", crate::crashsim::mode_name(mode)));
                    match r {
                        Ok(Ok(())) => c.inc("recoveries_verified"),
                        Ok(Err(e)) => failures.push(failure(
                            "crashsim_concurrent",
                            s,
                            k,
                            format!("pass {pass} {mode:?} (crash at {what})"),
                            cfg.seed,
                            format!("{e}\nattempts: {log:?}"),
                        )),
                        Err(p) => failures.push(failure(
                            "crashsim_concurrent",
                            s,
                            k,
                            format!("pass {pass} {mode:?}"),
                            cfg.seed,
                            format!(
                                "panic in recovery or verification: {}",
                                panic_text(p.as_ref())
                            ),
                        )),
                    }
                }
                vfs.mem.crash(CrashMode::DropAll);
                drop(coords);
            }
            passes[si] += 1;
            c.inc("passes");
        }
        if !any {
            break;
        }
    }
    for (s, c) in cfg.scenarios.iter().zip(&counters) {
        totals.merge(c);
        per.push(json!({
            "name": s.name,
            "members": s.members,
            "threads": s.threads,
            "txns_per_thread": s.txns,
            "counters": c.to_json(),
        }));
    }
    let stats = json!({
        "harness": "crashsim_concurrent",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "crash_points": totals.get("crash_points"),
        "recoveries_verified": totals.get("recoveries_verified"),
        "acked_checked": totals.get("acked_checked"),
        "passes": totals.get("passes"),
        "totals": totals.to_json(),
        "scenarios": per,
        "failures": failures.count,
    });
    HarnessReport {
        stats,
        failures: failures.kept,
        failure_count: failures.count,
    }
}

fn setup_failure(harness: &'static str, msg: &str) -> HarnessReport {
    let f = Failure {
        harness,
        workload: "setup".into(),
        case: 0,
        variant: String::new(),
        seed: 0,
        message: msg.to_owned(),
        replay: String::new(),
    };
    HarnessReport {
        stats: json!({"harness": harness, "failures": 1, "setup_error": msg}),
        failures: vec![f],
        failure_count: 1,
    }
}

/// The fault kinds swept with concurrent writers, with the fault at site `n`.
pub const FAULT_OPS: [(&str, FaultOp); 7] = [
    ("write", FaultOp::Write),
    ("sync", FaultOp::Sync),
    ("truncate", FaultOp::Truncate),
    ("short_read", FaultOp::Read),
    ("lock", FaultOp::Lock),
    ("shm_lock", FaultOp::ShmLock),
    ("shm_map", FaultOp::ShmMap),
];

fn fault_at(op: FaultOp, n: u64, repeat: FaultRepeat) -> Fault {
    match op {
        FaultOp::Read => Fault::short_read(n, 7, repeat),
        _ => Fault::fail(op, n, repeat),
    }
}

/// Runs the concurrent I/O-error sweep (see the module doc); the coverage rows go into
/// the counters (`crate::coverage`).
pub fn run_faults(cfg: &ConcurrentConfig, max_sites: u64) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let mut totals = Counters::default();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return setup_failure("iofault_concurrent", &format!("temp dir: {e}")),
    };
    let (bank, image) = match make_bank(dir.path()) {
        Ok(b) => b,
        Err(e) => return setup_failure("iofault_concurrent", &e),
    };
    let scratch = dir.path().join("scratch");
    if let Err(e) = std::fs::create_dir_all(&scratch) {
        return setup_failure("iofault_concurrent", &format!("scratch dir: {e}"));
    }
    let mut sweeps = Vec::new();
    // The sites a clean run reaches (the coverage table's rows).
    for s in &cfg.scenarios {
        let mem = MemoryVfs::new();
        mem.set_contents(Path::new(DB), &image);
        mem.record_sites(true);
        if let Ok(coords) = open_members(&mem, s) {
            let _ = run_workload(&mem, &coords, &bank, s);
            let cx = Cx::new();
            for c in coords {
                let _ = c.close(&cx);
            }
        }
        crate::coverage::record_seen(&mut totals, &mem.seen_sites());
    }
    let mut plan = Vec::new();
    for s in &cfg.scenarios {
        for (kind, op) in FAULT_OPS {
            for repeat in [FaultRepeat::Once, FaultRepeat::Persistent] {
                plan.push((s, kind, op, repeat));
            }
        }
    }
    // Each seed starts elsewhere in the plan (see `iofault::run`).
    if !plan.is_empty() {
        let k = (cfg.seed % plan.len() as u64) as usize;
        plan.rotate_left(k);
    }
    'sweeps: for (s, kind, op, repeat) in plan {
        {
            {
                let mut n = 0u64;
                let complete = loop {
                    n += 1;
                    if Instant::now() >= deadline {
                        break false;
                    }
                    if n > max_sites {
                        break false;
                    }
                    let variant = format!("{kind} {}", crate::iofault::repeat_name(repeat));
                    let mem = MemoryVfs::new();
                    mem.set_contents(Path::new(DB), &image);
                    mem.inject(fault_at(op, n, repeat));
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        let coords = open_members(&mem, s);
                        match coords {
                            Ok(coords) => {
                                let (log, mut errors) = run_workload(&mem, &coords, &bank, s);
                                // Close too: the last member checkpoints.
                                let cx = Cx::new();
                                for c in coords {
                                    if let Err(e) = c.close(&cx) {
                                        errors.push(format!("close: {e}"));
                                    }
                                }
                                (log, errors, None)
                            }
                            Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
                        }
                    }));
                    let fired = mem.take_fired_faults();
                    let (log, errors, open_error) = match r {
                        Ok(x) => x,
                        Err(p) => {
                            failures.push(failure(
                                "iofault_concurrent",
                                s,
                                n,
                                variant,
                                cfg.seed,
                                format!("panic under the fault: {}", panic_text(p.as_ref())),
                            ));
                            continue;
                        }
                    };
                    if fired.is_empty() {
                        break true;
                    }
                    totals.inc("faults_injected");
                    totals.inc(&format!(
                        "faults_injected.{kind}.{}",
                        crate::iofault::repeat_name(repeat)
                    ));
                    let response = if open_error.is_some() || !errors.is_empty() {
                        Response::Error
                    } else {
                        Response::Absorbed
                    };
                    for site in crate::iofault::distinct_sites(fired.clone(), repeat) {
                        record_response(&mut totals, &site, repeat, response);
                    }
                    mem.clear_faults();
                    for (label, img) in [
                        ("reopen", mem.fork()),
                        ("power loss", mem.fork_crashed(CrashMode::DropAll)),
                    ] {
                        let v =
                            catch_unwind(AssertUnwindSafe(|| verify(&img, &bank, &log, &scratch)));
                        match v {
                            Ok(Ok(())) => totals.inc("recoveries_verified"),
                            Ok(Err(e)) => failures.push(failure(
                                "iofault_concurrent",
                                s,
                                n,
                                format!("{variant}, {label} (fault at {})", fired[0]),
                                cfg.seed,
                                format!(
                                    "{e}; errors {errors:?}{}\nattempts: {log:?}",
                                    open_error
                                        .as_ref()
                                        .map(|e| format!("; open: {e}"))
                                        .unwrap_or_default()
                                ),
                            )),
                            Err(p) => failures.push(failure(
                                "iofault_concurrent",
                                s,
                                n,
                                format!("{variant}, {label}"),
                                cfg.seed,
                                format!(
                                    "panic in recovery or verification: {}",
                                    panic_text(p.as_ref())
                                ),
                            )),
                        }
                    }
                    totals.add("acked_checked", acked(&log));
                };
                sweeps.push(json!({"scenario": s.name, "kind": kind, "mode": crate::iofault::repeat_name(repeat), "sites": n - 1, "complete": complete}));
                if !complete && Instant::now() >= deadline {
                    break 'sweeps;
                }
            }
        }
    }
    let complete = sweeps
        .iter()
        .filter(|s| s["complete"] == json!(true))
        .count();
    let stats = json!({
        "harness": "iofault_concurrent",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "faults_injected": totals.get("faults_injected"),
        "recoveries_verified": totals.get("recoveries_verified"),
        "acked_checked": totals.get("acked_checked"),
        "sweeps_run": sweeps.len(),
        "sweeps_complete": complete,
        "sweeps": sweeps,
        "totals": totals.to_json(),
        "failures": failures.count,
    });
    HarnessReport {
        stats,
        failures: failures.kept,
        failure_count: failures.count,
    }
}
