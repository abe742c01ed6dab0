//! Compatibility with legacy SQLite processes: the operating mode, the legacy `-shm` state
//! the hybrid coordinator keeps current, and the recovery plan after a coordinator died.
//!
//! Everything here is a pure value computation except [`RecoveryPlan::inspect_shm`], which
//! reads a real `-shm` through a [`VfsFile`]. The wired-up protocol lives in
//! [`crate::coordinator`].
//!
//! # Modes ([`CompatMode`])
//!
//! | mode | chosen when | writers | `BEGIN CONCURRENT` |
//! |---|---|---|---|
//! | `HybridShm` | `<db>.fsqlite-shm` can be created and written **and** the legacy `<db>-shm` can be mapped | one coordinator holds `WAL_WRITE_LOCK` for its whole life; legacy SQLite writers get `SQLITE_BUSY`; legacy readers see every commit | allowed ([`begin_concurrent_check`]) |
//! | `FileLockOnly` | anything else (read-only directory, no shm support, a VFS that refuses) | SQLite's own protocol: `WAL_WRITE_LOCK` per write transaction; without usable shared memory, SQLite's exclusive locking mode (heap WAL-index, database held EXCLUSIVE; see [`crate::heap_shm`]) | `ConcurrentUnavailable` (SQLITE_ERROR, with a suggestion) |
//!
//! # The legacy header the coordinator publishes ([`HybridShmState`])
//!
//! The coordinator keeps its own copy of SQLite's `WalIndexHdr` and `WalCkptInfo` (layout:
//! [`fsqlite_wal::wal_index`]). Per commit, after the WAL sync and after the frames are in
//! the hash tables, [`HybridShmState::update_legacy_shm`] computes the next header exactly
//! as SQLite's `walIndexWriteHdr` would:
//!
//! ```text
//! update_legacy_shm(mx, n_page, frame_cksum, salt):
//!     refuse unless the write lock is marked held                 (inv: HYB_WRITE_LOCK_HELD)
//!     restart := salt != hdr.salts
//!     refuse mx < hdr.mxFrame unless restart                      (inv: HYB_MX_MONOTONE)
//!     refuse mx > 0 && n_page == 0
//!     hdr.mxFrame, hdr.nPage, hdr.aFrameCksum := mx, n_page, frame_cksum
//!     hdr.aSalt := salt as raw big-endian bytes                   (FORMAT.md §4.1)
//!     hdr.szPage := page size, 65536 stored as 1
//!     hdr.iChange += 1
//!     seal: isInit = 1, iVersion = 3007000, aCksum = checksum(bytes 0..40)
//!     if restart: nBackfill = nBackfillAttempted = 0,
//!                 aReadMark[1] = 0, aReadMark[2..5] = READMARK_NOT_USED (walRestartHdr)
//! ```
//!
//! The checksum is [`WalIndexHdr::seal`] from `fsqlite-wal`: one implementation for both.
//! The caller publishes the returned header with the two-copy protocol
//! ([`fsqlite_wal::wal_index::publish_header`]).
//!
//! # Recovery after a coordinator died ([`RecoveryPlan`])
//!
//! ```text
//! reconstruct_wal_index  = the two header copies differ, or fail their checksum,
//!                          or the header was never initialized (a fresh -shm)
//! clear_stale_read_marks = some aReadMark[i], i in 1..5, that no live reader holds
//!                          (READ_LOCK(i) can be taken exclusively) points past mxFrame,
//!                          or aReadMark[0] != 0; also whenever the index is rebuilt
//! validate_backfill      = nBackfill <= nBackfillAttempted <= mxFrame is broken;
//!                          also whenever the index is rebuilt (nBackfill restarts at 0)
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::sync_primitives::Instant;
use fsqlite_types::{Cx, PageSize};
use fsqlite_vfs::{VfsFile, wal_read_lock};
use fsqlite_wal::locks;
use fsqlite_wal::wal_index::{
    HeaderDefect, HeaderMemory, READMARK_NOT_USED, WAL_INDEX_VERSION, WAL_READ_MARK_COUNT,
    WALINDEX_PGSZ, WalCkptInfo, WalIndexHdr, load_header_copies, unsupported_version_error,
    validate_header_copies,
};

