//! Snapshots (`ReadTxn::snapshot`, `Wal::begin_read_at`, `WalSnapshot` ordering,
//! `Wal::recover_snapshots`) against SQLite's own snapshot API
//! (`sqlite3_snapshot_get/open/cmp/recover`, the bundled SQLite being built with
//! `SQLITE_ENABLE_SNAPSHOT` and `SQLITE_ENABLE_DBPAGE_VTAB`, see `.cargo/config.toml`).
//!
//! SQLite writes the database (real b-tree pages); SQLite reads each snapshot's pages
//! through `sqlite_dbpage` inside a read transaction opened on the snapshot; we read the
//! same snapshot through `begin_read_at`. Both must agree page for page, both must refuse
//! the same snapshots for the same reasons, and the two handles are the same 48 bytes.

use std::path::Path;
use std::sync::Arc;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{CheckpointMode, Wal, WalOptions, WalSnapshot};
use rusqlite::{Connection, ffi};

use fsqlite_testkit::sqlite::snapshot::{self as sqlite_snap, Snap};

const ROWS: i64 = 60;

fn sqlite_writer(db: &Path) -> Connection {
    let c = Connection::open(db).unwrap();
    c.pragma_update(None, "journal_mode", "wal").unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    c.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .unwrap();
    c
}

fn setup(db: &Path) -> Connection {
    let c = sqlite_writer(db);
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
        .unwrap();
    for i in 0..ROWS {
        c.execute(
            "INSERT INTO t VALUES(?1, ?2)",
            (i, format!("v{i}-{}", "x".repeat(200))),
        )
        .unwrap();
    }
    c
}

/// A round of SQLite commits that changes some existing pages (different ones each
/// round) and adds new ones.
fn churn(c: &Connection, round: i64) {
    let first = (round * 9) % ROWS;
    c.execute(
        "UPDATE t SET v = v || ?1 WHERE id BETWEEN ?2 AND ?2 + 2",
        (format!("r{round}"), first),
    )
    .unwrap();
    c.execute(
        "INSERT INTO t(v) VALUES(?1)",
        (format!("grow{round}-{}", "y".repeat(900)),),
    )
    .unwrap();
}

fn opts() -> WalOptions {
    WalOptions {
        auto_checkpoint: None,
        checkpoint_on_close: false,
        ..WalOptions::default()
    }
}

fn ours(db: &Path) -> Wal<UnixVfs> {
    Wal::open(&Cx::new(), Arc::new(UnixVfs::new()), db, opts()).unwrap()
}

/// Every page of `snap` read through our `begin_read_at`.
fn our_pages(w: &mut Wal<UnixVfs>, snap: &WalSnapshot) -> Result<Vec<Vec<u8>>, FrankenError> {
    let cx = Cx::new();
    let ps = w.page_size() as usize;
    let r = w.begin_read_at(&cx, snap)?;
    let mut out = Vec::new();
    for p in 1..=r.db_size() {
        let mut buf = vec![0u8; ps];
        r.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)?;
        out.push(buf);
    }
    Ok(out)
}

fn assert_same(what: &str, a: &[Vec<u8>], b: &[Vec<u8>]) {
    assert_eq!(a.len(), b.len(), "{what}: page counts differ");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x == y, "{what}: page {} differs", i + 1);
    }
}

const ERROR_SNAPSHOT: i32 = 769;

#[test]
fn a_snapshot_reads_what_sqlite_reads_on_the_same_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("snap.db");
    let writer = setup(&db);
    let mut wal = ours(&db);
    let cx = Cx::new();

    // Three snapshots taken by both sides at the same commits.
    let mut taken = Vec::new();
    for round in 0..3 {
        churn(&writer, round);
        let reader = Connection::open(&db).unwrap();
        let theirs = sqlite_snap::get(&reader);
        let mine = wal.begin_read(&cx).unwrap().snapshot();
        // The same commit, and the very same 48 bytes (SQLite keeps the WAL-index header).
        assert_eq!(
            theirs.bytes(),
            mine.to_bytes(),
            "round {round}: handles differ"
        );
        let now = sqlite_snap::pages(&reader);
        reader.execute_batch("COMMIT").unwrap();
        taken.push((theirs, mine, now));
    }
    for round in 3..8 {
        churn(&writer, round);
    }
    let newest = wal.begin_read(&cx).unwrap().snapshot();
    for (i, (theirs, mine, then)) in taken.iter_mut().enumerate() {
        assert!(*mine < newest);
        let sq = sqlite_snap::pages_at(&db, theirs).expect("SQLite opens its snapshot");
        let ou = our_pages(&mut wal, mine).unwrap();
        assert_same(&format!("snapshot {i}: ours vs SQLite's"), &ou, &sq);
        assert_same(&format!("snapshot {i}: as read when taken"), &ou, then);
        // Each side opens the other's handle too.
        let from_ours = Snap::from_bytes(mine.to_bytes());
        let sq2 = sqlite_snap::pages_at(&db, &from_ours).expect("SQLite opens our handle");
        assert_same(&format!("snapshot {i}: SQLite on our handle"), &sq2, &sq);
        let back = WalSnapshot::from_bytes(&theirs.bytes()).unwrap();
        assert_same(
            &format!("snapshot {i}: ours on SQLite's handle"),
            &our_pages(&mut wal, &back).unwrap(),
            &sq,
        );
    }
    // The snapshots differ from the newest state (the comparison can fail).
    let now = our_pages(&mut wal, &newest).unwrap();
    assert_ne!(now, our_pages(&mut wal, &taken[0].1).unwrap());
}

