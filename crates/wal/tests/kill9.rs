//! The multi-process kill -9 harness (TESTING.md §2.8 (b)) on [`fsqlite_vfs::UnixVfs`]:
//! real `pwrite`, `fsync`, OFD locks and a mapped `-shm`, shared by 1–4 processes that
//! are this test binary re-executed in a role (see `kill9/roles.rs`) and killed with
//! SIGKILL by the generic driver `fsqlite_testkit::kill9`.
//!
//! # The workload and what is checked
//!
//! A *lineage* is one database directory with one deterministic [`model::Workload`]: txn
//! `i` writes page 1 plus a seeded set of pages, every page image stamped with
//! `(txn, page, hash)` (`kill9/model.rs`), so the state after any crash can be checked
//! page by page against "the state after txn `j`". Writers append txns `j+1, j+2, …` to
//! whatever page 1 says and ack `(txn, txn_hash)` after `commit` returned Ok; readers
//! check every snapshot against the model and ack `(j, state_hash)`. Cycles follow each
//! other on the same lineage (each starts from the previous crash) until the lineage
//! reaches its last txn; then a new lineage starts.
//!
//! After every cycle the parent checks the acks (unique, increasing, the model's hashes)
//! and runs a **fresh verifier process** (`verifier` role, alone on the files) that checks
//! the crashed `-shm` (`nBackfill <= nBackfillAttempted <= mxFrame`, salts, no published
//! frame missing from the WAL, durable backfill), the WAL checksum chain
//! (`WalFile::scan`), the raw image (database + committed frames), real SQLite's recovery
//! of a copy of the crashed files (differential oracle) and the recovered `Wal` against
//! the model, and the bounds `floor <= J <= ceil`:
//! - `floor` = the highest txn acknowledged by a writer or observed by a reader (or
//!   verified before): **no acknowledged commit lost**;
//! - `ceil` = `max(previous J, highest writer ack) + number of writer processes` (each
//!   writer has at most one committed-but-unacknowledged txn): nothing beyond the last
//!   attempted txn. "Exactly a prefix" is the page-by-page model check.
//!
//! # Kill points
//!
//! | kind | victims and plan |
//! |---|---|
//! | `random` | 1–2 writers, 0–2 readers, 0–1 checkpointer (≤ 4); each SIGKILLed at its own seeded delay in [0, 20 ms] after the spawn or after the first writer's 1–4th ack |
//! | `hook:<op>[:after]` (sweep) | one writer with `FSQLITE_KILL_AT=<op>:k`, k = 1, 2, … on a fresh lineage until the workload finishes without reaching k |
//! | `ckpt-backfill` | a checkpointer with a kill hook on its k-th write/sync/truncate (mid-backfill); the writer must ack 2 more txns after its death, then dies at a random delay |
//! | `reader-mark` | a `reader-hold` killed while it holds a read mark (after its 1–3rd ack); the writer must ack 3 more txns after that (a checkpointer runs alongside) |
//! | `recovery` | the first opener of a crashed lineage (it must rebuild the index) dies at its k-th shm lock (`FSQLITE_KILL_AT=shm_lock:k`); a reader (and maybe a writer) open concurrently and continue |
//!
//! Lineages vary by seed: page size 1024 or 4096, 8–48 pages, 1–6 pages per txn besides
//! page 1, `SyncMode` off/normal/full (kill -9 keeps the page cache, so even `Off` must
//! keep every acknowledged commit), auto-checkpoint off or 4–63 frames, writers that
//! checkpoint after 0/5/20 % of their commits (seeded PASSIVE/FULL/RESTART/TRUNCATE), and
//! verifiers that sometimes close with a checkpoint (deleting `-wal`/`-shm`).
//!
//! # Running
//!
//! `cargo test -p fsqlite-wal --test kill9` runs a bounded CI version (30 random and
//! role-targeted cycles, the write/sync sweeps, and [`kill9_catches_planted_bugs`], which
//! proves the checks fail on a writer that acks before committing or splits a txn);
//! `cargo xtask kill9 --budget-secs N [--seed S] [--keep-going]` runs [`kill9_soak`] in
//! release until the budget ends and writes `target/test-stats/kill9.json`. A failure
//! prints the seed and the replay command.

