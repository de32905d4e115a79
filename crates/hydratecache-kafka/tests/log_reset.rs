//! Log resets the client library hides: a broker that restarts empty
//! (tansu's memory storage) within the client's own retry window surfaces no
//! error, yet the subscription's position now points into a different log.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{next_item, plain_client};
use hydratecache_conformance::{expect_silence, next_message, unique_topic};
use hydratecache_core::{Envelope, Event, PublisherId, SubscribeOptions, Transport};
use hydratecache_kafka::record;
use hydratecache_kafka::KafkaTransport;
use hydratecache_testkit::kafka::TansuServer;

fn env(publisher: PublisherId, sequence: u64, key: &str, payload: impl Into<Bytes>) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, payload)
    }
}

/// Reads a few records, restarts the broker empty within about a second and
/// writes more records than were read before the subscription's own
/// (internally retried) fetch reaches the new broker: every record of the
/// new log is delivered, or a gap comes before the first one that is not.
///
/// The default request timeout (10 s) keeps the outage inside rskafka's
/// retry window, so the fetch in flight never fails: only the comparison of
/// the new log with the subscription's position can show the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_restart_with_a_longer_new_log_is_a_gap_or_lossless() {
    short_restart(Duration::from_secs(1)).await;
}

/// The same with the broker started again at once (down for the time it
/// takes to start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_restart_with_a_longer_new_log_is_a_gap_or_lossless() {
    short_restart(Duration::ZERO).await;
}

async fn short_restart(down: Duration) {
    const BEFORE: u64 = 3;
    const AFTER: u64 = 10;
    let mut server = match TansuServer::start() {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    let topic = unique_topic("shortrestart");
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = match KafkaTransport::connect(&server.url()).await {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let before = PublisherId::random();
    let records: Vec<_> = (1..=BEFORE)
        .map(|i| record::to_record(&env(before, i, "k", &b"before"[..])))
        .collect();
    common::produce_raw(&admin, &topic, 0, records)
        .await
        .expect("produce");
    for i in 1..=BEFORE {
        let m = next_message(&mut sub, "a message before the restart").await;
        assert_eq!((m.publisher, m.sequence), (before, i));
    }
    drop(admin);

    // Down for a moment, then back empty.
    server.kill9();
    tokio::time::sleep(down).await;
    server.start_again().expect("restart");
    let restarted = Instant::now();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    // The subscription's reconnect may have auto-created it (4 partitions).
    common::recreate_topic(&admin, &topic, 1)
        .await
        .expect("recreate");
    let after = PublisherId::random();
    let records: Vec<_> = (1..=AFTER)
        .map(|i| record::to_record(&env(after, i, "k", &b"after"[..])))
        .collect();
    common::produce_raw(&admin, &topic, 0, records)
        .await
        .expect("produce after the restart");
    println!(
        "new log written {:?} after the restart",
        restarted.elapsed()
    );

    let mut expected = 1;
    let mut gap_since_last = false;
    let mut gaps = 0;
    while expected <= AFTER {
        match next_item(&mut sub, "the new log's records").await {
            Ok(Event::Gap(gap)) => {
                println!("gap {gap:?} {:?} after the restart", restarted.elapsed());
                gap_since_last = true;
                gaps += 1;
            }
            // The broker went away and came back: neither says anything
            // about the records (a gap or lossless delivery must).
            Ok(Event::Interrupted(_) | Event::Resumed) => {}
            Ok(Event::Message(m)) => {
                assert_eq!(
                    m.publisher, after,
                    "a record of the old log after the restart"
                );
                assert!(
                    m.sequence == expected || gap_since_last,
                    "record {} of the new log delivered with no gap before it: \
                     records {expected} to {} silently skipped",
                    m.sequence,
                    m.sequence - 1
                );
                if m.sequence >= expected {
                    expected = m.sequence + 1;
                }
                gap_since_last = false;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("{gaps} gap(s), every record of the new log accounted for");
    expect_silence(&mut sub, Duration::from_millis(300)).await;
}