#[test]
fn snapshots_compare_as_sqlite3_snapshot_cmp() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmp.db");
    let writer = setup(&db);
    let mut wal = ours(&db);
    let cx = Cx::new();
    let mut both = Vec::new();
    for round in 0..4 {
        let reader = Connection::open(&db).unwrap();
        let theirs = sqlite_snap::get(&reader);
        reader.execute_batch("COMMIT").unwrap();
        both.push((theirs, wal.begin_read(&cx).unwrap().snapshot()));
        if round % 2 == 0 {
            churn(&writer, round);
        }
    }
    for i in 0..both.len() {
        for j in 0..both.len() {
            let (a, b) = (both[i].1, both[j].1);
            let on_ours = sqlite_snap::cmp(
                &Snap::from_bytes(a.to_bytes()),
                &Snap::from_bytes(b.to_bytes()),
            );
            let theirs = sqlite_snap::cmp(&both[i].0, &both[j].0);
            let ours = a.partial_cmp(&b).expect("one WAL generation");
            assert_eq!(ours as i32, theirs.signum(), "snapshots {i} and {j}");
            assert_eq!(on_ours.signum(), theirs.signum(), "snapshots {i} and {j}");
        }
    }
    // After a WAL restart the generations do not compare (SQLite: undefined).
    drop(writer);
    wal.checkpoint(&cx, CheckpointMode::Truncate).unwrap();
    let w2 = sqlite_writer(&db);
    churn(&w2, 99);
    let later = wal.begin_read(&cx).unwrap().snapshot();
    assert_eq!(later.partial_cmp(&both[0].1), None);
    assert_ne!(later, both[0].1);
}

#[test]
fn both_refuse_a_snapshot_a_checkpoint_passed_or_a_restart_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gone.db");
    let writer = setup(&db);
    let mut wal = ours(&db);
    let cx = Cx::new();
    let reader = Connection::open(&db).unwrap();
    let theirs = sqlite_snap::get(&reader);
    reader.execute_batch("COMMIT").unwrap();
    let mine = wal.begin_read(&cx).unwrap().snapshot();
    churn(&writer, 1);

    // A reader open on the snapshot holds checkpoints back: SQLite's PASSIVE checkpoint
    // copies no frame past it, and the snapshot stays available to both afterwards.
    {
        let held = wal.begin_read_at(&cx, &mine).unwrap();
        let (busy, log, done): (i64, i64, i64) = writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(busy, 0);
        assert!(log > i64::from(mine.mx_frame()));
        assert!(
            done <= i64::from(mine.mx_frame()),
            "checkpoint passed an open snapshot: {done}"
        );
        drop(held);
    }
    assert!(sqlite_snap::pages_at(&db, &theirs).is_ok());
    assert!(our_pages(&mut wal, &mine).is_ok());

    // Without a reader, a checkpoint copies past it: both refuse, with 769.
    let _: (i64, i64, i64) = writer
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        sqlite_snap::pages_at(&db, &theirs).unwrap_err(),
        ERROR_SNAPSHOT
    );
    let e = our_pages(&mut wal, &mine).unwrap_err();
    assert_eq!(e.extended_code(), ERROR_SNAPSHOT, "{e}");
    assert!(e.to_string().contains("a checkpoint copied frames"), "{e}");

    // The newest snapshot is still good until the WAL restarts.
    let newest = wal.begin_read(&cx).unwrap().snapshot();
    let newest_theirs = Snap::from_bytes(newest.to_bytes());
    assert!(our_pages(&mut wal, &newest).is_ok());
    assert!(sqlite_snap::pages_at(&db, &newest_theirs).is_ok());
    churn(&writer, 2); // fully backfilled before: this commit restarts the WAL
    churn(&writer, 3);
    let _: i64 = writer
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(0))
        .unwrap();
    churn(&writer, 4);
    let e = our_pages(&mut wal, &newest).unwrap_err();
    assert_eq!(e.extended_code(), ERROR_SNAPSHOT, "{e}");
    assert_eq!(
        sqlite_snap::pages_at(&db, &newest_theirs).unwrap_err(),
        ERROR_SNAPSHOT
    );

    // A handle that is not this WAL's: a clear error, not a wrong read.
    let mut fake = newest.to_bytes();
    fake[0] ^= 1;
    assert!(WalSnapshot::from_bytes(&fake).is_err());
    assert!(WalSnapshot::from_bytes(&fake[..40]).is_err());
}

