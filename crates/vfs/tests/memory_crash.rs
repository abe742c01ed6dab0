//! Crash simulation of `MemoryVfs`: what survives a power loss in each `CrashMode`, the
//! directory-entry rules, dead handles, determinism, and a model-based proptest.
//!
//! The damage modes are checked exactly where that is feasible: for `KeepRandom` and `Torn`
//! every possible outcome ("durable + a subset of the pending ops / sector pieces") is
//! enumerated and the crash result must be one of them.

// Handles named a, b, c, ... read best in these scenarios.
#![allow(clippy::many_single_char_names)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use fsqlite_error::FrankenError;
use fsqlite_types::{Cx, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::memory::{CrashMode, MemoryFile, SplitMix64};
use fsqlite_vfs::{MemoryVfs, ShmRegion, Vfs, VfsFile};
use proptest::prelude::*;

const RWC: VfsOpenFlags = VfsOpenFlags::READWRITE
    .union(VfsOpenFlags::CREATE)
    .union(VfsOpenFlags::MAIN_DB);
const RW: VfsOpenFlags = VfsOpenFlags::READWRITE.union(VfsOpenFlags::MAIN_DB);

fn open(vfs: &MemoryVfs, path: &str) -> MemoryFile {
    vfs.open(&Cx::new(), Some(Path::new(path)), RWC).unwrap().0
}

fn read_all(f: &MemoryFile) -> Vec<u8> {
    let cx = Cx::new();
    let n = f.file_size(&cx).unwrap() as usize;
    let mut buf = vec![0u8; n];
    assert_eq!(f.read(&cx, &mut buf, 0).unwrap(), n);
    buf
}

/// A pending change as the test recorded it.
#[derive(Clone, Debug)]
enum TOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn t_write(img: &mut Vec<u8>, off: u64, bytes: &[u8]) {
    let off = off as usize;
    if img.len() < off + bytes.len() {
        img.resize(off + bytes.len(), 0);
    }
    img[off..off + bytes.len()].copy_from_slice(bytes);
}

fn t_apply(img: &mut Vec<u8>, op: &TOp) {
    match op {
        TOp::Write(off, b) => t_write(img, *off, b),
        TOp::SetLen(n) => img.resize(*n as usize, 0),
    }
}

fn do_op(f: &mut MemoryFile, op: &TOp) {
    let cx = Cx::new();
    match op {
        TOp::Write(off, b) => f.write(&cx, b, *off).unwrap(),
        TOp::SetLen(n) => f.truncate(&cx, *n).unwrap(),
    }
}

/// Splits the ops into the atoms a crash decides independently: whole ops, or (with
/// `sector`) the sector-aligned pieces of each write.
fn atoms(ops: &[TOp], sector: Option<u64>) -> Vec<TOp> {
    let mut out = Vec::new();
    for op in ops {
        match (op, sector) {
            (TOp::Write(off, b), Some(s)) => {
                let mut pos = 0usize;
                while pos < b.len() {
                    let abs = off + pos as u64;
                    let n = (((abs / s + 1) * s - abs) as usize).min(b.len() - pos);
                    out.push(TOp::Write(abs, b[pos..pos + n].to_vec()));
                    pos += n;
                }
            }
            _ => out.push(op.clone()),
        }
    }
    out
}

/// Every image `durable + subset(atoms)` can produce.
fn all_outcomes(durable: &[u8], atoms: &[TOp]) -> BTreeSet<Vec<u8>> {
    assert!(
        atoms.len() <= 16,
        "too many atoms to enumerate: {}",
        atoms.len()
    );
    let mut set = BTreeSet::new();
    for mask in 0u32..(1 << atoms.len()) {
        let mut img = durable.to_vec();
        for (i, a) in atoms.iter().enumerate() {
            if mask & (1 << i) != 0 {
                t_apply(&mut img, a);
            }
        }
        set.insert(img);
    }
    set
}

/// Plants `base` at `path` (synced), then applies `ops` unsynced through a handle.
fn setup(seed: u64, path: &str, base: &[u8], ops: &[TOp]) -> (MemoryVfs, MemoryFile) {
    let vfs = MemoryVfs::with_seed(seed);
    vfs.set_contents(Path::new(path), base);
    let mut f = open(&vfs, path);
    for op in ops {
        do_op(&mut f, op);
    }
    (vfs, f)
}

fn small_workload() -> (Vec<u8>, Vec<TOp>) {
    let base: Vec<u8> = (0..1500u32).map(|i| (i % 251) as u8).collect();
    let ops = vec![
        TOp::Write(100, vec![0xaa; 700]), // pieces 100..512, 512..800
        TOp::SetLen(1200),
        TOp::Write(1000, vec![0xbb; 300]), // pieces 1000..1024, 1024..1300
        TOp::Write(400, vec![0xcc; 200]),  // pieces 400..512, 512..600
        TOp::Write(2000, vec![0xdd; 50]),  // one piece, extends the file
    ];
    (base, ops)
}

#[test]
fn drop_all_keeps_exactly_the_synced_state() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    f.write(&cx, b"synced-data", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    f.write(&cx, b"UNSYNCED", 3).unwrap();
    f.truncate(&cx, 5).unwrap();
    f.write(&cx, b"tail", 100).unwrap();
    assert_eq!(vfs.pending_op_count(Path::new("/db")), 3);
    assert_eq!(
        vfs.durable_contents(Path::new("/db")).unwrap(),
        b"synced-data"
    );
    vfs.crash(CrashMode::DropAll);
    assert_eq!(vfs.live_contents(Path::new("/db")).unwrap(), b"synced-data");
    assert_eq!(
        vfs.durable_contents(Path::new("/db")).unwrap(),
        b"synced-data"
    );
    assert_eq!(vfs.pending_op_count(Path::new("/db")), 0);
    let g = vfs.open(&cx, Some(Path::new("/db")), RW).unwrap().0;
    assert_eq!(read_all(&g), b"synced-data");
}

#[test]
fn keep_all_keeps_everything() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    f.write(&cx, b"synced-data", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    f.write(&cx, b"UNSYNCED", 3).unwrap();
    f.truncate(&cx, 5).unwrap();
    f.write(&cx, b"tail", 10).unwrap();
    let live = vfs.live_contents(Path::new("/db")).unwrap();
    assert_eq!(live, b"synUN\0\0\0\0\0tail");
    vfs.crash(CrashMode::KeepAll);
    assert_eq!(vfs.durable_contents(Path::new("/db")).unwrap(), live);
    let g = vfs.open(&cx, Some(Path::new("/db")), RW).unwrap().0;
    assert_eq!(read_all(&g), live);
}

#[test]
fn keep_random_is_durable_plus_a_subset_of_ops() {
    let (base, ops) = small_workload();
    let outcomes = all_outcomes(&base, &atoms(&ops, None));
    let mut seen = BTreeSet::new();
    for seed in 0..64 {
        let (vfs, _f) = setup(1, "/db", &base, &ops);
        vfs.crash(CrashMode::KeepRandom { seed });
        let got = vfs.live_contents(Path::new("/db")).unwrap();
        assert!(
            outcomes.contains(&got),
            "seed {seed}: not durable + a subset of ops"
        );
        assert_eq!(vfs.durable_contents(Path::new("/db")).unwrap(), got);
        seen.insert(got);
    }
    // The mode really varies (5 ops: 32 subsets, most images distinct).
    assert!(seen.len() >= 8, "only {} distinct outcomes", seen.len());
}

#[test]
fn torn_is_durable_plus_a_subset_of_sector_pieces() {
    let (base, ops) = small_workload();
    let pieces = atoms(&ops, Some(512));
    assert_eq!(pieces.len(), 9); // 2000..2050 crosses 2048
    let outcomes = all_outcomes(&base, &pieces);
    let whole_ops = all_outcomes(&base, &atoms(&ops, None));
    let mut seen = BTreeSet::new();
    let mut torn_inside_an_op = false;
    for seed in 0..128 {
        let (vfs, _f) = setup(2, "/db", &base, &ops);
        vfs.crash(CrashMode::Torn { seed, sector: 512 });
        let got = vfs.live_contents(Path::new("/db")).unwrap();
        assert!(
            outcomes.contains(&got),
            "seed {seed}: not durable + a subset of pieces"
        );
        torn_inside_an_op |= !whole_ops.contains(&got);
        seen.insert(got);
    }
    assert!(torn_inside_an_op, "no seed tore a write inside one op");
    assert!(seen.len() >= 16, "only {} distinct outcomes", seen.len());
}

#[test]
fn torn_4096_bytewise_check_on_larger_random_writes() {
    // Too many pieces to enumerate: check every byte against the values it may have.
    let mut rng = SplitMix64::new(99);
    let mut base = vec![0u8; 20_000];
    rng.fill(&mut base);
    let mut ops = Vec::new();
    for i in 0..12u8 {
        let off = rng.below(24_000);
        let len = 1 + rng.below(9000) as usize;
        ops.push(TOp::Write(off, vec![i + 1; len]));
    }
    let mut live = base.clone();
    for op in &ops {
        t_apply(&mut live, op);
    }
    let pieces = atoms(&ops, Some(4096));
    for seed in 0..16 {
        let (vfs, _f) = setup(3, "/db", &base, &ops);
        vfs.crash(CrashMode::Torn { seed, sector: 4096 });
        let got = vfs.live_contents(Path::new("/db")).unwrap();
        assert!(got.len() >= base.len() && got.len() <= live.len());
        let len_ok = got.len() == base.len()
            || pieces.iter().any(|p| match p {
                TOp::Write(off, b) => *off as usize + b.len() == got.len(),
                TOp::SetLen(_) => false,
            });
        assert!(len_ok, "seed {seed}: length {} is no piece end", got.len());
        for (i, &byte) in got.iter().enumerate() {
            let old = base.get(i).copied().unwrap_or(0);
            let from_write = ops.iter().any(|op| match op {
                TOp::Write(off, b) => {
                    let off = *off as usize;
                    i >= off && i < off + b.len() && b[i - off] == byte
                }
                TOp::SetLen(_) => false,
            });
            assert!(
                byte == old || from_write,
                "seed {seed}: byte {i} = {byte} is impossible"
            );
        }
    }
}

#[test]
fn garbage_only_touches_the_sectors_of_pending_writes() {
    let sector = 512u64;
    let mut rng = SplitMix64::new(5);
    let mut base = vec![0u8; 8192];
    rng.fill(&mut base);
    let ops = vec![
        TOp::Write(700, vec![0x11; 100]),   // sector 1
        TOp::Write(3000, vec![0x22; 1500]), // sectors 5..=8
        TOp::Write(9000, vec![0x33; 10]),   // sector 17, past EOF
    ];
    let touched: BTreeSet<u64> = [1, 5, 6, 7, 8, 17].into_iter().collect();
    let mut trashed_some = false;
    let mut results = BTreeSet::new();
    for seed in 0..48 {
        let (vfs, _f) = setup(4, "/db", &base, &ops);
        vfs.crash(CrashMode::Garbage {
            seed,
            sector: sector as u32,
        });
        let got = vfs.live_contents(Path::new("/db")).unwrap();
        assert!(got.len() == base.len() || got.len() == 9010 || got.len() == 18 * 512);
        for (i, &byte) in got.iter().enumerate() {
            let sec = i as u64 / sector;
            if !touched.contains(&sec) {
                let old = base.get(i).copied().unwrap_or(0);
                assert_eq!(
                    byte, old,
                    "seed {seed}: byte {i} outside the written sectors changed"
                );
            }
        }
        // Garbage: a byte in sector 6 that is neither old nor 0x22.
        trashed_some |= (6 * 512..7 * 512).any(|i| got[i] != base[i] && got[i] != 0x22);
        results.insert(got);
    }
    assert!(trashed_some, "no seed trashed a sector");
    assert!(results.len() > 4);
}

#[test]
fn same_seed_same_result_different_seed_differs() {
    let (base, ops) = small_workload();
    for mode in [
        CrashMode::KeepRandom { seed: 42 },
        CrashMode::Torn {
            seed: 42,
            sector: 512,
        },
        CrashMode::Garbage {
            seed: 42,
            sector: 512,
        },
    ] {
        let (a, _fa) = setup(7, "/db", &base, &ops);
        let (b, _fb) = setup(7, "/db", &base, &ops);
        a.crash(mode);
        b.crash(mode);
        assert_eq!(
            a.live_contents(Path::new("/db")),
            b.live_contents(Path::new("/db")),
            "{mode:?}"
        );
    }
    let differs = (0..16).any(|s| {
        let (a, _fa) = setup(7, "/db", &base, &ops);
        let (b, _fb) = setup(7, "/db", &base, &ops);
        a.crash(CrashMode::Garbage {
            seed: s,
            sector: 512,
        });
        b.crash(CrashMode::Garbage {
            seed: s + 1000,
            sector: 512,
        });
        a.live_contents(Path::new("/db")) != b.live_contents(Path::new("/db"))
    });
    assert!(differs);
}

#[test]
fn unsynced_new_file_vanishes_unless_synced_or_dir_synced() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut a = open(&vfs, "/dir/a");
    a.write(&cx, b"aaaa", 0).unwrap();
    let mut b = open(&vfs, "/dir/b");
    b.write(&cx, b"bbbb", 0).unwrap();
    b.sync(&cx, SyncFlags::NORMAL).unwrap(); // first sync also syncs /dir
    assert!(
        vfs.durable_file_exists(Path::new("/dir/a")),
        "dir sync made a's entry durable"
    );
    let mut c = open(&vfs, "/other/c");
    c.write(&cx, b"cccc", 0).unwrap();
    let mut d = open(&vfs, "/other2/d");
    d.write(&cx, b"dddd", 0).unwrap();
    vfs.sync_dir(Path::new("/other2")).unwrap();
    assert!(!vfs.durable_file_exists(Path::new("/other/c")));
    assert_eq!(
        vfs.paths(),
        ["/dir/a", "/dir/b", "/other/c", "/other2/d"]
            .map(std::path::PathBuf::from)
            .to_vec()
    );

    let v2 = vfs.fork_crashed(CrashMode::KeepAll);
    assert!(
        !v2.file_exists(Path::new("/other/c")),
        "unsynced entry must vanish"
    );
    assert_eq!(v2.live_contents(Path::new("/dir/a")).unwrap(), b"aaaa");
    assert_eq!(v2.live_contents(Path::new("/other2/d")).unwrap(), b"dddd");

    vfs.crash(CrashMode::DropAll);
    assert!(!vfs.file_exists(Path::new("/other/c")));
    assert_eq!(
        vfs.live_contents(Path::new("/dir/a")).unwrap(),
        b"",
        "entry durable, data not"
    );
    assert_eq!(vfs.live_contents(Path::new("/dir/b")).unwrap(), b"bbbb");
    assert_eq!(vfs.live_contents(Path::new("/other2/d")).unwrap(), b"");
    let e = vfs.open(&cx, Some(Path::new("/other/c")), RW).unwrap_err();
    assert!(
        matches!(e, FrankenError::CannotOpen { ref path, .. } if path == Path::new("/other/c"))
    );
}

