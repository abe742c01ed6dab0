//! `WalFile` against real SQLite (rusqlite's bundled build), on real files through
//! `UnixVfs`, everything generated in a temporary directory:
//!
//! 1. a WAL SQLite wrote (many commits, updates, deletes, a restart leaving stale frames;
//!    page sizes 512, 4096, 65536) scans to exactly the `mxFrame`, `nPage`,
//!    `aFrameCksum` and salts SQLite published in its own `-shm` header;
//! 2. the same WAL rewritten with big-endian checksum words (magic `0x377f0683`) scans
//!    to the same frames, and SQLite reads it too;
//! 3. a WAL *we* wrote on a copy of database A, holding every page that differs from a
//!    later version B, makes SQLite see exactly B, with `integrity_check` = ok.

use std::path::{Path, PathBuf};

use fsqlite_types::{Cx, PageNumber, PageSize, VfsOpenFlags};
use fsqlite_vfs::{UnixVfs, Vfs};
use fsqlite_wal::checksum::wal_checksum_scalar;
use fsqlite_wal::format::{WAL_MAGIC, WalHeader, frame_offset};
use fsqlite_wal::wal::{ScanReport, StopReason, WalFile};
use rusqlite::Connection;

type Rows = Vec<(i64, Vec<u8>)>;

fn open_flags() -> VfsOpenFlags {
    VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL
}

fn wal_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

fn shm_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shm", db.display()))
}

/// Scans a WAL file on disk through `UnixVfs`.
fn scan_file(path: &Path) -> ScanReport {
    let cx = Cx::new();
    let (file, _) = UnixVfs::new().open(&cx, Some(path), open_flags()).unwrap();
    WalFile::scan_labeled(&cx, &file, Some(path), |_, _, _| Ok(())).unwrap()
}

/// What SQLite published in the `-shm` header (both copies must agree).
#[derive(Debug, PartialEq, Eq)]
struct ShmHeader {
    mx_frame: u32,
    n_page: u32,
    frame_checksum: [u32; 2],
    salt_bytes: [u8; 8],
    big_end_cksum: u8,
    sz_page: u16,
}

fn read_shm_header(shm: &[u8]) -> ShmHeader {
    assert!(shm.len() >= 136, "shm too short: {}", shm.len());
    assert_eq!(&shm[0..48], &shm[48..96], "the two header copies differ");
    let u = |at: usize| u32::from_ne_bytes(shm[at..at + 4].try_into().unwrap());
    assert_eq!(u(0), 3_007_000, "iVersion");
    assert_eq!(shm[12], 1, "isInit");
    ShmHeader {
        mx_frame: u(16),
        n_page: u(20),
        frame_checksum: [u(24), u(28)],
        salt_bytes: shm[32..40].try_into().unwrap(),
        big_end_cksum: shm[13],
        sz_page: u16::from_ne_bytes([shm[14], shm[15]]),
    }
}

fn all_rows(conn: &Connection) -> Rows {
    let mut stmt = conn.prepare("SELECT id, v FROM t ORDER BY id").unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn integrity_ok(conn: &Connection) {
    let s: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(s, "ok");
}

/// A WAL-mode database with a checkpointed table (so the db file is not empty) and
/// auto-checkpoints off.
fn new_db(path: &Path, page_size: u32) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(&format!("PRAGMA page_size={page_size};"))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         CREATE INDEX t_v ON t(v);
         PRAGMA wal_autocheckpoint=0;",
    )
    .unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    conn
}

/// `n` transactions of inserts, updates and deletes.
fn workload(conn: &Connection, n: u32, seed: u32, blob: usize) {
    for i in 0..n {
        let base = i64::from(seed * 1000 + i * 7);
        let tx = conn.unchecked_transaction().unwrap();
        for k in 0..3 {
            tx.execute(
                "INSERT OR REPLACE INTO t(id, v) VALUES (?1, randomblob(?2))",
                (base + k, (blob + (i as usize * 37) % blob) as i64),
            )
            .unwrap();
        }
        tx.execute(
            "UPDATE t SET v = randomblob(?1) WHERE id % 5 = ?2",
            (blob as i64 / 2, i64::from(i % 5)),
        )
        .unwrap();
        if i % 4 == 3 {
            tx.execute("DELETE FROM t WHERE id % 11 = ?1", [i64::from(i % 11)])
                .unwrap();
        }
        tx.commit().unwrap();
    }
}

