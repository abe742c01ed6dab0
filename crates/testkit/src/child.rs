//! The re-exec harness for kill -9 tests (the sled pattern): a test re-runs its own test
//! binary as a child process that plays a role (writer, reader, checkpointer, ...), acks
//! each durable commit on its stdout, and is killed with SIGKILL by the parent.
//!
//! # Protocol
//!
//! 1. **Spawn.** [`spawn_self`]`(test_name, spec)` runs
//!    `current_exe() --exact <test_name> --nocapture --test-threads=1` with
//!    [`CHILD_ROLE_ENV`]`=<role>:<seed>` (seed in `0x` hex) plus `spec.env`. `test_name` is
//!    the test's full path inside its binary (`kill9_writer`, or `module::kill9_writer`).
//!    stdin is closed; stdout and stderr are pipes read by the parent.
//! 2. **Role.** The same test function runs in the child; it calls [`child_role`] first,
//!    which returns `Some((role, seed))` there (and `None` in the parent), and then acts as
//!    the child.
//! 3. **Ack channel.** After each commit that returned Ok, the child calls
//!    [`ack`]`(txn_id, hash)`, which writes the line [`ACK_PREFIX`]`<txn_id> 0x<hash>`
//!    (decimal id, exactly 16 hex digits of hash, then `\n`) to stdout in one `write` and
//!    flushes. A line of at most `PIPE_BUF` bytes is written atomically to a pipe, and
//!    the pipe keeps it after the child dies, so "acknowledged" means exactly "the parent
//!    received the line".
//! 4. **Parsing.** A thread in the parent reads stdout line by line and appends every
//!    complete ack to a shared `Vec<(u64, u64)>` ([`ChildHandle::acks`]). The test harness
//!    prints its own text on the same stdout (e.g. `test name ... ` without a newline
//!    right before the child's first output), so an ack is recognised anywhere in a line
//!    ([`parse_ack_line`]); other lines are kept (bounded) for diagnostics, and a line cut
//!    short by the kill (no `\n`, or a short hash) is never counted.
//! 5. **Kill.** [`ChildHandle::kill9`] sends SIGKILL, reaps the child and then waits (up to
//!    [`DRAIN_LIMIT`]) for the reader to reach end-of-file, so [`ChildHandle::acks`] is
//!    complete afterwards; the same holds after [`ChildHandle::wait_timeout`] returns
//!    `Some`. Dropping a handle kills a child that is still running.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use fsqlite_testkit::child::{ChildSpec, ack, child_role, spawn_self};
//!
//! #[test]
//! fn kill9_writer() {
//!     if let Some((_role, seed)) = child_role() {
//!         for txn in 1..=1000 {
//!             // ... commit txn `txn` derived from `seed`, then:
//!             ack(txn, seed ^ txn).unwrap();
//!         }
//!         return;
//!     }
//!     let spec = ChildSpec { role: "writer".into(), seed: 7, env: vec![] };
//!     let mut child = spawn_self("kill9_writer", &spec).unwrap();
//!     child.kill_after(Duration::from_millis(20)).unwrap();
//!     for (txn, hash) in child.acks() {
//!         // ... every acknowledged txn must be in the recovered database
//!         # let _ = (txn, hash);
//!     }
//! }
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fsqlite_error::{FrankenError, Result};

use crate::process::try_wait_for;

/// The environment variable that makes a re-executed test act as a child:
/// `<role>:<seed>`.
pub const CHILD_ROLE_ENV: &str = "FSQLITE_CHILD_ROLE";
/// The marker that starts an ack (followed by `<txn_id> 0x<16 hex digits>`).
pub const ACK_PREFIX: &str = "ACK ";
/// How long the parent waits for the child's stdout to close after the child has exited.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// Non-ack output lines kept per child.
const KEPT_LINES: usize = 200;
/// Hex digits of the hash in an ack line.
const HASH_DIGITS: usize = 16;
/// `SIGKILL` on every unix.
const SIGKILL: i32 = 9;

