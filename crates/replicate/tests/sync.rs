//! Synchronous replication through the coordinator's commit hook: 8 threads commit with
//! `BEGIN CONCURRENT`; every commit that returned is in the replica (restored without
//! any further shipping), and the replica holds one file per group-commit batch.

use std::sync::Arc;

use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
use fsqlite_replicate::follow::{FollowOptions, Follower};
use fsqlite_replicate::replica::{DirObjects, Replica, Target};
use fsqlite_replicate::sync::SyncReplication;
use fsqlite_types::{Cx, PageNumber};
use fsqlite_vfs::UnixVfs;

const THREADS: u32 = 8;
const COMMITS: u32 = 40;
const PS: usize = 4096;

#[test]
fn every_acknowledged_commit_is_in_the_replica() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("c.db");
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let coord = Coordinator::open(&cx, Arc::clone(&vfs), &db, CoordinatorOptions::default())
        .expect("coordinator");
    // Page 1 plus one page per thread.
    coord
        .commit(
            &cx,
            &(1..=THREADS + 1)
                .map(|p| (PageNumber::new(p).expect("page"), &[0u8; PS][..]))
                .collect::<Vec<_>>(),
            THREADS + 1,
        )
        .expect("seed");
    let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "");
    let opts = FollowOptions {
        checkpoint_frames: Some(100),
        ..FollowOptions::default()
    };
    let follower = Follower::open(Arc::clone(&vfs), &db, replica, opts).expect("follower");
    let sync = SyncReplication::new(follower);
    coord.set_commit_hook(Some(sync.hook()));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let coord = &coord;
            let sync = &sync;
            s.spawn(move || {
                let cx = Cx::new();
                let page = PageNumber::new(t + 2).expect("page");
                for n in 1..=COMMITS {
                    let mut txn = coord.begin_concurrent(&cx).expect("begin");
                    let mut buf = vec![0u8; PS];
                    buf[..4].copy_from_slice(&n.to_be_bytes());
                    txn.write_page(&cx, page, &buf).expect("write");
                    let size = txn.db_size();
                    txn.commit(&cx, size).expect("commit");
                    // Acknowledged: the replica must hold this commit (or a later one of
                    // this thread) right now, with no more shipping.
                    if n % 10 == 0 {
                        let (img, _) = sync
                            .with_follower(|f| f.sink().restore_image(Target::Latest))
                            .expect("restore");
                        let at = (t as usize + 1) * PS;
                        let got = u32::from_be_bytes(img[at..at + 4].try_into().expect("4"));
                        assert!(
                            got >= n,
                            "thread {t}: commit {n} acknowledged, replica has {got}"
                        );
                    }
                }
            });
        }
    });
    let st = sync.status();
    let stats = coord.stats();
    let files = sync.with_follower(|f| f.status().files);
    eprintln!("{st:?} {stats:?} files {files}");
    assert_eq!(st.acknowledged, u64::from(THREADS * COMMITS));
    assert_eq!(st.unacknowledged, 0);
    assert!(
        files <= stats.batches + 2,
        "more files ({files}) than batches ({})",
        stats.batches
    );
    let (img, _) = sync
        .with_follower(|f| f.sink().restore_image(Target::Latest))
        .expect("restore");
    for t in 0..THREADS as usize {
        let at = (t + 1) * PS;
        assert_eq!(
            u32::from_be_bytes(img[at..at + 4].try_into().expect("4")),
            COMMITS
        );
    }
    coord.set_commit_hook(None);
    coord.close(&cx).expect("close");
}

/// A sink that kills its own process with SIGKILL at the `at`-th store, before or after
/// the upload: the points of a batch's upload.
struct KillingSink<S> {
    inner: S,
    calls: u32,
    at: u32,
    after: bool,
}

