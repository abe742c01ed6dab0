//! Continuous replication of a live database: [`Follower`] reads committed frames from
//! the `-wal` file and hands them to a [`Sink`] as LTX files, in commit order, one TXID
//! per committed transaction.
//!
//! # Why there is never a silent gap
//!
//! The follower is three ordinary connections to the database (so a stock SQLite process
//! on the same files sees one more reader, nothing else):
//!
//! - `hold` keeps a read mark pinned ([`Wal::pin`], always in slot 1..=4) from one poll
//!   to the next. While any such mark is held no connection can restart the WAL, so every
//!   frame after the last one shipped stays in the `-wal` file with the same salts.
//! - `scout` pins the newest commit at the start of a poll; the frames between the two
//!   marks are read from the `-wal` file, checked (salts and the cumulative checksum from
//!   the last shipped frame) and shipped; then the two swap roles.
//! - `reader` reads whole snapshots and runs the follower's own checkpoints.
//!
//! Continuity is proven, not assumed: on resume (a restart of the replicator) the newest
//! file of the replica names the WAL salts and offset it ended at; when the live WAL has
//! the same salts and reaches that offset, shipping continues from there. When it cannot
//! be proven (the WAL was restarted while nobody held a mark, the page size changed, the
//! replica is empty) the follower starts a **new generation**: a full snapshot (level 9)
//! at the next TXID, and it says so ([`Event::NewGeneration`]).
//!
//! Because the mark blocks WAL restarts, the follower lets the WAL start over itself:
//! after shipping, when the WAL holds at least [`FollowOptions::checkpoint_frames`]
//! frames, it runs [`Wal::checkpoint_truncate_at`], which restarts the WAL only if it
//! still ends exactly at the last shipped frame. Stock SQLite's PASSIVE checkpoints (its
//! auto-checkpoint) run as usual beside it; its RESTART/TRUNCATE checkpoints answer busy
//! while the follower holds its mark, as they do beside any long reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{AccessFlags, Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{Vfs, VfsFile};
use fsqlite_wal::format::{
    FrameHeader, WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WAL_MAGIC_BIG_ENDIAN, WalHeader,
    frame_checksum, frame_offset, frame_size,
};
use fsqlite_wal::snapshot::WalSnapshot;
use fsqlite_wal::{Wal, WalOptions};

use crate::ltx::{self, HEADER_FLAG_NO_CHECKSUM, LtxHeader, Page};

const TRACE: &str = "fsqlite.replicate.follow";

/// Level of per-commit files (Litestream's L0).
pub const COMMIT_LEVEL: u32 = 0;
/// Level of full snapshots (Litestream's `SnapshotLevel`).
pub const SNAPSHOT_LEVEL: u32 = 9;

/// Bytes of frames read from the `-wal` file per read call.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// Where the LTX files go (an object store, a directory, a test double).
pub trait Sink {
    /// Stores one encoded LTX file at `level` (its header is `header`), create-only. When
    /// an object for the same level and TXID range already exists, it is success if it
    /// holds the same bytes (a retry of an upload whose answer was lost) and an error
    /// otherwise (another writer uses the same replica).
    fn store(&mut self, level: u32, header: &LtxHeader, bytes: &[u8]) -> Result<()>;
    /// The header of the newest file in the replica (the highest max TXID; a snapshot
    /// wins a tie), `None` for an empty replica.
    fn newest(&mut self) -> Result<Option<LtxHeader>>;
    /// Where the replica is, for messages (no credentials).
    fn describe(&self) -> String;
}