/// What a child should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChildSpec {
    /// The role name (it may contain `:`; the seed is what follows the last one).
    pub role: String,
    /// The seed the child's workload derives from.
    pub seed: u64,
    /// Extra environment variables for the child.
    pub env: Vec<(String, String)>,
}

/// In a child started by [`spawn_self`]: `Some((role, seed))`; in any other process `None`.
pub fn child_role() -> Option<(String, u64)> {
    let v = std::env::var(CHILD_ROLE_ENV).ok()?;
    let (role, seed) = v.rsplit_once(':')?;
    Some((role.to_owned(), crate::rng::parse_seed(seed)?))
}

/// The ack line for `(txn_id, hash)`, with its newline.
pub fn format_ack(txn_id: u64, hash: u64) -> String {
    format!("{ACK_PREFIX}{txn_id} 0x{hash:0HASH_DIGITS$x}\n")
}

/// In the child: acknowledges a durable commit to the parent (one write, then flush).
pub fn ack(txn_id: u64, hash: u64) -> Result<()> {
    let line = format_ack(txn_id, hash);
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| FrankenError::io("write ack", None, e))
}

/// Finds a complete ack in `line` (which must not include its `\n`): the last occurrence of
/// [`ACK_PREFIX`] at the start of the line or after a space, followed by a decimal id, one
/// space, `0x` and exactly 16 hex digits, and nothing else.
pub fn parse_ack_line(line: &str) -> Option<(u64, u64)> {
    let line = line.trim_end_matches('\r');
    let start = line
        .rmatch_indices(ACK_PREFIX)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || line[..i].ends_with(' '))?;
    let rest = &line[start + ACK_PREFIX.len()..];
    let (id, hash) = rest.split_once(' ')?;
    let hex = hash.strip_prefix("0x")?;
    if hex.len() != HASH_DIGITS || id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((id.parse().ok()?, u64::from_str_radix(hex, 16).ok()?))
}

#[derive(Default)]
struct Shared {
    acks: Mutex<Vec<(u64, u64)>>,
    other: Mutex<Vec<String>>,
    stderr: Mutex<String>,
    stdout_done: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running (or finished) child started by [`spawn_self`].
pub struct ChildHandle {
    child: Child,
    shared: Arc<Shared>,
    status: Option<ExitStatus>,
    spec: ChildSpec,
    test_name: String,
}

impl std::fmt::Debug for ChildHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildHandle")
            .field("pid", &self.child.id())
            .field("test", &self.test_name)
            .field("spec", &self.spec)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Re-runs the current test binary as a child acting out `spec` (see the module doc).
///
/// `test_name` must be the exact test path; a name that matches nothing makes the child
/// run no test and exit 0 without acks (its [`ChildHandle::other_output`] then shows
/// `running 0 tests`).
pub fn spawn_self(test_name: &str, spec: &ChildSpec) -> Result<ChildHandle> {
    let exe = std::env::current_exe().map_err(|e| FrankenError::io("current_exe", None, e))?;
    let mut cmd = Command::new(&exe);
    cmd.args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE_ENV, format!("{}:{:#x}", spec.role, spec.seed))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| FrankenError::io("spawn test child", Some(exe.clone()), e))?;
    let shared = Arc::new(Shared::default());
    if let Some(stdout) = child.stdout.take() {
        let sh = Arc::clone(&shared);
        std::thread::spawn(move || read_stdout(stdout, &sh));
    } else {
        shared.stdout_done.store(true, Ordering::Release);
    }
    if let Some(stderr) = child.stderr.take() {
        let sh = Arc::clone(&shared);
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = BufReader::new(stderr).read_to_end(&mut buf);
            lock(&sh.stderr).push_str(&String::from_utf8_lossy(&buf));
        });
    }
    tracing::debug!(target: "fsqlite.testkit.child", pid = child.id(), test = test_name, role = %spec.role, seed = spec.seed, "spawned child");
    Ok(ChildHandle {
        child,
        shared,
        status: None,
        spec: spec.clone(),
        test_name: test_name.to_owned(),
    })
}

