//! `fsqlite replicate`, `fsqlite restore`, `fsqlite replicas list`: continuous replication
//! of a live database to an S3-compatible bucket (or a directory) in Litestream 0.5's
//! format, and point-in-time restore from it.
//!
//! Replica URLs: `s3://BUCKET/PREFIX` (credentials from `AWS_ACCESS_KEY_ID` and
//! `AWS_SECRET_ACCESS_KEY`, region from `AWS_REGION`, endpoint from `--endpoint` or
//! `AWS_ENDPOINT_URL`) or `file:///DIR` (Litestream's file replicas). Nothing secret is
//! printed or logged: S3 error texts are redacted by `fsqlite_s3`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_replicate::follow::{Event, FollowOptions, FollowStatus, Follower};
use fsqlite_replicate::replica::{
    DirObjects, Objects, Replica, ReplicaSummary, RestoreReport, Target, format_ms, now_ms,
};
use fsqlite_s3::{S3Config, Store};
use fsqlite_vfs::UnixVfs;
use serde::Serialize;

use crate::files::{CliError, CliResult};

/// An object store chosen by URL.
pub type AnyObjects = Box<dyn Objects>;

/// Opens the replica a URL names: `s3://BUCKET/PREFIX` or `file:///DIR`.
pub fn open_replica(url: &str, endpoint: Option<&str>) -> CliResult<Replica<AnyObjects>> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(CliError::failed(
                format!("{url}: no bucket"),
                "write the replica as s3://BUCKET/PREFIX",
            ));
        }
        let mut cfg = S3Config::from_env(bucket).map_err(|e| {
            CliError::failed(
                format!("{url}: {e}"),
                "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION, or --endpoint for a local server)",
            )
        })?;
        if let Some(ep) = endpoint {
            cfg.allow_http = ep.starts_with("http://");
            cfg.endpoint = Some(ep.to_string());
        }
        let store = Store::new(&cfg)?;
        return Ok(Replica::new(Box::new(store), prefix));
    }
    if let Some(dir) = url.strip_prefix("file://") {
        return Ok(Replica::new(Box::new(DirObjects::new(dir)), ""));
    }
    Err(CliError::failed(
        format!("{url}: not a replica URL"),
        "use s3://BUCKET/PREFIX or file:///DIR",
    ))
}

/// Parses `72h`, `30m`, `10s`, `250ms`, `2d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| {
        format!("{s:?}: a duration is a number and a unit (250ms, 10s, 30m, 72h, 2d)")
    })?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" | "" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        "d" => v * 86_400.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    };
    if !secs.is_finite() || !(0.0..=10.0 * 365.0 * 86_400.0).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// How `fsqlite replicate` runs.
#[derive(Clone, Debug)]
pub struct ReplicateOptions {
    /// Time between polls.
    pub interval: Duration,
    /// Stop after this long (`None`: until killed).
    pub duration: Option<Duration>,
    /// Stop once caught up and no commit came for this long (for scripts and tests).
    pub exit_when_idle: Option<Duration>,
    /// Delete what no restore inside this window needs, after each snapshot.
    pub retain: Option<Duration>,
    /// The follower's options.
    pub follow: FollowOptions,
}

/// What `fsqlite replicate` did.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicateReport {
    /// Last TXID stored.
    pub txid: u64,
    /// Files stored.
    pub files: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Transactions shipped.
    pub txids: u64,
    /// Generations started.
    pub generations: u64,
    /// Snapshots written.
    pub snapshots: u64,
    /// Failed uploads (each retried).
    pub failed_uploads: u64,
    /// WAL restarts done by the replicator.
    pub wal_restarts: u64,
    /// Objects deleted by retention.
    pub retained_deleted: usize,
}

fn describe(e: &Event) -> String {
    match e {
        Event::Resumed { txid, frame } => {
            format!("resumed after TXID {txid} (WAL frame {frame}): no gap")
        }
        Event::NewGeneration { txid, reason } => {
            format!("new generation: full snapshot at TXID {txid}, because {reason}")
        }
        Event::Snapshot { txid, pages } => format!("snapshot at TXID {txid} ({pages} pages)"),
        Event::Shipped {
            min_txid,
            max_txid,
            files,
            frames,
        } => format!("shipped TXIDs {min_txid}..={max_txid} ({files} files, {frames} frames)"),
        Event::WalRestarted { frames } => {
            format!("WAL restarted after its last shipped frame ({frames} frames)")
        }
        Event::UploadFailed { error } => format!("upload failed, retrying: {error}"),
    }
}

fn status_line(s: &FollowStatus) -> String {
    format!(
        "txid {} | frame {}/{} | lag {} frames, {:.1}s | {} files, {} bytes | {} generations, {} failed uploads",
        s.txid,
        s.frame,
        s.wal_frames,
        s.lag_frames(),
        s.lag.as_secs_f64(),
        s.files,
        s.bytes,
        s.generations,
        s.failed_uploads
    )
}

