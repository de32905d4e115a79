//! PostgreSQL-specific behaviour: transactional publish, connection loss,
//! the NOTIFY payload limit, hostile topic names, foreign garbage.
//!
//! Tests that only need a server use `HYDRATECACHE_POSTGRES_URL` when set
//! (else a private cluster); tests that kill or stop server processes, or
//! create databases, always start their own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use hydratecache_conformance::{expect_silence, next_event, next_message, unique_topic};
use hydratecache_core::{
    CborCodec, Channel, ChannelEvent, Envelope, Error, Event, Gap, GapReason, Kind, PublishOptions,
    PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_postgres::{sqlx, PostgresTransport, MAX_NOTIFY_PAYLOAD, MAX_TOPIC_LEN};
use hydratecache_testkit::postgres::{self, Postgres, PostgresServer};

const WAIT: Duration = Duration::from_secs(30);

fn server() -> Postgres {
    match postgres::shared_or_private() {
        Ok(server) => server,
        Err(e) => panic!("no PostgreSQL for the tests: {e:#}"),
    }
}

fn private_server() -> PostgresServer {
    match PostgresServer::start() {
        Ok(server) => server,
        Err(e) => panic!("cannot start a private PostgreSQL: {e:#}"),
    }
}

async fn transport(url: &str) -> PostgresTransport {
    match PostgresTransport::connect(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

async fn pool(url: &str) -> sqlx::PgPool {
    match sqlx::PgPool::connect(url).await {
        Ok(p) => p,
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

async fn subscribe(t: &PostgresTransport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic:?}: {e}"),
    }
}

fn envelope(publisher: PublisherId, sequence: u64, key: &str) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, sequence.to_be_bytes().to_vec())
    }
}

async fn publish(t: &PostgresTransport, topic: &str, env: &Envelope) {
    if let Err(e) = t.publish(topic, env).await {
        panic!("publish {:?} to {topic:?}: {e}", env.key);
    }
}

/// Runs `sql` with the real `psql` client, off the async threads.
async fn psql(url: &str, sql: &str) -> String {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    match tokio::task::spawn_blocking(move || postgres::psql(&url, &sql)).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("{e:#}"),
        Err(e) => panic!("psql task: {e}"),
    }
}

async fn listener_pid(t: &PostgresTransport) -> i32 {
    match t.listener_info().await {
        Ok(info) => match info.backend_pid {
            Some(pid) => pid,
            None => panic!("no listener connection: {info:?}"),
        },
        Err(e) => panic!("listener_info: {e}"),
    }
}

/// Reads until a gap arrives, which must come after the interruption (the
/// loss reported when the listener noticed it); returns the sequence
/// numbers of the messages read before the gap and the gap.
async fn read_until_gap(sub: &mut Subscription) -> (Vec<u64>, Gap) {
    let mut seen = Vec::new();
    let mut interrupted = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => seen.push(m.sequence),
            Ok(Some(Ok(Event::Interrupted(_)))) => interrupted = true,
            Ok(Some(Ok(Event::Gap(gap)))) => {
                assert!(interrupted, "a gap without the interruption before it");
                return (seen, gap);
            }
            Ok(other) => panic!("waiting for a gap, got {other:?}"),
            Err(_) => panic!("no gap within {WAIT:?} ({} messages read)", seen.len()),
        }
    }
}