/// How this process shares a database with legacy SQLite processes (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CompatMode {
    /// A coordinator keeps both `<db>-shm` (SQLite's) and `<db>.fsqlite-shm` (ours), holds
    /// `WAL_WRITE_LOCK` for its whole life and publishes every commit to legacy readers.
    HybridShm,
    /// Only SQLite's own locking protocol: one writer at a time, per transaction.
    FileLockOnly,
}

impl CompatMode {
    /// True when `BEGIN CONCURRENT` may be used (only [`CompatMode::HybridShm`]).
    pub const fn supports_concurrent(self) -> bool {
        matches!(self, Self::HybridShm)
    }

    /// True when both the legacy `-shm` and `<db>.fsqlite-shm` are in use (only
    /// [`CompatMode::HybridShm`]).
    pub const fn requires_dual_shm(self) -> bool {
        matches!(self, Self::HybridShm)
    }

    /// A short name for logs: `"hybrid-shm"` or `"file-lock-only"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HybridShm => "hybrid-shm",
            Self::FileLockOnly => "file-lock-only",
        }
    }
}

impl fmt::Display for CompatMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The gate for `BEGIN CONCURRENT`: `Ok` in [`CompatMode::HybridShm`],
/// `Err(FrankenError::ConcurrentUnavailable)` (SQLITE_ERROR, with a suggestion) otherwise.
pub fn begin_concurrent_check(mode: CompatMode) -> Result<()> {
    if mode.supports_concurrent() {
        Ok(())
    } else {
        tracing::debug!(target: "fsqlite.mvcc.compat", %mode, "BEGIN CONCURRENT refused");
        Err(FrankenError::ConcurrentUnavailable)
    }
}

/// What [`HybridShmState::update_legacy_shm`] produced: the sealed header to publish and the
/// checkpoint info that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatedLegacyShm {
    /// The next `WalIndexHdr`: `isInit = 1`, `iVersion = 3007000`, `aCksum` valid.
    pub hdr: WalIndexHdr,
    /// The checkpoint info (reset as `walRestartHdr` does when the salts changed).
    pub ckpt: WalCkptInfo,
}

/// The coordinator's copy of the legacy `-shm` header and checkpoint info, plus whether it
/// holds `WAL_WRITE_LOCK` (see the module docs for the update rules).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HybridShmState {
    hdr: WalIndexHdr,
    ckpt: WalCkptInfo,
    /// When the write lock was marked held; `None` while it is not held.
    write_lock_since: Option<Instant>,
    /// The page size written into `szPage` (65536 encoded as 1).
    page_size: Option<PageSize>,
}

impl HybridShmState {
    /// A state starting from `hdr` and `ckpt` (as read from the live `-shm`), write lock not
    /// held. The page size is taken from `hdr.szPage` when that is a valid encoding.
    pub fn new(hdr: WalIndexHdr, ckpt: WalCkptInfo) -> Self {
        Self {
            page_size: hdr.page_size(),
            hdr,
            ckpt,
            write_lock_since: None,
        }
    }

    /// Sets the page size written into `szPage` by the next update.
    pub fn set_page_size(&mut self, page_size: PageSize) {
        self.page_size = Some(page_size);
    }

    /// The page size the next update writes, if known.
    pub fn page_size(&self) -> Option<PageSize> {
        self.page_size
    }

    /// Sets `bigEndCksum` (the WAL magic's low bit) for the next update; a WAL this process
    /// starts always uses the host's word order.
    pub fn set_big_endian_checksum(&mut self, big_endian: bool) {
        self.hdr.big_end_cksum = u8::from(big_endian);
    }

