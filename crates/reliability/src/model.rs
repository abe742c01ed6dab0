//! The reference model every harness checks a recovered database against, and the
//! deterministic page images the workloads write.
//!
//! # The model
//!
//! A [`Model`] is the sequence of committed database states of one workload run:
//!
//! ```text
//! states[0]   the empty database (db_size 0)
//! states[i]   states[i-1] with transaction i's pages applied, db_size = its commit size
//! acked       the last state whose commit() returned Ok (the caller saw it)
//! attempted   the last state whose commit() was called (acked <= attempted)
//! ```
//!
//! A state is held as the digests ([`page_digest`], XXH3-64) of pages `1..=db_size`, so a
//! state costs 8 bytes per page, never a page image.
//!
//! # The oracle
//!
//! [`Model::judge`] takes what a reader saw after recovery ([`Observed`]) and finds the
//! committed state it equals, byte for byte (through the digests). With
//! [`Bound::Durable`] (the fault model the design claims to survive, `SyncMode::Full`):
//!
//! ```text
//! observed == states[i]  for some  acked <= i <= attempted
//! ```
//!
//! which says three things at once: the state is a committed prefix (never a partial
//! transaction, never garbage), no acknowledged commit is lost (`i >= acked`), and
//! nothing was invented (`i <= attempted`). [`Bound::AnyPrefix`] drops `i >= acked`; it is
//! used beyond the fault model, where only "detects, never lies" is claimed.
//!
//! # Page images
//!
//! [`page_image`] derives a page from `(seed, txn, page)`: page 1 starts with a SQLite
//! database header in WAL mode (so `Wal::open` accepts the file after a checkpoint); every
//! other page starts with an 8-byte tag (page number, transaction number, big-endian) and
//! the rest of every page is SplitMix64 output. Two transactions never write the same
//! image, so states are distinguishable.

use std::sync::Arc;

use fsqlite_testkit::rng::Rng;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// The SQLite database header magic.
pub const DB_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Offset of the big-endian u16 page size in the database header (1 means 65536).
pub const DB_PAGE_SIZE_OFFSET: usize = DB_MAGIC.len();
/// Offset of the file-format write version (2 = WAL).
pub const DB_WRITE_VERSION_OFFSET: usize = DB_PAGE_SIZE_OFFSET + 2;
/// Offset of the file-format read version (2 = WAL).
pub const DB_READ_VERSION_OFFSET: usize = DB_WRITE_VERSION_OFFSET + 1;
/// Offset of the maximum embedded payload fraction (SQLite requires 64).
pub const DB_MAX_PAYLOAD_OFFSET: usize = DB_READ_VERSION_OFFSET + 2;
/// Offset of the big-endian file change counter.
pub const DB_CHANGE_COUNTER_OFFSET: usize = 24;
/// Offset of the big-endian in-header database size.
pub const DB_SIZE_OFFSET: usize = DB_CHANGE_COUNTER_OFFSET + 4;
/// Length of the database header.
pub const DB_HEADER_LEN: usize = 100;
/// Length of the tag at the start of every page but page 1.
pub const PAGE_TAG_LEN: usize = 8;

/// Digest of one page image.
pub fn page_digest(page: &[u8]) -> u64 {
    xxh3_64(page)
}

/// Mixes the parts of a page identity into one generator seed.
fn page_seed(seed: u64, txn: u64, page: u32) -> u64 {
    let mut r = Rng::new(seed ^ txn.rotate_left(32) ^ u64::from(page).wrapping_mul(0x9e37));
    r.next_u64()
}

/// The image transaction `txn` writes to `page` (see the module doc); `db_size` goes into
/// page 1's header.
pub fn page_image(seed: u64, txn: u64, page: u32, page_size: u32, db_size: u32) -> Vec<u8> {
    let mut buf = vec![0u8; page_size as usize];
    let mut rng = Rng::new(page_seed(seed, txn, page));
    rng.fill(&mut buf);
    if page == 1 {
        let enc: u16 = if page_size == 65_536 {
            1
        } else {
            page_size as u16
        };
        buf[..DB_HEADER_LEN].fill(0);
        buf[..DB_MAGIC.len()].copy_from_slice(DB_MAGIC);
        buf[DB_PAGE_SIZE_OFFSET..DB_PAGE_SIZE_OFFSET + 2].copy_from_slice(&enc.to_be_bytes());
        buf[DB_WRITE_VERSION_OFFSET] = 2;
        buf[DB_READ_VERSION_OFFSET] = 2;
        buf[DB_MAX_PAYLOAD_OFFSET] = 64;
        buf[DB_MAX_PAYLOAD_OFFSET + 1] = 32;
        buf[DB_MAX_PAYLOAD_OFFSET + 2] = 32;
        buf[DB_CHANGE_COUNTER_OFFSET..DB_CHANGE_COUNTER_OFFSET + 4]
            .copy_from_slice(&(txn as u32).to_be_bytes());
        buf[DB_SIZE_OFFSET..DB_SIZE_OFFSET + 4].copy_from_slice(&db_size.to_be_bytes());
    } else {
        buf[..4].copy_from_slice(&page.to_be_bytes());
        buf[4..PAGE_TAG_LEN].copy_from_slice(&(txn as u32).to_be_bytes());
    }
    buf
}

