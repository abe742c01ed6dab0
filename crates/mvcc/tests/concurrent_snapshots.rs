//! Snapshots of concurrent transactions (`ConcurrentTxn::snapshot`,
//! `Coordinator::begin_concurrent_at`), against stock SQLite's own snapshot API on the
//! same files: the handle is the legacy `-shm` header of the commit, so SQLite opens it
//! with `sqlite3_snapshot_open` and must read the same pages (`sqlite_dbpage`); a
//! transaction on an old snapshot is validated like any other; a checkpoint past it makes
//! it unavailable for both.

mod common;

use common::{Shadow, commit_changes, make_db, open, options, txn_sql};
use fsqlite_mvcc::Coordinator;
use fsqlite_testkit::sqlite::snapshot::{self as sqlite_snap, Snap};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::WalSnapshot;

const PS: usize = common::PAGE_SIZE;

/// Every page of `snap`'s database as a concurrent transaction on it reads them.
fn pages_at(coord: &Coordinator<UnixVfs>, snap: &WalSnapshot) -> Vec<Vec<u8>> {
    let cx = Cx::new();
    let mut txn = coord.begin_concurrent_at(&cx, snap).unwrap();
    let mut out = Vec::new();
    for p in 1..=txn.db_size() {
        let mut buf = vec![0u8; PS];
        txn.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
            .unwrap();
        out.push(buf);
    }
    txn.rollback(&cx).unwrap();
    out
}

#[test]
fn an_old_snapshot_reads_what_it_read_and_what_sqlite_reads_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "snap.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let coord = open(&db, options()).unwrap();
    let cx = Cx::new();
    let mut taken = Vec::new();
    for i in 1..=12u64 {
        let (changes, size) = shadow.apply(&txn_sql(3, i));
        commit_changes(&coord, &cx, &changes, size);
        if i % 3 == 0 && i < 12 {
            let snap = coord.begin_concurrent(&cx).unwrap().snapshot();
            taken.push((snap, pages_at(&coord, &snap)));
        }
    }
    let newest = coord.begin_concurrent(&cx).unwrap().snapshot();
    for (k, (snap, then)) in taken.iter().enumerate() {
        assert!(*snap < newest, "snapshot {k} is older than the newest");
        let now = pages_at(&coord, snap);
        assert!(now == *then, "snapshot {k}: our pages changed");
        let theirs = sqlite_snap::pages_at(&db, &Snap::from_bytes(snap.to_bytes()))
            .unwrap_or_else(|rc| panic!("SQLite refused our handle {k}: {rc}"));
        assert_eq!(theirs.len(), now.len(), "snapshot {k}: page counts");
        for (p, (a, b)) in now.iter().zip(&theirs).enumerate() {
            assert!(a == b, "snapshot {k}: page {} differs from SQLite's", p + 1);
        }
    }
    // The snapshots differ from the newest state (the comparison can fail).
    assert!(pages_at(&coord, &taken[0].0) != pages_at(&coord, &newest));
    coord.close(&cx).unwrap();
}

#[test]
fn a_transaction_on_an_old_snapshot_is_validated_against_everything_since() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "val.db");
    let coord = open(&db, options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let (x, y) = (
        PageNumber::new(base + 1).unwrap(),
        PageNumber::new(base + 2).unwrap(),
    );
    coord
        .commit(&cx, &[(x, &[1; PS]), (y, &[1; PS])], base + 2)
        .unwrap();
    let snap = coord.begin_concurrent(&cx).unwrap().snapshot();
    coord.commit(&cx, &[(x, &[2; PS])], base + 2).unwrap();
    // Wrote a page changed since the snapshot: first committer wins.
    let mut t = coord.begin_concurrent_at(&cx, &snap).unwrap();
    t.write_page(&cx, x, &[3; PS]).unwrap();
    let e = t.commit(&cx, base + 2).unwrap_err();
    assert_eq!(e.extended_code(), 517, "{e}");
    // Read the changed page (it sees the old version), wrote another: refused too.
    let mut t = coord.begin_concurrent_at(&cx, &snap).unwrap();
    let mut buf = vec![0u8; PS];
    t.read_page(&cx, x, &mut buf).unwrap();
    assert_eq!(buf[0], 1, "the old snapshot's version");
    t.write_page(&cx, y, &[4; PS]).unwrap();
    assert_eq!(t.commit(&cx, base + 2).unwrap_err().extended_code(), 517);
    // Touched only what nobody changed since: it commits.
    let mut t = coord.begin_concurrent_at(&cx, &snap).unwrap();
    t.write_page(&cx, y, &[5; PS]).unwrap();
    t.commit(&cx, base + 2).unwrap();
    coord.read_page(&cx, y, &mut buf).unwrap();
    assert_eq!(buf[0], 5);
    coord.close(&cx).unwrap();
}

#[test]
fn a_checkpoint_past_it_makes_it_unavailable_for_both() {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "gone.db");
    let mut shadow = Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let coord = open(&db, options()).unwrap();
    let cx = Cx::new();
    for i in 1..=3u64 {
        let (changes, size) = shadow.apply(&txn_sql(9, i));
        commit_changes(&coord, &cx, &changes, size);
    }
    let snap = coord.begin_concurrent(&cx).unwrap().snapshot();
    for i in 4..=6u64 {
        let (changes, size) = shadow.apply(&txn_sql(9, i));
        commit_changes(&coord, &cx, &changes, size);
    }
    let checkpoint = || -> (i64, i64) {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })
        .unwrap()
    };
    // Held open, the old snapshot keeps SQLite's checkpoint at or below its mark.
    {
        let held = coord.begin_concurrent_at(&cx, &snap).unwrap();
        let (log, done) = checkpoint();
        assert!(log > i64::from(snap.mx_frame()));
        assert!(
            done <= i64::from(snap.mx_frame()),
            "{done} > {}",
            snap.mx_frame()
        );
        held.rollback(&cx).unwrap();
    }
    assert!(sqlite_snap::pages_at(&db, &Snap::from_bytes(snap.to_bytes())).is_ok());
    // Unheld, a checkpoint copies past it: both refuse it, with 769.
    let (log, done) = checkpoint();
    assert_eq!(log, done);
    let e = coord.begin_concurrent_at(&cx, &snap).unwrap_err();
    assert_eq!(e.extended_code(), 769, "{e}");
    assert!(e.to_string().contains("checkpoint copied"), "{e}");
    assert_eq!(
        sqlite_snap::pages_at(&db, &Snap::from_bytes(snap.to_bytes())).unwrap_err(),
        769
    );
    // A handle from another database is refused, not misread.
    let mut other = snap.header();
    other.a_frame_cksum[0] ^= 1;
    let e = coord
        .begin_concurrent_at(&cx, &WalSnapshot::from_header(other))
        .unwrap_err();
    assert_eq!(e.extended_code(), 769, "{e}");
    coord.close(&cx).unwrap();
}
