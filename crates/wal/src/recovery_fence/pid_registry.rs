//! The PID-owned lock registry: which process holds which page lock, and the release of
//! entries whose owner died.
//!
//! # Entries and identity
//!
//! An entry is `(page, pid)` with a **sequence** (a registry-wide counter, starting at 1,
//! assigned at first registration) and the owner's **start time** (`/proc/<pid>/stat`
//! field 22, clock ticks since boot) when known. A pid names a process only together with
//! its start time: Linux reuses pids, so "same pid, different start time" is a different
//! (new) process and the old owner is dead.
//!
//! - `register(page, pid)` is idempotent per pair: while the pair is registered with the
//!   same owner, it returns the same sequence. Registering a pair whose recorded start
//!   time differs from the new one (both known) replaces the stale entry with a fresh
//!   sequence.
//! - `release_dead_pid_locks(is_alive)` never probes under the mutex: it snapshots the
//!   distinct owners, probes them (a probe may read `/proc`), then removes only entries
//!   whose owner was found dead **and whose sequence is unchanged**, so an entry that was
//!   deregistered and registered again during the probe survives.
//!
//! # The persisted form (`save_to` / `load_from`)
//!
//! So that a *different* process can release a crashed owner's entries, the registry can
//! be written to a small text file (UTF-8, `\n` line ends, decimal numbers):
//!
//! ```text
//! fsqlite-pid-lock-registry 1          <- PID_REGISTRY_FILE_MAGIC, then the format version
//! next_sequence <u64>                  <- the next sequence to hand out
//! entry <page> <pid> <sequence> <start_time or ->   (zero or more, any order)
//! checksum <16 lowercase hex digits>   <- xxh3-64 of every byte before this line
//! ```
//!
//! Validity rules (a file that breaks any is refused with an error naming the path and
//! the line; nothing panics and nothing allocates beyond the file size):
//! 1. the file is at most [`PID_REGISTRY_MAX_FILE_BYTES`] bytes;
//! 2. the last line is the checksum line and the checksum matches;
//! 3. the first line is the magic and version 1, the second `next_sequence`;
//! 4. every entry has a non-zero page, a sequence in `1..next_sequence`, and a pair not
//!    seen before.
//!
//! `save_to` writes `<path>.tmp-<pid>`, fsyncs it, renames it over `<path>` and fsyncs the
//! directory, so a crash leaves the old or the new file, never a mix. The file is not the
//! database's, so it uses `std::fs`, not the VFS. Callers serialize writers themselves
//! (for example under `WAL_RECOVER_LOCK`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::PageNumber;
use fsqlite_types::sync_primitives::Mutex;

/// The first word of a persisted registry file.
pub const PID_REGISTRY_FILE_MAGIC: &str = "fsqlite-pid-lock-registry";

/// The largest persisted registry file [`PidOwnedLockRegistry::load_from`] reads.
pub const PID_REGISTRY_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// The format version written after [`PID_REGISTRY_FILE_MAGIC`].
const PID_REGISTRY_FILE_VERSION: u32 = 1;

/// One registered lock: `page` is held by process `pid`; `sequence` tells registrations
/// apart (a pair deregistered and registered again gets a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PidOwnedLockEntry {
    /// The locked page.
    pub page: PageNumber,
    /// The owning process.
    pub pid: u32,
    /// The registration's sequence number (unique within a registry, from 1).
    pub sequence: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    sequence: u64,
    start_time: Option<u64>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<(PageNumber, u32), Slot>,
    next_sequence: u64,
}

impl Inner {
    fn take_sequence(&mut self) -> u64 {
        if self.next_sequence == 0 {
            self.next_sequence = 1;
        }
        let s = self.next_sequence;
        self.next_sequence += 1;
        s
    }
}

/// Page locks owned by processes, with release of the entries of dead processes.
/// Register and deregister are O(1) (a hash map under a mutex).
///
/// ```
/// use fsqlite_types::PageNumber;
/// use fsqlite_wal::recovery_fence::PidOwnedLockRegistry;
/// let reg = PidOwnedLockRegistry::new();
/// let p = PageNumber::new(3).unwrap();
/// let s = reg.register_with_start_time(p, 4_000_001, None);
/// assert_eq!(reg.register_with_start_time(p, 4_000_001, None), s);
/// let released = reg.release_dead_pid_locks(|pid| pid != 4_000_001);
/// assert_eq!(released.len(), 1);
/// assert!(reg.is_empty());
/// ```
#[derive(Debug, Default)]
pub struct PidOwnedLockRegistry {
    inner: Mutex<Inner>,
}

