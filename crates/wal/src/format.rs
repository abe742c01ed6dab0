//! format (being implemented).