#[path = "kill9/model.rs"]
mod model;
#[path = "kill9/roles.rs"]
mod roles;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use fsqlite_testkit::child::{ChildSpec, child_role};
use fsqlite_testkit::kill9::{
    Anchor, Cycle, CycleReport, Driver, Ending, Kill9Failure, KillPlan, RANDOM_KILL_MAX, Verdict,
    Victim, run_to_exit,
};
use fsqlite_testkit::rng::{Rng, seed_from_env};
use fsqlite_wal::SyncMode;

use model::{Model, Workload};
use roles::{
    ConnOpts, ENV_BOUNDS, ENV_BUG, ENV_CLOSE, ENV_DB, ENV_MAX_TXN, ENV_OPTS, ENV_WORKLOAD,
    OPEN_PREFIX, STAT_PREFIX,
};

/// The test every child process runs.
const CHILD_TEST: &str = "kill9_child";
/// `FSQLITE_KILL_AT` (read by `UnixVfs::from_env` in the children).
const KILL_AT: &str = fsqlite_vfs::unix::KILL_AT_ENV;
/// Budget of the soak test, in seconds (set by `cargo xtask kill9`).
const BUDGET_ENV: &str = "FSQLITE_KILL9_BUDGET_SECS";
/// `1`: the soak records a failed cycle, starts a new lineage and goes on (it still
/// fails at the end); set by `cargo xtask kill9 --keep-going`.
const KEEP_GOING_ENV: &str = "FSQLITE_KILL9_KEEP_GOING";
/// How long a verifier may take.
const VERIFIER_LIMIT: Duration = Duration::from_mins(1);
/// How long a victim expected to die by its own hook (or finish) may run.
const OWN_DEATH_LIMIT: Duration = Duration::from_secs(30);
/// How long a survivor has to ack after another victim's death.
const SURVIVE_LIMIT: Duration = Duration::from_secs(10);
/// Txns of the sweep workload.
const SWEEP_TXNS: u64 = 10;

/// The entry point of every child process (a no-op in the parent).
#[test]
fn kill9_child() {
    if let Some((role, seed)) = child_role() {
        roles::child_main(&role, seed);
    }
}

fn delay_upto(rng: &mut Rng, max: Duration) -> Duration {
    Duration::from_micros(rng.below(max.as_micros() as u64 + 1))
}

/// One database directory and its workload (see the module doc).
struct Lineage {
    _dir: tempfile::TempDir,
    db: PathBuf,
    model: Model,
    opts: ConnOpts,
    /// The txn the last verifier found.
    state: u64,
    max_txn: u64,
    /// Extra environment for every process (the planted-bug self-test).
    extra: Vec<(String, String)>,
}

impl Lineage {
    fn new(rng: &mut Rng, max_txn: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("k9.db");
        let page_size = if rng.chance(0.5) { 1024 } else { 4096 };
        let workload = Workload {
            seed: rng.next_u64(),
            page_size,
            max_page: 8 + rng.below(41) as u32,
            max_pages_per_txn: 1 + rng.below(6) as u32,
        };
        let sync = match rng.below(4) {
            0 => SyncMode::Off,
            1 => SyncMode::Normal,
            _ => SyncMode::Full,
        };
        let opts = ConnOpts {
            sync,
            auto_checkpoint: if rng.chance(0.5) {
                0
            } else {
                4 + rng.below(60) as u32
            },
            writer_ckpt_pct: [0, 5, 20][rng.below(3) as usize],
        };
        Self {
            _dir: dir,
            db,
            model: Model::new(workload),
            opts,
            state: 0,
            max_txn,
            extra: Vec::new(),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (ENV_DB.to_owned(), self.db.display().to_string()),
            (ENV_WORKLOAD.to_owned(), self.model.workload().encode()),
            (ENV_OPTS.to_owned(), self.opts.encode()),
            (ENV_MAX_TXN.to_owned(), self.max_txn.to_string()),
        ];
        env.extend(self.extra.iter().cloned());
        env
    }

    fn spec(&self, role: &str, seed: u64, extra: &[(&str, String)]) -> ChildSpec {
        let mut env = self.env();
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        ChildSpec {
            role: role.to_owned(),
            seed,
            env,
        }
    }

