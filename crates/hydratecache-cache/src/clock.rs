//! The clock entries expire by.
//!
//! A hit checks expiry on the kernel's coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`), which lags the exact clock by less than one
//! kernel tick. Reading the exact clock on every hit, or a shared timestamp
//! advanced by a thread every millisecond, cost more (figures in
//! docs/benchmarks.md, from `benches/cache_get.rs`). So an entry can be
//! served up to one kernel tick past its expiry, never before it. Writes,
//! loads and version checks use the exact clock. Both clocks count from the
//! same origin (boot), so their readings compare.
//!
//! Elsewhere than Linux and Android both are `std::time::Instant`.

use std::time::Duration;

/// Nanoseconds on the monotonic clock.
pub(crate) type Nanos = u64;

/// The deadline of an entry that does not expire.
pub(crate) const NEVER: Nanos = u64::MAX;

/// Milliseconds since the Unix epoch, on this machine's clock.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `ttl` after `from`; [`NEVER`] if that is out of range.
pub(crate) fn deadline(from: Nanos, ttl: Duration) -> Nanos {
    u64::try_from(ttl.as_nanos())
        .ok()
        .and_then(|ttl| from.checked_add(ttl))
        .unwrap_or(NEVER)
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod imp {
    use rustix::time::{clock_gettime, ClockId, Timespec};

    use super::{Nanos, NEVER};

    fn nanos(t: Timespec) -> Nanos {
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let sub = u64::try_from(t.tv_nsec).unwrap_or(0);
        secs.saturating_mul(1_000_000_000)
            .saturating_add(sub)
            .min(NEVER - 1)
    }

    /// The exact time.
    pub(crate) fn now() -> Nanos {
        nanos(clock_gettime(ClockId::Monotonic))
    }

    /// At most one kernel tick behind [`now`], never ahead.
    #[inline]
    pub(crate) fn coarse_now() -> Nanos {
        nanos(clock_gettime(ClockId::MonotonicCoarse))
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod imp {
    use std::sync::OnceLock;
    use std::time::Instant;

    use super::{Nanos, NEVER};

    static BASE: OnceLock<Instant> = OnceLock::new();

    /// The exact time.
    pub(crate) fn now() -> Nanos {
        let base = *BASE.get_or_init(Instant::now);
        u64::try_from(base.elapsed().as_nanos()).unwrap_or(NEVER - 1)
    }

    /// Here the exact time too.
    #[inline]
    pub(crate) fn coarse_now() -> Nanos {
        now()
    }
}

pub(crate) use imp::{coarse_now, now};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_never_ahead_and_at_most_a_tick_behind() {
        for _ in 0..1000 {
            let coarse = coarse_now();
            let exact = now();
            assert!(coarse <= exact, "coarse {coarse} ahead of exact {exact}");
            // Kernel ticks are at least 100 Hz; allow for a descheduling.
            assert!(
                exact - coarse < 1_000_000_000,
                "coarse {coarse} lags exact {exact} by over a second"
            );
        }
    }

    #[test]
    fn deadlines_saturate_to_never() {
        assert_eq!(deadline(10, Duration::from_nanos(5)), 15);
        assert_eq!(deadline(10, Duration::MAX), NEVER);
        assert_eq!(deadline(NEVER - 1, Duration::from_nanos(5)), NEVER);
    }
}
