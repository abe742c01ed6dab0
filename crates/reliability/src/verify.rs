//! What every harness checks after a recovery, on a [`MemoryVfs`] holding the files a
//! crash or fault left behind.
//!
//! ```text
//! verify_recovered(vfs, model, bound):
//!   1. open    Wal::open (recovery rebuilds the WAL-index from the WAL's valid prefix)
//!   2. oracle  read pages 1..=db_size through one ReadTxn; Model::judge(observed, bound)
//!   3. shape   check_structure: our WalFile::scan == the independent reference scan
//!              ([`crate::walgen::scan`])
//!              (mxFrame, nPage); the connection's WAL-index header mxFrame == the scan's;
//!              the -shm header read back is consistent (copies equal, isInit, checksum)
//!              and nBackfill <= nBackfillAttempted <= mxFrame
//!   4. continue (optional) commit one more transaction on the recovered connection
//!              (the checksum chain must continue after an uncommitted tail), read it,
//!              PASSIVE checkpoint (must complete: nBackfill == mxFrame), read again,
//!              drop, reopen (a second recovery), read again
//! ```
//!
//! Inside the fault model ([`Bound::Durable`]) every failure of steps 1–4 is a violation.
//! Beyond it ([`Bound::AnyPrefix`]) a clean error at step 1, or a state that matches no
//! committed state at step 2, is only counted ("detects, never lies" cannot be checked for
//! pages of the database file, which carry no checksum); a panic is still a violation.

use std::path::Path;
use std::sync::Arc;

use fsqlite_error::Result;
use fsqlite_testkit::sqlite::read_shm_header;
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{MemoryFile, MemoryVfs, Vfs, VfsFile};
use fsqlite_wal::wal_index::WALINDEX_PGSZ;
use fsqlite_wal::{CheckpointMode, Wal, WalFile};

use crate::Counters;
use crate::model::{Bound, Model};
use crate::workloads::{Workload, commit_images, observe, wal_path};

/// Transaction numbers of continuation commits start here (far above any workload's).
pub const CONTINUATION_TXN_BASE: u64 = 1 << 40;

/// How a verification ended when it did not find a violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verified {
    /// The recovered database equals committed state `state` and every check passed.
    Matched {
        /// The state index.
        state: usize,
    },
    /// Beyond the fault model: the open failed cleanly.
    CleanError(String),
    /// Beyond the fault model: the database matches no committed state.
    Unmatched(String),
}

/// The `-shm` header fields a structural check reads back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShmCounters {
    /// `mxFrame` of the header.
    pub mx_frame: u32,
    /// `nBackfill`.
    pub n_backfill: u32,
    /// `nBackfillAttempted`.
    pub n_backfill_attempted: u32,
}

/// Reads region 0 of `db`'s `-shm` through a new raw handle (the connection must still
/// hold it, else the first-opener rule resets it) and checks the header is consistent and
/// `nBackfill <= nBackfillAttempted <= mxFrame`.
pub fn read_shm_counters<V: Vfs>(
    cx: &Cx,
    vfs: &V,
    db: &Path,
) -> std::result::Result<ShmCounters, String> {
    let (mut f, _) = vfs
        .open(
            cx,
            Some(db),
            VfsOpenFlags::READWRITE | VfsOpenFlags::MAIN_DB,
        )
        .map_err(|e| format!("raw open of {} failed: {e}", db.display()))?;
    let region = f
        .shm_map(cx, 0, WALINDEX_PGSZ as u32, false)
        .map_err(|e| format!("shm_map failed: {e}"))?
        .ok_or_else(|| "the -shm has no region 0 after open".to_owned())?;
    let mut head = vec![0u8; fsqlite_testkit::sqlite::SHM_HEADER_SIZE];
    region.read_bytes(0, &mut head);
    drop(f);
    let h = read_shm_header(&head).map_err(|e| format!("-shm header unreadable: {e}"))?;
    if !h.is_consistent() {
        return Err("the -shm header is not consistent after open (copies differ, isInit 0 or bad checksum)".to_owned());
    }
    if !(h.n_backfill <= h.n_backfill_attempted && h.n_backfill_attempted <= h.mx_frame) {
        return Err(format!(
            "-shm counters violate nBackfill <= nBackfillAttempted <= mxFrame: {} / {} / {}",
            h.n_backfill, h.n_backfill_attempted, h.mx_frame
        ));
    }
    Ok(ShmCounters {
        mx_frame: h.mx_frame,
        n_backfill: h.n_backfill,
        n_backfill_attempted: h.n_backfill_attempted,
    })
}

