//! LocalCache hydration on the in-memory transport: a hydration task that
//! cannot be stopped by hostile input or panicking user code, the cache's own
//! publisher identity, unreadable envelopes, TTL caps and sequence tracking.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use hydratecache_cache::{Loaded, LocalCache, RepairPolicy};
use hydratecache_core::{
    CborCodec, Channel, Codec, Envelope, EnvelopeError, Error, Event, Gap, GapReason, Kind,
    MemoryTransport, PublisherId, Result, Transport, Ttl,
};

mod common;

use common::bus::{cache, channel, Bus};
use common::{eventually, value, WAIT};

fn cbor(value: &str) -> bytes::Bytes {
    CborCodec::new()
        .encode(&value.to_owned())
        .expect("cbor")
        .into()
}

/// An envelope as a foreign (or hostile, or newer) publisher would send it.
fn raw(publisher: u128, sequence: u64, key: &str, value: &str) -> Envelope {
    Envelope {
        publisher: PublisherId(publisher),
        sequence,
        ..Envelope::update(key, cbor(value))
    }
}

// ---- item 2: hydration that cannot silently stop ----

#[tokio::test]
async fn a_hostile_max_sequence_does_not_stop_hydration() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "max").await;
    let writer = channel(&bus, "max");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    // u64::MAX, then anything from the same publisher: `last + 1` overflowed.
    bus.raw("max", &raw(7, u64::MAX, "x", "hostile"));
    bus.raw("max", &raw(7, 1, "y", "hostile"));
    writer.publish("k", &"v2".into()).await?;
    eventually("k = v2 applied after the hostile messages", || {
        value(&reader, "k").as_deref() == Some("v2")
    })
    .await;
    Ok(())
}

fn panicky_codec(bus: &Arc<Bus>, topic: &str) -> Channel<String> {
    let transport: Arc<dyn Transport> = bus.clone();
    Channel::builder(transport, topic)
        .encoder_decoder(
            |v: &String| Ok(v.as_bytes().to_vec()),
            |bytes: &[u8]| {
                assert_ne!(bytes, b"boom", "the user's codec panics");
                Ok(String::from_utf8(bytes.to_vec())?)
            },
        )
        .build()
}

#[tokio::test]
async fn a_panicking_codec_forgets_the_key_and_hydration_goes_on() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = LocalCache::builder(panicky_codec(&bus, "codec"))
        .heartbeat_interval(None)
        .build()
        .await?;
    let writer = panicky_codec(&bus, "codec");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    writer.publish("k", &"boom".into()).await?;
    writer.publish("j", &"j1".into()).await?;
    eventually("j = j1 applied after the panic", || {
        value(&reader, "j").as_deref() == Some("j1")
    })
    .await;
    assert_eq!(value(&reader, "k"), None, "kept serving k = v1");
    let stats = reader.stats();
    assert_eq!(stats.hydration_panics, 1, "{stats:?}");
    Ok(())
}

#[tokio::test]
async fn a_panicking_weigher_forgets_the_key_and_hydration_goes_on() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = LocalCache::builder(channel(&bus, "weigher"))
        .heartbeat_interval(None)
        .max_weight(1 << 20, |_key: &str, value: &String| {
            assert_ne!(value, "boom", "the user's weigher panics");
            value.len() as u64
        })
        .build()
        .await?;
    let writer = channel(&bus, "weigher");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    writer.publish("k", &"boom".into()).await?;
    writer.publish("j", &"j1".into()).await?;
    eventually("j = j1 applied after the panic", || {
        value(&reader, "j").as_deref() == Some("j1")
    })
    .await;
    assert_eq!(value(&reader, "k"), None, "kept serving k = v1");
    assert_eq!(reader.stats().hydration_panics, 1);
    Ok(())
}

#[tokio::test]
async fn a_panicking_warm_up_stream_is_counted_and_hydration_goes_on() -> anyhow::Result<()> {
    let bus = Bus::new();
    let warm = futures::stream::iter([("a".to_owned(), Loaded::new("a0".to_owned()))]).chain(
        futures::stream::poll_fn(|_| -> std::task::Poll<Option<(String, Loaded<String>)>> {
            panic!("the user's warm-up stream panics")
        }),
    );
    let reader = LocalCache::builder(channel(&bus, "warm"))
        .heartbeat_interval(None)
        .warm_from(warm)
        .build()
        .await?;
    tokio::time::timeout(WAIT, reader.ready())
        .await
        .map_err(|_| anyhow::anyhow!("never ready after the warm-up stream panicked"))?;
    assert_eq!(value(&reader, "a").as_deref(), Some("a0"));
    channel(&bus, "warm").publish("b", &"b1".into()).await?;
    eventually("b = b1", || value(&reader, "b").as_deref() == Some("b1")).await;
    assert_eq!(reader.stats().hydration_panics, 1);
    Ok(())
}

