//! The reference WAL generator and scanner the harnesses check the library against:
//! three commits encoded by `walgen`, one frame then damaged, and the reference scan's
//! verdict before and after.
//!
//! `cargo run -p fsqlite-reliability --example walgen`

use fsqlite_reliability::walgen::{self, GenFrame, WalSpec};

fn main() {
    let spec = WalSpec {
        page_size: 1024,
        big_endian: false,
        salt: [0x1234_5678, 0x9abc_def0],
        checkpoint_seq: 0,
        version: walgen::VERSION,
    };
    let frames: Vec<GenFrame> = (1..=3u32)
        .map(|i| GenFrame {
            page: i,
            db_size: i,
            data: vec![i as u8; 1024],
        })
        .collect();
    let mut wal = walgen::encode(&spec, &frames);
    let before = walgen::scan(&wal);
    println!(
        "intact: mxFrame {}, nPage {}",
        before.mx_frame, before.n_page
    );
    assert_eq!(before.mx_frame, 3);
    // Flip a byte in the second frame's page: the valid prefix ends after frame 1.
    let second_page = 32 + (24 + 1024) + 24;
    wal[second_page] ^= 0xff;
    let after = walgen::scan(&wal);
    println!(
        "frame 2 damaged: mxFrame {}, nPage {}",
        after.mx_frame, after.n_page
    );
    assert_eq!(after.mx_frame, 1);
}
