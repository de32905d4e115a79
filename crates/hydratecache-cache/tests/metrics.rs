//! The `metrics` feature: `LocalCache::stats()` exports its snapshot through
//! the `metrics` facade, labelled with the topic.
#![cfg(feature = "metrics")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hydratecache_cache::LocalCache;
use hydratecache_core::{Channel, MemoryTransport, Transport};
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};

/// The last value each metric was given, by `name{labels}`.
#[derive(Default, Clone)]
struct Recorded(Arc<Mutex<BTreeMap<String, f64>>>);

struct Slot {
    name: String,
    recorded: Recorded,
}

impl Slot {
    fn set(&self, value: f64) {
        self.recorded
            .0
            .lock()
            .unwrap()
            .insert(self.name.clone(), value);
    }
}

impl CounterFn for Slot {
    fn increment(&self, _: u64) {
        panic!("{}: LocalCache exports absolute counters", self.name);
    }
    fn absolute(&self, value: u64) {
        self.set(value as f64);
    }
}

impl GaugeFn for Slot {
    fn increment(&self, _: f64) {
        panic!("{}: LocalCache sets gauges", self.name);
    }
    fn decrement(&self, _: f64) {
        panic!("{}: LocalCache sets gauges", self.name);
    }
    fn set(&self, value: f64) {
        Slot::set(self, value);
    }
}

impl Recorded {
    fn slot(&self, key: &Key) -> Arc<Slot> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Slot {
            name: format!("{}{{{}}}", key.name(), labels.join(",")),
            recorded: self.clone(),
        })
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.lock().unwrap().get(name).copied()
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.slot(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.slot(key))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

#[tokio::test]
async fn stats_exports_the_snapshot_through_the_metrics_facade() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "users"))
        .build()
        .await?;
    let remote: LocalCache<String> = LocalCache::builder(Channel::new(bus, "users"))
        .build()
        .await?;
    remote.put("a", "1".into()).await?;
    remote.put("b", "2".into()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while cache.stats().updates_applied < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "updates not applied"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(cache.get("a").is_some());
    assert!(cache.get("missing").is_none());

    let recorded = Recorded::default();
    let stats = metrics::with_local_recorder(&recorded, || cache.stats());

    let exported = |name: &str| recorded.get(&format!("{name}{{topic=users}}"));
    assert_eq!(exported("hydratecache_cache_hits"), Some(stats.hits as f64));
    assert_eq!(exported("hydratecache_cache_hits"), Some(1.0));
    assert_eq!(exported("hydratecache_cache_misses"), Some(1.0));
    assert_eq!(exported("hydratecache_cache_updates_applied"), Some(2.0));
    assert_eq!(exported("hydratecache_cache_entries"), Some(2.0));
    assert_eq!(exported("hydratecache_cache_gaps"), Some(0.0));
    assert!(
        exported("hydratecache_cache_lag_p99_seconds").is_some_and(|s| s >= 0.0),
        "lag exported once there is one: {:?}",
        recorded.0.lock().unwrap()
    );
    Ok(())
}
