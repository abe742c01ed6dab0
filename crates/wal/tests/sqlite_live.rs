//! Live interop with SQLite in **another process** (a python3 `sqlite3` connection driven
//! over a pipe, `testkit::process::LiveSqlite`), and between two `Wal`s in two of our own
//! processes (`testkit::child::spawn_self`): "a SQLite process on the same files is
//! simply another connection" (API.md), over real files, POSIX/OFD locks and a shared
//! mmap'd `-shm` (`UnixVfs`).
//!
//! Valid b-tree pages for our commits come from a **shadow** copy of the database: the
//! same SQL is applied to the shadow by rusqlite, the shadow is checkpointed, and the
//! pages that differ from the current state are committed through our `Wal`. SQLite's
//! view is compared through a digest query (`count | id:length:hex-prefix,…`) run by the
//! live SQLite and by rusqlite on the shadow.
//!
//! Checked, in order, on one database:
//! 1. our commits are visible to the live SQLite's next read as soon as `commit`
//!    returns, and `integrity_check` there is ok;
//! 2. while our write transaction is open, the live SQLite's write gets `SQLITE_BUSY`;
//!    after our commit it reads our change;
//! 3. after the live SQLite commits, our next read sees it: every page read through our
//!    `ReadTxn` equals the page images of a copy SQLite checkpointed at that point;
//! 4. while the live SQLite holds a write transaction (`BEGIN IMMEDIATE`), our
//!    `begin_write` returns `Busy` after `busy_timeout` (not a hang), and reads still
//!    work;
//! 5. checkpoints across the two: SQLite's `wal_checkpoint(TRUNCATE)` under our open
//!    connection, then our commit on the truncated WAL read by SQLite; our FULL
//!    checkpoint is busy while SQLite reads an older snapshot, and completes once it
//!    ends; our TRUNCATE, then SQLite writes and we read.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_testkit::child::{ChildSpec, ack, child_role, spawn_self};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::sqlite::{SqliteWalDb, read_file, sqlite_page_images};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
use rusqlite::Connection;

const PS: usize = 4096;
/// Our lock waits.
const OUR_BUSY: Duration = Duration::from_millis(300);
/// A wait that means "hung".
const HANG: Duration = Duration::from_secs(10);

/// One text value both sides compute: row count and per row id, length, first bytes.
const DIGEST_SQL: &str = "SELECT count(*) || '|' || coalesce(group_concat(id || ':' || \
     length(v) || ':' || hex(substr(v, 1, 8)), ','), '') FROM (SELECT id, v FROM t ORDER BY id)";

/// The shadow database that produces valid page images for our commits.
struct Shadow {
    path: PathBuf,
    conn: Option<Connection>,
}

impl Shadow {
    fn new(from: &Path, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("shadow.db");
        std::fs::copy(from, &path).unwrap();
        let mut s = Self { path, conn: None };
        s.reopen();
        s
    }

    fn reopen(&mut self) {
        let c = Connection::open(&self.path).unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint=0").unwrap();
        self.conn = Some(c);
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().unwrap()
    }

    /// Applies `sql` and returns the page images afterwards.
    fn apply(&self, sql: &str) -> Vec<Vec<u8>> {
        self.conn().execute_batch(sql).unwrap();
        self.images()
    }

