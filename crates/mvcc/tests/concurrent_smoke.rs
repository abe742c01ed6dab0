//! Smoke test of BEGIN CONCURRENT on real files: threads on disjoint pages all commit,
//! a hot page loses updates to nobody (conflicts are retried), group commit batches.
mod common;

use fsqlite_types::{Cx, PageNumber};

const PS: usize = common::PAGE_SIZE;

fn counter(buf: &[u8]) -> u64 {
    u64::from_le_bytes(buf[100..108].try_into().unwrap())
}

#[test]
fn disjoint_and_hot_pages() {
    let dir = tempfile::tempdir().unwrap();
    let db = common::make_db(dir.path(), "smoke.db");
    let coord = common::open(&db, common::options()).unwrap();
    let cx = Cx::new();
    let base = coord.db_size(&cx).unwrap();
    let threads = 8u32;
    let per = 40u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let coord = &coord;
            s.spawn(move || {
                let cx = Cx::new();
                let own = PageNumber::new(base + 1 + t).unwrap();
                let hot = PageNumber::new(base + 1 + threads).unwrap();
                let mut buf = vec![0u8; PS];
                for _ in 0..per {
                    loop {
                        let mut txn = coord.begin_concurrent(&cx).unwrap();
                        txn.read_page(&cx, own, &mut buf).unwrap();
                        let c = counter(&buf) + 1;
                        buf[100..108].copy_from_slice(&c.to_le_bytes());
                        txn.write_page(&cx, own, &buf).unwrap();
                        txn.read_page(&cx, hot, &mut buf).unwrap();
                        let c = counter(&buf) + 1;
                        buf[100..108].copy_from_slice(&c.to_le_bytes());
                        txn.write_page(&cx, hot, &buf).unwrap();
                        let size = txn.db_size().max(base + 1 + threads);
                        match txn.commit(&cx, size) {
                            Ok(_) => break,
                            Err(e) if e.extended_code() == 517 => {}
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    let mut buf = vec![0u8; PS];
    for t in 0..threads {
        coord
            .read_page(&cx, PageNumber::new(base + 1 + t).unwrap(), &mut buf)
            .unwrap();
        assert_eq!(counter(&buf), per);
    }
    coord
        .read_page(&cx, PageNumber::new(base + 1 + threads).unwrap(), &mut buf)
        .unwrap();
    assert_eq!(counter(&buf), per * u64::from(threads));
    let st = coord.stats();
    eprintln!("{st:?}");
    assert_eq!(st.commits, per * u64::from(threads));
    assert!(st.batches <= st.commits);
    coord.close(&cx).unwrap();
}
