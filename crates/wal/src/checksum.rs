//! checksum (being implemented).
