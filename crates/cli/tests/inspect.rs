//! `fsqlite inspect` against SQLite-made databases, bad input, and a live SQLite process.

mod common;

use common::{assert_golden, fingerprint, normalize, run, run_json, s, sibling, sqlite_db};
use fsqlite_testkit::process::{LiveOptions, LiveSqlite};
use fsqlite_testkit::sqlite::{read_file, read_shm_header, wal_scan};

#[test]
fn reports_what_sqlite_wrote_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "a.db", 12);
    let before = fingerprint(&db);
    let (code, v, _) = run_json(&["inspect", s(&db)]);
    assert_eq!(code, 0);
    assert_eq!(fingerprint(&db), before, "inspect must not modify any file");

    // The testkit's independent WAL reader is the oracle.
    let oracle = wal_scan(&read_file(&sibling(&db, "-wal")).unwrap()).unwrap();
    let w = &v["wal"];
    assert_eq!(w["header_valid"], true);
    assert_eq!(
        w["commits"].as_u64().unwrap() as usize,
        oracle.committed().iter().filter(|f| f.is_commit()).count()
    );
    assert_eq!(w["mx_frame"].as_u64().unwrap(), u64::from(oracle.mx_frame));
    assert_eq!(
        w["valid_frames"].as_u64().unwrap(),
        u64::from(oracle.valid_frames)
    );
    assert_eq!(w["header"]["page_size"], 4096);
    assert_eq!(w["header"]["magic"], "0x377f0682");
    assert_eq!(w["header"]["checksum_word_order"], "little-endian");
    assert_eq!(w["stop"]["reason"], "end_of_file");
    assert_eq!(
        w["pages_touched"].as_u64().unwrap() as usize,
        oracle.committed_pages().len()
    );
    assert!(w["frames"].is_null(), "frames only with --frames");

    let shm = read_shm_header(&read_file(&sibling(&db, "-shm")).unwrap()).unwrap();
    let sh = &v["shm"];
    assert_eq!(sh["header_valid"], true);
    assert_eq!(sh["copies_equal"], true);
    assert_eq!(
        sh["copy_a"]["mx_frame"].as_u64().unwrap(),
        u64::from(shm.mx_frame)
    );
    assert_eq!(sh["copy_a"]["n_page"], w["db_size_pages"]);
    assert_eq!(sh["copy_a"]["salt1"], w["header"]["salt1"]);
    assert_eq!(
        sh["checkpoint_info"]["n_backfill"].as_u64().unwrap(),
        u64::from(shm.n_backfill)
    );
    assert_eq!(v["database"]["header"]["wal_mode"], true);
    assert_eq!(v["locks"]["method"], "F_OFD_GETLK");
    assert_eq!(v["locks"]["attached"], false);
    assert_eq!(v["hybrid"]["exists"], false);

    // Deterministic once paths and the random salts/checksums are normalized.
    assert_golden("inspect.json", &normalize(&v, dir.path()));

    let (_, vf, _) = run_json(&["inspect", s(&db), "--frames"]);
    let frames = vf["wal"]["frames"].as_array().unwrap();
    assert_eq!(
        frames.len() as u64,
        vf["wal"]["valid_frames"].as_u64().unwrap()
    );
    assert_eq!(frames[0]["frame"], 1);
    assert_eq!(frames[0]["offset"], 32);
    let text = String::from_utf8(run(&["inspect", s(&db), "--frames"]).stdout).unwrap();
    assert!(text.contains("valid prefix ends at offset"), "{text}");
    assert!(text.contains("frame      1 @"), "{text}");
}

