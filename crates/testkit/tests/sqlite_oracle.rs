//! The `sqlite` module against real SQLite: a WAL database built by rusqlite, snapshotted
//! while open, parsed by the independent WAL and `-shm` readers, and cross-checked with
//! SQLite's own recovery and checkpoint (differentially, also on damaged WALs).

use std::path::Path;

use fsqlite_testkit::sqlite::{
    self, RawShmHeader, SqliteWalDb, TABLE, WAL_FORMAT_VERSION, WALINDEX_VERSION, WalScan,
    integrity_check, read_shm_header, read_wal_frames, read_wal_header, sqlite_checkpoint_copy,
    sqlite_page_images, table_digest, wal_scan,
};

fn scan_of(path: &Path) -> WalScan {
    wal_scan(&std::fs::read(path).unwrap()).unwrap()
}

fn shm_of(path: &Path) -> RawShmHeader {
    read_shm_header(&std::fs::read(path).unwrap()).unwrap()
}

/// The shm header SQLite left agrees field by field with what the frame parser finds.
fn assert_shm_matches_wal(shm: &RawShmHeader, scan: &WalScan, page_size: u32) {
    assert!(shm.copies_equal(), "copy A != copy B");
    assert!(
        shm.is_consistent(),
        "shm header checksum or isInit wrong: {shm:?}"
    );
    assert_eq!(shm.i_version, WALINDEX_VERSION);
    assert_eq!(shm.is_init, 1);
    assert_eq!(shm.sz_page, page_size);
    assert_eq!(u32::from(shm.big_end_cksum), scan.header.magic & 1);
    assert_eq!(shm.mx_frame, scan.mx_frame);
    assert_eq!(shm.n_page, scan.n_page);
    assert_eq!(shm.a_frame_cksum, scan.frame_cksum);
    assert_eq!(shm.a_salt, scan.header.salt_bytes);
    assert!(shm.n_backfill <= shm.mx_frame);
}

#[test]
fn snapshot_shm_header_and_frames_agree_and_checkpoint_to_an_intact_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(dir.path(), "w.db", 4096).unwrap();
    let commits = 20;
    let sum = db.run_workload(0x5eed, commits, 8).unwrap();
    assert_eq!(sum.commits, u64::from(commits));
    assert_eq!(
        sum.inserts + sum.updates + sum.deletes,
        u64::from(commits) * 8
    );
    assert!(sum.updates > 0 && sum.deletes > 0, "{sum:?}");
    assert_eq!(
        db.query_i64("SELECT count(*) FROM t").unwrap(),
        sum.rows as i64
    );
    let live = db.table_digest(TABLE).unwrap();

    let snap = dir.path().join("snap");
    let (sdb, swal, sshm) = db.snapshot_files(&snap).unwrap();
    assert_eq!(sdb, snap.join("w.db"));
    assert_eq!(swal, snap.join("w.db-wal"));
    assert_eq!(sshm, snap.join("w.db-shm"));

    let wal_bytes = std::fs::read(&swal).unwrap();
    let frames = read_wal_frames(&wal_bytes).unwrap();
    let last_commit = frames.iter().rfind(|f| f.db_size != 0).unwrap();
    let scan = wal_scan(&wal_bytes).unwrap();
    assert_eq!(scan.frames, frames);
    let h = &scan.header;
    assert!(h.magic_ok() && h.checksum_ok() && h.page_size_ok());
    assert_eq!(h.version, WAL_FORMAT_VERSION);
    assert_eq!(h.page_size, 4096);
    assert_eq!(read_wal_header(&h.raw).unwrap(), *h);
    // Every frame SQLite wrote is valid, and the last one commits.
    assert!(
        scan.frames.len() > commits as usize * 2,
        "workload touched too few pages"
    );
    assert_eq!(scan.valid_frames as usize, scan.frames.len());
    assert!(scan.frames.last().unwrap().is_commit());
    // CREATE TABLE plus the workload's transactions.
    let commit_frames = scan.frames.iter().filter(|f| f.is_commit()).count();
    assert_eq!(commit_frames, 1 + commits as usize);

    let shm = shm_of(&sshm);
    assert_eq!(
        shm.mx_frame, last_commit.index,
        "mxFrame vs the last commit frame"
    );
    assert_eq!(shm.n_page, last_commit.db_size);
    assert_shm_matches_wal(&shm, &scan, 4096);
    assert_eq!(
        shm.n_backfill, 0,
        "wal_autocheckpoint=0: nothing backfilled"
    );
    assert_eq!(
        db.shm_header().unwrap(),
        shm,
        "live shm equals the snapshot"
    );
    assert_eq!(db.wal_scan().unwrap(), scan);

    // SQLite recovers the copy to the same mxFrame, backfills all of it, and the result
    // is intact and holds the same rows as the live database.
    let (busy, log, ckpt) = sqlite_checkpoint_copy(&sdb, "passive").unwrap();
    assert_eq!(
        (busy, log, ckpt),
        (0, i64::from(scan.mx_frame), i64::from(scan.mx_frame))
    );
    assert_eq!(integrity_check(&sdb).unwrap(), "ok");
    assert_eq!(table_digest(&sdb, TABLE).unwrap(), live);
    let pages = sqlite_page_images(&sdb).unwrap();
    assert_eq!(pages.len(), scan.n_page as usize);
    assert!(pages[0].starts_with(b"SQLite format 3\0"));
    assert_eq!(
        std::fs::metadata(&swal).unwrap().len(),
        0,
        "TRUNCATE emptied the WAL"
    );
    // The newest committed image of every page in the WAL is what the checkpoint wrote.
    for (pgno, image) in scan.committed_pages() {
        assert_eq!(pages[pgno as usize - 1], image, "page {pgno}");
    }
    // The live database is unaffected by all this.
    assert_eq!(db.table_digest(TABLE).unwrap(), live);
}

