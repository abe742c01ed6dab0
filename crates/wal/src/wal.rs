//! wal (being implemented).
