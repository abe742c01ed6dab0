//! kill -9 of the hybrid coordinator mid-commit, with real processes.
//!
//! The coordinator runs in a child (this test binary re-executed by
//! `fsqlite_testkit::child::spawn_self`). It commits SQLite-made transactions and acks
//! each one after `commit` returned, then dies by `SIGKILL` at a chosen point of its
//! `K`th commit: the coordinator's own kill points (`FSQLITE_MVCC_KILL_AT`: before/after
//! the WAL sync, between the hash-table update and the header publish, between the two
//! header copies, after the publish) and `UnixVfs` kill hooks (`FSQLITE_KILL_AT`: the nth
//! write or sync). Each point runs twice: with a live legacy SQLite reader that keeps the
//! `-shm` alive across the kill, and without one (the next opener then finds a truncated
//! `-shm` and rebuilds the index from the WAL).
//!
//! The parent then checks, for every scenario:
//! 1. the child died by SIGKILL after exactly the expected acks, each with the digest the
//!    parent's own replay of the same SQL gives;
//! 2. the live reader (if any) still reads a consistent state (the last acked one or the
//!    next) with `integrity_check` = ok;
//! 3. the next opener sees `NoCoordinator`, reports that the previous coordinator (the
//!    child's pid) died, recovers and takes over;
//! 4. no acknowledged commit is lost: SQLite reads exactly the state after the last acked
//!    commit or after the one in flight (exactly which, where the point decides it);
//! 5. the new coordinator commits on top, SQLite sees it, `integrity_check` = ok.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Shadow, commit_changes, make_db, options, txn_sql};
use fsqlite_mvcc::{CompatMode, Coordinator, CoordinatorOptions, KILL_AT_ENV, KillAt, KillPoint};
use fsqlite_testkit::child::{ChildSpec, ack, child_role, spawn_self};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::sqlite::{integrity_check, table_digest};
use fsqlite_types::Cx;
use fsqlite_vfs::UnixVfs;

const TEST_NAME: &str = "kill9_at_every_commit_point";
const ENV_DB: &str = "MVCC_TEST_DB";
const ENV_PRISTINE: &str = "MVCC_TEST_PRISTINE";
const ENV_SHADOW: &str = "MVCC_TEST_SHADOW";
/// Commits a child makes if nothing kills it.
const CHILD_COMMITS: u64 = 12;

/// How the child dies.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// The coordinator's own hook at `point` of commit `k`.
    Point(KillPoint, u64),
    /// `UnixVfs`'s hook (`FSQLITE_KILL_AT` spec), expected to fire in commit `k`.
    Vfs(&'static str, u64),
}

impl Kill {
    fn commit(self) -> u64 {
        match self {
            Self::Point(_, k) | Self::Vfs(_, k) => k,
        }
    }

    fn env(self) -> (String, String) {
        match self {
            Self::Point(p, k) => (KILL_AT_ENV.to_owned(), format!("{}:{k}", p.as_str())),
            Self::Vfs(spec, _) => (fsqlite_vfs::unix::KILL_AT_ENV.to_owned(), spec.to_owned()),
        }
    }
}

fn digest_hash(d: (u64, u64)) -> u64 {
    d.1 ^ d.0.rotate_left(32)
}

fn run_child(seed: u64) {
    let db = PathBuf::from(std::env::var(ENV_DB).unwrap());
    let pristine = PathBuf::from(std::env::var(ENV_PRISTINE).unwrap());
    let mut shadow = Shadow::create_from(&pristine, Path::new(&std::env::var(ENV_SHADOW).unwrap()));
    let cx = Cx::new();
    // Both hooks come from the environment the parent set.
    let opts = CoordinatorOptions {
        probe_timeout: Duration::from_secs(5),
        ..CoordinatorOptions::default()
    };
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::from_env()), &db, opts).unwrap();
    assert_eq!(coord.mode(), CompatMode::HybridShm);
    for i in 1..=CHILD_COMMITS {
        let (changes, db_size) = shadow.apply(&txn_sql(seed, i));
        commit_changes(&coord, &cx, &changes, db_size);
        ack(i, digest_hash(shadow.digest())).unwrap();
    }
}

