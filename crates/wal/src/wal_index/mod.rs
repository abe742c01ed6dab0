//! The WAL-index (`<db>-shm`): SQLite's shared-memory index of the WAL, byte for byte.
//!
//! The WAL-index is transient: it can always be rebuilt from the WAL file (recovery),
//! which is why it uses the host's **native byte order** and is not portable. It is a
//! sequence of 32 KiB regions (`WALINDEX_PGSZ`), region `k` at file offset `k * 32768`.
//! Every region ends with a hash table; region 0 starts with a 136-byte header.
//!
//! # Region 0 header (136 bytes)
//!
//! ```text
//!  off  size  field                 owner / lock                       (copy B = off + 48)
//! +----+----+---------------------+------------------------------------------------------+
//! |  0 |  4 | iVersion            | \                                                    |
//! |  4 |  4 | unused (0)          |  |                                                   |
//! |  8 |  4 | iChange             |  |  WalIndexHdr copy A (48 bytes)                    |
//! | 12 |  1 | isInit              |  |  written only by the WRITE-lock holder or         |
//! | 13 |  1 | bigEndCksum         |  |  recovery, via walIndexWriteHdr                   |
//! | 14 |  2 | szPage (65536 -> 1) |  |  (publish_header); read lock-free by everyone     |
//! | 16 |  4 | mxFrame             |  |  (try_read_header)                                |
//! | 20 |  4 | nPage               |  |                                                   |
//! | 24 |  8 | aFrameCksum[2]      |  |                                                   |
//! | 32 |  8 | aSalt[2] (raw BE)   |  |                                                   |
//! | 40 |  8 | aCksum[2]           | /   checksum of bytes 0..40                          |
//! | 48 | 48 | WalIndexHdr copy B  | same fields, same owner; written FIRST               |
//! +----+----+---------------------+------------------------------------------------------+
//! | 96 |  4 | nBackfill           | raised only by the CKPT-lock holder (or recovery);   |
//! |    |    |                     | reset to 0 by the WRITE-lock holder on restart       |
//! |100 | 20 | aReadMark[0..5]     | [i] changed only under exclusive WAL_READ_LOCK(i);   |
//! |    |    |                     | [0] is always 0; 0xffffffff = unused                 |
//! |120 |  8 | aLock[8]            | the shm LOCK BYTES (WRITE 120, CKPT 121, RECOVER 122,|
//! |    |    |                     | READ0..4 123..127): never read or written as data    |
//! |128 |  4 | nBackfillAttempted  | CKPT-lock holder, set before copying pages           |
//! |132 |  4 | notUsed0            | 0                                                    |
//! |136 |    | end (WALINDEX_HDR_SIZE); aPgno of region 0 starts here                     |
//! +----+----+---------------------+------------------------------------------------------+
//! ```
//!
//! All fields are native-endian `u32`/`u16`/`u8`, **except `aSalt`**, which is a raw
//! copy of WAL header bytes 16..24 (big-endian bytes); see [`WalIndexHdr::wal_salts`].
//! `bigEndCksum` is the WAL magic's low bit. `aCksum` is the WAL checksum of header bytes
//! 0..40 read as native words, seed (0, 0) ([`WalIndexHdr::compute_checksum`]).
//! `mxFrame` is the last valid **commit** frame; `nPage` the database size after it;
//! `aFrameCksum` the running frame checksum after frame `mxFrame`.
//!
//! **Validity rules** for a header read without locks (`walIndexTryHdr`):
//! 1. copy A and copy B are equal in all 48 bytes;
//! 2. `isInit != 0`;
//! 3. `aCksum` matches bytes 0..40.
//!
//! A header failing any rule "needs recovery": the caller takes `WAL_WRITE_LOCK`,
//! retries, and rebuilds the index from the WAL if it is still bad (FORMAT.md §8.1).
//! A valid header whose `iVersion != 3007000` is `CannotOpen`.
//!
//! Invariants: `nBackfill <= nBackfillAttempted <= mxFrame` (inv: BACKFILL_LE_MXFRAME,
//! kept by the checkpointer and restart code, not here); a reader holding
//! `WAL_READ_LOCK(k)`, k > 0, has `aReadMark[k] <= its mxFrame`.
//!
//! # Publish / read ordering
//!
//! ```text
//! writer (publish_header)            reader (load_header_copies + validate)
//!   seal: isInit=1, iVersion, aCksum   A := words 0..12     (Relaxed loads)
//!   words 12..24 := hdr  (copy B)      barrier              (fence SeqCst)
//!   barrier          (fence SeqCst)    B := words 12..24
//!   words 0..12  := hdr  (copy A)      accept iff A == B && isInit && checksum ok
//! ```
//!
//! Why it works: if any word the reader loads from copy A was stored by publish `k`
//! (after the writer's barrier), the two fences synchronize and every load from copy B
//! sees publish `k`'s copy B or a later one. So every word of A comes from a publish
//! `<= k` and every word of B from a publish `>= k`; unless a word returns to an older
//! value (A-B-A across three publishes, which `iChange` never does and the checksum
//! catches), `A == B` forces both to be exactly publish `k`.
//! inv: HDR_NEVER_TORN — an accepted header is exactly one published header. The loom
//! model `tests/loom_index_header.rs` checks this *without* relying on the checksum, and
//! its buggy twins (copy A written first; copy B read first) are caught.
//!
//! [`HeaderMemory`] abstracts the words: [`ShmRegion`](fsqlite_vfs::ShmRegion) implements
//! it with `Relaxed` word accesses and `std::sync::atomic::fence(SeqCst)` as the barrier
//! (SQLite's `volatile` copies + `walShmBarrier`); the loom test implements it over loom
//! atomics with the same orderings. `nBackfill`, `aReadMark[]` and `nBackfillAttempted`
//! are single atomic words read without locks ([`HeaderMemory::n_backfill`] …); their
//! ordering comes from the shm locks and explicit barriers in the read/checkpoint code.
//!
//! # Hash tables (every region)
//!
//! ```text
//! region 0:  [0,136) header | [136,16384) aPgno: u32 x 4062 | [16384,32768) aHash: u16 x 8192
//! region k:                   [0,16384)   aPgno: u32 x 4096 | [16384,32768) aHash: u16 x 8192
//! ```
//!
//! * region of frame F = `(F + 33) / 4096` ([`frame_region`]); `iZero` = 0 for region 0,
//!   `4062 + (k-1) * 4096` for k >= 1 ([`region_i_zero`]): region 0 holds frames
//!   1..=4062, region 1 frames 4063..=8158, …
//! * `aPgno[j]` = page of frame `iZero + j + 1` (0 = none).
//! * `aHash[key]` = 1-based index into the same region's `aPgno`, 0 = empty. A table holds
//!   at most 4096 entries in 8192 slots, so it is never more than half full and every
//!   probe of a sane table ends at an empty slot.
//! * `hash(P) = (P * 383) & 8191` (wrapping 32-bit multiply), linear probing
//!   `key = (key + 1) & 8191`.
//!
//! ```text
//! append(F, P):                         // writer only (walIndexAppend)
//!     idx = F - iZero
//!     if idx == 1: zero aPgno and aHash of the region      // older WAL generation
//!     if aPgno[idx-1] != 0: cleanup(F - 1)                 // a dead writer's leftovers
//!     key = hash(P); guard = idx
//!     while aHash[key] != 0: (guard-- == 0 => WalCorrupt); key = next(key)
//!     aPgno[idx-1] = P; then aHash[key] = idx (Release)    // slot published last
//!
//! cleanup(mx):                          // walCleanupHash, rollback_to(mx)
//!     in region(mx): limit = mx - iZero
//!     clear every aHash slot > limit; zero aPgno[limit..]
//!
//! find(P, min, mx):                     // walFindFrame, newest first
//!     for r = region(mx) down to region(min):
//!         key = hash(P); guard = 8192; found = none
//!         while (s = aHash[key]) != 0:
//!             f = s + iZero(r)
//!             if min <= f <= mx and aPgno[s-1] == P: found = f   // last match wins
//!             (guard-- == 0 => WalCorrupt); key = next(key)
//!         if found: return found                                // stop at first region
//!     return none
//! ```
//!
//! inv: HASH_LOOKUP_NEWEST — `find` returns the newest frame in `[min, mx]` holding P
//! (proptest `tests/wal_index_hash.rs` against a naive model, and against SQLite's own
//! regions in `tests/wal_index_sqlite.rs`).
//! inv: HASH_ROLLBACK_CLEAN — after `cleanup(mx)` (or a dead writer's leftovers cleaned by
//! the next `append`), regions `0..=region(mx)` are byte-identical to a fresh build of
//! frames `1..=mx` (same proptest); regions built by `append` are byte-identical to
//! SQLite's (`tests/wal_index_sqlite.rs`).
//!
//! Entries past a reader's `mxFrame` may be written concurrently; the `f <= mx` test makes
//! them invisible, and the slot's Release store (Acquire load) makes the `aPgno` entry it
//! names visible. Only the WRITE-lock holder or recovery extends the index; readers map
//! regions without extending, and a missing region below `mxFrame` is reported as
//! `WalCorrupt` (recovery rebuilds the index). Recovery builds each region in a private
//! plain buffer (`recovery::RegionBuilder`, SQLite's `walIndexAppend` without atomics) and
//! writes it into the `-shm` with one `write_bytes` (region 0 without its header) before
//! publishing the header; [`HeapRegions`] and [`copy_region_into`] serve tests and tools.

