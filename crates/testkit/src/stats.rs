//! JSON figures from harnesses (crash points enumerated, kill -9 cycles, acks checked, ...)
//! written to `<target>/test-stats/<name>.json` for `xtask report` to merge
//! (TESTING.md §2.8 (e)).
//!
//! # Where `<target>` is
//!
//! 1. `CARGO_TARGET_DIR` when it is set to an absolute path;
//! 2. otherwise the nearest ancestor of the running executable that contains cargo's
//!    `CACHEDIR.TAG` (a test binary lives in `<target>/<profile>/deps/`);
//! 3. otherwise the nearest ancestor named `target`;
//! 4. otherwise `<temp dir>/fsqlite-target`.
//!
//! Files are written to a temporary name and renamed, so a reader never sees half a file.

use std::path::{Path, PathBuf};

use fsqlite_error::{FrankenError, Result};

/// The directory under the target dir that holds the stats files.
pub const STATS_DIR: &str = "test-stats";
/// The file cargo puts at the root of every target directory.
const CACHEDIR_TAG: &str = "CACHEDIR.TAG";

/// The cargo target directory of the running build (see the module doc).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe
            .ancestors()
            .skip(1)
            .find(|d| d.join(CACHEDIR_TAG).is_file())
        {
            return dir.to_path_buf();
        }
        if let Some(dir) = exe
            .ancestors()
            .find(|d| d.file_name().is_some_and(|n| n == "target"))
        {
            return dir.to_path_buf();
        }
    }
    std::env::temp_dir().join("fsqlite-target")
}

/// `<target>/test-stats`.
pub fn stats_dir() -> PathBuf {
    target_dir().join(STATS_DIR)
}

/// Writes `value` (pretty-printed) to `<target>/test-stats/<name>.json`, creating the
/// directory, and returns the path. `name` may use letters, digits, `-`, `_` and `.`.
#[allow(
    clippy::needless_pass_by_value,
    reason = "taken by value so callers can pass json!({..}) directly"
)]
pub fn write_stats(name: &str, value: serde_json::Value) -> Result<PathBuf> {
    write_stats_in(&stats_dir(), name, &value)
}

/// [`write_stats`] into an explicit directory.
pub fn write_stats_in(dir: &Path, name: &str, value: &serde_json::Value) -> Result<PathBuf> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(FrankenError::out_of_range(
            "stats file name",
            format!("{name:?}"),
        ));
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| FrankenError::io("create_dir_all", Some(dir.to_path_buf()), e))?;
    let path = dir.join(format!("{name}.json"));
    let tmp = dir.join(format!(".{name}.json.{}.tmp", std::process::id()));
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| FrankenError::internal(format!("cannot serialize stats {name}: {e}")))?;
    std::fs::write(&tmp, text + "\n")
        .map_err(|e| FrankenError::io("write", Some(tmp.clone()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| FrankenError::io("rename", Some(path.clone()), e))?;
    tracing::debug!(target: "fsqlite.testkit.stats", path = %path.display(), "wrote stats");
    Ok(path)
}

/// Thousands separators for reports: `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