    /// Records that `WAL_WRITE_LOCK` is held since `now` (a later call keeps the first
    /// time).
    pub fn mark_write_lock_held(&mut self, now: Instant) {
        if self.write_lock_since.is_none() {
            self.write_lock_since = Some(now);
        }
    }

    /// Takes the live `-shm` header and checkpoint info after another writer (an fsqlite
    /// peer process, or an admitted stock SQLite writer) published, keeping the write-lock
    /// mark and the page size.
    pub fn adopt_published(&mut self, hdr: WalIndexHdr, ckpt: WalCkptInfo) {
        self.hdr = hdr;
        self.ckpt = ckpt;
    }

    /// True while the write lock is marked held.
    pub fn is_write_lock_held(&self) -> bool {
        self.write_lock_since.is_some()
    }

    /// Records that `WAL_WRITE_LOCK` was released.
    pub fn mark_write_lock_released(&mut self) {
        self.write_lock_since = None;
    }

    /// How long the write lock has been held at `now`, `None` when it is not held.
    pub fn lock_held_duration(&self, now: Instant) -> Option<Duration> {
        self.write_lock_since.map(|since| now.duration_since(since))
    }

    /// The legacy header as last updated (what was, or is about to be, published).
    pub fn legacy_hdr(&self) -> WalIndexHdr {
        self.hdr
    }

    /// The legacy checkpoint info as last updated.
    pub fn legacy_ckpt(&self) -> WalCkptInfo {
        self.ckpt
    }

    /// The next legacy header for a commit (or a WAL restart) that made `new_mx_frame` the
    /// last commit frame, `new_n_page` the database size, `new_frame_cksum` the running
    /// checksum and `new_salt` the numeric WAL salts (salt-1, salt-2 as in the WAL header).
    /// See the module docs for the rules; the state keeps the result.
    ///
    /// Errors: `Internal` without the write lock; `OutOfRange` for a frame count that goes
    /// backwards with unchanged salts, or a commit without a database size.
    pub fn update_legacy_shm(
        &mut self,
        new_mx_frame: u32,
        new_n_page: u32,
        new_frame_cksum: [u32; 2],
        new_salt: [u32; 2],
    ) -> Result<UpdatedLegacyShm> {
        // inv: HYB_WRITE_LOCK_HELD
        if !self.is_write_lock_held() {
            return Err(FrankenError::internal(
                "update_legacy_shm without WAL_WRITE_LOCK: only the write-lock holder may \
                 publish the legacy -shm header",
            ));
        }
        let restart = new_salt != self.hdr.wal_salts();
        // inv: HYB_MX_MONOTONE
        if !restart && new_mx_frame < self.hdr.mx_frame {
            return Err(FrankenError::out_of_range(
                "legacy -shm mxFrame (it may only go backwards when the WAL restarts with new salts)",
                format!("{new_mx_frame} < {}", self.hdr.mx_frame),
            ));
        }
        if new_mx_frame > 0 && new_n_page == 0 {
            return Err(FrankenError::out_of_range(
                format!(
                    "legacy -shm nPage for mxFrame {new_mx_frame} (a commit has at least one page)"
                ),
                0,
            ));
        }
        let mut hdr = self.hdr;
        hdr.mx_frame = new_mx_frame;
        hdr.n_page = new_n_page;
        hdr.a_frame_cksum = new_frame_cksum;
        hdr.set_wal_salts(new_salt);
        if let Some(ps) = self.page_size {
            hdr.set_page_size(ps);
        }
        hdr.i_change = hdr.i_change.wrapping_add(1);
        hdr.seal();
        let mut ckpt = self.ckpt;
        if restart {
            ckpt.n_backfill = 0;
            ckpt.n_backfill_attempted = 0;
            ckpt.a_read_mark[0] = 0;
            ckpt.a_read_mark[1] = 0;
            for m in &mut ckpt.a_read_mark[2..] {
                *m = READMARK_NOT_USED;
            }
        }
        debug_assert!(hdr.checksum_ok() && hdr.is_init == 1);
        self.hdr = hdr;
        self.ckpt = ckpt;
        Ok(UpdatedLegacyShm { hdr, ckpt })
    }

