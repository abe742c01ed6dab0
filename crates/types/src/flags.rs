//! SQLite's flag sets with SQLite's numeric values.

use bitflags::bitflags;
use fsqlite_error::{FrankenError, Result};

bitflags! {
    /// `xSync` flags (`SQLITE_SYNC_*`). `FULL` without `DATAONLY` is a real `fsync`;
    /// with `DATAONLY` it is `fdatasync`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SyncFlags: u32 {
        const NORMAL = 0x02;
        const FULL = 0x03;
        const DATAONLY = 0x10;
    }
}

impl SyncFlags {
    /// True when this sync must also flush metadata (a full `fsync`, never `fdatasync`).
    pub const fn is_full_fsync(self) -> bool {
        !self.contains(Self::DATAONLY)
    }
}

bitflags! {
    /// `xOpen` flags (`SQLITE_OPEN_*`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VfsOpenFlags: u32 {
        const READONLY = 0x0000_0001;
        const READWRITE = 0x0000_0002;
        const CREATE = 0x0000_0004;
        const DELETEONCLOSE = 0x0000_0008;
        const EXCLUSIVE = 0x0000_0010;
        const AUTOPROXY = 0x0000_0020;
        const URI = 0x0000_0040;
        const MEMORY = 0x0000_0080;
        const MAIN_DB = 0x0000_0100;
        const TEMP_DB = 0x0000_0200;
        const TRANSIENT_DB = 0x0000_0400;
        const MAIN_JOURNAL = 0x0000_0800;
        const TEMP_JOURNAL = 0x0000_1000;
        const SUBJOURNAL = 0x0000_2000;
        const SUPER_JOURNAL = 0x0000_4000;
        const NOMUTEX = 0x0000_8000;
        const FULLMUTEX = 0x0001_0000;
        const SHAREDCACHE = 0x0002_0000;
        const PRIVATECACHE = 0x0004_0000;
        const WAL = 0x0008_0000;
        const NOFOLLOW = 0x0100_0000;
        const EXRESCODE = 0x0200_0000;
    }
}

impl VfsOpenFlags {
    /// Rejects combinations SQLite's unix VFS rejects: exactly one of READONLY/READWRITE,
    /// CREATE only with READWRITE, EXCLUSIVE only with CREATE, no unknown bits.
    pub fn validate(self) -> Result<Self> {
        if self.bits() & !Self::all().bits() != 0 {
            return Err(FrankenError::out_of_range(
                "open flags (unknown bits)",
                format!("{:#x}", self.bits()),
            ));
        }
        let ro = self.contains(Self::READONLY);
        let rw = self.contains(Self::READWRITE);
        if ro == rw {
            return Err(FrankenError::out_of_range(
                "open flags (exactly one of READONLY and READWRITE is required)",
                format!("{self:?}"),
            ));
        }
        if self.contains(Self::CREATE) && !rw {
            return Err(FrankenError::out_of_range(
                "open flags (CREATE needs READWRITE)",
                format!("{self:?}"),
            ));
        }
        if self.contains(Self::EXCLUSIVE) && !self.contains(Self::CREATE) {
            return Err(FrankenError::out_of_range(
                "open flags (EXCLUSIVE needs CREATE)",
                format!("{self:?}"),
            ));
        }
        Ok(self)
    }
}

bitflags! {
    /// `xAccess` flags (`SQLITE_ACCESS_*`). `EXISTS` is the empty set, as in SQLite (0).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AccessFlags: u32 {
        const EXISTS = 0;
        const READWRITE = 1;
        const READ = 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_sqlite() {
        assert_eq!(SyncFlags::NORMAL.bits(), 2);
        assert_eq!(SyncFlags::FULL.bits(), 3);
        assert_eq!(SyncFlags::DATAONLY.bits(), 0x10);
        assert!(SyncFlags::FULL.is_full_fsync());
        assert!(!(SyncFlags::FULL | SyncFlags::DATAONLY).is_full_fsync());
        assert_eq!(VfsOpenFlags::WAL.bits(), 0x0008_0000);
        assert_eq!(VfsOpenFlags::MAIN_DB.bits(), 0x100);
        assert_eq!(AccessFlags::READWRITE.bits(), 1);
    }

    #[test]
    fn validate_rejects_bad_combinations() {
        let ok = VfsOpenFlags::READWRITE | VfsOpenFlags::CREATE | VfsOpenFlags::MAIN_DB;
        assert!(ok.validate().is_ok());
        assert!(VfsOpenFlags::MAIN_DB.validate().is_err());
        assert!(
            (VfsOpenFlags::READONLY | VfsOpenFlags::READWRITE)
                .validate()
                .is_err()
        );
        assert!(
            (VfsOpenFlags::READONLY | VfsOpenFlags::CREATE)
                .validate()
                .is_err()
        );
        assert!(
            (VfsOpenFlags::READWRITE | VfsOpenFlags::EXCLUSIVE)
                .validate()
                .is_err()
        );
        assert!(
            VfsOpenFlags::from_bits_retain(0x8000_0002)
                .validate()
                .is_err()
        );
    }
}
