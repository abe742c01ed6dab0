//! A reusable kill -9 driver (TESTING.md §2.8 (b)): it spawns victim processes through
//! [`crate::child`], kills them with SIGKILL on a schedule, collects their acks, and hands
//! everything to a caller-supplied verification closure, keeping figures for
//! [`crate::stats`]. It knows nothing about what the victims do (it does not depend on
//! `fsqlite-wal`): the workload, the roles and the checks belong to the caller.
//!
//! # One cycle ([`Driver::run_cycle`])
//!
//! ```text
//! spawn every victim of the Cycle (spawn_self(test_name, spec)), in order
//! every POLL_INTERVAL until every victim has ended:
//!     reap victims that exited or killed themselves (a kill hook)
//!     note the first instant each victim had >= n acks (anchors)
//!     SIGKILL every victim whose KillPlan is due (see below)
//! a victim that exited non-zero, died by another signal, outlived its limit or stalled
//!     is a failure; otherwise verify(&CycleReport) decides (Verdict or a message)
//! ```
//!
//! | [`KillPlan`] | the driver kills the victim |
//! |---|---|
//! | `At { anchor, delay }` | `delay` after the [`Anchor`]: its spawn, or the instant victim `v` had `n` acks (or ended, whichever comes first) |
//! | `OwnDeath { limit }` | never on purpose: it is expected to exit or kill itself (e.g. `FSQLITE_KILL_AT`); still running at `limit` = hung |
//! | `AfterDeathOf { victim, more_acks, delay, limit }` | once victim `victim` has ended **and** this one has acked `more_acks` more since then (it survived the death), plus `delay`; not within `limit` = stalled |
//! | `WithLast { delay }` | `delay` after every victim that is not `WithLast` has ended |
//!
//! Every kill is followed by a reap and a drain of the victim's stdout, so
//! [`VictimReport::acks`] holds exactly the acks the parent received ("acknowledged").
//!
//! # Sweeps ([`Driver::sweep`])
//!
//! SQLite's `crash_on_write $tn` loop: for `k = 1, 2, …` run the cycle built for `k` (its
//! victims carry a kill hook such as `FSQLITE_KILL_AT=write:k` and the plan
//! `OwnDeath`), verify, and stop at the first `k` where no victim died by its own SIGKILL
//! (the workload finished before reaching the hook), or after `max_k`.
//!
//! # Failures
//!
//! Every failure is a [`Kill9Failure`] carrying the seed, the cycle number and kind, the
//! message (with the stderr tails of the victims) and the caller's replay command.
//! Replaying the seed replays every *plan* exactly; a kill at a random time also depends
//! on scheduling, so a timing-dependent failure may need a few runs.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::child::{ChildHandle, ChildSpec, spawn_self};

/// The largest delay of a random-time kill (TESTING.md §2.8 (b): "[0, 20 ms]").
pub const RANDOM_KILL_MAX: Duration = Duration::from_millis(20);
/// How often the driver polls its victims.
pub const POLL_INTERVAL: Duration = Duration::from_micros(250);
/// How long an anchor may take (a victim that never acks) before its kill is due anyway.
pub const ANCHOR_LIMIT: Duration = Duration::from_secs(20);
/// Characters of a victim's stderr kept in a failure message.
const STDERR_TAIL: usize = 3000;
/// `SIGKILL` on every unix.
const SIGKILL: i32 = 9;

/// The instant a [`KillPlan::At`] delay counts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// When this victim was spawned.
    Spawn,
    /// When victim `victim` (an index into [`Cycle::victims`]) had received `acks` acks,
    /// or ended with fewer.
    Acks {
        /// The victim whose acks are counted.
        victim: usize,
        /// How many acks.
        acks: usize,
    },
}

/// When the driver sends SIGKILL to one victim (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillPlan {
    /// `delay` after `anchor`.
    At {
        /// Where the delay starts.
        anchor: Anchor,
        /// The delay.
        delay: Duration,
    },
    /// Let it exit or kill itself; killed (and reported as hung) at `limit` after spawn.
    OwnDeath {
        /// How long it may run.
        limit: Duration,
    },
    /// After victim `victim` ended and this victim then acked `more_acks` more times,
    /// plus `delay`; if that does not happen within `limit` of the other's end, it is
    /// killed and reported as stalled.
    AfterDeathOf {
        /// The victim whose end starts the clock.
        victim: usize,
        /// Acks this victim must send after that end.
        more_acks: usize,
        /// Extra delay once they arrived.
        delay: Duration,
        /// How long the acks may take.
        limit: Duration,
    },
    /// `delay` after every victim that is not `WithLast` has ended.
    WithLast {
        /// The delay.
        delay: Duration,
    },
}

