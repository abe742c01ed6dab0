//! `RecoveryPlan::inspect_shm` on a real WAL-index (MemoryVfs handles behave like separate
//! processes), and the coordinator's non-rebuilding recovery steps (stale read marks,
//! broken backfill counters) when a legacy process keeps the `-shm` alive across a
//! coordinator's death.

mod common;

use std::path::Path;
use std::sync::Arc;

use fsqlite_error::FrankenError;
use fsqlite_mvcc::{CompatMode, Coordinator, RecoveryPlan};
use fsqlite_types::{Cx, VfsOpenFlags};
use fsqlite_vfs::{
    MemoryFile, MemoryVfs, SHM_EXCLUSIVE, SHM_LOCK, SHM_SHARED, ShmRegion, Vfs, VfsFile,
    WAL_WRITE_LOCK, wal_read_lock,
};
use fsqlite_wal::wal_index::{
    HeaderDefect, HeaderMemory, READMARK_NOT_USED, WALINDEX_PGSZ, WalCkptInfo, WalIndexHdr,
    publish_header,
};

const DB: &str = "/app.db";
const SHM: &str = "/app.db-shm";

fn handle(vfs: &MemoryVfs) -> MemoryFile {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    vfs.open(&Cx::new(), Some(Path::new(DB)), flags).unwrap().0
}

fn region0(f: &mut MemoryFile) -> ShmRegion {
    f.shm_map(&Cx::new(), 0, WALINDEX_PGSZ as u32, true)
        .unwrap()
        .unwrap()
}

fn header(mx: u32) -> WalIndexHdr {
    let mut h = WalIndexHdr {
        mx_frame: mx,
        n_page: 3,
        sz_page: 4096,
        a_frame_cksum: [1, 2],
        ..WalIndexHdr::default()
    };
    h.set_wal_salts([0x0a0b_0c0d, 0x0102_0304]);
    h
}

fn inspect(f: &mut MemoryFile) -> fsqlite_error::Result<fsqlite_mvcc::ShmInspection> {
    RecoveryPlan::inspect_shm(&Cx::new(), f, Path::new(SHM))
}

#[test]
fn inspect_real_shm() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut me = handle(&vfs);
    me.shm_lock(&cx, WAL_WRITE_LOCK, 1, SHM_LOCK | SHM_EXCLUSIVE)
        .unwrap();
    // A fresh -shm has no region 0.
    let i = inspect(&mut me).unwrap();
    assert_eq!(i.defect, Some(HeaderDefect::Unmapped));
    assert!(i.plan.reconstruct_wal_index && i.plan.needs_recovery());
    // Zero-filled region 0: never initialized.
    let r0 = region0(&mut me);
    let i = inspect(&mut me).unwrap();
    assert_eq!(i.defect, Some(HeaderDefect::NotInitialized));
    assert!(i.plan.reconstruct_wal_index);
    // A good header, consistent counters, marks held or harmless: nothing to do.
    let mut h = header(10);
    publish_header(&r0, &mut h);
    r0.store_ckpt_info(&WalCkptInfo {
        n_backfill: 4,
        a_read_mark: [0, 10, READMARK_NOT_USED, 20, 30],
        n_backfill_attempted: 6,
        ..WalCkptInfo::default()
    });
    // Another "process" reads with mark 4 (30 > mxFrame, yet held: not stale).
    let mut reader = handle(&vfs);
    reader
        .shm_lock(&cx, wal_read_lock(4), 1, SHM_LOCK | SHM_SHARED)
        .unwrap();
    let i = inspect(&mut me).unwrap();
    assert_eq!(i.header, Some(h));
    assert_eq!(i.defect, None);
    assert_eq!(
        i.stale_marks,
        vec![3],
        "mark 3 (20 > mxFrame 10) is free: stale"
    );
    assert!(!i.plan.reconstruct_wal_index && i.plan.clear_stale_read_marks);
    assert!(!i.plan.validate_backfill);
    // The probe released what it took: mark 3's lock is free again.
    reader
        .shm_lock(&cx, wal_read_lock(3), 1, SHM_LOCK | SHM_EXCLUSIVE)
        .unwrap();
    reader
        .shm_lock(
            &cx,
            wal_read_lock(3),
            1,
            fsqlite_vfs::SHM_UNLOCK | SHM_EXCLUSIVE,
        )
        .unwrap();
    r0.set_read_mark(3, READMARK_NOT_USED);
    assert!(!inspect(&mut me).unwrap().plan.needs_recovery());
    // aReadMark[0] must be 0.
    r0.set_read_mark(0, 5);
    assert_eq!(inspect(&mut me).unwrap().stale_marks, vec![0]);
    r0.set_read_mark(0, 0);
    // Broken backfill counters.
    r0.set_n_backfill(8);
    let i = inspect(&mut me).unwrap();
    assert!(i.plan.validate_backfill && !i.plan.reconstruct_wal_index);
    r0.set_n_backfill(4);
    r0.set_n_backfill_attempted(11);
    assert!(inspect(&mut me).unwrap().plan.validate_backfill);
    r0.set_n_backfill_attempted(6);
    // Torn: copy B of a newer header, copy A still the old one.
    let mut newer = header(12);
    newer.seal();
    r0.write_bytes(48, &newer.to_bytes());
    let i = inspect(&mut me).unwrap();
    assert_eq!(i.defect, Some(HeaderDefect::CopiesDiffer));
    assert!(i.plan.reconstruct_wal_index && i.plan.validate_backfill);
    // Equal copies with a wrong checksum count as copies that do not match.
    let mut bad = header(12);
    bad.seal();
    bad.a_cksum[0] ^= 1;
    r0.write_bytes(0, &bad.to_bytes());
    r0.write_bytes(48, &bad.to_bytes());
    let i = inspect(&mut me).unwrap();
    assert_eq!(i.defect, Some(HeaderDefect::ChecksumMismatch));
    assert!(i.plan.reconstruct_wal_index);
    // A good header of another version: CannotOpen, naming the -shm.
    let mut other = header(12);
    other.seal();
    other.i_version = 3_007_001;
    other.a_cksum = other.compute_checksum();
    r0.write_bytes(0, &other.to_bytes());
    r0.write_bytes(48, &other.to_bytes());
    match inspect(&mut me) {
        Err(FrankenError::CannotOpen { path, .. }) => assert_eq!(path, Path::new(SHM)),
        other => panic!("{other:?}"),
    }
}

