//! [`NatsTransport`]: the [`Transport`] over core NATS.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ConnectOptions, Statistics, Subject, ToServerAddrs};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_core::adapter::{check_envelope, lock, refuse_replay};
use hydratecache_core::{
    Capabilities, Envelope, Error, Result, SubscribeOptions, Subscription, Transport,
};

use crate::builder::{checked_addrs, Config, NatsBuilder, EVENT_RECONNECT_CHECK};
use crate::shared::{Shared, SubState};
use crate::subject::subject_for;
use crate::subscription::{pump, subscriber_sid, SubStream};
use crate::BACKEND;

/// How often a waiting publish looks at the connection state.
const STATE_POLL: Duration = Duration::from_millis(20);

impl NatsBuilder {
    /// Connects to `url` (or a comma-separated list of URLs) with async-nats'
    /// default options.
    pub async fn connect(self, url: &str) -> Result<NatsTransport> {
        self.connect_with(url, ConnectOptions::new()).await
    }

    /// Connects with `options` (TLS, credentials, reconnect policy...).
    ///
    /// The transport installs its own
    /// [`event_callback`](ConnectOptions::event_callback), to turn
    /// disconnects and slow-consumer drops into gap events: one set in
    /// `options` is replaced (build the client yourself and use
    /// [`from_client`](Self::from_client) to keep yours). The connection is
    /// named `hydratecache` unless `options` names it.
    ///
    /// A `tls://` URL among `addrs` makes TLS required on every connection
    /// ([`ConnectOptions::require_tls`]), including reconnections to servers
    /// discovered from the cluster, so a TLS URL never ends up in plaintext.
    pub async fn connect_with(
        self,
        addrs: impl ToServerAddrs,
        options: ConnectOptions,
    ) -> Result<NatsTransport> {
        let config = self.config(EVENT_RECONNECT_CHECK)?;
        let (addrs, options) = checked_addrs(addrs, options)?;
        let shared = Arc::new(Shared::new());
        let events = Arc::downgrade(&shared);
        let options = options.event_callback(move |event| {
            if let Some(shared) = events.upgrade() {
                shared.on_event(event);
            }
            std::future::ready(())
        });
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| Error::backend(BACKEND, "connect", e))?;
        Ok(NatsTransport::new(client, true, config, shared))
    }

    /// A transport on a client built elsewhere (shared with other code).
    ///
    /// async-nats gives such a client's connection events only to the
    /// callback set when it connected, so the transport watches the client's
    /// connection count instead: reconnects still become gap events, but
    /// messages async-nats drops for a slow consumer cannot be reported (see
    /// the crate documentation). Closing the transport leaves the client open.
    pub fn from_client(self, client: Client) -> Result<NatsTransport> {
        let config = self.config(self.reconnect_check)?;
        Ok(NatsTransport::new(
            client,
            false,
            config,
            Arc::new(Shared::new()),
        ))
    }
}

/// The [`Transport`] for core NATS (2.x), on [`async_nats`].
///
/// Each topic is one subject (see [`subject`](Self::subject)); the envelope
/// is the message body, without NATS headers. All subscriptions and
/// publishes of a transport share its one client connection; each
/// subscription is its own `SUB` on the server, removed when the
/// subscription is dropped. Clones share the connection.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Client,
    stats: Arc<Statistics>,
    owned: bool,
    config: Config,
    pub(crate) shared: Arc<Shared>,
    monitor_started: AtomicBool,
    /// Something was published that the server has not been seen to have:
    /// set by every publish, cleared once `close()` confirmed. A drop with
    /// it set confirms in the background.
    unconfirmed: AtomicBool,
    /// Held by a `close()` while it confirms, so a second one waits for the
    /// outcome instead of reporting success early.
    closing: tokio::sync::Mutex<()>,
    /// The last topic published to and its checked subject: a channel
    /// publishes to one topic, and checking the subject each time showed up
    /// as 4% of a publish-heavy profile.
    last_subject: Mutex<Option<(Box<str>, Subject)>>,
}

impl Inner {
    /// Records that a publish was queued that no `close()` has confirmed.
    /// Read first: concurrent publishers then share the flag's cache line
    /// instead of each writing it.
    fn mark_unconfirmed(&self) {
        if !self.unconfirmed.load(Ordering::Relaxed) {
            self.unconfirmed.store(true, Ordering::Release);
        }
    }

