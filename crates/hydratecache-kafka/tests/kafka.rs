//! Kafka-specific behaviour, against a private tansu (or the broker at
//! `HYDRATECACHE_KAFKA_URL` for the tests that do not restart it).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::{next_item, plain_client};
use futures::FutureExt;
use hydratecache_conformance::{expect_silence, next_message, unique_topic};
use hydratecache_core::{
    Envelope, Error, Event, GapReason, Kind, PublisherId, StartFrom, SubscribeOptions, Transport,
    Ttl,
};
use hydratecache_kafka::record::{self, partition_for};
use hydratecache_kafka::{KafkaBuilder, KafkaTransport, TopicSettings};
use hydratecache_testkit::kafka::{self, TansuServer};

fn server() -> kafka::Kafka {
    match kafka::shared_or_private() {
        Ok(s) => s,
        Err(e) => panic!("no Kafka broker: {e:#}"),
    }
}

async fn transport(builder: KafkaBuilder, url: &str) -> KafkaTransport {
    match builder.connect(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    }
}

fn env(publisher: PublisherId, sequence: u64, key: &str, payload: impl Into<Bytes>) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, payload)
    }
}

/// A key that lands in partition 0 whether the topic has 1, 2 or 4
/// partitions (after a restart, tansu may auto-create it with 4).
fn key_in_partition_zero() -> String {
    (0..)
        .map(|n| format!("k{n}"))
        .find(|k| partition_for(k.as_bytes(), 4) == 0)
        .unwrap_or_default()
}

/// Many keys over 4 partitions, published concurrently: every message
/// arrives once, each key's updates in order, each key in the partition
/// Kafka's default partitioner picks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_partition_topic_keeps_per_key_order() {
    const KEYS: u64 = 40;
    const UPDATES: u64 = 50;
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("multipart");
    common::create_topic(&admin, &topic, 4)
        .await
        .expect("topic");
    let publisher_t = transport(KafkaTransport::builder(), &server.url()).await;
    let subscriber_t = transport(KafkaTransport::builder(), &server.url()).await;
    let mut sub = subscriber_t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..KEYS {
        let t = publisher_t.clone();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = PublisherId(u128::from(k) + 1);
            for i in 1..=UPDATES {
                let e = env(publisher, i, &format!("key-{k}"), i.to_be_bytes().to_vec());
                if let Err(e) = t.publish(&topic, &e).await {
                    panic!("publish key-{k} #{i}: {e}");
                }
            }
        }));
    }
    let mut last: HashMap<String, u64> = HashMap::new();
    for n in 0..KEYS * UPDATES {
        let got = next_message(&mut sub, &format!("message {n}")).await;
        let prev = last.insert(got.key.clone(), got.sequence).unwrap_or(0);
        assert_eq!(got.sequence, prev + 1, "key {} out of order", got.key);
        assert_eq!(&got.payload[..], &got.sequence.to_be_bytes()[..]);
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.expect("publisher task");
    }
    assert_eq!(last.len() as u64, KEYS);
    assert!(last.values().all(|&n| n == UPDATES), "{last:?}");
    println!(
        "{} messages, {KEYS} keys, 4 partitions: {elapsed:?} publish to receive",
        KEYS * UPDATES
    );
    // Each key sits in the partition the default partitioner picks, and
    // every partition got some.
    for partition in 0..4 {
        let records = common::read_all(&admin, &topic, partition)
            .await
            .expect("read");
        assert!(!records.is_empty(), "partition {partition} is empty");
        for r in records {
            let key = r.record.key.clone().expect("key");
            assert_eq!(partition_for(&key, 4), partition as usize);
        }
    }
    expect_silence(&mut sub, Duration::from_millis(200)).await;
}

