//! A burst of 100,000 messages to 2 subscribers: each receives all of them,
//! or a gap event covering what it did not.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hydratecache_conformance::{unique_topic, RECEIVE_TIMEOUT};
use hydratecache_core::{Envelope, Event, GapReason, PublisherId, SubscribeOptions, Transport};
use hydratecache_nats::NatsTransport;
use hydratecache_testkit::nats::shared_or_private;

const MESSAGES: u64 = 100_000;
/// Publishes in flight at once (they share flushes).
const IN_FLIGHT: usize = 64;

#[derive(Debug, Default)]
struct Count {
    received: u64,
    gaps: Vec<(GapReason, Option<u64>)>,
}

impl Count {
    fn lagged_missed(&self) -> u64 {
        self.gaps.iter().filter_map(|(_, m)| *m).sum()
    }
}

/// Reads until all messages arrived or, after a gap, the stream goes quiet.
async fn count(mut sub: hydratecache_core::Subscription, name: &'static str) -> Count {
    let mut c = Count::default();
    let mut seen = HashSet::with_capacity(MESSAGES as usize);
    while c.received + c.lagged_missed() < MESSAGES {
        let wait = if c.gaps.is_empty() {
            RECEIVE_TIMEOUT
        } else {
            Duration::from_secs(2)
        };
        match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => {
                assert!(seen.insert(m.sequence), "{name}: {} twice", m.sequence);
                c.received += 1;
            }
            Ok(Some(Ok(Event::Gap(gap)))) => c.gaps.push((gap.reason, gap.missed)),
            Ok(other) => panic!("{name}: unexpected {other:?}"),
            Err(_) if !c.gaps.is_empty() => break,
            Err(_) => panic!(
                "{name}: received {} of {MESSAGES} and no gap, then nothing for {wait:?}",
                c.received
            ),
        }
    }
    c
}

async fn burst(buffer: Option<usize>, read_after_publishing: bool) -> [Count; 2] {
    let nats = shared_or_private().unwrap();
    let topic = unique_topic("burst");
    let mut subs = Vec::new();
    for _ in 0..2 {
        let mut builder = NatsTransport::builder();
        if let Some(b) = buffer {
            builder = builder.subscription_buffer(b);
        }
        let t = builder.connect(&nats.url()).await.unwrap();
        subs.push((
            t.subscribe(&topic, SubscribeOptions::default())
                .await
                .unwrap(),
            t,
        ));
    }
    let publisher = NatsTransport::connect(&nats.url()).await.unwrap();
    let mut readers = Vec::new();
    let mut held = Vec::new();
    for (i, (sub, t)) in subs.into_iter().enumerate() {
        let name = if i == 0 {
            "subscriber 1"
        } else {
            "subscriber 2"
        };
        if read_after_publishing {
            held.push((sub, name, t));
        } else {
            readers.push(tokio::spawn(async move {
                let c = count(sub, name).await;
                drop(t);
                c
            }));
        }
    }
    let started = Instant::now();
    let id = PublisherId::random();
    futures::stream::iter(1..=MESSAGES)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let (publisher, topic) = (&publisher, &topic);
            async move {
                let env = Envelope {
                    publisher: id,
                    sequence: i,
                    ..Envelope::update("burst", i.to_be_bytes().to_vec())
                };
                if let Err(e) = publisher.publish(topic, &env).await {
                    panic!("publish {i}: {e}");
                }
            }
        })
        .await;
    let published_in = started.elapsed();
    for (sub, name, t) in held {
        readers.push(tokio::spawn(async move {
            let c = count(sub, name).await;
            drop(t);
            c
        }));
    }
    let mut counts = Vec::new();
    for r in readers {
        counts.push(r.await.unwrap());
    }
    println!(
        "burst (buffer {buffer:?}, read {}): {MESSAGES} published in {published_in:?} ({:.0} msg/s); {:?}",
        if read_after_publishing { "after publishing" } else { "while publishing" },
        MESSAGES as f64 / published_in.as_secs_f64(),
        counts
    );
    let [a, b]: [Count; 2] = counts.try_into().unwrap();
    [a, b]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100k_to_two_subscribers_all_or_gap() {
    for c in burst(None, false).await {
        assert!(
            c.received == MESSAGES || !c.gaps.is_empty(),
            "received {} of {MESSAGES} with no gap",
            c.received
        );
        // A counted gap accounts for every message it says was missed.
        if !c.gaps.is_empty() && c.gaps.iter().all(|(r, _)| *r == GapReason::Lagged) {
            assert_eq!(c.received + c.lagged_missed(), MESSAGES, "{c:?}");
        }
    }
}

/// The same burst into subscribers that read only afterwards, with 1,000
/// messages of buffer: each must report the overflow as a gap, with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_into_subscribers_that_read_late_reports_the_loss() {
    for c in burst(Some(1000), true).await {
        assert!(!c.gaps.is_empty(), "{c:?}");
        if c.gaps.iter().all(|(r, _)| *r == GapReason::Lagged) {
            assert_eq!(c.received + c.lagged_missed(), MESSAGES, "{c:?}");
        }
    }
}
