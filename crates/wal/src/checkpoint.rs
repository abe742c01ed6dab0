//! checkpoint (being implemented).