    fn images(&self) -> Vec<Vec<u8>> {
        let busy: i64 = self
            .conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        read_file(&self.path)
            .unwrap()
            .chunks(PS)
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn digest(&self) -> String {
        self.conn().query_row(DIGEST_SQL, [], |r| r.get(0)).unwrap()
    }

    /// Replaces the shadow with `db_file` (a checkpointed copy).
    fn replace_with(&mut self, db_file: &Path) {
        self.conn.take().unwrap().close().unwrap();
        for suffix in ["-wal", "-shm"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        std::fs::copy(db_file, &self.path).unwrap();
        self.reopen();
    }
}

fn live_digest(live: &mut LiveSqlite) -> String {
    let rows = live.query(DIGEST_SQL).unwrap().into_rows().unwrap();
    rows[0][0].as_str().unwrap().to_owned()
}

fn live_integrity(live: &mut LiveSqlite) -> String {
    let rows = live
        .query("PRAGMA integrity_check")
        .unwrap()
        .into_rows()
        .unwrap();
    rows[0][0].as_str().unwrap_or_default().to_owned()
}

/// Commits the pages of `new` that differ from `cur` (and those beyond it) in one
/// transaction of size `new.len()`; returns how many pages were written.
fn commit_diff(w: &mut Wal<UnixVfs>, cur: &[Vec<u8>], new: &[Vec<u8>]) -> usize {
    let cx = Cx::new();
    let mut t = w.begin_write(&cx).unwrap();
    let mut n = 0;
    for (i, page) in new.iter().enumerate() {
        if cur.get(i) != Some(page) {
            t.write_page(&cx, PageNumber::new(i as u32 + 1).unwrap(), page)
                .unwrap();
            n += 1;
        }
    }
    t.commit(&cx, new.len() as u32).unwrap();
    n
}

/// Every page of our newest snapshot.
fn our_pages(w: &mut Wal<UnixVfs>) -> Vec<Vec<u8>> {
    let cx = Cx::new();
    let r = w.begin_read(&cx).unwrap();
    (1..=r.db_size())
        .map(|p| {
            let mut buf = vec![0u8; PS];
            r.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
                .unwrap();
            buf
        })
        .collect()
}

/// Page images of the database as SQLite sees it now: a copy of the three files,
/// checkpointed by SQLite.
fn sqlite_view(db: &Path, dir: &Path) -> (Vec<Vec<u8>>, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let copy = dir.join("copy.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut from = db.as_os_str().to_owned();
        from.push(suffix);
        let mut to = copy.as_os_str().to_owned();
        to.push(suffix);
        if Path::new(&from).exists() {
            std::fs::copy(PathBuf::from(from), PathBuf::from(to)).unwrap();
        }
    }
    (sqlite_page_images(&copy).unwrap(), copy)
}

fn assert_pages_equal(what: &str, ours: &[Vec<u8>], theirs: &[Vec<u8>]) {
    assert_eq!(ours.len(), theirs.len(), "{what}: database size in pages");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(a == b, "{what}: page {} differs", i + 1);
    }
}

#[test]
fn live_sqlite_process_and_our_wal_are_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // A SQLite database in WAL mode, checkpointed and closed: the file is the state.
    let db_path = {
        let mut db = SqliteWalDb::create(root, "live.db", PS as u32).unwrap();
        db.run_workload(0x11FE, 10, 4).unwrap();
        db.exec("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        let p = db.path().to_path_buf();
        db.close().unwrap();
        p
    };
    let mut shadow = Shadow::new(&db_path, &root.join("shadow"));
    let mut cur = shadow.images();

    let mut live = LiveSqlite::spawn(
        &db_path,
        LiveOptions {
            busy_timeout: Duration::from_millis(200),
            wal: true,
            reply_timeout: HANG,
        },
    )
    .unwrap();
    assert_eq!(live_digest(&mut live), shadow.digest());

    let cx = Cx::new();
    let opts = WalOptions {
        busy_timeout: OUR_BUSY,
        auto_checkpoint: None,
        checkpoint_on_close: true,
        ..WalOptions::default()
    };
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), &db_path, opts).unwrap();

    // 1. Our commits are visible to SQLite's next read.
    for sql in [
        "INSERT INTO t(id, v) VALUES (100001, zeroblob(5000))",
        "UPDATE t SET v = x'00112233445566778899' WHERE id = (SELECT min(id) FROM t)",
        "DELETE FROM t WHERE id = (SELECT max(id) FROM t WHERE id < 100000)",
        "INSERT INTO t(id, v) SELECT id + 200000, v FROM t WHERE id < 100000 LIMIT 3",
    ] {
        let new = shadow.apply(sql);
        let n = commit_diff(&mut w, &cur, &new);
        assert!(n > 0);
        cur = new;
        assert_eq!(
            live_digest(&mut live),
            shadow.digest(),
            "SQLite does not see our commit of `{sql}`"
        );
    }
    assert_eq!(live_integrity(&mut live), "ok");

    // 2. Our open write transaction makes SQLite's write BUSY.
    {
        let new = shadow.apply("UPDATE t SET v = zeroblob(100) WHERE id = 100001");
        let mut t = w.begin_write(&cx).unwrap();
        let r = live
            .exec("INSERT INTO t(id, v) VALUES (300000, x'01')")
            .unwrap();
        assert!(
            r.is_locked(),
            "SQLite wrote while we held the write lock: {r:?}"
        );
        for (i, page) in new.iter().enumerate() {
            if cur.get(i) != Some(page) {
                t.write_page(&cx, PageNumber::new(i as u32 + 1).unwrap(), page)
                    .unwrap();
            }
        }
        t.commit(&cx, new.len() as u32).unwrap();
        cur = new;
        assert_eq!(live_digest(&mut live), shadow.digest());
    }

    // 3. SQLite commits; our next read sees exactly its pages.
    assert_pages_equal("our own commits", &our_pages(&mut w), &cur);
    live.exec_ok("INSERT INTO t(id, v) VALUES (400000, zeroblob(7000))")
        .unwrap();
    live.exec_ok("DELETE FROM t WHERE id = 100001").unwrap();
    let (theirs, copy) = sqlite_view(&db_path, &root.join("view1"));
    let ours = our_pages(&mut w);
    assert_pages_equal("after SQLite's commits", &ours, &theirs);
    shadow.replace_with(&copy);
    cur = theirs;
    assert_eq!(live_digest(&mut live), shadow.digest());

    // 4. SQLite holds the write lock: our begin_write is Busy after busy_timeout.
    {
        let r = live.begin_immediate().unwrap();
        assert!(r.ok, "{r:?}");
        let t0 = Instant::now();
        let e = w.begin_write(&cx).map(|_| ()).unwrap_err();
        let waited = t0.elapsed();
        assert!(matches!(e, FrankenError::Busy), "{e}");
        assert!(waited >= OUR_BUSY, "gave up after {waited:?}");
        assert!(waited < HANG, "waited {waited:?}");
        // Reads do not wait for writers.
        assert_pages_equal(
            "during SQLite's write transaction",
            &our_pages(&mut w),
            &cur,
        );
        live.rollback().unwrap();
    }

    // 5a. SQLite truncates the WAL under our open connection; we commit on it.
    let r = live
        .query("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap()
        .into_rows()
        .unwrap();
    assert_eq!(
        r[0][0].as_i64(),
        Some(0),
        "SQLite's TRUNCATE was busy: {r:?}"
    );
    assert_eq!(
        std::fs::metadata(fsqlite_testkit::sqlite::wal_path(&db_path))
            .unwrap()
            .len(),
        0
    );
    let new = shadow.apply("INSERT INTO t(id, v) VALUES (500000, x'AA55')");
    commit_diff(&mut w, &cur, &new);
    cur = new;
    assert_eq!(live_digest(&mut live), shadow.digest());
    assert_eq!(live_integrity(&mut live), "ok");

    // 5b. SQLite reads an old snapshot: our FULL checkpoint is busy, then completes.
    {
        assert!(live.begin().unwrap().ok);
        let before = live_digest(&mut live);
        let new = shadow.apply("UPDATE t SET v = x'BB' WHERE id = 500000");
        commit_diff(&mut w, &cur, &new);
        cur = new;
        let o = w.checkpoint(&cx, CheckpointMode::Full).unwrap();
        assert!(o.busy, "FULL must not pass SQLite's reader: {o:?}");
        assert!(o.checkpointed_frames < o.log_frames, "{o:?}");
        assert_eq!(live_digest(&mut live), before, "SQLite's snapshot moved");
        assert!(live.commit().unwrap().ok);
        let o = w.checkpoint(&cx, CheckpointMode::Full).unwrap();
        assert!(!o.busy, "{o:?}");
        assert_eq!(o.checkpointed_frames, o.log_frames, "{o:?}");
        assert_eq!(live_digest(&mut live), shadow.digest());
        assert_pages_equal("after our FULL checkpoint", &our_pages(&mut w), &cur);
    }

    // 5c. Our TRUNCATE; then SQLite writes on the truncated WAL and we read it.
    let o = w.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
    assert_eq!((o.busy, o.log_frames, o.checkpointed_frames), (false, 0, 0));
    assert_eq!(
        std::fs::metadata(fsqlite_testkit::sqlite::wal_path(&db_path))
            .unwrap()
            .len(),
        0
    );
    assert_eq!(live_digest(&mut live), shadow.digest());
    live.exec_ok("INSERT INTO t(id, v) VALUES (600000, zeroblob(300))")
        .unwrap();
    let (theirs, _) = sqlite_view(&db_path, &root.join("view2"));
    assert_pages_equal(
        "after our TRUNCATE and SQLite's commit",
        &our_pages(&mut w),
        &theirs,
    );

    // Not the last connection: close leaves the files to SQLite.
    w.close(&cx).unwrap();
    assert!(fsqlite_testkit::sqlite::wal_path(&db_path).exists());
    assert_eq!(live_integrity(&mut live), "ok");
    live.exit().unwrap();
}