    fn describe(&self) -> String {
        format!(
            "lineage {} workload {} opts {} at txn {}",
            self.db.display(),
            self.model.workload().encode(),
            self.opts.encode(),
            self.state
        )
    }
}

/// Counters printed by a child as `K9STAT <name> <n>`.
fn child_counters(lines: &[String]) -> Vec<(String, u64)> {
    lines
        .iter()
        .filter_map(|l| {
            let rest = &l[l.find(STAT_PREFIX)? + STAT_PREFIX.len()..];
            let (name, n) = rest.rsplit_once(' ')?;
            Some((name.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}

/// The parent's checks of one cycle plus a fresh verifier (see the module doc). Updates
/// `lin.state` to the verified txn.
fn check_cycle(
    lin: &mut Lineage,
    report: &CycleReport,
    verifier_seed: u64,
    close: bool,
) -> Result<Verdict, String> {
    let prev = lin.state;
    let context = format!("{} (cycle {})", lin.describe(), report.index);
    let ctx = || context.as_str();
    let mut seen = HashSet::new();
    let mut max_writer_ack = 0;
    let mut max_observed = 0;
    let mut writers = 0;
    let mut writer_acks = 0;
    let mut reader_acks = 0;
    let mut counters: BTreeMap<String, u64> = BTreeMap::new();
    for v in &report.victims {
        match v.spec.role.as_str() {
            "writer" => {
                writers += 1;
                let mut last = prev;
                for &(i, h) in &v.acks {
                    if i <= last {
                        return Err(format!(
                            "{}: writer {} acked txn {i} after {last}",
                            ctx(),
                            v.pid
                        ));
                    }
                    if !seen.insert(i) {
                        return Err(format!("{}: txn {i} acked by two writers", ctx()));
                    }
                    let want = lin.model.txn_hash(i);
                    if h != want {
                        return Err(format!(
                            "{}: writer {} acked txn {i} with hash {h:#x}, the model says {want:#x}",
                            ctx(),
                            v.pid
                        ));
                    }
                    last = i;
                }
                max_writer_ack = max_writer_ack.max(last);
                writer_acks += v.acks.len() as u64;
                let opened = v.other_output.iter().any(|l| l.contains(OPEN_PREFIX));
                if v.ending.is_sigkill() && !opened {
                    *counters
                        .entry("writer.killed_during_open".into())
                        .or_default() += 1;
                }
            }
            "reader" | "reader-hold" => {
                let mut last = prev;
                for &(j, h) in &v.acks {
                    if j < last {
                        return Err(format!(
                            "{}: reader {} saw txn {j} after {last}",
                            ctx(),
                            v.pid
                        ));
                    }
                    let want = lin.model.state_hash(j);
                    if h != want {
                        return Err(format!(
                            "{}: reader {} acked state {j} with hash {h:#x}, the model says {want:#x}",
                            ctx(),
                            v.pid
                        ));
                    }
                    last = j;
                }
                max_observed = max_observed.max(last);
                reader_acks += v.acks.len() as u64;
            }
            _ => {}
        }
    }
    let floor = prev.max(max_writer_ack).max(max_observed);
    let ceil = prev.max(max_writer_ack) + writers;
    if max_observed > ceil {
        return Err(format!(
            "{}: a reader saw txn {max_observed}, beyond the last attempted txn {ceil}",
            ctx()
        ));
    }
    let mut extra = vec![(ENV_BOUNDS, format!("{floor}:{ceil}"))];
    extra.push((
        ENV_CLOSE,
        if close { "checkpoint" } else { "keep" }.to_owned(),
    ));
    let spec = lin.spec("verifier", verifier_seed, &extra);
    let run = run_to_exit(CHILD_TEST, &spec, VERIFIER_LIMIT)
        .map_err(|e| format!("{}: cannot run the verifier: {e}", ctx()))?;
    if run.ending != Ending::Exited(0) || run.acks.len() != 1 {
        return Err(format!(
            "{}: bounds {floor}..={ceil}: verifier failed: {}",
            ctx(),
            run.describe()
        ));
    }
    let (j, h) = run.acks[0];
    if h != lin.model.state_hash(j) || j < floor || j > ceil {
        return Err(format!(
            "{}: the verifier acked state {j} (hash {h:#x}) outside {floor}..={ceil} or with the wrong hash",
            ctx()
        ));
    }
    let lost = seen.iter().filter(|&&i| i > j).count() as u64;
    lin.state = j;
    for (k, n) in child_counters(&run.other_output) {
        *counters.entry(k).or_default() += n;
    }
    *counters.entry("writer_acks".into()).or_default() += writer_acks;
    *counters
        .entry("reader_snapshots_checked".into())
        .or_default() += reader_acks;
    *counters
        .entry("txns_committed_past_last_ack".into())
        .or_default() += j - floor;
    Ok(Verdict {
        acked_checked: writer_acks + reader_acks,
        lost_acks: lost,
        verifier_runs: 1,
        counters: counters.into_iter().collect(),
    })
}

/// Cycle kinds other than sweeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Random,
    CkptBackfill,
    ReaderMark,
    Recovery,
}

impl Kind {
    fn pick(rng: &mut Rng) -> Self {
        match rng.below(20) {
            0..=10 => Self::Random,
            11..=13 => Self::CkptBackfill,
            14..=16 => Self::ReaderMark,
            _ => Self::Recovery,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::CkptBackfill => "ckpt-backfill",
            Self::ReaderMark => "reader-mark",
            Self::Recovery => "recovery",
        }
    }
}

/// The harness state: driver, rng, the current lineage.
struct Harness {
    driver: Driver,
    rng: Rng,
    lineage: Lineage,
    lineage_txns: (u64, u64),
    /// Extra environment of every lineage (the planted-bug self-test).
    extra: Vec<(String, String)>,
    /// Writers of a `random` cycle: 1, or 2 with probability 0.35 when this is 2.
    max_writers: u64,
}

impl Harness {
    fn new(test: &str, seed: u64, replay: String, lineage_txns: (u64, u64)) -> Self {
        let mut rng = Rng::new(seed);
        let max = lineage_txns.0 + rng.below(lineage_txns.1 - lineage_txns.0 + 1);
        let lineage = Lineage::new(&mut rng, max);
        Self {
            driver: Driver::new(test, seed, replay),
            rng,
            lineage,
            lineage_txns,
            extra: Vec::new(),
            max_writers: 2,
        }
    }

    fn victim(&mut self, role: &str, extra: &[(&str, String)], kill: KillPlan) -> Victim {
        let seed = self.rng.next_u64();
        Victim {
            spec: self.lineage.spec(role, seed, extra),
            kill,
        }
    }

    fn kill_hook(&mut self, ops: &[(&str, u64)]) -> String {
        let (op, max_k) = ops[self.rng.below(ops.len() as u64) as usize];
        let k = 1 + self.rng.below(max_k);
        let after = if self.rng.chance(0.5) { ":after" } else { "" };
        format!("{op}:{k}{after}")
    }

    fn plan(&mut self, kind: Kind) -> Cycle {
        let mut victims = Vec::new();
        match kind {
            Kind::Random => {
                let writers = if self.rng.chance(0.35) {
                    self.max_writers
                } else {
                    1
                };
                let mut readers = self.rng.below(3);
                let ckpt = u64::from(self.rng.chance(0.5));
                while writers + readers + ckpt > 4 {
                    readers -= 1;
                }
                let anchor = if self.rng.chance(0.75) {
                    Anchor::Acks {
                        victim: 0,
                        acks: 1 + self.rng.below(4) as usize,
                    }
                } else {
                    Anchor::Spawn
                };
                let roles = std::iter::repeat_n("writer", writers as usize)
                    .chain(std::iter::repeat_n("reader", readers as usize))
                    .chain(std::iter::repeat_n("checkpointer", ckpt as usize));
                for role in roles.collect::<Vec<_>>() {
                    let delay = delay_upto(&mut self.rng, RANDOM_KILL_MAX);
                    victims.push(self.victim(role, &[], KillPlan::At { anchor, delay }));
                }
            }
            Kind::CkptBackfill => {
                let delay = delay_upto(&mut self.rng, RANDOM_KILL_MAX);
                let writer = KillPlan::AfterDeathOf {
                    victim: 1,
                    more_acks: 2,
                    delay,
                    limit: SURVIVE_LIMIT,
                };
                victims.push(self.victim("writer", &[], writer));
                let hook = self.kill_hook(&[("write", 6), ("sync", 4), ("truncate", 2)]);
                let fallback = KillPlan::At {
                    anchor: Anchor::Spawn,
                    delay: Duration::from_secs(3),
                };
                victims.push(self.victim("checkpointer", &[(KILL_AT, hook)], fallback));
            }
            Kind::ReaderMark => {
                let with_ckpt = self.rng.chance(0.7);
                let reader_ix = if with_ckpt { 2 } else { 1 };
                let delay = delay_upto(&mut self.rng, RANDOM_KILL_MAX);
                let writer = KillPlan::AfterDeathOf {
                    victim: reader_ix,
                    more_acks: 3,
                    delay,
                    limit: SURVIVE_LIMIT,
                };
                victims.push(self.victim("writer", &[], writer));
                if with_ckpt {
                    let delay = delay_upto(&mut self.rng, Duration::from_millis(5));
                    victims.push(self.victim("checkpointer", &[], KillPlan::WithLast { delay }));
                }
                let anchor = Anchor::Acks {
                    victim: reader_ix,
                    acks: 1 + self.rng.below(3) as usize,
                };
                let delay = delay_upto(&mut self.rng, Duration::from_millis(1));
                victims.push(self.victim("reader-hold", &[], KillPlan::At { anchor, delay }));
            }
            Kind::Recovery => {
                let hook = self.kill_hook(&[("shm_lock", 8)]);
                let own = KillPlan::OwnDeath {
                    limit: OWN_DEATH_LIMIT,
                };
                victims.push(self.victim("writer", &[(KILL_AT, hook)], own));
                let delay = delay_upto(&mut self.rng, RANDOM_KILL_MAX);
                victims.push(self.victim("reader", &[], KillPlan::WithLast { delay }));
                if self.rng.chance(0.5) {
                    let delay = delay_upto(&mut self.rng, RANDOM_KILL_MAX);
                    victims.push(self.victim("writer", &[], KillPlan::WithLast { delay }));
                }
            }
        }
        Cycle {
            kind: kind.label().to_owned(),
            victims,
            note: self.lineage.describe(),
        }
    }

    /// Starts a new lineage when the current one reached its last txn.
    fn maybe_new_lineage(&mut self) {
        if self.lineage.state >= self.lineage.max_txn {
            self.new_lineage();
        }
    }

    /// Starts a new lineage now.
    fn new_lineage(&mut self) {
        let (lo, hi) = self.lineage_txns;
        let max = lo + self.rng.below(hi - lo + 1);
        self.lineage = Lineage::new(&mut self.rng, max);
        self.lineage.extra.clone_from(&self.extra);
        self.driver.count("lineages", 1);
    }

    /// One planned cycle of `kind`, verified.
    fn cycle(&mut self, kind: Kind) -> Result<(), Kill9Failure> {
        self.maybe_new_lineage();
        let cycle = self.plan(kind);
        let vseed = self.rng.next_u64();
        let close = self.rng.chance(0.2);
        let Self {
            driver, lineage, ..
        } = self;
        driver.run_cycle(&cycle, |r| check_cycle(lineage, r, vseed, close))?;
        Ok(())
    }

    /// A kill-hook sweep (`FSQLITE_KILL_AT=<op>:k[:after]`, k = 1..=max_k) over one fresh
    /// workload of [`SWEEP_TXNS`] txns with a single writer; every point starts from an
    /// empty database. Returns the sweep's report.
    fn sweep(
        &mut self,
        op: &str,
        after: bool,
        max_k: u64,
    ) -> Result<fsqlite_testkit::kill9::SweepReport, Kill9Failure> {
        let mut rng = self.rng.fork();
        let template = Lineage::new(&mut rng, SWEEP_TXNS);
        let workload = template.model.workload();
        let opts = ConnOpts {
            sync: SyncMode::Full,
            ..template.opts
        };
        let writer_seed = rng.next_u64();
        let kind = format!("hook:{op}{}", if after { ":after" } else { "" });
        // The current point's lineage (its directory lives until the next point).
        let current: std::cell::RefCell<Option<Lineage>> = std::cell::RefCell::new(None);
        let mut vseeds = Rng::new(rng.next_u64());
        let report = self.driver.sweep(
            max_k,
            |k| {
                let mut lin = Lineage::new(&mut Rng::new(k), SWEEP_TXNS);
                lin.model = Model::new(workload);
                lin.opts = opts;
                let hook = format!("{op}:{k}{}", if after { ":after" } else { "" });
                let spec = lin.spec("writer", writer_seed, &[(KILL_AT, hook)]);
                let note = lin.describe();
                *current.borrow_mut() = Some(lin);
                Cycle {
                    kind: kind.clone(),
                    note,
                    victims: vec![Victim {
                        spec,
                        kill: KillPlan::OwnDeath {
                            limit: OWN_DEATH_LIMIT,
                        },
                    }],
                }
            },
            |_, r| {
                let mut cur = current.borrow_mut();
                let lin = cur.as_mut().expect("made by the cycle builder");
                let v = check_cycle(lin, r, vseeds.next_u64(), false)?;
                if r.victims[0].ending == Ending::Exited(0) && lin.state != SWEEP_TXNS {
                    return Err(format!(
                        "the writer finished but the database holds txn {} of {SWEEP_TXNS}",
                        lin.state
                    ));
                }
                Ok(v)
            },
        )?;
        Ok(report)
    }
}

/// A short, stable description of a failure (its kind and the first panic line of a
/// victim or verifier, without numbers), for counting failures by cause.
fn failure_signature(f: &Kill9Failure) -> String {
    let lines: Vec<&str> = f.message.lines().collect();
    let line = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .and_then(|i| lines.get(i + 1))
        .or(lines.last())
        .copied()
        .unwrap_or("");
    let text: String = line
        .chars()
        .take(200)
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    format!("{}: {text}", f.kind)
}

fn replay(test: &str, seed: u64) -> String {
    format!(
        "replay: FSQLITE_SEED={seed:#018x} cargo test -p fsqlite-wal --test kill9 {test} -- --exact --nocapture"
    )
}

fn run_or_panic<T>(r: Result<T, Kill9Failure>) -> T {
    r.unwrap_or_else(|f| panic!("{f}"))
}

/// CI: random-time and role-targeted kills on evolving lineages.
#[test]
fn kill9_random_and_targeted() {
    if child_role().is_some() {
        return;
    }
    let seed = seed_from_env(0x6b69_6c6c_395f_7231);
    let test = "kill9_random_and_targeted";
    let mut h = Harness::new(CHILD_TEST, seed, replay(test, seed), (40, 120));
    // Every targeted kind at least once, then seeded picks.
    let fixed = [Kind::CkptBackfill, Kind::ReaderMark, Kind::Recovery];
    for n in 0..30 {
        let kind = fixed
            .get(n)
            .copied()
            .unwrap_or_else(|| Kind::pick(&mut h.rng));
        run_or_panic(h.cycle(kind));
    }
    let s = h.driver.stats();
    assert_eq!(s.lost_acks, 0);
    assert!(s.acked_checked > 0, "no acks at all: {s:?}");
    assert_eq!(s.verifier_runs, 30);
    let _ = fsqlite_testkit::stats::write_stats("kill9-ci-random", h.driver.stats_json());
}

/// CI: the deterministic sweep over the first 20 write and sync indices of one workload.
#[test]
fn kill9_sweep_write_and_sync() {
    if child_role().is_some() {
        return;
    }
    let seed = seed_from_env(0x6b69_6c6c_395f_7377);
    let test = "kill9_sweep_write_and_sync";
    let mut h = Harness::new(CHILD_TEST, seed, replay(test, seed), (10, 10));
    for op in ["write", "sync"] {
        let r = run_or_panic(h.sweep(op, false, 20));
        assert!(r.points > 0);
    }
    let s = h.driver.stats();
    assert!(s.self_kills > 10, "the hooks were hardly reached: {s:?}");
    assert_eq!(s.lost_acks, 0);
    let _ = fsqlite_testkit::stats::write_stats("kill9-ci-sweep", h.driver.stats_json());
}

/// The harness must be able to fail: with a planted bug in the writer, cycles must be
/// caught within a bounded number of kills. `ack_before_commit` leaves a window where an
/// acknowledged txn is not committed (the verifier must report a lost ack);
/// `split_commit` commits a txn in two parts (a reader or the verifier must see a state
/// that is not a prefix).
#[test]
fn kill9_catches_planted_bugs() {
    if child_role().is_some() {
        return;
    }
    let seed = seed_from_env(0x6b69_6c6c_395f_6267);
    let test = "kill9_catches_planted_bugs";
    // Each bug may show up in several ways, depending on where the kill lands and on
    // which process looks first. With one writer, only the verifier can see a lost ack.
    let cases: [(&str, u64, &[&str]); 3] = [
        ("ack_before_commit", 1, &["LOST ACKNOWLEDGED COMMIT"]),
        (
            "ack_before_commit",
            2,
            &["LOST ACKNOWLEDGED COMMIT", "acked by two writers"],
        ),
        (
            "split_commit",
            2,
            &["not a prefix", "has the wrong size", "the model says"],
        ),
    ];
    for (bug, max_writers, symptoms) in cases {
        let mut h = Harness::new(CHILD_TEST, seed, replay(test, seed), (1000, 1000));
        h.max_writers = max_writers;
        h.extra = vec![(ENV_BUG.to_owned(), bug.to_owned())];
        h.lineage.extra.clone_from(&h.extra);
        let caught = (0..40).find_map(|_| h.cycle(Kind::Random).err());
        let f = caught.unwrap_or_else(|| panic!("planted bug {bug} survived 40 kill cycles"));
        assert!(
            symptoms.iter().any(|s| f.message.contains(s)),
            "{bug}: unexpected failure: {f}"
        );
        assert!(f.to_string().contains("replay: FSQLITE_SEED="), "{f}");
    }
}

/// The soak run of `cargo xtask kill9`: cycles of every kind plus sweeps until
/// `FSQLITE_KILL9_BUDGET_SECS` runs out (default 2 s, a smoke run in plain `cargo test`;
/// the xtask sets a long budget); writes `kill9.json` (with the failures counted by
/// signature). It stops at the first failure unless `FSQLITE_KILL9_KEEP_GOING=1`.
#[test]
fn kill9_soak() {
    if child_role().is_some() {
        return;
    }
    let seed = seed_from_env(0x6b69_6c6c_395f_736b);
    let budget = Duration::from_secs(
        std::env::var(BUDGET_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    );
    let replay = format!(
        "replay: cargo xtask kill9 --budget-secs {} --seed {seed:#x}",
        budget.as_secs()
    );
    let keep_going = std::env::var(KEEP_GOING_ENV).is_ok_and(|v| v == "1");
    let mut h = Harness::new(CHILD_TEST, seed, replay, (200, 600));
    let sweep_ops = ["write", "sync", "truncate", "shm_lock", "any"];
    let mut failures: Vec<Kill9Failure> = Vec::new();
    let mut n = 0u64;
    while h.driver.elapsed() < budget {
        n += 1;
        let step = if n.is_multiple_of(40) {
            let op = sweep_ops[h.rng.below(sweep_ops.len() as u64) as usize];
            let after = h.rng.chance(0.5);
            let max_k = if op == "write" || op == "sync" {
                60
            } else {
                30
            };
            h.sweep(op, after, max_k).map(|_| ())
        } else {
            let kind = Kind::pick(&mut h.rng);
            h.cycle(kind)
        };
        if let Err(f) = step {
            eprintln!("{f}");
            failures.push(f);
            if !keep_going {
                break;
            }
            // The failed lineage's state is unknown: go on with a fresh one.
            h.new_lineage();
        }
    }
    let mut json = h.driver.stats_json();
    json["failures"] = fsqlite_testkit::serde_json::json!(failures.len());
    let mut by_signature: BTreeMap<String, u64> = BTreeMap::new();
    for f in &failures {
        *by_signature.entry(failure_signature(f)).or_default() += 1;
    }
    json["failure_signatures"] = fsqlite_testkit::serde_json::json!(by_signature);
    let path = fsqlite_testkit::stats::write_stats("kill9", json.clone());
    println!("kill9 soak stats: {json:#}");
    if let Ok(p) = path {
        println!("kill9 soak stats written to {}", p.display());
    }
    if let Some(first) = failures.first() {
        panic!(
            "{} of {} cycles failed; the first:\n{first}",
            failures.len(),
            h.driver.stats().cycles
        );
    }
    assert_eq!(h.driver.stats().lost_acks, 0);
}
