//! The conformance suite every adapter runs against its real backend.
//!
//! Each case is a `pub async fn` taking a [`Harness`]; [`run_all`] runs them
//! all and returns a [`Report`] naming what ran and what was skipped (and
//! why). Cases panic on failure, like the assertions of a test. Every receive
//! has a timeout, so a broken transport fails instead of hanging.
//!
//! ```
//! use hydratecache_core::conformance::{run_all, MemoryHarness};
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() {
//! let report = run_all(&MemoryHarness::default()).await;
//! assert!(report.ran.len() >= 12, "{report}");
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::envelope::{Envelope, Kind, PublisherId, Ttl};
use crate::error::{BoxError, Error};
use crate::memory::MemoryTransport;
use crate::transport::{Event, StartFrom, SubscribeOptions, Subscription, Transport};

mod config;

pub use config::{extreme_durations, extreme_durations_never_panic};

/// How long a case waits for one expected event.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the suite needs from a backend beyond the [`Transport`] itself.
pub trait Harness: Send + Sync {
    /// A new client of the backend, with its own connections, as a separate
    /// process would have.
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>>;

    /// Writes `bytes` on `topic` as a foreign client would (`redis-cli
    /// PUBLISH`, `psql NOTIFY`...), bypassing the adapter's encoding.
    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>>;

    /// Subscriptions to `topic` the server knows of, or `None` when the
    /// backend cannot tell (the unsubscribe case is then skipped, and says so).
    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>>;

    /// A fresh topic name valid on this backend (created first where the
    /// backend needs it), unique to this run.
    fn topic<'a>(&'a self, case: &'a str) -> BoxFuture<'a, Result<String, BoxError>> {
        async move { Ok(unique_topic(case)) }.boxed()
    }
}

/// A topic name unique to this process and moment: `hc_<case>_<pid>_<n>`,
/// letters, digits and `_` only, at most 48 bytes.
pub fn unique_topic(case: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let case: String = case
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("hc_{case}_{}_{nanos:x}{n}", std::process::id())
}

/// What [`run_all`] did.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases that ran and passed.
    pub ran: Vec<&'static str>,
    /// Cases skipped, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conformance: {} passed, {} skipped",
            self.ran.len(),
            self.skipped.len()
        )?;
        for (case, why) in &self.skipped {
            write!(f, "\n  skipped {case}: {why}")?;
        }
        Ok(())
    }
}

/// The outcome of one case.
#[derive(Debug)]
pub enum Outcome {
    /// It ran and passed.
    Passed,
    /// The backend does not promise what it tests.
    Skipped(String),
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Names of all cases, in the order [`run_all`] runs them.
        pub const CASES: &[&str] = &[$(stringify!($name)),*];

        /// Runs every case; panics on the first failure.
        pub async fn run_all(h: &dyn Harness) -> Report {
            let mut report = Report::default();
            $(
                tracing::info!(case = stringify!($name), "conformance case");
                match $name(h).await {
                    Outcome::Passed => report.ran.push(stringify!($name)),
                    Outcome::Skipped(why) => report.skipped.push((stringify!($name), why)),
                }
            )*
            report
        }
    };
}

cases!(
    round_trip,
    delete_round_trip,
    all_byte_values,
    unicode_keys,
    every_subscriber_gets_every_message,
    per_publisher_order,
    one_channels_concurrent_publishes_keep_sequence_order,
    topics_are_isolated,
    dropping_subscription_unsubscribes,
    publish_without_subscribers,
    max_payload_boundary,
    garbage_yields_error_and_stream_continues,
    concurrent_publishers_all_arrive,
    published_before_drop_arrives,
    replay_from_earliest,
);

async fn connect(h: &dyn Harness) -> Arc<dyn Transport> {
    match h.connect().await {
        Ok(t) => t,
        Err(e) => panic!("harness could not connect: {e:?}"),
    }
}

async fn topic(h: &dyn Harness, case: &str) -> String {
    match h.topic(case).await {
        Ok(t) => t,
        Err(e) => panic!("harness could not make a topic for {case}: {e:?}"),
    }
}

async fn subscribe(t: &dyn Transport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic} on {}: {e:?}", t.backend()),
    }
}

async fn publish(t: &dyn Transport, topic: &str, env: &Envelope) {
    if let Err(e) = t.publish(topic, env).await {
        panic!(
            "publish to {topic} on {} (key {:?}): {e:?}",
            t.backend(),
            env.key
        );
    }
}

