//! A seeded connection workload and its reference model, shared by `crash_commit.rs` and
//! `fault_commit.rs` (TESTING.md §2.8 (a): "a reference model: `BTreeMap<PageNo, [u8]>` per
//! committed txn, plus the commit log").
//!
//! - [`Workload`]: a list of [`Step`]s (commits of one or many pages that grow or shrink the
//!   database, checkpoints of every mode, reopen without close, close + reopen) generated
//!   from one seed.
//! - [`Model`]: the database after every commit: `states[i]` is the state after commit `i`
//!   (`states[0]` is the empty database), each a size in pages and, per page, the number of
//!   the commit that last wrote it. Page contents are a pure function of
//!   `(page size, page, commit)` ([`content`]), so a state needs no page bytes.
//! - [`run`]: drives a [`Wal`] through the workload and records in a [`Progress`] the last
//!   **acknowledged** commit (its `commit` returned `Ok`) and the last **attempted** one.
//! - [`check_state`]: reads every page of a reopened database and names the model state it
//!   equals, which must lie in `acked..=attempted`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{MemoryVfs, Vfs};
use fsqlite_wal::{CheckpointMode, SyncMode, Wal, WalOptions};

/// One step of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Commit number `txn` (1-based): writes `pages`, then commits with `db_size`.
    Commit {
        /// The commit number (content tag).
        txn: u32,
        /// Pages written (ascending, distinct, all `<= db_size`).
        pages: Vec<u32>,
        /// Database size after the commit.
        db_size: u32,
    },
    /// A checkpoint in this mode (a `Busy` error or outcome is fine).
    Checkpoint(CheckpointMode),
    /// Drop the handle without closing it and open a new one.
    Reopen,
    /// `close` (checkpoint on close, delete `-wal`/`-shm`) and open a new one.
    CloseReopen,
}

/// A seeded list of steps.
#[derive(Clone, Debug)]
pub struct Workload {
    /// The database path (distinct per workload: the in-process recovery fence is per
    /// path, and tests run in parallel).
    pub db: PathBuf,
    /// The page size.
    pub page_size: u32,
    /// `WalOptions::auto_checkpoint` of the workload's connections (default `None`).
    pub auto_checkpoint: Option<u32>,
    /// The steps.
    pub steps: Vec<Step>,
}

/// The state after one commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// Database size in pages.
    pub db_size: u32,
    /// Page -> the commit that last wrote it (every page in `1..=db_size` is present).
    pub pages: BTreeMap<u32, u32>,
}

/// The states after every commit of a workload.
#[derive(Clone, Debug)]
pub struct Model {
    /// `states[i]`: after commit `i`; `states[0]` is the empty database.
    pub states: Vec<State>,
}

impl Workload {
    /// A workload of `commits` commits with checkpoints interleaved (every mode), one
    /// reopen and one close + reopen.
    pub fn generate(name: &str, seed: u64, page_size: u32, commits: u32, max_pages: u32) -> Self {
        let mut rng = Rng::new(seed);
        let mut steps = Vec::new();
        let mut size = 0u32;
        let modes = [
            CheckpointMode::Passive,
            CheckpointMode::Truncate,
            CheckpointMode::Full,
            CheckpointMode::Restart,
        ];
        let mut next_mode = 0usize;
        for txn in 1..=commits {
            // New size: grow (mostly), keep, or shrink.
            let new_size = if size == 0 {
                1 + rng.below(3) as u32
            } else {
                match rng.below(10) {
                    0 if size > 2 => size - 1 - rng.below(u64::from((size - 1).min(2))) as u32,
                    1..=4 => size + 1 + rng.below(u64::from(max_pages.min(4))) as u32,
                    _ => size,
                }
            };
            let mut pages: Vec<u32> = (size.min(new_size) + 1..=new_size).collect();
            let extra = if rng.chance(0.4) {
                1
            } else {
                1 + rng.below(u64::from(max_pages)) as u32
            };
            for _ in 0..extra {
                pages.push(1 + rng.below(u64::from(new_size)) as u32);
            }
            if txn == 1 || rng.chance(0.3) {
                pages.push(1);
            }
            pages.sort_unstable();
            pages.dedup();
            steps.push(Step::Commit {
                txn,
                pages,
                db_size: new_size,
            });
            size = new_size;
            if txn % 4 == 0 {
                steps.push(Step::Checkpoint(modes[next_mode % modes.len()]));
                next_mode += 1;
            }
            if txn == commits / 2 {
                steps.push(Step::Reopen);
            }
            if txn == commits * 3 / 4 {
                steps.push(Step::CloseReopen);
            }
        }
        Self {
            db: PathBuf::from(format!("/{name}/db")),
            page_size,
            auto_checkpoint: None,
            steps,
        }
    }

