//! The commit path through [`Wal`] (begin_write → write_page × k → commit) on `UnixVfs` in
//! a temporary directory, against the raw `pwrite` (`FileExt::write_all_at`) of the same
//! bytes (frame headers + pages) to a file of the same kind in the same directory
//! (PERFORMANCE.md: "commit path, sync OFF, one 4 KiB page per commit ≤ 1.5× the cost of
//! the raw pwrite of the same bytes").
//!
//! Both sides do the same I/O per commit: one write of `k × (24 + 4096)` bytes at the end
//! of the WAL, plus an fsync for `SyncMode::Full`. Every [`COMMITS_PER_GENERATION`]
//! commits (outside the timed region) the WAL is checkpointed with TRUNCATE, and the raw
//! file truncated to 0; the first commit of a generation writes the 32-byte WAL header
//! (fsynced for NORMAL and FULL) on both sides.
//!
//! Printed first: the median ratio ours / raw over 21 alternating rounds (load from other
//! processes hits both alike), then the criterion groups
//! `commit/<sync>/<k>pages/{wal,raw_pwrite}`, and `commit/txn_overhead/begin_write_rollback`
//! (begin_write + rollback of an empty transaction: the shm lock round trips every write
//! transaction pays, without the WAL write). Our side runs twice: in SQLite's normal
//! locking mode (`-shm` locks around every transaction) and in exclusive locking mode
//! (`Wal::set_locking_mode`: the database file's EXCLUSIVE lock, no `-shm` lock calls),
//! reported as `locking=normal|exclusive` and `wal` / `wal_exclusive`.
//!
//! A third side measures the floor SQLite's locking protocol puts under a normal-mode
//! commit: the same raw `pwrite` plus exactly the four `-shm` lock calls our normal-mode
//! commit makes on a `UnixVfs` handle (claim a read-mark slot exclusively, downgrade it to
//! shared, take `WAL_WRITE_LOCK`, release both in one call), and nothing else. Printed as
//! `floor / raw pwrite` beside `ours / raw pwrite`: no normal-mode commit that keeps the
//! protocol can be cheaper than the floor.
//!
//! `cargo bench -p fsqlite-wal --bench commit -- --warm-up-time 1 --measurement-time 3`
//! (`COMMIT_BENCH_FULL=0` skips the slow `Full` mode.)

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fsqlite_types::{Cx, PageNumber, VfsOpenFlags};
use fsqlite_vfs::{SHM_EXCLUSIVE, SHM_LOCK, UnixVfs, Vfs, VfsFile, WAL_WRITE_LOCK, wal_read_lock};
use fsqlite_wal::{CheckpointMode, LockingMode, SyncMode, Wal, WalOptions};

const PAGE_SIZE: usize = 4096;
const FRAME_HEADER: usize = 24;
const WAL_HEADER: usize = 32;
/// Commits per WAL generation (then TRUNCATE, untimed), like SQLite's auto-checkpoint.
const COMMITS_PER_GENERATION: u64 = 1000;
/// Pages in the database the commits write into.
const DB_PAGES: u32 = 1000;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sync_name(s: SyncMode) -> &'static str {
    match s {
        SyncMode::Off => "off",
        SyncMode::Normal => "normal",
        SyncMode::Full => "full",
    }
}

/// One side of the comparison: `run(n)` does `n` commits and returns the time they took
/// (generation resets excluded).
trait Committer {
    fn run(&mut self, n: u64) -> Duration;
}

/// Our commit path.
struct Ours {
    cx: Cx,
    wal: Wal<UnixVfs>,
    pages: Vec<Vec<u8>>,
    done: u64,
    next_page: u32,
}

impl Ours {
    fn new(dir: &Path, sync: SyncMode, per_commit: usize, mode: LockingMode) -> Self {
        let cx = Cx::new();
        let options = WalOptions {
            sync,
            page_size: PAGE_SIZE as u32,
            auto_checkpoint: None,
            checkpoint_on_close: false,
            ..WalOptions::default()
        };
        let name = match mode {
            LockingMode::Normal => "ours.db",
            LockingMode::Exclusive => "ours-exclusive.db",
        };
        let mut wal = Wal::open(&cx, Arc::new(UnixVfs::new()), dir.join(name), options)
            .expect("open the benchmark database");
        wal.set_locking_mode(&cx, mode)
            .expect("set the locking mode");
        let pages = (0..per_commit)
            .map(|i| random_bytes(PAGE_SIZE, 0x5eed + i as u64))
            .collect();
        Self {
            cx,
            wal,
            pages,
            done: 0,
            next_page: 0,
        }
    }

