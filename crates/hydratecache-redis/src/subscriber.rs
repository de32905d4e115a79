//! The shared subscriber connection: server-side subscriptions counted per
//! channel, fan-out of fred's messages to the subscriptions, and gaps for
//! everything that can lose messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Pipeline, SubscriberClient};
use fred::interfaces::{ClientLike, PubsubInterface};
use fred::types::config::{Options, Server};
use fred::types::{ClusterHash, Message, MessageKind, Value};
use hydratecache_core::adapter::{Backoff, ClosedFlag, Fanout, FanoutStream};
use hydratecache_core::{Envelope, Error, Gap, GapReason, InterruptReason, Interruption, Result};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

use crate::BACKEND;

/// The back-off between attempts of a failing re-subscribe.
const RESUBSCRIBE_FIRST: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_millis(3_200);

/// Work for the control task.
#[derive(Debug)]
pub(crate) enum Control {
    /// The last local subscription of this channel is gone.
    Unsubscribe(String),
    /// The connection was re-established: subscribe again (`backoff` counts
    /// the failed tries since).
    Resubscribe { backoff: Backoff },
}

impl Control {
    /// A re-subscribe after a new connection, its first attempt.
    fn resubscribe() -> Control {
        Control::Resubscribe {
            backoff: Backoff::new(RESUBSCRIBE_FIRST, RESUBSCRIBE_MAX),
        }
    }
}

