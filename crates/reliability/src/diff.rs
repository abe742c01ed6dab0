//! Differential recovery against SQLite (TESTING.md §2.8 (a), "Differential recovery").
//!
//! ```text
//! bases:  SQLite (rusqlite, bundled) writes WAL databases: page sizes 512, 1024, 4096,
//!         4096, 65536, each a seeded workload of inserts/updates/deletes with overflow
//!         pages (testkit SqliteWalDb::run_workload); the db, -wal and -shm are copied
//!         while the connection is open (nothing checkpointed)
//!       + concurrent bases, written by our Coordinator (UnixVfs, real files in a temp
//!         dir, page size 4096) on a testkit bank made by SQLite (32 accounts, one per
//!         table-leaf page, fixed-width balances):
//!           "coordinator 8 threads":   1 Coordinator x 8 threads
//!           "2 members x 4 threads":   2 Coordinators (members, LegacyWriters::Excluded)
//!                                      on the same files x 4 threads each
//!         320 transfers in all (~640 frames), each BEGIN CONCURRENT: read both account
//!         pages, move an amount, bump both stamps, write both pages, commit (retry on
//!         conflict); group commit batches several transactions per WAL append. The db and
//!         -wal are copied while the coordinators are open (they never checkpoint during
//!         their life; closed with checkpoint_on_close = false). Thread interleaving is
//!         not deterministic: these bases are built once per run and differ between runs
//! case c: base = bases[c % n]; the -wal gets seeded damage (one to three of: bit flips
//!         anywhere, a bit flip in the WAL header or a frame header, truncation at any
//!         byte, a zeroed 512- or 4096-byte sector, a garbage tail); the -shm is dropped
//!   ours:   MemoryVfs with the db and damaged -wal; WalFile::scan -> mxFrame;
//!           Wal::open (recovery), read pages 1..=db_size
//!   SQLite: a temp dir with the db and damaged -wal; PRAGMA wal_checkpoint(PASSIVE)
//!           gives SQLite's mxFrame after its own recovery; on a bank base the books
//!           (testkit bank::BOOKS_SQL); wal_checkpoint(TRUNCATE) and read the database
//!           file (SQLite's committed state, page by page); every 8th case also
//!           PRAGMA integrity_check
//!   agree:  our mxFrame == SQLite's, our db_size == SQLite's page count, every page
//!           byte-identical, integrity_check == "ok"; on a bank base also: the account
//!           count and the sum of balances unchanged, the stamp sequences sum to an even
//!           number <= 2 x transfers (== when SQLite kept the whole undamaged WAL)
//! ```
//!
//! Each disagreement is a failure with its seed and case number; replay with
//! `cargo xtask diff-case --seed S --case C`. A case on a concurrent base cannot be
//! rebuilt from the seed alone (the interleaving differs), so its db, damaged -wal,
//! undamaged -wal and `case.json` are kept in `<target>/diff-failures/<seed>-<case>/`
//! (named in the failure message) and [`replay_kept`] re-runs the comparison on them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions, LegacyWriters};
use fsqlite_testkit::bank::{self, BankOptions, Stamp};
use fsqlite_testkit::rng::Rng;
use fsqlite_testkit::sqlite::{
    SqliteWalDb, integrity_check, query_rows, sqlite_checkpoint_copy, sqlite_page_images,
};
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{MemoryVfs, UnixVfs, Vfs};
use fsqlite_wal::{SyncMode, Wal, WalFile, WalOptions};
use serde_json::json;

use crate::model::page_digest;
use crate::workloads::{observe, wal_path};
use crate::{Counters, Failure, FailureSink, HarnessReport, mix_seed, panic_text};

/// Page sizes of the base images, in order.
pub const BASE_PAGE_SIZES: [u32; 5] = [512, 1024, 4096, 4096, 65_536];

/// Accounts of the bank behind each concurrent base.
pub const CONCURRENT_ACCOUNTS: u32 = 32;
/// Transfers committed into each concurrent base (two WAL frames each).
pub const CONCURRENT_TRANSFERS: u64 = 320;
/// The concurrent bases, in order (after the SQLite ones): `(members, threads per member)`.
pub const CONCURRENT_SHAPES: [(u64, u64); 2] = [(1, 8), (2, 4)];
/// Attempts of one transfer before the base build gives up.
const MAX_ATTEMPTS: u64 = 100_000;

