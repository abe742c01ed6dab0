//! The WAL-index against a real SQLite `-shm` (rusqlite, bundled SQLite).
//!
//! SQLite writes > 4062 frames (so region 1 is used) with checkpoints off, and the
//! connection stays open so its `-shm` is intact. Then:
//! * both header copies parse, are equal and checksum-valid, and agree with the `-wal`
//!   (mxFrame, page size, salts as raw bytes, bigEndCksum, aFrameCksum);
//! * regions built by **our** `append`, replaying the WAL's frame page numbers, are
//!   byte-identical to SQLite's hash regions (SQLite's construction is deterministic);
//! * `find_frame` over our regions, over SQLite's regions and a naive scan of the `-wal`
//!   agree for every page at many snapshots.

use std::path::{Path, PathBuf};

use fsqlite_types::{Cx, PageNumber};
use fsqlite_wal::wal_index::{
    HeaderMemory, HeaderRead, HeapRegions, WAL_INDEX_VERSION, WALINDEX_HDR_SIZE, WALINDEX_PGSZ,
    WalIndex, WalIndexHdr, frame_region, try_read_header,
};
use rusqlite::Connection;

const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().unwrap())
}

struct WalFile {
    bytes: Vec<u8>,
    page_size: usize,
}

impl WalFile {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        let page_size = be32(&bytes, 8) as usize;
        Self { bytes, page_size }
    }

    fn frame_count(&self) -> u32 {
        ((self.bytes.len() - WAL_HEADER) / (self.page_size + FRAME_HEADER)) as u32
    }

    fn frame_header(&self, frame: u32) -> &[u8] {
        let off = WAL_HEADER + (frame as usize - 1) * (self.page_size + FRAME_HEADER);
        &self.bytes[off..off + FRAME_HEADER]
    }

    fn page_of(&self, frame: u32) -> u32 {
        be32(self.frame_header(frame), 0)
    }

    fn commit_size(&self, frame: u32) -> u32 {
        be32(self.frame_header(frame), 4)
    }
}

fn shm_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-shm", db.display()))
}

fn wal_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

fn open_wal_db(path: &Path, page_size: u32) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "page_size", page_size).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB)", [])
        .unwrap();
    conn
}

