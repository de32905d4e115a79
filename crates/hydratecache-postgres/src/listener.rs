//! The one listener connection of a transport and the task that drives it.
//!
//! The task owns a `PgListener`; the subscriptions are in the transport's
//! [`Fanout`]. It runs `LISTEN` once per topic (on the first subscription)
//! and `UNLISTEN` when the last one is dropped, reads notifications with
//! `try_recv`, decodes each once and hands it to the fan-out.
//!
//! Losses become gaps:
//! - sqlx's `try_recv` returns `Ok(None)` when the connection was lost (and
//!   `recv` would reconnect silently, so it is never used). Eager reconnect is
//!   off, so the loss is reported without an await in between and cannot be
//!   swallowed by a cancelled `try_recv`. The task then drops that listener,
//!   connects a new one, `LISTEN`s every topic again, and only then releases
//!   the [`GapReason::Reconnected`] gap it held since the loss in every
//!   subscription of those topics: everything published after the gap is
//!   delivered.
//! - any other error from the listener, a failed `LISTEN`/`UNLISTEN` for a
//!   reason other than a server error, a `LISTEN`/`UNLISTEN` (or info query)
//!   that does not answer within the request timeout, or a keepalive query
//!   that does not answer in time is treated the same way: a hung server or
//!   a half-open connection costs a reconnect and a gap, never a stuck task.
//! - a subscription whose buffer is full (in messages, or in bytes of the
//!   envelopes it holds) misses the message; its queue counts it in a
//!   [`GapReason::Lagged`] gap.

use std::collections::{HashSet, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::adapter::{Backoff, Fanout};
use hydratecache_core::{
    Envelope, EnvelopeError, Error, Gap, GapReason, InterruptReason, Interruption,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, ListenerInfo};
use crate::{wire, BACKEND};

/// The first retry of a lost listener connection is immediate; the next
/// waits this long, and each later one twice as long as the one before.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Settings of the listener task.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    pub(crate) connect_options: PgConnectOptions,
    pub(crate) request_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) probe_timeout: Duration,
    /// Told when the listener connects: the server is reachable again.
    pub(crate) health: Arc<crate::publisher::Health>,
}