/// One process of a cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Victim {
    /// What it runs (role, seed, environment).
    pub spec: ChildSpec,
    /// When it is killed.
    pub kill: KillPlan,
}

/// The processes of one kill cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cycle {
    /// A short label for the statistics (e.g. `random`, `hook:write`, `ckpt-backfill`).
    pub kind: String,
    /// The victims, spawned in this order.
    pub victims: Vec<Victim>,
    /// Free text put at the head of every failure message of this cycle (e.g. the
    /// database path and workload).
    pub note: String,
}

/// How a victim ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The driver sent SIGKILL as planned.
    Killed,
    /// It died by SIGKILL that the driver did not send (its own kill hook).
    KilledItself,
    /// It exited with this code.
    Exited(i32),
    /// It died by another signal.
    Signalled(i32),
    /// It outlived its [`KillPlan::OwnDeath`] limit and was killed.
    Hung,
    /// It did not ack after another victim's death within the [`KillPlan::AfterDeathOf`]
    /// limit and was killed.
    Stalled,
}

impl Ending {
    /// True for an ending that is a failure by itself: a non-zero exit, another signal,
    /// a hang or a stall.
    pub fn is_failure(self) -> bool {
        match self {
            Self::Exited(code) => code != 0,
            Self::Signalled(_) | Self::Hung | Self::Stalled => true,
            Self::Killed | Self::KilledItself => false,
        }
    }

    /// True when the process died by SIGKILL (the driver's or its own).
    pub fn is_sigkill(self) -> bool {
        matches!(self, Self::Killed | Self::KilledItself)
    }
}

/// What one victim did.
#[derive(Clone, Debug)]
pub struct VictimReport {
    /// The spec it ran.
    pub spec: ChildSpec,
    /// Its process id.
    pub pid: u32,
    /// Every ack the parent received, in order.
    pub acks: Vec<(u64, u64)>,
    /// How it ended.
    pub ending: Ending,
    /// How long it lived (spawn to reap, as seen by the parent).
    pub lifetime: Duration,
    /// When it ended, counted from the start of the cycle (for [`run_to_exit`]: from
    /// its spawn).
    pub ended_after: Duration,
    /// Its stderr.
    pub stderr: String,
    /// Its non-ack stdout lines (bounded).
    pub other_output: Vec<String>,
}

impl VictimReport {
    /// The last part of stderr, for messages.
    pub fn stderr_tail(&self) -> &str {
        tail(&self.stderr, STDERR_TAIL)
    }

    /// A one-paragraph description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "victim {} (pid {}, seed {:#x}) ended {:?} after {:?} with {} acks (last {:?}); stderr tail:\n{}",
            self.spec.role,
            self.pid,
            self.spec.seed,
            self.ending,
            self.lifetime,
            self.acks.len(),
            self.acks.last(),
            self.stderr_tail()
        )
    }
}

/// Everything a cycle produced, for the verification closure.
#[derive(Clone, Debug)]
pub struct CycleReport {
    /// The cycle number within this driver (0-based).
    pub index: u64,
    /// The cycle's kind.
    pub kind: String,
    /// One report per victim, in spawn order.
    pub victims: Vec<VictimReport>,
    /// Spawn of the first victim to the reap of the last.
    pub elapsed: Duration,
}

impl CycleReport {
    /// Victims that died by a SIGKILL (the driver's or their own).
    pub fn sigkills(&self) -> u64 {
        self.victims
            .iter()
            .filter(|v| v.ending.is_sigkill())
            .count() as u64
    }

    /// True when some victim died by its own SIGKILL (a kill hook was reached).
    pub fn hook_reached(&self) -> bool {
        self.victims
            .iter()
            .any(|v| v.ending == Ending::KilledItself)
    }

    /// All acks of the victims whose role is `role`, in victim order.
    pub fn acks_of(&self, role: &str) -> Vec<(u64, u64)> {
        self.victims
            .iter()
            .filter(|v| v.spec.role == role)
            .flat_map(|v| v.acks.iter().copied())
            .collect()
    }
}

/// What the verification closure found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Acknowledged items (e.g. transactions) it checked.
    pub acked_checked: u64,
    /// Acknowledged items it did not find (any non-zero value fails the cycle).
    pub lost_acks: u64,
    /// Fresh verifier processes it ran.
    pub verifier_runs: u64,
    /// Free-form counters merged into the statistics (summed over cycles).
    pub counters: Vec<(String, u64)>,
}