    /// Connections established so far (1 after the first connect).
    pub(crate) fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Acquire)
    }
}

impl NatsTransport {
    /// Settings first: [`NatsBuilder`].
    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// Connects to `url` with default settings.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), hydratecache_core::Error> {
    /// let transport = hydratecache_nats::NatsTransport::connect("nats://127.0.0.1:4222").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(url: &str) -> Result<NatsTransport> {
        NatsBuilder::default().connect(url).await
    }

    /// A transport with default settings on a client built elsewhere (the
    /// seed's `hcnats.New(nc)`); see [`NatsBuilder::from_client`].
    pub fn from_client(client: Client) -> NatsTransport {
        NatsTransport::new(client, false, Config::for_client(), Arc::new(Shared::new()))
    }

    fn new(client: Client, owned: bool, config: Config, shared: Arc<Shared>) -> NatsTransport {
        let stats = client.statistics();
        NatsTransport {
            inner: Arc::new(Inner {
                client,
                stats,
                owned,
                config,
                shared,
                monitor_started: AtomicBool::new(false),
                unconfirmed: AtomicBool::new(false),
                closing: tokio::sync::Mutex::new(()),
                last_subject: Mutex::new(None),
            }),
        }
    }

    /// The async-nats client (for its statistics, or other subjects).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The subject `topic` is published and subscribed on: the topic itself,
    /// or `<prefix>.<topic>` with a [prefix](NatsBuilder::subject_prefix).
    /// Fails with [`Error::InvalidTopic`] for a topic that is not valid
    /// ([`validate_topic`](crate::validate_topic)).
    pub fn subject(&self, topic: &str) -> Result<String> {
        subject_for(self.inner.config.subject_prefix.as_deref(), topic)
    }

    fn check_open(&self) -> Result<()> {
        self.inner.shared.closed.check(BACKEND)
    }

    /// The subject of `topic`, checked once per change of topic.
    fn publish_subject(&self, topic: &str) -> Result<Subject> {
        let mut last = lock(&self.inner.last_subject);
        if let Some((t, subject)) = last.as_ref() {
            if **t == *topic {
                return Ok(subject.clone());
            }
        }
        let subject = Subject::from(self.subject(topic)?);
        *last = Some((topic.into(), subject.clone()));
        Ok(subject)
    }

    async fn publish_frame(&self, subject: Subject, frame: Bytes) -> Result<()> {
        let inner = &self.inner;
        let state = inner.client.connection_state();
        if state != State::Connected {
            return Err(Error::backend(
                BACKEND,
                format!("publish to {subject}"),
                format!("the client is {state}, not connected; nothing was sent"),
            ));
        }
        let before = inner.connects();
        let timeout = inner.config.publish_timeout;
        let send =
            async {
                inner
                    .client
                    .publish(subject.clone(), frame)
                    .await
                    .map_err(|e| Error::backend(BACKEND, format!("publish to {subject}"), e))?;
                // Set once the message is queued, so a close whose round trip
                // was queued before it cannot clear the flag for it.
                inner.mark_unconfirmed();
                inner.client.flush().await.map_err(|e| {
                    Error::backend(BACKEND, format!("flush the publish to {subject}"), e)
                })
            };
        // async-nats shows the connection state only by polling: a loss seen
        // while the publish waits fails it at once rather than at the timeout.
        let lost = async {
            loop {
                tokio::time::sleep(STATE_POLL).await;
                if inner.client.connection_state() == State::Disconnected {
                    return;
                }
            }
        };
        // Fast path: the flush normally returns within microseconds; one
        // timer, no polling of the connection state.
        tokio::pin!(send);
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(STATE_POLL.min(timeout), &mut send).await {
            Ok(result) => Ok(Some(result)),
            Err(_) => {
                let left = timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, async {
                    tokio::select! {
                        result = &mut send => Some(result),
                        () = lost => None,
                    }
                })
                .await
            }
        };
        match outcome {
            Ok(Some(result)) => result?,
            Ok(None) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("publish to {subject}"),
                    "the connection was lost during the publish; the message may not reach \
                     the server (or may be sent once the client reconnects)",
                ))
            }
            Err(_) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("publish to {subject}"),
                    format!(
                        "not written to the server within {timeout:?} (connection {}); \
                         it may still be sent once the client reconnects",
                        inner.client.connection_state()
                    ),
                ))
            }
        }
        if inner.connects() != before {
            return Err(Error::backend(
                BACKEND,
                format!("publish to {subject}"),
                "the connection was lost and re-established during the publish; \
                 the message may not have reached the server",
            ));
        }
        Ok(())
    }

    async fn subscribe_topic(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.check_open()?;
        refuse_replay(
            BACKEND,
            &options,
            "replay from the earliest message (core NATS keeps no history)",
        )?;
        let subject = self.subject(topic)?;
        self.ensure_monitor();
        let inner = &self.inner;
        // Read before the SUB: a reconnect from here on gives a gap.
        let sub = Arc::new(SubState::new(
            inner.config.subscription_buffer,
            inner.config.subscription_buffer_bytes,
            inner.connects(),
        ));
        let timeout = inner.config.confirm_timeout;
        let confirmed = tokio::time::timeout(timeout, async {
            let subscriber = inner
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::backend(BACKEND, format!("subscribe to {subject}"), e))?;
            let sid = subscriber_sid(&subscriber);
            let registered = Shared::register(&inner.shared, sid, Arc::clone(&sub));
            round_trip(&inner.client).await.map_err(|e| {
                Error::backend(BACKEND, format!("confirm the subscription to {subject}"), e)
            })?;
            Ok::<_, Error>((subscriber, registered))
        })
        .await;
        let (subscriber, (registration, stop)) = match confirmed {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("subscribe to {subject}"),
                    format!(
                        "the server did not confirm the subscription within {timeout:?} \
                         (connection {})",
                        inner.client.connection_state()
                    ),
                ))
            }
        };
        tokio::spawn(pump(
            subscriber,
            topic.to_owned(),
            Arc::clone(&sub),
            Arc::clone(&inner.stats),
            stop,
        ));
        tracing::debug!(topic, subject, "nats subscription confirmed");
        let stream = SubStream::new(
            Arc::clone(inner) as Arc<dyn std::any::Any + Send + Sync>,
            registration,
            sub,
        );
        Ok(Subscription::new(topic, Box::pin(stream)))
    }

    /// Starts the task that turns reconnects into gaps for idle
    /// subscriptions (once, on the first subscription: it needs a runtime).
    fn ensure_monitor(&self) {
        if self.inner.monitor_started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Read before any subscription reads its own: none starts below it.
        let connects = self.inner.connects();
        tokio::spawn(monitor(
            Arc::downgrade(&self.inner),
            Arc::clone(&self.inner.shared),
            connects,
        ));
    }
}