/// How a [`Follower`] works.
#[derive(Clone, Debug)]
pub struct FollowOptions {
    /// A full snapshot after this much time since the last one (`None`: only when a
    /// generation starts). Default 1 hour.
    pub snapshot_interval: Option<Duration>,
    /// A full snapshot after this many TXIDs since the last one (`None`: no such limit).
    /// Default `None`.
    pub snapshot_every_txids: Option<u64>,
    /// After shipping, let the WAL start over once it holds this many frames
    /// ([`Wal::checkpoint_truncate_at`]); `None` never. Default 1000 (SQLite's
    /// auto-checkpoint size).
    pub checkpoint_frames: Option<u32>,
    /// At most this many transactions in one level-0 file (1: a file per transaction,
    /// exact point-in-time restore to every commit). Default `u64::MAX`: one file per
    /// poll, as Litestream.
    pub max_txids_per_file: u64,
    /// The LTX header's node id.
    pub node_id: u64,
    /// Lock waits of the follower's connections. Default 5 s.
    pub busy_timeout: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        Self {
            snapshot_interval: Some(Duration::from_hours(1)),
            snapshot_every_txids: None,
            checkpoint_frames: Some(1000),
            max_txids_per_file: u64::MAX,
            node_id: 0,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// Something worth telling a user, from [`Follower::poll`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Shipping continues after the replica's newest file (a replicator restart).
    Resumed {
        /// The replica's newest TXID.
        txid: u64,
        /// The WAL frame it ended at.
        frame: u32,
    },
    /// A new generation: a full snapshot at `txid`, because continuity with the replica
    /// could not be proven.
    NewGeneration {
        /// The snapshot's TXID.
        txid: u64,
        /// Why, in words.
        reason: String,
    },
    /// A scheduled snapshot was written.
    Snapshot {
        /// Its TXID.
        txid: u64,
        /// Its pages.
        pages: u32,
    },
    /// Level-0 files were shipped.
    Shipped {
        /// First TXID shipped.
        min_txid: u64,
        /// Last TXID shipped.
        max_txid: u64,
        /// Files written.
        files: u64,
        /// WAL frames they came from.
        frames: u32,
    },
    /// The follower's own checkpoint restarted the WAL right after the last shipped frame.
    WalRestarted {
        /// Frames in the WAL before the restart.
        frames: u32,
    },
    /// An upload failed; it is retried with the same bytes on the next poll.
    UploadFailed {
        /// The error, as text.
        error: String,
    },
}

/// Where the follower is, for a status line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowStatus {
    /// Last TXID stored in the replica (0: nothing yet).
    pub txid: u64,
    /// Last WAL frame shipped (in the current WAL generation).
    pub frame: u32,
    /// Frames in the WAL at the last poll.
    pub wal_frames: u32,
    /// WAL salts of the current generation.
    pub salts: [u32; 2],
    /// Files stored since start.
    pub files: u64,
    /// Bytes stored since start.
    pub bytes: u64,
    /// Transactions shipped since start.
    pub txids: u64,
    /// Generations started since start (full snapshots for lack of continuity).
    pub generations: u64,
    /// Snapshots written since start (generations included).
    pub snapshots: u64,
    /// Uploads that failed since start (each retried).
    pub failed_uploads: u64,
    /// WAL restarts done by the follower.
    pub wal_restarts: u64,
    /// How long the oldest commit not yet stored has waited (zero when caught up).
    pub lag: Duration,
}

impl FollowStatus {
    /// Frames committed but not yet stored.
    pub fn lag_frames(&self) -> u32 {
        self.wal_frames.saturating_sub(self.frame)
    }
}

/// The WAL position after the last stored file.
#[derive(Clone, Copy, Debug)]
struct Pos {
    txid: u64,
    salts: [u32; 2],
    /// Last shipped frame (a commit frame), 0 at the start of a WAL generation.
    frame: u32,
    /// Cumulative checksum through `frame`; `None` when `frame == 0` (seeded from the WAL
    /// header when its first frame is read).
    cksum: Option<[u32; 2]>,
    db_size: u32,
    /// `frame == 0` seen under a held mark: the WAL is empty and the next writer picks
    /// its salts (SQLite draws new random ones after a restart by another connection),
    /// so any salts that follow continue from here.
    any_salts: bool,
}

/// A file encoded and not yet stored, with the position it leads to.
struct Pending {
    level: u32,
    header: LtxHeader,
    bytes: Vec<u8>,
    after: Pos,
    /// Told once the file is stored.
    event: Option<Event>,
}