impl PidOwnedLockRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `page` as held by `pid`, recording the owner's start time read from
    /// `/proc` (this process's is read once and cached). Returns the entry's sequence; the
    /// same pair registered again by the same owner returns the same sequence.
    pub fn register(&self, page: PageNumber, pid: u32) -> u64 {
        let start_time = if pid == std::process::id() {
            own_start_time()
        } else {
            pid_start_time(pid)
        };
        self.register_with_start_time(page, pid, start_time)
    }

    /// Registers `page` as held by `pid` whose start time is `start_time` (`None`: not
    /// known; then only the liveness probe decides). See the module doc for the rules.
    pub fn register_with_start_time(
        &self,
        page: PageNumber,
        pid: u32,
        start_time: Option<u64>,
    ) -> u64 {
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.entries.get(&(page, pid)).copied() {
            match (slot.start_time, start_time) {
                (Some(old), Some(new)) if old != new => {
                    // The pid was reused: the old entry belonged to a dead process.
                    let sequence = inner.take_sequence();
                    inner.entries.insert(
                        (page, pid),
                        Slot {
                            sequence,
                            start_time,
                        },
                    );
                    tracing::debug!(
                        target: "fsqlite.wal.recovery",
                        page = page.get(), pid, old_start = old, new_start = new,
                        "pid reused: replaced a stale lock entry"
                    );
                    return sequence;
                }
                (None, Some(_)) => {
                    if let Some(s) = inner.entries.get_mut(&(page, pid)) {
                        s.start_time = start_time;
                    }
                    return slot.sequence;
                }
                _ => return slot.sequence,
            }
        }
        let sequence = inner.take_sequence();
        inner.entries.insert(
            (page, pid),
            Slot {
                sequence,
                start_time,
            },
        );
        sequence
    }

    /// Removes the pair; false when it was not registered.
    pub fn deregister(&self, page: PageNumber, pid: u32) -> bool {
        self.inner.lock().entries.remove(&(page, pid)).is_some()
    }

    /// Every entry, in sequence order.
    pub fn snapshot(&self) -> Vec<PidOwnedLockEntry> {
        let inner = self.inner.lock();
        let mut v: Vec<PidOwnedLockEntry> = inner
            .entries
            .iter()
            .map(|(&(page, pid), s)| PidOwnedLockEntry {
                page,
                pid,
                sequence: s.sequence,
            })
            .collect();
        drop(inner);
        v.sort_unstable_by_key(|e| e.sequence);
        v
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.inner.lock().entries.len()
    }

    /// True when there are no entries.
    pub fn is_empty(&self) -> bool {
        self.inner.lock().entries.is_empty()
    }

    /// Removes and returns (in sequence order) the entries of processes that are dead:
    /// `is_alive(pid)` is false, or the pid now belongs to a process with another start
    /// time than the one recorded ([`pid_start_time`]). `is_alive` is called once per
    /// distinct pid, outside the registry's mutex.
    pub fn release_dead_pid_locks(
        &self,
        is_alive: impl FnMut(u32) -> bool,
    ) -> Vec<PidOwnedLockEntry> {
        self.release_dead_pid_locks_with(is_alive, pid_start_time)
    }

    /// [`release_dead_pid_locks`](Self::release_dead_pid_locks) with an explicit start-time
    /// probe (tests fake it; `None` means "cannot tell", which never kills an entry).
    pub fn release_dead_pid_locks_with(
        &self,
        mut is_alive: impl FnMut(u32) -> bool,
        mut start_time_of: impl FnMut(u32) -> Option<u64>,
    ) -> Vec<PidOwnedLockEntry> {
        // 1. Snapshot under the mutex.
        let snapshot: Vec<((PageNumber, u32), Slot)> = {
            let inner = self.inner.lock();
            inner.entries.iter().map(|(k, v)| (*k, *v)).collect()
        };
        if snapshot.is_empty() {
            return Vec::new();
        }
        // 2. Probe each distinct pid once, without the mutex.
        let mut alive: HashMap<u32, (bool, Option<u64>)> = HashMap::new();
        for ((_, pid), slot) in &snapshot {
            if alive.contains_key(pid) {
                continue;
            }
            let live = is_alive(*pid);
            let now_start = if live && slot.start_time.is_some() {
                start_time_of(*pid)
            } else {
                None
            };
            alive.insert(*pid, (live, now_start));
        }
        let owner_dead = |pid: u32, slot: &Slot| -> bool {
            let Some(&(live, now_start)) = alive.get(&pid) else {
                return false;
            };
            if !live {
                return true;
            }
            matches!((slot.start_time, now_start), (Some(a), Some(b)) if a != b)
        };
        // 3. Remove what is dead and unchanged since the snapshot.
        let mut released = Vec::new();
        {
            let mut inner = self.inner.lock();
            for (key, slot) in &snapshot {
                if !owner_dead(key.1, slot) {
                    continue;
                }
                if inner.entries.get(key).is_some_and(|s| s == slot) {
                    inner.entries.remove(key);
                    released.push(PidOwnedLockEntry {
                        page: key.0,
                        pid: key.1,
                        sequence: slot.sequence,
                    });
                }
            }
        }
        released.sort_unstable_by_key(|e| e.sequence);
        if !released.is_empty() {
            tracing::info!(
                target: "fsqlite.wal.recovery",
                released = released.len(),
                "released page locks of dead processes"
            );
        }
        released
    }

    /// The persisted text form (see the module doc).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        let inner = self.inner.lock();
        let mut rows: Vec<(&(PageNumber, u32), &Slot)> = inner.entries.iter().collect();
        rows.sort_unstable_by_key(|(_, s)| s.sequence);
        let mut out = String::with_capacity(64 + rows.len() * 40);
        let _ = writeln!(out, "{PID_REGISTRY_FILE_MAGIC} {PID_REGISTRY_FILE_VERSION}");
        let _ = writeln!(out, "next_sequence {}", inner.next_sequence.max(1));
        for ((page, pid), slot) in rows {
            let _ = match slot.start_time {
                Some(t) => writeln!(out, "entry {page} {pid} {} {t}", slot.sequence),
                None => writeln!(out, "entry {page} {pid} {} -", slot.sequence),
            };
        }
        drop(inner);
        let sum = xxhash_rust::xxh3::xxh3_64(out.as_bytes());
        let _ = writeln!(out, "checksum {sum:016x}");
        out
    }

    /// Parses the persisted text form; `origin` names the source in errors.
    pub fn from_text(text: &str, origin: &Path) -> Result<Self> {
        let bad = |line: usize, what: &str| {
            FrankenError::cannot_open(
                origin,
                format!("the pid lock registry is damaged at line {line}: {what}"),
            )
        };
        let body_end = text
            .strip_suffix('\n')
            .and_then(|t| t.rfind('\n').map(|i| i + 1))
            .ok_or_else(|| bad(1, "no checksum line"))?;
        let (body, last) = text.split_at(body_end);
        let n_lines = body.lines().count() + 1;
        let sum_hex = last
            .trim_end_matches('\n')
            .strip_prefix("checksum ")
            .ok_or_else(|| bad(n_lines, "the last line is not `checksum <hex>`"))?;
        if sum_hex.len() != 16 {
            return Err(bad(n_lines, "the checksum is not 16 hex digits"));
        }
        let stored =
            u64::from_str_radix(sum_hex, 16).map_err(|_| bad(n_lines, "bad checksum digits"))?;
        let actual = xxhash_rust::xxh3::xxh3_64(body.as_bytes());
        if stored != actual {
            return Err(bad(
                n_lines,
                &format!("checksum mismatch (stored {stored:016x}, computed {actual:016x})"),
            ));
        }
        let mut lines = body.lines().enumerate().map(|(i, l)| (i + 1, l));
        let (_, magic) = lines.next().ok_or_else(|| bad(1, "empty file"))?;
        if magic != format!("{PID_REGISTRY_FILE_MAGIC} {PID_REGISTRY_FILE_VERSION}") {
            return Err(bad(1, "not a version-1 pid lock registry"));
        }
        let (_, next) = lines
            .next()
            .ok_or_else(|| bad(2, "no next_sequence line"))?;
        let next_sequence: u64 = next
            .strip_prefix("next_sequence ")
            .and_then(|v| v.parse().ok())
            .filter(|&v| v >= 1)
            .ok_or_else(|| bad(2, "bad next_sequence line"))?;
        let mut entries = HashMap::new();
        for (n, line) in lines {
            let mut f = line.split(' ');
            if f.next() != Some("entry") {
                return Err(bad(n, "expected `entry`"));
            }
            let page = f
                .next()
                .and_then(|v| v.parse::<u32>().ok())
                .and_then(PageNumber::new)
                .ok_or_else(|| bad(n, "bad page number"))?;
            let pid = f
                .next()
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or_else(|| bad(n, "bad pid"))?;
            let sequence = f
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&s| s >= 1 && s < next_sequence)
                .ok_or_else(|| bad(n, "bad sequence"))?;
            let start_time = match f.next() {
                Some("-") => None,
                Some(v) => Some(v.parse::<u64>().map_err(|_| bad(n, "bad start time"))?),
                None => return Err(bad(n, "missing start time")),
            };
            if f.next().is_some() {
                return Err(bad(n, "trailing fields"));
            }
            let slot = Slot {
                sequence,
                start_time,
            };
            if entries.insert((page, pid), slot).is_some() {
                return Err(bad(n, "duplicate (page, pid) pair"));
            }
        }
        Ok(Self {
            inner: Mutex::new(Inner {
                entries,
                next_sequence,
            }),
        })
    }

    /// Writes the registry to `path` atomically (temporary file, fsync, rename, directory
    /// fsync).
    pub fn save_to(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self.to_text();
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let io = |op: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |e| FrankenError::io(op, Some(p), e)
        };
        {
            let mut f = std::fs::File::create(&tmp).map_err(io("open", &tmp))?;
            f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(FrankenError::io("rename", Some(path.to_path_buf()), e));
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("sync_dir", dir))?;
        Ok(())
    }

    /// Reads a registry written by [`save_to`](Self::save_to). A damaged file is an error
    /// ([`FrankenError::CannotOpen`] naming the path and line), never a panic.
    pub fn load_from(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = std::fs::File::open(path)
            .map_err(|e| FrankenError::io("open", Some(path.to_path_buf()), e))?;
        let mut bytes = Vec::new();
        f.take(PID_REGISTRY_MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FrankenError::io("read", Some(path.to_path_buf()), e))?;
        if bytes.len() as u64 > PID_REGISTRY_MAX_FILE_BYTES {
            return Err(FrankenError::cannot_open(
                path,
                format!("the pid lock registry is larger than {PID_REGISTRY_MAX_FILE_BYTES} bytes"),
            ));
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            FrankenError::cannot_open(
                path,
                format!(
                    "the pid lock registry is not UTF-8 (byte {})",
                    e.valid_up_to()
                ),
            )
        })?;
        Self::from_text(text, path)
    }
}