    fn commit_one(&mut self) {
        let mut txn = self.wal.begin_write(&self.cx).expect("begin_write");
        for data in &self.pages {
            self.next_page = (self.next_page + 7) % DB_PAGES;
            let page = PageNumber::new(self.next_page + 1).expect("nonzero page");
            txn.write_page(&self.cx, page, data).expect("write_page");
        }
        black_box(txn.commit(&self.cx, DB_PAGES).expect("commit"));
    }
}

impl Committer for Ours {
    fn run(&mut self, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            if self.done > 0 && self.done.is_multiple_of(COMMITS_PER_GENERATION) {
                let o = self
                    .wal
                    .checkpoint(&self.cx, CheckpointMode::Truncate)
                    .expect("checkpoint");
                assert!(!o.busy, "a lone connection's TRUNCATE cannot be busy");
            }
            let t = Instant::now();
            self.commit_one();
            total += t.elapsed();
            self.done += 1;
        }
        total
    }
}

/// The raw `pwrite` of the same bytes.
struct Raw {
    file: File,
    header: [u8; WAL_HEADER],
    frames: Vec<u8>,
    sync: SyncMode,
    done: u64,
}

impl Raw {
    fn new(dir: &Path, sync: SyncMode, per_commit: usize) -> Self {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("raw.db-wal"))
            .expect("create the raw file");
        let mut frames = Vec::with_capacity(per_commit * (FRAME_HEADER + PAGE_SIZE));
        for i in 0..per_commit {
            frames.extend_from_slice(&random_bytes(FRAME_HEADER, 0xf00d + i as u64));
            frames.extend_from_slice(&random_bytes(PAGE_SIZE, 0x5eed + i as u64));
        }
        let mut header = [0u8; WAL_HEADER];
        header.copy_from_slice(&random_bytes(WAL_HEADER, 0xbeef));
        Self {
            file,
            header,
            frames,
            sync,
            done: 0,
        }
    }

    fn commit_one(&mut self) {
        let k = self.done % COMMITS_PER_GENERATION;
        if k == 0 {
            self.file.write_all_at(&self.header, 0).expect("pwrite");
            if self.sync != SyncMode::Off {
                self.file.sync_all().expect("fsync");
            }
        }
        let offset = WAL_HEADER as u64 + k * self.frames.len() as u64;
        self.file
            .write_all_at(black_box(&self.frames), offset)
            .expect("pwrite");
        if self.sync == SyncMode::Full {
            self.file.sync_all().expect("fsync");
        }
    }
}

impl Committer for Raw {
    fn run(&mut self, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            if self.done > 0 && self.done.is_multiple_of(COMMITS_PER_GENERATION) {
                self.file.set_len(0).expect("truncate");
            }
            let t = Instant::now();
            self.commit_one();
            total += t.elapsed();
            self.done += 1;
        }
        total
    }
}

/// The protocol floor: the raw `pwrite` plus the four `-shm` lock calls of a normal-mode
/// commit (see the module docs).
struct Floor {
    raw: Raw,
    cx: Cx,
    db: <UnixVfs as Vfs>::File,
}

impl Floor {
    fn new(dir: &Path, sync: SyncMode, per_commit: usize) -> Self {
        let cx = Cx::new();
        let vfs = UnixVfs::new();
        let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
        let (mut db, _) = vfs
            .open(&cx, Some(&dir.join("floor.db")), flags)
            .expect("open the floor database");
        db.shm_map(&cx, 0, 32768, true).expect("map the -shm");
        let mut raw = Raw::new(dir, sync, per_commit);
        raw.file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("floor.db-wal"))
            .expect("create the floor WAL");
        Self { raw, cx, db }
    }

    fn locks(&mut self) {
        let (cx, db) = (&self.cx, &mut self.db);
        db.shm_lock(cx, wal_read_lock(1), 1, SHM_LOCK | SHM_EXCLUSIVE)
            .expect("claim a read mark");
        db.shm_downgrade(cx, wal_read_lock(1))
            .expect("downgrade the read mark");
        db.shm_lock(cx, WAL_WRITE_LOCK, 1, SHM_LOCK | SHM_EXCLUSIVE)
            .expect("WAL_WRITE_LOCK");
        db.shm_unlock_slots(cx, 1 << WAL_WRITE_LOCK, 1 << wal_read_lock(1))
            .expect("release both");
    }
}