/// Digests of the states after txns `0..=n` of `seed`, replayed on a copy of `pristine`,
/// and the coordinator's `mxFrame` after each (one frame per changed page; no restart
/// happens without a checkpoint).
fn replay(pristine: &Path, dir: &Path, seed: u64, n: u64) -> (Vec<(u64, u64)>, Vec<u32>) {
    let mut shadow = Shadow::create_from(pristine, &dir.join("replay.db"));
    let mut digests = vec![shadow.digest()];
    let mut frames = vec![0u32];
    for i in 1..=n {
        let (changes, _) = shadow.apply(&txn_sql(seed, i));
        digests.push(shadow.digest());
        frames.push(frames[frames.len() - 1] + changes.len() as u32);
    }
    (digests, frames)
}

fn reader_digest_ok(reader: &mut LiveSqlite, states: &[(u64, u64)], lo: usize) -> usize {
    let rows = reader.exec_ok("SELECT count(*) FROM t").unwrap();
    let n = rows[0][0].as_i64().unwrap() as u64;
    let ic = reader.exec_ok("PRAGMA integrity_check").unwrap();
    assert_eq!(ic[0][0].as_str(), Some("ok"));
    let hit = (lo..states.len()).find(|&k| states[k].0 == n);
    hit.unwrap_or_else(|| panic!("the live reader sees {n} rows, no state in {lo}.. has that"))
}

/// One scenario; returns the time the takeover took.
fn scenario(kill: Kill, keep_reader: bool, seed: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let db = make_db(dir.path(), "app.db");
    let pristine = dir.path().join("pristine.db");
    std::fs::copy(&db, &pristine).unwrap();
    let k = kill.commit();
    let (states, frames) = replay(&pristine, dir.path(), seed, k + 1);
    let mut reader = keep_reader.then(|| {
        let mut r = LiveSqlite::spawn(
            &db,
            LiveOptions {
                busy_timeout: Duration::from_secs(5),
                ..LiveOptions::default()
            },
        )
        .unwrap();
        // Opens the WAL and the -shm now, so this process keeps them alive.
        r.exec_ok("SELECT count(*) FROM t").unwrap();
        r
    });
    let spec = ChildSpec {
        role: "coordinator".into(),
        seed,
        env: vec![
            kill.env(),
            (ENV_DB.into(), db.display().to_string()),
            (ENV_PRISTINE.into(), pristine.display().to_string()),
            (
                ENV_SHADOW.into(),
                dir.path().join("child-shadow.db").display().to_string(),
            ),
        ],
    };
    let mut child = spawn_self(TEST_NAME, &spec).unwrap();
    let status = child.wait_timeout(Duration::from_secs(30)).unwrap();
    let ctx = format!(
        "{kill:?} reader={keep_reader} seed={seed:#x}; child stderr: {}; stdout: {:?}",
        child.stderr(),
        child.other_output()
    );
    assert!(status.is_some(), "child did not die: {ctx}");
    assert!(
        child.was_killed_by_sigkill(),
        "child was not SIGKILLed: {ctx}"
    );
    let acks = child.acks();
    let acked = acks.len() as u64;
    assert_eq!(acked, k - 1, "acks: {ctx}");
    for (i, (txn, hash)) in acks.iter().enumerate() {
        assert_eq!(*txn, i as u64 + 1);
        assert_eq!(*hash, digest_hash(states[i + 1]), "ack {txn} digest: {ctx}");
    }
    // 2. The legacy reader keeps reading a consistent state while nobody coordinates.
    if let Some(r) = reader.as_mut() {
        let seen = reader_digest_ok(r, &states, acked as usize);
        assert!(seen as u64 <= k, "{ctx}");
    }
    // 3. The next opener detects the death, recovers and takes over.
    let cx = Cx::new();
    let t = Instant::now();
    let coord = Coordinator::open(&cx, Arc::new(UnixVfs::new()), &db, options()).unwrap();
    let takeover_time = t.elapsed();
    let tk = coord.takeover().unwrap().clone();
    assert!(tk.previous_died, "{tk:?} {ctx}");
    assert_eq!(tk.previous.unwrap().pid, child.pid(), "{ctx}");
    assert_eq!(tk.generation, tk.previous.unwrap().generation + 1);
    if !keep_reader {
        assert!(
            tk.rebuilt,
            "nobody kept the -shm: it is rebuilt. {tk:?} {ctx}"
        );
    }
    // 4. Nothing acknowledged is lost; SQLite reads a consistent database.
    let got = table_digest(&db, "t").unwrap();
    let k_rec = (acked..=k)
        .find(|&s| states[s as usize] == got)
        .unwrap_or_else(|| {
            panic!("recovered digest {got:?} is neither state {acked} nor {k}: {ctx}")
        });
    let expected = match kill {
        // Frames written by a killed process are in the page cache: a rebuild finds the
        // commit; a -shm kept alive by the reader still has the old header.
        Kill::Point(
            KillPoint::BeforeWalSync | KillPoint::AfterWalSync | KillPoint::AfterHash,
            _,
        ) => Some(if tk.rebuilt { k } else { k - 1 }),
        // Torn copies always lead to a rebuild (by us or by the legacy reader).
        Kill::Point(KillPoint::MidPublish | KillPoint::AfterPublish, _) => Some(k),
        Kill::Vfs(..) => None,
    };
    if let Some(e) = expected {
        assert_eq!(k_rec, e, "recovered state: {tk:?} {ctx}");
    }
    // The published header describes exactly that state (no frames it does not index).
    assert_eq!(
        tk.mx_frame, frames[k_rec as usize],
        "mxFrame after takeover: {tk:?} {ctx}"
    );
    eprintln!(
        "{kill:?} reader={keep_reader}: acked {acked}, recovered state {k_rec}, rebuilt {}, \
         plan {:?}, takeover {takeover_time:?}",
        tk.rebuilt, tk.plan
    );
    assert_eq!(integrity_check(&db).unwrap(), "ok", "{ctx}");
    if let Some(r) = reader.as_mut() {
        assert_eq!(reader_digest_ok(r, &states, 0) as u64, k_rec, "{ctx}");
    }
    // 5. The new coordinator continues from the recovered state.
    let mut shadow = Shadow::create_from(&pristine, &dir.path().join("parent-shadow.db"));
    for i in 1..=k_rec {
        shadow.apply(&txn_sql(seed, i));
    }
    let (changes, db_size) = shadow.apply(&txn_sql(seed, k_rec + 1));
    commit_changes(&coord, &cx, &changes, db_size);
    assert_eq!(table_digest(&db, "t").unwrap(), shadow.digest(), "{ctx}");
    if let Some(r) = reader.as_mut() {
        let n = r.exec_ok("SELECT count(*) FROM t").unwrap()[0][0]
            .as_i64()
            .unwrap();
        assert_eq!(n as u64, shadow.digest().0);
    }
    coord.close(&cx).unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok", "{ctx}");
    if let Some(r) = reader {
        r.exit().unwrap();
    }
    takeover_time
}