/// Proves that the server has processed everything this client sent before:
/// subscribes to a fresh inbox, publishes to it and waits for the echo. The
/// server handles one connection's operations in order, so the echo comes
/// back after every earlier `SUB` took effect. (async-nats' `flush` only
/// writes to the socket; it does not wait for the server.)
async fn round_trip(client: &Client) -> std::result::Result<(), async_nats::Error> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, Bytes::new()).await?;
    match echo.next().await {
        Some(_) => Ok(()),
        None => Err("the client closed before the server answered".into()),
    }
}

/// Watches for reconnects: once the server has confirmed the re-sent
/// subscriptions (a round trip on the new connection), idle subscriptions
/// report their gap. `confirmed` is the connection count at its start. Ends
/// with the transport.
async fn monitor(inner: Weak<Inner>, shared: Arc<Shared>, mut confirmed: u64) {
    loop {
        let interval = match inner.upgrade() {
            Some(inner) => inner.config.reconnect_check,
            None => return,
        };
        tokio::select! {
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        if shared.closed.is_closed() {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        let connects = inner.connects();
        if connects <= confirmed || inner.client.connection_state() != State::Connected
        {
            continue;
        }
        match tokio::time::timeout(inner.config.confirm_timeout, round_trip(&inner.client)).await {
            Ok(Ok(())) => {
                tracing::info!(
                    connects,
                    "nats reconnected and subscriptions confirmed; signalling a gap"
                );
                confirmed = connects;
                shared.reconnected(connects);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "nats: could not confirm subscriptions after a reconnect; retrying")
            }
            Err(_) => tracing::warn!(
                "nats: no answer confirming subscriptions after a reconnect; retrying"
            ),
        }
    }
}

impl Transport for NatsTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// The largest message is the server's `max_payload` (from its `INFO`,
    /// 1 MiB by default), since the envelope is the whole body; no replay.
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(self.inner.client.max_payload()))
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.check_open()?;
            let subject = self.publish_subject(topic)?;
            check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let frame = Bytes::from(envelope.encode()?);
            self.publish_frame(subject, frame).await
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        self.subscribe_topic(topic, options).boxed()
    }

    /// Flushes, then waits until the server has processed everything this
    /// transport published (a round trip on the connection, bounded by
    /// `publish_timeout`), then closes the connection if the transport made
    /// it (its drain also bounded by `publish_timeout`). A failed
    /// confirmation is an error: what was published last may not have
    /// reached the server.
    ///
    /// A close after the first (on any clone) waits for the first to finish,
    /// then returns `Ok` if it confirmed and an error if it did not.
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let inner = &self.inner;
            let _one_at_a_time = inner.closing.lock().await;
            if !inner.shared.close() {
                return if inner.unconfirmed.load(Ordering::Acquire) {
                    Err(Error::backend(
                        BACKEND,
                        CONFIRM_ON_CLOSE,
                        "an earlier close() could not confirm, and the transport is closed",
                    ))
                } else {
                    Ok(())
                };
            }
            let timeout = inner.config.publish_timeout;
            // Cleared before the round trip is queued: a publish queued after
            // it sets the flag again, and a drop then confirms that one. Set
            // again unless confirmed, also if this close is cancelled.
            let mut restore = RestoreOnDrop {
                flag: &inner.unconfirmed,
                armed: inner.unconfirmed.swap(false, Ordering::AcqRel),
            };
            let confirmed = tokio::time::timeout(timeout, confirm_processed(&inner.client)).await;
            if matches!(confirmed, Ok(Ok(()))) {
                restore.armed = false;
            }
            drop(restore);
            if inner.owned {
                // Closes the connection once what is queued is written. The
                // command queue is not read while the client reconnects.
                match tokio::time::timeout(timeout, inner.client.drain()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "nats drain on close"),
                    Err(_) => {
                        tracing::debug!("nats drain on close: not accepted within {timeout:?}")
                    }
                }
            }
            match confirmed {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Error::backend(BACKEND, CONFIRM_ON_CLOSE, e)),
                Err(_) => Err(Error::backend(
                    BACKEND,
                    CONFIRM_ON_CLOSE,
                    format!("no answer within {timeout:?}"),
                )),
            }
        }
        .boxed()
    }
}

