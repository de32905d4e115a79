//! The one listener connection of a transport and the task that drives it.
//!
//! The task owns a `PgListener` and the subscriptions. It runs `LISTEN` once
//! per topic (on the first subscription) and `UNLISTEN` when the last one is
//! dropped, reads notifications with `try_recv`, decodes each once and hands
//! it to every subscription of its channel through a bounded buffer.
//!
//! Losses become gaps:
//! - sqlx's `try_recv` returns `Ok(None)` when the connection was lost (and
//!   `recv` would reconnect silently, so it is never used). Eager reconnect is
//!   off, so the loss is reported without an await in between and cannot be
//!   swallowed by a cancelled `try_recv`. The task then drops that listener,
//!   connects a new one, `LISTEN`s every topic again, and only then puts a
//!   [`GapReason::Reconnected`] gap in every subscription: everything
//!   published after the gap is delivered.
//! - any other error from the listener, a failed `LISTEN`/`UNLISTEN` for a
//!   reason other than a server error, a `LISTEN`/`UNLISTEN` (or info query)
//!   that does not answer within the request timeout, or a keepalive query
//!   that does not answer in time is treated the same way: a hung server or
//!   a half-open connection costs a reconnect and a gap, never a stuck task.
//! - a subscription whose buffer is full (in messages, or in bytes of the
//!   envelopes it holds) misses the message; the count is kept and surfaces
//!   as a [`GapReason::Lagged`] gap before its next message, or as soon as it
//!   has read what is buffered.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::{Envelope, EnvelopeError, Error, Event, Gap, GapReason, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::subscription::{Command, ListenerInfo, Subscriber};
use crate::{wire, BACKEND};

/// Settings of the listener task.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    pub(crate) connect_options: PgConnectOptions,
    pub(crate) capacity: usize,
    pub(crate) max_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) keepalive: Option<Duration>,
    /// Told when the listener connects: the server is reachable again.
    pub(crate) health: Arc<crate::publisher::Health>,
}

/// Starts the task; it runs until closed or until every sender is dropped.
pub(crate) fn spawn(config: ListenerConfig) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = Task {
        config: Arc::new(config),
        commands: rx,
        topics: HashMap::new(),
        waiting: VecDeque::new(),
        listener: None,
        gap_owed: false,
        failures: 0,
    };
    tokio::spawn(task.run());
    tx
}

struct Connected {
    listener: PgListener,
    pool: PgPool,
}

struct Task {
    config: Arc<ListenerConfig>,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Every topic listened on (or to listen on again), with its subscribers.
    topics: HashMap<String, Vec<Subscriber>>,
    /// Commands that need the connection, kept while it is being re-established.
    waiting: VecDeque<Command>,
    listener: Option<Connected>,
    /// The connection was lost with subscriptions open: they get a gap once
    /// the new connection listens.
    gap_owed: bool,
    failures: u32,
}

enum Flow {
    Continue,
    Stop(Option<oneshot::Sender<()>>),
}

fn connection_lost(e: &sqlx::Error) -> bool {
    // A database error is the server's answer on a live connection; anything
    // else (I/O, protocol, pool) leaves the connection in doubt.
    !matches!(e, sqlx::Error::Database(_))
}

/// `request` bounded by `limit`; running out of time is an I/O error, which
/// [`connection_lost`] treats as a lost connection (a hung server or a
/// half-open connection), so the caller reconnects instead of waiting.
async fn bounded<T>(
    limit: Duration,
    request: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, sqlx::Error> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from the server within {limit:?}"),
        ))),
    }
}

fn backend(context: &str, e: sqlx::Error) -> Error {
    Error::backend(BACKEND, context, e)
}

impl Task {
    async fn run(mut self) {
        loop {
            let flow = if self.listener.is_some() {
                self.online().await
            } else {
                self.offline().await
            };
            if let Flow::Stop(done) = flow {
                self.shutdown().await;
                if let Some(done) = done {
                    let _ = done.send(());
                }
                return;
            }
        }
    }

