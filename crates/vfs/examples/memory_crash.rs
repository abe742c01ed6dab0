//! Simulated power loss on `MemoryVfs`: synced bytes survive every crash mode, unsynced
//! ones survive some modes, in part or not at all; a failed fsync drops the pending
//! writes (as Linux does); a crash point makes every later operation fail.
//!
//! `cargo run -p fsqlite-vfs --example memory_crash`

use std::path::Path;

use fsqlite_error::Result;
use fsqlite_types::{Cx, SyncFlags, VfsOpenFlags};
use fsqlite_vfs::{CrashMode, Fault, FaultOp, FaultRepeat, MemoryVfs, Vfs, VfsFile};

const SECTOR: usize = 512;

/// How many sectors of `bytes` hold `new` (the unsynced version) rather than `old`.
fn describe(bytes: Option<&[u8]>) -> String {
    match bytes {
        None => "file gone".to_owned(),
        Some(b) => {
            let new = b
                .chunks(SECTOR)
                .filter(|s| s.iter().all(|&x| x == 2))
                .count();
            let old = b
                .chunks(SECTOR)
                .filter(|s| s.iter().all(|&x| x == 1))
                .count();
            format!(
                "{} bytes: {old} old sectors, {new} new sectors, {} other",
                b.len(),
                b.len().div_ceil(SECTOR) - old - new
            )
        }
    }
}

fn main() -> Result<()> {
    let cx = Cx::new();
    let vfs = MemoryVfs::with_seed(7);
    let path = Path::new("/app.db");
    let flags = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    let (mut f, _) = vfs.open(&cx, Some(path), flags)?;

    // Eight sectors of 1s, synced; then the same eight sectors rewritten with 2s, not synced.
    f.write(&cx, &[1u8; 8 * SECTOR], 0)?;
    f.sync(&cx, SyncFlags::FULL)?;
    f.write(&cx, &[2u8; 8 * SECTOR], 0)?;
    println!(
        "before the crash: {} pending op(s)",
        vfs.pending_op_count(path)
    );
    println!("  live    {}", describe(vfs.live_contents(path).as_deref()));
    println!(
        "  durable {}",
        describe(vfs.durable_contents(path).as_deref())
    );

    // One damage variant per mode, each on a copy of the disk.
    let modes = [
        CrashMode::DropAll,
        CrashMode::KeepAll,
        CrashMode::KeepRandom { seed: 1 },
        CrashMode::Torn {
            seed: 1,
            sector: SECTOR as u32,
        },
        CrashMode::Garbage {
            seed: 3,
            sector: SECTOR as u32,
        },
    ];
    for mode in modes {
        let after = vfs.fork_crashed(mode);
        println!(
            "after {mode:?}: {}",
            describe(after.live_contents(path).as_deref())
        );
    }

    // A real crash of this VFS: the old handle is dead, a new one sees the survivors.
    vfs.crash(CrashMode::Torn {
        seed: 9,
        sector: SECTOR as u32,
    });
    let mut buf = [0u8; 16];
    match f.read(&cx, &mut buf, 0) {
        Ok(_) => println!("the old handle still reads (unexpected)"),
        Err(e) => println!("old handle after the crash: {e}"),
    }
    drop(f);
    let (mut f, _) = vfs.open(&cx, Some(path), flags)?;
    println!("reopened: {}", describe(vfs.live_contents(path).as_deref()));

    // fsyncgate: a failed sync discards the pending writes; the file is back at durable.
    vfs.inject(Fault::fail(FaultOp::Sync, 1, FaultRepeat::Once));
    f.write(&cx, &[2u8; SECTOR], 0)?;
    match f.sync(&cx, SyncFlags::FULL) {
        Ok(()) => println!("sync succeeded (unexpected)"),
        Err(e) => println!("injected sync failure: {e}"),
    }
    println!(
        "  after the failed sync: {}",
        describe(vfs.live_contents(path).as_deref())
    );

    // A crash point: operation k and every later one fail until crash().
    vfs.set_crash_at_op(vfs.op_count() + 2);
    let results: Vec<bool> = (0..4)
        .map(|i| f.write(&cx, &[2u8; SECTOR], (i * SECTOR) as u64).is_ok())
        .collect();
    println!(
        "writes around the crash point succeeded: {results:?} (crashed at op {:?})",
        vfs.crashed_at()
    );
    vfs.crash(CrashMode::DropAll);
    Ok(())
}
