//! `fsqlite recover`: rebuild the `-shm` (WAL-index) from the WAL, under the recovery
//! fence, only when no other process has the database open.
//!
//! ```text
//! 1. the database must be a SQLite database in WAL mode; no -wal: nothing to do
//! 2. probe (F_OFD_GETLK, no lock taken):
//!      the -shm DMS byte held by anyone   -> refuse (exit 4): a live connection uses it
//!      any database lock byte held        -> refuse (exit 4)
//! 3. scan the WAL read-only (what recovery should find); if the old -shm is valid, of
//!    the same WAL generation, and publishes commits past the WAL's valid prefix (WAL
//!    frames that were committed are damaged), refuse unless --force: rebuilding would
//!    make that loss permanent once a writer appends over them
//! 4. Wal::open: the VFS runs SQLite's dead-man-switch protocol; finding the DMS byte
//!    free it truncates the -shm (the old index is discarded exactly as SQLite's first
//!    opener does), so the header is invalid and the connection recovers: WRITE lock,
//!    in-process recovery fence, CKPT + RECOVER locks, scan, rebuild the hash tables
//!    privately, copy them in, publish the header
//! 5. close without checkpointing (nothing else is written); read the new -shm back and
//!    compare it with the scan
//! ```
//!
//! Step 4 cannot damage a live database even if a process attaches between steps 2 and
//! 4: then the DMS byte is held, the VFS keeps the `-shm` as it is, and the connection
//! only recovers if the header really is unusable (what any SQLite connection would do).
//! The report says whether a rebuild happened.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::wal_index::WALINDEX_HDR_SIZE;
use fsqlite_wal::{Wal, WalOptions};
use serde::Serialize;

use crate::files::{CliError, CliResult, DbFiles, file_size, hex32};
use crate::inspect::{StopInfo, read_db_header, read_shm, scan_wal, wal_info};
use crate::probe::{db_lock_holder, dms_holder};

/// The `-shm` header state before or after.
#[derive(Clone, Debug, Serialize)]
pub struct ShmState {
    /// Whether the file exists.
    pub exists: bool,
    /// True when a reader would accept the header.
    pub header_valid: bool,
    /// Why not, if not.
    pub defect: Option<String>,
    /// `mxFrame` of a valid header.
    pub mx_frame: Option<u32>,
    /// `nPage` of a valid header.
    pub n_page: Option<u32>,
}

/// What the WAL's valid prefix holds (what recovery must find).
#[derive(Clone, Debug, Serialize)]
pub struct WalSummary {
    /// Frames in the valid prefix.
    pub valid_frames: u32,
    /// Commit frames in it.
    pub commits: u32,
    /// The last commit frame.
    pub mx_frame: u32,
    /// Database size after it, in pages.
    pub db_size_pages: u32,
    /// Where and why the prefix ends.
    pub stop: Option<StopInfo>,
}

/// What `recover` reports.
#[derive(Clone, Debug, Serialize)]
pub struct RecoverReport {
    /// The database path as given.
    pub database: String,
    /// True when the WAL-index was rebuilt from the WAL.
    pub rebuilt: bool,
    /// The `-shm` before.
    pub before: ShmState,
    /// The WAL's valid prefix.
    pub wal: WalSummary,
    /// `mxFrame` the connection saw after opening (the recovered commit frames).
    pub recovered_mx_frame: u32,
    /// `nPage` after opening.
    pub recovered_n_page: u32,
    /// The WAL salts after opening, hex.
    pub salts: [String; 2],
    /// Milliseconds for the open (including the recovery).
    pub elapsed_ms: f64,
    /// The `-shm` after.
    pub after: ShmState,
    /// True when the rebuilt `-shm` publishes exactly the WAL's last valid commit.
    pub matches_wal: bool,
    /// A sentence about anything unusual.
    pub note: Option<String>,
}

fn shm_state(files: &DbFiles) -> CliResult<ShmState> {
    let s = read_shm(files, WALINDEX_HDR_SIZE)?;
    let v = s.valid_header();
    Ok(ShmState {
        exists: s.size.is_some(),
        header_valid: matches!(v, Some(Ok(_))),
        defect: match &v {
            Some(Err(d)) => Some(d.clone()),
            None if s.size.is_some() => Some("uninitialized (shorter than the header)".to_owned()),
            _ => None,
        },
        mx_frame: v.as_ref().and_then(|r| r.as_ref().ok()).map(|h| h.mx_frame),
        n_page: v.as_ref().and_then(|r| r.as_ref().ok()).map(|h| h.n_page),
    })
}

/// Refuses (exit 4) when another process has the database open; see the module docs.
pub fn refuse_if_in_use(files: &DbFiles) -> CliResult<()> {
    if let Some(p) = dms_holder(&files.shm)? {
        let who = p.holder_pid.map_or_else(
            || "another process".to_owned(),
            |pid| format!("process {pid}"),
        );
        return Err(CliError::Refused {
            what: format!(
                "{} is in use: {who} has the database open (it holds the -shm dead-man-switch lock, byte {}); rebuilding the WAL-index under a live connection could disturb it",
                files.db.display(),
                p.byte
            ),
            suggestion: "close the other connections first (they rebuild the -shm themselves when it is damaged); `fsqlite inspect` and `fsqlite verify` are safe to run meanwhile".to_owned(),
        });
    }
    if let Some(p) = db_lock_holder(&files.db)? {
        let who = p.holder_pid.map_or_else(
            || "another process".to_owned(),
            |pid| format!("process {pid}"),
        );
        return Err(CliError::Refused {
            what: format!(
                "{} is in use: {who} holds its {} lock ({})",
                files.db.display(),
                p.name,
                p.state.as_str()
            ),
            suggestion: "close the other connections to the database first, then run `fsqlite recover` again".to_owned(),
        });
    }
    Ok(())
}

