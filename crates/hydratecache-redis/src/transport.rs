//! [`RedisTransport`] and its [`RedisBuilder`].

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::{Builder, ClientState};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use hydratecache_core::{
    Capabilities, Envelope, Error, Event, Result, StartFrom, SubscribeOptions, Subscription,
    Transport,
};
use tokio::task::JoinHandle;

use crate::publisher::{self, publish, Health};
use crate::subscriber::{control, dispatch, Shared, SubscriptionStream};
use crate::BACKEND;

/// Default largest encoded envelope: 1 MiB.
///
/// Redis accepts bulk strings up to 512 MiB (`proto-max-bulk-len`), but every
/// subscriber connection is cut by the server once its output buffer passes
/// `client-output-buffer-limit pubsub` (32 MiB hard, 8 MiB for 60 s by
/// default), and one large message delays every other message on the shared
/// connections. 1 MiB keeps well inside both.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Largest value [`RedisBuilder::max_message_size`] accepts: Redis's default
/// `proto-max-bulk-len` (512 MiB).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// Default number of messages one subscription may have waiting before it
/// gets a gap instead of the next ones.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 65_536;

/// Default bound on the message bytes one subscription may have waiting
/// (32 MiB) before it gets a gap instead of the next ones.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;

/// Default capacity of fred's message broadcast channel
/// (`PerformanceConfig::broadcast_channel_capacity`, 32 in fred), shared by
/// all subscriptions of a transport.
pub const DEFAULT_BROADCAST_CAPACITY: usize = 65_536;

/// Default bound on each command (PUBLISH, SUBSCRIBE...), retries included:
/// a publish to a server that does not answer fails after this long (one
/// while the connection is known to be down fails at once).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Default bound on the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The reconnect policy set on clients this crate builds (and on a fred
/// [`Builder`] without one): retry forever, 100 ms doubling up to 2 s.
pub fn default_reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 100, 2_000, 2)
}

/// A [`Transport`] over Redis Pub/Sub (`PUBLISH`/`SUBSCRIBE`, or
/// `SPUBLISH`/`SSUBSCRIBE` with [`RedisBuilder::sharded`]).
///
/// One fred [`Client`] publishes; one [`SubscriberClient`] carries every
/// subscription of the transport. Clones share both. The connections live
/// while a clone or a subscription does; when the last is dropped, clients
/// built here are closed (clients given to
/// [`from_clients`](RedisBuilder::from_clients) are unsubscribed and left
/// open). [`close`](Transport::close) does it at once and ends the
/// subscriptions.
///
/// See the crate documentation for configuration and guarantees.
#[derive(Debug, Clone)]
pub struct RedisTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    publisher: Client,
    /// The publisher's connection, for fast and clear publish errors.
    health: Arc<Health>,
    shared: Arc<Shared>,
    settings: Settings,
    /// Whether the clients were built here (then `close` quits them).
    owned: bool,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, Clone)]
struct Settings {
    max_message_size: usize,
    subscription_buffer: usize,
    subscription_buffer_bytes: usize,
    broadcast_capacity: usize,
    command_timeout: Duration,
    connect_timeout: Duration,
    sharded: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            broadcast_capacity: DEFAULT_BROADCAST_CAPACITY,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            sharded: false,
        }
    }
}

/// Options of a [`RedisTransport`], then how to connect it.
///
/// ```no_run
/// use std::time::Duration;
/// use hydratecache_redis::RedisTransport;
/// # async fn demo() -> Result<(), hydratecache_core::Error> {
/// let transport = RedisTransport::builder()
///     .max_message_size(256 * 1024)
///     .command_timeout(Duration::from_secs(2))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct RedisBuilder {
    settings: Settings,
}