/// Damage one frame of a copied WAL: the independent scanner and SQLite's recovery must
/// agree on the committed prefix.
#[test]
fn damaged_wal_valid_prefix_matches_sqlite_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(dir.path(), "d.db", 1024).unwrap();
    db.run_workload(42, 12, 4).unwrap();
    let clean = db.wal_scan().unwrap();
    let commits: Vec<u32> = clean
        .frames
        .iter()
        .filter(|f| f.is_commit())
        .map(|f| f.index)
        .collect();
    let mid = commits[commits.len() / 2];
    let before_mid = commits[commits.len() / 2 - 1];
    // (frame to damage, byte offset within the frame, expected mxFrame)
    let cases = [
        (mid, 24 + 100, before_mid),     // page data of a commit frame
        (mid, 9, before_mid),            // its salt-1
        (before_mid + 1, 3, before_mid), // page number of the frame after a commit
        (1, 30, 0),                      // the very first frame
    ];
    for (n, (frame, off, expect)) in cases.into_iter().enumerate() {
        let snap = dir.path().join(format!("case{n}"));
        let (sdb, swal, sshm) = db.snapshot_files(&snap).unwrap();
        std::fs::remove_file(&sshm).unwrap();
        let mut wal = std::fs::read(&swal).unwrap();
        let pos = clean.frames[frame as usize - 1].offset + off;
        wal[pos] ^= 0x5a;
        std::fs::write(&swal, &wal).unwrap();

        let ours = wal_scan(&wal).unwrap();
        assert_eq!(ours.mx_frame, expect, "case {n}");
        assert!(
            ours.valid_frames < frame,
            "case {n}: damaged frame counted valid"
        );
        let (busy, log, _) = sqlite_checkpoint_copy(&sdb, "PASSIVE").unwrap();
        assert_eq!(busy, 0);
        assert_eq!(
            log,
            i64::from(expect),
            "case {n}: SQLite recovered a different mxFrame"
        );
        assert_eq!(integrity_check(&sdb).unwrap(), "ok", "case {n}");
    }
}

