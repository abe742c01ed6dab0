//! cargo-fuzz target `wal_recover_raw`: the body is `fsqlite_reliability::fuzz_bodies::wal_recover_raw` (see
//! its module doc for the input format and the properties checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsqlite_reliability::fuzz_bodies::wal_recover_raw(data);
});
