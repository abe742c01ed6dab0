//! Unit tests: the fence, the fsync rule, the PID registry and checkpoint verification.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as StdOrdering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, PageNumber, SyncFlags};

use super::test_support::{Op, RecordingTarget, VecFile, page_image};
use super::*;
use crate::checksum::{page_digest, write_page_checksum};

fn pn(n: u32) -> PageNumber {
    PageNumber::new(n).unwrap()
}

// ---------------------------------------------------------------- fence

static STATIC_FENCE: RecoveryFence = RecoveryFence::new();

#[test]
fn const_new_default_and_static() {
    assert!(!STATIC_FENCE.is_recovery_in_progress());
    let f = RecoveryFence::default();
    assert_eq!(f.generation(), 0);
    assert!(f.last_recovery_completed());
    assert_eq!(f.poisoned_recoveries(), 0);
}

#[test]
fn generation_bumps_and_completion_is_recorded() {
    let f = RecoveryFence::new();
    {
        let mut g = f.try_acquire_for_recovery().unwrap();
        assert!(std::ptr::eq(g.fence(), &raw const f));
        assert_eq!(g.generation_at_acquire(), 0);
        assert!(g.previous_recovery_completed());
        assert!(f.is_recovery_in_progress());
        assert!(f.try_acquire_for_recovery().is_none());
        g.complete();
        assert!(g.is_completed());
        // Still held until dropped.
        assert_eq!(f.generation(), 0);
    }
    assert_eq!(f.generation(), 1);
    assert!(f.last_recovery_completed());
    {
        let _g = f.acquire_for_recovery().unwrap(); // dropped without complete()
    }
    assert_eq!(f.generation(), 2);
    assert!(!f.last_recovery_completed());
    {
        let mut g = f.try_acquire_for_recovery().unwrap();
        assert!(!g.previous_recovery_completed());
        assert_eq!(g.generation_at_acquire(), 2);
        g.complete();
    }
    assert!(f.last_recovery_completed());
    assert_eq!(f.generation(), 3);
    assert!(!f.is_recovery_in_progress());
    assert_eq!(f.poisoned_recoveries(), 0);
}