/// What a concurrent base holds: a bank written by our coordinator(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankBase {
    /// Number of accounts (ids `1..=accounts`).
    pub accounts: u32,
    /// The sum of all balances (every transfer keeps it).
    pub total: i64,
    /// Transfers committed (each bumps two stamp sequences).
    pub transfers: u64,
    /// Coordinators (members) on the database.
    pub members: u64,
    /// Threads per member.
    pub threads: u64,
    /// Commits counted by the coordinators.
    pub commits: u64,
    /// Group-commit batches that wrote to the WAL.
    pub batches: u64,
    /// Conflicts (retried transactions).
    pub conflicts: u64,
}

/// One base database, as bytes.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// Who wrote it: `sqlite page size N`, `coordinator 8 threads`, `2 members x 4 threads`.
    pub label: String,
    /// Page size.
    pub page_size: u32,
    /// The database file.
    pub db: Vec<u8>,
    /// The `-wal` file.
    pub wal: Vec<u8>,
    /// SQLite's own mxFrame of the undamaged WAL.
    pub mx_frame: u32,
    /// The bank, when our coordinator wrote the base.
    pub bank: Option<BankBase>,
    /// Seconds it took to build.
    pub build_secs: f64,
}

impl BaseImage {
    /// True for a base written by our coordinator (not reproducible from the seed alone).
    pub fn is_concurrent(&self) -> bool {
        self.bank.is_some()
    }
}

/// Which bases a run uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BaseSet {
    /// The SQLite bases, then the concurrent ones ([`run`]).
    #[default]
    All,
    /// Only the SQLite-written bases.
    Sqlite,
    /// Only the bases written by our coordinator.
    Concurrent,
}

/// Builds all base images for `seed` in `dir`: the SQLite ones, then the concurrent ones.
pub fn build_bases(seed: u64, dir: &Path) -> Result<Vec<BaseImage>, String> {
    build_base_set(seed, dir, BaseSet::All)
}

/// Builds the bases of `set` for `seed` in `dir`.
pub fn build_base_set(seed: u64, dir: &Path, set: BaseSet) -> Result<Vec<BaseImage>, String> {
    let mut out = Vec::new();
    if set != BaseSet::Concurrent {
        out.extend(build_sqlite_bases(seed, dir)?);
    }
    if set != BaseSet::Sqlite {
        out.extend(build_concurrent_bases(seed, dir)?);
    }
    Ok(out)
}

/// Builds the SQLite-written base images for `seed` in `dir`.
pub fn build_sqlite_bases(seed: u64, dir: &Path) -> Result<Vec<BaseImage>, String> {
    let mut out = Vec::new();
    for (i, ps) in BASE_PAGE_SIZES.iter().enumerate() {
        let start = Instant::now();
        let sub = dir.join(format!("base{i}"));
        std::fs::create_dir_all(&sub).map_err(|e| format!("mkdir {}: {e}", sub.display()))?;
        let mut db = SqliteWalDb::create(&sub, "b.db", *ps).map_err(|e| e.to_string())?;
        let mut rng = Rng::new(mix_seed(&[seed, i as u64, 0x6261_7365]));
        let commits = 4 + rng.below(8) as u32;
        let ops = 2 + rng.below(8) as u32;
        db.run_workload(rng.next_u64(), commits, ops)
            .map_err(|e| e.to_string())?;
        let snap = sub.join("snap");
        let (d, w, _) = db.snapshot_files(&snap).map_err(|e| e.to_string())?;
        let mx = db.wal_scan().map_err(|e| e.to_string())?.mx_frame;
        db.close_without_checkpoint().map_err(|e| e.to_string())?;
        out.push(BaseImage {
            label: format!("sqlite page size {ps}"),
            page_size: *ps,
            db: std::fs::read(&d).map_err(|e| format!("read {}: {e}", d.display()))?,
            wal: std::fs::read(&w).map_err(|e| format!("read {}: {e}", w.display()))?,
            mx_frame: mx,
            bank: None,
            build_secs: start.elapsed().as_secs_f64(),
        });
    }
    Ok(out)
}