impl RedisBuilder {
    /// Largest encoded envelope accepted by `publish`, in bytes (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]; at most [`MAX_BULK_LEN`], larger values
    /// are lowered to it). Keep it under the servers'
    /// `client-output-buffer-limit pubsub` hard limit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.settings.max_message_size = bytes.min(MAX_BULK_LEN);
        self
    }

    /// Messages one subscription may have waiting before further ones are
    /// dropped and counted in a gap (default [`DEFAULT_SUBSCRIPTION_BUFFER`]).
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.settings.subscription_buffer = messages.max(1);
        self
    }

    /// Message bytes (encoded envelopes) one subscription may have waiting
    /// before further messages are dropped and counted in a gap (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`]). A single message larger than
    /// this is still taken when nothing else waits.
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.settings.subscription_buffer_bytes = bytes.max(1);
        self
    }

    /// Capacity of fred's message broadcast channel for the clients built
    /// here (default [`DEFAULT_BROADCAST_CAPACITY`]). When the dispatcher
    /// falls this far behind, every subscription gets a gap.
    pub fn broadcast_capacity(mut self, messages: usize) -> Self {
        self.settings.broadcast_capacity = messages.max(1);
        self
    }

    /// Bound on each PUBLISH, SUBSCRIBE and UNSUBSCRIBE, fred's retries and
    /// the wait for a reconnect included (default
    /// [`DEFAULT_COMMAND_TIMEOUT`]). A command that timed out while
    /// disconnected is not sent later.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout;
        self
    }

    /// Bound on the first connection of each client (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// Uses sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`, Redis 7+) instead of
    /// `PUBLISH`/`SUBSCRIBE`: on a Redis Cluster each channel then lives on
    /// the shard owning its hash slot instead of being broadcast to every
    /// node. Publishers and subscribers of a topic must agree on this.
    pub fn sharded(mut self, sharded: bool) -> Self {
        self.settings.sharded = sharded;
        self
    }

    /// Connects to `url` (`redis://`, `rediss://`, `redis-cluster://`,
    /// `redis-sentinel://`, as [`Config::from_url`] reads them).
    ///
    /// A TLS URL (`rediss://`, `valkeys://`) is refused with
    /// [`Error::Unsupported`] when the crate is built without a TLS feature.
    pub async fn connect(self, url: &str) -> Result<RedisTransport> {
        crate::tls::check_url(url)?;
        let config =
            Config::from_url(url).map_err(|e| Error::backend(BACKEND, "parse the Redis URL", e))?;
        self.connect_config(config).await
    }

    /// Connects with a fred [`Config`] (TLS, credentials, cluster or
    /// sentinel servers, RESP version...).
    pub async fn connect_config(self, config: Config) -> Result<RedisTransport> {
        let mut builder = Builder::from_config(config);
        let capacity = self.settings.broadcast_capacity;
        builder.with_performance_config(|perf| perf.broadcast_channel_capacity = capacity);
        self.connect_builder(builder).await
    }

    /// Builds both clients from a fred [`Builder`], which keeps its
    /// connection and performance settings. If it has no reconnect policy,
    /// [`default_reconnect_policy`] is set; the broadcast capacity is raised
    /// to [`broadcast_capacity`](Self::broadcast_capacity) if lower.
    pub async fn connect_builder(self, mut builder: Builder) -> Result<RedisTransport> {
        if builder.get_policy().is_none() {
            builder.set_policy(default_reconnect_policy());
        }
        let capacity = builder
            .get_performance_config()
            .broadcast_channel_capacity
            .max(self.settings.broadcast_capacity);
        builder.with_performance_config(|perf| perf.broadcast_channel_capacity = capacity);
        let publisher = builder
            .build()
            .map_err(|e| Error::backend(BACKEND, "build the publishing client", e))?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| Error::backend(BACKEND, "build the subscriber client", e))?;
        self.start(publisher, subscriber, true).await
    }

    /// Uses clients built elsewhere (connected or not; unconnected ones are
    /// connected here). They must use separate connections: a RESP2
    /// connection in subscribed mode cannot publish.
    ///
    /// The subscriber needs a reconnect policy (fred's `Builder::set_policy`):
    /// without one it stays down after a disconnect and this returns an
    /// error. Give it a `broadcast_channel_capacity` of at least
    /// [`DEFAULT_BROADCAST_CAPACITY`] (fred's default of 32 loses bursts; a
    /// warning is logged). [`close`](Transport::close) unsubscribes but
    /// leaves these clients connected.
    pub async fn from_clients(
        self,
        publisher: Client,
        subscriber: SubscriberClient,
    ) -> Result<RedisTransport> {
        if !subscriber.has_reconnect_policy() {
            return Err(Error::backend(
                BACKEND,
                "use the given subscriber client",
                FredError::new(
                    ErrorKind::Config,
                    "the subscriber client has no reconnect policy (fred Builder::set_policy): \
                     its subscriptions would end silently at the first disconnect",
                ),
            ));
        }
        let capacity = subscriber.perf_config().broadcast_channel_capacity;
        if capacity < self.settings.broadcast_capacity {
            tracing::warn!(
                capacity,
                recommended = self.settings.broadcast_capacity,
                "the subscriber client's broadcast_channel_capacity is small: bursts will end in gaps"
            );
        }
        self.start(publisher, subscriber, false).await
    }

    async fn start(
        self,
        publisher: Client,
        subscriber: SubscriberClient,
        owned: bool,
    ) -> Result<RedisTransport> {
        let timeout = self.settings.connect_timeout;
        let connected = async {
            ensure_connected(&publisher, timeout, "connect the publishing client").await?;
            ensure_connected(&subscriber, timeout, "connect the subscriber client").await
        }
        .await;
        if let Err(e) = connected {
            if owned {
                quit(&publisher, timeout).await;
                quit(&subscriber, timeout).await;
            }
            return Err(e);
        }
        // Taken once connected: fred announces the first connection on the
        // reconnect channel too (router::centralized::initialize_connection),
        // and that one is no gap. No subscription exists before this returns,
        // so nothing earlier matters.
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        let health = Arc::new(Health::new(&publisher));
        let publisher_events = (publisher.error_rx(), publisher.reconnect_rx());
        let (shared, control_rx) = Shared::new(
            subscriber,
            self.settings.sharded,
            self.settings.command_timeout,
            self.settings.subscription_buffer,
            self.settings.subscription_buffer_bytes,
        );
        let tasks = vec![
            tokio::spawn(dispatch(Arc::clone(&shared), messages, reconnects)),
            tokio::spawn(control(Arc::clone(&shared), control_rx)),
            tokio::spawn(publisher::watch(
                Arc::clone(&health),
                publisher_events.0,
                publisher_events.1,
            )),
        ];
        tracing::debug!(
            sharded = self.settings.sharded,
            owned,
            "redis transport ready"
        );
        Ok(RedisTransport {
            inner: Arc::new(Inner {
                publisher,
                health,
                shared,
                settings: self.settings,
                owned,
                tasks,
            }),
        })
    }
}

