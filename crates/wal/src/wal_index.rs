//! wal_index (being implemented).