/// Builds the concurrent bases ([`CONCURRENT_SHAPES`]) in `dir`; `seed` picks the
/// transfers each thread tries (the interleaving is up to the scheduler).
pub fn build_concurrent_bases(seed: u64, dir: &Path) -> Result<Vec<BaseImage>, String> {
    CONCURRENT_SHAPES
        .iter()
        .enumerate()
        .map(|(i, &(members, threads))| {
            let sub = dir.join(format!("concurrent{i}"));
            std::fs::create_dir_all(&sub).map_err(|e| format!("mkdir {}: {e}", sub.display()))?;
            build_concurrent_base(
                mix_seed(&[seed, i as u64, 0x636f_6e63]),
                &sub,
                members,
                threads,
                CONCURRENT_TRANSFERS,
            )
            .map_err(|e| format!("concurrent base {members} x {threads}: {e}"))
        })
        .collect()
}

/// The label of a concurrent base.
fn concurrent_label(members: u64, threads: u64) -> String {
    if members == 1 {
        format!("coordinator {threads} threads")
    } else {
        format!("{members} members x {threads} threads")
    }
}

/// One concurrent base: a SQLite-made bank in `dir`, `members` coordinators on it with
/// `threads` transfer threads each, `transfers` transfers in all; the db and -wal are
/// copied while the coordinators are open.
pub fn build_concurrent_base(
    seed: u64,
    dir: &Path,
    members: u64,
    threads: u64,
    transfers: u64,
) -> Result<BaseImage, String> {
    let start = Instant::now();
    let path = dir.join("bank.db");
    let bk = bank::create(
        &path,
        &BankOptions {
            accounts: CONCURRENT_ACCOUNTS,
            ..BankOptions::default()
        },
    )
    .map_err(|e| format!("bank: {e}"))?;
    let before = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let pages: Vec<PageNumber> = bk.accounts.iter().map(|(_, p)| p).collect();
    let cx = Cx::new();
    let options = CoordinatorOptions {
        sync: SyncMode::Full,
        probe_timeout: Duration::from_millis(500),
        checkpoint_on_close: false,
        kill_at: None,
        legacy_writers: LegacyWriters::Excluded,
        ..CoordinatorOptions::default()
    };
    let vfs = Arc::new(UnixVfs::new());
    let mut coords = Vec::new();
    for m in 0..members {
        coords.push(
            Coordinator::open(&cx, Arc::clone(&vfs), &path, options.clone())
                .map_err(|e| format!("Coordinator::open (member {m}): {e}"))?,
        );
    }
    for (m, c) in coords.iter().enumerate() {
        let joined = c.takeover().is_some_and(|t| t.joined);
        if c.mode() != CompatMode::HybridShm || joined != (m > 0) {
            return Err(format!(
                "member {m} is not a hybrid {} (mode {}: {})",
                if m > 0 {
                    "member that joined"
                } else {
                    "first member"
                },
                c.mode(),
                c.mode_reason()
            ));
        }
    }
    let next = AtomicU64::new(0);
    let worked = std::thread::scope(|s| {
        let handles: Vec<_> = coords
            .iter()
            .enumerate()
            .flat_map(|(m, coord)| {
                let (pages, next) = (&pages, &next);
                (0..threads).map(move |t| {
                    let tseed = mix_seed(&[seed, m as u64, t]);
                    s.spawn(move || transfer_loop(coord, pages, next, transfers, tseed))
                })
            })
            .collect();
        let mut errors = Vec::new();
        for h in handles {
            match h.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(p) => errors.push(format!("transfer thread panicked: {}", panic_text(&*p))),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    });
    // Copy while every coordinator is still open: nothing is checkpointed.
    let copied = worked.and_then(|()| {
        let db = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let wp = wal_path(&path);
        let wal = std::fs::read(&wp).map_err(|e| format!("read {}: {e}", wp.display()))?;
        Ok((db, wal))
    });
    let (mut commits, mut batches, mut conflicts) = (0, 0, 0);
    let mut idle = None;
    for (m, c) in coords.iter().enumerate() {
        let st = c.stats();
        commits += st.commits;
        batches += st.batches;
        conflicts += st.conflicts;
        if st.commits == 0 {
            idle = Some(m);
        }
    }
    let mut closed = Ok(());
    for (m, c) in coords.into_iter().enumerate() {
        if let Err(e) = c.close(&cx) {
            closed = Err(format!("Coordinator::close (member {m}): {e}"));
        }
    }
    let (db, wal) = copied?;
    closed?;
    if let Some(m) = idle {
        return Err(format!("member {m} committed nothing"));
    }
    if db != before {
        return Err("the database file changed while the coordinators were open".into());
    }
    let scan = fsqlite_testkit::sqlite::wal_scan(&wal).map_err(|e| format!("WAL scan: {e}"))?;
    if scan.mx_frame == 0 {
        return Err("the coordinators left an empty WAL".into());
    }
    Ok(BaseImage {
        label: concurrent_label(members, threads),
        page_size: bk.page_size,
        db,
        wal,
        mx_frame: scan.mx_frame,
        bank: Some(BankBase {
            accounts: bk.accounts.len() as u32,
            total: bk.total(),
            transfers,
            members,
            threads,
            commits,
            batches,
            conflicts,
        }),
        build_secs: start.elapsed().as_secs_f64(),
    })
}

/// Transfers until `next` reaches `total`: each one moves a random amount between two
/// random accounts in one `BEGIN CONCURRENT` transaction, retried on conflict.
fn transfer_loop<V: Vfs>(
    coord: &Coordinator<V>,
    pages: &[PageNumber],
    next: &AtomicU64,
    total: u64,
    seed: u64,
) -> Result<(), String> {
    let cx = Cx::new();
    let ps = coord.page_size() as usize;
    let mut rng = Rng::new(seed);
    let mut bufs = [vec![0u8; ps], vec![0u8; ps]];
    let n = pages.len() as u64;
    if n < 2 {
        return Err("a transfer needs two accounts".into());
    }
    loop {
        let id = next.fetch_add(1, Ordering::Relaxed);
        if id >= total {
            return Ok(());
        }
        let a = rng.below(n);
        let b = (a + 1 + rng.below(n - 1)) % n;
        let pair = [pages[a as usize], pages[b as usize]];
        let amount = 1 + rng.below(100) as i64;
        let mut attempts = 0u64;
        loop {
            attempts += 1;
            match try_transfer(coord, &cx, pair, amount, id + 1, &mut bufs) {
                Ok(()) => break,
                Err(
                    FrankenError::ConcurrentConflict { .. }
                    | FrankenError::BusySnapshot
                    | FrankenError::Busy,
                ) if attempts < MAX_ATTEMPTS => {}
                Err(e) => return Err(format!("transfer {id} (attempt {attempts}): {e}")),
            }
        }
    }
}

/// One attempt of transfer `txn_id`: `amount` from `pair[0]` to `pair[1]`.
fn try_transfer<V: Vfs>(
    coord: &Coordinator<V>,
    cx: &Cx,
    pair: [PageNumber; 2],
    amount: i64,
    txn_id: u64,
    bufs: &mut [Vec<u8>; 2],
) -> fsqlite_error::Result<()> {
    let mut txn = coord.begin_concurrent(cx)?;
    for (i, buf) in bufs.iter_mut().enumerate() {
        txn.read_page(cx, pair[i], buf)?;
        let delta = if i == 0 { -amount } else { amount };
        let bal = bank::read_balance(buf)? + delta;
        bank::write_balance(buf, bal)?;
        let seq = bank::read_stamp(buf)?.seq + 1;
        bank::write_stamp(buf, Stamp { seq, txn: txn_id })?;
        txn.write_page(cx, pair[i], buf)?;
    }
    let size = txn.db_size();
    txn.commit(cx, size).map(|_| ())
}

/// The damage kinds, by name (for stats).
pub const DAMAGE_KINDS: [&str; 6] = [
    "bit_flip",
    "header_flip",
    "frame_header_flip",
    "truncate",
    "zero_sector",
    "garbage_tail",
];

/// Applies 1–3 seeded damages to `wal`; returns the names of the damages applied.
pub fn damage_wal(wal: &mut Vec<u8>, page_size: u32, rng: &mut Rng) -> Vec<&'static str> {
    let mut applied = Vec::new();
    let fs = page_size as u64 + 24;
    for _ in 0..=rng.below(3) {
        if wal.is_empty() {
            break;
        }
        let len = wal.len() as u64;
        let k = rng.below(DAMAGE_KINDS.len() as u64) as usize;
        match k {
            0 => {
                let bit = rng.below(len * 8) as usize;
                wal[bit / 8] ^= 1 << (bit % 8);
            }
            1 => {
                let bit = rng.below(32 * 8) as usize;
                if bit / 8 < wal.len() {
                    wal[bit / 8] ^= 1 << (bit % 8);
                }
            }
            2 => {
                let frames = len.saturating_sub(32) / fs;
                if frames > 0 {
                    let f = rng.below(frames);
                    let off = 32 + f * fs + rng.below(24);
                    wal[off as usize] ^= 1 << rng.below(8);
                }
            }
            3 => wal.truncate(rng.below(len + 1) as usize),
            4 => {
                let sector = if rng.chance(0.5) { 512 } else { 4096 };
                let start = rng.below(len) / sector * sector;
                let end = (start + sector).min(len);
                wal[start as usize..end as usize].fill(0);
            }
            _ => {
                let from = rng.below(len + 1) as usize;
                wal.truncate(from);
                let mut tail = vec![0u8; rng.below(2 * fs) as usize];
                rng.fill(&mut tail);
                wal.extend_from_slice(&tail);
            }
        }
        applied.push(DAMAGE_KINDS[k]);
    }
    applied
}

