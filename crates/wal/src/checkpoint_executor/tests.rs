//! Tests of the checkpoint executor over in-memory files.

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{Cx, PageNumber, SyncFlags};

use super::*;
use crate::checkpoint::{BackfillPlan, plan_backfill};
use crate::checksum::write_page_checksum;
use crate::recovery_fence::PageVerifyMode;
use crate::recovery_fence::test_support::{Op, VecFile, page_image};

const PS: u32 = 1024;
const PSU: usize = PS as usize;

/// A WAL whose frame `i` (1-based) holds page `pages[i-1]` with image seed `1000 + i`.
/// With `trailers`, each image carries a valid xxh3 trailer.
fn wal_image(pages: &[u32], trailers: bool) -> (VecFile, Vec<Vec<u8>>) {
    let mut data = vec![0xAAu8; 32];
    let mut images = Vec::new();
    for (i, &p) in pages.iter().enumerate() {
        let mut hdr = [0u8; 24];
        hdr[..4].copy_from_slice(&p.to_be_bytes());
        data.extend_from_slice(&hdr);
        let mut img = page_image(1000 + i as u32 + 1, PSU);
        if trailers {
            write_page_checksum(&mut img).unwrap();
        }
        data.extend_from_slice(&img);
        images.push(img);
    }
    (VecFile::with_data(data), images)
}

fn plan_for(pages: &[u32], n_backfill: u32, safe: u32, n_page: u32, max_run: u32) -> BackfillPlan {
    plan_backfill(
        pages.iter().enumerate().map(|(i, &p)| (p, i as u32 + 1)),
        n_backfill,
        safe,
        n_page,
        max_run,
    )
}

fn writes(ops: &[Op]) -> Vec<(u64, usize)> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Write { offset, len } => Some((*offset, *len)),
            _ => None,
        })
        .collect()
}

#[test]
fn frame_offsets() {
    assert_eq!(wal_frame_data_offset(1, 4096), 32 + 24);
    assert_eq!(wal_frame_data_offset(3, 4096), 32 + 2 * (4096 + 24) + 24);
    assert_eq!(
        wal_frame_data_offset(u32::MAX, 65536),
        32 + u64::from(u32::MAX - 1) * (65536 + 24) + 24
    );
}

#[test]
fn copies_newest_frames_in_runs_and_verifies() {
    let cx = Cx::new();
    // frames: 1:p3 2:p1 3:p2 4:p3 5:p7 6:p8 7:p5
    let pages = [3, 1, 2, 3, 7, 8, 5];
    let (wal, imgs) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 7, 8, 64);
    // Runs: {1,2,3} from frames 2,3,4; {5} from 7; {7,8} from 5,6.
    assert_eq!(plan.runs.len(), 3);
    let mut db = VecFile::with_data(vec![0u8; 8 * PSU]);
    let job = CheckpointJob {
        page_size: PS,
        plan: &plan,
        n_page: 8,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };
    wal.clear_log();
    let rep = execute_checkpoint_on_file(&cx, &wal, &job, &mut db).unwrap();
    assert_eq!(rep.pages_written, 6);
    assert_eq!(rep.bytes_written, 6 * PSU as u64);
    assert_eq!(rep.runs, 3);
    assert_eq!(rep.truncated_to_pages, Some(8));
    assert!(rep.verify.is_match());
    assert_eq!(rep.verify.pages_checked, 6);
    // WAL reads: frames 2-4 in one read, 7 alone, 5-6 in one read.
    assert_eq!(rep.wal_reads, 3);
    assert_eq!(wal.ops().len(), 3);
    let d = db.data();
    let page = |p: usize| &d[(p - 1) * PSU..p * PSU];
    assert_eq!(page(1), &imgs[1][..]);
    assert_eq!(page(2), &imgs[2][..]);
    assert_eq!(page(3), &imgs[3][..], "frame 4 (newest) wins over frame 1");
    assert_eq!(page(5), &imgs[6][..]);
    assert_eq!(page(7), &imgs[4][..]);
    assert_eq!(page(8), &imgs[5][..]);
    assert!(page(4).iter().all(|&b| b == 0));
    // One write per run, in page order; then truncate; then a FULL sync; then reads.
    let ops = db.ops();
    assert_eq!(
        writes(&ops),
        vec![
            (0, 3 * PSU),
            (4 * PSU as u64, PSU),
            (6 * PSU as u64, 2 * PSU)
        ]
    );
    let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).unwrap();
    let trunc = pos(&|o| matches!(o, Op::Truncate { size } if *size == 8 * PSU as u64));
    let sync = pos(&|o| matches!(o, Op::Sync { flags } if *flags == SyncFlags::FULL));
    let first_read = pos(&|o| matches!(o, Op::Read { .. }));
    assert!(trunc > 2 && sync > trunc && first_read > sync, "{ops:?}");
}

