//! The settings of a transport and the ways to make one.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::adapter::{Fanout, LONGEST_DURATION};
use hydratecache_core::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::listener::ListenerConfig;
use crate::outbox::{OutboxSettings, PostgresOutboxTransport};
use crate::publisher::{redacted_address, unreachable_reason, Health, Publisher};
use crate::transport::PostgresTransport;
use crate::{
    tls_policy, BACKEND, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_REQUEST_TIMEOUT, DEFAULT_SUBSCRIPTION_BUFFER, DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
    LISTENER_APPLICATION_NAME,
};

/// Settings of a [`PostgresTransport`]; start from [`PostgresTransport::builder`].
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    subscription_buffer: usize,
    max_connections: u32,
    connect_timeout: Duration,
    max_backoff: Duration,
    keepalive: Option<Duration>,
    probe_timeout: Duration,
    request_timeout: Duration,
    subscription_buffer_bytes: usize,
    outbox_retention: Option<Duration>,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            keepalive: Some(DEFAULT_KEEPALIVE_INTERVAL),
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            outbox_retention: Some(crate::DEFAULT_OUTBOX_RETENTION),
        }
    }
}

impl PostgresBuilder {
    /// Messages each subscription buffers before it misses some (and gets a
    /// gap); default [`DEFAULT_SUBSCRIPTION_BUFFER`], at least 1.
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages.max(1);
        self
    }

    /// Bytes each subscription buffers before it misses messages (and gets a
    /// [`Lagged`](hydratecache_core::GapReason::Lagged) gap with the count);
    /// default [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`]. A message larger than
    /// the bound is still delivered when the buffer is empty.
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.subscription_buffer_bytes = bytes;
        self
    }

    /// Longest wait for one request to the server: a publish (`pg_notify`,
    /// including waiting for a pooled connection), the listener's
    /// `LISTEN`/`UNLISTEN`, and each step of `close()`. Default
    /// [`DEFAULT_REQUEST_TIMEOUT`]. A hung server or a half-open connection
    /// then gives an error (or, on the listener, a reconnect and a gap) within
    /// this bound instead of waiting for TCP to give up.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Size of the publishing pool that [`connect`](Self::connect) creates
    /// (default 10); a pool given to [`from_pool`](Self::from_pool) keeps its own.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long to wait for a connection (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.min(LONGEST_DURATION);
        self
    }

    /// Longest wait between two attempts to re-establish the listener
    /// connection (default 5 s; the first retry is immediate).
    pub fn max_reconnect_delay(mut self, delay: Duration) -> Self {
        self.max_backoff = delay.min(LONGEST_DURATION);
        self
    }

    /// After this long without traffic the listener connection is checked
    /// with `SELECT 1`, so that a dead or half-open connection is noticed:
    /// one that does not answer within the [`probe_timeout`](Self::probe_timeout)
    /// is dropped, its subscriptions get
    /// [`Event::Interrupted`](hydratecache_core::Event::Interrupted) at that
    /// moment and a gap once listening again. `None` turns the check off
    /// (sqlx sets no TCP keepalive: a silently dead connection is then never
    /// noticed). Default [`DEFAULT_KEEPALIVE_INTERVAL`].
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval.map(|i| i.min(LONGEST_DURATION));
        self
    }

    /// How long the listener's keepalive query may take (default
    /// [`DEFAULT_PROBE_TIMEOUT`]). A dead listener connection is noticed
    /// within the keepalive interval plus this.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = timeout.clamp(Duration::from_millis(1), LONGEST_DURATION);
        self
    }

    /// Outbox mode: rows committed longer ago than this are deleted (every
    /// quarter of it, at most every 5 minutes), which bounds how long a
    /// subscriber can be cut off and still catch up; `None` keeps every row
    /// (trim with [`PostgresOutboxTransport::trim`] yourself). Default
    /// [`DEFAULT_OUTBOX_RETENTION`](crate::DEFAULT_OUTBOX_RETENTION). It must
    /// exceed your longest transaction that publishes.
    pub fn outbox_retention(mut self, retention: Option<Duration>) -> Self {
        self.outbox_retention = retention.map(|r| r.min(LONGEST_DURATION));
        self
    }

    /// Connects to `url` (`postgres://user:password@host:port/database?...`).
    pub async fn connect(self, url: &str) -> Result<PostgresTransport> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::backend(BACKEND, "parse the connection URL", e))?;
        self.connect_with(options).await
    }

    /// Connects in outbox mode ([`PostgresOutboxTransport`]): publishes are
    /// rows of an outbox table, and subscriptions resume after an outage.
    /// The tables must exist ([`PostgresOutboxTransport::migrate`]). Of
    /// this builder's options it uses the pool size, the timeouts, the
    /// keepalive interval (how often a subscription reads without a
    /// wake-up, at most every second), the probe timeout (the bound on each
    /// of those reads), the reconnect delay and the retention. Its
    /// connections are named [`OUTBOX_APPLICATION_NAME`](crate::OUTBOX_APPLICATION_NAME).
    pub async fn connect_outbox(self, url: &str) -> Result<PostgresOutboxTransport> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::backend(BACKEND, "parse the connection URL", e))?;
        let options = tls_policy(options)?.application_name(crate::OUTBOX_APPLICATION_NAME);
        let pool = self.pool(options).await?;
        Ok(self.outbox(pool, true))
    }

    /// Outbox mode through an existing pool, left open by `close`.
    pub fn outbox_from_pool(self, pool: PgPool) -> PostgresOutboxTransport {
        self.outbox(pool, false)
    }

    fn outbox(self, pool: PgPool, owns_pool: bool) -> PostgresOutboxTransport {
        let settings = OutboxSettings {
            request_timeout: self.request_timeout,
            keepalive: self.keepalive,
            probe_timeout: self.probe_timeout,
            max_backoff: self.max_backoff,
            retention: self.outbox_retention,
        };
        PostgresOutboxTransport::new(pool, owns_pool, settings)
    }

    /// Connects with sqlx connection options.
    ///
    /// Fails with [`Error::Unsupported`] when the options ask for TLS
    /// (`sslmode=require`, `verify-ca`, `verify-full`) and this crate was
    /// built without a TLS feature; see [`tls_policy`].
    pub async fn connect_with(self, options: PgConnectOptions) -> Result<PostgresTransport> {
        let options = tls_policy(options)?;
        let pool = self.pool(options).await?;
        Ok(self.build(pool, true))
    }

    /// A pool of [`max_connections`](Self::max_connections), connected.
    async fn pool(&self, options: PgConnectOptions) -> Result<PgPool> {
        let address = redacted_address(&options);
        let pool = match PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => pool,
            // The pool retries a refused connection until its timeout and
            // then only says "pool timed out": one direct attempt says why.
            Err(sqlx::Error::PoolTimedOut) => {
                let e = match tokio::time::timeout(
                    self.connect_timeout,
                    <sqlx::PgConnection as sqlx::Connection>::connect_with(&options),
                )
                .await
                {
                    Ok(Err(e)) => e,
                    _ => sqlx::Error::PoolTimedOut,
                };
                let why = unreachable_reason(&e).map_or_else(String::new, |why| format!(": {why}"));
                return Err(Error::backend(
                    BACKEND,
                    format!(
                        "connect to {address} (gave up after {:?}{why})",
                        self.connect_timeout
                    ),
                    e,
                ));
            }
            Err(e) => return Err(Error::backend(BACKEND, format!("connect to {address}"), e)),
        };
        Ok(pool)
    }

    /// Uses an existing pool for publishing.
    ///
    /// The listener opens its own connection with the pool's connect options,
    /// so it never holds one of the pool's connections.
    /// [`Transport::close`](hydratecache_core::Transport::close) leaves the
    /// pool open.
    ///
    /// The pool's options are not checked against [`tls_policy`]: a pool that
    /// asks for TLS without a TLS feature fails each connection, and each
    /// publish then says so.
    pub fn from_pool(self, pool: PgPool) -> PostgresTransport {
        self.build(pool, false)
    }

    fn build(self, pool: PgPool, owns_pool: bool) -> PostgresTransport {
        let connect_options = pool
            .connect_options()
            .as_ref()
            .clone()
            .application_name(LISTENER_APPLICATION_NAME);
        let health = Arc::new(Health::default());
        let publisher = Publisher::new(pool.clone(), self.request_timeout, Arc::clone(&health));
        let listener = ListenerConfig {
            connect_options,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            max_backoff: self.max_backoff,
            keepalive: self.keepalive,
            probe_timeout: self.probe_timeout,
            health,
        };
        let fanout = Fanout::new(self.subscription_buffer, self.subscription_buffer_bytes);
        PostgresTransport::new(pool, owns_pool, publisher, listener, fanout)
    }
}

impl PostgresTransport {
    /// Settings other than the defaults.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: &str) -> Result<PostgresTransport> {
        PostgresBuilder::default().connect(url).await
    }

    /// Publishes through an existing pool, with the default settings.
    pub fn from_pool(pool: PgPool) -> PostgresTransport {
        PostgresBuilder::default().from_pool(pool)
    }
}
