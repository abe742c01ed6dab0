//! `WalFile` on an in-memory file: round trips, the checksum chain, restart and truncate
//! rules, the sync rules of each `SyncMode`, batching of I/O, the valid-prefix rule under
//! every kind of damage (deterministic cases and a proptest), and the memory a scan uses.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{VecFile, page_bytes, pg};
use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageSize};
use fsqlite_wal::checksum::{WAL_FRAME_HEADER_SIZE, WAL_HEADER_SIZE, wal_checksum_scalar};
use fsqlite_wal::format::{
    FrameHeader, WAL_FORMAT_VERSION, WAL_MAGIC, WalHeader, WalHeaderError, frame_offset,
};
use fsqlite_wal::wal::{EmptyWalReason, ScanReport, StopReason, SyncMode, WalFile, WalState};
use proptest::prelude::*;

// ---- a per-thread counting allocator, to bound what a scan allocates ----

struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call forwards to `System` unchanged; the thread-local counters are
// const-initialised `Cell`s, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = CURRENT.try_with(|c| {
            let v = c.get() + layout.size() as isize;
            c.set(v);
            let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
        });
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = CURRENT.try_with(|c| c.set(c.get() - layout.size() as isize));
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated (above the level at entry) on this thread while `f` runs.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

// ---- helpers ----

const SALTS: [u32; 2] = [0x1234_5678, 0x9abc_def0];

fn ps(n: u32) -> PageSize {
    PageSize::new(n).unwrap()
}

/// A transaction: (page, version) pairs and an optional commit size.
type Txn = (Vec<(u32, u32)>, Option<u32>);

fn write_txns(wal: &mut WalFile<VecFile>, cx: &Cx, txns: &[Txn]) {
    let size = wal.page_size().unwrap().bytes();
    for (frames, commit) in txns {
        let pages: Vec<Vec<u8>> = frames
            .iter()
            .map(|&(p, v)| page_bytes(size, p, v))
            .collect();
        let refs: Vec<_> = frames
            .iter()
            .zip(&pages)
            .map(|(&(p, _), d)| (pg(p), d.as_slice()))
            .collect();
        wal.append_frames(cx, &refs, *commit).unwrap();
    }
}

fn new_wal(page_size: u32, be: bool) -> (WalFile<VecFile>, VecFile) {
    let file = VecFile::new();
    let wal = WalFile::create(&Cx::new(), file.clone(), ps(page_size), SALTS, 0, be).unwrap();
    (wal, file)
}

fn scan(file: &VecFile) -> (ScanReport, Vec<(u32, u32, u32)>) {
    let mut seen = Vec::new();
    let r = WalFile::scan(&Cx::new(), file, |f, p, d| {
        seen.push((f, p.get(), d));
        Ok(())
    })
    .unwrap();
    (r, seen)
}

fn frame_start(frame: u32, page_size: u32) -> usize {
    usize::try_from(frame_offset(frame, page_size)).unwrap()
}

/// The independent reference: checks every frame's stored checksum against a chain
/// computed with the scalar reference from the header.
fn assert_chain_by_reference(bytes: &[u8], page_size: u32, frames: u32, be: bool) {
    let mut c = wal_checksum_scalar(&bytes[..24], be, [0, 0]);
    assert_eq!(
        c,
        [
            u32::from_be_bytes(bytes[24..28].try_into().unwrap()),
            u32::from_be_bytes(bytes[28..32].try_into().unwrap())
        ]
    );
    for i in 1..=frames {
        let at = frame_start(i, page_size);
        let head = &bytes[at..at + WAL_FRAME_HEADER_SIZE];
        let page =
            &bytes[at + WAL_FRAME_HEADER_SIZE..at + WAL_FRAME_HEADER_SIZE + page_size as usize];
        c = wal_checksum_scalar(&head[..8], be, c);
        c = wal_checksum_scalar(page, be, c);
        let fh = FrameHeader::decode(head).unwrap();
        assert_eq!(fh.checksum, c, "frame {i}");
        assert_eq!(fh.salt, SALTS);
    }
}

// ---- round trips ----