/// What our recovery reads from a db + WAL image.
fn ours(db: &[u8], wal: &[u8], page_size: u32, max_pages: u32) -> Result<(u32, Vec<u64>), String> {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(3);
    let path = PathBuf::from("/diff/d.db");
    vfs.set_contents(&path, db);
    vfs.set_contents(&wal_path(&path), wal);
    let (f, _) = vfs
        .open(
            &cx,
            Some(&wal_path(&path)),
            VfsOpenFlags::READWRITE | VfsOpenFlags::WAL,
        )
        .map_err(|e| e.to_string())?;
    let scan =
        WalFile::scan(&cx, &f, |_, _, _| Ok(())).map_err(|e| format!("WalFile::scan: {e}"))?;
    drop(f);
    let opts = WalOptions {
        sync: SyncMode::Full,
        page_size,
        busy_timeout: Duration::ZERO,
        auto_checkpoint: None,
        checkpoint_on_close: false,
    };
    let mut wal_conn =
        Wal::open(&cx, Arc::new(vfs), &path, opts).map_err(|e| format!("Wal::open: {e}"))?;
    let obs = observe(&cx, &mut wal_conn, max_pages).map_err(|e| format!("read: {e}"))?;
    Ok((scan.mx_frame, obs.pages))
}

/// What SQLite's recovered copy of a bank holds (testkit [`bank::BOOKS_SQL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BooksSeen {
    /// `count(*)`.
    pub accounts: i64,
    /// The sum of the balances.
    pub total: i64,
    /// The sum of the stamp sequence numbers (two per committed transfer).
    pub writes: i64,
}

