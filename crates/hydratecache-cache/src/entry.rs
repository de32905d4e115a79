//! The tables a [`LocalCache`](crate::LocalCache) keeps: values, tombstones
//! (apart, so deletes of keys never held cannot evict values), the instant of
//! the last repair (entries stored before it are invalid) and the per-key-hash
//! marks of changes that left the tables.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{self, Nanos};
use crate::error::{Error, Result};

/// One cached key: a value, or a tombstone left by a delete.
///
/// Kept small (48 bytes): every hit copies it out of the cache.
pub(crate) struct Entry<T> {
    /// `None` for a tombstone.
    pub(crate) value: Option<Arc<T>>,
    pub(crate) version: Option<u64>,
    /// [`clock::NEVER`] without a TTL.
    pub(crate) expires_at: Nanos,
    /// When it was stored: a load that started earlier must not replace it,
    /// and a repair at or after it invalidates it.
    pub(crate) stored_at: Nanos,
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
    pub(crate) fn new(
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
    pub(crate) fn is_expired(&self, now: Nanos) -> bool {
        now >= self.expires_at
    }
}

#[derive(Clone)]
pub(crate) struct EntryWeigher;

impl<T> quick_cache::Weighter<String, Entry<T>> for EntryWeigher {
    fn weight(&self, _key: &String, entry: &Entry<T>) -> u64 {
        u64::from(entry.weight)
    }
}

/// Slots of [`Marks`]: 32 KiB a cache. A load of a key whose slot saw a
/// change leave the tables after the load started does not store; more
/// slots, fewer such loads for other keys.
const MARK_SLOTS: usize = 4096;

/// The latest `stored_at` of the changes that left the tables (evicted,
/// removed), per slot of key hashes: the guard of a load whose newer change
/// is no longer in the table.
pub(crate) struct Marks {
    slots: Box<[AtomicU64]>,
    hasher: quick_cache::DefaultHashBuilder,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            slots: (0..MARK_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: quick_cache::DefaultHashBuilder::default(),
        }
    }

    fn slot(&self, key: &str) -> &AtomicU64 {
        let at = self.hasher.hash_one(key) as usize & (MARK_SLOTS - 1);
        &self.slots[at]
    }

    /// Records that a change of `key` stored at `stored_at` left the tables.
    pub(crate) fn mark(&self, key: &str, stored_at: Nanos) {
        self.slot(key).fetch_max(stored_at, Ordering::AcqRel);
    }

    /// The latest change of `key`'s slot that left the tables.
    pub(crate) fn of(&self, key: &str) -> Nanos {
        self.slot(key).load(Ordering::Acquire)
    }
}

/// Marks every evicted entry; drops it outside the shard lock, as
/// quick_cache's default lifecycle does.
#[derive(Clone)]
pub(crate) struct MarkEvicted(Arc<Marks>);

impl<T> quick_cache::Lifecycle<String, Entry<T>> for MarkEvicted {
    type RequestState = [Option<(String, Entry<T>)>; 2];

    fn on_evict(&self, state: &mut Self::RequestState, key: String, entry: Entry<T>) {
        self.0.mark(&key, entry.stored_at);
        if let Some(free) = state.iter_mut().find(|s| s.is_none()) {
            *free = Some((key, entry));
        }
    }
}

pub(crate) type Entries<T> = quick_cache::sync::Cache<
    String,
    Entry<T>,
    EntryWeigher,
    quick_cache::DefaultHashBuilder,
    MarkEvicted,
>;

/// Values, tombstones, the last repair and the marks of departed changes.
pub(crate) struct Table<T> {
    pub(crate) values: Entries<T>,
    /// Bounded apart from the values: a flood of deletes of keys never held
    /// must not push live values out.
    pub(crate) tombstones: Entries<T>,
    /// Values stored at or before this instant are invalid: a repair is
    /// this one store, and reads treat older values as misses.
    pub(crate) repaired_at: AtomicU64,
    pub(crate) marks: Arc<Marks>,
}