#[test]
fn create_append_reopen_round_trip() {
    let cx = Cx::new();
    for be in [false, true] {
        let (mut wal, file) = new_wal(1024, be);
        assert_eq!(file.len(), WAL_HEADER_SIZE);
        let txns: Vec<Txn> = vec![
            (vec![(1, 1), (2, 1), (3, 1)], Some(3)),
            (vec![(2, 2)], Some(3)),
            (vec![(4, 1), (1, 2)], Some(4)),
        ];
        write_txns(&mut wal, &cx, &txns);
        assert_eq!(wal.mx_frame(), 6);
        assert_eq!(wal.last_frame(), 6);
        assert_eq!(wal.n_page(), 4);
        assert_eq!(file.len(), frame_start(7, 1024));
        assert_chain_by_reference(&file.bytes(), 1024, 6, be);

        let (r, seen) = scan(&file);
        assert_eq!(r.mx_frame, 6);
        assert_eq!(r.n_page, 4);
        assert_eq!(r.commits, 3);
        assert_eq!(r.last_valid_frame, 6);
        assert_eq!(r.frame_checksum, wal.frame_checksum());
        assert_eq!(r.stop, StopReason::EndOfFile);
        assert_eq!(r.header.unwrap().big_endian_checksum(), be);
        assert_eq!(
            seen,
            vec![
                (1, 1, 0),
                (2, 2, 0),
                (3, 3, 3),
                (4, 2, 3),
                (5, 4, 0),
                (6, 1, 4)
            ]
        );

        let (reopened, report) = WalFile::open(&cx, file.clone()).unwrap();
        assert_eq!(report, r);
        assert_eq!(reopened.mx_frame(), 6);
        assert_eq!(reopened.frame_checksum(), wal.frame_checksum());
        assert_eq!(reopened.salts(), Some(SALTS));
        let mut buf = vec![0u8; 1024];
        reopened.read_frame(&cx, 4, &mut buf).unwrap();
        assert_eq!(buf, page_bytes(1024, 2, 2));
        let fh = reopened.read_frame_header(&cx, 6).unwrap();
        assert_eq!((fh.page_number, fh.db_size_after_commit), (1, 4));
    }
}

#[test]
fn header_fields_on_disk() {
    let (wal, file) = new_wal(65536, false);
    let b = file.bytes();
    assert_eq!(u32::from_be_bytes(b[0..4].try_into().unwrap()), WAL_MAGIC);
    assert_eq!(
        u32::from_be_bytes(b[4..8].try_into().unwrap()),
        WAL_FORMAT_VERSION
    );
    assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), 65536);
    assert_eq!(u32::from_be_bytes(b[16..20].try_into().unwrap()), SALTS[0]);
    assert_eq!(wal.header().unwrap().checksum, wal.frame_checksum());
    let (_, be_file) = new_wal(512, true);
    assert_eq!(
        u32::from_be_bytes(be_file.bytes()[0..4].try_into().unwrap()),
        WAL_MAGIC | 1
    );
}

#[test]
fn first_frame_chains_from_header_checksum() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    let hc = wal.header().unwrap().checksum;
    let data = page_bytes(512, 9, 1);
    wal.append_frames(&cx, &[(pg(9), &data)], Some(9)).unwrap();
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&9u32.to_be_bytes());
    head[4..].copy_from_slice(&9u32.to_be_bytes());
    let c = wal_checksum_scalar(&data, false, wal_checksum_scalar(&head, false, hc));
    assert_eq!(
        FrameHeader::decode(&file.bytes()[32..]).unwrap().checksum,
        c
    );
    assert_eq!(wal.frame_checksum(), c);
}

#[test]
fn large_pages_span_scan_chunks() {
    // 40 frames of 64 KiB: 15 frames per 1 MiB read, so the scan crosses chunk borders.
    let cx = Cx::new();
    let (mut wal, file) = new_wal(65536, false);
    let txns: Vec<Txn> = (0..20u32)
        .map(|t| {
            (
                vec![(t % 7 + 1, t), (t % 5 + 1, t)],
                if t % 3 == 2 { None } else { Some(7) },
            )
        })
        .collect();
    write_txns(&mut wal, &cx, &txns);
    let (r, seen) = scan(&file);
    assert_eq!(seen.len(), 40);
    assert_eq!(r.last_valid_frame, 40);
    assert_eq!(r.mx_frame, wal.mx_frame());
    assert_eq!(r.frame_checksum, wal.frame_checksum());
    assert_eq!(r.stop, StopReason::EndOfFile);
    assert_chain_by_reference(&file.bytes(), 65536, 40, false);
}

// ---- restart and truncate ----

