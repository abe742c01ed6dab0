//! The follower against real files and a stock SQLite writer (rusqlite's bundled
//! SQLite) in the same process: every shipped TXID restores byte-for-byte to the source
//! database checkpointed at the same commit; the replicator's restarts resume or start a
//! new generation, never leaving a gap.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsqlite_replicate::follow::{Event, FollowOptions, Follower};
use fsqlite_replicate::replica::{DirObjects, Replica, Target};
use fsqlite_vfs::UnixVfs;
use rusqlite::Connection;

fn writer(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open");
    c.pragma_update(None, "journal_mode", "wal").expect("wal");
    c.pragma_update(None, "synchronous", "FULL").expect("sync");
    c.busy_timeout(std::time::Duration::from_millis(200))
        .expect("busy timeout");
    c.execute_batch("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB);")
        .expect("schema");
    c
}

fn commit(c: &Connection, i: i64) {
    // Rows of varying size so pages split, grow and (with deletes) shrink.
    let width = 50 + (i * 37 % 900) as usize;
    c.execute(
        "INSERT OR REPLACE INTO t(id, v) VALUES (?1, zeroblob(?2))",
        rusqlite::params![i % 700, width as i64],
    )
    .expect("insert");
    if i % 97 == 0 {
        c.execute("DELETE FROM t WHERE id % 5 = 0", [])
            .expect("delete");
    }
}

/// The source database as of now, checkpointed: a copy of `-wal` and the database
/// checkpointed by stock SQLite with TRUNCATE, its bytes.
fn checkpointed_copy(src: &Path, scratch: &Path, n: usize) -> Vec<u8> {
    let d = scratch.join(format!("copy{n}"));
    fs::create_dir_all(&d).expect("mkdir");
    let db = d.join("c.db");
    fs::copy(src, &db).expect("copy db");
    let wal = PathBuf::from(format!("{}-wal", src.display()));
    if wal.exists() {
        fs::copy(&wal, d.join("c.db-wal")).expect("copy wal");
    }
    {
        let c = Connection::open(&db).expect("open copy");
        c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .expect("checkpoint copy");
    }
    fs::read(&db).expect("read copy")
}

fn integrity_ok(img: &[u8], scratch: &Path) {
    let p = scratch.join("integrity.db");
    let _ = fs::remove_file(&p);
    fs::write(&p, img).expect("write");
    let c = Connection::open(&p).expect("open");
    let r: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity");
    assert_eq!(r, "ok");
}

fn opts() -> FollowOptions {
    FollowOptions {
        max_txids_per_file: 1,
        checkpoint_frames: Some(150),
        snapshot_every_txids: Some(120),
        busy_timeout: std::time::Duration::from_millis(200),
        ..FollowOptions::default()
    }
}

#[test]
fn every_shipped_txid_restores_to_the_checkpointed_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("src.db");
    let c = writer(&db);
    let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "app");
    let mut f = Follower::open(Arc::new(UnixVfs::new()), &db, replica, opts()).expect("follower");
    let mut expected = Vec::new();
    let mut restarts = 0;
    let mut sqlite_truncate_busy = 0;
    for i in 0..400i64 {
        commit(&c, i);
        if i % 3 == 0 {
            for e in f.poll().expect("poll") {
                if matches!(e, Event::WalRestarted { .. }) {
                    restarts += 1;
                }
            }
            if i % 30 == 0 {
                let st = f.status();
                expected.push((st.txid, checkpointed_copy(&db, dir.path(), expected.len())));
            }
        }
        if i % 50 == 25 {
            // A stock SQLite TRUNCATE checkpoint beside the replicator: it may copy, but it
            // cannot restart the WAL past frames not yet shipped (it answers busy).
            let busy: i64 = c
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .expect("sqlite checkpoint");
            sqlite_truncate_busy += busy;
        }
    }
    f.poll().expect("last poll");
    let st = f.status();
    assert_eq!(st.lag_frames(), 0, "{st:?}");
    expected.push((st.txid, checkpointed_copy(&db, dir.path(), expected.len())));
    assert!(restarts > 0, "the follower never let the WAL start over");
    assert!(
        sqlite_truncate_busy > 0,
        "stock SQLite's TRUNCATE never met the mark"
    );
    assert_eq!(st.generations, 1, "only the first generation: {st:?}");
    let replica = f.sink();
    for (txid, want) in &expected {
        let (img, rep) = replica.restore_image(Target::Txid(*txid)).expect("restore");
        assert_eq!(rep.txid, *txid);
        assert!(
            img == *want,
            "restore at TXID {txid} differs from the checkpointed source"
        );
    }
    let (img, _) = replica.restore_image(Target::Latest).expect("latest");
    integrity_ok(&img, dir.path());
    let out = dir.path().join("restored.db");
    let rep = replica
        .restore_to(Target::Latest, &out, |_| Ok(()))
        .expect("restore to file");
    assert_eq!(rep.txid, st.txid);
    assert_eq!(fs::read(&out).expect("read"), img);
    let e = replica
        .restore_to(Target::Latest, &out, |_| Ok(()))
        .expect_err("never overwrites");
    assert!(e.to_string().contains("never overwrites"), "{e}");
}

