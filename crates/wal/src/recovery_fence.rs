//! recovery_fence (being implemented).