#[test]
fn deletes_without_dir_sync_are_undone_by_a_crash() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    vfs.set_contents(Path::new("/d1/x"), b"xx");
    vfs.set_contents(Path::new("/d2/y"), b"yy");
    vfs.delete(&cx, Path::new("/d1/x"), false).unwrap();
    assert!(!vfs.file_exists(Path::new("/d1/x")));
    assert!(vfs.durable_file_exists(Path::new("/d1/x")));
    // Re-create /x with other contents, unsynced: the crash brings back the old one.
    let mut f = open(&vfs, "/d1/x");
    f.write(&cx, b"new", 0).unwrap();
    drop(f);
    // A directory sync of /d2 does not touch /d1 (it would make the new /d1/x durable).
    vfs.delete(&cx, Path::new("/d2/y"), true).unwrap();
    assert!(!vfs.durable_file_exists(Path::new("/d2/y")));
    let e = vfs.delete(&cx, Path::new("/nope"), false).unwrap_err();
    match e {
        FrankenError::Io { op, source, .. } => {
            assert_eq!(op, "delete");
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    vfs.crash(CrashMode::KeepAll);
    assert_eq!(vfs.live_contents(Path::new("/d1/x")).unwrap(), b"xx");
    assert!(!vfs.file_exists(Path::new("/d2/y")));
}

#[test]
fn dead_handles_fail_and_can_be_dropped() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/db");
    f.write(&cx, b"abc", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    let region = f.shm_map(&cx, 0, 32768, true).unwrap().unwrap();
    region.store_u32(0, 7, std::sync::atomic::Ordering::Relaxed);
    vfs.crash(CrashMode::KeepAll);
    assert!(f.is_dead());
    let mut buf = [0u8; 3];
    for e in [
        f.read(&cx, &mut buf, 0).unwrap_err(),
        f.write(&cx, b"x", 0).unwrap_err(),
        f.sync(&cx, SyncFlags::FULL).unwrap_err(),
        f.file_size(&cx).unwrap_err(),
        f.shm_map(&cx, 0, 32768, false).unwrap_err(),
    ] {
        assert!(matches!(e, FrankenError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("crashed"), "{e}");
    }
    // The shm is discarded: a new opener finds no region 0.
    let mut g = vfs.open(&cx, Some(Path::new("/db")), RW).unwrap().0;
    assert!(g.shm_map(&cx, 0, 32768, false).unwrap().is_none());
    let r2: ShmRegion = g.shm_map(&cx, 0, 32768, true).unwrap().unwrap();
    assert!(!r2.same_memory(&region));
    assert_eq!(r2.load_u32(0, std::sync::atomic::Ordering::Relaxed), 0);
    drop(f);
    assert_eq!(vfs.open_handle_count(), 1);
    assert_eq!(read_all(&g), b"abc");
}

#[test]
fn open_flags_and_special_files() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    assert_eq!(vfs.name(), "memory");
    // Missing without CREATE.
    let e = vfs.open(&cx, Some(Path::new("db")), RW).unwrap_err();
    assert!(matches!(e, FrankenError::CannotOpen { ref path, .. } if path == Path::new("/db")));
    // Invalid flags.
    assert!(
        vfs.open(&cx, Some(Path::new("/db")), VfsOpenFlags::MAIN_DB)
            .is_err()
    );
    let mut f = open(&vfs, "db"); // relative: same file as /db
    f.write(&cx, b"hello", 0).unwrap();
    let g = vfs.open(&cx, Some(Path::new("/./db")), RW).unwrap().0;
    assert_eq!(
        read_all(&g),
        b"hello",
        "a path opened twice is the same file"
    );
    // EXCLUSIVE on an existing file.
    let excl = RWC | VfsOpenFlags::EXCLUSIVE;
    assert!(matches!(
        vfs.open(&cx, Some(Path::new("/db")), excl).unwrap_err(),
        FrankenError::CannotOpen { .. }
    ));
    assert!(vfs.open(&cx, Some(Path::new("/db2")), excl).is_ok());
    // READONLY.
    let ro = VfsOpenFlags::READONLY | VfsOpenFlags::MAIN_DB;
    let mut r = vfs.open(&cx, Some(Path::new("/db")), ro).unwrap().0;
    assert!(matches!(
        r.write(&cx, b"x", 0).unwrap_err(),
        FrankenError::ReadOnly
    ));
    assert!(matches!(
        r.truncate(&cx, 0).unwrap_err(),
        FrankenError::ReadOnly
    ));
    assert_eq!(read_all(&r), b"hello");
    // Anonymous temp file.
    let (mut t, _) = vfs
        .open(&cx, None, VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE)
        .unwrap();
    t.write(&cx, b"temp", 0).unwrap();
    assert_eq!(read_all(&t), b"temp");
    assert!(t.path().is_none());
    // DELETEONCLOSE: unlinked at once, readable through the handle.
    let mut d = vfs
        .open(
            &cx,
            Some(Path::new("/tmpfile")),
            RWC | VfsOpenFlags::DELETEONCLOSE,
        )
        .unwrap()
        .0;
    d.write(&cx, b"gone", 0).unwrap();
    assert!(!vfs.file_exists(Path::new("/tmpfile")));
    assert_eq!(read_all(&d), b"gone");
    drop(t);
    drop(d);
    assert_eq!(
        vfs.paths(),
        vec![
            std::path::PathBuf::from("/db"),
            std::path::PathBuf::from("/db2")
        ]
    );
    // access and full_pathname.
    assert!(
        vfs.access(&cx, Path::new("/db"), fsqlite_types::AccessFlags::EXISTS)
            .unwrap()
    );
    assert!(
        !vfs.access(&cx, Path::new("/zz"), fsqlite_types::AccessFlags::EXISTS)
            .unwrap()
    );
    assert_eq!(
        vfs.full_pathname(&cx, Path::new("a/../b/./c")).unwrap(),
        Path::new("/b/c")
    );
    assert!(vfs.full_pathname(&cx, Path::new("")).is_err());
}

#[test]
fn delete_while_open_keeps_the_inode_for_the_handle() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    let mut f = open(&vfs, "/wal");
    f.write(&cx, b"frames", 0).unwrap();
    vfs.delete(&cx, Path::new("/wal"), false).unwrap();
    assert_eq!(read_all(&f), b"frames");
    f.write(&cx, b"more", 6).unwrap();
    assert!(vfs.open(&cx, Some(Path::new("/wal")), RW).is_err());
    let g = open(&vfs, "/wal");
    assert_eq!(read_all(&g), b"", "a new file, not the unlinked one");
}

