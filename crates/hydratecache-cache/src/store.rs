//! Storing changes: version order, tombstones, and the guard that keeps a
//! load from storing over a change made while it ran.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{self, Nanos};
use crate::entry::Entry;
use crate::inner::{lock, Inner, Origin};

/// A caught panic's payload.
pub(crate) type Panic = Box<dyn Any + Send>;

impl<T: Send + Sync + 'static> Inner<T> {
    /// The time to stamp a change with: after the last repair, so a change
    /// made just after a repair is never taken for one made before it.
    /// Called under `store_lock`.
    fn stamp(&self) -> Nanos {
        let repaired_at = self
            .entries
            .repaired_at
            .load(std::sync::atomic::Ordering::Acquire);
        clock::now().max(repaired_at.saturating_add(1))
    }

    /// What a change of `key` is ordered against: its valid value, else its
    /// tombstone. Called under `store_lock`.
    fn current(&self, key: &str) -> (Option<Entry<T>>, bool) {
        if let Some(value) = self.entries.values.peek(key) {
            if self.entries.is_valid(&value) {
                return (Some(value), false);
            }
        }
        let tombstone = self.entries.tombstones.peek(key);
        let is_tombstone = tombstone.is_some();
        (tombstone, is_tombstone)
    }

    /// Whether `key` changed at or after `started` or the cache was repaired
    /// since `generation`: a load started then is outdated. Independent of
    /// eviction and expiry: a change that left the tables left its mark.
    pub(crate) fn changed_since(&self, key: &str, started: Nanos, generation: u64) -> bool {
        let _guard = lock(&self.store_lock);
        self.changed_since_locked(key, started, generation)
    }

    fn changed_since_locked(&self, key: &str, started: Nanos, generation: u64) -> bool {
        let table = &self.entries;
        self.generation.load(std::sync::atomic::Ordering::Acquire) != generation
            || table
                .values
                .peek(key)
                .is_some_and(|e| e.stored_at >= started)
            || table
                .tombstones
                .peek(key)
                .is_some_and(|e| e.stored_at >= started)
            || table.marks.of(key) >= started
    }

    /// The instant and generation a load starting now is checked against.
    pub(crate) fn load_mark(&self) -> (Nanos, u64) {
        let _guard = lock(&self.store_lock);
        (
            clock::now(),
            self.generation.load(std::sync::atomic::Ordering::Acquire),
        )
    }

    /// Whether a change at `version` may replace `current`.
    fn accepts(current: Option<&Entry<T>>, version: Option<u64>, now: Nanos) -> bool {
        let Some(current) = current else {
            return true;
        };
        match (current.version, version) {
            (Some(held), Some(new)) if !current.is_expired(now) => new > held,
            _ => true,
        }
    }

    /// Stores `value` unless something newer is held: whether it stored.
    ///
    /// Fails only when the weigher panics (before `store_lock` is taken):
    /// nothing is stored, and for a change (not a load) the key's older
    /// value is forgotten, as the key changed to something we cannot hold.
    pub(crate) fn store_update(
        &self,
        key: &str,
        value: Arc<T>,
        version: Option<u64>,
        ttl: Option<Duration>,
        published_at: Option<std::time::SystemTime>,
        origin: Origin,
    ) -> Result<bool, Panic> {
        let weight = match catch_unwind(AssertUnwindSafe(|| self.weight(key, &value))) {
            Ok(weight) => weight,
            Err(panic) => {
                self.counters.hydration_panics.incr();
                if !matches!(origin, Origin::Load(..)) {
                    self.forget(key);
                }
                tracing::error!(
                    topic = self.channel.topic(),
                    key,
                    "the weigher panicked: value not stored"
                );
                return Err(panic);
            }
        };
        Ok(self.store_weighed(key, value, version, ttl, published_at, origin, weight))
    }

    #[allow(clippy::too_many_arguments)]
    fn store_weighed(
        &self,
        key: &str,
        value: Arc<T>,
        version: Option<u64>,
        ttl: Option<Duration>,
        published_at: Option<std::time::SystemTime>,
        origin: Origin,
        weight: u64,
    ) -> bool {
        let _guard = lock(&self.store_lock);
        let now = self.stamp();
        if let Origin::Load(started, generation) = origin {
            if self.changed_since_locked(key, started, generation) {
                return false;
            }
        }
        let (current, is_tombstone) = self.current(key);
        if !Self::accepts(current.as_ref(), version, now) {
            if origin == Origin::Remote {
                self.counters.stale_rejected.incr();
            }
            return false;
        }
        if ttl.is_some_and(|t| t.is_zero()) {
            // Expired on arrival: not stored, and the older value it replaces goes too.
            self.entries.values.remove(key);
            self.entries.marks.mark(key, now);
            if origin == Origin::Remote {
                self.counters.expired_on_arrival.incr();
            }
            return false;
        }
        self.entries.values.insert(
            key.to_owned(),
            Entry::new(Some(value), version, now, ttl, weight),
        );
        if is_tombstone {
            self.entries.tombstones.remove(key);
        }
        if origin == Origin::Remote {
            self.counters.updates_applied.incr();
            if let Some(at) = published_at {
                self.counters
                    .record_lag(at.elapsed().unwrap_or(Duration::ZERO));
            }
        }
        true
    }

    pub(crate) fn store_delete(&self, key: &str, version: Option<u64>, origin: Origin) -> bool {
        let _guard = lock(&self.store_lock);
        let now = self.stamp();
        let (current, _) = self.current(key);
        if !Self::accepts(current.as_ref(), version, now) {
            if origin == Origin::Remote {
                self.counters.stale_rejected.incr();
            }
            return false;
        }
        // A tombstone for every delete, in its own bounded table: it stops
        // an older versioned update, and a load that started before the
        // delete (once evicted, through its mark).
        self.entries.values.remove(key);
        self.entries.tombstones.insert(
            key.to_owned(),
            Entry::new(None, version, now, Some(self.tombstone_ttl), 1),
        );
        if origin == Origin::Remote {
            self.counters.deletes_applied.incr();
        }
        true
    }

    /// Forgets `key`'s value (its message could not be decoded).
    pub(crate) fn forget(&self, key: &str) {
        let _guard = lock(&self.store_lock);
        let now = self.stamp();
        self.entries.values.remove(key);
        self.entries.marks.mark(key, now);
    }

    /// Drops `key`'s value if a repair invalidated it (the store no longer
    /// has the key).
    pub(crate) fn drop_invalid(&self, key: &str) {
        let _guard = lock(&self.store_lock);
        self.entries
            .values
            .remove_if(key, |e| !self.entries.is_valid(e));
    }

    fn weight(&self, key: &str, value: &T) -> u64 {
        self.weigher.as_ref().map_or(1, |w| w(key, value).max(1))
    }
}
