//! `fsqlite verify`: one verdict per check, read-only.
//!
//! | check | what it proves | fails when |
//! |---|---|---|
//! | `database_header` | the file is a SQLite database, its page size, WAL mode | never (a non-database, or a file shorter than the 100-byte header, is an error, exit 3); warns when not in WAL mode or the size is not whole pages |
//! | `wal_header` | the WAL header passes magic, page size, checksum, version, and matches the database page size | a header that is invalid while frames follow it, an unknown version, another page size |
//! | `wal_chain` | the checksum chain of the valid prefix, and why it ends | when the prefix ends at a bad frame (checksum, salts, page 0) and a later frame with the current salts is a commit frame: committed transactions past the damage are lost, which a torn tail cannot explain (only a warning with `--allow-lost-tail`); warns when it ends at a bad frame with no commit after it (a torn tail, what a crash leaves) |
//! | `shm_header` | the two `-shm` header copies agree, are initialized and checksum | an unknown WAL-index version; warns when a reader would refuse the header (the next connection rebuilds it) |
//! | `shm_matches_wal` | the `-shm` header describes the WAL: salts, page size, word order, `mxFrame` is a valid commit frame with that `nPage` and `aFrameCksum`; `nBackfill ≤ nBackfillAttempted ≤ mxFrame`; read marks `≤ mxFrame` | always when `mxFrame` (same salts) lies past the WAL's valid prefix: committed frames are damaged; any other mismatch while a process is attached (readers trust it); only a warning when nobody is attached, since the next opener discards the `-shm` |
//! | `shm_hash_index` | every frame `1..=mxFrame` is in the hash tables with its page, and every page looks up to its newest frame | as `shm_matches_wal` |
//! | `backfilled_pages` | every page a checkpoint has backfilled (frames `≤ nBackfill`) reads back from the database as its newest backfilled frame (or a frame a running checkpoint is copying) | any page differs |
//! | `page_trailers` | where the database reserves ≥ 16 bytes per page: every database page and every committed WAL frame carries a correct xxh3-128 trailer | any trailer is wrong |
//!
//! Statuses: `ok`, `warn`, `fail`, `skip`. The exit status is 1 when any check fails, else
//! 0 (3 when verify cannot run, e.g. the file is not a database). Nothing is locked, so on a database that is being written the checks see a
//! snapshot; a transient `warn` (e.g. a writer between its WAL write and its `-shm`
//! publish) should disappear when run again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use fsqlite_error::FrankenError;
use fsqlite_types::Cx;
use fsqlite_vfs::unix::PENDING_BYTE;
use fsqlite_wal::checkpoint_executor::wal_frame_data_offset;
use fsqlite_wal::checksum::{WAL_FRAME_HEADER_SIZE, page_digest, verify_page_checksum};
use fsqlite_wal::db_header::{DB_HEADER_SIZE, DbHeader};
use fsqlite_wal::format::{FrameHeader, frame_offset, frames_in_file};
use fsqlite_wal::wal_index::{
    HashSegment, HeapRegions, READMARK_NOT_USED, WAL_INDEX_VERSION, WALINDEX_PGSZ, WalIndexHdr,
    frame_region, region_i_zero,
};
use fsqlite_wal::{ScanReport, StopReason};
use serde::Serialize;

use crate::files::{CliResult, DbFiles, hex32, open_read_only, read_at};
use crate::inspect::{ShmSnapshot, WalScan, read_db_header, read_shm, scan_wal};
use crate::probe::dms_holder;

/// The status of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// The property holds.
    Ok,
    /// Something a crash or a concurrent writer can leave; nothing committed is lost.
    Warn,
    /// The property is violated.
    Fail,
    /// The check does not apply (e.g. no `-wal`).
    Skip,
}

impl CheckStatus {
    /// `ok`, `warn`, `FAIL` or `skip`, padded for the text output.
    pub const fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok  ",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One check's verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// The check's name (see the module docs).
    pub name: &'static str,
    /// Its status.
    pub status: CheckStatus,
    /// One sentence: what was found, and where.
    pub detail: String,
}

/// How many checks ended in each status.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Counts {
    /// Checks that passed.
    pub ok: u32,
    /// Checks with a warning.
    pub warn: u32,
    /// Checks that failed.
    pub fail: u32,
    /// Checks that did not apply.
    pub skip: u32,
}

