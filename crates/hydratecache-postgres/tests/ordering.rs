//! One publisher's sequence numbers reach the wire in order, even when one
//! `Channel` publishes from several tasks at once (the transport claims
//! `ordered`, so a reordering would look like a lost message).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use hydratecache_cache::LocalCache;
use hydratecache_conformance::{next_message, unique_topic};
use hydratecache_core::{Channel, PublisherId, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_from_one_channel_give_no_sequence_gap() {
    const TASKS: u64 = 2;
    const EACH: u64 = 1_000;
    let server = server();
    let url = server.url();
    let (sender, receiver) = (transport(&url).await, transport(&url).await);
    assert!(sender.capabilities().ordered);
    let topic = unique_topic("order");
    let cache = match LocalCache::builder(Channel::<u64>::new(receiver.clone().into_arc(), &topic))
        .heartbeat_interval(None)
        .build()
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("cache: {e}"),
    };
    let mut raw = subscribe(&receiver, &topic).await;
    let channel: Channel<u64> = Channel::new(sender.clone().into_arc(), &topic);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                if let Err(e) = channel.publish(&format!("{task}-{i}"), &i).await {
                    panic!("publish: {e}");
                }
            }
        }));
    }
    // Sequence regressions in the raw stream: each one is a false gap for
    // an ordered subscriber.
    let mut last: HashMap<PublisherId, u64> = HashMap::new();
    let mut regressions = 0u64;
    for n in 0..TASKS * EACH {
        let got = next_message(&mut raw, &format!("message {n}")).await;
        let prev = last.insert(got.publisher, got.sequence).unwrap_or(0);
        if got.sequence != prev + 1 {
            regressions += 1;
        }
    }
    for task in tasks {
        task.await.expect("publisher task");
    }
    let deadline = Instant::now() + WAIT;
    while cache.stats().updates_applied + cache.stats().sequence_gaps < TASKS * EACH
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = cache.stats();
    println!(
        "{} publishes from {TASKS} tasks on one channel: {regressions} out of order on the wire, \
         {} sequence gaps and {} repairs in the receiving cache",
        TASKS * EACH,
        stats.sequence_gaps,
        stats.repairs()
    );
    assert_eq!(
        regressions, 0,
        "messages reached the wire out of sequence order"
    );
    assert_eq!(stats.sequence_gaps, 0, "false sequence gaps: {stats:?}");
    assert_eq!(stats.repairs(), 0, "repairs without a loss: {stats:?}");
}

/// The publishing lanes do not keep the transport's pool alive: dropping the
/// transport without `close()` still closes its connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_transport_without_close_releases_its_connections() {
    let server = private_server();
    let url = server.url();
    let admin = match hydratecache_postgres::sqlx::PgPool::connect(&url).await {
        Ok(p) => p,
        Err(e) => panic!("connect: {e}"),
    };
    let others = || async {
        hydratecache_postgres::sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'dropped-transport'",
        )
        .fetch_one(&admin)
        .await
        .expect("pg_stat_activity")
    };
    let t = transport(&format!("{url}?application_name=dropped-transport")).await;
    let topic = unique_topic("dropped");
    let mut publishes = Vec::new();
    for seq in 1..=8u64 {
        let (t, topic) = (t.clone(), topic.clone());
        publishes.push(tokio::spawn(async move {
            publish(
                &t,
                &topic,
                &common::envelope(PublisherId(u128::from(seq)), 1, "k"),
            )
            .await;
        }));
    }
    for p in publishes {
        p.await.expect("publish task");
    }
    assert!(others().await > 0);
    drop(t);
    let deadline = Instant::now() + WAIT;
    loop {
        let open = others().await;
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} connections still open {WAIT:?} after the transport was dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
