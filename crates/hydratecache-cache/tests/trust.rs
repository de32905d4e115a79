//! Trust: a cache stops serving what it holds at the moment the transport
//! reports its path to the server broken, reads through the loader meanwhile,
//! and serves again once delivery is back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hydratecache_cache::{Loaded, LocalCache, Untrusted};
use hydratecache_core::{
    BoxError, Channel, Event, Gap, GapReason, InterruptReason, Interruption, Transport,
};

mod common;

use common::bus::{cache, channel, Bus};
use common::{eventually, value};

fn interrupted(reason: InterruptReason) -> impl Fn() -> hydratecache_core::Result<Event> {
    move || Ok(Event::Interrupted(Interruption::new(reason)))
}

/// A cache holding `k = v1`, published by another channel.
async fn holding_v1(
    bus: &Arc<Bus>,
    topic: &str,
) -> anyhow::Result<(LocalCache<String>, Channel<String>)> {
    let reader = cache(bus, topic).await;
    let writer = channel(bus, topic);
    writer.publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    Ok((reader, writer))
}

#[tokio::test]
async fn an_interruption_stops_serving_at_once_and_the_gap_after_it_repairs() -> anyhow::Result<()>
{
    let bus = Bus::new();
    let (reader, writer) = holding_v1(&bus, "cut").await?;
    assert!(reader.health().is_trusted());

    bus.inject(interrupted(InterruptReason::Unresponsive));
    eventually("untrusted", || !reader.health().is_trusted()).await;
    assert_eq!(
        reader.health().untrusted,
        Some(Untrusted::Interrupted(InterruptReason::Unresponsive))
    );
    assert_eq!(
        reader.get("k"),
        None,
        "nothing held is served while untrusted"
    );
    // Delivered meanwhile (the bus is not really cut): applied, not served.
    writer.publish("k", &"v2".into()).await?;
    eventually("v2 applied", || reader.stats().updates_applied == 2).await;
    let stats = reader.stats();
    assert_eq!(
        (stats.interruptions, stats.untrusted, stats.trusted),
        (1, 1, false)
    );
    assert_eq!(reader.get("k"), None);

    bus.inject(|| Ok(Event::Gap(Gap::new(GapReason::Reconnected))));
    eventually("trusted again", || reader.health().is_trusted()).await;
    assert_eq!(
        reader.stats().repairs_clear,
        1,
        "the gap ends the loss: a repair"
    );
    assert_eq!(value(&reader, "k"), None, "cleared by the repair");
    writer.publish("k", &"v3".into()).await?;
    eventually("k = v3", || value(&reader, "k").as_deref() == Some("v3")).await;
    Ok(())
}

/// A resumable transport delivers what was published while cut off, then
/// `Resumed`: the cache caught up, keeps what it holds, and counts both.
#[tokio::test]
async fn resumed_after_an_interruption_serves_again_without_a_repair() -> anyhow::Result<()> {
    let bus = Bus::new();
    let (reader, writer) = holding_v1(&bus, "resume").await?;
    writer.publish("j", &"j1".into()).await?;
    eventually("j = j1", || value(&reader, "j").as_deref() == Some("j1")).await;
    bus.inject(interrupted(InterruptReason::Disconnected));
    eventually("untrusted", || !reader.health().is_trusted()).await;
    let since = reader.health().since;
    // The catch-up: what the transport retained while cut off.
    writer.publish("k", &"v2".into()).await?;
    writer.delete("j").await?;
    eventually("caught up", || reader.stats().deletes_applied == 1).await;
    bus.inject(|| Ok(Event::Resumed));
    eventually("trusted again", || reader.health().is_trusted()).await;
    assert!(reader.health().since >= since);
    assert_eq!(value(&reader, "k").as_deref(), Some("v2"));
    assert_eq!(value(&reader, "j"), None);
    let stats = reader.stats();
    assert_eq!(stats.repairs(), 0, "nothing was lost");
    assert_eq!((stats.resumes, stats.caught_up), (1, 2));
    // A later cut that ends in a gap is a repair, and no resume.
    bus.inject(interrupted(InterruptReason::Disconnected));
    writer.publish("k", &"v3".into()).await?;
    eventually("v3 applied", || reader.stats().updates_applied == 4).await;
    bus.inject(|| Ok(Event::Gap(Gap::new(GapReason::Reconnected))));
    eventually("repaired", || reader.stats().repairs() == 1).await;
    let stats = reader.stats();
    assert_eq!((stats.resumes, stats.caught_up), (1, 2));
    Ok(())
}

