//! The follower shipping to real S3 servers — SeaweedFS and moto (the second, lighter
//! target) — with stock SQLite writing: the restore equals the source checkpointed, and
//! conditional creates hold on both (what generations and retried uploads rely on).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fsqlite_replicate::follow::{FollowOptions, Follower};
use fsqlite_replicate::replica::{Objects, Replica, Target};
use fsqlite_s3::testserver::{MotoServer, SeaweedServer};
use fsqlite_s3::{S3Config, Store};
use fsqlite_vfs::UnixVfs;
use rusqlite::Connection;

fn checkpointed_copy(src: &Path, dir: &Path) -> Vec<u8> {
    let d = tempfile::tempdir_in(dir).expect("tempdir");
    let db = d.path().join("c.db");
    fs::copy(src, &db).expect("copy");
    let wal = PathBuf::from(format!("{}-wal", src.display()));
    if wal.exists() {
        fs::copy(&wal, d.path().join("c.db-wal")).expect("copy wal");
    }
    let c = Connection::open(&db).expect("open");
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    drop(c);
    fs::read(&db).expect("read")
}

fn round_trip(cfg: &S3Config, what: &str) {
    let store = Store::new(cfg).expect("store");
    // Conditional creates: the second one is refused, the object unchanged.
    assert!(Objects::put_if_absent(&store, "probe/once", b"1").expect("create"));
    assert!(!Objects::put_if_absent(&store, "probe/once", b"2").expect("second create"));
    assert_eq!(
        Objects::get(&store, "probe/once").expect("get").as_deref(),
        Some(&b"1"[..])
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    let c = Connection::open(&db).expect("open");
    c.pragma_update(None, "journal_mode", "wal").expect("wal");
    c.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);")
        .expect("schema");
    let opts = FollowOptions {
        checkpoint_frames: Some(60),
        snapshot_every_txids: Some(50),
        ..FollowOptions::default()
    };
    let mut f = Follower::open(
        Arc::new(UnixVfs::new()),
        &db,
        Replica::new(store, "db"),
        opts,
    )
    .expect("follower");
    for i in 0..120i64 {
        c.execute(
            "INSERT OR REPLACE INTO t VALUES (?1, randomblob(?2))",
            rusqlite::params![i % 40, 200 + i * 7],
        )
        .expect("insert");
        if i % 4 == 0 {
            f.poll().expect("poll");
        }
    }
    f.poll().expect("last poll");
    let st = f.status();
    assert_eq!(st.lag_frames(), 0);
    assert!(st.wal_restarts > 0, "{what}: {st:?}");
    let want = checkpointed_copy(&db, dir.path());
    let (img, rep) = f.sink().restore_image(Target::Latest).expect("restore");
    assert_eq!(rep.txid, st.txid);
    assert!(
        img == want,
        "{what}: restore differs from the checkpointed source"
    );
    eprintln!(
        "{what}: {} files, {} bytes, TXID {}",
        st.files, st.bytes, st.txid
    );
}

#[test]
fn follower_round_trip_on_seaweedfs() {
    let s = SeaweedServer::start().unwrap_or_else(|e| panic!("{e}"));
    round_trip(&s.config(), "SeaweedFS");
}

#[test]
fn follower_round_trip_on_moto() {
    let s = MotoServer::start().unwrap_or_else(|e| panic!("{e}"));
    round_trip(&s.config(), "moto");
}
