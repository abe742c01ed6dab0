//! Fault coverage you can read: every I/O call site of the commit, checkpoint and
//! recovery paths, and for each whether a fail-once and a fail-always fault were injected
//! there and what the caller then did.
//!
//! # Where the rows come from
//!
//! - **Static**: [`scan_sources`] reads `crates/wal/src` and `crates/mvcc/src` (not their
//!   unit-test modules) and lists every call of a `VfsFile` method that can fail on a
//!   real disk (`read`, `write`, `truncate`, `sync`, `lock`, `shm_map`, `shm_lock`,
//!   `shm_downgrade`) whose first argument is the `Cx`: file, line and operation.
//! - **Dynamic**: those methods are `#[track_caller]`, so `MemoryVfs` knows the line that
//!   called it ([`fsqlite_vfs::IoSite`]). A clean run of every workload records the sites
//!   it reaches ([`record_seen`]); every injected fault records the site it hit and what
//!   the caller did ([`record_response`]).
//!
//! Both are joined by file and line ([`table`]). A static site that no workload reaches
//! is listed as such (a path outside commit, checkpoint and recovery, or one the
//! workloads miss); a dynamic site the scan did not find (a call written another way) is
//! listed too.
//!
//! # What the caller did
//!
//! | response | meaning |
//! |---|---|
//! | `error` | the failing operation's error reached the workload (commit, checkpoint or open returned it) |
//! | `latched` | after a fail-once fault in a commit or checkpoint, the same handle refused the next commit (fsyncgate) |
//! | `continued` | after a fail-once fault, the same handle committed again (the fault left nothing behind that could be lost) |
//! | `absorbed` | the workload saw no error: the caller retried or the operation was best-effort |
//!
//! Every recovery after each fault is verified by the harness that injected it (no
//! acknowledged commit lost, nothing half there): the response says what happened, the
//! harness says it was safe.

use std::collections::BTreeMap;
use std::path::Path;

use fsqlite_vfs::{FaultRepeat, IoSite};
use serde_json::{Value, json};

use crate::Counters;

/// What a caller did after a fault (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Response {
    /// The error reached the workload.
    Error,
    /// The same handle refused the next commit.
    Latched,
    /// The same handle committed again.
    Continued,
    /// The workload saw no error.
    Absorbed,
}

impl Response {
    /// Its name in the table.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Latched => "latched",
            Self::Continued => "continued",
            Self::Absorbed => "absorbed",
        }
    }
}

/// The counter key prefix of a site: `cov|<op>|<file>:<line>|`.
fn key(site: &IoSite) -> String {
    format!("cov|{}|{}:{}|", site.op.name(), site.file, site.line)
}

/// Adds the sites a clean run reached.
pub fn record_seen(c: &mut Counters, sites: &[(IoSite, u64)]) {
    for (s, n) in sites {
        if is_ours(s.file) {
            c.add(&(key(s) + "seen"), *n);
        }
    }
}

/// Adds one fault injected at `site` in `repeat` mode and what the caller did.
pub fn record_response(c: &mut Counters, site: &IoSite, repeat: FaultRepeat, r: Response) {
    if !is_ours(site.file) {
        return;
    }
    let k = key(site);
    c.inc(&(k.clone() + crate::iofault::repeat_name(repeat)));
    c.inc(&(k + r.name()));
}

/// A site in the WAL or the coordinator (not in a test, the harness or the VFS).
fn is_ours(file: &str) -> bool {
    let f = file.replace('\\', "/");
    (f.contains("crates/wal/src/") || f.contains("crates/mvcc/src/")) && !f.ends_with("tests.rs")
}

/// One statically found call site.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct StaticSite {
    /// Path relative to the workspace root.
    pub file: String,
    /// Line of the method name.
    pub line: u32,
    /// The operation (`write`, `sync`, ...; `shm_downgrade` counts as `shm_lock`).
    pub op: &'static str,
    /// The source line, trimmed.
    pub text: String,
    /// The function the call is in.
    pub function: String,
}

/// Why a call site no workload reaches is not reached, by the function it is in.
pub const UNREACHED_REASONS: [(&str, &str); 7] = [
    (
        "write_page",
        "the single-page write of a checkpoint target; the database-file target copies runs of pages with `write_pages`",
    ),
    (
        "read_page_snapshot",
        "the second read of a database page, after a first read came back short (a checkpoint grew the file meanwhile); a fault on the first read is covered",
    ),
    (
        "recover_snapshots_locked",
        "runs only after an interrupted checkpoint (nBackfillAttempted > nBackfill), which no workload leaves behind",
    ),
    (
        "check_scan_read_everything",
        "runs only for a WAL whose header is invalid but which is longer than a header",
    ),
    (
        "read_frame",
        "`WalFile` API that the connection and the coordinator do not call (tools and tests do)",
    ),
    (
        "read_frame_header",
        "`WalFile` API that the connection and the coordinator do not call (tools and tests do)",
    ),
    (
        "create",
        "`WalFile::create`, which the connection and the coordinator do not call (they write the header on the first commit)",
    ),
];

