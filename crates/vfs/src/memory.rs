//! [`MemoryVfs`]: an in-memory file system that can lose power, tear sectors and fail on
//! purpose, deterministically.
//!
//! Every clone of a [`MemoryVfs`] shares one state behind an
//! `Arc<parking_lot::Mutex<_>>` (plain `parking_lot`, not the loom facade: this VFS is a test
//! fixture that is never itself model-checked). Every handle ([`MemoryFile`]) is a separate
//! "process": locks conflict between handles exactly as SQLite's unix locks conflict between
//! processes.
//!
//! # Files: durable image, pending list, live image
//!
//! Each file (an *inode*, identified by a number that never repeats) holds
//!
//! | field | meaning |
//! |---|---|
//! | `durable` | the bytes a power loss cannot take away |
//! | `pending` | the ordered list of pending ops (`Write { offset, bytes }`, `SetLen { len }`) since the last successful sync (SQLite `test6.c`'s write list) |
//! | `live` | `durable` with every pending op applied in order: what reads see |
//!
//! Invariant **MEM-1**: `live == apply(durable, pending, keep every op)`. `write` and
//! `truncate` update `live` and append to `pending`; a successful `sync` (through any handle
//! of the file) applies `pending` to `durable` and clears it; a **failed** `sync` (an
//! injected fault) clears `pending` and resets `live` to `durable`, which is what Linux does
//! after an `fsync` error (the dirty pages are marked clean and dropped; "fsyncgate").
//! As Linux's `errseq_t` (4.13 and later), the error is also reported once to every other
//! handle of the file that was open when it happened, at that handle's next `sync`: a
//! process whose unsynced writes another process's failed fsync dropped is told so, and
//! never acknowledges them. A handle opened after the error does not see it.
//!
//! # Directory entries
//!
//! The namespace has a live map `path -> inode` and a durable map. Creating and deleting a
//! file changes only the live map. An entry becomes durable when its directory (the path's
//! parent) is synced: by [`Vfs::delete`] with `sync_dir`, by [`MemoryVfs::sync_dir`], or —
//! as SQLite's unix VFS does for new journal and WAL files — by the **first successful sync
//! of a file whose own entry is not yet durable** (which syncs its whole directory, like a
//! real directory `fsync`). A crash resets the live map to the durable map: files whose
//! entries were never made durable vanish, deletes that were never made durable are undone.
//! An inode lives while a live entry, a durable entry or an open handle refers to it.
//! Paths are normalized lexically (relative paths are joined to `/`; `.` and `..` resolved).
//! Anonymous files (`path == None`) and `DELETEONCLOSE` files have no entry (a
//! `DELETEONCLOSE` file is unlinked right after it is opened, as SQLite's unix VFS does).
//!
//! # Crash
//!
//! [`MemoryVfs::crash`] is a power loss plus the death of every process: every open handle
//! becomes dead (its calls return an `Io` error; dropping it is fine), all database-file and
//! shm locks vanish, all shm contents are discarded, the live namespace reverts to the durable
//! one and each surviving file's new image is `durable` plus the pending ops that the
//! [`CrashMode`] lets through, applied in order (so a later write over an earlier one
//! behaves as on a disk). All choices come from a [`SplitMix64`] seeded by the mode's seed;
//! files are visited in inode order, so the same state and mode give the same result.
//!
//! # Faults and the operation counter
//!
//! [`MemoryVfs::inject`] arms a [`Fault`]: the Nth matching operation (1-based, counted from
//! injection, optionally only on paths ending with a suffix) fails once or from then on;
//! short reads, bit flips on read, and a disk that fills after N more bytes are also
//! available. Independently, every file operation ([`COUNTED_OPS`]) increments a global
//! counter ([`MemoryVfs::op_count`]); with [`MemoryVfs::set_crash_at_op`]`(k)` operation `k`
//! and every later one fail ("simulated power loss") until [`MemoryVfs::crash`] is called.
//!
//! # Shared memory
//!
//! `shm_map` returns heap [`ShmRegion`]s shared by every handle of the same `<path>-shm`.
//! A handle opens the shm on its first `shm_map` or `shm_lock`; if no other live handle has
//! that shm open, its contents are discarded (all regions dropped): SQLite's dead-man-switch
//! rule, "the first opener truncates the `-shm`" (FORMAT.md §5.2). The shm is not a file in
//! the namespace, but `access` and `delete` accept its name `<path>-shm`.
//!
//! # Locks
//!
//! Database-file locks model SQLite's lock bytes per handle (`PENDING_BYTE`,
//! `RESERVED_BYTE`, the SHARED range; FORMAT.md §5.3) with `unixLock`'s transitions, matching
//! [`crate::UnixVfs`]: a failed EXCLUSIVE after the pending byte was taken leaves the handle
//! at PENDING; a lock above SHARED from NONE that fails goes back to NONE; EXCLUSIVE is
//! `Busy` while this handle has the shm open and another handle has it open too
//! (`unixIsSharingShmNode`). Shm locks follow `unixShmLock`: per slot, shared or exclusive;
//! exclusive conflicts with any other handle's lock, shared with another's exclusive;
//! taking a slot already held in the same mode is a no-op, taking it in the other mode is an
//! `Internal` error (SQLite: never upgrade or downgrade directly); unlocking a slot not held
//! is a no-op. Conflicts are `Err(Busy)`; nothing waits.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use fsqlite_error::{FrankenError, Result};
use fsqlite_types::{AccessFlags, Cx, LockLevel, SyncFlags, VfsOpenFlags};
use parking_lot::{Mutex, MutexGuard};

use crate::shm::{ShmRegion, check_shm_lock_args};
use crate::traits::{Vfs, VfsFile};

const TRACE: &str = "fsqlite.vfs.memory";

/// Seed of [`MemoryVfs::new`] (the bytes of `"fsqlite!"`), so that runs are reproducible.
pub const DEFAULT_SEED: u64 = 0x6673_716c_6974_6521;
/// Sector size reported until [`MemoryVfs::set_sector_size`] changes it.
pub const DEFAULT_SECTOR_SIZE: u32 = 4096;
/// Largest file size this VFS accepts (4 GiB); a write or truncate past it is an `Io` error.
pub const MAX_FILE_BYTES: u64 = 1 << 32;
/// Granularity of shm region sizes (the same rule as [`crate::UnixVfs`]).
pub const SHM_REGION_GRANULE: u32 = 4096;
/// Most shm regions one `-shm` may have (32768 regions of 32 KiB = 1 GiB).
pub const MAX_SHM_REGIONS: u32 = 1 << 15;
/// The operations the global counter counts (and that fail after the crash point).
pub const COUNTED_OPS: [&str; 15] = [
    "open",
    "delete",
    "access",
    "sync_dir",
    "read",
    "write",
    "truncate",
    "sync",
    "file_size",
    "lock",
    "unlock",
    "check_reserved_lock",
    "shm_map",
    "shm_lock",
    "shm_unmap",
];

// ---------------------------------------------------------------------------------------
// PRNG
// ---------------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea, Flood 2014): the single source of randomness of a `MemoryVfs`.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(Self::GAMMA);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A fair coin.
    pub fn coin(&mut self) -> bool {
        self.next_u64() >> 63 == 1
    }

    /// A value in `0..n` (`0` when `n == 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Public configuration types
// ---------------------------------------------------------------------------------------

