//! `fsqlite verify` on SQLite-made databases and damaged copies of them.

mod common;

use common::{
    assert_golden, fingerprint, flip_byte, normalize, run, run_json, s, sibling, sqlite_db,
};
use fsqlite_testkit::sqlite::{SqliteWalDb, sqlite_checkpoint_copy};
use serde_json::Value;

const PS: u64 = 4096;
const FRAME: u64 = PS + 24;

fn status<'a>(v: &'a Value, name: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))["status"]
        .as_str()
        .unwrap()
}

fn detail(v: &Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_sound_database_passes_every_check_and_is_not_modified() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "a.db", 10);
    let before = fingerprint(&db);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(fingerprint(&db), before, "verify must not modify any file");
    assert_eq!(v["ok"], true);
    let names: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "database_header",
            "wal_header",
            "wal_chain",
            "shm_header",
            "shm_matches_wal",
            "shm_hash_index",
            "backfilled_pages",
            "page_trailers"
        ]
    );
    for n in &names[..7] {
        assert_eq!(status(&v, n), "ok", "{n}: {}", detail(&v, n));
    }
    assert_eq!(status(&v, "page_trailers"), "skip");
    assert_golden("verify.json", &normalize(&v, dir.path()));
    let text = String::from_utf8(run(&["verify", s(&db)]).stdout).unwrap();
    assert_eq!(text.lines().count(), 10, "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("verdict: OK"),
        "{text}"
    );
}

#[test]
fn a_damaged_committed_frame_fails_and_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "a.db", 10);
    // Damage a byte in the page of frame 4: the -shm (valid, from SQLite) still publishes
    // every commit, so committed frames are now provably damaged.
    flip_byte(&sibling(&db, "-wal"), 32 + 3 * FRAME + 24 + 200);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(status(&v, "wal_chain"), "warn");
    assert!(
        detail(&v, "wal_chain").contains("frame 4"),
        "{}",
        detail(&v, "wal_chain")
    );
    assert_eq!(status(&v, "shm_matches_wal"), "fail");
    let d = detail(&v, "shm_matches_wal");
    assert!(d.contains("committed frames 4..="), "{d}");
    let text = String::from_utf8(run(&["verify", s(&db)]).stdout).unwrap();
    assert!(text.contains("[FAIL] shm_matches_wal"), "{text}");
    assert!(text.contains("verdict: FAILED"), "{text}");

    // recover refuses to make the loss permanent, and changes nothing.
    let before = fingerprint(&db);
    let out = run(&["recover", s(&db)]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("would drop committed frames") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fingerprint(&db), before);
}

#[test]
fn a_torn_tail_and_a_damaged_shm_only_warn() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "a.db", 6);
    // A crash mid-append: half a frame of garbage after the last commit.
    let wal = sibling(&db, "-wal");
    let mut bytes = std::fs::read(&wal).unwrap();
    bytes.extend(std::iter::repeat_n(0xa5, (FRAME / 2) as usize));
    std::fs::write(&wal, bytes).unwrap();
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(status(&v, "wal_chain"), "warn");
    assert!(
        detail(&v, "wal_chain").contains("partial"),
        "{}",
        detail(&v, "wal_chain")
    );
    assert_eq!(status(&v, "shm_matches_wal"), "ok");

    // A writer that died mid-publish: the two header copies differ.
    flip_byte(&sibling(&db, "-shm"), 16);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(status(&v, "shm_header"), "warn");
    assert!(
        detail(&v, "shm_header").contains("differ"),
        "{}",
        detail(&v, "shm_header")
    );
    assert_eq!(status(&v, "shm_matches_wal"), "skip");

    // recover rebuilds it from the WAL, and verify is clean again (but for the torn tail).
    let (code, r, _) = run_json(&["recover", s(&db)]);
    assert_eq!(code, 0, "{r}");
    assert_eq!(r["rebuilt"], true);
    assert_eq!(r["matches_wal"], true);
    assert_eq!(r["before"]["header_valid"], false);
    assert_eq!(r["wal"]["stop"]["reason"], "partial_frame");
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0);
    assert_eq!(status(&v, "shm_header"), "ok");
    assert_eq!(
        status(&v, "shm_hash_index"),
        "ok",
        "{}",
        detail(&v, "shm_hash_index")
    );
}

