//! [`LocalCacheBuilder`]: a cache's settings, and the start of its
//! hydration task.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use hydratecache_core::{Channel, StartFrom, SubscribeOptions};
use tokio::sync::{oneshot, watch};

use crate::cache::LocalCache;
use crate::clock;
use crate::config::Liveness;
use crate::config::{
    RepairPolicy, Weigher, DEFAULT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_MAX_STALENESS, DEFAULT_RELOAD_CONCURRENCY, DEFAULT_RELOAD_JITTER,
    DEFAULT_TOMBSTONE_TTL,
};
use crate::entry::Table;
use crate::error::{Error, Result};
use crate::health::Trust;
use crate::hydrate;
use crate::inner::{Flights, Inner};
use crate::loader::{Loaded, Loader, WarmStream};
use crate::stats::Counters;

/// Builds a [`LocalCache`].
pub struct LocalCacheBuilder<T> {
    channel: Channel<T>,
    capacity: u64,
    weigher: Option<Arc<Weigher<T>>>,
    loader: Option<Arc<dyn Loader<T>>>,
    policy: RepairPolicy,
    tombstone_ttl: Duration,
    heartbeat_interval: Option<Duration>,
    reload_concurrency: usize,
    reload_jitter: Duration,
    load_timeout: Duration,
    serve_stale_on_error: bool,
    max_staleness: Option<Duration>,
    subscribe: SubscribeOptions,
    warm: Option<WarmStream<T>>,
}

impl<T> fmt::Debug for LocalCacheBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCacheBuilder")
            .field("capacity", &self.capacity)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> LocalCache<T> {
    /// A builder for a cache fed by `channel`, which it also publishes
    /// through (`put`, `invalidate`).
    pub fn builder(channel: Channel<T>) -> LocalCacheBuilder<T> {
        LocalCacheBuilder {
            channel,
            capacity: DEFAULT_CAPACITY,
            weigher: None,
            loader: None,
            policy: RepairPolicy::default(),
            tombstone_ttl: DEFAULT_TOMBSTONE_TTL,
            heartbeat_interval: Some(DEFAULT_HEARTBEAT_INTERVAL),
            reload_concurrency: DEFAULT_RELOAD_CONCURRENCY,
            reload_jitter: DEFAULT_RELOAD_JITTER,
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            serve_stale_on_error: false,
            max_staleness: Some(DEFAULT_MAX_STALENESS),
            subscribe: SubscribeOptions::default(),
            warm: None,
        }
    }
}