/// State shared by the transport, its tasks and its subscriptions.
pub(crate) struct Shared {
    pub(crate) subscriber: SubscriberClient,
    pub(crate) sharded: bool,
    pub(crate) command_timeout: Duration,
    /// Local subscriptions by channel.
    fanout: Arc<Fanout>,
    /// Channels subscribed on the server (or maybe: a SUBSCRIBE was sent),
    /// with the connection epoch in which that was confirmed (`None`: not
    /// confirmed). Held across SUBSCRIBE/UNSUBSCRIBE so they never interleave.
    server: tokio::sync::Mutex<HashMap<String, Option<u64>>>,
    /// Incremented on every reconnect of the subscriber connection.
    epoch: AtomicU64,
    /// Makes each confirming PING's message unique.
    next_ping: AtomicU64,
    pub(crate) closed: ClosedFlag,
    /// The subscriptions were told the connection is broken, and no
    /// reconnect happened since.
    interrupted: AtomicBool,
    control: mpsc::UnboundedSender<Control>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("subscriber", &self.subscriber.id())
            .field("sharded", &self.sharded)
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        subscriber: SubscriberClient,
        sharded: bool,
        command_timeout: Duration,
        buffer: usize,
        buffer_bytes: usize,
    ) -> (Arc<Shared>, mpsc::UnboundedReceiver<Control>) {
        let (control, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            subscriber,
            sharded,
            command_timeout,
            fanout: Fanout::new(buffer, buffer_bytes),
            server: tokio::sync::Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            next_ping: AtomicU64::new(0),
            closed: ClosedFlag::new(),
            interrupted: AtomicBool::new(false),
            control,
        });
        (shared, rx)
    }

    pub(crate) fn options(&self) -> Options {
        let mut options = Options {
            timeout: Some(self.command_timeout),
            ..Options::default()
        };
        if self.subscriber.is_clustered() && !self.sharded {
            // fred sends SUBSCRIBE to the node chosen by the client id's hash
            // slot (its commands::impls::pubsub::cluster_hash_legacy_command);
            // the PING that confirms it must take the same connection.
            let slot = fred::util::redis_keyslot(self.subscriber.id().as_bytes());
            options.cluster_hash = Some(ClusterHash::Custom(slot));
        }
        options
    }

    /// Registers a local subscription and makes sure the server has the
    /// channel subscribed; resolves once the server confirmed it.
    pub(crate) async fn subscribe(self: &Arc<Self>, topic: &str) -> Result<FanoutStream> {
        let shared = Arc::clone(self);
        // From here on, dropping (also on cancellation) unregisters it; the
        // last one of its channel has the control task unsubscribe.
        let registered = self.fanout.register(
            topic,
            Box::new(move |topic| {
                if !shared.closed.is_closed() {
                    // The control task is gone only once the transport is closed.
                    let _ = shared.control.send(Control::Unsubscribe(topic.to_owned()));
                }
            }),
        );
        let mut server = self.server.lock().await;
        self.closed.check(BACKEND)?;
        let epoch = self.epoch.load(Ordering::Acquire);
        let topic = [topic.to_owned()];
        if server.get(&topic[0]) != Some(&Some(epoch)) {
            // Recorded before sending, so a cancelled or failed attempt is
            // still unsubscribed when the last local subscription goes.
            server.insert(topic[0].clone(), None);
            self.send_subscribe(&topic).await?;
            server.insert(topic[0].clone(), Some(epoch));
        }
        // A reconnect between registering and taking the lock held a gap in
        // this (and any other) subscription of the channel: it is confirmed.
        self.fanout.release(&topic, epoch);
        Ok(registered.stream)
    }

    /// SUBSCRIBE (or SSUBSCRIBE) and wait for the server's confirmation.
    async fn send_subscribe(&self, topics: &[String]) -> Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let client = self.subscriber.with_options(&self.options());
        let context = || {
            format!(
                "subscribe to {} channel(s), first {:?}",
                topics.len(),
                topics[0]
            )
        };
        if self.sharded {
            // fred resolves SSUBSCRIBE with the server's reply, but one reply
            // per channel: send one channel per command so no extra reply is
            // taken for another command's.
            for topic in topics {
                client
                    .ssubscribe(topic.as_str())
                    .await
                    .map_err(|e| Error::backend(BACKEND, context(), e))?;
            }
            return Ok(());
        }
        // fred resolves SUBSCRIBE as soon as it is written and drops the
        // server's confirmation (Command::has_no_responses), so an error
        // reply (NOPERM) is taken by the next command waiting for a reply, or
        // dropped when none waits yet. Sent in one pipeline, the PING after
        // the SUBSCRIBEs is waiting before any reply is read: it gets the
        // error, or its own reply once the server processed the SUBSCRIBEs.
        // Its unique message tells its own reply from a stale one.
        let token = format!(
            "hydratecache-subscribed-{}",
            self.next_ping.fetch_add(1, Ordering::Relaxed)
        );
        let pipeline = Pipeline::from(client);
        for chunk in topics.chunks(1024) {
            pipeline
                .subscribe(chunk.to_vec())
                .await
                .map_err(|e| Error::backend(BACKEND, context(), e))?;
        }
        pipeline
            .ping::<Value>(Some(token.clone()))
            .await
            .map_err(|e| Error::backend(BACKEND, context(), e))?;
        let reply = pipeline
            .last::<Value>()
            .await
            .map_err(|e| Error::backend(BACKEND, context(), e))?;
        if !carries(&reply, &token) {
            return Err(Error::backend(
                BACKEND,
                context(),
                format!("unexpected reply {reply:?} to the confirming PING"),
            ));
        }
        Ok(())
    }

    /// UNSUBSCRIBE `topic` if no local subscription wants it any more.
    async fn unsubscribe_if_unused(&self, topic: &str) {
        let mut server = self.server.lock().await;
        if self.fanout.has_subscribers(topic) || server.remove(topic).is_none() {
            return;
        }
        self.unsubscribe_now(topic).await;
    }

    /// UNSUBSCRIBE (or SUNSUBSCRIBE) `topic`; failures are logged.
    pub(crate) async fn unsubscribe_now(&self, topic: &str) {
        let client = self.subscriber.with_options(&self.options());
        let result = if self.sharded {
            client.sunsubscribe(topic).await
        } else {
            client.unsubscribe(topic).await
        };
        match result {
            Ok(()) => tracing::debug!(topic, "unsubscribed"),
            // Either the connection is down (the new one will not have it) or
            // the server will keep sending it and the dispatcher drops it.
            Err(e) => tracing::warn!(topic, error = %e, "UNSUBSCRIBE failed"),
        }
    }

    /// Subscribes again to every channel with a local subscription, after a
    /// reconnect.
    async fn resubscribe(self: &Arc<Self>, mut backoff: Backoff) {
        let mut server = self.server.lock().await;
        if self.closed.is_closed() {
            return;
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        server.retain(|t, _| self.fanout.has_subscribers(t));
        let wanted: Vec<String> = server.keys().cloned().collect();
        if server.values().all(|c| *c == Some(epoch)) {
            // A retry or a second reconnect notice for what is done already.
            self.fanout.release(&wanted, epoch);
            return;
        }
        for confirmed in server.values_mut() {
            *confirmed = None;
        }
        match self.send_subscribe(&wanted).await {
            Ok(()) => {
                for confirmed in server.values_mut() {
                    *confirmed = Some(epoch);
                }
                // Only now is every message published from here on delivered:
                // the moment for the reconnect gap.
                self.fanout.release(&wanted, epoch);
                tracing::info!(channels = wanted.len(), "resubscribed after reconnect");
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(error = %e, retry_in = ?delay, "resubscribe after reconnect failed");
                // Messages are being lost and nothing is repaired yet: say so
                // on every affected subscription; the gap follows once a
                // retry succeeds.
                let cause = match e {
                    Error::Backend { source, .. } => source.to_string(),
                    other => other.to_string(),
                };
                let error = Error::backend(
                    BACKEND,
                    format!(
                        "re-subscribe after a reconnect failed (attempt {}, retrying in {delay:?}); \
                         messages on this channel are lost until it succeeds",
                        backoff.failures()
                    ),
                    cause,
                );
                self.fanout.error(&wanted, || copy_error(&error));
                let shared = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = shared.control.send(Control::Resubscribe { backoff });
                });
            }
        }
    }

    /// The subscriber connection is known broken: every subscription is
    /// told once, until the next reconnect.
    pub(crate) fn interrupt(&self, reason: InterruptReason) {
        if !self.interrupted.swap(true, Ordering::AcqRel) {
            self.fanout.interrupt_all(Interruption::new(reason));
        }
    }

    pub(crate) fn is_interrupted(&self) -> bool {
        self.interrupted.load(Ordering::Acquire)
    }

    fn on_reconnect(&self, server: Option<&Server>) {
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        // Held before the flag clears: an interruption of the new connection
        // then comes after this gap's hold, never lost in between.
        self.fanout
            .hold_all(Gap::new(GapReason::Reconnected), epoch);
        self.interrupted.store(false, Ordering::Release);
        tracing::warn!(
            ?server,
            subscribed_channels = self.fanout.topics_subscribed().len(),
            "redis subscriber connection re-established: messages may have been missed"
        );
        // The gap held above is delivered once the re-subscribe on this
        // connection is confirmed.
        let _ = self.control.send(Control::resubscribe());
    }

    fn on_lagged(&self, missed: u64) {
        let channels = self.fanout.topics_subscribed().len();
        tracing::warn!(
            missed,
            "the redis client's message buffer overflowed (raise broadcast_capacity)"
        );
        // The count is exact for a subscription only when it is the only
        // channel this connection receives.
        self.fanout.gap_all(Gap {
            reason: GapReason::Lagged,
            missed: (channels == 1).then_some(missed),
        });
    }

    fn route(&self, message: Message) {
        let expected = if self.sharded {
            MessageKind::SMessage
        } else {
            MessageKind::Message
        };
        if message.kind != expected {
            return;
        }
        let frame = value_bytes(message.value);
        let decoded = Envelope::decode_bytes(&frame);
        self.fanout.deliver(&message.channel, decoded, frame.len());
    }

    /// Ends every subscription stream and forgets them.
    pub(crate) fn end_all(&self) {
        self.fanout.close_all();
    }

    /// Channels that may be subscribed on the server, forgotten.
    pub(crate) async fn take_server_channels(&self) -> Vec<String> {
        self.server.lock().await.drain().map(|(t, _)| t).collect()
    }
}