    /// Records that frames `1..=n_backfill` are in the database file (`nBackfill`), raising
    /// `nBackfillAttempted` to it if needed. Refused (`OutOfRange`) past `mxFrame`.
    /// inv: NBACKFILL_LE_MXFRAME
    pub fn update_backfill(&mut self, n_backfill: u32) -> Result<()> {
        if n_backfill > self.hdr.mx_frame {
            return Err(FrankenError::out_of_range(
                format!("nBackfill (at most mxFrame = {})", self.hdr.mx_frame),
                n_backfill,
            ));
        }
        self.ckpt.n_backfill = n_backfill;
        self.ckpt.n_backfill_attempted = self.ckpt.n_backfill_attempted.max(n_backfill);
        Ok(())
    }
}

/// What [`choose_reader_slot`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadLockOutcome {
    /// Slot `slot` already holds the desired mark: share it.
    Joined {
        /// The slot index.
        slot: usize,
    },
    /// Slot `slot` was free (0): set it to the desired mark.
    Claimed {
        /// The slot index.
        slot: usize,
    },
    /// No slot holds the mark and none is free.
    AllSlotsBusy,
}

/// A pure slot-choice helper with exactly these semantics: join the first slot whose mark
/// equals `desired_mark`, else claim the first slot whose mark is 0, else
/// [`ReadLockOutcome::AllSlotsBusy`]. It looks at values only; it takes no locks.
///
/// This is **not** SQLite's read path. The real one (FORMAT.md §6, `walTryBeginRead`, and
/// [`fsqlite_wal::Wal::begin_read`]) reserves slot 0 for "read the database file only"
/// (`aReadMark[0]` is always 0), treats `0xFFFFFFFF` ([`READMARK_NOT_USED`]) as an unused
/// slot, picks the largest mark `<= mxFrame` among slots 1..5, and changes a mark only under
/// that slot's exclusive `WAL_READ_LOCK(i)`, re-checking the mark and the header after taking
/// the shared lock.
pub fn choose_reader_slot(
    marks: &[u32; WAL_READ_MARK_COUNT],
    desired_mark: u32,
) -> ReadLockOutcome {
    if let Some(slot) = marks.iter().position(|&m| m == desired_mark) {
        return ReadLockOutcome::Joined { slot };
    }
    if let Some(slot) = marks.iter().position(|&m| m == 0) {
        return ReadLockOutcome::Claimed { slot };
    }
    ReadLockOutcome::AllSlotsBusy
}

/// The result of probing for a live coordinator (see [`crate::coordinator`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CoordinatorProbeResult {
    /// A coordinator holds `WAL_WRITE_LOCK` and its record names a live process.
    Active,
    /// `WAL_WRITE_LOCK` was obtained: no coordinator (a dead one's lock died with it).
    NoCoordinator,
    /// `WAL_WRITE_LOCK` stayed busy for the whole timeout and no live coordinator is
    /// recorded (a legacy writer, or a coordinator still starting).
    Timeout,
}

/// What recovery must do before a new coordinator takes over (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RecoveryPlan {
    /// Rebuild the WAL-index (hash tables and header) from the WAL file.
    pub reconstruct_wal_index: bool,
    /// Reset read marks that no live reader holds and that are invalid.
    pub clear_stale_read_marks: bool,
    /// Check `nBackfill <= nBackfillAttempted <= mxFrame` and reset the backfill counters if
    /// it does not hold.
    pub validate_backfill: bool,
}