/// Step 3 of the module doc. `wal` is the connection that just opened (and recovered).
pub fn check_structure(
    cx: &Cx,
    vfs: &MemoryVfs,
    db: &Path,
    wal: &Wal<MemoryVfs>,
) -> std::result::Result<(), String> {
    let wp = wal_path(db);
    let (file, _) = vfs
        .open(cx, Some(&wp), VfsOpenFlags::READWRITE | VfsOpenFlags::WAL)
        .map_err(|e| format!("raw open of the WAL failed: {e}"))?;
    let ours = WalFile::scan(cx, &file, |_, _, _| Ok(()))
        .map_err(|e| format!("WalFile::scan failed: {e}"))?;
    drop(file);
    let bytes = vfs.live_contents(&wp).unwrap_or_default();
    let s = crate::walgen::scan(&bytes);
    let (ind_mx, ind_npage) = (s.mx_frame, s.n_page);
    if (ours.mx_frame, ours.n_page) != (ind_mx, ind_npage) {
        return Err(format!(
            "WalFile::scan says mxFrame {} nPage {} ({}), the independent scan says {ind_mx} / {ind_npage}",
            ours.mx_frame, ours.n_page, ours.stop
        ));
    }
    let idx = wal.cached_header();
    if idx.mx_frame != ours.mx_frame {
        return Err(format!(
            "the recovered WAL-index has mxFrame {} but the WAL's valid prefix ends at commit frame {}",
            idx.mx_frame, ours.mx_frame
        ));
    }
    let c = read_shm_counters(cx, vfs, db)?;
    if c.mx_frame != ours.mx_frame {
        return Err(format!(
            "the -shm header read back has mxFrame {} but the WAL's valid prefix ends at {}",
            c.mx_frame, ours.mx_frame
        ));
    }
    Ok(())
}

/// Steps 1–4 of the module doc on `vfs` (already crashed or faulted and cleared).
/// `shm_hold` is a raw handle keeping a deliberately damaged `-shm` attached while the
/// connection opens; it is dropped right after. `continuation` is the seed of step 4's
/// pages (`None` skips step 4).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per harness; a struct adds nothing"
)]
pub fn verify_recovered(
    cx: &Cx,
    vfs: &MemoryVfs,
    db: &Path,
    w: &Workload,
    model: &Model,
    bound: Bound,
    continuation: Option<u64>,
    shm_hold: Option<MemoryFile>,
    counters: &mut Counters,
) -> std::result::Result<Verified, String> {
    let vfs_arc = Arc::new(vfs.clone());
    let max_pages = model.max_db_size().saturating_mul(2).saturating_add(16);
    let opened = Wal::open(cx, Arc::clone(&vfs_arc), db, w.verify_options());
    // The damaged -shm had to be attached while the connection opened; no longer.
    drop(shm_hold);
    let mut wal = match opened {
        Ok(c) => c,
        Err(e) if bound == Bound::AnyPrefix => {
            counters.inc("beyond_model_clean_errors");
            return Ok(Verified::CleanError(e.to_string()));
        }
        Err(e) => return Err(format!("reopen failed: {e}")),
    };
    let obs = match observe(cx, &mut wal, max_pages) {
        Ok(o) => o,
        Err(e) if bound == Bound::AnyPrefix => {
            counters.inc("beyond_model_clean_errors");
            return Ok(Verified::CleanError(e.to_string()));
        }
        Err(e) => return Err(format!("reading the recovered database failed: {e}")),
    };
    let state = match model.judge(&obs, bound) {
        Ok(i) => i,
        Err(v) if bound == Bound::AnyPrefix => {
            counters.inc("beyond_model_unmatched");
            return Ok(Verified::Unmatched(v.to_string()));
        }
        Err(v) => return Err(v.to_string()),
    };
    if bound == Bound::AnyPrefix && state < model.acked() {
        counters.inc("beyond_model_older_than_acked");
    }
    counters.inc("oracle_checks");
    if state == model.attempted() && model.attempted() > model.acked() {
        counters.inc("recovered_unacknowledged_commit");
    }
    check_structure(cx, vfs, db, &wal)?;
    counters.inc("structural_checks");
    if let Some(seed) = continuation {
        continue_after_recovery(cx, &vfs_arc, db, w, model, state, seed, wal)?;
        counters.inc("continuations");
    }
    Ok(Verified::Matched { state })
}

