//! Prints what a caller learns from a few `FrankenError`s: the sentence, SQLite's primary
//! and extended result codes, whether a retry may help, and the suggested next step.
//!
//! `cargo run -p fsqlite-error --example codes`

use std::io;

use fsqlite_error::{FrankenError, Result};

/// A stand-in for an fsqlite call that failed.
fn commit_page(which: usize) -> Result<u32> {
    Err(match which {
        0 => FrankenError::BusyRecovery,
        1 => FrankenError::ConcurrentConflict {
            item: "page 7".to_owned(),
            frame: 42,
            snapshot: 40,
        },
        2 => FrankenError::ConcurrentUnavailable,
        3 => FrankenError::wal_corrupt("frame 12 has a bad checksum"),
        4 => FrankenError::io(
            "fsync",
            Some("app.db-wal".into()),
            io::Error::from_raw_os_error(5), // EIO
        ),
        _ => FrankenError::io(
            "write",
            Some("app.db-wal".into()),
            io::Error::from(io::ErrorKind::StorageFull), // becomes Full
        ),
    })
}

fn main() {
    for which in 0..6 {
        let Err(e) = commit_page(which) else {
            continue;
        };
        println!("{e}");
        println!(
            "  code {:?} ({}), extended {}, transient: {}",
            e.error_code(),
            e.error_code().as_i32(),
            e.extended_code(),
            e.is_transient()
        );
        match e.suggestion() {
            Some(s) => println!("  suggestion: {s}"),
            None => println!("  suggestion: (none)"),
        }
        if let Some(source) = std::error::Error::source(&e) {
            println!("  OS error: {source}");
        }
    }
}
