//! What we write, SQLite reads (ARCHITECTURE.md invariant 5).
//!
//! SQLite (rusqlite, bundled) creates database A in WAL mode and checkpoints it; then B = A
//! plus more inserts/updates/deletes, checkpointed too. A copy of A is opened with our
//! `Wal` over `UnixVfs`, and every page that differs between A and B (and every page
//! beyond A's size) is written in **one** commit whose database size is B's page count.
//!
//! - `checkpoint_on_close: false`: SQLite reads B's exact rows (`table_digest`) and
//!   `integrity_check` is `ok` — first while our connection is still open (SQLite uses our
//!   `-shm`: header, checksums, hash tables), then after our close (SQLite recovers our
//!   `-wal`). An independent WAL reader (`testkit::sqlite::wal_scan`) finds exactly our
//!   frames, a commit marker of B's size, and B's page images. Finally SQLite checkpoints
//!   our WAL and the database file is byte-identical to B's.
//! - Exclusive locking mode: while a SQLite connection has the database open our switch
//!   is refused (`Busy`); once it closed, the switch succeeds and SQLite cannot read
//!   (SQLITE_BUSY); B is committed without a single `-shm` lock call, and after the switch
//!   back to normal SQLite reads B through our `-shm`, and after our close it recovers and
//!   checkpoints our WAL to B's exact bytes.
//! - `checkpoint_on_close: true`: our close checkpoints through the recovery barrier and
//!   deletes `-wal` and `-shm`; the database file is byte-identical to B's and SQLite
//!   reads B.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fsqlite_testkit::sqlite::{
    SqliteWalDb, TABLE, integrity_check, read_file, read_shm_header, shm_path,
    sqlite_checkpoint_copy, table_digest, wal_path, wal_scan,
};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;
use fsqlite_wal::{LockingMode, Wal, WalOptions};

struct Fixture {
    _tmp: tempfile::TempDir,
    page_size: usize,
    /// Copies of A (checkpointed, empty WAL): one per variant.
    a_copies: Vec<PathBuf>,
    a_pages: Vec<Vec<u8>>,
    b_bytes: Vec<u8>,
    b_digest: (u64, u64),
}

fn fixture(page_size: u32, seed: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(tmp.path(), "x.db", page_size).unwrap();
    db.run_workload(seed, 25, 6).unwrap();
    db.exec("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let mut a_copies = Vec::new();
    for k in 0..2 {
        let (a, _, _) = db
            .snapshot_files(&tmp.path().join(format!("a{k}")))
            .unwrap();
        a_copies.push(a);
    }
    db.run_workload(seed ^ 0x5151, 25, 6).unwrap();
    db.exec("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    let (b, _, _) = db.snapshot_files(&tmp.path().join("b")).unwrap();
    db.close().unwrap();
    let ps = page_size as usize;
    let a_bytes = read_file(&a_copies[0]).unwrap();
    let b_bytes = read_file(&b).unwrap();
    assert!(a_bytes.len().is_multiple_of(ps) && b_bytes.len().is_multiple_of(ps));
    assert_ne!(a_bytes, b_bytes);
    Fixture {
        page_size: ps,
        a_copies,
        a_pages: a_bytes.chunks(ps).map(<[u8]>::to_vec).collect(),
        b_digest: table_digest(&b, TABLE).unwrap(),
        b_bytes,
        _tmp: tmp,
    }
}

/// Opens `db` with our `Wal` and commits B over A in one transaction; returns the
/// connection (still open) and the pages written.
fn commit_b(
    f: &Fixture,
    db: &Path,
    checkpoint_on_close: bool,
    mode: LockingMode,
) -> (Wal<UnixVfs>, Vec<u32>) {
    let cx = Cx::new();
    let opts = WalOptions {
        checkpoint_on_close,
        auto_checkpoint: None,
        busy_timeout: Duration::from_secs(2),
        ..WalOptions::default()
    };
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), db, opts).unwrap();
    assert_eq!(w.page_size() as usize, f.page_size);
    w.set_locking_mode(&cx, mode).unwrap();
    let b_pages: Vec<&[u8]> = f.b_bytes.chunks(f.page_size).collect();
    let mut written = Vec::new();
    {
        let mut t = w.begin_write(&cx).unwrap();
        assert_eq!(t.db_size() as usize, f.a_pages.len());
        for (i, page) in b_pages.iter().enumerate() {
            if f.a_pages.get(i).is_none_or(|a| a.as_slice() != *page) {
                let p = i as u32 + 1;
                t.write_page(&cx, PageNumber::new(p).unwrap(), page)
                    .unwrap();
                written.push(p);
            }
        }
        let mx = t.commit(&cx, b_pages.len() as u32).unwrap();
        assert_eq!(mx as usize, written.len(), "one frame per written page");
    }
    (w, written)
}

fn assert_sqlite_reads_b(f: &Fixture, db: &Path, when: &str) {
    assert_eq!(
        table_digest(db, TABLE).unwrap(),
        f.b_digest,
        "SQLite does not read B's rows {when}"
    );
    assert_eq!(integrity_check(db).unwrap(), "ok", "integrity_check {when}");
}

