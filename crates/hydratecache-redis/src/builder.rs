//! [`RedisBuilder`]: the options of a transport, then how to connect it.

use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::{Config, ReconnectPolicy};
use fred::types::Builder;
use hydratecache_core::adapter::LONGEST_DURATION;
use hydratecache_core::{Error, Result};

use crate::settings::{Settings, MAX_BULK_LEN};
use crate::streams::RedisStreamsTransport;
use crate::transport::RedisTransport;
use crate::BACKEND;

/// The reconnect policy set on clients this crate builds (and on a fred
/// [`Builder`] without one): retry forever, 100 ms doubling up to 2 s.
pub fn default_reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, 100, 2_000, 2)
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
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE); at most
    /// [`MAX_BULK_LEN`], larger values are lowered to it). Keep it under the
    /// servers' `client-output-buffer-limit pubsub` hard limit.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.settings.max_message_size = bytes.min(MAX_BULK_LEN);
        self
    }

    /// Messages one subscription may have waiting before further ones are
    /// dropped and counted in a gap (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER`](crate::DEFAULT_SUBSCRIPTION_BUFFER)).
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.settings.subscription_buffer = messages.max(1);
        self
    }

    /// Message bytes (encoded envelopes) one subscription may have waiting
    /// before further messages are dropped and counted in a gap (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`](crate::DEFAULT_SUBSCRIPTION_BUFFER_BYTES)).
    /// A single message larger than this is still taken when nothing else
    /// waits.
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.settings.subscription_buffer_bytes = bytes.max(1);
        self
    }

    /// Capacity of fred's message broadcast channel for the clients built here
    /// (default
    /// [`DEFAULT_BROADCAST_CAPACITY`](crate::DEFAULT_BROADCAST_CAPACITY)). When
    /// the dispatcher falls this far behind, every subscription gets a gap.
    pub fn broadcast_capacity(mut self, messages: usize) -> Self {
        self.settings.broadcast_capacity = messages.max(1);
        self
    }

    /// Bound on each PUBLISH, SUBSCRIBE and UNSUBSCRIBE, fred's retries and the
    /// wait for a reconnect included (default
    /// [`DEFAULT_COMMAND_TIMEOUT`](crate::DEFAULT_COMMAND_TIMEOUT)). A command
    /// that timed out while disconnected is not sent later.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.settings.command_timeout = timeout;
        self
    }

    /// Bound on the first connection of each client (default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT)).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// After this long, the subscriber connection is pinged (default
    /// [`DEFAULT_KEEPALIVE_INTERVAL`](crate::DEFAULT_KEEPALIVE_INTERVAL)),
    /// so that a dead or half-open connection is noticed: one that does not
    /// answer within the [`probe_timeout`](Self::probe_timeout) is
    /// reconnected, and its subscriptions get
    /// [`Event::Interrupted`](hydratecache_core::Event::Interrupted) at that
    /// moment and a gap once subscribed again. A connection fred sees fail
    /// is reported at once, whatever this. `None` turns the pings off (fred
    /// sets no TCP keepalive by default: a silently dead subscriber
    /// connection is then never noticed).
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.settings.keepalive =
            interval.map(|i| i.clamp(Duration::from_millis(1), LONGEST_DURATION));
        self
    }

    /// How long a keepalive ping may take (default
    /// [`DEFAULT_PROBE_TIMEOUT`](crate::DEFAULT_PROBE_TIMEOUT)). A dead
    /// subscriber connection is noticed within the keepalive interval plus
    /// this.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.settings.probe_timeout = timeout.clamp(Duration::from_millis(1), LONGEST_DURATION);
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

    /// Streams mode: the cap on each stream's length, trimmed approximately
    /// (`XADD ... MAXLEN ~ n`) on every publish (default
    /// [`DEFAULT_STREAM_MAX_LEN`](crate::DEFAULT_STREAM_MAX_LEN); at least 1).
    /// A subscriber cut off while more than this many messages were
    /// published gets a gap when it reads again; size it to the publish rate
    /// times the longest outage to ride out, and to the memory it costs.
    pub fn stream_max_len(mut self, entries: u64) -> Self {
        self.settings.stream_max_len = entries.max(1);
        self
    }

    /// Streams mode: entries a subscription reads per step (default
    /// [`DEFAULT_STREAM_READ_COUNT`](crate::DEFAULT_STREAM_READ_COUNT); at
    /// least 1).
    pub fn stream_read_count(mut self, entries: u64) -> Self {
        self.settings.stream_read_count = entries.max(1);
        self
    }

    /// Connects in streams mode ([`RedisStreamsTransport`]): topics are
    /// Redis Streams, and a subscription resumes from its position after a
    /// lost connection. Of this builder's options it uses the message size,
    /// the command and connect timeouts, the keepalive interval (how long
    /// each blocking read waits) and the probe timeout (its slack before
    /// the connection is given up), and the stream options; the Pub/Sub
    /// buffers and `sharded` do not apply.
    pub async fn connect_streams(self, url: &str) -> Result<RedisStreamsTransport> {
        crate::tls::check_url(url)?;
        let config =
            Config::from_url(url).map_err(|e| Error::backend(BACKEND, "parse the Redis URL", e))?;
        self.connect_streams_with(config).await
    }

    /// [`connect_streams`](Self::connect_streams) with a fred [`Config`].
    pub async fn connect_streams_with(self, config: Config) -> Result<RedisStreamsTransport> {
        let mut builder = Builder::from_config(config);
        builder.set_policy(default_reconnect_policy());
        let publisher = builder
            .build()
            .map_err(|e| Error::backend(BACKEND, "build the publishing client", e))?;
        RedisStreamsTransport::start(self.settings, publisher).await
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
        self.connect_with(config).await
    }

    /// Connects with a fred [`Config`] (TLS, credentials, cluster or
    /// sentinel servers, RESP version...).
    pub async fn connect_with(self, config: Config) -> Result<RedisTransport> {
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
        RedisTransport::start(self.settings, publisher, subscriber, true).await
    }

    /// Uses clients built elsewhere (connected or not; unconnected ones are
    /// connected here). They must use separate connections: a RESP2 connection
    /// in subscribed mode cannot publish.
    ///
    /// The subscriber needs a reconnect policy (fred's `Builder::set_policy`):
    /// without one it stays down after a disconnect and this returns an error.
    /// Give it a `broadcast_channel_capacity` of at least
    /// [`DEFAULT_BROADCAST_CAPACITY`](crate::DEFAULT_BROADCAST_CAPACITY)
    /// (fred's default of 32 loses bursts; a warning is logged).
    /// [`close`](hydratecache_core::Transport::close) unsubscribes but leaves
    /// these clients connected.
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
        RedisTransport::start(self.settings, publisher, subscriber, false).await
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
}
