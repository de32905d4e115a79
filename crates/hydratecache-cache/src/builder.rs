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
use crate::config::{
    RepairPolicy, Weigher, DEFAULT_CAPACITY, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_LOAD_TIMEOUT,
    DEFAULT_RELOAD_CONCURRENCY, DEFAULT_RELOAD_JITTER, DEFAULT_TOMBSTONE_TTL,
};
use crate::entry::Table;
use crate::error::{Error, Result};
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
    /// it was built from once that published (default 1 s); `None` sends none.
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

    /// Subscription options, such as replay from the earliest message on a
    /// backend that keeps a log.
    pub fn subscribe_options(mut self, options: SubscribeOptions) -> Self {
        self.subscribe = options;
        self
    }

    /// Bulk warm-up: `ready()` resolves once this stream of key/value pairs
    /// from the store is stored. Updates that arrive meanwhile win over it.
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
            store_lock: Mutex::new(()),
            in_flight: Mutex::new(Flights::new()),
            next_flight: AtomicU64::new(0),
            load_timeout: self.load_timeout,
            reload_task: Mutex::new(None),
            closed: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
            ready: AtomicBool::new(false),
            ready_tx,
            ordered,
            pending_warm: AtomicBool::new(self.warm.is_some()),
            pending_replay: AtomicBool::new(self.subscribe.start == StartFrom::Earliest),
            pending_gap: AtomicBool::new(false),
            counters: Counters::default(),
        });
        let subscription = hydrate::subscribe(&inner, self.subscribe.clone()).await?;
        let subscribed_at = clock::now();
        let subscribed_ms = hydrate::now_ms();
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