#[test]
fn bad_paths_give_a_clear_error_and_status_3() {
    let dir = tempfile::tempdir().unwrap();
    let not_db = dir.path().join("notes.txt");
    std::fs::write(&not_db, "hello, this is not a database at all ....................................................................").unwrap();
    for (path, needle) in [
        (not_db.clone(), "not a SQLite database"),
        (dir.path().join("missing.db"), "no such file"),
        (dir.path().to_path_buf(), "not a regular file"),
    ] {
        for cmd in ["inspect", "verify", "checkpoint", "recover"] {
            let out = run(&[cmd, s(&path)]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(3),
                "{cmd} {}: {err}",
                path.display()
            );
            assert!(err.contains(needle), "{cmd}: {err}");
            assert!(err.contains("hint:"), "{cmd}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // Nothing was created next to the missing path.
    assert!(!dir.path().join("missing.db").exists());
    assert!(!dir.path().join("missing.db-wal").exists());
    // JSON errors are JSON.
    let (code, v, _) = run_json(&["inspect", s(&not_db)]);
    assert_eq!(code, 3);
    assert_eq!(v["error"]["exit_status"], 3);
    assert_eq!(v["error"]["sqlite_code"], 14);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a SQLite database")
    );
}

#[test]
fn sees_the_locks_of_a_live_sqlite_process_without_disturbing_it() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "live.db", 5);
    let mut live = LiveSqlite::spawn(&db, LiveOptions::default()).unwrap();
    let n = live
        .query("SELECT count(*) FROM t")
        .unwrap()
        .first_i64()
        .unwrap();
    let pid = i64::from(live.pid());

    let (code, v, _) = run_json(&["inspect", s(&db)]);
    assert_eq!(code, 0);
    assert_eq!(v["locks"]["attached"], true);
    let shm_locks = v["locks"]["shm"].as_array().unwrap();
    let dms = shm_locks.iter().find(|l| l["name"] == "DMS").unwrap();
    assert_eq!(dms["state"], "shared");
    assert_eq!(dms["holder_pid"], pid);
    let db_locks = v["locks"]["database"].as_array().unwrap();
    let shared = db_locks.iter().find(|l| l["name"] == "SHARED").unwrap();
    assert_eq!(shared["state"], "shared");

    // A write transaction: WAL_WRITE_LOCK exclusive, seen by the probe.
    assert!(live.begin_immediate().unwrap().ok);
    let (_, v, _) = run_json(&["inspect", s(&db)]);
    let write = v["locks"]["shm"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "WRITE")
        .cloned()
        .unwrap();
    assert_eq!(write["state"], "exclusive");
    assert_eq!(write["holder_pid"], pid);
    let text = String::from_utf8(run(&["inspect", s(&db)]).stdout).unwrap();
    assert!(text.contains("WRITE exclusive by pid"), "{text}");
    assert!(
        live.exec("INSERT INTO t(id, v) VALUES (100000, x'01')")
            .unwrap()
            .ok
    );
    assert!(live.commit().unwrap().ok);

    // The probes took no lock: SQLite can still write and checkpoint.
    assert_eq!(
        live.query("SELECT count(*) FROM t")
            .unwrap()
            .first_i64()
            .unwrap(),
        n + 1
    );
    let ck = live.query("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
    assert!(ck.ok, "{ck:?}");
    live.exit().unwrap();
}

#[test]
fn decodes_the_hybrid_coordinator_record() {
    use fsqlite_mvcc::lifecycle::CoordinatorRecord;
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "h.db", 2);
    let record = sibling(&db, ".fsqlite-shm");
    std::fs::write(&record, CoordinatorRecord::for_this_process(3).encode()).unwrap();
    let (code, v, _) = run_json(&["inspect", s(&db)]);
    assert_eq!(code, 0);
    let h = &v["hybrid"];
    assert_eq!(h["exists"], true);
    assert_eq!(h["size_bytes"], 48);
    assert!(
        h["first_bytes_hex"]
            .as_str()
            .unwrap()
            .starts_with(&common::hex(b"FSQLCOOR"))
    );
    assert_eq!(h["record"]["state"], "active");
    assert_eq!(h["record"]["pid"], std::process::id());
    assert_eq!(h["record"]["generation"], 3);
    assert_eq!(h["record"]["owner_alive"], true);
    assert!(
        h["record"]["legacy_writers"].is_null(),
        "no setting recorded"
    );
    assert!(h["record_problem"].is_null());

    // A real coordinator records the setting of the processes on the database.
    for (mode, name) in [
        (fsqlite_mvcc::LegacyWriters::Admitted, "admitted"),
        (fsqlite_mvcc::LegacyWriters::Excluded, "excluded"),
    ] {
        let cx = fsqlite_types::Cx::new();
        let coord = fsqlite_mvcc::Coordinator::open(
            &cx,
            std::sync::Arc::new(fsqlite_vfs::UnixVfs::new()),
            &db,
            fsqlite_mvcc::CoordinatorOptions {
                legacy_writers: mode,
                kill_at: None,
                checkpoint_on_close: false,
                ..fsqlite_mvcc::CoordinatorOptions::default()
            },
        )
        .unwrap();
        let (code, v, _) = run_json(&["inspect", s(&db)]);
        assert_eq!(code, 0);
        assert_eq!(v["hybrid"]["record"]["legacy_writers"], name, "{v}");
        let text = String::from_utf8(run(&["inspect", s(&db)]).stdout).unwrap();
        assert!(
            text.contains(&format!("stock SQLite writers {name}")),
            "{text}"
        );
        coord.close(&cx).unwrap();
    }

    std::fs::write(
        &record,
        b"not a coordinator record, just some bytes of junk here....",
    )
    .unwrap();
    let (code, v, _) = run_json(&["inspect", s(&db)]);
    assert_eq!(code, 0);
    assert!(v["hybrid"]["record"].is_null());
    assert!(
        v["hybrid"]["record_problem"]
            .as_str()
            .unwrap()
            .contains("magic"),
        "{v}"
    );
    let text = String::from_utf8(run(&["inspect", s(&db)]).stdout).unwrap();
    assert!(text.contains("record magic is wrong"), "{text}");
}