/// Starts the task delivering to `fanout`; it runs until closed or until
/// every sender is dropped.
pub(crate) fn spawn(config: ListenerConfig, fanout: Arc<Fanout>) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let backoff = Backoff::new(
        FIRST_RETRY_DELAY.min(config.max_backoff),
        config.max_backoff,
    );
    let task = Task {
        config: Arc::new(config),
        commands: rx,
        fanout,
        listened: HashSet::new(),
        waiting: VecDeque::new(),
        listener: None,
        epoch: 0,
        gap_owed: false,
        backoff,
        retry_in: Duration::ZERO,
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
    fanout: Arc<Fanout>,
    /// Every topic listened on (or to listen on again).
    listened: HashSet<String>,
    /// Commands that need the connection, kept while it is being re-established.
    waiting: VecDeque<Command>,
    listener: Option<Connected>,
    /// Connections lost so far: the reconnect gap held since a loss is
    /// released for this epoch once the new connection listens.
    epoch: u64,
    /// The connection was lost with subscriptions open: their gap is held
    /// until the new connection listens.
    gap_owed: bool,
    backoff: Backoff,
    /// Wait before the next connection attempt.
    retry_in: Duration,
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
                Ok(None) => self.lost(&"the connection was closed", InterruptReason::Disconnected),
                Err(e) => self.lost(&e, InterruptReason::Disconnected),
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
        match tokio::time::timeout(self.config.probe_timeout, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.lost(&e, InterruptReason::Disconnected),
            Err(_) => self.lost(
                &"the keepalive query timed out",
                InterruptReason::Unresponsive,
            ),
        }
    }

    fn lost(&mut self, why: &dyn std::fmt::Display, reason: InterruptReason) {
        tracing::warn!(
            topics = self.listened.len(),
            "postgres listener connection lost ({why}); reconnecting"
        );
        // Dropping a listener whose connection is still open sends
        // `UNLISTEN *` on it from a background task (sqlx's Drop).
        self.listener = None;
        if !self.listened.is_empty() {
            // Held, not delivered: a consumer that repaired now could still
            // miss what is committed before the new connection listens. Only
            // topics listened on lost anything; a subscription whose LISTEN
            // is still to come gets no gap.
            self.epoch += 1;
            let topics: Vec<String> = self.listened.iter().cloned().collect();
            self.fanout.interrupt(&topics, Interruption::new(reason));
            self.fanout
                .hold(&topics, Gap::new(GapReason::Reconnected), self.epoch);
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
        if !self.fanout.has_subscribers(&channel) {
            // Arrived just before an UNLISTEN took effect.
            return;
        }
        let decoded = match catch_unwind(AssertUnwindSafe(|| notification.payload().to_owned())) {
            Ok(payload) => wire::decode(&payload),
            // Not UTF-8, so not base64: not an envelope.
            Err(_) => Err(EnvelopeError::BadMagic { found: 0 }),
        };
        // The byte bound counts encoded envelopes; an error item holds none.
        let size = decoded.as_ref().map_or(0, Envelope::encoded_len);
        self.fanout.deliver(&channel, decoded, size);
    }

    /// `topics` are listened on again on the current connection: their
    /// subscriptions' held reconnect gaps can be delivered.
    fn listening(&self, topics: &[String]) {
        self.fanout.release(topics, self.epoch);
    }

    async fn handle_online(&mut self, command: Command) {
        let Some(conn) = self.listener.as_mut() else {
            self.handle_offline(command);
            return;
        };
        match command {
            Command::Subscribe { topic, reply } => {
                if reply.is_closed() {
                    return; // subscribe() was cancelled
                }
                if self.listened.contains(&topic) {
                    self.listening(std::slice::from_ref(&topic));
                    let _ = reply.send(Ok(()));
                    return;
                }
                // PgListener::listen sends `LISTEN "<name>"` with every `"`
                // doubled: the name cannot leave the quoted identifier.
                let limit = self.config.request_timeout;
                match bounded(limit, conn.listener.listen(&topic)).await {
                    Ok(()) => {
                        tracing::debug!(%topic, "LISTEN");
                        self.listening(std::slice::from_ref(&topic));
                        self.listened.insert(topic);
                        let _ = reply.send(Ok(()));
                    }
                    Err(e) if connection_lost(&e) => {
                        self.lost(&e, InterruptReason::Disconnected);
                        self.waiting.push_back(Command::Subscribe { topic, reply });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(backend(&format!("LISTEN on {topic:?}"), e)));
                    }
                }
            }
            Command::Unsubscribe { topic } => {
                // A subscription registered since the last one dropped keeps
                // the topic.
                if self.fanout.has_subscribers(&topic) || !self.listened.remove(&topic) {
                    return;
                }
                let limit = self.config.request_timeout;
                match bounded(limit, conn.listener.unlisten(&topic)).await {
                    Ok(()) => tracing::debug!(%topic, "UNLISTEN"),
                    Err(e) if connection_lost(&e) => self.lost(&e, InterruptReason::Disconnected),
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
                        self.lost(&e, InterruptReason::Disconnected);
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
            Command::Unsubscribe { topic } => {
                // Not listening: nothing to undo on the server.
                if !self.fanout.has_subscribers(&topic) {
                    self.listened.remove(&topic);
                }
            }
            Command::Info { reply } => {
                let _ = reply.send(Ok(ListenerInfo::default()));
            }
            Command::Close { done } => {
                let _ = done.send(());
            }
        }
    }

    async fn offline(&mut self) -> Flow {
        if self.listened.is_empty() && self.waiting.is_empty() {
            // Nothing to listen for: connect when asked to.
            self.backoff.reset();
            self.retry_in = Duration::ZERO;
            return match self.commands.recv().await {
                None => Flow::Stop(None),
                Some(Command::Close { done }) => Flow::Stop(Some(done)),
                Some(command) => {
                    self.handle_offline(command);
                    Flow::Continue
                }
            };
        }
        let delay = self.retry_in;
        let channels: Vec<String> = self.listened.iter().cloned().collect();
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
                self.backoff.reset();
                self.retry_in = Duration::ZERO;
                self.config.health.up();
                self.listener = Some(conn);
                tracing::info!(topics = self.listened.len(), "postgres listener connected");
                // Topics whose last subscription went while connecting.
                let (listened, stale): (Vec<String>, Vec<String>) = listened
                    .into_iter()
                    .partition(|t| self.listened.contains(t));
                for topic in &stale {
                    let Some(conn) = self.listener.as_mut() else {
                        break;
                    };
                    let limit = self.config.request_timeout;
                    if let Err(e) = bounded(limit, conn.listener.unlisten(topic)).await {
                        if connection_lost(&e) {
                            self.lost(&e, InterruptReason::Disconnected);
                        }
                    }
                }
                if self.listener.is_none() {
                    return Flow::Continue;
                }
                self.listening(&listened);
                if self.gap_owed {
                    self.gap_owed = false;
                    tracing::warn!(
                        topics = self.listened.len(),
                        "postgres listener reconnected and listening again: gap on every subscription"
                    );
                }
                while self.listener.is_some() {
                    let Some(command) = self.waiting.pop_front() else {
                        break;
                    };
                    self.handle_online(command).await;
                }
            }
            Err(e) => {
                self.retry_in = self.backoff.next_delay();
                tracing::warn!(
                    error = %e,
                    attempt = self.backoff.failures(),
                    topics = self.listened.len(),
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
        // Every subscription stream ends once read.
        self.fanout.close_all();
        self.listened.clear();
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