/// Refuses (exit 4) when the `-shm` holds a valid header of the WAL's current generation
/// that publishes commit frames past the WAL's valid prefix: those commits were
/// acknowledged to someone and their frames are damaged, and a rebuild would make the
/// loss permanent once a writer appends over them.
fn refuse_if_loses_commits(files: &DbFiles, scan: &crate::inspect::WalScan) -> CliResult<()> {
    let shm = read_shm(files, WALINDEX_HDR_SIZE)?;
    let (Some(Ok(h)), Some(r)) = (shm.valid_header(), scan.report) else {
        return Ok(());
    };
    let Some(wh) = r.header else { return Ok(()) };
    if h.wal_salts() == wh.salt && h.mx_frame > r.mx_frame {
        return Err(CliError::Refused {
            what: format!(
                "recovering {} would drop committed frames: its -shm publishes commits up to frame {} but the WAL's valid prefix ends at commit frame {} ({}); frames {}..={} are damaged",
                files.db.display(),
                h.mx_frame,
                r.mx_frame,
                r.stop,
                r.mx_frame + 1,
                h.mx_frame
            ),
            suggestion: format!(
                "copy {} somewhere safe first (the damaged frames may be salvageable), then run `fsqlite recover --force` to accept the loss",
                files.wal.display()
            ),
        });
    }
    Ok(())
}

/// Runs `recover` on the database at `db` (see the module docs). With `force`, it also
/// rebuilds when that drops commits the old `-shm` published (damaged WAL frames).
pub fn recover(db: &Path, force: bool) -> CliResult<RecoverReport> {
    let cx = Cx::new();
    let files = DbFiles::new(db);
    let (_, header) = read_db_header(&files)?;
    if let Some(h) = header {
        h.require_wal_mode(&files.db)?;
    }
    let before = shm_state(&files)?;
    let scan = scan_wal(&cx, &files)?;
    let info = wal_info(&files, &scan, false);
    let wal = WalSummary {
        valid_frames: info.valid_frames,
        commits: info.commits,
        mx_frame: info.mx_frame,
        db_size_pages: info.db_size_pages,
        stop: info.stop,
    };
    if file_size(&files.wal)?.is_none() {
        return Ok(RecoverReport {
            database: files.db.display().to_string(),
            rebuilt: false,
            after: before.clone(),
            before,
            wal,
            recovered_mx_frame: 0,
            recovered_n_page: 0,
            salts: [hex32(0), hex32(0)],
            elapsed_ms: 0.0,
            matches_wal: true,
            note: Some(format!(
                "no {}: there is nothing to recover",
                files.wal.display()
            )),
        });
    }
    if let Some(e) = scan.error {
        return Err(e.into());
    }
    refuse_if_in_use(&files)?;
    if !force {
        refuse_if_loses_commits(&files, &scan)?;
    }
    let options = WalOptions {
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    };
    let t = Instant::now();
    let conn = Wal::open(&cx, Arc::new(UnixVfs::new()), &files.db, options)?;
    let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
    let rebuilt = conn.recoveries() > 0;
    let hdr = conn.cached_header();
    conn.close(&cx)?;
    let after = shm_state(&files)?;
    let [s1, s2] = hdr.wal_salts();
    let matches_wal = after.header_valid
        && after.mx_frame == Some(wal.mx_frame)
        && (wal.mx_frame == 0 || after.n_page == Some(wal.db_size_pages));
    let note = if rebuilt {
        None
    } else {
        Some(
            "another connection attached meanwhile and its -shm was valid, so nothing was rebuilt"
                .to_owned(),
        )
    };
    Ok(RecoverReport {
        database: files.db.display().to_string(),
        rebuilt,
        before,
        wal,
        recovered_mx_frame: hdr.mx_frame,
        recovered_n_page: hdr.n_page,
        salts: [hex32(s1), hex32(s2)],
        elapsed_ms,
        after,
        matches_wal,
        note,
    })
}

/// The human-readable form.
pub fn render_text(r: &RecoverReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "recover {}", r.database);
    let state = |s: &ShmState| {
        if !s.exists {
            "missing".to_owned()
        } else if s.header_valid {
            format!(
                "valid (mxFrame {}, nPage {})",
                s.mx_frame.unwrap_or(0),
                s.n_page.unwrap_or(0)
            )
        } else {
            format!("not usable: {}", s.defect.as_deref().unwrap_or("unknown"))
        }
    };
    let _ = writeln!(o, "  -shm before: {}", state(&r.before));
    let _ = writeln!(
        o,
        "  WAL: {} valid frames, {} commits, last commit frame {} (database size {} pages){}",
        r.wal.valid_frames,
        r.wal.commits,
        r.wal.mx_frame,
        r.wal.db_size_pages,
        r.wal
            .stop
            .as_ref()
            .map_or_else(String::new, |s| format!("; prefix ends: {}", s.detail))
    );
    if let Some(n) = &r.note {
        let _ = writeln!(o, "  {n}");
    }
    if r.rebuilt {
        let _ = writeln!(
            o,
            "  rebuilt the WAL-index from the WAL in {:.2} ms: mxFrame {}, nPage {}, salts {} {}",
            r.elapsed_ms, r.recovered_mx_frame, r.recovered_n_page, r.salts[0], r.salts[1]
        );
    }
    let _ = writeln!(o, "  -shm after: {}", state(&r.after));
    let _ = writeln!(
        o,
        "  {}",
        if r.matches_wal {
            "the -shm now publishes exactly the WAL's last valid commit"
        } else {
            "WARNING: the -shm does not match the WAL's last valid commit"
        }
    );
    o
}
