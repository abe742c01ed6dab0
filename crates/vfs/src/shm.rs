//! Shared memory for the WAL-index (`<db>-shm`): regions, lock indices and flags.
//!
//! A [`ShmRegion`] is a cheap, cloneable handle to one 32 KiB region of the WAL-index.
//! For [`crate::UnixVfs`] it is a window of a `MAP_SHARED` mapping of the `-shm` file,
//! shared with every other process (SQLite's included) that maps the same file; for
//! [`crate::MemoryVfs`] it is heap memory shared by every handle of that VFS.
//!
//! All access goes through 32-bit atomics at 4-byte-aligned offsets, in **native** byte
//! order, which is how SQLite reads and writes the WAL-index (`volatile` u32s; it assumes
//! aligned 32-bit loads and stores are atomic). 16-bit hash slots are read from and
//! written into their containing 32-bit word; only the single writer (holding
//! `WAL_WRITE_LOCK`) ever stores slots, so the read-modify-write never races another
//! store.
//!
//! This module holds the crate's only `unsafe` code: viewing mapped memory as atomics.
//!
//! Lock indices and flag values are SQLite's (`xShmLock`):
//!
//! | index | name | `-shm` byte |
//! |---|---|---|
//! | 0 | `WAL_WRITE_LOCK` | 120 |
//! | 1 | `WAL_CKPT_LOCK` | 121 |
//! | 2 | `WAL_RECOVER_LOCK` | 122 |
//! | 3+i | `WAL_READ_LOCK(i)`, i = 0..4 | 123..127 |
//! | DMS | dead-man switch | 128 |

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of one WAL-index region (`WALINDEX_PGSZ`).
pub const SHM_REGION_SIZE: u32 = 32768;
/// Number of shm lock slots (`SQLITE_SHM_NLOCK`).
pub const SHM_NLOCK: u32 = 8;
/// `SQLITE_SHM_UNLOCK`
pub const SHM_UNLOCK: u32 = 1;
/// `SQLITE_SHM_LOCK`
pub const SHM_LOCK: u32 = 2;
/// `SQLITE_SHM_SHARED`
pub const SHM_SHARED: u32 = 4;
/// `SQLITE_SHM_EXCLUSIVE`
pub const SHM_EXCLUSIVE: u32 = 8;
/// Lock index of the single writer.
pub const WAL_WRITE_LOCK: u32 = 0;
/// Lock index of the single checkpointer.
pub const WAL_CKPT_LOCK: u32 = 1;
/// Lock index held exclusively while recovery runs.
pub const WAL_RECOVER_LOCK: u32 = 2;
/// Lock index of read mark 0.
pub const WAL_READ_LOCK_BASE: u32 = 3;
/// `-shm` byte offset of lock index 0 (`UNIX_SHM_BASE`).
pub const SHM_LOCK_BASE_BYTE: u64 = 120;
/// `-shm` byte offset of the dead-man switch (`UNIX_SHM_DMS`).
pub const SHM_DMS_BYTE: u64 = SHM_LOCK_BASE_BYTE + SHM_NLOCK as u64;

/// Lock index of read mark `i` (0..=4).
pub const fn wal_read_lock(i: u32) -> u32 {
    WAL_READ_LOCK_BASE + i
}

/// Checks SQLite's `xShmLock` argument rules; returns `(exclusive, lock)`.
pub fn check_shm_lock_args(offset: u32, n: u32, flags: u32) -> fsqlite_error::Result<(bool, bool)> {
    let valid_flags = [
        SHM_LOCK | SHM_SHARED,
        SHM_LOCK | SHM_EXCLUSIVE,
        SHM_UNLOCK | SHM_SHARED,
        SHM_UNLOCK | SHM_EXCLUSIVE,
    ];
    if !valid_flags.contains(&flags) {
        return Err(fsqlite_error::FrankenError::out_of_range(
            "shm lock flags",
            format!("{flags:#x}"),
        ));
    }
    if n == 0 || offset >= SHM_NLOCK || offset + n > SHM_NLOCK {
        return Err(fsqlite_error::FrankenError::out_of_range(
            "shm lock range",
            format!("offset {offset}, n {n}"),
        ));
    }
    let exclusive = flags & SHM_EXCLUSIVE != 0;
    if !exclusive && n != 1 {
        return Err(fsqlite_error::FrankenError::out_of_range(
            "shm lock range (a shared lock covers exactly one slot)",
            n,
        ));
    }
    Ok((exclusive, flags & SHM_LOCK != 0))
}

