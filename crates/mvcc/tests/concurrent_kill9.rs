//! kill -9 of a process running 8 `BEGIN CONCURRENT` writer threads, with real files, and
//! stock SQLite as the judge.
//!
//! A bank (`fsqlite_testkit::bank`: one account per table-leaf page, fixed-width balances,
//! a stamp `(sequence, last transfer id)` at the start of each account's `pad`) is made
//! by SQLite. Each round, a child (this test binary re-executed,
//! `fsqlite_testkit::child::spawn_self`) opens a [`Coordinator`] on it through `UnixVfs`
//! (taking over from the previous, killed, child) and runs 8 threads that move money
//! between two random accounts: `begin_concurrent`, read both pages, move the amount, bump
//! both stamps' sequence numbers and write the transfer id into both, commit; retry from a
//! fresh snapshot on SQLITE_BUSY_SNAPSHOT (517). After `commit` returned `Ok`, the thread
//! appends one line `T <id> <from> <from_seq> <to> <to_seq> <amount>` to the ack log
//! (opened `O_APPEND`, one `write` per line: the page cache keeps it across the kill; a
//! line cut short has no `\n` and is ignored). The parent kills the child with SIGKILL a
//! seeded random time (150-450 ms) after it reported ready, eight rounds on the same
//! database.
//!
//! After each kill, stock SQLite (rusqlite, bundled) opens what is left in place (no
//! checkpoint on close, so the next round continues on the same files) and must find:
//! `PRAGMA integrity_check` = ok; the books balanced (count and sum unchanged); every
//! acknowledged transfer of every round so far present: each of its two accounts holds
//! the version it wrote or a later one ([`Stamp::covers`]: sequence greater, or equal with
//! this transfer's id). Because every transfer reads and bumps the sequence, an account's
//! versions form a chain, so "a later one" implies "on top of it". Finally the parent takes
//! over itself, sees that the previous coordinator died, checkpoints on close, and SQLite
//! checks the books once more.

mod bank_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_common::{Ack, read_acks};
use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_testkit::bank::{self, BankOptions};
use fsqlite_testkit::child::{ChildSpec, ack, child_role, spawn_self};
use fsqlite_testkit::rng::{Rng, replay_hint, seed_from_env};
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;

const TEST_NAME: &str = "kill9_concurrent_bank";
const ENV_DB: &str = "MVCC_BANK_DB";
const ENV_ACKS: &str = "MVCC_BANK_ACKS";
const ENV_ROUND: &str = "MVCC_BANK_ROUND";
const ACCOUNTS: u32 = 32;
const THREADS: u64 = 8;
const ROUNDS: u64 = 8;
/// A child that is never killed stops on its own after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);

fn options() -> CoordinatorOptions {
    CoordinatorOptions {
        probe_timeout: Duration::from_secs(5),
        kill_at: None,
        ..CoordinatorOptions::default()
    }
}

fn run_child(seed: u64) {
    let db = PathBuf::from(std::env::var(ENV_DB).unwrap());
    let acks = PathBuf::from(std::env::var(ENV_ACKS).unwrap());
    let round: u64 = std::env::var(ENV_ROUND).unwrap().parse().unwrap();
    let (coord, accounts, log) = bank_common::open_writer(&db, options(), &acks);
    ack(0, round).unwrap(); // ready
    bank_common::transfer_threads(
        &coord,
        &accounts,
        ACCOUNTS,
        THREADS,
        seed,
        round,
        CHILD_LIFETIME,
        &log,
    );
}

fn check_after_kill(db: &Path, acks: &[Ack], total: i64, ctx: &str) {
    bank_common::check_books(db, acks, ACCOUNTS, total, ctx);
}

#[test]
fn kill9_concurrent_bank() {
    if let Some((_role, seed)) = child_role() {
        run_child(seed);
        return;
    }
    let seed = seed_from_env(0x6b69_6c6c_6261_6e6b);
    let replay = replay_hint(seed, TEST_NAME);
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let bk = bank::create(
        &dir.path().join("bank.db"),
        &BankOptions {
            accounts: ACCOUNTS,
            ..BankOptions::default()
        },
    )
    .unwrap();
    let acks_path = dir.path().join("acks.log");
    let mut rng = Rng::new(seed);
    let mut last_acks = 0usize;
    for round in 1..=ROUNDS {
        let spec = ChildSpec {
            role: "bank".into(),
            seed: seed ^ round,
            env: vec![
                (ENV_DB.into(), bk.path.display().to_string()),
                (ENV_ACKS.into(), acks_path.display().to_string()),
                (ENV_ROUND.into(), round.to_string()),
            ],
        };
        let mut child = spawn_self(TEST_NAME, &spec).unwrap();
        assert!(
            child.wait_for_acks(1, Duration::from_secs(20)),
            "round {round}: the child never got ready: {}",
            child.stderr()
        );
        let delay = Duration::from_millis(rng.range(150, 450));
        std::thread::sleep(delay);
        child.kill9().unwrap();
        let ctx = format!(
            "round {round}, killed {delay:?} after ready; {replay}; child stderr: {}",
            child
                .stderr()
                .chars()
                .rev()
                .take(3000)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        );
        assert!(
            child.was_killed_by_sigkill(),
            "the child died on its own: {ctx}"
        );
        let acks = read_acks(&acks_path);
        assert!(
            acks.len() > last_acks,
            "no transfer acknowledged this round: {ctx}"
        );
        let t = Instant::now();
        check_after_kill(&bk.path, &acks, bk.total(), &ctx);
        eprintln!(
            "round {round}: killed after {delay:?}, {} transfers acknowledged ({} in all), \
             checked in {:?}",
            acks.len() - last_acks,
            acks.len(),
            t.elapsed()
        );
        last_acks = acks.len();
    }
    // The parent takes over from the last killed child and closes cleanly.
    let cx = Cx::new();
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &bk.path, options()).unwrap();
    let tk = coord.takeover().unwrap().clone();
    assert!(tk.previous_died, "{tk:?}");
    coord.close(&cx).unwrap();
    let acks = read_acks(&acks_path);
    check_after_kill(
        &bk.path,
        &acks,
        bk.total(),
        &format!("after the final close; {replay}"),
    );
    let elapsed = started.elapsed();
    eprintln!(
        "{ROUNDS} kills, {} acknowledged transfers verified, {elapsed:?}",
        acks.len()
    );
    let _ = fsqlite_testkit::stats::write_stats(
        "mvcc_concurrent_kill9",
        fsqlite_testkit::serde_json::json!({
            "seed": seed,
            "kills": ROUNDS,
            "acked_transfers": acks.len(),
            "elapsed_ms": elapsed.as_millis() as u64,
        }),
    );
}
