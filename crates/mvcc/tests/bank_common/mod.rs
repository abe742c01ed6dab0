//! Money transfers between the accounts of a `fsqlite_testkit::bank` through
//! `BEGIN CONCURRENT`, their acknowledgement log, and stock SQLite's verdict on what is
//! left: shared by the kill -9 and the multi-process tests.
//!
//! A transfer reads both account pages from its snapshot, moves the amount, bumps both
//! stamps' sequence numbers, writes its id into both stamps and commits; on
//! SQLITE_BUSY_SNAPSHOT (517) it retries from a fresh snapshot. After `commit` returned
//! `Ok`, one line `T <id> <from> <from_seq> <to> <to_seq> <amount>` goes to the ack log
//! (opened `O_APPEND`, one `write` per line: the page cache keeps it across a kill; a line
//! cut short has no `\n` and is ignored).
#![allow(dead_code)]

use std::io::Write as _;
use std::path::Path;

use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, Accounts, Stamp};
use fsqlite_testkit::rng::Rng;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::{UnixVfs, Vfs};

/// An acknowledged transfer, as logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    pub from: i64,
    pub from_seq: u64,
    pub to: i64,
    pub to_seq: u64,
    pub amount: i64,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut it = line.strip_prefix("T ")?.split(' ');
    let mut next = || it.next()?.parse::<u64>().ok();
    let a = Ack {
        id: next()?,
        from: i64::try_from(next()?).ok()?,
        from_seq: next()?,
        to: i64::try_from(next()?).ok()?,
        to_seq: next()?,
        amount: i64::try_from(next()?).ok()?,
    };
    next().is_none().then_some(a)
}

/// Complete lines of the ack log (the last one may be cut short by a kill).
pub fn read_acks(path: &Path) -> Vec<Ack> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    complete
        .lines()
        .map(|l| parse_ack(l).unwrap_or_else(|| panic!("malformed ack line {l:?}")))
        .collect()
}

/// The accounts' page map, read from SQLite's file (rows never move).
pub fn accounts(db: &Path) -> Accounts {
    let root = fsqlite_testkit::sqlite::query_rows(
        db,
        "SELECT rootpage FROM sqlite_schema WHERE name = 'acct'",
    )
    .unwrap()[0][0]
        .parse()
        .unwrap();
    bank::scan(db, root).unwrap()
}

/// What a bank writer process needs: a hybrid coordinator on `db`, the accounts' page
/// map, and the ack log at `acks` opened for appending.
pub fn open_writer(
    db: &Path,
    options: CoordinatorOptions,
    acks: &Path,
) -> (Coordinator<UnixVfs>, Accounts, std::fs::File) {
    let coord =
        Coordinator::open(&Cx::new(), std::sync::Arc::new(UnixVfs::new()), db, options).unwrap();
    assert_eq!(
        coord.mode(),
        CompatMode::HybridShm,
        "{}",
        coord.mode_reason()
    );
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(acks)
        .unwrap();
    (coord, accounts(db), log)
}

/// One random transfer with id `id` (retried until it commits); logged to `log` once
/// acknowledged. Returns how many conflicts it retried.
pub fn transfer<V: Vfs>(
    coord: &Coordinator<V>,
    accounts: &Accounts,
    n_accounts: u32,
    rng: &mut Rng,
    id: u64,
    log: &std::fs::File,
) -> u64 {
    let cx = Cx::new();
    let ps = coord.page_size() as usize;
    let mut bufs = [vec![0u8; ps], vec![0u8; ps]];
    let from = rng.range(1, u64::from(n_accounts) + 1) as i64;
    let to = (from + rng.range(1, u64::from(n_accounts)) as i64 - 1) % i64::from(n_accounts) + 1;
    let amount = rng.range(1, 100) as i64;
    let pages: [PageNumber; 2] = [accounts.page(from).unwrap(), accounts.page(to).unwrap()];
    let mut retries = 0;
    loop {
        let mut txn = coord.begin_concurrent(&cx).unwrap();
        let mut seqs = [0u64; 2];
        for (i, buf) in bufs.iter_mut().enumerate() {
            txn.read_page(&cx, pages[i], buf).unwrap();
            let delta = if i == 0 { -amount } else { amount };
            let bal = bank::read_balance(buf).unwrap() + delta;
            seqs[i] = bank::read_stamp(buf).unwrap().seq + 1;
            bank::write_balance(buf, bal).unwrap();
            bank::write_stamp(
                buf,
                Stamp {
                    seq: seqs[i],
                    txn: id,
                },
            )
            .unwrap();
            txn.write_page(&cx, pages[i], buf).unwrap();
        }
        let size = txn.db_size();
        match txn.commit(&cx, size) {
            Ok(_) => {
                let line = format!("T {id} {from} {} {to} {} {amount}\n", seqs[0], seqs[1]);
                (&*log).write_all(line.as_bytes()).unwrap();
                return retries;
            }
            Err(e) if e.extended_code() == 517 => retries += 1,
            Err(e) if e.extended_code() == 5 => retries += 1, // the serial section stayed busy
            Err(e) => panic!("transfer {id}: {e}"),
        }
    }
}