#[derive(Clone)]
enum Backing {
    Heap(Arc<[AtomicU32]>),
    Mmap {
        map: Arc<memmap2::MmapRaw>,
        /// Byte offset of this region inside the mapping.
        offset: usize,
        /// Region length in 32-bit words.
        words: usize,
    },
}

/// A handle to one region of shared memory (see the module docs).
#[derive(Clone)]
pub struct ShmRegion {
    backing: Backing,
}

impl std::fmt::Debug for ShmRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShmRegion")
            .field(
                "kind",
                &match self.backing {
                    Backing::Heap(_) => "heap",
                    Backing::Mmap { .. } => "mmap",
                },
            )
            .field("len", &self.len())
            .finish()
    }
}

impl ShmRegion {
    /// A zeroed private region of `len` bytes (rounded up to a multiple of 4).
    pub fn heap(len: usize) -> Self {
        let words = len.div_ceil(4);
        let v: Vec<AtomicU32> = (0..words).map(|_| AtomicU32::new(0)).collect();
        Self {
            backing: Backing::Heap(v.into()),
        }
    }

    /// A region over `words` 32-bit words of `map` starting at byte `offset`.
    ///
    /// Returns `None` if the window does not lie inside the mapping or is misaligned.
    pub(crate) fn from_mmap(map: Arc<memmap2::MmapRaw>, offset: usize, len: usize) -> Option<Self> {
        let words = len / 4;
        let end = offset.checked_add(words * 4)?;
        if end > map.len()
            || !offset.is_multiple_of(4)
            || !(map.as_ptr() as usize).is_multiple_of(4)
        {
            return None;
        }
        Some(Self {
            backing: Backing::Mmap { map, offset, words },
        })
    }