#[test]
fn partial_copy_does_not_truncate_and_long_runs_split() {
    let cx = Cx::new();
    let pages: Vec<u32> = (1..=10).collect();
    let (wal, imgs) = wal_image(&pages, false);
    let plan = plan_for(&pages, 2, 9, 10, 3);
    let mut db = VecFile::with_data(vec![0u8; 12 * PSU]);
    let job = CheckpointJob {
        page_size: PS,
        plan: &plan,
        n_page: 10,
        complete: false,
        verify_mode: PageVerifyMode::Auto,
    };
    let rep = execute_checkpoint_on_file(&cx, &wal, &job, &mut db).unwrap();
    assert_eq!(rep.pages_written, 7); // frames 3..=9
    assert_eq!(rep.runs, 3); // 3 + 3 + 1
    assert_eq!(rep.truncated_to_pages, None);
    let d = db.data();
    assert_eq!(d.len(), 12 * PSU, "no truncate on a partial copy");
    assert_eq!(&d[8 * PSU..9 * PSU], &imgs[8][..]);
    assert!(d[..2 * PSU].iter().all(|&b| b == 0));
    assert!(d[9 * PSU..].iter().all(|&b| b == 0));
    assert!(db.ops().iter().all(|o| !matches!(o, Op::Truncate { .. })));
}

#[test]
fn trailer_mode_records_trailers() {
    let cx = Cx::new();
    let pages = [1, 2, 3];
    let (wal, _) = wal_image(&pages, true);
    let plan = plan_for(&pages, 0, 3, 3, 64);
    let mut db = VecFile::default();
    let job = CheckpointJob {
        page_size: PS,
        plan: &plan,
        n_page: 3,
        complete: true,
        verify_mode: PageVerifyMode::Trailer,
    };
    let rep = execute_checkpoint_on_file(&cx, &wal, &job, &mut db).unwrap();
    assert!(rep.verify.is_match());
    assert_eq!(db.data().len(), 3 * PSU);
}

/// A target that flips a byte of one page while writing (a misdirected or bad write).
struct CorruptingTarget<'a> {
    inner: DbFileTarget<'a, VecFile>,
    bad_page: u32,
}

impl CheckpointTarget for CorruptingTarget<'_> {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        let mut d = data.to_vec();
        if page.get() == self.bad_page {
            d[17] ^= 0x40;
        }
        self.inner.write_page(cx, page, &d)
    }

    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        self.inner.truncate_db(cx, n_pages)
    }

    fn sync_db(&mut self, cx: &Cx) -> Result<()> {
        self.inner.sync_db(cx)
    }
}