/// The methods scanned for, with the operation they count as.
const METHODS: [(&str, &str); 9] = [
    ("read", "read"),
    ("read_vectored", "read"),
    ("write", "write"),
    ("truncate", "truncate"),
    ("sync", "sync"),
    ("lock", "lock"),
    ("shm_map", "shm_map"),
    ("shm_lock", "shm_lock"),
    ("shm_downgrade", "shm_lock"),
];

/// Scans `root/crates/{wal,mvcc}/src` (see the module doc).
pub fn scan_sources(root: &Path) -> Vec<StaticSite> {
    let mut out = Vec::new();
    for krate in ["wal", "mvcc"] {
        let base = root.join("crates").join(krate).join("src");
        let mut files = Vec::new();
        collect_rs(&base, &mut files);
        files.sort();
        for f in files {
            let Ok(text) = std::fs::read_to_string(&f) else {
                continue;
            };
            let rel = f
                .strip_prefix(root)
                .unwrap_or(&f)
                .to_string_lossy()
                .replace('\\', "/");
            if rel.ends_with("tests.rs") {
                continue;
            }
            scan_text(&rel, &text, &mut out);
        }
    }
    out
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_rs(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Finds `.method(` followed (after whitespace) by `cx`, `&cx`, `self.cx` or `&self.cx`
/// in `text`, up to a `#[cfg(test)]` line.
pub fn scan_text(file: &str, text: &str, out: &mut Vec<StaticSite>) {
    let end = text
        .lines()
        .scan(0usize, |off, l| {
            let start = *off;
            *off += l.len() + 1;
            Some((start, l))
        })
        .find(|(_, l)| l.trim() == "#[cfg(test)]")
        .map_or(text.len(), |(o, _)| o);
    let body = &text[..end];
    let bytes = body.as_bytes();
    // Forwarding `impl VfsFile for` blocks are no call sites: their methods inherit
    // `#[track_caller]`, so the VFS sees their callers. Such a block ends at the next
    // line that is a lone `}` at column 0.
    let mut skip: Vec<(usize, usize)> = Vec::new();
    let mut off = 0;
    let mut open_at = None;
    for l in body.split_inclusive('\n') {
        if open_at.is_none() && l.starts_with("impl") && l.contains("VfsFile for ") {
            open_at = Some(off);
        } else if let Some(a) = open_at
            && l.trim_end() == "}"
        {
            skip.push((a, off + l.len()));
            open_at = None;
        }
        off += l.len();
    }
    for (name, op) in METHODS {
        let pat = format!(".{name}(");
        let mut from = 0;
        while let Some(i) = body[from..].find(&pat) {
            let at = from + i;
            from = at + pat.len();
            if skip.iter().any(|&(a, b)| at >= a && at < b) {
                continue;
            }
            // `self.read(...)` is the type's own method, not the VFS's (`x.self` cannot be).
            if let Some(before) = body[..at].strip_suffix("self")
                && !before.ends_with('.')
            {
                continue;
            }
            // Releasing a lock never fails (the VFS injects no fault there).
            let call: String = body[at..].chars().take(160).collect();
            let call = call.split(';').next().unwrap_or("");
            if call.contains("SHM_UNLOCK") {
                continue;
            }
            // Not a longer name ending in this one (`.try_lock(` has no `.` before `lock`).
            let mut j = from;
            while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                j += 1;
            }
            let rest = &body[j..];
            let arg = rest.trim_start_matches('&').trim_start_matches("self.");
            let is_cx = arg.starts_with("cx")
                && arg[2..]
                    .chars()
                    .next()
                    .is_some_and(|c| !c.is_alphanumeric() && c != '_');
            if !is_cx {
                continue;
            }
            let line = body[..at].bytes().filter(|&b| b == b'\n').count() as u32 + 1;
            let text = body[..at]
                .rsplit('\n')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
                + body[at..].lines().next().unwrap_or("");
            if text.trim_start().starts_with("//") {
                continue;
            }
            let function = body[..at]
                .rfind("fn ")
                .map(|i| {
                    body[i + 3..]
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect()
                })
                .unwrap_or_default();
            out.push(StaticSite {
                file: file.to_owned(),
                line,
                op,
                text: text.trim().to_owned(),
                function,
            });
        }
    }
    out.sort();
}

/// One row of the coverage table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// `file:line`.
    pub site: String,
    /// The operation.
    pub op: String,
    /// Found by the scan.
    pub in_source: bool,
    /// Operations a clean run made there.
    pub seen: u64,
    /// Fail-once faults injected there.
    pub once: u64,
    /// Fail-always faults injected there.
    pub persistent: u64,
    /// Responses by name.
    pub responses: BTreeMap<String, u64>,
    /// The function the call is in (from the scan).
    pub function: String,
}

