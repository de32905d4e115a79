//! The byte bound of a subscription's buffer: a subscriber further behind
//! than it gets a counted `Lagged` gap, however few the messages.

mod common;

use std::time::Duration;

use common::next_item;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{
    Envelope, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_nats::NatsTransport;
use hydratecache_testkit::nats::shared_or_private;

fn message(sequence: u64, payload: Vec<u8>) -> Envelope {
    Envelope {
        sequence,
        publisher: PublisherId(7),
        ..Envelope::update("k", payload)
    }
}

/// Reads `sub` until all `total` messages are received or counted missed:
/// (received, missed, gaps).
async fn count(sub: &mut Subscription, total: u64) -> (u64, u64, u64) {
    let (mut received, mut missed, mut gaps, mut last) = (0, 0, 0, 0);
    while received + missed < total {
        match next_item(sub, "messages or a gap").await {
            Ok(Event::Message(m)) => {
                assert!(m.sequence > last, "{} after {last}", m.sequence);
                last = m.sequence;
                received += 1;
            }
            Ok(Event::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::Lagged, "{gap:?}");
                missed += gap.missed.expect("the pump counts what it drops");
                gaps += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    (received, missed, gaps)
}

/// Item 16 of issue 18: with default settings, 40 messages of about 1 MB
/// (40 MB, far under the 65,536-message bound) left unread overflow the
/// 32 MiB byte bound: a counted `Lagged` gap, while a sibling that keeps up
/// gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_byte_bound_gives_a_slow_subscriber_a_counted_gap() {
    const MESSAGES: u64 = 40;
    const PAYLOAD: usize = 1_000_000;
    let nats = shared_or_private().expect("nats");
    let t = NatsTransport::connect(&nats.url()).await.expect("connect");
    let topic = unique_topic("bytebound");
    let mut slow = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut fast = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let keeping_up = tokio::spawn(async move { count(&mut fast, MESSAGES).await });
    for i in 1..=MESSAGES {
        t.publish(&topic, &message(i, vec![7; PAYLOAD]))
            .await
            .expect("publish");
    }
    assert_eq!(
        keeping_up.await.expect("fast reader"),
        (MESSAGES, 0, 0),
        "the sibling kept up"
    );
    // Both subscriptions got each message from the connection at the same
    // moment; give the slow one's pump a moment to finish moving them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (received, missed, gaps) = count(&mut slow, MESSAGES).await;
    println!("slow subscriber: {received} received, {missed} missed in {gaps} gap(s)");
    assert!(
        gaps >= 1,
        "no gap although {} MB waited unread in its buffer",
        MESSAGES * PAYLOAD as u64 / 1_000_000
    );
    assert!(
        received * (PAYLOAD as u64) <= 32 << 20,
        "{received} messages of {PAYLOAD} bytes buffered past 32 MiB"
    );
    // The subscription goes on.
    t.publish(&topic, &message(MESSAGES + 1, vec![]))
        .await
        .expect("publish");
    match next_item(&mut slow, "the next message").await {
        Ok(Event::Message(m)) => assert_eq!(m.sequence, MESSAGES + 1),
        other => panic!("expected the next message, got {other:?}"),
    }
}

/// The bound is a setting: 20 messages of about 1,000 bytes left unread in
/// a 4,000-byte buffer: at most 4 are kept, the rest counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_buffer_bytes_sets_the_bound() {
    let nats = shared_or_private().expect("nats");
    let t = NatsTransport::builder()
        .subscription_buffer_bytes(4_000)
        .connect(&nats.url())
        .await
        .expect("connect");
    let topic = unique_topic("bytebound");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    for i in 1..=20 {
        t.publish(&topic, &message(i, vec![0; 950]))
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (received, missed, gaps) = count(&mut sub, 20).await;
    println!("{received} received, {missed} missed in {gaps} gap(s)");
    assert!(
        gaps >= 1 && received <= 4,
        "{received} received, {missed} missed"
    );
}
