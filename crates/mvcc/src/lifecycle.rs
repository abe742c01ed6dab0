//! Process liveness and the coordinator record `<db>.fsqlite-shm`.
//!
//! The record says which process coordinates a database in hybrid mode. It is written only
//! by the holder of the legacy `-shm`'s `WAL_WRITE_LOCK` (the coordinator, at takeover and
//! at close) and read by anyone probing for a coordinator. The lock, not the record, is the
//! truth: a prober that obtains `WAL_WRITE_LOCK` knows no coordinator is running, whatever
//! the record says; the record only tells a prober that *cannot* get the lock whether a live
//! coordinator holds it ([`crate::compat::CoordinatorProbeResult::Active`]) or someone else
//! does (a legacy writer: `Timeout`).
//!
//! # Record layout (48 bytes at offset 0, every integer little-endian)
//!
//! ```text
//!  off size field        meaning
//! +---+----+------------+------------------------------------------------------------+
//! |  0|   8| magic      | RECORD_MAGIC = b"FSQLCOOR"                                 |
//! |  8|   4| version    | RECORD_VERSION = 1; any other value is refused             |
//! | 12|   4| state      | 0 = closed (clean shutdown), 1 = active; others refused    |
//! | 16|   4| pid        | the coordinator's process id                               |
//! | 20|   4| reserved   | 0 (ignored on read)                                        |
//! | 24|   8| start_time | the pid's start time (/proc/<pid>/stat field 22, clock     |
//! |   |    |            | ticks after boot); 0 = unknown                             |
//! | 32|   8| generation | +1 at every takeover; 1 for the first coordinator          |
//! | 40|   8| checksum   | SQLite's WAL checksum of bytes 0..40, little-endian words, |
//! |   |    |            | seed (0, 0), stored as two little-endian u32               |
//! | 48|    | end (RECORD_SIZE); trailing bytes are ignored                            |
//! +---+----+------------+------------------------------------------------------------+
//! ```
//!
//! Validity rules for [`CoordinatorRecord::decode`] (checked in this order; a failure is a
//! [`RecordDefect`], never a panic): (1) at least 48 bytes; (2) the magic; (3) the
//! checksum; (4) the version; (5) the state. A record that fails any rule is treated as
//! absent (a prober that cannot get the lock then reports `Timeout`).
//!
//! # Liveness
//!
//! The recorded coordinator is alive when its pid is alive ([`process_alive_os`]) **and**
//! has the recorded start time (so a recycled pid is not mistaken for it). When either
//! start time is unknown, the pid alone decides (erring on "alive", which only delays a
//! takeover: the lock still decides).

use std::fmt;
use std::path::{Path, PathBuf};

use fsqlite_wal::checksum::wal_checksum;
use fsqlite_wal::recovery_fence::{pid_alive_os, pid_start_time};

/// File-name suffix of the coordinator record: `app.db` -> `app.db.fsqlite-shm`.
pub const RECORD_SUFFIX: &str = ".fsqlite-shm";
/// The record magic.
pub const RECORD_MAGIC: [u8; 8] = *b"FSQLCOOR";
/// The record format version this crate writes and accepts.
pub const RECORD_VERSION: u32 = 1;

/// Offset of the magic.
pub const RECORD_MAGIC_OFFSET: usize = 0;
/// Offset of the version (u32).
pub const RECORD_VERSION_OFFSET: usize = RECORD_MAGIC_OFFSET + RECORD_MAGIC.len();
/// Offset of the state (u32).
pub const RECORD_STATE_OFFSET: usize = RECORD_VERSION_OFFSET + 4;
/// Offset of the pid (u32).
pub const RECORD_PID_OFFSET: usize = RECORD_STATE_OFFSET + 4;
/// Offset of the reserved word (u32).
pub const RECORD_RESERVED_OFFSET: usize = RECORD_PID_OFFSET + 4;
/// Offset of the start time (u64).
pub const RECORD_START_TIME_OFFSET: usize = RECORD_RESERVED_OFFSET + 4;
/// Offset of the generation (u64).
pub const RECORD_GENERATION_OFFSET: usize = RECORD_START_TIME_OFFSET + 8;
/// Offset of the checksum (u32 x 2); everything before it is checksummed.
pub const RECORD_CHECKSUM_OFFSET: usize = RECORD_GENERATION_OFFSET + 8;
/// Size of the record.
pub const RECORD_SIZE: usize = RECORD_CHECKSUM_OFFSET + 8;