/// `StartFrom::Earliest` replays what the topic holds, in order, then goes
/// on live; `Latest` sees only what comes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_from_earliest_replays_existing_records() {
    let server = server();
    let topic = unique_topic("earliest");
    let t = transport(
        KafkaTransport::builder().create_topics(TopicSettings::new(1, 1)),
        &server.url(),
    )
    .await;
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    t.ensure_topic(&topic).await.expect("create the topic");
    let publisher = PublisherId::random();
    // 200 records in one batch (tansu's ListOffsets is wrong after a
    // batch), then 20 one by one through the transport.
    let batch: Vec<_> = (1..=200u64)
        .map(|i| {
            record::to_record(&env(
                publisher,
                i,
                &format!("k{}", i % 7),
                vec![i as u8; 10],
            ))
        })
        .collect();
    common::produce_raw(&admin, &topic, 0, batch)
        .await
        .expect("produce");
    for i in 201..=220u64 {
        t.publish(&topic, &env(publisher, i, "single", vec![1u8; 3]))
            .await
            .expect("publish");
    }
    let mut replay = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe earliest");
    let mut live = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe latest");
    for i in 1..=220u64 {
        assert_eq!(
            next_message(&mut replay, "a replayed record")
                .await
                .sequence,
            i
        );
    }
    t.publish(&topic, &env(publisher, 221, "late", &b"x"[..]))
        .await
        .expect("publish");
    assert_eq!(
        next_message(&mut replay, "the live record").await.sequence,
        221
    );
    assert_eq!(
        next_message(&mut live, "the first record after subscribing")
            .await
            .sequence,
        221,
        "a latest subscription saw an older record"
    );
    expect_silence(&mut live, Duration::from_millis(200)).await;
}

/// A delete is a tombstone (null value) under the cache key, with its
/// metadata in the headers; an update's headers hold the big-endian fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstone_and_headers_readable_by_a_plain_consumer() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("headers");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(KafkaTransport::builder(), &server.url()).await;
    let publisher = PublisherId(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10);
    let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
    let update = Envelope {
        ttl: Some(Ttl {
            start: at,
            duration: Duration::from_secs(30),
        }),
        version: Some(7),
        published_at: at,
        ..env(publisher, 1, "user:42", &b"\x00value\xff"[..])
    };
    let delete = Envelope {
        version: Some(8),
        published_at: at,
        sequence: 2,
        publisher,
        ..Envelope::delete("user:42")
    };
    t.publish(&topic, &update).await.expect("update");
    t.publish(&topic, &delete).await.expect("delete");
    let records = common::read_all(&admin, &topic, 0).await.expect("read");
    assert_eq!(records.len(), 2);
    let (u, d) = (&records[0].record, &records[1].record);
    assert_eq!(u.key.as_deref(), Some(&b"user:42"[..]));
    assert_eq!(u.value.as_deref(), Some(&b"\x00value\xff"[..]));
    let h = |r: &rskafka::record::Record, name: &str| r.headers.get(name).cloned();
    assert_eq!(h(u, "hc-v"), Some(vec![1]));
    assert_eq!(h(u, "hc-kind"), Some(vec![1]));
    assert_eq!(h(u, "hc-pub"), Some(publisher.0.to_be_bytes().to_vec()));
    assert_eq!(h(u, "hc-seq"), Some(1u64.to_be_bytes().to_vec()));
    assert_eq!(
        h(u, "hc-ts"),
        Some(1_700_000_000_123_456u64.to_be_bytes().to_vec())
    );
    let mut ttl = 1_700_000_000_123_456u64.to_be_bytes().to_vec();
    ttl.extend_from_slice(&30_000_000u64.to_be_bytes());
    assert_eq!(h(u, "hc-ttl"), Some(ttl));
    assert_eq!(h(u, "hc-ver"), Some(7u64.to_be_bytes().to_vec()));
    assert_eq!(u.timestamp.timestamp_millis(), 1_700_000_000_123);
    // The tombstone.
    assert_eq!(d.key.as_deref(), Some(&b"user:42"[..]));
    assert_eq!(d.value, None, "a delete must be a tombstone");
    assert_eq!(h(d, "hc-kind"), Some(vec![2]));
    assert_eq!(h(d, "hc-ver"), Some(8u64.to_be_bytes().to_vec()));
    assert_eq!(h(d, "hc-ttl"), None);
    // And the transport reads both back as sent.
    let mut replay = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe");
    assert_eq!(next_message(&mut replay, "the update").await, update);
    let got = next_message(&mut replay, "the delete").await;
    assert_eq!((got.kind, got), (Kind::Delete, delete));
}

