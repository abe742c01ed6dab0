//! Checkpoint planning: every decision of SQLite's `walCheckpoint` as a pure function.
//!
//! Nothing here does I/O or takes a lock. The caller (the connection) reads the shm,
//! takes the locks and passes what it saw; these functions say what to do next;
//! [`crate::checkpoint_executor`] does the copying. Keeping the decisions pure lets unit
//! tests and the loom models (`tests/loom_checkpoint.rs`) run exactly the code the real
//! checkpoint runs.
//!
//! # The algorithm (FORMAT.md §6 and §7.4), and the function for each step
//!
//! Precondition: `WAL_CKPT_LOCK` is held exclusive and the WAL-index header has been read
//! (`mx_frame`, `n_page`, salts). FULL/RESTART/TRUNCATE also hold `WAL_WRITE_LOCK`.
//!
//! 1. If `nBackfill < mxFrame`:
//!    1. **mxSafeFrame** ([`compute_safe_frame`]): start from `mxFrame`; for each read
//!       slot `i` in `1..N` whose mark is below the running safe frame, try
//!       `READ_LOCK(i)` exclusive. Acquired: nobody uses the slot, so store
//!       `aReadMark[1] = safe frame` (slot 1) or [`READMARK_NOT_USED`] (slots ≥ 2) *while
//!       holding the lock*, then unlock. Busy: a live reader needs frames up to its mark,
//!       so the safe frame drops to that mark and the busy handler is not used for the
//!       remaining slots.
//!    2. If `nBackfill < mxSafeFrame`, build the page-ordered list of frames to copy
//!       ([`plan_backfill`]): the newest frame of each page among frames
//!       `(nBackfill, mxSafeFrame]`, pages `<= nPage` only, sorted by page and coalesced
//!       into runs of adjacent pages.
//!    3. Take `READ_LOCK(0)` exclusive (keeps out "database-file-only" readers).
//!    4. **Salt re-check** ([`salt_recheck`], SQLite 3.54's fix): if the live WAL-index
//!       salts differ from the cached ones, the WAL was restarted since the header was
//!       read, the plan describes frames of a dead generation: do nothing.
//!       [`decide_backfill`] combines steps 2–4.
//!    5. Set `nBackfillAttempted = mxSafeFrame`; fsync the WAL; check the database size
//!       ([`check_db_size_before_backfill`]); copy the pages in page order.
//!    6. **After the copy** ([`plan_after_copy`]): if `mxSafeFrame` equals the live
//!       `mxFrame` the copy is complete: truncate the database to `nPage` pages and fsync
//!       it. Then (our addition, ARCHITECTURE.md "Checkpoint") verify the pages written;
//!       only then set `nBackfill = mxSafeFrame` and release `READ_LOCK(0)`.
//! 2. **Mode follow-up** ([`plan_mode_follow_up`]): modes other than PASSIVE return BUSY if
//!    `nBackfill < mxFrame`; RESTART and TRUNCATE wait (busy handler) for `READ_LOCK(1..N)`
//!    exclusive; TRUNCATE then restarts the WAL header and truncates the WAL to 0 bytes.
//!    The result is a [`CheckpointOutcome`] ([`checkpoint_outcome`]).
//!
//! # Invariant `BACKFILL-1`
//!
//! `nBackfill <= nBackfillAttempted <= mxFrame` ([`check_backfill_invariant`]), whenever
//! observed by a holder of `WAL_CKPT_LOCK` or `WAL_WRITE_LOCK` (a restart writes
//! `mxFrame = 0` just before it zeroes the counters, under `WAL_WRITE_LOCK` and all read
//! locks). It holds because `nBackfillAttempted` is raised *before* the copy and
//! `nBackfill` only *after* it (checked by the `backfill_counters` loom model).

use std::fmt;
use std::str::FromStr;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::PageNumber;

use crate::wal_index::READMARK_NOT_USED;

/// The default limit on a coalesced run: 1 MiB of pages (see [`max_run_pages_for`]).
pub const DEFAULT_MAX_RUN_BYTES: u32 = 1024 * 1024;

