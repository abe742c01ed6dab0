//! Differential recovery against SQLite (TESTING.md §2.8 (a), "Differential recovery").
//!
//! ```text
//! bases:  SQLite (rusqlite, bundled) writes WAL databases: page sizes 512, 1024, 4096,
//!         4096, 65536, each a seeded workload of inserts/updates/deletes with overflow
//!         pages (testkit SqliteWalDb::run_workload); the db, -wal and -shm are copied
//!         while the connection is open (nothing checkpointed)
//! case c: base = bases[c % n]; the -wal gets seeded damage (one to three of: bit flips
//!         anywhere, a bit flip in the WAL header or a frame header, truncation at any
//!         byte, a zeroed 512- or 4096-byte sector, a garbage tail); the -shm is dropped
//!   ours:   MemoryVfs with the db and damaged -wal; WalFile::scan -> mxFrame;
//!           Wal::open (recovery), read pages 1..=db_size
//!   SQLite: a temp dir with the db and damaged -wal; PRAGMA wal_checkpoint(PASSIVE)
//!           gives SQLite's mxFrame after its own recovery; wal_checkpoint(TRUNCATE) and
//!           read the database file (SQLite's committed state, page by page); every 8th
//!           case also PRAGMA integrity_check
//!   agree:  our mxFrame == SQLite's, our db_size == SQLite's page count, every page
//!           byte-identical, integrity_check == "ok"
//! ```
//!
//! Each disagreement is a failure with its seed and case number; replay with
//! `cargo xtask diff-case --seed S --case C`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_testkit::rng::Rng;
use fsqlite_testkit::sqlite::{
    SqliteWalDb, integrity_check, sqlite_checkpoint_copy, sqlite_page_images,
};
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{MemoryVfs, Vfs};
use fsqlite_wal::{SyncMode, Wal, WalFile, WalOptions};
use serde_json::json;

use crate::model::page_digest;
use crate::workloads::{observe, wal_path};
use crate::{Counters, Failure, FailureSink, HarnessReport, mix_seed, panic_text};

/// Page sizes of the base images, in order.
pub const BASE_PAGE_SIZES: [u32; 5] = [512, 1024, 4096, 4096, 65_536];

/// One SQLite-written database, as bytes.
#[derive(Clone, Debug)]
pub struct BaseImage {
    /// Page size.
    pub page_size: u32,
    /// The database file.
    pub db: Vec<u8>,
    /// The `-wal` file.
    pub wal: Vec<u8>,
    /// SQLite's own mxFrame of the undamaged WAL.
    pub mx_frame: u32,
}

/// Builds the base images for `seed` in `dir`.
pub fn build_bases(seed: u64, dir: &Path) -> Result<Vec<BaseImage>, String> {
    let mut out = Vec::new();
    for (i, ps) in BASE_PAGE_SIZES.iter().enumerate() {
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
            page_size: *ps,
            db: std::fs::read(&d).map_err(|e| format!("read {}: {e}", d.display()))?,
            wal: std::fs::read(&w).map_err(|e| format!("read {}: {e}", w.display()))?,
            mx_frame: mx,
        });
    }
    Ok(out)
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

/// What SQLite reads: `(mxFrame, page digests, integrity_check)`.
fn sqlite(
    db: &[u8],
    wal: &[u8],
    dir: &Path,
    integrity: bool,
) -> Result<(u32, Vec<u64>, Option<String>), String> {
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
    let pages = sqlite_page_images(&p).map_err(|e| format!("SQLite page images: {e}"))?;
    Ok((
        u32::try_from(log.max(0)).unwrap_or(0),
        pages.iter().map(|pg| page_digest(pg)).collect(),
        ic,
    ))
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
    let fail = |failures: &mut FailureSink, message: String| {
        failures.push(Failure {
            harness: "diff",
            workload: format!("sqlite page size {}", base.page_size),
            case: c,
            variant: applied.join("+"),
            seed,
            message,
            replay: format!("cargo xtask diff-case --seed {seed:#x} --case {c}"),
        });
    };
    match compare(base, &wal, dir, c.is_multiple_of(8), counters) {
        Ok(()) => counters.inc("agreements"),
        Err(msg) => {
            counters.inc("disagreements");
            fail(failures, msg);
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
    let theirs = sqlite(&base.db, wal, dir, integrity).map_err(|e| {
        counters.inc("sqlite_errors");
        format!("SQLite could not read the damaged copy: {e}")
    })?;
    let max_pages = theirs.1.len() as u32 * 2 + 16;
    let mine = match std::panic::catch_unwind(|| ours(&base.db, wal, base.page_size, max_pages)) {
        Ok(r) => r,
        Err(e) => Err(format!("panic: {}", panic_text(e.as_ref()))),
    };
    counters.inc("checks");
    let (mx, pages) = mine.map_err(|e| {
        format!(
            "our recovery failed where SQLite read mxFrame {}: {e}",
            theirs.0
        )
    })?;
    if mx < base.mx_frame {
        counters.inc("prefix_cut");
    }
    let mut problems = Vec::new();
    if mx != theirs.0 {
        problems.push(format!("mxFrame: ours {mx}, SQLite {}", theirs.0));
    }
    if pages.len() != theirs.1.len() {
        problems.push(format!(
            "database size: ours {} pages, SQLite {}",
            pages.len(),
            theirs.1.len()
        ));
    }
    let differing: Vec<usize> = pages
        .iter()
        .zip(&theirs.1)
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
    if let Some(ic) = &theirs.2 {
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

/// Runs the differential harness (see the module doc).
pub fn run(cfg: &DiffConfig) -> HarnessReport {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    let mut failures = FailureSink::default();
    let mut counters = Counters::default();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            failures.push(Failure {
                harness: "diff",
                workload: String::new(),
                case: 0,
                variant: String::new(),
                seed: cfg.seed,
                message: format!("no temp dir: {e}"),
                replay: String::new(),
            });
            return HarnessReport {
                stats: json!({"harness": "diff"}),
                failures: failures.kept,
                failure_count: failures.count,
            };
        }
    };
    let bases = match build_bases(cfg.seed, dir.path()) {
        Ok(b) => b,
        Err(e) => {
            failures.push(Failure {
                harness: "diff",
                workload: String::new(),
                case: 0,
                variant: "bases".into(),
                seed: cfg.seed,
                message: format!("building the SQLite base images failed: {e}"),
                replay: String::new(),
            });
            return HarnessReport {
                stats: json!({"harness": "diff"}),
                failures: failures.kept,
                failure_count: failures.count,
            };
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
                workload: format!("sqlite page size {}", b.page_size),
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
    let stats = json!({
        "harness": "diff",
        "seed": format!("{:#018x}", cfg.seed),
        "budget_secs": cfg.budget.as_secs_f64(),
        "elapsed_secs": start.elapsed().as_secs_f64(),
        "base_images": bases.iter().map(|b| json!({"page_size": b.page_size, "wal_bytes": b.wal.len(), "mx_frame": b.mx_frame, "db_bytes": b.db.len()})).collect::<Vec<_>>(),
        "cases": c,
        "checks": counters.get("checks"),
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

/// Replays case `c` (`cargo xtask diff-case`).
pub fn replay(seed: u64, c: u64) -> Result<HarnessReport, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bases = build_bases(seed, dir.path())?;
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let mut counters = Counters::default();
    let mut failures = FailureSink::default();
    run_case(seed, c, &bases, &work, &mut counters, &mut failures);
    Ok(HarnessReport {
        stats: json!({"harness": "diff-replay", "case": c, "counters": counters.to_json()}),
        failures: failures.kept,
        failure_count: failures.count,
    })
}