#[test]
fn after_a_restart_recover_brings_back_the_snapshots_sqlite_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("restart.db");
    let cx = Cx::new();
    let mut kept: Vec<[u8; 48]> = Vec::new();
    let mut pages_then = Vec::new();
    {
        let writer = setup(&db);
        let mut wal = ours(&db);
        for round in 0..6 {
            churn(&writer, round);
            let s = wal.begin_read(&cx).unwrap().snapshot();
            pages_then.push(our_pages(&mut wal, &s).unwrap());
            kept.push(s.to_bytes());
        }
        // A checkpoint that copied up to snapshot 2 only (a reader held it there).
        let s2 = WalSnapshot::from_bytes(&kept[2]).unwrap();
        let held = wal.begin_read_at(&cx, &s2).unwrap();
        let (_, _, done): (i64, i64, i64) = writer
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(done, i64::from(s2.mx_frame()));
        drop(held);
        wal.close(&cx).unwrap();
        drop(writer); // no checkpoint on close: the WAL stays as it is
    }
    // "Restart": every connection is gone; the next one rebuilds the WAL-index, which
    // hides all snapshots older than the newest.
    let reopened = Connection::open(&db).unwrap();
    reopened.execute_batch("SELECT count(*) FROM t").unwrap();
    let mut wal = ours(&db);
    let newest = WalSnapshot::from_bytes(&kept[5]).unwrap();
    for (i, b) in kept.iter().enumerate() {
        let s = WalSnapshot::from_bytes(b).unwrap();
        let ours_ok = our_pages(&mut wal, &s).is_ok();
        let theirs_ok = sqlite_snap::pages_at(&db, &Snap::from_bytes(*b)).is_ok();
        assert_eq!(ours_ok, theirs_ok, "snapshot {i} before recovery");
        assert_eq!(ours_ok, s == newest, "snapshot {i} before recovery");
    }
    // Ours recovers: snapshots at or past the backfilled frame come back; SQLite's own
    // recovery (on its own copy of the same files) agrees on each.
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for suffix in ["", "-wal"] {
        std::fs::copy(
            format!("{}{suffix}", db.display()),
            copy.join(format!("restart.db{suffix}")),
        )
        .unwrap();
    }
    let attempted = wal.recover_snapshots(&cx).unwrap();
    let copy_db = copy.join("restart.db");
    let c2 = sqlite_writer(&copy_db);
    c2.execute_batch("SELECT count(*) FROM t").unwrap();
    assert_eq!(sqlite_snap::recover(&c2), ffi::SQLITE_OK);
    let s2 = WalSnapshot::from_bytes(&kept[2]).unwrap();
    // Recovery stops at a frame the database holds: the checkpoint copied pages up to
    // snapshot 2 that no later commit rewrote, so the snapshots before stay gone.
    assert!(
        attempted >= s2.mx_frame() && attempted < newest.mx_frame(),
        "recovered down to {attempted} (snapshot 2 is frame {})",
        s2.mx_frame()
    );
    for (i, b) in kept.iter().enumerate() {
        let s = WalSnapshot::from_bytes(b).unwrap();
        let ours_r = our_pages(&mut wal, &s);
        let theirs = sqlite_snap::pages_at(&copy_db, &Snap::from_bytes(*b));
        assert_eq!(
            ours_r.is_ok(),
            theirs.is_ok(),
            "snapshot {i} after recovery"
        );
        assert_eq!(
            ours_r.is_ok(),
            s.mx_frame() >= attempted,
            "snapshot {i} after recovery"
        );
        if let (Ok(o), Ok(t)) = (ours_r, theirs) {
            assert_same(&format!("snapshot {i} after recovery"), &o, &t);
            assert_same(&format!("snapshot {i} as it was"), &o, &pages_then[i]);
        }
    }
    drop(reopened);
}