/// SQLite's checkpoint modes (`SQLITE_CHECKPOINT_*`; NOOP is not a mode here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum CheckpointMode {
    /// Copy what no reader needs; never wait, never take the write lock.
    #[default]
    Passive,
    /// Take the write lock (waiting), copy everything, BUSY if readers prevented that.
    Full,
    /// FULL, then wait until no reader uses the WAL, so the next writer restarts it.
    Restart,
    /// RESTART, then reset the WAL header and truncate the WAL file to 0 bytes.
    Truncate,
}

impl CheckpointMode {
    /// Every mode, in SQLite's numeric order.
    pub const ALL: [CheckpointMode; 4] = [Self::Passive, Self::Full, Self::Restart, Self::Truncate];

    /// SQLite's value (`SQLITE_CHECKPOINT_PASSIVE` = 0 … `TRUNCATE` = 3).
    pub const fn sqlite_value(self) -> i32 {
        match self {
            Self::Passive => 0,
            Self::Full => 1,
            Self::Restart => 2,
            Self::Truncate => 3,
        }
    }

    /// The mode with SQLite's value `v` (`None` for NOOP = -1 and anything out of range).
    pub const fn from_sqlite_value(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::Passive),
            1 => Some(Self::Full),
            2 => Some(Self::Restart),
            3 => Some(Self::Truncate),
            _ => None,
        }
    }

    /// The lower-case name used by `PRAGMA wal_checkpoint(...)`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Passive => "passive",
            Self::Full => "full",
            Self::Restart => "restart",
            Self::Truncate => "truncate",
        }
    }

    /// True for FULL, RESTART and TRUNCATE: they take `WAL_WRITE_LOCK` (waiting) and use
    /// the busy handler for read marks and `READ_LOCK(0)`.
    pub const fn uses_busy_handler(self) -> bool {
        !matches!(self, Self::Passive)
    }

    /// True for RESTART and TRUNCATE: they wait for every WAL reader to finish.
    pub const fn waits_for_readers(self) -> bool {
        matches!(self, Self::Restart | Self::Truncate)
    }

    /// True for TRUNCATE: the WAL header is reset and the file truncated to 0 bytes.
    pub const fn truncates_wal(self) -> bool {
        matches!(self, Self::Truncate)
    }
}

impl fmt::Display for CheckpointMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for CheckpointMode {
    type Err = FrankenError;

    /// Parses `passive`, `full`, `restart`, `truncate` (any case) or SQLite's numbers.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim();
        for m in Self::ALL {
            if t.eq_ignore_ascii_case(m.as_str()) {
                return Ok(m);
            }
        }
        t.parse::<i32>()
            .ok()
            .and_then(Self::from_sqlite_value)
            .ok_or_else(|| {
                FrankenError::out_of_range(
                    "checkpoint mode (passive, full, restart or truncate)",
                    s,
                )
            })
    }
}

/// What a checkpoint reports, as `PRAGMA wal_checkpoint` does: `(busy, log, checkpointed)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CheckpointOutcome {
    /// True when the checkpoint could not do all its mode asks (SQLITE_BUSY).
    pub busy: bool,
    /// Frames in the WAL (`mxFrame`); 0 after a successful TRUNCATE.
    pub log_frames: u32,
    /// Frames copied into the database (`nBackfill`); 0 after a successful TRUNCATE.
    pub checkpointed_frames: u32,
}

/// The result of trying a lock without waiting (or after the busy handler gave up).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockTry {
    /// The lock was taken.
    Acquired,
    /// Someone else holds it.
    Busy,
}

/// One request of [`compute_safe_frame`] to its lock callback.
///
/// The callback must try `READ_LOCK(slot)` **exclusive** (waiting through the busy
/// handler only when `use_busy_handler`); if it gets the lock it must store `new_mark`
/// into `aReadMark[slot]` **before** releasing the lock, then return
/// [`LockTry::Acquired`]. Storing after the release would let a reader claim the slot in
/// between and then lose its mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotAttempt {
    /// The read slot (`1..N`).
    pub slot: usize,
    /// The mark the caller saw in the slot.
    pub mark_seen: u32,
    /// The mark to store if the lock is acquired.
    pub new_mark: u32,
    /// Whether the busy handler may be used for this attempt.
    pub use_busy_handler: bool,
}

