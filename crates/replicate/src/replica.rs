//! The Litestream 0.5 replica layout on any object store ([`Objects`]):
//! `<prefix>/ltx/<level>/<min:016x>-<max:016x>.ltx`, level 0 for the files the follower
//! ships, level 9 for full snapshots. [`Replica`] lists, plans and restores a replica,
//! applies retention, and is the [`Sink`] a [`crate::follow::Follower`] ships to.
//!
//! A local directory is an object store too ([`DirObjects`]): the same layout as
//! Litestream's `file://` replicas.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fsqlite_error::{FrankenError, Result};

use crate::follow::{COMMIT_LEVEL, SNAPSHOT_LEVEL, Sink};
use crate::ltx::{self, HEADER_SIZE, LtxHeader};

const TRACE: &str = "fsqlite.replicate.replica";

/// The blocking object-store operations a replica needs.
pub trait Objects {
    /// Creates `key` with `bytes` unless an object is there; `Ok(false)` (and the object
    /// unchanged) when one is.
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool>;
    /// The object at `key`, `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// The first `len` bytes of `key` (fewer if it is shorter).
    fn get_prefix(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>> {
        Ok(self.get(key)?.map(|mut b| {
            b.truncate(len);
            b
        }))
    }
    /// Several objects, in the order asked (a store may fetch them concurrently).
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Every object under `prefix` as `(key, size)`.
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>>;
    /// Deletes `key` (no error when absent).
    fn delete(&self, key: &str) -> Result<()>;
    /// A URL naming `key`, for messages (no credentials).
    fn url(&self, key: &str) -> String;
}

impl<T: Objects + ?Sized> Objects for &T {
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        (**self).put_if_absent(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn get_prefix(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>> {
        (**self).get_prefix(key, len)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        (**self).get_many(keys)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key)
    }
    fn url(&self, key: &str) -> String {
        (**self).url(key)
    }
}

impl<T: Objects + ?Sized> Objects for Box<T> {
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        (**self).put_if_absent(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        (**self).get(key)
    }
    fn get_prefix(&self, key: &str, len: usize) -> Result<Option<Vec<u8>>> {
        (**self).get_prefix(key, len)
    }
    fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        (**self).get_many(keys)
    }
    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        (**self).list(prefix)
    }
    fn delete(&self, key: &str) -> Result<()> {
        (**self).delete(key)
    }
    fn url(&self, key: &str) -> String {
        (**self).url(key)
    }
}

/// A directory as an object store (keys are relative paths). Creates are atomic: the
/// bytes go to a temporary file, are fsynced, and are linked into place only if the
/// name is free.
#[derive(Clone, Debug)]
pub struct DirObjects {
    root: PathBuf,
}

impl DirObjects {
    /// A store rooted at `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn io(&self, op: &'static str, key: &str, e: io::Error) -> FrankenError {
        FrankenError::io(op, Some(self.root.join(key)), e)
    }
}

