//! Page numbers and sizes as SQLite encodes them, SQLite's flag values, and a `Cx` that a
//! long loop polls: cancelled from another thread, or past its deadline.
//!
//! `cargo run -p fsqlite-types --example pages_and_cx`

use std::thread;
use std::time::{Duration, Instant};

use fsqlite_types::{Cx, PageNumber, PageSize, SyncFlags, VfsOpenFlags};

/// A long scan that checks its context between pages, as recovery and checkpoints do.
fn scan(cx: &Cx, pages: u32) -> fsqlite_error::Result<u32> {
    let mut done = 0;
    for n in 1..=pages {
        cx.checkpoint()?;
        let _page = PageNumber::new(n).expect("page numbers start at 1");
        thread::sleep(Duration::from_millis(1));
        done = n;
    }
    Ok(done)
}

fn main() {
    println!("PageNumber::new(0) = {:?}", PageNumber::new(0));
    println!(
        "PageNumber::try_new(0) = {:?}",
        PageNumber::try_new(0).map_err(|e| e.to_string())
    );
    for size in [512, 4096, 65536, 1000] {
        match PageSize::new(size) {
            Some(p) => println!(
                "page size {p}: header/-shm encoding {} (decodes to {:?})",
                p.to_u16_encoding(),
                PageSize::from_u16_encoding(p.to_u16_encoding()).map(PageSize::get)
            ),
            None => println!("page size {size}: not a power of two in 512..=65536"),
        }
    }
    let open = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
    println!("open flags {open:?} = {:#x}", open.bits());
    println!(
        "sync FULL = {:#x}, FULL|DATAONLY = {:#x}",
        SyncFlags::FULL.bits(),
        (SyncFlags::FULL | SyncFlags::DATAONLY).bits()
    );

    // Cancelled from another thread: clones share one flag.
    let cx = Cx::new();
    let canceller = cx.clone();
    let t = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        canceller.cancel();
    });
    match scan(&cx, 10_000) {
        Ok(n) => println!("scan finished {n} pages"),
        Err(e) => println!("cancelled scan: {e} (code {:?})", e.error_code()),
    }
    t.join().expect("canceller thread");

    // Past a deadline.
    let cx = Cx::new().with_deadline(Instant::now() + Duration::from_millis(15));
    match scan(&cx, 10_000) {
        Ok(n) => println!("scan finished {n} pages"),
        Err(e) => println!("scan past its deadline: {e}"),
    }
}
