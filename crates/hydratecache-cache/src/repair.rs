//! Repairs: a gap invalidates every value at once (one store of the repair
//! instant, whatever the size of the cache); `Reload` then reloads the keys
//! held in one tracked background task, which a new gap supersedes and
//! dropping or closing the cache cancels.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use hydratecache_core::PublisherId;

use crate::clock;
use crate::config::RepairPolicy;
use crate::inner::{lock, Inner};
use crate::loader::Loader;

/// Keys visited between two yields while a reload lists the keys it reloads.
const LIST_BATCH: usize = 1024;

impl<T: Send + Sync + 'static> Inner<T> {
    pub(crate) fn repair(self: &Arc<Self>, why: &str) {
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
                self.invalidate_values();
                stats.repairs_clear.incr();
                tracing::warn!(topic = self.channel.topic(), why, "gap: cache cleared");
            }
            RepairPolicy::Reload => {
                self.invalidate_values();
                stats.repairs_reload.incr();
                tracing::warn!(
                    topic = self.channel.topic(),
                    why,
                    "gap: reloading the keys held"
                );
                self.start_reload();
            }
        }
    }

    /// Repairs after the cache could not know what changed (its hydration
    /// restarted, or its transport reported dropping messages): every value
    /// is invalidated whatever the policy, and reloaded under `Reload`.
    /// `Ignore` tolerates gaps, not a cache that stopped hydrating.
    pub(crate) fn repair_outage(self: &Arc<Self>, why: &str) {
        // What a publisher's client held through the outage arrives after
        // this: such updates only invalidate (see `predates_repair`).
        self.repaired_wall_ms
            .fetch_max(clock::now_ms(), Ordering::AcqRel);
        self.invalidate_values();
        if self.policy == RepairPolicy::Reload {
            self.counters.repairs_reload.incr();
            tracing::warn!(topic = self.channel.topic(), why, "reloading the keys held");
            self.start_reload();
        } else {
            self.counters.repairs_clear.incr();
            tracing::warn!(topic = self.channel.topic(), why, "cache cleared");
        }
    }

    /// Invalidates the values stored before the first word from `publisher`
    /// (see `Sequences`): not a gap, nothing is known to be lost, so no
    /// warning and no repair count. Not reloaded even under `Reload`: first
    /// words come right after subscribing, one per running publisher, when
    /// little is held, and each would restart the reload.
    pub(crate) fn invalidate_before_first_word(&self, publisher: PublisherId) {
        // Counted before the bump: a warm-up reading both in between sees
        // more first words than bumps, and takes it for a repair (safe).
        self.first_word_bumps.fetch_add(1, Ordering::AcqRel);
        self.invalidate_values();
        tracing::debug!(
            topic = self.channel.topic(),
            %publisher,
            "first word from a publisher already running: values stored before it invalidated"
        );
    }

    /// The cache will never serve again (its subscription ended): its values
    /// are invalidated and a running reload is stopped, none started.
    pub(crate) fn retire(&self) {
        self.invalidate_values();
        self.stop_reload();
    }

    /// Invalidates every value held (tombstones stay: they still order late
    /// updates) and bumps the generation so loads under way do not store.
    /// O(1): reads treat values stored at or before the repair as misses,
    /// and writes and evictions replace them.
    fn invalidate_values(&self) {
        let _guard = lock(&self.store_lock);
        self.generation.fetch_add(1, Ordering::AcqRel);
        let now = clock::now();
        self.entries.repaired_at.fetch_max(now, Ordering::AcqRel);
    }

    /// Whether an update published at `at` (the publisher's clock) predates
    /// the last outage repair (this cache's clock): a publisher clock ahead
    /// by `s` lets updates up to `s` older through, one behind drops more
    /// (safe).
    pub(crate) fn predates_repair(&self, at: std::time::SystemTime) -> bool {
        let repaired = self.repaired_wall_ms.load(Ordering::Acquire);
        repaired != 0
            && at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(true, |d| d.as_millis() < u128::from(repaired))
    }

    /// Starts a reload, superseding the one running: that one is cancelled
    /// (with the loads only it waits for) before this one loads anything.
    fn start_reload(self: &Arc<Self>) {
        let Some(loader) = self.loader.clone() else {
            // The builder refuses `Reload` without a loader.
            return;
        };
        let mut running = lock(&self.reload_task);
        // Checked under the lock Drop and close take the task with, after
        // they set it: a repair racing them cannot start a reload that
        // would outlive the cache.
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let previous = running.take();
        if let Some(previous) = &previous {
            previous.abort();
        }
        let inner = Arc::clone(self);
        *running = Some(self.runtime.spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            inner.reload(loader).await;
        }));
    }

    /// Cancels the running reload, if any.
    pub(crate) fn stop_reload(&self) -> Option<tokio::task::JoinHandle<()>> {
        let running = lock(&self.reload_task).take();
        if let Some(running) = &running {
            running.abort();
        }
        running
    }

    /// The keys whose values a repair invalidated, listed in batches so the
    /// runtime thread is never held for the whole table.
    async fn invalid_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, (key, entry)) in self.entries.values.iter().enumerate() {
            if entry.value.is_some() && !self.entries.is_valid(&entry) {
                keys.push(key);
            }
            if i % LIST_BATCH == LIST_BATCH - 1 {
                tokio::task::yield_now().await;
            }
        }
        keys
    }

    async fn reload(self: Arc<Self>, loader: Arc<dyn Loader<T>>) {
        let keys = self.invalid_keys().await;
        tracing::debug!(topic = self.channel.topic(), keys = keys.len(), "reloading");
        let jitter = self.reload_jitter;
        let seed = PublisherId::random().0;
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
                    if let Ok(found) = Inner::load(&inner, &key, |k| loader.load(k)).await {
                        if found.is_none() {
                            // Gone from the store: free the invalid value.
                            inner.drop_invalid(&key);
                        }
                        inner.counters.reloaded_keys.incr();
                    }
                }
            })
            .await;
    }
}
