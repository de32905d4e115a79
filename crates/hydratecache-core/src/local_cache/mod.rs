//! [`LocalCache`]: an in-process cache that hydrates itself from a
//! [`Channel`] and repairs itself whenever messages may have been missed.

mod clock;
mod entry;
mod hydrate;
mod load;
mod repair;
mod sequences;
mod stats;
mod store;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use futures::Stream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::clock::Nanos;
use self::entry::Table;
use crate::channel::{Channel, Receipt};
use crate::error::{BoxError, Error, Result};
use crate::publish_options::PublishOptions;
use crate::transport::{StartFrom, SubscribeOptions};

pub use stats::CacheStats;

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
    /// [`loader`](LocalCacheBuilder::loader).
    Reload,
    /// Keep serving what is held; only count the gap. Stale values may stay.
    Ignore,
}

/// A value from the source of truth, with its version when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded<T> {
    /// The value.
    pub value: T,
    /// Its version at the source of truth.
    pub version: Option<u64>,
    /// How long it may be cached, if limited.
    pub ttl: Option<Duration>,
}

impl<T> Loaded<T> {
    /// A value without version or TTL.
    pub fn new(value: T) -> Loaded<T> {
        Loaded {
            value,
            version: None,
            ttl: None,
        }
    }

    /// With a version.
    pub fn version(mut self, version: u64) -> Loaded<T> {
        self.version = Some(version);
        self
    }

    /// With a TTL.
    pub fn ttl(mut self, ttl: Duration) -> Loaded<T> {
        self.ttl = Some(ttl);
        self
    }
}

/// Reads a key from the source of truth: `Ok(None)` when it does not exist.
pub trait Loader<T>: Send + Sync + 'static {
    /// Loads `key`.
    fn load(&self, key: String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>>;
}

