//! Redis-specific behaviour against real servers: restarts, bursts, garbage
//! from redis-cli, server-side unsubscribe, killed connections, publishing
//! while the server is down. Tests that kill or restart a server start their
//! own; the others use `HYDRATECACHE_REDIS_URL` when set.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use hydratecache_conformance::unique_topic;
use hydratecache_core::{
    Envelope, Error, Event, Gap, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_redis::fred::interfaces::ClientLike;
use hydratecache_redis::fred::types::config::{Config, ReconnectPolicy};
use hydratecache_redis::fred::types::Builder;
use hydratecache_redis::{RedisTransport, DEFAULT_COMMAND_TIMEOUT};
use hydratecache_testkit::redis::{self as kit, RedisServer};

use common::{poll_until, TIMEOUT};

fn private_server() -> RedisServer {
    match RedisServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start a private redis-server: {e:#}"),
    }
}

fn shared_url() -> (kit::Redis, String) {
    match kit::shared_or_private() {
        Ok(r) => {
            let url = r.url();
            (r, url)
        }
        Err(e) => panic!("no Redis: {e:#}"),
    }
}

async fn connect(url: &str) -> RedisTransport {
    match RedisTransport::connect(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

async fn subscribe(t: &RedisTransport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic}: {e}"),
    }
}

fn envelope(publisher: PublisherId, sequence: u64, key: &str) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, sequence.to_be_bytes().to_vec())
    }
}

async fn next(sub: &mut Subscription, what: &str) -> Result<Event, Error> {
    match tokio::time::timeout(TIMEOUT, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("nothing within {TIMEOUT:?} while waiting for {what}"),
    }
}

async fn next_message(sub: &mut Subscription, what: &str) -> Envelope {
    match next(sub, what).await {
        Ok(Event::Message(m)) => m,
        other => panic!("expected {what}, got {other:?}"),
    }
}

