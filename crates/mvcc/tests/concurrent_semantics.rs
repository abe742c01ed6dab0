//! Semantics of `BEGIN CONCURRENT` (spec/API.md, "fsqlite-mvcc: concurrent writers") on
//! real files (`UnixVfs` in a tempdir, databases made by real SQLite), with real SQLite
//! (rusqlite, in this process: its POSIX locks are peers of the coordinator's OFD locks)
//! as the legacy reader and checkpointer:
//!
//! 1. snapshot reads: a transaction sees exactly the commits before its begin (pages and
//!    database size) plus its own writes;
//! 2. Hermitage-style anomalies on pages, each prevented: lost update, write skew, read
//!    skew, dirty read (also for a real SQLite reader); first committer wins; disjoint
//!    transactions all commit;
//! 3. a refused commit leaves the WAL, the `-shm` header and the counters untouched;
//! 4. the database size is a conflict item ("unchanged" keeps the newest size, a change
//!    conflicts with a concurrent change, a shrink below a written page conflicts);
//! 5. bounded memory: `max_txn_pages` refuses the next distinct page, `max_read_set`
//!    turns the read set into "the whole database";
//! 6. an open transaction's read mark stops a real SQLite checkpointer at its snapshot;
//! 7. `FileLockOnly` refuses `begin_concurrent`;
//! 8. a proptest oracle: random interleavings of 2-4 transactions over 6 pages commit
//!    exactly when the conflict rule says so, and the committed ones replay serially in
//!    commit-frame order with the same reads and the same final pages.
//!
//! Pages 4..=[`BASE`] are scratch pages past the SQLite-made tables (the fixture grows
//! the database to cover them); each holds a `u64` counter at [`COUNTER_AT`].
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use fsqlite_error::{ErrorCode, FrankenError};
use fsqlite_mvcc::{CompatMode, ConcurrentTxn, Coordinator, CoordinatorOptions};
use fsqlite_testkit::sqlite::{
    integrity_check, open_existing, read_file, read_shm_header, shm_path, table_digest, wal_path,
};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::SyncMode;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

const PS: usize = common::PAGE_SIZE;
/// Pages in the database `common::make_db` creates (header + table + index).
const SQLITE_PAGES: u32 = 3;
/// First scratch page.
const FIRST: u32 = SQLITE_PAGES + 1;
/// Database size after the fixture's setup commit (scratch pages `FIRST..=BASE`).
const BASE: u32 = 12;
/// Offset of the `u64` (LE) counter in a scratch page.
const COUNTER_AT: usize = 100;
/// SQLITE_BUSY_SNAPSHOT.
const BUSY_SNAPSHOT: i32 = 517;

type Txn<'a> = ConcurrentTxn<'a, UnixVfs>;