fn without_checkpoint(page_size: u32, seed: u64) {
    let f = fixture(page_size, seed);
    let db = &f.a_copies[0];
    let (w, written) = commit_b(&f, db, false, LockingMode::Normal);

    // SQLite reads through our live -shm: it must accept our header as it is (a
    // recovery by SQLite would rewrite it, with iChange reset to 0).
    let before = read_shm_header(&read_file(&shm_path(db)).unwrap()).unwrap();
    assert!(before.is_consistent() && before.i_change > 0, "{before:?}");
    assert_sqlite_reads_b(&f, db, "while our connection is open (our -shm)");
    let after = read_shm_header(&read_file(&shm_path(db)).unwrap()).unwrap();
    assert_eq!(
        before.copy_a, after.copy_a,
        "SQLite rewrote our WAL-index header instead of using it"
    );

    // An independent reader of the WAL bytes.
    let scan = wal_scan(&read_file(&wal_path(db)).unwrap()).unwrap();
    assert_eq!(scan.header.page_size as usize, f.page_size);
    assert_eq!(scan.mx_frame as usize, written.len());
    assert_eq!(scan.n_page as usize * f.page_size, f.b_bytes.len());
    let committed = scan.committed_pages();
    assert_eq!(committed.len(), written.len());
    for (p, data) in committed {
        let off = (p as usize - 1) * f.page_size;
        assert_eq!(
            data,
            &f.b_bytes[off..off + f.page_size],
            "frame of page {p}"
        );
    }

    w.close(&Cx::new()).unwrap();
    assert!(
        wal_path(db).exists() && shm_path(db).exists(),
        "no checkpoint on close"
    );
    assert_sqlite_reads_b(&f, db, "after our close (SQLite recovers our WAL)");

    let (busy, log, ckpt) = sqlite_checkpoint_copy(db, "TRUNCATE").unwrap();
    assert_eq!((busy, log, ckpt), (0, 0, 0));
    assert!(
        read_file(db).unwrap() == f.b_bytes,
        "after SQLite checkpoints our WAL the database file is not byte-identical to B"
    );
    println!(
        "page size {page_size}: {} pages written in one commit ({} in B); SQLite reads B",
        written.len(),
        f.b_bytes.len() / f.page_size
    );
}

fn with_checkpoint_on_close(page_size: u32, seed: u64) {
    let f = fixture(page_size, seed);
    let db = &f.a_copies[1];
    let (w, _) = commit_b(&f, db, true, LockingMode::Normal);
    w.close(&Cx::new()).unwrap();
    assert!(!wal_path(db).exists(), "the last close deletes -wal");
    assert!(!shm_path(db).exists(), "the last close deletes -shm");
    assert!(
        read_file(db).unwrap() == f.b_bytes,
        "our close-time checkpoint left a database file that is not byte-identical to B"
    );
    assert_sqlite_reads_b(&f, db, "after our checkpoint on close");
}

#[test]
fn sqlite_reads_our_wal_4096() {
    without_checkpoint(4096, 0xB0B);
}

#[test]
fn sqlite_reads_our_wal_1024() {
    without_checkpoint(1024, 0xB1B);
}

#[test]
fn sqlite_reads_our_checkpoint_on_close_4096() {
    with_checkpoint_on_close(4096, 0xB2B);
}

#[test]
fn sqlite_reads_our_checkpoint_on_close_512() {
    with_checkpoint_on_close(512, 0xB3B);
}

#[test]
#[allow(clippy::many_single_char_names)]
fn exclusive_locking_mode_keeps_sqlite_out_then_hands_it_our_commit() {
    let f = fixture(4096, 0xB4B);
    let db = &f.a_copies[1];
    let cx = Cx::new();
    let opts = WalOptions {
        checkpoint_on_close: false,
        auto_checkpoint: None,
        busy_timeout: Duration::from_millis(100),
        ..WalOptions::default()
    };
    let mut w = Wal::open(&cx, Arc::new(UnixVfs::new()), db, opts).unwrap();
    // A SQLite connection that has read holds the database's SHARED lock (WAL mode keeps
    // it): exclusive mode is refused.
    let sqlite = rusqlite::Connection::open(db).unwrap();
    let n: i64 = sqlite
        .query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| r.get(0))
        .unwrap();
    assert!(n > 0);
    assert!(matches!(
        w.set_locking_mode(&cx, LockingMode::Exclusive),
        Err(fsqlite_error::FrankenError::Busy)
    ));
    assert_eq!(w.locking_mode(), LockingMode::Normal);
    drop(sqlite);
    w.set_locking_mode(&cx, LockingMode::Exclusive).unwrap();
    assert_eq!(w.locking_mode(), LockingMode::Exclusive);
    let blocked = rusqlite::Connection::open(db).unwrap();
    blocked.busy_timeout(Duration::ZERO).unwrap();
    let e = blocked
        .query_row(&format!("SELECT count(*) FROM {TABLE}"), [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_err();
    assert!(e.to_string().contains("locked"), "{e}");
    drop(blocked);
    drop(w);

    let (mut w, written) = commit_b(&f, db, false, LockingMode::Exclusive);
    assert!(!written.is_empty());
    {
        // Our own reads in exclusive mode see the commit.
        let r = w.begin_read(&cx).unwrap();
        let mut buf = vec![0u8; f.page_size];
        for &p in &written {
            r.read_page(&cx, PageNumber::new(p).unwrap(), &mut buf)
                .unwrap();
            let off = (p as usize - 1) * f.page_size;
            assert!(buf == f.b_bytes[off..off + f.page_size], "page {p}");
        }
    }
    w.set_locking_mode(&cx, LockingMode::Normal).unwrap();
    assert_sqlite_reads_b(&f, db, "after exclusive mode ended (our -shm)");
    w.close(&cx).unwrap();
    assert_sqlite_reads_b(&f, db, "after our close (SQLite recovers our WAL)");
    let (busy, _, _) = sqlite_checkpoint_copy(db, "TRUNCATE").unwrap();
    assert_eq!(busy, 0);
    assert!(
        read_file(db).unwrap() == f.b_bytes,
        "after SQLite checkpoints the WAL written in exclusive mode, the database is not B"
    );
}