/// What [`compute_safe_frame`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SafeFrame<const N: usize> {
    /// `mxSafeFrame`: frames above it must not be copied.
    pub safe_frame: u32,
    /// The marks as they are after the callbacks stored theirs (the input where a slot was
    /// busy or not tried).
    pub marks_after: [u32; N],
    /// Bit `i` set: slot `i` was acquired and its mark rewritten.
    pub rewritten_slots: u32,
    /// Bit `i` set: slot `i` was busy and capped the safe frame.
    pub busy_slots: u32,
}

/// `mxSafeFrame` (FORMAT.md §6, "Effect on checkpoint"): see the module doc, step 1.1.
/// `marks` is the `aReadMark` array as read (slot 0 is ignored); `try_slot` is called for
/// each slot whose mark is below the running safe frame (see [`SlotAttempt`] for its
/// contract).
pub fn compute_safe_frame<const N: usize>(
    mx_frame: u32,
    marks: &[u32; N],
    mode: CheckpointMode,
    mut try_slot: impl FnMut(SlotAttempt) -> LockTry,
) -> SafeFrame<N> {
    match try_compute_safe_frame(mx_frame, marks, mode, |a| Ok(try_slot(a))) {
        Ok(s) => s,
        Err(_) => unreachable!("the callback cannot fail"),
    }
}

/// [`compute_safe_frame`] with a fallible callback: a lock error other than busy ends the
/// computation with that error (SQLite's `goto walcheckpoint_out`).
pub fn try_compute_safe_frame<const N: usize>(
    mx_frame: u32,
    marks: &[u32; N],
    mode: CheckpointMode,
    mut try_slot: impl FnMut(SlotAttempt) -> Result<LockTry>,
) -> Result<SafeFrame<N>> {
    let mut safe = mx_frame;
    let mut marks_after = *marks;
    let mut use_busy = mode.uses_busy_handler();
    let mut rewritten = 0u32;
    let mut busy = 0u32;
    for (i, &seen) in marks.iter().enumerate().skip(1) {
        if seen >= safe {
            continue;
        }
        let new_mark = if i == 1 { safe } else { READMARK_NOT_USED };
        let attempt = SlotAttempt {
            slot: i,
            mark_seen: seen,
            new_mark,
            use_busy_handler: use_busy,
        };
        match try_slot(attempt)? {
            LockTry::Acquired => {
                marks_after[i] = new_mark;
                rewritten |= 1 << i;
            }
            LockTry::Busy => {
                safe = seen;
                use_busy = false;
                busy |= 1 << i;
            }
        }
    }
    Ok(SafeFrame {
        safe_frame: safe,
        marks_after,
        rewritten_slots: rewritten,
        busy_slots: busy,
    })
}

/// SQLite's salt re-check after taking `READ_LOCK(0)` exclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaltRecheck {
    /// The WAL is the generation the plan was made for.
    Proceed,
    /// The WAL was restarted since the header was read: copy nothing, change nothing.
    WalRestarted,
}

/// Compares the cached header's salts with the live WAL-index salts (step 1.4).
pub fn salt_recheck(cached_salt: [u32; 2], live_salt: [u32; 2]) -> SaltRecheck {
    if cached_salt == live_salt {
        SaltRecheck::Proceed
    } else {
        SaltRecheck::WalRestarted
    }
}

/// Whether to copy, decided after `READ_LOCK(0)` was taken (steps 1.2–1.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackfillDecision {
    /// `nBackfill >= mxSafeFrame`: nothing to copy.
    NothingToCopy,
    /// The WAL was restarted meanwhile: do nothing (leave every counter alone).
    WalRestarted,
    /// Copy frames `(from_exclusive, to_inclusive]`: set `nBackfillAttempted =
    /// to_inclusive`, sync the WAL, copy.
    Copy {
        /// The live `nBackfill`.
        from_exclusive: u32,
        /// `mxSafeFrame`.
        to_inclusive: u32,
    },
}

/// Combines the live `nBackfill`, the safe frame and the salt re-check (steps 1.2–1.4).
pub fn decide_backfill(
    live_n_backfill: u32,
    safe_frame: u32,
    cached_salt: [u32; 2],
    live_salt: [u32; 2],
) -> BackfillDecision {
    if salt_recheck(cached_salt, live_salt) == SaltRecheck::WalRestarted {
        return BackfillDecision::WalRestarted;
    }
    if live_n_backfill >= safe_frame {
        return BackfillDecision::NothingToCopy;
    }
    BackfillDecision::Copy {
        from_exclusive: live_n_backfill,
        to_inclusive: safe_frame,
    }
}