/// Figures of a driver's run, for [`crate::stats::write_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kill9Stats {
    /// Cycles run.
    pub cycles: u64,
    /// Cycles per kind.
    pub cycles_by_kind: BTreeMap<String, u64>,
    /// Processes that died by SIGKILL, per cycle kind.
    pub kills_by_kind: BTreeMap<String, u64>,
    /// Victims spawned.
    pub victims_spawned: u64,
    /// SIGKILLs the driver sent as planned.
    pub kills_sent: u64,
    /// Victims that died by their own kill hook.
    pub self_kills: u64,
    /// Victims that exited 0.
    pub clean_exits: u64,
    /// Acks received from victims.
    pub acks_received: u64,
    /// Acknowledged items checked by the verification closures.
    pub acked_checked: u64,
    /// Acknowledged items lost (must stay 0).
    pub lost_acks: u64,
    /// Fresh verifier processes run.
    pub verifier_runs: u64,
    /// Sweeps run ([`Driver::sweep`]) and the points they visited.
    pub sweeps: u64,
    /// Points visited by sweeps.
    pub sweep_points: u64,
    /// Counters from the verdicts, summed.
    pub counters: BTreeMap<String, u64>,
    /// Wall time since the driver was created (updated after every cycle).
    pub elapsed: Duration,
}

impl Kill9Stats {
    /// Cycles per second of wall time.
    #[allow(clippy::cast_precision_loss, reason = "a cycle count far below 2^52")]
    pub fn cycles_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.cycles as f64 / secs
        } else {
            0.0
        }
    }

    /// The figures as JSON (with `seed` and `replay` for the record).
    pub fn to_json(&self, seed: u64, replay: &str) -> serde_json::Value {
        serde_json::json!({
            "seed": format!("{seed:#018x}"),
            "replay": replay,
            "elapsed_secs": self.elapsed.as_secs_f64(),
            "cycles": self.cycles,
            "cycles_per_sec": self.cycles_per_sec(),
            "cycles_by_kind": self.cycles_by_kind,
            "kills_by_kind": self.kills_by_kind,
            "victims_spawned": self.victims_spawned,
            "kills_sent": self.kills_sent,
            "self_kills": self.self_kills,
            "clean_exits": self.clean_exits,
            "acks_received": self.acks_received,
            "acked_checked": self.acked_checked,
            "lost_acks": self.lost_acks,
            "verifier_runs": self.verifier_runs,
            "sweeps": self.sweeps,
            "sweep_points": self.sweep_points,
            "counters": self.counters,
        })
    }
}

/// A failed cycle (or a harness error), with everything needed to replay it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kill9Failure {
    /// The driver's seed.
    pub seed: u64,
    /// The cycle number.
    pub cycle: u64,
    /// The cycle's kind.
    pub kind: String,
    /// What went wrong.
    pub message: String,
    /// The replay command.
    pub replay: String,
}

impl fmt::Display for Kill9Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kill9 failure in cycle {} ({}), seed {:#018x}:\n{}\n{}",
            self.cycle, self.kind, self.seed, self.message, self.replay
        )
    }
}

impl std::error::Error for Kill9Failure {}

/// The result of [`Driver::sweep`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweepReport {
    /// Points (values of `k`) run.
    pub points: u64,
    /// The first `k` whose workload finished without reaching its hook, if any.
    pub finished_at: Option<u64>,
}

/// Runs kill cycles and keeps their figures (see the module doc).
#[derive(Debug)]
pub struct Driver {
    test_name: String,
    seed: u64,
    replay: String,
    start: Instant,
    stats: Kill9Stats,
}

/// Per-victim bookkeeping while a cycle runs.
struct Live {
    handle: ChildHandle,
    spawned: Instant,
    ended: Option<(Instant, Ending)>,
    /// `(n, instant)` pairs: the first instant this victim had at least `n` acks.
    ack_marks: Vec<(usize, Option<Instant>)>,
    /// Ack count when the `AfterDeathOf` victim ended.
    acks_at_other_death: Option<usize>,
    /// When the acks needed by `AfterDeathOf` arrived.
    survived_at: Option<Instant>,
}

impl Live {
    fn ack_count(&self) -> usize {
        self.handle.acks().len()
    }
}

