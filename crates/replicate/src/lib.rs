//! # fsqlite-replicate
//!
//! The format layer of fsqlite's replication: [`ltx`] reads and writes LTX files, the
//! transaction-file format that Litestream 0.5.x stores in its replicas.
//!
//! ```
//! use fsqlite_replicate::ltx::{self, LtxHeader, Page};
//!
//! let page_size = 512;
//! let pages = vec![Page { pgno: 1, data: vec![7; page_size as usize] }];
//! let header = LtxHeader::snapshot(page_size, 1, 1, 0);
//! let post = ltx::checksum_pages(&pages);
//! let bytes = ltx::encode(&header, &pages, post).unwrap();
//! let file = ltx::decode(&bytes).unwrap();
//! assert_eq!(file.pages, pages);
//!
//! let mut db = Vec::new();
//! ltx::apply(&mut db, &file).unwrap();
//! assert_eq!(db, vec![7; 512]);
//! ```

#![forbid(unsafe_code)]

pub mod follow;
pub mod ltx;
pub mod replica;
pub mod sync;

/// The body of the `ltx_decode` fuzz target: decodes `data`; if it decodes, encodes the
/// result again, decodes that, and checks that both decodings agree.
///
/// It panics only when that check fails (a bug in this crate), never on bad input.
pub fn fuzz_decode(data: &[u8]) {
    let Ok(file) = ltx::decode(data) else {
        return;
    };
    let again = match ltx::encode_file(&file) {
        Ok(bytes) => bytes,
        Err(e) => panic!("a decoded LTX file failed to re-encode: {e}"),
    };
    let second = match ltx::decode(&again) {
        Ok(f) => f,
        Err(e) => panic!("a re-encoded LTX file failed to decode: {e}"),
    };
    assert_eq!(file.header, second.header, "header changed in a round trip");
    assert_eq!(file.pages, second.pages, "pages changed in a round trip");
    assert_eq!(
        file.post_apply_checksum, second.post_apply_checksum,
        "post-apply checksum changed in a round trip"
    );
    // A second encoding of the same content is byte-identical (our encoder is deterministic).
    match ltx::encode_file(&second) {
        Ok(third) => assert_eq!(again, third, "encoding is not deterministic"),
        Err(e) => panic!("a twice-decoded LTX file failed to re-encode: {e}"),
    }
}
