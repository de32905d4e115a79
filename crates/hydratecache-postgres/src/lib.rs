#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod listener;
mod publisher;
mod subscription;
mod wire;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_core::adapter::LONGEST_DURATION;
use hydratecache_core::{
    Capabilities, Codec, Envelope, Error, Kind, PublishOptions, PublisherId, Result, StartFrom,
    SubscribeOptions, Subscription, Transport, Ttl,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::{mpsc, oneshot};

pub use subscription::ListenerInfo;
pub use wire::{validate_topic, MAX_MESSAGE_SIZE, MAX_NOTIFY_PAYLOAD, MAX_TOPIC_LEN};

/// Re-exported so that callers use the same sqlx as this crate.
pub use sqlx;

/// The backend name in errors and logs.
pub const BACKEND: &str = "postgres";

/// Default buffer of each subscription, in messages; a subscriber that falls
/// further behind misses messages and gets a [`GapReason::Lagged`](hydratecache_core::GapReason::Lagged) gap.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Default bound of each subscription's buffer in bytes (32 MiB), next to
/// its bound in messages.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;

/// Default bound of one request to the server (see
/// [`PostgresBuilder::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `application_name` of the listener connection, as `pg_stat_activity` shows it.
pub const LISTENER_APPLICATION_NAME: &str = "hydratecache-listener";

/// The [`Transport`] over PostgreSQL `LISTEN`/`NOTIFY`.
///
/// Publishes with `SELECT pg_notify($1, $2)` through a pool; all
/// subscriptions of one transport share one listener connection. Cheap to
/// clone (clones share everything). See the [crate documentation](crate) for
/// the configuration, the delivery guarantees and transactional publishing.
#[derive(Clone)]
pub struct PostgresTransport {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    publisher: Arc<publisher::Publisher>,
    owns_pool: bool,
    config: listener::ListenerConfig,
    commands: Mutex<Option<mpsc::UnboundedSender<subscription::Command>>>,
    closed: AtomicBool,
    next_id: AtomicU64,
}

impl std::fmt::Debug for PostgresTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransport")
            .field("owns_pool", &self.inner.owns_pool)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Settings of a [`PostgresTransport`]; start from [`PostgresTransport::builder`].
#[derive(Debug, Clone)]
pub struct PostgresBuilder {
    subscription_capacity: usize,
    max_connections: u32,
    connect_timeout: Duration,
    max_backoff: Duration,
    keepalive: Option<Duration>,
    request_timeout: Duration,
    subscription_buffer_bytes: usize,
}

impl Default for PostgresBuilder {
    fn default() -> Self {
        PostgresBuilder {
            subscription_capacity: DEFAULT_SUBSCRIPTION_CAPACITY,
            max_connections: 10,
            connect_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(30)),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
        }
    }
}

impl PostgresBuilder {
    /// Messages each subscription buffers before it misses some (and gets a
    /// gap); default [`DEFAULT_SUBSCRIPTION_CAPACITY`], at least 1.
    pub fn subscription_capacity(mut self, capacity: usize) -> Self {
        self.subscription_capacity = capacity.max(1);
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

    /// How long to wait for a connection, and for the listener's keepalive
    /// query to answer (default 10 s).
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
    /// with `SELECT 1`, so that a silently dead connection is noticed (and
    /// reported as a gap); `None` turns the check off. Default 30 s.
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval.map(|i| i.min(LONGEST_DURATION));
        self
    }