/// Step 4 of the module doc.
#[allow(clippy::too_many_arguments, reason = "internal")]
fn continue_after_recovery(
    cx: &Cx,
    vfs: &Arc<MemoryVfs>,
    db: &Path,
    w: &Workload,
    model: &Model,
    state: usize,
    seed: u64,
    mut wal: Wal<MemoryVfs>,
) -> std::result::Result<(), String> {
    let mut m = model.continue_from(state);
    let base = m.states()[state].db_size;
    let (pages, db_size) = if base == 0 {
        (vec![1], 1)
    } else {
        (vec![1, base + 1], base + 1)
    };
    let txn = CONTINUATION_TXN_BASE + state as u64;
    let images = commit_images(seed, txn, &pages, w.page_size, db_size);
    let digests: Vec<(u32, u64)> = images
        .iter()
        .map(|(p, b)| (*p, crate::model::page_digest(b)))
        .collect();
    let idx = m.attempt(txn, &digests, db_size);
    crate::workloads::commit_pages(cx, &mut wal, &images, db_size)
        .map_err(|e| format!("a commit after recovery failed: {e}"))?;
    m.ack(idx);
    let max = m.max_db_size() + 16;
    let expect = |wal: &mut Wal<MemoryVfs>, when: &str| -> std::result::Result<(), String> {
        let obs = observe(cx, wal, max).map_err(|e| format!("read {when} failed: {e}"))?;
        match m.judge(&obs, Bound::Durable) {
            Ok(i) if i == idx => Ok(()),
            Ok(i) => Err(format!(
                "{when}: read state {i}, expected the continuation state {idx}"
            )),
            Err(v) => Err(format!("{when}: {v}")),
        }
    };
    expect(&mut wal, "after the commit following recovery")?;
    let out = wal
        .checkpoint(cx, CheckpointMode::Passive)
        .map_err(|e| format!("a PASSIVE checkpoint after recovery failed: {e}"))?;
    if out.busy || out.checkpointed_frames != out.log_frames {
        return Err(format!(
            "a PASSIVE checkpoint with no other connection did not complete: {out:?}"
        ));
    }
    let c = read_shm_counters(cx, vfs.as_ref(), db)?;
    if c.n_backfill != c.mx_frame {
        return Err(format!(
            "after a complete checkpoint nBackfill {} != mxFrame {}",
            c.n_backfill, c.mx_frame
        ));
    }
    expect(&mut wal, "after the checkpoint following recovery")?;
    drop(wal);
    let mut again: Wal<MemoryVfs> = Wal::open(cx, Arc::clone(vfs), db, w.verify_options())
        .map_err(|e| format!("the second reopen failed: {e}"))?;
    expect(&mut again, "after the second reopen")?;
    Ok(())
}

/// Opens and reads the database once, only to count the VFS operations that takes (the
/// compound-crash sweep uses it to place a crash inside a reopen).
pub fn reopen_ops(
    cx: &Cx,
    vfs: &MemoryVfs,
    db: &Path,
    w: &Workload,
    max_pages: u32,
) -> Result<u64> {
    let before = vfs.op_count();
    let mut wal = Wal::open(cx, Arc::new(vfs.clone()), db, w.verify_options())?;
    let _ = observe(cx, &mut wal, max_pages);
    drop(wal);
    Ok(vfs.op_count() - before)
}
