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

// ------------------------------------------------------------ writeback, pipeline, threads

/// A [`VecFile`] handle that also logs `start_writeback` calls (and can fail them) and
/// counts reads; clones share the bytes, the logs and the counter.
#[derive(Clone, Debug, Default)]
struct Hinted {
    inner: VecFile,
    hints: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    fail_hints: bool,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Hinted {
    fn new(inner: VecFile) -> Self {
        Self {
            inner,
            ..Self::default()
        }
    }

    fn hints(&self) -> Vec<(u64, u64)> {
        self.hints.lock().unwrap().clone()
    }

    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl VfsFile for Hinted {
    fn read(&self, cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.read(cx, buf, offset)
    }
    fn write(&mut self, cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        self.inner.write(cx, buf, offset)
    }
    fn truncate(&mut self, cx: &Cx, size: u64) -> Result<()> {
        self.inner.truncate(cx, size)
    }
    fn sync(&mut self, cx: &Cx, flags: SyncFlags) -> Result<()> {
        self.inner.sync(cx, flags)
    }
    fn start_writeback(&mut self, _cx: &Cx, offset: u64, len: u64) -> Result<()> {
        self.hints.lock().unwrap().push((offset, len));
        if self.fail_hints {
            return Err(FrankenError::io(
                "sync_file_range",
                None,
                std::io::Error::from_raw_os_error(22),
            ));
        }
        Ok(())
    }
    fn file_size(&self, cx: &Cx) -> Result<u64> {
        self.inner.file_size(cx)
    }
    fn lock(&mut self, cx: &Cx, level: fsqlite_types::LockLevel) -> Result<()> {
        self.inner.lock(cx, level)
    }
    fn unlock(&mut self, cx: &Cx, level: fsqlite_types::LockLevel) -> Result<()> {
        self.inner.unlock(cx, level)
    }
    fn check_reserved_lock(&self, cx: &Cx) -> Result<bool> {
        self.inner.check_reserved_lock(cx)
    }
    fn shm_map(
        &mut self,
        cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<fsqlite_vfs::ShmRegion>> {
        self.inner.shm_map(cx, region, size, extend)
    }
    fn shm_lock(&mut self, cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        self.inner.shm_lock(cx, offset, n, flags)
    }
    fn shm_unmap(&mut self, cx: &Cx, delete: bool) -> Result<()> {
        self.inner.shm_unmap(cx, delete)
    }
}

fn job(plan: &BackfillPlan, n_page: u32, mode: PageVerifyMode) -> CheckpointJob<'_> {
    CheckpointJob {
        page_size: PS,
        plan,
        n_page,
        complete: true,
        verify_mode: mode,
    }
}

#[test]
fn db_file_target_asks_for_writeback_after_each_batch() {
    let cx = Cx::new();
    // Pages 1..=10 in runs of 3: writes of 3, 3, 3 and 1 pages.
    let pages: Vec<u32> = (1..=10).collect();
    let (wal, imgs) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 10, 10, 3);
    let mut file = Hinted::new(VecFile::default());
    let reader = file.clone();
    let mut target = DbFileTarget::new(&mut file, PS).unwrap();
    target.set_writeback_bytes(4 * PSU as u64);
    let j = job(&plan, 10, PageVerifyMode::WholePage);
    execute_checkpoint_with(&cx, &wal, &j, &mut target, &reader, CheckpointThreads::One).unwrap();
    // 3 pages pending, then 6 >= 4: ask for [0, 6); then 3, then 4 >= 4: ask for [6, 10).
    let k = PSU as u64;
    assert_eq!(reader.hints(), vec![(0, 6 * k), (6 * k, 4 * k)]);
    assert_eq!(&reader.inner.data()[9 * PSU..], &imgs[9][..]);

    // A gap between writes is inside the range asked for; page-by-page writes count too.
    let mut file = Hinted::new(VecFile::default());
    let mut target = DbFileTarget::new(&mut file, PS).unwrap();
    target.set_writeback_bytes(2 * k);
    target
        .write_page(&cx, PageNumber::new(2).unwrap(), &imgs[0])
        .unwrap();
    target
        .write_page(&cx, PageNumber::new(5).unwrap(), &imgs[1])
        .unwrap();
    target
        .write_page(&cx, PageNumber::new(6).unwrap(), &imgs[2])
        .unwrap();
    assert_eq!(file.hints(), vec![(k, 4 * k)]);

    // Off: no request at all.
    let mut file = Hinted::new(VecFile::default());
    let mut target = DbFileTarget::new(&mut file, PS).unwrap();
    target.set_writeback_bytes(0);
    for p in 1..=20 {
        target
            .write_page(&cx, PageNumber::new(p).unwrap(), &imgs[0])
            .unwrap();
    }
    assert!(file.hints().is_empty());
}

#[test]
fn default_writeback_batch_is_eight_mib() {
    let cx = Cx::new();
    let mut file = Hinted::new(VecFile::default());
    let mut target = DbFileTarget::new(&mut file, 4096).unwrap();
    let mib = vec![7u8; 1 << 20];
    for i in 0..17u32 {
        target
            .write_pages(&cx, PageNumber::new(1 + i * 256).unwrap(), 4096, &mib)
            .unwrap();
    }
    assert_eq!(CHECKPOINT_WRITEBACK_BYTES, 8 << 20);
    assert_eq!(file.hints(), vec![(0, 8 << 20), (8 << 20, 8 << 20)]);
}

#[test]
fn a_failing_writeback_request_is_not_a_checkpoint_error() {
    let cx = Cx::new();
    let pages: Vec<u32> = (1..=10).collect();
    let (wal, _) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 10, 10, 2);
    let mut file = Hinted::new(VecFile::default());
    file.fail_hints = true;
    let reader = file.clone();
    let mut target = DbFileTarget::new(&mut file, PS).unwrap();
    target.set_writeback_bytes(PSU as u64);
    let j = job(&plan, 10, PageVerifyMode::WholePage);
    let rep = execute_checkpoint(&cx, &wal, &j, &mut target, &reader).unwrap();
    assert!(rep.verify.is_match());
    assert_eq!(reader.hints().len(), 1, "asked once, then no more");
    assert!(
        reader
            .inner
            .ops()
            .iter()
            .any(|o| matches!(o, Op::Sync { flags } if *flags == SyncFlags::FULL))
    );
}