#[test]
fn a_restarted_replicator_resumes_or_says_it_starts_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("src.db");
    let c = writer(&db);
    let objects = DirObjects::new(dir.path().join("replica"));
    let vfs = Arc::new(UnixVfs::new());
    let follower = |vfs: &Arc<UnixVfs>| {
        Follower::open(
            Arc::clone(vfs),
            &db,
            Replica::new(objects.clone(), "p"),
            opts(),
        )
        .expect("follower")
    };
    let mut f = follower(&vfs);
    for i in 0..40 {
        commit(&c, i);
    }
    let ev = f.poll().expect("poll");
    assert!(
        matches!(ev.first(), Some(Event::NewGeneration { txid: 1, .. })),
        "{ev:?}"
    );
    let first = f.status().txid;
    drop(f);

    // Commits while no replicator runs, the WAL untouched: the next one resumes.
    for i in 40..60 {
        commit(&c, i);
    }
    let mut f = follower(&vfs);
    let ev = f.poll().expect("poll");
    assert!(
        matches!(ev.first(), Some(Event::Resumed { txid, .. }) if *txid == first),
        "{ev:?}"
    );
    assert_eq!(f.status().txid, first + 20);
    drop(f);

    // Stock SQLite restarts the WAL while no replicator runs: continuity cannot be
    // proven, so a new generation starts, with a snapshot, and says why.
    for i in 60..70 {
        commit(&c, i);
    }
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .expect("checkpoint");
    assert_eq!(busy, 0);
    for i in 70..75 {
        commit(&c, i);
    }
    let mut f = follower(&vfs);
    let ev = f.poll().expect("poll");
    match ev.first() {
        Some(Event::NewGeneration { txid, reason }) => {
            assert_eq!(*txid, first + 21);
            assert!(reason.contains("restarted"), "{reason}");
        }
        other => panic!("expected a new generation, got {other:?}"),
    }
    let want = checkpointed_copy(&db, dir.path(), 0);
    let (img, rep) = f.sink().restore_image(Target::Latest).expect("restore");
    assert_eq!(rep.txid, first + 21);
    assert!(img == want, "restore differs from the source");
    // The older history still restores to where it was.
    let (_, rep) = f
        .sink()
        .restore_image(Target::Txid(first + 20))
        .expect("older");
    assert_eq!(rep.txid, first + 20);
}

/// An injected fault layer between the follower and the store: requests fail, and some
/// uploads land but report failure (the answer lost). Nothing is lost or applied twice.
struct Faulty {
    inner: DirObjects,
    n: std::cell::Cell<u64>,
    failed: std::cell::Cell<u64>,
}

impl Faulty {
    fn roll(&self) -> u64 {
        let n = self.n.get() + 1;
        self.n.set(n);
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 59 // 0..32
    }
    fn fail(&self, what: &str) -> fsqlite_error::FrankenError {
        self.failed.set(self.failed.get() + 1);
        fsqlite_error::FrankenError::io(
            "injected fault",
            None,
            std::io::Error::new(std::io::ErrorKind::ConnectionReset, what.to_string()),
        )
    }
}

impl fsqlite_replicate::replica::Objects for Faulty {
    fn put_if_absent(&self, key: &str, bytes: &[u8]) -> fsqlite_error::Result<bool> {
        match self.roll() {
            0..=5 => Err(self.fail("connection reset before the upload")),
            6..=9 => {
                // The upload lands; its answer is lost.
                self.inner.put_if_absent(key, bytes)?;
                Err(self.fail("connection reset after the upload"))
            }
            _ => self.inner.put_if_absent(key, bytes),
        }
    }
    fn get(&self, key: &str) -> fsqlite_error::Result<Option<Vec<u8>>> {
        if self.roll() < 3 {
            return Err(self.fail("GET timed out"));
        }
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> fsqlite_error::Result<Vec<(String, u64)>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> fsqlite_error::Result<()> {
        self.inner.delete(key)
    }
    fn url(&self, key: &str) -> String {
        self.inner.url(key)
    }
}

#[test]
fn failing_requests_are_retried_without_a_gap_or_a_duplicate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("src.db");
    let c = writer(&db);
    let objects = Faulty {
        inner: DirObjects::new(dir.path().join("replica")),
        n: std::cell::Cell::new(0),
        failed: std::cell::Cell::new(0),
    };
    let mut f = Follower::open(
        Arc::new(UnixVfs::new()),
        &db,
        Replica::new(objects, "f"),
        opts(),
    )
    .expect("follower");
    let mut failures = 0;
    for i in 0..300i64 {
        commit(&c, i);
        if i % 2 == 0 {
            match f.poll() {
                Ok(ev) => {
                    failures += ev
                        .iter()
                        .filter(|e| matches!(e, Event::UploadFailed { .. }))
                        .count();
                }
                Err(e) => panic!("a poll failed outright: {e}"),
            }
        }
    }
    // Drain: keep polling until everything is stored.
    for _ in 0..200 {
        f.poll().expect("poll");
        if f.status().lag_frames() == 0 && f.status().failed_uploads > 0 {
            let st = f.status();
            if st.txid > 0 && f.poll().expect("poll").is_empty() {
                break;
            }
        }
    }
    let st = f.status();
    assert!(
        failures > 0 && st.failed_uploads > 0,
        "no fault was injected: {st:?}"
    );
    assert_eq!(
        st.generations, 1,
        "a fault must not start a generation: {st:?}"
    );
    let want = checkpointed_copy(&db, dir.path(), 0);
    let clean = Replica::new(DirObjects::new(dir.path().join("replica")), "f");
    let (img, rep) = clean.restore_image(Target::Latest).expect("restore");
    assert_eq!(rep.txid, st.txid);
    assert!(img == want, "restore after faults differs from the source");
    // Every TXID is there exactly once at level 0 (no duplicate range, no gap).
    let files = clean.files().expect("files");
    let mut next = 2u64;
    for f0 in files.iter().filter(|x| x.level == 0) {
        assert_eq!(f0.min_txid, next, "gap or duplicate at {f0:?}");
        next = f0.max_txid + 1;
    }
    assert_eq!(next, st.txid + 1);
}