#[test]
fn fork_leaves_the_original_alone_and_randomness_is_seeded() {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(11);
    let mut f = open(&vfs, "/db");
    f.write(&cx, b"one", 0).unwrap();
    f.sync(&cx, SyncFlags::FULL).unwrap();
    f.write(&cx, b"two", 0).unwrap();
    let forked = vfs.fork_crashed(CrashMode::DropAll);
    assert_eq!(forked.live_contents(Path::new("/db")).unwrap(), b"one");
    assert_eq!(vfs.live_contents(Path::new("/db")).unwrap(), b"two");
    assert!(!f.is_dead());
    f.sync(&cx, SyncFlags::FULL).unwrap();
    assert_eq!(forked.live_contents(Path::new("/db")).unwrap(), b"one");

    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    MemoryVfs::with_seed(5).randomness(&mut a);
    MemoryVfs::with_seed(5).randomness(&mut b);
    assert_eq!(a, b);
    MemoryVfs::with_seed(6).randomness(&mut b);
    assert_ne!(a, b);
}

/// A harness-style crash/reopen loop; prints the rate (the WAL sweeps need > 10^4/s).
#[test]
fn crash_reopen_cycles_are_cheap() {
    let cx = Cx::new();
    let vfs = MemoryVfs::new();
    vfs.set_contents(Path::new("/db"), &[1u8; 4096]);
    let cycles = 20_000u32;
    let start = Instant::now();
    for i in 0..cycles {
        let mut f = vfs.open(&cx, Some(Path::new("/db")), RW).unwrap().0;
        let mut w = open(&vfs, "/db-wal");
        w.write(&cx, &[i as u8; 100], 32).unwrap();
        w.sync(&cx, SyncFlags::FULL).unwrap();
        w.write(&cx, &[0xee; 200], 132).unwrap();
        f.write(&cx, &[2u8; 100], 0).unwrap();
        vfs.crash(CrashMode::Torn {
            seed: u64::from(i),
            sector: 512,
        });
        let w2 = vfs.open(&cx, Some(Path::new("/db-wal")), RW).unwrap().0;
        let mut buf = [0u8; 100];
        assert_eq!(w2.read(&cx, &mut buf, 32).unwrap(), 100);
        assert_eq!(buf, [i as u8; 100]);
        let f2 = vfs.open(&cx, Some(Path::new("/db")), RW).unwrap().0;
        let mut b1 = [0u8; 1];
        f2.read(&cx, &mut b1, 4000).unwrap();
        assert_eq!(b1, [1]);
        drop((f, w, w2, f2));
        let mut w3 = vfs.open(&cx, Some(Path::new("/db-wal")), RW).unwrap().0;
        w3.truncate(&cx, 0).unwrap();
        w3.sync(&cx, SyncFlags::FULL).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "crash/reopen cycles: {cycles} in {secs:.3} s = {:.0}/s (debug build: {})",
        f64::from(cycles) / secs,
        cfg!(debug_assertions)
    );
}