impl<T, F, Fut> Loader<T> for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Loaded<T>>, BoxError>> + Send + 'static,
{
    fn load(&self, key: String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>> {
        self(key).boxed()
    }
}

/// Weight of an entry for a byte-bounded cache.
pub type Weigher<T> = dyn Fn(&str, &T) -> u64 + Send + Sync;

/// A bulk warm-up stream of key/value pairs from the store.
pub(crate) type WarmStream<T> = futures::stream::BoxStream<'static, (String, Loaded<T>)>;

/// State shared by the cache handle and its hydration task.
struct Inner<T> {
    /// The cache's own publisher on the user's topic: it publishes `put` and
    /// `invalidate` and heartbeats, and its id marks the echoes to skip.
    channel: Channel<T>,
    /// The channel the cache was built from, for [`LocalCache::channel`].
    user_channel: Channel<T>,
    entries: Table<T>,
    weigher: Option<Arc<Weigher<T>>>,
    loader: Option<Arc<dyn Loader<T>>>,
    policy: RepairPolicy,
    tombstone_ttl: Duration,
    reload_concurrency: usize,
    reload_jitter: Duration,
    /// Bumped by every repair: loads started before it do not store.
    generation: AtomicU64,
    /// Serialises "check then store" between the hydration task and loads.
    store_lock: Mutex<()>,
    in_flight: Mutex<load::Flights<T>>,
    next_flight: AtomicU64,
    load_timeout: Duration,
    /// The running `Reload` repair: at most one.
    reload_task: Mutex<Option<JoinHandle<()>>>,
    /// Set first by drop and `close`: no reload starts after it.
    closed: AtomicBool,
    /// Where repairs run (`repair` may be called off the runtime).
    runtime: tokio::runtime::Handle,
    ready: AtomicBool,
    ready_tx: watch::Sender<bool>,
    /// Whether publishers' sequence numbers can reveal losses (see
    /// [`Capabilities::ordered`](crate::Capabilities::ordered)).
    ordered: bool,
    /// Conditions still to meet before `ready`: a warm-up stream, a replay.
    pending_warm: AtomicBool,
    pending_replay: AtomicBool,
    /// The transport reported that messages are being dropped: not ready
    /// until its next gap has been applied.
    pending_gap: AtomicBool,
    counters: stats::Counters,
}

fn lock<G>(m: &Mutex<G>) -> MutexGuard<'_, G> {
    // Nothing panics while these locks are held; recover rather than spread a poison.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A local in-memory cache that hydrates itself from a [`Channel`].
///
/// - **Reads** (`get`) are synchronous and in-process; `get_or_load` reads
///   through on a miss, one loader call per key however many callers wait.
/// - **Hydration**: a background task applies every update and delete from
///   the channel. A message's TTL becomes the entry's expiry; a message expired
///   on arrival is not stored. `get` checks expiry on the kernel's coarse
///   clock (Linux), so an entry can be served up to one kernel tick (1 to
///   10 ms; 4 ms at 250 Hz) past its expiry, never before it.
/// - **Writes** (`put`, `invalidate`) change the local cache, then publish
///   under the cache's own publisher id ([`publisher`](Self::publisher),
///   made at build time, not the id of the channel it was built from). The
///   cache recognises these messages when they come back from the transport
///   and skips them (counted as `own_echoes_skipped`): the write is already
///   applied, and an echo that arrives after another instance's newer update
///   must not undo it. Anything else, including what is published through
///   [`channel`](Self::channel), its clones or another cache built from one
///   of them, is applied.
/// - **TTL**: a message's TTL is read against this machine's clock and never
///   lasts longer than its duration from arrival (a publisher clock ahead
///   cannot stretch it); a publisher clock behind shortens it by the skew.
/// - **Versions**: an update older than the version held never overwrites a
///   newer one; a versioned delete leaves a tombstone for `tombstone_ttl` so a
///   late, older update cannot bring the key back. Without versions, updates
///   apply in arrival order (one publisher's order is its publish order;
///   concurrent writers of one key resolve by arrival).
/// - **Coherence**: on every gap event, on every message it cannot read
///   that may be ours (an envelope of a newer release during a rolling
///   upgrade: where the transport names its key, as Kafka does, only that key
///   is forgotten), and on every possible loss that sequence numbers reveal,
///   the cache repairs by its [`RepairPolicy`].
/// - **Sequence tracking** (on a transport that keeps each publisher's order,
///   [`Capabilities::ordered`](crate::Capabilities::ordered)) sees: a jump in a
///   known publisher's sequence (a heartbeat reveals a lost last message); a
///   sequence far below the last seen (forged, or a restarted publisher); the
///   lost first messages of a publisher that started more than 1 s after the
///   subscription (a [`PublisherId`](crate::PublisherId) carries its start);
///   the return of a publisher it may have forgotten (it keeps at most 16,384
///   publishers, dropping those heard from once first, and forgets those
///   silent for 600 s): a gap even when nothing was lost in between. It
///   cannot see losses from a publisher already running at subscribe time (or
///   whose id carries no plausible start) before the first message it
///   receives from it, nor anything on an unordered transport (Kafka), where
///   the transport's gap events are the signal.
/// - **Failures of hydration**: a codec or weigher that panics on one
///   message forgets that key; a warm-up stream that panics ends the warm-up
///   (both counted in `hydration_panics`). If the task itself fails (its
///   subscription's stream panics) the cache stops serving at once, then
///   resubscribes with backoff, invalidates every value (whatever the
///   policy; `Reload` reloads them) and serves again. If the transport
///   reports an error of the subscription itself (not of one message: it is
///   dropping messages), the cache stops serving until the transport's next
///   gap, then repairs the same way. If the subscription ends, or the task's
///   runtime shuts down, it stops serving for good. All are counted in
///   `hydration_failures`: a cache never serves from a table nobody updates.
///
/// Dropping the cache (or [`close`](Self::close)) stops its task and cancels
/// a running reload.
///
/// ```
/// use hydratecache_core::{Channel, LocalCache, MemoryTransport, Transport};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hydratecache_core::Error> {
/// let bus = MemoryTransport::new().into_arc();
/// let a: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "users")).build().await?;
/// let b: LocalCache<String> = LocalCache::builder(Channel::new(bus, "users")).build().await?;
/// a.put("user:1", "Ada".to_string()).await?;
/// assert_eq!(a.get("user:1").as_deref().map(String::as_str), Some("Ada"));
/// // b hydrates itself from the broadcast.
/// let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
/// while b.get("user:1").is_none() && tokio::time::Instant::now() < deadline {
///     tokio::time::sleep(Duration::from_millis(1)).await;
/// }
/// assert_eq!(b.get("user:1").as_deref().map(String::as_str), Some("Ada"));
/// # Ok(()) }
/// ```
pub struct LocalCache<T> {
    inner: Arc<Inner<T>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl<T> fmt::Debug for LocalCache<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCache")
            .field("channel", &self.inner.channel)
            .field("policy", &self.inner.policy)
            .field("entries", &self.inner.entries.len())
            .finish_non_exhaustive()
    }
}

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