#[test]
fn same_seed_same_content_other_seed_differs() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = SqliteWalDb::create(dir.path(), "a.db", 512).unwrap();
    let mut b = SqliteWalDb::create(dir.path(), "b.db", 512).unwrap();
    let mut c = SqliteWalDb::create(dir.path(), "c.db", 512).unwrap();
    assert_eq!(
        a.run_workload(7, 5, 5).unwrap(),
        b.run_workload(7, 5, 5).unwrap()
    );
    c.run_workload(8, 5, 5).unwrap();
    let da = a.table_digest(TABLE).unwrap();
    assert_eq!(da, b.table_digest(TABLE).unwrap());
    assert_ne!(da, c.table_digest(TABLE).unwrap());
    // A second run continues from the existing rows, deterministically too.
    a.run_workload(9, 3, 3).unwrap();
    b.run_workload(9, 3, 3).unwrap();
    assert_eq!(
        a.table_digest(TABLE).unwrap(),
        b.table_digest(TABLE).unwrap()
    );
    // 512-byte pages: payloads of up to 768 bytes overflow.
    assert!(a.wal_scan().unwrap().frames.len() > 20);
}

#[test]
fn page_size_65536_is_encoded_as_1_in_the_shm() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(dir.path(), "big.db", 65_536).unwrap();
    db.run_workload(3, 2, 2).unwrap();
    let scan = db.wal_scan().unwrap();
    assert_eq!(scan.header.page_size, 65_536);
    let shm = db.shm_header().unwrap();
    assert_eq!(shm.sz_page_raw, 1);
    assert_eq!(shm.sz_page, 65_536);
    assert_shm_matches_wal(&shm, &scan, 65_536);
}

#[test]
fn close_without_checkpoint_keeps_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(dir.path(), "k.db", 4096).unwrap();
    db.run_workload(11, 4, 4).unwrap();
    let path = db.path().to_path_buf();
    let (wal, shm) = (db.wal_path(), db.shm_path());
    let before = db.wal_scan().unwrap();
    let digest = db.table_digest(TABLE).unwrap();
    db.close_without_checkpoint().unwrap();
    assert!(shm.exists());
    let after = scan_of(&wal);
    assert_eq!(after, before, "the WAL survived the close untouched");
    assert_eq!(table_digest(&path, TABLE).unwrap(), digest);

    // A normal close of a second database does checkpoint and delete the WAL.
    let mut other = SqliteWalDb::create(dir.path(), "n.db", 4096).unwrap();
    other.run_workload(11, 2, 2).unwrap();
    let owal = other.wal_path();
    other.close().unwrap();
    assert!(!owal.exists());
}

#[test]
fn query_rows_renders_every_type_and_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = SqliteWalDb::create(dir.path(), "q.db", 4096).unwrap();
    let rows = db
        .query_rows("SELECT 1, -2.5, 'txt', x'00ff', NULL UNION ALL SELECT 2, 0.0, '', x'', 3")
        .unwrap();
    assert_eq!(
        rows,
        vec![
            vec!["1", "-2.5", "txt", "x'00ff'", "NULL"],
            vec!["2", "0", "", "x''", "3"],
        ]
    );
    let err = db.exec("SELECT * FROM nope").unwrap_err().to_string();
    assert!(
        err.contains("q.db") && err.contains("no such table"),
        "{err}"
    );
    assert!(table_digest(&dir.path().join("missing.db"), TABLE).is_err());
    assert!(table_digest(db.path(), "t; DROP TABLE t").is_err());
    assert!(sqlite_checkpoint_copy(db.path(), "SOMETIMES").is_err());
    assert!(
        SqliteWalDb::create(dir.path(), "q.db", 4096).is_err(),
        "exists"
    );
    assert!(
        SqliteWalDb::create(dir.path(), "x.db", 1000).is_err(),
        "bad page size"
    );
    assert!(read_shm_header(&[0u8; 135]).is_err());
    assert!(read_wal_header(&[0u8; 31]).is_err());
    assert_eq!(sqlite::decode_sz_page(1), 65_536);
    assert_eq!(sqlite::decode_sz_page(4096), 4096);
}
