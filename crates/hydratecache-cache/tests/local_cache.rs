//! LocalCache on the in-memory transport: hydration, versions, TTL, gaps,
//! sequence jumps, heartbeats, single-flight, bounds and shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_cache::{Loaded, LocalCache, RepairPolicy};
use hydratecache_core::{
    Capabilities, CborCodec, Channel, Codec, Envelope, Kind, MemoryTransport, PublishOptions,
    Result, SubscribeOptions, Subscription, Transport,
};

mod common;

use common::{eventually, value, WAIT};

async fn cache_on(bus: &Arc<dyn Transport>, topic: &str) -> LocalCache<String> {
    LocalCache::builder(Channel::new(bus.clone(), topic))
        .build()
        .await
        .expect("cache")
}

#[tokio::test]
async fn put_in_a_is_visible_in_b_and_invalidate_propagates() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let a = cache_on(&bus, "t").await;
    let b = cache_on(&bus, "t").await;
    a.put("k", "v1".into()).await?;
    assert_eq!(
        value(&a, "k").as_deref(),
        Some("v1"),
        "a applies its own put at once"
    );
    eventually("b sees v1", || value(&b, "k").as_deref() == Some("v1")).await;
    a.invalidate("k").await?;
    assert_eq!(value(&a, "k"), None);
    eventually("b sees the delete", || value(&b, "k").is_none()).await;
    let stats = a.stats();
    // Its put and its delete, and any heartbeat announcing its lease.
    assert!(
        stats.own_echoes_skipped >= 2,
        "a skipped its own two messages: {stats:?}"
    );
    assert_eq!(stats.updates_applied, 0);
    let stats = b.stats();
    assert_eq!(
        (stats.updates_applied, stats.deletes_applied),
        (1, 1),
        "{stats:?}"
    );
    assert!(stats.lag_p50.is_some());
    Ok(())
}

#[tokio::test]
async fn a_ttl_from_the_message_expires_the_entry_and_expired_on_arrival_is_not_stored(
) -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let a = cache_on(&bus, "ttl").await;
    let b = cache_on(&bus, "ttl").await;
    a.put_with(
        "short",
        "x".into(),
        PublishOptions::new().ttl(Duration::from_millis(150)),
    )
    .await?;
    eventually("b holds the short-lived entry", || {
        value(&b, "short").is_some()
    })
    .await;
    eventually("the entry expires in b", || value(&b, "short").is_none()).await;

    // A message whose TTL ran out before it arrived.
    let writer: Channel<String> = Channel::new(bus.clone(), "ttl");
    let stale = Envelope {
        ttl: Some(hydratecache_core::Ttl {
            start: std::time::SystemTime::now() - Duration::from_secs(10),
            duration: Duration::from_secs(1),
        }),
        publisher: writer.publisher(),
        sequence: 1,
        ..Envelope::update(
            "dead",
            Codec::<String>::encode(&CborCodec::new(), &"x".to_string())
                .map_err(anyhow::Error::from_boxed)?,
        )
    };
    bus.publish("ttl", &stale).await?;
    eventually("counted as expired on arrival", || {
        b.stats().expired_on_arrival == 1
    })
    .await;
    assert_eq!(value(&b, "dead"), None);
    Ok(())
}

#[tokio::test]
async fn versions_keep_the_newest_and_tombstones_stop_resurrection() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let b = cache_on(&bus, "ver").await;
    let w1: Channel<String> = Channel::new(bus.clone(), "ver");
    let w2: Channel<String> = Channel::new(bus.clone(), "ver");
    w1.publish_with("k", &"v2".into(), PublishOptions::new().version(2))
        .await?;
    eventually("v2 applied", || value(&b, "k").as_deref() == Some("v2")).await;
    w2.publish_with("k", &"v1".into(), PublishOptions::new().version(1))
        .await?;
    eventually("v1 rejected", || b.stats().stale_rejected == 1).await;
    assert_eq!(value(&b, "k").as_deref(), Some("v2"));

    w1.delete_with("k", PublishOptions::new().version(3))
        .await?;
    eventually("delete at v3 applied", || b.stats().deletes_applied == 1).await;
    w2.publish_with("k", &"late v2".into(), PublishOptions::new().version(2))
        .await?;
    eventually("late v2 rejected", || b.stats().stale_rejected == 2).await;
    assert_eq!(
        value(&b, "k"),
        None,
        "a late, older update resurrected a deleted key"
    );
    w2.publish_with("k", &"v4".into(), PublishOptions::new().version(4))
        .await?;
    eventually("v4 applied after the delete", || {
        value(&b, "k").as_deref() == Some("v4")
    })
    .await;
    Ok(())
}

