//! Savepoints inside a write transaction (SQLite's `SAVEPOINT`, `ROLLBACK TO`,
//! `RELEASE`), shared by [`crate::WriteTxn`] and `fsqlite_mvcc::ConcurrentTxn`.
//!
//! A transaction keeps its written pages in a private map (page → image). An [`UndoLog`]
//! beside it holds one level per open savepoint: for each page the level wrote, the image
//! the page had in the map before the level first wrote it (`None` when the page was not
//! in the map). Rolling back to a savepoint puts those images back (and removes pages
//! first written inside it); releasing merges a level into its parent, where the parent's
//! own older image wins. Memory is bounded by the pages written: at most one saved image
//! per page per open level, and only for pages written both before and inside that level.
//!
//! ```
//! use std::collections::BTreeMap;
//! use fsqlite_wal::savepoint::UndoLog;
//!
//! let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
//! let mut undo: UndoLog<u32, Vec<u8>> = UndoLog::new();
//! pages.insert(1, vec![1]);
//! let sp = undo.savepoint();
//! undo.record(1, &pages); // before overwriting page 1 inside the savepoint
//! pages.insert(1, vec![2]);
//! undo.record(2, &pages);
//! pages.insert(2, vec![9]);
//! assert_eq!(undo.images(), 1); // page 1's old image; page 2 was new
//! undo.rollback_to(sp, &mut pages).unwrap();
//! assert_eq!(pages, BTreeMap::from([(1, vec![1])]));
//! undo.release(sp).unwrap();
//! assert_eq!(undo.depth(), 0);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use fsqlite_error::{FrankenError, Result};

/// A savepoint: its nesting depth (1 for the outermost). Once released (or closed by
/// releasing or rolling back to an enclosing one) a value names whatever savepoint is
/// opened at that depth next, as a reused name does in SQLite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Savepoint(usize);

impl Savepoint {
    /// The nesting depth (1 for the outermost savepoint).
    pub fn depth(self) -> usize {
        self.0
    }
}

/// The undo images of a transaction's open savepoints (see the module docs).
#[derive(Debug)]
pub struct UndoLog<K, I> {
    levels: Vec<HashMap<K, Option<I>>>,
    images: usize,
}

impl<K, I> Default for UndoLog<K, I> {
    fn default() -> Self {
        Self {
            levels: Vec::new(),
            images: 0,
        }
    }
}

impl<K: Copy + Eq + Hash + Ord, I: Clone> UndoLog<K, I> {
    /// No savepoints open.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open savepoints.
    pub fn depth(&self) -> usize {
        self.levels.len()
    }

    /// Page images held to undo (a caller counts them against its memory limit).
    pub fn images(&self) -> usize {
        self.images
    }

    /// Images a write of `key` would add now (0 or 1): 1 when a savepoint is open, the
    /// page is already in `pages`, and the innermost level has not saved it yet.
    pub fn cost_of_write(&self, key: K, pages: &BTreeMap<K, I>) -> usize {
        usize::from(
            self.levels.last().is_some_and(|l| !l.contains_key(&key)) && pages.contains_key(&key),
        )
    }

    /// Call before writing `key` into `pages`: saves its current image (or its absence)
    /// in the innermost level, the first time that level writes it.
    pub fn record(&mut self, key: K, pages: &BTreeMap<K, I>) {
        if let Some(level) = self.levels.last_mut()
            && !level.contains_key(&key)
        {
            let before = pages.get(&key).cloned();
            self.images += usize::from(before.is_some());
            level.insert(key, before);
        }
    }

    /// Opens a savepoint nested inside any open one.
    pub fn savepoint(&mut self) -> Savepoint {
        self.levels.push(HashMap::new());
        Savepoint(self.levels.len())
    }

    fn check(&self, sp: Savepoint) -> Result<()> {
        if sp.0 == 0 || sp.0 > self.levels.len() {
            return Err(FrankenError::out_of_range(
                format!(
                    "savepoint depth (this transaction has {} open savepoints; a savepoint \
                     is gone once it or an enclosing one is released)",
                    self.levels.len()
                ),
                sp.0,
            ));
        }
        Ok(())
    }

