//! Real SQLite in a separate process: a python3 `sqlite3` connection driven over a pipe
//! ([`LiveSqlite`]), and one-shot runs of the `sqlite3` command-line shell
//! ([`sqlite3_cli`]). These are the "other process" in multi-process interop tests: their
//! file and `-shm` locks are real POSIX locks held by another pid.
//!
//! # Driver protocol ([`PY_DRIVER`])
//!
//! Started as `python3 -u -c PY_DRIVER <db> <busy-timeout-seconds> <wal 0|1>`, the driver
//! opens `<db>` with `sqlite3.connect(db, isolation_level=None, timeout=<secs>)` (so Python
//! never opens or commits transactions on its own and SQLite waits up to `timeout` on a busy
//! lock), runs `PRAGMA journal_mode=WAL` when asked, and prints one ready line.
//!
//! Requests are one JSON object per stdin line:
//!
//! | request | effect |
//! |---|---|
//! | `{"op":"exec","sql":S}` / `{"op":"query","sql":S}` | `conn.execute(S).fetchall()` |
//! | `{"op":"close"}` | closes the connection (the process stays) |
//! | `{"op":"exit"}` | replies, then the process exits 0 |
//!
//! `begin`, `begin immediate`, `commit` and `rollback` are `exec` of that SQL
//! ([`LiveSqlite::begin`] and friends). Each request gets exactly one JSON reply line:
//! `{"ok":true,"rows":[[..],..],"changes":N,"in_txn":B}` or
//! `{"ok":false,"error":"database is locked","code":5,"name":"SQLITE_BUSY","in_txn":B}`.
//! Values are JSON numbers, strings and null; blobs are `{"hex":"..."}`; non-finite reals
//! are strings. The ready line is a reply with `"ready":true` and `"version"`.
//!
//! # Time limits
//!
//! Every reply is awaited for at most [`LiveOptions::reply_timeout`] (default
//! [`DEFAULT_REPLY_TIMEOUT`], 10 s; the ready line at least that long). A reply that does
//! not come in time kills the child and returns an error; a child that has died is
//! reported at once (its stdout closes) with its exit status and the tail of its stderr. Dropping a [`LiveSqlite`] kills the child.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};
use serde_json::Value;

/// Default limit for one reply from a child, and for one [`sqlite3_cli`] run.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a child's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;
/// Poll interval while waiting for a process to exit.
const POLL: Duration = Duration::from_millis(5);

/// SQLite's `SQLITE_BUSY` ("database is locked").
pub const SQLITE_BUSY: i64 = 5;
/// SQLite's `SQLITE_LOCKED` ("database table is locked").
pub const SQLITE_LOCKED: i64 = 6;

/// The python3 driver program (see the module doc for its protocol).
pub const PY_DRIVER: &str = r#"
import json, sqlite3, sys

def enc(v):
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"hex": bytes(v).hex()}
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return repr(v)
    return v

conn = None

def reply(obj):
    obj["in_txn"] = bool(conn is not None and conn.in_transaction)
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def fail(e):
    reply({"ok": False, "error": str(e), "code": getattr(e, "sqlite_errorcode", None),
           "name": getattr(e, "sqlite_errorname", None)})

try:
    conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=float(sys.argv[2]))
    if sys.argv[3] == "1":
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError("journal_mode stayed " + str(mode))
    reply({"ok": True, "ready": True, "version": sqlite3.sqlite_version})
except Exception as e:
    fail(e)
    sys.exit(1)

while True:
    line = sys.stdin.readline()
    if not line:
        break
    line = line.strip()
    if not line:
        continue
    try:
        cmd = json.loads(line)
        op = cmd.get("op")
        if op == "exit":
            reply({"ok": True})
            break
        if op == "close":
            if conn is not None:
                conn.close()
                conn = None
            reply({"ok": True})
            continue
        if op not in ("exec", "query"):
            raise ValueError("unknown op " + repr(op))
        if conn is None:
            raise sqlite3.ProgrammingError("the connection is closed")
        cur = conn.execute(cmd["sql"])
        rows = [[enc(v) for v in r] for r in cur.fetchall()]
        reply({"ok": True, "rows": rows, "changes": cur.rowcount})
    except Exception as e:
        fail(e)
