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
use crate::config::{Liveness, RepairPolicy, Weigher};
use crate::entry::Table;
use crate::health::{Trust, Untrusted};
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
    /// How many of the `generation` bumps were first words (see
    /// `Sequences`): the warm-up, which starts after them, goes on
    /// through those but not through a repair.
    pub(crate) first_word_bumps: AtomicU64,
    /// When the last outage repair happened, in ms since the epoch (0: none).
    pub(crate) repaired_wall_ms: AtomicU64,
    /// Serialises "check then store" between the hydration task and loads.
    pub(crate) store_lock: Mutex<()>,
    pub(crate) in_flight: Mutex<Flights<T>>,
    pub(crate) next_flight: AtomicU64,
    pub(crate) load_timeout: Duration,
    pub(crate) serve_stale_on_error: bool,
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
    /// Caught up after a stall: not ready until the marker came back.
    pub(crate) pending_marker: AtomicBool,
    /// The cache's own liveness checks (`None`: off).
    pub(crate) liveness: Option<Liveness>,
    /// Reads serve until this coarse-clock time, refreshed by each tick of
    /// the hydration task ([`clock::NEVER`] without liveness checks).
    pub(crate) fresh_until: AtomicU64,
    pub(crate) counters: Counters,
    /// Why `ready` is false, and since when; changed with `ready`, under
    /// this lock.
    pub(crate) trust: Mutex<Trust>,
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
        let mut trust = lock(&self.trust);
        if self.pending_warm.load(Ordering::Acquire)
            || self.pending_replay.load(Ordering::Acquire)
            || self.pending_gap.load(Ordering::Acquire)
            || self.pending_marker.load(Ordering::Acquire)
        {
            return;
        }
        self.ready.store(true, Ordering::Release);
        self.ready_tx.send_replace(true);
        if let Some(was) = trust.untrusted.take() {
            let untrusted_for = trust.since_instant.elapsed();
            trust.since = std::time::SystemTime::now();
            trust.since_instant = std::time::Instant::now();
            if was == Untrusted::Starting {
                tracing::debug!(topic = self.channel.topic(), "cache ready");
            } else {
                tracing::warn!(topic = self.channel.topic(), was = %was, ?untrusted_for, "cache trusted again");
            }
        }
    }

    /// The cache stops serving what it holds: reads miss (and load) until
    /// it is current again.
    pub(crate) fn untrust(&self, why: Untrusted) {
        let mut trust = lock(&self.trust);
        self.ready.store(false, Ordering::Release);
        self.ready_tx.send_replace(false);
        if trust.untrusted.is_none() {
            trust.untrusted = Some(why);
            trust.since = std::time::SystemTime::now();
            trust.since_instant = std::time::Instant::now();
            if why == Untrusted::Closed {
                return;
            }
            self.counters.untrusted.incr();
            tracing::warn!(topic = self.channel.topic(), why = %why, "cache untrusted: reads miss until it is current again");
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
        if !self.serving() {
            self.counters.misses.incr();
            return None;
        }
        let hit = self.held(key);
        match &hit {
            Some(_) => self.counters.hits.incr(),
            None => self.counters.misses.incr(),
        }
        hit
    }

    /// Whether reads may return what is held: trusted, and the hydration
    /// task ticked recently enough (one atomic load, and a coarse-clock
    /// read with liveness checks on).
    #[inline]
    pub(crate) fn serving(&self) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return false;
        }
        let until = self.fresh_until.load(Ordering::Acquire);
        until == clock::NEVER || clock::coarse_now() <= until
    }

    /// When the hydration task's deadline passed, if it has: the task has
    /// not run since (a stall not yet noticed by the task itself).
    pub(crate) fn stalled_since(&self) -> Option<std::time::SystemTime> {
        let until = self.fresh_until.load(Ordering::Acquire);
        let now = clock::coarse_now();
        if until == clock::NEVER || now <= until {
            return None;
        }
        let ago = Duration::from_nanos(now - until);
        Some(
            std::time::SystemTime::now()
                .checked_sub(ago)
                .unwrap_or(std::time::UNIX_EPOCH),
        )
    }

    /// The live value held for `key`, trusted or not.
    #[inline]
    pub(crate) fn held(&self, key: &str) -> Option<Arc<T>> {
        self.entries.get(key).and_then(|entry| {
            // Entries without a TTL skip the clock read.
            if entry.expires_at != clock::NEVER && entry.is_expired(clock::coarse_now()) {
                return None;
            }
            entry.value
        })
    }
}

impl<T: Send + Sync + 'static> Inner<T> {
    /// `result` of a read through the loader, or, when it failed while the
    /// cache is untrusted and `serve_stale_on_error` is set, the live value
    /// held (counted).
    pub(crate) fn stale_if_error(
        &self,
        key: &str,
        result: crate::error::Result<Option<Arc<T>>>,
    ) -> crate::error::Result<Option<Arc<T>>> {
        if result.is_ok() || !self.serve_stale_on_error || self.serving() {
            return result;
        }
        match self.held(key) {
            Some(value) => {
                self.counters.stale_served.incr();
                tracing::debug!(
                    topic = self.channel.topic(),
                    key,
                    "loader failed while untrusted: the value held is served"
                );
                Ok(Some(value))
            }
            None => result,
        }
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