impl<T: Send + Sync + 'static> LocalCacheBuilder<T> {
    /// At most `entries` values. Tombstones of deletes are bounded apart
    /// (a quarter as many, at least 64), so deletes of keys never held
    /// cannot push values out.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = entries.max(1);
        self.weigher = None;
        self
    }

    /// At most `bytes` of values in total, each weighing `weigher(key,
    /// value)`. Tombstones of deletes are bounded apart (one per KiB of the
    /// budget, at least 64).
    pub fn max_weight(
        mut self,
        bytes: u64,
        weigher: impl Fn(&str, &T) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.capacity = bytes.max(1);
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// The source of truth, for [`LocalCache::fetch`] and [`RepairPolicy::Reload`]
    /// (which needs it: `build` fails without).
    pub fn loader(mut self, loader: impl Loader<T>) -> Self {
        self.loader = Some(Arc::new(loader));
        self
    }

    /// What to do on a gap (default [`RepairPolicy::Clear`]).
    pub fn repair(mut self, policy: RepairPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// How long a versioned delete's tombstone is kept (default 60 s).
    pub fn tombstone_ttl(mut self, ttl: Duration) -> Self {
        self.tombstone_ttl = ttl;
        self
    }

    /// Heartbeat interval of this cache's own publisher, and of the channel
    /// it was built from once that published (default
    /// [`DEFAULT_HEARTBEAT_INTERVAL`], a fifth of the
    /// [`max_staleness`](Self::max_staleness)); each heartbeat's lease is
    /// three intervals. `None` sends none: subscribers then notice neither a
    /// lost last message nor this publisher's silence.
    pub fn heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Concurrency and maximum random delay of `Reload` repairs (default 8 and 250 ms).
    pub fn reload_limits(mut self, concurrency: usize, jitter: Duration) -> Self {
        self.reload_concurrency = concurrency.max(1);
        self.reload_jitter = jitter;
        self
    }

    /// How long a loader call may take (default 30 s): past it, its waiters
    /// get an error and the next caller loads afresh.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout;
        self
    }

    /// The bound on staleness this cache keeps (default
    /// [`DEFAULT_MAX_STALENESS`], 1 s): no read returns a value whose
    /// successor was committed at the source of truth longer than this
    /// before the read began, whatever fails, provided the transport notices
    /// a broken connection within half of it (each adapter's keepalive plus
    /// probe timeout; their defaults: 500 ms or less). How
    /// (docs/reliability.md has the derivation and the measurements):
    /// - the transport reports a broken connection at the moment it notices
    ///   it ([`Event::Interrupted`](hydratecache_core::Event::Interrupted)):
    ///   the cache stops serving then (see [`LocalCache::health`]);
    /// - publishers heartbeat every fifth of it (this sets the
    ///   [`heartbeat_interval`](Self::heartbeat_interval); set that after
    ///   this to change it), each heartbeat promising the next within three
    ///   intervals; a publisher silent past that may have lost its last
    ///   writes (a crash between commit and publish): repaired by policy;
    /// - reads are served only while the hydration task ran within three
    ///   tenths of it; after a stall of the process the cache catches up
    ///   (a marker through the backend) before it serves again.
    ///
    /// `None` turns the last two off (the heartbeat interval stays as set),
    /// leaving only what the transport reports.
    pub fn max_staleness(mut self, bound: Option<Duration>) -> Self {
        self.max_staleness = bound;
        if let Some(bound) = bound {
            self.heartbeat_interval = Some((bound / 5).max(Duration::from_millis(1)));
        }
        self
    }

    /// While the cache is untrusted (see [`LocalCache::health`]), `fetch`
    /// and `get_or_load` read through the loader; with this set, a read
    /// whose loader fails gets the value held instead, if any, like HTTP's
    /// stale-if-error (default off: the error). Each such read is counted in
    /// [`CacheStats::stale_served`](crate::CacheStats::stale_served).
    pub fn serve_stale_on_error(mut self, serve: bool) -> Self {
        self.serve_stale_on_error = serve;
        self
    }

    /// Subscription options, such as replay from the earliest message on a
    /// backend that keeps a log.
    pub fn subscribe_options(mut self, options: SubscribeOptions) -> Self {
        self.subscribe = options;
        self
    }

    /// Bulk warm-up: `ready()` resolves once this stream of key/value pairs
    /// from the store is stored. Updates that arrive meanwhile win over it.
    ///
    /// The stream should read the store when polled. Under a staleness
    /// bound, on a transport that keeps each publisher's order, it is first
    /// polled half of [`max_staleness`](Self::max_staleness) (at most 2 s)
    /// after subscribing: by then every live publisher heartbeating at a
    /// fifth of the same bound has been heard from. A write whose publish
    /// failed before a publisher's first word is invisible in its sequence,
    /// so values stored before that first word are invalidated (see
    /// [`CacheStats::first_words`](crate::CacheStats::first_words)); a later
    /// first word (a publisher timed for a longer bound, or without
    /// heartbeats) ends the warm-up there, and the rest loads on demand.
    pub fn warm_from(
        mut self,
        entries: impl Stream<Item = (String, Loaded<T>)> + Send + 'static,
    ) -> Self {
        self.warm = Some(Box::pin(entries));
        self
    }

    /// Subscribes and starts the hydration task (on the current tokio runtime).
    ///
    /// Fails with [`Error::NoLoader`] for [`RepairPolicy::Reload`] without a
    /// [`loader`](Self::loader), and with [`Error::Channel`] if the channel
    /// cannot subscribe.
    pub async fn build(self) -> Result<LocalCache<T>> {
        if self.policy == RepairPolicy::Reload && self.loader.is_none() {
            return Err(Error::NoLoader {
                what: "RepairPolicy::Reload",
            });
        }
        let entries = Table::new(self.capacity, self.weigher.is_none())?;
        let (ready_tx, _) = watch::channel(false);
        let ordered = self.channel.transport().capabilities().ordered;
        // `Ignore` accepts stale values: no bound to keep.
        let liveness = self
            .max_staleness
            .filter(|_| self.policy != RepairPolicy::Ignore)
            .map(Liveness::for_bound);
        let inner = Arc::new(Inner {
            // Its own publisher id: it skips its own echoes, and only those.
            channel: self.channel.with_new_publisher(),
            user_channel: self.channel,
            entries,
            weigher: self.weigher,
            loader: self.loader,
            policy: self.policy,
            tombstone_ttl: self.tombstone_ttl,
            reload_concurrency: self.reload_concurrency,
            reload_jitter: self.reload_jitter,
            generation: AtomicU64::new(0),
            first_word_bumps: AtomicU64::new(0),
            repaired_wall_ms: AtomicU64::new(0),
            store_lock: Mutex::new(()),
            in_flight: Mutex::new(Flights::new()),
            next_flight: AtomicU64::new(0),
            load_timeout: self.load_timeout,
            serve_stale_on_error: self.serve_stale_on_error,
            reload_task: Mutex::new(None),
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            ready: AtomicBool::new(false),
            ready_tx,
            ordered,
            pending_warm: AtomicBool::new(self.warm.is_some()),
            pending_replay: AtomicBool::new(self.subscribe.start == StartFrom::Earliest),
            pending_gap: AtomicBool::new(false),
            pending_marker: AtomicBool::new(false),
            liveness,
            fresh_until: AtomicU64::new(
                liveness.map_or(clock::NEVER, |l| l.fresh_until(clock::now())),
            ),
            counters: Counters::default(),
            trust: Mutex::new(Trust::starting()),
        });
        let subscription = hydrate::subscribe(&inner, self.subscribe.clone()).await?;
        let subscribed_at = clock::now();
        let subscribed_ms = clock::now_ms();
        inner.ready_if_warm();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(hydrate::supervise(
            hydrate::Hydration {
                inner: Arc::clone(&inner),
                subscription,
                subscribed_ms,
                warm: self.warm.map(|w| (w, subscribed_at)),
                heartbeat_interval: self.heartbeat_interval,
                options: self.subscribe,
            },
            stopped,
        ));
        Ok(LocalCache {
            inner,
            stop: Some(stop),
            task: Some(task),
        })
    }
}