/// Copies db, -wal and -shm of a live connection into `dir` under `name`.
fn snapshot(db: &Path, dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    let copy = dir.join(name);
    std::fs::copy(db, &copy).unwrap();
    std::fs::copy(wal_path(db), wal_path(&copy)).unwrap();
    let shm = std::fs::read(shm_path(db)).unwrap();
    (copy, shm)
}

fn assert_scan_matches_shm(wal: &Path, shm: &[u8], page_size: u32, what: &str) -> ScanReport {
    let shm = read_shm_header(shm);
    let r = scan_file(wal);
    let h = r
        .header
        .unwrap_or_else(|| panic!("{what}: empty WAL: {:?}", r.stop));
    assert_eq!(
        h.magic, WAL_MAGIC,
        "{what}: SQLite writes native (little-endian) words"
    );
    assert_eq!(h.page_size, page_size, "{what}");
    assert_eq!(r.mx_frame, shm.mx_frame, "{what}: mxFrame");
    assert_eq!(r.n_page, shm.n_page, "{what}: nPage");
    assert_eq!(r.frame_checksum, shm.frame_checksum, "{what}: aFrameCksum");
    let mut salt_bytes = [0u8; 8];
    salt_bytes[..4].copy_from_slice(&h.salt[0].to_be_bytes());
    salt_bytes[4..].copy_from_slice(&h.salt[1].to_be_bytes());
    assert_eq!(salt_bytes, shm.salt_bytes, "{what}: salts");
    assert_eq!(
        shm.big_end_cksum,
        u8::from(h.big_endian_checksum()),
        "{what}"
    );
    assert_eq!(
        shm.sz_page,
        PageSize::new(page_size).unwrap().to_u16_encoding(),
        "{what}"
    );
    assert_eq!(r.uncommitted_frames(), 0, "{what}");
    assert!(r.mx_frame > 0, "{what}: the workload committed frames");
    r
}

#[test]
fn sqlite_wals_scan_to_sqlites_own_shm_header() {
    for (page_size, n, blob) in [
        (512u32, 60u32, 300usize),
        (4096, 60, 1500),
        (65536, 20, 20_000),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let conn = new_db(&db, page_size);
        workload(&conn, n, 1, blob);
        let (copy, shm) = snapshot(&db, dir.path(), "a.db");
        let first =
            assert_scan_matches_shm(&wal_path(&copy), &shm, page_size, "after the first commits");
        assert!(first.commits >= n, "{} commits", first.commits);

        workload(&conn, n / 2, 2, blob);
        let (copy, shm) = snapshot(&db, dir.path(), "b.db");
        let second =
            assert_scan_matches_shm(&wal_path(&copy), &shm, page_size, "after more commits");
        assert!(second.mx_frame > first.mx_frame);

        // RESTART: the next writer starts a new generation at frame 1 (salt-1 + 1) over the
        // old frames, which then fail the salt check.
        let busy: i64 = conn
            .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get(0))
            .unwrap();
        assert_eq!(busy, 0);
        workload(&conn, 2, 3, blob);
        let (copy, shm) = snapshot(&db, dir.path(), "c.db");
        let third = assert_scan_matches_shm(&wal_path(&copy), &shm, page_size, "after a restart");
        let (h2, h3) = (second.header.unwrap(), third.header.unwrap());
        assert_eq!(
            h3.salt[0],
            h2.salt[0].wrapping_add(1),
            "salt-1 + 1 at restart"
        );
        assert_ne!(h3.salt[1], h2.salt[1]);
        assert!(third.mx_frame < second.mx_frame);
        assert_eq!(
            third.stop,
            StopReason::SaltMismatch {
                frame: third.mx_frame + 1
            }
        );
    }
}

/// Rewrites a WAL in place with big-endian checksum words (magic `0x377f0683`): the header
/// checksum and the chain through `frames` frames recomputed with the scalar reference.
/// Returns the running checksum after each frame.
fn rewrite_big_endian(wal: &mut [u8], page_size: u32, frames: u32) -> Vec<[u32; 2]> {
    let mut h = WalHeader::decode(wal).unwrap();
    h.magic = WAL_MAGIC | 1;
    wal[..32].copy_from_slice(&h.encode());
    let mut c = wal_checksum_scalar(&wal[..24], true, [0, 0]);
    assert_eq!(c, WalHeader::decode(wal).unwrap().checksum);
    let mut chain = Vec::new();
    for i in 1..=frames {
        let at = usize::try_from(frame_offset(i, page_size)).unwrap();
        let end = at + 24 + page_size as usize;
        c = wal_checksum_scalar(&wal[at..at + 8], true, c);
        c = wal_checksum_scalar(&wal[at + 24..end], true, c);
        wal[at + 16..at + 20].copy_from_slice(&c[0].to_be_bytes());
        wal[at + 20..at + 24].copy_from_slice(&c[1].to_be_bytes());
        chain.push(c);
    }
    chain
}