#[test]
fn restart_bumps_salt1_seq_and_kills_old_frames() {
    let cx = Cx::new();
    let file = VecFile::new();
    let mut wal = WalFile::create(&cx, file.clone(), ps(512), [u32::MAX, 7], 41, false).unwrap();
    write_txns(
        &mut wal,
        &cx,
        &[
            (vec![(1, 1), (2, 1)], Some(2)),
            (vec![(3, 1), (1, 2)], Some(3)),
        ],
    );
    let len_before = file.len();
    wal.restart(&cx, 0xdead_beef).unwrap();
    let h = *wal.header().unwrap();
    assert_eq!(h.salt, [0, 0xdead_beef], "salt-1 wraps");
    assert_eq!(h.checkpoint_seq, 42);
    assert_eq!(wal.mx_frame(), 0);
    assert_eq!(wal.n_page(), 3, "n_page survives a restart");
    assert_eq!(file.len(), len_before, "a restart never truncates");
    assert_eq!(WalHeader::decode(&file.bytes()).unwrap(), h);

    let (r, _) = scan(&file);
    assert_eq!(r.mx_frame, 0);
    assert_eq!(r.stop, StopReason::SaltMismatch { frame: 1 });

    write_txns(&mut wal, &cx, &[(vec![(5, 1)], Some(5))]);
    let (r, seen) = scan(&file);
    assert_eq!((r.mx_frame, r.n_page), (1, 5));
    assert_eq!(seen, vec![(1, 5, 5)]);
    assert_eq!(r.stop, StopReason::SaltMismatch { frame: 2 });
    assert_eq!(r.stop_offset, frame_offset(2, 512));
}

#[test]
fn truncate_to_zero_then_append_writes_a_new_header() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(&mut wal, &cx, &[(vec![(1, 1)], Some(1))]);
    wal.truncate_to_zero(&cx, 77).unwrap();
    assert_eq!(file.len(), 0);
    assert!(!wal.header_on_disk());
    let (r, _) = scan(&file);
    assert!(r.is_empty_wal());
    assert_eq!(
        r.stop,
        StopReason::EmptyOrInvalidHeader {
            why: EmptyWalReason::TooSmall { file_size: 0 }
        }
    );
    write_txns(&mut wal, &cx, &[(vec![(2, 1)], Some(2))]);
    let (r, _) = scan(&file);
    let h = r.header.unwrap();
    assert_eq!(h.salt, [SALTS[0] + 1, 77]);
    assert_eq!(h.checkpoint_seq, 1);
    assert_eq!((r.mx_frame, r.n_page), (1, 2));
}

// ---- uncommitted tails, rollback, index state ----

#[test]
fn uncommitted_tail_is_excluded_then_overwritten() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(
        &mut wal,
        &cx,
        &[
            (vec![(1, 1), (2, 1)], Some(2)),
            (vec![(3, 1), (4, 1), (5, 1)], None),
        ],
    );
    assert_eq!((wal.mx_frame(), wal.last_frame()), (2, 5));
    drop(wal); // a crash before the commit frame

    let (mut wal, r) = WalFile::open(&cx, file.clone()).unwrap();
    assert_eq!(
        (r.mx_frame, r.last_valid_frame, r.uncommitted_frames()),
        (2, 5, 3)
    );
    assert_eq!(
        wal.last_frame(),
        2,
        "the writer restarts after the last commit"
    );
    write_txns(&mut wal, &cx, &[(vec![(6, 1)], Some(6))]);
    let (r, seen) = scan(&file);
    assert_eq!((r.mx_frame, r.n_page, r.last_valid_frame), (3, 6, 3));
    assert_eq!(seen.last(), Some(&(3, 6, 6)));
    assert_eq!(r.stop, StopReason::ChecksumMismatch { frame: 4 });
}

#[test]
fn spill_then_commit_continues_the_transaction() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(
        &mut wal,
        &cx,
        &[(vec![(1, 1), (2, 1)], None), (vec![(3, 1)], Some(3))],
    );
    let (r, _) = scan(&file);
    assert_eq!((r.mx_frame, r.commits), (3, 1));
    // rollback of a spilled transaction
    write_txns(&mut wal, &cx, &[(vec![(4, 1)], None)]);
    wal.rollback_uncommitted();
    assert_eq!(wal.last_frame(), 3);
    write_txns(&mut wal, &cx, &[(vec![(5, 1)], Some(5))]);
    let (r, seen) = scan(&file);
    assert_eq!((r.mx_frame, r.n_page), (4, 5));
    assert_eq!(seen[3], (4, 5, 5));
}