    fn undo_level(&mut self, level: HashMap<K, Option<I>>, pages: &mut BTreeMap<K, I>) {
        for (key, before) in level {
            match before {
                Some(img) => {
                    self.images -= 1;
                    pages.insert(key, img);
                }
                None => {
                    pages.remove(&key);
                }
            }
        }
    }

    /// Undoes in `pages` every write made since `sp` opened (savepoints nested inside it
    /// close); `sp` itself stays open, as SQLite's `ROLLBACK TO` leaves it.
    pub fn rollback_to(&mut self, sp: Savepoint, pages: &mut BTreeMap<K, I>) -> Result<()> {
        self.check(sp)?;
        while self.levels.len() > sp.0 {
            if let Some(level) = self.levels.pop() {
                self.undo_level(level, pages);
            }
        }
        if let Some(level) = self.levels.last_mut().map(std::mem::take) {
            self.undo_level(level, pages);
        }
        Ok(())
    }

    /// Closes `sp` and every savepoint nested in it, keeping their writes (merged into
    /// the enclosing savepoint, if any).
    pub fn release(&mut self, sp: Savepoint) -> Result<()> {
        self.check(sp)?;
        while self.levels.len() >= sp.0 {
            let Some(level) = self.levels.pop() else {
                break;
            };
            for (key, before) in level {
                let dropped = match self.levels.last_mut() {
                    Some(parent) => match parent.entry(key) {
                        std::collections::hash_map::Entry::Vacant(e) => {
                            e.insert(before);
                            false
                        }
                        std::collections::hash_map::Entry::Occupied(_) => before.is_some(),
                    },
                    None => before.is_some(),
                };
                self.images -= usize::from(dropped);
            }
        }
        Ok(())
    }

    /// Forgets every savepoint (the transaction ended).
    pub fn clear(&mut self) {
        self.levels.clear();
        self.images = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Write(u8, u8),
        Open,
        RollbackTo(usize),
        Release(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Op::Write(k, v)),
            1 => Just(Op::Open),
            1 => (1usize..4).prop_map(Op::RollbackTo),
            1 => (1usize..4).prop_map(Op::Release),
        ]
    }

    proptest! {
        // The model: a stack of full copies of the page map, one per open savepoint.
        #[test]
        fn undo_log_matches_a_stack_of_copies(ops in proptest::collection::vec(op(), 0..60)) {
            let mut pages: BTreeMap<u8, u8> = BTreeMap::new();
            let mut undo: UndoLog<u8, u8> = UndoLog::new();
            let mut model: Vec<BTreeMap<u8, u8>> = Vec::new();
            for op in ops {
                match op {
                    Op::Write(k, v) => {
                        let cost = undo.cost_of_write(k, &pages);
                        let before = undo.images();
                        undo.record(k, &pages);
                        prop_assert_eq!(undo.images(), before + cost);
                        pages.insert(k, v);
                    }
                    Op::Open => {
                        model.push(pages.clone());
                        prop_assert_eq!(undo.savepoint().depth(), model.len());
                    }
                    Op::RollbackTo(d) => {
                        let r = undo.rollback_to(Savepoint(d), &mut pages);
                        prop_assert_eq!(r.is_ok(), d <= model.len());
                        if d <= model.len() {
                            model.truncate(d);
                            prop_assert_eq!(&pages, &model[d - 1]);
                        }
                    }
                    Op::Release(d) => {
                        let r = undo.release(Savepoint(d));
                        prop_assert_eq!(r.is_ok(), d <= model.len());
                        if d <= model.len() {
                            model.truncate(d - 1);
                        }
                    }
                }
                prop_assert_eq!(undo.depth(), model.len());
                // Bounded: never more saved images than (open levels) x (pages written).
                prop_assert!(undo.images() <= model.len() * pages.len().max(1));
            }
            if model.is_empty() {
                prop_assert_eq!(undo.images(), 0);
            }
        }
    }
}
