//! cargo-fuzz target `wal_recover_struct`: the body is `fsqlite_reliability::fuzz_bodies::wal_recover_struct` (see
//! its module doc for the input format and the properties checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsqlite_reliability::fuzz_bodies::wal_recover_struct(data);
});