#[test]
fn a_backfilled_page_that_differs_from_its_frame_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut sq = SqliteWalDb::create(dir.path(), "b.db", 4096).unwrap();
    sq.run_workload(3, 8, 2).unwrap();
    // SQLite backfills every frame but keeps the WAL (PASSIVE does not reset it).
    let row = sq.query_rows("PRAGMA wal_checkpoint(PASSIVE)").unwrap();
    assert_eq!(row[0][0], "0");
    let db = sq.path().to_path_buf();
    sq.close_without_checkpoint().unwrap();
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        status(&v, "backfilled_pages"),
        "ok",
        "{}",
        detail(&v, "backfilled_pages")
    );
    assert!(detail(&v, "backfilled_pages").contains("read back as their WAL frames"));

    // The database file loses a checkpointed write (page 2 damaged).
    flip_byte(&db, PS + 100);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(status(&v, "backfilled_pages"), "fail");
    assert!(
        detail(&v, "backfilled_pages").contains("page 2"),
        "{}",
        detail(&v, "backfilled_pages")
    );
}

#[test]
fn no_wal_is_skipped_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path(), "c.db", 3);
    // Let SQLite checkpoint and remove the WAL (a clean close).
    let (busy, _, _) = sqlite_checkpoint_copy(&db, "TRUNCATE").unwrap();
    assert_eq!(busy, 0);
    std::fs::remove_file(sibling(&db, "-wal")).unwrap();
    std::fs::remove_file(sibling(&db, "-shm")).unwrap();
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(status(&v, "wal_header"), "skip");
    assert_eq!(status(&v, "shm_header"), "skip");
    // Neither verify nor checkpoint nor recover creates the missing files.
    for cmd in ["checkpoint", "recover"] {
        let (code, r, _) = run_json(&[cmd, s(&db)]);
        assert_eq!(code, 0, "{cmd}: {r}");
        assert!(r["note"].as_str().unwrap().contains("-wal"), "{r}");
    }
    assert!(!sibling(&db, "-wal").exists());
    assert!(!sibling(&db, "-shm").exists());
}

#[test]
fn page_trailers_are_checked_where_the_database_reserves_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let out = std::process::Command::new("sqlite3")
        .arg(&db)
        .args([
            ".filectrl reserve_bytes 16",
            "PRAGMA journal_mode=WAL",
            "CREATE TABLE t(x)",
            "INSERT INTO t VALUES (randomblob(5000))",
            "VACUUM",
        ])
        .output()
        .expect("the sqlite3 shell");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Give every page its xxh3-128 trailer, as an engine that reserves them would.
    let mut bytes = std::fs::read(&db).unwrap();
    assert_eq!(bytes[20], 16, "SQLite reserved 16 bytes per page");
    for page in bytes.chunks_mut(PS as usize) {
        fsqlite_wal::checksum::write_page_checksum(page).unwrap();
    }
    std::fs::write(&db, &bytes).unwrap();
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(
        status(&v, "page_trailers"),
        "ok",
        "{}",
        detail(&v, "page_trailers")
    );
    let pages = bytes.len() as u64 / PS;
    assert!(
        detail(&v, "page_trailers").starts_with(&format!("{pages} page images")),
        "{v}"
    );

    flip_byte(&db, PS + 17);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(status(&v, "page_trailers"), "fail");
    assert!(
        detail(&v, "page_trailers").contains("database page 2"),
        "{}",
        detail(&v, "page_trailers")
    );
}
