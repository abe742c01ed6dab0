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
    // Commit frames with the current salts follow the bad frame: committed data is lost.
    assert_eq!(status(&v, "wal_chain"), "fail");
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

#[test]
fn a_file_shorter_than_the_database_header_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("short.db");
    std::fs::write(&db, b"SQLite format 3\0").unwrap();
    let out = run(&["verify", s(&db)]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "error: cannot open {}: the file is 16 bytes, shorter than the 100-byte SQLite database header",
            db.display()
        )),
        "{err}"
    );
    assert!(err.contains("restore it from a backup"), "{err}");
    assert!(!err.contains("does not start with"), "{err}");
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 3, "{v}");
    let m = v["error"]["message"].as_str().unwrap();
    assert!(m.contains("the file is 16 bytes, shorter than"), "{m}");
    assert_eq!(v["error"]["exit_status"], 3);
    assert_eq!(v["error"]["sqlite_code"], 14);
    // Nothing was created beside it.
    assert!(!sibling(&db, "-wal").exists());
    assert!(!sibling(&db, "-shm").exists());
}

/// A database and a copy of its `-wal` taken while SQLite still holds it (no `-shm`, so
/// only the WAL itself can tell what was committed): `frames` frames, one commit each
/// after the table's creation (2 frames).
fn wal_copy_with_frames(dir: &std::path::Path, frames: u64) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("live")).unwrap();
    let sq = SqliteWalDb::create(&dir.join("live"), "w.db", PS as u32).unwrap();
    sq.exec("INSERT INTO t(id, v) VALUES (1, randomblob(100))")
        .unwrap();
    let wal = sq.wal_path();
    let count = |p: &std::path::Path| (std::fs::metadata(p).unwrap().len() - 32) / FRAME;
    // Each small update rewrites only the table's leaf page: one frame per commit.
    for _ in 0..frames {
        if count(&wal) >= frames {
            break;
        }
        sq.exec("UPDATE t SET v = randomblob(100) WHERE id = 1")
            .unwrap();
    }
    assert_eq!(count(&wal), frames);
    let copy = dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let db = copy.join("w.db");
    std::fs::copy(sq.path(), &db).unwrap();
    std::fs::copy(&wal, sibling(&db, "-wal")).unwrap();
    sq.close_without_checkpoint().unwrap();
    db
}

/// Overwrites `len` bytes of `path` at `offset` with pseudo-random garbage.
fn garbage(path: &std::path::Path, offset: u64, len: u64) {
    let mut b = std::fs::read(path).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for byte in &mut b[offset as usize..(offset + len) as usize] {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *byte = x as u8;
    }
    std::fs::write(path, b).unwrap();
}

#[test]
fn commit_frames_past_a_damaged_frame_fail_unless_lost_tails_are_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_copy_with_frames(dir.path(), 29);
    let wal = sibling(&db, "-wal");
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(status(&v, "wal_chain"), "ok", "{v}");
    assert_eq!(v["wal_break"], Value::Null);

    // Frame 13 (header and page) overwritten with garbage; frames 14..=29 follow it,
    // each a commit frame with the current salts.
    let frame13 = 32 + 12 * FRAME;
    garbage(&wal, frame13, FRAME);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["ok"], false);
    assert_eq!(status(&v, "wal_chain"), "fail");
    let d = detail(&v, "wal_chain");
    assert!(
        d.contains(&format!(
            "frame 13 (offset {frame13}) carries other salts than the WAL header, but 16 later frames carry the current salts and 16 of them are commit frames (the first is frame 14, the last frame 29): transactions committed after the damage are lost"
        )),
        "{d}"
    );
    assert!(d.contains("--allow-lost-tail"), "{d}");
    let b = &v["wal_break"];
    assert_eq!(b["reason"], "salt_mismatch", "{b}");
    assert_eq!(b["frame"], 13);
    assert_eq!(b["offset"], frame13);
    assert_eq!(b["later_current_salt_frames"], 16);
    assert_eq!(b["later_commit_frames"], 16);
    assert_eq!(b["first_later_commit_frame"], 14);
    assert_eq!(b["last_later_commit_frame"], 29);
    let out = run(&["verify", s(&db)]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[FAIL] wal_chain: "), "{text}");
    assert!(text.contains("verdict: FAILED"), "{text}");

    // With --allow-lost-tail it is only a warning.
    let (code, v, _) = run_json(&["verify", s(&db), "--allow-lost-tail"]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["allow_lost_tail"], true);
    assert_eq!(status(&v, "wal_chain"), "warn");
    assert!(
        detail(&v, "wal_chain").contains("only a warning because of --allow-lost-tail"),
        "{v}"
    );
    let out = run(&["verify", s(&db), "--allow-lost-tail"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("verdict: OK"),
    );
}

#[test]
fn a_damaged_page_with_commits_after_it_fails_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_copy_with_frames(dir.path(), 29);
    // Only frame 13's page is garbage: its header (salts) is intact, its checksum fails.
    garbage(&sibling(&db, "-wal"), 32 + 12 * FRAME + 24, PS);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 1, "{v}");
    let d = detail(&v, "wal_chain");
    assert!(
        d.contains("frame 13 (offset 49472) fails its checksum, but 16 later frames carry the current salts and 16 of them are commit frames (the first is frame 14"),
        "{d}"
    );
    assert_eq!(v["wal_break"]["reason"], "checksum_mismatch");
}

#[test]
fn garbage_in_the_last_frame_only_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let db = wal_copy_with_frames(dir.path(), 29);
    let wal = sibling(&db, "-wal");
    let last = 32 + 28 * FRAME;
    // The page of the last frame torn: a checksum failure with nothing after it.
    garbage(&wal, last + 24, PS);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(status(&v, "wal_chain"), "warn");
    assert!(
        detail(&v, "wal_chain").contains(
            "frame 29 (offset 115392) fails its checksum; nothing after it carries the current salts: a transaction torn by a crash, never acknowledged"
        ),
        "{v}"
    );
    assert_eq!(v["wal_break"]["frame"], 29);
    assert_eq!(v["wal_break"]["later_commit_frames"], 0);
    assert_eq!(v["wal_break"]["first_later_commit_frame"], Value::Null);
    // The whole last frame garbage (its salts too): still exit 0.
    garbage(&wal, last, FRAME);
    let (code, v, _) = run_json(&["verify", s(&db)]);
    assert_eq!(code, 0, "{v}");
    assert_ne!(status(&v, "wal_chain"), "fail");
    assert_eq!(v["wal_break"]["later_commit_frames"], 0);
}
