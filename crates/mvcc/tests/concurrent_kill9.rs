//! kill -9 of processes running `BEGIN CONCURRENT` writer threads, with real files, and
//! stock SQLite as the judge: a fixed run (`kill9_concurrent_bank`) and a budgeted soak
//! (`kill9_concurrent_soak`).
//!
//! A bank (`fsqlite_testkit::bank`: one account per table-leaf page, fixed-width balances,
//! a stamp `(sequence, last transfer id)` at the start of each account's `pad`) is made
//! by SQLite. A writer child (this test binary re-executed,
//! `fsqlite_testkit::child::spawn_self`) opens a [`Coordinator`] on it through `UnixVfs`
//! (taking over from a previous, killed, child, or joining the live ones) and runs
//! threads that move money between two random accounts: `begin_concurrent`, read both
//! pages, move the amount, bump both stamps' sequence numbers and write the transfer id
//! into both, commit; retry from a fresh snapshot on SQLITE_BUSY_SNAPSHOT (517). After
//! `commit` returned `Ok`, the thread appends one line
//! `T <id> <from> <from_seq> <to> <to_seq> <amount>` to the database's ack log (opened
//! `O_APPEND`, one `write` per line, shared by every writer process: the page cache keeps
//! it across the kill; a line cut short has no `\n` and is ignored).
//!
//! After each kill, once every child of the round is dead or stopped, stock SQLite
//! (rusqlite, bundled) opens what is left in place (no checkpoint on close, so the next
//! round continues on the same files) and must find: `PRAGMA integrity_check` = ok; the
//! books balanced (count and sum unchanged); every acknowledged transfer of every round
//! so far present: each of its two accounts holds the version it wrote or a later one
//! ([`Stamp::covers`]: sequence greater, or equal with this transfer's id). Because every
//! transfer reads and bumps the sequence, an account's versions form a chain, so "a later
//! one" implies "on top of it".
//!
//! `kill9_concurrent_bank`: one child of 8 threads, killed with SIGKILL a seeded random
//! time (150-450 ms) after it reported ready, eight rounds on the same database; finally
//! the parent takes over itself, sees that the previous coordinator died, checkpoints on
//! close, and SQLite checks the books once more.
//!
//! `kill9_concurrent_soak` runs cycles until a time budget ends
//! (`FSQLITE_CKILL9_BUDGET_SECS`, default 3 s; `cargo xtask kill9 --concurrent` runs it in
//! release for longer). Each cycle, chosen by the seeded rng, is either
//!
//! - single process: one child of 8 threads, SIGKILLed 5-120 ms after it reported ready;
//! - multi-process: 2-4 member processes of 2-4 threads each; either all of them are
//!   killed, each at its own seeded time (5-120 ms after all reported ready), or one random
//!   member is killed and the others stop on their own a little later (closing cleanly,
//!   the last one checkpointing), after carrying on past the death.
//!
//! A database keeps one `LegacyWriters` setting (it is in the record file, and a joining
//! member must ask for the same one); the setting alternates between fresh databases, and
//! a fresh bank is made every [`CYCLES_PER_DB`] cycles so files stay small. Before a
//! database is dropped the parent takes over, closes (checkpointing) and SQLite checks
//! the books once more. The soak stops at the first failure (lost ack, unbalanced books,
//! integrity, a child that died on its own) with the seed and the replay command, and
//! writes `<target>/test-stats/kill9_concurrent.json` (cycles by kind, SIGKILLs sent,
//! processes spawned, acknowledged transfers checked summed over checks, lost, SQLite
//! checks, databases, failures).

mod bank_common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bank_common::{Ack, read_acks};
use fsqlite_mvcc::{Coordinator, CoordinatorOptions, LegacyWriters};
use fsqlite_testkit::bank::{self, BankOptions};
use fsqlite_testkit::child::{ChildHandle, ChildSpec, ack, child_role, spawn_self};
use fsqlite_testkit::rng::{Rng, replay_hint, seed_from_env};
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;