/// What a crash does to the writes that were not yet synced (see the module docs).
///
/// In every mode a pending `SetLen` (truncate) is kept or dropped as a whole (`DropAll`
/// drops it, `KeepAll` keeps it, the seeded modes toss a coin).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// Only synced state survives ("lost page cache").
    DropAll,
    /// Every pending op reaches the disk (a crash of the process only).
    KeepAll,
    /// Each pending op is independently kept or dropped (probability 1/2 each).
    KeepRandom {
        /// Seed of the choices.
        seed: u64,
    },
    /// Pending writes survive sector by sector: each `sector`-aligned piece of each pending
    /// write is independently kept or dropped (probability 1/2 each).
    Torn {
        /// Seed of the choices.
        seed: u64,
        /// Sector size in bytes (512 or 4096 typically; 0 is treated as 1).
        sector: u32,
    },
    /// SQLite `test6.c`: per pending write a random byte `r` decides: `(r & 6) == 6` (1/4)
    /// fills every `sector`-aligned sector the write touches with random bytes (possibly
    /// extending the file to the end of the last sector); otherwise `r & 1` drops the write
    /// (3/8) or it is written (3/8).
    Garbage {
        /// Seed of the choices and of the garbage bytes.
        seed: u64,
        /// Sector size in bytes (0 is treated as 1).
        sector: u32,
    },
}

impl CrashMode {
    fn seed(self) -> u64 {
        match self {
            Self::DropAll | Self::KeepAll => 0,
            Self::KeepRandom { seed } | Self::Torn { seed, .. } | Self::Garbage { seed, .. } => {
                seed
            }
        }
    }
}

/// The operations a [`Fault::Fail`] can target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultOp {
    /// `VfsFile::read`.
    Read,
    /// `VfsFile::write`.
    Write,
    /// `VfsFile::sync` (a failure also discards the pending writes of the file).
    Sync,
    /// `VfsFile::truncate`.
    Truncate,
    /// `VfsFile::shm_map`.
    ShmMap,
    /// `VfsFile::lock` when it would raise the lock (a failed `fcntl`: SQLITE_IOERR_LOCK).
    Lock,
    /// `VfsFile::shm_lock` (and `shm_downgrade`) taking a lock (SQLITE_IOERR_SHMLOCK);
    /// releases never fail.
    ShmLock,
}

impl FaultOp {
    /// The operation name used in errors (`FrankenError::Io::op`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Sync => "sync",
            Self::Truncate => "truncate",
            Self::ShmMap => "shm_map",
            Self::Lock => "lock",
            Self::ShmLock => "shm_lock",
        }
    }

    /// Every operation, in report order.
    pub const ALL: [FaultOp; 7] = [
        Self::Read,
        Self::Write,
        Self::Sync,
        Self::Truncate,
        Self::ShmMap,
        Self::Lock,
        Self::ShmLock,
    ];
}

/// A line of code that called a failing-capable [`VfsFile`] method (through
/// `#[track_caller]`), with the operation: what [`MemoryVfs::seen_sites`] and
/// [`MemoryVfs::fired_faults`] report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoSite {
    /// The operation.
    pub op: FaultOp,
    /// The source file of the call (as `file!()` spells it).
    pub file: &'static str,
    /// Its line.
    pub line: u32,
}

impl IoSite {
    fn here(op: FaultOp, at: &'static std::panic::Location<'static>) -> Self {
        Self {
            op,
            file: at.file(),
            line: at.line(),
        }
    }
}

impl std::fmt::Display for IoSite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at {}:{}", self.op.name(), self.file, self.line)
    }
}

/// Whether a fault fires once or on every matching operation from the Nth on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FaultRepeat {
    /// Only the Nth matching operation fails; then the fault is gone.
    #[default]
    Once,
    /// The Nth and every later matching operation fail, until [`MemoryVfs::clear_faults`].
    Persistent,
}

/// A fault armed by [`MemoryVfs::inject`].
///
/// `nth` is 1-based and counts the matching operations since the fault was injected (0 is
/// treated as 1). `path_suffix` restricts the fault to files whose normalized path ends
/// with it (e.g. `"-wal"`; for [`FaultOp::ShmMap`] the path is `<db path>-shm`); anonymous
/// files never match a suffix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The operation fails with an `Io` error and has no effect (a failed `sync` also
    /// discards the file's pending writes).
    Fail {
        /// Which operation.
        op: FaultOp,
        /// Which matching operation fails first.
        nth: u64,
        /// Once or persistent.
        repeat: FaultRepeat,
        /// Only paths ending with this.
        path_suffix: Option<String>,
    },
    /// The read returns at most `len` bytes; the rest of the buffer is zero-filled.
    ShortRead {
        /// Which matching read is short first.
        nth: u64,
        /// How many bytes the read returns at most.
        len: usize,
        /// Once or persistent.
        repeat: FaultRepeat,
        /// Only paths ending with this.
        path_suffix: Option<String>,
    },
    /// One bit (chosen by the VFS's seeded PRNG) of the bytes returned by the read is
    /// flipped; the file itself is unchanged.
    BitFlip {
        /// Which matching read is damaged first.
        nth: u64,
        /// Once or persistent.
        repeat: FaultRepeat,
        /// Only paths ending with this.
        path_suffix: Option<String>,
    },
    /// Matching writes may add `after_bytes` bytes in total (counted from injection); a
    /// write that would cross the limit writes nothing and returns `FrankenError::Full`.
    /// Stays until [`MemoryVfs::clear_faults`].
    DiskFull {
        /// Bytes that may still be written.
        after_bytes: u64,
        /// Only paths ending with this.
        path_suffix: Option<String>,
    },
}

impl Fault {
    /// `op` fails at the `nth` matching call (and later ones if `repeat` is persistent).
    pub const fn fail(op: FaultOp, nth: u64, repeat: FaultRepeat) -> Self {
        Self::Fail {
            op,
            nth,
            repeat,
            path_suffix: None,
        }
    }

    /// The `nth` read returns at most `len` bytes.
    pub const fn short_read(nth: u64, len: usize, repeat: FaultRepeat) -> Self {
        Self::ShortRead {
            nth,
            len,
            repeat,
            path_suffix: None,
        }
    }

    /// The `nth` read has one bit flipped.
    pub const fn bit_flip(nth: u64, repeat: FaultRepeat) -> Self {
        Self::BitFlip {
            nth,
            repeat,
            path_suffix: None,
        }
    }

    /// The disk is full after `after_bytes` more bytes.
    pub const fn disk_full(after_bytes: u64) -> Self {
        Self::DiskFull {
            after_bytes,
            path_suffix: None,
        }
    }

    /// The same fault, restricted to paths ending with `suffix`.
    #[must_use]
    pub fn on_path_suffix(mut self, suffix: impl Into<String>) -> Self {
        let s = Some(suffix.into());
        match &mut self {
            Self::Fail { path_suffix, .. }
            | Self::ShortRead { path_suffix, .. }
            | Self::BitFlip { path_suffix, .. }
            | Self::DiskFull { path_suffix, .. } => *path_suffix = s,
        }
        self
    }

    fn path_suffix(&self) -> Option<&str> {
        match self {
            Self::Fail { path_suffix, .. }
            | Self::ShortRead { path_suffix, .. }
            | Self::BitFlip { path_suffix, .. }
            | Self::DiskFull { path_suffix, .. } => path_suffix.as_deref(),
        }
    }
}

/// A snapshot of one handle's locks ([`MemoryVfs::lock_state`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandleLockState {
    /// The handle ([`MemoryFile::handle_id`]).
    pub handle: u64,
    /// Its database-file lock level.
    pub level: LockLevel,
    /// Whether it holds `RESERVED_BYTE` (RESERVED, or PENDING/EXCLUSIVE reached via RESERVED).
    pub holds_reserved: bool,
    /// Whether it has the shm open.
    pub shm_open: bool,
    /// Shm slots held shared (bit i = lock index i).
    pub shm_shared: u8,
    /// Shm slots held exclusive (bit i = lock index i).
    pub shm_exclusive: u8,
}

// ---------------------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------------------

/// One unsynced change of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PendingOp {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen { len: u64 },
}