/// Default maximum number of entries.
pub const DEFAULT_CAPACITY: u64 = 10_000;
/// Default heartbeat interval of the cache's own publisher.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a versioned delete's tombstone is kept.
pub const DEFAULT_TOMBSTONE_TTL: Duration = Duration::from_secs(60);
/// Default time a loader call may take before its waiters get an error.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Fails with [`Error::Unsupported`] for [`RepairPolicy::Reload`] without a
    /// [`loader`](Self::loader).
    pub async fn build(self) -> Result<LocalCache<T>> {
        if self.policy == RepairPolicy::Reload && self.loader.is_none() {
            return Err(Error::Unsupported {
                backend: "local-cache",
                what: "RepairPolicy::Reload without a loader (set LocalCacheBuilder::loader)",
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
            in_flight: Mutex::new(load::Flights::new()),
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
            counters: stats::Counters::default(),
        });
        let subscription = inner
            .channel
            .transport()
            .subscribe(inner.channel.topic(), self.subscribe.clone())
            .await?;
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
            reload_concurrency: 8,
            reload_jitter: Duration::from_millis(250),
            load_timeout: DEFAULT_LOAD_TIMEOUT,
            subscribe: SubscribeOptions::default(),
            warm: None,
        }
    }

    /// The live value of `key`, if held. Never does I/O.
    #[inline]
    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.inner.get(key)
    }

    /// The value of `key`: held, or loaded through `loader` on a miss.
    /// Concurrent misses of one key run one loader call and share its result.
    /// A loaded value is stored unless an update, a delete or a repair
    /// happened for it while it was loading (the caller still gets it); a
    /// caller arriving after such a change starts a fresh load rather than
    /// join the older one. The load runs while a caller waits: when the last
    /// one is cancelled, the loader's future is dropped. A loader that panics
    /// (or a weigher that panics on its value) or overruns [`load_timeout`](LocalCacheBuilder::load_timeout) is an
    /// error for its waiters; the next call loads again.
    pub async fn get_or_load<F, Fut>(&self, key: &str, loader: F) -> Result<Option<Arc<T>>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Option<Loaded<T>>, BoxError>> + Send + 'static,
    {
        if let Some(value) = self.inner.get(key) {
            return Ok(Some(value));
        }
        Inner::load(&self.inner, key, |k| loader(k).boxed()).await
    }

    /// [`get_or_load`](Self::get_or_load) with the builder's loader.
    pub async fn fetch(&self, key: &str) -> Result<Option<Arc<T>>> {
        let loader = self.inner.loader.clone().ok_or(Error::Unsupported {
            backend: "local-cache",
            what: "fetch without a loader (set LocalCacheBuilder::loader)",
        })?;
        if let Some(value) = self.inner.get(key) {
            return Ok(Some(value));
        }
        Inner::load(&self.inner, key, |k| loader.load(k)).await
    }

    /// Stores `value` locally, then publishes it.
    pub async fn put(&self, key: &str, value: T) -> Result<Receipt> {
        self.put_with(key, value, PublishOptions::new()).await
    }

    /// Stores `value` locally with a TTL and/or version, then publishes it.
    /// Locally, a version older than the one held is not stored (it is still
    /// published: the source of truth decides).
    pub async fn put_with(&self, key: &str, value: T, options: PublishOptions) -> Result<Receipt> {
        let value = Arc::new(value);
        // A weigher panic is caught there: the key is forgotten locally,
        // and the value still published (the source of truth decides).
        let _ = self.inner.store_update(
            key,
            Arc::clone(&value),
            options.version,
            options.ttl,
            None,
            Origin::Local,
        );
        self.inner.channel.publish_with(key, &value, options).await
    }

    /// Removes `key` locally, then publishes a delete.
    pub async fn invalidate(&self, key: &str) -> Result<Receipt> {
        self.invalidate_with(key, PublishOptions::new()).await
    }

    /// Removes `key` locally (leaving a tombstone at `version`), then publishes a delete.
    pub async fn invalidate_with(&self, key: &str, options: PublishOptions) -> Result<Receipt> {
        self.inner.store_delete(key, options.version, Origin::Local);
        self.inner.channel.delete_with(key, options).await
    }

    /// Resolves once the cache is warm: at once, or when the warm-up stream
    /// has been stored, and, for a cache subscribed from the earliest message
    /// (a backend that replays, such as Kafka), when the replay has reached
    /// the end of the log as it was at subscribe time. Reads before that miss.
    pub async fn ready(&self) {
        let mut rx = self.inner.ready_tx.subscribe();
        // The sender lives in `inner`, which we hold: the wait cannot fail.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Whether the cache is warm.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// A snapshot of the counters.
    ///
    /// With the `metrics` feature, each call also exports the snapshot
    /// through the [`metrics`](https://docs.rs/metrics) facade, labelled
    /// `topic`: counters `hydratecache_cache_{hits, misses, loads,
    /// updates_applied, deletes_applied, stale_rejected, expired_on_arrival,
    /// own_echoes_skipped, decode_errors, gaps, repairs}` set to their
    /// totals, and gauges `hydratecache_cache_entries` and
    /// `hydratecache_cache_lag_p99_seconds`. Call it on your scrape interval.
    pub fn stats(&self) -> CacheStats {
        let stats = self.inner.counters.snapshot(self.inner.entries.len());
        #[cfg(feature = "metrics")]
        export_metrics(self.inner.channel.topic(), &stats);
        stats
    }

    /// Entries held now: values and tombstones, including values a repair
    /// invalidated (never served) until they are overwritten or evicted.
    pub fn len(&self) -> usize {
        self.inner.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inner.entries.is_empty()
    }

    /// The channel the cache was built from. The cache publishes its own
    /// writes under a publisher id of its own ([`publisher`](Self::publisher)),
    /// so what is published through this channel (or its clones, or another
    /// cache built from one) reaches this cache like any other publisher's.
    // `inner.channel` is the cache's own publisher; this is the user's.
    #[allow(clippy::misnamed_getters)]
    pub fn channel(&self) -> &Channel<T> {
        &self.inner.user_channel
    }

    /// The publisher id of the cache's own writes (`put`, `invalidate`): the
    /// only messages it skips when they come back.
    pub fn publisher(&self) -> crate::envelope::PublisherId {
        self.inner.channel.publisher()
    }

    /// Repairs now by the cache's policy, as on a gap.
    pub fn repair(&self) {
        self.inner.repair("requested");
    }

    /// Stops the hydration task (sending a last heartbeat if this cache
    /// published) and waits for it; cancels a running reload.
    pub async fn close(mut self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(reload) = self.inner.stop_reload() {
            let _ = reload.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                if e.is_panic() {
                    return Err(Error::backend("local-cache", "hydration task panicked", e));
                }
            }
        }
        Ok(())
    }
}