#[tokio::test]
async fn a_hydration_task_that_dies_stops_serving_then_resubscribes() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "dies").await;
    let writer = channel(&bus, "dies");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    writer.publish("boom", &"x".into()).await?; // the subscription's stream panics
    writer.publish("k", &"v2".into()).await?; // lost with the dead subscription
    eventually("stops serving k = v1", || {
        value(&reader, "k").as_deref() != Some("v1")
    })
    .await;
    let stats = reader.stats();
    assert_eq!(stats.hydration_failures, 1, "{stats:?}");
    eventually("resubscribed", || {
        bus.subscribes.load(Ordering::Acquire) == 2
    })
    .await;
    writer.publish("k", &"v3".into()).await?;
    eventually("k = v3 after the resubscribe", || {
        value(&reader, "k").as_deref() == Some("v3")
    })
    .await;
    Ok(())
}

// ---- item 3: the cache's own identity ----

#[tokio::test]
async fn publishes_through_the_caches_channel_reach_the_cache() -> anyhow::Result<()> {
    let bus = Bus::new();
    let cache = cache(&bus, "own").await;
    cache.channel().publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&cache, "k").as_deref() == Some("v1")).await;
    // The cache's own writes still skip their echo.
    cache.put("j", "j1".into()).await?;
    cache.channel().publish("k", &"v2".into()).await?;
    eventually("k = v2", || value(&cache, "k").as_deref() == Some("v2")).await;
    assert_eq!(cache.stats().own_echoes_skipped, 1);
    assert_ne!(cache.publisher(), cache.channel().publisher());
    Ok(())
}

#[tokio::test]
async fn caches_built_from_clones_of_one_channel_see_each_others_writes() -> anyhow::Result<()> {
    let bus = Bus::new();
    let shared = channel(&bus, "clones");
    let a = LocalCache::builder(shared.clone()).build().await?;
    let b = LocalCache::builder(shared).build().await?;
    a.put("k", "from a".into()).await?;
    eventually("b sees a's put", || {
        value(&b, "k").as_deref() == Some("from a")
    })
    .await;
    b.invalidate("k").await?;
    eventually("a sees b's delete", || value(&a, "k").is_none()).await;
    Ok(())
}

#[tokio::test]
async fn a_lost_last_publish_through_the_caches_channel_is_revealed_by_a_heartbeat(
) -> anyhow::Result<()> {
    let bus = Bus::new();
    let transport: Arc<dyn Transport> = bus.clone();
    let writer: LocalCache<String> = LocalCache::builder(Channel::new(transport, "hb-own"))
        .heartbeat_interval(Some(Duration::from_millis(50)))
        .build()
        .await?;
    let reader = cache(&bus, "hb-own").await;
    writer.channel().publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").is_some()).await;
    bus.drop_next.store(1, Ordering::Release);
    writer.channel().publish("k", &"v2".into()).await?; // lost, and the last
    eventually("a heartbeat reveals the loss", || {
        reader.stats().sequence_gaps == 1
    })
    .await;
    assert_eq!(value(&reader, "k"), None, "stale v1 served");
    Ok(())
}

// ---- item 4: unreadable envelopes ----

