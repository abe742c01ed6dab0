//! The context every I/O call takes: cancellation and an optional deadline.
//!
//! `Cx` deliberately uses `std` atomics even under `--cfg loom`: cancellation is not part
//! of any modelled protocol, and a `Cx` must be constructible outside a loom model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use fsqlite_error::{FrankenError, Result};

/// Cancellation flag plus optional deadline; cheap to clone (clones share the flag).
///
/// ```
/// use fsqlite_types::Cx;
/// let cx = Cx::new();
/// let child = cx.clone();
/// assert!(cx.checkpoint().is_ok());
/// child.cancel();
/// assert!(cx.is_cancelled());
/// assert!(cx.checkpoint().is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct Cx {
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Cx {
    /// A fresh context: not cancelled, no deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same cancellation flag with a deadline.
    #[must_use]
    pub fn with_deadline(&self, deadline: Instant) -> Self {
        Self {
            cancelled: Arc::clone(&self.cancelled),
            deadline: Some(deadline),
        }
    }

    /// Cancels this context and every clone of it.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// True once cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the deadline (`None` without a deadline).
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// `Err(Interrupted)` once cancelled or past the deadline. Long loops call this
    /// between pages.
    pub fn checkpoint(&self) -> Result<()> {
        if self.is_cancelled() {
            return Err(FrankenError::Interrupted);
        }
        if let Some(d) = self.deadline
            && Instant::now() >= d
        {
            return Err(FrankenError::Interrupted);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_interrupts() {
        let cx = Cx::new().with_deadline(
            Instant::now()
                .checked_sub(Duration::from_millis(1))
                .unwrap(),
        );
        assert!(matches!(cx.checkpoint(), Err(FrankenError::Interrupted)));
        let cx = Cx::new().with_deadline(Instant::now() + Duration::from_mins(1));
        assert!(cx.checkpoint().is_ok());
        assert!(cx.remaining().unwrap() > Duration::from_secs(1));
    }

    #[test]
    fn clones_share_cancellation() {
        let a = Cx::new();
        let b = a.with_deadline(Instant::now() + Duration::from_mins(1));
        b.cancel();
        assert!(a.is_cancelled());
    }
}
