//! Unit tests that need the cache's internals: its shared state, its
//! counters and its reload task.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::{Channel, MemoryTransport, Transport};

use crate::inner::lock;
use crate::{Loaded, LocalCache, RepairPolicy};

async fn cache(topic: &str) -> LocalCache<String> {
    LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), topic))
        .heartbeat_interval(None)
        .build()
        .await
        .expect("cache")
}

/// Waits until the hydration task let go of `inner`.
async fn task_gone<T>(inner: &Arc<T>) {
    for _ in 0..2_500 {
        if Arc::strong_count(inner) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("the hydration task still holds the cache");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_or_closing_the_cache_is_no_hydration_failure() {
    let dropped = cache("drop").await;
    let inner = Arc::clone(&dropped.inner);
    drop(dropped);
    task_gone(&inner).await;
    assert_eq!(inner.counters.hydration_failures.get(), 0, "after drop");

    let closed = cache("close").await;
    let inner = Arc::clone(&closed.inner);
    closed.close().await.expect("close");
    task_gone(&inner).await;
    assert_eq!(inner.counters.hydration_failures.get(), 0, "after close");
}

/// The hydration task may still be running on another worker when the
/// cache is dropped: a repair it makes then must not start a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_after_drop_starts_no_reload() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let cache: LocalCache<String> =
        LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), "late"))
            .heartbeat_interval(None)
            .repair(RepairPolicy::Reload)
            .reload_limits(1, Duration::ZERO)
            .loader(move |key: String| {
                c.fetch_add(1, Ordering::AcqRel);
                async move { Ok(Some(Loaded::new(key))) }
            })
            .build()
            .await
            .expect("cache");
    cache.fetch("k").await.expect("fetch");
    let inner = Arc::clone(&cache.inner);
    drop(cache);
    // What a hydration task that outlived the drop by a moment does.
    inner.repair("a gap seen just after the drop");
    assert!(
        lock(&inner.reload_task).is_none(),
        "a reload started after the cache was dropped"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(calls.load(Ordering::Acquire), 1);
}