    /// Connects to `url` (`postgres://user:password@host:port/database?...`).
    pub async fn connect(self, url: &str) -> Result<PostgresTransport> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| Error::backend(BACKEND, "parse the connection URL", e))?;
        self.connect_with(options).await
    }

    /// Connects with sqlx connection options.
    ///
    /// Fails with [`Error::Unsupported`] when the options ask for TLS
    /// (`sslmode=require`, `verify-ca`, `verify-full`) and this crate was
    /// built without a TLS feature; see [`tls_policy`].
    pub async fn connect_with(self, options: PgConnectOptions) -> Result<PostgresTransport> {
        let options = tls_policy(options)?;
        let address = publisher::redacted_address(&options);
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
                let why = publisher::unreachable_reason(&e)
                    .map_or_else(String::new, |why| format!(": {why}"));
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
        Ok(self.build(pool, true))
    }

    /// Uses an existing pool for publishing (the seed's `hcpg.New(pool)`).
    ///
    /// The listener opens its own connection with the pool's connect options,
    /// so it never holds one of the pool's connections. [`Transport::close`]
    /// leaves the pool open.
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
        let health = Arc::new(publisher::Health::default());
        PostgresTransport {
            inner: Arc::new(Inner {
                publisher: Arc::new(publisher::Publisher::new(
                    pool.clone(),
                    self.request_timeout,
                    Arc::clone(&health),
                )),
                pool,
                owns_pool,
                config: listener::ListenerConfig {
                    connect_options,
                    capacity: self.subscription_capacity,
                    max_bytes: self.subscription_buffer_bytes,
                    request_timeout: self.request_timeout,
                    connect_timeout: self.connect_timeout,
                    max_backoff: self.max_backoff,
                    keepalive: self.keepalive,
                    health,
                },
                commands: Mutex::new(None),
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
            }),
        }
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

    /// This transport as an `Arc<dyn Transport>`.
    pub fn into_arc(self) -> Arc<dyn Transport> {
        Arc::new(self)
    }

    /// The pool used for publishing.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// What the listener connection listens on, asked of the server on that
    /// connection (`pg_listening_channels()`): a diagnostic, and how tests
    /// check that dropping the last subscription of a topic `UNLISTEN`s it.
    /// Does not open a connection when there is none.
    pub async fn listener_info(&self) -> Result<ListenerInfo> {
        let commands = {
            let guard = self.commands_slot();
            match guard.as_ref() {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => return Ok(ListenerInfo::default()),
            }
        };
        let (reply, answer) = oneshot::channel();
        commands
            .send(subscription::Command::Info { reply })
            .map_err(|_| self.closed_error())?;
        answer.await.map_err(|_| self.closed_error())?
    }

    /// Publishes `envelope` on `topic` through `executor`, typically the
    /// caller's open transaction (`&mut *tx`) or connection: PostgreSQL
    /// delivers the notification when, and only if, that transaction commits.
    ///
    /// The envelope is sent as it is: its publisher id and sequence are the
    /// caller's ([`publish_value_tx`](Self::publish_value_tx) fills them in).
    /// Oversize envelopes fail with [`Error::PayloadTooLarge`] before anything
    /// is sent.
    pub async fn publish_tx<'c, E>(executor: E, topic: &str, envelope: &Envelope) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        validate_topic(topic)?;
        let text = wire::encode(envelope)?;
        notify(executor, topic, &text).await
    }

    /// Encodes `value` with `codec` and publishes it as an update of `key`
    /// through `executor` (your transaction: delivered if and only if it
    /// commits). Returns the envelope sent.
    ///
    /// The envelope is built as [`Channel`](hydratecache_core::Channel) builds
    /// it (TTL starting now, version from `options`), except that each
    /// transactional publish is its own publisher with sequence 1: a
    /// transaction that rolls back then leaves no hole in anyone's sequence
    /// numbers, and transactions may commit in any order.
    pub async fn publish_value_tx<'c, E, T, C>(
        executor: E,
        topic: &str,
        codec: &C,
        key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
        C: Codec<T> + ?Sized,
    {
        let payload = codec.encode(value).map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })?;
        let envelope = tx_envelope(Kind::Update, key, payload.into(), options);
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }

    /// Publishes a delete (invalidation) of `key` through `executor`, like
    /// [`publish_value_tx`](Self::publish_value_tx) (the TTL is ignored).
    pub async fn delete_tx<'c, E>(
        executor: E,
        topic: &str,
        key: &str,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let envelope = tx_envelope(Kind::Delete, key, bytes::Bytes::new(), options);
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }

    fn commands_slot(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<mpsc::UnboundedSender<subscription::Command>>> {
        // Nothing panics while holding it; recover if something ever did.
        self.inner
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The listener task's command channel, starting the task if needed.
    fn commands(&self) -> Result<mpsc::UnboundedSender<subscription::Command>> {
        let mut slot = self.commands_slot();
        // Checked under the lock: close() takes the channel under it.
        self.check_open()?;
        if let Some(tx) = slot.as_ref().filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::backend(
                BACKEND,
                "subscribe",
                "the listener task needs a Tokio runtime",
            ));
        }
        let tx = listener::spawn(self.inner.config.clone());
        *slot = Some(tx.clone());
        Ok(tx)
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        Ok(())
    }

    fn closed_error(&self) -> Error {
        Error::Closed { backend: BACKEND }
    }
}