/// A coordinator on MemoryVfs dies (dropped: its handles close) while a legacy "process"
/// keeps the -shm alive and has left a stale read mark and broken backfill counters.
#[test]
fn takeover_clears_stale_marks_and_backfill() {
    common::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let file = common::make_db(dir.path(), "app.db");
    let mut shadow = common::Shadow::create_from(&file, &dir.path().join("shadow.db"));
    let vfs = MemoryVfs::new();
    vfs.set_contents(Path::new(DB), &std::fs::read(&file).unwrap());
    let cx = Cx::new();
    let mut legacy = handle(&vfs);
    let r0 = region0(&mut legacy);
    let coord = Coordinator::open(&cx, Arc::new(vfs.clone()), DB, common::options()).unwrap();
    assert_eq!(
        coord.mode(),
        CompatMode::HybridShm,
        "{}",
        coord.mode_reason()
    );
    for i in 1..=3 {
        let (changes, db_size) = shadow.apply(&common::txn_sql(9, i));
        let pages: Vec<_> = changes.iter().map(|(p, d)| (*p, d.as_slice())).collect();
        coord.commit(&cx, &pages, db_size).unwrap();
    }
    let mx = coord.legacy_state().unwrap().legacy_hdr().mx_frame;
    drop(coord);
    r0.set_read_mark(2, mx + 100);
    r0.set_n_backfill(mx + 1);
    let coord = Coordinator::open(&cx, Arc::new(vfs.clone()), DB, common::options()).unwrap();
    let t = coord.takeover().unwrap().clone();
    assert!(t.previous_died);
    assert!(
        !t.rebuilt,
        "the -shm stayed alive with a good header: {t:?}"
    );
    assert!(
        t.plan.clear_stale_read_marks && t.plan.validate_backfill,
        "{t:?}"
    );
    assert_eq!(t.stale_marks, vec![2]);
    assert_eq!(r0.read_mark(2), READMARK_NOT_USED);
    assert_eq!(r0.n_backfill(), 0);
    assert_eq!(r0.n_backfill_attempted(), mx);
    // Still committing and reading correctly.
    let (changes, db_size) = shadow.apply(&common::txn_sql(9, 4));
    let pages: Vec<_> = changes.iter().map(|(p, d)| (*p, d.as_slice())).collect();
    coord.commit(&cx, &pages, db_size).unwrap();
    let mut buf = vec![0u8; common::PAGE_SIZE];
    let image = std::fs::read(shadow.path()).unwrap();
    for (n, page) in image.chunks(common::PAGE_SIZE).enumerate() {
        coord
            .read_page(
                &cx,
                fsqlite_types::PageNumber::new(n as u32 + 1).unwrap(),
                &mut buf,
            )
            .unwrap();
        assert_eq!(&buf[..], page, "page {}", n + 1);
    }
    coord.close(&cx).unwrap();
    drop(legacy);
}