impl Objects for DirObjects {
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> Result<bool> {
        let path = self.root.join(key);
        let dir = path
            .parent()
            .ok_or_else(|| FrankenError::internal("object path without a parent"))?;
        fs::create_dir_all(dir).map_err(|e| self.io("creating a replica directory", key, e))?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .map_err(|e| self.io("creating a temporary replica file", key, e))?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| self.io("writing a replica file", key, e))?;
        match fs::hard_link(tmp.path(), &path) {
            Ok(()) => {
                if let Ok(d) = fs::File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(self.io("linking a replica file into place", key, e)),
        }
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match fs::read(self.root.join(key)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("reading a replica file", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.join(prefix)];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(FrankenError::io("listing a replica", Some(dir), e)),
            };
            for ent in rd {
                let ent =
                    ent.map_err(|e| FrankenError::io("listing a replica", Some(dir.clone()), e))?;
                let p = ent.path();
                let meta = ent
                    .metadata()
                    .map_err(|e| FrankenError::io("listing a replica", Some(p.clone()), e))?;
                if meta.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(&self.root) {
                    let k = rel.to_string_lossy().replace('\\', "/");
                    out.push((k, meta.len()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match fs::remove_file(self.root.join(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io("deleting a replica file", key, e)),
        }
    }

    fn url(&self, key: &str) -> String {
        format!("file://{}", self.root.join(key).display())
    }
}

/// One LTX object found in a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFile {
    /// Its key.
    pub key: String,
    /// Its level (0..=9).
    pub level: u32,
    /// First TXID (from the name).
    pub min_txid: u64,
    /// Last TXID (from the name).
    pub max_txid: u64,
    /// Size in bytes.
    pub size: u64,
}

/// What a restore rebuilds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The newest state in the replica.
    Latest,
    /// The newest state at or before this TXID.
    Txid(u64),
    /// The newest state shipped at or before this time (milliseconds since the epoch;
    /// the LTX files' timestamps, which the follower sets when it reads the commits).
    TimeMs(i64),
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    /// The TXID of the state restored.
    pub txid: u64,
    /// Files applied (the snapshot first).
    pub files: usize,
    /// Bytes downloaded.
    pub bytes: u64,
    /// Database size in pages.
    pub pages: u32,
    /// Page size.
    pub page_size: u32,
    /// Timestamp of the newest file applied (ms since the epoch).
    pub timestamp_ms: i64,
    /// WAL salts and frame the state ends at (0s for files from another tool).
    pub wal_end: ([u32; 2], u32),
}

/// A replica: an object store and a key prefix.
#[derive(Clone, Debug)]
pub struct Replica<O: Objects> {
    objects: O,
    prefix: String,
}

impl<O: Objects> Replica<O> {
    /// The replica under `prefix` (no leading or trailing slash needed) of `objects`.
    pub fn new(objects: O, prefix: &str) -> Self {
        Self {
            objects,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// The object store.
    pub fn objects(&self) -> &O {
        &self.objects
    }

    fn ltx_dir(&self) -> String {
        if self.prefix.is_empty() {
            "ltx".to_string()
        } else {
            format!("{}/ltx", self.prefix)
        }
    }

    /// Where the replica is, for messages.
    pub fn url(&self) -> String {
        self.objects.url(&self.ltx_dir())
    }

    /// The key of the file covering `min..=max` at `level`.
    pub fn key(&self, level: u32, min_txid: u64, max_txid: u64) -> String {
        format!(
            "{}/{level}/{}",
            self.ltx_dir(),
            ltx::file_name(min_txid, max_txid)
        )
    }

    /// Every LTX object of the replica, by level then min TXID. Objects whose names do
    /// not follow the layout are skipped, as Litestream does.
    pub fn files(&self) -> Result<Vec<ReplicaFile>> {
        let dir = self.ltx_dir();
        let mut out = Vec::new();
        for (k, size) in self.objects.list(&dir)? {
            let Some(rest) = k.strip_prefix(&dir).and_then(|r| r.strip_prefix('/')) else {
                continue;
            };
            let Some((lvl, name)) = rest.split_once('/') else {
                continue;
            };
            let Ok(level) = lvl.parse::<u32>() else {
                continue;
            };
            if level > SNAPSHOT_LEVEL || lvl != level.to_string() {
                continue;
            }
            let Some((min_txid, max_txid)) = ltx::parse_file_name(name) else {
                continue;
            };
            out.push(ReplicaFile {
                key: k,
                level,
                min_txid,
                max_txid,
                size,
            });
        }
        out.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
        Ok(out)
    }

    /// The header of `f`, checked against its name.
    pub fn header(&self, f: &ReplicaFile) -> Result<LtxHeader> {
        let url = self.objects.url(&f.key);
        let b = self
            .objects
            .get_prefix(&f.key, HEADER_SIZE)?
            .ok_or_else(|| FrankenError::cannot_open(url.clone(), "the object vanished"))?;
        let h = LtxHeader::from_bytes(&b)
            .map_err(|e| FrankenError::db_corrupt(format!("replica object {url}: {e}")))?;
        check_name(&url, f, &h)?;
        Ok(h)
    }

    /// Uploads one encoded LTX file at the key its header names, create-only. An object
    /// already there is fine when it holds the same bytes (a retried upload), an error
    /// naming it otherwise. Returns the key.
    pub fn ship(&self, level: u32, bytes: &[u8]) -> Result<String> {
        if level > SNAPSHOT_LEVEL {
            return Err(FrankenError::out_of_range("replica level (0..=9)", level));
        }
        let h = LtxHeader::from_bytes(bytes).map_err(|e| {
            FrankenError::db_corrupt(format!("refusing to ship an invalid LTX file: {e}"))
        })?;
        if level == SNAPSHOT_LEVEL && !h.is_snapshot() {
            return Err(FrankenError::out_of_range(
                "the min TXID of a level-9 snapshot (must be 1)",
                h.min_txid,
            ));
        }
        let k = self.key(level, h.min_txid, h.max_txid);
        if !self.objects.put_if_absent(&k, bytes)? {
            let same = self.objects.get(&k)?.is_some_and(|b| b == bytes);
            if !same {
                // Not retried: a second writer on one replica is a configuration error.
                return Err(FrankenError::cannot_open(
                    self.objects.url(&k),
                    "a different file for the same TXIDs is already there: is another replicator writing to this replica? (give each database its own prefix)",
                ));
            }
        }
        tracing::debug!(target: TRACE, key = %k, bytes = bytes.len(), "stored");
        Ok(k)
    }

    /// The files a restore to `target` applies, in order: the newest snapshot (level 9,
    /// or a level-0 file from TXID 1) at or before it, then the contiguous level-0 files
    /// after it. Errors name a gap, a missing snapshot, or a target past the end.
    pub fn plan(&self, target: Target) -> Result<Vec<ReplicaFile>> {
        let files = self.files()?;
        let upto = match target {
            Target::Latest => None,
            Target::Txid(t) => Some(t),
            Target::TimeMs(ms) => Some(self.txid_at(&files, ms)?),
        };
        plan_files(&files, upto, &self.url())
    }

    /// The newest TXID shipped at or before `ms`: binary search over the level-0 and
    /// level-9 files by TXID (timestamps grow with TXIDs), reading headers only.
    fn txid_at(&self, files: &[ReplicaFile], ms: i64) -> Result<u64> {
        let mut cands: Vec<&ReplicaFile> = files
            .iter()
            .filter(|f| f.level == COMMIT_LEVEL || f.level == SNAPSHOT_LEVEL)
            .collect();
        cands.sort_by_key(|f| (f.max_txid, f.level));
        let (mut lo, mut hi) = (0usize, cands.len());
        while lo < hi {
            let mid = usize::midpoint(lo, hi);
            if self.header(cands[mid])?.timestamp_ms <= ms {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Err(FrankenError::cannot_open(
                self.url(),
                format!(
                    "the replica has nothing shipped at or before {}",
                    format_ms(ms)
                ),
            ));
        }
        Ok(cands[lo - 1].max_txid)
    }

    /// Rebuilds the database at `target` into `out` (which must not exist): into a
    /// temporary file beside it, every object decoded (the file checksum checked) and
    /// checked against its name, the page size and TXID chain checked, then `verify`
    /// (for example SQLite's `integrity_check`) runs on the temporary file, and only if
    /// it passes is the file renamed to `out`. Nothing is left behind on error.
    pub fn restore_to(
        &self,
        target: Target,
        out: &Path,
        verify: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<RestoreReport> {
        if out.exists() {
            return Err(FrankenError::cannot_open(
                out,
                "the restore target exists; restore never overwrites a database (pick a new path or remove it)",
            ));
        }
        let chain = self.plan(target)?;
        let dir = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| {
            FrankenError::io("creating the restore file", Some(dir.to_path_buf()), e)
        })?;
        let report = self.apply_chain(&chain, tmp.as_file())?;
        tmp.as_file().sync_all().map_err(|e| {
            FrankenError::io(
                "syncing the restore file",
                Some(tmp.path().to_path_buf()),
                e,
            )
        })?;
        verify(tmp.path())?;
        tmp.persist_noclobber(out).map_err(|e| {
            FrankenError::io(
                "moving the restored database into place",
                Some(out.to_path_buf()),
                e.error,
            )
        })?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(report)
    }

    /// The database image at `target`, in memory (for tests and small databases).
    pub fn restore_image(&self, target: Target) -> Result<(Vec<u8>, RestoreReport)> {
        let chain = self.plan(target)?;
        let mut tmp = tempfile::tempfile()
            .map_err(|e| FrankenError::io("creating a temporary file", None, e))?;
        let report = self.apply_chain(&chain, &tmp)?;
        let mut img = Vec::new();
        use std::io::{Read, Seek};
        tmp.rewind()
            .and_then(|()| tmp.read_to_end(&mut img))
            .map_err(|e| FrankenError::io("reading the restored image", None, e))?;
        Ok((img, report))
    }

    /// Downloads (in batches, concurrently where the store can) and applies `chain` to
    /// `file` by positioned writes.
    fn apply_chain(&self, chain: &[ReplicaFile], file: &fs::File) -> Result<RestoreReport> {
        use std::os::unix::fs::FileExt;
        let mut report = RestoreReport {
            txid: 0,
            files: 0,
            bytes: 0,
            pages: 0,
            page_size: 0,
            timestamp_ms: 0,
            wal_end: ([0, 0], 0),
        };
        let mut size_pages: u64 = 0;
        for batch in chain.chunks(64) {
            let keys: Vec<String> = batch.iter().map(|f| f.key.clone()).collect();
            let blobs = self.objects.get_many(&keys)?;
            for (f, blob) in batch.iter().zip(blobs) {
                let url = self.objects.url(&f.key);
                let bytes = blob.ok_or_else(|| {
                    FrankenError::cannot_open(url.clone(), "the object vanished during restore")
                })?;
                report.bytes += bytes.len() as u64;
                let lf = ltx::decode(&bytes)
                    .map_err(|e| FrankenError::db_corrupt(format!("replica object {url}: {e}")))?;
                let h = &lf.header;
                check_name(&url, f, h)?;
                if report.files > 0 && h.page_size != report.page_size {
                    return Err(FrankenError::db_corrupt(format!(
                        "replica object {url}: page size {} after files of page size {}",
                        h.page_size, report.page_size
                    )));
                }
                let ps = u64::from(h.page_size);
                let path = || Some(PathBuf::from(&url));
                if h.is_snapshot() {
                    file.set_len(0)
                        .map_err(|e| FrankenError::io("resetting the restore file", path(), e))?;
                    size_pages = 0;
                }
                let commit = u64::from(h.commit);
                if commit < size_pages || h.is_snapshot() {
                    file.set_len(commit * ps)
                        .map_err(|e| FrankenError::io("resizing the restore file", path(), e))?;
                }
                for p in &lf.pages {
                    if p.pgno == 0 || u64::from(p.pgno) > commit {
                        return Err(FrankenError::db_corrupt(format!(
                            "replica object {url}: page {} past its database size {commit}",
                            p.pgno
                        )));
                    }
                    file.write_all_at(&p.data, (u64::from(p.pgno) - 1) * ps)
                        .map_err(|e| FrankenError::io("writing the restore file", path(), e))?;
                }
                if commit > size_pages {
                    file.set_len(commit * ps)
                        .map_err(|e| FrankenError::io("resizing the restore file", path(), e))?;
                }
                size_pages = commit;
                report.files += 1;
                report.txid = h.max_txid;
                report.pages = h.commit;
                report.page_size = h.page_size;
                report.timestamp_ms = h.timestamp_ms;
                report.wal_end = wal_end(h);
            }
        }
        Ok(report)
    }

    /// A summary for `replicas list`.
    pub fn summary(&self) -> Result<ReplicaSummary> {
        let files = self.files()?;
        let mut snapshots = Vec::new();
        for f in files.iter().filter(|f| f.level == SNAPSHOT_LEVEL) {
            let h = self.header(f)?;
            snapshots.push((f.max_txid, h.timestamp_ms, h.commit, f.size));
        }
        let l0: Vec<&ReplicaFile> = files.iter().filter(|f| f.level == COMMIT_LEVEL).collect();
        let first = files.iter().min_by_key(|f| (f.max_txid, f.level));
        let last = files.iter().max_by_key(|f| (f.max_txid, f.level));
        let first_ms = first
            .map(|f| self.header(f))
            .transpose()?
            .map(|h| h.timestamp_ms);
        let last_h = last.map(|f| self.header(f)).transpose()?;
        let restorable_from = plan_files(&files, None, &self.url())
            .ok()
            .and_then(|c| c.first().map(|f| f.max_txid));
        Ok(ReplicaSummary {
            url: self.url(),
            snapshots,
            commit_files: l0.len(),
            bytes: files.iter().map(|f| f.size).sum(),
            first_ms,
            last_ms: last_h.as_ref().map(|h| h.timestamp_ms),
            last_txid: last_h.as_ref().map_or(0, |h| h.max_txid),
            restorable_from,
        })
    }

    /// Deletes what no restore to a point inside the last `window_ms` needs: keeps the
    /// newest snapshot shipped at or before the window's start (or the oldest snapshot
    /// when none is that old) and everything after it; deletes older snapshots and
    /// level-0 files that end before that snapshot. Returns the keys deleted.
    pub fn retain(&self, window_ms: i64, now_ms: i64) -> Result<Vec<String>> {
        let files = self.files()?;
        let start = now_ms.saturating_sub(window_ms);
        let mut snaps: Vec<(&ReplicaFile, i64)> = Vec::new();
        for f in files.iter().filter(|f| f.level == SNAPSHOT_LEVEL) {
            snaps.push((f, self.header(f)?.timestamp_ms));
        }
        snaps.sort_by_key(|(f, _)| f.max_txid);
        let keep = snaps
            .iter()
            .rev()
            .find(|(_, ts)| *ts <= start)
            .or_else(|| snaps.first())
            .map(|(f, _)| (*f).clone());
        let Some(keep) = keep else {
            return Ok(Vec::new());
        };
        let mut gone = Vec::new();
        for f in &files {
            let old = match f.level {
                SNAPSHOT_LEVEL => f.max_txid < keep.max_txid,
                _ => f.max_txid <= keep.max_txid,
            };
            if old && f.key != keep.key {
                self.objects.delete(&f.key)?;
                gone.push(f.key.clone());
            }
        }
        tracing::info!(target: TRACE, deleted = gone.len(), kept_snapshot = keep.max_txid, "retention applied");
        Ok(gone)
    }
}

/// What `replicas list` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaSummary {
    /// Where.
    pub url: String,
    /// Snapshots (each starts a generation or shortens restores): (TXID, timestamp ms,
    /// pages, bytes).
    pub snapshots: Vec<(u64, i64, u32, u64)>,
    /// Level-0 files.
    pub commit_files: usize,
    /// Bytes in all LTX objects.
    pub bytes: u64,
    /// Timestamp of the oldest file.
    pub first_ms: Option<i64>,
    /// Timestamp of the newest file.
    pub last_ms: Option<i64>,
    /// Newest TXID.
    pub last_txid: u64,
    /// The oldest TXID a restore can reach (the first snapshot of a restorable chain).
    pub restorable_from: Option<u64>,
}

fn wal_end(h: &LtxHeader) -> ([u32; 2], u32) {
    let frame = if h.wal_offset > 0 {
        crate::follow::frames_before(h.wal_offset + h.wal_size, h.page_size).unwrap_or(0)
    } else {
        0
    };
    ([h.wal_salt1, h.wal_salt2], frame)
}

fn check_name(url: &str, f: &ReplicaFile, h: &LtxHeader) -> Result<()> {
    if (h.min_txid, h.max_txid) != (f.min_txid, f.max_txid) {
        return Err(FrankenError::db_corrupt(format!(
            "replica object {url}: its header covers TXIDs {}..={}, its name {}..={}",
            h.min_txid, h.max_txid, f.min_txid, f.max_txid
        )));
    }
    Ok(())
}

/// Formats ms since the epoch as RFC 3339 UTC.
pub fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fff]Z` (UTC) into ms since the epoch.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut dp = date.split('-');
    let y: i64 = dp.next()?.parse().ok()?;
    let m: u32 = dp.next()?.parse().ok()?;
    let d: u32 = dp.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut tp = hms.split(':');
    let hh: i64 = tp.next()?.parse().ok()?;
    let mm: i64 = tp.next()?.parse().ok()?;
    let ss: i64 = tp.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: i64 = frac3.parse().ok()?;
    let days = days_from_civil(y, m, d);
    Some(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000 + ms)
}

// Howard Hinnant's civil-date algorithms (public-domain arithmetic).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The restore chain over a listing (see [`Replica::plan`]).
pub fn plan_files(
    files: &[ReplicaFile],
    upto_txid: Option<u64>,
    where_: &str,
) -> Result<Vec<ReplicaFile>> {
    let target = upto_txid.unwrap_or(u64::MAX);
    let snapshot = files
        .iter()
        .filter(|f| {
            (f.level == SNAPSHOT_LEVEL || f.level == COMMIT_LEVEL)
                && f.min_txid == 1
                && f.max_txid <= target
        })
        .max_by_key(|f| (f.max_txid, f.level))
        .ok_or_else(|| {
            FrankenError::cannot_open(
                where_,
                match upto_txid {
                    Some(t) => format!("the replica has no snapshot at or before TXID {t}"),
                    None => {
                        "the replica has no snapshot (is anything replicating to it?)".to_string()
                    }
                },
            )
        })?;
    let l0: Vec<&ReplicaFile> = files.iter().filter(|f| f.level == COMMIT_LEVEL).collect();
    let mut chain = vec![snapshot.clone()];
    let mut at = snapshot.max_txid;
    while at < target {
        let next = at + 1;
        let step = l0
            .iter()
            .filter(|f| f.min_txid == next && f.max_txid <= target)
            .max_by_key(|f| f.max_txid);
        if let Some(f) = step {
            chain.push((*f).clone());
            at = f.max_txid;
            continue;
        }
        if upto_txid.is_some()
            && l0
                .iter()
                .any(|f| f.min_txid <= next && f.max_txid > target && f.max_txid >= next)
        {
            // The target falls inside a file of several transactions: the newest state
            // at or before it is where the chain stands.
            break;
        }
        let later = l0
            .iter()
            .filter(|f| f.min_txid > next)
            .map(|f| f.min_txid)
            .min();
        if let Some(resume) = later.filter(|&m| m <= target) {
            return Err(FrankenError::db_corrupt(format!(
                "the replica {where_} has a gap: TXIDs {next}..={} are missing (after {} the next level-0 file starts at TXID {resume})",
                resume - 1,
                chain.last().map_or("", |f| f.key.as_str()),
            )));
        }
        break;
    }
    Ok(chain)
}

impl<O: Objects> Sink for Replica<O> {
    fn store(&mut self, level: u32, _header: &LtxHeader, bytes: &[u8]) -> Result<()> {
        self.ship(level, bytes).map(|_| ())
    }

    fn newest(&mut self) -> Result<Option<LtxHeader>> {
        let files = self.files()?;
        let newest = files
            .iter()
            .filter(|f| f.level == COMMIT_LEVEL || f.level == SNAPSHOT_LEVEL)
            .max_by_key(|f| (f.max_txid, f.level));
        newest.map(|f| self.header(f)).transpose()
    }

    fn describe(&self) -> String {
        self.url()
    }
}
