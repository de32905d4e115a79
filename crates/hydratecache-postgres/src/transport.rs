//! The transport: publishing through the lanes, subscribing through the
//! listener task and the fan-out, closing.

use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::adapter::{lock, refuse_replay, ClosedFlag, Fanout};
use hydratecache_core::{
    Capabilities, Envelope, Error, Result, SubscribeOptions, Subscription, Transport,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::command::{Command, ListenerInfo};
use crate::listener::{self, ListenerConfig};
use crate::publisher::Publisher;
use crate::wire::{self, validate_topic, MAX_MESSAGE_SIZE};
use crate::BACKEND;

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
    publisher: Publisher,
    owns_pool: bool,
    config: ListenerConfig,
    fanout: Arc<Fanout>,
    /// The listener task's commands; `None` until the first subscription.
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    closed: ClosedFlag,
}

impl std::fmt::Debug for PostgresTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresTransport")
            .field("owns_pool", &self.inner.owns_pool)
            .field("closed", &self.inner.closed.is_closed())
            .finish_non_exhaustive()
    }
}

impl PostgresTransport {
    /// A transport publishing through `pool` (closed with it when
    /// `owns_pool`), its subscriptions fed by a listener connection made with
    /// `config`.
    pub(crate) fn new(
        pool: PgPool,
        owns_pool: bool,
        publisher: Publisher,
        config: ListenerConfig,
        fanout: Arc<Fanout>,
    ) -> PostgresTransport {
        PostgresTransport {
            inner: Arc::new(Inner {
                pool,
                publisher,
                owns_pool,
                config,
                fanout,
                commands: Mutex::new(None),
                closed: ClosedFlag::new(),
            }),
        }
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
            .send(Command::Info { reply })
            .map_err(|_| closed_error())?;
        answer.await.map_err(|_| closed_error())?
    }

    fn commands_slot(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<Command>>> {
        lock(&self.inner.commands)
    }

    /// The listener task's command channel, starting the task if needed.
    fn commands(&self) -> Result<mpsc::UnboundedSender<Command>> {
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
        let tx = listener::spawn(self.inner.config.clone(), Arc::clone(&self.inner.fanout));
        *slot = Some(tx.clone());
        Ok(tx)
    }

    fn check_open(&self) -> Result<()> {
        self.inner.closed.check(BACKEND)
    }
}

fn closed_error() -> Error {
    Error::Closed { backend: BACKEND }
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
            queued?.await.map_err(|_| closed_error())??;
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
            refuse_replay(
                BACKEND,
                &options,
                "replay from the earliest message (NOTIFY keeps no history)",
            )?;
            let commands = self.commands()?;
            // Registered first: if this future is dropped mid-way, the task
            // is told (and UNLISTENs if it was the topic's last).
            let on_last = commands.clone();
            let registered = self.inner.fanout.register(
                topic,
                Box::new(move |topic| {
                    // Fails only when the task is gone, and with it the LISTEN.
                    let _ = on_last.send(Command::Unsubscribe {
                        topic: topic.to_owned(),
                    });
                }),
            );
            let (reply, answer) = oneshot::channel();
            commands
                .send(Command::Subscribe {
                    topic: topic.to_owned(),
                    reply,
                })
                .map_err(|_| closed_error())?;
            answer.await.map_err(|_| closed_error())??;
            Ok(registered.into_subscription())
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            let commands = {
                let mut slot = self.commands_slot();
                self.inner.closed.close();
                slot.take()
            };
            // Each step is bounded: a hung server must not hang close().
            let limit = self.inner.config.request_timeout;
            self.inner.publisher.close(limit).await;
            if let Some(commands) = commands {
                let (done, stopped) = oneshot::channel();
                if commands.send(Command::Close { done }).is_ok() {
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