#[test]
fn mutual_exclusion_under_threads() {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 300;
    let fence = Arc::new(RecoveryFence::new());
    let inside = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let hs: Vec<_> = (0..THREADS)
        .map(|_| {
            let (fence, inside, count) = (fence.clone(), inside.clone(), count.clone());
            std::thread::spawn(move || {
                for _ in 0..ROUNDS {
                    let mut g = fence
                        .acquire_for_recovery_with(1000, Duration::from_millis(10))
                        .unwrap();
                    assert!(!inside.swap(true, StdOrdering::AcqRel), "two holders");
                    count.fetch_add(1, StdOrdering::Relaxed);
                    std::hint::spin_loop();
                    inside.store(false, StdOrdering::Release);
                    g.complete();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let total = THREADS as u64 * ROUNDS;
    assert_eq!(count.load(StdOrdering::Relaxed), total);
    assert_eq!(fence.generation(), total);
    assert!(fence.last_recovery_completed());
    assert!(!fence.is_recovery_in_progress());
}

#[test]
fn bounded_wait_returns_busy_recovery() {
    let fence = Arc::new(RecoveryFence::new());
    let _held = fence.try_acquire_for_recovery().unwrap();
    let f2 = fence.clone();
    let h = std::thread::spawn(move || {
        let t = Instant::now();
        let r = f2.acquire_for_recovery_with(4, Duration::from_millis(25));
        (r.map(|_| ()), t.elapsed())
    });
    let (r, waited) = h.join().unwrap();
    assert!(matches!(r, Err(FrankenError::BusyRecovery)), "{r:?}");
    assert!(
        waited >= Duration::from_millis(100),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "waited too long: {waited:?}"
    );
    // Zero budget: fails after the spin only.
    let t = Instant::now();
    assert!(matches!(
        fence.acquire_for_recovery_with(0, Duration::from_millis(100)),
        Err(FrankenError::BusyRecovery)
    ));
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[test]
fn waiter_is_woken_promptly_on_release() {
    let fence = Arc::new(RecoveryFence::new());
    let held = fence.try_acquire_for_recovery().unwrap();
    let f2 = fence.clone();
    let h = std::thread::spawn(move || {
        // Budget 10 × 1 s: only a wake-up on release can make this quick.
        let g = f2
            .acquire_for_recovery_with(10, Duration::from_secs(1))
            .unwrap();
        let at = Instant::now();
        drop(g);
        at
    });
    std::thread::sleep(Duration::from_millis(60)); // the waiter is parked by now
    let released_at = Instant::now();
    drop(held);
    let acquired_at = h.join().unwrap();
    let latency = acquired_at.saturating_duration_since(released_at);
    assert!(
        latency < Duration::from_millis(250),
        "waiter took {latency:?} to notice the release (backoff is 1 s)"
    );
    assert_eq!(fence.generation(), 2);
}

#[test]
fn cx_cancel_and_deadline_interrupt_a_waiter() {
    let fence = Arc::new(RecoveryFence::new());
    let _held = fence.try_acquire_for_recovery().unwrap();

    let cx = Cx::new();
    let (f2, cx2) = (fence.clone(), cx.clone());
    let h = std::thread::spawn(move || {
        let t = Instant::now();
        let r = f2.acquire_for_recovery_cx(&cx2, 100, Duration::from_millis(100));
        (r.map(|_| ()), t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(40));
    cx.cancel();
    let (r, waited) = h.join().unwrap();
    assert!(matches!(r, Err(FrankenError::Interrupted)), "{r:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");

    let cx = Cx::new().with_deadline(Instant::now() + Duration::from_millis(50));
    let t = Instant::now();
    let r = fence.acquire_for_recovery_cx(&cx, 100, Duration::from_millis(100));
    assert!(
        matches!(r, Err(FrankenError::Interrupted)),
        "{:?}",
        r.map(|_| ())
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    // Already cancelled: fails at once even if the fence is free.
    let free = RecoveryFence::new();
    let c = Cx::new();
    c.cancel();
    assert!(matches!(
        free.acquire_for_recovery_cx(&c, 1, Duration::from_millis(1)),
        Err(FrankenError::Interrupted)
    ));
    assert!(
        free.acquire_for_recovery_cx(&Cx::new(), 1, Duration::from_millis(1))
            .is_ok()
    );
}

#[test]
fn panic_during_recovery_releases_and_records_failure() {
    let fence = Arc::new(RecoveryFence::new());
    let f2 = fence.clone();
    let r = std::thread::spawn(move || {
        let mut g = f2.acquire_for_recovery().unwrap();
        g.complete(); // even a "completed" guard counts as failed when unwinding
        panic!("recovery blew up");
    })
    .join();
    assert!(r.is_err());
    assert!(!fence.is_recovery_in_progress());
    assert_eq!(fence.generation(), 1);
    assert!(!fence.last_recovery_completed());
    assert_eq!(fence.poisoned_recoveries(), 1);
    let g = fence.try_acquire_for_recovery().unwrap();
    assert!(!g.previous_recovery_completed());
}

#[test]
fn panic_wakes_a_parked_waiter() {
    let fence = Arc::new(RecoveryFence::new());
    let barrier = Arc::new(Barrier::new(2));
    let (f2, b2) = (fence.clone(), barrier.clone());
    let holder = std::thread::spawn(move || {
        let _g = f2.acquire_for_recovery().unwrap();
        b2.wait();
        std::thread::sleep(Duration::from_millis(50));
        panic!("boom");
    });
    barrier.wait();
    let t = Instant::now();
    let g = fence
        .acquire_for_recovery_with(20, Duration::from_secs(1))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!g.previous_recovery_completed());
    drop(g);
    assert!(holder.join().is_err());
}

#[test]
fn for_path_is_one_fence_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    std::fs::write(&a, b"x").unwrap();
    let f1 = RecoveryFence::for_path(&a);
    let f2 = RecoveryFence::for_path(dir.path().join(".").join("a.db"));
    assert!(Arc::ptr_eq(&f1, &f2));
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&a, &link).unwrap();
    assert!(Arc::ptr_eq(&f1, &RecoveryFence::for_path(&link)));
    // A file that does not exist yet keeps its key once created.
    let b = dir.path().join("b.db");
    let fb = RecoveryFence::for_path(&b);
    assert!(!Arc::ptr_eq(&f1, &fb));
    std::fs::write(&b, b"y").unwrap();
    assert!(Arc::ptr_eq(&fb, &RecoveryFence::for_path(&b)));
    let _g = f1.try_acquire_for_recovery().unwrap();
    assert!(f2.is_recovery_in_progress());
    assert!(!fb.is_recovery_in_progress());
}

// ---------------------------------------------------------------- fsync rule

#[test]
fn fsync_before_truncate_calls_full_sync_once() {
    let cx = Cx::new();
    let mut t = RecordingTarget::default();
    ensure_db_fsync_before_wal_truncate(&cx, &mut t).unwrap();
    assert_eq!(t.syncs, 1);
    let mut bad = RecordingTarget {
        fail_sync: true,
        ..RecordingTarget::default()
    };
    let e = ensure_db_fsync_before_wal_truncate(&cx, &mut bad).unwrap_err();
    assert!(matches!(e, FrankenError::Io { op: "fsync", .. }), "{e:?}");
    assert_eq!(bad.syncs, 1, "an fsync error is never retried");
    // Through a trait object, too.
    let dyn_t: &mut dyn CheckpointTarget = &mut t;
    ensure_db_fsync_before_wal_truncate(&cx, dyn_t).unwrap();
    assert_eq!(t.syncs, 2);
    let c = Cx::new();
    c.cancel();
    assert!(matches!(
        ensure_db_fsync_before_wal_truncate(&c, &mut t),
        Err(FrankenError::Interrupted)
    ));
}

#[test]
fn fsync_db_file_full_is_never_dataonly() {
    let cx = Cx::new();
    let mut f = VecFile::default();
    fsync_db_file_full(&cx, &mut f).unwrap();
    assert_eq!(
        f.ops(),
        vec![Op::Sync {
            flags: SyncFlags::FULL
        }]
    );
    f.set_fail_sync(true);
    assert!(fsync_db_file_full(&cx, &mut f).is_err());
    assert_eq!(f.ops().len(), 2, "one attempt, no retry");
}

// ---------------------------------------------------------------- PID registry

/// Pids above Linux's `pid_max` limit (4,194,304): never a real process.
const FAKE_PID: u32 = 4_500_000;

#[test]
fn register_is_idempotent_and_deregister_works() {
    let r = PidOwnedLockRegistry::new();
    assert!(r.is_empty());
    let s1 = r.register(pn(1), FAKE_PID);
    let s2 = r.register(pn(2), FAKE_PID);
    let s3 = r.register(pn(1), FAKE_PID + 1);
    assert_eq!(r.register(pn(1), FAKE_PID), s1);
    assert!(s1 < s2 && s2 < s3);
    assert_eq!(r.len(), 3);
    let snap = r.snapshot();
    assert_eq!(
        snap.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![s1, s2, s3]
    );
    assert_eq!(
        snap[0],
        PidOwnedLockEntry {
            page: pn(1),
            pid: FAKE_PID,
            sequence: s1
        }
    );
    assert!(r.deregister(pn(1), FAKE_PID));
    assert!(!r.deregister(pn(1), FAKE_PID));
    assert_eq!(r.len(), 2);
    // Registered again: a new sequence.
    assert!(r.register(pn(1), FAKE_PID) > s3);
    // Our own pid gets a start time and stays registered across release.
    let own = std::process::id();
    let so = r.register(pn(9), own);
    assert_eq!(r.register(pn(9), own), so);
    assert!(
        r.release_dead_pid_locks(pid_alive_os)
            .iter()
            .all(|e| e.pid != own)
    );
}

#[test]
fn release_dead_pids_with_fake_liveness() {
    let r = PidOwnedLockRegistry::new();
    let a = r.register_with_start_time(pn(1), 100, None);
    let _b = r.register_with_start_time(pn(2), 200, None);
    let c = r.register_with_start_time(pn(3), 100, None);
    let mut probed = Vec::new();
    let released = r.release_dead_pid_locks(|pid| {
        probed.push(pid);
        pid != 100
    });
    probed.sort_unstable();
    assert_eq!(probed, vec![100, 200], "each pid is probed once");
    assert_eq!(
        released,
        vec![
            PidOwnedLockEntry {
                page: pn(1),
                pid: 100,
                sequence: a
            },
            PidOwnedLockEntry {
                page: pn(3),
                pid: 100,
                sequence: c
            }
        ]
    );
    assert_eq!(r.len(), 1);
    assert!(r.release_dead_pid_locks(|_| true).is_empty());
}

#[test]
fn release_probes_outside_the_mutex_and_spares_reregistered_entries() {
    let r = PidOwnedLockRegistry::new();
    r.register_with_start_time(pn(5), 300, None);
    r.register_with_start_time(pn(6), 300, None);
    // The probe re-registers page 5 (it would deadlock if the mutex were held).
    let released = r.release_dead_pid_locks(|pid| {
        assert!(r.deregister(pn(5), pid));
        r.register_with_start_time(pn(5), pid, None);
        false
    });
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].page, pn(6));
    assert_eq!(r.len(), 1);
    assert_eq!(r.snapshot()[0].page, pn(5));
}

#[test]
fn pid_reuse_is_detected_by_start_time() {
    let r = PidOwnedLockRegistry::new();
    let s = r.register_with_start_time(pn(1), 400, Some(1000));
    // Same pid, same start time: alive, kept.
    assert!(
        r.release_dead_pid_locks_with(|_| true, |_| Some(1000))
            .is_empty()
    );
    // Unknown start time now: cannot tell, kept.
    assert!(r.release_dead_pid_locks_with(|_| true, |_| None).is_empty());
    // Same pid, another start time: the owner died and the pid was reused.
    let rel = r.release_dead_pid_locks_with(|_| true, |_| Some(2000));
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].sequence, s);
    // Registering over a stale entry with a new start time replaces it.
    let s1 = r.register_with_start_time(pn(2), 401, Some(10));
    assert_eq!(r.register_with_start_time(pn(2), 401, Some(10)), s1);
    assert_eq!(r.register_with_start_time(pn(2), 401, None), s1);
    let s2 = r.register_with_start_time(pn(2), 401, Some(11));
    assert_ne!(s1, s2);
    assert_eq!(r.len(), 1);
}

fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

#[test]
fn pid_alive_os_basics() {
    assert!(!pid_alive_os(0));
    assert!(pid_alive_os(std::process::id()));
    assert!(!pid_alive_os(u32::MAX));
    assert!(!pid_alive_os(FAKE_PID));
    assert!(pid_alive_os(1), "init exists (EPERM or Ok both mean alive)");
    assert!(pid_start_time(std::process::id()).is_some());
    assert_eq!(pid_start_time(0), None);
    assert_eq!(pid_start_time(FAKE_PID), None);
}

#[test]
fn live_child_is_alive_and_zombie_is_dead() {
    let mut live = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let live_pid = live.id();
    assert!(pid_alive_os(live_pid));
    assert!(pid_start_time(live_pid).is_some());

    let mut z = std::process::Command::new("true").spawn().unwrap();
    let zpid = z.id();
    let t = Instant::now();
    while proc_state(zpid) != Some('Z') {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "child never became a zombie"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!pid_alive_os(zpid), "a zombie is dead");

    let r = PidOwnedLockRegistry::new();
    r.register(pn(1), live_pid);
    r.register(pn(2), zpid);
    let rel = r.release_dead_pid_locks(pid_alive_os);
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].pid, zpid);

    z.wait().unwrap();
    assert!(!pid_alive_os(zpid), "a reaped child is gone");
    live.kill().unwrap();
    live.wait().unwrap();
    assert!(!pid_alive_os(live_pid));
    assert_eq!(r.release_dead_pid_locks(pid_alive_os).len(), 1);
}

