//! The Litestream 0.5 replica layout on a [`Store`]:
//! `<prefix>/ltx/<level>/<min:016x>-<max:016x>.ltx`, level 0 for per-commit files and
//! level 9 ([`SNAPSHOT_LEVEL`]) for snapshots.

use fsqlite_error::{FrankenError, Result};
use fsqlite_replicate::ltx;

use crate::store::Store;

/// Level of per-commit files.
pub const COMMIT_LEVEL: u32 = 0;
/// Level of full snapshots (Litestream's `SnapshotLevel`).
pub const SNAPSHOT_LEVEL: u32 = 9;

/// One LTX object found in a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFile {
    /// Its key in the bucket.
    pub key: String,
    /// Its level (0..=9).
    pub level: u32,
    /// First TXID (from the name).
    pub min_txid: u64,
    /// Last TXID (from the name).
    pub max_txid: u64,
    /// Size in bytes.
    pub size: u64,
}

fn ltx_dir(prefix: &str) -> String {
    let p = prefix.trim_matches('/');
    if p.is_empty() {
        "ltx".to_string()
    } else {
        format!("{p}/ltx")
    }
}

/// The key of the file covering `min..=max` at `level`.
pub fn key(prefix: &str, level: u32, min_txid: u64, max_txid: u64) -> String {
    format!(
        "{}/{level}/{}",
        ltx_dir(prefix),
        ltx::file_name(min_txid, max_txid)
    )
}

/// Uploads one encoded LTX file at the key its header names, create-only: a file for the
/// same level and TXID range already there is refused (see [`crate::is_already_exists`])
/// and left as it was. Returns the key.
pub fn ship(store: &Store, prefix: &str, level: u32, bytes: &[u8]) -> Result<String> {
    if level > SNAPSHOT_LEVEL {
        return Err(FrankenError::out_of_range("replica level (0..=9)", level));
    }
    let file = ltx::decode(bytes).map_err(|e| {
        FrankenError::db_corrupt(format!("refusing to ship an invalid LTX file: {e}"))
    })?;
    let h = &file.header;
    if level == SNAPSHOT_LEVEL && !h.is_snapshot() {
        return Err(FrankenError::out_of_range(
            "the min TXID of a level-9 snapshot (must be 1)",
            h.min_txid,
        ));
    }
    let k = key(prefix, level, h.min_txid, h.max_txid);
    store.put_if_absent(&k, bytes)?;
    Ok(k)
}

/// Every LTX object of the replica at `prefix`, by level then min TXID. Objects under
/// `ltx/` whose names do not follow the layout are skipped, as Litestream does.
pub fn list(store: &Store, prefix: &str) -> Result<Vec<ReplicaFile>> {
    let dir = ltx_dir(prefix);
    let mut out = Vec::new();
    for (k, size) in store.list(&dir)? {
        let Some(rest) = k.strip_prefix(&dir).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let Some((lvl, name)) = rest.split_once('/') else {
            continue;
        };
        let Ok(level) = lvl.parse::<u32>() else {
            continue;
        };
        if level > SNAPSHOT_LEVEL || lvl != level.to_string() {
            continue;
        }
        let Some((min_txid, max_txid)) = ltx::parse_file_name(name) else {
            continue;
        };
        out.push(ReplicaFile {
            key: k,
            level,
            min_txid,
            max_txid,
            size,
        });
    }
    out.sort_by_key(|f| (f.level, f.min_txid, f.max_txid));
    Ok(out)
}

/// The files [`restore`] applies, in order: the newest snapshot (level 9, or a level-0
/// file starting at TXID 1) at or before the target, then the contiguous level-0 files
/// after it up to the target (or to the end of the replica when `upto_txid` is `None`).
pub fn plan(store: &Store, prefix: &str, upto_txid: Option<u64>) -> Result<Vec<ReplicaFile>> {
    let files = list(store, prefix)?;
    let target = upto_txid.unwrap_or(u64::MAX);
    let where_ = store.url(&ltx_dir(prefix));
    let snapshot = files
        .iter()
        .filter(|f| {
            (f.level == SNAPSHOT_LEVEL || f.level == COMMIT_LEVEL)
                && f.min_txid == 1
                && f.max_txid <= target
        })
        .max_by_key(|f| (f.max_txid, f.level))
        .ok_or_else(|| {
            FrankenError::cannot_open(
                where_.clone(),
                match upto_txid {
                    Some(t) => format!("the replica has no snapshot at or before TXID {t}"),
                    None => "the replica has no snapshot".to_string(),
                },
            )
        })?;
    let l0: Vec<&ReplicaFile> = files.iter().filter(|f| f.level == COMMIT_LEVEL).collect();
    let mut chain = vec![snapshot.clone()];
    let mut at = snapshot.max_txid;
    while at < target {
        let next = at + 1;
        let step = l0
            .iter()
            .filter(|f| f.min_txid == next && f.max_txid <= target)
            .max_by_key(|f| f.max_txid);
        if let Some(f) = step {
            chain.push((*f).clone());
            at = f.max_txid;
            continue;
        }
        if let Some(f) = l0
            .iter()
            .find(|f| f.min_txid <= next && f.max_txid > target && f.max_txid >= next)
        {
            return Err(FrankenError::out_of_range(
                format!(
                    "restore target TXID in {where_}: {} covers TXIDs {}..={}, past the target, and cannot be split",
                    f.key, f.min_txid, f.max_txid
                ),
                target,
            ));
        }
        let later = l0
            .iter()
            .filter(|f| f.min_txid > next)
            .map(|f| f.min_txid)
            .min();
        if let Some(resume) = later.filter(|&m| m <= target) {
            return Err(FrankenError::db_corrupt(format!(
                "the replica {where_} has a gap: TXIDs {next}..={} are missing (after {} the next level-0 file starts at TXID {resume})",
                resume - 1,
                chain.last().map_or("", |f| f.key.as_str()),
            )));
        }
        if let Some(t) = upto_txid {
            return Err(FrankenError::cannot_open(
                where_,
                format!("the replica ends at TXID {at}, before the target TXID {t}"),
            ));
        }
        break;
    }
    Ok(chain)
}

/// Restores the database image at `upto_txid` (`None`: the newest) from the replica at
/// `prefix`. Every file is decoded, checked against its name, and applied in TXID order;
/// a gap in the chain, or a damaged or foreign object, is an error naming it.
pub fn restore(store: &Store, prefix: &str, upto_txid: Option<u64>) -> Result<Vec<u8>> {
    let chain = plan(store, prefix, upto_txid)?;
    let mut db = Vec::new();
    for f in &chain {
        let url = store.url(&f.key);
        let bytes = store.get(&f.key)?.ok_or_else(|| {
            FrankenError::cannot_open(url.clone(), "the object vanished during restore")
        })?;
        let file = ltx::decode(&bytes)
            .map_err(|e| FrankenError::db_corrupt(format!("replica object {url}: {e}")))?;
        let h = &file.header;
        if (h.min_txid, h.max_txid) != (f.min_txid, f.max_txid) {
            return Err(FrankenError::db_corrupt(format!(
                "replica object {url}: its header covers TXIDs {}..={}, its name {}..={}",
                h.min_txid, h.max_txid, f.min_txid, f.max_txid
            )));
        }
        ltx::apply(&mut db, &file)
            .map_err(|e| FrankenError::db_corrupt(format!("replica object {url}: {e}")))?;
    }
    Ok(db)
}