impl<T> Drop for LocalCache<T> {
    fn drop(&mut self) {
        // First: the hydration task may still run a repair on another
        // worker until its abort takes effect.
        self.inner.closed.store(true, Ordering::Release);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(reload) = lock(&self.inner.reload_task).take() {
            reload.abort();
        }
    }
}

/// Who a change comes from: remote changes are counted, local ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Local,
    Remote,
    /// A loader result that started loading at this instant, in this
    /// generation (of repairs).
    Load(Nanos, u64),
}

impl<T: Send + Sync + 'static> Inner<T> {
    /// Ready once neither a warm-up stream, a replay nor the gap that ends
    /// a reported loss is pending.
    fn ready_if_warm(&self) {
        if !self.pending_warm.load(Ordering::Acquire)
            && !self.pending_replay.load(Ordering::Acquire)
            && !self.pending_gap.load(Ordering::Acquire)
        {
            self.ready.store(true, Ordering::Release);
            self.ready_tx.send_replace(true);
        }
    }

    fn warm_done(&self) {
        self.pending_warm.store(false, Ordering::Release);
        self.ready_if_warm();
    }

    fn replay_done(&self) {
        self.pending_replay.store(false, Ordering::Release);
        self.ready_if_warm();
    }

    #[inline]
    fn get(&self, key: &str) -> Option<Arc<T>> {
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

#[cfg(feature = "metrics")]
fn export_metrics(topic: &str, s: &CacheStats) {
    let topic = topic.to_owned();
    let counters = [
        ("hydratecache_cache_hits", s.hits),
        ("hydratecache_cache_misses", s.misses),
        ("hydratecache_cache_loads", s.loads),
        ("hydratecache_cache_updates_applied", s.updates_applied),
        ("hydratecache_cache_deletes_applied", s.deletes_applied),
        ("hydratecache_cache_stale_rejected", s.stale_rejected),
        (
            "hydratecache_cache_expired_on_arrival",
            s.expired_on_arrival,
        ),
        (
            "hydratecache_cache_own_echoes_skipped",
            s.own_echoes_skipped,
        ),
        ("hydratecache_cache_decode_errors", s.decode_errors),
        (
            "hydratecache_cache_hydration_failures",
            s.hydration_failures,
        ),
        ("hydratecache_cache_gaps", s.gaps + s.sequence_gaps),
        ("hydratecache_cache_repairs", s.repairs()),
    ];
    for (name, value) in counters {
        metrics::counter!(name, "topic" => topic.clone()).absolute(value);
    }
    metrics::gauge!("hydratecache_cache_entries", "topic" => topic.clone()).set(s.entries as f64);
    if let Some(p99) = s.lag_p99 {
        metrics::gauge!("hydratecache_cache_lag_p99_seconds", "topic" => topic)
            .set(p99.as_secs_f64());
    }
}
