//! A live stock SQLite reader in another process (python3 `sqlite3`,
//! `fsqlite_testkit::process::LiveSqlite`) reads a bank (`fsqlite_testkit::bank`) over and
//! over while 8 threads of this process run `BEGIN CONCURRENT` transfers through one
//! [`Coordinator`] for about 2 s.
//!
//! Every read is one statement, so one SQLite read snapshot:
//! `SELECT count(*), sum(balance), sum(stamp sequence) FROM acct` ([`bank::BOOKS_SQL`]).
//! Each transfer moves money between two accounts and bumps both accounts' sequence
//! numbers, so `sum(sequence) / 2` is the number of transfers the reader's snapshot
//! contains. The reader must
//! 1. always see the books balanced (the account count and the total never change: a
//!    snapshot holding half a transfer would show it);
//! 2. never see the commit count go backwards (snapshots only move forward in commit
//!    order, across group-commit batches);
//! 3. pass `PRAGMA integrity_check` every few reads;
//! 4. see, after the writers stop, exactly the commits the coordinator acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, BankOptions, Stamp};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;

const ACCOUNTS: u32 = 32;
const THREADS: u64 = 8;
const RUN_FOR: Duration = Duration::from_secs(2);
/// `PRAGMA integrity_check` on every this-many reads.
const CHECK_EVERY: u64 = 5;

/// `(accounts, total, sequence sum)` of one reader snapshot.
fn read_books(reader: &mut LiveSqlite) -> (i64, i64, i64) {
    loop {
        let r = reader.query(bank::BOOKS_SQL).unwrap();
        if r.is_locked() {
            // A reader may meet a busy lock for a moment (e.g. while it rebuilds the
            // index); it must never see wrong data.
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let rows = r.into_rows().unwrap();
        let v = |i: usize| rows[0][i].as_i64().unwrap_or_else(|| panic!("{rows:?}"));
        return (v(0), v(1), v(2));
    }
}

#[test]
fn live_sqlite_reader_during_concurrent_writers() {
    let dir = tempfile::tempdir().unwrap();
    let bk = bank::create(
        &dir.path().join("bank.db"),
        &BankOptions {
            accounts: ACCOUNTS,
            ..BankOptions::default()
        },
    )
    .unwrap();
    let cx = Cx::new();
    let opts = CoordinatorOptions {
        probe_timeout: Duration::from_millis(500),
        kill_at: None,
        ..CoordinatorOptions::default()
    };
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &bk.path, opts).unwrap();
    assert_eq!(
        coord.mode(),
        CompatMode::HybridShm,
        "{}",
        coord.mode_reason()
    );
    let mut reader = LiveSqlite::spawn(
        &bk.path,
        LiveOptions {
            busy_timeout: Duration::from_secs(5),
            ..LiveOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        read_books(&mut reader),
        (i64::from(ACCOUNTS), bk.total(), 0)
    );
    let stop = AtomicBool::new(false);
    let acked = AtomicU64::new(0);
    let ps = bk.page_size as usize;
    let mut reads = 0u64;
    let mut checks = 0u64;
    let mut distinct = 0u64;
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (coord, bk, stop, acked) = (&coord, &bk, &stop, &acked);
            s.spawn(move || {
                let cx = Cx::new();
                let mut rng = Rng::new(0x11fe ^ t);
                let mut bufs = [vec![0u8; ps], vec![0u8; ps]];
                while !stop.load(Ordering::Relaxed) {
                    let from = rng.range(1, u64::from(ACCOUNTS) + 1) as i64;
                    let to = (from - 1 + rng.range(1, u64::from(ACCOUNTS)) as i64)
                        % i64::from(ACCOUNTS)
                        + 1;
                    let amount = rng.range(1, 100) as i64;
                    let pages = [
                        bk.accounts.page(from).unwrap(),
                        bk.accounts.page(to).unwrap(),
                    ];
                    loop {
                        let mut txn = coord.begin_concurrent(&cx).unwrap();
                        for (i, buf) in bufs.iter_mut().enumerate() {
                            txn.read_page(&cx, pages[i], buf).unwrap();
                            let delta = if i == 0 { -amount } else { amount };
                            let bal = bank::read_balance(buf).unwrap() + delta;
                            let seq = bank::read_stamp(buf).unwrap().seq + 1;
                            bank::write_balance(buf, bal).unwrap();
                            bank::write_stamp(buf, Stamp { seq, txn: t }).unwrap();
                            txn.write_page(&cx, pages[i], buf).unwrap();
                        }
                        let size = txn.db_size();
                        match txn.commit(&cx, size) {
                            Ok(_) => {
                                acked.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Err(e) if e.extended_code() == 517 => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
        // The reader, on this thread, until the time is up.
        let mut last = 0i64;
        while started.elapsed() < RUN_FOR {
            let (n, total, writes) = read_books(&mut reader);
            reads += 1;
            assert_eq!(
                (n, total),
                (i64::from(ACCOUNTS), bk.total()),
                "read {reads}: the live reader sees the books unbalanced"
            );
            assert_eq!(
                writes % 2,
                0,
                "read {reads}: half a transfer ({writes} bumps)"
            );
            assert!(
                writes >= last,
                "read {reads}: the commit count went backwards: {} after {}",
                writes / 2,
                last / 2
            );
            if writes > last {
                distinct += 1;
            }
            last = writes;
            if reads.is_multiple_of(CHECK_EVERY) {
                let ic = reader.exec_ok("PRAGMA integrity_check").unwrap();
                assert_eq!(ic[0][0].as_str(), Some("ok"), "read {reads}: {ic:?}");
                checks += 1;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let acked = acked.load(Ordering::Relaxed);
    let (n, total, writes) = read_books(&mut reader);
    assert_eq!((n, total), (i64::from(ACCOUNTS), bk.total()));
    assert_eq!(
        writes,
        2 * acked as i64,
        "the reader sees every acknowledged transfer"
    );
    let st = coord.stats();
    assert_eq!(st.commits, acked);
    eprintln!(
        "{acked} transfers in {:?} ({st:?}); the live reader made {reads} reads ({distinct} \
         saw new commits), {checks} integrity checks",
        started.elapsed()
    );
    assert!(distinct >= 2, "the reader never saw the writers progress");
    reader.exit().unwrap();
    coord.close(&cx).unwrap();
    bank::books(&bk.path)
        .unwrap()
        .check(i64::from(ACCOUNTS), bk.total())
        .unwrap();
}