#[derive(Clone, Debug, Default)]
struct Inode {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<PendingOp>,
    /// Failed syncs of this file so far (Linux's `errseq_t` of the mapping).
    err_seq: u64,
}

#[derive(Clone, Copy, Debug)]
struct ShmAttach {
    node: u64,
    shared: u8,
    excl: u8,
}

#[derive(Debug)]
struct HandleRec {
    inode: u64,
    path: Option<PathBuf>,
    level: LockLevel,
    holds_reserved: bool,
    shm: Option<ShmAttach>,
    /// The inode's `err_seq` this handle has seen (sampled at open, as Linux's `struct
    /// file` samples `f_wb_err`).
    seen_err: u64,
}

#[derive(Debug)]
struct ShmNode {
    /// `Some(<path>-shm)` while the name refers to this node.
    name: Option<PathBuf>,
    /// Size of every region (0 while there are none).
    region_size: u32,
    regions: Vec<ShmRegion>,
}

#[derive(Debug)]
struct ActiveFault {
    fault: Fault,
    seen: u64,
    bytes_written: u64,
}

/// What the armed faults do to one operation.
#[derive(Default)]
struct Effects {
    fail: bool,
    full: bool,
    short: Option<usize>,
    flip: bool,
}

/// Everything a `MemoryVfs` and its handles share.
struct State {
    rng: SplitMix64,
    next_id: u64,
    /// Incremented by every crash; handles of an older epoch are dead.
    epoch: u64,
    inodes: BTreeMap<u64, Inode>,
    live_names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    handles: BTreeMap<u64, HandleRec>,
    shm_nodes: BTreeMap<u64, ShmNode>,
    shm_names: BTreeMap<PathBuf, u64>,
    faults: Vec<ActiveFault>,
    /// Call sites seen while [`MemoryVfs::record_sites`] is on, with counts.
    sites: Option<BTreeMap<IoSite, u64>>,
    /// Where injected faults fired, in order.
    fired: Vec<IoSite>,
    op_count: u64,
    crash_at: Option<u64>,
    crashed_at: Option<u64>,
    sector_size: u32,
    device_characteristics: u32,
}

fn io_err(op: &'static str, path: Option<&Path>, msg: String) -> FrankenError {
    FrankenError::io(op, path.map(Path::to_path_buf), io::Error::other(msg))
}

fn injected(op: &'static str, path: Option<&Path>) -> FrankenError {
    io_err(op, path, format!("injected {op} failure (MemoryVfs fault)"))
}

/// Lexical normalization: absolute, `.` dropped, `..` resolved, relative joined to `/`.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Prefix(_) | Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
        }
    }
    out
}

fn shm_name(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-shm");
    PathBuf::from(s)
}

fn suffix_matches(fault: &Fault, path: Option<&str>) -> bool {
    match fault.path_suffix() {
        None => true,
        Some(s) => path.is_some_and(|p| p.ends_with(s)),
    }
}

fn fires(seen: u64, nth: u64, repeat: FaultRepeat) -> bool {
    let nth = nth.max(1);
    match repeat {
        FaultRepeat::Once => seen == nth,
        FaultRepeat::Persistent => seen >= nth,
    }
}

/// Writes `bytes` at `offset`, zero-extending the image first if needed.
/// Callers guarantee `offset + bytes.len() <= MAX_FILE_BYTES` (fits `usize`).
fn write_at(image: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = offset as usize;
    let end = start + bytes.len();
    if image.len() < end {
        image.resize(end, 0);
    }
    image[start..end].copy_from_slice(bytes);
}

fn set_len(image: &mut Vec<u8>, len: u64) {
    image.resize(len as usize, 0);
}

/// Applies `ops` to `image` in order, letting through what `mode` decides.
fn apply_ops(image: &mut Vec<u8>, ops: &[PendingOp], mode: CrashMode, rng: &mut SplitMix64) {
    for op in ops {
        match op {
            PendingOp::SetLen { len } => {
                let keep = match mode {
                    CrashMode::DropAll => false,
                    CrashMode::KeepAll => true,
                    _ => rng.coin(),
                };
                if keep {
                    set_len(image, *len);
                }
            }
            PendingOp::Write { offset, bytes } => {
                apply_write(image, *offset, bytes, mode, rng);
            }
        }
    }
}

fn apply_write(
    image: &mut Vec<u8>,
    offset: u64,
    bytes: &[u8],
    mode: CrashMode,
    rng: &mut SplitMix64,
) {
    match mode {
        CrashMode::DropAll => {}
        CrashMode::KeepAll => write_at(image, offset, bytes),
        CrashMode::KeepRandom { .. } => {
            if rng.coin() {
                write_at(image, offset, bytes);
            }
        }
        CrashMode::Torn { sector, .. } => {
            let s = u64::from(sector.max(1));
            let mut pos = 0usize;
            while pos < bytes.len() {
                let abs = offset + pos as u64;
                let room = (abs / s + 1) * s - abs;
                let n = (room as usize).min(bytes.len() - pos);
                if rng.coin() {
                    write_at(image, abs, &bytes[pos..pos + n]);
                }
                pos += n;
            }
        }
        CrashMode::Garbage { sector, .. } => {
            let r = rng.next_u64() as u8;
            if r & 6 == 6 {
                let s = u64::from(sector.max(1));
                let first = offset / s;
                let last = (offset + bytes.len() as u64 - 1) / s;
                let mut garbage = vec![0u8; s as usize];
                for i in first..=last {
                    rng.fill(&mut garbage);
                    write_at(image, i * s, &garbage);
                }
            } else if r & 1 == 0 {
                write_at(image, offset, bytes);
            }
        }
    }
}