#[test]
fn persisted_registry_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks");
    let r = PidOwnedLockRegistry::new();
    let seq7 = r.register_with_start_time(pn(7), 500, Some(42));
    let seq8 = r.register_with_start_time(pn(8), 501, None);
    r.deregister(pn(8), 501);
    let seq9 = r.register_with_start_time(pn(9), 502, None);
    r.save_to(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with(PID_REGISTRY_FILE_MAGIC));
    let l = PidOwnedLockRegistry::load_from(&path).unwrap();
    assert_eq!(l.snapshot(), r.snapshot());
    assert_eq!(l.register_with_start_time(pn(7), 500, Some(42)), seq7);
    assert!(l.register_with_start_time(pn(1), 1, None) > seq9.max(seq8));
    // Start times survive: a reused pid is detected after loading.
    assert_eq!(
        l.release_dead_pid_locks_with(|_| true, |p| (p == 500).then_some(43))
            .len(),
        1
    );
    // A loaded registry releases a dead owner's entries.
    let l = PidOwnedLockRegistry::load_from(&path).unwrap();
    assert_eq!(l.release_dead_pid_locks(|p| p != 502).len(), 1);
    // Empty registries round-trip too.
    PidOwnedLockRegistry::new().save_to(&path).unwrap();
    assert!(PidOwnedLockRegistry::load_from(&path).unwrap().is_empty());
    assert!(
        !dir.path()
            .join(format!("locks.tmp-{}", std::process::id()))
            .exists()
    );
}

