//! Power loss at every write and every sync of a concurrent group commit (TESTING.md
//! §2.8a, "exhaustive crash-point enumeration", SQLite `writecrash.test` style).
//!
//! The database is a bank (`fsqlite_testkit::bank`, made by real SQLite: one account per
//! table-leaf page, fixed-width balances, and a stamp `(sequence, last writer)` per
//! account) planted in a [`MemoryVfs`]. Four threads run `BEGIN CONCURRENT` transfers
//! through one [`Coordinator`]: some between two accounts of their own (disjoint pages),
//! some with one of two hot accounts every thread uses (overlapping pages, so conflicts
//! and retries happen). Every attempt reads both pages, moves money, bumps each stamp's
//! sequence and writes its own attempt id as the last writer, so every page image names
//! the attempt that made it.
//!
//! A wrapper VFS ([`CrashVfs`]) counts the writes, truncates and syncs made after the
//! coordinator opened. For k = 1, 2, ... the workload runs afresh and at the k-th such
//! operation the `MemoryVfs` crash point is armed (`set_crash_at_op`): that operation and
//! every later one fail ("simulated power loss"), so the commits in flight return errors
//! and count as unacknowledged. The disk is then copied in several crash modes
//! (`DropAll`: only synced data; `KeepAll`; `KeepRandom`; `Torn` 512-byte sectors;
//! `Garbage` as SQLite's test6.c), and on each copy a new coordinator recovers (the `-shm`
//! is gone, so it rebuilds the index from the WAL) and real SQLite opens the same files.
//! The sweep ends when a run completes without reaching its crash point.
//!
//! Checks on every recovered copy:
//! 1. every account carries the initial stamp or the data of an attempt that was not
//!    refused (a conflict loser never reaches the disk), with exactly that attempt's
//!    balance;
//! 2. **all or nothing**: an attempt seen on any account is there on all its accounts
//!    (each shows that version or a later one of the same chain);
//! 3. **no acknowledged commit lost**: every attempt whose commit returned `Ok` is there on
//!    all its accounts;
//! 4. SQLite agrees: `integrity_check` = ok, the books balance, and SQLite's rows equal
//!    the recovered coordinator's page reads, account by account;
//! 5. the recovered coordinator commits one more transfer and reads it back.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use fsqlite_error::Result;
use fsqlite_mvcc::Coordinator;
use fsqlite_testkit::bank::{self, Bank, BankOptions, Stamp};
use fsqlite_types::{AccessFlags, Cx, LockLevel, PageNumber, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{CrashMode, MemoryFile, MemoryVfs, ShmRegion, Vfs, VfsFile};

const DB: &str = "/bank.db";
const ACCOUNTS: u32 = 10;
const THREADS: u64 = 4;
const TXNS_PER_THREAD: u64 = 4;
/// Sweeps over every crash point (batching differs from run to run, so each pass
/// crashes other batch shapes).
const PASSES: u64 = 3;
/// Accounts every thread uses (overlapping pages).
const HOT: [i64; 2] = [1, 2];
/// Retries of one transfer after SQLITE_BUSY_SNAPSHOT.
const MAX_RETRIES: u32 = 200;

// ---------------------------------------------------------------------------------------
// The crash-point VFS
// ---------------------------------------------------------------------------------------

/// Shared by a [`CrashVfs`] and its files.
#[derive(Default)]
struct Ctl {
    /// Count write/truncate/sync from now on.
    counting: AtomicBool,
    /// Such operations seen so far.
    seen: AtomicU64,
    /// Arm the crash at this one (0: never).
    armed: AtomicU64,
    /// Serializes counted operations with the arming (so exactly the k-th one fails).
    gate: Mutex<()>,
    /// What the crash hit: `(k, "sync /bank.db-wal")`.
    hit: Mutex<Option<(u64, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// [`MemoryVfs`] whose k-th write/truncate/sync (after [`Ctl::counting`] is set) triggers
/// the `MemoryVfs` crash point: that operation and all later ones fail.
#[derive(Clone)]
struct CrashVfs {
    mem: MemoryVfs,
    ctl: Arc<Ctl>,
}

struct CrashFile {
    inner: MemoryFile,
    mem: MemoryVfs,
    ctl: Arc<Ctl>,
}

impl CrashFile {
    fn counted<R>(
        &mut self,
        what: &str,
        op: impl FnOnce(&mut MemoryFile) -> Result<R>,
    ) -> Result<R> {
        if !self.ctl.counting.load(Ordering::Acquire) {
            return op(&mut self.inner);
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
        op(&mut self.inner)
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

impl VfsFile for CrashFile {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.inner.read(cx, buf, offset)
    }

    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.counted("write", |f| f.write(cx, buf, offset))
    }

    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.counted("truncate", |f| f.truncate(cx, size))
    }

    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.counted("sync", |f| f.sync(cx, flags))
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// `commit` returned `Ok(frame)`: acknowledged.
    Acked(u32),
    /// SQLITE_BUSY_SNAPSHOT: refused, nothing written.
    Conflict,
    /// Any other error (the crash): may or may not be durable.
    Failed(String),
    /// Never reached commit (begin/read/write failed).
    NotSubmitted,
}

/// One attempt of one transfer: `(account, sequence written, balance written)` per page.
#[derive(Clone, Debug)]
struct Attempt {
    id: u64,
    writes: Vec<(i64, u64, i64)>,
    outcome: Outcome,
}

/// The accounts transfer `k` of thread `t` touches (from, to).
fn accounts_of(t: u64, k: u64) -> (i64, i64) {
    let own = |i: u64| (HOT.len() as u64 + 1 + 2 * t + i) as i64;
    if k.is_multiple_of(2) {
        (own(0), own(1))
    } else {
        (own(k / 2 % 2), HOT[((t + k) % 2) as usize])
    }
}

fn page_of(bank: &Bank, id: i64) -> PageNumber {
    bank.accounts.page(id).expect("account exists")
}

/// Runs the four threads to completion (or to the crash); returns every attempt.
fn run_workload<V: Vfs>(coord: &Coordinator<V>, bank: &Bank) -> Vec<Attempt> {
    let log = Mutex::new(Vec::new());
    let next_id = AtomicU64::new(1);
    let ps = bank.page_size as usize;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (log, next_id) = (&log, &next_id);
            s.spawn(move || {
                let cx = Cx::new();
                'txns: for k in 0..TXNS_PER_THREAD {
                    let (from, to) = accounts_of(t, k);
                    let amount = (t * 10 + k + 1) as i64;
                    for _ in 0..MAX_RETRIES {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let mut at = Attempt {
                            id,
                            writes: Vec::new(),
                            outcome: Outcome::NotSubmitted,
                        };
                        let r = transfer(coord, &cx, bank, ps, from, to, amount, &mut at);
                        let retry = matches!(at.outcome, Outcome::Conflict);
                        let stop = r.is_err();
                        lock(log).push(at);
                        if stop {
                            break 'txns;
                        }
                        if !retry {
                            continue 'txns;
                        }
                    }
                    panic!("thread {t} transfer {k}: {MAX_RETRIES} conflicts in a row");
                }
            });
        }
    });
    log.into_inner().unwrap_or_else(PoisonError::into_inner)
}