impl State {
    fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            next_id: 1,
            epoch: 0,
            inodes: BTreeMap::new(),
            live_names: BTreeMap::new(),
            durable_names: BTreeMap::new(),
            handles: BTreeMap::new(),
            shm_nodes: BTreeMap::new(),
            shm_names: BTreeMap::new(),
            faults: Vec::new(),
            sites: None,
            fired: Vec::new(),
            op_count: 0,
            crash_at: None,
            crashed_at: None,
            sector_size: DEFAULT_SECTOR_SIZE,
            device_characteristics: 0,
        }
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Counts one operation; fails it (and every later one) past the crash point.
    fn tick(&mut self, op: &'static str, path: Option<&Path>) -> Result<()> {
        self.op_count += 1;
        if let Some(k) = self.crash_at
            && self.op_count >= k
        {
            let at = *self.crashed_at.get_or_insert(self.op_count);
            if at == self.op_count {
                tracing::debug!(target: TRACE, op, at, "simulated power loss");
            }
            return Err(io_err(
                op,
                path,
                format!("simulated power loss at operation {at}: nothing works until crash()"),
            ));
        }
        Ok(())
    }

    fn inode(&self, id: u64) -> Result<&Inode> {
        self.inodes
            .get(&id)
            .ok_or_else(|| FrankenError::internal(format!("MemoryVfs inode {id} vanished")))
    }

    fn inode_mut(&mut self, id: u64) -> Result<&mut Inode> {
        self.inodes
            .get_mut(&id)
            .ok_or_else(|| FrankenError::internal(format!("MemoryVfs inode {id} vanished")))
    }

    fn handle(&self, id: u64) -> Result<&HandleRec> {
        self.handles
            .get(&id)
            .ok_or_else(|| FrankenError::internal(format!("MemoryVfs handle {id} vanished")))
    }

    fn handle_mut(&mut self, id: u64) -> Result<&mut HandleRec> {
        self.handles
            .get_mut(&id)
            .ok_or_else(|| FrankenError::internal(format!("MemoryVfs handle {id} vanished")))
    }

    /// Counts `op` against the armed faults and says what they do to it.
    fn faults_for(
        &mut self,
        op: FaultOp,
        path: Option<&Path>,
        write_len: u64,
        at: &'static std::panic::Location<'static>,
    ) -> Effects {
        let mut fx = Effects::default();
        if let Some(sites) = self.sites.as_mut() {
            *sites.entry(IoSite::here(op, at)).or_insert(0) += 1;
        }
        if self.faults.is_empty() {
            return fx;
        }
        let path_str = path.map(Path::to_string_lossy);
        let path_str = path_str.as_deref();
        let mut i = 0;
        while i < self.faults.len() {
            let ActiveFault {
                fault,
                seen,
                bytes_written,
            } = &mut self.faults[i];
            let mut remove = false;
            if suffix_matches(fault, path_str) {
                match fault {
                    Fault::Fail {
                        op: fop,
                        nth,
                        repeat,
                        ..
                    } if *fop == op => {
                        *seen += 1;
                        if fires(*seen, *nth, *repeat) {
                            fx.fail = true;
                            remove = *repeat == FaultRepeat::Once;
                        }
                    }
                    Fault::ShortRead {
                        nth, len, repeat, ..
                    } if op == FaultOp::Read => {
                        *seen += 1;
                        if fires(*seen, *nth, *repeat) {
                            fx.short = Some(fx.short.map_or(*len, |s| s.min(*len)));
                            remove = *repeat == FaultRepeat::Once;
                        }
                    }
                    Fault::BitFlip { nth, repeat, .. } if op == FaultOp::Read => {
                        *seen += 1;
                        if fires(*seen, *nth, *repeat) {
                            fx.flip = true;
                            remove = *repeat == FaultRepeat::Once;
                        }
                    }
                    Fault::DiskFull { after_bytes, .. }
                        if op == FaultOp::Write
                            && bytes_written.saturating_add(write_len) > *after_bytes =>
                    {
                        fx.full = true;
                    }
                    _ => {}
                }
            }
            if remove {
                tracing::debug!(target: TRACE, fault = ?self.faults[i].fault, "one-shot fault fired");
                self.faults.remove(i);
            } else {
                i += 1;
            }
        }
        if fx.fail || fx.full || fx.short.is_some() || fx.flip {
            self.fired.push(IoSite::here(op, at));
        }
        fx
    }

    /// Charges a successful write of `len` bytes to the matching disk-full faults.
    fn consume_space(&mut self, path: Option<&Path>, len: u64) {
        let path_str = path.map(Path::to_string_lossy);
        let path_str = path_str.as_deref();
        for af in &mut self.faults {
            if matches!(af.fault, Fault::DiskFull { .. }) && suffix_matches(&af.fault, path_str) {
                af.bytes_written = af.bytes_written.saturating_add(len);
            }
        }
    }

    /// Makes every entry of directory `dir` durable (a directory fsync).
    fn sync_dir_entries(&mut self, dir: &Path) {
        let keys: BTreeSet<PathBuf> = self
            .live_names
            .keys()
            .chain(self.durable_names.keys())
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect();
        for k in keys {
            match self.live_names.get(&k) {
                Some(&ino) => {
                    self.durable_names.insert(k, ino);
                }
                None => {
                    self.durable_names.remove(&k);
                }
            }
        }
        self.gc_inodes();
    }

    /// Drops inodes that no entry and no handle refers to.
    fn gc_inodes(&mut self) {
        let mut used: BTreeSet<u64> = self.live_names.values().copied().collect();
        used.extend(self.durable_names.values().copied());
        used.extend(self.handles.values().map(|h| h.inode));
        if used.len() != self.inodes.len() {
            self.inodes.retain(|id, _| used.contains(id));
        }
    }

    /// Drops shm node `node` if nobody has it open and no name refers to it.
    fn gc_shm_node(&mut self, node: u64) {
        let attached = self
            .handles
            .values()
            .any(|h| h.shm.is_some_and(|a| a.node == node));
        let named = self.shm_nodes.get(&node).is_some_and(|n| n.name.is_some());
        if !attached && !named {
            self.shm_nodes.remove(&node);
        }
    }

    /// Removes the name `<path>-shm` (given as the shm name); true if it existed.
    fn remove_shm_name(&mut self, name: &Path) -> bool {
        match self.shm_names.remove(name) {
            Some(node) => {
                if let Some(n) = self.shm_nodes.get_mut(&node) {
                    n.name = None;
                }
                self.gc_shm_node(node);
                true
            }
            None => false,
        }
    }

    /// Opens the shm for handle `id` (of file `path`) if it has not yet; DMS rule.
    fn shm_attach(&mut self, id: u64, path: &Path) -> Result<u64> {
        if let Some(a) = self.handle(id)?.shm {
            return Ok(a.node);
        }
        let name = shm_name(path);
        let node = if let Some(&n) = self.shm_names.get(&name) {
            n
        } else {
            let n = self.next_id();
            self.shm_nodes.insert(
                n,
                ShmNode {
                    name: Some(name.clone()),
                    region_size: 0,
                    regions: Vec::new(),
                },
            );
            self.shm_names.insert(name, n);
            n
        };
        let others = self
            .handles
            .iter()
            .any(|(&hid, h)| hid != id && h.shm.is_some_and(|a| a.node == node));
        if !others && let Some(n) = self.shm_nodes.get_mut(&node) {
            // Dead-man switch: the first opener throws the old contents away.
            n.regions.clear();
            n.region_size = 0;
            tracing::trace!(target: TRACE, path = %path.display(), "shm first opener: contents discarded");
        }
        self.handle_mut(id)?.shm = Some(ShmAttach {
            node,
            shared: 0,
            excl: 0,
        });
        Ok(node)
    }

    /// Closes the shm of handle `id` (releasing its shm locks).
    fn shm_detach(&mut self, id: u64) {
        let attach = self.handles.get_mut(&id).and_then(|h| h.shm.take());
        if let Some(a) = attach {
            self.gc_shm_node(a.node);
        }
    }

    /// True when handle `id` has the shm open and another handle has the same shm open.
    fn shm_is_shared(&self, id: u64) -> bool {
        let Some(mine) = self.handles.get(&id).and_then(|h| h.shm) else {
            return false;
        };
        self.handles
            .iter()
            .any(|(&hid, h)| hid != id && h.shm.is_some_and(|a| a.node == mine.node))
    }

    /// The lock levels of the other handles of `inode`.
    fn other_levels(&self, id: u64, inode: u64) -> impl Iterator<Item = &HandleRec> {
        self.handles
            .iter()
            .filter(move |&(&hid, h)| hid != id && h.inode == inode)
            .map(|(_, h)| h)
    }

    /// SHARED or above -> `level` (> SHARED), as `unixLock` does.
    fn lock_above_shared(&mut self, id: u64, inode: u64, level: LockLevel) -> Result<()> {
        let cur = self.handle(id)?.level;
        match level {
            LockLevel::Reserved => {
                if self.other_levels(id, inode).any(|h| h.holds_reserved) {
                    return Err(FrankenError::Busy);
                }
                let h = self.handle_mut(id)?;
                h.holds_reserved = true;
                h.level = LockLevel::Reserved;
            }
            LockLevel::Pending => {
                if self
                    .other_levels(id, inode)
                    .any(|h| h.level >= LockLevel::Pending)
                {
                    return Err(FrankenError::Busy);
                }
                self.handle_mut(id)?.level = LockLevel::Pending;
            }
            LockLevel::Exclusive => {
                if cur < LockLevel::Pending {
                    if self
                        .other_levels(id, inode)
                        .any(|h| h.level >= LockLevel::Pending)
                    {
                        return Err(FrankenError::Busy);
                    }
                    // From here on we hold the pending byte: a failure leaves us at PENDING.
                    self.handle_mut(id)?.level = LockLevel::Pending;
                }
                if self.shm_is_shared(id)
                    || self
                        .other_levels(id, inode)
                        .any(|h| h.level >= LockLevel::Shared)
                {
                    return Err(FrankenError::Busy);
                }
                self.handle_mut(id)?.level = LockLevel::Exclusive;
            }
            LockLevel::None | LockLevel::Shared => {}
        }
        Ok(())
    }

    fn crash(&mut self, mode: CrashMode) {
        self.epoch += 1;
        self.handles.clear();
        self.shm_nodes.clear();
        self.shm_names.clear();
        self.live_names.clone_from(&self.durable_names);
        self.crash_at = None;
        self.gc_inodes();
        let mut rng = SplitMix64::new(mode.seed());
        let mut dropped_ops = 0usize;
        for inode in self.inodes.values_mut() {
            let pending = std::mem::take(&mut inode.pending);
            dropped_ops += pending.len();
            apply_ops(&mut inode.durable, &pending, mode, &mut rng);
            inode.live.clone_from(&inode.durable);
        }
        tracing::debug!(
            target: TRACE,
            ?mode,
            files = self.inodes.len(),
            pending_ops = dropped_ops,
            "simulated crash"
        );
    }

    /// A copy of the files (entries, images, pending lists) and configuration.
    fn fork(&self) -> Self {
        let mut st = Self::new(0);
        st.rng = self.rng.clone();
        st.next_id = self.next_id;
        st.epoch = self.epoch + 1;
        st.live_names.clone_from(&self.live_names);
        st.durable_names.clone_from(&self.durable_names);
        for (id, inode) in &self.inodes {
            let named = self.live_names.values().any(|v| v == id)
                || self.durable_names.values().any(|v| v == id);
            if named {
                st.inodes.insert(*id, inode.clone());
            }
        }
        st.sector_size = self.sector_size;
        st.device_characteristics = self.device_characteristics;
        st
    }
}