/// A WAL of `n` frames: pages `1..=n/2` in order, then pages in a scattered order (some
/// pages repeated, some missing); and its plan with runs up to `max_run` pages.
fn big_case(n: u32, max_run: u32, trailers: bool) -> (VecFile, BackfillPlan, u32) {
    let pages: Vec<u32> = (0..n)
        .map(|i| {
            if i < n / 2 {
                i + 1
            } else {
                (i.wrapping_mul(7919) % (n + n / 3)) + 1
            }
        })
        .collect();
    let n_page = *pages.iter().max().unwrap();
    let (wal, _) = wal_image(&pages, trailers);
    let plan = plan_for(&pages, 0, n, n_page, max_run);
    (wal, plan, n_page)
}

/// Runs a checkpoint with `threads` into a fresh file; returns the report, the bytes and
/// the file's operation log.
fn run_with(
    wal: &VecFile,
    j: &CheckpointJob<'_>,
    threads: CheckpointThreads,
) -> (CheckpointReport, Vec<u8>, Vec<Op>) {
    let cx = Cx::new();
    let mut db = VecFile::with_data(vec![0x55; 3 * PSU]);
    let rep = execute_checkpoint_on_file_with(&cx, wal, j, &mut db, threads).unwrap();
    (rep, db.data(), db.ops())
}

