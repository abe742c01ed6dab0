//! `fsqlite checkpoint`: a checkpoint through the recovery barrier, and an independent
//! read-back of what it wrote.
//!
//! ```text
//! open      Wal::open (checkpoint_on_close = false, auto_checkpoint off); this may
//!           itself recover the WAL-index under the recovery fence
//! prescan   H0 := the WAL-index header the connection sees; scan the WAL (valid prefix)
//!           and record, per page, the xxh3-128 digest of each frame <= H0.mxFrame
//! run       Wal::checkpoint(mode): CKPT lock (+ WRITE for FULL/RESTART/TRUNCATE), copy
//!           pages, full fsync of the database, read back and verify every copied page
//!           (the recovery barrier), only then advance nBackfill / reset the WAL
//! barrier   what the barrier reported (pages copied and verified, fsync and verify
//!           time), captured from its tracing event (crate::capture)
//! read-back B := frames now backfilled (H0.mxFrame after a WAL reset, else the
//!           outcome's checkpointed frames); for each page with a frame <= B (and
//!           <= nPage) the database page must equal its newest frame <= B
//! ```
//!
//! The read-back is valid only when no commit landed between the prescan and the
//! checkpoint (the connection's header after the checkpoint has H0's `iChange`); otherwise
//! it is reported as `inconclusive`, never as a failure. A mismatch on an unchanged
//! database is a failure (exit status 1): the database file does not hold what the WAL
//! says was checkpointed.
//!
//! With `show_progress`, an indicatif bar follows the prescan and the read-back, and a
//! spinner runs while the checkpoint itself runs (the binary enables it only when stderr
//! is a terminal and `--json` is off).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::checkpoint_executor::wal_frame_data_offset;
use fsqlite_wal::checksum::{Xxh3Checksum128, page_digest};
use fsqlite_wal::wal_index::{WALINDEX_HDR_SIZE, WalIndexHdr};
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::capture;
use crate::files::{CliError, CliResult, DbFiles, file_size, open_read_only, read_at};
use crate::inspect::{read_db_header, read_shm, scan_wal};

/// Options of a checkpoint run.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// SQLite's checkpoint mode.
    pub mode: CheckpointMode,
    /// How long lock waits may take.
    pub busy_timeout: Duration,
    /// Show an indicatif bar/spinner on stderr.
    pub show_progress: bool,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        Self {
            mode: CheckpointMode::Passive,
            busy_timeout: Duration::from_secs(5),
            show_progress: false,
        }
    }
}

/// What the recovery barrier reported (summed over its copy events).
#[derive(Clone, Debug, Default, Serialize)]
pub struct BarrierInfo {
    /// True when the barrier's report was captured (false when nothing was copied, or
    /// the tracing layer is not installed).
    pub observed: bool,
    /// Pages copied into the database, fully fsynced, read back and verified against
    /// their WAL frames' xxh3-128 digests.
    pub pages_verified: u64,
    /// Coalesced write runs.
    pub runs: u64,
    /// Microseconds in the full fsync of the database.
    pub db_fsync_us: u64,
    /// Microseconds reading back and verifying.
    pub verify_us: u64,
    /// Microseconds of the whole copy + barrier.
    pub total_us: u64,
}

/// The independent read-back after the checkpoint.
#[derive(Clone, Debug, Serialize)]
pub struct ReadBack {
    /// `verified`, `mismatch`, `inconclusive` or `nothing_to_check`.
    pub status: &'static str,
    /// Pages compared.
    pub pages: u32,
    /// One sentence.
    pub detail: String,
}

/// What `checkpoint` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointReport {
    /// The database path as given.
    pub database: String,
    /// `passive`, `full`, `restart` or `truncate`.
    pub mode: &'static str,
    /// SQLite's triple: could not complete (a reader or writer was in the way).
    pub busy: bool,
    /// SQLite's triple: frames in the WAL (`mxFrame`) after the checkpoint.
    pub log_frames: u32,
    /// SQLite's triple: frames backfilled into the database (`nBackfill`).
    pub checkpointed_frames: u32,
    /// `mxFrame` when the connection opened.
    pub mx_frame_before: u32,
    /// `nBackfill` before the checkpoint (from the `-shm`; 0 when unknown).
    pub n_backfill_before: u32,
    /// True when opening the connection rebuilt the WAL-index.
    pub recovered_on_open: bool,
    /// Milliseconds in `Wal::checkpoint`.
    pub checkpoint_ms: f64,
    /// What the recovery barrier verified.
    pub barrier: BarrierInfo,
    /// The independent read-back.
    pub read_back: ReadBack,
    /// The WAL's size afterwards (`None` when missing).
    pub wal_size_after: Option<u64>,
    /// Why nothing was done, when nothing was (e.g. no WAL).
    pub note: Option<String>,
}

impl CheckpointReport {
    /// True unless the read-back found a mismatch.
    pub fn ok(&self) -> bool {
        self.read_back.status != "mismatch"
    }
}

