//! The kill -9 driver with real processes: this test binary re-runs `driver_child` as
//! victims that ack a counter, and the driver kills them per plan. Checks that each plan
//! kills at the right moment, that endings are classified, that acks are complete, that a
//! sweep stops where the workload finishes, and that a failing victim fails the cycle
//! with the seed and the replay command.

use std::time::Duration;

use fsqlite_testkit::child::{ChildSpec, ack, child_role};
use fsqlite_testkit::kill9::{
    Anchor, Cycle, Driver, Ending, KillPlan, Verdict, Victim, run_to_exit,
};

const CHILD_TEST: &str = "driver_child";
/// In a `counter` child: exit 0 after this many acks.
const STOP_ENV: &str = "K9T_STOP";
/// In a `suicide` child: SIGKILL itself after this many acks.
const DIE_ENV: &str = "K9T_DIE";

fn hash(seed: u64, i: u64) -> u64 {
    seed.rotate_left(7) ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The victim side; a no-op in the parent.
#[test]
fn driver_child() {
    let Some((role, seed)) = child_role() else {
        return;
    };
    let limit = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match role.as_str() {
        "counter" => {
            let stop = limit(STOP_ENV).unwrap_or(u64::MAX);
            for i in 1..=stop {
                ack(i, hash(seed, i)).unwrap();
                std::thread::sleep(Duration::from_micros(300));
            }
        }
        "suicide" => {
            let die = limit(DIE_ENV).unwrap();
            for i in 1..=die {
                ack(i, hash(seed, i)).unwrap();
            }
            let pid = std::process::id().to_string();
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            std::thread::sleep(Duration::from_secs(30));
        }
        "fail" => std::process::exit(3),
        other => panic!("unknown role {other}"),
    }
}

fn victim(role: &str, seed: u64, env: &[(&str, String)], kill: KillPlan) -> Victim {
    Victim {
        spec: ChildSpec {
            role: role.to_owned(),
            seed,
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        },
        kill,
    }
}

/// Acks must be 1, 2, 3, ... with the right hashes.
fn check_counter(acks: &[(u64, u64)], seed: u64) -> Result<u64, String> {
    for (n, &(i, h)) in acks.iter().enumerate() {
        if i != n as u64 + 1 || h != hash(seed, i) {
            return Err(format!("ack #{n} is {:?}", (i, h)));
        }
    }
    Ok(acks.len() as u64)
}

#[test]
fn kills_after_the_anchor_and_keeps_every_ack() {
    let mut d = Driver::new(CHILD_TEST, 11, "replay: (driver test)");
    let cycle = Cycle {
        kind: "anchor".into(),
        note: String::new(),
        victims: vec![victim(
            "counter",
            11,
            &[],
            KillPlan::At {
                anchor: Anchor::Acks { victim: 0, acks: 3 },
                delay: Duration::from_millis(5),
            },
        )],
    };
    let report = d
        .run_cycle(&cycle, |r| {
            let n = check_counter(&r.victims[0].acks, 11)?;
            Ok(Verdict {
                acked_checked: n,
                ..Verdict::default()
            })
        })
        .unwrap();
    let v = &report.victims[0];
    assert_eq!(v.ending, Ending::Killed, "{}", v.describe());
    assert!(v.acks.len() >= 3, "{}", v.describe());
    let s = d.stats();
    assert_eq!((s.cycles, s.kills_sent, s.self_kills), (1, 1, 0));
    assert_eq!(s.acked_checked, v.acks.len() as u64);
    assert_eq!(s.kills_by_kind.get("anchor"), Some(&1));
}

#[test]
fn own_death_and_sweep_stop_where_the_workload_finishes() {
    let mut d = Driver::new(CHILD_TEST, 12, "replay: (driver test)");
    let own = KillPlan::OwnDeath {
        limit: Duration::from_secs(20),
    };
    let sweep = d
        .sweep(
            10,
            |k| Cycle {
                kind: "sweep".into(),
                note: String::new(),
                victims: vec![if k <= 3 {
                    victim("suicide", 12, &[(DIE_ENV, k.to_string())], own)
                } else {
                    victim("counter", 12, &[(STOP_ENV, "4".to_owned())], own)
                }],
            },
            |k, r| {
                let v = &r.victims[0];
                let want = if k <= 3 {
                    Ending::KilledItself
                } else {
                    Ending::Exited(0)
                };
                if v.ending != want {
                    return Err(format!("k={k}: {}", v.describe()));
                }
                let n = check_counter(&v.acks, 12)?;
                if n != k.min(4) {
                    return Err(format!("k={k}: {n} acks"));
                }
                Ok(Verdict {
                    acked_checked: n,
                    ..Verdict::default()
                })
            },
        )
        .unwrap();
    assert_eq!(sweep.finished_at, Some(4));
    assert_eq!(sweep.points, 4);
    let s = d.stats();
    assert_eq!((s.self_kills, s.clean_exits, s.kills_sent), (3, 1, 0));
    assert_eq!(s.sweep_points, 4);
}

#[test]
fn survivor_must_ack_after_a_death_and_with_last_follows() {
    let mut d = Driver::new(CHILD_TEST, 13, "replay: (driver test)");
    let cycle = Cycle {
        kind: "survive".into(),
        note: String::new(),
        victims: vec![
            victim(
                "counter",
                13,
                &[],
                KillPlan::At {
                    anchor: Anchor::Spawn,
                    delay: Duration::from_millis(30),
                },
            ),
            victim(
                "counter",
                14,
                &[],
                KillPlan::AfterDeathOf {
                    victim: 0,
                    more_acks: 5,
                    delay: Duration::ZERO,
                    limit: Duration::from_secs(10),
                },
            ),
            victim(
                "counter",
                15,
                &[],
                KillPlan::WithLast {
                    delay: Duration::from_millis(1),
                },
            ),
        ],
    };
    let report = d
        .run_cycle(&cycle, |r| {
            for (v, seed) in r.victims.iter().zip([13, 14, 15]) {
                check_counter(&v.acks, seed)?;
            }
            Ok(Verdict::default())
        })
        .unwrap();
    for v in &report.victims {
        assert_eq!(v.ending, Ending::Killed, "{}", v.describe());
    }
    let ends: Vec<Duration> = report.victims.iter().map(|v| v.ended_after).collect();
    assert!(ends[1] > ends[0] && ends[2] > ends[1], "{ends:?}");
    assert!(report.victims[1].acks.len() >= 5);
}

#[test]
fn a_failing_victim_or_verdict_fails_the_cycle_with_seed_and_replay() {
    let mut d = Driver::new(CHILD_TEST, 0x5eed, "replay: run me again");
    let own = KillPlan::OwnDeath {
        limit: Duration::from_secs(20),
    };
    let cycle = Cycle {
        kind: "fail".into(),
        note: String::new(),
        victims: vec![victim("fail", 1, &[], own)],
    };
    let e = d.run_cycle(&cycle, |_| Ok(Verdict::default())).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("Exited(3)"), "{msg}");
    assert!(msg.contains("0x0000000000005eed") && msg.contains("replay: run me again"));

    let cycle = Cycle {
        kind: "lost".into(),
        note: String::new(),
        victims: vec![victim("counter", 2, &[(STOP_ENV, "2".to_owned())], own)],
    };
    let e = d
        .run_cycle(&cycle, |_| {
            Ok(Verdict {
                lost_acks: 1,
                ..Verdict::default()
            })
        })
        .unwrap_err();
    assert!(e.to_string().contains("lost"), "{e}");
    assert_eq!(d.stats().lost_acks, 1);
    let e = d
        .run_cycle(&cycle, |_| Err("state is not a prefix".to_owned()))
        .unwrap_err();
    assert_eq!(e.cycle, 2);
    assert!(e.message.contains("not a prefix"));
}

#[test]
fn run_to_exit_reports_the_verifier() {
    let spec = ChildSpec {
        role: "counter".into(),
        seed: 9,
        env: vec![(STOP_ENV.to_owned(), "3".to_owned())],
    };
    let r = run_to_exit(CHILD_TEST, &spec, Duration::from_secs(20)).unwrap();
    assert_eq!(r.ending, Ending::Exited(0), "{}", r.describe());
    assert_eq!(check_counter(&r.acks, 9).unwrap(), 3);
}