// ---------------------------------------------------------------------------------------
// MemoryVfs
// ---------------------------------------------------------------------------------------

/// The in-memory, crash- and fault-simulating VFS (see the module docs). Cheap to clone;
/// clones share everything.
///
/// ```
/// use std::path::Path;
/// use fsqlite_types::{Cx, SyncFlags, VfsOpenFlags};
/// use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryVfs, Vfs, VfsFile};
///
/// let cx = Cx::new();
/// let vfs = MemoryVfs::new();
/// let path = Path::new("/app.db");
/// let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
/// let (mut f, _) = vfs.open(&cx, Some(path), flags).unwrap();
/// f.write(&cx, b"synced", 0).unwrap();
/// f.sync(&cx, SyncFlags::FULL).unwrap();
/// f.write(&cx, b"SYNCED", 0).unwrap(); // not synced: a power loss may take it away
///
/// // Each crash mode on a copy of the disk; the original is untouched.
/// let lost = vfs.fork_crashed(CrashMode::DropAll);
/// assert_eq!(lost.live_contents(path).unwrap(), b"synced");
/// let kept = vfs.fork_crashed(CrashMode::KeepAll);
/// assert_eq!(kept.live_contents(path).unwrap(), b"SYNCED");
///
/// // A failed fsync drops the pending writes, as Linux does ("fsyncgate").
/// vfs.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once));
/// assert!(f.sync(&cx, SyncFlags::FULL).is_err());
/// assert_eq!(vfs.live_contents(path).unwrap(), b"synced");
///
/// // A real crash: every handle dies; reopen to see what survived.
/// vfs.crash(CrashMode::Torn { seed: 1, sector: 512 });
/// assert!(f.file_size(&cx).is_err());
/// ```
#[derive(Clone)]
pub struct MemoryVfs {
    shared: Arc<Mutex<State>>,
}

impl Default for MemoryVfs {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("MemoryVfs")
            .field("files", &st.live_names.len())
            .field("handles", &st.handles.len())
            .field("op_count", &st.op_count)
            .field("crash_at", &st.crash_at)
            .field("faults", &st.faults.len())
            .finish_non_exhaustive()
    }
}

impl MemoryVfs {
    /// An empty file system whose randomness is seeded with [`DEFAULT_SEED`].
    pub fn new() -> Self {
        Self::with_seed(DEFAULT_SEED)
    }