impl RecoveryPlan {
    /// The plan for a header whose copies match (and checksum) or not, is initialized or
    /// not, and with or without stale read marks: rebuild unless the header is good; clear
    /// marks when some are stale or the index is rebuilt; validate the backfill counters
    /// when the index is rebuilt.
    pub const fn from_header_state(
        copies_match: bool,
        is_init: bool,
        has_stale_marks: bool,
    ) -> Self {
        let reconstruct = !copies_match || !is_init;
        Self {
            reconstruct_wal_index: reconstruct,
            clear_stale_read_marks: reconstruct || has_stale_marks,
            validate_backfill: reconstruct,
        }
    }

    /// True when any step is needed.
    pub const fn needs_recovery(&self) -> bool {
        self.reconstruct_wal_index || self.clear_stale_read_marks || self.validate_backfill
    }

    /// [`RecoveryPlan::inspect_shm`]'s plan.
    pub fn from_shm<F: VfsFile + ?Sized>(cx: &Cx, db: &mut F, shm_path: &Path) -> Result<Self> {
        Ok(Self::inspect_shm(cx, db, shm_path)?.plan)
    }

    /// Reads the live legacy `-shm` of `db` (region 0, never extended) and builds the plan
    /// from what it finds: are the two header copies equal, is the header initialized, does
    /// its checksum match (a mismatch counts as copies that do not match), which read marks
    /// are stale (probed by trying each `WAL_READ_LOCK(i)`, i in 1..5, exclusively and
    /// releasing it at once), and do the backfill counters hold their invariant.
    ///
    /// The caller must hold `WAL_WRITE_LOCK` (so no writer publishes meanwhile).
    /// A good header with another `iVersion` is `CannotOpen` naming `shm_path`.
    pub fn inspect_shm<F: VfsFile + ?Sized>(
        cx: &Cx,
        db: &mut F,
        shm_path: &Path,
    ) -> Result<ShmInspection> {
        let Some(r0) = db.shm_map(cx, 0, WALINDEX_PGSZ as u32, false)? else {
            return Ok(ShmInspection::unmapped());
        };
        let copies = load_header_copies(&r0);
        let copies_equal = copies[0] == copies[1];
        let (header, defect) = match validate_header_copies(&copies) {
            Ok(h) if h.i_version != WAL_INDEX_VERSION => {
                return Err(unsupported_version_error(shm_path, h.i_version));
            }
            Ok(h) => (Some(h), None),
            Err(d) => (None, Some(d)),
        };
        let ckpt = r0.load_ckpt_info();
        let mut stale_marks = Vec::new();
        if ckpt.a_read_mark[0] != 0 {
            stale_marks.push(0);
        }
        for i in 1..WAL_READ_MARK_COUNT {
            let mark = ckpt.a_read_mark[i];
            if mark == READMARK_NOT_USED {
                continue;
            }
            let past_end = header.is_none_or(|h| mark > h.mx_frame);
            if !past_end {
                continue;
            }
            let slot = wal_read_lock(i as u32);
            if locks::try_exclusive(db, cx, slot, 1)? {
                locks::unlock_exclusive(db, cx, slot, 1)?;
                stale_marks.push(i);
            }
        }
        let is_init = copies[0].is_init != 0;
        let mut plan = RecoveryPlan::from_header_state(
            copies_equal && defect != Some(HeaderDefect::ChecksumMismatch),
            is_init,
            !stale_marks.is_empty(),
        );
        let backfill_ok = header.is_some_and(|h| {
            ckpt.n_backfill <= ckpt.n_backfill_attempted && ckpt.n_backfill_attempted <= h.mx_frame
        });
        if !backfill_ok {
            plan.validate_backfill = true;
        }
        Ok(ShmInspection {
            plan,
            header,
            defect,
            ckpt,
            stale_marks,
        })
    }
}