async fn ensure_connected<C: ClientLike>(
    client: &C,
    timeout: Duration,
    context: &'static str,
) -> Result<()> {
    if client.is_connected() {
        return Ok(());
    }
    let connect = async {
        if client.state() == ClientState::Disconnected {
            client.init().await.map(drop)
        } else {
            client.wait_for_connect().await
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result.map_err(|e| Error::backend(BACKEND, context, e)),
        Err(_) => Err(Error::backend(
            BACKEND,
            context,
            FredError::new(
                ErrorKind::Timeout,
                format!("no connection within {timeout:?}"),
            ),
        )),
    }
}

async fn quit<C: ClientLike>(client: &C, timeout: Duration) {
    if let Ok(Err(e)) = tokio::time::timeout(timeout, client.quit()).await {
        tracing::debug!(error = %e, "QUIT failed");
    }
}

impl RedisTransport {
    /// Connects to `url` with the default settings (see [`RedisBuilder`]).
    pub async fn connect(url: &str) -> Result<RedisTransport> {
        RedisBuilder::default().connect(url).await
    }

    /// Settings first, then one of the builder's ways to connect.
    pub fn builder() -> RedisBuilder {
        RedisBuilder::default()
    }

    /// Uses clients built elsewhere, with the default settings (see
    /// [`RedisBuilder::from_clients`]).
    pub async fn from_clients(
        publisher: Client,
        subscriber: SubscriberClient,
    ) -> Result<RedisTransport> {
        RedisBuilder::default()
            .from_clients(publisher, subscriber)
            .await
    }

    /// This transport as an `Arc<dyn Transport>`, for
    /// [`Channel::new`](hydratecache_core::Channel::new).
    pub fn into_arc(self) -> Arc<dyn Transport> {
        Arc::new(self)
    }

    /// The client that publishes.
    pub fn publisher(&self) -> &Client {
        &self.inner.publisher
    }

    /// The client that carries the subscriptions.
    pub fn subscriber(&self) -> &SubscriberClient {
        &self.inner.shared.subscriber
    }

    /// Whether this transport uses sharded Pub/Sub.
    pub fn is_sharded(&self) -> bool {
        self.inner.settings.sharded
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }
}

/// A subscription's stream holding the transport's connections alive.
/// Fields drop in order: the subscription is unregistered (and its
/// UNSUBSCRIBE queued) before the last reference to the connections can go.
#[derive(Debug)]
struct KeepAlive {
    stream: SubscriptionStream,
    _inner: Arc<Inner>,
}

impl Stream for KeepAlive {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.stream).poll_next(cx)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No clone and no subscription is left.
        for task in &self.tasks {
            task.abort();
        }
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.end_all();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::debug!("redis transport dropped outside a runtime: connections not closed");
            return;
        };
        let shared = Arc::clone(&self.shared);
        let publisher = self.publisher.clone();
        let owned = self.owned;
        let timeout = self.settings.command_timeout;
        handle.spawn(async move {
            if owned {
                // fred keeps a client's tasks and connection until QUIT.
                quit(&publisher, timeout).await;
                quit(&shared.subscriber, timeout).await;
            } else {
                // The user's clients stay; our channels go.
                for channel in shared.take_server_channels().await {
                    shared.unsubscribe_now(&channel).await;
                }
            }
        });
    }
}