mod hash;
mod header;
mod protocol;
mod regions;

pub use hash::{
    HashSegment, copy_region_into, frame_region, region_apgno_offset, region_capacity,
    region_i_zero, wal_hash,
};
pub use header::{
    CKPT_A_LOCK_LEN, CKPT_A_LOCK_OFFSET, CKPT_A_READ_MARK_OFFSET, CKPT_N_BACKFILL_ATTEMPTED_OFFSET,
    CKPT_N_BACKFILL_OFFSET, CKPT_NOT_USED0_OFFSET, HDR_A_CKSUM_OFFSET, HDR_A_FRAME_CKSUM_OFFSET,
    HDR_A_SALT_OFFSET, HDR_BIG_END_CKSUM_OFFSET, HDR_CKSUM_INPUT_LEN, HDR_I_CHANGE_OFFSET,
    HDR_I_VERSION_OFFSET, HDR_IS_INIT_OFFSET, HDR_MX_FRAME_OFFSET, HDR_N_PAGE_OFFSET,
    HDR_SZ_PAGE_OFFSET, HDR_UNUSED_OFFSET, HDR_WORDS, WAL_CKPT_INFO_SIZE, WAL_INDEX_HDR_SIZE,
    WalCkptInfo, WalIndexHdr, salts_from_wal_header_bytes, salts_from_wal_salts,
};
pub use protocol::{
    COPY_A_WORD, COPY_B_WORD, HeaderDefect, HeaderMemory, HeaderRead, N_BACKFILL_ATTEMPTED_WORD,
    N_BACKFILL_WORD, NOT_USED0_WORD, READ_MARK_WORD, WALINDEX_HDR_WORDS, load_header_copies,
    publish_header, try_read_header, unsupported_version_error, validate_header_copies,
};
pub use regions::{BackfillEntry, HeapRegions, RegionSource, WalIndex};

