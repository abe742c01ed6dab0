//! placeholder, replaced by the unix VFS implementation.
/// Unix VFS (being implemented).
#[derive(Debug, Default)]
pub struct UnixVfs;
