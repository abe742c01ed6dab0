//! The kill -9 workload and its model: a deterministic sequence of transactions over
//! self-describing pages, so that any state found after a crash can be checked page by
//! page against "the state after transaction `j`".
//!
//! # Transactions
//!
//! Transaction `i` (1, 2, …) of a [`Workload`] with seed `s` writes page 1 and
//! `1 + below(max_pages_per_txn)` distinct pages drawn from `2..=min(max_page, 4 + i)`
//! (so the database grows over the first transactions), all drawn from
//! `Rng::new(s ^ i * TXN_MIX)`. Its commit's database size is `db_size(i)`, the largest
//! page written by transactions `1..=i`. The **state after `j`** maps every page
//! `p <= db_size(j)` to the last transaction `<= j` that wrote it (0: never written, the
//! page reads as zeros). Page 1 is written by every transaction, so the transaction id
//! stamped on page 1 names the state.
//!
//! # Page image of page `p` written by transaction `i`
//!
//! ```text
//! page 1 only: [0, 100)   SQLite database header: magic, page size (BE u16, 65536 as 1),
//!                         write/read version 2/2 (WAL), reserved 0, payload fractions
//!                         64/32/32, change counter = version-valid-for = i, database
//!                         size = db_size(i), schema format 4, text encoding 1 (UTF-8)
//!              [100, 108) an empty leaf-table b-tree page header (type 13, no cells,
//!                         content area starting at the page end): an empty schema, so
//!                         real SQLite can open the database and checkpoint it
//! S = STAMP_OFFSET_PAGE1 (108) on page 1, 0 elsewhere (on page 1 the stamp, filler and
//! trailer lie in the b-tree page's unallocated space, which SQLite never reads):
//! [S, S+4)                STAMP_MAGIC "K9PG"
//! [S+4, S+12)             transaction id i, little-endian u64
//! [S+12, S+16)            page number p, little-endian u32
//! [S+16, len-8)           filler: Rng::new(s ^ i * TXN_MIX ^ p * PAGE_MIX) bytes
//! [len-8, len)            xxh3-64 of bytes [0, len-8), little-endian (torn-page check)
//! ```
//!
//! A page that is all zeros is "never written"; anything else must carry a valid stamp
//! and trailer ([`parse_page`]).

use std::collections::BTreeSet;

use fsqlite_testkit::rng::Rng;
use xxhash_rust::xxh3::xxh3_64;

/// Multiplier that spreads transaction ids over seeds.
pub const TXN_MIX: u64 = 0xd1b5_4a32_d192_ed03;
/// Multiplier that spreads page numbers over seeds.
pub const PAGE_MIX: u64 = 0x8cb9_2ba7_2f3d_8dd7;
/// Marker at the start of every stamp.
pub const STAMP_MAGIC: &[u8; 4] = b"K9PG";
/// The SQLite database header at the start of page 1.
pub const DB_HEADER_LEN: usize = 100;
/// Length of a leaf b-tree page header.
pub const LEAF_HEADER_LEN: usize = 8;
/// Where page 1's stamp starts (right after the database header and the empty schema
/// page's b-tree header).
pub const STAMP_OFFSET_PAGE1: usize = DB_HEADER_LEN + LEAF_HEADER_LEN;
/// Offset of the transaction id within a stamp.
pub const STAMP_TXN_OFFSET: usize = STAMP_MAGIC.len();
/// Offset of the page number within a stamp.
pub const STAMP_PAGE_OFFSET: usize = STAMP_TXN_OFFSET + 8;
/// Length of a stamp.
pub const STAMP_LEN: usize = STAMP_PAGE_OFFSET + 4;
/// Length of the trailing hash.
pub const TRAILER_LEN: usize = 8;
/// SQLite's header magic.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Offsets inside the SQLite header (FORMAT.md §10).
const HDR_PAGE_SIZE: usize = 16;
const HDR_WRITE_VERSION: usize = 18;
const HDR_READ_VERSION: usize = 19;
const HDR_MAX_PAYLOAD_FRAC: usize = 21;
const HDR_MIN_PAYLOAD_FRAC: usize = 22;
const HDR_LEAF_PAYLOAD_FRAC: usize = 23;
const HDR_CHANGE_COUNTER: usize = 24;
const HDR_DB_SIZE: usize = 28;
const HDR_SCHEMA_FORMAT: usize = 44;
const HDR_TEXT_ENCODING: usize = 56;
const HDR_VERSION_VALID_FOR: usize = 92;
/// B-tree page type of a leaf table page.
const LEAF_TABLE: u8 = 13;
/// Offset of the cell-content-area start in a b-tree page header.
const BTREE_CONTENT_START: usize = 5;
/// Pages the database starts with before it grows (see the module doc).
const GROWTH_BASE: u64 = 4;