#[test]
fn a_bad_write_is_caught_by_verification() {
    let cx = Cx::new();
    let pages = [1, 2, 3, 4];
    let (wal, _) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 4, 4, 64);
    let mut file = VecFile::default();
    let reader = file.clone(); // a second handle to the same bytes
    let job = CheckpointJob {
        page_size: PS,
        plan: &plan,
        n_page: 4,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };
    let mut target = CorruptingTarget {
        inner: DbFileTarget::new(&mut file, PS).unwrap(),
        bad_page: 3,
    };
    // The default write_pages goes page by page through the corrupting write_page.
    let e = execute_checkpoint(&cx, &wal, &job, &mut target, &reader).unwrap_err();
    match e {
        FrankenError::DatabaseCorrupt { detail } => assert!(detail.contains("page 3"), "{detail}"),
        other => panic!("{other:?}"),
    }
    // Through a trait object as well, and a good target passes.
    let mut good = DbFileTarget::new(&mut file, PS).unwrap();
    let dyn_target: &mut dyn CheckpointTarget = &mut good;
    let rep = execute_checkpoint(&cx, &wal, &job, dyn_target, &reader).unwrap();
    assert!(rep.verify.is_match());
}

#[test]
fn errors_stop_the_checkpoint() {
    let cx = Cx::new();
    let pages = [1, 2, 3];
    let (wal, _) = wal_image(&pages, false);
    let job_for = |plan| CheckpointJob {
        page_size: PS,
        plan,
        n_page: 3,
        complete: true,
        verify_mode: PageVerifyMode::WholePage,
    };

    // Sync failure: returned once, nothing read back.
    let plan = plan_for(&pages, 0, 3, 3, 64);
    let mut db = VecFile::default();
    db.set_fail_sync(true);
    assert!(matches!(
        execute_checkpoint_on_file(&cx, &wal, &job_for(&plan), &mut db),
        Err(FrankenError::Io { .. })
    ));
    let ops = db.ops();
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::Sync { .. })).count(),
        1
    );
    assert!(!ops.iter().any(|o| matches!(o, Op::Read { .. })));

    // Write failure: no truncate, no sync.
    let mut db = VecFile::default();
    db.set_fail_write(true);
    assert!(execute_checkpoint_on_file(&cx, &wal, &job_for(&plan), &mut db).is_err());
    assert!(
        !db.ops()
            .iter()
            .any(|o| matches!(o, Op::Sync { .. } | Op::Truncate { .. }))
    );

    // The WAL-index names a frame past the end of the WAL.
    let plan = plan_backfill([(1, 1), (2, 9)], 0, 9, 3, 64);
    let mut db = VecFile::default();
    let e = execute_checkpoint_on_file(&cx, &wal, &job_for(&plan), &mut db).unwrap_err();
    assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e:?}");
    assert!(!db.ops().iter().any(|o| matches!(o, Op::Sync { .. })));

    // Cancelled.
    let c = Cx::new();
    c.cancel();
    let plan = plan_for(&pages, 0, 3, 3, 64);
    let mut db = VecFile::default();
    assert!(matches!(
        execute_checkpoint_on_file(&c, &wal, &job_for(&plan), &mut db),
        Err(FrankenError::Interrupted)
    ));
    assert!(db.ops().is_empty());

    // A bad page size.
    let mut job = job_for(&plan);
    job.page_size = 1000;
    assert!(execute_checkpoint_on_file(&cx, &wal, &job, &mut db).is_err());
    assert!(DbFileTarget::new(&mut db, 3000).is_err());
}

#[test]
fn empty_plan_still_syncs_and_truncates() {
    let cx = Cx::new();
    let (wal, _) = wal_image(&[], false);
    let plan = BackfillPlan::default();
    let mut db = VecFile::with_data(vec![1u8; 5 * PSU]);
    let job = CheckpointJob {
        page_size: PS,
        plan: &plan,
        n_page: 2,
        complete: true,
        verify_mode: PageVerifyMode::Auto,
    };
    let rep = execute_checkpoint_on_file(&cx, &wal, &job, &mut db).unwrap();
    assert_eq!(rep.pages_written, 0);
    assert_eq!(db.data().len(), 2 * PSU);
    assert!(db.ops().iter().any(|o| matches!(o, Op::Sync { .. })));
}