fn tail(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// How long the driver waits for a failed victim's stderr to arrive (the reader thread
/// of [`crate::child`] may still be copying it when the process has been reaped).
const STDERR_SETTLE: Duration = Duration::from_secs(1);

/// The victim's stderr; for a failed ending, waits (up to [`STDERR_SETTLE`]) until it
/// is non-empty and has stopped growing.
fn settled_stderr(handle: &ChildHandle, ending: Ending) -> String {
    let mut text = handle.stderr();
    if !ending.is_failure() {
        return text;
    }
    let start = Instant::now();
    while start.elapsed() < STDERR_SETTLE {
        std::thread::sleep(Duration::from_millis(20));
        let now = handle.stderr();
        if !now.is_empty() && now.len() == text.len() {
            return now;
        }
        text = now;
    }
    text
}

fn ending_of(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(SIGKILL)) => Ending::KilledItself,
        (None, Some(sig)) => Ending::Signalled(sig),
        (None, None) => Ending::Signalled(0),
    }
}

impl Driver {
    /// A driver whose victims re-run the test `test_name` of the current binary (see
    /// [`spawn_self`]); `seed` and `replay` are printed with every failure.
    pub fn new(test_name: &str, seed: u64, replay: impl Into<String>) -> Self {
        Self {
            test_name: test_name.to_owned(),
            seed,
            replay: replay.into(),
            start: Instant::now(),
            stats: Kill9Stats::default(),
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The replay command.
    pub fn replay(&self) -> &str {
        &self.replay
    }

    /// The test every victim re-runs.
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The figures so far.
    pub fn stats(&self) -> &Kill9Stats {
        &self.stats
    }

    /// Wall time since the driver was created.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The figures as JSON.
    pub fn stats_json(&self) -> serde_json::Value {
        let mut s = self.stats.clone();
        s.elapsed = self.start.elapsed();
        s.to_json(self.seed, &self.replay)
    }

    /// Adds one to the counter `name` (for events outside a verdict).
    pub fn count(&mut self, name: &str, n: u64) {
        *self.stats.counters.entry(name.to_owned()).or_default() += n;
    }

    /// A failure of cycle `cycle` of kind `kind`.
    pub fn failure(&self, cycle: u64, kind: &str, message: impl Into<String>) -> Kill9Failure {
        Kill9Failure {
            seed: self.seed,
            cycle,
            kind: kind.to_owned(),
            message: message.into(),
            replay: self.replay.clone(),
        }
    }

    /// Runs one cycle: spawn, kill per plan, check the endings, then `verify`.
    pub fn run_cycle<F>(&mut self, cycle: &Cycle, verify: F) -> Result<CycleReport, Kill9Failure>
    where
        F: FnOnce(&CycleReport) -> Result<Verdict, String>,
    {
        let index = self.stats.cycles;
        let report = self.execute(index, cycle)?;
        self.stats.cycles += 1;
        *self
            .stats
            .cycles_by_kind
            .entry(cycle.kind.clone())
            .or_default() += 1;
        *self
            .stats
            .kills_by_kind
            .entry(cycle.kind.clone())
            .or_default() += report.sigkills();
        self.stats.victims_spawned += report.victims.len() as u64;
        for v in &report.victims {
            match v.ending {
                Ending::Killed => self.stats.kills_sent += 1,
                Ending::KilledItself => self.stats.self_kills += 1,
                Ending::Exited(0) => self.stats.clean_exits += 1,
                _ => {}
            }
            self.stats.acks_received += v.acks.len() as u64;
        }
        self.stats.elapsed = self.start.elapsed();
        let failed: Vec<String> = report
            .victims
            .iter()
            .filter(|v| v.ending.is_failure())
            .map(VictimReport::describe)
            .collect();
        if !failed.is_empty() {
            return Err(self.failure(
                index,
                &cycle.kind,
                format!("{}\n{}", cycle.note, failed.join("\n---\n")),
            ));
        }
        let verdict = verify(&report).map_err(|m| self.failure(index, &cycle.kind, m))?;
        self.stats.acked_checked += verdict.acked_checked;
        self.stats.lost_acks += verdict.lost_acks;
        self.stats.verifier_runs += verdict.verifier_runs;
        for (k, n) in &verdict.counters {
            *self.stats.counters.entry(k.clone()).or_default() += n;
        }
        if verdict.lost_acks > 0 {
            return Err(self.failure(
                index,
                &cycle.kind,
                format!(
                    "{} acknowledged item(s) lost (the verdict reported them)",
                    verdict.lost_acks
                ),
            ));
        }
        Ok(report)
    }

    /// Runs `make(k)` for `k = 1..=max_k` through [`Driver::run_cycle`] with `verify`,
    /// stopping after the first cycle in which no victim killed itself.
    pub fn sweep<M, F>(
        &mut self,
        max_k: u64,
        mut make: M,
        mut verify: F,
    ) -> Result<SweepReport, Kill9Failure>
    where
        M: FnMut(u64) -> Cycle,
        F: FnMut(u64, &CycleReport) -> Result<Verdict, String>,
    {
        self.stats.sweeps += 1;
        let mut points = 0;
        for k in 1..=max_k {
            let cycle = make(k);
            let report = self.run_cycle(&cycle, |r| verify(k, r))?;
            points += 1;
            self.stats.sweep_points += 1;
            if !report.hook_reached() {
                return Ok(SweepReport {
                    points,
                    finished_at: Some(k),
                });
            }
        }
        Ok(SweepReport {
            points,
            finished_at: None,
        })
    }

    /// Spawns, schedules kills and reaps (no verification).
    fn execute(&self, index: u64, cycle: &Cycle) -> Result<CycleReport, Kill9Failure> {
        let started = Instant::now();
        let mut live: Vec<Live> = Vec::with_capacity(cycle.victims.len());
        for v in &cycle.victims {
            let handle = spawn_self(&self.test_name, &v.spec).map_err(|e| {
                self.failure(
                    index,
                    &cycle.kind,
                    format!("cannot spawn {:?}: {e}", v.spec),
                )
            })?;
            live.push(Live {
                handle,
                spawned: Instant::now(),
                ended: None,
                ack_marks: Vec::new(),
                acks_at_other_death: None,
                survived_at: None,
            });
        }
        // Register the ack counts every anchor waits for.
        for v in &cycle.victims {
            if let KillPlan::At {
                anchor: Anchor::Acks { victim, acks },
                ..
            } = v.kill
            {
                let target = live.get_mut(victim).ok_or_else(|| {
                    self.failure(
                        index,
                        &cycle.kind,
                        format!("anchor names victim {victim}, which does not exist"),
                    )
                })?;
                target.ack_marks.push((acks, None));
            }
        }
        loop {
            let now = Instant::now();
            // Reap what ended on its own and note anchors.
            for l in &mut live {
                if l.ended.is_none() {
                    let n = l.ack_count();
                    for mark in &mut l.ack_marks {
                        if mark.1.is_none() && n >= mark.0 {
                            mark.1 = Some(now);
                        }
                    }
                    let status = l
                        .handle
                        .wait_timeout(Duration::ZERO)
                        .map_err(|e| self.failure(index, &cycle.kind, format!("waitpid: {e}")))?;
                    if let Some(status) = status {
                        // Acks that arrived in the last poll still count for anchors.
                        let n = l.ack_count();
                        for mark in &mut l.ack_marks {
                            if mark.1.is_none() && n >= mark.0 {
                                mark.1 = Some(now);
                            }
                        }
                        l.ended = Some((now, ending_of(status)));
                    }
                }
            }
            if live.iter().all(|l| l.ended.is_some()) {
                break;
            }
            // Decide which live victims are due.
            let mut due: Vec<(usize, Ending)> = Vec::new();
            for (i, v) in cycle.victims.iter().enumerate() {
                if live[i].ended.is_some() {
                    continue;
                }
                if let Some(ending) = kill_due(&mut live, i, v.kill, &cycle.victims, now) {
                    due.push((i, ending));
                }
            }
            for (i, ending) in due {
                let l = &mut live[i];
                let status = l.handle.kill9().map_err(|e| {
                    self.failure(index, &cycle.kind, format!("kill -9 of victim {i}: {e}"))
                })?;
                let ending = if status.signal() == Some(SIGKILL) {
                    ending
                } else {
                    // It exited on its own just before the signal.
                    ending_of(status)
                };
                l.ended = Some((Instant::now(), ending));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let elapsed = started.elapsed();
        let victims = live
            .into_iter()
            .zip(&cycle.victims)
            .map(|(mut l, v)| {
                // Make sure the stdout reader has drained (kill9 on a reaped child only
                // returns its status).
                let _ = l.handle.kill9();
                let (at, ending) = l.ended.unwrap_or((Instant::now(), Ending::Hung));
                VictimReport {
                    spec: v.spec.clone(),
                    pid: l.handle.pid(),
                    acks: l.handle.acks(),
                    ending,
                    lifetime: at.saturating_duration_since(l.spawned),
                    ended_after: at.saturating_duration_since(started),
                    stderr: settled_stderr(&l.handle, ending),
                    other_output: l.handle.other_output(),
                }
            })
            .collect();
        Ok(CycleReport {
            index,
            kind: cycle.kind.clone(),
            victims,
            elapsed,
        })
    }
}

/// `Some(ending to record)` when victim `i` must be killed now.
fn kill_due(
    live: &mut [Live],
    i: usize,
    plan: KillPlan,
    victims: &[Victim],
    now: Instant,
) -> Option<Ending> {
    match plan {
        KillPlan::At { anchor, delay } => {
            let from = match anchor {
                Anchor::Spawn => Some(live[i].spawned),
                Anchor::Acks { victim, acks } => {
                    let other = &live[victim];
                    let marked = other
                        .ack_marks
                        .iter()
                        .find(|m| m.0 == acks)
                        .and_then(|m| m.1);
                    marked.or_else(|| other.ended.map(|(t, _)| t)).or_else(|| {
                        (now.duration_since(live[i].spawned) >= ANCHOR_LIMIT).then_some(now)
                    })
                }
            };
            from.filter(|&t| now >= t + delay).map(|_| Ending::Killed)
        }
        KillPlan::OwnDeath { limit } => {
            (now.duration_since(live[i].spawned) >= limit).then_some(Ending::Hung)
        }
        KillPlan::AfterDeathOf {
            victim,
            more_acks,
            delay,
            limit,
        } => {
            let (other_end, _) = live.get(victim)?.ended?;
            let n = live[i].ack_count();
            let base = *live[i].acks_at_other_death.get_or_insert(n);
            if live[i].survived_at.is_none() && n >= base + more_acks {
                live[i].survived_at = Some(now);
            }
            match live[i].survived_at {
                Some(t) => (now >= t + delay).then_some(Ending::Killed),
                None => (now >= other_end + limit).then_some(Ending::Stalled),
            }
        }
        KillPlan::WithLast { delay } => {
            let mut last_end = None;
            for (j, v) in victims.iter().enumerate() {
                if matches!(v.kill, KillPlan::WithLast { .. }) {
                    continue;
                }
                let (t, _) = live[j].ended?;
                last_end = Some(last_end.map_or(t, |l: Instant| l.max(t)));
            }
            let from = last_end.unwrap_or(live[i].spawned);
            (now >= from + delay).then_some(Ending::Killed)
        }
    }
}

/// Runs one child to completion (e.g. a fresh verifier process), killing it at `limit`.
/// Its ending is `Exited(code)`, `KilledItself`, `Signalled` or `Hung`.
pub fn run_to_exit(
    test_name: &str,
    spec: &ChildSpec,
    limit: Duration,
) -> fsqlite_error::Result<VictimReport> {
    let spawned = Instant::now();
    let mut handle = spawn_self(test_name, spec)?;
    let ending = if let Some(status) = handle.wait_timeout(limit)? {
        ending_of(status)
    } else {
        handle.kill9()?;
        Ending::Hung
    };
    Ok(VictimReport {
        spec: spec.clone(),
        pid: handle.pid(),
        acks: handle.acks(),
        ending,
        lifetime: spawned.elapsed(),
        ended_after: spawned.elapsed(),
        stderr: settled_stderr(&handle, ending),
        other_output: handle.other_output(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings_classify() {
        assert!(Ending::Exited(101).is_failure());
        assert!(Ending::Exited(-1).is_failure());
        assert!(!Ending::Exited(0).is_failure());
        assert!(!Ending::Killed.is_failure());
        assert!(!Ending::KilledItself.is_failure());
        assert!(Ending::Hung.is_failure());
        assert!(Ending::Stalled.is_failure());
        assert!(Ending::Signalled(6).is_failure());
        assert!(Ending::Killed.is_sigkill() && Ending::KilledItself.is_sigkill());
        assert!(!Ending::Exited(0).is_sigkill());
    }

    #[test]
    fn tail_respects_char_boundaries() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 3), "def");
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aéb", 2), "b");
    }

    #[test]
    fn failure_display_has_seed_and_replay() {
        let d = Driver::new("t", 0xabc, "replay: X");
        let f = d.failure(3, "random", "boom");
        let s = f.to_string();
        assert!(s.contains("cycle 3 (random)"), "{s}");
        assert!(s.contains("0x0000000000000abc"), "{s}");
        assert!(s.contains("boom") && s.ends_with("replay: X"), "{s}");
    }
}