/// Follows one database's WAL and ships every commit to a [`Sink`].
pub struct Follower<V: Vfs, S: Sink> {
    cx: Cx,
    vfs: Arc<V>,
    db_path: PathBuf,
    wal_path: PathBuf,
    hold: Wal<V>,
    scout: Wal<V>,
    reader: Wal<V>,
    /// Runs the follower's own checkpoints (taken out while one runs).
    ckpt: Option<Wal<V>>,
    wal_file: Option<V::File>,
    page_size: u32,
    big_endian: Option<bool>,
    pos: Option<Pos>,
    pending: Vec<Pending>,
    sink: S,
    opts: FollowOptions,
    status: FollowStatus,
    last_snapshot: (Instant, u64),
    /// When the oldest commit not yet stored was first seen.
    behind_since: Option<Instant>,
    /// No waiting for the WRITE lock before this (a writer that holds it for long, such
    /// as a `HybridShm` coordinator, made the last wait fail).
    no_wait_until: Option<Instant>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Frame number at a WAL byte offset (the frame that starts there is `n + 1`).
pub(crate) fn frames_before(offset: i64, page_size: u32) -> Option<u32> {
    let off = u64::try_from(offset).ok()?;
    let rel = off.checked_sub(WAL_HEADER_SIZE as u64)?;
    let fs = frame_size(page_size);
    if rel % fs != 0 {
        return None;
    }
    u32::try_from(rel / fs).ok()
}

impl<V: Vfs, S: Sink> Follower<V, S> {
    /// Opens the follower's connections on an existing database in WAL mode. Nothing is
    /// shipped until [`Follower::poll`].
    pub fn open(
        vfs: Arc<V>,
        db_path: impl AsRef<Path>,
        sink: S,
        opts: FollowOptions,
    ) -> Result<Self> {
        let cx = Cx::new();
        let db_path = db_path.as_ref().to_path_buf();
        if !vfs.access(&cx, &db_path, AccessFlags::EXISTS)? {
            return Err(FrankenError::cannot_open(
                db_path,
                "no such database: replication follows an existing database (create it first)",
            ));
        }
        let wopts = || WalOptions {
            auto_checkpoint: None,
            checkpoint_on_close: false,
            busy_timeout: opts.busy_timeout,
            ..WalOptions::default()
        };
        let hold = Wal::open(&cx, Arc::clone(&vfs), &db_path, wopts())?;
        let scout = Wal::open(&cx, Arc::clone(&vfs), &db_path, wopts())?;
        let reader = Wal::open(&cx, Arc::clone(&vfs), &db_path, wopts())?;
        let ckpt = Wal::open(&cx, Arc::clone(&vfs), &db_path, wopts())?;
        let page_size = hold.page_size();
        let mut wal_path = db_path.clone().into_os_string();
        wal_path.push("-wal");
        Ok(Self {
            cx,
            vfs,
            wal_path: PathBuf::from(wal_path),
            db_path,
            hold,
            scout,
            reader,
            ckpt: Some(ckpt),
            wal_file: None,
            page_size,
            big_endian: None,
            pos: None,
            pending: Vec::new(),
            sink,
            opts,
            status: FollowStatus::default(),
            last_snapshot: (Instant::now(), 0),
            behind_since: None,
            no_wait_until: None,
        })
    }

    /// The database followed.
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Where the follower is.
    pub fn status(&self) -> FollowStatus {
        let mut s = self.status.clone();
        s.lag = self.behind_since.map_or(Duration::ZERO, |t| t.elapsed());
        s
    }

    /// The sink.
    pub fn sink(&self) -> &S {
        &self.sink
    }

    /// The sink, mutably.
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.sink
    }

    /// The WAL frame of the last stored commit and the salts of its WAL generation, once
    /// the follower has started.
    pub fn shipped(&self) -> Option<([u32; 2], u32, u64)> {
        self.pos.map(|p| (p.salts, p.frame, p.txid))
    }