/// Records written by another producer (no headers, foreign headers, a
/// newer header version, a tombstone without metadata) each give one
/// `Error::Malformed`, and the stream goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_records_from_another_producer() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("garbage");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(KafkaTransport::builder(), &server.url()).await;
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let seq = 5u64.to_be_bytes();
    let pubid = [0u8; 16];
    let garbage = vec![
        common::raw_record(Some(b"k"), Some(b"{\"json\": true}"), &[]),
        common::raw_record(None, None, &[]),
        common::raw_record(Some(b"k"), Some(b"v"), &[("traceparent", b"00-abc")]),
        common::raw_record(Some(b"k"), Some(b"v"), &[("hc-v", &[2])]),
        common::raw_record(Some(b"k"), Some(b"v"), &[("hc-v", &[1]), ("hc-kind", &[1])]),
        common::raw_record(
            Some(&[0xff, 0xfe]),
            Some(b"v"),
            &[
                ("hc-v", &[1]),
                ("hc-kind", &[1]),
                ("hc-pub", &pubid),
                ("hc-seq", &seq),
                ("hc-ts", &seq),
            ],
        ),
        common::raw_record(
            Some(b"k"),
            Some(b"v"),
            &[
                ("hc-v", &[1]),
                ("hc-kind", &[1]),
                ("hc-pub", &pubid[..3]),
                ("hc-seq", &seq),
                ("hc-ts", &seq),
            ],
        ),
    ];
    let n = garbage.len();
    common::produce_raw(&admin, &topic, 0, garbage)
        .await
        .expect("produce garbage");
    for i in 0..n {
        match next_item(&mut sub, "a malformed record").await {
            Err(e @ Error::Malformed { .. }) => println!("garbage {i}: {e}"),
            other => panic!("garbage record {i} gave {other:?}"),
        }
    }
    t.publish(&topic, &env(PublisherId::random(), 1, "after", &b"ok"[..]))
        .await
        .expect("publish");
    assert_eq!(
        next_message(&mut sub, "the valid record").await.key,
        "after"
    );
}

/// A record with our headers written by plain rskafka is a message: the
/// format is all in the record, nothing hidden in the transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_built_by_another_client_are_read() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("foreignok");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(KafkaTransport::builder(), &server.url()).await;
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let sent = Envelope {
        published_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_001),
        version: Some(9),
        ..env(PublisherId(77), 3, "from-elsewhere", &b"payload"[..])
    };
    common::produce_raw(&admin, &topic, 0, vec![record::to_record(&sent)])
        .await
        .expect("produce");
    assert_eq!(next_message(&mut sub, "the foreign message").await, sent);
}

/// Topic names are checked before anything is sent; a missing topic is a
/// clear error unless creation is on, which uses the configured settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_names_and_creation() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let strict = transport(KafkaTransport::builder(), &server.url()).await;
    let e = Envelope::update("k", &b"v"[..]);
    for bad in ["", "with space", "slash/y", "ü", &"a".repeat(250)] {
        match strict.publish(bad, &e).await {
            Err(Error::InvalidTopic { .. }) => {}
            other => panic!("topic {bad:?} gave {other:?}"),
        }
        assert!(matches!(
            strict.subscribe(bad, SubscribeOptions::default()).await,
            Err(Error::InvalidTopic { .. })
        ));
    }
    let missing = unique_topic("missing");
    match strict.publish(&missing, &e).await {
        Err(err @ Error::InvalidTopic { .. }) => {
            assert!(err.to_string().contains("does not exist"), "{err}");
        }
        other => panic!("missing topic gave {other:?}"),
    }
    assert!(matches!(
        strict
            .subscribe(&missing, SubscribeOptions::default())
            .await,
        Err(Error::InvalidTopic { .. })
    ));
    let creating = transport(
        KafkaTransport::builder().create_topics(TopicSettings::new(3, 1)),
        &server.url(),
    )
    .await;
    let mut sub = creating
        .subscribe(&missing, SubscribeOptions::default())
        .await
        .expect("subscribe creates");
    let topics = admin.list_topics().await.expect("list");
    let created = topics.iter().find(|t| t.name == missing).expect("created");
    assert_eq!(created.partitions.len(), 3);
    let longest = "a".repeat(249);
    creating
        .publish(&longest, &e)
        .await
        .expect("249 characters");
    creating.publish(&missing, &e).await.expect("publish");
    assert_eq!(next_message(&mut sub, "the message").await.key, "k");
}