/// The lowercase name of a mode.
pub const fn mode_name(mode: CheckpointMode) -> &'static str {
    match mode {
        CheckpointMode::Passive => "passive",
        CheckpointMode::Full => "full",
        CheckpointMode::Restart => "restart",
        CheckpointMode::Truncate => "truncate",
    }
}

fn bar(show: bool, len: u64, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} ({elapsed})")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg);
    pb
}

fn spinner(show: bool, msg: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// Per page, every frame `<= mx` with its digest, in frame order.
type Prescan = BTreeMap<u32, Vec<(u32, Xxh3Checksum128)>>;

fn prescan(
    cx: &Cx,
    files: &DbFiles,
    h0: &WalIndexHdr,
    pb: &ProgressBar,
) -> CliResult<Option<Prescan>> {
    if h0.mx_frame == 0 {
        return Ok(Some(Prescan::new()));
    }
    let scan = scan_wal(cx, files)?;
    let Some(r) = scan.report else {
        return Ok(None);
    };
    let Some(h) = r.header else { return Ok(None) };
    if h.salt != h0.wal_salts() || r.mx_frame < h0.mx_frame {
        return Ok(None);
    }
    let Some(wal) = open_read_only(&files.wal)? else {
        return Ok(None);
    };
    let ps = h.page_size;
    let mut out = Prescan::new();
    pb.set_length(u64::from(h0.mx_frame));
    for &(frame, page, _) in scan.frames.iter().take(h0.mx_frame as usize) {
        let img = read_at(
            &wal,
            &files.wal,
            wal_frame_data_offset(frame, ps),
            ps as usize,
        )?;
        if img.len() != ps as usize {
            return Ok(None);
        }
        out.entry(page)
            .or_default()
            .push((frame, page_digest(&img)));
        pb.inc(1);
    }
    Ok(Some(out))
}

fn summarize_barrier() -> BarrierInfo {
    let mut b = BarrierInfo::default();
    for e in capture::take() {
        if e.get("verify_us").is_none() {
            continue;
        }
        b.observed = true;
        b.pages_verified += e.get("pages").unwrap_or(0);
        b.runs += e.get("runs").unwrap_or(0);
        b.db_fsync_us += e.get("sync_us").unwrap_or(0);
        b.verify_us += e.get("verify_us").unwrap_or(0);
        b.total_us += e.get("total_us").unwrap_or(0);
    }
    b
}

fn read_back(
    files: &DbFiles,
    pre: Option<&Prescan>,
    h0: &WalIndexHdr,
    upto: u32,
    page_size: u32,
    pb: &ProgressBar,
) -> CliResult<ReadBack> {
    let Some(pre) = pre else {
        return Ok(ReadBack {
            status: "inconclusive",
            pages: 0,
            detail: "the WAL changed while it was being read; nothing to compare".to_owned(),
        });
    };
    let expected: Vec<(u32, u32, Xxh3Checksum128)> = pre
        .iter()
        .filter(|(page, _)| **page <= h0.n_page)
        .filter_map(|(page, frames)| {
            frames
                .iter()
                .rev()
                .find(|(f, _)| *f <= upto)
                .map(|(f, d)| (*page, *f, *d))
        })
        .collect();
    if expected.is_empty() {
        return Ok(ReadBack {
            status: "nothing_to_check",
            pages: 0,
            detail: "no page has been backfilled".to_owned(),
        });
    }
    let Some(db) = open_read_only(&files.db)? else {
        return Err(CliError::failed(
            format!("{} disappeared during the checkpoint", files.db.display()),
            "check what else is using this directory",
        ));
    };
    pb.set_length(expected.len() as u64);
    pb.set_position(0);
    pb.set_message("read-back");
    let mut bad = Vec::new();
    for (page, frame, digest) in &expected {
        let img = read_at(
            &db,
            &files.db,
            u64::from(page - 1) * u64::from(page_size),
            page_size as usize,
        )?;
        if img.len() != page_size as usize || page_digest(&img) != *digest {
            bad.push(format!("page {page} (frame {frame})"));
        }
        pb.inc(1);
    }
    let n = expected.len() as u32;
    Ok(if bad.is_empty() {
        ReadBack {
            status: "verified",
            pages: n,
            detail: format!(
                "{n} pages read back from the database equal their newest checkpointed WAL frame (frames 1..={upto})"
            ),
        }
    } else {
        let count = bad.len();
        bad.truncate(8);
        ReadBack {
            status: "mismatch",
            pages: n,
            detail: format!(
                "{count} of {n} pages differ from their checkpointed WAL frames: {}; keep the -wal file and restore the database from a backup",
                bad.join(", ")
            ),
        }
    })
}

fn nothing(files: &DbFiles, mode: CheckpointMode, note: String) -> CheckpointReport {
    CheckpointReport {
        database: files.db.display().to_string(),
        mode: mode_name(mode),
        busy: false,
        log_frames: 0,
        checkpointed_frames: 0,
        mx_frame_before: 0,
        n_backfill_before: 0,
        recovered_on_open: false,
        checkpoint_ms: 0.0,
        barrier: BarrierInfo::default(),
        read_back: ReadBack {
            status: "nothing_to_check",
            pages: 0,
            detail: "nothing was checkpointed".to_owned(),
        },
        wal_size_after: None,
        note: Some(note),
    }
}

/// Runs a checkpoint of the database at `db` (see the module docs).
pub fn checkpoint(db: &Path, opts: &CheckpointOptions) -> CliResult<CheckpointReport> {
    let cx = Cx::new();
    let files = DbFiles::new(db);
    let (_, header) = read_db_header(&files)?;
    if let Some(h) = header {
        h.require_wal_mode(&files.db)?;
    }
    if file_size(&files.wal)?.is_none() {
        return Ok(nothing(
            &files,
            opts.mode,
            format!(
                "no {}: the database holds every committed page already",
                files.wal.display()
            ),
        ));
    }
    let options = WalOptions {
        busy_timeout: opts.busy_timeout,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    };
    let mut wal = Wal::open(&cx, Arc::new(UnixVfs::new()), &files.db, options)?;
    let h0 = wal.cached_header();
    let recovered_on_open = wal.recoveries() > 0;
    let shm0 = read_shm(&files, WALINDEX_HDR_SIZE)?;
    let n_backfill_before = match (shm0.valid_header(), shm0.ckpt) {
        (Some(Ok(_)), Some(c)) => c.n_backfill,
        _ => 0,
    };
    let pb = bar(opts.show_progress && h0.mx_frame > 0, 0, "prescan");
    let pre = prescan(&cx, &files, &h0, &pb)?;
    pb.finish_and_clear();
    let _ = capture::take();
    let sp = spinner(opts.show_progress, "checkpointing");
    let t = Instant::now();
    let outcome = wal.checkpoint(&cx, opts.mode);
    let checkpoint_ms = t.elapsed().as_secs_f64() * 1e3;
    sp.finish_and_clear();
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = wal.close(&cx);
            return Err(e.into());
        }
    };
    let barrier = summarize_barrier();
    let h1 = wal.cached_header();
    let page_size = wal.page_size();
    let reset = h0.mx_frame > 0 && outcome.log_frames == 0 && !outcome.busy;
    let upto = if reset {
        h0.mx_frame
    } else {
        outcome.checkpointed_frames
    };
    let pb = bar(opts.show_progress, 0, "read-back");
    let rb = if h1.i_change != h0.i_change || upto > h0.mx_frame {
        ReadBack {
            status: "inconclusive",
            pages: 0,
            detail: "another connection committed between the prescan and the checkpoint; run `fsqlite verify` for a read-back of backfilled pages".to_owned(),
        }
    } else {
        read_back(&files, pre.as_ref(), &h0, upto, page_size, &pb)?
    };
    pb.finish_and_clear();
    wal.close(&cx)?;
    Ok(CheckpointReport {
        database: files.db.display().to_string(),
        mode: mode_name(opts.mode),
        busy: outcome.busy,
        log_frames: outcome.log_frames,
        checkpointed_frames: outcome.checkpointed_frames,
        mx_frame_before: h0.mx_frame,
        n_backfill_before,
        recovered_on_open,
        checkpoint_ms,
        barrier,
        read_back: rb,
        wal_size_after: file_size(&files.wal)?,
        note: None,
    })
}