/// Whether the reply to `PING <token>` carries `token`: a bulk string, or
/// `["pong", token]` on a RESP2 connection in subscribed mode.
fn carries(reply: &Value, token: &str) -> bool {
    match reply {
        Value::Array(items) => items.iter().any(|v| carries(v, token)),
        other => other.as_bytes() == Some(token.as_bytes()),
    }
}

/// A copy of a re-subscribe error for each subscription (errors are not
/// `Clone`: the source is kept as its text).
fn copy_error(error: &Error) -> Error {
    match error {
        Error::Backend {
            backend,
            context,
            source,
        } => Error::backend(backend, context.clone(), source.to_string()),
        other => Error::backend(BACKEND, "re-subscribe after a reconnect", other.to_string()),
    }
}

/// The payload bytes of a pub/sub message (fred gives valid UTF-8 as a string).
fn value_bytes(value: Value) -> Bytes {
    match value {
        Value::Bytes(b) => b,
        Value::String(s) => s.into_inner(),
        Value::Null => Bytes::new(),
        other => other
            .as_bytes_str()
            .map(|s| s.into_inner())
            .unwrap_or_default(),
    }
}

/// Reads fred's message and reconnect broadcasts, in that priority order
/// reversed: a reconnect is handled before any message that was queued after
/// it, so its gap comes before every message of the new connection.
pub(crate) async fn dispatch(
    shared: Arc<Shared>,
    mut messages: broadcast::Receiver<Message>,
    mut reconnects: broadcast::Receiver<Server>,
) {
    loop {
        tokio::select! {
            biased;
            event = reconnects.recv() => match event {
                Ok(server) => shared.on_reconnect(Some(&server)),
                Err(RecvError::Lagged(_)) => shared.on_reconnect(None),
                Err(RecvError::Closed) => break,
            },
            message = messages.recv() => match message {
                Ok(message) => shared.route(message),
                Err(RecvError::Lagged(missed)) => shared.on_lagged(missed),
                Err(RecvError::Closed) => break,
            },
        }
    }
    tracing::debug!("redis message stream closed; ending subscriptions");
    shared.end_all();
}

/// Runs unsubscribes and resubscribes, one at a time.
pub(crate) async fn control(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Control>) {
    while let Some(work) = rx.recv().await {
        match work {
            Control::Unsubscribe(topic) => shared.unsubscribe_if_unused(&topic).await,
            Control::Resubscribe { backoff } => shared.resubscribe(backoff).await,
        }
    }
}