impl Committer for Floor {
    fn run(&mut self, n: u64) -> Duration {
        let mut total = Duration::ZERO;
        for _ in 0..n {
            if self.raw.done > 0 && self.raw.done.is_multiple_of(COMMITS_PER_GENERATION) {
                self.raw.file.set_len(0).expect("truncate");
            }
            let t = Instant::now();
            self.locks();
            self.raw.commit_one();
            total += t.elapsed();
            self.raw.done += 1;
        }
        total
    }
}

/// Median (p10, p90) of ours / raw over 21 alternating rounds of `n` commits each.
fn interleaved_ratio(
    ours: &mut dyn Committer,
    raw: &mut dyn Committer,
    n: u64,
) -> (f64, f64, f64, Duration, Duration) {
    ours.run(n / 4);
    raw.run(n / 4);
    let mut ratios = Vec::new();
    let mut ours_t = Vec::new();
    let mut raw_t = Vec::new();
    for round in 0..21 {
        let (a, b) = if round % 2 == 0 {
            let a = ours.run(n);
            (a, raw.run(n))
        } else {
            let b = raw.run(n);
            (ours.run(n), b)
        };
        ratios.push(a.as_secs_f64() / b.as_secs_f64());
        ours_t.push(a / n as u32);
        raw_t.push(b / n as u32);
    }
    ratios.sort_by(f64::total_cmp);
    ours_t.sort_unstable();
    raw_t.sort_unstable();
    (ratios[10], ratios[2], ratios[18], ours_t[10], raw_t[10])
}

fn modes() -> Vec<SyncMode> {
    let full = std::env::var("COMMIT_BENCH_FULL").map_or(true, |v| v != "0");
    let mut m = vec![SyncMode::Off, SyncMode::Normal];
    if full {
        m.push(SyncMode::Full);
    }
    m
}

fn commit_path(c: &mut Criterion) {
    for sync in modes() {
        for per_commit in [1usize, 16] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut ours = Ours::new(dir.path(), sync, per_commit, LockingMode::Normal);
            let mut excl = Ours::new(dir.path(), sync, per_commit, LockingMode::Exclusive);
            let mut raw = Raw::new(dir.path(), sync, per_commit);
            let rounds = if sync == SyncMode::Full { 20 } else { 500 };
            let mut floor = Floor::new(dir.path(), sync, per_commit);
            let sides: [(&str, &mut dyn Committer); 3] = [
                ("normal", &mut ours),
                ("exclusive", &mut excl),
                ("protocol-floor", &mut floor),
            ];
            for (label, side) in sides {
                let (med, p10, p90, o, r) = interleaved_ratio(side, &mut raw, rounds);
                eprintln!(
                    "ratio commit sync={} pages={per_commit} locking={label}: ours / raw pwrite \
                     median {med:.2}x (p10 {p10:.2}x, p90 {p90:.2}x); per commit ours {o:?}, raw {r:?}",
                    sync_name(sync)
                );
            }
            let mut group =
                c.benchmark_group(format!("commit/{}/{per_commit}pages", sync_name(sync)));
            group.throughput(Throughput::Bytes(
                (per_commit * (FRAME_HEADER + PAGE_SIZE)) as u64,
            ));
            if sync == SyncMode::Full {
                group.sample_size(10);
            }
            group.bench_function("wal", |b| b.iter_custom(|n| ours.run(n)));
            group.bench_function("wal_exclusive", |b| b.iter_custom(|n| excl.run(n)));
            group.bench_function("raw_pwrite", |b| b.iter_custom(|n| raw.run(n)));
            group.finish();
        }
    }
}

/// The lock round trips of a write transaction without its write.
fn txn_overhead(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut group = c.benchmark_group("commit/txn_overhead");
    for (label, mode) in [
        ("begin_write_rollback", LockingMode::Normal),
        ("begin_write_rollback_exclusive", LockingMode::Exclusive),
    ] {
        let mut ours = Ours::new(dir.path(), SyncMode::Off, 1, mode);
        ours.run(10);
        group.bench_function(label, |b| {
            b.iter(|| {
                let txn = ours.wal.begin_write(&ours.cx).expect("begin_write");
                txn.rollback(&ours.cx).expect("rollback");
            });
        });
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    txn_overhead(&mut c);
    commit_path(&mut c);
    c.final_summary();
}