    /// One round: pins the newest commit, stores everything committed since the last
    /// round (or starts/resumes the replica), writes a scheduled snapshot, and lets the
    /// WAL start over when it is long. On an upload error nothing is lost: the encoded
    /// files are kept and stored first on the next call.
    pub fn poll(&mut self) -> Result<Vec<Event>> {
        let mut events = Vec::new();
        if !self.flush_pending(&mut events)? {
            return Ok(events);
        }
        let snap = self.scout.pin(&self.cx)?;
        self.status.wal_frames = snap.mx_frame();
        match self.pos {
            None => self.start(&snap, &mut events)?,
            Some(pos) => {
                let continuous = (snap.salts() == pos.salts && snap.mx_frame() >= pos.frame)
                    || (pos.any_salts && pos.frame == 0);
                if continuous {
                    self.ship_frames(pos, &snap)?;
                } else {
                    let reason = format!(
                        "the WAL changed under the follower (salts {:08x}/{:08x} frame {} -> {:08x}/{:08x} frame {}): it was restarted while no mark was held",
                        pos.salts[0],
                        pos.salts[1],
                        pos.frame,
                        snap.salts()[0],
                        snap.salts()[1],
                        snap.mx_frame()
                    );
                    self.new_generation(&snap, pos.txid, reason)?;
                }
            }
        }
        if !self.flush_pending(&mut events)? {
            return Ok(events);
        }
        self.maybe_snapshot(&snap)?;
        if !self.flush_pending(&mut events)? {
            return Ok(events);
        }
        // The newest mark now guards the next round; the old one goes.
        std::mem::swap(&mut self.hold, &mut self.scout);
        self.scout.unpin(&self.cx);
        self.behind_since = None;
        self.maybe_checkpoint(&mut events)?;
        Ok(events)
    }

