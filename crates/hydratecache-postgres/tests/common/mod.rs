//! Helpers shared by the PostgreSQL adapter's test files.

#![allow(dead_code)] // each test file uses a different part

use std::time::{Duration, Instant};

use futures::StreamExt;
use hydratecache_core::{
    Envelope, Event, Gap, PublisherId, SubscribeOptions, Subscription, Transport,
};
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::postgres::{self, Postgres, PostgresServer};

/// Bound of every wait for something that must happen.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn server() -> Postgres {
    match postgres::shared_or_private() {
        Ok(server) => server,
        Err(e) => panic!("no PostgreSQL for the tests: {e:#}"),
    }
}

pub(crate) fn private_server() -> PostgresServer {
    match PostgresServer::start() {
        Ok(server) => server,
        Err(e) => panic!("cannot start a private PostgreSQL: {e:#}"),
    }
}

pub(crate) async fn transport(url: &str) -> PostgresTransport {
    match PostgresTransport::connect(url).await {
        Ok(t) => t,
        Err(e) => panic!("connect to {url}: {e}"),
    }
}

pub(crate) async fn subscribe(t: &PostgresTransport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic:?}: {e}"),
    }
}

pub(crate) fn envelope(publisher: PublisherId, sequence: u64, key: &str) -> Envelope {
    Envelope {
        publisher,
        sequence,
        ..Envelope::update(key, sequence.to_be_bytes().to_vec())
    }
}

pub(crate) async fn publish(t: &PostgresTransport, topic: &str, env: &Envelope) {
    if let Err(e) = t.publish(topic, env).await {
        panic!("publish {:?} to {topic:?}: {e}", env.key);
    }
}

pub(crate) async fn listener_pid(t: &PostgresTransport) -> i32 {
    match t.listener_info().await {
        Ok(info) => match info.backend_pid {
            Some(pid) => pid,
            None => panic!("no listener connection: {info:?}"),
        },
        Err(e) => panic!("listener_info: {e}"),
    }
}

/// Sends `signal` (`STOP`, `CONT`) to one process.
pub(crate) fn signal(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", signal, "--", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {signal} {pid}");
}

/// Reads until a gap arrives, which must come after the interruption (the
/// loss reported when the listener noticed it); returns the sequence
/// numbers of the messages read before the gap and the gap.
pub(crate) async fn read_until_gap(sub: &mut Subscription) -> (Vec<u64>, Gap) {
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