#[test]
fn the_pipeline_writes_exactly_what_one_thread_writes() {
    // 3,000 frames of 1 KiB; runs of up to 2,500 pages, so some runs are cut in 1 MiB
    // chunks (1,024 pages).
    for trailers in [false, true] {
        let (wal, plan, n_page) = big_case(3000, 2500, trailers);
        assert!(plan.runs.iter().any(|r| r.frames.len() > 1024));
        let mode = if trailers {
            PageVerifyMode::Trailer
        } else {
            PageVerifyMode::WholePage
        };
        let j = job(&plan, n_page, mode);
        let (one, one_data, one_ops) = run_with(&wal, &j, CheckpointThreads::One);
        let (two, two_data, two_ops) = run_with(&wal, &j, CheckpointThreads::Two);
        assert!(!one.pipelined && two.pipelined);
        assert_eq!(one_data, two_data);
        // The same writes in the same order, then truncate, sync and the reads (the
        // two-thread read-back splits the list in two, so its reads interleave).
        let not_read = |ops: &[Op]| -> Vec<Op> {
            ops.iter()
                .filter(|o| !matches!(o, Op::Read { .. }))
                .cloned()
                .collect()
        };
        assert_eq!(not_read(&one_ops), not_read(&two_ops));
        let one_writes = writes(&one_ops);
        assert!(
            one_writes
                .iter()
                .all(|&(_, len)| len <= CHECKPOINT_MAX_WRITE_BYTES)
        );
        assert_eq!(
            one_writes.len() as u64,
            one.runs + 1,
            "one run was cut in two writes"
        );
        assert_eq!(one.pages_written, two.pages_written);
        assert_eq!(one.bytes_written, two.bytes_written);
        assert_eq!(one.runs, two.runs);
        assert_eq!(one.wal_reads, two.wal_reads);
        assert_eq!(one.wal_bytes_read, two.wal_bytes_read);
        assert_eq!(one.truncated_to_pages, two.truncated_to_pages);
        assert_eq!(one.verify.pages_checked, two.verify.pages_checked);
        assert!(one.verify.is_match() && two.verify.is_match());
        assert_eq!(one.pages_written, plan.page_count());
        // Every page in the plan holds its newest frame's image.
        for run in &plan.runs {
            for (p, f) in run.pages() {
                let (p, f) = (p as usize, f as u64);
                let at = (32 + (f - 1) * (24 + PSU as u64) + 24) as usize;
                let mut img = vec![0u8; PSU];
                wal.read(&Cx::new(), &mut img, at as u64).unwrap();
                assert_eq!(&one_data[(p - 1) * PSU..p * PSU], &img[..], "page {p}");
            }
        }
    }
}

#[test]
fn auto_uses_one_thread_for_small_copies() {
    let (wal, plan, n_page) = big_case(100, 64, false);
    let j = job(&plan, n_page, PageVerifyMode::WholePage);
    let (rep, _, _) = run_with(&wal, &j, CheckpointThreads::Auto);
    assert!(!rep.pipelined);
    assert!(CheckpointThreads::Auto.use_two(u64::MAX, 1) == super::two_cores());
    assert!(!CheckpointThreads::Auto.use_two(0, 1));
    assert!(CheckpointThreads::Two.use_two(0, 1) && !CheckpointThreads::One.use_two(u64::MAX, 1));
}

