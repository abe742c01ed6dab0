//! Shared helpers of the `fsqlite` integration tests: run the built binary, make SQLite
//! databases, fingerprint files, normalize JSON for golden comparisons.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fsqlite_testkit::sqlite::SqliteWalDb;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_fsqlite");

/// Runs `fsqlite args...` and returns its output (never panics on a non-zero status).
pub fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run fsqlite")
}

/// Runs with `--json` appended and parses stdout.
pub fn run_json(args: &[&str]) -> (i32, Value, String) {
    let mut a: Vec<&str> = args.to_vec();
    a.push("--json");
    let out = run(&a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}\nstderr: {stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// A path as a `&str`.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A SQLite-made WAL database `dir/name` with `commits` committed transactions left in
/// its WAL (closed without a checkpoint, so the `-wal` and `-shm` stay).
pub fn sqlite_db(dir: &Path, name: &str, commits: u32) -> PathBuf {
    let mut db = SqliteWalDb::create(dir, name, 4096).expect("create");
    db.run_workload(7, commits, 3).expect("workload");
    let path = db.path().to_path_buf();
    db.close_without_checkpoint().expect("close");
    path
}

/// `<db><suffix>`.
pub fn sibling(db: &Path, suffix: &str) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The bytes of the database, `-wal` and `-shm` (`None` for a missing file).
pub fn fingerprint(db: &Path) -> Vec<Option<Vec<u8>>> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suf| std::fs::read(sibling(db, suf)).ok())
        .collect()
}

/// Copies the database and its `-wal`/`-shm` into `dir` under the same name.
pub fn copy_db(db: &Path, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let to = dir.join(db.file_name().unwrap());
    for suf in ["", "-wal", "-shm"] {
        let from = sibling(db, suf);
        if from.exists() {
            std::fs::copy(&from, sibling(&to, suf)).unwrap();
        }
    }
    to
}

/// Flips one byte of `path` at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0xff;
    std::fs::write(path, b).unwrap();
}

fn redact_hex_words(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"0x")
            && bytes.len() >= i + 10
            && bytes[i + 2..i + 10].iter().all(u8::is_ascii_hexdigit)
            && !bytes.get(i + 10).is_some_and(u8::is_ascii_hexdigit)
        {
            out.push_str("0x########");
            i += 10;
        } else {
            out.push(bytes[i] as char);
            i += 1;
        }
    }
    out
}

/// Normalizes a report for a golden comparison: the temp directory becomes `<DIR>`, the
/// values of salt and checksum fields become `<random>`, and 8-digit hex words inside
/// sentences become `0x########` (they derive from random salts).
pub fn normalize(v: &Value, dir: &Path) -> Value {
    const RANDOM: [&str; 4] = ["salt1", "salt2", "checksum", "frame_checksum"];
    let dir = s(dir);
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let nv = if RANDOM.contains(&k.as_str()) {
                        Value::String("<random>".into())
                    } else {
                        normalize(v, Path::new(dir))
                    };
                    (k.clone(), nv)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| normalize(x, Path::new(dir))).collect()),
        Value::String(st) => Value::String(redact_hex_words(&st.replace(dir, "<DIR>"))),
        other => other.clone(),
    }
}

/// Compares `actual` with the golden file `tests/golden/<name>`; with
/// `FSQLITE_BLESS=1` rewrites the file instead.
pub fn assert_golden(name: &str, actual: &Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("FSQLITE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with FSQLITE_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        text,
        want,
        "golden {} differs (FSQLITE_BLESS=1 rewrites it)",
        path.display()
    );
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}