/// Where the stamp of page `p` starts.
pub fn stamp_offset(p: u32) -> usize {
    if p == 1 { STAMP_OFFSET_PAGE1 } else { 0 }
}

/// One deterministic workload (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Seed of every transaction's content.
    pub seed: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// Largest page number written.
    pub max_page: u32,
    /// Pages besides page 1 per transaction: `1..=max_pages_per_txn`.
    pub max_pages_per_txn: u32,
}

impl Workload {
    /// `seed:page_size:max_page:max_pages_per_txn` (seed in hex).
    pub fn encode(&self) -> String {
        format!(
            "{:#x}:{}:{}:{}",
            self.seed, self.page_size, self.max_page, self.max_pages_per_txn
        )
    }

    /// Parses [`Workload::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let mut it = s.split(':');
        let seed = fsqlite_testkit::rng::parse_seed(it.next()?)?;
        let page_size = it.next()?.parse().ok()?;
        let max_page = it.next()?.parse().ok()?;
        let max_pages_per_txn = it.next()?.parse().ok()?;
        if it.next().is_some() || max_page < 2 || max_pages_per_txn == 0 {
            return None;
        }
        Some(Self {
            seed,
            page_size,
            max_page,
            max_pages_per_txn,
        })
    }
}

/// What a page holds, from its own bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRead {
    /// All zeros: never written.
    Zero,
    /// A valid stamp: written by this transaction as this page.
    Stamped {
        /// The transaction id.
        txn: u64,
        /// The page number it claims.
        page: u32,
    },
}

/// Decodes a page image: zeros, or a valid stamp with a matching trailer; anything else
/// (torn, foreign, garbage) is an error describing it.
pub fn parse_page(p: u32, buf: &[u8]) -> Result<PageRead, String> {
    if buf.iter().all(|&b| b == 0) {
        return Ok(PageRead::Zero);
    }
    let s = stamp_offset(p);
    let len = buf.len();
    if len < s + STAMP_LEN + TRAILER_LEN {
        return Err(format!("page {p}: buffer of {len} bytes is too short"));
    }
    let stored = u64::from_le_bytes(buf[len - TRAILER_LEN..].try_into().expect("8 bytes"));
    let computed = xxh3_64(&buf[..len - TRAILER_LEN]);
    if &buf[s..s + STAMP_MAGIC.len()] != STAMP_MAGIC {
        return Err(format!(
            "page {p}: no stamp (bytes {:02x?} at offset {s})",
            &buf[s..s + STAMP_LEN]
        ));
    }
    let txn = u64::from_le_bytes(
        buf[s + STAMP_TXN_OFFSET..s + STAMP_PAGE_OFFSET]
            .try_into()
            .expect("8 bytes"),
    );
    let page = u32::from_le_bytes(
        buf[s + STAMP_PAGE_OFFSET..s + STAMP_LEN]
            .try_into()
            .expect("4 bytes"),
    );
    if stored != computed {
        return Err(format!(
            "page {p}: torn image (stamp says txn {txn} page {page}; trailer {stored:#x} != xxh3 {computed:#x})"
        ));
    }
    Ok(PageRead::Stamped { txn, page })
}

/// Per-transaction facts, cached.
#[derive(Clone, Debug)]
struct TxnInfo {
    pages: Vec<u32>,
    db_size: u32,
}

/// The workload's model: pages, sizes, images and hashes of every transaction, and the
/// state after any prefix.
#[derive(Clone, Debug)]
pub struct Model {
    w: Workload,
    txns: Vec<TxnInfo>,
    /// `history[p]`: the transactions that wrote page `p`, ascending.
    history: Vec<Vec<u64>>,
}

impl Model {
    /// An empty model of `w`.
    pub fn new(w: Workload) -> Self {
        Self {
            w,
            txns: Vec::new(),
            history: vec![Vec::new(); w.max_page as usize + 1],
        }
    }

    /// The workload.
    pub fn workload(&self) -> Workload {
        self.w
    }

    fn txn_rng(&self, i: u64) -> Rng {
        Rng::new(self.w.seed ^ i.wrapping_mul(TXN_MIX))
    }