    /// An empty file system whose randomness (salts, bit flips) comes from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            shared: Arc::new(Mutex::new(State::new(seed))),
        }
    }

    /// An independent copy of the disk: every file's entries, durable image, pending list
    /// and live image, the PRNG state, sector size and device characteristics. Handles,
    /// locks, shm, faults and the operation counter are not copied. `fork().crash(mode)`
    /// (or [`MemoryVfs::fork_crashed`]) yields one damage variant of the current state
    /// without disturbing this VFS.
    #[must_use]
    pub fn fork(&self) -> MemoryVfs {
        let st = self.shared.lock().fork();
        Self {
            shared: Arc::new(Mutex::new(st)),
        }
    }

    /// `fork()` followed by `crash(mode)` on the copy.
    #[must_use]
    pub fn fork_crashed(&self, mode: CrashMode) -> MemoryVfs {
        let v = self.fork();
        v.crash(mode);
        v
    }

    /// Simulates a power loss and the death of every process using this VFS (see
    /// [`CrashMode`] and the module docs). Also ends a triggered crash point.
    pub fn crash(&self, mode: CrashMode) {
        self.shared.lock().crash(mode);
    }

    /// Makes every entry of directory `dir` durable (a directory fsync). Counted as an op.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        let dir = normalize(dir);
        let mut st = self.shared.lock();
        st.tick("sync_dir", Some(&dir))?;
        st.sync_dir_entries(&dir);
        Ok(())
    }

    /// The bytes `crash(CrashMode::DropAll)` would leave at `path` now (the durable entry's
    /// durable image); `None` if the path would not exist after such a crash.
    pub fn durable_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        let id = st.durable_names.get(&normalize(path))?;
        st.inodes.get(id).map(|i| i.durable.clone())
    }

    /// What reads of `path` see now; `None` if no such file.
    pub fn live_contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.shared.lock();
        let id = st.live_names.get(&normalize(path))?;
        st.inodes.get(id).map(|i| i.live.clone())
    }

    /// Number of unsynced operations of the file at `path` (0 if no such file).
    pub fn pending_op_count(&self, path: &Path) -> usize {
        let st = self.shared.lock();
        st.live_names
            .get(&normalize(path))
            .and_then(|id| st.inodes.get(id))
            .map_or(0, |i| i.pending.len())
    }

    /// True if `path` exists now (live namespace; shm names not included).
    pub fn file_exists(&self, path: &Path) -> bool {
        self.shared.lock().live_names.contains_key(&normalize(path))
    }

    /// True if `path` would exist after a crash (its entry is durable).
    pub fn durable_file_exists(&self, path: &Path) -> bool {
        self.shared
            .lock()
            .durable_names
            .contains_key(&normalize(path))
    }

    /// Plants `bytes` at `path` as synced contents with a durable entry (creating the file
    /// if needed, discarding its pending ops). Not counted as an op; for test fixtures.
    pub fn set_contents(&self, path: &Path, bytes: &[u8]) {
        let p = normalize(path);
        let mut st = self.shared.lock();
        let id = if let Some(&id) = st.live_names.get(&p) {
            id
        } else {
            let id = st.next_id();
            st.inodes.insert(id, Inode::default());
            st.live_names.insert(p.clone(), id);
            id
        };
        st.durable_names.insert(p, id);
        if let Some(inode) = st.inodes.get_mut(&id) {
            inode.durable = bytes.to_vec();
            inode.live = bytes.to_vec();
            inode.pending.clear();
        }
        st.gc_inodes();
    }

    /// Every path that exists now, sorted.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.shared.lock().live_names.keys().cloned().collect()
    }

    /// Every path whose entry is durable, sorted.
    pub fn durable_paths(&self) -> Vec<PathBuf> {
        self.shared.lock().durable_names.keys().cloned().collect()
    }

    /// Arms a fault (see [`Fault`]); faults survive [`MemoryVfs::crash`].
    pub fn inject(&self, fault: Fault) {
        tracing::debug!(target: TRACE, ?fault, "fault injected");
        self.shared.lock().faults.push(ActiveFault {
            fault,
            seen: 0,
            bytes_written: 0,
        });
    }

    /// Disarms every fault (a full disk gets space again).
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Number of faults still armed (one-shot faults disappear when they fire).
    pub fn armed_fault_count(&self) -> usize {
        self.shared.lock().faults.len()
    }

    /// Starts (or stops) recording the call site ([`IoSite`]) of every operation that a
    /// fault can hit: read, write, truncate, sync, shm_map, and lock and shm_lock calls
    /// that take a lock. Starting clears what was recorded.
    pub fn record_sites(&self, on: bool) {
        self.shared.lock().sites = on.then(BTreeMap::new);
    }

    /// The call sites recorded since [`MemoryVfs::record_sites`]`(true)`, with how many
    /// operations each made.
    pub fn seen_sites(&self) -> Vec<(IoSite, u64)> {
        self.shared
            .lock()
            .sites
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    /// Where injected faults fired (failed, short or bit-flipped reads, full disk), in
    /// order, since this VFS was created or [`MemoryVfs::take_fired_faults`] last ran.
    pub fn fired_faults(&self) -> Vec<IoSite> {
        self.shared.lock().fired.clone()
    }

    /// [`MemoryVfs::fired_faults`], clearing the list.
    pub fn take_fired_faults(&self) -> Vec<IoSite> {
        std::mem::take(&mut self.shared.lock().fired)
    }

    /// Operations counted since this VFS was created ([`COUNTED_OPS`]; ops of dead handles
    /// are not counted).
    pub fn op_count(&self) -> u64 {
        self.shared.lock().op_count
    }

    /// Operation number `k` (1-based, as numbered by [`MemoryVfs::op_count`]; or the next
    /// operation if `k` has passed) and every later one fail with a "simulated power loss"
    /// `Io` error until [`MemoryVfs::crash`]. Resets [`MemoryVfs::crashed_at`].
    pub fn set_crash_at_op(&self, k: u64) {
        let mut st = self.shared.lock();
        st.crash_at = Some(k);
        st.crashed_at = None;
    }

    /// Disarms the crash point (and resets [`MemoryVfs::crashed_at`]).
    pub fn clear_crash_at_op(&self) {
        let mut st = self.shared.lock();
        st.crash_at = None;
        st.crashed_at = None;
    }

    /// The operation number at which the crash point triggered, if it did (kept after
    /// `crash()` until the next `set_crash_at_op`/`clear_crash_at_op`).
    pub fn crashed_at(&self) -> Option<u64> {
        self.shared.lock().crashed_at
    }

    /// The sector size every handle reports from now on.
    pub fn set_sector_size(&self, size: u32) {
        self.shared.lock().sector_size = size;
    }

    /// The `SQLITE_IOCAP_*` bits (see [`crate::traits::iocap`]) every handle reports.
    pub fn set_device_characteristics(&self, bits: u32) {
        self.shared.lock().device_characteristics = bits;
    }

    /// Locks held by the live handles opened on `path`, in handle order (debug aid).
    pub fn lock_state(&self, path: &Path) -> Vec<HandleLockState> {
        let p = normalize(path);
        let st = self.shared.lock();
        st.handles
            .iter()
            .filter(|(_, h)| h.path.as_deref() == Some(p.as_path()))
            .map(|(&id, h)| HandleLockState {
                handle: id,
                level: h.level,
                holds_reserved: h.holds_reserved,
                shm_open: h.shm.is_some(),
                shm_shared: h.shm.map_or(0, |a| a.shared),
                shm_exclusive: h.shm.map_or(0, |a| a.excl),
            })
            .collect()
    }

    /// Number of live (not dropped, not dead) handles.
    pub fn open_handle_count(&self) -> usize {
        self.shared.lock().handles.len()
    }

    /// Number of regions of the shm of database file `path`, if that shm exists.
    pub fn shm_region_count(&self, path: &Path) -> Option<usize> {
        let st = self.shared.lock();
        let node = st.shm_names.get(&shm_name(&normalize(path)))?;
        st.shm_nodes.get(node).map(|n| n.regions.len())
    }
}

impl Vfs for MemoryVfs {
    type File = MemoryFile;

    fn name(&self) -> &'static str {
        "memory"
    }

    fn open(
        &self,
        _cx: &Cx,
        path: Option<&Path>,
        flags: VfsOpenFlags,
    ) -> Result<(MemoryFile, VfsOpenFlags)> {
        let flags = flags.validate()?;
        let norm = path.map(normalize);
        let mut guard = self.shared.lock();
        let st = &mut *guard;
        st.tick("open", norm.as_deref())?;
        let delete_on_close = norm.is_none() || flags.contains(VfsOpenFlags::DELETEONCLOSE);
        let inode = match &norm {
            None => {
                let id = st.next_id();
                st.inodes.insert(id, Inode::default());
                id
            }
            Some(p) => {
                if p.parent().is_none() {
                    return Err(FrankenError::cannot_open(p, "the path names no file"));
                }
                if let Some(&id) = st.live_names.get(p) {
                    if flags.contains(VfsOpenFlags::EXCLUSIVE) {
                        return Err(FrankenError::cannot_open(
                            p,
                            "the file already exists (EXCLUSIVE open)",
                        ));
                    }
                    id
                } else {
                    if !flags.contains(VfsOpenFlags::CREATE) {
                        return Err(FrankenError::cannot_open(p, "no such file"));
                    }
                    let id = st.next_id();
                    st.inodes.insert(id, Inode::default());
                    st.live_names.insert(p.clone(), id);
                    id
                }
            }
        };
        let hid = st.next_id();
        let seen_err = st.inodes.get(&inode).map_or(0, |i| i.err_seq);
        st.handles.insert(
            hid,
            HandleRec {
                inode,
                path: norm.clone(),
                level: LockLevel::None,
                holds_reserved: false,
                shm: None,
                seen_err,
            },
        );
        if delete_on_close && let Some(p) = &norm {
            // As SQLite's unix VFS: unlinked at once, the handle keeps the inode.
            if st.live_names.get(p) == Some(&inode) {
                st.live_names.remove(p);
            }
        }
        let file = MemoryFile {
            shared: Arc::clone(&self.shared),
            id: hid,
            epoch: st.epoch,
            inode,
            path: norm,
            readonly: flags.contains(VfsOpenFlags::READONLY),
        };
        Ok((file, flags))
    }

    fn delete(&self, _cx: &Cx, path: &Path, sync_dir: bool) -> Result<()> {
        let p = normalize(path);
        let mut st = self.shared.lock();
        st.tick("delete", Some(&p))?;
        let removed_file = st.live_names.remove(&p).is_some();
        let removed_shm = st.remove_shm_name(&p);
        if !removed_file && !removed_shm {
            return Err(FrankenError::io(
                "delete",
                Some(p),
                io::Error::from(io::ErrorKind::NotFound),
            ));
        }
        if sync_dir && let Some(dir) = p.parent() {
            let dir = dir.to_path_buf();
            st.sync_dir_entries(&dir);
        }
        st.gc_inodes();
        Ok(())
    }

    fn access(&self, _cx: &Cx, path: &Path, _flags: AccessFlags) -> Result<bool> {
        let p = normalize(path);
        let mut st = self.shared.lock();
        st.tick("access", Some(&p))?;
        Ok(st.live_names.contains_key(&p) || st.shm_names.contains_key(&p))
    }

    fn full_pathname(&self, _cx: &Cx, path: &Path) -> Result<PathBuf> {
        if path.as_os_str().is_empty() {
            return Err(FrankenError::out_of_range("path", "\"\" (empty)"));
        }
        Ok(normalize(path))
    }

    fn randomness(&self, buf: &mut [u8]) {
        self.shared.lock().rng.fill(buf);
    }
}