const TEST_NAME: &str = "kill9_concurrent_bank";
const SOAK_NAME: &str = "kill9_concurrent_soak";
const ENV_DB: &str = "MVCC_BANK_DB";
const ENV_ACKS: &str = "MVCC_BANK_ACKS";
const ENV_ROUND: &str = "MVCC_BANK_ROUND";
const ENV_THREADS: &str = "MVCC_BANK_THREADS";
const ENV_LIFE_MS: &str = "MVCC_BANK_LIFE_MS";
const ENV_MODE: &str = "MVCC_BANK_MODE";
/// When set, the child also stops (and closes) once this file exists.
const ENV_STOP_FILE: &str = "MVCC_BANK_STOP_FILE";
/// The soak's time budget in seconds.
const BUDGET_ENV: &str = "FSQLITE_CKILL9_BUDGET_SECS";
const DEFAULT_BUDGET_SECS: u64 = 3;
/// The soak makes a fresh bank after this many cycles on one.
const CYCLES_PER_DB: u64 = 10;
const ACCOUNTS: u32 = 32;
const THREADS: u64 = 8;
const ROUNDS: u64 = 8;
/// A child that is never killed stops on its own after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// How long a child may take to report ready.
const READY_LIMIT: Duration = Duration::from_secs(20);

fn options(mode: LegacyWriters) -> CoordinatorOptions {
    CoordinatorOptions {
        probe_timeout: Duration::from_secs(5),
        kill_at: None,
        legacy_writers: mode,
        ..CoordinatorOptions::default()
    }
}