#[test]
fn damaged_registry_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locks");
    let r = PidOwnedLockRegistry::new();
    for i in 1..=5 {
        r.register_with_start_time(pn(i), 600 + i, Some(u64::from(i)));
    }
    r.save_to(&path).unwrap();
    let good = std::fs::read(&path).unwrap();
    // Every single-byte change and every truncation is refused.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad).unwrap();
        let e = PidOwnedLockRegistry::load_from(&path).err();
        assert!(
            matches!(e, Some(FrankenError::CannotOpen { .. })),
            "byte {i}: {e:?}"
        );
    }
    for len in 0..good.len() {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(PidOwnedLockRegistry::load_from(&path).is_err(), "len {len}");
    }
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    assert!(PidOwnedLockRegistry::load_from(&path).is_err());
    // Well-formed checksum over a bad body: rejected by the field checks.
    for body in [
        "fsqlite-pid-lock-registry 2\nnext_sequence 3\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 0\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 3\nentry 0 5 1 -\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 3\nentry 1 5 3 -\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 3\nentry 1 5 1 -\nentry 1 5 2 -\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 3\nentry 1 5 1\n",
        "fsqlite-pid-lock-registry 1\nnext_sequence 3\nentry 1 5 1 - x\n",
    ] {
        let sum = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
        let text = format!("{body}checksum {sum:016x}\n");
        let e = PidOwnedLockRegistry::from_text(&text, &path).err();
        assert!(
            matches!(e, Some(FrankenError::CannotOpen { .. })),
            "{body:?}: {e:?}"
        );
    }
    let e = PidOwnedLockRegistry::load_from(dir.path().join("missing")).err();
    assert!(matches!(e, Some(FrankenError::Io { .. })));
}