/// `close()` sends what is queued (even with a long linger) and later
/// publishes fail with `Closed`; open subscriptions end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_pending_publishes() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("close");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(
        KafkaTransport::builder().linger(Duration::from_secs(5)),
        &server.url(),
    )
    .await;
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    t.ensure_topic(&topic).await.expect("topic");
    let publisher = PublisherId::random();
    // Poll each publish once: it is queued, the caller does not wait.
    for i in 1..=100u64 {
        let e = env(publisher, i, "k", vec![1u8; 8]);
        assert!(
            t.publish(&topic, &e).now_or_never().is_none(),
            "sent before the linger"
        );
    }
    let started = Instant::now();
    t.close().await.expect("close");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "close waited for the linger: {took:?}"
    );
    assert_eq!(
        common::high_watermark(&admin, &topic, 0).await.expect("hw"),
        100
    );
    assert!(matches!(
        t.publish(&topic, &env(publisher, 101, "k", &b"x"[..]))
            .await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        t.subscribe(&topic, SubscribeOptions::default()).await,
        Err(Error::Closed { .. })
    ));
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        use futures::StreamExt;
        while sub.next().await.is_some() {}
    })
    .await;
    assert!(end.is_ok(), "the subscription did not end after close");
}

/// Two live subscriptions of one transport share a reader: dropping one
/// leaves the other working, and a new one after both are gone works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_reader_survives_dropped_siblings() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("shared");
    common::create_topic(&admin, &topic, 2)
        .await
        .expect("topic");
    let t = transport(KafkaTransport::builder(), &server.url()).await;
    let publisher = PublisherId::random();
    let a = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("a");
    let mut b = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("b");
    drop(a);
    t.publish(&topic, &env(publisher, 1, "one", &b"1"[..]))
        .await
        .expect("publish");
    assert_eq!(
        next_message(&mut b, "after a sibling's drop").await.key,
        "one"
    );
    drop(b);
    let mut c = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("c");
    t.publish(&topic, &env(publisher, 2, "two", &b"2"[..]))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut c, "on a new reader").await.key, "two");
    expect_silence(&mut c, Duration::from_millis(200)).await;
}