fn mode_name(mode: LegacyWriters) -> &'static str {
    match mode {
        LegacyWriters::Admitted => "admitted",
        LegacyWriters::Excluded => "excluded",
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A writer child: `MVCC_BANK_THREADS` threads transfer money (ids tagged with
/// `MVCC_BANK_ROUND`) for `MVCC_BANK_LIFE_MS` ms or until killed, then it closes.
fn run_child(seed: u64) {
    let db = PathBuf::from(env(ENV_DB));
    let acks = PathBuf::from(env(ENV_ACKS));
    let tag: u64 = env(ENV_ROUND).parse().unwrap();
    let threads: u64 = env(ENV_THREADS).parse().unwrap();
    let life = Duration::from_millis(env(ENV_LIFE_MS).parse().unwrap()).min(CHILD_LIFETIME);
    let mode = match env(ENV_MODE).as_str() {
        "admitted" => LegacyWriters::Admitted,
        _ => LegacyWriters::Excluded,
    };
    let stop_file = std::env::var_os(ENV_STOP_FILE).map(PathBuf::from);
    let (coord, accounts, log) = bank_common::open_writer(&db, options(mode), &acks);
    eprintln!(
        "member mode {:?}: {}; takeover {:?}",
        coord.mode(),
        coord.mode_reason(),
        coord.takeover()
    );
    ack(0, u64::from(coord.takeover().is_some_and(|t| t.joined))).unwrap(); // ready
    let start = Instant::now();
    let stop = || start.elapsed() > life || stop_file.as_ref().is_some_and(|p| p.exists());
    bank_common::transfer_threads_until(
        &coord, &accounts, ACCOUNTS, threads, seed, tag, &stop, &log,
    );
    coord.close(&Cx::new()).unwrap();
}

/// One bank database, its ack log and its `LegacyWriters` setting.
struct Bank {
    _dir: tempfile::TempDir,
    path: PathBuf,
    acks: PathBuf,
    total: i64,
    mode: LegacyWriters,
    /// The last transfer-id tag handed to a writer process (unique per database).
    tags: u64,
}

impl Bank {
    fn create(mode: LegacyWriters) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bk = bank::create(
            &dir.path().join("bank.db"),
            &BankOptions {
                accounts: ACCOUNTS,
                ..BankOptions::default()
            },
        )
        .unwrap();
        Self {
            acks: dir.path().join("acks.log"),
            path: bk.path.clone(),
            total: bk.total(),
            _dir: dir,
            mode,
            tags: 0,
        }
    }

    /// Starts a writer child of `threads` threads living `life` (it does not wait for it to
    /// be ready).
    fn spawn_writer(&mut self, test: &str, threads: u64, life: Duration, seed: u64) -> ChildHandle {
        self.spawn_writer_until(test, threads, life, None, seed)
    }

    /// [`Bank::spawn_writer`] that also stops once `stop_file` exists.
    fn spawn_writer_until(
        &mut self,
        test: &str,
        threads: u64,
        life: Duration,
        stop_file: Option<&Path>,
        seed: u64,
    ) -> ChildHandle {
        self.tags += 1;
        let mut spec = ChildSpec {
            role: "bank".into(),
            seed,
            env: vec![
                (ENV_DB.into(), self.path.display().to_string()),
                (ENV_ACKS.into(), self.acks.display().to_string()),
                (ENV_ROUND.into(), self.tags.to_string()),
                (ENV_THREADS.into(), threads.to_string()),
                (ENV_LIFE_MS.into(), life.as_millis().to_string()),
                (ENV_MODE.into(), mode_name(self.mode).into()),
            ],
        };
        if let Some(p) = stop_file {
            spec.env
                .push((ENV_STOP_FILE.into(), p.display().to_string()));
        }
        spawn_self(test, &spec).unwrap()
    }

    fn acks(&self) -> Vec<Ack> {
        read_acks(&self.acks)
    }

    /// Stock SQLite's verdict on what is left; returns the acks it checked.
    fn check(&self, ctx: &str) -> usize {
        let acks = self.acks();
        check_after_kill(&self.path, &acks, self.total, ctx);
        acks.len()
    }

    /// The parent takes over from whoever was last, closes cleanly (checkpointing), and
    /// SQLite checks the books once more. Returns the takeover's `previous_died` and the
    /// acks checked.
    fn take_over_and_close(&self, ctx: &str) -> (bool, usize) {
        let cx = Cx::new();
        let coord = Coordinator::open(
            &cx,
            Arc::new(UnixVfs::new()),
            &self.path,
            options(self.mode),
        )
        .unwrap();
        let tk = coord.takeover().unwrap().clone();
        assert!(!tk.joined, "nobody is left to join: {tk:?}; {ctx}");
        coord.close(&cx).unwrap();
        (
            tk.previous_died,
            self.check(&format!("after the final close; {ctx}")),
        )
    }
}

/// Waits for a child's ready ack; returns whether it joined live members (rather than
/// taking over).
fn wait_ready(child: &ChildHandle, what: &str) -> bool {
    assert!(
        child.wait_for_acks(1, READY_LIMIT),
        "{what} never got ready: {}",
        child.stderr()
    );
    child.acks()[0].1 == 1
}

/// The last `n` characters of a child's stderr.
fn stderr_tail(child: &ChildHandle, n: usize) -> String {
    let s = child.stderr();
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

/// Kills `child` with SIGKILL; it must have been running.
fn kill(child: &mut ChildHandle, what: &str) {
    child.kill9().unwrap();
    assert!(
        child.was_killed_by_sigkill(),
        "{what} died on its own ({:?}): {}",
        child.status(),
        stderr_tail(child, 3000)
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
    let mut bk = Bank::create(LegacyWriters::Excluded);
    let mut rng = Rng::new(seed);
    let mut last_acks = 0usize;
    for round in 1..=ROUNDS {
        let mut child = bk.spawn_writer(TEST_NAME, THREADS, CHILD_LIFETIME, seed ^ round);
        wait_ready(&child, &format!("round {round}: the child"));
        // A takeover recovers the previous process's WAL first, which on a loaded machine
        // can take longer than the kill delay: the delay counts from the first
        // acknowledgement of this round, so every round kills a child mid-work.
        let first_ack = Instant::now() + Duration::from_secs(20);
        while bk.acks().len() <= last_acks && Instant::now() < first_ack {
            std::thread::sleep(Duration::from_millis(5));
        }
        let delay = Duration::from_millis(rng.range(150, 450));
        std::thread::sleep(delay);
        let ctx =
            format!("round {round}, killed {delay:?} after its first acknowledgement; {replay}");
        kill(&mut child, &format!("the child ({ctx})"));
        let ctx = format!("{ctx}; child stderr: {}", stderr_tail(&child, 3000));
        let acks = bk.acks();
        assert!(
            acks.len() > last_acks,
            "no transfer acknowledged this round: {ctx}"
        );
        let t = Instant::now();
        check_after_kill(&bk.path, &acks, bk.total, &ctx);
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
    let (previous_died, acked) = bk.take_over_and_close(&replay);
    assert!(previous_died, "the last child was killed; {replay}");
    let elapsed = started.elapsed();
    eprintln!("{ROUNDS} kills, {acked} acknowledged transfers verified, {elapsed:?}");
    let _ = fsqlite_testkit::stats::write_stats(
        "mvcc_concurrent_kill9",
        fsqlite_testkit::serde_json::json!({
            "seed": seed,
            "kills": ROUNDS,
            "acked_transfers": acked,
            "elapsed_ms": elapsed.as_millis() as u64,
        }),
    );
}

/// The soak's counters (written to the stats file).
#[derive(Debug, Default)]
struct Soak {
    cycles: u64,
    single_process_cycles: u64,
    multiprocess_cycles: u64,
    kill_all_cycles: u64,
    kill_one_cycles: u64,
    admitted_cycles: u64,
    /// Cycles in which no new transfer was acknowledged (killed very early).
    empty_cycles: u64,
    sigkills: u64,
    processes_spawned: u64,
    acks_checked: u64,
    lost: u64,
    sqlite_checks: u64,
    databases: u64,
    failures: u64,
    /// Time from spawning a cycle's children to all of them reporting ready.
    ready_wait: Duration,
    /// Time in SQLite's checks.
    check_time: Duration,
    /// Time waiting for the survivors of a kill-one cycle to stop.
    survivor_wait: Duration,
}

impl Soak {
    fn json(
        &self,
        seed: u64,
        budget: Duration,
        elapsed: Duration,
    ) -> fsqlite_testkit::serde_json::Value {
        let secs = elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        #[allow(clippy::cast_precision_loss, reason = "counts far below 2^53")]
        let mean_ms = |d: Duration| d.as_secs_f64() * 1e3 / self.cycles.max(1) as f64;
        fsqlite_testkit::serde_json::json!({
            "seed": seed,
            "budget_secs": budget.as_secs(),
            "elapsed_secs": secs,
            "cycles": self.cycles,
            "single_process_cycles": self.single_process_cycles,
            "multiprocess_cycles": self.multiprocess_cycles,
            "multiprocess_kill_all_cycles": self.kill_all_cycles,
            "multiprocess_kill_one_cycles": self.kill_one_cycles,
            "admitted_cycles": self.admitted_cycles,
            "empty_cycles": self.empty_cycles,
            "sigkills": self.sigkills,
            "kills_per_sec": per_sec(self.sigkills),
            "cycles_per_sec": per_sec(self.cycles),
            "processes_spawned": self.processes_spawned,
            "acks_checked": self.acks_checked,
            "lost": self.lost,
            "sqlite_checks": self.sqlite_checks,
            "databases": self.databases,
            "failures": self.failures,
            "mean_ready_ms": mean_ms(self.ready_wait),
            "mean_check_ms": mean_ms(self.check_time),
            "mean_survivor_wait_ms": mean_ms(self.survivor_wait),
        })
    }
}

/// One child of 8 threads, SIGKILLed 5-120 ms after it reported ready. Returns what it
/// did and that every process was killed.
fn single_process_cycle(bk: &mut Bank, rng: &mut Rng, st: &mut Soak, ctx: &str) -> (String, bool) {
    let t = Instant::now();
    let mut child = bk.spawn_writer(SOAK_NAME, THREADS, CHILD_LIFETIME, rng.next_u64());
    st.processes_spawned += 1;
    wait_ready(&child, &format!("the child ({ctx})"));
    st.ready_wait += t.elapsed();
    let delay = Duration::from_millis(rng.range(5, 121));
    std::thread::sleep(delay);
    let what = format!("single process, {THREADS} threads, killed {delay:?} after ready");
    kill(&mut child, &format!("the child ({what}; {ctx})"));
    st.sigkills += 1;
    (what, true)
}

/// 2-4 members of 2-4 threads; all killed at seeded times, or one killed and the others
/// stopping on their own a little later. Returns what it did and whether every process
/// was killed.
fn multiprocess_cycle(bk: &mut Bank, rng: &mut Rng, st: &mut Soak, ctx: &str) -> (String, bool) {
    let n = rng.range(2, 5);
    let threads = rng.range(2, 5);
    let kill_all = rng.chance(0.5);
    let victim = rng.below(n);
    // Kill times after everyone reported ready; the survivors stop 20-150 ms after the
    // victim's kill, when the parent creates their stop file. (A lifetime counted from
    // each child's own start let a survivor close before a slow member had opened, which
    // then rightly took over as the first member: a second takeover in one cycle.)
    let delays: Vec<Duration> = (0..n)
        .map(|_| Duration::from_millis(rng.range(5, 121)))
        .collect();
    let survivor_extra = Duration::from_millis(rng.range(20, 151));
    bk.tags += 1;
    let stop_file = bk.path.with_extension(format!("stop-{}", bk.tags));
    let t = Instant::now();
    let mut members: Vec<(u64, Duration, ChildHandle)> = (0..n)
        .map(|m| {
            let survivor = !(kill_all || m == victim);
            let life = if survivor {
                delays[victim as usize] + survivor_extra
            } else {
                CHILD_LIFETIME
            };
            let child = bk.spawn_writer_until(
                SOAK_NAME,
                threads,
                CHILD_LIFETIME,
                survivor.then_some(stop_file.as_path()),
                rng.next_u64(),
            );
            (m, life, child)
        })
        .collect();
    st.processes_spawned += n;
    let joined = members
        .iter()
        .filter(|(m, _, c)| wait_ready(c, &format!("member {m} ({ctx})")))
        .count() as u64;
    assert_eq!(
        joined,
        n - 1,
        "exactly one member takes over, the others join; {ctx}; the members said: {}",
        members
            .iter()
            .map(|(m, _, c)| format!("member {m}: {}", stderr_tail(c, 600)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let ready = Instant::now();
    st.ready_wait += t.elapsed();
    let what = if kill_all {
        format!("{n} processes x {threads} threads, all killed at {delays:?} after ready")
    } else {
        format!(
            "{n} processes x {threads} threads, member {victim} killed {:?} after ready, \
             the others stopping by themselves",
            delays[victim as usize]
        )
    };
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by_key(|&i| delays[i]);
    for i in order {
        let (m, _, child) = &mut members[i];
        if !kill_all && *m != victim {
            continue;
        }
        std::thread::sleep(delays[i].saturating_sub(ready.elapsed()));
        kill(child, &format!("member {m} ({what}; {ctx})"));
        st.sigkills += 1;
    }
    if !kill_all {
        std::thread::sleep(survivor_extra);
        std::fs::write(&stop_file, b"stop").unwrap();
    }
    let t = Instant::now();
    for (m, life, child) in &mut members {
        if child.status().is_none() {
            let status = child.wait_timeout(Duration::from_mins(1)).unwrap();
            assert!(
                status.is_some_and(|s| s.success()),
                "member {m} (life {life:?}) did not stop cleanly ({status:?}; {what}; {ctx}): {}",
                stderr_tail(child, 3000)
            );
        }
    }
    st.survivor_wait += t.elapsed();
    (what, kill_all)
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|m| (*m).to_owned()))
        .unwrap_or_else(|| "<non-string panic>".to_owned())
}

#[test]
fn kill9_concurrent_soak() {
    if let Some((_role, seed)) = child_role() {
        run_child(seed);
        return;
    }
    let seed = seed_from_env(0x636b_696c_6c39_736b);
    let replay = replay_hint(seed, SOAK_NAME);
    let budget = Duration::from_secs(
        std::env::var(BUDGET_ENV)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(DEFAULT_BUDGET_SECS),
    );
    eprintln!("{SOAK_NAME}: seed {seed:#018x}, budget {budget:?}");
    let mut rng = Rng::new(seed);
    let mut st = Soak::default();
    let started = Instant::now();
    let mut mode = if rng.chance(0.5) {
        LegacyWriters::Admitted
    } else {
        LegacyWriters::Excluded
    };
    let mut bank: Option<Bank> = None;
    let mut cycles_on_db = 0u64;
    let mut last_killed_all = false;
    let mut last_acks = 0usize;
    let finish_db = |bk: Bank, last_killed_all: bool, st: &mut Soak| {
        let ctx = format!("database {} ({:?}); {replay}", st.databases, bk.mode);
        let (previous_died, acked) = bk.take_over_and_close(&ctx);
        assert!(
            previous_died || !last_killed_all,
            "every process of the last cycle was killed, yet the takeover saw no death; {ctx}"
        );
        st.sqlite_checks += 1;
        st.acks_checked += acked as u64;
    };
    while started.elapsed() < budget {
        let cycle = st.cycles + 1;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if bank.is_none() || cycles_on_db == CYCLES_PER_DB {
                if let Some(old) = bank.take() {
                    finish_db(old, last_killed_all, &mut st);
                }
                mode = if mode == LegacyWriters::Excluded {
                    LegacyWriters::Admitted
                } else {
                    LegacyWriters::Excluded
                };
                bank = Some(Bank::create(mode));
                st.databases += 1;
                cycles_on_db = 0;
                last_acks = 0;
            }
            let bk = bank.as_mut().unwrap();
            let ctx = format!(
                "cycle {cycle}, database {} ({:?}), cycle {} on it; {replay}",
                st.databases,
                bk.mode,
                cycles_on_db + 1
            );
            let multi = rng.chance(0.5);
            let (what, killed_all) = if multi {
                multiprocess_cycle(bk, &mut rng, &mut st, &ctx)
            } else {
                single_process_cycle(bk, &mut rng, &mut st, &ctx)
            };
            let t = Instant::now();
            let acked = bk.check(&format!("{what}; {ctx}"));
            st.check_time += t.elapsed();
            st.sqlite_checks += 1;
            st.acks_checked += acked as u64;
            if acked == last_acks {
                st.empty_cycles += 1;
            }
            last_acks = acked;
            if multi {
                st.multiprocess_cycles += 1;
                if killed_all {
                    st.kill_all_cycles += 1;
                } else {
                    st.kill_one_cycles += 1;
                }
            } else {
                st.single_process_cycles += 1;
            }
            if bk.mode == LegacyWriters::Admitted {
                st.admitted_cycles += 1;
            }
            last_killed_all = killed_all;
            cycles_on_db += 1;
            st.cycles += 1;
        }));
        if let Err(e) = r {
            let msg = panic_text(&*e);
            st.failures += 1;
            if msg.contains(" lost: ") {
                st.lost += 1;
            }
            let _ = fsqlite_testkit::stats::write_stats(
                "kill9_concurrent",
                st.json(seed, budget, started.elapsed()),
            );
            panic!(
                "{SOAK_NAME} failed in cycle {cycle} after {:?} (seed {seed:#018x}; {replay}, \
                 with {BUDGET_ENV}={} to reach this cycle; the cycles' choices replay, their \
                 timing does not): {msg}",
                started.elapsed(),
                budget.as_secs()
            );
        }
    }
    if let Some(bk) = bank.take() {
        finish_db(bk, last_killed_all, &mut st);
    }
    let elapsed = started.elapsed();
    let v = st.json(seed, budget, elapsed);
    eprintln!("{SOAK_NAME}: {v}");
    fsqlite_testkit::stats::write_stats("kill9_concurrent", v).unwrap();
    assert_eq!(st.lost, 0);
    assert!(st.cycles > 0, "the budget allowed no cycle");
}