#[test]
fn kill9_at_every_commit_point() {
    if let Some((_role, seed)) = child_role() {
        run_child(seed);
        return;
    }
    common::init_tracing();
    let mut kills: Vec<Kill> = KillPoint::ALL
        .iter()
        .enumerate()
        .map(|(i, &p)| Kill::Point(p, 2 + i as u64 % 3))
        .collect();
    // UnixVfs hooks. Writes: record (1), WAL header (2), frames of commit n (n + 2).
    // Syncs: WAL header (1), commit n (n + 1).
    kills.push(Kill::Vfs("write:5", 3));
    kills.push(Kill::Vfs("sync:4", 3));
    kills.push(Kill::Vfs("sync:3:after", 2));
    let start = Instant::now();
    let mut takeovers = Vec::new();
    for (n, kill) in kills.iter().enumerate() {
        for keep_reader in [true, false] {
            let seed = 0x5eed_0000 + (n as u64) * 2 + u64::from(keep_reader);
            takeovers.push(scenario(*kill, keep_reader, seed));
        }
    }
    takeovers.sort();
    eprintln!(
        "{} kill -9 scenarios in {:?}; takeover (probe + recovery) median {:?}, max {:?}",
        takeovers.len(),
        start.elapsed(),
        takeovers[takeovers.len() / 2],
        takeovers[takeovers.len() - 1]
    );
}

#[test]
fn kill_at_parses() {
    let k: KillAt = "mid_publish:3".parse().unwrap();
    assert_eq!(
        k,
        KillAt {
            point: KillPoint::MidPublish,
            commit: 3
        }
    );
    let k: KillAt = "after_wal_sync".parse().unwrap();
    assert_eq!(k.commit, 1);
    assert!("after_wal_sync:0".parse::<KillAt>().is_err());
    assert!("nowhere".parse::<KillAt>().is_err());
}