    /// Computes transactions up to `j`.
    fn ensure(&mut self, j: u64) {
        while (self.txns.len() as u64) < j {
            let i = self.txns.len() as u64 + 1;
            let mut rng = self.txn_rng(i);
            let hi = u64::from(self.w.max_page).min(GROWTH_BASE + i);
            let extra = 1 + rng.below(u64::from(self.w.max_pages_per_txn));
            let mut set = BTreeSet::from([1u32]);
            for _ in 0..extra {
                set.insert(rng.range(2, hi + 1) as u32);
            }
            let prev = self.txns.last().map_or(0, |t| t.db_size);
            let db_size = prev.max(*set.last().expect("page 1 is in the set"));
            for &p in &set {
                self.history[p as usize].push(i);
            }
            self.txns.push(TxnInfo {
                pages: set.into_iter().collect(),
                db_size,
            });
        }
    }

    /// The pages transaction `i` writes, ascending (page 1 first).
    pub fn pages(&mut self, i: u64) -> Vec<u32> {
        self.ensure(i);
        self.txns[i as usize - 1].pages.clone()
    }

    /// The database size in pages after transaction `j` (0 for `j == 0`).
    pub fn db_size(&mut self, j: u64) -> u32 {
        if j == 0 {
            return 0;
        }
        self.ensure(j);
        self.txns[j as usize - 1].db_size
    }

    /// The transaction whose image page `p` holds after `j` (0: never written).
    pub fn page_txn(&mut self, p: u32, j: u64) -> u64 {
        self.ensure(j);
        let Some(h) = self.history.get(p as usize) else {
            return 0;
        };
        match h.partition_point(|&t| t <= j) {
            0 => 0,
            n => h[n - 1],
        }
    }

    /// The image of page `p` as transaction `i` writes it.
    pub fn image(&mut self, i: u64, p: u32) -> Vec<u8> {
        let db_size = self.db_size(i);
        let ps = self.w.page_size as usize;
        let mut buf = vec![0u8; ps];
        if p == 1 {
            buf[..SQLITE_MAGIC.len()].copy_from_slice(SQLITE_MAGIC);
            let enc = if self.w.page_size == 65536 {
                1
            } else {
                self.w.page_size as u16
            };
            buf[HDR_PAGE_SIZE..HDR_PAGE_SIZE + 2].copy_from_slice(&enc.to_be_bytes());
            buf[HDR_WRITE_VERSION] = 2;
            buf[HDR_READ_VERSION] = 2;
            buf[HDR_MAX_PAYLOAD_FRAC] = 64;
            buf[HDR_MIN_PAYLOAD_FRAC] = 32;
            buf[HDR_LEAF_PAYLOAD_FRAC] = 32;
            buf[HDR_CHANGE_COUNTER..HDR_CHANGE_COUNTER + 4]
                .copy_from_slice(&(i as u32).to_be_bytes());
            buf[HDR_DB_SIZE..HDR_DB_SIZE + 4].copy_from_slice(&db_size.to_be_bytes());
            buf[HDR_VERSION_VALID_FOR..HDR_VERSION_VALID_FOR + 4]
                .copy_from_slice(&(i as u32).to_be_bytes());
            buf[HDR_SCHEMA_FORMAT + 3] = 4;
            buf[HDR_TEXT_ENCODING + 3] = 1;
            let b = DB_HEADER_LEN;
            buf[b] = LEAF_TABLE;
            // 65536 is stored as 0 in the 2-byte content-start field.
            let start = (self.w.page_size % 65536) as u16;
            buf[b + BTREE_CONTENT_START..b + BTREE_CONTENT_START + 2]
                .copy_from_slice(&start.to_be_bytes());
        }
        let s = stamp_offset(p);
        buf[s..s + STAMP_MAGIC.len()].copy_from_slice(STAMP_MAGIC);
        buf[s + STAMP_TXN_OFFSET..s + STAMP_PAGE_OFFSET].copy_from_slice(&i.to_le_bytes());
        buf[s + STAMP_PAGE_OFFSET..s + STAMP_LEN].copy_from_slice(&p.to_le_bytes());
        let mut rng =
            Rng::new(self.w.seed ^ i.wrapping_mul(TXN_MIX) ^ u64::from(p).wrapping_mul(PAGE_MIX));
        rng.fill(&mut buf[s + STAMP_LEN..ps - TRAILER_LEN]);
        let h = xxh3_64(&buf[..ps - TRAILER_LEN]);
        buf[ps - TRAILER_LEN..].copy_from_slice(&h.to_le_bytes());
        buf
    }