/// Number of read marks (`WAL_NREADER`).
pub const WAL_READ_MARK_COUNT: usize = 5;
/// `iVersion` of a valid WAL-index header (`WALINDEX_MAX_VERSION`).
pub const WAL_INDEX_VERSION: u32 = 3_007_000;
/// `aReadMark[i]` value of an unused slot.
pub const READMARK_NOT_USED: u32 = 0xffff_ffff;

/// Entries in a region's `aPgno` (and its page span), except region 0.
pub const HASHTABLE_NPAGE: u32 = 4096;
/// Slots in a region's `aHash`: twice the entries, so tables are at most half full.
pub const HASHTABLE_NSLOT: u32 = 2 * HASHTABLE_NPAGE;
/// Hash multiplier.
pub const HASHTABLE_HASH_1: u32 = 383;
/// Byte offset of `aHash` in every region (right after a full `aPgno`): 16384.
pub const HASH_TABLE_OFFSET: usize = 4 * HASHTABLE_NPAGE as usize;
/// Bytes per region (`WALINDEX_PGSZ`): 32768.
pub const WALINDEX_PGSZ: usize = HASH_TABLE_OFFSET + 2 * HASHTABLE_NSLOT as usize;

/// `-shm` offset of header copy A.
pub const SHM_HDR_COPY_A_OFFSET: usize = 0;
/// `-shm` offset of header copy B.
pub const SHM_HDR_COPY_B_OFFSET: usize = SHM_HDR_COPY_A_OFFSET + WAL_INDEX_HDR_SIZE;
/// `-shm` offset of [`WalCkptInfo`] (96).
pub const SHM_CKPT_INFO_OFFSET: usize = SHM_HDR_COPY_B_OFFSET + WAL_INDEX_HDR_SIZE;
/// `-shm` offset of `nBackfill` (96).
pub const SHM_N_BACKFILL_OFFSET: usize = SHM_CKPT_INFO_OFFSET + CKPT_N_BACKFILL_OFFSET;
/// `-shm` offset of `aReadMark[0]` (100).
pub const SHM_READ_MARK_OFFSET: usize = SHM_CKPT_INFO_OFFSET + CKPT_A_READ_MARK_OFFSET;
/// `-shm` offset of the lock bytes (120).
pub const SHM_LOCK_BYTES_OFFSET: usize = SHM_CKPT_INFO_OFFSET + CKPT_A_LOCK_OFFSET;
/// `-shm` offset of `nBackfillAttempted` (128).
pub const SHM_N_BACKFILL_ATTEMPTED_OFFSET: usize =
    SHM_CKPT_INFO_OFFSET + CKPT_N_BACKFILL_ATTEMPTED_OFFSET;