fn assert_consecutive(seqs: &[u64], what: &str) {
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "{what}: a message was lost silently ({seqs:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_publish_is_delivered_if_and_only_if_the_transaction_commits() {
    let server = server();
    let url = server.url();
    let t = transport(&url).await;
    let topic = unique_topic("tx");
    let channel: Channel<u32> = Channel::new(t.clone().into_arc(), topic.clone());
    let mut typed = match channel.subscribe().await {
        Ok(s) => s,
        Err(e) => panic!("subscribe: {e}"),
    };
    let mut raw = subscribe(&t, &topic).await;
    let pool = pool(&url).await;
    let codec = CborCodec::new();

    // Committed: delivered at commit, not before.
    let mut tx = pool.begin().await.expect("begin");
    let sent = PostgresTransport::publish_value_tx(
        &mut *tx,
        &topic,
        &codec,
        "committed",
        &7u32,
        PublishOptions::new()
            .version(3)
            .ttl(Duration::from_secs(60)),
    )
    .await
    .expect("publish in the transaction");
    expect_silence(&mut raw, Duration::from_millis(300)).await;
    tx.commit().await.expect("commit");
    let got = next_message(&mut raw, "the committed update").await;
    assert_eq!(got, sent);
    assert_eq!((got.sequence, got.version), (1, Some(3)));
    match tokio::time::timeout(WAIT, typed.next()).await {
        Ok(Some(Ok(ChannelEvent::Update(m)))) => {
            assert_eq!(
                (m.key.as_str(), m.value, m.version),
                ("committed", 7, Some(3))
            );
            assert!(m.remaining().is_some_and(|r| r > Duration::from_secs(50)));
        }
        other => panic!("typed subscriber got {other:?}"),
    }

    // Rolled back: never delivered. The marker published after the rollback
    // is the next thing each subscriber sees.
    let mut tx = pool.begin().await.expect("begin");
    PostgresTransport::publish_value_tx(
        &mut *tx,
        &topic,
        &codec,
        "rolled-back",
        &8u32,
        PublishOptions::new(),
    )
    .await
    .expect("publish in the transaction");
    PostgresTransport::delete_tx(
        &mut *tx,
        &topic,
        "rolled-back-delete",
        PublishOptions::new(),
    )
    .await
    .expect("delete in the transaction");
    tx.rollback().await.expect("rollback");
    channel
        .publish("marker", &9)
        .await
        .expect("publish the marker");
    assert_eq!(next_message(&mut raw, "the marker").await.key, "marker");
    match tokio::time::timeout(WAIT, typed.next()).await {
        Ok(Some(Ok(ChannelEvent::Update(m)))) => {
            assert_eq!((m.key.as_str(), m.value), ("marker", 9))
        }
        other => panic!("typed subscriber got {other:?}"),
    }
    expect_silence(&mut raw, Duration::from_millis(300)).await;

    // A committed delete, and `publish_tx` on a plain connection (autocommit).
    let mut tx = pool.begin().await.expect("begin");
    let deleted =
        PostgresTransport::delete_tx(&mut *tx, &topic, "gone", PublishOptions::new().version(4))
            .await
            .expect("delete in the transaction");
    tx.commit().await.expect("commit");
    let got = next_message(&mut raw, "the committed delete").await;
    assert_eq!(
        (got.kind, got.key.as_str(), got.version),
        (Kind::Delete, "gone", Some(4))
    );
    assert_eq!(got, deleted);
    let mut conn = pool.acquire().await.expect("acquire");
    let plain = envelope(PublisherId::random(), 1, "autocommit");
    PostgresTransport::publish_tx(&mut *conn, &topic, &plain)
        .await
        .expect("publish on a connection");
    let got = next_message(&mut raw, "the autocommit message").await;
    assert_eq!(
        (got.key.as_str(), got.publisher, got.sequence, &got.payload),
        (
            plain.key.as_str(),
            plain.publisher,
            plain.sequence,
            &plain.payload
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_connection_killed_mid_stream_gives_a_gap_then_delivery_resumes() {
    let server = server();
    let url = server.url();
    let subscriber = transport(&url).await;
    let publisher = transport(&url).await;
    let admin = pool(&url).await;
    let topic = unique_topic("terminate");
    let mut sub = subscribe(&subscriber, &topic).await;
    let old_pid = listener_pid(&subscriber).await;

    // A publisher that keeps going, one message every millisecond or so.
    let stop = stop_flag();
    let task = {
        let (publisher, topic, stop) = (publisher.clone(), topic.clone(), stop.clone());
        tokio::spawn(async move {
            let id = PublisherId::random();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                publish(&publisher, &topic, &envelope(id, seq, "k")).await;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seq
        })
    };
    // Mid-stream: some messages have arrived.
    let mut before = Vec::new();
    while before.len() < 50 {
        before.push(
            next_message(&mut sub, "a message before the kill")
                .await
                .sequence,
        );
    }
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old_pid)
        .fetch_one(&admin)
        .await
        .expect("pg_terminate_backend");
    assert!(
        killed,
        "the listener's backend {old_pid} was not terminated"
    );

    let (more, gap) = read_until_gap(&mut sub).await;
    before.extend(more);
    assert_eq!(gap.reason, GapReason::Reconnected, "{gap:?}");
    assert_consecutive(&before, "before the gap");
    // After the gap: delivery resumes, in order, with no further loss.
    let mut after = Vec::new();
    while after.len() < 50 {
        after.push(
            next_message(&mut sub, "a message after the gap")
                .await
                .sequence,
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = task.await.expect("publisher task");
    assert_consecutive(&after, "after the gap");
    let missed = after[0] - before.last().copied().unwrap_or(0) - 1;
    println!(
        "pg_terminate_backend: {} messages before the gap, {missed} missed (covered by the gap), \
         {} read after it, {last} published",
        before.len(),
        after.len()
    );
    let new_pid = listener_pid(&subscriber).await;
    assert_ne!(new_pid, old_pid, "the listener did not reconnect");
    let info = subscriber.listener_info().await.expect("listener_info");
    assert_eq!(info.channels, vec![topic.clone()], "not listening again");
}

fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_gives_a_gap_then_delivery_resumes() {
    let mut server = private_server();
    let url = server.url();
    let builder = || {
        PostgresTransport::builder()
            .connect_timeout(Duration::from_secs(2))
            .max_reconnect_delay(Duration::from_millis(200))
    };
    let subscriber = builder().connect(&url).await.expect("connect");
    let publisher = builder().connect(&url).await.expect("connect");
    let topic = unique_topic("restart");
    let mut sub = subscribe(&subscriber, &topic).await;
    let id = PublisherId::random();
    publish(&publisher, &topic, &envelope(id, 1, "before")).await;
    assert_eq!(
        next_message(&mut sub, "the message before the restart")
            .await
            .sequence,
        1
    );

    server.kill9();
    // While the server is down, publishing fails (it does not hang).
    match tokio::time::timeout(WAIT, publisher.publish(&topic, &envelope(id, 2, "down"))).await {
        Ok(Err(Error::Backend { .. })) => {}
        other => panic!("publish with the server down gave {other:?}"),
    }
    let started = Instant::now();
    server.start_again().expect("restart the server");
    let restart = started.elapsed();

    let (before_gap, gap) = read_until_gap(&mut sub).await;
    assert!(before_gap.is_empty(), "{before_gap:?}");
    assert_eq!(gap.reason, GapReason::Reconnected);
    let gap_after = started.elapsed();
    // The gap is only reported once the listener listens again: the next
    // message is delivered.
    publish(&publisher, &topic, &envelope(id, 3, "after")).await;
    assert_eq!(
        next_message(&mut sub, "the message after the restart")
            .await
            .sequence,
        3
    );
    println!("kill -9 + restart: server back after {restart:?}, gap reported after {gap_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_at_the_limit_is_delivered_and_one_byte_over_is_refused_before_sending() {
    let server = server();
    let url = server.url();
    let t = transport(&url).await;
    let topic = unique_topic("limit");
    let mut sub = subscribe(&t, &topic).await;
    let key = "limit-key";
    let max = t.capabilities().max_payload(key).expect("a limit");
    let full = |n: usize, seq: u64| Envelope {
        ttl: Some(hydratecache_core::Ttl::starting_now(Duration::from_secs(
            60,
        ))),
        version: Some(1),
        ..Envelope {
            publisher: PublisherId::random(),
            sequence: seq,
            ..Envelope::update(key, vec![0xa5u8; n])
        }
    };
    let at_limit = full(max, 1);
    assert_eq!(
        at_limit.encoded_len(),
        hydratecache_postgres::MAX_MESSAGE_SIZE
    );

    let over = full(max + 1, 2);
    match t.publish(&topic, &over).await {
        Err(e @ Error::PayloadTooLarge { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("8000") && text.contains("7999") && text.contains(&max.to_string()),
                "the error should name the sizes: {text}"
            );
        }
        other => panic!("one byte over gave {other:?}"),
    }
    // Transactional publishing checks the same limit before sending.
    let pool = pool(&url).await;
    let mut conn = pool.acquire().await.expect("acquire");
    match PostgresTransport::publish_tx(&mut *conn, &topic, &over).await {
        Err(Error::PayloadTooLarge { size, limit, .. }) => assert_eq!((size, limit), (8000, 7999)),
        other => panic!("one byte over in publish_tx gave {other:?}"),
    }
    publish(&t, &topic, &at_limit).await;
    let got = next_message(&mut sub, "the message at the limit").await;
    assert_eq!(
        (got.sequence, got.payload.len()),
        (1, max),
        "the oversize message was sent"
    );

    // The limit is PostgreSQL's: 7,999 bytes of payload pass, 8,000 do not.
    let other = unique_topic("pglimit");
    sqlx::query("SELECT pg_notify($1, repeat('a', $2))")
        .bind(&other)
        .bind(MAX_NOTIFY_PAYLOAD as i32)
        .execute(&pool)
        .await
        .expect("a 7,999-byte payload");
    let refused = sqlx::query("SELECT pg_notify($1, repeat('a', $2))")
        .bind(&other)
        .bind(MAX_NOTIFY_PAYLOAD as i32 + 1)
        .execute(&pool)
        .await;
    assert!(
        refused.is_err(),
        "PostgreSQL accepted an 8,000-byte payload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_topic_names_round_trip_or_are_refused_and_never_inject_sql() {
    let server = server();
    let url = server.url();
    let t = transport(&url).await;
    let admin = pool(&url).await;
    let u = format!("{:x}", std::process::id());
    let canary = unique_topic("canary");
    sqlx::query(&format!("CREATE TABLE IF NOT EXISTS \"{canary}\" (x int)"))
        .execute(&admin)
        .await
        .expect("create the canary table");

    let pad63 = |prefix: &str| {
        let mut s = format!("{prefix}{u}");
        while s.len() < MAX_TOPIC_LEN {
            s.push('z');
        }
        s
    };
    let mut unicode63 = format!("ключ🔑{u}");
    while unicode63.len() + 2 <= MAX_TOPIC_LEN {
        unicode63.push('é');
    }
    while unicode63.len() < MAX_TOPIC_LEN {
        unicode63.push('z');
    }
    let names: Vec<String> = vec![
        format!("dq\"{u}\"x"),
        format!("it's_{u}"),
        format!("semi;colon {u}"),
        format!("\"; DROP TABLE \"{canary}\"; --{u}"),
        format!("'); DROP TABLE \"{canary}\"; --{u}"),
        format!("x\"; DROP TABLE \"{canary}\"; LISTEN \"{u}"),
        format!("MixedCase{u}"),
        format!("mixedcase{u}"),
        format!("MIXEDCASE{u}"),
        format!("back\\slash\\{u}"),
        format!("$1 $2 {u}"),
        format!("*{u}"),
        format!("ключ🔑 {u}"),
        format!(" lead and trail {u} "),
        pad63("long63_"),
        unicode63,
    ];
    let mut subs = Vec::new();
    for name in &names {
        assert!(
            name.len() <= MAX_TOPIC_LEN,
            "{name:?} is {} bytes",
            name.len()
        );
        subs.push(subscribe(&t, name).await);
    }
    let info = t.listener_info().await.expect("listener_info");
    let mut expected = names.clone();
    expected.sort();
    let mut listening = info.channels.clone();
    listening.sort();
    assert_eq!(listening, expected, "LISTEN used other names than given");

    let id = PublisherId::random();
    for (i, name) in names.iter().enumerate() {
        publish(&t, name, &envelope(id, i as u64 + 1, name)).await;
    }
    for (name, sub) in names.iter().zip(subs.iter_mut()) {
        let got = next_message(sub, &format!("the message on {name:?}")).await;
        assert_eq!(&got.key, name, "a topic received another topic's message");
    }
    for sub in subs.iter_mut() {
        expect_silence(sub, Duration::from_millis(50)).await;
    }

    // Too long (64 bytes, ASCII or not), empty, or with NUL: refused clearly.
    let unicode64 = "é".repeat(32);
    for bad in [
        pad63("long64_") + "z",
        unicode64,
        String::new(),
        format!("nul\0{u}"),
    ] {
        match t.subscribe(&bad, SubscribeOptions::default()).await {
            Err(Error::InvalidTopic { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("subscribe to {bad:?} gave {other:?}"),
        }
        match t.publish(&bad, &envelope(id, 99, "bad")).await {
            Err(Error::InvalidTopic { .. }) => {}
            other => panic!("publish to {bad:?} gave {other:?}"),
        }
    }

    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("\"{canary}\""))
        .fetch_one(&admin)
        .await
        .expect("look for the canary");
    assert!(
        exists.is_some(),
        "the canary table is gone: SQL was injected"
    );
    sqlx::query(&format!("DROP TABLE \"{canary}\""))
        .execute(&admin)
        .await
        .expect("drop the canary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_psql_yields_an_error_item_and_the_stream_goes_on() {
    let server = server();
    let url = server.url();
    let t = transport(&url).await;
    let topic = unique_topic("psql");
    let mut sub = subscribe(&t, &topic).await;
    for payload in ["xyz", "", "AAAA", "xwE=", "ǀǀǀ"] {
        psql(&url, &format!("NOTIFY \"{topic}\", '{payload}'")).await;
        match next_event(&mut sub, &format!("the error for {payload:?}")).await {
            Err(e @ Error::Malformed { .. }) => assert!(e.to_string().contains(&topic), "{e}"),
            other => panic!("garbage {payload:?} gave {other:?}"),
        }
    }
    publish(&t, &topic, &envelope(PublisherId::random(), 1, "after")).await;
    assert_eq!(
        next_message(&mut sub, "the message after garbage")
            .await
            .key,
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_subscription_unlistens() {
    let server = server();
    let t = transport(&server.url()).await;
    let (a, b) = (unique_topic("unlista"), unique_topic("unlistb"));
    assert_eq!(
        t.listener_info().await.expect("info").backend_pid,
        None,
        "connected too early"
    );
    let first = subscribe(&t, &a).await;
    let mut second = subscribe(&t, &a).await;
    let mut other = subscribe(&t, &b).await;
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(t.listener_info().await.expect("info").channels, both);
    drop(first);
    // Commands reach the listener task in order: the answer reflects the drop.
    assert_eq!(t.listener_info().await.expect("info").channels, both);
    let id = PublisherId::random();
    publish(&t, &a, &envelope(id, 1, "still")).await;
    assert_eq!(
        next_message(&mut second, "a message after a sibling's drop")
            .await
            .key,
        "still"
    );
    drop(second);
    assert_eq!(
        t.listener_info().await.expect("info").channels,
        vec![b.clone()]
    );
    publish(&t, &b, &envelope(id, 2, "other")).await;
    assert_eq!(
        next_message(&mut other, "a message on the other topic")
            .await
            .key,
        "other"
    );
    drop(other);
    assert!(t.listener_info().await.expect("info").channels.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_subscriptions_releases_the_listener_and_refuses_publishes() {
    let server = server();
    let url = server.url();
    let t = transport(&url).await;
    let admin = pool(&url).await;
    let topic = unique_topic("close");
    let mut sub = subscribe(&t, &topic).await;
    let pid = listener_pid(&t).await;
    t.close().await.expect("close");
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(None) => {}
        other => panic!("subscription after close gave {other:?}"),
    }
    assert!(matches!(
        t.publish(&topic, &envelope(PublisherId::random(), 1, "k"))
            .await,
        Err(Error::Closed { .. })
    ));
    assert!(matches!(
        t.subscribe(&topic, SubscribeOptions::default()).await,
        Err(Error::Closed { .. })
    ));
    // The backend exits shortly after the client closed its connection.
    let deadline = Instant::now() + WAIT;
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(&admin)
            .await
            .expect("pg_stat_activity");
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the listener connection is still open {WAIT:?} after close()"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_concurrent_publishers_arrives_in_full_and_in_order() {
    const PUBLISHERS: u64 = 16;
    const EACH: u64 = 1_250;
    let server = server();
    let url = server.url();
    let subscriber = transport(&url).await;
    let publisher = match PostgresTransport::builder()
        .max_connections(16)
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("burst");
    let mut sub = subscribe(&subscriber, &topic).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let (publisher, topic) = (publisher.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let id = PublisherId(u128::from(p) + 1);
            for seq in 1..=EACH {
                publish(&publisher, &topic, &envelope(id, seq, "k")).await;
            }
        }));
    }
    let mut last: HashMap<PublisherId, u64> = HashMap::new();
    for n in 0..PUBLISHERS * EACH {
        let got = next_message(&mut sub, &format!("message {n}")).await;
        let prev = last.insert(got.publisher, got.sequence).unwrap_or(0);
        assert_eq!(
            got.sequence,
            prev + 1,
            "publisher {} out of order",
            got.publisher
        );
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await.expect("publisher task");
    }
    assert!(last.values().all(|&n| n == EACH));
    expect_silence(&mut sub, Duration::from_millis(100)).await;
    println!(
        "burst: {} messages from {PUBLISHERS} concurrent publishers, all received, no gap, in {elapsed:?} ({:.0} msg/s)",
        PUBLISHERS * EACH,
        (PUBLISHERS * EACH) as f64 / elapsed.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_gets_a_lagged_gap_with_the_count() {
    let server = server();
    let url = server.url();
    let subscriber = match PostgresTransport::builder()
        .subscription_buffer(10)
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let publisher = transport(&url).await;
    let (topic, probe_topic) = (unique_topic("lag"), unique_topic("lagprobe"));
    let mut sub = subscribe(&subscriber, &topic).await;
    let mut probe = subscribe(&subscriber, &probe_topic).await;
    let id = PublisherId::random();
    for seq in 1..=50 {
        publish(&publisher, &topic, &envelope(id, seq, "k")).await;
    }
    // Notifications reach the listener in commit order: once the probe has
    // its message, all 50 have been handed out (10 kept, 40 missed).
    publish(&publisher, &probe_topic, &envelope(id, 51, "probe")).await;
    next_message(&mut probe, "the probe").await;
    for seq in 1..=10 {
        assert_eq!(
            next_message(&mut sub, "a buffered message").await.sequence,
            seq
        );
    }
    match next_event(&mut sub, "the gap").await {
        Ok(Event::Gap(gap)) => assert_eq!(
            gap,
            Gap {
                reason: GapReason::Lagged,
                missed: Some(40)
            }
        ),
        other => panic!("expected a lagged gap, got {other:?}"),
    }
    publish(&publisher, &topic, &envelope(id, 52, "k")).await;
    assert_eq!(
        next_message(&mut sub, "the message after the gap")
            .await
            .sequence,
        52
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_backend_that_stops_answering_is_replaced_with_a_gap() {
    let server = private_server();
    let url = server.url();
    let subscriber = match PostgresTransport::builder()
        .keepalive_interval(Some(Duration::from_millis(200)))
        .connect_timeout(Duration::from_secs(1))
        .connect(&url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let publisher = transport(&url).await;
    let topic = unique_topic("stopped");
    let mut sub = subscribe(&subscriber, &topic).await;
    let pid = listener_pid(&subscriber).await;
    // SIGSTOP: the TCP connection stays up, nothing answers (a half-open
    // connection or a hung server looks the same).
    let stopped = std::process::Command::new("kill")
        .args(["-s", "STOP", "--", &pid.to_string()])
        .status()
        .expect("kill -STOP");
    assert!(stopped.success());
    let (before, gap) = read_until_gap(&mut sub).await;
    let _ = std::process::Command::new("kill")
        .args(["-s", "CONT", "--", &pid.to_string()])
        .status();
    assert!(before.is_empty());
    assert_eq!(gap.reason, GapReason::Reconnected);
    assert_ne!(listener_pid(&subscriber).await, pid);
    publish(
        &publisher,
        &topic,
        &envelope(PublisherId::random(), 1, "after"),
    )
    .await;
    assert_eq!(
        next_message(&mut sub, "the message after the gap")
            .await
            .key,
        "after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_payload_in_a_sql_ascii_database_never_panics_and_the_stream_goes_on() {
    let server = private_server();
    let base = server.url();
    psql(
        &base,
        "CREATE DATABASE ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .await;
    let url = base.replace("/test", "/ascii");
    let t = transport(&url).await;
    let topic = unique_topic("ascii");
    let mut sub = subscribe(&t, &topic).await;
    let admin = pool(&url).await;
    // A byte that is not UTF-8, which a SQL_ASCII database passes through
    // unchecked (and sqlx's `PgNotification::payload` would unwrap).
    sqlx::query("SELECT pg_notify($1, convert_from('\\xff'::bytea, 'SQL_ASCII'))")
        .bind(&topic)
        .execute(&admin)
        .await
        .expect("notify with a non-UTF-8 byte");
    // PostgreSQL 15 validates the text when converting it to the client's
    // UTF8 and drops the listener's session: a gap. A server that passed the
    // bytes on would give an error item. Either way, no panic, and the
    // stream goes on.
    let mut outcome = next_event(&mut sub, "the outcome of a non-UTF-8 payload").await;
    if matches!(outcome, Ok(Event::Interrupted(_))) {
        // The session dropped: reported when noticed, then the gap.
        outcome = next_event(&mut sub, "the gap after the dropped session").await;
    }
    match outcome {
        Ok(Event::Gap(Gap {
            reason: GapReason::Reconnected,
            ..
        })) => println!("non-UTF-8 payload: the server dropped the listener session; gap reported"),
        Err(Error::Malformed { .. }) => println!("non-UTF-8 payload: error item"),
        other => panic!("a non-UTF-8 payload gave {other:?}"),
    }
    publish(&t, &topic, &envelope(PublisherId::random(), 1, "after")).await;
    assert_eq!(
        next_message(&mut sub, "the message after").await.key,
        "after"
    );
}
