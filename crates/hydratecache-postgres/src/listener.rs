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
//!   reason other than a server error, or a keepalive query that does not
//!   answer in time is treated the same way.
//! - a subscription whose buffer is full misses the message; the count is
//!   kept and surfaces as a [`GapReason::Lagged`] gap before its next message,
//!   or as soon as it has read what is buffered.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use hydratecache_core::{Envelope, EnvelopeError, Error, Event, Gap, GapReason, Result};
use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::{wire, BACKEND};

/// What the listener connection is doing, from the server's point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// Process id of the listener's server backend (`pg_backend_pid()`), or
    /// `None` when no listener connection is open.
    pub backend_pid: Option<i32>,
    /// The channels that connection listens on, sorted
    /// (`pg_listening_channels()`, asked on that connection).
    pub channels: Vec<String>,
}

/// Settings of the listener task.
#[derive(Debug, Clone)]
pub(crate) struct ListenerConfig {
    pub(crate) connect_options: PgConnectOptions,
    pub(crate) capacity: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) keepalive: Option<Duration>,
}

/// A gap not yet put in a subscription's buffer (it was full).
#[derive(Debug, Default)]
pub(crate) struct PendingGap(Mutex<PendingState>);

#[derive(Debug, Default)]
struct PendingState {
    lagged: u64,
    reconnected: bool,
}

impl PendingGap {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // Nothing panics while holding it; recover if something ever did.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, gap: &Gap) {
        let mut state = self.state();
        match gap.reason {
            GapReason::Lagged => state.lagged += gap.missed.unwrap_or(1),
            _ => state.reconnected = true,
        }
    }

    /// The pending gap, if any, now owned by the caller.
    pub(crate) fn take(&self) -> Option<Gap> {
        let mut state = self.state();
        let gap = if state.reconnected {
            // A count of lagged messages is meaningless next to a reconnect.
            Gap::new(GapReason::Reconnected)
        } else if state.lagged > 0 {
            Gap {
                reason: GapReason::Lagged,
                missed: Some(state.lagged),
            }
        } else {
            return None;
        };
        *state = PendingState::default();
        Some(gap)
    }
}

/// One subscription, as the task sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Result<Event>>,
    pub(crate) pending: Arc<PendingGap>,
}

impl Subscriber {
    /// Puts a pending gap in the buffer; false when it is still pending.
    fn flush_pending(&self) -> bool {
        let Some(gap) = self.pending.take() else {
            return true;
        };
        match self.tx.try_send(Ok(Event::Gap(gap.clone()))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.pending.add(&gap);
                false
            }
            // Dropped: its unsubscribe command is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    fn send(&self, item: Result<Event>) {
        let missed = Gap {
            reason: GapReason::Lagged,
            missed: Some(1),
        };
        if !self.flush_pending() {
            self.pending.add(&missed);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(item) {
            tracing::debug!(id = self.id, "subscription buffer full: message missed");
            self.pending.add(&missed);
        }
    }

    fn gap(&self, gap: &Gap) {
        self.pending.add(gap);
        self.flush_pending();
    }
}

/// Requests from the transport and its subscriptions to the task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        topic: String,
        subscriber: Subscriber,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        topic: String,
        id: u64,
    },
    Info {
        reply: oneshot::Sender<Result<ListenerInfo>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// The stream behind a [`Subscription`](hydratecache_core::Subscription).
pub(crate) struct SubscriptionStream {
    pub(crate) rx: mpsc::Receiver<Result<Event>>,
    pub(crate) pending: Arc<PendingGap>,
    pub(crate) _guard: UnsubscribeOnDrop,
}

impl Stream for SubscriptionStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(item),
            // Everything buffered has been read: a gap that did not fit in
            // the buffer comes now, after the messages that preceded it.
            Poll::Pending => match self.pending.take() {
                Some(gap) => Poll::Ready(Some(Ok(Event::Gap(gap)))),
                None => Poll::Pending,
            },
        }
    }
}

/// Tells the task a subscription is gone (so the last one of a topic
/// `UNLISTEN`s); also when `subscribe()` itself is cancelled.
pub(crate) struct UnsubscribeOnDrop {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) topic: String,
    pub(crate) id: u64,
}

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        // Fails only when the task is gone, and with it the LISTEN.
        let _ = self.commands.send(Command::Unsubscribe {
            topic: std::mem::take(&mut self.topic),
            id: self.id,
        });
    }
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
                match conn.listener.listen(&topic).await {
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
                match conn.listener.unlisten(&topic).await {
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
                match query.await {
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
            match tokio::time::timeout(config.connect_timeout * 2, connecting).await {
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
                    if let Err(e) = conn.listener.unlisten(topic).await {
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
            let grace = Duration::from_secs(2);
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