// ------------------------------------------------------------ two of our processes

const DIR_ENV: &str = "FSQLITE_CONNTEST_LIVE_DIR";
const TEST_NAME: &str = "two_wals_in_two_processes";

fn page1() -> Vec<u8> {
    let mut p = vec![0u8; PS];
    p[..16].copy_from_slice(b"SQLite format 3\0");
    p[16..18].copy_from_slice(&(PS as u16).to_be_bytes());
    p[18] = 2;
    p[19] = 2;
    p
}

fn wait_file(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < HANG, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read_one(w: &mut Wal<UnixVfs>, page: u32) -> u8 {
    let cx = Cx::new();
    let r = w.begin_read(&cx).unwrap();
    let mut buf = vec![0u8; PS];
    r.read_page(&cx, PageNumber::new(page).unwrap(), &mut buf)
        .unwrap();
    buf[100]
}

fn opts() -> WalOptions {
    WalOptions {
        busy_timeout: OUR_BUSY,
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

/// The child: a second `Wal` on the parent's database.
fn peer(dir: &Path) {
    let cx = Cx::new();
    let db = dir.join("ours.db");
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), &db, opts()).unwrap();
    // Hold a write transaction until told to commit.
    {
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, PageNumber::new(2).unwrap(), &[0xC1; PS])
            .unwrap();
        ack(1, 0).unwrap();
        wait_file(&dir.join("go1"));
        let mx = t.commit(&cx, 2).unwrap();
        ack(2, u64::from(mx)).unwrap();
    }
    // The parent holds the write lock now: Busy after our busy_timeout.
    wait_file(&dir.join("go2"));
    let t0 = Instant::now();
    let busy = matches!(w.begin_write(&cx).map(|_| ()), Err(FrankenError::Busy));
    let ms = t0.elapsed().as_millis() as u64;
    ack(3, (u64::from(busy) << 32) | ms).unwrap();
    // The parent committed page 3.
    wait_file(&dir.join("go3"));
    ack(4, u64::from(read_one(&mut w, 3))).unwrap();
    w.close(&cx).unwrap();
}