/// Publishes `key` messages with increasing sequence numbers every 50 ms
/// until stopped, ignoring errors (the server may be down).
fn keep_publishing(
    t: RedisTransport,
    topic: String,
    key: &'static str,
) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let (stop2, sent2) = (Arc::clone(&stop), Arc::clone(&sent));
    let task = tokio::spawn(async move {
        let publisher = PublisherId::random();
        let mut seq = 0;
        while !stop2.load(Ordering::Relaxed) {
            seq += 1;
            if t.publish(&topic, &envelope(publisher, seq, key))
                .await
                .is_ok()
            {
                sent2.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (stop, sent, task)
}

/// After a connection loss: the next event must be the interruption (at the
/// moment fred saw the connection fail), then a reconnect gap, and messages
/// published afterwards must arrive. Returns (time to the gap, the first
/// message's key).
async fn expect_gap_then_messages(sub: &mut Subscription, key: &str) -> (Duration, u64) {
    let start = Instant::now();
    let mut event = next(sub, "the interruption").await;
    if matches!(event, Ok(Event::Message(ref m)) if m.key == "big") {
        // The output-buffer test's large message may get through first.
        event = next(sub, "the interruption").await;
    }
    match event {
        Ok(Event::Interrupted(_)) => {}
        other => panic!("expected the interruption first, got {other:?}"),
    }
    let event = next(sub, "the reconnect gap").await;
    match event {
        Ok(Event::Gap(Gap {
            reason: GapReason::Reconnected,
            ..
        })) => {}
        other => panic!("expected a reconnect gap first, got {other:?}"),
    }
    let to_gap = start.elapsed();
    let first = loop {
        match next(sub, "a message after the reconnect").await {
            Ok(Event::Message(m)) if m.key == key => break m.sequence,
            // Further reconnects may happen while the server comes back.
            Ok(Event::Gap(g)) if g.reason == GapReason::Reconnected => continue,
            Ok(Event::Interrupted(_)) => continue,
            other => panic!("expected a message after the gap, got {other:?}"),
        }
    };
    // And the stream keeps going, in order.
    let second = next_message(sub, "a second message after the reconnect").await;
    assert_eq!(
        second.sequence,
        first + 1,
        "messages out of order after the reconnect"
    );
    (to_gap, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_gives_a_gap_then_delivery_resumes() {
    let mut server = private_server();
    let url = server.url();
    let sub_t = connect(&url).await;
    let pub_t = match RedisTransport::builder()
        .command_timeout(Duration::from_secs(1))
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("restart");
    let mut sub = subscribe(&sub_t, &topic).await;
    let publisher = PublisherId::random();
    for i in 1..=100 {
        if let Err(e) = pub_t
            .publish(&topic, &envelope(publisher, i, "before"))
            .await
        {
            panic!("publish before the restart: {e}");
        }
    }
    for i in 1..=100 {
        assert_eq!(
            next_message(&mut sub, "a message before the restart")
                .await
                .sequence,
            i
        );
    }

    server.kill9();
    // Nothing was pending, so nothing can arrive but the gap; wait for the
    // subscriber to notice the loss while the server is down.
    let killed_at = Instant::now();
    if let Err(e) = server.start_again() {
        panic!("restart redis-server on port {}: {e:#}", server.port());
    }
    let (stop, sent, task) = keep_publishing(pub_t.clone(), topic.clone(), "after");
    let (to_gap, first) = expect_gap_then_messages(&mut sub, "after").await;
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = task.await {
        panic!("publisher task: {e}");
    }
    println!(
        "restart: gap {:?} after the kill ({to_gap:?} after restarting), first message after it: \
         #{first} of {} published after the restart",
        killed_at.elapsed(),
        sent.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_pubsub_gives_a_gap_then_delivery_resumes() {
    // Its own server: CLIENT KILL TYPE pubsub cuts every subscriber on it.
    let server = private_server();
    let url = server.url();
    let t = connect(&url).await;
    let topic = unique_topic("clientkill");
    let mut sub = subscribe(&t, &topic).await;
    let mut other = subscribe(&t, &unique_topic("clientkillother")).await;
    let publisher = PublisherId::random();
    if let Err(e) = t.publish(&topic, &envelope(publisher, 1, "before")).await {
        panic!("publish: {e}");
    }
    assert_eq!(
        next_message(&mut sub, "the first message").await.key,
        "before"
    );

    let killed = match kit::kill_pubsub_clients(&url) {
        Ok(n) => n,
        Err(e) => panic!("CLIENT KILL TYPE pubsub: {e:#}"),
    };
    assert!(killed >= 1, "CLIENT KILL found no pubsub client");
    let (stop, _, task) = keep_publishing(t.clone(), topic.clone(), "after");
    let (to_gap, first) = expect_gap_then_messages(&mut sub, "after").await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    // The other subscription of the connection was interrupted and got its
    // gap too.
    match next(&mut other, "the interruption on the other topic").await {
        Ok(Event::Interrupted(_)) => {}
        other => panic!("expected the interruption on the other subscription, got {other:?}"),
    }
    match next(&mut other, "the gap on the other topic").await {
        Ok(Event::Gap(g)) => assert_eq!(g.reason, GapReason::Reconnected),
        other => panic!("expected a gap on the other subscription, got {other:?}"),
    }
    println!("client kill: {killed} killed, gap after {to_gap:?}, first message after it #{first}");
}

/// Redis drops a subscriber whose output buffer passes
/// `client-output-buffer-limit pubsub`: here a 4 KiB hard limit and one
/// 16 KiB message. The subscription gets a reconnect gap, then delivery goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_buffer_limit_disconnect_gives_a_gap_then_delivery_resumes() {
    // Its own server: the limit applies to every subscriber on it.
    let server = private_server();
    let url = server.url();
    if let Err(e) = kit::cli(
        &url,
        &[
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 4kb 4kb 0",
        ],
        None,
    ) {
        panic!("CONFIG SET client-output-buffer-limit: {e:#}");
    }
    let t = connect(&url).await;
    let topic = unique_topic("outbuf");
    let mut sub = subscribe(&t, &topic).await;
    let publisher = PublisherId::random();
    let big = Envelope {
        publisher,
        sequence: 1,
        ..Envelope::update("big", vec![7u8; 16 * 1024])
    };
    if let Err(e) = t.publish(&topic, &big).await {
        panic!("publish the big message: {e}");
    }
    let (stop, _, task) = keep_publishing(t.clone(), topic.clone(), "after");
    let (to_gap, first) = expect_gap_then_messages(&mut sub, "after").await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    println!("output buffer limit: gap after {to_gap:?}, first message after it #{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_while_the_server_is_down_fails_within_the_command_timeout() {
    let mut server = private_server();
    let url = server.url();
    let t = connect(&url).await;
    let topic = unique_topic("down");
    let publisher = PublisherId::random();
    if let Err(e) = t.publish(&topic, &envelope(publisher, 1, "up")).await {
        panic!("publish while up: {e}");
    }
    server.kill9();
    let start = Instant::now();
    let result = tokio::time::timeout(
        DEFAULT_COMMAND_TIMEOUT * 4,
        t.publish(&topic, &envelope(publisher, 2, "down")),
    )
    .await;
    let elapsed = start.elapsed();
    match result {
        Ok(Err(Error::Backend { ref source, .. })) => {
            println!("publish while down failed after {elapsed:?}: {source}");
        }
        Ok(other) => panic!("publish while the server is down gave {other:?}"),
        Err(_) => panic!("publish while the server is down hung for {elapsed:?}"),
    }
    assert!(
        elapsed <= DEFAULT_COMMAND_TIMEOUT + Duration::from_secs(2),
        "the error took {elapsed:?}, over the command timeout {DEFAULT_COMMAND_TIMEOUT:?}"
    );
    // Back up: publishing works again without user action.
    if let Err(e) = server.start_again() {
        panic!("restart: {e:#}");
    }
    poll_until("a publish to succeed after the restart", || {
        let t = t.clone();
        let topic = topic.clone();
        async move {
            t.publish(&topic, &envelope(publisher, 3, "again"))
                .await
                .ok()
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100k_to_two_subscribers_all_or_gap() {
    const N: u64 = 100_000;
    let (_redis, url) = shared_url();
    let topic = unique_topic("burst");
    let mut consumers = Vec::new();
    for n in 0..2 {
        let t = connect(&url).await;
        let sub = subscribe(&t, &topic).await;
        consumers.push(tokio::spawn(async move {
            let _keep = t;
            count_burst(sub, N, n).await
        }));
    }
    let pub_t = connect(&url).await;
    let publisher = PublisherId::random();
    let start = Instant::now();
    let published = futures::stream::iter(1..=N)
        .map(|i| {
            let pub_t = &pub_t;
            let topic = &topic;
            async move { pub_t.publish(topic, &envelope(publisher, i, "burst")).await }
        })
        .buffered(64)
        .try_fold(0u64, |n, ()| async move { Ok(n + 1) })
        .await;
    match published {
        Ok(n) => assert_eq!(n, N),
        Err(e) => panic!("burst publish: {e}"),
    }
    let publish_time = start.elapsed();
    for (n, consumer) in consumers.into_iter().enumerate() {
        let c = match consumer.await {
            Ok(c) => c,
            Err(e) => panic!("consumer {n}: {e}"),
        };
        println!(
            "burst: subscriber {n}: {} received, {} gap(s), {} counted as missed, {} of unknown count; \
             published {N} in {publish_time:?}",
            c.received, c.gaps, c.missed, c.unknown_gaps
        );
        assert!(
            c.received == N || c.gaps > 0,
            "subscriber {n} received {} of {N} without a gap event",
            c.received
        );
        if c.unknown_gaps == 0 {
            assert_eq!(
                c.received + c.missed,
                N,
                "subscriber {n}: counts do not add up"
            );
        }
    }
}

#[derive(Debug, Default)]
struct BurstCount {
    received: u64,
    gaps: u64,
    missed: u64,
    unknown_gaps: u64,
}

/// Reads until `n` messages are accounted for (received or counted in a
/// gap) or nothing arrives for [`TIMEOUT`]; checks order and duplicates.
async fn count_burst(mut sub: Subscription, n: u64, who: usize) -> BurstCount {
    let mut c = BurstCount::default();
    let mut last = 0;
    while c.received + c.missed < n {
        match tokio::time::timeout(TIMEOUT, sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => {
                assert!(
                    m.sequence > last,
                    "subscriber {who}: {} after {last}",
                    m.sequence
                );
                last = m.sequence;
                c.received += 1;
            }
            Ok(Some(Ok(Event::Gap(g)))) => {
                c.gaps += 1;
                match g.missed {
                    Some(m) => c.missed += m,
                    None => c.unknown_gaps += 1,
                }
            }
            Ok(Some(other)) => panic!("subscriber {who}: unexpected {other:?}"),
            Ok(None) => panic!("subscriber {who}: stream ended"),
            // Everything that will arrive has arrived.
            Err(_) => break,
        }
    }
    c
}

/// A subscriber that does not read while 1,000 messages arrive, with a
/// buffer of 10: it gets the first 10, then one gap counting exactly the 990
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_overflow_is_one_counted_gap() {
    const N: u64 = 1_000;
    let (_redis, url) = shared_url();
    let t = match RedisTransport::builder()
        .subscription_buffer(10)
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("slow");
    let mut sub = subscribe(&t, &topic).await;
    // A second subscription on the same topic, read while publishing, tells
    // when all messages went through the dispatcher.
    let reader = tokio::spawn(count_burst(subscribe(&t, &topic).await, N, 1));
    let publisher = PublisherId::random();
    for i in 1..=N {
        if let Err(e) = t.publish(&topic, &envelope(publisher, i, "slow")).await {
            panic!("publish: {e}");
        }
    }
    let reader_count = match reader.await {
        Ok(c) => c,
        Err(e) => panic!("reader: {e}"),
    };
    assert_eq!(
        reader_count.received + reader_count.missed,
        N,
        "{reader_count:?}"
    );
    let mut received = Vec::new();
    let mut missed = None;
    while received.len() < 10 || missed.is_none() {
        match next(&mut sub, "the buffered messages and the gap").await {
            Ok(Event::Message(m)) => received.push(m.sequence),
            Ok(Event::Gap(g)) => {
                assert_eq!(g.reason, GapReason::Lagged);
                assert!(missed.is_none(), "a second gap: {g:?}");
                missed = g.missed;
                assert!(missed.is_some(), "the overflow gap has no count");
            }
            Err(e) => panic!("unexpected error item {e}"),
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(received, (1..=10).collect::<Vec<_>>());
    assert_eq!(missed, Some(N - 10));
    println!("slow subscriber: received {received:?}, then a gap of {missed:?}");
}

/// With fred's broadcast channel cut to 4 messages, a burst overflows the
/// client's own buffer: every loss it reports is a gap carrying the count
/// (one topic on the connection), and received + missed adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_buffer_lag_becomes_counted_gaps() {
    const N: u64 = 20_000;
    let (_redis, url) = shared_url();
    let sub_t = match RedisTransport::builder()
        .broadcast_capacity(4)
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    assert_eq!(
        sub_t.subscriber().perf_config().broadcast_channel_capacity,
        4
    );
    let topic = unique_topic("lag");
    let sub = subscribe(&sub_t, &topic).await;
    let consumer = tokio::spawn(count_burst(sub, N, 0));
    let pub_t = connect(&url).await;
    let publisher = PublisherId::random();
    let published = futures::stream::iter(1..=N)
        .map(|i| {
            let pub_t = &pub_t;
            let topic = &topic;
            async move { pub_t.publish(topic, &envelope(publisher, i, "lag")).await }
        })
        .buffered(64)
        .try_collect::<Vec<()>>()
        .await;
    if let Err(e) = published {
        panic!("publish: {e}");
    }
    let c = match consumer.await {
        Ok(c) => c,
        Err(e) => panic!("consumer: {e}"),
    };
    println!(
        "client lag (broadcast capacity 4): {} received, {} gap(s), {} missed, {} of unknown count",
        c.received, c.gaps, c.missed, c.unknown_gaps
    );
    assert_eq!(c.unknown_gaps, 0, "{c:?}");
    assert_eq!(c.received + c.missed, N, "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_redis_cli_is_an_error_item_and_the_stream_continues() {
    let (_redis, url) = shared_url();
    if let Err(e) = kit::cli_binary() {
        panic!("this test needs redis-cli: {e:#}");
    }
    let t = connect(&url).await;
    let topic = unique_topic("cligarbage");
    let mut sub = subscribe(&t, &topic).await;
    for (args, stdin) in [
        (vec!["PUBLISH", topic.as_str(), "xyz"], None),
        (vec!["PUBLISH", topic.as_str(), ""], None),
        (
            vec!["PUBLISH", topic.as_str()],
            Some(&[0xc7u8, 0x09, 0x01, 0x00][..]),
        ),
    ] {
        let receivers = match kit::cli(&url, &args, stdin) {
            Ok(out) => out,
            Err(e) => panic!("redis-cli {args:?}: {e:#}"),
        };
        assert_eq!(
            receivers.trim(),
            "1",
            "redis-cli PUBLISH reached {receivers:?}"
        );
        match next(&mut sub, "the error item for garbage").await {
            Err(e @ Error::Malformed { .. }) => println!("garbage {args:?} {stdin:?}: {e}"),
            other => panic!("garbage {args:?} gave {other:?}"),
        }
    }
    if let Err(e) = t
        .publish(&topic, &envelope(PublisherId::random(), 1, "after"))
        .await
    {
        panic!("publish: {e}");
    }
    assert_eq!(
        next_message(&mut sub, "the message after garbage")
            .await
            .key,
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_is_visible_in_pubsub_numsub() {
    let (_redis, url) = shared_url();
    let t = connect(&url).await;
    let topic = unique_topic("numsub");
    let numsub = |url: String, topic: String| async move {
        match tokio::task::spawn_blocking(move || kit::numsub(&url, &topic)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("PUBSUB NUMSUB: {e:#}"),
            Err(e) => panic!("PUBSUB NUMSUB task: {e}"),
        }
    };
    assert_eq!(numsub(url.clone(), topic.clone()).await, 0);
    let a = subscribe(&t, &topic).await;
    let mut b = subscribe(&t, &topic).await;
    // Two subscriptions, one connection: the server sees one subscriber.
    assert_eq!(numsub(url.clone(), topic.clone()).await, 1);
    drop(a);
    if let Err(e) = t
        .publish(&topic, &envelope(PublisherId::random(), 1, "still"))
        .await
    {
        panic!("publish: {e}");
    }
    assert_eq!(
        next_message(&mut b, "a message after dropping a sibling")
            .await
            .key,
        "still"
    );
    assert_eq!(numsub(url.clone(), topic.clone()).await, 1);
    drop(b);
    poll_until("PUBSUB NUMSUB to reach 0 after the last drop", || {
        let (url, topic) = (url.clone(), topic.clone());
        async move { (numsub(url, topic).await == 0).then_some(()) }
    })
    .await;
    // Subscribing again after the unsubscribe works.
    let mut c = subscribe(&t, &topic).await;
    assert_eq!(numsub(url.clone(), topic.clone()).await, 1);
    if let Err(e) = t
        .publish(&topic, &envelope(PublisherId::random(), 1, "again"))
        .await
    {
        panic!("publish: {e}");
    }
    assert_eq!(
        next_message(&mut c, "a message after resubscribing")
            .await
            .key,
        "again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_clients_works_and_requires_a_reconnect_policy() {
    let (_redis, url) = shared_url();
    let config = match Config::from_url(&url) {
        Ok(c) => c,
        Err(e) => panic!("config: {e}"),
    };
    let mut builder = Builder::from_config(config);
    builder.with_performance_config(|p| p.broadcast_channel_capacity = 65_536);
    let no_policy = match builder.build_subscriber_client() {
        Ok(s) => s,
        Err(e) => panic!("build: {e}"),
    };
    let publisher = match builder.build() {
        Ok(c) => c,
        Err(e) => panic!("build: {e}"),
    };
    match RedisTransport::from_clients(publisher.clone(), no_policy).await {
        Err(Error::Backend { source, .. }) => {
            assert!(source.to_string().contains("reconnect policy"), "{source}");
        }
        other => panic!("a subscriber without reconnect policy gave {other:?}"),
    }
    builder.set_policy(ReconnectPolicy::new_constant(0, 200));
    let subscriber = match builder.build_subscriber_client() {
        Ok(s) => s,
        Err(e) => panic!("build: {e}"),
    };
    // Not connected yet: from_clients connects them.
    let t = match RedisTransport::from_clients(publisher.clone(), subscriber.clone()).await {
        Ok(t) => t,
        Err(e) => panic!("from_clients: {e}"),
    };
    let topic = unique_topic("fromclients");
    let mut sub = subscribe(&t, &topic).await;
    if let Err(e) = t
        .publish(&topic, &envelope(PublisherId::random(), 1, "k"))
        .await
    {
        panic!("publish: {e}");
    }
    assert_eq!(next_message(&mut sub, "the message").await.key, "k");
    if let Err(e) = t.close().await {
        panic!("close: {e}");
    }
    // close() ended the subscription and left the user's clients connected.
    match tokio::time::timeout(TIMEOUT, sub.next()).await {
        Ok(None) => {}
        other => panic!("subscription after close gave {other:?}"),
    }
    assert!(publisher.is_connected() && subscriber.is_connected());
    assert!(matches!(
        t.publish(&topic, &envelope(PublisherId::random(), 2, "k"))
            .await,
        Err(Error::Closed { .. })
    ));
    let _ = publisher.quit().await;
    let _ = subscriber.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_within_the_connect_timeout() {
    let port = match hydratecache_testkit::free_port() {
        Ok(p) => p,
        Err(e) => panic!("free port: {e:#}"),
    };
    let start = Instant::now();
    let result = RedisTransport::builder()
        .connect_timeout(Duration::from_secs(3))
        .connect(&format!("redis://127.0.0.1:{port}"))
        .await;
    assert!(matches!(result, Err(Error::Backend { .. })), "{result:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "took {:?}",
        start.elapsed()
    );
}

/// Many subscriptions over few topics on one transport share one server
/// subscription per channel; each one sees every message of its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_share_the_connection() {
    let (_redis, url) = shared_url();
    let t = connect(&url).await;
    let topics: Vec<String> = (0..5).map(|i| unique_topic(&format!("many{i}"))).collect();
    let mut subs = Vec::new();
    for topic in &topics {
        for _ in 0..4 {
            subs.push((topic.clone(), subscribe(&t, topic).await));
        }
    }
    let publisher = PublisherId::random();
    for (i, topic) in topics.iter().enumerate() {
        for seq in 1..=10 {
            let key = format!("t{i}");
            if let Err(e) = t.publish(topic, &envelope(publisher, seq, &key)).await {
                panic!("publish: {e}");
            }
        }
    }
    let mut seen: HashMap<usize, u64> = HashMap::new();
    for (n, (topic, sub)) in subs.iter_mut().enumerate() {
        let i = topics.iter().position(|t| t == topic).unwrap_or(usize::MAX);
        for seq in 1..=10 {
            let m = next_message(sub, "a message").await;
            assert_eq!(
                (m.key.as_str(), m.sequence),
                (format!("t{i}").as_str(), seq)
            );
            *seen.entry(n).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 20);
    // One server-side subscriber per topic: the transport's one connection.
    for topic in topics {
        let n = match tokio::task::spawn_blocking({
            let url = url.clone();
            move || kit::numsub(&url, &topic)
        })
        .await
        {
            Ok(Ok(n)) => n,
            other => panic!("PUBSUB NUMSUB: {other:?}"),
        };
        assert_eq!(n, 1);
    }
}