/// What [`RecoveryPlan::inspect_shm`] found in a live `-shm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShmInspection {
    /// The plan.
    pub plan: RecoveryPlan,
    /// The valid header, if the copies formed one.
    pub header: Option<WalIndexHdr>,
    /// Why there is no valid header.
    pub defect: Option<HeaderDefect>,
    /// The checkpoint info as found (`a_lock` reads as zeros).
    pub ckpt: WalCkptInfo,
    /// Read-mark slots found stale (slot 0 when `aReadMark[0] != 0`).
    pub stale_marks: Vec<usize>,
}

impl ShmInspection {
    /// A `-shm` without region 0 (new, or truncated by the first opener): rebuild.
    fn unmapped() -> Self {
        Self {
            plan: RecoveryPlan::from_header_state(false, false, false),
            header: None,
            defect: Some(HeaderDefect::Unmapped),
            ckpt: WalCkptInfo::default(),
            stale_marks: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> HybridShmState {
        let mut hdr = WalIndexHdr::default();
        hdr.set_page_size(PageSize::new(4096).unwrap());
        hdr.set_wal_salts([0x1122_3344, 0x5566_7788]);
        let mut s = HybridShmState::new(hdr, WalCkptInfo::default());
        s.mark_write_lock_held(Instant::now());
        s
    }

    #[test]
    fn modes() {
        assert!(CompatMode::HybridShm.supports_concurrent());
        assert!(CompatMode::HybridShm.requires_dual_shm());
        assert!(!CompatMode::FileLockOnly.supports_concurrent());
        assert!(!CompatMode::FileLockOnly.requires_dual_shm());
        assert!(begin_concurrent_check(CompatMode::HybridShm).is_ok());
        let e = begin_concurrent_check(CompatMode::FileLockOnly).unwrap_err();
        assert!(matches!(e, FrankenError::ConcurrentUnavailable));
        assert_eq!(e.error_code(), fsqlite_error::ErrorCode::Error);
        assert!(e.suggestion().is_some());
        assert_eq!(CompatMode::HybridShm.to_string(), "hybrid-shm");
    }

    #[test]
    fn update_requires_write_lock() {
        let mut s = held();
        s.mark_write_lock_released();
        assert!(!s.is_write_lock_held());
        assert!(s.lock_held_duration(Instant::now()).is_none());
        let e = s.update_legacy_shm(1, 1, [1, 2], [0x1122_3344, 0x5566_7788]);
        assert!(matches!(e, Err(FrankenError::Internal(_))), "{e:?}");
        let t0 = Instant::now();
        s.mark_write_lock_held(t0);
        s.mark_write_lock_held(t0 + Duration::from_secs(5));
        let d = s.lock_held_duration(t0 + Duration::from_millis(7)).unwrap();
        assert_eq!(d, Duration::from_millis(7), "the first mark time is kept");
    }

    #[test]
    fn update_seals_like_sqlite() {
        let mut s = held();
        let u = s
            .update_legacy_shm(3, 2, [9, 10], [0x1122_3344, 0x5566_7788])
            .unwrap();
        assert_eq!(u.hdr.is_init, 1);
        assert_eq!(u.hdr.i_version, 3_007_000);
        assert_eq!(u.hdr.i_change, 1);
        assert!(u.hdr.checksum_ok());
        assert_eq!(u.hdr.a_cksum, u.hdr.compute_checksum());
        assert_eq!(
            &u.hdr.to_bytes()[32..40],
            &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(
            (u.hdr.mx_frame, u.hdr.n_page, u.hdr.a_frame_cksum),
            (3, 2, [9, 10])
        );
        assert_eq!(s.legacy_hdr(), u.hdr);
        let u2 = s
            .update_legacy_shm(5, 2, [1, 1], [0x1122_3344, 0x5566_7788])
            .unwrap();
        assert_eq!(u2.hdr.i_change, 2);
        // 64 KiB pages are stored as 1.
        s.set_page_size(PageSize::new(65536).unwrap());
        let u3 = s
            .update_legacy_shm(6, 2, [1, 1], [0x1122_3344, 0x5566_7788])
            .unwrap();
        assert_eq!(u3.hdr.sz_page, 1);
        assert_eq!(u3.hdr.page_size().unwrap().get(), 65536);
    }

    #[test]
    fn frames_only_go_back_on_restart() {
        let mut s = held();
        let salts = [0x1122_3344, 0x5566_7788];
        s.update_legacy_shm(10, 4, [1, 2], salts).unwrap();
        s.update_backfill(10).unwrap();
        let e = s.update_legacy_shm(9, 4, [1, 2], salts).unwrap_err();
        assert!(matches!(e, FrankenError::OutOfRange { .. }), "{e}");
        assert_eq!(
            s.legacy_hdr().mx_frame,
            10,
            "a refused update changes nothing"
        );
        assert!(matches!(
            s.update_legacy_shm(11, 0, [1, 2], salts),
            Err(FrankenError::OutOfRange { .. })
        ));
        // A restart (salt-1 + 1, new salt-2) may go back to 0 and resets the ckpt info.
        let u = s
            .update_legacy_shm(0, 4, [3, 4], [0x1122_3345, 0xdead_beef])
            .unwrap();
        assert_eq!(u.hdr.mx_frame, 0);
        assert_eq!(u.hdr.wal_salts(), [0x1122_3345, 0xdead_beef]);
        assert_eq!(u.ckpt.n_backfill, 0);
        assert_eq!(u.ckpt.n_backfill_attempted, 0);
        assert_eq!(
            u.ckpt.a_read_mark,
            [
                0,
                0,
                READMARK_NOT_USED,
                READMARK_NOT_USED,
                READMARK_NOT_USED
            ]
        );
    }

    #[test]
    fn backfill_never_passes_mx_frame() {
        let mut s = held();
        s.update_legacy_shm(4, 1, [0, 0], [0x1122_3344, 0x5566_7788])
            .unwrap();
        assert!(matches!(
            s.update_backfill(5),
            Err(FrankenError::OutOfRange { .. })
        ));
        s.update_backfill(3).unwrap();
        assert_eq!(s.legacy_ckpt().n_backfill, 3);
        assert_eq!(s.legacy_ckpt().n_backfill_attempted, 3);
        s.update_backfill(4).unwrap();
        assert_eq!(s.legacy_ckpt().n_backfill, 4);
    }

    #[test]
    fn reader_slot_choice() {
        assert_eq!(
            choose_reader_slot(&[0, 5, 7, 7, 0], 7),
            ReadLockOutcome::Joined { slot: 2 }
        );
        assert_eq!(
            choose_reader_slot(&[3, 5, 0, 9, 0], 7),
            ReadLockOutcome::Claimed { slot: 2 }
        );
        assert_eq!(
            choose_reader_slot(&[1, 2, 3, 4, 5], 7),
            ReadLockOutcome::AllSlotsBusy
        );
        assert_eq!(
            choose_reader_slot(&[0, 0, 0, 0, 0], 0),
            ReadLockOutcome::Joined { slot: 0 }
        );
    }

    #[test]
    fn plan_from_header_state() {
        let good = RecoveryPlan::from_header_state(true, true, false);
        assert!(!good.needs_recovery());
        assert_eq!(good, RecoveryPlan::default());
        let stale = RecoveryPlan::from_header_state(true, true, true);
        assert!(stale.needs_recovery());
        assert!(
            stale.clear_stale_read_marks
                && !stale.reconstruct_wal_index
                && !stale.validate_backfill
        );
        for (m, i) in [(false, true), (true, false), (false, false)] {
            let p = RecoveryPlan::from_header_state(m, i, false);
            assert!(p.reconstruct_wal_index && p.clear_stale_read_marks && p.validate_backfill);
        }
    }
}