/// The books of the bank at `db` (with its `-wal`), as SQLite reads them.
fn sqlite_books(db: &Path) -> Result<BooksSeen, String> {
    let rows = query_rows(db, bank::BOOKS_SQL).map_err(|e| e.to_string())?;
    let row = rows.first().ok_or("no row")?;
    let num = |i: usize| -> Result<i64, String> {
        let v = row.get(i).ok_or_else(|| format!("no column {i}"))?;
        if v == "NULL" {
            return Ok(0);
        }
        v.parse().map_err(|e| format!("column {i} = {v:?}: {e}"))
    };
    Ok(BooksSeen {
        accounts: num(0)?,
        total: num(1)?,
        writes: num(2)?,
    })
}

/// Checks SQLite's books against the bank: same accounts, same total, an even number of
/// sequence bumps of at most two per transfer (exactly two when `complete`: SQLite kept
/// the whole undamaged WAL).
pub fn check_books(seen: &BooksSeen, bank: &BankBase, complete: bool) -> Result<(), String> {
    let max_writes = 2 * bank.transfers as i64;
    let mut problems = Vec::new();
    if seen.accounts != i64::from(bank.accounts) || seen.total != bank.total {
        problems.push(format!(
            "the books do not balance: {} accounts holding {} (expected {} holding {})",
            seen.accounts, seen.total, bank.accounts, bank.total
        ));
    }
    if seen.writes % 2 != 0 || seen.writes > max_writes || (complete && seen.writes != max_writes) {
        problems.push(format!(
            "the stamps count {} account writes (expected an even number {} {max_writes})",
            seen.writes,
            if complete { "==" } else { "<=" }
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What SQLite reads from a damaged copy.
struct Theirs {
    mx_frame: u32,
    pages: Vec<u64>,
    integrity: Option<String>,
    books: Option<BooksSeen>,
}

/// What SQLite reads: mxFrame, page digests, integrity_check, and the books if asked.
fn sqlite(
    db: &[u8],
    wal: &[u8],
    dir: &Path,
    integrity: bool,
    books: bool,
) -> Result<Theirs, String> {
    let p = dir.join("s.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(s));
    }
    std::fs::write(&p, db).map_err(|e| format!("write {}: {e}", p.display()))?;
    std::fs::write(wal_path(&p), wal).map_err(|e| format!("write wal: {e}"))?;
    let (_, log, _) =
        sqlite_checkpoint_copy(&p, "PASSIVE").map_err(|e| format!("SQLite checkpoint: {e}"))?;
    let ic = if integrity {
        Some(integrity_check(&p).map_err(|e| format!("SQLite integrity_check: {e}"))?)
    } else {
        None
    };
    let books = if books {
        Some(sqlite_books(&p).map_err(|e| format!("SQLite books: {e}"))?)
    } else {
        None
    };
    let pages = sqlite_page_images(&p).map_err(|e| format!("SQLite page images: {e}"))?;
    Ok(Theirs {
        mx_frame: u32::try_from(log.max(0)).unwrap_or(0),
        pages: pages.iter().map(|pg| page_digest(pg)).collect(),
        integrity: ic,
        books,
    })
}

/// Where a failing case on a concurrent base is kept: `<target>/diff-failures/<seed>-<case>`.
pub fn kept_case_dir(seed: u64, c: u64) -> PathBuf {
    fsqlite_testkit::stats::target_dir()
        .join("diff-failures")
        .join(format!("{seed:#x}-{c}"))
}

/// Writes the failing case's db (`d.db`), damaged -wal (`d.db-wal`), undamaged -wal
/// (`undamaged.wal`) and `case.json` to `dir`.
fn keep_case(
    dir: &Path,
    base: &BaseImage,
    wal: &[u8],
    seed: u64,
    c: u64,
    applied: &[&str],
    message: &str,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let bank = base.bank.as_ref().map(|b| {
        json!({"accounts": b.accounts, "total": b.total, "transfers": b.transfers,
               "members": b.members, "threads": b.threads})
    });
    let meta = json!({
        "seed": format!("{seed:#x}"), "case": c, "label": base.label,
        "page_size": base.page_size, "mx_frame": base.mx_frame, "damage": applied,
        "bank": bank, "message": message,
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())?;
    for (name, bytes) in [
        ("d.db", &base.db[..]),
        ("d.db-wal", wal),
        ("undamaged.wal", &base.wal[..]),
        ("case.json", text.as_bytes()),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Runs case `c` against `bases` in `dir`.
pub fn run_case(
    seed: u64,
    c: u64,
    bases: &[BaseImage],
    dir: &Path,
    counters: &mut Counters,
    failures: &mut FailureSink,
) {
    let base = &bases[(c % bases.len() as u64) as usize];
    let mut rng = Rng::new(mix_seed(&[seed, c, 0x6469_6666]));
    let mut wal = base.wal.clone();
    let applied = damage_wal(&mut wal, base.page_size, &mut rng);
    for d in &applied {
        counters.inc(&format!("damage.{d}"));
    }
    if base.is_concurrent() {
        counters.inc("concurrent_cases");
    }
    match compare(base, &wal, dir, c.is_multiple_of(8), counters) {
        Ok(()) => counters.inc("agreements"),
        Err(mut message) => {
            counters.inc("disagreements");
            let replay = if base.is_concurrent() {
                let kept = kept_case_dir(seed, c);
                let note = match keep_case(&kept, base, &wal, seed, c, &applied, &message) {
                    Ok(()) => format!(
                        " [concurrent base {:?}: db and damaged -wal kept in {}]",
                        base.label,
                        kept.display()
                    ),
                    Err(e) => format!(" [could not keep the case: {e}]"),
                };
                message.push_str(&note);
                format!(
                    "fsqlite_reliability::diff::replay_kept({:?}) (a concurrent base is not \
                     rebuilt by `cargo xtask diff-case --seed {seed:#x} --case {c}`)",
                    kept.display()
                )
            } else {
                format!("cargo xtask diff-case --seed {seed:#x} --case {c}")
            };
            failures.push(Failure {
                harness: "diff",
                workload: base.label.clone(),
                case: c,
                variant: applied.join("+"),
                seed,
                message,
                replay,
            });
        }
    }
}

/// Recovers `base.db` + `wal` with SQLite and with ours and compares (see the module doc).
fn compare(
    base: &BaseImage,
    wal: &[u8],
    dir: &Path,
    integrity: bool,
    counters: &mut Counters,
) -> Result<(), String> {
    let theirs = sqlite(&base.db, wal, dir, integrity, base.bank.is_some()).map_err(|e| {
        counters.inc("sqlite_errors");
        format!("SQLite could not read the damaged copy: {e}")
    })?;
    let max_pages = theirs.pages.len() as u32 * 2 + 16;
    let mine = match std::panic::catch_unwind(|| ours(&base.db, wal, base.page_size, max_pages)) {
        Ok(r) => r,
        Err(e) => Err(format!("panic: {}", panic_text(e.as_ref()))),
    };
    counters.inc("checks");
    let mut problems = Vec::new();
    // The books are SQLite's alone: check them even when our recovery failed.
    if let (Some(seen), Some(bk)) = (&theirs.books, &base.bank) {
        counters.inc("books_checks");
        if let Err(e) = check_books(seen, bk, theirs.mx_frame == base.mx_frame) {
            counters.inc("books_mismatches");
            problems.push(format!("SQLite's recovered copy: {e}"));
        }
    }
    let (mx, pages) = match mine {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!(
                "our recovery failed where SQLite read mxFrame {}: {e}",
                theirs.mx_frame
            ));
            return Err(problems.join("; "));
        }
    };
    if mx < base.mx_frame {
        counters.inc("prefix_cut");
    }
    if mx != theirs.mx_frame {
        problems.push(format!("mxFrame: ours {mx}, SQLite {}", theirs.mx_frame));
    }
    if pages.len() != theirs.pages.len() {
        problems.push(format!(
            "database size: ours {} pages, SQLite {}",
            pages.len(),
            theirs.pages.len()
        ));
    }
    let differing: Vec<usize> = pages
        .iter()
        .zip(&theirs.pages)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i + 1)
        .collect();
    if !differing.is_empty() {
        problems.push(format!(
            "{} page(s) differ, first {:?}",
            differing.len(),
            &differing[..differing.len().min(8)]
        ));
    }
    if let Some(ic) = &theirs.integrity {
        counters.inc("integrity_checks");
        if ic != "ok" {
            problems.push(format!(
                "SQLite integrity_check of its recovered copy: {ic}"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// What [`run`] does.
#[derive(Clone, Debug)]
pub struct DiffConfig {
    /// The one seed.
    pub seed: u64,
    /// Wall-clock budget.
    pub budget: Duration,
    /// Stop after this many cases.
    pub max_cases: u64,
}

fn early_report(seed: u64, variant: &str, message: String) -> HarnessReport {
    let mut failures = FailureSink::default();
    failures.push(Failure {
        harness: "diff",
        workload: String::new(),
        case: 0,
        variant: variant.into(),
        seed,
        message,
        replay: String::new(),
    });
    HarnessReport {
        stats: json!({"harness": "diff"}),
        failures: failures.kept,
        failure_count: failures.count,
    }
}

/// Runs the differential harness on all bases (see the module doc).
pub fn run(cfg: &DiffConfig) -> HarnessReport {
    run_on(cfg, BaseSet::All)
}

/// Runs the differential harness on the bases of `set`.
pub fn run_on(cfg: &DiffConfig, set: BaseSet) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let mut counters = Counters::default();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return early_report(cfg.seed, "", format!("no temp dir: {e}")),
    };
    let bases = match build_base_set(cfg.seed, dir.path(), set) {
        Ok(b) => b,
        Err(e) => {
            return early_report(
                cfg.seed,
                "bases",
                format!("building the base images failed: {e}"),
            );
        }
    };
    let work = dir.path().join("work");
    let _ = std::fs::create_dir_all(&work);
    // The undamaged bases must agree too.
    for (i, b) in bases.iter().enumerate() {
        if let Err(msg) = compare(b, &b.wal, &work, true, &mut counters) {
            counters.inc("disagreements");
            failures.push(Failure {
                harness: "diff",
                workload: b.label.clone(),
                case: i as u64,
                variant: "undamaged base".into(),
                seed: cfg.seed,
                message: msg,
                replay: String::new(),
            });
        }
    }
    let mut c = 0;
    while c < cfg.max_cases && Instant::now() < deadline {
        run_case(cfg.seed, c, &bases, &work, &mut counters, &mut failures);
        c += 1;
    }
    let concurrent: Vec<&BaseImage> = bases.iter().filter(|b| b.is_concurrent()).collect();
    let stats = json!({
        "harness": "diff",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "base_images": bases.iter().map(base_json).collect::<Vec<_>>(),
        "concurrent_bases": concurrent.len(),
        "concurrent_build_secs": concurrent.iter().map(|b| b.build_secs).sum::<f64>(),
        "cases": c,
        "concurrent_cases": counters.get("concurrent_cases"),
        "checks": counters.get("checks"),
        "books_checks": counters.get("books_checks"),
        "disagreements": counters.get("disagreements"),
        "integrity_checks": counters.get("integrity_checks"),
        "totals": counters.to_json(),
        "failures": failures.count,
    });
    HarnessReport {
        stats,
        failures: failures.kept,
        failure_count: failures.count,
    }
}

/// One entry of the stats' `base_images`.
fn base_json(b: &BaseImage) -> serde_json::Value {
    let bank = b.bank.as_ref().map(|k| {
        json!({"accounts": k.accounts, "total": k.total, "transfers": k.transfers,
               "members": k.members, "threads": k.threads, "commits": k.commits,
               "batches": k.batches, "conflicts": k.conflicts})
    });
    json!({
        "label": b.label,
        "page_size": b.page_size,
        "wal_bytes": b.wal.len(),
        "mx_frame": b.mx_frame,
        "db_bytes": b.db.len(),
        "build_secs": b.build_secs,
        "bank": bank,
    })
}

/// Replays case `c` (`cargo xtask diff-case`). A case on a concurrent base runs on a
/// freshly built one (another interleaving; the kept files are in [`kept_case_dir`]).
pub fn replay(seed: u64, c: u64) -> Result<HarnessReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bases = build_bases(seed, dir.path())?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut counters = Counters::default();
    let mut failures = FailureSink::default();
    run_case(seed, c, &bases, &work, &mut counters, &mut failures);
    let base = &bases[(c % bases.len() as u64) as usize];
    let note = base.is_concurrent().then(|| {
        format!(
            "case {c} is on the concurrent base {:?}, rebuilt with another interleaving; \
             the original files, if it failed, are in {}",
            base.label,
            kept_case_dir(seed, c).display()
        )
    });
    Ok(HarnessReport {
        stats: json!({"harness": "diff-replay", "case": c, "base": base.label,
                      "note": note, "counters": counters.to_json()}),
        failures: failures.kept,
        failure_count: failures.count,
    })
}

/// Re-runs the comparison on a case kept by a failure on a concurrent base (`dir` holds
/// `d.db`, `d.db-wal`, `undamaged.wal` and `case.json`).
pub fn replay_kept(dir: &Path) -> Result<HarnessReport, String> {
    let read = |name: &str| {
        let p = dir.join(name);
        std::fs::read(&p).map_err(|e| format!("read {}: {e}", p.display()))
    };
    let meta: serde_json::Value =
        serde_json::from_slice(&read("case.json")?).map_err(|e| format!("case.json: {e}"))?;
    let num = |v: &serde_json::Value, k: &str| {
        v[k].as_u64()
            .ok_or_else(|| format!("case.json: no number {k}"))
    };
    let bank = match &meta["bank"] {
        serde_json::Value::Null => None,
        b => Some(BankBase {
            accounts: u32::try_from(num(b, "accounts")?).map_err(|e| e.to_string())?,
            total: b["total"].as_i64().ok_or("case.json: no bank total")?,
            transfers: num(b, "transfers")?,
            members: num(b, "members")?,
            threads: num(b, "threads")?,
            commits: 0,
            batches: 0,
            conflicts: 0,
        }),
    };
    let base = BaseImage {
        label: meta["label"].as_str().unwrap_or("kept case").to_owned(),
        page_size: u32::try_from(num(&meta, "page_size")?).map_err(|e| e.to_string())?,
        db: read("d.db")?,
        wal: read("undamaged.wal")?,
        mx_frame: u32::try_from(num(&meta, "mx_frame")?).map_err(|e| e.to_string())?,
        bank,
        build_secs: 0.0,
    };
    let wal = read("d.db-wal")?;
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut counters = Counters::default();
    let mut failures = FailureSink::default();
    if let Err(message) = compare(&base, &wal, work.path(), true, &mut counters) {
        failures.push(Failure {
            harness: "diff",
            workload: base.label.clone(),
            case: num(&meta, "case")?,
            variant: "kept case".into(),
            seed: 0,
            message,
            replay: format!(
                "fsqlite_reliability::diff::replay_kept({:?})",
                dir.display()
            ),
        });
    }
    Ok(HarnessReport {
        stats: json!({"harness": "diff-replay-kept", "dir": dir.display().to_string(),
                      "counters": counters.to_json()}),
        failures: failures.kept,
        failure_count: failures.count,
    })
}