    /// The reference model of this workload.
    pub fn model(&self) -> Model {
        let mut states = vec![State::default()];
        for step in &self.steps {
            if let Step::Commit {
                txn,
                pages,
                db_size,
            } = step
            {
                let mut s = states.last().cloned().unwrap_or_default();
                for p in pages {
                    s.pages.insert(*p, *txn);
                }
                s.pages.retain(|p, _| *p <= *db_size);
                s.db_size = *db_size;
                assert_eq!(
                    s.pages.len(),
                    *db_size as usize,
                    "workload bug: a page below the size was never written"
                );
                states.push(s);
            }
        }
        Model { states }
    }

    /// Number of commits.
    pub fn commits(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Commit { .. }))
            .count()
    }
}

/// The bytes of `page` as written by commit `txn`: a pseudo-random pattern of the pair;
/// page 1 starts with a SQLite database header in WAL mode (bytes 18/19 = 2).
pub fn content(page_size: u32, page: u32, txn: u32) -> Vec<u8> {
    let ps = page_size as usize;
    let mut v = vec![0u8; ps];
    let mut x = (u64::from(page) << 32 | u64::from(txn)) ^ 0x5DEE_CE66_D1CE_4E5B;
    for chunk in v.chunks_mut(8) {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    if page == 1 {
        v[..16].copy_from_slice(b"SQLite format 3\0");
        let enc = if page_size == 65_536 {
            1u16
        } else {
            page_size as u16
        };
        v[16..18].copy_from_slice(&enc.to_be_bytes());
        v[18] = 2;
        v[19] = 2;
        v[20] = 0;
        v[21] = 64;
        v[22] = 32;
        v[23] = 32;
        v[24..28].copy_from_slice(&txn.to_be_bytes());
    }
    v
}

/// Where a workload run got to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The last commit whose `commit` returned `Ok` (0: none).
    pub acked: u32,
    /// The last commit whose `commit` was called (0: none).
    pub attempted: u32,
    /// Steps completed.
    pub steps_done: usize,
    /// Busy outcomes or errors of checkpoints.
    pub checkpoint_busy: u32,
}

/// The options every workload connection uses.
pub fn options(page_size: u32) -> WalOptions {
    WalOptions {
        sync: SyncMode::Full,
        page_size,
        busy_timeout: Duration::from_millis(10),
        auto_checkpoint: None,
        checkpoint_on_close: true,
    }
}

/// Hooks a run applies to each connection it opens.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunFlags {
    /// Turn on [`Wal::set_skip_checkpoint_barrier_for_tests`].
    pub skip_barrier: bool,
}

fn open_conn<V: Vfs>(cx: &Cx, vfs: &Arc<V>, wl: &Workload, flags: RunFlags) -> Result<Wal<V>> {
    let opts = WalOptions {
        auto_checkpoint: wl.auto_checkpoint,
        ..options(wl.page_size)
    };
    let mut w = Wal::open(cx, Arc::clone(vfs), &wl.db, opts)?;
    w.set_skip_checkpoint_barrier_for_tests(flags.skip_barrier);
    Ok(w)
}

fn page(n: u32) -> PageNumber {
    PageNumber::new(n).expect("page numbers start at 1")
}