impl Row {
    /// Both modes injected.
    pub fn covered(&self) -> bool {
        self.once > 0 && self.persistent > 0
    }
}

/// Joins the counters of the harnesses with the scan (see the module doc).
pub fn table(c: &Counters, scan: &[StaticSite]) -> Vec<Row> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for s in scan {
        let site = format!("{}:{}", s.file, s.line);
        let r = rows.entry((site.clone(), s.op.to_owned())).or_default();
        r.site = site;
        s.op.clone_into(&mut r.op);
        r.in_source = true;
        r.function.clone_from(&s.function);
    }
    for (k, v) in &c.0 {
        let Some(rest) = k.strip_prefix("cov|") else {
            continue;
        };
        let mut parts = rest.splitn(3, '|');
        let (Some(op), Some(site), Some(field)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // The scan's operation for a downgrade is `shm_lock`, as the VFS reports it.
        let r = rows.entry((site.to_owned(), op.to_owned())).or_default();
        site.clone_into(&mut r.site);
        op.clone_into(&mut r.op);
        match field {
            "seen" => r.seen += v,
            "once" => r.once += v,
            "persistent" => r.persistent += v,
            other => *r.responses.entry(other.to_owned()).or_default() += v,
        }
    }
    rows.into_values().collect()
}

/// The table as JSON (for the stats file and the report).
pub fn to_json(rows: &[Row]) -> Value {
    let reached: Vec<&Row> = rows.iter().filter(|r| r.seen > 0 || r.once > 0).collect();
    let covered = reached.iter().filter(|r| r.covered()).count();
    json!({
        "sites_in_source": rows.iter().filter(|r| r.in_source).count(),
        "sites_reached": reached.len(),
        "sites_covered": covered,
        "coverage_pct": if reached.is_empty() { 0.0 } else { 100.0 * covered as f64 / reached.len() as f64 },
        "rows": rows.iter().map(|r| json!({
            "site": r.site,
            "op": r.op,
            "in_source": r.in_source,
            "seen": r.seen,
            "once": r.once,
            "persistent": r.persistent,
            "responses": r.responses,
            "function": r.function,
        })).collect::<Vec<_>>(),
    })
}

/// The table as Markdown: one row per site, then what was not reached.
pub fn to_markdown(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let reached: Vec<&Row> = rows.iter().filter(|r| r.seen > 0 || r.once > 0).collect();
    let covered = reached.iter().filter(|r| r.covered()).count();
    let _ = writeln!(
        s,
        "{covered} of {} reached I/O call sites had both a fail-once and a fail-always fault injected ({:.1}%); {} call sites in the source.\n",
        reached.len(),
        if reached.is_empty() {
            0.0
        } else {
            100.0 * covered as f64 / reached.len() as f64
        },
        rows.iter().filter(|r| r.in_source).count()
    );
    let _ = writeln!(
        s,
        "| site | op | ops in a clean run | fail-once | fail-always | what the caller did |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---|");
    for r in &reached {
        let resp = r
            .responses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            s,
            "| `{}`{} | {} | {} | {} | {} | {} |",
            r.site,
            if r.in_source {
                ""
            } else {
                " (not found by the scan)"
            },
            r.op,
            r.seen,
            r.once,
            r.persistent,
            if resp.is_empty() { "–".into() } else { resp }
        );
    }
    let unreached: Vec<&Row> = rows
        .iter()
        .filter(|r| r.seen == 0 && r.once == 0 && r.in_source)
        .collect();
    if !unreached.is_empty() {
        let _ = writeln!(
            s,
            "\nCall sites in the source that no workload reached ({}):\n",
            unreached.len()
        );
        for r in unreached {
            let why = UNREACHED_REASONS
                .iter()
                .find(|(f, _)| *f == r.function)
                .map_or("no workload reaches it yet", |(_, w)| *w);
            let _ = writeln!(s, "- `{}` ({}, in `{}`): {why}", r.site, r.op, r.function);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scan_finds_calls_split_over_lines_and_skips_others() {
        let src = "fn f() {\n    file.write(cx, &b, 0)?;\n    self.file\n        .sync(\n            cx,\n            flags,\n        )?;\n    m.lock();\n    x.write(cxx, 1);\n    // f.read(cx, b, 0)\n    g.shm_lock(&self.cx, 0, 1, 2)?;\n    self.read(cx, b, 0)?;\n    f.shm_lock(cx, i, 1, SHM_UNLOCK | SHM_SHARED)\n}\nimpl VfsFile for W {\n    fn write(&mut self, cx: &Cx) { self.inner.write(cx, b, 0) }\n}\n#[cfg(test)]\nmod tests { fn t() { f.write(cx, b, 0); } }\n";
        let mut out = Vec::new();
        scan_text("crates/wal/src/x.rs", src, &mut out);
        let got: Vec<(u32, &str)> = out.iter().map(|s| (s.line, s.op)).collect();
        assert_eq!(got, vec![(2, "write"), (4, "sync"), (11, "shm_lock")]);
    }
}