/// Whether this build can speak TLS: one of the features `tls-rustls` or
/// `tls-native-tls` is enabled.
pub const TLS_COMPILED: bool = cfg!(any(feature = "tls-rustls", feature = "tls-native-tls"));

/// What [`PostgresBuilder::connect`] does with the URL's `sslmode`:
///
/// - `require`, `verify-ca`, `verify-full`: used as they are when TLS is
///   compiled in ([`TLS_COMPILED`]); refused with [`Error::Unsupported`]
///   naming the features otherwise, before any connection is made.
/// - `prefer` (PostgreSQL's default when the URL says nothing) and `allow`:
///   with TLS compiled in, used as they are (TLS when the server offers it,
///   without any certificate check, else plaintext); without it, plaintext,
///   as sqlx would do silently, with a warning in the log. Either way a
///   connection that must be encrypted needs `require` or `verify-*`.
/// - `disable`: plaintext.
pub fn tls_policy(options: PgConnectOptions) -> Result<PgConnectOptions> {
    use sqlx::postgres::PgSslMode;
    match options.get_ssl_mode() {
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull if !TLS_COMPILED => {
            Err(Error::Unsupported {
                backend: BACKEND,
                what:
                    "TLS (sslmode=require, verify-ca or verify-full) in this build: \
                       enable the `tls-rustls` or `tls-native-tls` feature of hydratecache-postgres",
            })
        }
        PgSslMode::Prefer | PgSslMode::Allow if !TLS_COMPILED => {
            tracing::warn!(
                server = %publisher::redacted_address(&options),
                "sslmode prefer/allow without a TLS feature: connecting in plaintext \
                 (enable `tls-rustls` or `tls-native-tls`, and use sslmode=verify-full, for TLS)"
            );
            Ok(options.ssl_mode(PgSslMode::Disable))
        }
        _ => Ok(options),
    }
}

fn tx_envelope(kind: Kind, key: &str, payload: bytes::Bytes, options: PublishOptions) -> Envelope {
    // Whole microseconds, as the wire carries them: the envelope returned
    // equals the one subscribers receive.
    let now = SystemTime::now();
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| std::time::UNIX_EPOCH + Duration::from_micros(d.as_micros() as u64))
        .unwrap_or(now);
    Envelope {
        kind,
        key: key.to_owned(),
        payload,
        ttl: match kind {
            Kind::Update => options.ttl.map(|duration| Ttl {
                start: now,
                duration,
            }),
            _ => None,
        },
        version: options.version,
        publisher: PublisherId::random(),
        sequence: 1,
        published_at: now,
    }
}

/// `SELECT pg_notify($1, $2)`: channel and payload are bind parameters.
async fn notify<'c, E>(executor: E, topic: &str, text: &str) -> Result<()>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(topic)
        .bind(text)
        .execute(executor)
        .await
        .map(|_| ())
        .map_err(|e| Error::backend(BACKEND, format!("pg_notify on topic {topic:?}"), e))
}