/// A subscriber that does not keep up with its topic's shared reader gets a
/// `Lagged` gap whose count plus the messages it did get is everything sent.
///
/// Single-threaded runtime: the reader queues a fetched batch without
/// yielding, so 100 records in one batch overflow a 16-message buffer.
#[tokio::test(flavor = "current_thread")]
async fn slow_live_subscriber_gets_a_lagged_gap() {
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("lag");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let t = transport(
        KafkaTransport::builder().subscription_buffer(16),
        &server.url(),
    )
    .await;
    let mut slow = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let publisher = PublisherId::random();
    let records: Vec<_> = (1..=100u64)
        .map(|i| record::to_record(&env(publisher, i, "k", vec![0u8; 4])))
        .collect();
    common::produce_raw(&admin, &topic, 0, records)
        .await
        .expect("produce");
    let (mut missed, mut received, mut gaps, mut last) = (0, 0, 0, 0);
    while received + missed < 100 {
        match next_item(&mut slow, "messages or the gap").await {
            Ok(Event::Gap(gap)) => {
                assert_eq!(gap.reason, GapReason::Lagged);
                missed += gap.missed.expect("a lagged gap has a count");
                gaps += 1;
            }
            Ok(Event::Message(m)) => {
                assert!(m.sequence > last, "{} after {last}", m.sequence);
                last = m.sequence;
                received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        gaps >= 1,
        "no gap although 100 records went through a buffer of 16"
    );
    assert_eq!(
        missed + received,
        100,
        "{gaps} gap(s) missing {missed}, {received} received"
    );
    println!("lagged: {gaps} gap(s), {missed} missed, {received} received");
    expect_silence(&mut slow, Duration::from_millis(200)).await;
}

/// With memory storage a restarted broker has lost the log: the
/// subscription reports a `Reset` gap and resumes at the new log's start,
/// both when the new log is still shorter than its position and when it
/// has already grown past it; it never hangs while the broker is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_reports_a_gap_and_resumes() {
    let mut server = match TansuServer::start() {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    let topic = unique_topic("restart");
    let builder = KafkaTransport::builder()
        .request_timeout(Duration::from_secs(3))
        .retry_backoff_max(Duration::from_millis(500));
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    drop(admin);
    let key = key_in_partition_zero();
    let publisher_t = transport(builder.clone(), &server.url()).await;
    let subscriber_t = transport(builder, &server.url()).await;
    let mut sub = subscriber_t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let publisher = PublisherId::random();
    let mut seq = 0;
    // 1. Before the restart: 50 messages.
    for _ in 0..50 {
        seq += 1;
        publisher_t
            .publish(&topic, &env(publisher, seq, &key, &b"before"[..]))
            .await
            .expect("publish");
    }
    for i in 1..=50 {
        assert_eq!(
            next_message(&mut sub, "a message before the restart")
                .await
                .sequence,
            i
        );
    }

    // 2. Kill; while down, publishing fails within the request timeout and
    // the subscription stays quiet (no hang, no end).
    server.kill9();
    let started = Instant::now();
    let r = publisher_t
        .publish(&topic, &env(publisher, 999, &key, &b"lost"[..]))
        .await;
    assert!(r.is_err(), "publish to a dead broker succeeded");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "publish took {:?} to fail",
        started.elapsed()
    );
    expect_interruption(&mut sub).await;
    expect_silence(&mut sub, Duration::from_millis(500)).await;

    // 3. Restart empty, recreate the topic and write 80 records at once
    // (past the subscriber's position 50) before it reconnects.
    server.start_again().expect("restart");
    let restarted = Instant::now();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    common::recreate_topic(&admin, &topic, 4)
        .await
        .expect("recreate");
    let publisher2 = PublisherId::random();
    let records: Vec<_> = (1..=80u64)
        .map(|i| record::to_record(&env(publisher2, i, "k", &b"after"[..])))
        .collect();
    common::produce_raw(&admin, &topic, 0, records)
        .await
        .expect("produce");
    match next_item(&mut sub, "the gap after the restart").await {
        Ok(Event::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reset, "{gap:?}"),
        other => panic!("expected a reset gap first, got {other:?}"),
    }
    println!(
        "gap {:?} after the restart (new log longer)",
        restarted.elapsed()
    );
    for i in 1..=80 {
        let m = next_message(&mut sub, "a message of the new log").await;
        assert_eq!((m.publisher, m.sequence), (publisher2, i));
    }

    // 4. Again, with a new log shorter than the position (80): the
    // watermark shows it.
    server.kill9();
    expect_interruption(&mut sub).await;
    expect_silence(&mut sub, Duration::from_millis(300)).await;
    server.start_again().expect("restart");
    let restarted = Instant::now();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    common::recreate_topic(&admin, &topic, 4)
        .await
        .expect("recreate");
    // The publishing transport recovers by itself (retrying the failed
    // publish until the topic is back).
    let publisher3 = PublisherId::random();
    for i in 1..=3u64 {
        let e = env(publisher3, i, &key, &b"again"[..]);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match publisher_t.publish(&topic, &e).await {
                Ok(()) => break,
                Err(err) if Instant::now() < deadline => {
                    println!("publish after restart: {err}, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("publish after restart: {err}"),
            }
        }
    }
    match next_item(&mut sub, "the second gap").await {
        Ok(Event::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reset, "{gap:?}"),
        other => panic!("expected a reset gap first, got {other:?}"),
    }
    println!(
        "gap {:?} after the restart (new log shorter)",
        restarted.elapsed()
    );
    for i in 1..=3 {
        let m = next_message(&mut sub, "a message after the second restart").await;
        assert_eq!((m.publisher, m.sequence), (publisher3, i));
    }
    expect_silence(&mut sub, Duration::from_millis(300)).await;

    // 5. The recreated topic has 4 partitions where the subscription started
    // with 1: it finds the new ones (looked up after the reset) and reads
    // them from their start.
    common::produce_raw(
        &admin,
        &topic,
        3,
        vec![record::to_record(&env(
            publisher3,
            4,
            "elsewhere",
            &b"p3"[..],
        ))],
    )
    .await
    .expect("produce to partition 3");
    let m = next_message(&mut sub, "the message on a new partition").await;
    assert_eq!((m.key.as_str(), m.sequence), ("elsewhere", 4));
    expect_silence(&mut sub, Duration::from_millis(300)).await;
}

/// A replaying subscription whose broker restarts also reports the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_subscription_survives_a_restart() {
    let mut server = match TansuServer::start() {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    let topic = unique_topic("restartreplay");
    let builder = KafkaTransport::builder()
        .request_timeout(Duration::from_secs(3))
        .retry_backoff_max(Duration::from_millis(500))
        .create_topics(TopicSettings::default());
    let t = transport(builder, &server.url()).await;
    let key = key_in_partition_zero();
    let publisher = PublisherId::random();
    for i in 1..=5 {
        t.publish(&topic, &env(publisher, i, &key, &b"x"[..]))
            .await
            .expect("publish");
    }
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe");
    for i in 1..=5 {
        assert_eq!(
            next_message(&mut sub, "a replayed message").await.sequence,
            i
        );
    }
    server.start_again().expect("restart");
    // The publisher recreates the topic itself (creation is on).
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = env(publisher, 6, &key, &b"y"[..]);
    while let Err(err) = t.publish(&topic, &e).await {
        assert!(Instant::now() < deadline, "publish after restart: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_interruption(&mut sub).await;
    match next_item(&mut sub, "the gap").await {
        Ok(Event::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reset),
        other => panic!("expected a reset gap, got {other:?}"),
    }
    assert_eq!(next_message(&mut sub, "the new message").await.sequence, 6);
}

/// Established client connections to `port` on this machine (IPv4, from
/// `/proc/net/tcp`).
fn connections_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let remote_port = cols
                .get(2)
                .and_then(|a| a.split(':').nth(1))
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port) && cols.get(3) == Some(&"01")
        })
        .count()
}