fn pg(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

/// A scratch page holding `v`.
fn img(v: u64) -> Vec<u8> {
    let mut b = vec![0u8; PS];
    b[COUNTER_AT..COUNTER_AT + 8].copy_from_slice(&v.to_le_bytes());
    b
}

fn val(buf: &[u8]) -> u64 {
    u64::from_le_bytes(buf[COUNTER_AT..COUNTER_AT + 8].try_into().unwrap())
}

/// The value the fixture gives scratch page `p`.
fn initial(p: u32) -> u64 {
    u64::from(p) * 1000
}

fn tread(txn: &mut Txn<'_>, cx: &Cx, p: u32) -> u64 {
    let mut b = vec![0u8; PS];
    txn.read_page(cx, pg(p), &mut b).unwrap();
    val(&b)
}

fn twrite(txn: &mut Txn<'_>, cx: &Cx, p: u32, v: u64) {
    txn.write_page(cx, pg(p), &img(v)).unwrap();
}

/// Commits with the snapshot's size ("unchanged").
fn tcommit(txn: Txn<'_>, cx: &Cx) -> fsqlite_error::Result<u32> {
    let size = txn.db_size();
    txn.commit(cx, size)
}

fn newest(coord: &Coordinator<UnixVfs>, cx: &Cx, p: u32) -> u64 {
    let mut b = vec![0u8; PS];
    coord.read_page(cx, pg(p), &mut b).unwrap();
    val(&b)
}

fn blind(coord: &Coordinator<UnixVfs>, cx: &Cx, pages: &[(u32, u64)], size: u32) -> u32 {
    let imgs: Vec<(PageNumber, Vec<u8>)> = pages.iter().map(|&(p, v)| (pg(p), img(v))).collect();
    let refs: Vec<(PageNumber, &[u8])> = imgs.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    coord.commit(cx, &refs, size).unwrap()
}

fn mx_frame(coord: &Coordinator<UnixVfs>) -> u32 {
    coord.legacy_state().unwrap().legacy_hdr().mx_frame
}

/// Asserts that `e` is the documented conflict on `item` and returns `(frame, snapshot)`.
#[track_caller]
fn assert_conflict(e: &FrankenError, item: &str) -> (u32, u32) {
    assert_eq!(e.extended_code(), BUSY_SNAPSHOT, "{e}");
    assert_eq!(e.error_code(), ErrorCode::Busy, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(item),
        "message {text:?} does not name {item:?}"
    );
    let s = e.suggestion().unwrap_or_default();
    assert!(
        s.contains("retry") && s.contains("fresh begin_concurrent"),
        "suggestion {s:?}"
    );
    match e {
        FrankenError::ConcurrentConflict {
            item: got,
            frame,
            snapshot,
        } => {
            assert!(got.starts_with(item), "item {got:?}, expected {item:?}");
            (*frame, *snapshot)
        }
        other => panic!("not a ConcurrentConflict: {other:?}"),
    }
}

/// A SQLite-made database grown to [`BASE`] pages by one blind commit that gives every
/// scratch page its [`initial`] value.
struct Fx {
    dir: tempfile::TempDir,
    db: PathBuf,
    coord: Coordinator<UnixVfs>,
    cx: Cx,
}

impl Fx {
    fn new(opts: CoordinatorOptions) -> Self {
        common::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let db = common::make_db(dir.path(), "sem.db");
        let cx = Cx::new();
        let coord = common::open(&db, opts).unwrap();
        assert_eq!(
            coord.mode(),
            CompatMode::HybridShm,
            "{}",
            coord.mode_reason()
        );
        assert_eq!(coord.db_size(&cx).unwrap(), SQLITE_PAGES);
        let pages: Vec<(u32, u64)> = (FIRST..=BASE).map(|p| (p, initial(p))).collect();
        blind(&coord, &cx, &pages, BASE);
        assert_eq!(coord.db_size(&cx).unwrap(), BASE);
        Self { dir, db, coord, cx }
    }

    fn close(self) {
        let Self { dir, coord, cx, .. } = self;
        coord.close(&cx).unwrap();
        drop(dir);
    }
}

// ---------------------------------------------------------------------------------------
// 1. Snapshot reads
// ---------------------------------------------------------------------------------------

#[test]
fn snapshot_reads_ignore_later_commits_and_see_own_writes() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let (p, q, grown) = (5, 6, BASE + 1);
    let mut ta = coord.begin_concurrent(cx).unwrap();
    let snap_a = ta.snapshot_frame();
    assert_eq!(snap_a, mx_frame(coord));
    assert_eq!(ta.db_size(), BASE);
    assert_eq!(tread(&mut ta, cx, p), initial(p));

    // B changes P and grows the database by one page.
    let mut tb = coord.begin_concurrent(cx).unwrap();
    twrite(&mut tb, cx, p, 77);
    twrite(&mut tb, cx, grown, 99);
    let fb = tb.commit(cx, grown).unwrap();
    assert!(fb > snap_a);
    assert_eq!(coord.db_size(cx).unwrap(), grown);
    assert_eq!(newest(coord, cx, p), 77);

    // A still reads its snapshot: old P, old size, no grown page (past its end: zeros).
    assert_eq!(
        tread(&mut ta, cx, p),
        initial(p),
        "A sees B's commit of page {p}"
    );
    assert_eq!(ta.db_size(), BASE);
    assert_eq!(ta.snapshot_frame(), snap_a);
    assert_eq!(tread(&mut ta, cx, grown), 0, "A sees the page B added");
    // Own writes are visible to own reads (and only to them).
    twrite(&mut ta, cx, q, 555);
    assert_eq!(tread(&mut ta, cx, q), 555);
    twrite(&mut ta, cx, p, 556);
    assert_eq!(tread(&mut ta, cx, p), 556);
    assert_eq!(newest(coord, cx, q), initial(q));

    // A transaction begun after B sees B (and not A's private writes).
    let mut tc = coord.begin_concurrent(cx).unwrap();
    assert_eq!(tc.snapshot_frame(), fb);
    assert_eq!(tc.db_size(), grown);
    assert_eq!(tread(&mut tc, cx, p), 77);
    assert_eq!(tread(&mut tc, cx, grown), 99);
    assert_eq!(tread(&mut tc, cx, q), initial(q));
    tc.rollback(cx).unwrap();
    ta.rollback(cx).unwrap();
    assert_eq!(
        newest(coord, cx, q),
        initial(q),
        "a rolled-back write became visible"
    );
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 2. Anomalies
// ---------------------------------------------------------------------------------------

#[test]
fn lost_update_is_prevented() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let p = 5;
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    let v1 = tread(&mut t1, cx, p);
    let v2 = tread(&mut t2, cx, p);
    twrite(&mut t1, cx, p, v1 + 1);
    twrite(&mut t2, cx, p, v2 + 1);
    let s2 = t2.snapshot_frame();
    let f1 = tcommit(t1, cx).unwrap();
    let e = tcommit(t2, cx).unwrap_err();
    let (frame, snapshot) = assert_conflict(&e, &format!("page {p}"));
    assert_eq!((frame, snapshot), (f1, s2));
    assert_eq!(newest(coord, cx, p), initial(p) + 1);
    // The retry from a fresh begin reads T1's commit: no update is lost.
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    let v = tread(&mut t2, cx, p);
    twrite(&mut t2, cx, p, v + 1);
    tcommit(t2, cx).unwrap();
    assert_eq!(newest(coord, cx, p), initial(p) + 2);
    let st = coord.stats();
    assert_eq!((st.commits, st.conflicts), (3, 1), "{st:?}");
    fx.close();
}

