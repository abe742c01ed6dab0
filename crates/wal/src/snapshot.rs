//! Snapshot handles, as SQLite's `sqlite3_snapshot_get/open/cmp/recover`.
//!
//! A [`WalSnapshot`] names one committed state of the database: the WAL-index header a
//! read transaction began on (its `mxFrame`, database size, frame checksum and the WAL
//! generation's salts). [`crate::ReadTxn::snapshot`] takes one; [`crate::Wal::begin_read_at`]
//! opens a read transaction on exactly that state again, for as long as the WAL still
//! holds it:
//!
//! - the WAL has not been restarted since (same salts), and
//! - no checkpoint has tried to copy frames past its `mxFrame` into the database
//!   (`nBackfillAttempted <= mxFrame`); a read transaction open on a snapshot keeps
//!   checkpoints from passing it, like any reader.
//!
//! Otherwise it fails with [`fsqlite_error::FrankenError::SnapshotUnavailable`]
//! (SQLITE_ERROR_SNAPSHOT) naming which. After a restart of the process the WAL-index is
//! rebuilt with `nBackfillAttempted = mxFrame` (nobody knows how far a checkpoint got), so
//! every older snapshot looks unavailable until [`crate::Wal::recover_snapshots`] finds,
//! as `sqlite3_snapshot_recover` does, how far the database file really holds frames.
//! Handles survive a restart as bytes: [`WalSnapshot::to_bytes`] and
//! [`WalSnapshot::from_bytes`].
//!
//! ```
//! use std::sync::Arc;
//! use fsqlite_types::{Cx, PageNumber};
//! use fsqlite_vfs::MemoryVfs;
//! use fsqlite_wal::{Wal, WalOptions, WalSnapshot};
//!
//! let cx = Cx::new();
//! let mut wal = Wal::open(&cx, Arc::new(MemoryVfs::new()), "/s.db", WalOptions::default()).unwrap();
//! let p = PageNumber::new(1).unwrap();
//! let commit = |wal: &mut Wal<MemoryVfs>, byte: u8| {
//!     let mut tx = wal.begin_write(&cx).unwrap();
//!     tx.write_page(&cx, p, &vec![byte; 4096]).unwrap();
//!     tx.commit(&cx, 1).unwrap();
//! };
//! commit(&mut wal, 1);
//! let old: WalSnapshot = wal.begin_read(&cx).unwrap().snapshot();
//! commit(&mut wal, 2);
//! let new = wal.begin_read(&cx).unwrap().snapshot();
//! assert!(old < new);
//! let mut buf = vec![0u8; 4096];
//! wal.begin_read_at(&cx, &old).unwrap().read_page(&cx, p, &mut buf).unwrap();
//! assert_eq!(buf[0], 1); // the page as of the older snapshot
//! let again = WalSnapshot::from_bytes(&old.to_bytes()).unwrap();
//! assert_eq!(again, old);
//! ```

use std::cmp::Ordering;
use std::path::Path;

use fsqlite_error::{FrankenError, Result};

use crate::format::FrameHeader;
use crate::wal_index::{WAL_INDEX_HDR_SIZE, WalIndexHdr};

/// A handle on one committed state of the database (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct WalSnapshot {
    hdr: WalIndexHdr,
}

impl WalSnapshot {
    pub(crate) fn new(hdr: WalIndexHdr) -> Self {
        Self { hdr }
    }

    pub(crate) fn hdr(&self) -> &WalIndexHdr {
        &self.hdr
    }

    /// The handle of the commit a published WAL-index header names (sealed here: `is_init`,
    /// version and checksum set), for writers that keep their own copy of the header, as
    /// `fsqlite_mvcc`'s coordinator does.
    pub fn from_header(mut hdr: WalIndexHdr) -> Self {
        hdr.seal();
        Self { hdr }
    }

    /// The WAL-index header the handle names.
    pub fn header(&self) -> WalIndexHdr {
        self.hdr
    }

    /// The snapshot's last commit frame (`mxFrame`; 0: the database file alone).
    pub fn mx_frame(&self) -> u32 {
        self.hdr.mx_frame
    }