#[test]
fn second_writer_continues_the_chain_from_index_state() {
    let cx = Cx::new();
    let (mut first, file) = new_wal(1024, true);
    write_txns(&mut first, &cx, &[(vec![(1, 1), (2, 1)], Some(2))]);
    let state = first.state().unwrap();

    let mut second = WalFile::attach(file.clone(), Some("/db-wal".into()));
    second.set_state_from_index(&cx, state).unwrap();
    assert_eq!(second.header(), first.header());
    write_txns(&mut second, &cx, &[(vec![(3, 1)], Some(3))]);
    let (r, _) = scan(&file);
    assert_eq!((r.mx_frame, r.n_page), (3, 3));
    assert_eq!(r.frame_checksum, second.frame_checksum());

    let mut bad = state;
    bad.salt[1] ^= 1;
    let mut third = WalFile::attach(file.clone(), Some("/db-wal".into()));
    let err = third.set_state_from_index(&cx, bad).unwrap_err();
    assert!(matches!(err, FrankenError::WalCorrupt { .. }), "{err}");
    assert!(err.to_string().contains("/db-wal"), "{err}");
    let mut long = state;
    long.mx_frame = 99;
    assert!(third.set_state_from_index(&cx, long).is_err());

    // mx_frame == 0 (a restarted WAL): the next append writes the header from the state.
    let fresh = WalState {
        mx_frame: 0,
        n_page: 3,
        frame_checksum: [0, 0],
        salt: [5, 6],
        page_size: ps(1024),
        big_endian_cksum: false,
        checkpoint_seq: 9,
    };
    let mut fourth = WalFile::attach(file.clone(), None);
    fourth.set_state_from_index(&cx, fresh).unwrap();
    write_txns(&mut fourth, &cx, &[(vec![(1, 3)], Some(3))]);
    let (r, _) = scan(&file);
    assert_eq!(r.header.unwrap().salt, [5, 6]);
    assert_eq!(r.header.unwrap().checkpoint_seq, 9);
    assert_eq!(
        (r.mx_frame, r.stop),
        (1, StopReason::SaltMismatch { frame: 2 })
    );
}

// ---- sync rules and I/O batching ----

#[test]
fn sync_rules_per_mode() {
    let cx = Cx::new();
    for (mode, want) in [
        (SyncMode::Full, 1 + 3),
        (SyncMode::Normal, 1),
        (SyncMode::Off, 0),
    ] {
        let file = VecFile::new();
        let mut wal = WalFile::create(&cx, file.clone(), ps(512), SALTS, 0, false)
            .unwrap()
            .with_sync_mode(mode);
        write_txns(
            &mut wal,
            &cx,
            &[
                (vec![(1, 1)], Some(1)),
                (vec![(2, 1)], None),
                (vec![(2, 2)], Some(2)),
                (vec![(3, 1)], Some(3)),
            ],
        );
        assert_eq!(file.counts().2, want, "{mode:?}");
        // A restart needs a new header sync before the next frames.
        wal.restart(&cx, 1).unwrap();
        write_txns(&mut wal, &cx, &[(vec![(1, 2)], Some(3))]);
        let extra = match mode {
            SyncMode::Full => 2,
            SyncMode::Normal => 1,
            SyncMode::Off => 0,
        };
        assert_eq!(file.counts().2, want + extra, "{mode:?} after restart");
    }
    assert_eq!(SyncMode::default(), SyncMode::Full);
}

#[test]
fn appends_and_scans_are_batched() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(4096, false);
    let pages: Vec<Vec<u8>> = (1..=600).map(|p| page_bytes(4096, p, 1)).collect();
    let frames: Vec<_> = pages
        .iter()
        .enumerate()
        .map(|(i, d)| (pg(i as u32 + 1), d.as_slice()))
        .collect();
    let (_, w0, _) = file.counts();
    wal.append_frames(&cx, &frames, Some(600)).unwrap();
    let (_, w1, _) = file.counts();
    // 600 frames of 4120 bytes = 2.4 MiB, written in ~1 MiB pieces.
    assert!(w1 - w0 <= 3, "{} writes", w1 - w0);
    let (r0, _, _) = file.counts();
    let (r, _) = scan(&file);
    let (r1, _, _) = file.counts();
    assert_eq!(r.mx_frame, 600);
    // the header read plus one read per SCAN_CHUNK_BYTES of whole frames (10 here)
    let per_read = (fsqlite_wal::wal::SCAN_CHUNK_BYTES / 4120) as u64;
    let chunks = 600u64.div_ceil(per_read);
    assert_eq!(chunks, 10);
    assert!(r1 - r0 <= 1 + chunks, "{} reads", r1 - r0);
}

#[test]
fn scan_allocates_no_more_than_the_file_justifies() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(&mut wal, &cx, &[(vec![(1, 1), (2, 1)], Some(2))]);
    let (r, peak) = peak_alloc(|| WalFile::scan(&cx, &file, |_, _, _| Ok(())).unwrap());
    assert_eq!(r.mx_frame, 2);
    assert!(peak < 4 * 1024, "peak {peak} bytes for a 1 KiB WAL");

    let (mut wal, file) = new_wal(4096, false);
    let pages: Vec<Vec<u8>> = (1..=1000).map(|p| page_bytes(4096, p, 1)).collect();
    let frames: Vec<_> = pages
        .iter()
        .enumerate()
        .map(|(i, d)| (pg(i as u32 + 1), d.as_slice()))
        .collect();
    wal.append_frames(&cx, &frames, Some(1000)).unwrap();
    let (r, peak) = peak_alloc(|| WalFile::scan(&cx, &file, |_, _, _| Ok(())).unwrap());
    assert_eq!(r.mx_frame, 1000);
    assert!(
        peak <= (1 << 20) + 64 * 1024,
        "peak {peak} bytes for a 4 MiB WAL"
    );
}