#[tokio::test]
async fn an_envelope_from_a_newer_release_is_a_gap() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "newer").await;
    let writer = channel(&bus, "newer");
    // Byte 1: format version; byte 2: kind; byte 3: flags.
    for (n, (at, byte)) in [(1usize, 2u8), (2, 9), (3, 0x80)].into_iter().enumerate() {
        writer.publish("k", &format!("v{n}")).await?;
        eventually("k held", || value(&reader, "k").is_some()).await;
        let mut newer = raw(9, 1, "k", "newer").encode()?;
        newer[at] = byte;
        bus.bus.publish_raw("newer", newer)?;
        eventually("k no longer served after an unreadable message", || {
            value(&reader, "k").is_none()
        })
        .await;
    }
    let stats = reader.stats();
    assert_eq!((stats.malformed, stats.gaps), (3, 3), "{stats:?}");
    // Bytes that are not an envelope at all (another client on the topic)
    // are counted, not repaired.
    writer.publish("k", &"v".into()).await?;
    eventually("k held", || value(&reader, "k").is_some()).await;
    bus.bus.publish_raw("newer", &b"not an envelope"[..])?;
    bus.bus.publish_raw("newer", &b""[..])?;
    writer.publish("j", &"j".into()).await?;
    eventually("j held", || value(&reader, "j").is_some()).await;
    assert_eq!(value(&reader, "k").as_deref(), Some("v"));
    assert_eq!(reader.stats().malformed, 5);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_record_with_a_readable_key_forgets_that_key() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "keyed").await;
    let writer = channel(&bus, "keyed");
    writer.publish("k", &"k1".into()).await?;
    writer.publish("j", &"j1".into()).await?;
    eventually("j held", || value(&reader, "j").is_some()).await;
    bus.inject(|| {
        Err(Error::Malformed {
            topic: "keyed".into(),
            key: Some("k".into()),
            source: EnvelopeError::UnknownKind(9),
        })
    });
    eventually("k forgotten", || value(&reader, "k").is_none()).await;
    assert_eq!(value(&reader, "j").as_deref(), Some("j1"), "only k goes");
    let stats = reader.stats();
    assert_eq!((stats.malformed, stats.repairs()), (1, 0), "{stats:?}");
    Ok(())
}

// ---- item 6: TTL capped at its duration ----

#[test]
fn a_ttl_never_outlives_its_duration() {
    let now = SystemTime::now();
    let ahead = Ttl {
        start: now + Duration::from_secs(86_400),
        duration: Duration::from_secs(60),
    };
    assert_eq!(ahead.remaining_at(now), Duration::from_secs(60));
    assert!(ahead.remaining() <= Duration::from_secs(60));
    let behind = Ttl {
        start: now - Duration::from_secs(50),
        duration: Duration::from_secs(60),
    };
    assert_eq!(behind.remaining_at(now), Duration::from_secs(10));
}

#[tokio::test]
async fn a_publisher_clock_ahead_does_not_stretch_a_cached_ttl() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "skew").await;
    let mut envelope = raw(5, 1, "k", "v");
    envelope.ttl = Some(Ttl {
        start: SystemTime::now() + Duration::from_secs(3_600),
        duration: Duration::from_millis(200),
    });
    bus.raw("skew", &envelope);
    eventually("k held", || value(&reader, "k").is_some()).await;
    eventually("k expired after its 200 ms", || {
        value(&reader, "k").is_none()
    })
    .await;
    Ok(())
}

// ---- items 10 and 12: sequence tracking ----

#[tokio::test]
async fn a_forged_huge_sequence_does_not_disable_gap_detection() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "forged").await;
    let writer = channel(&bus, "forged");
    writer.publish("k", &"k1".into()).await?;
    eventually("k = k1", || value(&reader, "k").as_deref() == Some("k1")).await;
    // Someone sends under the writer's id with a huge sequence.
    let mut forged = raw(writer.publisher().0, 1_000_000_000, "x", "forged");
    forged.kind = Kind::Delete;
    forged.payload = bytes::Bytes::new();
    bus.raw("forged", &forged);
    eventually("the forged jump seen", || reader.stats().sequence_gaps == 1).await;
    // The writer's next message is far below the forged mark: a gap, and
    // the mark is set again from it. Published before the repair it causes,
    // it only invalidates; the one after it is stored.
    writer.publish("k", &"k2".into()).await?;
    eventually("the mark set again", || reader.stats().sequence_gaps == 2).await;
    writer.publish("k", &"k2".into()).await?;
    eventually("k = k2", || value(&reader, "k").as_deref() == Some("k2")).await;
    bus.drop_next.store(1, Ordering::Release);
    writer.publish("k", &"k3".into()).await?; // lost
    writer.publish("j", &"j1".into()).await?; // reveals the loss
    eventually("the loss revealed", || reader.stats().sequence_gaps == 3).await;
    assert_eq!(
        value(&reader, "k").as_deref(),
        None,
        "stale k2 served: the forged sequence hid the loss"
    );
    Ok(())
}

#[tokio::test]
async fn the_lost_first_message_of_a_new_publisher_is_a_gap() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "first").await;
    let old = channel(&bus, "first");
    old.publish("k", &"k1".into()).await?;
    eventually("k held", || value(&reader, "k").is_some()).await;
    // Past the clock-skew margin: the new publisher surely started after
    // the reader subscribed.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let new = channel(&bus, "first");
    bus.drop_next.store(1, Ordering::Release);
    new.publish("k", &"lost".into()).await?; // sequence 1, lost
    new.publish("j", &"j1".into()).await?; // sequence 2: 1 is missing
    eventually("the loss revealed", || reader.stats().sequence_gaps == 1).await;
    let stats = reader.stats();
    assert_eq!(stats.sequence_gaps, 1, "{stats:?}");
    assert_eq!(value(&reader, "k"), None, "stale k1 served");
    Ok(())
}

