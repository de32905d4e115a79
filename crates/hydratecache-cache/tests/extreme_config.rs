//! Configuration never panics: LocalCache and Channel settings from zero to
//! `Duration::MAX` (issue 18, item 18). Each adapter runs the transport side
//! (`hydratecache_conformance::extreme_durations_never_panic`) in its own tests.

use std::time::Duration;

use hydratecache_cache::{LocalCache, RepairPolicy};
use hydratecache_conformance::extreme_durations;
use hydratecache_core::{Channel, MemoryTransport, PublishOptions, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_cache_durations_never_panic() {
    let bus = MemoryTransport::new().into_arc();
    for d in extreme_durations() {
        let round = async {
            let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "t"))
                .tombstone_ttl(d)
                .heartbeat_interval(Some(d))
                .reload_limits(2, d)
                .loader(|key: String| async move {
                    Ok(Some(
                        hydratecache_cache::Loaded::new(key).ttl(Duration::MAX),
                    ))
                })
                .repair(RepairPolicy::Reload)
                .build()
                .await
                .expect("a cache on the memory bus");
            let other: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "t"))
                .build()
                .await
                .expect("a second cache");
            let with_ttl = PublishOptions::new().ttl(d).version(1);
            cache
                .put_with("a", "1".into(), with_ttl)
                .await
                .expect("put");
            cache
                .invalidate_with("b", PublishOptions::new().version(2))
                .await
                .expect("invalidate");
            let _ = cache.fetch("c").await.expect("fetch");
            cache.repair();
            other.repair();
            let _ = (cache.get("a"), other.get("a"), cache.stats());
            tokio::time::sleep(Duration::from_millis(5)).await;
            cache.close().await.expect("close");
            other.close().await.expect("close");
        };
        tokio::time::timeout(Duration::from_secs(30), round)
            .await
            .unwrap_or_else(|_| panic!("{d:?}: hung"));
    }
}
