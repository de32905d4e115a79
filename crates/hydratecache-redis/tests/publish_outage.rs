//! Publishing while the server is unreachable: the error says what happened
//! and where, and comes at once when the connection is known to be down.

mod common;

use std::time::{Duration, Instant};

use hydratecache_conformance::unique_topic;
use hydratecache_core::{Envelope, Error, PublisherId, Transport};
use hydratecache_redis::RedisTransport;
use hydratecache_testkit::redis::RedisServer;

use common::poll_until;

/// Generous bound that only catches waiting out the command timeout (set to
/// 30 s below); not a speed measure.
const HANG_GUARD: Duration = Duration::from_secs(5);

fn private_server() -> RedisServer {
    match RedisServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start a private redis-server: {e:#}"),
    }
}

fn envelope(sequence: u64) -> Envelope {
    Envelope {
        publisher: PublisherId::random(),
        sequence,
        ..Envelope::update("k", &b"v"[..])
    }
}

/// Publishes once; returns the error's text and how long it took.
async fn failing_publish(t: &RedisTransport, topic: &str, sequence: u64) -> (String, Duration) {
    let start = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        t.publish(topic, &envelope(sequence)),
    )
    .await;
    let elapsed = start.elapsed();
    match result {
        // The whole chain: the message says what failed, its source why.
        Ok(Err(e @ Error::Backend { .. })) => (format!("{:#}", anyhow::Error::from(e)), elapsed),
        Ok(other) => panic!("publish while the server is down gave {other:?}"),
        Err(_) => panic!("publish while the server is down hung for {elapsed:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_stopped_server_fails_at_once_naming_the_cause() {
    let mut server = private_server();
    let url = server.url();
    let address = format!("127.0.0.1:{}", server.port());
    let t = match RedisTransport::builder()
        .command_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("outage");
    if let Err(e) = t.publish(&topic, &envelope(1)).await {
        panic!("publish while up: {e}");
    }
    server.kill9();
    // The first publish may meet the connection as it breaks; the ones after
    // find it known to be down.
    let (first, first_took) = failing_publish(&t, &topic, 2).await;
    println!("first publish after the kill ({first_took:?}): {first}");
    assert!(first_took < HANG_GUARD, "took {first_took:?}: {first}");
    // Until the client's first reconnect attempt the connection is known to
    // be lost; once an attempt failed, the server is known to refuse it.
    // Either way every publish fails at once and says so.
    let mut seq = 2;
    let refused = loop {
        seq += 1;
        let (message, took) = failing_publish(&t, &topic, seq).await;
        assert!(
            message.contains("redis") && message.contains(&address),
            "the error names neither the backend nor the address: {message}"
        );
        assert!(took < HANG_GUARD, "took {took:?}: {message}");
        if message.contains("server unreachable: connection refused") {
            break message;
        }
        assert!(
            message.contains("connection lost"),
            "the error names no cause: {message}"
        );
        assert!(
            seq < 10_000,
            "never told that the connection is refused: {message}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("publish #{seq} while down: {refused}");
    // Back up: publishing works again without user action.
    if let Err(e) = server.start_again() {
        panic!("restart: {e:#}");
    }
    poll_until("a publish to succeed after the restart", || {
        let t = t.clone();
        let topic = topic.clone();
        async move { t.publish(&topic, &envelope(6)).await.ok() }
    })
    .await;
}

/// A server that accepts connections but answers nothing (SIGSTOP): the
/// publish fails after the command timeout, and says so with the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_paused_server_says_it_timed_out_and_where() {
    let server = private_server();
    let address = format!("127.0.0.1:{}", server.port());
    let t = match RedisTransport::builder()
        .command_timeout(Duration::from_secs(1))
        .connect(&server.url())
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("paused");
    if let Err(e) = t.publish(&topic, &envelope(1)).await {
        panic!("publish while up: {e}");
    }
    if let Err(e) = server.pause() {
        panic!("SIGSTOP: {e:#}");
    }
    let (message, took) = failing_publish(&t, &topic, 2).await;
    if let Err(e) = server.resume() {
        panic!("SIGCONT: {e:#}");
    }
    println!("publish to a paused server ({took:?}): {message}");
    assert!(
        message.contains("redis") && message.contains(&address),
        "the error names neither the backend nor the address: {message}"
    );
    assert!(
        message.contains("no reply within 1s"),
        "the error does not say it timed out and after how long: {message}"
    );
}
