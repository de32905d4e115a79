//! Exponential back-off for reconnect and retry loops.

use std::time::Duration;

/// Delays that double from `first` up to `max` after each failure, and start
/// over on [`reset`](Backoff::reset) once an attempt succeeded.
///
/// ```
/// use std::time::Duration;
/// use hydratecache_core::adapter::Backoff;
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(200));
/// assert_eq!(backoff.next_delay(), Duration::from_millis(300));
/// assert_eq!(backoff.failures(), 3);
/// backoff.reset();
/// assert_eq!(backoff.next_delay(), Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Starting at `first`, never above `max` (raised to `first` if lower).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            failures: 0,
        }
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.peek();
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The delay [`next_delay`](Self::next_delay) would return, without
    /// counting a failure.
    pub fn peek(&self) -> Duration {
        // 2^16 times `first` is past any sensible `max`; capping the exponent
        // keeps the multiplication from overflowing.
        self.first
            .saturating_mul(1u32 << self.failures.min(16))
            .min(self.max)
    }

    /// Sleeps for [`next_delay`](Self::next_delay).
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Failures counted since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// An attempt succeeded: the next delay is `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}