/// Pages adjacent in the database, copied by one write: page `first_page + k` comes from
/// WAL frame `frames[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillRun {
    /// The first page of the run.
    pub first_page: PageNumber,
    /// The frame holding each page of the run, in page order (never empty).
    pub frames: Vec<u32>,
}

impl BackfillRun {
    /// Pages in the run.
    pub fn page_count(&self) -> u32 {
        self.frames.len() as u32
    }

    /// `(page, frame)` for each page of the run, in page order.
    pub fn pages(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let first = self.first_page.get();
        self.frames
            .iter()
            .enumerate()
            .map(move |(k, &f)| (first + k as u32, f))
    }
}

/// The page-ordered copy plan of one checkpoint (step 1.2).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BackfillPlan {
    /// Frames at or below this (`nBackfill`) were skipped.
    pub from_exclusive: u32,
    /// Frames above this (`mxSafeFrame`) were skipped.
    pub to_inclusive: u32,
    /// Pages above this (`nPage`) were skipped.
    pub n_page: u32,
    /// The runs, in ascending page order, none longer than the run limit.
    pub runs: Vec<BackfillRun>,
    /// Frames in range that were older versions of a page also in a newer frame.
    pub superseded_frames: u32,
    /// Frames in range whose page is above `n_page` (the database shrank).
    pub skipped_beyond_n_page: u32,
}

impl BackfillPlan {
    /// Pages to copy.
    pub fn page_count(&self) -> u64 {
        self.runs.iter().map(|r| r.frames.len() as u64).sum()
    }

    /// True when there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }
}

/// The run limit in pages for a byte limit (at least one page).
pub fn max_run_pages_for(page_size: u32, max_run_bytes: u32) -> u32 {
    (max_run_bytes / page_size.max(1)).max(1)
}

/// Builds the copy plan (step 1.2) from `(page, frame)` entries (the WAL-index's
/// `aPgno`: frame `f` holds page `p`). Kept: frames in `(n_backfill, safe_frame]` and pages
/// in `1..=n_page`; of several frames for one page only the newest (largest frame) is
/// kept. The pages are sorted and coalesced into runs of adjacent pages of at most
/// `max_run_pages` pages (0 is taken as 1). Entries with page 0 or frame 0 (empty index
/// slots) are ignored.
pub fn plan_backfill(
    entries: impl IntoIterator<Item = (u32, u32)>,
    n_backfill: u32,
    safe_frame: u32,
    n_page: u32,
    max_run_pages: u32,
) -> BackfillPlan {
    let max_run = max_run_pages.max(1) as usize;
    let mut skipped_beyond = 0u32;
    let mut keys: Vec<u64> = entries
        .into_iter()
        .filter(|&(p, f)| p != 0 && f > n_backfill && f <= safe_frame)
        .filter(|&(p, _)| {
            let keep = p <= n_page;
            if !keep {
                skipped_beyond += 1;
            }
            keep
        })
        .map(|(p, f)| (u64::from(p) << 32) | u64::from(f))
        .collect();
    keys.sort_unstable();
    let mut runs: Vec<BackfillRun> = Vec::new();
    let mut superseded = 0u32;
    let mut i = 0;
    while i < keys.len() {
        let page = (keys[i] >> 32) as u32;
        // Keys are sorted by (page, frame): the last key of a page has its newest frame.
        let mut j = i;
        while j + 1 < keys.len() && (keys[j + 1] >> 32) as u32 == page {
            j += 1;
        }
        superseded += (j - i) as u32;
        let frame = keys[j] as u32;
        i = j + 1;
        let extend = runs.last().is_some_and(|r| {
            r.first_page.get() + r.frames.len() as u32 == page && r.frames.len() < max_run
        });
        if extend {
            if let Some(r) = runs.last_mut() {
                r.frames.push(frame);
            }
        } else if let Some(first_page) = PageNumber::new(page) {
            runs.push(BackfillRun {
                first_page,
                frames: vec![frame],
            });
        }
    }
    BackfillPlan {
        from_exclusive: n_backfill,
        to_inclusive: safe_frame,
        n_page,
        runs,
        superseded_frames: superseded,
        skipped_beyond_n_page: skipped_beyond,
    }
}

