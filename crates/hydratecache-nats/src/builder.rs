//! [`NatsBuilder`]: the settings of a [`NatsTransport`](crate::NatsTransport),
//! and the checks of server URLs before connecting.

use std::time::Duration;

use async_nats::{ConnectOptions, ServerAddr, ToServerAddrs};
use hydratecache_core::{Error, Result};

use crate::subject::check_tokens;
use crate::BACKEND;

/// Default bound on one publish: enqueue plus flush to the server.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Default bound on the server's confirmation of a new subscription.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// Default number of received messages a subscription buffers before it
/// reports a [`GapReason::Lagged`](hydratecache_core::GapReason::Lagged) gap
/// (the same as async-nats' own per-subscription buffer).
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 65_536;
/// Default bound on the payload bytes a subscription buffers (32 MiB): past
/// it the subscription reports a
/// [`GapReason::Lagged`](hydratecache_core::GapReason::Lagged) gap, however
/// few the messages.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;
/// How often a transport built on a client made elsewhere checks the
/// client's connection count for reconnects (it cannot receive the client's
/// connection events).
pub const DEFAULT_RECONNECT_CHECK: Duration = Duration::from_millis(250);
/// Default interval of the client's pings to the server (async-nats' own
/// default is 60 s): a silent connection is pinged after this long, and
/// dropped on the third unanswered ping, so a dead or half-open connection
/// is noticed within three times this (450 ms).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_millis(150);
/// The same check for a transport that receives connection events (a safety
/// net only).
pub(crate) const EVENT_RECONNECT_CHECK: Duration = Duration::from_secs(1);
/// Settings for a [`NatsTransport`](crate::NatsTransport); finish with [`connect`](Self::connect),
/// [`connect_with`](Self::connect_with) or
/// [`from_client`](Self::from_client).
///
/// ```no_run
/// # async fn f() -> Result<(), hydratecache_core::Error> {
/// use std::time::Duration;
/// let transport = hydratecache_nats::NatsTransport::builder()
///     .subject_prefix("cache")
///     .publish_timeout(Duration::from_secs(2))
///     .connect("nats://127.0.0.1:4222")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsBuilder {
    pub(crate) subject_prefix: Option<String>,
    pub(crate) publish_timeout: Duration,
    confirm_timeout: Duration,
    subscription_buffer: usize,
    subscription_buffer_bytes: usize,
    pub(crate) reconnect_check: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) jetstream_heartbeat: Duration,
}

impl Default for NatsBuilder {
    fn default() -> Self {
        NatsBuilder {
            subject_prefix: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            reconnect_check: DEFAULT_RECONNECT_CHECK,
            ping_interval: Some(DEFAULT_PING_INTERVAL),
            jetstream_heartbeat: crate::DEFAULT_JETSTREAM_HEARTBEAT,
        }
    }
}