#[tokio::test]
async fn a_new_publisher_heard_first_through_its_heartbeat_is_a_gap() -> anyhow::Result<()> {
    let bus = Bus::new();
    let reader = cache(&bus, "hb").await;
    let old = channel(&bus, "hb");
    old.publish("k", &"k1".into()).await?;
    eventually("k held", || value(&reader, "k").is_some()).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let new = channel(&bus, "hb");
    bus.drop_next.store(1, Ordering::Release);
    new.publish("k", &"lost".into()).await?; // its only message, lost
    new.heartbeat().await?; // "my last sequence was 1"
    eventually("the heartbeat reveals the loss", || {
        reader.stats().sequence_gaps == 1
    })
    .await;
    assert_eq!(value(&reader, "k"), None, "stale k1 served");
    Ok(())
}

#[tokio::test]
async fn a_reload_cache_still_repairs_after_a_new_publishers_loss() -> anyhow::Result<()> {
    let bus = Bus::new();
    let transport: Arc<dyn Transport> = bus.clone();
    let reader = LocalCache::builder(Channel::new(transport, "reload"))
        .heartbeat_interval(None)
        .repair(RepairPolicy::Reload)
        .loader(|key: String| async move { Ok(Some(Loaded::new(format!("store:{key}")))) })
        .reload_limits(4, Duration::from_millis(1))
        .build()
        .await?;
    let old = channel(&bus, "reload");
    old.publish("k", &"k1".into()).await?;
    eventually("k held", || value(&reader, "k").is_some()).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let new = channel(&bus, "reload");
    bus.drop_next.store(1, Ordering::Release);
    new.publish("k", &"lost".into()).await?;
    new.publish("j", &"j1".into()).await?;
    eventually("k reloaded from the store", || {
        value(&reader, "k").as_deref() == Some("store:k")
    })
    .await;
    Ok(())
}

#[test]
fn a_cache_whose_runtime_shut_down_stops_serving() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bus = Bus::new();
    let reader = runtime.block_on(async {
        let reader = cache(&bus, "runtime").await;
        channel(&bus, "runtime").publish("k", &"v1".into()).await?;
        eventually("k = v1", || value(&reader, "k").is_some()).await;
        anyhow::Ok(reader)
    })?;
    assert_eq!(value(&reader, "k").as_deref(), Some("v1"));
    // The hydration task goes with its runtime; the handle lives on.
    drop(runtime);
    assert_eq!(
        value(&reader, "k"),
        None,
        "served from a cache whose hydration task is gone"
    );
    assert!(!reader.is_ready());
    assert_eq!(reader.stats().hydration_failures, 1);
    Ok(())
}

// ---- review: a cache that may have missed messages stops serving ----

fn load_as(
    tag: &'static str,
) -> impl Fn(String) -> futures::future::Ready<Result<Option<Loaded<String>>, hydratecache_core::BoxError>>
{
    move |key| futures::future::ready(Ok(Some(Loaded::new(format!("{tag}:{key}")))))
}