/// The human-readable form.
pub fn render_text(r: &CheckpointReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "checkpoint {} ({})", r.database, r.mode);
    if let Some(n) = &r.note {
        let _ = writeln!(o, "  {n}");
    }
    let _ = writeln!(
        o,
        "  busy {}, log frames {}, checkpointed frames {}   (SQLite's triple: {}|{}|{})",
        r.busy,
        r.log_frames,
        r.checkpointed_frames,
        u8::from(r.busy),
        r.log_frames,
        r.checkpointed_frames
    );
    if r.note.is_none() {
        let _ = writeln!(
            o,
            "  before: mxFrame {}, nBackfill {}{}; checkpoint took {:.2} ms",
            r.mx_frame_before,
            r.n_backfill_before,
            if r.recovered_on_open {
                " (the WAL-index was rebuilt on open)"
            } else {
                ""
            },
            r.checkpoint_ms
        );
    }
    let b = &r.barrier;
    if b.observed {
        let _ = writeln!(
            o,
            "  recovery barrier: {} pages copied in {} runs, database fully fsynced ({} us), read back and verified against their WAL frames ({} us)",
            b.pages_verified, b.runs, b.db_fsync_us, b.verify_us
        );
    } else {
        let _ = writeln!(
            o,
            "  recovery barrier: no pages were copied by this checkpoint"
        );
    }
    let _ = writeln!(
        o,
        "  read-back: {} — {}",
        r.read_back.status, r.read_back.detail
    );
    if let Some(s) = r.wal_size_after {
        let _ = writeln!(o, "  WAL size now {s} bytes");
    }
    o
}