impl NatsBuilder {
    /// Puts every topic under `prefix`: topic `users` becomes the subject
    /// `<prefix>.users` (for example to match account permissions). The
    /// prefix follows the topic rules ([`validate_topic`](crate::validate_topic)).
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = Some(prefix.into());
        self
    }

    /// Bound on one publish (default [`DEFAULT_PUBLISH_TIMEOUT`]); past it the
    /// publish fails.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Bound on the server's confirmation of a new subscription (default
    /// [`DEFAULT_CONFIRM_TIMEOUT`]); past it `subscribe` fails.
    pub fn confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// Messages a subscription buffers (at least 1; default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER`]); a subscriber further behind gets a
    /// `Lagged` gap with the number missed.
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages.max(1);
        self
    }

    /// Payload bytes a subscription buffers (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`], 32 MiB); a subscriber further
    /// behind gets a `Lagged` gap with the number missed. A single message
    /// larger than the bound still passes when nothing else is buffered.
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.subscription_buffer_bytes = bytes;
        self
    }

    /// How often a transport made [`from_client`](Self::from_client) checks
    /// for reconnects while its subscriptions are idle (default
    /// [`DEFAULT_RECONNECT_CHECK`]). A message that arrives after a reconnect
    /// is always preceded by its gap, whatever this interval.
    pub fn reconnect_check(mut self, interval: Duration) -> Self {
        self.reconnect_check = interval.max(Duration::from_millis(10));
        self
    }

    /// The ping interval set on the client [`connect`](Self::connect) and
    /// [`connect_with`](Self::connect_with) make (default
    /// [`DEFAULT_PING_INTERVAL`], at least 10 ms); `None` keeps the one in the
    /// `ConnectOptions`. A connection that does not answer three pings in a
    /// row is dropped: its subscriptions get
    /// [`Event::Interrupted`](hydratecache_core::Event::Interrupted) at that
    /// moment, and a gap once reconnected. A client passed to
    /// [`from_client`](Self::from_client) keeps its own.
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval.map(|i| i.max(Duration::from_millis(10)));
        self
    }

    /// JetStream mode: the server's idle heartbeat on each subscription's
    /// pulls (default [`DEFAULT_JETSTREAM_HEARTBEAT`](crate::DEFAULT_JETSTREAM_HEARTBEAT),
    /// 100 ms to 10 s); two missed, and the subscription is interrupted.
    pub fn jetstream_heartbeat(mut self, interval: Duration) -> Self {
        self.jetstream_heartbeat =
            interval.clamp(Duration::from_millis(100), Duration::from_secs(10));
        self
    }

    pub(crate) fn config(&self, reconnect_check: Duration) -> Result<Config> {
        if let Some(prefix) = &self.subject_prefix {
            check_tokens(prefix).map_err(|reason| {
                Error::invalid_topic(BACKEND, prefix.clone(), format!("subject prefix: {reason}"))
            })?;
        }
        Ok(Config {
            subject_prefix: self.subject_prefix.clone(),
            publish_timeout: self.publish_timeout,
            confirm_timeout: self.confirm_timeout,
            subscription_buffer: self.subscription_buffer,
            subscription_buffer_bytes: self.subscription_buffer_bytes,
            reconnect_check,
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) subject_prefix: Option<String>,
    pub(crate) publish_timeout: Duration,
    pub(crate) confirm_timeout: Duration,
    pub(crate) subscription_buffer: usize,
    pub(crate) subscription_buffer_bytes: usize,
    pub(crate) reconnect_check: Duration,
}

impl Config {
    /// The defaults, for a transport on a client built elsewhere.
    pub(crate) fn for_client() -> Config {
        Config {
            subject_prefix: None,
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            reconnect_check: DEFAULT_RECONNECT_CHECK,
        }
    }
}

/// The server addresses of `addrs`, refusing those that would not be what
/// they say, and `options` with TLS required when a `tls://` URL asks for it.
pub(crate) fn checked_addrs(
    addrs: impl ToServerAddrs,
    options: ConnectOptions,
) -> Result<(Vec<ServerAddr>, ConnectOptions)> {
    let addrs: Vec<ServerAddr> = addrs
        .to_server_addrs()
        .map_err(|e| Error::backend(BACKEND, "parse the server URL", e))?
        .collect();
    // Without async-nats' websockets feature a ws:// or wss:// URL is
    // dialled as plain TCP, and never upgraded to TLS (a websocket
    // address is exempt from it): a wss:// URL would go out in plaintext.
    if let Some(ws) = addrs.iter().find(|a| a.is_websocket()) {
        return Err(Error::backend(
            BACKEND,
            "parse the server URL",
            format!(
                "{}:// (NATS over websockets) is not supported: this build of async-nats \
                     has no websockets feature, and it would connect in plain TCP without \
                     TLS; use nats:// or tls://",
                ws.scheme()
            ),
        ));
    }
    // async-nats upgrades to TLS for a `tls://` URL, but not for servers
    // it discovers from the cluster's INFO (plain host:port): after a
    // failover to one that does not require TLS, the connection would
    // go on in plaintext. A `tls://` URL means TLS on every connection.
    let options = if addrs.iter().any(ServerAddr::tls_required) {
        options.require_tls(true)
    } else {
        options
    };
    Ok((addrs, options))
}
