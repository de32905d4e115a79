//! How a cache is set up: its repair policy, weights and defaults.

use std::time::Duration;

use crate::clock::{self, Nanos};

/// What a cache does when messages may have been missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RepairPolicy {
    /// Drop every value held; the next read misses and loads (the default).
    #[default]
    Clear,
    /// Drop every value held, then reload those keys through the cache's
    /// loader in the background, with bounded concurrency and random jitter so
    /// a fleet does not stampede the store at once. One reload runs at a time:
    /// a new gap cancels the running one (and its loads) and starts over;
    /// dropping or closing the cache cancels it. Needs a
    /// [`loader`](crate::LocalCacheBuilder::loader).
    Reload,
    /// Keep serving what is held; only count the gap. Stale values may stay:
    /// this opts out of the staleness bound (interruptions are counted, not
    /// acted on, and the cache's own liveness checks are off).
    Ignore,
}

/// Weight of an entry for a byte-bounded cache.
pub type Weigher<T> = dyn Fn(&str, &T) -> u64 + Send + Sync;

/// Default maximum number of entries.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// Default heartbeat interval of the cache's own publisher: a fifth of
/// [`DEFAULT_MAX_STALENESS`], so its lease (three intervals) plus the
/// delivery of its last message fits in it. Writers that publish through a
/// plain [`Channel`](hydratecache_core::Channel) should pass the same to
/// [`Channel::run_heartbeats`](hydratecache_core::Channel::run_heartbeats).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// Default bound on how stale a read may be, whatever fails (see
/// [`LocalCacheBuilder::max_staleness`](crate::LocalCacheBuilder::max_staleness)).
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(1);
/// Default time a versioned delete's tombstone is kept.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Default time a loader call may take before its waiters get an error.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default number of loads a `Reload` repair runs at once.
pub(crate) const DEFAULT_RELOAD_CONCURRENCY: usize = 8;
/// Default maximum random delay before each load of a `Reload` repair.
pub(crate) const DEFAULT_RELOAD_JITTER: Duration = Duration::from_millis(250);

/// Timing derived from the cache's `max_staleness` (see
/// [`LocalCacheBuilder::max_staleness`](crate::LocalCacheBuilder::max_staleness)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Liveness {
    /// How often the task ticks.
    pub(crate) tick: Duration,
    /// How long after a tick reads are served without the next one.
    pub(crate) fresh_for: Duration,
    /// How long to wait for a marker before sending another.
    pub(crate) marker_retry: Duration,
    /// By when, after subscribing, every live publisher has been heard from:
    /// two and a half heartbeat intervals of a publisher timed for this
    /// bound (a fifth of it). The
    /// warm-up waits for it, as each first word invalidates what was stored
    /// before it.
    pub(crate) first_words_within: Duration,
}

impl Liveness {
    /// The timing for a bound of `max_staleness`: ticks at a twentieth of
    /// it, reads served up to three tenths of it after the last tick.
    pub(crate) fn for_bound(max_staleness: Duration) -> Liveness {
        let bound = max_staleness.max(Duration::from_millis(20));
        Liveness {
            tick: bound / 20,
            fresh_for: bound * 3 / 10,
            marker_retry: bound,
            // Capped: a long bound must not hold the warm-up back as long.
            first_words_within: (bound / 2).min(Duration::from_secs(2)),
        }
    }

    /// The deadline a tick at `now` gives reads.
    pub(crate) fn fresh_until(&self, now: Nanos) -> Nanos {
        clock::deadline(now, self.fresh_for)
    }
}
