//! placeholder, replaced by the memory VFS implementation.
/// In-memory VFS (being implemented).
#[derive(Debug, Default)]
pub struct MemoryVfs;