"#;

/// How to start a [`LiveSqlite`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveOptions {
    /// SQLite's busy timeout (python's `timeout`): how long a statement waits on a lock
    /// before failing with "database is locked". Default 0 (fail at once).
    pub busy_timeout: Duration,
    /// Run `PRAGMA journal_mode=WAL` after opening. Default false.
    pub wal: bool,
    /// Limit for each reply. Default [`DEFAULT_REPLY_TIMEOUT`]. The ready line after
    /// startup gets at least [`DEFAULT_REPLY_TIMEOUT`] (python may start slowly on a busy
    /// machine).
    pub reply_timeout: Duration,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::ZERO,
            wal: false,
            reply_timeout: DEFAULT_REPLY_TIMEOUT,
        }
    }
}

/// One reply from the driver.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    /// Whether the statement succeeded.
    pub ok: bool,
    /// Result rows (empty on failure).
    pub rows: Vec<Vec<Value>>,
    /// `cursor.rowcount` (-1 for statements that change nothing).
    pub changes: i64,
    /// Whether the connection is inside a transaction after the request.
    pub in_txn: bool,
    /// SQLite's (or python's) message on failure.
    pub error: Option<String>,
    /// SQLite's extended result code on failure, when python reports one.
    pub code: Option<i64>,
    /// SQLite's result code name on failure (e.g. `SQLITE_BUSY`), when reported.
    pub code_name: Option<String>,
    /// Time from sending the request to receiving the reply.
    pub elapsed: Duration,
}

impl Reply {
    /// Whether this is a "database is locked" failure (`SQLITE_BUSY`/`SQLITE_LOCKED` or
    /// their extended codes, or the message says "locked").
    pub fn is_locked(&self) -> bool {
        !self.ok
            && (self
                .code
                .is_some_and(|c| matches!(c & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
                || self.error.as_deref().is_some_and(|e| e.contains("locked")))
    }

    /// The rows on success; on failure an error carrying the message (`Busy` for
    /// `SQLITE_BUSY`, `Locked` for `SQLITE_LOCKED`).
    pub fn into_rows(self) -> Result<Vec<Vec<Value>>> {
        if self.ok {
            return Ok(self.rows);
        }
        let msg = self.error.unwrap_or_default();
        match self.code.map(|c| c & 0xff) {
            Some(SQLITE_BUSY) => Err(FrankenError::Busy),
            Some(SQLITE_LOCKED) => Err(FrankenError::Locked),
            _ => Err(FrankenError::internal(format!(
                "SQLite in a child process failed: {msg}"
            ))),
        }
    }

    /// The first value of the first row as an integer, if there is one.
    pub fn first_i64(&self) -> Option<i64> {
        self.rows.first()?.first()?.as_i64()
    }
}

/// Collects a child's stderr (the last [`STDERR_TAIL`] bytes) on a thread.
fn collect_tail(stream: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let tail = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&tail);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut t = sink
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.push_str(&line);
                    if t.len() > STDERR_TAIL {
                        let mut cut = t.len() - STDERR_TAIL;
                        while !t.is_char_boundary(cut) {
                            cut += 1;
                        }
                        t.drain(..cut);
                    }
                }
            }
        }
    });
    tail
}

fn tail_text(tail: &Mutex<String>) -> String {
    tail.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// Waits for `child` at most `limit`; `None` if it is still running.
pub fn try_wait_for(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| FrankenError::io("waitpid", None, e))?
        {
            return Ok(Some(status));
        }
        if start.elapsed() >= limit {
            return Ok(None);
        }
        std::thread::sleep(POLL);
    }
}