const _: () = assert!(RECORD_SIZE == 48 && RECORD_CHECKSUM_OFFSET.is_multiple_of(8));

/// `state` value of a coordinator that closed cleanly.
const STATE_CLOSED: u32 = 0;
/// `state` value of a running coordinator.
const STATE_ACTIVE: u32 = 1;

/// Whether process `pid` is alive: pid 0 never is, this process always is, otherwise
/// `kill(pid, 0)` and `/proc/<pid>/stat` decide (a zombie is dead; "cannot know" is alive).
/// The same test as `fsqlite_wal::recovery_fence::pid_alive_os`, which it calls.
pub fn process_alive_os(pid: u32) -> bool {
    pid_alive_os(pid)
}

/// The start time of process `pid` (clock ticks after boot), `None` when unknown.
pub fn process_start_time(pid: u32) -> Option<u64> {
    pid_start_time(pid)
}

/// `<db>.fsqlite-shm` for the database `db`.
pub fn record_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(RECORD_SUFFIX);
    PathBuf::from(s)
}

/// Whether the recorded coordinator was running or closed cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordState {
    /// It closed cleanly.
    Closed,
    /// It was running (and may have died).
    Active,
}

/// One coordinator record (see the module docs for the bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CoordinatorRecord {
    /// Running or closed.
    pub state: RecordState,
    /// The coordinator's pid.
    pub pid: u32,
    /// Its start time (clock ticks after boot), 0 when unknown.
    pub start_time: u64,
    /// The takeover generation.
    pub generation: u64,
}

/// Why a record was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordDefect {
    /// Fewer than [`RECORD_SIZE`] bytes (e.g. a new, empty file).
    TooShort {
        /// The bytes present.
        len: usize,
    },
    /// The magic is not [`RECORD_MAGIC`].
    BadMagic,
    /// The checksum does not match (a torn or damaged record).
    BadChecksum,
    /// An unknown version.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// An unknown state value.
    BadState {
        /// The value found.
        found: u32,
    },
}

impl fmt::Display for RecordDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => write!(f, "the record has {len} bytes, need {RECORD_SIZE}"),
            Self::BadMagic => write!(f, "the record magic is wrong"),
            Self::BadChecksum => write!(f, "the record checksum does not match"),
            Self::UnsupportedVersion { found } => {
                write!(f, "record version {found} is not {RECORD_VERSION}")
            }
            Self::BadState { found } => write!(f, "record state {found} is unknown"),
        }
    }
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn record_checksum(b: &[u8]) -> [u32; 2] {
    wal_checksum(&b[..RECORD_CHECKSUM_OFFSET], false, [0, 0])
}

impl CoordinatorRecord {
    /// An active record for this process (pid and start time from the OS).
    pub fn for_this_process(generation: u64) -> Self {
        let pid = std::process::id();
        Self {
            state: RecordState::Active,
            pid,
            start_time: process_start_time(pid).unwrap_or(0),
            generation,
        }
    }