/// A transport that drops the messages its test tells it to, as a lossy
/// network would, while the connection stays up.
struct Lossy {
    bus: MemoryTransport,
    drop_next: AtomicUsize,
}

impl Transport for Lossy {
    fn backend(&self) -> &'static str {
        "lossy"
    }
    fn capabilities(&self) -> Capabilities {
        self.bus.capabilities()
    }
    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        if envelope.kind != Kind::Heartbeat
            && self
                .drop_next
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            return async { Ok(()) }.boxed();
        }
        self.bus.publish(topic, envelope)
    }
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        self.bus.subscribe(topic, options)
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.bus.close()
    }
}

async fn lossy_pair(
    policy: RepairPolicy,
    heartbeat: Option<Duration>,
) -> (Arc<Lossy>, LocalCache<String>, LocalCache<String>) {
    let lossy = Arc::new(Lossy {
        bus: MemoryTransport::new(),
        drop_next: AtomicUsize::new(0),
    });
    let transport: Arc<dyn Transport> = lossy.clone();
    let writer = LocalCache::builder(Channel::new(transport.clone(), "lossy"))
        .heartbeat_interval(heartbeat)
        .build()
        .await
        .expect("writer");
    let reader = LocalCache::builder(Channel::new(transport, "lossy"))
        .repair(policy)
        .loader(|key: String| async move { Ok(Some(Loaded::new(format!("store:{key}")))) })
        .reload_limits(4, Duration::from_millis(5))
        .build()
        .await
        .expect("reader");
    (lossy, writer, reader)
}