// ---- errors ----

#[test]
fn bad_arguments_and_latching() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    let short = vec![0u8; 100];
    let err = wal
        .append_frames(&cx, &[(pg(1), &short)], Some(1))
        .unwrap_err();
    assert!(matches!(err, FrankenError::OutOfRange { .. }), "{err}");
    let ok = vec![0u8; 512];
    assert!(matches!(
        wal.append_frames(&cx, &[(pg(1), &ok)], Some(0)),
        Err(FrankenError::OutOfRange { .. })
    ));
    assert!(wal.append_frames(&cx, &[], Some(1)).is_err());
    assert_eq!(wal.append_frames(&cx, &[], None).unwrap(), 0);
    let mut buf = vec![0u8; 512];
    assert!(matches!(
        wal.read_frame(&cx, 3, &mut buf),
        Err(FrankenError::WalCorrupt { .. })
    ));
    assert!(wal.read_frame(&cx, 0, &mut buf).is_err());

    let mut none = WalFile::attach(VecFile::new(), None);
    assert!(none.append_frames(&cx, &[(pg(1), &ok)], Some(1)).is_err());
    assert!(none.ensure_header(&cx).is_err());

    // A failed write latches the handle.
    file.set_fail_io(true);
    assert!(wal.append_frames(&cx, &[(pg(1), &ok)], Some(1)).is_err());
    file.set_fail_io(false);
    let err = wal
        .append_frames(&cx, &[(pg(1), &ok)], Some(1))
        .unwrap_err();
    assert!(matches!(err, FrankenError::PreviousIo { .. }), "{err}");
    assert_eq!(wal.mx_frame(), 0);
}

#[test]
fn cancelled_scan_is_interrupted_and_callback_errors_propagate() {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(&mut wal, &cx, &[(vec![(1, 1)], Some(1))]);
    let cancelled = Cx::new();
    cancelled.cancel();
    assert!(matches!(
        WalFile::scan(&cancelled, &file, |_, _, _| Ok(())),
        Err(FrankenError::Interrupted)
    ));
    let err = WalFile::scan(&cx, &file, |_, _, _| Err(FrankenError::Busy)).unwrap_err();
    assert!(matches!(err, FrankenError::Busy));
}

// ---- the valid prefix under damage ----

/// Three commits of 2, 3 and 2 frames (512-byte pages): commits at frames 2, 5, 7.
fn damaged_fixture() -> (VecFile, Vec<u8>) {
    let cx = Cx::new();
    let (mut wal, file) = new_wal(512, false);
    write_txns(
        &mut wal,
        &cx,
        &[
            (vec![(1, 1), (2, 1)], Some(2)),
            (vec![(3, 1), (1, 2), (4, 1)], Some(4)),
            (vec![(2, 2), (5, 1)], Some(5)),
        ],
    );
    let bytes = file.bytes();
    (file, bytes)
}

fn scan_bytes(bytes: Vec<u8>) -> ScanReport {
    scan(&VecFile::from_bytes(bytes)).0
}