#[test]
fn pipeline_errors_stop_the_checkpoint_like_one_thread() {
    let cx = Cx::new();
    let pages: Vec<u32> = (1..=40).collect();
    let (wal, _) = wal_image(&pages, false);
    // Runs of 4 consecutive frames: one WAL read and one write each.
    let plan = plan_for(&pages, 0, 40, 40, 4);
    let j = job(&plan, 40, PageVerifyMode::WholePage);
    let two = CheckpointThreads::Two;

    // Write failure: reported, no truncate, no sync, and the reader stopped early.
    let mut db = VecFile::default();
    db.set_fail_write(true);
    let w = Hinted::new(wal.clone());
    let e = execute_checkpoint_on_file_with(&cx, &w, &j, &mut db, two).unwrap_err();
    assert!(matches!(e, FrankenError::Io { .. }), "{e:?}");
    assert!(
        !db.ops()
            .iter()
            .any(|o| matches!(o, Op::Sync { .. } | Op::Truncate { .. }))
    );
    assert_eq!(writes(&db.ops()).len(), 1);
    assert!(
        w.reads() <= 1 + CHECKPOINT_PIPELINE_BUFFERS,
        "{}",
        w.reads()
    );

    // The WAL-index names a frame past the end of the WAL, in the third run: the two
    // runs before it are written (as on one thread), then the error; no sync.
    let mut bad: Vec<(u32, u32)> = (1..=40).map(|p| (p, p)).collect();
    bad[9].1 = 99; // page 10 → frame 99
    let bad_plan = plan_backfill(bad, 0, 99, 40, 4);
    for threads in [CheckpointThreads::One, two] {
        let mut db = VecFile::default();
        let e = execute_checkpoint_on_file_with(
            &cx,
            &wal,
            &job(&bad_plan, 40, PageVerifyMode::WholePage),
            &mut db,
            threads,
        )
        .unwrap_err();
        assert!(matches!(e, FrankenError::WalCorrupt { .. }), "{e:?}");
        assert_eq!(
            writes(&db.ops()),
            vec![(0, 4 * PSU), (4 * PSU as u64, 4 * PSU)]
        );
        assert!(!db.ops().iter().any(|o| matches!(o, Op::Sync { .. })));
    }

    // Cancelled before the start: nothing touched.
    let c = Cx::new();
    c.cancel();
    let mut db = VecFile::default();
    assert!(matches!(
        execute_checkpoint_on_file_with(&c, &wal, &j, &mut db, two),
        Err(FrankenError::Interrupted)
    ));
    assert!(db.ops().is_empty());

    // Sync failure: one attempt, nothing read back.
    let mut db = VecFile::default();
    db.set_fail_sync(true);
    assert!(execute_checkpoint_on_file_with(&cx, &wal, &j, &mut db, two).is_err());
    let ops = db.ops();
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::Sync { .. })).count(),
        1
    );
    assert!(!ops.iter().any(|o| matches!(o, Op::Read { .. })));

    // A bad write caught by verification, through the default page-by-page write_pages.
    let mut file = VecFile::default();
    let reader = file.clone();
    let mut target = CorruptingTarget {
        inner: DbFileTarget::new(&mut file, PS).unwrap(),
        bad_page: 23,
    };
    let e = execute_checkpoint_with(&cx, &wal, &j, &mut target, &reader, two).unwrap_err();
    match e {
        FrankenError::DatabaseCorrupt { detail } => assert!(detail.contains("page 23"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

/// A target that notes, at each write, how many WAL reads have been issued.
struct LeadTarget<'a> {
    inner: DbFileTarget<'a, VecFile>,
    wal: Hinted,
    reads_at_write: Vec<usize>,
    panic_at: Option<usize>,
}

impl CheckpointTarget for LeadTarget<'_> {
    fn write_page(&mut self, cx: &Cx, page: PageNumber, data: &[u8]) -> Result<()> {
        self.inner.write_page(cx, page, data)
    }
    fn truncate_db(&mut self, cx: &Cx, n_pages: u32) -> Result<()> {
        self.inner.truncate_db(cx, n_pages)
    }
    fn sync_db(&mut self, cx: &Cx) -> Result<()> {
        self.inner.sync_db(cx)
    }
    fn write_pages(
        &mut self,
        cx: &Cx,
        first: PageNumber,
        page_size: u32,
        data: &[u8],
    ) -> Result<()> {
        self.reads_at_write.push(self.wal.reads());
        assert!(
            self.panic_at != Some(self.reads_at_write.len()),
            "test panic in the writer"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
        self.inner.write_pages(cx, first, page_size, data)
    }
}

#[test]
fn the_pipeline_keeps_at_most_its_buffers_in_flight() {
    let cx = Cx::new();
    let pages: Vec<u32> = (1..=60).collect();
    let (wal, _) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 60, 60, 3); // 20 chunks, one WAL read each
    let j = job(&plan, 60, PageVerifyMode::WholePage);
    let w = Hinted::new(wal);
    let mut file = VecFile::default();
    let reader = file.clone();
    let mut target = LeadTarget {
        inner: DbFileTarget::new(&mut file, PS).unwrap(),
        wal: w.clone(),
        reads_at_write: Vec::new(),
        panic_at: None,
    };
    let rep =
        execute_checkpoint_with(&cx, &w, &j, &mut target, &reader, CheckpointThreads::Two).unwrap();
    assert_eq!(rep.wal_reads, 20);
    // When chunk i (from 0) is written, its buffer is held by the writer, so the reader
    // has read at most the chunks up to i + BUFFERS - 1.
    for (i, &r) in target.reads_at_write.iter().enumerate() {
        assert!(r > i, "chunk {i} written before it was read ({r} reads)");
        assert!(
            r <= i + CHECKPOINT_PIPELINE_BUFFERS,
            "chunk {i}: {r} reads in flight"
        );
    }
}

#[test]
fn a_panic_in_the_writer_ends_the_pipeline_without_hanging() {
    let pages: Vec<u32> = (1..=60).collect();
    let (wal, _) = wal_image(&pages, false);
    let plan = plan_for(&pages, 0, 60, 60, 3);
    let j = job(&plan, 60, PageVerifyMode::WholePage);
    let w = Hinted::new(wal);
    let mut file = VecFile::default();
    let reader = file.clone();
    let mut target = LeadTarget {
        inner: DbFileTarget::new(&mut file, PS).unwrap(),
        wal: w.clone(),
        reads_at_write: Vec::new(),
        panic_at: Some(3),
    };
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        execute_checkpoint_with(
            &Cx::new(),
            &w,
            &j,
            &mut target,
            &reader,
            CheckpointThreads::Two,
        )
    }));
    assert!(r.is_err(), "the writer's panic is propagated");
    assert!(
        w.reads() <= 3 + CHECKPOINT_PIPELINE_BUFFERS,
        "the reader stopped"
    );
}