#[test]
fn write_skew_is_prevented() {
    // Constraint: P + Q >= 1. Each transaction checks it on its snapshot and zeroes one.
    for first_is_t1 in [true, false] {
        let fx = Fx::new(common::options());
        let (coord, cx) = (&fx.coord, &fx.cx);
        let (p, q) = (5, 6);
        blind(coord, cx, &[(p, 1), (q, 1)], BASE);
        let mut t1 = coord.begin_concurrent(cx).unwrap();
        let mut t2 = coord.begin_concurrent(cx).unwrap();
        assert_eq!(tread(&mut t1, cx, p) + tread(&mut t1, cx, q), 2);
        assert_eq!(tread(&mut t2, cx, p) + tread(&mut t2, cx, q), 2);
        twrite(&mut t1, cx, p, 0);
        twrite(&mut t2, cx, q, 0);
        let (winner, loser, loser_item) = if first_is_t1 {
            (t1, t2, p)
        } else {
            (t2, t1, q)
        };
        tcommit(winner, cx).unwrap();
        let e = tcommit(loser, cx).unwrap_err();
        assert_conflict(&e, &format!("page {loser_item}"));
        let (np, nq) = (newest(coord, cx, p), newest(coord, cx, q));
        assert_eq!(np + nq, 1, "write skew: P={np} Q={nq}");
        fx.close();
    }
}

#[test]
fn read_skew_is_prevented() {
    // T1 reads P; T2 moves 10 from P to Q and commits; T1 reads Q (its snapshot's Q) and
    // writes R := P + Q. T1 must not commit: P in its read set changed.
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let (p, q, r) = (5, 6, 7);
    let total = initial(p) + initial(q);
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let seen_p = tread(&mut t1, cx, p);
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    let (old_p, old_q) = (tread(&mut t2, cx, p), tread(&mut t2, cx, q));
    twrite(&mut t2, cx, p, old_p - 10);
    twrite(&mut t2, cx, q, old_q + 10);
    tcommit(t2, cx).unwrap();
    let seen_q = tread(&mut t1, cx, q);
    assert_eq!(seen_p + seen_q, total, "T1's reads are not one snapshot");
    twrite(&mut t1, cx, r, seen_p + seen_q);
    let e = tcommit(t1, cx).unwrap_err();
    assert_eq!(e.extended_code(), BUSY_SNAPSHOT, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("page {p}")) || text.contains(&format!("page {q}")),
        "{text}"
    );
    assert_eq!(
        newest(coord, cx, r),
        initial(r),
        "T1's write reached the database"
    );

    // P alone in the read set is enough: T2' changes only P, T1' read only P.
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let seen = tread(&mut t1, cx, p);
    blind(coord, cx, &[(p, 1)], BASE);
    twrite(&mut t1, cx, r, seen);
    let e = tcommit(t1, cx).unwrap_err();
    assert_conflict(&e, &format!("page {p}"));
    assert_eq!(newest(coord, cx, r), initial(r));
    fx.close();
}

#[test]
fn dirty_reads_are_prevented_for_fsqlite_and_sqlite_readers() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "dirty.db");
    // SQLite's own page images of an INSERT, made on a shadow copy.
    let mut shadow = common::Shadow::create_from(&db, &dir.path().join("shadow.db"));
    let before_rows = table_digest(&db, "t").unwrap();
    let before_image = std::fs::read(&db).unwrap();
    let (changes, new_size) = shadow.apply("INSERT INTO t VALUES (2, x'deadbeef');");
    let after_rows = shadow.digest();
    assert_ne!(before_rows, after_rows);
    assert!(changes.len() >= 2, "{} pages changed", changes.len());
    let old_page = |p: PageNumber| -> Vec<u8> {
        let at = (p.get() as usize - 1) * PS;
        before_image
            .get(at..at + PS)
            .map_or_else(|| vec![0; PS], <[u8]>::to_vec)
    };

    let cx = Cx::new();
    let coord = common::open(&db, common::options()).unwrap();
    let old_size = coord.db_size(&cx).unwrap();
    let mut t1 = coord.begin_concurrent(&cx).unwrap();
    for (p, d) in &changes {
        t1.write_page(&cx, *p, d).unwrap();
    }
    let wal_len = || std::fs::metadata(wal_path(&db)).map_or(0, |m| m.len());
    let wal_before = wal_len();
    let mut t2 = coord.begin_concurrent(&cx).unwrap();
    let mut buf = vec![0u8; PS];
    for (p, d) in &changes {
        assert_ne!(&old_page(*p), d, "page {p} did not change");
        t2.read_page(&cx, *p, &mut buf).unwrap();
        assert_eq!(buf, old_page(*p), "T2 reads T1's uncommitted page {p}");
        coord.read_page(&cx, *p, &mut buf).unwrap();
        assert_eq!(
            buf,
            old_page(*p),
            "Coordinator::read_page sees uncommitted page {p}"
        );
        t1.read_page(&cx, *p, &mut buf).unwrap();
        assert_eq!(&buf, d, "T1 does not see its own write of page {p}");
    }
    assert_eq!(coord.db_size(&cx).unwrap(), old_size);
    // A real SQLite reader (read-only: the coordinator holds WAL_WRITE_LOCK).
    let conn = open_existing(&db).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "SQLite sees T1's uncommitted row");
    assert_eq!(table_digest(&db, "t").unwrap(), before_rows);
    assert_eq!(wal_len(), wal_before, "uncommitted pages reached the WAL");

    let f1 = t1.commit(&cx, new_size).unwrap();
    assert_eq!(mx_frame(&coord), f1);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2, "SQLite misses T1's commit");
    assert_eq!(table_digest(&db, "t").unwrap(), after_rows);
    assert_eq!(integrity_check(&db).unwrap(), "ok");
    // T2's snapshot is still the old one.
    for (p, _) in &changes {
        t2.read_page(&cx, *p, &mut buf).unwrap();
        assert_eq!(buf, old_page(*p), "T2's snapshot moved (page {p})");
    }
    t2.rollback(&cx).unwrap();
    drop(conn);
    coord.close(&cx).unwrap();
    assert_eq!(table_digest(&db, "t").unwrap(), after_rows);
}