#[test]
fn retention_keeps_every_point_inside_the_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("src.db");
    let c = writer(&db);
    let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "r");
    let mut f = Follower::open(Arc::new(UnixVfs::new()), &db, replica, opts()).expect("follower");
    for i in 0..300i64 {
        commit(&c, i);
        f.poll().expect("poll");
    }
    let st = f.status();
    assert!(st.snapshots >= 3, "{st:?}");
    let r = f.sink();
    let before = r.files().expect("files").len();
    // A window reaching back before everything: nothing goes.
    let now = fsqlite_replicate::replica::now_ms();
    assert!(r.retain(3_600_000, now).expect("retain").is_empty());
    assert_eq!(r.files().expect("files").len(), before);
    // An empty window: only the newest snapshot and what follows it stay.
    let newest_snap = r
        .files()
        .expect("files")
        .iter()
        .filter(|f| f.level == 9)
        .map(|f| f.max_txid)
        .max()
        .expect("a snapshot");
    let gone = r.retain(0, now + 1).expect("retain");
    assert!(!gone.is_empty());
    for f0 in r.files().expect("files") {
        assert!(f0.max_txid >= newest_snap, "{f0:?} survived retention");
    }
    let want = checkpointed_copy(&db, dir.path(), 0);
    let (img, rep) = r
        .restore_image(Target::Latest)
        .expect("restore after retention");
    assert_eq!(rep.txid, st.txid);
    assert!(img == want);
    let e = r
        .restore_image(Target::Txid(newest_snap - 1))
        .expect_err("history before the window is gone");
    assert!(e.to_string().contains("no snapshot at or before"), "{e}");
}

/// A writer that never pauses: the follower's hand-off (shipping the tail under the
/// WRITE lock, then restarting) keeps the WAL bounded, without a new generation.
#[test]
fn a_writer_that_never_pauses_does_not_grow_the_wal_forever() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("src.db");
    drop(writer(&db)); // the schema
    let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "busy");
    let mut f = Follower::open(Arc::new(UnixVfs::new()), &db, replica, opts()).expect("follower");
    f.poll().expect("first poll");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut most = 0u32;
    std::thread::scope(|s| {
        s.spawn(|| {
            let w = writer(&db);
            // The hand-off holds the WRITE lock while it ships the tail: a writer waits.
            w.busy_timeout(std::time::Duration::from_secs(10))
                .expect("busy timeout");
            let mut i = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // SQLite answers busy without waiting in some WAL-index races (a header
                // being rewritten by the restart); an application retries those.
                match w.execute(
                    "INSERT OR REPLACE INTO t(id, v) VALUES (?1, zeroblob(?2))",
                    rusqlite::params![i % 700, 50 + (i * 37 % 900)],
                ) {
                    Ok(_) => i += 1,
                    Err(rusqlite::Error::SqliteFailure(e, _))
                        if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                    Err(e) => panic!("insert: {e}"),
                }
            }
        });
        for _ in 0..40 {
            f.poll().expect("poll");
            most = most.max(f.status().wal_frames);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    f.poll().expect("last poll");
    let st = f.status();
    assert!(st.wal_restarts > 0, "the WAL never started over: {st:?}");
    assert_eq!(st.generations, 1, "{st:?}");
    let want = checkpointed_copy(&db, dir.path(), 0);
    let (img, rep) = f.sink().restore_image(Target::Latest).expect("restore");
    assert_eq!(rep.txid, st.txid);
    assert!(img == want, "restore differs from the source");
    eprintln!(
        "continuous writer: {} restarts, at most {most} WAL frames, {st:?}",
        st.wal_restarts
    );
}
