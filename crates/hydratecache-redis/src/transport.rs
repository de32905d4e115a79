//! [`RedisTransport`]: the [`Transport`] implementation, and the lifetime of
//! its clients and tasks.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::{Client, SubscriberClient};
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::Options;
use fred::types::ClientState;
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use hydratecache_core::adapter::{self, FanoutStream};
use hydratecache_core::{
    Capabilities, Envelope, Error, Event, Result, SubscribeOptions, Subscription, Transport,
};
use tokio::task::JoinHandle;

use crate::liveness;
use crate::publisher::{self, publish, Command, Health};
use crate::settings::Settings;
use crate::subscriber::{control, dispatch, Shared};
use crate::BACKEND;

/// A [`Transport`] over Redis Pub/Sub (`PUBLISH`/`SUBSCRIBE`, or
/// `SPUBLISH`/`SSUBSCRIBE` with
/// [`RedisBuilder::sharded`](crate::RedisBuilder::sharded)).
///
/// One fred [`Client`] publishes; one [`SubscriberClient`] carries every
/// subscription of the transport. Clones share both. The connections live
/// while a clone or a subscription does; when the last is dropped, clients
/// built here are closed (clients given to
/// [`from_clients`](crate::RedisBuilder::from_clients) are unsubscribed and
/// left open). [`close`](Transport::close) does it at once and ends the
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

pub(crate) async fn ensure_connected<C: ClientLike>(
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

pub(crate) async fn quit<C: ClientLike>(client: &C, timeout: Duration) {
    if let Ok(Err(e)) = tokio::time::timeout(timeout, client.quit()).await {
        tracing::debug!(error = %e, "QUIT failed");
    }
}

impl RedisTransport {
    /// Connects the clients if needed and starts the transport's tasks.
    pub(crate) async fn start(
        settings: Settings,
        publisher: Client,
        subscriber: SubscriberClient,
        owned: bool,
    ) -> Result<RedisTransport> {
        let timeout = settings.connect_timeout;
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
        let subscriber_errors = subscriber.error_rx();
        let health = Arc::new(Health::new(&publisher));
        let publisher_events = (publisher.error_rx(), publisher.reconnect_rx());
        let (shared, control_rx) = Shared::new(
            subscriber,
            settings.sharded,
            settings.command_timeout,
            settings.subscription_buffer,
            settings.subscription_buffer_bytes,
        );
        let tasks = vec![
            tokio::spawn(dispatch(Arc::clone(&shared), messages, reconnects)),
            tokio::spawn(control(Arc::clone(&shared), control_rx)),
            tokio::spawn(liveness::watch(
                Arc::clone(&shared),
                subscriber_errors,
                settings.keepalive,
                settings.probe_timeout,
            )),
            tokio::spawn(publisher::watch(
                Arc::clone(&health),
                publisher_events.0,
                publisher_events.1,
            )),
        ];
        tracing::debug!(sharded = settings.sharded, owned, "redis transport ready");
        Ok(RedisTransport {
            inner: Arc::new(Inner {
                publisher,
                health,
                shared,
                settings,
                owned,
                tasks,
            }),
        })
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
        self.inner.shared.closed.check(BACKEND)
    }
}

/// A subscription's stream holding the transport's connections alive.
/// Fields drop in order: the subscription is unregistered (and its
/// UNSUBSCRIBE queued) before the last reference to the connections can go.
#[derive(Debug)]
struct KeepAlive {
    stream: FanoutStream,
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
        if !self.shared.closed.close() {
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

/// Refuses an empty topic: `what` names what it is on the server (the
/// channel, the stream key).
pub(crate) fn check_topic(topic: &str, what: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::invalid_topic(
            BACKEND,
            topic,
            format!("the {what} is empty"),
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
            check_topic(topic, "channel name")?;
            adapter::check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let frame = Bytes::from(envelope.encode()?);
            let inner = &self.inner;
            publish(
                &inner.publisher,
                &inner.health,
                Command::Publish {
                    sharded: inner.settings.sharded,
                },
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
            check_topic(topic, "channel name")?;
            adapter::refuse_replay(
                BACKEND,
                &options,
                "replay from the earliest message (Redis Pub/Sub keeps no history)",
            )?;
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
            if !shared.closed.close() {
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