/// Options of `verify`.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions {
    /// `--allow-lost-tail`: commit frames after the WAL's first bad frame are expected
    /// (commits that were never synced may be lost, e.g. `synchronous=OFF` or `NORMAL`),
    /// so `wal_chain` only warns about them instead of failing.
    pub allow_lost_tail: bool,
}

/// Where the WAL's valid prefix ends at a frame, and what lies past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct WalBreak {
    /// Why the prefix ends there: `checksum_mismatch`, `salt_mismatch`,
    /// `zero_page_number` or `partial_frame`.
    pub reason: &'static str,
    /// The first frame that is not part of the valid prefix.
    pub frame: u32,
    /// Its byte offset in the WAL.
    pub offset: u64,
    /// Whole frames after it, up to the end of the file, whose header carries the WAL
    /// header's (current) salts.
    pub later_current_salt_frames: u32,
    /// Those of them whose header marks a commit (database size after commit != 0).
    pub later_commit_frames: u32,
    /// The first of those commit frames (`None` when there is none).
    pub first_later_commit_frame: Option<u32>,
    /// The last of those commit frames (`None` when there is none).
    pub last_later_commit_frame: Option<u32>,
}

/// What `verify` reports.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The database path as given.
    pub database: String,
    /// True when no check failed.
    pub ok: bool,
    /// True when some process had the database open (DMS held) during the checks.
    pub attached: bool,
    /// True when `--allow-lost-tail` was given.
    pub allow_lost_tail: bool,
    /// Where the WAL's valid prefix ends at a frame (`None` when it runs to the end of
    /// the file, or there is no valid WAL).
    pub wal_break: Option<WalBreak>,
    /// Every check, in the order of the module docs.
    pub checks: Vec<Check>,
    /// Totals per status.
    pub counts: Counts,
}

struct Ctx<'a> {
    files: &'a DbFiles,
    opts: VerifyOptions,
    db_header: Option<DbHeader>,
    db_size: u64,
    scan: WalScan,
    shm: ShmSnapshot,
    attached: bool,
}

