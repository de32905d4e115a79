//! The re-subscribe after a reconnect, against a private server whose ACL
//! forbids SUBSCRIBE for a while: the reconnect gap is delivered only once
//! the server confirmed the subscription again, and a failing re-subscribe
//! shows up on the stream as an error.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{
    Envelope, Error, Event, GapReason, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_redis::RedisTransport;
use hydratecache_testkit::redis::{self as kit, RedisServer};

use common::TIMEOUT;

/// Runs `redis-cli` off the runtime's threads.
async fn cli(url: &str, args: &[&str]) -> String {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.join(" ");
    let result = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        kit::cli(&url, &args, None)
    })
    .await;
    match result {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("redis-cli {shown}: {e:#}"),
        Err(e) => panic!("redis-cli {shown}: {e}"),
    }
}

async fn next(sub: &mut Subscription, what: &str) -> Result<Event, Error> {
    match tokio::time::timeout(TIMEOUT, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!("subscription ended while waiting for {what}"),
        Err(_) => panic!("nothing within {TIMEOUT:?} while waiting for {what}"),
    }
}

/// The subscriber's user loses SUBSCRIBE, its connection is killed, and
/// SUBSCRIBE is allowed again only once the consumer has seen the failing
/// re-subscribe as an error. Meanwhile a publisher (another user) keeps
/// publishing numbered messages. Every message whose publish started after
/// the consumer received the reconnect gap must be delivered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_gap_waits_for_the_confirmed_resubscribe_and_failures_surface() {
    let server = match RedisServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start a private redis-server: {e:#}"),
    };
    let admin = server.url();
    cli(
        &admin,
        &["ACL", "SETUSER", "sub", "on", ">subpw", "~*", "&*", "+@all"],
    )
    .await;
    let sub_url = format!("redis://sub:subpw@127.0.0.1:{}", server.port());
    let sub_t = match RedisTransport::builder()
        .command_timeout(Duration::from_secs(2))
        .connect(&sub_url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect as sub: {e}"),
    };
    let pub_t = match RedisTransport::connect(&admin).await {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    let topic = unique_topic("aclresub");
    let mut sub = match sub_t.subscribe(&topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe: {e}"),
    };

    // Numbered messages every 20 ms; `started` is the last number whose
    // publish has begun.
    let started = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (started, stop, pub_t, topic) = (
            Arc::clone(&started),
            Arc::clone(&stop),
            pub_t.clone(),
            topic.clone(),
        );
        tokio::spawn(async move {
            let id = PublisherId::random();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                started.store(seq, Ordering::SeqCst);
                let env = Envelope {
                    publisher: id,
                    sequence: seq,
                    ..Envelope::update("n", seq.to_be_bytes().to_vec())
                };
                if let Err(e) = pub_t.publish(&topic, &env).await {
                    panic!("publish #{seq}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Delivery works before the cut.
    match next(&mut sub, "a message before the cut").await {
        Ok(Event::Message(_)) => {}
        other => panic!("before the cut: {other:?}"),
    }

    cli(&admin, &["ACL", "SETUSER", "sub", "-subscribe"]).await;
    let killed = cli(&admin, &["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(
        killed.trim(),
        "1",
        "CLIENT KILL TYPE pubsub killed {killed}"
    );

    let allow = {
        let admin = admin.clone();
        move || {
            let admin = admin.clone();
            tokio::spawn(async move {
                cli(&admin, &["ACL", "SETUSER", "sub", "+subscribe"]).await;
            })
        }
    };
    let mut allowed = None;
    let mut error_seen: Option<Error> = None;
    // Set when the reconnect gap arrives: the last number whose publish had
    // begun then. Every later number must arrive.
    let mut gap_at: Option<u64> = None;
    let mut expected: Option<u64> = None;
    let mut interrupted = false;
    loop {
        match next(&mut sub, "the resubscribe error, the gap, then messages").await {
            Err(e) => {
                assert!(gap_at.is_none(), "an error after the gap: {e}");
                assert!(!e.is_per_message(), "not a per-message error: {e}");
                println!("while SUBSCRIBE is forbidden: {e}");
                error_seen = Some(e);
                allowed.get_or_insert_with(&allow);
            }
            // The loss, when fred saw the connection fail.
            Ok(Event::Interrupted(_)) => {
                assert!(gap_at.is_none(), "an interruption after the gap");
                interrupted = true;
            }
            Ok(Event::Gap(g)) => {
                assert_eq!(g.reason, GapReason::Reconnected, "{g:?}");
                assert!(gap_at.is_none(), "a second gap: {g:?}");
                assert!(interrupted, "the gap without the interruption before it");
                let at = started.load(Ordering::SeqCst);
                println!("reconnect gap after publish #{at} began");
                gap_at = Some(at);
                if allowed.is_none() {
                    // No error came first: allow SUBSCRIBE again a little later,
                    // as an operator would, to see what the gap promised.
                    let allow = allow.clone();
                    allowed = Some(tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let _ = allow().await;
                    }));
                }
            }
            Ok(Event::Message(m)) => {
                let Some(at) = gap_at else { continue };
                if m.sequence <= at {
                    continue;
                }
                let want = expected.unwrap_or(at + 1);
                assert_eq!(
                    m.sequence, want,
                    "message #{want}, published after the reconnect gap was received, was lost"
                );
                expected = Some(want + 1);
                if want >= at + 25 {
                    break;
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    if let Err(e) = publisher.await {
        panic!("publisher task: {e}");
    }
    let Some(error) = error_seen else {
        panic!("no error item while the re-subscribe was failing");
    };
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(
        text.contains("NOPERM") || text.contains("permission"),
        "the error does not say why: {text}"
    );
}
