//! The object-storage layer of fsqlite's replication: a blocking S3 facade ([`Store`]) and
//! the Litestream 0.5 replica layout on top of it ([`replica`]).

#![forbid(unsafe_code)]

pub mod replica;
mod store;
#[cfg(feature = "test-support")]
pub mod testserver;

pub use store::{S3Config, Store, is_already_exists};