#[test]
fn every_kind_of_frame_damage_cuts_back_to_the_last_commit() {
    let (_, clean) = damaged_fixture();
    let f = |i| frame_start(i, 512);
    // (description, damage, expected stop, expected mx_frame, n_page)
    type Damage = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Damage, StopReason, u32, u32)> = vec![
        (
            "page bit flip in frame 4",
            Box::new(move |b: &mut Vec<u8>| b[f(4) + 24 + 100] ^= 4),
            StopReason::ChecksumMismatch { frame: 4 },
            2,
            2,
        ),
        (
            "page number flip in frame 3",
            Box::new(move |b: &mut Vec<u8>| b[f(3) + 3] ^= 0x40),
            StopReason::ChecksumMismatch { frame: 3 },
            2,
            2,
        ),
        (
            "page number zeroed in frame 6",
            Box::new(move |b: &mut Vec<u8>| b[f(6)..f(6) + 4].fill(0)),
            StopReason::ZeroPageNumber { frame: 6 },
            5,
            4,
        ),
        (
            "commit field flip in frame 7",
            Box::new(move |b: &mut Vec<u8>| b[f(7) + 7] ^= 1),
            StopReason::ChecksumMismatch { frame: 7 },
            5,
            4,
        ),
        (
            "salt-1 flip in frame 5",
            Box::new(move |b: &mut Vec<u8>| b[f(5) + 8] ^= 0x80),
            StopReason::SaltMismatch { frame: 5 },
            2,
            2,
        ),
        (
            "salt-2 flip in frame 1",
            Box::new(move |b: &mut Vec<u8>| b[f(1) + 15] ^= 1),
            StopReason::SaltMismatch { frame: 1 },
            0,
            0,
        ),
        (
            "checksum flip in frame 2",
            Box::new(move |b: &mut Vec<u8>| b[f(2) + 23] ^= 1),
            StopReason::ChecksumMismatch { frame: 2 },
            0,
            0,
        ),
        (
            "zeroed frame 3",
            Box::new(move |b: &mut Vec<u8>| b[f(3)..f(4)].fill(0)),
            StopReason::SaltMismatch { frame: 3 },
            2,
            2,
        ),
        (
            "truncated inside frame 7",
            Box::new(move |b: &mut Vec<u8>| b.truncate(f(7) + 300)),
            StopReason::PartialFrame {
                frame: 7,
                bytes: 300,
            },
            5,
            4,
        ),
        (
            "truncated at frame 6",
            Box::new(move |b: &mut Vec<u8>| b.truncate(f(6))),
            StopReason::EndOfFile,
            5,
            4,
        ),
        (
            "trailing garbage",
            Box::new(move |b: &mut Vec<u8>| b.extend_from_slice(&[7; 100])),
            StopReason::PartialFrame {
                frame: 8,
                bytes: 100,
            },
            7,
            5,
        ),
    ];
    for (what, damage, stop, mx, n_page) in cases {
        let mut b = clean.clone();
        damage(&mut b);
        let r = scan_bytes(b);
        assert_eq!(r.stop, stop, "{what}");
        assert_eq!((r.mx_frame, r.n_page), (mx, n_page), "{what}");
        if let Some(frame) = stop.frame() {
            assert_eq!(r.stop_offset, frame_offset(frame, 512), "{what}");
            assert_eq!(r.last_valid_frame, frame - 1, "{what}");
        }
    }
}

#[test]
fn header_damage_makes_an_empty_wal_or_cannot_open() {
    let (_, clean) = damaged_fixture();
    let empty_because = |b: Vec<u8>| match scan_bytes(b).stop {
        StopReason::EmptyOrInvalidHeader {
            why: EmptyWalReason::InvalidHeader(e),
        } => e,
        other => panic!("expected an empty WAL, got {other:?}"),
    };
    let mut b = clean.clone();
    b[1] ^= 1;
    assert!(matches!(empty_because(b), WalHeaderError::BadMagic { .. }));
    let mut b = clean.clone();
    b[20] ^= 1; // salt-2 in the header: the header checksum fails
    assert!(matches!(
        empty_because(b),
        WalHeaderError::BadChecksum { .. }
    ));
    let mut b = clean.clone();
    b[29] ^= 1;
    assert!(matches!(
        empty_because(b),
        WalHeaderError::BadChecksum { .. }
    ));
    let mut b = clean.clone();
    b[..32].fill(0);
    assert!(matches!(empty_because(b), WalHeaderError::BadMagic { .. }));

    // Wrong version, checksum left stale: the checksum fails first, so the WAL is empty.
    let mut b = clean.clone();
    b[4..8].copy_from_slice(&3_007_001u32.to_be_bytes());
    assert!(matches!(
        empty_because(b.clone()),
        WalHeaderError::BadChecksum { .. }
    ));
    // Wrong version with a good checksum: CannotOpen.
    let mut h = WalHeader::decode_unchecked(b[..32].try_into().unwrap());
    h.format_version = 3_007_001;
    b[..32].copy_from_slice(&h.encode());
    let err = WalFile::open_with(
        &Cx::new(),
        VecFile::from_bytes(b),
        Some("/x/db-wal".into()),
        |_, _, _| Ok(()),
    )
    .unwrap_err();
    assert!(matches!(err, FrankenError::CannotOpen { .. }), "{err}");
    assert!(
        err.to_string().contains("/x/db-wal") && err.to_string().contains("3007001"),
        "{err}"
    );

    // Wrong page size (good checksum): empty.
    for bad in [0u32, 1, 1000, 256, 131_072] {
        let mut h = WalHeader::decode_unchecked(clean[..32].try_into().unwrap());
        h.page_size = bad;
        let mut b = clean.clone();
        b[..32].copy_from_slice(&h.encode());
        assert_eq!(empty_because(b), WalHeaderError::BadPageSize { found: bad });
    }

    // Zero-length and header-only files.
    for len in [0usize, 1, 31, 32] {
        let r = scan_bytes(clean[..len].to_vec());
        assert_eq!(
            r.stop,
            StopReason::EmptyOrInvalidHeader {
                why: EmptyWalReason::TooSmall {
                    file_size: len as u64
                }
            }
        );
        assert_eq!((r.mx_frame, r.n_page, r.frame_checksum), (0, 0, [0, 0]));
    }
    // An open of an empty WAL is not an error; appending needs a header first.
    let (mut wal, r) = WalFile::open(&Cx::new(), VecFile::new()).unwrap();
    assert!(r.is_empty_wal());
    assert!(wal.page_size().is_none());
    wal.init_header(ps(512), SALTS, 0, false).unwrap();
    wal.append_frames(&Cx::new(), &[(pg(1), &[1u8; 512])], Some(1))
        .unwrap();
    assert_eq!(scan(wal.file()).0.mx_frame, 1);
}