// ---------------------------------------------------------------------------------------
// MemoryFile
// ---------------------------------------------------------------------------------------

/// An open file of a [`MemoryVfs`]: one "process's" descriptor. Dropping it releases its
/// locks and closes its shm.
pub struct MemoryFile {
    shared: Arc<Mutex<State>>,
    id: u64,
    epoch: u64,
    inode: u64,
    path: Option<PathBuf>,
    readonly: bool,
}

impl fmt::Debug for MemoryFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFile")
            .field("handle", &self.id)
            .field("inode", &self.inode)
            .field("path", &self.path)
            .field("readonly", &self.readonly)
            .finish_non_exhaustive()
    }
}

impl MemoryFile {
    /// This handle's id (as in [`HandleLockState::handle`]).
    pub fn handle_id(&self) -> u64 {
        self.id
    }

    /// The normalized path (`None` for an anonymous file).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// True once a [`MemoryVfs::crash`] killed this handle.
    pub fn is_dead(&self) -> bool {
        self.shared.lock().epoch != self.epoch
    }

    /// Locks the state, refuses dead handles, counts the op.
    fn enter(&self, op: &'static str) -> Result<MutexGuard<'_, State>> {
        let mut st = self.shared.lock();
        if st.epoch != self.epoch {
            return Err(io_err(
                op,
                self.path.as_deref(),
                "the simulated process crashed: this handle died with it; reopen the file"
                    .to_owned(),
            ));
        }
        st.tick(op, self.path.as_deref())?;
        Ok(st)
    }

    fn check_end(&self, op: &'static str, end: Option<u64>) -> Result<u64> {
        end.filter(|&e| e <= MAX_FILE_BYTES).ok_or_else(|| {
            io_err(
                op,
                self.path.as_deref(),
                format!("file would exceed the MemoryVfs limit of {MAX_FILE_BYTES} bytes"),
            )
        })
    }
}

impl Drop for MemoryFile {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st.epoch != self.epoch {
            return;
        }
        st.shm_detach(self.id);
        st.handles.remove(&self.id);
        st.gc_inodes();
    }
}

