//! Shared helpers for the `unix_*` integration tests: a python3 SQLite child driven over
//! a pipe (every wait has a timeout, the child is killed on drop), a `/proc/locks`
//! parser, and a re-exec helper for child processes of the test binary itself.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// How long any single reply from a child may take.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A python3 child running `sqlite3` (or any script that answers one line per input line).
pub struct PyChild {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

/// Executes each stdin line as SQL on one connection (autocommit off at the Python level:
/// `isolation_level=None`, busy timeout 0) and answers `ok <rows>` or `err <message>`.
pub const SQL_DRIVER: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
print("ready", flush=True)
for line in sys.stdin:
    line = line.strip()
    if line == "quit":
        break
    try:
        rows = c.execute(line).fetchall()
        print("ok " + repr(rows), flush=True)
    except Exception as e:
        print("err " + str(e), flush=True)
c.close()
print("bye", flush=True)
"#;

/// Maps `<argv[1]>` (an existing -shm file) and answers `r <off>` with the native u32 at
/// `off`, and `w <off> <val>` by storing it.
pub const SHM_DRIVER: &str = r#"
import mmap, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, int(sys.argv[2]), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
print("ready", flush=True)
for line in sys.stdin:
    p = line.split()
    if p[0] == "quit":
        break
    off = int(p[1])
    if p[0] == "w":
        m[off:off+4] = struct.pack("=I", int(p[2]))
        print("ok", flush=True)
    else:
        print("ok %d" % struct.unpack("=I", m[off:off+4])[0], flush=True)
print("bye", flush=True)
"#;

impl PyChild {
    /// Starts `python3 -c script args...` and waits for its `ready` line.
    pub fn spawn(script: &str, args: &[&str]) -> Self {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 must be installed");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = Self {
            child,
            stdin,
            lines: rx,
        };
        assert_eq!(me.read_line(), "ready");
        me
    }

    /// A SQL driver child on the database at `db`.
    pub fn sql(db: &Path) -> Self {
        Self::spawn(SQL_DRIVER, &[db.to_str().unwrap()])
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of output, or a panic after [`REPLY_TIMEOUT`].
    pub fn read_line(&mut self) -> String {
        match self.lines.recv_timeout(REPLY_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = self.child.kill();
                panic!("python child did not answer in time: {e}");
            }
        }
    }

    /// Sends one line and returns the answer.
    pub fn ask(&mut self, line: &str) -> String {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        self.read_line()
    }

    /// Sends SQL; panics unless it succeeded; returns the rows' repr.
    pub fn exec_ok(&mut self, sql: &str) -> String {
        let a = self.ask(sql);
        assert!(a.starts_with("ok"), "{sql:?} failed in sqlite: {a}");
        a
    }

    /// Sends SQL that must fail with "database is locked".
    pub fn exec_locked(&mut self, sql: &str) {
        let a = self.ask(sql);
        assert!(
            a.starts_with("err") && a.contains("locked"),
            "{sql:?} should have been refused as locked, got: {a}"
        );
    }

    /// Asks the child to quit and waits (with a timeout) for it to exit.
    pub fn quit(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "quit");
        }
        let status = wait_timeout(&mut self.child, REPLY_TIMEOUT);
        assert!(status.success(), "python child exited with {status}");
    }
}

impl Drop for PyChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` for at most `limit`, killing it (and panicking) after that.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child process {} timed out after {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs this test binary again with only test `test_name`, extra environment `env`, and
/// waits for it (with a timeout).
pub fn run_self(test_name: &str, env: &[(&str, &str)], limit: Duration) -> ExitStatus {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    wait_timeout(&mut child, limit)
}

/// One line of `/proc/locks`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcLock {
    /// `POSIX`, `OFDLCK` or `FLOCK`.
    pub class: String,
    /// `READ` or `WRITE`.
    pub access: String,
    /// Owner pid (`-1` for OFD locks).
    pub pid: i64,
    pub inode: u64,
    pub start: u64,
    /// Inclusive end; `None` for `EOF`.
    pub end: Option<u64>,
}

/// Parses `/proc/locks` (skipping the `->` lines of blocked waiters).
pub fn proc_locks() -> Vec<ProcLock> {
    let text = std::fs::read_to_string("/proc/locks").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[1] == "->" {
            continue;
        }
        let inode = f[5].rsplit(':').next().unwrap().parse().unwrap();
        out.push(ProcLock {
            class: f[1].to_string(),
            access: f[3].to_string(),
            pid: f[4].parse().unwrap(),
            inode,
            start: f[6].parse().unwrap(),
            end: f[7].parse().ok(),
        });
    }
    out
}

/// The `/proc/locks` entries on the file at `path`.
pub fn locks_on(path: &Path) -> Vec<ProcLock> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).unwrap().ino();
    proc_locks()
        .into_iter()
        .filter(|l| l.inode == ino)
        .collect()
}

/// Creates a database at `path` with SQLite (python3 child) in the given journal mode and a
/// table `t(x)` with one row, then closes it.
pub fn create_db(path: &Path, journal_mode: &str) {
    let mut py = PyChild::sql(path);
    py.exec_ok(&format!("PRAGMA journal_mode={journal_mode}"));
    py.exec_ok("CREATE TABLE t(x)");
    py.exec_ok("INSERT INTO t VALUES (1)");
    py.quit();
}
