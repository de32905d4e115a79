//! Cases on delivery: who receives what, in which order, and what a
//! dropped subscription or transport leaves behind.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{Channel, Event, PublisherId, Subscription};

use crate::harness::{
    connect, envelope, expect_silence, next_message, publish, subscribe, topic, Harness, Outcome,
    RECEIVE_TIMEOUT,
};

/// Three subscribers (on separate clients) each receive all 50 messages.
pub async fn every_subscriber_gets_every_message(h: &dyn Harness) -> Outcome {
    let topic = topic(h, "fanout").await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let t = connect(h).await;
        subs.push((subscribe(&*t, &topic).await, t));
    }
    // A second subscription on one client must also see everything.
    let shared = subscribe(&*subs[0].1, &topic).await;
    let publisher_client = connect(h).await;
    let publisher = PublisherId::random();
    for i in 1..=50u64 {
        publish(
            &*publisher_client,
            &topic,
            &envelope(publisher, i, &format!("k{i}"), i.to_be_bytes().to_vec()),
        )
        .await;
    }
    let mut all: Vec<Subscription> = subs.into_iter().map(|(s, _)| s).collect();
    all.push(shared);
    for (n, sub) in all.iter_mut().enumerate() {
        for i in 1..=50u64 {
            let got = next_message(sub, &format!("message {i} at subscriber {n}")).await;
            assert_eq!(got.sequence, i, "subscriber {n}");
        }
    }
    Outcome::Passed
}

/// 1,000 messages from one publisher arrive in publish order.
pub async fn per_publisher_order(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "order").await;
    let mut sub = subscribe(&*connect(h).await, &topic).await;
    let publisher = PublisherId::random();
    for i in 1..=1000u64 {
        publish(
            &*t,
            &topic,
            // A key each: a transport that keeps the last message per key
            // may skip a superseded one.
            &envelope(publisher, i, &format!("k{i}"), i.to_be_bytes().to_vec()),
        )
        .await;
    }
    for i in 1..=1000u64 {
        let got = next_message(&mut sub, &format!("message {i}")).await;
        assert_eq!(
            (got.sequence, &got.payload[..]),
            (i, &i.to_be_bytes()[..]),
            "out of order"
        );
    }
    Outcome::Passed
}

/// Tasks publishing at once through clones of one [`Channel`] share its
/// publisher id: on an ordered transport its messages arrive in sequence
/// order, or every subscriber that tracks sequences sees false gaps.
///
pub async fn one_channels_concurrent_publishes_keep_sequence_order(h: &dyn Harness) -> Outcome {
    const TASKS: u64 = 2;
    const EACH: u64 = 5_000;
    let t = connect(h).await;
    if !t.capabilities().ordered {
        return Outcome::Skipped("the transport does not keep a publisher's order".into());
    }
    let topic = topic(h, "seqorder").await;
    let mut sub = subscribe(&*connect(h).await, &topic).await;
    let channel: Channel<u64> = Channel::new(t, topic);
    // At most this many messages unread, so no subscriber buffer overflows.
    let credit = Arc::new(tokio::sync::Semaphore::new(512));
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (channel, credit) = (channel.clone(), Arc::clone(&credit));
            tokio::spawn(async move {
                for i in 0..EACH {
                    match credit.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(e) => panic!("credit: {e}"),
                    }
                    if let Err(e) = channel.publish("k", &i).await {
                        panic!("publish: {e:?}");
                    }
                }
            })
        })
        .collect();
    let mut out_of_order = 0u64;
    let mut last = 0u64;
    for n in 1..=TASKS * EACH {
        let got = next_message(&mut sub, &format!("message {n}")).await;
        credit.add_permits(1);
        if got.sequence != last + 1 {
            out_of_order += 1;
        }
        last = got.sequence;
    }
    for task in tasks {
        if let Err(e) = task.await {
            panic!("publisher task failed: {e:?}");
        }
    }
    assert_eq!(out_of_order, 0, "messages arrived out of sequence order");
    Outcome::Passed
}

/// A message on one topic reaches only that topic's subscribers.
pub async fn topics_are_isolated(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let (a, b) = (topic(h, "isoa").await, topic(h, "isob").await);
    let mut sub_a = subscribe(&*t, &a).await;
    let mut sub_b = subscribe(&*t, &b).await;
    let publisher = PublisherId::random();
    publish(&*t, &a, &envelope(publisher, 1, "for-a", &b"a"[..])).await;
    publish(&*t, &b, &envelope(publisher, 1, "for-b", &b"b"[..])).await;
    assert_eq!(next_message(&mut sub_a, "a's message").await.key, "for-a");
    assert_eq!(next_message(&mut sub_b, "b's message").await.key, "for-b");
    expect_silence(&mut sub_a, Duration::from_millis(200)).await;
    expect_silence(&mut sub_b, Duration::from_millis(200)).await;
    Outcome::Passed
}