#[test]
fn two_thread_read_back_finds_what_one_thread_finds() {
    use crate::recovery_fence::{BadPageReason, verify_checkpoint_pages_with};
    let cx = Cx::new();
    let n = 64u32;
    let imgs: Vec<Vec<u8>> = (1..=n).map(|p| page_image(p, PSU)).collect();
    // The file holds pages 1..=62 (63 and 64 are short reads).
    let db = VecFile::with_data(imgs[..62].concat());
    let mut expected: Vec<ExpectedPageChecksum> = (1..=n)
        .map(|p| ExpectedPageChecksum {
            page: PageNumber::new(p).unwrap(),
            checksum: page_digest(&imgs[p as usize - 1]),
        })
        .collect();
    // Wrong digests in both halves, a repeated page, out of order.
    expected[4].checksum = page_digest(b"not page 5");
    expected[50].checksum = page_digest(b"not page 51");
    expected.push(ExpectedPageChecksum {
        page: PageNumber::new(33).unwrap(),
        checksum: page_digest(&imgs[32]),
    });
    expected.reverse();
    let one = verify_checkpoint_pages_with(
        &cx,
        &db,
        PS,
        &expected,
        PageVerifyMode::WholePage,
        CheckpointThreads::One,
    )
    .unwrap();
    let two = verify_checkpoint_pages_with(
        &cx,
        &db,
        PS,
        &expected,
        PageVerifyMode::WholePage,
        CheckpointThreads::Two,
    )
    .unwrap();
    let bad = |r: &crate::recovery_fence::PageVerifyReport| {
        r.bad_pages
            .iter()
            .map(|b| (b.page.get(), b.reason))
            .collect::<Vec<_>>()
    };
    let want = vec![
        (5, BadPageReason::Digest),
        (51, BadPageReason::Digest),
        (63, BadPageReason::ShortRead),
        (64, BadPageReason::ShortRead),
    ];
    assert_eq!(bad(&one), want);
    assert_eq!(bad(&two), want);
    assert_eq!(one.pages_checked, 65);
    assert_eq!(two.pages_checked, 65);
    assert_eq!(
        two.reads,
        one.reads + 1,
        "the run is cut once at the middle"
    );
    assert_eq!(one.verdict(), two.verdict());

    // An I/O error in either half is returned; a cancelled context stops both.
    let c = Cx::new();
    c.cancel();
    assert!(matches!(
        verify_checkpoint_pages_with(
            &c,
            &db,
            PS,
            &expected,
            PageVerifyMode::WholePage,
            CheckpointThreads::Two
        ),
        Err(FrankenError::Interrupted)
    ));
}

// ------------------------------------------------- the read-back beside the database fsync
/// A checkpoint of `big_case(n)` into a fresh file prepared by `setup`, with `threads`.
fn run_barrier(
    n: u32,
    threads: CheckpointThreads,
    setup: impl FnOnce(&VecFile),
) -> (Result<CheckpointReport>, VecFile) {
    let cx = Cx::new();
    let (wal, plan, n_page) = big_case(n, 64, false);
    let j = job(&plan, n_page, PageVerifyMode::WholePage);
    let mut db = VecFile::with_data(vec![0x55; 3 * PSU]);
    setup(&db);
    let r = execute_checkpoint_on_file_with(&cx, &wal, &j, &mut db, threads);
    (r, db)
}