/// `-shm` offset of `notUsed0` (132).
pub const SHM_NOT_USED0_OFFSET: usize = SHM_CKPT_INFO_OFFSET + CKPT_NOT_USED0_OFFSET;
/// Size of the region-0 header (`WALINDEX_HDR_SIZE`): 136.
pub const WALINDEX_HDR_SIZE: usize = SHM_CKPT_INFO_OFFSET + WAL_CKPT_INFO_SIZE;
/// Entries in region 0's `aPgno`: `4096 - 136 / 4` = 4062.
pub const HASHTABLE_NPAGE_ONE: u32 = HASHTABLE_NPAGE - (WALINDEX_HDR_SIZE / 4) as u32;

const _: () =
    assert!(WALINDEX_PGSZ == 32768 && WALINDEX_PGSZ == fsqlite_vfs::SHM_REGION_SIZE as usize);
const _: () = assert!(WALINDEX_HDR_SIZE == 136 && HASHTABLE_NPAGE_ONE == 4062);
const _: () = assert!(SHM_LOCK_BYTES_OFFSET as u64 == fsqlite_vfs::shm::SHM_LOCK_BASE_BYTE);
const _: () = assert!(HASHTABLE_NSLOT == 8192 && HASH_TABLE_OFFSET == 16384);
const _: () = assert!(SHM_N_BACKFILL_ATTEMPTED_OFFSET == 128 && SHM_READ_MARK_OFFSET == 100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_offsets_match_format_md() {
        assert_eq!(SHM_HDR_COPY_B_OFFSET, 48);
        assert_eq!(SHM_CKPT_INFO_OFFSET, 96);
        assert_eq!(SHM_N_BACKFILL_OFFSET, 96);
        assert_eq!(SHM_READ_MARK_OFFSET, 100);
        assert_eq!(SHM_LOCK_BYTES_OFFSET, 120);
        assert_eq!(SHM_N_BACKFILL_ATTEMPTED_OFFSET, 128);
        assert_eq!(SHM_NOT_USED0_OFFSET, 132);
        assert_eq!(WALINDEX_HDR_SIZE, 136);
        assert_eq!(HASHTABLE_NPAGE_ONE, 4062);
        assert_eq!(WALINDEX_PGSZ, 32768);
        assert_eq!(HASH_TABLE_OFFSET, 16384);
        assert_eq!((COPY_A_WORD, COPY_B_WORD, N_BACKFILL_WORD), (0, 12, 24));
        assert_eq!(
            (READ_MARK_WORD, N_BACKFILL_ATTEMPTED_WORD, NOT_USED0_WORD),
            (25, 32, 33)
        );
        assert_eq!(WALINDEX_HDR_WORDS, 34);
    }
}