// ---------------------------------------------------------------- verification

const PS: usize = 4096;

/// A database of `n` pages with seeds 1..=n, and the whole-page digests.
fn db_with_pages(n: u32) -> (VecFile, Vec<ExpectedPageChecksum>) {
    let mut data = Vec::new();
    let mut exp = Vec::new();
    for p in 1..=n {
        let img = page_image(p, PS);
        exp.push(ExpectedPageChecksum {
            page: pn(p),
            checksum: page_digest(&img),
        });
        data.extend_from_slice(&img);
    }
    (VecFile::with_data(data), exp)
}

#[test]
fn verify_match_mismatch_and_all_bad_pages() {
    let cx = Cx::new();
    let (f, exp) = db_with_pages(10);
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &exp).unwrap(),
        CheckpointChecksumVerdict::Match
    );
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &[]).unwrap(),
        CheckpointChecksumVerdict::Match
    );
    // Adjacent pages are read with one read.
    f.clear_log();
    verify_checkpoint_pages(&cx, &f, PS as u32, &exp, PageVerifyMode::WholePage).unwrap();
    assert_eq!(f.ops().len(), 1);
    // Damage pages 4 and 9.
    let mut d = f.data();
    d[3 * PS + 100] ^= 1;
    d[8 * PS] ^= 0x80;
    f.set_data(d);
    // Unsorted input: the verdict still names the lowest bad page.
    let mut shuffled = exp.clone();
    shuffled.reverse();
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &shuffled).unwrap(),
        CheckpointChecksumVerdict::Mismatch {
            first_bad_page: pn(4)
        }
    );
    let rep =
        verify_checkpoint_pages(&cx, &f, PS as u32, &shuffled, PageVerifyMode::WholePage).unwrap();
    assert_eq!(
        rep.bad_pages,
        vec![
            BadPage {
                page: pn(4),
                reason: BadPageReason::Digest
            },
            BadPage {
                page: pn(9),
                reason: BadPageReason::Digest
            }
        ]
    );
    assert_eq!(rep.pages_checked, 10);
    assert!(rep.describe_bad_pages().contains("page 4"));
}