#[test]
fn first_committer_wins() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let p = 8;
    // Blind writes of the same page (no reads): a write-write conflict.
    let mut txns: Vec<Option<Txn<'_>>> = (0..4u64)
        .map(|i| {
            let mut t = coord.begin_concurrent(cx).unwrap();
            twrite(&mut t, cx, p, 100 + i);
            Some(t)
        })
        .collect();
    let order = [2usize, 0, 3, 1];
    let winner = txns[order[0]].take().unwrap();
    let f = tcommit(winner, cx).unwrap();
    for &i in &order[1..] {
        let e = tcommit(txns[i].take().unwrap(), cx).unwrap_err();
        let (frame, _) = assert_conflict(&e, &format!("page {p}"));
        assert_eq!(frame, f);
    }
    assert_eq!(newest(coord, cx, p), 102);
    assert_eq!(mx_frame(coord), f, "a loser wrote frames");
    drop(txns);
    fx.close();
}

#[test]
fn disjoint_transactions_all_commit() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let base = coord.stats();
    // One thread, all begun at one snapshot, committed one by one.
    let mut txns: Vec<Txn<'_>> = (FIRST..FIRST + 5)
        .map(|p| {
            let mut t = coord.begin_concurrent(cx).unwrap();
            let v = tread(&mut t, cx, p);
            twrite(&mut t, cx, p, v + 1);
            t
        })
        .collect();
    let s = txns[0].snapshot_frame();
    assert!(txns.iter().all(|t| t.snapshot_frame() == s));
    let mut last = s;
    for t in txns.drain(..) {
        let f = tcommit(t, cx).unwrap();
        assert!(f > last, "commit frames not increasing: {f} after {last}");
        last = f;
    }
    // Threads committing at once (one group-commit batch or several).
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|sc| {
        for k in 0..4u32 {
            let (coord, barrier) = (coord, &barrier);
            sc.spawn(move || {
                let cx = Cx::new();
                let p = FIRST + 5 + k;
                let mut t = coord.begin_concurrent(&cx).unwrap();
                let v = tread(&mut t, &cx, p);
                twrite(&mut t, &cx, p, v + 1);
                barrier.wait();
                tcommit(t, &cx).unwrap();
            });
        }
    });
    for p in FIRST..FIRST + 9 {
        assert_eq!(newest(coord, cx, p), initial(p) + 1, "page {p}");
    }
    let st = coord.stats();
    assert_eq!(st.commits - base.commits, 9, "{st:?}");
    assert_eq!(st.conflicts, base.conflicts, "{st:?}");
    drop(txns);
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 3. A refused commit writes nothing
// ---------------------------------------------------------------------------------------

#[test]
fn refused_commit_leaves_the_wal_untouched() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let (p, q) = (5, 9);
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    tread(&mut t1, cx, p);
    tread(&mut t2, cx, p);
    twrite(&mut t1, cx, p, 1);
    twrite(&mut t2, cx, p, 2);
    // T2 also writes pages nobody else touches, and grows the database.
    twrite(&mut t2, cx, q, 3);
    twrite(&mut t2, cx, BASE + 1, 4);
    tcommit(t1, cx).unwrap();

    let wal = read_file(&wal_path(&fx.db)).unwrap();
    let shm = read_shm_header(&read_file(&shm_path(&fx.db)).unwrap()).unwrap();
    let mx = mx_frame(coord);
    let st = coord.stats();
    let e = t2.commit(cx, BASE + 1).unwrap_err();
    assert_conflict(&e, &format!("page {p}"));

    assert_eq!(
        read_file(&wal_path(&fx.db)).unwrap(),
        wal,
        "the -wal changed"
    );
    let shm_after = read_shm_header(&read_file(&shm_path(&fx.db)).unwrap()).unwrap();
    assert_eq!(
        shm_after.copy_a, shm.copy_a,
        "the published -shm header changed"
    );
    assert_eq!(mx_frame(coord), mx);
    assert_eq!(coord.legacy_state().unwrap().legacy_hdr().n_page, BASE);
    assert_eq!(coord.db_size(cx).unwrap(), BASE);
    let after = coord.stats();
    assert_eq!(after.commits, st.commits);
    assert_eq!(
        after.batches, st.batches,
        "a refused commit ran a WAL batch"
    );
    assert_eq!(after.wal_syncs, st.wal_syncs);
    assert_eq!(after.conflicts, st.conflicts + 1);
    assert_eq!(newest(coord, cx, p), 1);
    assert_eq!(newest(coord, cx, q), initial(q));
    // The next commit's frames follow directly.
    let f = blind(coord, cx, &[(q, 7)], BASE);
    assert_eq!(f, mx + 1);
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 4. The database size as a conflict item
// ---------------------------------------------------------------------------------------

