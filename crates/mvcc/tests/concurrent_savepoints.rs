//! Savepoints inside a `BEGIN CONCURRENT` transaction, against a model: nested savepoints,
//! `rollback_to` restores exactly the pages written since (the savepoint stays open),
//! `release` keeps the writes and merges the undo images into the enclosing savepoint;
//! what commits is exactly the model's final write set; undo images count against
//! `max_txn_pages`.
mod common;

use std::collections::BTreeMap;

use fsqlite_mvcc::{CoordinatorOptions, Savepoint};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber};

const PS: usize = common::PAGE_SIZE;

fn image(v: u64) -> Vec<u8> {
    let mut b = vec![0u8; PS];
    b[..8].copy_from_slice(&v.to_le_bytes());
    b[PS - 8..].copy_from_slice(&v.to_le_bytes());
    b
}

fn value(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().unwrap())
}

#[test]
fn nested_savepoints_match_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "sp.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let pages: Vec<PageNumber> = (1..=6)
        .map(|k| PageNumber::new(base + k).unwrap())
        .collect();
    let size = base + 6;
    for seed in 0..12u64 {
        let mut rng = Rng::new(0x5a7e_0000 + seed);
        // The committed state before this transaction (a page never written reads 0).
        let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
        let mut buf = vec![0u8; PS];
        for p in &pages {
            coord.read_page(&cx, *p, &mut buf).unwrap();
            committed.insert(p.get(), value(&buf));
        }
        let mut txn = coord.begin_concurrent(&cx).unwrap();
        // Model: the transaction's view, and one saved view per open savepoint.
        let mut view = committed.clone();
        let mut stack: Vec<(Savepoint, BTreeMap<u32, u64>)> = Vec::new();
        for step in 0..120u64 {
            match rng.below(10) {
                0..=4 => {
                    let p = pages[rng.below(pages.len() as u64) as usize];
                    let v = seed * 1_000_000 + step + 1;
                    txn.write_page(&cx, p, &image(v)).unwrap();
                    view.insert(p.get(), v);
                }
                5 | 6 => {
                    let sp = txn.savepoint();
                    assert_eq!(sp.depth(), stack.len() + 1);
                    stack.push((sp, view.clone()));
                }
                7 | 8 if !stack.is_empty() => {
                    let k = rng.below(stack.len() as u64) as usize;
                    let (sp, saved) = stack[k].clone();
                    txn.rollback_to(sp).unwrap();
                    stack.truncate(k + 1);
                    view = saved;
                }
                9 if !stack.is_empty() => {
                    let k = rng.below(stack.len() as u64) as usize;
                    let (sp, _) = stack[k];
                    txn.release(sp).unwrap();
                    stack.truncate(k);
                    // A released savepoint is gone.
                    assert!(txn.rollback_to(sp).is_err() || stack.len() >= sp.depth());
                }
                _ => {}
            }
            // The transaction reads its model view at every step.
            let p = pages[rng.below(pages.len() as u64) as usize];
            txn.read_page(&cx, p, &mut buf).unwrap();
            assert_eq!(
                value(&buf),
                view[&p.get()],
                "seed {seed} step {step} page {p}"
            );
        }
        let written = view.iter().filter(|(p, v)| committed[p] != **v).count();
        assert!(txn.pages_written() >= written);
        txn.commit(&cx, size).unwrap();
        for p in &pages {
            coord.read_page(&cx, *p, &mut buf).unwrap();
            assert_eq!(
                value(&buf),
                view[&p.get()],
                "seed {seed}: committed page {p}"
            );
        }
    }
    coord.close(&cx).unwrap();
}

#[test]
fn rollback_to_undoes_only_writes_since_and_keeps_the_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "sp2.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let (p, q) = (
        PageNumber::new(base + 1).unwrap(),
        PageNumber::new(base + 2).unwrap(),
    );
    let mut buf = vec![0u8; PS];
    let mut txn = coord.begin_concurrent(&cx).unwrap();
    txn.write_page(&cx, p, &image(1)).unwrap();
    let outer = txn.savepoint();
    txn.write_page(&cx, p, &image(2)).unwrap();
    let inner = txn.savepoint();
    txn.write_page(&cx, q, &image(3)).unwrap();
    txn.rollback_to(inner).unwrap();
    assert_eq!(txn.pages_written(), 1, "q is no longer written");
    txn.read_page(&cx, p, &mut buf).unwrap();
    assert_eq!(value(&buf), 2);
    // The savepoint is still open after ROLLBACK TO: write again and roll back again.
    txn.write_page(&cx, q, &image(4)).unwrap();
    txn.rollback_to(inner).unwrap();
    assert_eq!(txn.pages_written(), 1);
    txn.release(outer).unwrap();
    assert!(txn.rollback_to(inner).is_err(), "released with its parent");
    let e = txn.rollback_to(outer).unwrap_err();
    assert!(e.to_string().contains("savepoint"), "{e}");
    txn.commit(&cx, base + 2).unwrap();
    coord.read_page(&cx, p, &mut buf).unwrap();
    assert_eq!(value(&buf), 2, "release kept the writes");
    coord.close(&cx).unwrap();
}

#[test]
fn undo_images_count_against_max_txn_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "sp3.db");
    let opts = CoordinatorOptions {
        max_txn_pages: 3,
        ..common::options()
    };
    let coord = common::open(&db, opts).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let pg = |k: u32| PageNumber::new(base + k).unwrap();
    let mut txn = coord.begin_concurrent(&cx).unwrap();
    txn.write_page(&cx, pg(1), &image(1)).unwrap();
    txn.write_page(&cx, pg(2), &image(1)).unwrap();
    let sp = txn.savepoint();
    // Overwriting page 1 inside the savepoint keeps its old image: 3 images in all.
    txn.write_page(&cx, pg(1), &image(2)).unwrap();
    // Overwriting page 2 would need a fourth.
    let e = txn.write_page(&cx, pg(2), &image(2)).unwrap_err();
    assert!(e.to_string().contains("max_txn_pages"), "{e}");
    // Rewriting page 1 again at the same level needs no new image.
    txn.write_page(&cx, pg(1), &image(3)).unwrap();
    txn.release(sp).unwrap();
    // The undo image is gone after the release: a third page fits now.
    txn.write_page(&cx, pg(3), &image(1)).unwrap();
    txn.commit(&cx, base + 3).unwrap();
    coord.close(&cx).unwrap();
}