/// One attempt; `Err` when the thread should stop (anything but a conflict).
#[allow(clippy::too_many_arguments)]
fn transfer<V: Vfs>(
    coord: &Coordinator<V>,
    cx: &Cx,
    bank: &Bank,
    ps: usize,
    from: i64,
    to: i64,
    amount: i64,
    at: &mut Attempt,
) -> Result<()> {
    let mut txn = coord.begin_concurrent(cx)?;
    let mut bufs = [vec![0u8; ps], vec![0u8; ps]];
    for (acct, buf) in [from, to].into_iter().zip(bufs.iter_mut()) {
        txn.read_page(cx, page_of(bank, acct), buf)?;
        let delta = if acct == from { -amount } else { amount };
        let bal = bank::read_balance(buf)? + delta;
        let seq = bank::read_stamp(buf)?.seq + 1;
        bank::write_balance(buf, bal)?;
        bank::write_stamp(buf, Stamp { seq, txn: at.id })?;
        txn.write_page(cx, page_of(bank, acct), buf)?;
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

// ---------------------------------------------------------------------------------------
// Verification of one crashed copy
// ---------------------------------------------------------------------------------------

/// Checks 1-5 of the module docs on `img`; `Err(description)` on a violation.
fn verify(
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
    .map_err(|e| e.to_string())?;
    if let Some(w) = img.live_contents(Path::new(&format!("{DB}-wal"))) {
        std::fs::write(&wal_file, w).map_err(|e| e.to_string())?;
    }
    let coord = Coordinator::open(&cx, Arc::new(img.clone()), DB, common::options())
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
        let acked = matches!(a.outcome, Outcome::Acked(_));
        if !(acked || present.contains(&a.id)) {
            continue;
        }
        for &(acct, seq, _) in &a.writes {
            let st = seen[&acct].1;
            if !st.covers(seq, a.id) {
                return Err(if acked {
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
    transfer(&coord, &cx, bank, ps, 3, 4, 1, &mut at)
        .map_err(|e| format!("commit after recovery: {e}"))?;
    coord
        .read_page(&cx, page_of(bank, 3), &mut buf)
        .map_err(|e| e.to_string())?;
    if bank::read_stamp(&buf).map_err(|e| e.to_string())?.txn != u64::MAX {
        return Err("the commit after recovery is not read back".to_owned());
    }
    coord
        .close(&cx)
        .map_err(|e| format!("close after recovery: {e}"))?;
    Ok(())
}

fn crash_modes(k: u64) -> [CrashMode; 5] {
    [
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::KeepRandom { seed: k },
        CrashMode::Torn {
            seed: k ^ 0x7072,
            sector: 512,
        },
        CrashMode::Garbage {
            seed: k ^ 0x6761,
            sector: 512,
        },
    ]
}

/// A fresh disk holding the pristine bank.
fn fresh_vfs(image: &[u8]) -> CrashVfs {
    let mem = MemoryVfs::new();
    mem.set_contents(Path::new(DB), image);
    CrashVfs {
        mem,
        ctl: Arc::new(Ctl::default()),
    }
}

#[test]
fn crash_at_every_write_and_sync_of_group_commits() {
    common::init_tracing();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bank = bank::create(
        &dir.path().join("pristine.db"),
        &BankOptions {
            accounts: ACCOUNTS,
            ..BankOptions::default()
        },
    )
    .unwrap();
    let image = std::fs::read(&bank.path).unwrap();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let cx = Cx::new();

    // Baseline: no crash; how many counted operations does a run make?
    let vfs = fresh_vfs(&image);
    let coord = Coordinator::open(&cx, Arc::new(vfs.clone()), DB, common::options()).unwrap();
    vfs.ctl.counting.store(true, Ordering::Release);
    let log = run_workload(&coord, &bank);
    vfs.ctl.counting.store(false, Ordering::Release);
    let baseline_ops = vfs.ctl.seen.load(Ordering::Acquire);
    let st = coord.stats();
    assert_eq!(
        log.iter()
            .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
            .count() as u64,
        THREADS * TXNS_PER_THREAD,
        "{log:?}"
    );
    verify(
        &vfs.mem.fork_crashed(CrashMode::DropAll),
        &bank,
        &log,
        &scratch,
    )
    .unwrap_or_else(|e| panic!("baseline: {e}"));
    coord.close(&cx).unwrap();
    eprintln!("baseline: {baseline_ops} writes/syncs, {st:?}");

    let mut points = 0u64;
    let mut recoveries = 0u64;
    let mut acked_checked = 0u64;
    let mut failed_in_flight = 0u64;
    let mut grouped_runs = 0u64;
    let mut hits: BTreeMap<String, u64> = BTreeMap::new();
    // Violations per crash mode: (count, first example).
    let mut failures: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for pass in 0..PASSES {
        let mut k = 0u64;
        loop {
            k += 1;
            assert!(k < 10 * baseline_ops + 100, "the sweep does not end");
            let vfs = fresh_vfs(&image);
            let coord =
                Coordinator::open(&cx, Arc::new(vfs.clone()), DB, common::options()).unwrap();
            vfs.ctl.armed.store(k, Ordering::Release);
            vfs.ctl.counting.store(true, Ordering::Release);
            let log = run_workload(&coord, &bank);
            vfs.ctl.counting.store(false, Ordering::Release);
            let st = coord.stats();
            // A batch of two or more transactions ran (before or at the crash).
            if st.batches < st.commits {
                grouped_runs += 1;
            }
            let hit = lock(&vfs.ctl.hit).clone();
            let Some((_, what)) = hit else {
                // The run made fewer than k counted operations: this pass is complete.
                coord.close(&cx).unwrap();
                if k > baseline_ops {
                    break;
                }
                continue;
            };
            points += 1;
            let kind = what
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            *hits.entry(kind).or_default() += 1;
            for mode in crash_modes(k ^ (pass << 32)) {
                let img = vfs.mem.fork_crashed(mode);
                if let Err(e) = verify(&img, &bank, &log, &scratch) {
                    let mode_name = format!("{mode:?}");
                    let mode_name = mode_name.split([' ', '{']).next().unwrap_or("").to_owned();
                    let entry = failures.entry(mode_name).or_insert((0, String::new()));
                    entry.0 += 1;
                    if entry.1.is_empty() {
                        entry.1 = format!(
                            "pass {pass}, crash point {k} ({what}), {mode:?}: {e}\nattempts: {log:?}"
                        );
                    }
                }
                recoveries += 1;
            }
            acked_checked += log
                .iter()
                .filter(|a| matches!(a.outcome, Outcome::Acked(_)))
                .count() as u64;
            failed_in_flight += log
                .iter()
                .filter(|a| matches!(a.outcome, Outcome::Failed(_)))
                .count() as u64;
            vfs.mem.crash(CrashMode::DropAll);
            drop(coord);
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{points} crash points in {PASSES} passes, {recoveries} recoveries verified, \
         {acked_checked} acknowledged commits checked, {failed_in_flight} in-flight commits \
         failed, {grouped_runs} runs grouped transactions in a batch; hits {hits:?}; {elapsed:?}"
    );
    assert!(
        failures.is_empty(),
        "violations by crash mode (count, first example); replay: cargo test -p fsqlite-mvcc \
         --test concurrent_crash (batching is timing-dependent):\n{failures:#?}"
    );
    // Runs differ in how many writes and syncs they make (group-commit batching depends
    // on timing, and leaders gather; a batch also waits for its serial section's lock),
    // so a crash point past a run's end is skipped; still, a third of the points of the
    // baseline run must have been hit in every pass on average.
    assert!(
        points >= PASSES * baseline_ops / 3,
        "too few crash points ran: {points} (baseline run: {baseline_ops} writes/syncs)"
    );
    for op in ["write /bank.db-wal", "sync /bank.db-wal"] {
        assert!(hits.contains_key(op), "no crash at a {op}: {hits:?}");
    }
    let _ = fsqlite_testkit::stats::write_stats(
        "mvcc_concurrent_crash",
        fsqlite_testkit::serde_json::json!({
            "crash_points": points,
            "grouped_runs": grouped_runs,
            "recoveries": recoveries,
            "acked_checked": acked_checked,
            "baseline_ops": baseline_ops,
            "elapsed_ms": elapsed.as_millis() as u64,
        }),
    );
}

/// Regression (found by the sweep above): on a device without power-safe overwrite
/// (`MemoryVfs` reports no `SQLITE_IOCAP_POWERSAFE_OVERWRITE`, sector 4096), SQLite pads
/// a synced commit with copies of its commit frame up to a sector boundary, so that the
/// next commit never writes into a sector holding acknowledged bytes (FORMAT.md §9,
/// `walcrash4.test`). The hybrid coordinator's group commit does not: a torn or garbage
/// write of the *next* batch's first sector then destroys the tail of an acknowledged
/// commit frame, and recovery loses that commit.
#[test]
fn acked_commit_survives_damage_to_next_batch_sector() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let bank = bank::create(
        &dir.path().join("pristine.db"),
        &BankOptions {
            accounts: 4,
            ..BankOptions::default()
        },
    )
    .unwrap();
    let image = std::fs::read(&bank.path).unwrap();
    let ps = bank.page_size as usize;
    let wal = PathBuf::from(format!("{DB}-wal"));
    let cx = Cx::new();
    let stamped = |coord: &Coordinator<CrashVfs>, acct: i64, txn: u64| {
        let page = page_of(&bank, acct);
        let mut buf = vec![0u8; ps];
        coord.read_page(&cx, page, &mut buf).unwrap();
        bank::write_stamp(&mut buf, Stamp { seq: 1, txn }).unwrap();
        (page, buf)
    };
    let vfs = fresh_vfs(&image);
    let sector = 4096usize;
    let coord = Coordinator::open(&cx, Arc::new(vfs.clone()), DB, common::options()).unwrap();
    let (page, a) = stamped(&coord, 1, 7);
    let size = coord.db_size(&cx).unwrap();
    let frame = coord.commit(&cx, &[(page, &a)], size).unwrap();
    let wal_len = vfs.mem.live_contents(&wal).unwrap().len();
    // The next write starts at `wal_len`; it must lie in a later sector than the last
    // byte of the acknowledged commit frame.
    let commit_end = 32 + frame as usize * (24 + ps);
    let separated =
        |wal_len: usize, commit_end: usize| wal_len / sector > (commit_end - 1) / sector;
    // Commit B: its WAL write stays pending (the power fails at its sync).
    vfs.ctl.armed.store(2, Ordering::Release);
    vfs.ctl.counting.store(true, Ordering::Release);
    let (page_b, b) = stamped(&coord, 2, 8);
    assert!(coord.commit(&cx, &[(page_b, &b)], size).is_err());
    let mut lost = Vec::new();
    for seed in 0..32u64 {
        let img = vfs
            .mem
            .fork_crashed(CrashMode::Garbage { seed, sector: 512 });
        let c = Coordinator::open(&cx, Arc::new(img), DB, common::options()).unwrap();
        let mut buf = vec![0u8; ps];
        c.read_page(&cx, page, &mut buf).unwrap();
        if bank::read_stamp(&buf).unwrap().txn != 7 {
            lost.push(seed);
        }
        drop(c);
    }
    drop(coord);
    // The plain WAL connection (FileLockOnly mode) pads; the group commit must do the same.
    let plain = fresh_vfs(&image);
    let opts = fsqlite_mvcc::CoordinatorOptions {
        hybrid: false,
        ..common::options()
    };
    let c = Coordinator::open(&cx, Arc::new(plain.clone()), DB, opts).unwrap();
    let plain_frame = c.commit(&cx, &[(page, &a)], size).unwrap();
    let plain_len = plain.mem.live_contents(&wal).unwrap().len();
    drop(c);
    assert!(
        // The first commit into an empty WAL: its commit frame is frame 1 (the plain
        // connection reports the last frame it wrote, padding included).
        plain_frame >= 1 && separated(plain_len, 32 + (24 + ps)),
        "fsqlite_wal::Wal pads past the sector boundary (WAL {plain_len} bytes)"
    );
    assert!(
        separated(wal_len, commit_end) && lost.is_empty(),
        "after an acknowledged group commit (commit frame {frame}, ending at byte \
         {commit_end}) the WAL is {wal_len} bytes: no padding frame, so the next batch \
         writes into the {sector}-byte sector holding the commit's tail on a non-PSOW \
         device (the plain WAL connection pads to {plain_len} bytes); garbage there destroyed \
         the acknowledged commit for crash seeds {lost:?} of 0..32"
    );
}