#[test]
fn unchanged_size_keeps_the_newest_size() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let n = BASE;
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    assert_eq!((t1.db_size(), t2.db_size()), (n, n));
    twrite(&mut t1, cx, n + 1, 11);
    t1.commit(cx, n + 1).unwrap();
    twrite(&mut t2, cx, 5, 22);
    let f2 = t2.commit(cx, n).unwrap();
    assert_eq!(
        coord.db_size(cx).unwrap(),
        n + 1,
        "T2's unchanged size shrank the database"
    );
    let hdr = coord.legacy_state().unwrap().legacy_hdr();
    assert_eq!((hdr.mx_frame, hdr.n_page), (f2, n + 1));
    assert_eq!(newest(coord, cx, n + 1), 11);
    assert_eq!(newest(coord, cx, 5), 22);
    fx.close();
}

#[test]
fn concurrent_size_changes_conflict() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let n = BASE;
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    twrite(&mut t1, cx, n + 1, 11);
    let f1 = t1.commit(cx, n + 1).unwrap();
    // T2 writes disjoint pages but changes the size too.
    twrite(&mut t2, cx, 5, 22);
    twrite(&mut t2, cx, n + 2, 33);
    let e = t2.commit(cx, n + 2).unwrap_err();
    let (frame, _) = assert_conflict(&e, "the database size");
    assert_eq!(frame, f1);
    assert_eq!(coord.db_size(cx).unwrap(), n + 1);
    assert_eq!(newest(coord, cx, 5), initial(5));
    assert_eq!(mx_frame(coord), f1);
    fx.close();
}

#[test]
fn shrink_below_a_written_page_conflicts() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    let n = BASE;
    let mut t1 = coord.begin_concurrent(cx).unwrap();
    let mut t2 = coord.begin_concurrent(cx).unwrap();
    twrite(&mut t1, cx, FIRST, 1);
    t1.commit(cx, n - 1).unwrap();
    assert_eq!(coord.db_size(cx).unwrap(), n - 1);
    // T2 writes page n (inside its snapshot's size) and keeps the size "unchanged":
    // committing would leave its page outside the database.
    twrite(&mut t2, cx, n, 2);
    let e = tcommit(t2, cx).unwrap_err();
    assert_conflict(&e, "the database size");
    assert!(e.to_string().contains(&format!("page {n}")), "{e}");
    assert_eq!(coord.db_size(cx).unwrap(), n - 1);
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 5. Bounded memory
// ---------------------------------------------------------------------------------------

#[test]
fn write_set_is_bounded_by_max_txn_pages() {
    let fx = Fx::new(CoordinatorOptions {
        max_txn_pages: 4,
        ..common::options()
    });
    let (coord, cx) = (&fx.coord, &fx.cx);
    let mut t = coord.begin_concurrent(cx).unwrap();
    for p in FIRST..FIRST + 4 {
        twrite(&mut t, cx, p, 1);
    }
    let e = t.write_page(cx, pg(FIRST + 4), &img(1)).unwrap_err();
    assert!(matches!(e, FrankenError::OutOfRange { .. }), "{e:?}");
    assert_eq!(e.error_code(), ErrorCode::Range);
    assert!(e.to_string().contains("max_txn_pages"), "{e}");
    assert_eq!(t.pages_written(), 4);
    // Rewriting a page already in the write set still works.
    twrite(&mut t, cx, FIRST, 2);
    assert_eq!(tread(&mut t, cx, FIRST), 2);
    assert_eq!(t.pages_written(), 4);
    tcommit(t, cx).unwrap();
    assert_eq!(newest(coord, cx, FIRST), 2);
    assert_eq!(newest(coord, cx, FIRST + 1), 1);
    assert_eq!(
        newest(coord, cx, FIRST + 4),
        initial(FIRST + 4),
        "the refused page was written"
    );
    fx.close();
}