/// Digest of a whole database state: its size and its page digests in order.
pub fn state_digest(db_size: u32, pages: &[u64]) -> u64 {
    let mut h = Xxh3::new();
    h.update(&db_size.to_le_bytes());
    for d in pages {
        h.update(&d.to_le_bytes());
    }
    h.digest()
}

/// One committed database state.
#[derive(Clone, Debug)]
pub struct CommittedState {
    /// The transaction that produced it (0 for the empty database).
    pub txn: u64,
    /// Database size in pages.
    pub db_size: u32,
    /// Digest of pages `1..=db_size` (index `p - 1`).
    pub pages: Arc<Vec<u64>>,
    /// [`state_digest`] of the two fields above.
    pub digest: u64,
}

/// What a reader saw: the database size and the digest of every page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Database size in pages.
    pub db_size: u32,
    /// Digest of pages `1..=db_size` (index `p - 1`).
    pub pages: Vec<u64>,
}

impl Observed {
    /// [`state_digest`] of the observation.
    pub fn digest(&self) -> u64 {
        state_digest(self.db_size, &self.pages)
    }
}

/// Which states [`Model::judge`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// `acked <= i <= attempted`: inside the fault model (`SyncMode::Full`).
    Durable,
    /// `i <= attempted`: beyond the fault model ("detects, never lies").
    AnyPrefix,
}

/// Why an observation was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The observation equals no committed state: a partial transaction, a torn page,
    /// garbage, or a page from the wrong place.
    NotACommittedState {
        /// What differs from the nearest acceptable state.
        detail: String,
    },
    /// It equals committed state `found`, older than the last acknowledged one.
    LostAcknowledged {
        /// The state found.
        found: usize,
        /// The last acknowledged state.
        acked: usize,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotACommittedState { detail } => {
                write!(
                    f,
                    "the recovered database is not a committed state: {detail}"
                )
            }
            Self::LostAcknowledged { found, acked } => write!(
                f,
                "acknowledged commit lost: recovered state {found}, but state {acked} was acknowledged"
            ),
        }
    }
}

/// The committed-state sequence of one run (see the module doc).
#[derive(Clone, Debug)]
pub struct Model {
    page_size: u32,
    states: Vec<CommittedState>,
    acked: usize,
    attempted: usize,
}

impl Model {
    /// A model whose only state is the empty database.
    pub fn new(page_size: u32) -> Self {
        Self {
            page_size,
            states: vec![CommittedState {
                txn: 0,
                db_size: 0,
                pages: Arc::new(Vec::new()),
                digest: state_digest(0, &[]),
            }],
            acked: 0,
            attempted: 0,
        }
    }

    /// The page size.
    pub fn page_size(&self) -> u32 {
        self.page_size
    }

    /// Every state so far.
    pub fn states(&self) -> &[CommittedState] {
        &self.states
    }

    /// Index of the last acknowledged state.
    pub fn acked(&self) -> usize {
        self.acked
    }

    /// Index of the last attempted state.
    pub fn attempted(&self) -> usize {
        self.attempted
    }

    /// The last acknowledged state.
    pub fn acked_state(&self) -> &CommittedState {
        &self.states[self.acked]
    }

    /// Records that transaction `txn` is about to commit `writes` (page, digest) with
    /// database size `db_size`; pages above `db_size` are dropped, as the WAL drops them.
    /// Returns the new state's index. Only the next state may be attempted: the state
    /// builds on the last attempted one.
    pub fn attempt(&mut self, txn: u64, writes: &[(u32, u64)], db_size: u32) -> usize {
        let prev = &self.states[self.attempted];
        let zero = page_digest(&vec![0u8; self.page_size as usize]);
        let mut pages: Vec<u64> = prev.pages.as_ref().clone();
        pages.resize(db_size as usize, zero);
        for &(p, d) in writes {
            if p >= 1 && p <= db_size {
                pages[p as usize - 1] = d;
            }
        }
        let digest = state_digest(db_size, &pages);
        self.states.truncate(self.attempted + 1);
        self.states.push(CommittedState {
            txn,
            db_size,
            pages: Arc::new(pages),
            digest,
        });
        self.attempted = self.states.len() - 1;
        self.attempted
    }

    /// Records that state `index` (the last attempted one) was acknowledged.
    pub fn ack(&mut self, index: usize) {
        debug_assert_eq!(index, self.attempted);
        self.acked = index;
    }