    /// Length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        match &self.backing {
            Backing::Heap(v) => v.len() * 4,
            Backing::Mmap { words, .. } => words * 4,
        }
    }

    /// True for a zero-length region.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when both handles view the same memory.
    pub fn same_memory(&self, other: &ShmRegion) -> bool {
        match (&self.backing, &other.backing) {
            (Backing::Heap(a), Backing::Heap(b)) => Arc::ptr_eq(a, b),
            (
                Backing::Mmap {
                    map: a, offset: oa, ..
                },
                Backing::Mmap {
                    map: b, offset: ob, ..
                },
            ) => Arc::ptr_eq(a, b) && oa == ob,
            _ => false,
        }
    }

    /// The atomic 32-bit word at byte offset `byte_off` (must be 4-aligned and in range).
    ///
    /// # Panics
    /// On a misaligned or out-of-range offset (a caller bug, never input-driven).
    #[inline]
    pub fn atomic_u32(&self, byte_off: usize) -> &AtomicU32 {
        assert!(
            byte_off.is_multiple_of(4),
            "misaligned shm word offset {byte_off}"
        );
        let idx = byte_off / 4;
        match &self.backing {
            Backing::Heap(v) => &v[idx],
            Backing::Mmap { map, offset, words } => {
                assert!(idx < *words, "shm offset {byte_off} past region end");
                let base = map.as_mut_ptr();
                // SAFETY: `from_mmap` checked that `offset + words*4 <= map.len()` and that
                // the mapping and `offset` are 4-aligned, and `idx < words`, so the pointer
                // is in bounds and aligned for `AtomicU32`. The mapping lives as long as
                // `map`, which `self` keeps alive for the returned borrow. The memory is
                // shared with other processes, which is exactly why it is only ever
                // accessed through atomics (`AtomicU32` has the same layout as `u32`).
                #[allow(clippy::cast_ptr_alignment)] // alignment checked in `from_mmap`
                unsafe {
                    &*base.add(offset + idx * 4).cast::<AtomicU32>()
                }
            }
        }
    }

    /// Loads the native-order `u32` at `byte_off`.
    #[inline]
    pub fn load_u32(&self, byte_off: usize, order: Ordering) -> u32 {
        self.atomic_u32(byte_off).load(order)
    }

    /// Stores a native-order `u32` at `byte_off`.
    #[inline]
    pub fn store_u32(&self, byte_off: usize, v: u32, order: Ordering) {
        self.atomic_u32(byte_off).store(v, order);
    }

    #[inline]
    fn u16_shift(byte_off: usize) -> u32 {
        let high_half = byte_off % 4 == 2;
        if cfg!(target_endian = "little") == high_half {
            16
        } else {
            0
        }
    }

    /// Loads the native-order `u16` at `byte_off` (2-aligned).
    #[inline]
    pub fn load_u16(&self, byte_off: usize, order: Ordering) -> u16 {
        assert!(
            byte_off.is_multiple_of(2),
            "misaligned shm u16 offset {byte_off}"
        );
        let w = self.atomic_u32(byte_off & !3).load(order);
        (w >> Self::u16_shift(byte_off)) as u16
    }

    /// Stores a native-order `u16` at `byte_off` (2-aligned), leaving the other half of
    /// the word as it is.
    #[inline]
    pub fn store_u16(&self, byte_off: usize, v: u16, order: Ordering) {
        assert!(
            byte_off.is_multiple_of(2),
            "misaligned shm u16 offset {byte_off}"
        );
        let shift = Self::u16_shift(byte_off);
        let mask = 0xffffu32 << shift;
        let word = self.atomic_u32(byte_off & !3);
        let load_order = match order {
            Ordering::Release | Ordering::Relaxed => Ordering::Relaxed,
            _ => Ordering::Acquire,
        };
        let mut cur = word.load(load_order);
        loop {
            let new = (cur & !mask) | (u32::from(v) << shift);
            match word.compare_exchange_weak(cur, new, order, load_order) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Copies `dst.len()` bytes (a multiple of 4) from `byte_off` with relaxed loads.
    pub fn read_bytes(&self, byte_off: usize, dst: &mut [u8]) {
        assert!(
            dst.len().is_multiple_of(4),
            "shm byte copies are whole words"
        );
        for (i, chunk) in dst.chunks_exact_mut(4).enumerate() {
            let w = self.load_u32(byte_off + i * 4, Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
    }

    /// Copies `src` (a multiple of 4 bytes) to `byte_off` with relaxed stores.
    pub fn write_bytes(&self, byte_off: usize, src: &[u8]) {
        assert!(
            src.len().is_multiple_of(4),
            "shm byte copies are whole words"
        );
        for (i, chunk) in src.chunks_exact(4).enumerate() {
            let w = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            self.store_u32(byte_off + i * 4, w, Ordering::Relaxed);
        }
    }

    /// Zeroes `len` bytes (a multiple of 4) from `byte_off`.
    pub fn zero(&self, byte_off: usize, len: usize) {
        assert!(len.is_multiple_of(4), "shm byte copies are whole words");
        for i in 0..len / 4 {
            self.store_u32(byte_off + i * 4, 0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u16_halves_are_independent() {
        let r = ShmRegion::heap(64);
        r.store_u16(16, 0x1234, Ordering::Release);
        r.store_u16(18, 0xabcd, Ordering::Release);
        assert_eq!(r.load_u16(16, Ordering::Acquire), 0x1234);
        assert_eq!(r.load_u16(18, Ordering::Acquire), 0xabcd);
        let mut b = [0u8; 4];
        r.read_bytes(16, &mut b);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), 0x1234);
        assert_eq!(u16::from_ne_bytes([b[2], b[3]]), 0xabcd);
    }

    #[test]
    fn bytes_round_trip_and_sharing() {
        let r = ShmRegion::heap(32);
        let r2 = r.clone();
        assert!(r.same_memory(&r2));
        r.write_bytes(4, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut b = [0u8; 8];
        r2.read_bytes(4, &mut b);
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);
        r.zero(4, 8);
        r2.read_bytes(4, &mut b);
        assert_eq!(b, [0; 8]);
        assert!(!r.same_memory(&ShmRegion::heap(32)));
    }

    #[test]
    fn lock_arg_rules() {
        assert!(check_shm_lock_args(0, 1, SHM_LOCK | SHM_EXCLUSIVE).is_ok());
        assert!(check_shm_lock_args(4, 4, SHM_LOCK | SHM_EXCLUSIVE).is_ok());
        assert!(check_shm_lock_args(4, 4, SHM_LOCK | SHM_SHARED).is_err());
        assert!(check_shm_lock_args(7, 2, SHM_LOCK | SHM_EXCLUSIVE).is_err());
        assert!(check_shm_lock_args(0, 1, SHM_LOCK).is_err());
        assert_eq!(wal_read_lock(4), 7);
        assert_eq!(SHM_DMS_BYTE, 128);
    }
}