#[test]
fn every_single_bit_flip_in_a_small_wal_is_caught() {
    let (_, clean) = damaged_fixture();
    // Every bit of frames 1..=7 (each byte, one bit per byte position mod 8).
    for at in (32..clean.len()).step_by(3) {
        let mut b = clean.clone();
        b[at] ^= 1 << (at % 8);
        let frame = ((at - 32) / (512 + 24)) as u32 + 1;
        let r = scan_bytes(b);
        assert_eq!(r.last_valid_frame, frame - 1, "flip at {at}");
        let want_mx = [0, 0, 2, 2, 2, 5, 5][frame as usize - 1];
        assert_eq!(r.mx_frame, want_mx, "flip at {at}");
    }
}

// ---- proptest: random transactions, random damage ----

#[derive(Clone, Debug)]
enum Damage {
    None,
    FlipBit { frame: u32, byte: usize, bit: u8 },
    ZeroFrame { frame: u32 },
    Truncate { at_permille: u32 },
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        (1u32..64, 0usize..2000, 0u8..8).prop_map(|(frame, byte, bit)| Damage::FlipBit {
            frame,
            byte,
            bit
        }),
        (1u32..64).prop_map(|frame| Damage::ZeroFrame { frame }),
        (0u32..1000).prop_map(|at_permille| Damage::Truncate { at_permille }),
    ]
}