fn kill_self() -> ! {
    let _ = std::process::Command::new("kill")
        .args(["-9", &std::process::id().to_string()])
        .status();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

impl<S: fsqlite_replicate::follow::Sink> fsqlite_replicate::follow::Sink for KillingSink<S> {
    fn store(
        &mut self,
        level: u32,
        header: &fsqlite_replicate::ltx::LtxHeader,
        bytes: &[u8],
    ) -> fsqlite_error::Result<()> {
        self.calls += 1;
        if self.calls == self.at && !self.after {
            kill_self();
        }
        self.inner.store(level, header, bytes)?;
        if self.calls == self.at && self.after {
            kill_self();
        }
        Ok(())
    }
    fn newest(&mut self) -> fsqlite_error::Result<Option<fsqlite_replicate::ltx::LtxHeader>> {
        self.inner.newest()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

const CHILD_ENV: &str = "FSQLITE_SYNC_KILL_CHILD";

/// The child: 4 threads commit through synchronous replication and print `ack T N` after
/// each commit returns, until the sink kills the process.
fn child(spec: &str) {
    use std::io::Write as _;
    let mut parts = spec.split(',');
    let dir = std::path::PathBuf::from(parts.next().expect("dir"));
    let at: u32 = parts.next().expect("at").parse().expect("at");
    let after = parts.next() == Some("after");
    let db = dir.join("k.db");
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let coord = Coordinator::open(&cx, Arc::clone(&vfs), &db, CoordinatorOptions::default())
        .expect("coordinator");
    if coord.db_size(&cx).expect("size") == 0 {
        coord
            .commit(
                &cx,
                &(1..=5)
                    .map(|p| (PageNumber::new(p).expect("page"), &[0u8; PS][..]))
                    .collect::<Vec<_>>(),
                5,
            )
            .expect("seed");
    }
    let sink = KillingSink {
        inner: Replica::new(DirObjects::new(dir.join("replica")), ""),
        calls: 0,
        at,
        after,
    };
    let follower =
        Follower::open(Arc::clone(&vfs), &db, sink, FollowOptions::default()).expect("follower");
    let sync = SyncReplication::new(follower);
    coord.set_commit_hook(Some(sync.hook()));
    let out = std::sync::Mutex::new(std::io::stdout());
    std::thread::scope(|s| {
        for t in 0..4u32 {
            let (coord, out) = (&coord, &out);
            s.spawn(move || {
                let cx = Cx::new();
                let page = PageNumber::new(t + 2).expect("page");
                loop {
                    let mut txn = coord.begin_concurrent(&cx).expect("begin");
                    let mut buf = vec![0u8; PS];
                    txn.read_page(&cx, page, &mut buf).expect("read");
                    let n = u32::from_be_bytes(buf[..4].try_into().expect("4")) + 1;
                    buf[..4].copy_from_slice(&n.to_be_bytes());
                    txn.write_page(&cx, page, &buf).expect("write");
                    let size = txn.db_size();
                    txn.commit(&cx, size).expect("commit");
                    let mut o = out.lock().expect("stdout");
                    let _ = writeln!(o, "ack {t} {n}");
                    let _ = o.flush();
                }
            });
        }
    });
}

#[test]
fn kill9_at_every_point_of_an_upload_loses_no_acknowledged_commit() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut acked = [0u32; 4];
    let mut cycles = 0;
    for at in 1..=6u32 {
        for phase in ["before", "after"] {
            let out = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "kill9_at_every_point_of_an_upload_loses_no_acknowledged_commit",
                    "--nocapture",
                ])
                .env(CHILD_ENV, format!("{},{at},{phase}", dir.path().display()))
                .output()
                .expect("child");
            assert!(!out.status.success(), "the child was meant to be killed");
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("ack") {
                    continue;
                }
                let t: usize = w.next().and_then(|x| x.parse().ok()).expect("thread");
                let n: u32 = w.next().and_then(|x| x.parse().ok()).expect("n");
                acked[t] = acked[t].max(n);
            }
            let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "");
            let (img, rep) = match replica.restore_image(Target::Latest) {
                Ok(r) => r,
                // Killed before the first snapshot was stored: nothing was acknowledged.
                Err(e) if acked == [0; 4] => {
                    assert!(e.to_string().contains("no snapshot"), "{e}");
                    cycles += 1;
                    continue;
                }
                Err(e) => panic!("restore after acknowledged commits {acked:?}: {e}"),
            };
            for (t, &want) in acked.iter().enumerate() {
                let at_ = (t + 1) * PS;
                let got = u32::from_be_bytes(img[at_..at_ + 4].try_into().expect("4"));
                assert!(
                    got >= want,
                    "kill at store {at} ({phase}): thread {t} had commit {want} acknowledged, the replica (TXID {}) has {got}",
                    rep.txid
                );
            }
            cycles += 1;
        }
    }
    assert_eq!(cycles, 12);
    assert!(
        acked.iter().all(|&n| n > 0),
        "no commit was acknowledged: {acked:?}"
    );
}