#[test]
fn read_set_overflow_counts_as_reading_everything() {
    let fx = Fx::new(CoordinatorOptions {
        max_read_set: 3,
        ..common::options()
    });
    let (coord, cx) = (&fx.coord, &fx.cx);
    let other = BASE; // never read by anyone below
    // Control: 3 pages read (within the limit); a commit of another page does not conflict.
    let mut t = coord.begin_concurrent(cx).unwrap();
    for p in FIRST..FIRST + 3 {
        tread(&mut t, cx, p);
    }
    twrite(&mut t, cx, FIRST + 6, 1);
    blind(coord, cx, &[(other, 1)], BASE);
    tcommit(t, cx).unwrap();
    // 4 pages read: past the limit, any commit since the snapshot conflicts.
    let mut t = coord.begin_concurrent(cx).unwrap();
    for p in FIRST..FIRST + 4 {
        tread(&mut t, cx, p);
    }
    twrite(&mut t, cx, FIRST + 6, 2);
    let f = blind(coord, cx, &[(other, 2)], BASE);
    let e = tcommit(t, cx).unwrap_err();
    assert_eq!(e.extended_code(), BUSY_SNAPSHOT, "{e}");
    assert_eq!(e.error_code(), ErrorCode::Busy);
    assert!(e.to_string().contains("max_read_set"), "{e}");
    assert!(
        matches!(e, FrankenError::ConcurrentConflict { frame, .. } if frame == f),
        "{e:?}"
    );
    assert_eq!(newest(coord, cx, FIRST + 6), 1);
    // Without a concurrent commit the overflowed transaction still commits.
    let mut t = coord.begin_concurrent(cx).unwrap();
    for p in FIRST..FIRST + 5 {
        tread(&mut t, cx, p);
    }
    twrite(&mut t, cx, FIRST + 6, 3);
    tcommit(t, cx).unwrap();
    assert_eq!(newest(coord, cx, FIRST + 6), 3);
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 6. A long-open transaction holds back a real SQLite checkpointer
// ---------------------------------------------------------------------------------------

fn passive_checkpoint(conn: &rusqlite::Connection) -> (i64, i64, i64) {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .unwrap()
}

fn db_file_page(db: &Path, p: u32) -> Vec<u8> {
    let image = std::fs::read(db).unwrap();
    let at = (p as usize - 1) * PS;
    image
        .get(at..at + PS)
        .map_or_else(|| vec![0; PS], <[u8]>::to_vec)
}

#[test]
fn open_transaction_holds_back_sqlite_checkpoint() {
    let fx = Fx::new(common::options());
    let (coord, cx) = (&fx.coord, &fx.cx);
    blind(coord, cx, &[(4, 1)], BASE);
    let s = blind(coord, cx, &[(5, 1)], BASE);
    let mut long = coord.begin_concurrent(cx).unwrap();
    assert_eq!(long.snapshot_frame(), s);
    assert_eq!(tread(&mut long, cx, 6), initial(6));
    for p in 6..=8 {
        blind(coord, cx, &[(p, 2)], BASE);
    }
    let log = mx_frame(coord);
    assert!(log > s);

    // The transaction's read mark is in the real -shm, and its lock is held.
    let shm = read_shm_header(&read_file(&shm_path(&fx.db)).unwrap()).unwrap();
    assert!(
        shm.a_read_mark[1..].contains(&s),
        "no read mark {s} in {:?}",
        shm.a_read_mark
    );
    let conn = open_existing(&fx.db).unwrap();
    let (busy, log1, done) = passive_checkpoint(&conn);
    eprintln!("PASSIVE with a transaction at {s}: ({busy}, {log1}, {done})");
    assert_eq!(log1, i64::from(log));
    assert!(
        done <= i64::from(s) && i64::from(s) < log1,
        "checkpointed {done} frames past the open snapshot {s} (log {log1})"
    );
    let shm = read_shm_header(&read_file(&shm_path(&fx.db)).unwrap()).unwrap();
    assert_eq!(i64::from(shm.n_backfill), done);
    // Nothing newer than the snapshot reached the database file, and the transaction
    // still reads its snapshot.
    // Pages whose newest frame is <= the snapshot are copied; no version newer than it
    // reaches the file. (SQLite copies each page's newest frame only, so pages 6..=8,
    // rewritten after the snapshot, keep whatever the file had: nothing, here.)
    assert_eq!(
        val(&db_file_page(&fx.db, 5)),
        1,
        "frames <= {s} were not backfilled"
    );
    for p in 6..=8 {
        assert_ne!(
            val(&db_file_page(&fx.db, p)),
            2,
            "page {p} of a frame > {s} was backfilled"
        );
    }
    assert_eq!(tread(&mut long, cx, 6), initial(6));
    assert_eq!(tread(&mut long, cx, 5), 1);
    assert_eq!(tread(&mut long, cx, 7), initial(7));
    long.rollback(cx).unwrap();

    // Released: the next PASSIVE checkpoint copies everything.
    let (busy, log2, done) = passive_checkpoint(&conn);
    assert_eq!((busy, log2, done), (0, i64::from(log), i64::from(log)));
    assert_eq!(val(&db_file_page(&fx.db, 8)), 2);
    // ... and the next commit restarts the WAL (its commit frame is frame 1).
    assert_eq!(blind(coord, cx, &[(9, 3)], BASE), 1);
    for (p, v) in [(4, 1), (5, 1), (6, 2), (7, 2), (8, 2), (9, 3)] {
        assert_eq!(newest(coord, cx, p), v, "page {p} after the restart");
    }
    drop(conn);
    assert_eq!(integrity_check(&fx.db).unwrap(), "ok");
    fx.close();
}

// ---------------------------------------------------------------------------------------
// 7. FileLockOnly
// ---------------------------------------------------------------------------------------

#[test]
fn file_lock_only_refuses_begin_concurrent() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "flo.db");
    let cx = Cx::new();
    let coord = common::open(
        &db,
        CoordinatorOptions {
            hybrid: false,
            ..common::options()
        },
    )
    .unwrap();
    assert_eq!(
        coord.mode(),
        CompatMode::FileLockOnly,
        "{}",
        coord.mode_reason()
    );
    let e = coord.begin_concurrent(&cx).unwrap_err();
    assert!(matches!(e, FrankenError::ConcurrentUnavailable), "{e:?}");
    assert_eq!(e.error_code(), ErrorCode::Error);
    assert!(e.suggestion().is_some());
    // Plain commits still work in this mode.
    blind(&coord, &cx, &[(FIRST, 5)], FIRST);
    assert_eq!(newest(&coord, &cx, FIRST), 5);
    assert_eq!(coord.stats().commits, 1);
    coord.close(&cx).unwrap();
}

