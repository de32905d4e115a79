//! Bounds: the byte bound of a subscription's buffer, the time bound of each
//! request to the server (a hung server or half-open connection), and what
//! a publish says while the server is down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use hydratecache_conformance::{next_event, next_message, unique_topic};
use hydratecache_core::{Envelope, Error, Event, GapReason, PublisherId, Transport};
use hydratecache_postgres::PostgresTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_past_its_byte_bound_gets_a_lagged_gap_with_the_count() {
    const LIMIT: usize = 4096;
    const SENT: u64 = 50;
    let server = server();
    let url = server.url();
    let subscriber = match PostgresTransport::builder()
        .subscription_buffer_bytes(LIMIT)
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let publisher = transport(&url).await;
    let (topic, probe_topic) = (unique_topic("bytes"), unique_topic("bytesprobe"));
    let mut sub = subscribe(&subscriber, &topic).await;
    let mut probe = subscribe(&subscriber, &probe_topic).await;
    let id = PublisherId::random();
    let message = |seq: u64| Envelope {
        publisher: id,
        sequence: seq,
        ..Envelope::update("k", vec![0x42u8; 1000])
    };
    let size = message(1).encoded_len();
    for seq in 1..=SENT {
        publish(&publisher, &topic, &message(seq)).await;
    }
    // Notifications reach the listener in commit order: once the probe has
    // its message, all of them have been handed out.
    publish(&publisher, &probe_topic, &envelope(id, SENT + 1, "probe")).await;
    next_message(&mut probe, "the probe").await;
    let mut buffered = Vec::new();
    let gap = loop {
        match next_event(&mut sub, "a buffered message or the gap").await {
            Ok(Event::Message(m)) => {
                buffered.push(m.sequence);
                assert!(
                    buffered.len() * size <= LIMIT,
                    "{} messages of {size} bytes buffered: over the {LIMIT}-byte bound",
                    buffered.len()
                );
            }
            Ok(Event::Gap(gap)) => break gap,
            other => panic!("expected a message or a gap, got {other:?}"),
        }
    };
    assert_eq!(buffered, (1..=buffered.len() as u64).collect::<Vec<_>>());
    assert!(!buffered.is_empty(), "nothing buffered");
    assert_eq!(gap.reason, GapReason::Lagged);
    assert_eq!(gap.missed, Some(SENT - buffered.len() as u64));
    // The buffer is free again: the next message arrives.
    publish(&publisher, &topic, &message(SENT + 2)).await;
    assert_eq!(
        next_message(&mut sub, "the message after the gap")
            .await
            .sequence,
        SENT + 2
    );
    println!(
        "byte bound {LIMIT}: {} messages of {size} bytes buffered, {} missed and counted",
        buffered.len(),
        SENT - buffered.len() as u64
    );
}