/// What to do with the database file before copying (step 1.5's size check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbSizeAction {
    /// The file is already large enough.
    Fine,
    /// The file is smaller than `nPage` pages: hint the VFS to grow it to `bytes`.
    SizeHint {
        /// `nPage × page_size`.
        bytes: u64,
    },
}

/// SQLite's size check before copying: if the database file is smaller than
/// `n_page × page_size` by more than the WAL could explain (`db_size + 65536 + mx_frame ×
/// page_size < needed`), the database is corrupt; otherwise a smaller file only gets a
/// size hint.
pub fn check_db_size_before_backfill(
    db_size_bytes: u64,
    n_page: u32,
    page_size: u32,
    mx_frame: u32,
) -> Result<DbSizeAction> {
    let needed = u64::from(n_page) * u64::from(page_size);
    if db_size_bytes >= needed {
        return Ok(DbSizeAction::Fine);
    }
    let explainable = db_size_bytes + 65536 + u64::from(mx_frame) * u64::from(page_size);
    if explainable < needed {
        return Err(FrankenError::db_corrupt(format!(
            "the database file is {db_size_bytes} bytes but the WAL says it holds {n_page} pages of \
             {page_size} bytes ({needed} bytes), more than its {mx_frame} frames can explain"
        )));
    }
    Ok(DbSizeAction::SizeHint { bytes: needed })
}

/// What to do after the pages are copied (step 1.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AfterCopy {
    /// Everything up to the live `mxFrame` was copied.
    pub complete: bool,
    /// Truncate the database to this many pages (only when complete).
    pub truncate_db_to_pages: Option<u32>,
    /// Fsync the database (full fsync). SQLite syncs only a complete copy; the recovery
    /// barrier of this crate syncs always, so this says whether SQLite would.
    pub sync_db: bool,
    /// The value to store in `nBackfill` once the copy is durable and verified.
    pub new_n_backfill: u32,
}

/// Step 1.6: a copy up to `safe_frame` is complete when it equals the live `mxFrame`; then
/// the database is truncated to `n_page` pages and fsynced. `nBackfill` becomes
/// `safe_frame` either way.
pub fn plan_after_copy(safe_frame: u32, live_mx_frame: u32, n_page: u32) -> AfterCopy {
    let complete = safe_frame == live_mx_frame;
    AfterCopy {
        complete,
        truncate_db_to_pages: complete.then_some(n_page),
        sync_db: complete,
        new_n_backfill: safe_frame,
    }
}

/// What the mode asks after the backfill (step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeFollowUp {
    /// Nothing more (PASSIVE, or FULL with everything copied).
    Done,
    /// Not everything was copied and the mode asked for it: report busy.
    Busy,
    /// Wait (busy handler) for `READ_LOCK(1..N)` exclusive; then, for TRUNCATE, reset the
    /// WAL header (new salts, `mxFrame = 0`) and truncate the WAL file to 0 bytes.
    WaitForReaders {
        /// True for TRUNCATE.
        then_reset_and_truncate_wal: bool,
    },
}

/// Step 2: the mode's follow-up given the counters after the backfill.
pub fn plan_mode_follow_up(mode: CheckpointMode, n_backfill: u32, mx_frame: u32) -> ModeFollowUp {
    if mode == CheckpointMode::Passive {
        return ModeFollowUp::Done;
    }
    if n_backfill < mx_frame {
        return ModeFollowUp::Busy;
    }
    if mode.waits_for_readers() {
        ModeFollowUp::WaitForReaders {
            then_reset_and_truncate_wal: mode.truncates_wal(),
        }
    } else {
        ModeFollowUp::Done
    }
}

/// The outcome to report: `busy`; `(mxFrame, nBackfill)`, or `(0, 0)` after the WAL was
/// truncated by a successful TRUNCATE.
pub fn checkpoint_outcome(
    busy: bool,
    mx_frame: u32,
    n_backfill: u32,
    wal_truncated: bool,
) -> CheckpointOutcome {
    if wal_truncated && !busy {
        return CheckpointOutcome {
            busy: false,
            log_frames: 0,
            checkpointed_frames: 0,
        };
    }
    CheckpointOutcome {
        busy,
        log_frames: mx_frame,
        checkpointed_frames: n_backfill,
    }
}