impl Transport for PostgresTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(MAX_MESSAGE_SIZE))
    }

    /// Queues the message before returning the future (see the crate
    /// documentation on ordering): one publisher's messages on a topic are
    /// sent in the order of the calls, whatever order the futures run in.
    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        let queued = self.check_open().and_then(|()| {
            validate_topic(topic)?;
            let text = wire::encode(envelope)?;
            self.inner.publisher.enqueue(topic, envelope, text)
        });
        async move {
            queued?.await.map_err(|_| self.closed_error())??;
            tracing::trace!(topic, key = %envelope.key, "published");
            Ok(())
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
            validate_topic(topic)?;
            match options.start {
                StartFrom::Latest => {}
                _ => {
                    return Err(Error::Unsupported {
                        backend: BACKEND,
                        what: "replay from the earliest message (NOTIFY keeps no history)",
                    })
                }
            }
            let commands = self.commands()?;
            let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = mpsc::channel(self.inner.config.capacity);
            let pending = Arc::new(subscription::PendingGap::default());
            let buffered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            // Created first: if this future is dropped mid-way, the task
            // forgets the subscription (and UNLISTENs if it was the last).
            let guard = subscription::UnsubscribeOnDrop {
                commands: commands.clone(),
                topic: topic.to_owned(),
                id,
            };
            let (reply, answer) = oneshot::channel();
            commands
                .send(subscription::Command::Subscribe {
                    topic: topic.to_owned(),
                    subscriber: subscription::Subscriber {
                        id,
                        tx,
                        pending: Arc::clone(&pending),
                        buffered: Arc::clone(&buffered),
                        max_bytes: self.inner.config.max_bytes,
                    },
                    reply,
                })
                .map_err(|_| self.closed_error())?;
            answer.await.map_err(|_| self.closed_error())??;
            let stream = subscription::SubscriptionStream {
                rx,
                pending,
                buffered,
                _guard: guard,
            };
            Ok(Subscription::new(topic, stream.boxed()))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let commands = {
                let mut slot = self.commands_slot();
                self.inner.closed.store(true, Ordering::Release);
                slot.take()
            };
            // Each step is bounded: a hung server must not hang close().
            let limit = self.inner.config.request_timeout;
            self.inner.publisher.close(limit).await;
            if let Some(commands) = commands {
                let (done, stopped) = oneshot::channel();
                if commands.send(subscription::Command::Close { done }).is_ok() {
                    // The task may be in a request (bounded) before it stops,
                    // and then UNLISTENs and closes (each bounded).
                    let wait = limit.saturating_mul(3);
                    if tokio::time::timeout(wait, stopped).await.is_err() {
                        tracing::warn!("postgres close: the listener did not stop within {wait:?}");
                    }
                }
            }
            if self.inner.owns_pool
                && tokio::time::timeout(limit, self.inner.pool.close())
                    .await
                    .is_err()
            {
                tracing::warn!("postgres close: the pool did not close within {limit:?}");
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> PgConnectOptions {
        PgConnectOptions::from_str(url).expect("a valid URL")
    }

    /// Runs with `--no-default-features` in `cargo xtask itest postgres`:
    /// a URL that asks for TLS is refused, naming the feature to enable.
    #[cfg(not(any(feature = "tls-rustls", feature = "tls-native-tls")))]
    #[tokio::test]
    async fn without_tls_a_url_asking_for_tls_is_refused_naming_the_feature() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u:secret@127.0.0.1:1/db?sslmode={mode}");
            let connecting = PostgresTransport::builder()
                .connect_timeout(Duration::from_millis(100))
                .connect(&url);
            match tokio::time::timeout(Duration::from_secs(30), connecting).await {
                Ok(Err(e @ Error::Unsupported { .. })) => {
                    let text = e.to_string();
                    assert!(text.contains("`tls-rustls`"), "{text}");
                    assert!(text.contains("`tls-native-tls`"), "{text}");
                }
                Ok(Err(e)) => panic!("sslmode={mode} without TLS: {e}"),
                Ok(Ok(_)) => panic!("sslmode={mode} without TLS connected"),
                Err(_) => panic!("sslmode={mode} without TLS: no answer"),
            }
        }
        // prefer (also the default) becomes an explicit plaintext connection.
        for url in [
            "postgres://u@127.0.0.1:1/db?sslmode=prefer",
            "postgres://u@127.0.0.1:1/db",
        ] {
            let checked = tls_policy(options(url)).expect("prefer is accepted");
            assert!(matches!(
                checked.get_ssl_mode(),
                sqlx::postgres::PgSslMode::Disable
            ));
        }
    }

    #[cfg(any(feature = "tls-rustls", feature = "tls-native-tls"))]
    #[test]
    fn with_tls_every_sslmode_passes_through() {
        use sqlx::postgres::PgSslMode;
        for (mode, expected) in [
            ("prefer", PgSslMode::Prefer),
            ("require", PgSslMode::Require),
            ("verify-full", PgSslMode::VerifyFull),
            ("disable", PgSslMode::Disable),
        ] {
            let url = format!("postgres://u@127.0.0.1:1/db?sslmode={mode}");
            let checked = tls_policy(options(&url)).expect("accepted");
            assert_eq!(
                std::mem::discriminant(&checked.get_ssl_mode()),
                std::mem::discriminant(&expected)
            );
        }
    }
}
