//! cargo-fuzz target `ltx_decode`: the body is `fsqlite_reliability::fuzz_bodies::ltx_decode`
//! (`fsqlite_replicate::fuzz_decode`: decode an LTX file; whatever decodes re-encodes to
//! the same content, deterministically; nothing panics).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fsqlite_reliability::fuzz_bodies::ltx_decode(data);
});