/// Sets `flag` when dropped while `armed`.
struct RestoreOnDrop<'a> {
    flag: &'a AtomicBool,
    armed: bool,
}

impl Drop for RestoreOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Release);
        }
    }
}

const CONFIRM_ON_CLOSE: &str = "confirm on close that the server has what was published";

/// Flushes, then proves with a round trip that the server has processed
/// everything written before it.
async fn confirm_processed(client: &Client) -> std::result::Result<(), async_nats::Error> {
    client.flush().await?;
    round_trip(client).await
}

impl Drop for Inner {
    /// Dropped with publishes `close()` did not confirm (never called,
    /// cancelled, or failed): keeps the connection open in a background task
    /// until the server has processed them (bounded by `publish_timeout`).
    /// async-nats closes a dropped client's socket at once; if the server's
    /// `PING` sits unread in it, the close is a reset and the server discards
    /// what it had not read yet, so the last publishes, already `Ok`, were
    /// lost (seen in the conformance suite on a loaded machine). The task
    /// needs the runtime to keep running: at the end of `main` it is cut
    /// short, which is why `close()` is the way to be sure.
    fn drop(&mut self) {
        if !self.unconfirmed.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("nats transport dropped outside a tokio runtime without close(): its last publishes may not reach the server");
            return;
        };
        let client = self.client.clone();
        let timeout = self.config.publish_timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, confirm_processed(&client)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "nats: could not confirm what was published before the drop")
                }
                Err(_) => tracing::debug!(
                    "nats: no confirmation within {timeout:?} of what was published before the drop"
                ),
            }
        });
    }
}
