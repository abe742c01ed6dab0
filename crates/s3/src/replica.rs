//! The Litestream 0.5 replica layout on a [`Store`]: the generic
//! [`fsqlite_replicate::replica::Replica`] over S3, and the thin helpers the tests and the
//! CLI use. `<prefix>/ltx/<level>/<min:016x>-<max:016x>.ltx`, level 0 for per-commit
//! files and level 9 ([`SNAPSHOT_LEVEL`]) for snapshots.

use fsqlite_error::Result;
pub use fsqlite_replicate::follow::{COMMIT_LEVEL, SNAPSHOT_LEVEL};
pub use fsqlite_replicate::replica::{Replica, ReplicaFile, Target};

use crate::store::Store;

/// The key of the file covering `min..=max` at `level`.
pub fn key(prefix: &str, level: u32, min_txid: u64, max_txid: u64) -> String {
    Replica::new(NoObjects, prefix).key(level, min_txid, max_txid)
}

/// Uploads one encoded LTX file at the key its header names, create-only (a different
/// object already there is an error, see [`crate::is_already_exists`]). Returns the key.
pub fn ship(store: &Store, prefix: &str, level: u32, bytes: &[u8]) -> Result<String> {
    Replica::new(store, prefix).ship(level, bytes)
}

/// Every LTX object of the replica at `prefix`, by level then min TXID.
pub fn list(store: &Store, prefix: &str) -> Result<Vec<ReplicaFile>> {
    Replica::new(store, prefix).files()
}

/// The files a restore to `upto_txid` (`None`: the newest) applies, in order.
pub fn plan(store: &Store, prefix: &str, upto_txid: Option<u64>) -> Result<Vec<ReplicaFile>> {
    Replica::new(store, prefix).plan(upto_txid.map_or(Target::Latest, Target::Txid))
}

/// The database image at `upto_txid` (`None`: the newest), in memory.
pub fn restore(store: &Store, prefix: &str, upto_txid: Option<u64>) -> Result<Vec<u8>> {
    Replica::new(store, prefix)
        .restore_image(upto_txid.map_or(Target::Latest, Target::Txid))
        .map(|(img, _)| img)
}

/// A store with nothing in it, for key arithmetic.
struct NoObjects;

impl fsqlite_replicate::replica::Objects for NoObjects {
    fn put_if_absent(&self, _key: &str, _bytes: &[u8]) -> Result<bool> {
        Ok(false)
    }
    fn get(&self, _key: &str) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
    fn list(&self, _prefix: &str) -> Result<Vec<(String, u64)>> {
        Ok(Vec::new())
    }
    fn delete(&self, _key: &str) -> Result<()> {
        Ok(())
    }
    fn url(&self, key: &str) -> String {
        key.to_string()
    }
}