// ---------------------------------------------------------------------------------------
// 8. Serializability oracle
// ---------------------------------------------------------------------------------------

/// Scratch pages of the oracle.
const ORACLE_PAGES: u32 = 6;
/// Logical transactions interleaved.
const SLOTS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Read page `FIRST + k` (begins the slot's transaction if none is open).
    Read(usize, u32),
    /// Write page `FIRST + k` with a value derived from everything the transaction read.
    Write(usize, u32),
    /// Commit (begins one if none is open).
    Commit(usize),
    /// Roll back (begins one if none is open).
    Rollback(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let slot = 0..SLOTS;
    let page = 0..ORACLE_PAGES;
    prop_oneof![
        4 => (slot.clone(), page.clone()).prop_map(|(s, k)| Op::Read(s, k)),
        3 => (slot.clone(), page).prop_map(|(s, k)| Op::Write(s, k)),
        2 => slot.clone().prop_map(Op::Commit),
        1 => slot.prop_map(Op::Rollback),
    ]
}

struct Live<'a> {
    txn: Txn<'a>,
    /// Commits (of writers) before this transaction began.
    begun_after: u64,
    /// Values read from the snapshot (not from the own write set), in order.
    reads: Vec<(u32, u64)>,
    writes: BTreeMap<u32, u64>,
    read_sum: u64,
}

/// A committed transaction as observed.
#[derive(Debug)]
struct Committed {
    frame: u32,
    reads: Vec<(u32, u64)>,
    writes: BTreeMap<u32, u64>,
}

fn oracle_options() -> CoordinatorOptions {
    CoordinatorOptions {
        // Durability is not under test here; keep the cases fast.
        sync: SyncMode::Normal,
        checkpoint_on_close: false,
        ..common::options()
    }
}

