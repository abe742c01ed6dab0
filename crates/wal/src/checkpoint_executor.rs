//! checkpoint_executor (being implemented).