    async fn online(&mut self) -> Flow {
        let Some(conn) = self.listener.as_mut() else {
            return Flow::Continue;
        };
        let keepalive = self.config.keepalive.unwrap_or(Duration::from_secs(86_400));
        tokio::select! {
            command = self.commands.recv() => match command {
                None => return Flow::Stop(None),
                Some(Command::Close { done }) => return Flow::Stop(Some(done)),
                Some(command) => self.handle_online(command).await,
            },
            // Cancel-safe: reading a message is (sqlx keeps partial input
            // buffered), and with eager reconnect off the loss is returned
            // without an await after it is detected.
            received = conn.listener.try_recv() => match received {
                Ok(Some(notification)) => self.dispatch(&notification),
                Ok(None) => self.lost(&"the connection was closed"),
                Err(e) => self.lost(&e),
            },
            () = tokio::time::sleep(keepalive), if self.config.keepalive.is_some() => self.ping().await,
        }
        Flow::Continue
    }

    /// Checks an idle connection: a half-open TCP connection never reports
    /// its loss on its own.
    async fn ping(&mut self) {
        let Some(conn) = self.listener.as_mut() else {
            return;
        };
        let ping = sqlx::query("SELECT 1").execute(&mut conn.listener);
        match tokio::time::timeout(self.config.connect_timeout, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.lost(&e),
            Err(_) => self.lost(&"the keepalive query timed out"),
        }
    }

    fn lost(&mut self, why: &dyn std::fmt::Display) {
        tracing::warn!(
            topics = self.topics.len(),
            "postgres listener connection lost ({why}); reconnecting"
        );
        // Dropping a listener whose connection is still open sends
        // `UNLISTEN *` on it from a background task (sqlx's Drop).
        self.listener = None;
        if !self.topics.is_empty() {
            self.gap_owed = true;
        }
    }

    fn dispatch(&mut self, notification: &PgNotification) {
        // sqlx's accessors unwrap a UTF-8 conversion. PostgreSQL validates
        // the text it converts to the client's UTF8 (on PostgreSQL 15 a
        // non-UTF-8 payload in a SQL_ASCII database ends the listener's
        // session instead: a reconnect gap), but never panic on it anyway.
        let channel = match catch_unwind(AssertUnwindSafe(|| notification.channel().to_owned())) {
            Ok(channel) => channel,
            Err(_) => {
                tracing::warn!("notification on a channel name that is not UTF-8: ignored");
                return;
            }
        };
        let Some(subscribers) = self.topics.get(&channel) else {
            // Arrived just before an UNLISTEN took effect.
            return;
        };
        let decoded = match catch_unwind(AssertUnwindSafe(|| notification.payload().to_owned())) {
            Ok(payload) => wire::decode(&payload),
            // Not UTF-8, so not base64: not an envelope.
            Err(_) => Err(EnvelopeError::BadMagic { found: 0 }),
        };
        if let Err(e) = &decoded {
            tracing::warn!(topic = %channel, error = %e, "malformed message");
        }
        for subscriber in subscribers {
            subscriber.send(item(&channel, &decoded));
        }
    }

    fn gap_all(&mut self) {
        let gap = Gap::new(GapReason::Reconnected);
        for subscriber in self.topics.values().flatten() {
            subscriber.gap(&gap);
        }
        tracing::warn!(
            topics = self.topics.len(),
            "postgres listener reconnected and listening again: gap on every subscription"
        );
    }

