//! The poison-recovering lock, the closed flag, the longest duration.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::error::{Error, Result};

/// The longest timeout or interval an adapter honours: longer settings are
/// capped to it (a century), because clients add them to `Instant::now()`,
/// which panics past the clock's range.
pub const LONGEST_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Locks `mutex`, recovering it if a thread panicked while holding it: the
/// adapters' locks guard plain bookkeeping that a panic cannot leave half
/// written, and a poisoned lock must not take every later call down with it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a transport has been closed; later calls fail with
/// [`Error::Closed`].
#[derive(Debug, Default)]
pub struct ClosedFlag(AtomicBool);

impl ClosedFlag {
    /// Open.
    pub fn new() -> ClosedFlag {
        ClosedFlag::default()
    }

    /// Marks it closed; true for the call that closed it (the one that
    /// releases the connections).
    pub fn close(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    /// Whether it is closed.
    pub fn is_closed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// `Err(Error::Closed)` once closed.
    pub fn check(&self, backend: &'static str) -> Result<()> {
        if self.is_closed() {
            Err(Error::Closed { backend })
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closed_flag_closes_once() {
        let flag = ClosedFlag::new();
        assert!(flag.check("t").is_ok());
        assert!(flag.close());
        assert!(!flag.close());
        assert!(matches!(
            flag.check("t"),
            Err(Error::Closed { backend: "t" })
        ));
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().unwrap();
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