#[test]
fn verify_reads_non_adjacent_pages_separately_and_short_reads_mismatch() {
    let cx = Cx::new();
    let (f, exp) = db_with_pages(6);
    let pick = [exp[0], exp[2], exp[3], exp[5]];
    f.clear_log();
    let rep = verify_checkpoint_pages(&cx, &f, PS as u32, &pick, PageVerifyMode::Auto).unwrap();
    assert!(rep.is_match());
    assert_eq!(rep.reads, 3); // {1}, {3,4}, {6}
    assert_eq!(
        f.ops(),
        vec![
            Op::Read { offset: 0, len: PS },
            Op::Read {
                offset: 2 * PS as u64,
                len: 2 * PS
            },
            Op::Read {
                offset: 5 * PS as u64,
                len: PS
            },
        ]
    );
    // The file lost its last page and a half.
    let mut d = f.data();
    d.truncate(4 * PS + PS / 2);
    f.set_data(d);
    let rep = verify_checkpoint_pages(&cx, &f, PS as u32, &exp, PageVerifyMode::Auto).unwrap();
    assert_eq!(
        rep.bad_pages
            .iter()
            .map(|b| (b.page.get(), b.reason))
            .collect::<Vec<_>>(),
        vec![(5, BadPageReason::ShortRead), (6, BadPageReason::ShortRead)]
    );
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &exp).unwrap(),
        CheckpointChecksumVerdict::Mismatch {
            first_bad_page: pn(5)
        }
    );
    assert!(verify_checkpoint_checksum_prefix(&cx, &f, 1000, &exp).is_err());
}

