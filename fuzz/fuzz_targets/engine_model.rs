//! cargo-fuzz target `engine_model`: the body is `fsqlite_reliability::fuzz_bodies::engine_model` (see
//! its module doc for the input format and the properties checked).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsqlite_reliability::fuzz_bodies::engine_model(data);
});