impl<T> Table<T> {
    /// Tables for `capacity` values (`by_entries`) or bytes of values.
    pub(crate) fn new(capacity: u64, by_entries: bool) -> Result<Table<T>> {
        let marks = Arc::new(Marks::new());
        Ok(Table {
            values: entry_table(capacity, by_entries, &marks)?,
            tombstones: entry_table(tombstone_bound(capacity, by_entries), true, &marks)?,
            repaired_at: AtomicU64::new(0),
            marks,
        })
    }

    /// A valid (not repaired away) value, expired or not.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<Entry<T>> {
        let entry = self.values.get(key)?;
        self.is_valid(&entry).then_some(entry)
    }

    #[inline]
    pub(crate) fn is_valid(&self, entry: &Entry<T>) -> bool {
        entry.stored_at > self.repaired_at.load(Ordering::Acquire)
    }

    /// Entries held: values (including those a repair invalidated, until
    /// overwritten or evicted) and tombstones.
    pub(crate) fn len(&self) -> usize {
        self.values.len() + self.tombstones.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.values.is_empty() && self.tombstones.is_empty()
    }
}

/// Tombstones kept: a quarter of an entry bound, or one per KiB of a byte
/// budget (a tombstone is about a key and 100 bytes); at least 64.
fn tombstone_bound(capacity: u64, by_entries: bool) -> u64 {
    if by_entries {
        (capacity / 4).max(64)
    } else {
        (capacity / 1024).clamp(64, 1 << 20)
    }
}

/// Shards of the entry table, for a cache bounded by entry count
/// (`max_entries`); `None` for a byte-bounded one.
///
/// quick_cache's default (4 per core) leaves two threads' hits contending on
/// the shard locks (measured with `benches/cache_get.rs`; the figures are in
/// docs/benchmarks.md). So an entry-bounded cache starts from 256
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
fn entry_table<T>(capacity: u64, by_entries: bool, marks: &Arc<Marks>) -> Result<Entries<T>> {
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
        .map_err(|e| Error::Capacity {
            source: format!("{e:?}").into(),
        })?;
    Ok(quick_cache::sync::Cache::with_options(
        options,
        EntryWeigher,
        Default::default(),
        MarkEvicted(Arc::clone(marks)),
    ))
}

const MIN_ENTRIES_PER_SHARD: u64 = 256;
const ENTRY_BOUNDED_SHARDS: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    fn table(bound: u64, by_entries: bool) -> Result<Entries<()>> {
        entry_table(bound, by_entries, &Arc::new(Marks::new()))
    }

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
            let table = table(bound, true)?;
            let shards = table.num_shards() as u64;
            assert!(table.capacity() <= bound, "{bound}: {}", table.capacity());
            assert!(table.capacity() > bound - shards, "{bound}");
            assert_eq!(table.shard_capacity() * shards, table.capacity());
        }
        assert_eq!(table(20_000, true)?.capacity(), 19_968);
        Ok(())
    }

    #[test]
    fn byte_bounded_caches_keep_quick_caches_default() -> Result<()> {
        let budget = 64 << 20;
        let table = table(budget, false)?;
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

    #[test]
    fn an_evicted_entry_marks_its_slot_with_when_it_was_stored() -> Result<()> {
        let table = Table::<()>::new(1, true)?;
        table
            .values
            .insert("a".into(), Entry::new(Some(Arc::new(())), None, 7, None, 1));
        table
            .values
            .insert("b".into(), Entry::new(Some(Arc::new(())), None, 9, None, 1));
        assert_eq!(table.values.len(), 1);
        let evicted = if table.values.peek("a").is_some() {
            "b"
        } else {
            "a"
        };
        assert!(table.marks.of(evicted) >= 7, "{evicted} evicted unmarked");
        Ok(())
    }
}
