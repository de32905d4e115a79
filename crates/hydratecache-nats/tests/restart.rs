//! The server is killed (-9) and restarted under a running stream: each
//! subscription reports a gap, then delivery resumes; publishes during the
//! outage fail instead of vanishing.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, next_item};
use futures::StreamExt;
use hydratecache_conformance::{unique_topic, RECEIVE_TIMEOUT};
use hydratecache_core::{
    Envelope, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_nats::{async_nats, NatsTransport};
use hydratecache_testkit::nats::NatsServer;

fn server() -> NatsServer {
    match NatsServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    }
}

fn message(publisher: PublisherId, sequence: u64) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update("k", sequence.to_be_bytes().to_vec())
    }
}

/// What one subscriber saw: each message's sequence, `None` for a gap.
#[derive(Debug, Default)]
struct Seen {
    events: Vec<Option<u64>>,
    gaps: Vec<GapReason>,
    messages: u64,
    /// Messages received after the first gap.
    after_gap: u64,
}

impl Seen {
    /// Every sequence in `confirmed` up to the last one received either
    /// arrived or lies across a gap event; returns how many were covered by a gap.
    fn check_covered(&self, confirmed: &BTreeSet<u64>, name: &str) -> usize {
        let last = self.events.iter().flatten().max().copied().unwrap_or(0);
        let mut covered = 0;
        for &s in confirmed.range(..=last) {
            let after = self
                .events
                .iter()
                .position(|e| matches!(e, Some(x) if *x >= s));
            let Some(after) = after else { continue };
            if self.events[after] == Some(s) {
                continue;
            }
            let before = self.events[..after]
                .iter()
                .rposition(|e| e.is_some())
                .map_or(0, |i| i + 1);
            assert!(
                self.events[before..after].iter().any(Option::is_none),
                "{name}: message {s} was published (Ok) but neither received nor covered by a gap: {:?}",
                &self.events[before.saturating_sub(3)..(after + 3).min(self.events.len())]
            );
            covered += 1;
        }
        covered
    }
}

