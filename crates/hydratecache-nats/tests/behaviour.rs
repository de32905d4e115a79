//! NATS-specific behaviour: size limit, subjects, the body format, foreign
//! bytes, buffers and slow consumers, unsubscribe and close.

mod common;

use std::time::Duration;

use common::{eventually, next_item, raw_subscribe, server_subscriptions, Mode, NatsHarness};
use futures::StreamExt;
use hydratecache_conformance::{max_payload_boundary, unique_topic, Outcome, RECEIVE_TIMEOUT};
use hydratecache_core::{
    Envelope, Error, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_nats::{async_nats, NatsTransport};
use hydratecache_testkit::nats::{shared_or_private, NatsServer};

fn server() -> NatsServer {
    match NatsServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    }
}

fn message(sequence: u64, payload: Vec<u8>) -> Envelope {
    Envelope {
        sequence,
        publisher: PublisherId(7),
        ..Envelope::update("k", payload)
    }
}

async fn raw_next(sub: &mut async_nats::Subscriber, what: &str) -> async_nats::Message {
    match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
        Ok(Some(m)) => m,
        other => panic!("raw subscriber: no {what}: {other:?}"),
    }
}

async fn expect_message(sub: &mut Subscription, sequence: u64) {
    match next_item(sub, &format!("message {sequence}")).await {
        Ok(Event::Message(m)) => assert_eq!(m.sequence, sequence),
        other => panic!("expected message {sequence}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_payload_is_rejected_before_sending() {
    let nats = shared_or_private().unwrap();
    let t = NatsTransport::connect(&nats.url()).await.unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let topic = unique_topic("oversize");
    let mut watcher = raw_subscribe(&raw, &topic).await;

    let limit = t.client().server_info().max_payload;
    assert_eq!(t.capabilities().max_message_size, Some(limit));
    let max = t.capabilities().max_payload("k").unwrap();
    let too_big = Envelope {
        ttl: None,
        version: None,
        ..message(1, vec![0u8; limit])
    };
    let err = t.publish(&topic, &too_big).await.unwrap_err();
    let text = err.to_string();
    println!("oversize: {text}");
    match err {
        Error::PayloadTooLarge {
            backend,
            size,
            limit: l,
            max_payload,
        } => {
            assert_eq!(
                (backend, size, l, max_payload),
                ("nats", too_big.encoded_len(), limit, max)
            );
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(text.contains(&too_big.encoded_len().to_string()) && text.contains(&limit.to_string()));
    // Nothing went out, and the connection is intact: the next message is the
    // first the raw subscriber sees.
    t.publish(&topic, &message(2, b"small".to_vec()))
        .await
        .unwrap();
    let got = raw_next(&mut watcher, "marker").await;
    assert_eq!(Envelope::decode(&got.payload).unwrap().sequence, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_comes_from_the_server() {
    let server = match NatsServer::start_with_config(Some("max_payload: 4096\n")) {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    };
    let t = NatsTransport::connect(&server.url()).await.unwrap();
    assert_eq!(t.capabilities().max_message_size, Some(4096));
    // The conformance boundary case against this server: max fits, max+1 fails.
    let nats = hydratecache_testkit::nats::Nats::Private(server);
    let harness = NatsHarness::new(&nats, Mode::Url);
    assert!(matches!(
        max_payload_boundary(&harness).await,
        Outcome::Passed
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_topics_are_rejected() {
    let nats = shared_or_private().unwrap();
    let t = NatsTransport::connect(&nats.url()).await.unwrap();
    let env = message(1, b"v".to_vec());
    for topic in [
        "",
        "a b",
        "tab\there",
        "line\r\nPUB x 1",
        "a.*",
        "a.>",
        ">",
        "a..b",
        ".a",
        "a.",
    ] {
        match t.publish(topic, &env).await {
            Err(Error::InvalidTopic {
                backend: "nats",
                topic: got,
                reason,
            }) => {
                assert_eq!(got, topic);
                println!("{topic:?}: {reason}");
            }
            other => panic!("publish to {topic:?} gave {other:?}"),
        }
        match t.subscribe(topic, SubscribeOptions::default()).await {
            Err(Error::InvalidTopic { .. }) => {}
            other => panic!("subscribe to {topic:?} gave {other:?}"),
        }
    }
    // The connection is unharmed.
    let topic = unique_topic("valid");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();
    t.publish(&topic, &env).await.unwrap();
    expect_message(&mut sub, 1).await;
    // An invalid prefix is refused when building.
    let bad = NatsTransport::builder()
        .subject_prefix("a.*")
        .connect(&nats.url())
        .await;
    assert!(matches!(bad, Err(Error::InvalidTopic { .. })), "{bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_map_to_subjects_with_the_envelope_as_body() {
    let nats = shared_or_private().unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let plain = NatsTransport::connect(&nats.url()).await.unwrap();
    let prefixed = NatsTransport::builder()
        .subject_prefix("hc.test")
        .connect(&nats.url())
        .await
        .unwrap();
    let topic = unique_topic("body");
    assert_eq!(plain.subject(&topic).unwrap(), topic);
    assert_eq!(
        prefixed.subject(&topic).unwrap(),
        format!("hc.test.{topic}")
    );
    let mut on_topic = raw_subscribe(&raw, &topic).await;
    let mut on_prefixed = raw_subscribe(&raw, &format!("hc.test.{topic}")).await;
    let env = Envelope {
        ttl: Some(hydratecache_core::Ttl::starting_now(Duration::from_secs(9))),
        version: Some(3),
        ..message(5, b"payload".to_vec())
    };
    plain.publish(&topic, &env).await.unwrap();
    prefixed.publish(&topic, &env).await.unwrap();
    for sub in [&mut on_topic, &mut on_prefixed] {
        let got = raw_next(sub, "the published message").await;
        assert!(
            got.headers.is_none(),
            "metadata must not be in NATS headers: {:?}",
            got.headers
        );
        assert_eq!(
            &got.payload[..],
            &env.encode().unwrap()[..],
            "the body is the encoded envelope"
        );
    }
    // And a prefixed transport reads its own subject.
    let mut sub = prefixed
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();
    plain
        .publish(&format!("hc.test.{topic}"), &message(6, vec![]))
        .await
        .unwrap();
    expect_message(&mut sub, 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_bytes_yield_errors_and_the_stream_goes_on() {
    let nats = shared_or_private().unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let t = NatsTransport::connect(&nats.url()).await.unwrap();
    let topic = unique_topic("foreign");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "x");
    raw.publish(topic.clone(), "".into()).await.unwrap();
    raw.publish(topic.clone(), "hello from nats pub".into())
        .await
        .unwrap();
    raw.publish(topic.clone(), vec![0xc7, 0x01, 0x01, 0x00].into())
        .await
        .unwrap();
    raw.publish_with_headers(topic.clone(), headers.clone(), "{\"json\":1}".into())
        .await
        .unwrap();
    // A valid envelope with unrelated headers is read normally.
    raw.publish_with_headers(
        topic.clone(),
        headers,
        message(9, b"ok".to_vec()).encode().unwrap().into(),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    for n in 0..4 {
        match next_item(&mut sub, "an error item").await {
            Err(e @ Error::Malformed { .. }) => println!("foreign message {n}: {e}"),
            other => panic!("foreign message {n} gave {other:?}"),
        }
    }
    expect_message(&mut sub, 9).await;
    t.publish(&topic, &message(10, vec![])).await.unwrap();
    expect_message(&mut sub, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_gets_a_lagged_gap_with_the_count() {
    let nats = shared_or_private().unwrap();
    let t = NatsTransport::builder()
        .subscription_buffer(16)
        .connect(&nats.url())
        .await
        .unwrap();
    let topic = unique_topic("lagged");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();
    for i in 1..=200 {
        t.publish(&topic, &message(i, vec![])).await.unwrap();
    }
    // Not read until all 200 were published: only 16 fit.
    let (mut received, mut missed, mut last) = (0u64, 0u64, 0u64);
    while received + missed < 200 {
        match next_item(&mut sub, "messages and the gap").await {
            Ok(Event::Message(m)) => {
                assert!(m.sequence > last);
                last = m.sequence;
                received += 1;
            }
            Ok(Event::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::Lagged, "{gap:?}");
                missed += gap.missed.expect("the pump counts what it drops");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("lagged: received {received}, missed {missed}");
    assert_eq!(received + missed, 200);
    assert!(
        missed > 0 && received >= 16,
        "received {received} missed {missed}"
    );
    // The subscription goes on.
    t.publish(&topic, &message(201, vec![])).await.unwrap();
    expect_message(&mut sub, 201).await;
}

/// async-nats' own buffer of 1 message overflows while one runtime thread is
/// busy delivering a batch: its `SlowConsumer(sid)` event becomes a gap on
/// that subscription only.
#[tokio::test(flavor = "current_thread")]
async fn slow_consumer_events_become_gaps_on_that_subscription() {
    let nats = shared_or_private().unwrap();
    let t = NatsTransport::builder()
        .connect_with(
            nats.url(),
            async_nats::ConnectOptions::new().subscription_capacity(1),
        )
        .await
        .unwrap();
    let raw = async_nats::connect(nats.url()).await.unwrap();
    let (busy, quiet) = (unique_topic("slowbusy"), unique_topic("slowquiet"));
    let mut busy_sub = t
        .subscribe(&busy, SubscribeOptions::default())
        .await
        .unwrap();
    let mut quiet_sub = t
        .subscribe(&quiet, SubscribeOptions::default())
        .await
        .unwrap();
    for i in 1..=2000u64 {
        let bytes = message(i, vec![0; 64]).encode().unwrap();
        raw.publish(busy.clone(), bytes.into()).await.unwrap();
    }
    raw.flush().await.unwrap();
    let mut received = 0u64;
    let mut reasons = Vec::new();
    loop {
        // Once a gap was seen the last messages may have been dropped too:
        // then the stream goes quiet.
        let wait = if reasons.is_empty() {
            RECEIVE_TIMEOUT
        } else {
            Duration::from_secs(1)
        };
        match tokio::time::timeout(wait, busy_sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => {
                received += 1;
                if m.sequence == 2000 {
                    break;
                }
            }
            Ok(Some(Ok(Event::Gap(gap)))) => reasons.push(gap.reason),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) if !reasons.is_empty() => break,
            Err(_) => panic!("nothing within {wait:?}; received {received}"),
        }
    }
    println!("slow consumer: received {received} of 2000, gaps {reasons:?}");
    assert!(reasons.contains(&GapReason::SlowConsumer), "{reasons:?}");
    // The other subscription of the same connection had no loss: no gap.
    raw.publish(quiet.clone(), message(1, vec![]).encode().unwrap().into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    expect_message(&mut quiet_sub, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_on_drop_leaves_only_the_topic_subscriptions() {
    let server = server();
    let monitor = server.monitor_url();
    let t = NatsTransport::connect(&server.url()).await.unwrap();
    let (a, b) = (unique_topic("unsuba"), unique_topic("unsubb"));
    let sub_a1 = t.subscribe(&a, SubscribeOptions::default()).await.unwrap();
    let sub_a2 = t.subscribe(&a, SubscribeOptions::default()).await.unwrap();
    let mut sub_b = t.subscribe(&b, SubscribeOptions::default()).await.unwrap();
    // The confirmation inboxes are gone: the server lists exactly the three SUBs.
    let mut listed = eventually(
        "only the topic subscriptions listed",
        RECEIVE_TIMEOUT,
        || async {
            let subs = server_subscriptions(&monitor).await.unwrap();
            let mut subjects: Vec<String> = subs.into_iter().map(|(_, s)| s).collect();
            subjects.sort();
            (subjects.len() == 3).then_some(subjects)
        },
    )
    .await;
    let mut expected = vec![a.clone(), a.clone(), b.clone()];
    expected.sort();
    listed.sort();
    assert_eq!(listed, expected);
    drop(sub_a1);
    drop(sub_a2);
    eventually("a unsubscribed", RECEIVE_TIMEOUT, || async {
        let subs = server_subscriptions(&monitor).await.unwrap();
        (!subs.iter().any(|(_, s)| *s == a) && subs.iter().any(|(_, s)| *s == b)).then_some(())
    })
    .await;
    t.publish(&b, &message(1, vec![])).await.unwrap();
    expect_message(&mut sub_b, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions_and_refuses_publishes() {
    let nats = shared_or_private().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    for t in [
        NatsTransport::connect(&nats.url()).await.unwrap(),
        NatsTransport::from_client(client.clone()),
    ] {
        let topic = unique_topic("close");
        let mut sub = t
            .subscribe(&topic, SubscribeOptions::default())
            .await
            .unwrap();
        t.close().await.unwrap();
        match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
            Ok(None) => {}
            other => panic!("subscription did not end on close: {other:?}"),
        }
        assert!(matches!(
            t.publish(&topic, &message(1, vec![])).await,
            Err(Error::Closed { backend: "nats" })
        ));
        assert!(matches!(
            t.subscribe(&topic, SubscribeOptions::default()).await,
            Err(Error::Closed { .. })
        ));
        t.close().await.unwrap();
    }
    // The client given to from_client stays usable.
    client.publish("x.after.close", "ok".into()).await.unwrap();
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_once_the_server_has_everything_published() {
    const WRITERS: u64 = 8;
    const MESSAGES: u64 = 100;
    let nats = shared_or_private().unwrap();
    for mode in [Mode::Url, Mode::Client] {
        let topic = unique_topic("close_confirms");
        let raw = async_nats::connect(nats.url()).await.unwrap();
        let mut sub = raw_subscribe(&raw, &topic).await;
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let url = nats.url();
            let topic = topic.clone();
            writers.push(tokio::spawn(async move {
                let t = match mode {
                    Mode::Url => NatsTransport::connect(&url).await.unwrap(),
                    Mode::Client => {
                        NatsTransport::from_client(async_nats::connect(&url).await.unwrap())
                    }
                };
                for i in 1..=MESSAGES {
                    let env = Envelope {
                        sequence: i,
                        publisher: PublisherId(u128::from(w) + 1),
                        ..Envelope::update("k", vec![0; 64])
                    };
                    t.publish(&topic, &env).await.unwrap();
                }
                // Then the transport (and in Client mode the only client) drops.
                t.close().await.unwrap();
                // A second close has nothing left to confirm.
                t.close().await.unwrap();
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let mut received = 0;
        while received < WRITERS * MESSAGES {
            let m = raw_next(&mut sub, &format!("{mode:?}: message {received}")).await;
            Envelope::decode(&m.payload).unwrap();
            received += 1;
        }
    }
}

/// A transport (confirm bounded at 500 ms) that published to `topic`, and
/// its private server, killed since: nothing can confirm that publish.
async fn published_then_server_killed(topic: &str) -> (NatsServer, NatsTransport) {
    let mut server = server();
    let t = NatsTransport::builder()
        .publish_timeout(Duration::from_millis(500))
        .connect(&server.url())
        .await
        .unwrap();
    t.publish(topic, &message(1, vec![])).await.unwrap();
    server.kill9();
    (server, t)
}

/// A close cancelled while it confirms leaves the publishes unconfirmed:
/// the next close reports it (and a drop would confirm in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_close_leaves_the_publishes_unconfirmed() {
    let (_server, t) = published_then_server_killed("close.cancelled").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(20), t.close())
            .await
            .is_err(),
        "the close was expected to still be confirming"
    );
    let err = t.close().await.unwrap_err();
    assert!(
        err.to_string().contains("confirm on close"),
        "unexpected error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_when_the_server_cannot_confirm() {
    let (_server, t) = published_then_server_killed("close.unconfirmed").await;
    // Two closes at once (on clones): the second waits for the first and
    // reports its failure, as does any close after them.
    let clone = t.clone();
    let (first, second) = tokio::join!(t.close(), clone.close());
    for result in [first, second, t.close().await] {
        let err = result.unwrap_err();
        assert!(
            err.to_string().contains("confirm on close"),
            "unexpected error: {err}"
        );
    }
}