/// Runs `fsqlite replicate DB --to URL`: polls, ships, prints events and a status line
/// (once a second) on stderr. Upload failures are retried forever (the status line says
/// so); other errors end the run.
pub fn replicate(
    db: &Path,
    replica: Replica<AnyObjects>,
    opts: &ReplicateOptions,
) -> CliResult<ReplicateReport> {
    crate::files::DbFiles::new(db).require_db_file()?;
    let mut f = Follower::open(Arc::new(UnixVfs::new()), db, replica, opts.follow.clone())?;
    let start = Instant::now();
    let mut last_line = Instant::now();
    let mut last_change = Instant::now();
    let mut seen = (0u64, 0u32);
    let mut deleted = 0usize;
    loop {
        let events = f.poll()?;
        for e in &events {
            eprintln!("fsqlite replicate: {}", describe(e));
            if let (Some(window), Event::Snapshot { .. } | Event::NewGeneration { .. }) =
                (opts.retain, e)
            {
                let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
                let gone = f.sink().retain(window_ms, now_ms())?;
                if !gone.is_empty() {
                    eprintln!(
                        "fsqlite replicate: retention deleted {} objects older than the window",
                        gone.len()
                    );
                }
                deleted += gone.len();
            }
        }
        let st = f.status();
        if (st.txid, st.wal_frames) != seen {
            seen = (st.txid, st.wal_frames);
            last_change = Instant::now();
        }
        if last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("fsqlite replicate: {}", status_line(&st));
            last_line = Instant::now();
        }
        let caught_up = st.lag_frames() == 0
            && !events
                .iter()
                .any(|e| matches!(e, Event::UploadFailed { .. }));
        if opts.duration.is_some_and(|d| start.elapsed() >= d)
            || opts
                .exit_when_idle
                .is_some_and(|d| caught_up && last_change.elapsed() >= d)
        {
            eprintln!("fsqlite replicate: {}", status_line(&st));
            return Ok(ReplicateReport {
                txid: st.txid,
                files: st.files,
                bytes: st.bytes,
                txids: st.txids,
                generations: st.generations,
                snapshots: st.snapshots,
                failed_uploads: st.failed_uploads,
                wal_restarts: st.wal_restarts,
                retained_deleted: deleted,
            });
        }
        std::thread::sleep(opts.interval);
    }
}

/// What `fsqlite restore` did.
#[derive(Clone, Debug, Serialize)]
pub struct RestoreOutcome {
    /// The database written.
    pub db: PathBuf,
    /// TXID restored.
    pub txid: u64,
    /// Files applied.
    pub files: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Pages.
    pub pages: u32,
    /// Page size.
    pub page_size: u32,
    /// When the newest applied file was shipped (RFC 3339).
    pub shipped_at: String,
    /// Seconds taken.
    pub seconds: f64,
}

/// Parses `--at`: RFC 3339 UTC (`2026-12-03T10:00:00Z`) or ms since the epoch.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    fsqlite_replicate::replica::parse_rfc3339_ms(s.trim()).ok_or_else(|| {
        format!(
            "{s:?}: a time is RFC 3339 UTC (2026-12-03T10:00:00Z) or milliseconds since the epoch"
        )
    })
}

/// Runs `fsqlite restore --from URL --to DB [--txid N | --at T]`: rebuilds into a
/// temporary file, checks it with stock SQLite's `PRAGMA integrity_check`, and only then
/// moves it to `DB` (which must not exist).
pub fn restore(
    replica: &Replica<AnyObjects>,
    to: &Path,
    target: Target,
) -> CliResult<RestoreOutcome> {
    let t = Instant::now();
    let rep: RestoreReport = replica.restore_to(target, to, |tmp| {
        let c = rusqlite::Connection::open_with_flags(
            tmp,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_err(|e| FrankenError::db_corrupt(format!("the restored database does not open in SQLite: {e}")))?;
        let verdict: String = c
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| FrankenError::db_corrupt(format!("integrity_check of the restored database: {e}")))?;
        if verdict == "ok" {
            Ok(())
        } else {
            Err(FrankenError::db_corrupt(format!(
                "the restored database fails SQLite's integrity_check ({verdict}); nothing was written"
            )))
        }
    })?;
    Ok(RestoreOutcome {
        db: to.to_path_buf(),
        txid: rep.txid,
        files: rep.files,
        bytes: rep.bytes,
        pages: rep.pages,
        page_size: rep.page_size,
        shipped_at: format_ms(rep.timestamp_ms),
        seconds: t.elapsed().as_secs_f64(),
    })
}

/// `fsqlite replicas list`: generations (snapshots), files, the covered range.
pub fn list(replica: &Replica<AnyObjects>) -> CliResult<(ReplicaSummary, String)> {
    let s = replica.summary()?;
    let mut out = format!("replica {}\n", s.url);
    if s.snapshots.is_empty() && s.commit_files == 0 {
        out.push_str("  empty\n");
        return Ok((s, out));
    }
    let _ = write!(
        out,
        "  TXIDs up to {}, restorable from TXID {}\n  shipped {} .. {}\n  {} level-0 files, {} bytes in all\n  snapshots (each new generation starts with one):\n",
        s.last_txid,
        s.restorable_from.map_or("-".to_string(), |t| t.to_string()),
        s.first_ms.map_or("-".to_string(), format_ms),
        s.last_ms.map_or("-".to_string(), format_ms),
        s.commit_files,
        s.bytes
    );
    for (txid, ms, pages, bytes) in &s.snapshots {
        let _ = writeln!(
            out,
            "    TXID {txid:>10}  {}  {pages} pages  {bytes} bytes",
            format_ms(*ms)
        );
    }
    Ok((s, out))
}