/// Runs `wl` on `vfs` from its first step, stopping at the first error (returned).
/// `progress` is updated as the run goes, so it is valid after an error too.
/// `after_step` is called after every completed step with the live connection.
pub fn run<V: Vfs>(
    cx: &Cx,
    vfs: &Arc<V>,
    wl: &Workload,
    flags: RunFlags,
    progress: &mut Progress,
    mut after_step: impl FnMut(&mut Wal<V>, &Progress) -> Result<()>,
) -> Result<()> {
    let mut w = Some(open_conn(cx, vfs, wl, flags)?);
    for step in &wl.steps {
        let conn = w
            .as_mut()
            .ok_or_else(|| FrankenError::internal("no connection"))?;
        match step {
            Step::Commit {
                txn,
                pages,
                db_size,
            } => {
                let mut t = conn.begin_write(cx)?;
                for p in pages {
                    t.write_page(cx, page(*p), &content(wl.page_size, *p, *txn))?;
                }
                progress.attempted = *txn;
                t.commit(cx, *db_size)?;
                progress.acked = *txn;
            }
            Step::Checkpoint(mode) => match conn.checkpoint(cx, *mode) {
                Ok(o) => {
                    if o.busy {
                        progress.checkpoint_busy += 1;
                    }
                }
                Err(FrankenError::Busy) => progress.checkpoint_busy += 1,
                Err(e) => return Err(e),
            },
            Step::Reopen => {
                drop(w.take());
                w = Some(open_conn(cx, vfs, wl, flags)?);
            }
            Step::CloseReopen => {
                if let Some(c) = w.take() {
                    c.close(cx)?;
                }
                w = Some(open_conn(cx, vfs, wl, flags)?);
            }
        }
        progress.steps_done += 1;
        if let Some(conn) = w.as_mut() {
            after_step(conn, progress)?;
        }
    }
    if let Some(c) = w.take() {
        c.close(cx)?;
    }
    Ok(())
}

/// What a reopened database holds: its size and every page.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Database size in pages.
    pub db_size: u32,
    /// Pages `1..=db_size`.
    pub pages: Vec<Vec<u8>>,
}

/// Reads every page of the current snapshot of `w`.
pub fn observe<V: Vfs>(cx: &Cx, w: &mut Wal<V>) -> Result<Observed> {
    let ps = w.page_size() as usize;
    let r = w.begin_read(cx)?;
    let db_size = r.db_size();
    let mut pages = Vec::with_capacity(db_size as usize);
    for p in 1..=db_size {
        let mut buf = vec![0u8; ps];
        r.read_page(cx, page(p), &mut buf)?;
        pages.push(buf);
    }
    Ok(Observed { db_size, pages })
}

/// Whether `obs` equals model state `s`.
pub fn equals_state(page_size: u32, obs: &Observed, s: &State) -> bool {
    obs.db_size == s.db_size
        && obs.pages.iter().enumerate().all(|(i, got)| {
            s.pages
                .get(&(i as u32 + 1))
                .is_some_and(|&txn| *got == content(page_size, i as u32 + 1, txn))
        })
}

/// The index of the model state `obs` equals, searched in `lo..=hi` first and then in all
/// states (to name a wrong one in the error).
pub fn check_state(
    page_size: u32,
    model: &Model,
    obs: &Observed,
    lo: u32,
    hi: u32,
) -> std::result::Result<u32, String> {
    for j in lo..=hi {
        if equals_state(page_size, obs, &model.states[j as usize]) {
            return Ok(j);
        }
    }
    let other = (0..model.states.len()).find(|&j| equals_state(page_size, obs, &model.states[j]));
    if let Some(j) = other {
        return Err(format!(
            "the database equals state {j}, outside acknowledged..attempted = {lo}..={hi}"
        ));
    }
    let first_bad = (1..=obs.db_size).find(|&p| {
        (lo..=hi).all(|j| {
            let s = &model.states[j as usize];
            s.pages
                .get(&p)
                .is_none_or(|&txn| obs.pages[p as usize - 1] != content(page_size, p, txn))
        })
    });
    Err(format!(
        "the database (size {} pages) equals no committed state (expected one of \
         {lo}..={hi}, sizes {:?}); first page matching none of them: {first_bad:?}",
        obs.db_size,
        (lo..=hi)
            .map(|j| model.states[j as usize].db_size)
            .collect::<Vec<_>>()
    ))
}

/// Opens `vfs` (after a crash or faults) and checks that it holds a state in
/// `lo..=hi`. Returns the state index.
pub fn reopen_and_check(
    cx: &Cx,
    vfs: &MemoryVfs,
    wl: &Workload,
    model: &Model,
    lo: u32,
    hi: u32,
) -> std::result::Result<u32, String> {
    let vfs = Arc::new(vfs.clone());
    let mut w = Wal::open(cx, vfs, &wl.db, options(wl.page_size))
        .map_err(|e| format!("reopen failed: {e}"))?;
    let obs =
        observe(cx, &mut w).map_err(|e| format!("reading the reopened database failed: {e}"))?;
    check_state(wl.page_size, model, &obs, lo, hi)
}