/// This process's start time, read once.
fn own_start_time() -> Option<u64> {
    static OWN: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| pid_start_time(std::process::id()))
}

/// `/proc/<pid>/stat` split after the command name: element 0 is field 3 (the state),
/// element 19 is field 22 (the start time). `None` if unreadable or malformed.
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may itself contain ") ", so the
    // fields after it start after the *last* ')'.
    let close = raw.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
    Some(rest.split_ascii_whitespace().map(str::to_owned).collect())
}

/// The start time of process `pid` (`/proc/<pid>/stat` field 22, clock ticks after boot);
/// `None` when the process does not exist or `/proc` cannot tell.
pub fn pid_start_time(pid: u32) -> Option<u64> {
    if pid == 0 {
        return None;
    }
    proc_stat_fields(pid)?.get(19)?.parse().ok()
}

/// Whether process `pid` is alive, for releasing its locks. Pid 0 is never alive; this
/// process always is. Otherwise `kill(pid, 0)`: `ESRCH` means dead; `EPERM` means alive
/// (it exists, owned by someone else); success means alive unless `/proc/<pid>/stat` says
/// zombie (`Z`) or dead (`X`). Any other answer means "cannot know", reported as alive so
/// that a live owner's locks are never released. A pid above `i32::MAX` cannot exist (and
/// would mean a process group to `kill`), so it is dead.
pub fn pid_alive_os(pid: u32) -> bool {
    use nix::errno::Errno;
    use nix::sys::signal::kill;
    use nix::unistd::Pid;

    if pid == 0 {
        return false;
    }
    if pid == std::process::id() {
        return true;
    }
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match kill(Pid::from_raw(raw), None) {
        Ok(()) => match proc_stat_fields(pid) {
            Some(fields) => !matches!(fields.first().map(String::as_str), Some("Z" | "X")),
            None => true,
        },
        Err(Errno::ESRCH) => false,
        Err(_) => true,
    }
}