/// The next event, or a panic naming `what` after [`RECEIVE_TIMEOUT`].
pub async fn next_event(sub: &mut Subscription, what: &str) -> Result<Event, Error> {
    match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!(
            "subscription to {} ended while waiting for {what}",
            sub.topic()
        ),
        Err(_) => panic!(
            "no event on {} within {RECEIVE_TIMEOUT:?} while waiting for {what}",
            sub.topic()
        ),
    }
}

/// The next message, passing over [`Event::ReplayDone`]; panics on a gap,
/// an error item or a timeout.
pub async fn next_message(sub: &mut Subscription, what: &str) -> Envelope {
    loop {
        match next_event(sub, what).await {
            Ok(Event::Message(env)) => return env,
            Ok(Event::ReplayDone) => continue,
            other => panic!("expected {what} on {}, got {other:?}", sub.topic()),
        }
    }
}

/// Asserts nothing arrives within `wait`.
pub async fn expect_silence(sub: &mut Subscription, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected nothing on {}, got {item:?}", sub.topic());
    }
}

fn envelope(
    publisher: PublisherId,
    sequence: u64,
    key: &str,
    payload: impl Into<Bytes>,
) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, payload)
    }
}

fn truncate_micros(t: SystemTime) -> SystemTime {
    let us = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}

/// Key, payload, TTL, version, publisher, sequence and publish time arrive as sent.
pub async fn round_trip(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "roundtrip").await;
    let mut sub = subscribe(&*t, &topic).await;
    let now = truncate_micros(SystemTime::now());
    let sent = Envelope {
        kind: Kind::Update,
        key: "user:42".into(),
        payload: Bytes::from_static(b"\x00hello\xff"),
        ttl: Some(Ttl {
            start: now,
            duration: Duration::from_millis(30_500),
        }),
        version: Some(u64::MAX - 1),
        publisher: PublisherId::random(),
        sequence: 1,
        published_at: now,
    };
    publish(&*t, &topic, &sent).await;
    let got = next_message(&mut sub, "the round-trip message").await;
    assert_eq!(got, sent, "round trip changed the message");
    let remaining = got.ttl.map(|ttl| ttl.remaining()).unwrap_or_default();
    assert!(
        remaining > Duration::from_secs(20) && remaining <= Duration::from_millis(30_500),
        "TTL remaining {remaining:?}"
    );
    Outcome::Passed
}

/// A delete arrives as a delete with its version and no payload.
pub async fn delete_round_trip(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "delete").await;
    let mut sub = subscribe(&*t, &topic).await;
    let sent = Envelope {
        version: Some(3),
        sequence: 1,
        publisher: PublisherId::random(),
        published_at: truncate_micros(SystemTime::now()),
        ..Envelope::delete("gone")
    };
    publish(&*t, &topic, &sent).await;
    let got = next_message(&mut sub, "the delete").await;
    assert_eq!(got, sent);
    assert_eq!(got.kind, Kind::Delete);
    Outcome::Passed
}

/// Payloads with every byte value (0 to 255) arrive intact.
pub async fn all_byte_values(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "allbytes").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let all: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    let payloads = [all, reversed, vec![0u8; 64], vec![0xff; 64]];
    for (i, p) in payloads.iter().enumerate() {
        publish(
            &*t,
            &topic,
            &envelope(publisher, i as u64 + 1, "bytes", p.clone()),
        )
        .await;
    }
    for p in &payloads {
        let got = next_message(&mut sub, "a binary payload").await;
        assert_eq!(&got.payload[..], &p[..], "binary payload changed");
    }
    Outcome::Passed
}