fn pg(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

#[test]
fn our_index_matches_sqlite_shm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("idx.db");
    let mut conn = open_wal_db(&db, 512);
    // ~200 transactions: appends (new pages), plus updates of older rows (repeated pages).
    let mut next_id = 0i64;
    let mut txn = 0;
    loop {
        let tx = conn.transaction().unwrap();
        for _ in 0..20 {
            tx.execute("INSERT INTO t(id, v) VALUES (?1, zeroblob(200))", [next_id])
                .unwrap();
            next_id += 1;
        }
        for k in 0..5 {
            let id = (txn * 37 + k * 101) % next_id;
            tx.execute("UPDATE t SET v = randomblob(200) WHERE id = ?1", [id])
                .unwrap();
        }
        tx.commit().unwrap();
        txn += 1;
        let wal_len = std::fs::metadata(wal_path(&db)).unwrap().len() as usize;
        if (wal_len - WAL_HEADER) / (512 + FRAME_HEADER) > 5200 {
            break;
        }
        assert!(txn < 2000, "SQLite wrote too few frames");
    }

    let wal = WalFile::read(&wal_path(&db));
    let shm = std::fs::read(shm_path(&db)).unwrap();
    let mx = wal.frame_count();
    assert!(mx > 4062 && mx < 8158, "{mx} frames: want region 1 used");
    assert_eq!(wal.page_size, 512);

    // ---- header ----
    let a = WalIndexHdr::from_bytes(shm[0..48].try_into().unwrap());
    let b = WalIndexHdr::from_bytes(shm[48..96].try_into().unwrap());
    assert_eq!(a, b);
    assert!(a.checksum_ok());
    assert_eq!(a.is_init, 1);
    assert_eq!(a.i_version, WAL_INDEX_VERSION);
    assert_eq!(a.to_bytes(), shm[0..48]);
    assert_eq!(a.mx_frame, mx, "every frame is committed");
    assert_eq!(a.n_page, wal.commit_size(mx));
    assert_eq!(a.page_size().unwrap().get(), 512);
    assert_eq!(u32::from(a.big_end_cksum), be32(&wal.bytes, 0) & 1);
    assert_eq!(a.salt_bytes(), wal.bytes[16..24]);
    assert_eq!(a.wal_salts(), [be32(&wal.bytes, 16), be32(&wal.bytes, 20)]);
    let last = wal.frame_header(mx);
    assert_eq!(a.a_frame_cksum, [be32(last, 16), be32(last, 20)]);

    let theirs = HeapRegions::from_image(&shm);
    assert!(theirs.len() >= 2);
    let region0 = theirs.get(0).unwrap();
    let mut cached = WalIndexHdr::default();
    assert_eq!(try_read_header(region0, &mut cached), HeaderRead::Changed);
    assert_eq!(cached, a);
    let ckpt = region0.load_ckpt_info();
    assert_eq!(ckpt.n_backfill, 0);
    assert_eq!(ckpt.a_read_mark[0], 0);
    assert_eq!(&shm[120..128], &[0; 8], "lock bytes are never data");

    // ---- our regions, built by replaying the WAL ----
    let cx = Cx::new();
    let mut ours = HeapRegions::new();
    let mut index = WalIndex::new();
    for f in 1..=mx {
        index.append(&cx, &mut ours, f, pg(wal.page_of(f))).unwrap();
    }
    let ours_img = ours.to_image();
    assert_eq!(ours.len(), frame_region(mx) as usize + 1);
    assert!(
        ours_img[WALINDEX_HDR_SIZE..WALINDEX_PGSZ] == shm[WALINDEX_HDR_SIZE..WALINDEX_PGSZ],
        "region 0 hash area differs from SQLite's"
    );
    assert!(
        ours_img[WALINDEX_PGSZ..2 * WALINDEX_PGSZ] == shm[WALINDEX_PGSZ..2 * WALINDEX_PGSZ],
        "region 1 differs from SQLite's"
    );

    // ---- lookups: ours vs SQLite's regions vs a naive scan ----
    let mut theirs = theirs;
    let mut their_index = WalIndex::new();
    let commits: Vec<u32> = (1..=mx).filter(|&f| wal.commit_size(f) != 0).collect();
    assert!(commits.len() > 100);
    let snapshots: Vec<(u32, u32)> = commits
        .iter()
        .step_by(commits.len() / 12)
        .flat_map(|&c| [(1, c), (c / 2 + 1, c), (4063.min(c), c)])
        .chain([(1, mx), (4062, 4063), (mx, mx)])
        .collect();
    let max_page = a.n_page + 3;
    // Naive model: every page's frames, ascending.
    let mut frames_of = vec![Vec::new(); max_page as usize + 1];
    for f in 1..=mx {
        frames_of[wal.page_of(f) as usize].push(f);
    }
    let mut checked = 0;
    for &(min, mxs) in &snapshots {
        for p in 1..=max_page {
            let naive = frames_of[p as usize]
                .iter()
                .rev()
                .copied()
                .find(|&f| f >= min && f <= mxs);
            let o = index.find_frame(&cx, &mut ours, pg(p), min, mxs).unwrap();
            let t = their_index
                .find_frame(&cx, &mut theirs, pg(p), min, mxs)
                .unwrap();
            assert_eq!(o, naive, "ours: page {p} in [{min}, {mxs}]");
            assert_eq!(t, naive, "SQLite's regions: page {p} in [{min}, {mxs}]");
            checked += 1;
        }
    }
    assert!(checked > 1000);

    // ---- the checkpoint list over SQLite's regions ----
    let list = their_index
        .checkpoint_frames(&cx, &mut theirs, 0, mx, a.n_page)
        .unwrap();
    assert_eq!(
        list.len() as u32,
        a.n_page,
        "every page of the db has a frame"
    );
    for e in &list {
        assert_eq!(Some(&e.frame), frames_of[e.page.get() as usize].last());
    }
    drop(conn);
}

#[test]
fn sqlite_stores_64k_pages_as_1() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("big.db");
    let conn = open_wal_db(&db, 65536);
    conn.execute("INSERT INTO t(v) VALUES (zeroblob(10))", [])
        .unwrap();
    let wal = WalFile::read(&wal_path(&db));
    assert_eq!(wal.page_size, 65536, "the WAL header stores 65536 as is");
    let shm = std::fs::read(shm_path(&db)).unwrap();
    let h = WalIndexHdr::from_bytes(shm[0..48].try_into().unwrap());
    assert!(h.checksum_ok());
    assert_eq!(h.sz_page, 1);
    assert_eq!(h.page_size().unwrap().get(), 65536);
    drop(conn);
}
