//! `fsqlite checkpoint` and `fsqlite recover` against SQLite: the same triple SQLite
//! reports, a database SQLite still finds sound and complete, and refusals while a live
//! SQLite process holds the database.

mod common;

use std::path::Path;

use common::{copy_db, fingerprint, run, run_json, s, sibling, sqlite_db};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::sqlite::{TABLE, integrity_check, sqlite_checkpoint_copy, table_digest};

fn triple(v: &serde_json::Value) -> (i64, i64, i64) {
    (
        i64::from(v["busy"].as_bool().unwrap()),
        v["log_frames"].as_i64().unwrap(),
        v["checkpointed_frames"].as_i64().unwrap(),
    )
}

fn check_mode(src: &Path, root: &Path, mode: &str) {
    let ours = copy_db(src, &root.join(format!("ours-{mode}")));
    let theirs = copy_db(src, &root.join(format!("sqlite-{mode}")));
    let (code, v, err) = run_json(&["checkpoint", s(&ours), "--mode", mode]);
    assert_eq!(code, 0, "{mode}: {v} {err}");
    let want = sqlite_checkpoint_copy(&theirs, mode).unwrap();
    assert_eq!(triple(&v), want, "{mode}: our triple vs SQLite's");
    assert_eq!(v["mode"], mode);
    assert_eq!(v["barrier"]["observed"], true, "{v}");
    assert!(v["barrier"]["pages_verified"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["read_back"]["status"], "verified", "{v}");
    assert_eq!(
        v["read_back"]["pages"], v["barrier"]["pages_verified"],
        "{v}"
    );
    if mode == "truncate" {
        assert_eq!(v["wal_size_after"], 0);
    }
    // SQLite agrees the result is sound and holds the same rows.
    assert_eq!(integrity_check(&ours).unwrap(), "ok");
    assert_eq!(
        table_digest(&ours, TABLE).unwrap(),
        table_digest(&theirs, TABLE).unwrap()
    );
}

#[test]
fn every_mode_matches_sqlites_triple_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_db(dir.path(), "src.db", 15);
    for mode in ["passive", "full", "restart", "truncate"] {
        check_mode(&src, dir.path(), mode);
    }
    // Text output names the triple and the barrier.
    let db = copy_db(&src, &dir.path().join("text"));
    let out = run(&["checkpoint", s(&db)]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("SQLite's triple: 0|"), "{text}");
    assert!(text.contains("recovery barrier:"), "{text}");
    assert!(text.contains("read-back: verified"), "{text}");
}

#[test]
fn a_live_sqlite_writer_makes_checkpoint_busy_and_recover_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "live.db", 8);
    let mut live = LiveSqlite::spawn(&db, LiveOptions::default()).unwrap();
    assert!(live.begin_immediate().unwrap().ok);
    assert!(
        live.exec("INSERT INTO t(id, v) VALUES (424242, x'00')")
            .unwrap()
            .ok
    );

    let before = fingerprint(&db);
    let out = run(&["recover", s(&db)]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use") && err.contains(&format!("process {}", live.pid())),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    assert_eq!(
        fingerprint(&db),
        before,
        "a refused recover changes nothing"
    );
    let (code, v, _) = run_json(&["recover", s(&db)]);
    assert_eq!(code, 4);
    assert_eq!(v["error"]["exit_status"], 4);

    // FULL needs the writer lock the live writer holds: it degrades to busy, as in SQLite.
    let (code, v, err) = run_json(&[
        "checkpoint",
        s(&db),
        "--mode",
        "full",
        "--busy-timeout",
        "200",
    ]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["busy"], true, "{v}");

    // The live writer is undisturbed: it commits, and its row is there.
    assert!(live.commit().unwrap().ok);
    assert_eq!(
        live.query("SELECT count(*) FROM t WHERE id = 424242")
            .unwrap()
            .first_i64(),
        Some(1)
    );
    // A live reader in a transaction: TRUNCATE cannot reset the WAL under it.
    assert!(live.begin().unwrap().ok);
    assert!(live.query("SELECT count(*) FROM t").unwrap().ok);
    let (code, v, _) = run_json(&[
        "checkpoint",
        s(&db),
        "--mode",
        "truncate",
        "--busy-timeout",
        "200",
    ]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["busy"], true, "{v}");
    assert!(live.commit().unwrap().ok);
    live.exit().unwrap();
    assert_eq!(integrity_check(&db).unwrap(), "ok");
}

#[test]
fn recover_rebuilds_a_crashed_snapshot_and_sqlite_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "c.db", 12);
    // Throw the -shm away: what a crash of every process, then a fresh start, looks like.
    std::fs::write(sibling(&db, "-shm"), [0u8; 3]).unwrap();
    let digest_before = {
        let probe = copy_db(&db, &dir.path().join("probe"));
        table_digest(&probe, TABLE).unwrap()
    };
    let (code, v, err) = run_json(&["recover", s(&db)]);
    assert_eq!(code, 0, "{v} {err}");
    assert_eq!(v["rebuilt"], true);
    assert_eq!(v["matches_wal"], true);
    assert_eq!(v["before"]["header_valid"], false);
    assert_eq!(v["recovered_mx_frame"], v["wal"]["mx_frame"]);
    assert_eq!(v["after"]["mx_frame"], v["wal"]["mx_frame"]);
    let text = String::from_utf8(run(&["recover", s(&db)]).stdout).unwrap();
    assert!(
        text.contains("rebuilt the WAL-index from the WAL"),
        "{text}"
    );
    // Our rebuilt -shm verifies, and SQLite reads the same rows.
    let (code, vv, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{vv}");
    assert_eq!(table_digest(&db, TABLE).unwrap(), digest_before);
    assert_eq!(integrity_check(&db).unwrap(), "ok");
}
