//! [`LocalCache`]: an in-process cache that hydrates itself from a
//! [`Channel`] and repairs itself whenever messages may have been missed.

mod clock;
mod hydrate;
mod sequences;
mod stats;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::Stream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use self::clock::Nanos;
use crate::channel::{Channel, PublishOptions, Receipt};
use crate::error::{BoxError, Error, Result};
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
    /// a fleet does not stampede the store at once.
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

/// One cached key: a value, or a tombstone left by a delete.
///
/// Kept small (48 bytes): every hit copies it out of the cache.
struct Entry<T> {
    /// `None` for a tombstone.
    value: Option<Arc<T>>,
    version: Option<u64>,
    /// [`clock::NEVER`] without a TTL.
    expires_at: Nanos,
    /// When it was stored: a load that started earlier must not replace it.
    stored_at: Nanos,
    /// Saturated at `u32::MAX`.
    weight: u32,
}

const _: () = assert!(std::mem::size_of::<Entry<()>>() <= 48);

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            ..*self
        }
    }
}

impl<T> Entry<T> {
    fn new(
        value: Option<Arc<T>>,
        version: Option<u64>,
        now: Nanos,
        ttl: Option<Duration>,
        weight: u64,
    ) -> Self {
        Entry {
            value,
            version,
            expires_at: ttl.map_or(clock::NEVER, |ttl| clock::deadline(now, ttl)),
            stored_at: now,
            weight: u32::try_from(weight).unwrap_or(u32::MAX),
        }
    }

    #[inline]
    fn is_expired(&self, now: Nanos) -> bool {
        now >= self.expires_at
    }
}

#[derive(Clone)]
struct EntryWeigher;

impl<T> quick_cache::Weighter<String, Entry<T>> for EntryWeigher {
    fn weight(&self, _key: &String, entry: &Entry<T>) -> u64 {
        u64::from(entry.weight)
    }
}

/// Shards of the entry table, for a cache bounded by entry count
/// (`max_entries`); `None` for a byte-bounded one.
///
/// quick_cache's default (4 per core) leaves two threads' hits contending on
/// the shard locks: on 2 cores a hit took 143 ns with 8 shards, 88 ns with
/// 64 and 83 ns with 1024, against 46 ns on one thread
/// (`benches/cache_get.rs`). So an entry-bounded cache starts from 256
/// shards (or the default, where that is more: over 64 cores) and halves
/// that until each shard keeps at least 256 entries: every shard has an
/// equal share of the bound, and small shards fill unevenly and evict while
/// the cache as a whole has room. A byte-bounded cache keeps the default: a shard refuses
/// any value heavier than its share of the budget, and more shards would
/// shrink the largest value it takes.
fn shards(max_entries: Option<u64>) -> usize {
    let default = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_mul(4);
    let Some(max_entries) = max_entries else {
        return default;
    };
    let mut shards = default.max(ENTRY_BOUNDED_SHARDS).next_power_of_two();
    while shards > 1 && max_entries / (shards as u64) < MIN_ENTRIES_PER_SHARD {
        shards /= 2;
    }
    shards
}

/// The entry table for a bound of `capacity` entries (`by_entries`) or
/// bytes.
fn entry_table<T>(capacity: u64, by_entries: bool) -> Result<Entries<T>> {
    let estimated = if by_entries {
        usize::try_from(capacity).unwrap_or(usize::MAX).min(1 << 24)
    } else {
        1024
    };
    let shards = shards(by_entries.then_some(capacity));
    // An equal whole share per shard: quick_cache rounds each share up,
    // which would let an entry count pass its bound by up to one a shard.
    let capacity = if by_entries {
        capacity / shards as u64 * shards as u64
    } else {
        capacity
    };
    let options = quick_cache::OptionsBuilder::new()
        .estimated_items_capacity(estimated)
        .weight_capacity(capacity)
        .shards(shards)
        .build()
        .map_err(|e| Error::backend("local-cache", "size the cache", format!("{e:?}")))?;
    Ok(quick_cache::sync::Cache::with_options(
        options,
        EntryWeigher,
        Default::default(),
        Default::default(),
    ))
}

const MIN_ENTRIES_PER_SHARD: u64 = 256;
const ENTRY_BOUNDED_SHARDS: usize = 256;