    /// The database size in pages at the snapshot (0 when it predates the WAL's first
    /// commit: the database file's own size then applies).
    pub fn db_size(&self) -> u32 {
        if self.hdr.mx_frame == 0 {
            0
        } else {
            self.hdr.n_page
        }
    }

    /// The salts of the WAL generation the snapshot belongs to.
    pub fn salts(&self) -> [u32; 2] {
        self.hdr.wal_salts()
    }

    /// The handle as 48 bytes (the WAL-index header it names, as SQLite's
    /// `sqlite3_snapshot` holds it), to keep across a restart of the process.
    pub fn to_bytes(&self) -> [u8; WAL_INDEX_HDR_SIZE] {
        self.hdr.to_bytes()
    }

    /// Reads a handle written by [`WalSnapshot::to_bytes`]: `OutOfRange` unless `bytes`
    /// are 48 bytes of a sealed WAL-index header with a good checksum.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let arr: &[u8; WAL_INDEX_HDR_SIZE] = bytes.try_into().map_err(|_| {
            FrankenError::out_of_range(
                format!("snapshot handle length (a handle is {WAL_INDEX_HDR_SIZE} bytes)"),
                bytes.len(),
            )
        })?;
        let hdr = WalIndexHdr::from_bytes(arr);
        if hdr.is_init != 1 || !hdr.checksum_ok() {
            return Err(FrankenError::out_of_range(
                "snapshot handle (its checksum does not match: not a handle from to_bytes, or damaged)",
                "48 bytes",
            ));
        }
        Ok(Self { hdr })
    }
}

/// `SnapshotUnavailable` unless the snapshot whose header is `target` is still in the WAL
/// whose live header has `live_salts` and `live_mx` committed frames and whose
/// `nBackfillAttempted` is `attempted` (when known): no restart since, no frame past the
/// WAL's end, no checkpoint copied past it. Shared by `Wal::begin_read_at` and
/// `fsqlite_mvcc`'s `Coordinator::begin_concurrent_at`.
pub fn check_available(
    target: &WalIndexHdr,
    live_salts: [u32; 2],
    live_mx: u32,
    attempted: Option<u32>,
) -> Result<()> {
    let reason = if target.wal_salts() != live_salts {
        "the WAL was restarted since it was taken (a checkpoint let the WAL start over)".to_string()
    } else if target.mx_frame > live_mx {
        format!(
            "it names frame {} but the WAL holds {live_mx} committed frames",
            target.mx_frame
        )
    } else if let Some(a) = attempted.filter(|&a| a > target.mx_frame) {
        format!(
            "a checkpoint copied frames up to {a} into the database, past the snapshot's frame {} (after a restart, recover_snapshots may bring it back)",
            target.mx_frame
        )
    } else {
        return Ok(());
    };
    Err(FrankenError::SnapshotUnavailable { reason })
}

/// `SnapshotUnavailable` unless `frame` (the header of frame `target.mx_frame`, read back
/// from the WAL at `wal`) is the commit the snapshot names: same salts, commit size and
/// running checksum. A handle from another database fails here instead of misreading.
pub fn check_commit_frame(target: &WalIndexHdr, frame: &FrameHeader, wal: &Path) -> Result<()> {
    if frame.salt != target.wal_salts()
        || frame.db_size_after_commit != target.n_page
        || frame.checksum != target.a_frame_cksum
    {
        return Err(FrankenError::SnapshotUnavailable {
            reason: format!(
                "frame {} of {} is not the commit the snapshot names (a handle from another database?)",
                target.mx_frame,
                wal.display()
            ),
        });
    }
    Ok(())
}

/// Two handles are equal when they name the same commit: the same WAL generation and
/// the same `mxFrame`.
impl PartialEq for WalSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

/// `sqlite3_snapshot_cmp`: within one WAL generation the snapshot with the larger
/// `mxFrame` is newer; snapshots of different generations (the WAL was restarted in
/// between) do not compare (`None`), where SQLite leaves the answer undefined.
impl PartialOrd for WalSnapshot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        (self.hdr.a_salt == other.hdr.a_salt).then(|| self.hdr.mx_frame.cmp(&other.hdr.mx_frame))
    }
}