#[test]
fn big_endian_checksum_words_are_read_by_us_and_by_sqlite() {
    for (page_size, blob) in [(4096u32, 1500usize), (512, 300)] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let conn = new_db(&db, page_size);
        workload(&conn, 40, 4, blob);
        let expected = all_rows(&conn);
        let (copy, _shm) = snapshot(&db, dir.path(), "le.db");
        let le = scan_file(&wal_path(&copy));

        let be_db = dir.path().join("be.db");
        std::fs::copy(&copy, &be_db).unwrap();
        let mut wal = std::fs::read(wal_path(&copy)).unwrap();
        let chain = rewrite_big_endian(&mut wal, page_size, le.last_valid_frame);
        std::fs::write(wal_path(&be_db), &wal).unwrap();

        let be = scan_file(&wal_path(&be_db));
        let h = be.header.unwrap();
        assert!(h.big_endian_checksum());
        assert_eq!(h.salt, le.header.unwrap().salt);
        assert_eq!(
            (be.mx_frame, be.n_page, be.last_valid_frame, be.commits),
            (le.mx_frame, le.n_page, le.last_valid_frame, le.commits)
        );
        assert_eq!(be.frame_checksum, chain[be.mx_frame as usize - 1]);
        assert_ne!(be.frame_checksum, le.frame_checksum);

        // SQLite recovers the rewritten WAL (no -shm: a fresh recovery) and sees the same rows.
        let reader = Connection::open(&be_db).unwrap();
        assert_eq!(all_rows(&reader), expected);
        integrity_ok(&reader);
    }
}

fn pages_of(bytes: &[u8], page_size: usize) -> Vec<&[u8]> {
    bytes.chunks(page_size).collect()
}

#[test]
fn sqlite_reads_a_wal_we_wrote() {
    let cx = Cx::new();
    for (page_size, big_endian) in [(4096u32, false), (1024, true), (65536, false)] {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        {
            let conn = new_db(&a, page_size);
            workload(&conn, 20, 5, page_size as usize / 3);
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
        }
        let b = dir.path().join("b.db");
        std::fs::copy(&a, &b).unwrap();
        let expected = {
            let conn = Connection::open(&b).unwrap();
            conn.execute_batch("PRAGMA wal_autocheckpoint=0;").unwrap();
            workload(&conn, 25, 6, page_size as usize / 2);
            conn.execute_batch("CREATE TABLE u(x); INSERT INTO u VALUES (1), (2);")
                .unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            all_rows(&conn)
        };
        assert!(!wal_path(&a).exists() && !wal_path(&b).exists());
        let a_bytes = std::fs::read(&a).unwrap();
        let b_bytes = std::fs::read(&b).unwrap();
        let ps = page_size as usize;
        assert_eq!(b_bytes.len() % ps, 0);
        let (a_pages, b_pages) = (pages_of(&a_bytes, ps), pages_of(&b_bytes, ps));
        let changed: Vec<(PageNumber, &[u8])> = b_pages
            .iter()
            .enumerate()
            .filter(|(i, p)| a_pages.get(*i) != Some(*p))
            .map(|(i, p)| (PageNumber::new(i as u32 + 1).unwrap(), *p))
            .collect();
        assert!(changed.len() > 1, "B differs from A");

        // C = A + our WAL.
        let c = dir.path().join("c.db");
        std::fs::copy(&a, &c).unwrap();
        let (file, _) = UnixVfs::new()
            .open(&cx, Some(&wal_path(&c)), open_flags())
            .unwrap();
        let mut wal = WalFile::create(
            &cx,
            file,
            PageSize::new(page_size).unwrap(),
            [0x0102_0304, 0xa0b0_c0d0],
            0,
            big_endian,
        )
        .unwrap()
        .with_path(wal_path(&c));
        let n_pages = b_pages.len() as u32;
        let last = wal.append_frames(&cx, &changed, Some(n_pages)).unwrap();
        assert_eq!(last as usize, changed.len());
        drop(wal);

        let conn = Connection::open(&c).unwrap();
        assert_eq!(all_rows(&conn), expected, "page size {page_size}");
        let u: i64 = conn
            .query_row("SELECT sum(x) FROM u", [], |r| r.get(0))
            .unwrap();
        assert_eq!(u, 3);
        let count: i64 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, i64::from(n_pages));
        integrity_ok(&conn);
    }
}