    /// Stores the pending files in order; `false` (with an event) when one failed.
    fn flush_pending(&mut self, events: &mut Vec<Event>) -> Result<bool> {
        if !self.pending.is_empty() && self.behind_since.is_none() {
            self.behind_since = Some(Instant::now());
        }
        while let Some(p) = self.pending.first() {
            match self.sink.store(p.level, &p.header, &p.bytes) {
                Ok(()) => {
                    let p = self.pending.remove(0);
                    self.status.files += 1;
                    self.status.bytes += p.bytes.len() as u64;
                    self.status.txid = p.after.txid;
                    self.status.frame = p.after.frame;
                    self.status.salts = p.after.salts;
                    if p.level == COMMIT_LEVEL {
                        self.status.txids += p.header.max_txid - p.header.min_txid + 1;
                        match events.last_mut() {
                            Some(Event::Shipped {
                                max_txid,
                                files,
                                frames,
                                ..
                            }) if *max_txid + 1 == p.header.min_txid => {
                                *max_txid = p.header.max_txid;
                                *files += 1;
                                *frames += wal_frames_of(&p.header, self.page_size);
                            }
                            _ => events.push(Event::Shipped {
                                min_txid: p.header.min_txid,
                                max_txid: p.header.max_txid,
                                files: 1,
                                frames: wal_frames_of(&p.header, self.page_size),
                            }),
                        }
                    }
                    if p.level == SNAPSHOT_LEVEL {
                        self.status.snapshots += 1;
                        self.last_snapshot = (Instant::now(), p.after.txid);
                    }
                    events.extend(p.event);
                    self.pos = Some(p.after);
                }
                Err(e) if e.is_transient() || matches!(e, FrankenError::Io { .. }) => {
                    self.status.failed_uploads += 1;
                    tracing::warn!(target: TRACE, error = %e, replica = %self.sink.describe(), "upload failed; retrying on the next poll");
                    events.push(Event::UploadFailed {
                        error: e.to_string(),
                    });
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn start(&mut self, snap: &WalSnapshot, events: &mut Vec<Event>) -> Result<()> {
        let newest = self.sink.newest()?;
        let Some(h) = newest else {
            return self.new_generation(snap, 0, "the replica is empty".to_string());
        };
        let salts = [h.wal_salt1, h.wal_salt2];
        let end = if h.wal_offset == 0 {
            None
        } else {
            frames_before(h.wal_offset + h.wal_size, h.page_size)
        };
        let reason = if h.page_size != self.page_size {
            Some(format!(
                "the replica's page size is {}, the database's {}",
                h.page_size, self.page_size
            ))
        } else if end.is_none() {
            Some(format!(
                "the replica's newest file (TXIDs {}..={}) names no WAL position (written by another tool)",
                h.min_txid, h.max_txid
            ))
        } else if salts != snap.salts() {
            Some(format!(
                "the replica ends in WAL generation {:08x}/{:08x}, the live WAL is {:08x}/{:08x} (restarted since)",
                salts[0],
                salts[1],
                snap.salts()[0],
                snap.salts()[1]
            ))
        } else if end.is_some_and(|f| f > snap.mx_frame()) {
            Some(format!(
                "the replica ends at WAL frame {}, past the live WAL's last commit {}",
                end.unwrap_or(0),
                snap.mx_frame()
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return self.new_generation(snap, h.max_txid, reason);
        }
        let frame = end.unwrap_or(0);
        let cksum = if frame == 0 {
            None
        } else {
            let fh = self.frame_header(frame)?;
            if fh.salt != salts || !fh.is_commit() {
                return self.new_generation(
                    snap,
                    h.max_txid,
                    format!("WAL frame {frame} is not the commit the replica ends at"),
                );
            }
            Some(fh.checksum)
        };
        let pos = Pos {
            txid: h.max_txid,
            salts,
            frame,
            cksum,
            db_size: h.commit,
            any_salts: false,
        };
        tracing::info!(target: TRACE, txid = pos.txid, frame, replica = %self.sink.describe(), "resuming after the replica's newest file");
        events.push(Event::Resumed {
            txid: pos.txid,
            frame,
        });
        self.pos = Some(pos);
        self.status.txid = pos.txid;
        self.status.frame = frame;
        self.status.salts = salts;
        self.last_snapshot = (Instant::now(), pos.txid);
        self.ship_frames(pos, snap)
    }

    /// A full snapshot of `snap` at TXID `after_txid + 1`, a new generation.
    fn new_generation(
        &mut self,
        snap: &WalSnapshot,
        after_txid: u64,
        reason: String,
    ) -> Result<()> {
        let txid = after_txid + 1;
        tracing::warn!(target: TRACE, txid, %reason, replica = %self.sink.describe(), "starting a new generation with a full snapshot");
        self.status.generations += 1;
        self.snapshot_at(snap, txid, Event::NewGeneration { txid, reason })
    }

    /// Encodes a snapshot (level 9, TXIDs `1..=txid`) of the pinned `snap` and queues it.
    fn snapshot_at(&mut self, snap: &WalSnapshot, txid: u64, event: Event) -> Result<()> {
        let cx = self.cx.clone();
        let page_size = self.page_size;
        let (pages, db_size) = {
            let txn = self.reader.begin_read_at(&cx, snap)?;
            let n = txn.db_size();
            let lock = ltx::lock_pgno(page_size);
            let mut pages = Vec::with_capacity(n as usize);
            for pgno in 1..=n {
                if pgno == lock {
                    continue;
                }
                let mut data = vec![0u8; page_size as usize];
                let page = PageNumber::new(pgno).ok_or_else(|| FrankenError::internal("page 0"))?;
                txn.read_page(&cx, page, &mut data)?;
                pages.push(Page { pgno, data });
            }
            (pages, n)
        };
        let salts = snap.salts();
        let frame = snap.mx_frame();
        let cksum = if frame == 0 {
            None
        } else {
            Some(self.frame_header(frame)?.checksum)
        };
        let mut header = LtxHeader::snapshot(page_size, db_size, txid, now_ms());
        header.flags = HEADER_FLAG_NO_CHECKSUM;
        header.node_id = self.opts.node_id;
        header.wal_offset = i64::try_from(frame_offset(frame + 1, page_size)).unwrap_or(i64::MAX);
        header.wal_size = 0;
        header.wal_salt1 = salts[0];
        header.wal_salt2 = salts[1];
        let bytes = ltx::encode(&header, &pages, 0)?;
        if let Event::Snapshot { .. } = event {
            tracing::info!(target: TRACE, txid, pages = db_size, "scheduled snapshot");
        }
        self.pending.push(Pending {
            level: SNAPSHOT_LEVEL,
            header,
            bytes,
            after: Pos {
                txid,
                salts,
                frame,
                cksum,
                db_size,
                any_salts: frame == 0,
            },
            event: Some(event),
        });
        Ok(())
    }

    /// The `-wal` file, opened read-only on first use.
    fn wal(&mut self) -> Result<&V::File> {
        if self.wal_file.is_none() {
            let (f, _) = self.vfs.open(
                &self.cx,
                Some(&self.wal_path),
                VfsOpenFlags::READONLY | VfsOpenFlags::WAL,
            )?;
            self.wal_file = Some(f);
        }
        self.wal_file
            .as_ref()
            .ok_or_else(|| FrankenError::internal("WAL file handle"))
    }

    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> Result<()> {
        let cx = self.cx.clone();
        let path = self.wal_path.clone();
        let got = self.wal()?.read(&cx, buf, offset)?;
        if got < buf.len() {
            return Err(FrankenError::wal_corrupt(format!(
                "{}: {} bytes at offset {offset} expected, {got} read (the WAL is shorter than its index says)",
                path.display(),
                buf.len()
            )));
        }
        Ok(())
    }

    fn frame_header(&mut self, frame: u32) -> Result<FrameHeader> {
        let mut b = [0u8; WAL_FRAME_HEADER_SIZE];
        self.read_exact_at(&mut b, frame_offset(frame, self.page_size))?;
        FrameHeader::decode(&b)
    }

    /// The WAL header's checksum (the seed of frame 1's) and its byte order, checked
    /// against the salts of the pinned generation.
    fn wal_seed(&mut self, salts: [u32; 2]) -> Result<[u32; 2]> {
        let mut b = [0u8; WAL_HEADER_SIZE];
        self.read_exact_at(&mut b, 0)?;
        let h = WalHeader::decode(&b).map_err(|e| {
            FrankenError::wal_corrupt(format!("{}: WAL header: {e}", self.wal_path.display()))
        })?;
        if h.salt != salts {
            return Err(FrankenError::wal_corrupt(format!(
                "{}: WAL header salts {:08x}/{:08x}, the WAL-index names {:08x}/{:08x}",
                self.wal_path.display(),
                h.salt[0],
                h.salt[1],
                salts[0],
                salts[1]
            )));
        }
        self.big_endian = Some(h.magic == WAL_MAGIC_BIG_ENDIAN);
        Ok(h.checksum)
    }

    /// Reads, checks and queues the frames `pos.frame + 1 ..= snap.mx_frame()`.
    fn ship_frames(&mut self, pos: Pos, snap: &WalSnapshot) -> Result<()> {
        let last = snap.mx_frame();
        if last <= pos.frame {
            return Ok(());
        }
        self.behind_since.get_or_insert_with(Instant::now);
        let salts = snap.salts();
        let page_size = self.page_size;
        let fsz = frame_size(page_size) as usize;
        let mut cksum = match pos.cksum {
            Some(c) if self.big_endian.is_some() => c,
            Some(c) => {
                self.wal_seed(salts)?;
                c
            }
            None => self.wal_seed(salts)?,
        };
        let big = self.big_endian.unwrap_or(cfg!(target_endian = "big"));
        let per_chunk = (READ_CHUNK_BYTES / fsz).max(1) as u32;
        let mut buf = Vec::new();
        let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        let mut cur = pos;
        let mut file_first_frame = pos.frame + 1;
        let mut txids_in_file = 0u64;
        let mut frame = pos.frame + 1;
        while frame <= last {
            let n = per_chunk.min(last - frame + 1);
            buf.resize(n as usize * fsz, 0);
            let mut chunk = std::mem::take(&mut buf);
            self.read_exact_at(&mut chunk, frame_offset(frame, page_size))?;
            for (i, raw) in chunk.chunks_exact(fsz).enumerate() {
                let f = frame + i as u32;
                let fh = FrameHeader::decode(&raw[..WAL_FRAME_HEADER_SIZE])?;
                let data = &raw[WAL_FRAME_HEADER_SIZE..];
                if fh.salt != salts {
                    return Err(FrankenError::wal_corrupt(format!(
                        "{}: frame {f} has salts {:08x}/{:08x}, the WAL {:08x}/{:08x}",
                        self.wal_path.display(),
                        fh.salt[0],
                        fh.salt[1],
                        salts[0],
                        salts[1]
                    )));
                }
                let want =
                    frame_checksum(cksum, fh.page_number, fh.db_size_after_commit, data, big);
                if want != fh.checksum {
                    return Err(FrankenError::wal_corrupt(format!(
                        "{}: frame {f} fails its checksum (a committed frame: the WAL is damaged)",
                        self.wal_path.display()
                    )));
                }
                cksum = fh.checksum;
                pages.insert(fh.page_number, data.to_vec());
                if fh.is_commit() {
                    let db_size = fh.db_size_after_commit;
                    // Pages past a shrunken end are gone (a later growth reads zeros).
                    pages.retain(|&p, _| p <= db_size);
                    txids_in_file += 1;
                    cur = Pos {
                        txid: cur.txid + 1,
                        salts,
                        frame: f,
                        cksum: Some(cksum),
                        db_size,
                        any_salts: false,
                    };
                    if txids_in_file >= self.opts.max_txids_per_file || f == last {
                        self.queue_commits(
                            std::mem::take(&mut pages),
                            cur,
                            txids_in_file,
                            file_first_frame,
                        )?;
                        txids_in_file = 0;
                        file_first_frame = f + 1;
                    }
                }
            }
            buf = chunk;
            frame += n;
        }
        if txids_in_file > 0 || !pages.is_empty() {
            return Err(FrankenError::wal_corrupt(format!(
                "{}: the WAL-index's last commit frame {last} is not a commit frame",
                self.wal_path.display()
            )));
        }
        Ok(())
    }

    fn queue_commits(
        &mut self,
        pages: BTreeMap<u32, Vec<u8>>,
        after: Pos,
        txids: u64,
        first_frame: u32,
    ) -> Result<()> {
        let page_size = self.page_size;
        let lock = ltx::lock_pgno(page_size);
        let pages: Vec<Page> = pages
            .into_iter()
            .filter(|(p, _)| *p != lock)
            .map(|(pgno, data)| Page { pgno, data })
            .collect();
        let min_txid = after.txid + 1 - txids;
        let mut header =
            LtxHeader::incremental(page_size, after.db_size, min_txid, after.txid, now_ms(), 0);
        header.flags = HEADER_FLAG_NO_CHECKSUM;
        header.node_id = self.opts.node_id;
        header.wal_offset = i64::try_from(frame_offset(first_frame, page_size)).unwrap_or(i64::MAX);
        header.wal_size = i64::from(after.frame + 1 - first_frame) * frame_size(page_size) as i64;
        header.wal_salt1 = after.salts[0];
        header.wal_salt2 = after.salts[1];
        let bytes = ltx::encode(&header, &pages, 0)?;
        self.pending.push(Pending {
            level: COMMIT_LEVEL,
            header,
            bytes,
            after,
            event: None,
        });
        Ok(())
    }

    /// A scheduled snapshot of the state just shipped (the scout's pinned commit).
    fn maybe_snapshot(&mut self, snap: &WalSnapshot) -> Result<()> {
        let Some(pos) = self.pos else {
            return Ok(());
        };
        if pos.txid == 0 || pos.txid == self.last_snapshot.1 {
            return Ok(());
        }
        let by_time = self
            .opts
            .snapshot_interval
            .is_some_and(|d| self.last_snapshot.0.elapsed() >= d);
        let by_count = self
            .opts
            .snapshot_every_txids
            .is_some_and(|n| pos.txid - self.last_snapshot.1 >= n);
        if !(by_time || by_count) || pos.salts != snap.salts() || pos.frame != snap.mx_frame() {
            return Ok(());
        }
        // A snapshot at the last shipped TXID holds exactly that state; it replaces the
        // replay of everything before it for later restores.
        let pages = pos.db_size;
        self.snapshot_at(
            snap,
            pos.txid,
            Event::Snapshot {
                txid: pos.txid,
                pages,
            },
        )
    }

    /// Lets the WAL start over when it is long and everything in it is stored: a
    /// TRUNCATE checkpoint whose hand-off (under the WRITE lock, so no commit comes in)
    /// first ships whatever was committed since the poll. Below 4× the limit it gives way
    /// at once when a writer holds the lock; past that it waits for the lock (a bounded
    /// stall of the writers), so a writer that never pauses cannot grow the WAL forever.
    fn maybe_checkpoint(&mut self, events: &mut Vec<Event>) -> Result<()> {
        let (Some(limit), Some(pos)) = (self.opts.checkpoint_frames, self.pos) else {
            return Ok(());
        };
        if pos.frame < limit.max(1) || !self.pending.is_empty() {
            return Ok(());
        }
        let Some(mut ck) = self.ckpt.take() else {
            return Ok(());
        };
        let cx = self.cx.clone();
        let far = pos.frame >= limit.saturating_mul(4)
            && self.no_wait_until.is_none_or(|t| Instant::now() >= t);
        // About 100 ms of waiting at most (back-off 20 µs doubling to 5 ms).
        ck.set_busy_handler(Some(if far {
            Arc::new(|attempt| attempt < 30)
        } else {
            Arc::new(|_| false)
        }));
        let mut handed_off: Option<[u32; 2]> = None;
        let out = ck.checkpoint_truncate_with(&cx, |now| {
            let Some(p) = self.pos else {
                return Ok(false);
            };
            if now.salts() != p.salts || now.mx_frame() < p.frame {
                return Ok(false);
            }
            if now.mx_frame() > p.frame {
                let snap = self.scout.pin(&cx)?;
                if snap.mx_frame() != now.mx_frame() || snap.salts() != now.salts() {
                    return Ok(false);
                }
                self.ship_frames(p, &snap)?;
                if !self.flush_pending(events)? {
                    return Ok(false);
                }
                std::mem::swap(&mut self.hold, &mut self.scout);
                self.scout.unpin(&cx);
            }
            // Everything up to `now` is stored and no commit can come in: the mark may
            // go, so the restart can happen.
            self.hold.unpin(&cx);
            handed_off = Some(now.salts());
            Ok(true)
        });
        ck.set_busy_handler(None);
        let restarted = match out {
            Ok(o) => !o.busy && handed_off.is_some(),
            Err(FrankenError::Busy) => false,
            Err(e) => {
                ck.unpin(&cx);
                self.ckpt = Some(ck);
                // Re-pin before giving the error back: the guard must not lapse.
                self.hold.pin(&cx)?;
                return Err(e);
            }
        };
        if far && handed_off.is_none() {
            // The lock stayed busy for the whole wait: do not stall every poll on it.
            self.no_wait_until = Some(Instant::now() + Duration::from_secs(10));
        }
        let Some(pos) = self.pos else {
            self.ckpt = Some(ck);
            return Ok(());
        };
        if restarted {
            // `ck` holds a pin on the empty, restarted WAL, taken before the WRITE lock
            // went: it becomes the hold, and whatever salts the next writer picks
            // continue from the last shipped commit.
            let new_salts = ck.cached_header().wal_salts();
            std::mem::swap(&mut self.hold, &mut ck);
            ck.unpin(&cx);
            self.ckpt = Some(ck);
            tracing::info!(target: TRACE, frames = pos.frame, "WAL restarted after the last shipped frame");
            self.status.wal_restarts += 1;
            self.status.wal_frames = 0;
            events.push(Event::WalRestarted { frames: pos.frame });
            let next = Pos {
                frame: 0,
                salts: new_salts,
                cksum: None,
                any_salts: true,
                ..pos
            };
            self.big_endian = None;
            self.pos = Some(next);
            self.status.frame = 0;
            self.status.salts = new_salts;
            return Ok(());
        }
        self.ckpt = Some(ck);
        let again = self.hold.pin(&cx)?;
        self.status.wal_frames = again.mx_frame();
        // If another connection restarted the WAL in the short window without a mark,
        // the next poll sees salts it cannot prove and starts a new generation.
        Ok(())
    }
}

fn wal_frames_of(h: &LtxHeader, page_size: u32) -> u32 {
    u32::try_from(h.wal_size.max(0) as u64 / frame_size(page_size)).unwrap_or(u32::MAX)
}