/// Keys with non-ASCII characters arrive intact.
pub async fn unicode_keys(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "unicode").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let keys = [
        "ключ",
        "キー:1",
        "emoji 🔑 key",
        "tab\tand \"quotes\" and 'single'",
        "",
    ];
    for (i, k) in keys.iter().enumerate() {
        publish(
            &*t,
            &topic,
            &envelope(publisher, i as u64 + 1, k, &b"v"[..]),
        )
        .await;
    }
    for k in keys {
        assert_eq!(next_message(&mut sub, "a unicode key").await.key, k);
    }
    Outcome::Passed
}

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
            &envelope(publisher, i, "k", i.to_be_bytes().to_vec()),
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
/// [`Channel`]: crate::Channel
pub async fn one_channels_concurrent_publishes_keep_sequence_order(h: &dyn Harness) -> Outcome {
    const TASKS: u64 = 2;
    const EACH: u64 = 5_000;
    let t = connect(h).await;
    if !t.capabilities().ordered {
        return Outcome::Skipped("the transport does not keep a publisher's order".into());
    }
    let topic = topic(h, "seqorder").await;
    let mut sub = subscribe(&*connect(h).await, &topic).await;
    let channel: crate::Channel<u64> = crate::Channel::new(t, topic);
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

/// A payload of exactly [`Capabilities::max_payload`](crate::Capabilities::max_payload)
/// arrives; one byte more fails with [`Error::PayloadTooLarge`] and nothing is sent.
pub async fn max_payload_boundary(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let key = "max-key";
    let Some(max) = t.capabilities().max_payload(key) else {
        return Outcome::Skipped(format!("{} has no message size limit", t.backend()));
    };
    let topic = topic(h, "maxpayload").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let full = |n: usize, seq: u64| Envelope {
        ttl: Some(Ttl::starting_now(Duration::from_secs(60))),
        version: Some(1),
        ..envelope(publisher, seq, key, vec![0xa5u8; n])
    };
    match t.publish(&topic, &full(max + 1, 1)).await {
        Err(Error::PayloadTooLarge {
            limit,
            size,
            max_payload,
            ..
        }) => {
            assert!(size > limit, "size {size} limit {limit}");
            assert_eq!(max_payload, max, "error names another maximum");
        }
        other => panic!("one byte over the maximum ({max}) gave {other:?}"),
    }
    publish(&*t, &topic, &full(max, 2)).await;
    let got = next_message(&mut sub, "the maximum-size message").await;
    assert_eq!(
        (got.sequence, got.payload.len()),
        (2, max),
        "the oversize message was sent after all, or the max was cut"
    );
    Outcome::Passed
}

/// Bytes that are not an envelope give one error item; the next message arrives.
pub async fn garbage_yields_error_and_stream_continues(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "garbage").await;
    let mut sub = subscribe(&*t, &topic).await;
    for garbage in [
        &b"xyz"[..],
        &[0xc7, 0x01][..],
        &[0xc7, 0x09, 0x01, 0x00][..],
    ] {
        if let Err(e) = h.publish_raw(&topic, garbage).await {
            panic!("harness could not publish raw bytes: {e:?}");
        }
        match next_event(&mut sub, "the error for garbage").await {
            Err(e) if e.is_per_message() => {}
            other => panic!("garbage {garbage:?} gave {other:?}, expected a per-message error"),
        }
    }
    publish(
        &*t,
        &topic,
        &envelope(PublisherId::random(), 1, "after", &b"ok"[..]),
    )
    .await;
    assert_eq!(
        next_message(&mut sub, "the message after garbage")
            .await
            .key,
        "after"
    );
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
                    &envelope(publisher, i, &format!("w{w}"), payload),
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

/// With [`Capabilities::replay`](crate::Capabilities::replay), a subscription
/// from the earliest message sees what was published before it, then
/// [`Event::ReplayDone`], then live messages; without, asking for it is an
/// [`Error::Unsupported`].
pub async fn replay_from_earliest(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "replay").await;
    let publisher = PublisherId::random();
    publish(&*t, &topic, &envelope(publisher, 1, "early", &b"1"[..])).await;
    let result = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await;
    if !t.capabilities().replay {
        assert!(
            matches!(result, Err(Error::Unsupported { .. })),
            "a backend without replay accepted StartFrom::Earliest: {result:?}"
        );
        return Outcome::Skipped(format!(
            "{} cannot replay (checked that it says so)",
            t.backend()
        ));
    }
    let mut sub = match result {
        Ok(s) => s,
        Err(e) => panic!("subscribe from earliest: {e:?}"),
    };
    match next_event(&mut sub, "the replayed message").await {
        Ok(Event::Message(env)) => assert_eq!(env.key, "early"),
        other => panic!("expected the replayed message, got {other:?}"),
    }
    match next_event(&mut sub, "the end of the replay").await {
        Ok(Event::ReplayDone) => {}
        other => panic!("expected ReplayDone after the replayed message, got {other:?}"),
    }
    publish(&*t, &topic, &envelope(publisher, 2, "late", &b"2"[..])).await;
    assert_eq!(next_message(&mut sub, "the live message").await.key, "late");
    Outcome::Passed
}

/// The [`Harness`] for [`MemoryTransport`]: every client shares one bus.
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    bus: MemoryTransport,
}

impl MemoryHarness {
    /// A harness over `bus`.
    pub fn new(bus: MemoryTransport) -> MemoryHarness {
        MemoryHarness { bus }
    }
}

impl Harness for MemoryHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move { Ok(Arc::new(self.bus.clone()) as Arc<dyn Transport>) }.boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            self.bus.publish_raw(topic, bytes.to_vec())?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        async move { Ok(Some(self.bus.subscriber_count(topic))) }.boxed()
    }
}
