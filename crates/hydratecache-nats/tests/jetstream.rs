//! JetStream mode against a real nats-server: the conformance suite, the
//! resumable cases, and the warm start from the last value of each key.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_conformance::{run_all, Harness, CASES};
use hydratecache_core::{BoxError, Envelope, Event, StartFrom, SubscribeOptions, Transport};
use hydratecache_nats::{async_nats, NatsJetStreamTransport, NatsTransport};
use hydratecache_testkit::nats::{shared_or_private, NatsServer};
use hydratecache_testkit::Proxy;

/// Each `connect` is a new JetStream transport; raw messages go to a key's
/// subject through a plain client, as another program would publish them.
struct JetStreamHarness {
    url: String,
    raw: async_nats::Client,
    /// A transport for subject names and stream handling.
    names: NatsJetStreamTransport,
}

impl JetStreamHarness {
    async fn new(url: &str) -> JetStreamHarness {
        let raw = match async_nats::connect(url).await {
            Ok(c) => c,
            Err(e) => panic!("connect to {url}: {e}"),
        };
        JetStreamHarness {
            url: url.to_owned(),
            names: jetstream(url).await,
            raw,
        }
    }
}

async fn jetstream(url: &str) -> NatsJetStreamTransport {
    match NatsTransport::builder().connect_jetstream(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect JetStream mode to {url}: {e:?}"),
    }
}

impl Harness for JetStreamHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let t = NatsTransport::builder()
                .connect_jetstream(&self.url)
                .await?;
            Ok(t.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            // Stored like any publish: through the stream (made by a
            // subscription first), acknowledged.
            let js = async_nats::jetstream::new(self.raw.clone());
            let subject = self.names.key_subject(topic, "raw");
            js.publish(subject, bytes::Bytes::copy_from_slice(bytes))
                .await?
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        _topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        // Each subscription's consumer is remade on every resume.
        async move { Ok(None) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_passes_the_conformance_suite() {
    let nats = match shared_or_private() {
        Ok(n) => n,
        Err(e) => panic!("no NATS for the conformance suite: {e:#}"),
    };
    let harness = JetStreamHarness::new(&nats.url()).await;
    let report = run_all(&harness).await;
    println!("nats jetstream {report}");
    let skipped: Vec<_> = report.skipped.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        skipped,
        [
            "one_channels_concurrent_publishes_keep_sequence_order",
            "dropping_subscription_unsubscribes"
        ],
        "{report}"
    );
    assert_eq!(report.ran.len(), CASES.len() - 2, "{report}");
}

/// A private server with a proxy in front: the subscriber reads through the
/// proxy, the publisher and the harness connect directly.
async fn behind_a_proxy() -> (NatsServer, Proxy, String, JetStreamHarness) {
    let server = match NatsServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    };
    let (proxy, via) = match Proxy::in_front_of(&server.url()) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    let harness = JetStreamHarness::new(&server.url()).await;
    (server, proxy, via, harness)
}

async fn through(via: &str) -> Arc<dyn Transport> {
    jetstream(via).await.into_arc()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_jetstream_reader_resumes_from_its_sequence() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::resumes_after_a_cut(
        &harness,
        || through(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("nats jetstream: {report:?}");
}

/// The stream deleted and made anew while the reader was cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_anew_is_a_gap() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let js = async_nats::jetstream::new(harness.raw.clone());
    hydratecache_conformance::gap_when_the_position_is_gone(
        &harness,
        || through(&via),
        || proxy.cut_from(0),
        || async {
            let mut names = js.stream_names();
            let mut deleted = 0;
            while let Some(name) = names.next().await {
                let name = name.expect("stream name");
                js.delete_stream(&name).await.expect("delete the stream");
                deleted += 1;
            }
            assert!(deleted > 0, "no stream to delete");
            // The next publish makes it again (this test's harness
            // transport remembers the old one: a new transport).
        },
        || async { proxy.restore() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_on_jetstream_catches_up_after_a_cut() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::local_cache_catches_up_after_a_cut(
        &harness,
        || through(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("nats jetstream: {report:?}");
}

/// A reader's connection that goes silent is interrupted once the client
/// gives it up (three unanswered pings) and the reader looks (every
/// heartbeat interval), and resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_jetstream_connection_is_interrupted_and_resumes() {
    use hydratecache_nats::{DEFAULT_JETSTREAM_HEARTBEAT, DEFAULT_PING_INTERVAL};

    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let bound = DEFAULT_PING_INTERVAL * 3 + DEFAULT_JETSTREAM_HEARTBEAT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        through(&via).await,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("nats jetstream: {report:?} (bound {bound:?})");
    assert!(
        !report.gap,
        "the stream kept what was published meanwhile: Resumed"
    );
}

/// `StartFrom::Earliest` is a warm start: the latest value of each key
/// (older ones are gone from the stream), then `ReplayDone`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn earliest_is_the_latest_value_of_each_key() {
    let nats = shared_or_private().expect("NATS");
    let t = jetstream(&nats.url()).await;
    let topic = hydratecache_conformance::unique_topic("warm");
    for round in 0..3u8 {
        for key in ["a", "b", "c"] {
            let envelope = Envelope::update(key, vec![round]);
            t.publish(&topic, &envelope).await.expect("publish");
        }
    }
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await
        .expect("subscribe");
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => got.push((m.key, m.payload.to_vec())),
            Ok(Some(Ok(Event::ReplayDone))) => break,
            other => panic!("expected the replay, got {other:?}"),
        }
    }
    assert_eq!(
        got,
        [
            ("a".to_owned(), vec![2]),
            ("b".to_owned(), vec![2]),
            ("c".to_owned(), vec![2])
        ]
    );
}

async fn next(sub: &mut hydratecache_core::Subscription) -> Event {
    match tokio::time::timeout(Duration::from_secs(15), sub.next()).await {
        Ok(Some(Ok(event))) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// A server restart is an interruption, however quick the client's
/// reconnect: then the reader goes on from its stream sequence (the file
/// store kept the stream), with `Resumed` and no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_interrupts_and_resumes() {
    let mut server = NatsServer::start().expect("nats-server");
    let t = jetstream(&server.url()).await;
    let topic = hydratecache_conformance::unique_topic("restart");
    let mut sub = t
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .expect("subscribe");
    t.publish(&topic, &Envelope::update("before", &b"v"[..]))
        .await
        .expect("publish");
    assert!(matches!(next(&mut sub).await, Event::Message(m) if m.key == "before"));
    server.kill9();
    server.start_again().expect("restart");
    match next(&mut sub).await {
        Event::Interrupted(_) => {}
        other => panic!("expected the restart as an interruption, got {other:?}"),
    }
    // Published (with retries while the client reconnects) after it.
    let mut published = false;
    for _ in 0..50 {
        if t.publish(&topic, &Envelope::update("after", &b"v"[..]))
            .await
            .is_ok()
        {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(published, "no publish after the restart");
    let (mut after, mut resumed) = (false, false);
    while !(after && resumed) {
        match next(&mut sub).await {
            Event::Message(m) if m.key == "after" => after = true,
            Event::Resumed => resumed = true,
            Event::Gap(g) => panic!("the stream was kept: no gap, got {g:?}"),
            _ => {}
        }
    }
}