/// A python3 process holding one SQLite connection, driven over a pipe.
pub struct LiveSqlite {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    db: PathBuf,
    opts: LiveOptions,
    version: String,
}

impl std::fmt::Debug for LiveSqlite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSqlite")
            .field("pid", &self.child.id())
            .field("db", &self.db)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl LiveSqlite {
    /// Starts `python3 -u -c PY_DRIVER` on `db` and waits for its ready line.
    pub fn spawn(db: &Path, opts: LiveOptions) -> Result<Self> {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg("-c")
            .arg(PY_DRIVER)
            .arg(db)
            .arg(format!("{}", opts.busy_timeout.as_secs_f64()))
            .arg(if opts.wal { "1" } else { "0" })
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| FrankenError::io("spawn python3", Some(db.to_path_buf()), e))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = channel();
        if let Some(stdout) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = stderr.map_or_else(|| Arc::new(Mutex::new(String::new())), collect_tail);
        let mut me = Self {
            child,
            stdin,
            lines: rx,
            stderr,
            db: db.to_path_buf(),
            opts,
            version: String::new(),
        };
        let startup = me.opts.reply_timeout.max(DEFAULT_REPLY_TIMEOUT);
        let (ready, raw) = me.receive("startup", Instant::now(), startup)?;
        if !ready.ok {
            me.kill();
            return Err(FrankenError::cannot_open(
                db,
                format!(
                    "python3 sqlite3 could not open it: {}",
                    ready.error.unwrap_or_default()
                ),
            ));
        }
        raw.get("version")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .clone_into(&mut me.version);
        tracing::debug!(target: "fsqlite.testkit.process", pid = me.pid(), db = %db.display(), version = %me.version, "python sqlite child ready");
        Ok(me)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The SQLite library version the child uses (`sqlite3.sqlite_version`).
    pub fn sqlite_version(&self) -> &str {
        &self.version
    }

    /// Whether the child is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if self.is_alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    fn dead_error(&mut self, what: &str) -> FrankenError {
        let status = try_wait_for(&mut self.child, Duration::from_secs(1))
            .ok()
            .flatten()
            .map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
        FrankenError::internal(format!(
            "python sqlite child {} on {} died before answering {what} ({status}); stderr: {}",
            self.child.id(),
            self.db.display(),
            tail_text(&self.stderr).trim_end()
        ))
    }

    fn receive(&mut self, what: &str, sent: Instant, limit: Duration) -> Result<(Reply, Value)> {
        let line = match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                return Err(FrankenError::internal(format!(
                    "python sqlite child {} on {} did not answer {what} within {limit:?}; \
                     killed it; stderr: {}",
                    self.child.id(),
                    self.db.display(),
                    tail_text(&self.stderr).trim_end()
                )));
            }
            Err(RecvTimeoutError::Disconnected) => return Err(self.dead_error(what)),
        };
        let elapsed = sent.elapsed();
        let v: Value = serde_json::from_str(&line).map_err(|e| {
            FrankenError::internal(format!(
                "python sqlite child {} sent an unparsable reply to {what}: {line:?} ({e})",
                self.child.id()
            ))
        })?;
        let rows = v
            .get("rows")
            .and_then(Value::as_array)
            .map(|rows| {
                rows.iter()
                    .map(|r| r.as_array().cloned().unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        let reply = Reply {
            ok: v.get("ok").and_then(Value::as_bool).unwrap_or(false),
            rows,
            changes: v.get("changes").and_then(Value::as_i64).unwrap_or(-1),
            in_txn: v.get("in_txn").and_then(Value::as_bool).unwrap_or(false),
            error: v.get("error").and_then(Value::as_str).map(str::to_owned),
            code: v.get("code").and_then(Value::as_i64),
            code_name: v.get("name").and_then(Value::as_str).map(str::to_owned),
            elapsed,
        };
        Ok((reply, v))
    }

    /// Sends one raw request object and returns its reply. `Err` only for transport
    /// failures (dead child, timeout, broken pipe); SQL errors are `Reply { ok: false }`.
    pub fn request(&mut self, req: &Value) -> Result<Reply> {
        let what = req.to_string();
        let sent = Instant::now();
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(FrankenError::internal(format!(
                "python sqlite child {} has no stdin (it was told to exit)",
                self.child.id()
            )));
        };
        let wrote = stdin
            .write_all(format!("{what}\n").as_bytes())
            .and_then(|()| stdin.flush());
        if wrote.is_err() {
            return Err(self.dead_error(&what));
        }
        Ok(self.receive(&what, sent, self.opts.reply_timeout)?.0)
    }

    /// Executes one SQL statement; rows, if any, are in the reply.
    pub fn exec(&mut self, sql: &str) -> Result<Reply> {
        self.request(&serde_json::json!({"op": "exec", "sql": sql}))
    }

    /// Runs a query and returns its rows in the reply.
    pub fn query(&mut self, sql: &str) -> Result<Reply> {
        self.request(&serde_json::json!({"op": "query", "sql": sql}))
    }

    /// Executes `sql` and returns its rows, turning a SQL failure into an error.
    pub fn exec_ok(&mut self, sql: &str) -> Result<Vec<Vec<Value>>> {
        self.exec(sql)?.into_rows()
    }

    /// `BEGIN` (deferred).
    pub fn begin(&mut self) -> Result<Reply> {
        self.exec("BEGIN")
    }

    /// `BEGIN IMMEDIATE` (takes the write lock now).
    pub fn begin_immediate(&mut self) -> Result<Reply> {
        self.exec("BEGIN IMMEDIATE")
    }

    /// `BEGIN EXCLUSIVE`.
    pub fn begin_exclusive(&mut self) -> Result<Reply> {
        self.exec("BEGIN EXCLUSIVE")
    }

    /// `COMMIT`.
    pub fn commit(&mut self) -> Result<Reply> {
        self.exec("COMMIT")
    }

    /// `ROLLBACK`.
    pub fn rollback(&mut self) -> Result<Reply> {
        self.exec("ROLLBACK")
    }

    /// Closes the SQLite connection; the process stays alive and answers requests with
    /// errors until it is told to exit.
    pub fn close(&mut self) -> Result<Reply> {
        self.request(&serde_json::json!({"op": "close"}))
    }

    /// Tells the child to exit and waits (within the reply timeout) for its exit status.
    pub fn exit(mut self) -> Result<ExitStatus> {
        self.request(&serde_json::json!({"op": "exit"}))?;
        self.stdin = None;
        if let Some(status) = try_wait_for(&mut self.child, self.opts.reply_timeout)? {
            return Ok(status);
        }
        self.kill();
        Err(FrankenError::internal(format!(
            "python sqlite child {} did not exit within {:?}; killed it",
            self.child.id(),
            self.opts.reply_timeout
        )))
    }
}

impl Drop for LiveSqlite {
    fn drop(&mut self) {
        self.stdin = None;
        self.kill();
    }
}

/// Runs `cmd` with stdin closed and its output captured; kills it and fails after `limit`.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FrankenError::io("spawn", None, e))?;
    let read_all = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = s {
                let _ = s.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read_all(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read_all(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let Some(status) = try_wait_for(&mut child, limit)? else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(FrankenError::internal(format!(
            "{cmd:?} did not finish within {limit:?}; killed it"
        )));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs the `sqlite3` shell once: `sqlite3 -batch <db> <sql>` (several statements may be
/// separated by `;`), with a [`DEFAULT_REPLY_TIMEOUT`] limit. A SQL error is a nonzero
/// status with the message on stderr, not an `Err`.
pub fn sqlite3_cli(db: &Path, sql: &str) -> Result<Output> {
    run_with_timeout(
        Command::new("sqlite3").arg("-batch").arg(db).arg(sql),
        DEFAULT_REPLY_TIMEOUT,
    )
}