#[tokio::test]
async fn a_transport_error_item_stops_serving_until_the_next_gap() -> anyhow::Result<()> {
    let bus = Bus::new();
    let transport: Arc<dyn Transport> = bus.clone();
    // Even under `Ignore`: what is held or loaded while messages are being
    // dropped is not served once the cache serves again.
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(transport, "dropping"))
        .heartbeat_interval(None)
        .repair(RepairPolicy::Ignore)
        .build()
        .await?;
    let writer = channel(&bus, "dropping");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    bus.inject(|| {
        Err(Error::backend(
            "test-bus",
            "re-subscribe keeps failing: messages are being dropped",
            "connection refused",
        ))
    });
    eventually("stops serving", || !reader.is_ready()).await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "served while messages are dropped"
    );
    // Loads read through meanwhile, but are not served from the table.
    let loaded = reader.get_or_load("j", load_as("outage")).await?;
    assert_eq!(loaded.as_deref().map(String::as_str), Some("outage:j"));
    assert_eq!(value(&reader, "j"), None);
    bus.inject(|| Ok(Event::Gap(Gap::new(GapReason::Reconnected))));
    eventually("serves again after the gap", || reader.is_ready()).await;
    assert_eq!(value(&reader, "k"), None, "a value held before the outage");
    assert_eq!(
        value(&reader, "j"),
        None,
        "a value loaded during the outage"
    );
    writer.publish("k", &"v2".into()).await?;
    eventually("k = v2", || value(&reader, "k").as_deref() == Some("v2")).await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_hydration_invalidates_values_even_under_ignore() -> anyhow::Result<()> {
    let bus = Bus::new();
    let transport: Arc<dyn Transport> = bus.clone();
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(transport, "restart"))
        .heartbeat_interval(None)
        .repair(RepairPolicy::Ignore)
        .build()
        .await?;
    let writer = channel(&bus, "restart");
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    writer.publish("boom", &"x".into()).await?; // the subscription's stream panics
    writer.publish("k", &"v2".into()).await?; // lost with the dead subscription
                                              // It stopped serving before it resubscribes.
    eventually("resubscribed", || {
        bus.subscribes.load(Ordering::Acquire) == 2
    })
    .await;
    eventually("serves again", || reader.is_ready()).await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "served a value from before an outage that missed its update"
    );
    Ok(())
}

#[tokio::test]
async fn an_ended_subscription_does_not_reload() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "ends"))
        .heartbeat_interval(None)
        .repair(RepairPolicy::Reload)
        .reload_limits(8, Duration::ZERO)
        .loader(move |key: String| {
            c.fetch_add(1, Ordering::AcqRel);
            async move { Ok(Some(Loaded::new(format!("store:{key}")))) }
        })
        .build()
        .await?;
    reader.fetch("k").await?;
    assert_eq!(calls.load(Ordering::Acquire), 1);
    bus.close().await?; // ends the subscription
    eventually("stops serving", || {
        !reader.is_ready() && reader.stats().hydration_failures == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.load(Ordering::Acquire),
        1,
        "reloaded keys for a cache that will never serve again"
    );
    Ok(())
}

/// The warm-up waits for running publishers' first words; a gap in that wait
/// is a repair all the same: the warm-up, which stands for loads that began
/// at the subscription, stores nothing. Many caches at once: whether the
/// hydration task first polls the queued gap or the warm-up is the luck of
/// `select!`, and each cache draws once.
#[tokio::test]
async fn a_gap_while_the_warm_up_waits_keeps_it_from_storing() -> anyhow::Result<()> {
    let bus = Bus::new();
    let mut readers = Vec::new();
    for i in 0..24 {
        let warm = futures::stream::iter([("k".to_owned(), Loaded::new("k0".to_owned()))]);
        let reader = LocalCache::builder(channel(&bus, &format!("warm-gap-{i}")))
            .max_staleness(Some(Duration::from_millis(400)))
            .warm_from(warm)
            .build()
            .await?;
        readers.push(reader);
    }
    // The warm-up waits 200 ms (half the bound) before its first poll.
    bus.inject(|| Ok(Event::Gap(Gap::new(GapReason::Reconnected))));
    for (i, reader) in readers.iter().enumerate() {
        eventually("the gap repaired", || reader.stats().repairs_clear == 1).await;
        tokio::time::timeout(WAIT, reader.ready())
            .await
            .map_err(|_| anyhow::anyhow!("never ready"))?;
        assert_eq!(
            value(reader, "k"),
            None,
            "cache {i}: the warm-up predates the repair"
        );
    }
    Ok(())
}

/// A running publisher's first word while the warm-up waits invalidates what
/// was stored before it, not the warm-up that follows.
#[tokio::test]
async fn a_first_word_while_the_warm_up_waits_leaves_it_whole() -> anyhow::Result<()> {
    let bus = Bus::new();
    let writer = channel(&bus, "warm-word");
    writer.publish("a", &"a1".into()).await?;
    let warm = futures::stream::iter([("k".to_owned(), Loaded::new("k0".to_owned()))]);
    let reader = LocalCache::builder(channel(&bus, "warm-word"))
        .max_staleness(Some(Duration::from_millis(400)))
        .warm_from(warm)
        .build()
        .await?;
    writer.publish("b", &"b1".into()).await?;
    eventually("the first word", || reader.stats().first_words == 1).await;
    tokio::time::timeout(WAIT, reader.ready())
        .await
        .map_err(|_| anyhow::anyhow!("never ready"))?;
    assert_eq!(value(&reader, "k").as_deref(), Some("k0"));
    assert_eq!(value(&reader, "b").as_deref(), Some("b1"));
    Ok(())
}
