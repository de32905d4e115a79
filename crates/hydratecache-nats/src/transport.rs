//! [`NatsTransport`]: the [`Transport`] over core NATS.

use std::sync::Arc;

use async_nats::{Client, ConnectOptions, ToServerAddrs};
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{
    Capabilities, Envelope, Error, Result, SubscribeOptions, Subscription, Transport,
};

use crate::builder::{checked_addrs, Config, NatsBuilder, EVENT_RECONNECT_CHECK};
use crate::inner::Inner;
use crate::jetstream::{JetStreamSettings, NatsJetStreamTransport};
use crate::shared::Shared;
use crate::BACKEND;

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
    /// disconnects into [`Event::Interrupted`](hydratecache_core::Event::Interrupted)
    /// and slow-consumer drops into gap events: one set in
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
        let options = match self.ping_interval {
            Some(interval) => options.ping_interval(interval),
            None => options,
        };
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

    /// Connects in JetStream mode ([`NatsJetStreamTransport`]): each topic
    /// is a stream keeping the last message of each key, and a subscription
    /// resumes from its stream sequence after an outage. Of this builder's
    /// options it uses the subject prefix (the subjects' first token,
    /// default [`DEFAULT_JETSTREAM_PREFIX`](crate::DEFAULT_JETSTREAM_PREFIX)),
    /// the publish timeout (each acknowledged publish and each request to
    /// the server), the ping interval and the JetStream heartbeat.
    pub async fn connect_jetstream(self, url: &str) -> Result<NatsJetStreamTransport> {
        let (addrs, options) = checked_addrs(url, ConnectOptions::new())?;
        let options = match self.ping_interval {
            Some(interval) => options.ping_interval(interval),
            None => options,
        };
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| Error::backend(BACKEND, "connect", e))?;
        Ok(self.jetstream(client, true))
    }

    /// JetStream mode on a client built elsewhere, left open by `close`.
    pub fn jetstream_from_client(self, client: Client) -> NatsJetStreamTransport {
        self.jetstream(client, false)
    }

    fn jetstream(self, client: Client, owned: bool) -> NatsJetStreamTransport {
        let settings = JetStreamSettings {
            prefix: self
                .subject_prefix
                .clone()
                .unwrap_or_else(|| crate::DEFAULT_JETSTREAM_PREFIX.to_owned()),
            publish_timeout: self.publish_timeout,
            heartbeat: self.jetstream_heartbeat,
            max_payload: client.server_info().max_payload,
        };
        NatsJetStreamTransport::new(client, owned, settings)
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

    /// A transport with default settings on a client built elsewhere; see
    /// [`NatsBuilder::from_client`].
    pub fn from_client(client: Client) -> NatsTransport {
        NatsTransport::new(client, false, Config::for_client(), Arc::new(Shared::new()))
    }

    fn new(client: Client, owned: bool, config: Config, shared: Arc<Shared>) -> NatsTransport {
        NatsTransport {
            inner: Arc::new(Inner::new(client, owned, config, shared)),
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
        self.inner.subject(topic)
    }
}

impl Transport for NatsTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// The largest message is the server's `max_payload` (from its `INFO`,
    /// 1 MiB by default), since the envelope is the whole body; no replay.
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        self.inner.publish(topic, envelope).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        self.inner.subscribe(topic, options).boxed()
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
        self.inner.close().boxed()
    }
}
