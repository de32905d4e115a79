//! The state a cache's handle, its hydration task and its loads share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use hydratecache_core::{BoxError, Channel};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::{self, Nanos};
use crate::config::{RepairPolicy, Weigher};
use crate::entry::Table;
use crate::loader::Loader;
use crate::stats::Counters;

/// State shared by the cache handle and its hydration task.
pub(crate) struct Inner<T> {
    /// The cache's own publisher on the user's topic: it publishes `put` and
    /// `invalidate` and heartbeats, and its id marks the echoes to skip.
    pub(crate) channel: Channel<T>,
    /// The channel the cache was built from, for [`LocalCache::channel`](crate::LocalCache::channel).
    pub(crate) user_channel: Channel<T>,
    pub(crate) entries: Table<T>,
    pub(crate) weigher: Option<Arc<Weigher<T>>>,
    pub(crate) loader: Option<Arc<dyn Loader<T>>>,
    pub(crate) policy: RepairPolicy,
    pub(crate) tombstone_ttl: Duration,
    pub(crate) reload_concurrency: usize,
    pub(crate) reload_jitter: Duration,
    /// Bumped by every repair: loads started before it do not store.
    pub(crate) generation: AtomicU64,
    /// Serialises "check then store" between the hydration task and loads.
    pub(crate) store_lock: Mutex<()>,
    pub(crate) in_flight: Mutex<Flights<T>>,
    pub(crate) next_flight: AtomicU64,
    pub(crate) load_timeout: Duration,
    /// The running `Reload` repair: at most one.
    pub(crate) reload_task: Mutex<Option<JoinHandle<()>>>,
    /// Set first by drop and `close`: no reload starts after it.
    pub(crate) closed: AtomicBool,
    /// Where repairs run (`repair` may be called off the runtime).
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) ready: AtomicBool,
    pub(crate) ready_tx: watch::Sender<bool>,
    /// Whether publishers' sequence numbers can reveal losses (see
    /// [`Capabilities::ordered`](hydratecache_core::Capabilities::ordered)).
    pub(crate) ordered: bool,
    /// Conditions still to meet before `ready`: a warm-up stream, a replay.
    pub(crate) pending_warm: AtomicBool,
    pub(crate) pending_replay: AtomicBool,
    /// The transport reported that messages are being dropped: not ready
    /// until its next gap has been applied.
    pub(crate) pending_gap: AtomicBool,
    pub(crate) counters: Counters,
}

pub(crate) fn lock<G>(m: &Mutex<G>) -> MutexGuard<'_, G> {
    // Nothing panics while these locks are held; recover rather than spread a poison.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Who a change comes from: remote changes are counted, local ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Remote,
    /// A loader result that started loading at this instant, in this
    /// generation (of repairs).
    Load(Nanos, u64),
}

impl<T: Send + Sync + 'static> Inner<T> {
    /// Ready once neither a warm-up stream, a replay nor the gap that ends
    /// a reported loss is pending.
    pub(crate) fn ready_if_warm(&self) {
        if !self.pending_warm.load(Ordering::Acquire)
            && !self.pending_replay.load(Ordering::Acquire)
            && !self.pending_gap.load(Ordering::Acquire)
        {
            self.ready.store(true, Ordering::Release);
            self.ready_tx.send_replace(true);
        }
    }

    pub(crate) fn warm_done(&self) {
        self.pending_warm.store(false, Ordering::Release);
        self.ready_if_warm();
    }

    pub(crate) fn replay_done(&self) {
        self.pending_replay.store(false, Ordering::Release);
        self.ready_if_warm();
    }

    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Arc<T>> {
        if !self.ready.load(Ordering::Acquire) {
            self.counters.misses.incr();
            return None;
        }
        let hit = self.entries.get(key).and_then(|entry| {
            // Entries without a TTL skip the clock read.
            if entry.expires_at != clock::NEVER && entry.is_expired(clock::coarse_now()) {
                return None;
            }
            entry.value
        });
        match &hit {
            Some(_) => self.counters.hits.incr(),
            None => self.counters.misses.incr(),
        }
        hit
    }
}

/// What the waiters of a load get: the value, or the load's shared error.
pub(crate) type LoadResult<T> = Result<Option<Arc<T>>, Arc<BoxError>>;

/// One load under way.
pub(crate) struct Flight<T> {
    pub(crate) id: u64,
    /// When it started and the generation then: callers arriving after a
    /// change of the key or a repair start a fresh load.
    pub(crate) started: Nanos,
    pub(crate) generation: u64,
    pub(crate) waiters: usize,
    pub(crate) shared: Shared<BoxFuture<'static, LoadResult<T>>>,
}

/// The loads under way, by key.
pub(crate) type Flights<T> = HashMap<String, Flight<T>>;