/// Reads `sub` until it has seen a gap and `after` messages past it.
async fn watch(mut sub: Subscription, after: u64, name: &'static str) -> Seen {
    let mut seen = Seen::default();
    let mut last = 0u64;
    while seen.gaps.is_empty() || seen.after_gap < after {
        match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => {
                assert!(m.sequence > last, "{name}: {} after {last}", m.sequence);
                last = m.sequence;
                seen.events.push(Some(m.sequence));
                seen.messages += 1;
                if !seen.gaps.is_empty() {
                    seen.after_gap += 1;
                }
            }
            Ok(Some(Ok(Event::Gap(gap)))) => {
                seen.gaps.push(gap.reason);
                seen.events.push(None);
            }
            // Before the gap, when the loss was noticed.
            Ok(Some(Ok(Event::Interrupted(_)))) if seen.after_gap == 0 => {}
            other => panic!("{name}: unexpected {other:?} (seen so far {:?})", seen.gaps),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_stream_gives_a_gap_then_delivery_resumes() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("restart");
    // One subscriber per construction mode, and a separate publisher.
    let by_url = NatsTransport::connect(&url).await.unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    let by_client = NatsTransport::from_client(client);
    let publisher = NatsTransport::connect(&url).await.unwrap();
    let sub_url = by_url
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();
    let sub_client = by_client
        .subscribe(&topic, SubscribeOptions::default())
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (published, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let publishing = tokio::spawn({
        let (stop, published, failed, topic) = (
            stop.clone(),
            published.clone(),
            failed.clone(),
            topic.clone(),
        );
        async move {
            let id = PublisherId::random();
            let mut seq = 0;
            let mut first_error = None;
            let mut confirmed = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                match publisher.publish(&topic, &message(id, seq)).await {
                    Ok(()) => {
                        confirmed.insert(seq);
                        published.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        first_error.get_or_insert_with(|| e.to_string());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                // Pacing, not waiting for anything: about 500 messages/s.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (first_error, confirmed)
        }
    });
    let watch_url = tokio::spawn(watch(sub_url, 100, "from url"));
    let watch_client = tokio::spawn(watch(sub_client, 100, "from client"));

    // Mid-stream: kill once messages are flowing.
    eventually("100 publishes before the kill", RECEIVE_TIMEOUT, || async {
        (published.load(Ordering::Relaxed) >= 100).then_some(())
    })
    .await;
    let before_kill = published.load(Ordering::Relaxed);
    server.kill9();
    // While the server is down, publishes fail rather than vanish.
    eventually(
        "a publish error while the server is down",
        RECEIVE_TIMEOUT,
        || async { (failed.load(Ordering::Relaxed) >= 5).then_some(()) },
    )
    .await;
    server.start_again().unwrap();
    let url_seen = watch_url.await.unwrap();
    let client_seen = watch_client.await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let (first_error, confirmed) = publishing.await.unwrap();
    println!(
        "restart: published ok {} (before kill {before_kill}), failed {}, first error: {first_error:?}",
        published.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    for (seen, name) in [(&url_seen, "from url"), (&client_seen, "from client")] {
        let covered = seen.check_covered(&confirmed, name);
        println!(
            "restart: subscriber {name}: {} messages, gaps {:?}, {} after the gap, \
             {covered} confirmed publishes lost and covered by the gap",
            seen.messages, seen.gaps, seen.after_gap
        );
        assert_eq!(seen.gaps.first(), Some(&GapReason::Reconnected), "{name}");
        assert!(seen.after_gap >= 100, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subscriptions_get_the_gap_without_traffic() {
    let mut server = server();
    let url = server.url();
    let topic = unique_topic("idlegap");
    let by_url = NatsTransport::connect(&url).await.unwrap();
    let by_client = NatsTransport::from_client(async_nats::connect(&url).await.unwrap());
    let mut subs = Vec::new();
    for t in [&by_url, &by_client] {
        subs.push(
            t.subscribe(&topic, SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    server.kill9();
    eventually(
        "the clients to notice the kill",
        RECEIVE_TIMEOUT,
        || async {
            (by_url.client().connection_state() != async_nats::connection::State::Connected
                && by_client.client().connection_state()
                    != async_nats::connection::State::Connected)
                .then_some(())
        },
    )
    .await;
    server.start_again().unwrap();
    // Nothing is published: the gap comes once the server confirmed the
    // re-sent subscriptions, and then they deliver.
    for sub in &mut subs {
        // The interruption when the loss was noticed (a client built
        // elsewhere is polled: it may see the restart only afterwards).
        let mut item = next_item(sub, "the interruption or the reconnect gap").await;
        if matches!(item, Ok(Event::Interrupted(_))) {
            item = next_item(sub, "the reconnect gap").await;
        }
        match item {
            Ok(Event::Gap(gap)) => assert_eq!(gap.reason, GapReason::Reconnected),
            other => panic!("expected a gap, got {other:?}"),
        }
    }
    let publisher = NatsTransport::connect(&url).await.unwrap();
    publisher
        .publish(&topic, &message(PublisherId::random(), 1))
        .await
        .unwrap();
    for sub in &mut subs {
        match next_item(sub, "the message after the gap").await {
            Ok(Event::Message(m)) => assert_eq!(m.sequence, 1),
            other => panic!("expected the message, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fails_while_the_server_is_down() {
    let mut server = server();
    let t = NatsTransport::connect(&server.url()).await.unwrap();
    let topic = unique_topic("down");
    t.publish(&topic, &message(PublisherId::random(), 1))
        .await
        .unwrap();
    server.kill9();
    let err = eventually("a failed publish", RECEIVE_TIMEOUT, || async {
        t.publish(&topic, &message(PublisherId::random(), 2))
            .await
            .err()
    })
    .await;
    println!("publish while down: {err}");
    assert!(
        matches!(
            err,
            hydratecache_core::Error::Backend {
                backend: "nats",
                ..
            }
        ),
        "{err:?}"
    );
    // And it recovers by itself once the server is back.
    server.start_again().unwrap();
    eventually("a publish to succeed again", RECEIVE_TIMEOUT, || async {
        t.publish(&topic, &message(PublisherId::random(), 3))
            .await
            .ok()
    })
    .await;
}
