//! The `process` module: python3 SQLite children really lock each other out, report
//! errors as JSON, and never hang the test (timeouts, dead children); the `sqlite3` shell
//! runs once with a time limit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fsqlite_error::FrankenError;
use fsqlite_testkit::process::{LiveOptions, LiveSqlite, sqlite3_cli};
use fsqlite_testkit::serde_json::json;
use fsqlite_testkit::sqlite::{SqliteWalDb, TABLE};

fn wal_child(db: &Path, busy: Duration) -> LiveSqlite {
    LiveSqlite::spawn(
        db,
        LiveOptions {
            busy_timeout: busy,
            wal: true,
            ..LiveOptions::default()
        },
    )
    .unwrap()
}

#[test]
fn begin_immediate_in_one_process_locks_out_the_others_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("l.db");
    let mut a = wal_child(&db, Duration::ZERO);
    let busy = Duration::from_millis(300);
    let mut b = wal_child(&db, busy);
    assert_ne!(a.pid(), b.pid());
    assert!(
        a.sqlite_version().starts_with("3."),
        "{}",
        a.sqlite_version()
    );
    a.exec_ok("CREATE TABLE t(x)").unwrap();
    a.exec_ok("INSERT INTO t VALUES (1)").unwrap();

    let r = a.begin_immediate().unwrap();
    assert!(r.ok && r.in_txn, "{r:?}");
    assert_eq!(a.exec("INSERT INTO t VALUES (2)").unwrap().changes, 1);

    // b's write waits out its busy timeout, then fails with "database is locked".
    let r = b.exec("INSERT INTO t VALUES (3)").unwrap();
    assert!(!r.ok && r.is_locked(), "{r:?}");
    assert_eq!(r.error.as_deref(), Some("database is locked"));
    assert_eq!(r.code.map(|c| c & 0xff), Some(5), "SQLITE_BUSY");
    assert!(
        r.elapsed >= busy.saturating_sub(Duration::from_millis(50)),
        "gave up early: {r:?}"
    );
    assert!(
        r.elapsed < Duration::from_secs(5),
        "waited far too long: {r:?}"
    );
    assert!(matches!(r.clone().into_rows(), Err(FrankenError::Busy)));
    // WAL: b can still read the last committed state.
    assert_eq!(
        b.query("SELECT count(*) FROM t").unwrap().first_i64(),
        Some(1)
    );

    assert!(a.commit().unwrap().ok);
    assert!(b.exec("INSERT INTO t VALUES (3)").unwrap().ok);
    assert_eq!(
        a.query("SELECT count(*) FROM t").unwrap().first_i64(),
        Some(3)
    );
    assert!(a.exit().unwrap().success());
    assert!(b.close().unwrap().ok);
    let r = b.exec("SELECT 1").unwrap();
    assert!(!r.ok && r.error.unwrap().contains("closed"));
    assert!(b.exit().unwrap().success());
}

#[test]
fn values_come_back_as_json_and_sql_errors_are_replies() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = wal_child(&dir.path().join("v.db"), Duration::ZERO);
    let r = c.query("SELECT 7, -1.5, 'text', x'00ff', NULL").unwrap();
    assert!(r.ok);
    assert_eq!(
        r.rows,
        vec![vec![
            json!(7),
            json!(-1.5),
            json!("text"),
            json!({"hex": "00ff"}),
            json!(null)
        ]]
    );
    let r = c.exec("SELEC nonsense").unwrap();
    assert!(!r.ok && !r.is_locked(), "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("syntax error"));
    assert_eq!(r.code_name.as_deref(), Some("SQLITE_ERROR"));
    // A raw unknown request is answered too.
    let r = c.request(&json!({"op": "frobnicate"})).unwrap();
    assert!(!r.ok && r.error.unwrap().contains("unknown op"));
}

#[test]
fn a_dead_child_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = wal_child(&dir.path().join("dead.db"), Duration::ZERO);
    let status = Command::new("kill")
        .args(["-KILL", &c.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let start = Instant::now();
    let err = c.exec("SELECT 1").unwrap_err().to_string();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(err.contains("died"), "{err}");
    assert!(!c.is_alive());
}

#[test]
fn a_reply_that_never_comes_times_out_and_kills_the_child() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_millis(300);
    let mut c = LiveSqlite::spawn(
        &dir.path().join("slow.db"),
        LiveOptions {
            reply_timeout: limit,
            ..LiveOptions::default()
        },
    )
    .unwrap();
    let start = Instant::now();
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                   SELECT count(*) FROM c";
    let err = c.query(endless).unwrap_err().to_string();
    let took = start.elapsed();
    assert!(took >= limit && took < Duration::from_secs(5), "{took:?}");
    assert!(err.contains("did not answer"), "{err}");
    assert!(!c.is_alive(), "the stuck child was killed");
}

#[test]
fn spawn_on_an_unopenable_path_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let err = LiveSqlite::spawn(&dir.path().join("no/such/dir/x.db"), LiveOptions::default())
        .unwrap_err();
    assert!(matches!(err, FrankenError::CannotOpen { .. }), "{err}");
}

#[test]
fn sqlite3_cli_reads_a_database_rusqlite_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = SqliteWalDb::create(dir.path(), "cli.db", 4096).unwrap();
    let sum = db.run_workload(5, 3, 4).unwrap();
    let path = db.path().to_path_buf();
    db.close().unwrap();
    let out = sqlite3_cli(
        &path,
        &format!("SELECT count(*) FROM {TABLE}; PRAGMA integrity_check;"),
    )
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("{}\nok\n", sum.rows));
    let out = sqlite3_cli(&path, "SELECT * FROM missing").unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such table"));
}