    async fn handle_online(&mut self, command: Command) {
        let Some(conn) = self.listener.as_mut() else {
            self.handle_offline(command);
            return;
        };
        match command {
            Command::Subscribe {
                topic,
                subscriber,
                reply,
            } => {
                if reply.is_closed() {
                    return; // subscribe() was cancelled
                }
                if let Some(subscribers) = self.topics.get_mut(&topic) {
                    subscribers.push(subscriber);
                    let _ = reply.send(Ok(()));
                    return;
                }
                // PgListener::listen sends `LISTEN "<name>"` with every `"`
                // doubled: the name cannot leave the quoted identifier.
                let limit = self.config.request_timeout;
                match bounded(limit, conn.listener.listen(&topic)).await {
                    Ok(()) => {
                        tracing::debug!(%topic, "LISTEN");
                        self.topics.insert(topic, vec![subscriber]);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) if connection_lost(&e) => {
                        self.lost(&e);
                        self.waiting.push_back(Command::Subscribe {
                            topic,
                            subscriber,
                            reply,
                        });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(backend(&format!("LISTEN on {topic:?}"), e)));
                    }
                }
            }
            Command::Unsubscribe { topic, id } => {
                if !remove(&mut self.topics, &topic, id) {
                    return;
                }
                let limit = self.config.request_timeout;
                match bounded(limit, conn.listener.unlisten(&topic)).await {
                    Ok(()) => tracing::debug!(%topic, "UNLISTEN"),
                    Err(e) if connection_lost(&e) => self.lost(&e),
                    Err(e) => tracing::warn!(%topic, error = %e, "UNLISTEN failed"),
                }
            }
            Command::Info { reply } => {
                let query = sqlx::query_as::<_, (i32, Vec<String>)>(
                    "SELECT pg_backend_pid(), ARRAY(SELECT c FROM pg_listening_channels() AS c ORDER BY 1)",
                )
                .fetch_one(&mut conn.listener);
                match bounded(self.config.request_timeout, query).await {
                    Ok((pid, channels)) => {
                        let _ = reply.send(Ok(ListenerInfo {
                            backend_pid: Some(pid),
                            channels,
                        }));
                    }
                    Err(e) if connection_lost(&e) => {
                        self.lost(&e);
                        self.waiting.push_back(Command::Info { reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(backend("ask the listener's channels", e)));
                    }
                }
            }
            // Handled by the caller.
            Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }

    fn handle_offline(&mut self, command: Command) {
        match command {
            // Answered once the connection is back (or fails).
            command @ Command::Subscribe { .. } => self.waiting.push_back(command),
            Command::Unsubscribe { topic, id } => {
                // Not listening: nothing to undo on the server.
                remove(&mut self.topics, &topic, id);
            }
            Command::Info { reply } => {
                let _ = reply.send(Ok(ListenerInfo::default()));
            }
            Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }

    fn backoff(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let exp = self.failures.min(16);
        Duration::from_millis(50u64.saturating_mul(1 << exp)).min(self.config.max_backoff)
    }

    async fn offline(&mut self) -> Flow {
        if self.topics.is_empty() && self.waiting.is_empty() {
            // Nothing to listen for: connect when asked to.
            self.failures = 0;
            return match self.commands.recv().await {
                None => Flow::Stop(None),
                Some(Command::Close { done }) => Flow::Stop(Some(done)),
                Some(command) => {
                    self.handle_offline(command);
                    Flow::Continue
                }
            };
        }
        let delay = self.backoff();
        let channels: Vec<String> = self.topics.keys().cloned().collect();
        let config = Arc::clone(&self.config);
        let attempt = async move {
            tokio::time::sleep(delay).await;
            let connecting = connect(&config, &channels);
            match tokio::time::timeout(config.connect_timeout.saturating_mul(2), connecting).await {
                Ok(result) => result.map(|conn| (conn, channels)),
                Err(_) => Err(sqlx::Error::PoolTimedOut),
            }
        };
        tokio::pin!(attempt);
        let result = loop {
            tokio::select! {
                result = &mut attempt => break result,
                command = self.commands.recv() => match command {
                    None => return Flow::Stop(None),
                    Some(Command::Close { done }) => return Flow::Stop(Some(done)),
                    Some(command) => self.handle_offline(command),
                },
            }
        };
        match result {
            Ok((conn, listened)) => {
                self.failures = 0;
                self.config.health.up();
                self.listener = Some(conn);
                tracing::info!(topics = self.topics.len(), "postgres listener connected");
                // Topics whose last subscription went while connecting.
                let stale: Vec<String> = listened
                    .into_iter()
                    .filter(|t| !self.topics.contains_key(t))
                    .collect();
                for topic in &stale {
                    let Some(conn) = self.listener.as_mut() else {
                        break;
                    };
                    let limit = self.config.request_timeout;
                    if let Err(e) = bounded(limit, conn.listener.unlisten(topic)).await {
                        if connection_lost(&e) {
                            self.lost(&e);
                        }
                    }
                }
                if self.listener.is_none() {
                    return Flow::Continue;
                }
                if self.gap_owed {
                    self.gap_owed = false;
                    self.gap_all();
                }
                while self.listener.is_some() {
                    let Some(command) = self.waiting.pop_front() else {
                        break;
                    };
                    self.handle_online(command).await;
                }
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                tracing::warn!(
                    error = %e,
                    attempt = self.failures,
                    topics = self.topics.len(),
                    "cannot connect the postgres listener; retrying"
                );
                // Those waiting learn it now rather than after the outage.
                for command in self.waiting.drain(..) {
                    let err = || {
                        Error::backend(BACKEND, "connect the listener connection", e.to_string())
                    };
                    match command {
                        Command::Subscribe { reply, .. } => {
                            let _ = reply.send(Err(err()));
                        }
                        Command::Info { reply } => {
                            let _ = reply.send(Err(err()));
                        }
                        _ => {}
                    }
                }
            }
        }
        Flow::Continue
    }

    async fn shutdown(&mut self) {
        // Dropping the senders ends every subscription stream.
        self.topics.clear();
        for command in self.waiting.drain(..) {
            match command {
                Command::Subscribe { reply, .. } => {
                    let _ = reply.send(Err(Error::Closed { backend: BACKEND }));
                }
                Command::Info { reply } => {
                    let _ = reply.send(Err(Error::Closed { backend: BACKEND }));
                }
                _ => {}
            }
        }
        if let Some(mut conn) = self.listener.take() {
            let grace = self.config.request_timeout;
            let _ = tokio::time::timeout(grace, conn.listener.unlisten_all()).await;
            drop(conn.listener);
            // Waits for the connection to come back from sqlx's drop task.
            let _ = tokio::time::timeout(grace, conn.pool.close()).await;
        }
        tracing::debug!("postgres listener stopped");
    }
}

/// Removes a subscriber; true when it was its topic's last.
fn remove(topics: &mut HashMap<String, Vec<Subscriber>>, topic: &str, id: u64) -> bool {
    let Some(subscribers) = topics.get_mut(topic) else {
        return false;
    };
    subscribers.retain(|s| s.id != id);
    if subscribers.is_empty() {
        topics.remove(topic);
        return true;
    }
    false
}

fn item(topic: &str, decoded: &std::result::Result<Envelope, EnvelopeError>) -> Result<Event> {
    match decoded {
        Ok(envelope) => Ok(Event::Message(envelope.clone())),
        Err(source) => Err(Error::Malformed {
            topic: topic.to_owned(),
            key: None,
            source: source.clone(),
        }),
    }
}

/// A new listener connection (its own one-connection pool) listening on `channels`.
async fn connect(
    config: &ListenerConfig,
    channels: &[String],
) -> std::result::Result<Connected, sqlx::Error> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(config.connect_timeout)
        .connect_lazy_with(config.connect_options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    // This pool is ours alone; a lost connection must come back as `Ok(None)`
    // from `try_recv`, not be re-established inside it.
    listener.ignore_pool_close_event(true);
    listener.eager_reconnect(false);
    if !channels.is_empty() {
        listener
            .listen_all(channels.iter().map(String::as_str))
            .await?;
    }
    Ok(Connected { listener, pool })
}