fn txns_strategy() -> impl Strategy<Value = Vec<(Vec<u32>, bool)>> {
    prop::collection::vec(
        (prop::collection::vec(1u32..50, 1..5), any::<bool>()),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn recovered_prefix_matches_the_model(
        page_size in prop_oneof![Just(512u32), Just(1024u32)],
        be in any::<bool>(),
        txns in txns_strategy(),
        damage in damage_strategy(),
    ) {
        let cx = Cx::new();
        let (mut wal, file) = new_wal(page_size, be);
        // The model: every frame written, with its commit marker.
        let mut model: Vec<(u32, u32)> = Vec::new();
        let mut last_commit_size = 0u32;
        for (i, (pages, commit)) in txns.iter().enumerate() {
            let data: Vec<Vec<u8>> = pages.iter().map(|&p| page_bytes(page_size as usize, p, i as u32)).collect();
            let frames: Vec<_> = pages.iter().zip(&data).map(|(&p, d)| (pg(p), d.as_slice())).collect();
            let size = pages.iter().copied().max().unwrap_or(1).max(last_commit_size);
            let commit_size = commit.then_some(size);
            wal.append_frames(&cx, &frames, commit_size).unwrap();
            for (k, &p) in pages.iter().enumerate() {
                let marker = if k + 1 == pages.len() { commit_size.unwrap_or(0) } else { 0 };
                model.push((p, marker));
            }
            if let Some(s) = commit_size { last_commit_size = s; }
        }
        let total = model.len() as u32;
        let frame_bytes = page_size as usize + WAL_FRAME_HEADER_SIZE;
        let mut bytes = file.bytes();
        // The first frame the damage invalidates (total + 1: none).
        let first_bad = match damage {
            Damage::None => total + 1,
            Damage::FlipBit { frame, byte, bit } => {
                if frame <= total {
                    let at = frame_start(frame, page_size) + byte % frame_bytes;
                    bytes[at] ^= 1 << bit;
                    frame
                } else { total + 1 }
            }
            Damage::ZeroFrame { frame } => {
                if frame <= total {
                    let at = frame_start(frame, page_size);
                    bytes[at..at + frame_bytes].fill(0);
                    frame
                } else { total + 1 }
            }
            Damage::Truncate { at_permille } => {
                let at = WAL_HEADER_SIZE + (bytes.len() - WAL_HEADER_SIZE) * at_permille as usize / 1000;
                bytes.truncate(at);
                ((at - WAL_HEADER_SIZE) / frame_bytes) as u32 + 1
            }
        };
        let mut seen = Vec::new();
        let r = WalFile::scan(&cx, &VecFile::from_bytes(bytes), |_, p, d| { seen.push((p.get(), d)); Ok(()) }).unwrap();
        let valid = &model[..(first_bad - 1) as usize];
        prop_assert_eq!(&seen, &valid.to_vec());
        let want_mx = valid.iter().rposition(|&(_, d)| d != 0).map_or(0, |i| i as u32 + 1);
        let want_n_page = if want_mx == 0 { 0 } else { valid[want_mx as usize - 1].1 };
        prop_assert_eq!(r.mx_frame, want_mx);
        prop_assert_eq!(r.n_page, want_n_page);
        prop_assert_eq!(r.last_valid_frame, first_bad - 1);
        prop_assert_eq!(r.commits as usize, valid.iter().filter(|&&(_, d)| d != 0).count());
        if first_bad > total {
            prop_assert_eq!(r.frame_checksum, if wal.mx_frame() == 0 { [0, 0] } else { wal.frame_checksum() });
        }
    }
}

/// On a device without power-safe overwrite (`MemoryVfs` reports none), a commit under
/// `SyncMode::Full` is padded with copies of its commit frame up to the sector boundary,
/// as SQLite does (FORMAT.md §9); padding frames are real, committed frames.
#[test]
fn commits_are_padded_to_the_sector_on_non_psow_devices() {
    use fsqlite_types::VfsOpenFlags;
    use fsqlite_vfs::{MemoryVfs, Vfs, VfsFile};
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    vfs.set_sector_size(4096);
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::WAL;
    let (f, _) = vfs
        .open(&cx, Some(std::path::Path::new("/p-wal")), flags)
        .unwrap();
    let ps = PageSize::new(1024).unwrap();
    let mut w = WalFile::create(&cx, f, ps, [1, 2], 0, false).unwrap();
    let page = vec![9u8; 1024];
    let p1 = fsqlite_types::PageNumber::new(1).unwrap();
    let last = w.append_frames(&cx, &[(p1, &page)], Some(1)).unwrap();
    // 32 + n * 1048 must reach 4096: n = 4 frames (one real, three padding).
    assert_eq!(last, 4);
    let size = w.file().file_size(&cx).unwrap();
    assert!((4096..4096 + 1048).contains(&size), "{size}");
    let (_, report) = WalFile::open(&cx, w.into_file()).unwrap();
    assert_eq!(report.mx_frame, 4);
    assert_eq!(report.commits, 4);
    assert_eq!(report.n_page, 1);
}

// ---- group commit ----

/// `append_commits` writes several transactions in one run, each ending in its own
/// commit frame, chained exactly like one `append_frames` per transaction: the bytes are
/// identical, the scan finds every commit, and each returned frame is that commit's.
#[test]
fn append_commits_equals_one_append_per_transaction() {
    let cx = Cx::new();
    let txns: Vec<Txn> = vec![
        (vec![(2, 1), (3, 1)], Some(3)),
        (vec![(5, 1)], Some(5)),
        (vec![(2, 2), (7, 1), (3, 2)], Some(7)),
    ];
    let (mut one_by_one, file_a) = new_wal(4096, false);
    write_txns(&mut one_by_one, &cx, &txns);
    let (mut grouped, file_b) = new_wal(4096, false);
    let size = 4096;
    let images: Vec<Vec<Vec<u8>>> = txns
        .iter()
        .map(|(f, _)| f.iter().map(|&(p, v)| page_bytes(size, p, v)).collect())
        .collect();
    let refs: Vec<Vec<(fsqlite_types::PageNumber, &[u8])>> = txns
        .iter()
        .zip(&images)
        .map(|((f, _), imgs)| {
            f.iter()
                .zip(imgs)
                .map(|(&(p, _), d)| (pg(p), d.as_slice()))
                .collect()
        })
        .collect();
    let batch: Vec<fsqlite_wal::GroupedCommit<'_>> = refs
        .iter()
        .zip(&txns)
        .map(|(r, (_, c))| (r.as_slice(), c.unwrap()))
        .collect();
    let ends = grouped.append_commits(&cx, &batch, false).unwrap();
    assert_eq!(ends, vec![2, 3, 6]);
    assert_eq!(grouped.mx_frame(), 6);
    assert_eq!(grouped.n_page(), 7);
    assert_eq!(grouped.frame_checksum(), one_by_one.frame_checksum());
    assert_eq!(file_a.bytes(), file_b.bytes(), "grouped bytes differ");
    let (report, seen) = scan(&file_b);
    assert_eq!(report.mx_frame, 6);
    let commits: Vec<u32> = seen.iter().filter(|s| s.2 != 0).map(|s| s.0).collect();
    assert_eq!(commits, vec![2, 3, 6]);
    assert_chain_by_reference(&file_b.bytes(), 4096, 6, false);
    // Empty batches write nothing; an empty transaction is refused.
    assert!(grouped.append_commits(&cx, &[], false).unwrap().is_empty());
    assert!(grouped.append_commits(&cx, &[(&[], 3)], false).is_err());
    assert_eq!(grouped.mx_frame(), 6);
}
