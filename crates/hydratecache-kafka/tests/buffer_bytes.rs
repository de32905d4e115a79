//! The byte bound of a live subscription's buffer: a subscriber further
//! behind than it gets a counted `Lagged` gap, however few the messages.

mod common;

use bytes::Bytes;
use common::{next_item, plain_client};
use hydratecache_conformance::{expect_silence, next_message, unique_topic};
use hydratecache_core::{
    Envelope, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_kafka::{record, KafkaBuilder, KafkaTransport};
use hydratecache_testkit::kafka;
use std::time::Duration;

fn env(publisher: PublisherId, sequence: u64, payload: impl Into<Bytes>) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update("k", payload)
    }
}

async fn transport(builder: KafkaBuilder, url: &str) -> KafkaTransport {
    match builder.connect(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    }
}

/// Reads `sub` until message `total` of `publisher`: (received, missed by
/// lag gaps, number of gaps).
async fn count_until(
    sub: &mut Subscription,
    publisher: PublisherId,
    total: u64,
) -> (u64, u64, u64) {
    let (mut received, mut missed, mut gaps, mut last) = (0, 0, 0, 0);
    while last < total && received + missed < total {
        match next_item(sub, "messages or a gap").await {
            Ok(Event::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::Lagged, "{gap:?}");
                missed += gap.missed.expect("a lagged gap has a count");
                gaps += 1;
            }
            Ok(Event::Message(m)) => {
                assert_eq!(m.publisher, publisher);
                assert!(m.sequence > last, "{} after {last}", m.sequence);
                last = m.sequence;
                received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (received, missed, gaps)
}

/// Item 16 of issue 18: with default settings, 40 messages of about 1 MB
/// (40 MB, far under the 65,536-message bound) that a subscriber has not
/// read overflow the 32 MiB byte bound: it gets a counted `Lagged` gap,
/// while a sibling that keeps up gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_byte_bound_gives_a_slow_subscriber_a_counted_gap() {
    const MESSAGES: u64 = 40;
    const PAYLOAD: usize = 1_000_000;
    let server = match kafka::shared_or_private() {
        Ok(s) => s,
        Err(e) => panic!("no Kafka broker: {e:#}"),
    };
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("bytebound");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(KafkaTransport::builder(), &server.url()).await;
    let mut slow = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut fast = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let publisher = PublisherId::random();
    let keeping_up =
        tokio::spawn(async move { (count_until(&mut fast, publisher, MESSAGES).await, fast) });
    let payload = Bytes::from(vec![7u8; PAYLOAD]);
    for i in 1..=MESSAGES {
        t.publish(&topic, &env(publisher, i, payload.clone()))
            .await
            .expect("publish");
    }
    // Once the sibling has everything, the shared reader has queued (or
    // dropped) everything for the slow one too.
    let ((received, missed, _), _fast) = keeping_up.await.expect("fast reader");
    assert_eq!((received, missed), (MESSAGES, 0), "the sibling kept up");

    let (received, missed, gaps) = count_until(&mut slow, publisher, MESSAGES).await;
    println!("slow subscriber: {received} received, {missed} missed in {gaps} gap(s)");
    assert!(
        gaps >= 1,
        "no gap although {} MB waited unread in its buffer",
        MESSAGES * PAYLOAD as u64 / 1_000_000
    );
    assert_eq!(received + missed, MESSAGES);
    assert!(
        received * (PAYLOAD as u64) <= 32 << 20,
        "{received} messages of {PAYLOAD} bytes buffered past 32 MiB"
    );
    expect_silence(&mut slow, Duration::from_millis(200)).await;
}

/// The bound is a setting: 10 records of 1,000 bytes in one batch go
/// through a 4,000-byte buffer as 4 messages and a gap of 6.
#[tokio::test(flavor = "current_thread")]
async fn subscription_buffer_bytes_sets_the_bound() {
    let server = match kafka::shared_or_private() {
        Ok(s) => s,
        Err(e) => panic!("no Kafka broker: {e:#}"),
    };
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("bytebound");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(
        KafkaTransport::builder().subscription_buffer_bytes(4_000),
        &server.url(),
    )
    .await;
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let publisher = PublisherId::random();
    // Key "k" (1 byte) and 999 bytes of payload: 1,000 bytes each.
    let records: Vec<_> = (1..=10u64)
        .map(|i| record::to_record(&env(publisher, i, vec![0u8; 999])))
        .collect();
    common::produce_raw(&admin, &topic, 0, records)
        .await
        .expect("produce");
    // The reader queues a fetched batch without yielding to this task.
    let (received, missed, gaps) = count_until(&mut sub, publisher, 10).await;
    assert_eq!((received, missed, gaps), (4, 6, 1));
    // The subscription goes on.
    t.publish(&topic, &env(publisher, 11, &b"x"[..]))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut sub, "message 11").await.sequence, 11);
}
