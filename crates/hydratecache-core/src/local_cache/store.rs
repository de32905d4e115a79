//! Storing changes: version order, tombstones, and the guard that keeps a
//! load from storing over a change made while it ran.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::clock::{self, Nanos};
use super::entry::Entry;
use super::{lock, Inner, Origin};

impl<T: Send + Sync + 'static> Inner<T> {
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

    pub(super) fn store_update(
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

    pub(super) fn store_delete(&self, key: &str, version: Option<u64>, origin: Origin) -> bool {
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
    pub(super) fn forget(&self, key: &str) {
        let _guard = lock(&self.store_lock);
        self.entries.remove(key);
    }
}
