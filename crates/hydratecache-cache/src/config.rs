//! How a cache is set up: its repair policy, weights and defaults.

use std::time::Duration;

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
/// Default heartbeat interval of the cache's own publisher: a quarter of
/// [`DEFAULT_MAX_STALENESS`], so its lease (three intervals) fits in it.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
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