/// The backfill counters of the WAL-index checkpoint info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackfillCounters {
    /// `nBackfill`.
    pub n_backfill: u32,
    /// `nBackfillAttempted`.
    pub n_backfill_attempted: u32,
    /// `mxFrame`.
    pub mx_frame: u32,
}

impl BackfillCounters {
    /// True when `BACKFILL-1` holds.
    pub fn holds(&self) -> bool {
        self.n_backfill <= self.n_backfill_attempted && self.n_backfill_attempted <= self.mx_frame
    }
}

/// Checks invariant `BACKFILL-1`: `nBackfill <= nBackfillAttempted <= mxFrame`. A
/// violation is [`FrankenError::WalCorrupt`] naming the three values.
pub fn check_backfill_invariant(
    n_backfill: u32,
    n_backfill_attempted: u32,
    mx_frame: u32,
) -> Result<()> {
    let c = BackfillCounters {
        n_backfill,
        n_backfill_attempted,
        mx_frame,
    };
    if c.holds() {
        Ok(())
    } else {
        Err(FrankenError::wal_corrupt(format!(
            "WAL-index checkpoint counters break nBackfill <= nBackfillAttempted <= mxFrame \
             (nBackfill {n_backfill}, nBackfillAttempted {n_backfill_attempted}, mxFrame {mx_frame})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(n: u32) -> PageNumber {
        PageNumber::new(n).unwrap()
    }

    #[test]
    fn mode_names_values_and_parse() {
        for m in CheckpointMode::ALL {
            assert_eq!(m.to_string().parse::<CheckpointMode>().unwrap(), m);
            assert_eq!(CheckpointMode::from_sqlite_value(m.sqlite_value()), Some(m));
            assert_eq!(
                m.sqlite_value()
                    .to_string()
                    .parse::<CheckpointMode>()
                    .unwrap(),
                m
            );
        }
        assert_eq!(
            "TRUNCATE".parse::<CheckpointMode>().unwrap(),
            CheckpointMode::Truncate
        );
        assert_eq!(
            " Full ".parse::<CheckpointMode>().unwrap(),
            CheckpointMode::Full
        );
        assert!("noop".parse::<CheckpointMode>().is_err());
        assert!("-1".parse::<CheckpointMode>().is_err());
        assert!("4".parse::<CheckpointMode>().is_err());
        assert_eq!(CheckpointMode::from_sqlite_value(-1), None);
        assert_eq!(CheckpointMode::default(), CheckpointMode::Passive);
        assert!(!CheckpointMode::Passive.uses_busy_handler());
        assert!(CheckpointMode::Full.uses_busy_handler());
        assert!(!CheckpointMode::Full.waits_for_readers());
        assert!(CheckpointMode::Restart.waits_for_readers());
        assert!(!CheckpointMode::Restart.truncates_wal());
        assert!(CheckpointMode::Truncate.truncates_wal());
    }

    #[test]
    fn safe_frame_all_free_rewrites_marks() {
        let marks = [0, 3, 7, READMARK_NOT_USED, 2];
        let mut tried = Vec::new();
        let s = compute_safe_frame(10, &marks, CheckpointMode::Passive, |a| {
            tried.push(a);
            LockTry::Acquired
        });
        assert_eq!(s.safe_frame, 10);
        assert_eq!(
            s.marks_after,
            [
                0,
                10,
                READMARK_NOT_USED,
                READMARK_NOT_USED,
                READMARK_NOT_USED
            ]
        );
        assert_eq!(
            tried.iter().map(|a| a.slot).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert!(tried.iter().all(|a| !a.use_busy_handler));
        assert_eq!(s.rewritten_slots, 0b10110);
        assert_eq!(s.busy_slots, 0);
    }

    #[test]
    fn safe_frame_busy_reader_caps_and_stops_busy_handler() {
        // Slot 2 has a live reader at frame 5; slot 4 (mark 2) is busy too.
        let marks = [0, 9, 5, 8, 2];
        let mut tried = Vec::new();
        let s = compute_safe_frame(10, &marks, CheckpointMode::Full, |a| {
            tried.push(a);
            if a.slot == 2 || a.slot == 4 {
                LockTry::Busy
            } else {
                LockTry::Acquired
            }
        });
        // Slot 1 (9 < 10) acquired → mark 10; slot 2 busy → safe 5; slot 3 (8 >= 5) not
        // tried; slot 4 (2 < 5) busy → safe 2.
        assert_eq!(s.safe_frame, 2);
        assert_eq!(s.marks_after, [0, 10, 5, 8, 2]);
        assert_eq!(
            tried.iter().map(|a| a.slot).collect::<Vec<_>>(),
            vec![1, 2, 4]
        );
        assert!(tried[0].use_busy_handler && tried[1].use_busy_handler);
        assert!(
            !tried[2].use_busy_handler,
            "busy handler stops after the first busy slot"
        );
        assert_eq!(tried[0].new_mark, 10);
        assert_eq!(tried[2].new_mark, READMARK_NOT_USED);
        assert_eq!(s.busy_slots, 0b10100);
    }

    #[test]
    fn safe_frame_slot_one_gets_running_safe_frame_and_errors_propagate() {
        let marks = [0, 0, 0, 0, 0];
        let r = try_compute_safe_frame(4, &marks, CheckpointMode::Passive, |a| {
            if a.slot == 3 {
                Err(FrankenError::Protocol)
            } else {
                Ok(LockTry::Acquired)
            }
        });
        assert!(matches!(r, Err(FrankenError::Protocol)));
        let s = compute_safe_frame(0, &marks, CheckpointMode::Passive, |_| unreachable!());
        assert_eq!(s.safe_frame, 0);
    }

    #[test]
    fn plan_newest_frame_wins_and_coalesces() {
        // frame -> page
        let entries = vec![(5, 1), (6, 2), (5, 3), (7, 4), (2, 5), (9, 6), (6, 7)];
        let p = plan_backfill(entries, 0, 7, 100, 64);
        assert_eq!(p.superseded_frames, 2);
        assert_eq!(p.runs.len(), 3);
        assert_eq!(p.runs[0].first_page, pn(2));
        assert_eq!(p.runs[0].frames, vec![5]);
        assert_eq!(p.runs[1].first_page, pn(5));
        assert_eq!(p.runs[1].frames, vec![3, 7, 4]);
        assert_eq!(p.runs[2].first_page, pn(9));
        assert_eq!(p.runs[2].frames, vec![6]);
        assert_eq!(p.page_count(), 5);
        let pages: Vec<_> = p.runs[1].pages().collect();
        assert_eq!(pages, vec![(5, 3), (6, 7), (7, 4)]);
    }

    #[test]
    fn plan_respects_frame_range_and_n_page() {
        let entries = (1..=10u32).map(|f| (f, f)); // frame f holds page f
        let p = plan_backfill(entries, 3, 8, 6, 64);
        assert_eq!(p.runs.len(), 1);
        assert_eq!(p.runs[0].first_page, pn(4));
        assert_eq!(p.runs[0].frames, vec![4, 5, 6]);
        assert_eq!(p.skipped_beyond_n_page, 2); // pages 7, 8
        let p = plan_backfill([(0, 1), (3, 0)], 0, 5, 10, 4);
        assert!(p.is_empty());
    }

    #[test]
    fn plan_splits_long_runs() {
        let p = plan_backfill((1..=10u32).map(|f| (f, f)), 0, 10, 10, 4);
        let sizes: Vec<_> = p.runs.iter().map(BackfillRun::page_count).collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        assert_eq!(p.runs[1].first_page, pn(5));
        assert_eq!(max_run_pages_for(4096, DEFAULT_MAX_RUN_BYTES), 256);
        assert_eq!(max_run_pages_for(65536, 1000), 1);
    }

    #[test]
    fn salt_recheck_detects_restart() {
        assert_eq!(salt_recheck([1, 2], [1, 2]), SaltRecheck::Proceed);
        assert_eq!(salt_recheck([1, 2], [2, 2]), SaltRecheck::WalRestarted);
        assert_eq!(
            decide_backfill(0, 5, [1, 2], [1, 3]),
            BackfillDecision::WalRestarted
        );
        assert_eq!(
            decide_backfill(5, 5, [1, 2], [1, 2]),
            BackfillDecision::NothingToCopy
        );
        assert_eq!(
            decide_backfill(2, 5, [1, 2], [1, 2]),
            BackfillDecision::Copy {
                from_exclusive: 2,
                to_inclusive: 5
            }
        );
    }

    #[test]
    fn db_size_check() {
        assert_eq!(
            check_db_size_before_backfill(8192, 2, 4096, 0).unwrap(),
            DbSizeAction::Fine
        );
        assert_eq!(
            check_db_size_before_backfill(4096, 3, 4096, 1).unwrap(),
            DbSizeAction::SizeHint { bytes: 12288 }
        );
        let e = check_db_size_before_backfill(0, 100, 4096, 1).unwrap_err();
        assert!(matches!(e, FrankenError::DatabaseCorrupt { .. }));
    }

    #[test]
    fn after_copy_and_follow_up() {
        let a = plan_after_copy(10, 10, 7);
        assert!(a.complete && a.sync_db);
        assert_eq!(a.truncate_db_to_pages, Some(7));
        assert_eq!(a.new_n_backfill, 10);
        let a = plan_after_copy(6, 10, 7);
        assert!(!a.complete && !a.sync_db);
        assert_eq!(a.truncate_db_to_pages, None);
        assert_eq!(a.new_n_backfill, 6);

        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Passive, 3, 10),
            ModeFollowUp::Done
        );
        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Full, 3, 10),
            ModeFollowUp::Busy
        );
        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Full, 10, 10),
            ModeFollowUp::Done
        );
        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Restart, 10, 10),
            ModeFollowUp::WaitForReaders {
                then_reset_and_truncate_wal: false
            }
        );
        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Truncate, 10, 10),
            ModeFollowUp::WaitForReaders {
                then_reset_and_truncate_wal: true
            }
        );
        assert_eq!(
            plan_mode_follow_up(CheckpointMode::Truncate, 9, 10),
            ModeFollowUp::Busy
        );

        assert_eq!(
            checkpoint_outcome(false, 10, 10, true),
            CheckpointOutcome::default()
        );
        let o = checkpoint_outcome(true, 10, 4, false);
        assert!(o.busy);
        assert_eq!((o.log_frames, o.checkpointed_frames), (10, 4));
    }

    #[test]
    fn backfill_invariant() {
        assert!(check_backfill_invariant(0, 0, 0).is_ok());
        assert!(check_backfill_invariant(3, 5, 9).is_ok());
        assert!(check_backfill_invariant(5, 5, 5).is_ok());
        assert!(matches!(
            check_backfill_invariant(6, 5, 9),
            Err(FrankenError::WalCorrupt { .. })
        ));
        assert!(check_backfill_invariant(3, 10, 9).is_err());
        assert!(
            !BackfillCounters {
                n_backfill: 1,
                n_backfill_attempted: 0,
                mx_frame: 3
            }
            .holds()
        );
    }

    proptest::proptest! {
        #[test]
        fn plan_matches_a_reference(
            entries in proptest::collection::vec((0u32..40, 0u32..60), 0..120),
            n_backfill in 0u32..30,
            span in 0u32..40,
            n_page in 0u32..45,
            max_run in 0u32..6,
        ) {
            let safe = n_backfill + span;
            let plan = plan_backfill(entries.iter().copied(), n_backfill, safe, n_page, max_run);
            let mut want = std::collections::BTreeMap::new();
            for &(p, f) in &entries {
                if p != 0 && p <= n_page && f > n_backfill && f <= safe {
                    let e = want.entry(p).or_insert(f);
                    *e = (*e).max(f);
                }
            }
            let got: Vec<(u32, u32)> = plan.runs.iter().flat_map(BackfillRun::pages).collect();
            proptest::prop_assert_eq!(got, want.into_iter().collect::<Vec<_>>());
            for w in plan.runs.windows(2) {
                let end = w[0].first_page.get() + w[0].page_count();
                // A run ends where pages stop being adjacent, or at the length limit.
                proptest::prop_assert!(
                    w[1].first_page.get() > end
                        || (w[1].first_page.get() == end && w[0].page_count() == max_run.max(1))
                );
            }
            for r in &plan.runs {
                proptest::prop_assert!(r.page_count() >= 1 && r.page_count() <= max_run.max(1));
            }
        }
    }
}
