//! The `child` re-exec harness for real: this test binary runs itself as a child that acks
//! commits on stdout, and the parent kills it with SIGKILL and counts the acks.

use std::time::{Duration, Instant};

use fsqlite_testkit::child::{ChildSpec, ack, child_role, format_ack, parse_ack_line, spawn_self};
use fsqlite_testkit::rng::Rng;

fn spec(role: &str, seed: u64) -> ChildSpec {
    ChildSpec {
        role: role.to_owned(),
        seed,
        env: vec![("FSQLITE_TESTKIT_EXTRA".to_owned(), "42".to_owned())],
    }
}

/// The hashes a child acks for txns 1..=n with `seed`.
fn expected(seed: u64, n: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng::new(seed);
    (1..=n).map(|i| (i, rng.next_u64())).collect()
}

fn ack_all(seed: u64, n: u64) {
    for (id, hash) in expected(seed, n) {
        ack(id, hash).unwrap();
    }
}

#[test]
fn child_acks_five_then_sleeps_and_is_killed() {
    if let Some((role, seed)) = child_role() {
        assert_eq!(role, "writer");
        assert_eq!(std::env::var("FSQLITE_TESTKIT_EXTRA").unwrap(), "42");
        ack_all(seed, 5);
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let seed = 0xdead_beef_0bad_f00d;
    let mut child = spawn_self(
        "child_acks_five_then_sleeps_and_is_killed",
        &spec("writer", seed),
    )
    .unwrap();
    assert!(
        child.wait_for_acks(5, Duration::from_secs(15)),
        "acks {:?}; stderr {}",
        child.acks(),
        child.stderr()
    );
    assert!(!child.was_killed_by_sigkill(), "still running");
    let status = child.kill9().unwrap();
    assert!(!status.success());
    assert!(child.was_killed_by_sigkill());
    assert_eq!(child.acks(), expected(seed, 5));
}

/// Acks written right before the child dies are still delivered: the child acks 300
/// times and SIGKILLs itself; the parent, which never waited for them, gets all 300.
#[test]
fn acks_written_before_death_are_all_delivered() {
    if let Some((_, seed)) = child_role() {
        ack_all(seed, 300);
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::thread::sleep(Duration::from_secs(30));
        return;
    }
    let mut child = spawn_self(
        "acks_written_before_death_are_all_delivered",
        &spec("self-kill", 9),
    )
    .unwrap();
    let status = child.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(status.is_some(), "child did not die");
    assert!(
        child.was_killed_by_sigkill(),
        "{status:?} {}",
        child.stderr()
    );
    assert_eq!(child.acks(), expected(9, 300));
}

#[test]
fn a_child_that_finishes_exits_cleanly_and_kill_after_kills_a_sleeper() {
    if let Some((role, seed)) = child_role() {
        ack_all(seed, 3);
        if role == "sleeper" {
            std::thread::sleep(Duration::from_secs(30));
        }
        return;
    }
    let name = "a_child_that_finishes_exits_cleanly_and_kill_after_kills_a_sleeper";
    let mut done = spawn_self(name, &spec("finisher", 1)).unwrap();
    let status = done.wait_timeout(Duration::from_secs(15)).unwrap().unwrap();
    assert!(status.success(), "{}", done.stderr());
    assert!(!done.was_killed_by_sigkill());
    assert_eq!(done.acks(), expected(1, 3));
    // The harness's own output was read and set aside, not mistaken for acks.
    assert!(
        done.other_output().iter().any(|l| l.contains("1 passed")),
        "{:?}",
        done.other_output()
    );

    let mut sleeper = spawn_self(name, &spec("sleeper", 2)).unwrap();
    let start = Instant::now();
    let delay = Duration::from_millis(300);
    let status = sleeper.kill_after(delay).unwrap();
    assert!(start.elapsed() >= delay);
    assert!(!status.success() && sleeper.was_killed_by_sigkill());
    assert_eq!(sleeper.acks(), expected(2, 3));
}

#[test]
fn ack_lines_parse_exactly() {
    let line = format_ack(17, 0xff);
    assert_eq!(line, "ACK 17 0x00000000000000ff\n");
    assert_eq!(parse_ack_line(line.trim_end()), Some((17, 0xff)));
    // After the harness's "test name ... " prefix.
    assert_eq!(
        parse_ack_line("test foo ... ACK 3 0xffffffffffffffff"),
        Some((3, u64::MAX))
    );
    for bad in [
        "ACK 3 0xff",                // short hash (a torn write)
        "ACK 3 0x00000000000000f",   // one digit short
        "ACK  0x00000000000000ff",   // no id
        "ACK x 0x00000000000000ff",  // bad id
        "xACK 3 0x00000000000000ff", // not a word
        "ACK 3 0x00000000000000ff trailing",
        "ACK 3 00000000000000ff",
        "hello",
    ] {
        assert_eq!(parse_ack_line(bad), None, "{bad:?}");
    }
}
