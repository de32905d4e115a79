//! Shared helpers for the NATS integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_conformance::{Harness, RECEIVE_TIMEOUT};
use hydratecache_core::{BoxError, Event, Subscription, Transport};
use hydratecache_nats::{async_nats, NatsTransport};
use hydratecache_testkit::nats::{monitor_get, Nats, NatsServer};
use tokio::sync::OnceCell;

/// How the harness builds its transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `NatsTransport::connect(url)`: the transport owns the client and its events.
    Url,
    /// `NatsTransport::from_client(client)`: a client built by the test.
    Client,
}

/// The conformance harness: every `connect` is a new NATS connection.
pub struct NatsHarness {
    pub url: String,
    pub monitor_url: Option<String>,
    pub mode: Mode,
    raw: OnceCell<async_nats::Client>,
}

impl NatsHarness {
    pub fn new(nats: &Nats, mode: Mode) -> NatsHarness {
        NatsHarness {
            url: nats.url(),
            monitor_url: nats.monitor_url(),
            mode,
            raw: OnceCell::new(),
        }
    }

    /// A harness on a private server the test stops and starts itself.
    pub fn on_server(server: &NatsServer, mode: Mode) -> NatsHarness {
        NatsHarness {
            url: server.url(),
            monitor_url: Some(server.monitor_url()),
            mode,
            raw: OnceCell::new(),
        }
    }

    /// A plain async-nats client, as a foreign publisher.
    pub async fn raw(&self) -> Result<&async_nats::Client, BoxError> {
        self.raw
            .get_or_try_init(|| async { async_nats::connect(&self.url).await })
            .await
            .map_err(Into::into)
    }
}

impl Harness for NatsHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let transport = match self.mode {
                Mode::Url => NatsTransport::connect(&self.url).await?,
                Mode::Client => NatsTransport::from_client(async_nats::connect(&self.url).await?),
            };
            Ok(transport.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let raw = self.raw().await?;
            raw.publish(topic.to_owned(), bytes.to_vec().into()).await?;
            raw.flush().await?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        async move {
            let Some(monitor) = self.monitor_url.clone() else {
                return Ok(None);
            };
            let subs = server_subscriptions(&monitor).await?;
            Ok(Some(subs.iter().filter(|(_, s)| s == topic).count()))
        }
        .boxed()
    }
}

/// Every (connection id, subject) subscription the server lists in `/connz?subs=1`.
pub async fn server_subscriptions(monitor_url: &str) -> Result<Vec<(u64, String)>, BoxError> {
    let monitor = monitor_url.to_owned();
    let body =
        tokio::task::spawn_blocking(move || monitor_get(&monitor, "/connz?subs=1&limit=100000"))
            .await??;
    let json: serde_json::Value = serde_json::from_str(&body)?;
    let mut out = Vec::new();
    for conn in json["connections"].as_array().into_iter().flatten() {
        let cid = conn["cid"].as_u64().unwrap_or_default();
        for s in conn["subscriptions_list"].as_array().into_iter().flatten() {
            if let Some(s) = s.as_str() {
                out.push((cid, s.to_owned()));
            }
        }
    }
    Ok(out)
}

/// The next item, or a panic after [`RECEIVE_TIMEOUT`].
pub async fn next_item(sub: &mut Subscription, what: &str) -> hydratecache_core::Result<Event> {
    match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
        Ok(Some(item)) => item,
        Ok(None) => panic!(
            "subscription to {} ended while waiting for {what}",
            sub.topic()
        ),
        Err(_) => panic!(
            "nothing on {} within {RECEIVE_TIMEOUT:?} while waiting for {what}",
            sub.topic()
        ),
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain async-nats subscription on `subject`, active on the server when
/// this returns: the client's own message on the subject, sent after the
/// `SUB` on the same connection, has come back (`flush` alone only writes the
/// `SUB` to the socket).
pub async fn raw_subscribe(raw: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    let mut sub = raw.subscribe(subject.to_owned()).await.unwrap();
    raw.publish(subject.to_owned(), "sync".into())
        .await
        .unwrap();
    match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
        Ok(Some(m)) if &m.payload[..] == b"sync" => sub,
        other => panic!("raw subscription to {subject} not confirmed: {other:?}"),
    }
}
