//! Counters of a [`LocalCache`](crate::LocalCache) and their snapshot.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Slots of a [`Counter`]: threads increment different cache lines, so the
/// read path does not bounce one line between cores.
const SLOTS: usize = 16;

#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicU64);

/// A counter for hot paths: striped over cache lines, summed when read.
#[derive(Default)]
pub(crate) struct Counter {
    slots: [Slot; SLOTS],
}

fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    INDEX.with(|i| {
        if i.get() == usize::MAX {
            i.set(NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS);
        }
        i.get()
    })
}

impl Counter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.slots[slot_index()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(&self, n: u64) {
        self.slots[slot_index()].0.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.slots.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// Samples of propagation lag (publish → applied), the most recent first out.
const LAG_SAMPLES: usize = 4096;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) updates_applied: Counter,
    pub(crate) deletes_applied: Counter,
    pub(crate) stale_rejected: Counter,
    pub(crate) expired_on_arrival: Counter,
    /// Counted by the subscription, which skips them.
    pub(crate) own_echoes_skipped: Arc<AtomicU64>,
    pub(crate) decode_errors: Counter,
    pub(crate) malformed: Counter,
    pub(crate) gaps: Counter,
    pub(crate) sequence_gaps: Counter,
    pub(crate) repairs_clear: Counter,
    pub(crate) repairs_reload: Counter,
    pub(crate) repairs_ignored: Counter,
    pub(crate) reloaded_keys: Counter,
    pub(crate) hydration_panics: Counter,
    pub(crate) hydration_failures: Counter,
    pub(crate) interruptions: Counter,
    pub(crate) untrusted: Counter,
    pub(crate) stale_served: Counter,
    pub(crate) stalls: Counter,
    pub(crate) silent_publishers: Counter,
    pub(crate) predating_repair: Counter,
    pub(crate) first_words: Counter,
    pub(crate) resumes: Counter,
    pub(crate) caught_up: Counter,
    lag_micros: Mutex<VecDeque<u64>>,
}

impl Counters {
    pub(crate) fn record_lag(&self, lag: Duration) {
        let micros = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
        let mut lags = self
            .lag_micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if lags.len() == LAG_SAMPLES {
            lags.pop_front();
        }
        lags.push_back(micros);
    }

    fn lag_percentiles(&self) -> (Option<Duration>, Option<Duration>) {
        let mut lags: Vec<u64> = self
            .lag_micros
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if lags.is_empty() {
            return (None, None);
        }
        lags.sort_unstable();
        let at = |q: f64| {
            let i = ((lags.len() - 1) as f64 * q).round() as usize;
            Duration::from_micros(lags[i.min(lags.len() - 1)])
        };
        (Some(at(0.50)), Some(at(0.99)))
    }

    pub(crate) fn snapshot(&self, entries: usize, trusted: bool) -> CacheStats {
        let (lag_p50, lag_p99) = self.lag_percentiles();
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            loads: self.loads.get(),
            load_errors: self.load_errors.get(),
            updates_applied: self.updates_applied.get(),
            deletes_applied: self.deletes_applied.get(),
            stale_rejected: self.stale_rejected.get(),
            expired_on_arrival: self.expired_on_arrival.get(),
            own_echoes_skipped: self.own_echoes_skipped.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.get(),
            malformed: self.malformed.get(),
            gaps: self.gaps.get(),
            sequence_gaps: self.sequence_gaps.get(),
            repairs_clear: self.repairs_clear.get(),
            repairs_reload: self.repairs_reload.get(),
            repairs_ignored: self.repairs_ignored.get(),
            reloaded_keys: self.reloaded_keys.get(),
            hydration_panics: self.hydration_panics.get(),
            hydration_failures: self.hydration_failures.get(),
            interruptions: self.interruptions.get(),
            untrusted: self.untrusted.get(),
            stale_served: self.stale_served.get(),
            stalls: self.stalls.get(),
            silent_publishers: self.silent_publishers.get(),
            predating_repair: self.predating_repair.get(),
            first_words: self.first_words.get(),
            resumes: self.resumes.get(),
            caught_up: self.caught_up.get(),
            trusted,
            entries,
            lag_p50,
            lag_p99,
        }
    }
}