impl VfsFile for MemoryFile {
    fn read(&self, _cx: &Cx, buf: &mut [u8], offset: u64) -> Result<usize> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("read")?;
        let st = &mut *guard;
        let fx = st.faults_for(FaultOp::Read, self.path.as_deref(), 0, at);
        if fx.fail {
            return Err(injected("read", self.path.as_deref()));
        }
        let data = &st.inode(self.inode)?.live;
        let mut n = usize::try_from(offset)
            .ok()
            .filter(|&o| o < data.len())
            .map_or(0, |o| {
                let n = (data.len() - o).min(buf.len());
                buf[..n].copy_from_slice(&data[o..o + n]);
                n
            });
        buf[n..].fill(0);
        if let Some(k) = fx.short
            && k < n
        {
            buf[k..n].fill(0);
            n = k;
        }
        if fx.flip && n > 0 {
            let bit = st.rng.below(n as u64 * 8) as usize;
            buf[bit / 8] ^= 1 << (bit % 8);
        }
        Ok(n)
    }

    fn write(&mut self, _cx: &Cx, buf: &[u8], offset: u64) -> Result<()> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("write")?;
        let st = &mut *guard;
        if self.readonly {
            return Err(FrankenError::ReadOnly);
        }
        let len = buf.len() as u64;
        self.check_end("write", offset.checked_add(len))?;
        let fx = st.faults_for(FaultOp::Write, self.path.as_deref(), len, at);
        if fx.fail {
            return Err(injected("write", self.path.as_deref()));
        }
        if fx.full {
            return Err(FrankenError::Full);
        }
        st.consume_space(self.path.as_deref(), len);
        if buf.is_empty() {
            return Ok(());
        }
        let inode = st.inode_mut(self.inode)?;
        write_at(&mut inode.live, offset, buf);
        inode.pending.push(PendingOp::Write {
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    fn truncate(&mut self, _cx: &Cx, size: u64) -> Result<()> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("truncate")?;
        let st = &mut *guard;
        if self.readonly {
            return Err(FrankenError::ReadOnly);
        }
        self.check_end("truncate", Some(size))?;
        let fx = st.faults_for(FaultOp::Truncate, self.path.as_deref(), 0, at);
        if fx.fail {
            return Err(injected("truncate", self.path.as_deref()));
        }
        let inode = st.inode_mut(self.inode)?;
        set_len(&mut inode.live, size);
        inode.pending.push(PendingOp::SetLen { len: size });
        Ok(())
    }

    fn sync(&mut self, _cx: &Cx, _flags: SyncFlags) -> Result<()> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("sync")?;
        let st = &mut *guard;
        let fx = st.faults_for(FaultOp::Sync, self.path.as_deref(), 0, at);
        let inode = st.inode_mut(self.inode)?;
        if fx.fail {
            // Linux after an fsync error: the dirty pages are marked clean and dropped.
            let dropped = inode.pending.len();
            inode.pending.clear();
            inode.live.clone_from(&inode.durable);
            inode.err_seq += 1;
            let seq = inode.err_seq;
            st.handle_mut(self.id)?.seen_err = seq;
            tracing::debug!(target: TRACE, path = ?self.path, dropped, "injected fsync failure dropped pending writes");
            return Err(injected("sync", self.path.as_deref()));
        }
        // errseq: a writeback error is reported once to every descriptor that was open
        // when it happened, at its next sync (Linux 4.13 and later), so a process whose
        // writes another process's failed fsync dropped learns of it.
        let seq = inode.err_seq;
        let h = st.handle_mut(self.id)?;
        if h.seen_err < seq {
            h.seen_err = seq;
            return Err(io_err(
                "sync",
                self.path.as_deref(),
                "an earlier fsync of this file failed (reported to every descriptor that was open then, as Linux's errseq does)".to_owned(),
            ));
        }
        let inode = st.inode_mut(self.inode)?;
        let pending = std::mem::take(&mut inode.pending);
        let pending_bytes: usize = pending
            .iter()
            .map(|op| match op {
                PendingOp::Write { bytes, .. } => bytes.len(),
                PendingOp::SetLen { .. } => 0,
            })
            .sum();
        if pending_bytes >= inode.live.len() {
            // MEM-1: live == durable + pending, so copying is the same and cheaper here.
            inode.durable.clone_from(&inode.live);
        } else {
            let mut unused = SplitMix64::new(0);
            apply_ops(
                &mut inode.durable,
                &pending,
                CrashMode::KeepAll,
                &mut unused,
            );
        }
        debug_assert!(inode.durable == inode.live, "MEM-1 violated after sync");
        if let Some(p) = &self.path
            && st.live_names.get(p) == Some(&self.inode)
            && st.durable_names.get(p) != Some(&self.inode)
            && let Some(dir) = p.parent()
        {
            // SQLite's unix VFS fsyncs the directory on the first sync of a new file.
            let dir = dir.to_path_buf();
            st.sync_dir_entries(&dir);
        }
        Ok(())
    }

    fn file_size(&self, _cx: &Cx) -> Result<u64> {
        let st = self.enter("file_size")?;
        Ok(st.inode(self.inode)?.live.len() as u64)
    }

    fn lock(&mut self, _cx: &Cx, level: LockLevel) -> Result<()> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("lock")?;
        let st = &mut *guard;
        let cur = st.handle(self.id)?.level;
        if cur >= level {
            return Ok(());
        }
        if st
            .faults_for(FaultOp::Lock, self.path.as_deref(), 0, at)
            .fail
        {
            return Err(injected("lock", self.path.as_deref()));
        }
        if cur == LockLevel::None {
            if st
                .other_levels(self.id, self.inode)
                .any(|h| h.level >= LockLevel::Pending)
            {
                return Err(FrankenError::Busy);
            }
            st.handle_mut(self.id)?.level = LockLevel::Shared;
            if level == LockLevel::Shared {
                return Ok(());
            }
            let r = st.lock_above_shared(self.id, self.inode, level);
            if r.is_err() {
                // Leave the handle as we found it.
                let h = st.handle_mut(self.id)?;
                h.level = LockLevel::None;
                h.holds_reserved = false;
            }
            return r;
        }
        st.lock_above_shared(self.id, self.inode, level)
    }

    fn unlock(&mut self, _cx: &Cx, level: LockLevel) -> Result<()> {
        let mut guard = self.enter("unlock")?;
        if level > LockLevel::Shared {
            return Err(FrankenError::out_of_range(
                "unlock level (Shared or None)",
                format!("{level:?}"),
            ));
        }
        let h = guard.handle_mut(self.id)?;
        if h.level > level {
            h.level = level;
            h.holds_reserved = false;
        }
        Ok(())
    }

    fn check_reserved_lock(&self, _cx: &Cx) -> Result<bool> {
        let st = self.enter("check_reserved_lock")?;
        if st.handle(self.id)?.level >= LockLevel::Reserved {
            return Ok(true);
        }
        Ok(st
            .other_levels(self.id, self.inode)
            .any(|h| h.holds_reserved))
    }

    fn sector_size(&self) -> u32 {
        self.shared.lock().sector_size
    }

    fn device_characteristics(&self) -> u32 {
        self.shared.lock().device_characteristics
    }

    fn shm_map(
        &mut self,
        _cx: &Cx,
        region: u32,
        size: u32,
        extend: bool,
    ) -> Result<Option<ShmRegion>> {
        let mut guard = self.enter("shm_map")?;
        let at = std::panic::Location::caller();
        let st = &mut *guard;
        let Some(path) = self.path.clone() else {
            return Err(FrankenError::cannot_open(
                "<anonymous file>",
                "an anonymous file has no -shm",
            ));
        };
        if size == 0 || !size.is_multiple_of(SHM_REGION_GRANULE) {
            return Err(FrankenError::out_of_range(
                "shm region size (a positive multiple of 4096)",
                size,
            ));
        }
        if region >= MAX_SHM_REGIONS {
            return Err(FrankenError::out_of_range("shm region index", region));
        }
        let shm_path = shm_name(&path);
        let fx = st.faults_for(FaultOp::ShmMap, Some(&shm_path), 0, at);
        if fx.fail {
            return Err(injected("shm_map", Some(&shm_path)));
        }
        let node_id = st.shm_attach(self.id, &path)?;
        let node = st
            .shm_nodes
            .get_mut(&node_id)
            .ok_or_else(|| FrankenError::internal("MemoryVfs shm node vanished"))?;
        if !node.regions.is_empty() && node.region_size != size {
            return Err(FrankenError::out_of_range(
                format!(
                    "shm region size (the -shm is mapped in regions of {} bytes)",
                    node.region_size
                ),
                size,
            ));
        }
        let idx = region as usize;
        if idx >= node.regions.len() {
            if !extend {
                return Ok(None);
            }
            node.region_size = size;
            while node.regions.len() <= idx {
                node.regions.push(ShmRegion::heap(size as usize));
            }
        }
        Ok(Some(node.regions[idx].clone()))
    }

    fn shm_lock(&mut self, _cx: &Cx, offset: u32, n: u32, flags: u32) -> Result<()> {
        let at = std::panic::Location::caller();
        let mut guard = self.enter("shm_lock")?;
        let st = &mut *guard;
        let (exclusive, lock) = check_shm_lock_args(offset, n, flags)?;
        let Some(path) = self.path.clone() else {
            return Err(FrankenError::cannot_open(
                "<anonymous file>",
                "an anonymous file has no -shm",
            ));
        };
        if !lock && st.handle(self.id)?.shm.is_none() {
            // Nothing is held; do not open (and possibly reset) the shm just to unlock.
            return Ok(());
        }
        let node = st.shm_attach(self.id, &path)?;
        let mask = (((1u32 << n) - 1) << offset) as u8;
        let mine = st
            .handle(self.id)?
            .shm
            .ok_or_else(|| FrankenError::internal("MemoryVfs shm attachment vanished"))?;
        let (same, other) = if exclusive {
            (mine.excl, mine.shared)
        } else {
            (mine.shared, mine.excl)
        };
        if other & mask != 0 {
            return Err(FrankenError::internal(format!(
                "shm_lock(offset {offset}, n {n}, flags {flags:#x}): a slot is held in the \
                 other mode; SQLite's rule is release first, never upgrade or downgrade"
            )));
        }
        if lock {
            if same & mask == mask {
                return Ok(());
            }
            if st
                .faults_for(FaultOp::ShmLock, Some(&shm_name(&path)), 0, at)
                .fail
            {
                return Err(injected("shm_lock", Some(&shm_name(&path))));
            }
            let conflict = st
                .handles
                .iter()
                .filter(|&(&hid, _)| hid != self.id)
                .filter_map(|(_, h)| h.shm.filter(|a| a.node == node))
                .any(|a| {
                    if exclusive {
                        (a.shared | a.excl) & mask != 0
                    } else {
                        a.excl & mask != 0
                    }
                });
            if conflict {
                return Err(FrankenError::Busy);
            }
        }
        let h = st.handle_mut(self.id)?;
        if let Some(a) = h.shm.as_mut() {
            let bits = if exclusive {
                &mut a.excl
            } else {
                &mut a.shared
            };
            if lock {
                *bits |= mask;
            } else {
                *bits &= !mask;
            }
        }
        Ok(())
    }

    fn shm_unmap(&mut self, _cx: &Cx, delete: bool) -> Result<()> {
        let mut guard = self.enter("shm_unmap")?;
        let st = &mut *guard;
        let Some(attach) = st.handle(self.id)?.shm else {
            return Ok(());
        };
        st.shm_detach(self.id);
        if delete {
            let name = st.shm_nodes.get(&attach.node).and_then(|n| n.name.clone());
            if let Some(name) = name {
                st.remove_shm_name(&name);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_deterministic_and_spread() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert!(xs.windows(2).all(|w| w[0] != w[1]));
        let mut c = SplitMix64::new(1);
        for _ in 0..1000 {
            assert!(c.below(10) < 10);
        }
        assert_eq!(c.below(0), 0);
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(normalize(Path::new("db")), PathBuf::from("/db"));
        assert_eq!(normalize(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert_eq!(shm_name(Path::new("/a/db")), PathBuf::from("/a/db-shm"));
    }

    #[test]
    fn apply_ops_keep_all_is_live() {
        let ops = vec![
            PendingOp::Write {
                offset: 3,
                bytes: vec![1, 2, 3],
            },
            PendingOp::SetLen { len: 4 },
            PendingOp::Write {
                offset: 6,
                bytes: vec![9],
            },
        ];
        let mut img = vec![7u8; 2];
        apply_ops(&mut img, &ops, CrashMode::KeepAll, &mut SplitMix64::new(0));
        assert_eq!(img, vec![7, 7, 0, 1, 0, 0, 9]);
        let mut img2 = vec![7u8; 2];
        apply_ops(&mut img2, &ops, CrashMode::DropAll, &mut SplitMix64::new(0));
        assert_eq!(img2, vec![7, 7]);
    }
}
