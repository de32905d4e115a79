//! The byte bound on a subscription's buffer: large messages that a
//! subscriber does not read end in a counted `Lagged` gap once the buffered
//! bytes pass the bound, long before the message-count bound.

mod common;

use futures::StreamExt;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{
    Envelope, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_redis::RedisTransport;
use hydratecache_testkit::redis as kit;

use common::TIMEOUT;

async fn subscribe(t: &RedisTransport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic}: {e}"),
    }
}

/// Publishes `n` messages of `payload` bytes (numbered from 1) while one
/// subscription reads nothing and another reads everything (to know when
/// all went through the dispatcher), then reads the idle one: what it got,
/// and the gaps' counts. Returns (received sequences, bytes received, the
/// gaps' missed counts).
async fn idle_subscriber(
    t: &RedisTransport,
    n: u64,
    payload: usize,
) -> (Vec<u64>, usize, Vec<Option<u64>>) {
    let topic = unique_topic("bytes");
    let mut idle = subscribe(t, &topic).await;
    let mut reader = subscribe(t, &topic).await;
    let publisher = PublisherId::random();
    for i in 1..=n {
        let env = Envelope {
            publisher,
            sequence: i,
            ..Envelope::update("big", vec![(i % 251) as u8; payload])
        };
        if let Err(e) = t.publish(&topic, &env).await {
            panic!("publish #{i}: {e}");
        }
        match tokio::time::timeout(TIMEOUT, reader.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => assert_eq!(m.sequence, i),
            other => panic!("the reading subscription got {other:?}"),
        }
    }
    let mut received = Vec::new();
    let mut bytes = 0;
    let mut gaps = Vec::new();
    while received.len() as u64
        + gaps
            .iter()
            .map(|g: &Option<u64>| g.unwrap_or(0))
            .sum::<u64>()
        < n
    {
        match tokio::time::timeout(TIMEOUT, idle.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => {
                bytes += m.payload.len();
                received.push(m.sequence);
            }
            Ok(Some(Ok(Event::Gap(g)))) => {
                assert_eq!(g.reason, GapReason::Lagged, "{g:?}");
                assert!(g.missed.is_some(), "an uncounted gap: {g:?}");
                gaps.push(g.missed);
            }
            other => panic!("the idle subscription got {other:?}"),
        }
    }
    (received, bytes, gaps)
}

/// With the default bound (32 MiB), 48 messages of 1,000,000 bytes that
/// nobody reads: the first ones up to 32 MiB are kept, the rest are one
/// counted gap; the count bound (65,536) is far away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_byte_bound_turns_unread_large_messages_into_a_counted_gap() {
    const N: u64 = 48;
    const PAYLOAD: usize = 1_000_000;
    let redis = match kit::shared_or_private() {
        Ok(r) => r,
        Err(e) => panic!("no Redis: {e:#}"),
    };
    let t = match RedisTransport::connect(&redis.url()).await {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let (received, bytes, gaps) = idle_subscriber(&t, N, PAYLOAD).await;
    println!(
        "default byte bound: {} kept ({bytes} payload bytes), gaps {gaps:?}",
        received.len()
    );
    assert_eq!(gaps.len(), 1, "expected one counted gap, got {gaps:?}");
    let kept = received.len() as u64;
    assert_eq!(received, (1..=kept).collect::<Vec<_>>());
    assert_eq!(gaps[0], Some(N - kept));
    assert!(bytes <= 32 << 20, "{bytes} payload bytes kept");
    // Each message is a little over its payload: 33 of them pass 32 MiB.
    assert!((30..=33).contains(&kept), "{kept} messages kept");
}

/// `subscription_buffer_bytes` sets the bound: 10,000 bytes hold 9 messages
/// of 1,000 payload bytes (each a little larger encoded), the rest are one
/// counted gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_buffer_bytes_sets_the_bound() {
    const N: u64 = 100;
    let redis = match kit::shared_or_private() {
        Ok(r) => r,
        Err(e) => panic!("no Redis: {e:#}"),
    };
    let t = match RedisTransport::builder()
        .subscription_buffer_bytes(10_000)
        .connect(&redis.url())
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let (received, bytes, gaps) = idle_subscriber(&t, N, 1_000).await;
    println!(
        "byte bound 10,000: {} kept ({bytes} payload bytes), gaps {gaps:?}",
        received.len()
    );
    assert_eq!(received, (1..=9).collect::<Vec<_>>());
    assert_eq!(gaps, vec![Some(N - 9)]);
}