// ---------------------------------------------------------------------------------------
// Model-based proptest
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum MOp {
    Write { off: u64, len: usize, byte: u8 },
    Truncate { len: u64 },
    Sync,
    Read { off: u64, len: usize },
    CrashDrop,
    CrashKeep,
}

fn mop() -> impl Strategy<Value = MOp> {
    prop_oneof![
        6 => (0u64..3000, 0usize..700, any::<u8>())
            .prop_map(|(off, len, byte)| MOp::Write { off, len, byte }),
        2 => (0u64..4000).prop_map(|len| MOp::Truncate { len }),
        2 => Just(MOp::Sync),
        3 => (0u64..4000, 0usize..800).prop_map(|(off, len)| MOp::Read { off, len }),
        1 => Just(MOp::CrashDrop),
        1 => Just(MOp::CrashKeep),
    ]
}

/// The model: live and durable images plus "is the directory entry durable".
#[derive(Default)]
struct Model {
    live: Vec<u8>,
    durable: Vec<u8>,
    entry_durable: bool,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_a_simple_model(ops in proptest::collection::vec(mop(), 1..60)) {
        let cx = Cx::new();
        let vfs = MemoryVfs::new();
        let p = Path::new("/m");
        let mut f = open(&vfs, "/m");
        let mut m = Model::default();
        for op in &ops {
            match *op {
                MOp::Write { off, len, byte } => {
                    let bytes = vec![byte; len];
                    f.write(&cx, &bytes, off).unwrap();
                    if len > 0 {
                        t_write(&mut m.live, off, &bytes);
                    }
                }
                MOp::Truncate { len } => {
                    f.truncate(&cx, len).unwrap();
                    m.live.resize(len as usize, 0);
                }
                MOp::Sync => {
                    f.sync(&cx, SyncFlags::FULL).unwrap();
                    m.durable.clone_from(&m.live);
                    m.entry_durable = true;
                }
                MOp::Read { off, len } => {
                    let mut buf = vec![0xffu8; len];
                    let n = f.read(&cx, &mut buf, off).unwrap();
                    let off = off as usize;
                    let want_n = m.live.len().saturating_sub(off).min(len);
                    prop_assert_eq!(n, want_n);
                    if want_n > 0 {
                        prop_assert_eq!(&buf[..n], &m.live[off..off + n]);
                    }
                    prop_assert!(buf[n..].iter().all(|&b| b == 0), "not zero-filled");
                }
                MOp::CrashDrop | MOp::CrashKeep => {
                    let keep = matches!(op, MOp::CrashKeep);
                    vfs.crash(if keep { CrashMode::KeepAll } else { CrashMode::DropAll });
                    prop_assert!(f.is_dead());
                    if m.entry_durable {
                        if keep {
                            m.durable.clone_from(&m.live);
                        } else {
                            m.live.clone_from(&m.durable);
                        }
                    } else {
                        prop_assert!(!vfs.file_exists(p));
                        m = Model::default();
                    }
                    f = open(&vfs, "/m");
                }
            }
            prop_assert_eq!(f.file_size(&cx).unwrap(), m.live.len() as u64);
            prop_assert_eq!(vfs.live_contents(p).unwrap(), m.live.clone());
            let durable = vfs.durable_contents(p);
            if m.entry_durable {
                prop_assert_eq!(durable.unwrap(), m.durable.clone());
            } else {
                prop_assert!(durable.is_none());
            }
        }
    }
}
