//! The cache-cut scenario: a [`LocalCache`] cut off from its backend never
//! serves a value from before the cut once it has signalled the gap.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::{BoxError, Channel};
// The one place this crate names the cache's items.
use hydratecache_cache::{Loaded, LocalCache, RepairPolicy};

use crate::harness::{connect, topic, Harness, RECEIVE_TIMEOUT};

/// What [`local_cache_never_serves_pre_gap_values`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Reads of the cut-off cache after its repair.
    pub reads_after_repair: u64,
    /// Of those, reads that returned a value from before the cut (must be 0).
    pub stale_reads: u64,
    /// Gaps the cut-off cache saw.
    pub gaps: u64,
    /// Interruptions the cut-off cache was told of at the moment of the
    /// loss (an adapter that detects the loss as it happens: at least 1).
    pub interruptions: u64,
    /// Updates the cut-off cache received of the ones written during the cut.
    pub updates_received_during_cut: u64,
}

/// Two [`LocalCache`]s on one topic (separate clients).
/// B holds 20 keys; `cut` cuts B's subscription server-side (`CLIENT KILL`,
/// `pg_terminate_backend`, a server restart...); A rewrites every key at once.
/// Once B has signalled the gap and has caught up with A (it holds a marker
/// A publishes after its writes, so each of A's writes has reached B or been
/// repaired for), B must never return a pre-cut value of those keys: every
/// read for two seconds is checked, and reads through the loader give the
/// store's value. Before B caught up, a key B reloaded during the cut may
/// still hold the value the store had then, while A's newer write is in
/// flight: that is the propagation window, not a missed repair.
///
/// Panics on a stale read, or when B sees no gap or never catches up within
/// [`RECEIVE_TIMEOUT`].
pub async fn local_cache_never_serves_pre_gap_values<F, Fut>(
    h: &dyn Harness,
    policy: RepairPolicy,
    cut: F,
) -> CutReport
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    type Store = Arc<std::sync::Mutex<HashMap<String, String>>>;
    const KEYS: usize = 20;

    let topic = topic(h, "cachecut").await;
    let store: Store = Arc::default();
    let read_store = |store: &Store, key: &str| {
        store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    };
    let loader_store = Arc::clone(&store);
    let a: LocalCache<String> =
        match LocalCache::builder(Channel::new(connect(h).await, topic.clone()))
            .build()
            .await
        {
            Ok(c) => c,
            Err(e) => panic!("cache A: {e:?}"),
        };
    let b: LocalCache<String> =
        match LocalCache::builder(Channel::new(connect(h).await, topic.clone()))
            .repair(policy)
            .loader(move |key: String| {
                let store = Arc::clone(&loader_store);
                async move {
                    let value = store
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get(&key)
                        .cloned();
                    Ok(value.map(Loaded::new))
                }
            })
            .reload_limits(4, Duration::from_millis(20))
            .build()
            .await
        {
            Ok(c) => c,
            Err(e) => panic!("cache B: {e:?}"),
        };
    const CAUGHT_UP_KEY: &str = "caught-up";
    let key = |i: usize| format!("key{i}");
    let write = |i: usize, value: String| {
        store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key(i), value);
    };
    for i in 0..KEYS {
        write(i, format!("before-{i}"));
        if let Err(e) = a.put(&key(i), format!("before-{i}")).await {
            panic!("put before the cut: {e:?}");
        }
    }
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    while (0..KEYS).any(|i| b.get(&key(i)).is_none()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never received the keys before the cut"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gaps_before = b.stats().gaps + b.stats().sequence_gaps;
    let interruptions_before = b.stats().interruptions;
    let applied_before = b.stats().updates_applied;
    if let Err(e) = cut().await {
        panic!("cutting B's subscription failed: {e:?}");
    }
    // Written while B is cut off (or reconnecting): some or all are lost to B.
    for i in 0..KEYS {
        write(i, format!("after-{i}"));
        if let Err(e) = a.put(&key(i), format!("after-{i}")).await {
            // The publisher's connection may have been cut too: retry until it is back.
            let retry_deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
            let mut last = e;
            loop {
                assert!(
                    tokio::time::Instant::now() < retry_deadline,
                    "A cannot publish after the cut: {last}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                match a.put(&key(i), format!("after-{i}")).await {
                    Ok(_) => break,
                    Err(e) => last = e,
                }
            }
        }
    }
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let s = b.stats();
        let received_all =
            (0..KEYS).all(|i| b.get(&key(i)).as_deref() == Some(&format!("after-{i}")));
        if s.gaps + s.sequence_gaps > gaps_before || received_all {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B neither signalled a gap nor received the updates within {RECEIVE_TIMEOUT:?} after the cut: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut report = CutReport {
        gaps: b.stats().gaps + b.stats().sequence_gaps - gaps_before,
        interruptions: b.stats().interruptions - interruptions_before,
        updates_received_during_cut: b.stats().updates_applied - applied_before,
        ..CutReport::default()
    };
    // A's last word: once B holds it, every earlier write of A reached B or
    // B saw its sequence jump (and repaired). Sent again if it was lost or a
    // repair dropped it.
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    for attempt in 1u64.. {
        let marker = format!("caught-up-{attempt}");
        let _ = a.put(CAUGHT_UP_KEY, marker.clone()).await;
        let retry_at = tokio::time::Instant::now() + Duration::from_millis(500);
        while tokio::time::Instant::now() < retry_at {
            if b.get(CAUGHT_UP_KEY).as_deref() == Some(&marker) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if b.get(CAUGHT_UP_KEY).as_deref() == Some(&marker) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never received A's marker within {RECEIVE_TIMEOUT:?} after the cut: {:?}",
            b.stats()
        );
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        for i in 0..KEYS {
            report.reads_after_repair += 1;
            if let Some(v) = b.get(&key(i)) {
                if v.starts_with("before-") {
                    report.stale_reads += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(
        report.gaps >= 1,
        "the cut was not reported to B as a gap: {report:?}"
    );
    assert_eq!(
        report.stale_reads, 0,
        "B served pre-cut values after the gap: {report:?}"
    );
    for i in 0..KEYS {
        let got = match b.fetch(&key(i)).await {
            Ok(v) => v,
            Err(e) => panic!("fetch after the cut: {e:?}"),
        };
        assert_eq!(
            got.as_deref().cloned(),
            read_store(&store, &key(i)),
            "B disagrees with the store on {}",
            key(i)
        );
    }
    report
}