/// A bulk warm-up stream of key/value pairs from the store.
pub(crate) type WarmStream<T> = futures::stream::BoxStream<'static, (String, Loaded<T>)>;
type Entries<T> = quick_cache::sync::Cache<String, Entry<T>, EntryWeigher>;
type LoadResult<T> = Result<Option<Arc<T>>, Arc<BoxError>>;
type InFlight<T> = Shared<BoxFuture<'static, LoadResult<T>>>;

/// State shared by the cache handle and its hydration task.
struct Inner<T> {
    /// The cache's own publisher on the user's topic: it publishes `put` and
    /// `invalidate` and heartbeats, and its id marks the echoes to skip.
    channel: Channel<T>,
    /// The channel the cache was built from, for [`LocalCache::channel`].
    user_channel: Channel<T>,
    entries: Entries<T>,
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
    in_flight: Mutex<HashMap<String, InFlight<T>>>,
    ready: AtomicBool,
    ready_tx: watch::Sender<bool>,
    /// Whether publishers' sequence numbers can reveal losses (see
    /// [`Capabilities::ordered`](crate::Capabilities::ordered)).
    ordered: bool,
    /// Conditions still to meet before `ready`: a warm-up stream, a replay.
    pending_warm: AtomicBool,
    pending_replay: AtomicBool,
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
///   resubscribes with backoff, repairs and serves again; if the
///   subscription ends, or the task's runtime shuts down, it stops serving
///   for good. All are counted in `hydration_failures`: a cache never serves
///   from a table nobody updates.
///
/// Dropping the cache (or [`close`](Self::close)) stops its task.
///
/// ```
/// use hydratecache_core::{Channel, LocalCache, MemoryTransport};
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

impl<T: Send + Sync + 'static> LocalCacheBuilder<T> {
    /// At most `entries` entries (values and tombstones).
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.capacity = entries.max(1);
        self.weigher = None;
        self
    }

    /// At most `bytes` in total, each entry weighing `weigher(key, value)`.
    pub fn max_weight(
        mut self,
        bytes: u64,
        weigher: impl Fn(&str, &T) -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.capacity = bytes.max(1);
        self.weigher = Some(Arc::new(weigher));
        self
    }

    /// The source of truth, for [`LocalCache::fetch`] and [`RepairPolicy::Reload`].
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
    pub async fn build(self) -> Result<LocalCache<T>> {
        let entries = entry_table(self.capacity, self.weigher.is_none())?;
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
            in_flight: Mutex::new(HashMap::new()),
            ready: AtomicBool::new(false),
            ready_tx,
            ordered,
            pending_warm: AtomicBool::new(self.warm.is_some()),
            pending_replay: AtomicBool::new(self.subscribe.start == StartFrom::Earliest),
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
    /// happened for it while it was loading (the caller still gets it).
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
        self.inner.store_update(
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

    /// Entries held now (values and tombstones).
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
    /// published) and waits for it.
    pub async fn close(mut self) -> Result<()> {
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
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Who a change comes from: remote changes are counted, local ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Local,
    Remote,
    /// A loader result that started loading at this instant.
    Load(Nanos, u64),
}

impl<T: Send + Sync + 'static> Inner<T> {
    /// Ready once neither a warm-up stream nor a replay is pending.
    fn ready_if_warm(&self) {
        if !self.pending_warm.load(Ordering::Acquire)
            && !self.pending_replay.load(Ordering::Acquire)
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

    fn weight(&self, key: &str, value: Option<&T>) -> u64 {
        match (&self.weigher, value) {
            (Some(w), Some(v)) => w(key, v).max(1),
            (Some(_), None) => key.len() as u64 + 32,
            (None, _) => 1,
        }
    }

    /// Whether a change at `version` may replace `current`.
    fn accepts(
        current: Option<&Entry<T>>,
        version: Option<u64>,
        origin: Origin,
        now: Nanos,
    ) -> bool {
        let Some(current) = current else {
            return true;
        };
        if let Origin::Load(started, _) = origin {
            // Something stored after the load started is at least as new.
            if current.stored_at > started && !current.is_expired(now) {
                return false;
            }
        }
        match (current.version, version) {
            (Some(held), Some(new)) if !current.is_expired(now) => new > held,
            _ => true,
        }
    }

    fn store_update(
        &self,
        key: &str,
        value: Arc<T>,
        version: Option<u64>,
        ttl: Option<Duration>,
        published_at: Option<std::time::SystemTime>,
        origin: Origin,
    ) -> bool {
        let now = clock::now();
        let _guard = lock(&self.store_lock);
        if let Origin::Load(_, generation) = origin {
            if self.generation.load(Ordering::Acquire) != generation {
                return false;
            }
        }
        if !Self::accepts(self.entries.peek(key).as_ref(), version, origin, now) {
            if origin == Origin::Remote {
                self.counters.stale_rejected.incr();
            }
            return false;
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            // Expired on arrival: not stored, and the older value it replaces goes too.
            self.entries.remove(key);
            if origin == Origin::Remote {
                self.counters.expired_on_arrival.incr();
            }
            return false;
        }
        let weight = self.weight(key, Some(&value));
        self.entries.insert(
            key.to_owned(),
            Entry::new(Some(value), version, now, ttl, weight),
        );
        if origin == Origin::Remote {
            self.counters.updates_applied.incr();
            if let Some(at) = published_at {
                self.counters
                    .record_lag(at.elapsed().unwrap_or(Duration::ZERO));
            }
        }
        true
    }

    fn store_delete(&self, key: &str, version: Option<u64>, origin: Origin) -> bool {
        let now = clock::now();
        let _guard = lock(&self.store_lock);
        if !Self::accepts(self.entries.peek(key).as_ref(), version, origin, now) {
            if origin == Origin::Remote {
                self.counters.stale_rejected.incr();
            }
            return false;
        }
        // A tombstone for every delete: it stops an older versioned update, and
        // stops a load that started before the delete from storing its value.
        let weight = self.weight(key, None);
        self.entries.insert(
            key.to_owned(),
            Entry::new(None, version, now, Some(self.tombstone_ttl), weight),
        );
        if origin == Origin::Remote {
            self.counters.deletes_applied.incr();
        }
        true
    }

    /// Forgets `key`'s value (its message could not be decoded).
    fn forget(&self, key: &str) {
        let _guard = lock(&self.store_lock);
        self.entries.remove(key);
    }

    fn repair(self: &Arc<Self>, why: &str) {
        let stats = &self.counters;
        match self.policy {
            RepairPolicy::Ignore => {
                stats.repairs_ignored.incr();
                tracing::warn!(
                    topic = self.channel.topic(),
                    why,
                    "gap ignored (RepairPolicy::Ignore): cached values may be stale"
                );
            }
            RepairPolicy::Clear => {
                let dropped = self.drop_values();
                stats.repairs_clear.incr();
                tracing::warn!(
                    topic = self.channel.topic(),
                    why,
                    dropped,
                    "gap: cache cleared"
                );
            }
            RepairPolicy::Reload => {
                let keys = self.drop_values_keys();
                stats.repairs_reload.incr();
                tracing::warn!(
                    topic = self.channel.topic(),
                    why,
                    keys = keys.len(),
                    "gap: reloading the keys held"
                );
                if let Some(loader) = self.loader.clone() {
                    let inner = Arc::clone(self);
                    tokio::spawn(async move { inner.reload(keys, loader).await });
                }
            }
        }
    }

    /// Drops every value (tombstones stay: they still order late updates);
    /// bumps the generation so loads under way do not store.
    fn drop_values(&self) -> usize {
        let _guard = lock(&self.store_lock);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let before = self.entries.len();
        self.entries.retain(|_, e| e.value.is_none());
        before - self.entries.len()
    }

    fn drop_values_keys(&self) -> Vec<String> {
        let _guard = lock(&self.store_lock);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let keys: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.value.is_some())
            .map(|(k, _)| k)
            .collect();
        self.entries.retain(|_, e| e.value.is_none());
        keys
    }

    async fn reload(self: Arc<Self>, keys: Vec<String>, loader: Arc<dyn Loader<T>>) {
        use futures::StreamExt;
        let jitter = self.reload_jitter;
        let seed = crate::envelope::PublisherId::random().0;
        futures::stream::iter(keys.into_iter().enumerate())
            .for_each_concurrent(self.reload_concurrency, |(i, key)| {
                let inner = Arc::clone(&self);
                let loader = Arc::clone(&loader);
                async move {
                    if !jitter.is_zero() {
                        let spread = (seed.rotate_left(i as u32 % 128) as u64)
                            % (jitter.as_micros() as u64).max(1);
                        tokio::time::sleep(Duration::from_micros(spread)).await;
                    }
                    if Inner::load(&inner, &key, |k| loader.load(k)).await.is_ok() {
                        inner.counters.reloaded_keys.incr();
                    }
                }
            })
            .await;
    }

    /// Single-flight load of `key`, storing the result if nothing newer came.
    async fn load(
        this: &Arc<Self>,
        key: &str,
        start: impl FnOnce(String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>>,
    ) -> Result<Option<Arc<T>>> {
        let shared = {
            let mut in_flight = lock(&this.in_flight);
            match in_flight.get(key) {
                Some(f) => f.clone(),
                None => {
                    let started = {
                        let _guard = lock(&this.store_lock);
                        (clock::now(), this.generation.load(Ordering::Acquire))
                    };
                    let load = start(key.to_owned());
                    let inner = Arc::clone(this);
                    let owned_key = key.to_owned();
                    let fut: BoxFuture<'static, LoadResult<T>> = async move {
                        inner.counters.loads.incr();
                        let result = load.await;
                        lock(&inner.in_flight).remove(&owned_key);
                        match result {
                            Ok(Some(loaded)) => {
                                let value = Arc::new(loaded.value);
                                inner.store_update(
                                    &owned_key,
                                    Arc::clone(&value),
                                    loaded.version,
                                    loaded.ttl,
                                    None,
                                    Origin::Load(started.0, started.1),
                                );
                                Ok(Some(value))
                            }
                            Ok(None) => Ok(None),
                            Err(e) => {
                                inner.counters.load_errors.incr();
                                Err(Arc::new(e))
                            }
                        }
                    }
                    .boxed();
                    let shared = fut.shared();
                    in_flight.insert(key.to_owned(), shared.clone());
                    shared
                }
            }
        };
        shared.await.map_err(|source| {
            Error::backend("local-cache", format!("loading {key:?}"), ArcError(source))
        })
    }
}

/// A shared loader error, as the source of each waiter's error.
#[derive(Debug)]
struct ArcError(Arc<BoxError>);

impl fmt::Display for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bounded_caches_get_shards_of_at_least_256_entries() {
        for max_entries in [1, 255, 511, 8_191, 10_000, 20_000, 1 << 20] {
            let shards = shards(Some(max_entries)) as u64;
            assert!(shards.is_power_of_two(), "{max_entries}: {shards}");
            assert!(
                shards == 1 || max_entries / shards >= MIN_ENTRIES_PER_SHARD,
                "{max_entries} entries over {shards} shards"
            );
        }
        assert_eq!(shards(Some(511)), 1);
        assert_eq!(shards(Some(20_000)), 64);
        assert!(shards(Some(1 << 20)) >= ENTRY_BOUNDED_SHARDS);
    }

    #[test]
    fn an_entry_bound_is_split_evenly_and_never_exceeded() -> Result<()> {
        for bound in [1, 300, 10_000, 20_000, 1 << 20] {
            let table = entry_table::<()>(bound, true)?;
            let shards = table.num_shards() as u64;
            assert!(table.capacity() <= bound, "{bound}: {}", table.capacity());
            assert!(table.capacity() > bound - shards, "{bound}");
            assert_eq!(table.shard_capacity() * shards, table.capacity());
        }
        assert_eq!(entry_table::<()>(20_000, true)?.capacity(), 19_968);
        Ok(())
    }

    #[test]
    fn byte_bounded_caches_keep_quick_caches_default() -> Result<()> {
        let budget = 64 << 20;
        let table = entry_table::<()>(budget, false)?;
        let default: quick_cache::sync::Cache<String, ()> = quick_cache::sync::Cache::with_options(
            quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(1024)
                .weight_capacity(budget)
                .build()
                .expect("options"),
            quick_cache::UnitWeighter,
            Default::default(),
            Default::default(),
        );
        assert_eq!(table.num_shards(), default.num_shards());
        assert_eq!(table.capacity(), budget);
        Ok(())
    }
}
