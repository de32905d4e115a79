//! The [`Harness`] a backend provides, what a run reports, and the helpers
//! every case (and an adapter's own tests) uses: fresh topics, receives with
//! a timeout.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_core::{
    BoxError, Envelope, Error, Event, PublisherId, SubscribeOptions, Subscription, Transport,
};

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

/// What [`run_all`](crate::run_all) did.
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

pub(crate) async fn connect(h: &dyn Harness) -> Arc<dyn Transport> {
    match h.connect().await {
        Ok(t) => t,
        Err(e) => panic!("harness could not connect: {e:?}"),
    }
}

pub(crate) async fn topic(h: &dyn Harness, case: &str) -> String {
    match h.topic(case).await {
        Ok(t) => t,
        Err(e) => panic!("harness could not make a topic for {case}: {e:?}"),
    }
}

pub(crate) async fn subscribe(t: &dyn Transport, topic: &str) -> Subscription {
    match t.subscribe(topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe to {topic} on {}: {e:?}", t.backend()),
    }
}

pub(crate) async fn publish(t: &dyn Transport, topic: &str, env: &Envelope) {
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

pub(crate) fn envelope(
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

pub(crate) fn truncate_micros(t: SystemTime) -> SystemTime {
    let us = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(u64::MAX))
}
