//! The cache's own liveness checks: publisher leases (a writer that dies
//! between commit and publish), goodbyes, and stalls of the process.

use std::sync::Arc;
use std::time::Duration;

use hydratecache_cache::{LocalCache, Untrusted};
use hydratecache_core::{Channel, MemoryTransport, Transport};

mod common;

use common::{eventually, value};

const BOUND: Duration = Duration::from_millis(400);

async fn reader(bus: &Arc<dyn Transport>, topic: &str) -> LocalCache<String> {
    LocalCache::builder(Channel::new(Arc::clone(bus), topic))
        .max_staleness(Some(BOUND))
        .build()
        .await
        .expect("cache")
}

/// A writer holding `k = v1` in `reader`, heartbeating until `stop` fires
/// (a goodbye) or its task is aborted (a crash: no goodbye).
async fn writer(
    bus: &Arc<dyn Transport>,
    topic: &str,
    reader: &LocalCache<String>,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let writer: Channel<String> = Channel::new(Arc::clone(bus), topic);
    writer.publish("k", &"v1".into()).await.expect("publish");
    eventually("k = v1", || value(reader, "k").as_deref() == Some("v1")).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(writer.run_heartbeats(BOUND / 4, async {
        let _ = stopped.await;
    }));
    // Its lease is known once a heartbeat came.
    tokio::time::sleep(BOUND / 2).await;
    (task, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_silent_past_its_lease_is_a_possible_loss() {
    let bus = MemoryTransport::new().into_arc();
    let reader = reader(&bus, "crash").await;
    let (task, _stop) = writer(&bus, "crash", &reader).await;
    assert_eq!(reader.stats().silent_publishers, 0, "alive: heartbeating");
    task.abort();
    eventually("the silence noticed", || {
        reader.stats().silent_publishers == 1
    })
    .await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "repaired (cleared): its last write may be lost"
    );
    assert_eq!(reader.stats().repairs_clear, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_says_goodbye_is_no_loss() {
    let bus = MemoryTransport::new().into_arc();
    let reader = reader(&bus, "goodbye").await;
    let (task, stop) = writer(&bus, "goodbye", &reader).await;
    let _ = stop.send(());
    task.await.expect("heartbeats end with a goodbye");
    // Well past the lease (three heartbeat intervals).
    tokio::time::sleep(BOUND * 2).await;
    assert_eq!(reader.stats().silent_publishers, 0);
    assert_eq!(value(&reader, "k").as_deref(), Some("v1"));
}

/// A stall of the runtime (here: the test blocks the only thread, as a
/// paused process would) stops reads at once, before the hydration task
/// runs again; the cache serves again once its marker came back.
#[tokio::test(flavor = "current_thread")]
async fn after_a_stall_reads_miss_until_the_cache_caught_up() {
    let bus = MemoryTransport::new().into_arc();
    let reader = reader(&bus, "stall").await;
    let writer: Channel<String> = Channel::new(Arc::clone(&bus), "stall");
    writer.publish("k", &"v1".into()).await.expect("publish");
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    std::thread::sleep(BOUND);
    assert_eq!(
        reader.get("k"),
        None,
        "the first read after the stall misses"
    );
    assert_eq!(reader.health().untrusted, Some(Untrusted::Stalled));
    eventually("caught up", || value(&reader, "k").as_deref() == Some("v1")).await;
    assert_eq!(reader.stats().stalls, 1);
    assert!(reader.health().is_trusted());
}

/// With the cache's liveness checks off, the same stall goes unnoticed: the
/// check above can fail.
#[tokio::test(flavor = "current_thread")]
async fn without_liveness_checks_a_stall_goes_unnoticed() {
    let bus = MemoryTransport::new().into_arc();
    let reader = LocalCache::builder(Channel::new(Arc::clone(&bus), "nostall"))
        .max_staleness(None)
        .build()
        .await
        .expect("cache");
    let writer: Channel<String> = Channel::new(Arc::clone(&bus), "nostall");
    writer.publish("k", &"v1".into()).await.expect("publish");
    eventually("k = v1", || value(&reader, "k").as_deref() == Some("v1")).await;
    std::thread::sleep(BOUND);
    assert_eq!(value(&reader, "k").as_deref(), Some("v1"));
    assert_eq!(reader.stats().stalls, 0);
}

/// A writer that is never idle still announces its lease, so its crash is
/// noticed too (it used to heartbeat only when idle: a busy writer's lease
/// was never known).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_writer_that_dies_is_noticed_too() {
    let bus = MemoryTransport::new().into_arc();
    let reader = reader(&bus, "busy").await;
    let writer: Channel<String> = Channel::new(Arc::clone(&bus), "busy");
    let busy = tokio::spawn({
        let writer = writer.clone();
        async move {
            for i in 0u64.. {
                let _ = writer.publish("k", &format!("v{i}")).await;
                tokio::time::sleep(BOUND / 40).await;
            }
        }
    });
    let heartbeats = tokio::spawn(writer.run_heartbeats(BOUND / 4, std::future::pending::<()>()));
    tokio::time::sleep(BOUND * 2).await;
    assert_eq!(reader.stats().silent_publishers, 0, "alive and busy");
    busy.abort();
    heartbeats.abort();
    eventually("the silence noticed", || {
        reader.stats().silent_publishers == 1
    })
    .await;
}

/// A write whose publish failed before a new reader first heard from its
/// writer does not show in the writer's sequence as the reader sees it: what
/// the reader loaded before that first word is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lost_before_a_running_writers_first_word_is_not_served() {
    let bus = common::bus::Bus::new();
    let transport: Arc<dyn Transport> = bus.clone();
    let writer: Channel<String> = Channel::new(Arc::clone(&transport), "joined");
    writer.publish("a", &"a1".into()).await.expect("publish");
    let store = Arc::new(std::sync::Mutex::new(String::from("k1")));
    let reader = {
        let store = Arc::clone(&store);
        LocalCache::builder(Channel::new(transport, "joined"))
            .max_staleness(Some(BOUND))
            .loader(move |_key: String| {
                let value = store.lock().expect("lock").clone();
                async move {
                    Ok::<_, hydratecache_core::BoxError>(Some(hydratecache_cache::Loaded::new(
                        value,
                    )))
                }
            })
            .build()
            .await
            .expect("cache")
    };
    let loaded = reader.fetch("k").await.expect("fetch");
    assert_eq!(loaded.as_deref().map(String::as_str), Some("k1"));
    // The writer commits k2; its publish is lost (sequence 2); its next
    // message (sequence 3) is the first word the reader hears from it.
    *store.lock().expect("lock") = "k2".into();
    bus.drop_next.store(1, std::sync::atomic::Ordering::Release);
    writer.publish("k", &"k2".into()).await.expect("publish");
    writer.publish("b", &"b1".into()).await.expect("publish");
    eventually("b delivered", || value(&reader, "b").is_some()).await;
    assert_eq!(
        value(&reader, "k"),
        None,
        "k1 was loaded before the writer's first word"
    );
    assert_eq!(reader.stats().first_words, 1);
    assert_eq!(reader.stats().sequence_gaps, 0, "not a gap");
    let reloaded = reader.fetch("k").await.expect("fetch");
    assert_eq!(reloaded.as_deref().map(String::as_str), Some("k2"));
}