fn read_stdout(stdout: impl Read, sh: &Shared) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let complete = buf.last() == Some(&b'\n');
                let text = String::from_utf8_lossy(&buf);
                let text = text.trim_end_matches('\n');
                if let Some(a) = parse_ack_line(text).filter(|_| complete) {
                    lock(&sh.acks).push(a);
                } else {
                    let mut other = lock(&sh.other);
                    if other.len() < KEPT_LINES {
                        other.push(text.to_owned());
                    }
                }
            }
        }
    }
    sh.stdout_done.store(true, Ordering::Release);
}

impl ChildHandle {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The spec the child was started with.
    pub fn spec(&self) -> &ChildSpec {
        &self.spec
    }

    /// The acks received so far, in arrival order.
    pub fn acks(&self) -> Vec<(u64, u64)> {
        lock(&self.shared.acks).clone()
    }

    /// Waits until at least `n` acks have arrived (true) or `limit` passed or the child's
    /// stdout closed with fewer (false).
    pub fn wait_for_acks(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if lock(&self.shared.acks).len() >= n {
                return true;
            }
            if self.shared.stdout_done.load(Ordering::Acquire) || start.elapsed() >= limit {
                return lock(&self.shared.acks).len() >= n;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Non-ack stdout lines (the first few hundred), for diagnostics.
    pub fn other_output(&self) -> Vec<String> {
        lock(&self.shared.other).clone()
    }

    /// The child's stderr so far (complete once the child has exited and been drained).
    pub fn stderr(&self) -> String {
        lock(&self.shared.stderr).clone()
    }

    /// Waits (up to [`DRAIN_LIMIT`]) for the stdout reader to reach end-of-file.
    fn drain(&self) {
        let start = Instant::now();
        while !self.shared.stdout_done.load(Ordering::Acquire) && start.elapsed() < DRAIN_LIMIT {
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.shared.stdout_done.load(Ordering::Acquire) {
            tracing::warn!(target: "fsqlite.testkit.child", pid = self.child.id(), "child stdout still open after it exited (a grandchild holds it?); acks may be incomplete");
        }
    }

    /// Sends SIGKILL (if the child still runs), reaps it and drains its stdout, so that
    /// [`ChildHandle::acks`] is complete afterwards. Returns the exit status.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        if self
            .child
            .try_wait()
            .map_err(|e| FrankenError::io("waitpid", None, e))?
            .is_none()
        {
            // std's Child::kill sends SIGKILL on unix; the child is not reaped yet, so
            // its pid cannot have been reused.
            self.child
                .kill()
                .map_err(|e| FrankenError::io("kill(SIGKILL)", None, e))?;
        }
        let status = self
            .child
            .wait()
            .map_err(|e| FrankenError::io("waitpid", None, e))?;
        self.status = Some(status);
        self.drain();
        Ok(status)
    }

    /// Lets the child run for up to `delay`; if it is still running then, kills it with
    /// SIGKILL. Returns the exit status either way.
    pub fn kill_after(&mut self, delay: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.wait_timeout(delay)? {
            return Ok(status);
        }
        self.kill9()
    }

    /// Waits up to `limit` for the child to exit; `Some(status)` (with stdout drained) if
    /// it did, `None` if it is still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let status = try_wait_for(&mut self.child, limit)?;
        if status.is_some() {
            self.status = status;
            self.drain();
        }
        Ok(status)
    }

    /// The exit status, if the child has been reaped.
    pub fn status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Whether the reaped child was terminated by SIGKILL (false while it runs).
    pub fn was_killed_by_sigkill(&self) -> bool {
        self.status.and_then(|s| s.signal()) == Some(SIGKILL)
    }
}

impl Drop for ChildHandle {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
