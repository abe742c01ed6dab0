//! Readers keep their snapshots (FORMAT.md §6, the read-mark protocol, end to end through
//! `Wal`): on `MemoryVfs`, a writer connection and two reader connections (separate
//! handles: separate "processes" for the VFS's locks and `-shm`) run a seeded random
//! schedule of commits, checkpoints in every mode (busy timeout 5 ms), WAL restarts and
//! read transactions that stay open across many of them.
//!
//! Checked at every step: each open read transaction still reads exactly the model state
//! it started on (size and every page), so no checkpoint ever overwrote a page of the
//! database file that a live snapshot reads from there, and no restart reused frames it
//! still needs; a new read on the writer sees the newest commit; checkpoint outcomes are
//! consistent (`checkpointed <= log`, busy only while a reader holds an older snapshot
//! for FULL/RESTART/TRUNCATE, TRUNCATE leaves a 0-byte WAL when not busy).

mod conn_model;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conn_model::{State, content};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::MemoryVfs;
use fsqlite_wal::{CheckpointMode, ReadTxn, SyncMode, Wal, WalOptions};

const PS: u32 = 512;

fn opts() -> WalOptions {
    WalOptions {
        sync: SyncMode::Full,
        page_size: PS,
        busy_timeout: Duration::from_millis(5),
        auto_checkpoint: None,
        checkpoint_on_close: false,
    }
}

fn check_snapshot(cx: &Cx, r: &ReadTxn<'_, MemoryVfs>, s: &State, what: &str) {
    assert_eq!(r.db_size(), s.db_size, "{what}: snapshot size");
    let mut buf = vec![0u8; PS as usize];
    for p in 1..=s.db_size {
        r.read_page(cx, PageNumber::new(p).unwrap(), &mut buf)
            .unwrap();
        let txn = s.pages[&p];
        assert!(
            buf == content(PS, p, txn),
            "{what}: page {p} is not commit {txn}'s version"
        );
    }
}

fn schedule(seed: u64, steps: u32) -> (u32, u32, u32) {
    let cx = Cx::new();
    let vfs = Arc::new(MemoryVfs::with_seed(seed));
    let db = format!("/snap{seed}/db");
    let mut rng = Rng::new(seed);
    let mut w = Wal::open(&cx, Arc::clone(&vfs), &db, opts()).unwrap();
    let mut r1 = Wal::open(&cx, Arc::clone(&vfs), &db, opts()).unwrap();
    let mut r2 = Wal::open(&cx, Arc::clone(&vfs), &db, opts()).unwrap();
    let mut states = vec![State::default()];
    let mut t1: Option<(ReadTxn<'_, MemoryVfs>, usize)> = None;
    let mut t2: Option<(ReadTxn<'_, MemoryVfs>, usize)> = None;
    let (mut busy, mut checkpoints, mut reads) = (0u32, 0u32, 0u32);
    for step in 0..steps {
        let what = format!("seed {seed:#x} step {step}");
        match rng.below(10) {
            0..=3 => {
                // Commit: grow, shrink or rewrite.
                let cur = states.last().unwrap().clone();
                let txn = states.len() as u32;
                let size = match rng.below(6) {
                    0 if cur.db_size > 2 => cur.db_size - 1,
                    1..=2 => cur.db_size + 1 + rng.below(3) as u32,
                    _ => cur.db_size.max(1),
                };
                let mut next = cur.clone();
                next.db_size = size;
                next.pages.retain(|p, _| *p <= size);
                let mut pages: Vec<u32> = (cur.db_size.min(size) + 1..=size).collect();
                for _ in 0..=rng.below(4) {
                    pages.push(1 + rng.below(u64::from(size)) as u32);
                }
                if txn == 1 {
                    pages.push(1);
                }
                pages.sort_unstable();
                pages.dedup();
                let mut t = w.begin_write(&cx).unwrap();
                for &p in &pages {
                    t.write_page(&cx, PageNumber::new(p).unwrap(), &content(PS, p, txn))
                        .unwrap();
                    next.pages.insert(p, txn);
                }
                t.commit(&cx, size).unwrap();
                states.push(next);
                let r = w.begin_read(&cx).unwrap();
                check_snapshot(&cx, &r, states.last().unwrap(), &format!("{what}: writer"));
            }
            4..=5 => {
                let mode = CheckpointMode::ALL[rng.below(4) as usize];
                let o = w.checkpoint(&cx, mode).unwrap();
                checkpoints += 1;
                assert!(o.checkpointed_frames <= o.log_frames, "{what}: {o:?}");
                let newest = states.len() - 1;
                let old_reader = [&t1, &t2]
                    .iter()
                    .any(|t| t.as_ref().is_some_and(|(_, s)| *s < newest));
                let any_reader = t1.is_some() || t2.is_some();
                if o.busy {
                    busy += 1;
                    // FULL waits for readers of older snapshots; RESTART and TRUNCATE
                    // also for current readers of the WAL (READ_LOCK(1..4)).
                    let explained = match mode {
                        CheckpointMode::Passive => false,
                        CheckpointMode::Full => old_reader,
                        CheckpointMode::Restart | CheckpointMode::Truncate => any_reader,
                    };
                    assert!(
                        explained,
                        "{what}: {mode:?} busy without a reader in its way: {o:?}"
                    );
                } else if mode == CheckpointMode::Truncate {
                    assert_eq!((o.log_frames, o.checkpointed_frames), (0, 0), "{what}");
                    let wal = vfs
                        .live_contents(Path::new(&format!("{db}-wal")))
                        .unwrap_or_default();
                    assert!(wal.is_empty(), "{what}: TRUNCATE left {} bytes", wal.len());
                }
            }
            6..=7 => {
                // Reader 1 starts (or restarts) a read on the newest state.
                drop(t1);
                reads += 1;
                t1 = Some((r1.begin_read(&cx).unwrap(), states.len() - 1));
            }
            8 => {
                drop(t2);
                reads += 1;
                t2 = Some((r2.begin_read(&cx).unwrap(), states.len() - 1));
            }
            _ => {
                if rng.chance(0.5) {
                    t1 = None;
                } else {
                    t2 = None;
                }
            }
        }
        for (name, t) in [("reader 1", &t1), ("reader 2", &t2)] {
            if let Some((r, s)) = t {
                check_snapshot(&cx, r, &states[*s], &format!("{what}: {name} (state {s})"));
            }
        }
    }
    drop(t1);
    drop(t2);
    (busy, checkpoints, reads)
}

#[test]
fn readers_keep_their_snapshots_through_checkpoints_and_restarts() {
    let mut totals = (0, 0, 0);
    for seed in 1..=12u64 {
        let (b, c, r) = schedule(0x5A9_0000 + seed, 150);
        totals = (totals.0 + b, totals.1 + c, totals.2 + r);
    }
    println!(
        "{} checkpoints ({} busy), {} read transactions checked at every step",
        totals.1, totals.0, totals.2
    );
    assert!(
        totals.0 > 0,
        "the schedule never made a checkpoint wait for a reader"
    );
}