/// A transport whose requests are bounded by 1 s while its connection waits
/// (and keepalive) stay long, so that only the request bound can end a wait
/// within [`WAIT`].
async fn bounded_transport(url: &str) -> PostgresTransport {
    match PostgresTransport::builder()
        .request_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(120))
        .keepalive_interval(None)
        .connect(url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_hung_server_fails_within_the_request_timeout() {
    let server = private_server();
    let t = bounded_transport(&server.url()).await;
    let topic = unique_topic("hungpub");
    let id = PublisherId::random();
    publish(&t, &topic, &envelope(id, 1, "before")).await;
    server.freeze().expect("SIGSTOP the server");
    let outcome = tokio::time::timeout(WAIT, t.publish(&topic, &envelope(id, 2, "hung"))).await;
    server.thaw().expect("SIGCONT the server");
    match outcome {
        Ok(Err(e @ Error::Backend { .. })) => {
            let text = e.to_string();
            assert!(text.contains("timed out after 1s"), "{text}");
            println!("publish to a hung server: {text}");
        }
        Ok(other) => panic!("publish to a hung server gave {other:?}"),
        Err(_) => panic!("publish to a hung server still waiting after {WAIT:?}"),
    }
    // Once the server answers again, publishing works.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = t.publish(&topic, &envelope(id, 3, "after")).await {
        assert!(Instant::now() < deadline, "publish after the thaw: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One publisher's publishes queue behind each other (one lane keeps their
/// order): the request timeout runs from each call, not from when the queue
/// reaches it, so eight publishes to a hung server all fail within about one
/// timeout, not eight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_publishes_to_a_hung_server_each_fail_within_the_request_timeout() {
    const QUEUED: u64 = 8;
    let server = private_server();
    let t = bounded_transport(&server.url()).await;
    let topic = unique_topic("hungqueue");
    let id = PublisherId::random();
    publish(&t, &topic, &envelope(id, 1, "before")).await;
    server.freeze().expect("SIGSTOP the server");
    let started = Instant::now();
    let publishes = (2..2 + QUEUED).map(|seq| {
        let (t, topic) = (t.clone(), topic.clone());
        async move {
            let result = t.publish(&topic, &envelope(id, seq, "hung")).await;
            (result, started.elapsed())
        }
    });
    let outcomes = tokio::time::timeout(WAIT, futures::future::join_all(publishes)).await;
    server.thaw().expect("SIGCONT the server");
    let Ok(outcomes) = outcomes else {
        panic!("{QUEUED} queued publishes still waiting after {WAIT:?}");
    };
    for (result, took) in outcomes {
        assert!(result.is_err(), "a publish to a hung server succeeded");
        // The bound is 1 s from the call; the slack is for a loaded machine,
        // far below the 2 s that a second queued timeout would take.
        assert!(
            took < Duration::from_millis(1_900),
            "a queued publish failed only after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_a_hung_server_returns_within_its_bound() {
    let server = private_server();
    let t = bounded_transport(&server.url()).await;
    let topic = unique_topic("hungclose");
    let _sub = subscribe(&t, &topic).await;
    let id = PublisherId::random();
    publish(&t, &topic, &envelope(id, 1, "before")).await;
    server.freeze().expect("SIGSTOP the server");
    let stuck = {
        let (t, topic) = (t.clone(), topic.clone());
        tokio::spawn(async move { t.publish(&topic, &envelope(id, 2, "hung")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let closed = tokio::time::timeout(WAIT, t.close()).await;
    server.thaw().expect("SIGCONT the server");
    match closed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("close: {e}"),
        Err(_) => panic!("close() on a hung server still waiting after {WAIT:?}"),
    }
    match tokio::time::timeout(WAIT, stuck).await {
        Ok(Ok(Err(_))) => {}
        other => panic!("the publish in flight during close gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_on_a_hung_listener_connection_reconnects_with_a_gap() {
    let server = private_server();
    let url = server.url();
    let t = bounded_transport(&url).await;
    let publisher = transport(&url).await;
    let (first, second) = (unique_topic("hunglisten1"), unique_topic("hunglisten2"));
    let mut sub = subscribe(&t, &first).await;
    let pid = listener_pid(&t).await;
    signal(pid, "STOP");
    let subscribed = tokio::time::timeout(WAIT, subscribe(&t, &second)).await;
    signal(pid, "CONT");
    let Ok(mut other) = subscribed else {
        panic!("subscribe (LISTEN) on a hung listener connection still waiting after {WAIT:?}");
    };
    let (before, gap) = read_until_gap(&mut sub).await;
    assert!(before.is_empty());
    assert_eq!(gap.reason, GapReason::Reconnected);
    assert_ne!(
        listener_pid(&t).await,
        pid,
        "the listener did not reconnect"
    );
    let id = PublisherId::random();
    publish(&publisher, &first, &envelope(id, 1, "one")).await;
    publish(&publisher, &second, &envelope(id, 2, "two")).await;
    assert_eq!(next_message(&mut sub, "after the gap").await.key, "one");
    assert_eq!(next_message(&mut other, "the new topic").await.key, "two");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisten_on_a_hung_listener_connection_reconnects_with_a_gap() {
    let server = private_server();
    let url = server.url();
    let t = bounded_transport(&url).await;
    let publisher = transport(&url).await;
    let (kept, dropped) = (unique_topic("hungunlisten1"), unique_topic("hungunlisten2"));
    let mut sub = subscribe(&t, &kept).await;
    let other = subscribe(&t, &dropped).await;
    let pid = listener_pid(&t).await;
    signal(pid, "STOP");
    drop(other); // the last of its topic: UNLISTEN
    let outcome = tokio::time::timeout(WAIT, sub.next()).await;
    signal(pid, "CONT");
    match outcome {
        Ok(Some(Ok(Event::Interrupted(_)))) => {}
        Ok(other) => panic!("expected the interruption, got {other:?}"),
        Err(_) => panic!("UNLISTEN on a hung listener connection: no interruption after {WAIT:?}"),
    }
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(Event::Gap(gap)))) => assert_eq!(gap.reason, GapReason::Reconnected),
        Ok(other) => panic!("expected a gap, got {other:?}"),
        Err(_) => panic!("UNLISTEN on a hung listener connection: no gap after {WAIT:?}"),
    }
    assert_ne!(
        listener_pid(&t).await,
        pid,
        "the listener did not reconnect"
    );
    assert_eq!(
        t.listener_info().await.expect("listener_info").channels,
        vec![kept.clone()]
    );
    publish(
        &publisher,
        &kept,
        &envelope(PublisherId::random(), 1, "after"),
    )
    .await;
    assert_eq!(next_message(&mut sub, "after the gap").await.key, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_while_the_server_is_down_says_what_happened_and_fails_fast() {
    let mut server = private_server();
    // A password in the URL must not reach the error (trust auth ignores it).
    let url = server.url().replace("postgres@", "postgres:pw-s3cret@");
    let t = match PostgresTransport::builder()
        .connect_timeout(Duration::from_secs(120))
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("down");
    let id = PublisherId::random();
    publish(&t, &topic, &envelope(id, 1, "up")).await;
    server.kill9();
    let address = format!("127.0.0.1:{}", server.port());
    let check = |e: &Error, which: &str| {
        let text = e.to_string();
        assert!(
            matches!(
                e,
                Error::Backend {
                    backend: "postgres",
                    ..
                }
            ),
            "{which}: {e:?}"
        );
        assert!(
            text.contains(&address),
            "{which} does not name the server: {text}"
        );
        assert!(
            text.contains("connection refused"),
            "{which} does not say why: {text}"
        );
        assert!(
            !text.contains("s3cret"),
            "{which} shows the password: {text}"
        );
        text
    };
    let first = match tokio::time::timeout(WAIT, t.publish(&topic, &envelope(id, 2, "down"))).await
    {
        Ok(Err(e)) => check(&e, "the first error"),
        Ok(Ok(())) => panic!("publish with the server down succeeded"),
        Err(_) => panic!("publish with the server down still waiting after {WAIT:?}"),
    };
    // Known down: the next publish fails at once, without a connection
    // attempt, and says since when.
    let second = match tokio::time::timeout(WAIT, t.publish(&topic, &envelope(id, 3, "down"))).await
    {
        Ok(Err(e)) => check(&e, "the second error"),
        Ok(Ok(())) => panic!("publish with the server down succeeded"),
        Err(_) => panic!("publish with the server down still waiting after {WAIT:?}"),
    };
    assert!(second.contains("down since"), "{second}");
    println!("first: {first}\nsecond: {second}");
    // Back up: publishing recovers by itself.
    server.start_again().expect("restart the server");
    let deadline = Instant::now() + WAIT;
    while let Err(e) = t.publish(&topic, &envelope(id, 4, "back")).await {
        assert!(Instant::now() < deadline, "publish after the restart: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_a_stopped_server_says_what_happened() {
    let mut server = private_server();
    let url = server.url().replace("postgres@", "postgres:pw-s3cret@");
    server.kill9();
    let connecting = PostgresTransport::builder()
        .connect_timeout(Duration::from_secs(1))
        .connect(&url);
    match tokio::time::timeout(WAIT, connecting).await {
        Ok(Err(e)) => {
            let text = e.to_string();
            let address = format!("127.0.0.1:{}", server.port());
            assert!(text.contains(&address), "{text}");
            assert!(text.contains("connection refused"), "{text}");
            assert!(!text.contains("s3cret"), "{text}");
            println!("connect to a stopped server: {text}");
        }
        Ok(Ok(_)) => panic!("connected to a stopped server"),
        Err(_) => panic!("connect to a stopped server still waiting after {WAIT:?}"),
    }
}