/// After the last subscription is dropped, the server no longer lists one,
/// and a live subscription on another topic of the same client keeps working.
pub async fn dropping_subscription_unsubscribes(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic_name = topic(h, "unsub").await;
    let other = topic(h, "unsubother").await;
    let first = subscribe(&*t, &topic_name).await;
    let second = subscribe(&*t, &topic_name).await;
    let mut keep = subscribe(&*t, &other).await;
    let Some(before) = count(h, &topic_name).await else {
        return Outcome::Skipped("the backend cannot list subscribers".into());
    };
    assert!(before >= 1, "server lists no subscriber while subscribed");
    drop(first);
    // One of two subscriptions dropped: the topic must still be delivered.
    let mut second = second;
    let publisher = PublisherId::random();
    publish(
        &*t,
        &topic_name,
        &envelope(publisher, 1, "still", &b"x"[..]),
    )
    .await;
    assert_eq!(
        next_message(&mut second, "message after dropping a sibling")
            .await
            .key,
        "still"
    );
    drop(second);
    let deadline = tokio::time::Instant::now() + RECEIVE_TIMEOUT;
    loop {
        let now = count(h, &topic_name).await.unwrap_or(0);
        if now == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "server still lists {now} subscriber(s) {RECEIVE_TIMEOUT:?} after the last drop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&*t, &other, &envelope(publisher, 1, "other", &b"y"[..])).await;
    assert_eq!(
        next_message(&mut keep, "message on the other topic")
            .await
            .key,
        "other"
    );
    Outcome::Passed
}

async fn count(h: &dyn Harness, topic: &str) -> Option<usize> {
    match h.server_subscribers(topic).await {
        Ok(n) => n,
        Err(e) => panic!("harness could not count subscribers: {e:?}"),
    }
}

/// Publishing to a topic nobody listens to succeeds.
pub async fn publish_without_subscribers(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "nobody").await;
    publish(
        &*t,
        &topic,
        &envelope(PublisherId::random(), 1, "k", &b"v"[..]),
    )
    .await;
    Outcome::Passed
}

/// 4 publishers (separate clients, concurrent) × 250 messages: all 1,000
/// arrive, each publisher's in order.
pub async fn concurrent_publishers_all_arrive(h: &dyn Harness) -> Outcome {
    all_arrive_from_concurrent_writers(h, "concurrent", 4, 250, 16).await;
    Outcome::Passed
}

/// What a short-lived writer (a CLI, a batch job) published arrives although
/// it drops its transport the moment its last publish returns: a publish
/// that returned `Ok` is not lost to the connection closing behind it.
pub async fn published_before_drop_arrives(h: &dyn Harness) -> Outcome {
    all_arrive_from_concurrent_writers(h, "lastwords", 8, 100, 64).await;
    Outcome::Passed
}

/// `writers` transports of their own publish `messages` each at once, each
/// dropping its transport straight after its last publish; one subscriber
/// must receive every message, each writer's in order.
async fn all_arrive_from_concurrent_writers(
    h: &dyn Harness,
    case: &str,
    writers: u64,
    messages: u64,
    payload_len: usize,
) {
    let topic = topic(h, case).await;
    let mut sub = subscribe(&*connect(h).await, &topic).await;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let t = connect(h).await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = PublisherId(u128::from(w) + 1);
            for i in 1..=messages {
                let payload = vec![w as u8; payload_len];
                publish(
                    &*t,
                    &topic,
                    &envelope(publisher, i, &format!("w{w}-{i}"), payload),
                )
                .await;
            }
            drop(t);
        }));
    }
    receive_from_each(&mut sub, writers, messages, tasks).await;
}

/// Receives `messages` from each of `publishers` (ids 1..=publishers), each
/// publisher's in order, then joins the publishing `tasks`. On a timeout the
/// panic names how far each publisher got.
async fn receive_from_each(
    sub: &mut Subscription,
    publishers: u64,
    messages: u64,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) {
    let total = publishers * messages;
    let mut last: HashMap<PublisherId, u64> = HashMap::new();
    for n in 0..total {
        let item = tokio::time::timeout(RECEIVE_TIMEOUT, async {
            loop {
                match sub.next().await {
                    Some(Ok(Event::ReplayDone)) => continue,
                    other => return other,
                }
            }
        })
        .await;
        let got = match item {
            Ok(Some(Ok(Event::Message(env)))) => env,
            Ok(other) => panic!(
                "expected message {n} of {total} on {}, got {other:?}",
                sub.topic()
            ),
            Err(_) => {
                let finished = tasks.iter().filter(|t| t.is_finished()).count();
                let mut got: Vec<_> = last.iter().map(|(p, n)| (p.0, *n)).collect();
                got.sort_unstable();
                panic!(
                    "no event on {} within {RECEIVE_TIMEOUT:?} while waiting for message \
                     {n} of {total}; last sequence received per publisher: {got:?}; \
                     publishing tasks finished: {finished} of {}",
                    sub.topic(),
                    tasks.len()
                );
            }
        };
        let prev = last.insert(got.publisher, got.sequence).unwrap_or(0);
        assert_eq!(
            got.sequence,
            prev + 1,
            "publisher {} out of order",
            got.publisher
        );
    }
    for task in tasks {
        if let Err(e) = task.await {
            panic!("publisher task failed: {e:?}");
        }
    }
    assert_eq!(last.len() as u64, publishers);
    assert!(last.values().all(|&n| n == messages), "{last:?}");
}