/// Kafka has no server-side subscription: dropping the last subscription of
/// a topic stops its reader and closes the reader's connections (one per
/// partition); a sibling keeps them open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_subscription_closes_its_connections() {
    let server = match TansuServer::start() {
        Ok(s) => s,
        Err(e) => panic!("{e:#}"),
    };
    let port = server.port();
    let t = transport(
        KafkaTransport::builder().create_topics(TopicSettings::new(3, 1)),
        &server.url(),
    )
    .await;
    let topic = unique_topic("unsub");
    t.ensure_topic(&topic).await.expect("topic");
    let before = connections_to(port);
    let first = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let second = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let subscribed = connections_to(port);
    assert_eq!(
        subscribed,
        before + 3,
        "one connection per partition, shared"
    );
    drop(first);
    expect_silence_of_connections(port, subscribed).await;
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections_to(port) > before {
        assert!(
            Instant::now() < deadline,
            "{} connections 10 s after the last drop, {before} before subscribing",
            connections_to(port)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks for 300 ms that the connection count stays at `expected`.
async fn expect_silence_of_connections(port: u16, expected: usize) {
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        assert_eq!(
            connections_to(port),
            expected,
            "a sibling's drop closed connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Four clients publishing to one partition at once: a live subscriber and
/// a replaying one both get all 2,000 messages, each publisher's in order.
/// (tansu makes records readable slightly after its high watermark passes
/// them under such load; the reader must not skip them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishing_clients_lose_nothing() {
    const PUBLISHERS: u64 = 4;
    const MESSAGES: u64 = 500;
    let server = server();
    let admin = plain_client(&server.bootstrap()).await.expect("admin");
    let topic = unique_topic("manyclients");
    common::create_topic(&admin, &topic, 1)
        .await
        .expect("topic");
    let reader = transport(KafkaTransport::builder(), &server.url()).await;
    let mut live = reader
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let t = transport(KafkaTransport::builder(), &server.url()).await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let publisher = PublisherId(u128::from(p) + 1);
            for i in 1..=MESSAGES {
                let e = env(publisher, i, &format!("p{p}"), vec![p as u8; 16]);
                if let Err(e) = t.publish(&topic, &e).await {
                    panic!("publisher {p} message {i}: {e}");
                }
            }
        }));
    }
    let check = |sub_name: &'static str| {
        let mut last: HashMap<PublisherId, u64> = HashMap::new();
        move |m: Envelope| {
            let prev = last.insert(m.publisher, m.sequence).unwrap_or(0);
            assert_eq!(
                m.sequence,
                prev + 1,
                "{sub_name}: publisher {} out of order",
                m.publisher
            );
        }
    };
    let mut check_live = check("live");
    for n in 0..PUBLISHERS * MESSAGES {
        check_live(next_message(&mut live, &format!("live message {n}")).await);
    }
    for task in tasks {
        task.await.expect("publisher");
    }
    let mut replay = reader
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe earliest");
    let mut check_replay = check("replay");
    for n in 0..PUBLISHERS * MESSAGES {
        check_replay(next_message(&mut replay, &format!("replayed message {n}")).await);
    }
    // The replay has caught up with the log as it was at subscribe time.
    match hydratecache_conformance::next_event(&mut replay, "the end of the replay").await {
        Ok(Event::ReplayDone) => {}
        other => panic!("expected ReplayDone, got {other:?}"),
    }
    expect_silence(&mut live, Duration::from_millis(200)).await;
    expect_silence(&mut replay, Duration::from_millis(200)).await;
}

/// The next item is the interruption of a broker that went away.
async fn expect_interruption(sub: &mut hydratecache_core::Subscription) {
    match next_item(sub, "the interruption").await {
        Ok(Event::Interrupted(_)) => {}
        other => panic!("expected the interruption first, got {other:?}"),
    }
}