#[tokio::test]
async fn a_sequence_jump_triggers_the_repair() -> anyhow::Result<()> {
    let (lossy, writer, reader) = lossy_pair(RepairPolicy::Clear, None).await;
    writer.put("a", "a1".into()).await?;
    writer.put("b", "b1".into()).await?;
    eventually("reader holds a and b", || value(&reader, "b").is_some()).await;
    lossy.drop_next.store(1, Ordering::Release);
    writer.put("a", "a2".into()).await?; // lost
    writer.put("c", "c1".into()).await?; // reveals the jump
    eventually("reader holds c", || value(&reader, "c").is_some()).await;
    assert_eq!(
        value(&reader, "a"),
        None,
        "stale a1 served after a sequence jump"
    );
    assert_eq!(value(&reader, "b"), None, "Clear drops every value");
    let stats = reader.stats();
    assert_eq!(
        (stats.sequence_gaps, stats.repairs_clear),
        (1, 1),
        "{stats:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_lost_last_message_is_repaired_through_the_heartbeat() -> anyhow::Result<()> {
    let interval = Duration::from_millis(100);
    let (lossy, writer, reader) = lossy_pair(RepairPolicy::Clear, Some(interval)).await;
    writer.put("a", "a1".into()).await?;
    eventually("reader holds a1", || {
        value(&reader, "a").as_deref() == Some("a1")
    })
    .await;
    lossy.drop_next.store(1, Ordering::Release);
    writer.put("a", "a2".into()).await?; // the last message, lost
    let lost_at = tokio::time::Instant::now();
    eventually("the heartbeat reveals the loss", || {
        reader.stats().sequence_gaps == 1
    })
    .await;
    assert_eq!(
        value(&reader, "a"),
        None,
        "stale a1 served after the heartbeat"
    );
    // Bound, not a benchmark: generous so a loaded CI machine does not flake.
    let took = lost_at.elapsed();
    println!("repaired {took:?} after the lost last message (heartbeat interval {interval:?})");
    assert!(took < interval * 20, "repair took {took:?}");
    Ok(())
}

#[tokio::test]
async fn reload_repair_reloads_the_keys_held_and_never_serves_the_old_values() -> anyhow::Result<()>
{
    let (lossy, writer, reader) = lossy_pair(RepairPolicy::Reload, None).await;
    for k in ["a", "b", "c"] {
        writer.put(k, format!("{k}1")).await?;
    }
    eventually("reader holds c1", || value(&reader, "c").is_some()).await;
    lossy.drop_next.store(1, Ordering::Release);
    writer.put("a", "a2".into()).await?; // lost
    writer.put("d", "d1".into()).await?;
    eventually("reader saw the jump", || reader.stats().repairs_reload == 1).await;
    for k in ["a", "b", "c"] {
        let old = format!("{k}1");
        assert_ne!(
            value(&reader, k).as_deref(),
            Some(old.as_str()),
            "pre-gap value of {k} served"
        );
    }
    eventually("a, b, c reloaded from the store", || {
        ["a", "b", "c"]
            .iter()
            .all(|k| value(&reader, k) == Some(format!("store:{k}")))
    })
    .await;
    assert_eq!(reader.stats().reloaded_keys, 3);
    Ok(())
}

#[tokio::test]
async fn a_lag_gap_on_the_transport_clears_and_ignore_only_counts() -> anyhow::Result<()> {
    for policy in [RepairPolicy::Clear, RepairPolicy::Ignore] {
        let bus = MemoryTransport::with_limits(4, None).into_arc();
        let reader: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "lag"))
            .repair(policy)
            .build()
            .await?;
        let writer: Channel<String> = Channel::new(bus.clone(), "lag");
        writer.publish("held", &"old".into()).await?;
        eventually("held", || value(&reader, "held").is_some()).await;
        // Flood faster than the reader can drain a 4-message buffer, from a
        // current-thread runtime: the reader's task cannot run in between.
        for i in 0..50 {
            writer.publish(&format!("k{i}"), &"x".into()).await?;
        }
        writer.publish("held", &"new".into()).await?;
        eventually("the gap was seen", || reader.stats().gaps >= 1).await;
        match policy {
            RepairPolicy::Clear => {
                assert!(reader.stats().repairs_clear >= 1);
                assert_ne!(value(&reader, "held").as_deref(), Some("old"));
            }
            _ => assert!(reader.stats().repairs_ignored >= 1),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hundred_concurrent_misses_run_the_loader_once() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = Arc::new(cache_on(&bus, "sf").await);
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("hot", move |key| async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    Ok(Some(Loaded::new(format!("loaded {key}"))))
                })
                .await
        }));
    }
    eventually("the loader started", || calls.load(Ordering::SeqCst) == 1).await;
    // Let every other task reach the in-flight load before releasing it.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    gate.notify_waiters();
    gate.notify_one();
    for t in tasks {
        assert_eq!(t.await??.as_deref().map(String::as_str), Some("loaded hot"));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the loader ran more than once"
    );
    assert_eq!(cache.stats().loads, 1);
    assert_eq!(value(&cache, "hot").as_deref(), Some("loaded hot"));
    Ok(())
}

#[tokio::test]
async fn a_load_that_started_before_an_update_does_not_overwrite_it() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = cache_on(&bus, "race").await;
    let writer: Channel<String> = Channel::new(bus.clone(), "race");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let load = cache.get_or_load("k", |_| async move {
        let _ = released.await;
        Ok(Some(Loaded::new("old from store".to_string())))
    });
    let check = async {
        writer.publish("k", &"new".into()).await.expect("publish");
        eventually("the update applied", || {
            value(&cache, "k").as_deref() == Some("new")
        })
        .await;
        let _ = release.send(());
    };
    let (loaded, ()) = tokio::join!(load, check);
    assert_eq!(
        loaded?.as_deref().map(String::as_str),
        Some("old from store")
    );
    assert_eq!(
        value(&cache, "k").as_deref(),
        Some("new"),
        "the slower load overwrote a newer update"
    );
    Ok(())
}

