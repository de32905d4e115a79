//! [`LocalCache`]: the handle users read and write through.

use std::fmt;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::FutureExt;
use hydratecache_core::{BoxError, Channel, PublishOptions, PublisherId, Receipt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::health::{Health, Untrusted};
use crate::inner::{lock, Inner, Origin};
use crate::loader::Loaded;
use crate::stats::CacheStats;

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
///   the cache repairs by its [`RepairPolicy`](crate::RepairPolicy).
/// - **Sequence tracking** (on a transport that keeps each publisher's order,
///   [`Capabilities::ordered`](hydratecache_core::Capabilities::ordered)) sees: a jump in a
///   known publisher's sequence (a heartbeat reveals a lost last message); a
///   sequence far below the last seen (forged, or a restarted publisher); the
///   lost first messages of a publisher that started more than 1 s after the
///   subscription (a [`PublisherId`](hydratecache_core::PublisherId) carries its start);
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
/// use hydratecache_cache::LocalCache;
/// use hydratecache_core::{Channel, MemoryTransport, Transport};
/// use std::time::Duration;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hydratecache_cache::Error> {
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
    pub(crate) inner: Arc<Inner<T>>,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) task: Option<JoinHandle<()>>,
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

impl<T: Send + Sync + 'static> LocalCache<T> {
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
    /// (or a weigher that panics on its value) or overruns [`load_timeout`](crate::LocalCacheBuilder::load_timeout) is an
    /// error for its waiters; the next call loads again.
    pub async fn get_or_load<F, Fut>(&self, key: &str, loader: F) -> Result<Option<Arc<T>>>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Result<Option<Loaded<T>>, BoxError>> + Send + 'static,
    {
        if let Some(value) = self.inner.get(key) {
            return Ok(Some(value));
        }
        let loaded = Inner::load(&self.inner, key, |k| loader(k).boxed()).await;
        self.inner.stale_if_error(key, loaded)
    }

    /// [`get_or_load`](Self::get_or_load) with the builder's loader.
    pub async fn fetch(&self, key: &str) -> Result<Option<Arc<T>>> {
        let loader = self
            .inner
            .loader
            .clone()
            .ok_or(Error::NoLoader { what: "fetch" })?;
        if let Some(value) = self.inner.get(key) {
            return Ok(Some(value));
        }
        let loaded = Inner::load(&self.inner, key, |k| loader.load(k)).await;
        self.inner.stale_if_error(key, loaded)
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
        Ok(self
            .inner
            .channel
            .publish_with(key, &value, options)
            .await?)
    }

    /// Removes `key` locally, then publishes a delete.
    pub async fn invalidate(&self, key: &str) -> Result<Receipt> {
        self.invalidate_with(key, PublishOptions::new()).await
    }

    /// Removes `key` locally (leaving a tombstone at `version`), then publishes a delete.
    pub async fn invalidate_with(&self, key: &str, options: PublishOptions) -> Result<Receipt> {
        self.inner.store_delete(key, options.version, Origin::Local);
        Ok(self.inner.channel.delete_with(key, options).await?)
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

    /// Whether the cache serves what it holds now: warm and trusted (see
    /// [`health`](Self::health)).
    pub fn is_ready(&self) -> bool {
        self.inner.serving()
    }

    /// Whether the cache serves what it holds, since when, and why not.
    ///
    /// It stops as soon as it cannot know that what it holds is current:
    /// the transport reports its connection broken (at the moment it detects
    /// it), reports that it is losing messages, or hydration fails. While
    /// untrusted, `get` misses and `fetch` reads through the loader; it is
    /// trusted again once delivery is back and what may have been missed is
    /// repaired. Each change is logged (`warn`).
    ///
    /// ```
    /// use hydratecache_cache::LocalCache;
    /// use hydratecache_core::{Channel, MemoryTransport, Transport};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), hydratecache_cache::Error> {
    /// let bus = MemoryTransport::new().into_arc();
    /// let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus, "users")).build().await?;
    /// let health = cache.health();
    /// assert!(health.is_trusted(), "untrusted since {:?}: {:?}", health.since, health.untrusted);
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> Health {
        let health = lock(&self.inner.trust).health();
        match self.inner.stalled_since() {
            Some(since) if health.is_trusted() => Health {
                untrusted: Some(Untrusted::Stalled),
                since,
            },
            _ => health,
        }
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
        let stats = self.inner.counters.snapshot(
            self.inner.entries.len(),
            self.inner.ready.load(Ordering::Acquire),
        );
        #[cfg(feature = "metrics")]
        crate::export::export_metrics(self.inner.channel.topic(), &stats);
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
    pub fn publisher(&self) -> PublisherId {
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
                    return Err(Error::HydrationPanicked { source: e });
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