    /// The 48 record bytes.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[RECORD_MAGIC_OFFSET..RECORD_VERSION_OFFSET].copy_from_slice(&RECORD_MAGIC);
        b[RECORD_VERSION_OFFSET..RECORD_STATE_OFFSET]
            .copy_from_slice(&RECORD_VERSION.to_le_bytes());
        let state = match self.state {
            RecordState::Closed => STATE_CLOSED,
            RecordState::Active => STATE_ACTIVE,
        };
        b[RECORD_STATE_OFFSET..RECORD_PID_OFFSET].copy_from_slice(&state.to_le_bytes());
        b[RECORD_PID_OFFSET..RECORD_RESERVED_OFFSET].copy_from_slice(&self.pid.to_le_bytes());
        b[RECORD_START_TIME_OFFSET..RECORD_GENERATION_OFFSET]
            .copy_from_slice(&self.start_time.to_le_bytes());
        b[RECORD_GENERATION_OFFSET..RECORD_CHECKSUM_OFFSET]
            .copy_from_slice(&self.generation.to_le_bytes());
        let [c1, c2] = record_checksum(&b);
        b[RECORD_CHECKSUM_OFFSET..RECORD_CHECKSUM_OFFSET + 4].copy_from_slice(&c1.to_le_bytes());
        b[RECORD_CHECKSUM_OFFSET + 4..RECORD_SIZE].copy_from_slice(&c2.to_le_bytes());
        b
    }

    /// Parses a record (see the module docs for the rules). Any byte string is accepted as
    /// input; bad ones give a [`RecordDefect`].
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordDefect> {
        let Some(b) = bytes.get(..RECORD_SIZE) else {
            return Err(RecordDefect::TooShort { len: bytes.len() });
        };
        if b[RECORD_MAGIC_OFFSET..RECORD_VERSION_OFFSET] != RECORD_MAGIC {
            return Err(RecordDefect::BadMagic);
        }
        let stored = [
            le_u32(b, RECORD_CHECKSUM_OFFSET),
            le_u32(b, RECORD_CHECKSUM_OFFSET + 4),
        ];
        if stored != record_checksum(b) {
            return Err(RecordDefect::BadChecksum);
        }
        let version = le_u32(b, RECORD_VERSION_OFFSET);
        if version != RECORD_VERSION {
            return Err(RecordDefect::UnsupportedVersion { found: version });
        }
        let state = match le_u32(b, RECORD_STATE_OFFSET) {
            STATE_CLOSED => RecordState::Closed,
            STATE_ACTIVE => RecordState::Active,
            found => return Err(RecordDefect::BadState { found }),
        };
        Ok(Self {
            state,
            pid: le_u32(b, RECORD_PID_OFFSET),
            start_time: le_u64(b, RECORD_START_TIME_OFFSET),
            generation: le_u64(b, RECORD_GENERATION_OFFSET),
        })
    }

    /// Whether the recorded process is alive, given liveness and start-time oracles (see
    /// the module docs). A closed record is never alive.
    pub fn owner_alive_with(
        &self,
        alive: impl FnOnce(u32) -> bool,
        start_time: impl FnOnce(u32) -> Option<u64>,
    ) -> bool {
        if self.state == RecordState::Closed || !alive(self.pid) {
            return false;
        }
        match (self.start_time, start_time(self.pid)) {
            (0, _) | (_, None) => true,
            (recorded, Some(now)) => recorded == now,
        }
    }

    /// [`CoordinatorRecord::owner_alive_with`] asking the OS.
    pub fn owner_alive_os(&self) -> bool {
        self.owner_alive_with(process_alive_os, process_start_time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CoordinatorRecord {
        CoordinatorRecord {
            state: RecordState::Active,
            pid: 4242,
            start_time: 0x0102_0304_0506_0708,
            generation: 7,
        }
    }

    #[test]
    fn layout_is_documented_bytes() {
        let b = sample().encode();
        assert_eq!(&b[0..8], b"FSQLCOOR");
        assert_eq!(&b[8..12], &1u32.to_le_bytes());
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(&b[16..20], &4242u32.to_le_bytes());
        assert_eq!(&b[20..24], &[0; 4]);
        assert_eq!(&b[24..32], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[32..40], &7u64.to_le_bytes());
        // Independent checksum: s1 += a + s2; s2 += b + s1 over LE words of bytes 0..40.
        let (mut s1, mut s2) = (0u32, 0u32);
        for pair in b[..40].chunks_exact(8) {
            let x = u32::from_le_bytes(pair[..4].try_into().unwrap());
            let y = u32::from_le_bytes(pair[4..].try_into().unwrap());
            s1 = s1.wrapping_add(x).wrapping_add(s2);
            s2 = s2.wrapping_add(y).wrapping_add(s1);
        }
        assert_eq!(&b[40..44], &s1.to_le_bytes());
        assert_eq!(&b[44..48], &s2.to_le_bytes());
        assert_eq!(CoordinatorRecord::decode(&b), Ok(sample()));
        let mut longer = b.to_vec();
        longer.extend_from_slice(b"trailing");
        assert_eq!(CoordinatorRecord::decode(&longer), Ok(sample()));
    }

    #[test]
    fn damaged_records_are_refused_never_panic() {
        let good = sample().encode();
        for len in 0..RECORD_SIZE {
            assert_eq!(
                CoordinatorRecord::decode(&good[..len]),
                Err(RecordDefect::TooShort { len })
            );
        }
        let mut bad = good;
        bad[0] ^= 1;
        assert_eq!(CoordinatorRecord::decode(&bad), Err(RecordDefect::BadMagic));
        // Every single-bit flip after the magic is caught.
        for byte in 8..RECORD_SIZE {
            for bit in 0..8 {
                let mut b = good;
                b[byte] ^= 1 << bit;
                assert!(
                    CoordinatorRecord::decode(&b).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
        let mut raw = good;
        raw[8..12].copy_from_slice(&2u32.to_le_bytes());
        let [c1, c2] = record_checksum(&raw);
        raw[40..44].copy_from_slice(&c1.to_le_bytes());
        raw[44..48].copy_from_slice(&c2.to_le_bytes());
        assert_eq!(
            CoordinatorRecord::decode(&raw),
            Err(RecordDefect::UnsupportedVersion { found: 2 })
        );
        raw[8..12].copy_from_slice(&1u32.to_le_bytes());
        raw[12..16].copy_from_slice(&9u32.to_le_bytes());
        let [c1, c2] = record_checksum(&raw);
        raw[40..44].copy_from_slice(&c1.to_le_bytes());
        raw[44..48].copy_from_slice(&c2.to_le_bytes());
        assert_eq!(
            CoordinatorRecord::decode(&raw),
            Err(RecordDefect::BadState { found: 9 })
        );
        // Arbitrary garbage of many lengths.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = CoordinatorRecord::decode(&junk);
        }
    }

    #[test]
    fn liveness_rules() {
        let r = sample();
        assert!(r.owner_alive_with(|_| true, |_| Some(r.start_time)));
        assert!(
            !r.owner_alive_with(|_| true, |_| Some(r.start_time + 1)),
            "pid reused"
        );
        assert!(!r.owner_alive_with(|_| false, |_| Some(r.start_time)));
        assert!(
            r.owner_alive_with(|_| true, |_| None),
            "unknown start time: pid decides"
        );
        let unknown = CoordinatorRecord { start_time: 0, ..r };
        assert!(unknown.owner_alive_with(|_| true, |_| Some(5)));
        let closed = CoordinatorRecord {
            state: RecordState::Closed,
            ..r
        };
        assert!(!closed.owner_alive_with(|_| true, |_| Some(r.start_time)));
        // This process, with its real start time, is alive.
        assert!(CoordinatorRecord::for_this_process(1).owner_alive_os());
        assert!(!process_alive_os(0));
        assert_eq!(
            record_path(Path::new("/d/app.db")),
            PathBuf::from("/d/app.db.fsqlite-shm")
        );
    }
}
