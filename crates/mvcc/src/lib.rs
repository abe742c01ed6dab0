//! fsqlite-mvcc