fn check_topic(topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::invalid_topic(
            BACKEND,
            topic,
            "the channel name is empty",
        ));
    }
    Ok(())
}

impl Transport for RedisTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(self.inner.settings.max_message_size))
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.check_open()?;
            check_topic(topic)?;
            hydratecache_core::adapter::check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let frame = Bytes::from(envelope.encode()?);
            let inner = &self.inner;
            publish(
                &inner.publisher,
                &inner.health,
                inner.settings.sharded,
                inner.settings.command_timeout,
                topic,
                frame,
            )
            .await
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        async move {
            self.check_open()?;
            check_topic(topic)?;
            if options.start == StartFrom::Earliest {
                return Err(Error::Unsupported {
                    backend: BACKEND,
                    what: "replay from the earliest message (Redis Pub/Sub keeps no history)",
                });
            }
            let stream = self.inner.shared.subscribe(topic).await?;
            let stream = KeepAlive {
                stream,
                _inner: Arc::clone(&self.inner),
            };
            Ok(Subscription::new(topic, Box::pin(stream)))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let shared = &self.inner.shared;
            if shared.closed.swap(true, Ordering::AcqRel) {
                return Ok(());
            }
            for task in &self.inner.tasks {
                task.abort();
            }
            shared.end_all();
            let channels = shared.take_server_channels().await;
            let timeout = self.inner.settings.command_timeout;
            if self.inner.owned {
                let (p, s) = tokio::join!(
                    tokio::time::timeout(timeout, self.inner.publisher.quit()),
                    tokio::time::timeout(timeout, shared.subscriber.quit()),
                );
                for result in [p, s] {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => return Err(Error::backend(BACKEND, "QUIT", e)),
                        Err(_) => tracing::debug!("QUIT timed out"),
                    }
                }
            } else if !channels.is_empty() {
                let options = Options {
                    timeout: Some(timeout),
                    ..Options::default()
                };
                let client = shared.subscriber.with_options(&options);
                if shared.sharded {
                    // One per command: on a cluster they may live on different shards.
                    for channel in channels {
                        client
                            .sunsubscribe(channel)
                            .await
                            .map_err(|e| Error::backend(BACKEND, "unsubscribe on close", e))?;
                    }
                } else {
                    client
                        .unsubscribe(channels)
                        .await
                        .map_err(|e| Error::backend(BACKEND, "unsubscribe on close", e))?;
                }
            }
            Ok(())
        }
        .boxed()
    }
}
