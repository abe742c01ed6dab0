//! Several coordinators on one database inside one process: open-file-description locks
//! make each one a member exactly as a separate process would be (own descriptors, own
//! locks), so the join path, cross-member validation and the settings check run here
//! without spawning processes (the real-process tests are in `multiprocess.rs`).

mod bank_common;
mod common;

use std::sync::Arc;
use std::time::Duration;

use fsqlite_error::FrankenError;
use fsqlite_mvcc::{Coordinator, CoordinatorOptions, LegacyWriters};
use fsqlite_testkit::bank::{self, BankOptions};
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;

fn opts(mode: LegacyWriters) -> CoordinatorOptions {
    CoordinatorOptions {
        legacy_writers: mode,
        ..common::options()
    }
}

fn open(db: &std::path::Path, mode: LegacyWriters) -> fsqlite_error::Result<Coordinator<UnixVfs>> {
    Coordinator::open(&Cx::new(), Arc::new(UnixVfs::new()), db, opts(mode))
}

#[test]
fn members_validate_against_each_other() {
    for mode in [LegacyWriters::Excluded, LegacyWriters::Admitted] {
        let dir = tempfile::tempdir().unwrap();
        let bk = bank::create(
            &dir.path().join("bank.db"),
            &BankOptions {
                accounts: 16,
                ..BankOptions::default()
            },
        )
        .unwrap();
        let members: Vec<Coordinator<UnixVfs>> =
            (0..3).map(|_| open(&bk.path, mode).unwrap()).collect();
        assert!(!members[0].takeover().unwrap().joined);
        assert!(members[1..].iter().all(|m| m.takeover().unwrap().joined));
        let accounts = bank_common::accounts(&bk.path);
        let log_path = dir.path().join("acks.log");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&log_path)
            .unwrap();
        // Few accounts, three members of two threads: many cross-member conflicts.
        std::thread::scope(|s| {
            for (m, coord) in members.iter().enumerate() {
                let (accounts, log) = (&accounts, &log);
                s.spawn(move || {
                    bank_common::transfer_threads(
                        coord,
                        accounts,
                        16,
                        2,
                        0x6d65_6d62 ^ m as u64,
                        m as u64,
                        Duration::from_millis(600),
                        log,
                    );
                });
            }
        });
        let conflicts: u64 = members.iter().map(|m| m.stats().conflicts).sum();
        let cx = Cx::new();
        for m in members {
            m.close(&cx).unwrap();
        }
        let acks = bank_common::read_acks(&log_path);
        assert!(acks.len() > 50, "{mode:?}: {} transfers", acks.len());
        assert!(
            conflicts > 0,
            "{mode:?}: no conflict among members on 16 accounts"
        );
        bank_common::check_books(&bk.path, &acks, 16, bk.total(), &format!("{mode:?}"));
    }
}

#[test]
fn a_member_with_the_other_setting_is_refused_clearly() {
    for (first, second) in [
        (LegacyWriters::Excluded, LegacyWriters::Admitted),
        (LegacyWriters::Admitted, LegacyWriters::Excluded),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = common::make_db(dir.path(), "mix.db");
        let a = open(&db, first).unwrap();
        let e = open(&db, second).unwrap_err();
        assert!(matches!(e, FrankenError::CannotOpen { .. }), "{e:?}");
        let m = e.to_string();
        assert!(m.contains("legacy_writers"), "{m}");
        // The member that is there goes on writing.
        let cx = Cx::new();
        let size = a.db_size(&cx).unwrap();
        let mut page = vec![0u8; common::PAGE_SIZE];
        a.read_page(&cx, PageNumber::new(1).unwrap(), &mut page)
            .unwrap();
        a.commit(&cx, &[(PageNumber::new(1).unwrap(), &page)], size)
            .unwrap();
        a.close(&cx).unwrap();
        // Once it is gone, the other setting opens (it is the first member then).
        let b = open(&db, second).unwrap();
        assert!(!b.takeover().unwrap().joined);
        b.close(&cx).unwrap();
    }
}

/// Regression (found by the concurrent kill -9 soak): members opening at the same moment
/// could each hold SHARED on the record file while asking for EXCLUSIVE, so every one was
/// refused and joined, and none took over. Now exactly one takes over, every time.
#[test]
fn members_opening_at_once_elect_exactly_one() {
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        let db = common::make_db(dir.path(), "race.db");
        let barrier = std::sync::Barrier::new(4);
        let joined: Vec<bool> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let (db, barrier) = (&db, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let m = open(db, LegacyWriters::Excluded).unwrap();
                        let joined = m.takeover().unwrap().joined;
                        // Stay a member until every one has opened.
                        barrier.wait();
                        m.close(&Cx::new()).unwrap();
                        joined
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            joined.iter().filter(|j| !**j).count(),
            1,
            "round {round}: who joined {joined:?}"
        );
    }
}