fn check(name: &'static str, status: CheckStatus, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

/// Runs every check on the database at `db` with the default options (see the module
/// docs).
pub fn verify(db: &Path) -> CliResult<VerifyReport> {
    verify_with(db, VerifyOptions::default())
}

/// Runs every check on the database at `db` (see the module docs).
pub fn verify_with(db: &Path, opts: VerifyOptions) -> CliResult<VerifyReport> {
    let cx = Cx::new();
    let files = DbFiles::new(db);
    let len = files.require_db_file()?;
    if len > 0 && len < DB_HEADER_SIZE as u64 {
        return Err(DbHeader::too_short(&files.db, len).into());
    }
    let (db_size, db_header) = read_db_header(&files)?;
    let scan = scan_wal(&cx, &files)?;
    let shm_len = shm_bytes_needed(&scan);
    let shm = read_shm(&files, shm_len)?;
    let attached = dms_holder(&files.shm)?.is_some();
    let ctx = Ctx {
        files: &files,
        opts,
        db_header,
        db_size,
        scan,
        shm,
        attached,
    };
    let wal_break = find_wal_break(&ctx)?;
    let mut checks = vec![check_database(&ctx), check_wal_header(&ctx)];
    checks.push(check_wal_chain(&ctx, wal_break.as_ref()));
    checks.push(check_shm_header(&ctx));
    let consistent = check_shm_matches_wal(&ctx);
    let usable = consistent.status == CheckStatus::Ok;
    checks.push(consistent);
    checks.push(if usable {
        check_hash_index(&ctx)
    } else {
        check(
            "shm_hash_index",
            CheckStatus::Skip,
            "skipped: the -shm header is not a usable description of the WAL",
        )
    });
    checks.push(if usable {
        check_backfilled(&ctx)?
    } else {
        check(
            "backfilled_pages",
            CheckStatus::Skip,
            "skipped: without a usable -shm header nBackfill is unknown",
        )
    });
    checks.push(check_trailers(&ctx)?);
    let mut counts = Counts::default();
    for c in &checks {
        match c.status {
            CheckStatus::Ok => counts.ok += 1,
            CheckStatus::Warn => counts.warn += 1,
            CheckStatus::Fail => counts.fail += 1,
            CheckStatus::Skip => counts.skip += 1,
        }
    }
    Ok(VerifyReport {
        database: files.db.display().to_string(),
        ok: counts.fail == 0,
        attached,
        allow_lost_tail: opts.allow_lost_tail,
        wal_break,
        checks,
        counts,
    })
}

/// Bytes of `-shm` needed to check the index of every valid commit frame (the header
/// region at least).
fn shm_bytes_needed(scan: &WalScan) -> usize {
    let last = scan
        .report
        .map_or(0, |r| r.last_valid_frame.max(r.mx_frame));
    (frame_region(last.max(1)) as usize + 1) * WALINDEX_PGSZ
}

fn check_database(ctx: &Ctx<'_>) -> Check {
    let Some(h) = ctx.db_header else {
        return check(
            "database_header",
            CheckStatus::Ok,
            "empty database file (a new database; its pages live in the WAL)",
        );
    };
    let ps = u64::from(h.page_size.get());
    let pages = ctx.db_size / ps;
    if !h.is_wal_mode() {
        return check(
            "database_header",
            CheckStatus::Warn,
            format!(
                "SQLite database, page size {ps}, {pages} pages, but NOT in WAL mode (read/write versions {}/{}): there is no WAL to verify",
                h.read_version, h.write_version
            ),
        );
    }
    if !ctx.db_size.is_multiple_of(ps) {
        return check(
            "database_header",
            CheckStatus::Warn,
            format!(
                "the file is {} bytes, not a whole number of {ps}-byte pages (an extension torn by a crash?); the last {} bytes are ignored",
                ctx.db_size,
                ctx.db_size % ps
            ),
        );
    }
    check(
        "database_header",
        CheckStatus::Ok,
        format!("SQLite database in WAL mode, page size {ps}, {pages} pages in the file"),
    )
}

fn check_wal_header(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "wal_header";
    let scan = &ctx.scan;
    let Some(size) = scan.size else {
        return check(
            NAME,
            CheckStatus::Skip,
            format!(
                "no {} (the database was checkpointed and closed, or never written in WAL mode)",
                ctx.files.wal.display()
            ),
        );
    };
    if let Some(e) = &scan.error {
        return check(NAME, CheckStatus::Fail, e.to_string());
    }
    let Some(report) = scan.report else {
        return check(NAME, CheckStatus::Fail, "the WAL could not be scanned");
    };
    let Some(h) = report.header else {
        if size <= fsqlite_wal::checksum::WAL_HEADER_SIZE as u64 {
            return check(NAME, CheckStatus::Ok, format!("empty WAL ({size} bytes)"));
        }
        return check(
            NAME,
            CheckStatus::Fail,
            format!(
                "the header of {} is invalid ({}); SQLite and fsqlite treat the whole WAL as empty, so its {} bytes of frames are ignored",
                ctx.files.wal.display(),
                scan.header_problem.as_deref().unwrap_or("unknown problem"),
                size - fsqlite_wal::checksum::WAL_HEADER_SIZE as u64
            ),
        );
    };
    if let Some(db) = ctx.db_header
        && db.page_size.get() != h.page_size
        && report.mx_frame > 0
    {
        return check(
            NAME,
            CheckStatus::Fail,
            format!(
                "the WAL page size {} differs from the database page size {}",
                h.page_size,
                db.page_size.get()
            ),
        );
    }
    check(
        NAME,
        CheckStatus::Ok,
        format!(
            "valid: page size {}, checkpoint sequence {}, salts {} {}, {} checksum words",
            h.page_size,
            h.checkpoint_seq,
            hex32(h.salt[0]),
            hex32(h.salt[1]),
            if h.big_endian_checksum() {
                "big-endian"
            } else {
                "little-endian"
            }
        ),
    )
}

/// Where the valid prefix of a WAL with a valid header ends at a frame, with what the
/// frame headers past it say (see [`WalBreak`]).
fn find_wal_break(ctx: &Ctx<'_>) -> CliResult<Option<WalBreak>> {
    let Some(r) = ctx.scan.report.filter(|r| r.header.is_some()) else {
        return Ok(None);
    };
    let (reason, frame) = match r.stop {
        StopReason::EndOfFile | StopReason::EmptyOrInvalidHeader { .. } => return Ok(None),
        StopReason::PartialFrame { frame, .. } => ("partial_frame", frame),
        StopReason::SaltMismatch { frame } => ("salt_mismatch", frame),
        StopReason::ZeroPageNumber { frame } => ("zero_page_number", frame),
        StopReason::ChecksumMismatch { frame } => ("checksum_mismatch", frame),
    };
    let mut b = WalBreak {
        reason,
        frame,
        offset: r.stop_offset,
        later_current_salt_frames: 0,
        later_commit_frames: 0,
        first_later_commit_frame: None,
        last_later_commit_frame: None,
    };
    if reason != "partial_frame" {
        scan_frames_after(ctx, &r, &mut b)?;
    }
    Ok(Some(b))
}

/// Reads the 24-byte header of every whole frame after `b.frame`, up to the size the
/// scan saw (never past the end of the file, one fixed buffer), and counts those that
/// carry the WAL header's salts and those of them that are commit frames.
fn scan_frames_after(ctx: &Ctx<'_>, r: &ScanReport, brk: &mut WalBreak) -> CliResult<()> {
    let Some(h) = r.header else {
        return Ok(());
    };
    let Some(file) = open_read_only(&ctx.files.wal)? else {
        return Ok(());
    };
    let total = frames_in_file(r.file_size, h.page_size);
    let mut buf = [0u8; WAL_FRAME_HEADER_SIZE];
    for frame in brk.frame.saturating_add(1)..=total {
        match file.read_exact_at(&mut buf, frame_offset(frame, h.page_size)) {
            Ok(()) => {}
            // The file shrank since the scan (a checkpoint reset it): stop there.
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(err) => {
                return Err(FrankenError::io("read", Some(ctx.files.wal.clone()), err).into());
            }
        }
        let fh = FrameHeader::decode(&buf)?;
        if fh.salt != h.salt {
            continue;
        }
        brk.later_current_salt_frames += 1;
        if fh.is_commit() {
            brk.later_commit_frames += 1;
            brk.first_later_commit_frame.get_or_insert(frame);
            brk.last_later_commit_frame = Some(frame);
        }
    }
    Ok(())
}

fn check_wal_chain(ctx: &Ctx<'_>, wal_break: Option<&WalBreak>) -> Check {
    const NAME: &str = "wal_chain";
    let Some(r) = ctx.scan.report.filter(|r| r.header.is_some()) else {
        return check(
            NAME,
            CheckStatus::Skip,
            "no valid WAL header: no frames to chain",
        );
    };
    let summary = format!(
        "{} valid frames, {} commits, mxFrame {} (database size {} pages), {} uncommitted",
        r.last_valid_frame,
        r.commits,
        r.mx_frame,
        r.n_page,
        r.uncommitted_frames()
    );
    let what = match r.stop {
        StopReason::EndOfFile | StopReason::EmptyOrInvalidHeader { .. } => {
            return check(
                NAME,
                CheckStatus::Ok,
                format!("{summary}; the chain runs to the end of the file"),
            );
        }
        StopReason::PartialFrame { frame, bytes } => {
            return check(
                NAME,
                CheckStatus::Warn,
                format!(
                    "{summary}; frame {frame} is partial ({bytes} bytes at offset {}): a write torn by a crash, never acknowledged",
                    r.stop_offset
                ),
            );
        }
        StopReason::SaltMismatch { .. } => "carries other salts than the WAL header",
        StopReason::ZeroPageNumber { .. } => "has page number 0",
        StopReason::ChecksumMismatch { .. } => "fails its checksum",
    };
    let Some(b) = wal_break else {
        return check(NAME, CheckStatus::Fail, "the WAL could not be scanned");
    };
    let (frame, offset, later) = (b.frame, b.offset, b.later_current_salt_frames);
    if let (Some(first), Some(last)) = (b.first_later_commit_frame, b.last_later_commit_frame) {
        let lost = format!(
            "{summary}; frame {frame} (offset {offset}) {what}, but {later} later frames carry the current salts and {} of them are commit frames (the first is frame {first}, the last frame {last}): transactions committed after the damage are lost (recovery keeps only the commits up to frame {}, and the next writer overwrites the rest), which a write torn by a crash at the tail cannot explain",
            b.later_commit_frames, r.mx_frame
        );
        return if ctx.opts.allow_lost_tail {
            check(
                NAME,
                CheckStatus::Warn,
                format!(
                    "{lost}; only a warning because of --allow-lost-tail (commits that were never synced may be lost)"
                ),
            )
        } else {
            check(
                NAME,
                CheckStatus::Fail,
                format!(
                    "{lost}; copy {} somewhere safe before any writer opens the database, and pass --allow-lost-tail only if unsynced commits may be lost here (synchronous=OFF or NORMAL)",
                    ctx.files.wal.display()
                ),
            )
        };
    }
    if later > 0 {
        return check(
            NAME,
            CheckStatus::Warn,
            format!(
                "{summary}; frame {frame} (offset {offset}) {what}; {later} later frames carry the current salts but none is a commit frame: a transaction torn by a crash, never acknowledged"
            ),
        );
    }
    if matches!(r.stop, StopReason::SaltMismatch { .. }) {
        return check(
            NAME,
            CheckStatus::Ok,
            format!(
                "{summary}; frames from {frame} on belong to an older WAL generation (normal after a restart)"
            ),
        );
    }
    check(
        NAME,
        CheckStatus::Warn,
        format!(
            "{summary}; frame {frame} (offset {offset}) {what}; nothing after it carries the current salts: a transaction torn by a crash, never acknowledged"
        ),
    )
}

fn check_shm_header(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "shm_header";
    let Some(size) = ctx.shm.size else {
        return check(
            NAME,
            CheckStatus::Skip,
            format!(
                "no {} (the next connection creates it)",
                ctx.files.shm.display()
            ),
        );
    };
    match ctx.shm.valid_header() {
        None => check(
            NAME,
            CheckStatus::Ok,
            format!("uninitialized ({size} bytes): the next connection rebuilds it from the WAL"),
        ),
        Some(Err(defect)) => check(
            NAME,
            CheckStatus::Warn,
            format!(
                "{defect}; the next connection (or `fsqlite recover`) rebuilds it from the WAL{}",
                if ctx.attached {
                    " (a process is attached: a writer may be publishing right now; run verify again)"
                } else {
                    ""
                }
            ),
        ),
        Some(Ok(h)) if h.i_version != WAL_INDEX_VERSION => check(
            NAME,
            CheckStatus::Fail,
            format!(
                "WAL-index version {} is not {WAL_INDEX_VERSION}: SQLite and fsqlite refuse to open this database until the -shm is removed (with no process attached)",
                h.i_version
            ),
        ),
        Some(Ok(h)) => check(
            NAME,
            CheckStatus::Ok,
            format!(
                "valid: copies equal, checksum ok, mxFrame {}, nPage {}, change counter {}",
                h.mx_frame, h.n_page, h.i_change
            ),
        ),
    }
}

/// The `-shm` header if it is valid and of the supported version.
fn usable_header(ctx: &Ctx<'_>) -> Option<WalIndexHdr> {
    match ctx.shm.valid_header() {
        Some(Ok(h)) if h.i_version == WAL_INDEX_VERSION => Some(h),
        _ => None,
    }
}

fn mismatch_status(ctx: &Ctx<'_>) -> (CheckStatus, &'static str) {
    if ctx.attached {
        (CheckStatus::Fail, "")
    } else {
        (
            CheckStatus::Warn,
            " (harmless right now: no process is attached, and the next one to open the database discards the -shm and rebuilds it)",
        )
    }
}

fn shm_problems(ctx: &Ctx<'_>, h: &WalIndexHdr) -> Vec<String> {
    let mut problems = Vec::new();
    let report = ctx.scan.report.filter(|r| r.header.is_some());
    if let Some(ckpt) = ctx.shm.ckpt {
        if ckpt.n_backfill > h.mx_frame {
            problems.push(format!(
                "nBackfill {} exceeds mxFrame {}",
                ckpt.n_backfill, h.mx_frame
            ));
        }
        if ckpt.n_backfill_attempted > h.mx_frame {
            problems.push(format!(
                "nBackfillAttempted {} exceeds mxFrame {}",
                ckpt.n_backfill_attempted, h.mx_frame
            ));
        }
        if ckpt.n_backfill > ckpt.n_backfill_attempted && ckpt.n_backfill_attempted != 0 {
            problems.push(format!(
                "nBackfill {} exceeds nBackfillAttempted {}",
                ckpt.n_backfill, ckpt.n_backfill_attempted
            ));
        }
        for (i, m) in ckpt.a_read_mark.iter().enumerate() {
            if *m != READMARK_NOT_USED && *m > h.mx_frame {
                problems.push(format!("read mark {i} is {m}, past mxFrame {}", h.mx_frame));
            }
        }
    }
    if h.mx_frame == 0 {
        return problems;
    }
    let Some((r, wh)) = report.and_then(|r| r.header.map(|wh| (r, wh))) else {
        problems.push(format!(
            "mxFrame is {} but the WAL has no valid header",
            h.mx_frame
        ));
        return problems;
    };
    if h.wal_salts() != wh.salt {
        let [a, b] = h.wal_salts();
        problems.push(format!(
            "salts {} {} differ from the WAL header's {} {}",
            hex32(a),
            hex32(b),
            hex32(wh.salt[0]),
            hex32(wh.salt[1])
        ));
        return problems;
    }
    if h.page_size().map(fsqlite_types::PageSize::get) != Some(wh.page_size) {
        problems.push(format!(
            "page size (encoded {}) differs from the WAL's {}",
            h.sz_page, wh.page_size
        ));
    }
    if (h.big_end_cksum != 0) != wh.big_endian_checksum() {
        problems.push("the checksum word order differs from the WAL magic's".to_owned());
    }
    match ctx.scan.commit_db_size(h.mx_frame) {
        None if h.mx_frame > r.mx_frame => {}
        None => problems.push(format!(
            "mxFrame {} is not a commit frame of the WAL",
            h.mx_frame
        )),
        Some(n) if n != h.n_page => problems.push(format!(
            "nPage {} differs from the database size {n} recorded in commit frame {}",
            h.n_page, h.mx_frame
        )),
        Some(_) => {}
    }
    if h.mx_frame == r.mx_frame && h.a_frame_cksum != r.frame_checksum {
        problems.push(format!(
            "aFrameCksum {} {} differs from the WAL's running checksum {} {} at frame {}",
            hex32(h.a_frame_cksum[0]),
            hex32(h.a_frame_cksum[1]),
            hex32(r.frame_checksum[0]),
            hex32(r.frame_checksum[1]),
            h.mx_frame
        ));
    }
    problems
}

fn check_shm_matches_wal(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "shm_matches_wal";
    let Some(h) = usable_header(ctx) else {
        return check(
            NAME,
            CheckStatus::Skip,
            "skipped: no valid -shm header to compare",
        );
    };
    if let Some(r) = ctx.scan.report
        && let Some(wh) = r.header
        && h.wal_salts() == wh.salt
        && h.mx_frame > r.mx_frame
    {
        return check(
            NAME,
            CheckStatus::Fail,
            format!(
                "the -shm publishes commits up to frame {} but the WAL's valid prefix ends at commit frame {} ({}): committed frames {}..={} are damaged; copy {} somewhere safe before any writer opens the database (it would overwrite them)",
                h.mx_frame,
                r.mx_frame,
                r.stop,
                r.mx_frame + 1,
                h.mx_frame,
                ctx.files.wal.display()
            ),
        );
    }
    let problems = shm_problems(ctx, &h);
    if !problems.is_empty() {
        let (status, note) = mismatch_status(ctx);
        return check(NAME, status, format!("{}{note}", problems.join("; ")));
    }
    let ckpt = ctx.shm.ckpt.unwrap_or_default();
    let wal_mx = ctx.scan.report.map_or(0, |r| r.mx_frame);
    let ahead = if wal_mx > h.mx_frame {
        format!(
            "; the WAL holds commits up to frame {wal_mx} that the -shm has not published yet ({})",
            if ctx.attached {
                "a writer is between its WAL write and its -shm publish"
            } else {
                "a writer died there; recovery will adopt them"
            }
        )
    } else {
        String::new()
    };
    check(
        NAME,
        CheckStatus::Ok,
        format!(
            "the -shm describes the WAL: mxFrame {} (nPage {}), nBackfill {}, nBackfillAttempted {}{ahead}",
            h.mx_frame, h.n_page, ckpt.n_backfill, ckpt.n_backfill_attempted
        ),
    )
}

fn check_hash_index(ctx: &Ctx<'_>) -> Check {
    const NAME: &str = "shm_hash_index";
    let Some(h) = usable_header(ctx) else {
        return check(NAME, CheckStatus::Skip, "skipped: no valid -shm header");
    };
    let mx = h.mx_frame;
    if mx == 0 {
        return check(NAME, CheckStatus::Ok, "no frames are indexed (mxFrame 0)");
    }
    let needed = (frame_region(mx) as usize + 1) * WALINDEX_PGSZ;
    if ctx.shm.image.len() < needed {
        let (status, note) = mismatch_status(ctx);
        return check(
            NAME,
            status,
            format!(
                "the -shm is {} bytes but frames up to {mx} need {needed} (region {} is missing){note}",
                ctx.shm.image.len(),
                frame_region(mx)
            ),
        );
    }
    let heap = HeapRegions::from_image(&ctx.shm.image[..needed]);
    let mut problems = Vec::new();
    let mut newest: BTreeMap<u32, u32> = BTreeMap::new();
    for &(frame, page, _) in ctx.scan.frames.iter().take(mx as usize) {
        newest.insert(page, frame);
        let ri = frame_region(frame);
        let Some(region) = heap.get(ri) else {
            problems.push(format!("region {ri} missing"));
            break;
        };
        let seg = HashSegment::new(region, ri);
        let got = seg.pgno_at(frame - region_i_zero(ri) - 1);
        if got != page && problems.len() < 8 {
            problems.push(format!(
                "frame {frame} is indexed as page {got}, the WAL says {page}"
            ));
        }
    }
    for (&page, &frame) in &newest {
        let mut found = None;
        for ri in (0..=frame_region(mx)).rev() {
            let Some(region) = heap.get(ri) else { break };
            match HashSegment::new(region, ri).lookup(page, 1, mx) {
                Ok(Some(f)) => {
                    found = Some(f);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    problems.push(e.to_string());
                    break;
                }
            }
        }
        if found != Some(frame) && problems.len() < 8 {
            problems.push(format!(
                "page {page} looks up to frame {found:?}, its newest frame is {frame}"
            ));
        }
    }
    if problems.is_empty() {
        check(
            NAME,
            CheckStatus::Ok,
            format!(
                "{mx} frames indexed with their pages; {} pages look up to their newest frame",
                newest.len()
            ),
        )
    } else {
        let (status, note) = mismatch_status(ctx);
        check(NAME, status, format!("{}{note}", problems.join("; ")))
    }
}

fn read_page(f: &File, path: &Path, offset: u64, ps: usize) -> CliResult<Option<Vec<u8>>> {
    let b = read_at(f, path, offset, ps)?;
    Ok((b.len() == ps).then_some(b))
}

fn check_backfilled(ctx: &Ctx<'_>) -> CliResult<Check> {
    const NAME: &str = "backfilled_pages";
    let (Some(h), Some(ckpt)) = (usable_header(ctx), ctx.shm.ckpt) else {
        return Ok(check(
            NAME,
            CheckStatus::Skip,
            "skipped: no valid -shm header",
        ));
    };
    let Some(ps) = ctx.scan.page_size() else {
        return Ok(check(
            NAME,
            CheckStatus::Skip,
            "skipped: no valid WAL header",
        ));
    };
    let nb = ckpt.n_backfill;
    if nb == 0 {
        return Ok(check(
            NAME,
            CheckStatus::Ok,
            "nothing has been backfilled yet (nBackfill 0)",
        ));
    }
    // Candidate images per page: the newest frame <= nBackfill, plus frames a checkpoint
    // may be copying right now (nBackfill, nBackfillAttempted].
    let upper = ckpt.n_backfill_attempted.max(nb).min(h.mx_frame);
    let mut candidates: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for &(frame, page, _) in ctx.scan.frames.iter().take(upper as usize) {
        if page > h.n_page {
            continue;
        }
        let list = candidates.entry(page).or_default();
        if frame <= nb {
            list.retain(|f| *f > nb);
        }
        list.push(frame);
    }
    // A page whose every frame is past nBackfill still holds its older image.
    candidates.retain(|_, frames| frames.first().is_some_and(|f| *f <= nb));
    let (Some(wal), Some(db)) = (
        open_read_only(&ctx.files.wal)?,
        open_read_only(&ctx.files.db)?,
    ) else {
        return Ok(check(
            NAME,
            CheckStatus::Skip,
            "skipped: a file disappeared",
        ));
    };
    let psz = ps as usize;
    let mut bad = Vec::new();
    for (&page, frames) in &candidates {
        let db_page = read_page(&db, &ctx.files.db, u64::from(page - 1) * u64::from(ps), psz)?;
        let Some(db_page) = db_page else {
            bad.push(format!("page {page} is past the end of the database file"));
            continue;
        };
        let got = page_digest(&db_page);
        let mut matched = false;
        for &f in frames {
            if let Some(img) = read_page(&wal, &ctx.files.wal, wal_frame_data_offset(f, ps), psz)?
                && page_digest(&img) == got
            {
                matched = true;
                break;
            }
        }
        if !matched {
            bad.push(format!(
                "page {page} differs from its backfilled frame {}",
                frames.first().copied().unwrap_or(0)
            ));
        }
    }
    Ok(if bad.is_empty() {
        check(
            NAME,
            CheckStatus::Ok,
            format!(
                "{} backfilled pages read back as their WAL frames (nBackfill {nb})",
                candidates.len()
            ),
        )
    } else {
        let n = bad.len();
        bad.truncate(8);
        check(
            NAME,
            CheckStatus::Fail,
            format!(
                "{n} of {} backfilled pages differ from the WAL (the database file lost checkpointed writes): {}; keep the -wal file",
                candidates.len(),
                bad.join("; ")
            ),
        )
    })
}

fn check_trailers(ctx: &Ctx<'_>) -> CliResult<Check> {
    const NAME: &str = "page_trailers";
    let Some(h) = ctx.db_header else {
        return Ok(check(
            NAME,
            CheckStatus::Skip,
            "skipped: empty database file",
        ));
    };
    if !h.has_page_trailer() {
        return Ok(check(
            NAME,
            CheckStatus::Skip,
            format!(
                "the database reserves {} bytes per page; xxh3-128 trailers need {}",
                h.reserved_bytes,
                fsqlite_wal::checksum::PAGE_CHECKSUM_RESERVED_BYTES
            ),
        ));
    }
    let ps = h.page_size.get();
    let psz = ps as usize;
    let pending_page = PENDING_BYTE / u64::from(ps) + 1;
    let mut bad = Vec::new();
    let mut checked = 0u64;
    if let Some(db) = open_read_only(&ctx.files.db)? {
        for page in 1..=ctx.db_size / u64::from(ps) {
            if page == pending_page {
                continue;
            }
            let Some(img) = read_page(&db, &ctx.files.db, (page - 1) * u64::from(ps), psz)? else {
                break;
            };
            checked += 1;
            if !verify_page_checksum(&img)? {
                bad.push(format!("database page {page}"));
            }
        }
    }
    if let (Some(r), Some(wal)) = (ctx.scan.report, open_read_only(&ctx.files.wal)?)
        && ctx.scan.page_size() == Some(ps)
    {
        for &(frame, page, _) in ctx.scan.frames.iter().take(r.mx_frame as usize) {
            let Some(img) = read_page(&wal, &ctx.files.wal, wal_frame_data_offset(frame, ps), psz)?
            else {
                break;
            };
            checked += 1;
            if !verify_page_checksum(&img)? {
                bad.push(format!("WAL frame {frame} (page {page})"));
            }
        }
    }
    Ok(if bad.is_empty() {
        check(
            NAME,
            CheckStatus::Ok,
            format!("{checked} page images carry a correct xxh3-128 trailer"),
        )
    } else {
        let n = bad.len();
        bad.truncate(8);
        check(
            NAME,
            CheckStatus::Fail,
            format!(
                "{n} of {checked} page images have a wrong trailer: {}",
                bad.join(", ")
            ),
        )
    })
}

/// The human-readable form: one line per check, then the verdict.
pub fn render_text(r: &VerifyReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "verify {}", r.database);
    for c in &r.checks {
        let _ = writeln!(o, "[{}] {}: {}", c.status.label(), c.name, c.detail);
    }
    let c = r.counts;
    let _ = writeln!(
        o,
        "verdict: {} ({} ok, {} warnings, {} failed, {} skipped)",
        if r.ok { "OK" } else { "FAILED" },
        c.ok,
        c.warn,
        c.fail,
        c.skip
    );
    o
}