#[test]
fn trailer_mode_catches_a_torn_page_whose_trailer_survived() {
    let cx = Cx::new();
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    for p in 1..=3u32 {
        let mut img = page_image(p + 100, PS);
        let t = write_page_checksum(&mut img).unwrap();
        trailers.push(ExpectedPageChecksum {
            page: pn(p),
            checksum: t,
        });
        data.extend_from_slice(&img);
    }
    let f = VecFile::with_data(data.clone());
    for mode in [PageVerifyMode::Trailer, PageVerifyMode::Auto] {
        assert!(
            verify_checkpoint_pages(&cx, &f, PS as u32, &trailers, mode)
                .unwrap()
                .is_match()
        );
    }
    // Whole-page mode with trailer values: nothing matches.
    let rep =
        verify_checkpoint_pages(&cx, &f, PS as u32, &trailers, PageVerifyMode::WholePage).unwrap();
    assert_eq!(rep.bad_pages.len(), 3);
    // Tear page 2: its first sector is from an older image, the trailer is intact.
    let mut torn = data.clone();
    torn[PS..PS + 512].copy_from_slice(&page_image(7, 512));
    f.set_data(torn);
    for mode in [PageVerifyMode::Trailer, PageVerifyMode::Auto] {
        let rep = verify_checkpoint_pages(&cx, &f, PS as u32, &trailers, mode).unwrap();
        assert_eq!(
            rep.bad_pages,
            vec![BadPage {
                page: pn(2),
                reason: BadPageReason::TornPayload
            }],
            "{mode:?}"
        );
    }
    // A different, self-consistent page: the trailer differs.
    let mut other = data;
    let mut img = page_image(999, PS);
    write_page_checksum(&mut img).unwrap();
    other[2 * PS..].copy_from_slice(&img);
    f.set_data(other);
    let rep =
        verify_checkpoint_pages(&cx, &f, PS as u32, &trailers, PageVerifyMode::Trailer).unwrap();
    assert_eq!(rep.bad_pages[0].reason, BadPageReason::Trailer);
    assert_eq!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &trailers).unwrap(),
        CheckpointChecksumVerdict::Mismatch {
            first_bad_page: pn(3)
        }
    );
}

#[test]
fn recovery_barrier_syncs_first_then_verifies() {
    let cx = Cx::new();
    let (f, exp) = db_with_pages(4);
    f.clear_log();
    let mut target = RecordingTarget {
        log: f.log.clone(),
        ..RecordingTarget::default()
    };
    execute_recovery_barrier(&cx, &mut target, &f, PS as u32, &exp).unwrap();
    let ops = f.ops();
    assert_eq!(ops[0], Op::TargetSync);
    assert!(ops[1..].iter().all(|o| matches!(o, Op::Read { .. })));
    assert_eq!(ops.len(), 2);

    // A sync error stops before any read and is returned.
    f.clear_log();
    target.fail_sync = true;
    let e = execute_recovery_barrier(&cx, &mut target, &f, PS as u32, &exp).unwrap_err();
    assert!(matches!(e, FrankenError::Io { .. }));
    assert_eq!(f.ops(), vec![Op::TargetSync]);

    // A mismatch is DatabaseCorrupt naming the pages.
    target.fail_sync = false;
    let mut d = f.data();
    d[2 * PS + 5] ^= 0xff;
    f.set_data(d);
    let e = execute_recovery_barrier(&cx, &mut target, &f, PS as u32, &exp).unwrap_err();
    match e {
        FrankenError::DatabaseCorrupt { detail } => {
            assert!(detail.contains("page 3"), "{detail}");
            assert!(detail.contains("WAL was left intact"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    let rep = execute_recovery_barrier_with(
        &cx,
        &mut target,
        &f,
        PS as u32,
        &exp[..2],
        PageVerifyMode::WholePage,
    )
    .unwrap();
    assert_eq!(rep.pages_checked, 2);
}

#[test]
fn verification_stops_when_cancelled() {
    let (f, exp) = db_with_pages(2);
    let cx = Cx::new();
    cx.cancel();
    assert!(matches!(
        verify_checkpoint_checksum_prefix(&cx, &f, PS as u32, &exp),
        Err(FrankenError::Interrupted)
    ));
}