/// Concurrent writers, asynchronous following: after each burst of `BEGIN CONCURRENT`
/// commits from 4 threads, the follower ships; every such point restores byte for byte
/// to the database as the coordinator reads it then (what a checkpoint writes).
#[test]
fn concurrent_writers_restore_byte_for_byte_at_every_shipped_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cw.db");
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let coord = Coordinator::open(&cx, Arc::clone(&vfs), &db, CoordinatorOptions::default())
        .expect("coordinator");
    coord
        .commit(
            &cx,
            &(1..=5)
                .map(|p| (PageNumber::new(p).expect("page"), &[0u8; PS][..]))
                .collect::<Vec<_>>(),
            5,
        )
        .expect("seed");
    let replica = Replica::new(DirObjects::new(dir.path().join("replica")), "");
    let opts = FollowOptions {
        max_txids_per_file: 1,
        checkpoint_frames: Some(50),
        ..FollowOptions::default()
    };
    let mut f = Follower::open(Arc::clone(&vfs), &db, replica, opts).expect("follower");
    let image = |coord: &Coordinator<UnixVfs>| {
        let n = coord.db_size(&cx).expect("size");
        let mut img = vec![0u8; n as usize * PS];
        for (i, chunk) in img.chunks_mut(PS).enumerate() {
            coord
                .read_page(&cx, PageNumber::new(i as u32 + 1).expect("page"), chunk)
                .expect("read");
        }
        img
    };
    let mut points = Vec::new();
    for burst in 0..6u32 {
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let coord = &coord;
                s.spawn(move || {
                    let cx = Cx::new();
                    // Each thread its own page, and every burst grows the database by one
                    // page some thread writes (size changes ride along).
                    let page = PageNumber::new(t + 2).expect("page");
                    for n in 0..15u32 {
                        let mut txn = coord.begin_concurrent(&cx).expect("begin");
                        let mut buf = vec![0u8; PS];
                        buf[..12].copy_from_slice(
                            &[burst.to_be_bytes(), t.to_be_bytes(), n.to_be_bytes()].concat(),
                        );
                        txn.write_page(&cx, page, &buf).expect("write");
                        let size = txn.db_size();
                        txn.commit(&cx, size).expect("commit");
                    }
                });
            }
        });
        let size = coord.db_size(&cx).expect("size");
        let grow = vec![burst as u8 + 1; PS];
        coord
            .commit(
                &cx,
                &[(PageNumber::new(size + 1).expect("page"), &grow[..])],
                size + 1,
            )
            .expect("grow");
        f.poll().expect("poll");
        assert_eq!(f.status().lag_frames(), 0);
        points.push((f.status().txid, image(&coord)));
    }
    assert!(f.status().wal_restarts > 0 || f.status().wal_frames > 0);
    for (txid, want) in &points {
        let (img, rep) = f
            .sink()
            .restore_image(Target::Txid(*txid))
            .expect("restore");
        assert_eq!(rep.txid, *txid);
        assert!(
            img == *want,
            "restore at TXID {txid} differs from the coordinator's database"
        );
    }
    drop(f);
    coord.close(&cx).expect("close");
}