#[tokio::test]
async fn a_second_interruption_before_the_gap_keeps_the_first_reason() -> anyhow::Result<()> {
    let bus = Bus::new();
    let (reader, _writer) = holding_v1(&bus, "twice").await?;
    bus.inject(interrupted(InterruptReason::Unresponsive));
    bus.inject(interrupted(InterruptReason::Disconnected));
    eventually("both read", || reader.stats().interruptions == 2).await;
    let health = reader.health();
    assert_eq!(
        health.untrusted,
        Some(Untrusted::Interrupted(InterruptReason::Unresponsive))
    );
    assert_eq!(reader.stats().untrusted, 1, "one untrusted period");
    Ok(())
}

/// A loader that fails while `failing` is set, and otherwise loads `store`.
fn loader(
    failing: &Arc<AtomicBool>,
) -> impl Fn(String) -> futures::future::Ready<Result<Option<Loaded<String>>, BoxError>> {
    let failing = Arc::clone(failing);
    move |_key| {
        futures::future::ready(if failing.load(Ordering::Acquire) {
            Err("store unreachable".into())
        } else {
            Ok(Some(Loaded::new("from store".to_owned())))
        })
    }
}

async fn cache_with_loader(
    bus: &Arc<Bus>,
    topic: &str,
    failing: &Arc<AtomicBool>,
    serve_stale: bool,
) -> anyhow::Result<LocalCache<String>> {
    let transport: Arc<dyn Transport> = bus.clone();
    let reader = LocalCache::builder(Channel::new(transport, topic))
        .heartbeat_interval(None)
        .loader(loader(failing))
        .serve_stale_on_error(serve_stale)
        .build()
        .await?;
    channel(bus, topic).publish("k", &"v1".into()).await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    bus.inject(interrupted(InterruptReason::Unresponsive));
    eventually("untrusted", || !reader.health().is_trusted()).await;
    Ok(reader)
}

#[tokio::test]
async fn while_untrusted_fetch_reads_through_the_loader() -> anyhow::Result<()> {
    let bus = Bus::new();
    let failing = Arc::new(AtomicBool::new(false));
    let reader = cache_with_loader(&bus, "through", &failing, false).await?;
    let fetched = reader.fetch("k").await?;
    assert_eq!(fetched.as_deref().map(String::as_str), Some("from store"));
    assert_eq!(reader.stats().loads, 1);
    assert_eq!(reader.get("k"), None, "still untrusted");
    // Without serve_stale_on_error a failing loader is an error.
    failing.store(true, Ordering::Release);
    assert!(reader.fetch("k").await.is_err());
    assert_eq!(reader.stats().stale_served, 0);
    Ok(())
}