#[tokio::test]
async fn a_million_distinct_keys_stay_within_the_capacity() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<u64> = LocalCache::builder(Channel::new(bus, "big"))
        .max_entries(10_000)
        .heartbeat_interval(None)
        .build()
        .await?;
    for i in 0..1_000_000u64 {
        cache
            .get_or_load(&format!("key:{i}"), move |_| async move {
                Ok(Some(Loaded::new(i)))
            })
            .await?;
        if i % 100_000 == 0 {
            assert!(cache.len() <= 10_000, "{} entries at {i}", cache.len());
        }
    }
    assert!(cache.len() <= 10_000, "{} entries", cache.len());
    assert!(
        cache.len() > 5_000,
        "the cache holds a fair share: {}",
        cache.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_byte_budget_bounds_the_cache() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus, "bytes"))
        .max_weight(100_000, |k, v: &String| (k.len() + v.len()) as u64)
        .heartbeat_interval(None)
        .build()
        .await?;
    for i in 0..10_000 {
        cache
            .get_or_load(&format!("k{i}"), |_| async {
                Ok(Some(Loaded::new("x".repeat(100))))
            })
            .await?;
    }
    // At about 105 bytes an entry, 100,000 bytes hold fewer than 1,000.
    assert!(cache.len() < 1_000, "{} entries", cache.len());
    Ok(())
}

#[tokio::test]
async fn warm_up_makes_it_ready_and_reads_before_miss() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let (tx, rx) = futures::channel::mpsc::unbounded::<(String, Loaded<String>)>();
    let cache = LocalCache::builder(Channel::new(bus, "warm"))
        .warm_from(rx)
        .build()
        .await?;
    tx.unbounded_send(("a".into(), Loaded::new("from store".into())))?;
    assert!(!cache.is_ready());
    assert_eq!(value(&cache, "a"), None, "reads before ready miss");
    drop(tx);
    tokio::time::timeout(WAIT, cache.ready()).await?;
    assert_eq!(value(&cache, "a").as_deref(), Some("from store"));
    Ok(())
}

#[tokio::test]
async fn dropping_or_closing_the_cache_stops_its_task_and_unsubscribes() -> anyhow::Result<()> {
    let bus = MemoryTransport::new();
    let cache: LocalCache<String> =
        LocalCache::builder(Channel::new(bus.clone().into_arc(), "bye"))
            .build()
            .await?;
    assert_eq!(bus.subscriber_count("bye"), 1);
    drop(cache);
    eventually("the dropped cache unsubscribed", || {
        bus.subscriber_count("bye") == 0
    })
    .await;

    let cache: LocalCache<String> =
        LocalCache::builder(Channel::new(bus.clone().into_arc(), "bye"))
            .build()
            .await?;
    let mut raw = bus.subscribe("bye", SubscribeOptions::default()).await?;
    cache.put("k", "v".into()).await?;
    cache.close().await?;
    assert_eq!(
        bus.subscriber_count("bye"),
        1,
        "only the raw subscription is left"
    );
    // close() sends a last heartbeat after the update.
    use futures::StreamExt;
    let kinds: Vec<Kind> = tokio::time::timeout(WAIT, (&mut raw).take(2).collect::<Vec<_>>())
        .await?
        .into_iter()
        .map(|e| match e {
            Ok(hydratecache_core::Event::Message(m)) => m.kind,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, [Kind::Update, Kind::Heartbeat]);
    Ok(())
}

#[tokio::test]
async fn an_undecodable_update_invalidates_the_key() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let reader = cache_on(&bus, "codec").await;
    let good: Channel<String> = Channel::new(bus.clone(), "codec");
    let wrong: Channel<Vec<u64>> = Channel::new(bus.clone(), "codec");
    good.publish("k", &"v".into()).await?;
    eventually("k held", || value(&reader, "k").is_some()).await;
    wrong.publish("k", &vec![1, 2, 3]).await?;
    eventually("decode error counted", || reader.stats().decode_errors == 1).await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "kept serving a value after an update it could not read"
    );
    Ok(())
}