#[test]
fn the_read_back_runs_beside_a_shared_fsync() {
    let (r, db) = run_barrier(600, CheckpointThreads::Two, |f| {
        f.set_shared_sync(std::time::Duration::ZERO);
        f.set_sync_waits_for_read();
    });
    let rep = r.unwrap();
    assert!(rep.barrier_overlapped);
    assert!(rep.verify.is_match());
    assert_eq!(rep.verify.pages_checked, rep.pages_written);
    let ops = db.ops();
    let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred);
    let begin = pos(&|o| matches!(o, Op::SyncBegin)).unwrap();
    let end = pos(&|o| matches!(o, Op::Sync { flags } if *flags == SyncFlags::FULL)).unwrap();
    let last_write = ops
        .iter()
        .rposition(|o| matches!(o, Op::Write { .. } | Op::Truncate { .. }))
        .unwrap();
    assert!(
        last_write < begin,
        "every write and the truncate come first: {ops:?}"
    );
    // The fsync returns only once a read has begun during it (10 s at most): with the
    // read-back after the fsync there would be none in between.
    let reads: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i], Op::Read { .. }))
        .collect();
    assert!(
        reads.iter().any(|&i| begin < i && i < end),
        "no read during the fsync: begin {begin}, end {end}, reads {reads:?}"
    );
    assert!(
        reads.iter().all(|&i| begin < i),
        "a read before the fsync began: {ops:?}"
    );
    // The same bytes as the checkpoint that reads back after its fsync.
    let (r1, one) = run_barrier(600, CheckpointThreads::One, |_| {});
    let rep1 = r1.unwrap();
    assert!(!rep1.barrier_overlapped);
    assert_eq!(db.data(), one.data());
    assert_eq!(rep.verify.pages_checked, rep1.verify.pages_checked);
}

#[test]
fn a_failed_shared_fsync_fails_the_checkpoint_although_the_pages_match() {
    let (r, db) = run_barrier(300, CheckpointThreads::Two, |f| {
        f.set_shared_sync(std::time::Duration::from_millis(20));
        f.set_fail_sync(true);
    });
    assert!(matches!(r, Err(FrankenError::Io { .. })), "{r:?}");
    let ops = db.ops();
    assert!(ops.iter().any(|o| matches!(o, Op::Read { .. })));
    assert_eq!(
        ops.iter().filter(|o| matches!(o, Op::Sync { .. })).count(),
        1,
        "one fsync, never retried"
    );
}

#[test]
fn a_bad_page_read_beside_the_fsync_is_corruption_after_the_fsync_returned() {
    // Byte 100 of page 2 reads back flipped.
    let (r, db) = run_barrier(300, CheckpointThreads::Two, |f| {
        f.set_shared_sync(std::time::Duration::from_millis(50));
        f.set_flip_on_read(Some(PSU + 100));
    });
    match r {
        Err(FrankenError::DatabaseCorrupt { detail }) => {
            assert!(detail.contains("page 2"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // The call returned only once the fsync had: it is in the log, last.
    let ops = db.ops();
    assert!(matches!(ops.last(), Some(Op::Sync { .. })), "{ops:?}");
}

#[test]
fn the_barrier_keeps_its_order_without_a_shared_fsync_or_for_small_copies() {
    // A file that cannot sync through a shared reference: fsync, then read back.
    let (r, db) = run_barrier(300, CheckpointThreads::Two, |_| {});
    assert!(!r.unwrap().barrier_overlapped);
    let ops = db.ops();
    let sync = ops
        .iter()
        .position(|o| matches!(o, Op::Sync { .. }))
        .unwrap();
    let first_read = ops
        .iter()
        .position(|o| matches!(o, Op::Read { .. }))
        .unwrap();
    assert!(sync < first_read, "{ops:?}");
    // Auto with less than BARRIER_OVERLAP_MIN_BYTES of pages: in order as well.
    let (r, db) = run_barrier(300, CheckpointThreads::Auto, |f| {
        f.set_shared_sync(std::time::Duration::ZERO);
    });
    let rep = r.unwrap();
    assert!(rep.bytes_written < BARRIER_OVERLAP_MIN_BYTES);
    assert!(!rep.barrier_overlapped);
    assert!(!db.ops().iter().any(|o| matches!(o, Op::SyncBegin)));
}