#[tokio::test]
async fn serve_stale_on_error_answers_with_the_value_held_when_the_loader_fails(
) -> anyhow::Result<()> {
    let bus = Bus::new();
    let failing = Arc::new(AtomicBool::new(true));
    let reader = cache_with_loader(&bus, "stale", &failing, true).await?;
    let fetched = reader.fetch("k").await?;
    assert_eq!(fetched.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(reader.stats().stale_served, 1);
    assert!(
        reader.fetch("absent").await.is_err(),
        "nothing held: the loader's error"
    );
    let got = reader
        .get_or_load("k", |_| async {
            Err::<Option<Loaded<String>>, BoxError>("down".into())
        })
        .await?;
    assert_eq!(got.as_deref().map(String::as_str), Some("v1"));
    assert_eq!(reader.stats().stale_served, 2);
    Ok(())
}

/// An update published before the last outage repair and delivered after it
/// (a publisher's client held it through the outage) is not stored: a newer
/// write may have been lost meanwhile, so the key is left to the store.
#[tokio::test]
async fn an_update_published_before_the_last_outage_repair_only_invalidates() -> anyhow::Result<()>
{
    use hydratecache_core::{CborCodec, Codec, Envelope, PublisherId};

    let bus = Bus::new();
    let (reader, _writer) = holding_v1(&bus, "late").await?;
    let published_before = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
    // An outage: interrupted, then the gap that ends it.
    bus.inject(interrupted(InterruptReason::Disconnected));
    bus.inject(|| Ok(Event::Gap(Gap::new(GapReason::Reconnected))));
    eventually("repaired", || reader.stats().repairs_clear == 1).await;
    let held = CborCodec::new()
        .encode(&"held through the outage".to_owned())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    bus.raw(
        "late",
        &Envelope {
            publisher: PublisherId::random(),
            sequence: 1,
            published_at: published_before,
            ..Envelope::update("k", held)
        },
    );
    eventually("applied as an invalidation", || {
        reader.stats().predating_repair == 1
    })
    .await;
    assert_eq!(value(&reader, "k"), None);
    Ok(())
}

const BOUND: std::time::Duration = std::time::Duration::from_millis(400);

/// A reader under a 400 ms bound holding `k = v1` from a writer whose lease
/// (a heartbeat, three intervals of 80 ms) it knows.
async fn leased(
    bus: &Arc<Bus>,
    topic: &str,
) -> anyhow::Result<(LocalCache<String>, Channel<String>)> {
    let transport: Arc<dyn Transport> = bus.clone();
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(transport, topic))
        .max_staleness(Some(BOUND))
        .heartbeat_interval(None)
        .build()
        .await?;
    let writer = channel(bus, topic);
    writer.publish("k", &"v1".into()).await?;
    writer
        .heartbeat_with_lease(std::time::Duration::from_millis(240))
        .await?;
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    Ok((reader, writer))
}

/// What a resumable transport delivers at the end of a cut: the writer's
/// heartbeats sent meanwhile, each with its own send time.
fn caught_up_heartbeat(
    writer: &Channel<String>,
    sent: std::time::SystemTime,
) -> impl Fn() -> hydratecache_core::Result<Event> {
    let envelope = hydratecache_core::Envelope {
        kind: hydratecache_core::Kind::Heartbeat,
        publisher: writer.publisher(),
        ttl: Some(hydratecache_core::Ttl {
            start: sent,
            duration: std::time::Duration::from_millis(240),
        }),
        published_at: sent,
        // The writer's last message: the one before the cut.
        sequence: 1,
        ..hydratecache_core::Envelope::update(String::new(), bytes::Bytes::new())
    };
    move || Ok(Event::Message(envelope.clone()))
}

/// Cut off longer than a writer's lease, this cache hears nobody: not the
/// writer's silence. Its heartbeats of the cut come with the catch-up, and
/// the resume is no repair. Before, the lease ran out during the cut and
/// the cache repaired.
#[tokio::test]
async fn a_writer_heard_in_the_catch_up_is_not_silent() -> anyhow::Result<()> {
    let bus = Bus::new();
    let (reader, writer) = leased(&bus, "lease-cut").await?;
    bus.inject(interrupted(InterruptReason::Disconnected));
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    for i in 1..=10 {
        let sent = cut + std::time::Duration::from_millis(80 * i);
        bus.inject(caught_up_heartbeat(&writer, sent));
    }
    bus.inject(|| Ok(Event::Resumed));
    eventually("trusted again", || reader.health().is_trusted()).await;
    let s = reader.stats();
    assert_eq!((s.silent_publishers, s.repairs()), (0, 0), "{s:?}");
    assert_eq!(value(&reader, "k").as_deref(), Some("v1"));
    Ok(())
}

/// A writer that fell silent during the cut (its last heartbeat caught up
/// is older than its lease) is judged at the resume, before the cache
/// serves again.
#[tokio::test]
async fn a_writer_silent_during_the_cut_is_repaired_for_at_the_resume() -> anyhow::Result<()> {
    let bus = Bus::new();
    let (reader, writer) = leased(&bus, "lease-died").await?;
    bus.inject(interrupted(InterruptReason::Disconnected));
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    // One heartbeat just after the cut began, then nothing.
    bus.inject(caught_up_heartbeat(
        &writer,
        cut + std::time::Duration::from_millis(50),
    ));
    bus.inject(|| Ok(Event::Resumed));
    eventually("trusted again", || reader.health().is_trusted()).await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "served again before the silent writer was repaired for"
    );
    let s = reader.stats();
    assert_eq!((s.silent_publishers, s.repairs_clear), (1, 1), "{s:?}");
    Ok(())
}