/// Runs one schedule and checks it; returns `(writer commits, conflicts)`.
fn run_schedule(template: &Path, ops: &[Op]) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oracle.db");
    std::fs::copy(template, &db).unwrap();
    let cx = Cx::new();
    let coord = common::open(&db, oracle_options()).unwrap();
    let pages: Vec<u32> = (FIRST..FIRST + ORACLE_PAGES).collect();
    let init: Vec<(u32, u64)> = pages.iter().map(|&p| (p, initial(p))).collect();
    let size = FIRST + ORACLE_PAGES - 1;
    blind(&coord, &cx, &init, size);

    // The conflict rule of the spec, as a model: commit sequence numbers per page.
    let mut writer_commits = 0u64;
    let mut last_write: HashMap<u32, u64> = HashMap::new();
    let mut write_counter = 0u64;
    // history[k]: the pages after k writer commits (what a snapshot taken then reads).
    let mut history: Vec<HashMap<u32, u64>> = vec![init.iter().copied().collect()];
    let mut slots: Vec<Option<Live<'_>>> = (0..SLOTS).map(|_| None).collect();
    let mut committed: Vec<Committed> = Vec::new();
    let mut conflicts = 0u64;
    for (step, &op) in ops.iter().enumerate() {
        let s = match op {
            Op::Read(s, _) | Op::Write(s, _) | Op::Commit(s) | Op::Rollback(s) => s,
        };
        let Some(live) = slots[s].as_mut() else {
            slots[s] = Some(Live {
                txn: coord.begin_concurrent(&cx).unwrap(),
                begun_after: writer_commits,
                reads: Vec::new(),
                writes: BTreeMap::new(),
                read_sum: 0,
            });
            if matches!(op, Op::Commit(_) | Op::Rollback(_)) {
                continue;
            }
            // Fall through with the fresh transaction.
            let live = slots[s].as_mut().unwrap();
            apply_rw(op, live, &cx, &mut write_counter, &history, step);
            continue;
        };
        match op {
            Op::Read(..) | Op::Write(..) => {
                apply_rw(op, live, &cx, &mut write_counter, &history, step);
            }
            Op::Rollback(_) => {
                let live = slots[s].take().unwrap();
                live.txn.rollback(&cx).unwrap();
            }
            Op::Commit(_) => {
                let live = slots[s].take().unwrap();
                let touched: BTreeSet<u32> = live
                    .reads
                    .iter()
                    .map(|&(p, _)| p)
                    .chain(live.writes.keys().copied())
                    .collect();
                let expect_conflict = touched
                    .iter()
                    .find(|p| last_write.get(p).is_some_and(|&c| c > live.begun_after))
                    .copied();
                let snapshot = live.txn.snapshot_frame();
                let mx_before = mx_frame(&coord);
                match (tcommit(live.txn, &cx), expect_conflict) {
                    (Ok(frame), None) => {
                        if live.writes.is_empty() {
                            assert_eq!(frame, mx_before, "step {step}: read-only commit frame");
                        } else {
                            assert!(frame > mx_before, "step {step}: commit frame {frame}");
                            writer_commits += 1;
                            let mut next = history[history.len() - 1].clone();
                            for (&p, &v) in &live.writes {
                                last_write.insert(p, writer_commits);
                                next.insert(p, v);
                            }
                            history.push(next);
                        }
                        committed.push(Committed {
                            frame,
                            reads: live.reads,
                            writes: live.writes,
                        });
                    }
                    (Err(e), Some(p)) => {
                        assert_eq!(e.extended_code(), BUSY_SNAPSHOT, "step {step}: {e}");
                        match &e {
                            FrankenError::ConcurrentConflict {
                                item, snapshot: s2, ..
                            } => {
                                assert_eq!(*s2, snapshot);
                                let named: u32 = item
                                    .strip_prefix("page ")
                                    .and_then(|n| n.parse().ok())
                                    .unwrap_or_else(|| panic!("step {step}: item {item:?}"));
                                assert!(
                                    touched.contains(&named)
                                        && last_write
                                            .get(&named)
                                            .is_some_and(|&c| c > live.begun_after),
                                    "step {step}: conflict names page {named}, which did not \
                                     change (expected e.g. page {p})"
                                );
                            }
                            other => panic!("step {step}: {other:?}"),
                        }
                        assert_eq!(mx_frame(&coord), mx_before, "step {step}: a loser wrote");
                        conflicts += 1;
                    }
                    (Ok(frame), Some(p)) => panic!(
                        "step {step}: committed at frame {frame} although page {p} changed \
                         after its snapshot {snapshot}"
                    ),
                    (Err(e), None) => panic!("step {step}: refused without a conflict: {e}"),
                }
            }
        }
    }
    for live in slots.into_iter().flatten() {
        live.txn.rollback(&cx).unwrap();
    }

    // Serial replay in commit order (writers before read-only ones serialized after them).
    committed.sort_by_key(|c| (c.frame, u8::from(c.writes.is_empty())));
    let mut model: HashMap<u32, u64> = init.iter().copied().collect();
    for (i, c) in committed.iter().enumerate() {
        for &(p, v) in &c.reads {
            assert_eq!(
                model[&p], v,
                "committed txn #{i} (frame {}) read {v} from page {p}, serial order has {}",
                c.frame, model[&p]
            );
        }
        for (&p, &v) in &c.writes {
            model.insert(p, v);
        }
    }
    for &p in &pages {
        assert_eq!(newest(&coord, &cx, p), model[&p], "final page {p}");
    }
    assert_eq!(coord.db_size(&cx).unwrap(), size);
    coord.close(&cx).unwrap();
    (writer_commits, conflicts)
}

fn apply_rw(
    op: Op,
    live: &mut Live<'_>,
    cx: &Cx,
    write_counter: &mut u64,
    history: &[HashMap<u32, u64>],
    step: usize,
) {
    match op {
        Op::Read(_, k) => {
            let p = FIRST + k;
            let v = tread(&mut live.txn, cx, p);
            if let Some(&own) = live.writes.get(&p) {
                assert_eq!(v, own, "step {step}: own write of page {p} not visible");
            } else {
                // Snapshot isolation, for every transaction (also those that later
                // conflict or roll back): the state after the commits before its begin.
                let at = live.begun_after as usize;
                assert_eq!(
                    v, history[at][&p],
                    "step {step}: page {p} read outside the snapshot after {at} commits"
                );
                live.reads.push((p, v));
            }
            live.read_sum = live.read_sum.wrapping_add(v);
        }
        Op::Write(_, k) => {
            let p = FIRST + k;
            *write_counter += 1;
            // Unique (the counter) and derived from what the transaction read.
            let v = (*write_counter << 40) | (live.read_sum & ((1 << 40) - 1));
            twrite(&mut live.txn, cx, p, v);
            live.writes.insert(p, v);
        }
        Op::Commit(_) | Op::Rollback(_) => unreachable!(),
    }
}

#[test]
fn random_schedules_are_serializable() {
    common::init_tracing();
    let tdir = tempfile::tempdir().unwrap();
    let template = common::make_db(tdir.path(), "template.db");
    let mut runner = TestRunner::new(Config {
        cases: 64,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        ..Config::default()
    });
    let schedules = prop::collection::vec(op_strategy(), 4..64);
    let totals = std::sync::Mutex::new((0u64, 0u64));
    runner
        .run(&schedules, |ops| {
            let (c, k) = run_schedule(&template, &ops);
            let mut t = totals.lock().unwrap();
            t.0 += c;
            t.1 += k;
            Ok(())
        })
        .unwrap();
    // The schedules must exercise both outcomes, or the oracle proves nothing.
    let (commits, conflicts) = *totals.lock().unwrap();
    eprintln!("oracle: {commits} writer commits, {conflicts} conflicts over 64 cases");
    assert!(
        commits >= 64 && conflicts >= 8,
        "{commits} commits, {conflicts} conflicts"
    );
}
