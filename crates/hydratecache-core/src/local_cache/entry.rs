//! The entry table of a [`LocalCache`](super::LocalCache): its entries and
//! how it is sized and sharded.

use std::sync::Arc;
use std::time::Duration;

use super::clock::{self, Nanos};
use crate::error::{Error, Result};

/// One cached key: a value, or a tombstone left by a delete.
///
/// Kept small (48 bytes): every hit copies it out of the cache.
pub(super) struct Entry<T> {
    /// `None` for a tombstone.
    pub(super) value: Option<Arc<T>>,
    pub(super) version: Option<u64>,
    /// [`clock::NEVER`] without a TTL.
    pub(super) expires_at: Nanos,
    /// When it was stored: a load that started earlier must not replace it.
    pub(super) stored_at: Nanos,
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
    pub(super) fn new(
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
    pub(super) fn is_expired(&self, now: Nanos) -> bool {
        now >= self.expires_at
    }
}

#[derive(Clone)]
pub(super) struct EntryWeigher;

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
pub(super) fn entry_table<T>(capacity: u64, by_entries: bool) -> Result<Entries<T>> {
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

pub(super) type Entries<T> = quick_cache::sync::Cache<String, Entry<T>, EntryWeigher>;

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