    /// A model whose last state, acknowledged and attempted, is state `index` of this one
    /// (what a recovered database that matched state `index` continues from).
    #[must_use]
    pub fn continue_from(&self, index: usize) -> Model {
        let index = index.min(self.states.len() - 1);
        Model {
            page_size: self.page_size,
            states: self.states[..=index].to_vec(),
            acked: index,
            attempted: index,
        }
    }

    /// The largest database size of any state up to the last attempted one.
    pub fn max_db_size(&self) -> u32 {
        self.states[..=self.attempted]
            .iter()
            .map(|s| s.db_size)
            .max()
            .unwrap_or(0)
    }

    /// The oracle (see the module doc): the index of the state `obs` equals, or why it is
    /// not acceptable under `bound`.
    pub fn judge(&self, obs: &Observed, bound: Bound) -> Result<usize, Violation> {
        let d = obs.digest();
        let found = (0..=self.attempted).rev().find(|&i| {
            let s = &self.states[i];
            s.digest == d && s.db_size == obs.db_size && *s.pages == obs.pages
        });
        match found {
            Some(i) if bound == Bound::Durable && i < self.acked => {
                Err(Violation::LostAcknowledged {
                    found: i,
                    acked: self.acked,
                })
            }
            Some(i) => Ok(i),
            None => Err(Violation::NotACommittedState {
                detail: self.describe_mismatch(obs, bound),
            }),
        }
    }

    /// Which pages differ between `obs` and the nearest acceptable state.
    fn describe_mismatch(&self, obs: &Observed, bound: Bound) -> String {
        let lo = if bound == Bound::Durable {
            self.acked
        } else {
            0
        };
        let mut best: Option<(usize, Vec<u32>)> = None;
        for i in lo..=self.attempted {
            let s = &self.states[i];
            let n = s.db_size.max(obs.db_size);
            let diff: Vec<u32> = (1..=n)
                .filter(|&p| s.pages.get(p as usize - 1) != obs.pages.get(p as usize - 1))
                .collect();
            if best.as_ref().is_none_or(|(_, b)| diff.len() < b.len()) {
                best = Some((i, diff));
            }
        }
        match best {
            Some((i, diff)) => {
                let shown: Vec<String> = diff.iter().take(8).map(u32::to_string).collect();
                format!(
                    "observed db_size {} vs state {i} (txn {}, db_size {}): {} page(s) differ [{}{}] (acceptable states {lo}..={})",
                    obs.db_size,
                    self.states[i].txn,
                    self.states[i].db_size,
                    diff.len(),
                    shown.join(", "),
                    if diff.len() > 8 { ", ..." } else { "" },
                    self.attempted
                )
            }
            None => "no acceptable state".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs_of(model: &Model, i: usize) -> Observed {
        let s = &model.states()[i];
        Observed {
            db_size: s.db_size,
            pages: s.pages.as_ref().clone(),
        }
    }

    #[test]
    fn judge_accepts_only_committed_states_in_bounds() {
        let mut m = Model::new(512);
        let a = m.attempt(1, &[(1, 11), (2, 12)], 2);
        m.ack(a);
        let b = m.attempt(2, &[(2, 22), (3, 23)], 3);
        m.ack(b);
        let c = m.attempt(3, &[(1, 31)], 3);
        assert_eq!((m.acked(), m.attempted()), (b, c));
        assert_eq!(m.judge(&obs_of(&m, b), Bound::Durable), Ok(b));
        assert_eq!(m.judge(&obs_of(&m, c), Bound::Durable), Ok(c));
        assert_eq!(
            m.judge(&obs_of(&m, a), Bound::Durable),
            Err(Violation::LostAcknowledged { found: a, acked: b })
        );
        assert_eq!(m.judge(&obs_of(&m, a), Bound::AnyPrefix), Ok(a));
        // A partial transaction: txn 2's page 3 without its page 2.
        let mut partial = obs_of(&m, a);
        partial.db_size = 3;
        partial.pages.push(23);
        let e = m.judge(&partial, Bound::AnyPrefix).unwrap_err();
        assert!(matches!(e, Violation::NotACommittedState { .. }), "{e}");
    }

    #[test]
    fn page_images_are_distinct_and_page_one_is_a_wal_db_header() {
        let p1 = page_image(7, 1, 1, 4096, 3);
        assert_eq!(&p1[..16], DB_MAGIC);
        assert_eq!(u16::from_be_bytes([p1[16], p1[17]]), 4096);
        assert_eq!((p1[18], p1[19]), (2, 2));
        assert_eq!(page_image(7, 1, 1, 65_536, 1)[16..18], [0, 1]);
        assert_ne!(page_image(7, 1, 2, 512, 2), page_image(7, 2, 2, 512, 2));
        assert_ne!(page_image(7, 1, 2, 512, 2), page_image(7, 1, 3, 512, 2));
        assert_eq!(page_image(7, 1, 2, 512, 2), page_image(7, 1, 2, 512, 2));
    }
}
