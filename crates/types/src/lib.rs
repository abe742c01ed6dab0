//! # fsqlite-types
//!
//! The small value types every fsqlite crate shares: [`PageNumber`], [`PageSize`], SQLite's
//! flag sets ([`flags`]), [`LockLevel`], the [`cx::Cx`] context that every I/O call takes,
//! and [`sync_primitives`], the one place that picks concurrency primitives (std and
//! parking_lot normally, loom's under `--cfg loom`).
//!
//! ```
//! use fsqlite_types::{PageNumber, PageSize};
//! let p = PageNumber::new(7).unwrap();
//! assert_eq!(p.get(), 7);
//! assert!(PageNumber::new(0).is_none());
//! assert_eq!(PageSize::new(65536).unwrap().get(), 65536);
//! assert!(PageSize::new(1000).is_none());
//! ```

// The README's examples are compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod cx;
pub mod flags;
pub mod sync_primitives;

use std::fmt;
use std::num::NonZeroU32;

use fsqlite_error::{FrankenError, Result};

pub use cx::Cx;
pub use flags::{AccessFlags, SyncFlags, VfsOpenFlags};

/// A database page number: 1-based, never zero.
///
/// ```
/// use fsqlite_types::PageNumber;
///
/// let p = PageNumber::new(42).expect("not zero");
/// assert_eq!(p.get(), 42);
/// assert_eq!(p.to_string(), "42");
/// assert!(PageNumber::ONE < p);
/// assert_eq!(PageNumber::new(0), None); // page numbers start at 1
/// let err = PageNumber::try_new(0).unwrap_err();
/// assert_eq!(err.error_code(), fsqlite_error::ErrorCode::Range);
/// // The niche: an Option<PageNumber> is as small as a u32.
/// assert_eq!(size_of::<Option<PageNumber>>(), 4);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageNumber(NonZeroU32);

impl PageNumber {
    /// Page 1, the page holding the database header.
    pub const ONE: PageNumber = match NonZeroU32::new(1) {
        Some(n) => PageNumber(n),
        None => unreachable!(),
    };

    /// `None` for zero.
    pub const fn new(n: u32) -> Option<Self> {
        match NonZeroU32::new(n) {
            Some(n) => Some(Self(n)),
            None => None,
        }
    }

    /// The page number as a `u32`.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// Like [`PageNumber::new`] but returns a clear error for zero.
    pub fn try_new(n: u32) -> Result<Self> {
        Self::new(n).ok_or_else(|| FrankenError::out_of_range("page number", 0))
    }
}

impl fmt::Display for PageNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A page size: a power of two in `512..=65536`.
///
/// ```
/// use fsqlite_types::PageSize;
///
/// assert_eq!(PageSize::default().get(), 4096);
/// assert!(PageSize::new(1000).is_none());
/// let big = PageSize::new(65536).unwrap();
/// assert_eq!(big.to_u16_encoding(), 1); // how the database header and -shm store it
/// assert_eq!(PageSize::from_u16_encoding(1), Some(big));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageSize(u32);

impl PageSize {
    /// The smallest page size SQLite allows.
    pub const MIN: u32 = 512;
    /// The largest page size SQLite allows.
    pub const MAX: u32 = 65536;
    /// SQLite's default page size.
    pub const DEFAULT: PageSize = PageSize(4096);

    /// `None` unless `n` is a power of two in `512..=65536`.
    pub const fn new(n: u32) -> Option<Self> {
        if n >= Self::MIN && n <= Self::MAX && n.is_power_of_two() {
            Some(Self(n))
        } else {
            None
        }
    }

    /// Like [`PageSize::new`] but returns a clear error.
    pub fn try_new(n: u32) -> Result<Self> {
        Self::new(n).ok_or_else(|| {
            FrankenError::out_of_range("page size (must be a power of two in 512..=65536)", n)
        })
    }

    /// The size in bytes.
    pub const fn get(self) -> u32 {
        self.0
    }

    /// The size in bytes as `usize`.
    pub const fn bytes(self) -> usize {
        self.0 as usize
    }

    /// The 16-bit encoding used by the database header and the WAL-index (65536 → 1).
    pub const fn to_u16_encoding(self) -> u16 {
        ((self.0 & 0xff00) | (self.0 >> 16)) as u16
    }

    /// Decodes the 16-bit encoding (1 → 65536); `None` if the result is not a valid size.
    pub const fn from_u16_encoding(v: u16) -> Option<Self> {
        if v == 1 {
            return Some(Self(65536));
        }
        // Any other value must itself be a valid size (512..=32768); stray bits such as
        // those of 1000 are rejected rather than masked away.
        Self::new(v as u32)
    }
}

impl Default for PageSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// SQLite's database-file lock levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum LockLevel {
    #[default]
    None,
    Shared,
    Reserved,
    Pending,
    Exclusive,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_rules() {
        for ok in [512, 1024, 4096, 32768, 65536] {
            assert_eq!(PageSize::new(ok).map(PageSize::get), Some(ok));
        }
        for bad in [0, 1, 256, 511, 513, 1000, 131_072, u32::MAX] {
            assert!(PageSize::new(bad).is_none(), "{bad}");
            assert!(PageSize::try_new(bad).is_err());
        }
    }

    #[test]
    fn page_size_u16_encoding() {
        let p = PageSize::new(65536).unwrap();
        assert_eq!(p.to_u16_encoding(), 1);
        assert_eq!(PageSize::from_u16_encoding(1), Some(p));
        for s in [512u32, 1024, 2048, 4096, 8192, 16384, 32768] {
            let p = PageSize::new(s).unwrap();
            assert_eq!(p.to_u16_encoding() as u32, s);
            assert_eq!(PageSize::from_u16_encoding(p.to_u16_encoding()), Some(p));
        }
        assert_eq!(PageSize::from_u16_encoding(0), None);
        assert_eq!(PageSize::from_u16_encoding(100), None);
        assert_eq!(PageSize::from_u16_encoding(1000), None);
        assert_eq!(PageSize::from_u16_encoding(513), None);
    }

    #[test]
    fn page_number() {
        assert!(PageNumber::new(0).is_none());
        assert_eq!(PageNumber::ONE.get(), 1);
        assert_eq!(
            PageNumber::new(u32::MAX).unwrap().to_string(),
            u32::MAX.to_string()
        );
        assert!(PageNumber::try_new(0).is_err());
    }
}