/// A snapshot of a [`LocalCache`](crate::LocalCache)'s counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads that found a live value.
    pub hits: u64,
    /// Reads that found nothing (or an expired value, or a tombstone).
    pub misses: u64,
    /// Loader calls (single-flight: one per key however many callers waited).
    pub loads: u64,
    /// Loader calls that failed.
    pub load_errors: u64,
    /// Remote updates applied.
    pub updates_applied: u64,
    /// Remote deletes applied.
    pub deletes_applied: u64,
    /// Updates or deletes older than the version held, not applied.
    pub stale_rejected: u64,
    /// Updates whose TTL had run out when they arrived, not stored.
    pub expired_on_arrival: u64,
    /// This cache's own messages coming back, skipped.
    pub own_echoes_skipped: u64,
    /// Messages whose value could not be decoded (the key was invalidated).
    pub decode_errors: u64,
    /// Messages on the topic that could not be read (not an envelope, or
    /// one of a newer release).
    pub malformed: u64,
    /// Gap events from the transport (lag, reconnect, restart), and
    /// unreadable messages that may have been ours without a key to forget.
    pub gaps: u64,
    /// Possible losses seen in publishers' sequence numbers (a message lost
    /// while the connection stayed up, a lost last message revealed by a
    /// heartbeat, a new publisher's lost first messages, a forgotten
    /// publisher coming back).
    pub sequence_gaps: u64,
    /// Repairs that cleared the cache.
    pub repairs_clear: u64,
    /// Repairs that reloaded the keys held.
    pub repairs_reload: u64,
    /// Gaps counted but not repaired (`RepairPolicy::Ignore`).
    pub repairs_ignored: u64,
    /// Keys reloaded by `Reload` repairs.
    pub reloaded_keys: u64,
    /// Panics of user code caught: a codec or weigher on one message (that
    /// key was forgotten), the weigher on a loaded value (that load failed)
    /// or a local write (that key was forgotten), or the warm-up stream (the
    /// warm-up ended there). Hydration went on.
    pub hydration_panics: u64,
    /// Times the hydration task itself failed: a panic outside user code
    /// (the transport's stream, for one), an error of the subscription
    /// reported by the transport, the subscription ended, or the task was
    /// dropped with its runtime. The cache stops serving at once; after a
    /// panic it resubscribes, after a reported error it waits for the
    /// transport's next gap; then it invalidates every value (reloads them
    /// under `Reload`) and serves again.
    pub hydration_failures: u64,
    /// Interruptions the transport reported at the moment it detected them
    /// (a lost or unresponsive connection).
    pub interruptions: u64,
    /// Times the cache stopped trusting what it holds (see
    /// [`LocalCache::health`](crate::LocalCache::health)).
    pub untrusted: u64,
    /// Reads answered with a held value while untrusted because the loader
    /// failed ([`serve_stale_on_error`](crate::LocalCacheBuilder::serve_stale_on_error)).
    pub stale_served: u64,
    /// Times the hydration task was found to have stalled (the process
    /// paused, or its runtime starved): the cache caught up before serving.
    pub stalls: u64,
    /// Publishers that fell silent past their lease (crashed, hung or cut
    /// off): each a possible loss, repaired by policy.
    pub silent_publishers: u64,
    /// Updates published before the last outage repair and delivered after it
    /// (held by their publisher's client through an outage): applied as an
    /// invalidation of their key, since a newer write may have been lost.
    pub predating_repair: u64,
    /// First words heard from publishers already running when the cache
    /// subscribed (under a staleness bound, on a transport that keeps each
    /// publisher's order): each invalidated the values stored before it, as
    /// a write of that publisher may have failed to publish before the cache
    /// could see its sequence. Once per publisher after each
    /// (re)subscription; not a gap, not reloaded under `Reload`.
    pub first_words: u64,
    /// Interruptions that ended in [`Event::Resumed`](hydratecache_core::Event::Resumed)
    /// rather than a gap: the transport ([`Capabilities::resumable`](hydratecache_core::Capabilities::resumable))
    /// delivered what was published while the subscription was cut off, so
    /// the cache caught up instead of repairing.
    pub resumes: u64,
    /// Updates and deletes that arrived while cut off and were applied
    /// before a resume: the catch-up that took the place of repairs.
    pub caught_up: u64,
    /// Whether the cache served what it holds when the snapshot was taken.
    pub trusted: bool,
    /// Entries now held: values and tombstones, including values a repair
    /// invalidated (never served) until they are overwritten or evicted.
    pub entries: usize,
    /// Median propagation lag (publish → applied) over recent updates.
    pub lag_p50: Option<Duration>,
    /// 99th percentile propagation lag over recent updates.
    pub lag_p99: Option<Duration>,
}

impl CacheStats {
    /// Repairs of any policy, ignored ones included.
    pub fn repairs(&self) -> u64 {
        self.repairs_clear + self.repairs_reload + self.repairs_ignored
    }
}
