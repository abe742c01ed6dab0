//! The crash-test kill hook: this test binary re-executes itself (sled style) with
//! `FSQLITE_KILL_AT=<op>:<n>[:after]`; the child builds its VFS with
//! `UnixVfs::from_env()` and must die by SIGKILL exactly at the named operation, with
//! exactly the operations before it (and, with `:after`, that one) on disk.

mod unix_support;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fsqlite_types::{Cx, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{SHM_EXCLUSIVE, SHM_LOCK, UnixFile, UnixVfs, Vfs, VfsFile};

/// Set (to `<scenario>:<dir>`) only in the re-executed child.
const CHILD_ENV: &str = "FSQLITE_UNIX_KILL_CHILD";
const RECORD: usize = 8;

fn open(vfs: &UnixVfs, path: &Path) -> UnixFile {
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    vfs.open(&Cx::new(), Some(path), flags).unwrap().0
}

fn record(i: u64) -> [u8; RECORD] {
    i.to_le_bytes()
}

fn write_record(f: &mut UnixFile, i: u64) {
    f.write(&Cx::new(), &record(i), (i - 1) * RECORD as u64)
        .unwrap();
}

/// The records (1, 2, ...) found in a file, checking that each is in its slot.
fn records(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(bytes.len() % RECORD, 0, "torn record in {}", path.display());
    bytes
        .chunks(RECORD)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The child side. A no-op unless this process is the re-executed child.
#[test]
fn kill_child_entry() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (scenario, dir) = spec.split_once(':').unwrap();
    let dir = PathBuf::from(dir);
    let cx = Cx::new();
    let vfs = UnixVfs::from_env();
    assert!(vfs.kill_hook().is_some(), "FSQLITE_KILL_AT not picked up");
    let mut a = open(&vfs, &dir.join("a.db"));
    match scenario {
        "writes" => {
            for i in 1..=5 {
                write_record(&mut a, i);
            }
        }
        "syncs" => {
            for i in 1..=3 {
                write_record(&mut a, i);
                a.sync(&cx, SyncFlags::FULL | SyncFlags::DATAONLY).unwrap();
            }
        }
        "clones" => {
            // The counter is shared by clones of the VFS and all their files.
            let mut b = open(&vfs.clone(), &dir.join("b.db"));
            write_record(&mut a, 1); // any #1
            write_record(&mut b, 1); // any #2
            a.sync(&cx, SyncFlags::FULL).unwrap(); // any #3
            b.truncate(&cx, 4096).unwrap(); // any #4
            write_record(&mut a, 2);
        }
        "shm" => {
            a.shm_map(&cx, 0, 32768, true).unwrap().unwrap();
            write_record(&mut a, 1);
            a.shm_lock(&cx, 0, 1, SHM_LOCK | SHM_EXCLUSIVE).unwrap(); // shm_lock #1
            write_record(&mut a, 2);
            a.shm_lock(&cx, 1, 1, SHM_LOCK | SHM_EXCLUSIVE).unwrap(); // shm_lock #2
            write_record(&mut a, 3);
        }
        other => panic!("unknown scenario {other}"),
    }
}

/// Runs the child for `scenario` with `FSQLITE_KILL_AT=kill_at`; returns its directory
/// and whether it died by SIGKILL.
fn run_child(scenario: &str, kill_at: &str) -> (tempfile::TempDir, bool) {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("{scenario}:{}", dir.path().display());
    let status = unix_support::run_self(
        "kill_child_entry",
        &[(CHILD_ENV, spec.as_str()), ("FSQLITE_KILL_AT", kill_at)],
        Duration::from_secs(20),
    );
    let killed = status.signal() == Some(libc::SIGKILL);
    assert!(
        killed || status.success(),
        "child for {scenario} / {kill_at} failed: {status}"
    );
    (dir, killed)
}

#[test]
fn dies_before_the_third_write() {
    let (dir, killed) = run_child("writes", "write:3");
    assert!(killed);
    assert_eq!(records(&dir.path().join("a.db")), [1, 2]);
}

#[test]
fn dies_right_after_the_second_sync() {
    let (dir, killed) = run_child("syncs", "sync:2:after");
    assert!(killed);
    assert_eq!(records(&dir.path().join("a.db")), [1, 2]);
}

#[test]
fn counter_is_shared_by_clones_and_any_counts_every_kind() {
    let (dir, killed) = run_child("clones", "any:4");
    assert!(killed);
    assert_eq!(records(&dir.path().join("a.db")), [1]);
    // Killed before the truncate: b.db was never extended to 4096 bytes.
    assert_eq!(records(&dir.path().join("b.db")), [1]);
}

#[test]
fn dies_after_the_second_shm_lock() {
    let (dir, killed) = run_child("shm", "shm_lock:2:after");
    assert!(killed);
    assert_eq!(records(&dir.path().join("a.db")), [1, 2]);
}

#[test]
fn a_workload_shorter_than_n_finishes_normally() {
    let (dir, killed) = run_child("writes", "write:6");
    assert!(!killed);
    assert_eq!(records(&dir.path().join("a.db")), [1, 2, 3, 4, 5]);
}