/// `threads` threads, each running random transfers (ids `tag << 48 | thread << 40 | k`)
/// until `life` has passed since the call.
#[allow(
    clippy::too_many_arguments,
    reason = "a test helper; each caller passes its own workload"
)]
pub fn transfer_threads<V: Vfs>(
    coord: &Coordinator<V>,
    accounts: &Accounts,
    n_accounts: u32,
    threads: u64,
    seed: u64,
    tag: u64,
    life: std::time::Duration,
    log: &std::fs::File,
) {
    let start = std::time::Instant::now();
    transfer_threads_until(
        coord,
        accounts,
        n_accounts,
        threads,
        seed,
        tag,
        &|| start.elapsed() > life,
        log,
    );
}

/// [`transfer_threads`] until `stop()` says so (asked before every transfer).
#[allow(
    clippy::too_many_arguments,
    reason = "a test helper; each caller passes its own workload"
)]
pub fn transfer_threads_until<V: Vfs>(
    coord: &Coordinator<V>,
    accounts: &Accounts,
    n_accounts: u32,
    threads: u64,
    seed: u64,
    tag: u64,
    stop: &(dyn Fn() -> bool + Sync),
    log: &std::fs::File,
) {
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                for k in 0u64.. {
                    if stop() {
                        return;
                    }
                    let id = (tag << 48) | (t << 40) | k;
                    transfer(coord, accounts, n_accounts, &mut rng, id, log);
                }
            });
        }
    });
}

/// Stock SQLite's verdict on `db`: integrity ok, the books balanced, every acknowledged
/// transfer present (each of its accounts holds the version it wrote or a later one).
pub fn check_books(db: &Path, acks: &[Ack], n_accounts: u32, total: i64, ctx: &str) {
    let ok = fsqlite_testkit::sqlite::integrity_check(db)
        .unwrap_or_else(|e| panic!("SQLite cannot check the bank: {e}; {ctx}"));
    assert_eq!(ok, "ok", "integrity_check; {ctx}");
    let books =
        bank::books(db).unwrap_or_else(|e| panic!("SQLite cannot read the bank: {e}; {ctx}"));
    books
        .check(i64::from(n_accounts), total)
        .unwrap_or_else(|e| panic!("{e}; {ctx}"));
    let rows = bank::rows(db).unwrap();
    assert_eq!(rows.len(), n_accounts as usize);
    let stamp = |id: i64| rows[(id - 1) as usize].stamp;
    for a in acks {
        for (acct, seq) in [(a.from, a.from_seq), (a.to, a.to_seq)] {
            assert!(
                stamp(acct).covers(seq, a.id),
                "acknowledged transfer {a:?} lost: account {acct} has {:?}; {ctx}",
                stamp(acct)
            );
        }
    }
    // Each transfer bumps two sequence numbers; unacknowledged ones may have landed too.
    assert!(
        books.writes >= 2 * acks.len() as i64,
        "{} sequence bumps for {} acknowledged transfers; {ctx}",
        books.writes,
        acks.len()
    );
}
