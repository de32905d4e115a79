//! Repairs: what a cache does when messages may have been missed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{lock, Inner, Loader, RepairPolicy};

impl<T: Send + Sync + 'static> Inner<T> {
    pub(super) fn repair(self: &Arc<Self>, why: &str) {
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
}