    /// The expected image of page `p` after `j` (zeros when never written).
    pub fn expected_page(&mut self, p: u32, j: u64) -> Vec<u8> {
        match self.page_txn(p, j) {
            0 => vec![0u8; self.w.page_size as usize],
            t => self.image(t, p),
        }
    }

    /// The hash a writer acks for transaction `i`: its size and every page image.
    pub fn txn_hash(&mut self, i: u64) -> u64 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&i.to_le_bytes());
        bytes.extend_from_slice(&self.db_size(i).to_le_bytes());
        for p in self.pages(i) {
            bytes.extend_from_slice(&p.to_le_bytes());
            bytes.extend_from_slice(&xxh3_64(&self.image(i, p)).to_le_bytes());
        }
        xxh3_64(&bytes)
    }

    /// The hash of the state after `j` (size and page → transaction map); readers and
    /// verifiers ack it.
    pub fn state_hash(&mut self, j: u64) -> u64 {
        let n = self.db_size(j);
        let mut bytes = Vec::with_capacity(8 + 12 * n as usize);
        bytes.extend_from_slice(&j.to_le_bytes());
        bytes.extend_from_slice(&n.to_le_bytes());
        for p in 1..=n {
            bytes.extend_from_slice(&self.page_txn(p, j).to_le_bytes());
        }
        xxh3_64(&bytes)
    }

    /// Checks that `read(p)` (pages `1..=db_size` of some snapshot) is exactly the state
    /// after the transaction stamped on page 1; returns that transaction id. `db_size` is
    /// the snapshot's size. An error names the first page that differs and why.
    pub fn check_snapshot(
        &mut self,
        db_size: u32,
        mut read: impl FnMut(u32, &mut [u8]) -> Result<(), String>,
    ) -> Result<u64, String> {
        let mut buf = vec![0u8; self.w.page_size as usize];
        read(1, &mut buf)?;
        let j = match parse_page(1, &buf)? {
            PageRead::Zero => 0,
            PageRead::Stamped { txn, page: 1 } => txn,
            PageRead::Stamped { txn, page } => {
                return Err(format!("page 1 holds the image of page {page} (txn {txn})"));
            }
        };
        let want_size = self.db_size(j);
        if db_size != want_size {
            return Err(format!(
                "snapshot of txn {j} has {db_size} pages, the model says {want_size}"
            ));
        }
        for p in 1..=db_size {
            if p > 1 {
                read(p, &mut buf)?;
            }
            let want = self.expected_page(p, j);
            if buf != want {
                let found = parse_page(p, &buf);
                return Err(format!(
                    "state of txn {j} is not a prefix: page {p} should hold txn {}'s image, found {found:?}",
                    self.page_txn(p, j)
                ));
            }
        }
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w() -> Workload {
        Workload {
            seed: 7,
            page_size: 1024,
            max_page: 20,
            max_pages_per_txn: 4,
        }
    }

    #[test]
    fn workload_round_trips() {
        assert_eq!(Workload::decode(&w().encode()), Some(w()));
        assert_eq!(Workload::decode("1:2"), None);
    }

    #[test]
    fn images_parse_and_tears_are_caught() {
        let mut m = Model::new(w());
        for i in 1..=30 {
            for p in m.pages(i) {
                let mut img = m.image(i, p);
                assert_eq!(
                    parse_page(p, &img),
                    Ok(PageRead::Stamped { txn: i, page: p })
                );
                img[300] ^= 1;
                assert!(parse_page(p, &img).is_err());
            }
            assert!(m.db_size(i) >= m.db_size(i - 1));
        }
        assert_eq!(parse_page(3, &[0u8; 1024]), Ok(PageRead::Zero));
    }

    #[test]
    fn state_and_snapshot_check() {
        let mut m = Model::new(w());
        let j = 12;
        let n = m.db_size(j);
        let pages: Vec<Vec<u8>> = (1..=n).map(|p| m.expected_page(p, j)).collect();
        let got = m
            .check_snapshot(n, |p, b| {
                b.copy_from_slice(&pages[p as usize - 1]);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, j);
        // A page from an older txn is not a prefix.
        let stale = m.expected_page(1, 3);
        let err = m
            .check_snapshot(n, |p, b| {
                if p == 1 {
                    b.copy_from_slice(&pages[0]);
                } else if p == 2 {
                    b.copy_from_slice(&stale);
                } else {
                    b.copy_from_slice(&pages[p as usize - 1]);
                }
                Ok(())
            })
            .unwrap_err();
        assert!(err.contains("not a prefix"), "{err}");
        assert_ne!(m.state_hash(j), m.state_hash(j - 1));
    }
}