#[test]
fn two_wals_in_two_processes() {
    if let Some((role, _)) = child_role() {
        assert_eq!(role, "peer");
        peer(Path::new(&std::env::var(DIR_ENV).unwrap()));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cx = Cx::new();
    let db = dir.join("ours.db");
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), &db, opts()).unwrap();
    {
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, PageNumber::new(1).unwrap(), &page1())
            .unwrap();
        t.write_page(&cx, PageNumber::new(2).unwrap(), &[0; PS])
            .unwrap();
        t.commit(&cx, 2).unwrap();
    }
    let spec = ChildSpec {
        role: "peer".into(),
        seed: 1,
        env: vec![(DIR_ENV.into(), dir.display().to_string())],
    };
    let mut child = spawn_self(TEST_NAME, &spec).unwrap();
    let fail = |child: &fsqlite_testkit::child::ChildHandle, what: &str| -> ! {
        panic!(
            "{what}; child output {:?}; stderr {}",
            child.other_output(),
            child.stderr()
        )
    };
    if !child.wait_for_acks(1, HANG) {
        fail(&child, "the peer never opened its write transaction");
    }
    // The peer holds the write lock: Busy after our busy_timeout, and its page is not
    // visible before its commit.
    let t0 = Instant::now();
    let e = w.begin_write(&cx).map(|_| ()).unwrap_err();
    assert!(matches!(e, FrankenError::Busy), "{e}");
    assert!(t0.elapsed() >= OUR_BUSY && t0.elapsed() < HANG);
    assert_eq!(read_one(&mut w, 2), 0);
    std::fs::write(dir.join("go1"), b"").unwrap();
    if !child.wait_for_acks(2, HANG) {
        fail(&child, "the peer did not commit");
    }
    assert_eq!(
        read_one(&mut w, 2),
        0xC1,
        "the peer's commit is not visible"
    );
    // Now we hold the write lock and the peer must get Busy.
    {
        let mut t = w.begin_write(&cx).unwrap();
        t.write_page(&cx, PageNumber::new(3).unwrap(), &[0xA3; PS])
            .unwrap();
        std::fs::write(dir.join("go2"), b"").unwrap();
        if !child.wait_for_acks(3, HANG) {
            fail(&child, "the peer did not try to write");
        }
        t.commit(&cx, 3).unwrap();
    }
    let (_, r3) = child.acks()[2];
    assert_eq!(r3 >> 32, 1, "the peer's begin_write was not Busy");
    assert!(
        (r3 & 0xFFFF_FFFF) >= OUR_BUSY.as_millis() as u64,
        "the peer gave up after {} ms",
        r3 & 0xFFFF_FFFF
    );
    std::fs::write(dir.join("go3"), b"").unwrap();
    if !child.wait_for_acks(4, HANG) {
        fail(&child, "the peer did not read");
    }
    assert_eq!(child.acks()[3].1, 0xA3, "the peer does not see our commit");
    let status = child.wait_timeout(HANG).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "peer exit {status:?}: {}",
        child.stderr()
    );
    w.close(&cx).unwrap();
}
