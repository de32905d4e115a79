//! [`RedisStreamsTransport`]: the resumable mode, on Redis Streams.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::EventInterface;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::adapter::{
    self, lock, read_ahead_channel, read_ahead_subscription, ClosedFlag,
};
use hydratecache_core::{
    Capabilities, Envelope, Result, StartFrom, SubscribeOptions, Subscription, Transport,
};
use tokio::task::JoinHandle;

use crate::publisher::{self, publish, Command, Health};
use crate::settings::Settings;
use crate::stream_reader::{self, ReaderCtx};
use crate::transport::{check_topic, ensure_connected, quit};
use crate::BACKEND;

/// Longest wait of one blocking read, whatever the keepalive interval: a
/// reader's `QUIT` waits behind it.
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// Bound on closing a reader's connection: its blocking read ends first.
const READER_QUIT: Duration = Duration::from_secs(2);

/// A [`Transport`] over Redis Streams: each topic is a stream (its key is
/// the topic), each publish an `XADD` capped with `MAXLEN ~`
/// [`stream_max_len`](crate::RedisBuilder::stream_max_len), and each
/// subscription reads it with a connection of its own from its last entry.
///
/// It is [resumable](Capabilities::resumable): a subscription whose
/// connection breaks yields [`Event::Interrupted`](hydratecache_core::Event::Interrupted), reads on from its
/// position once connected again, delivers what was added meanwhile and
/// then [`Event::Resumed`](hydratecache_core::Event::Resumed). It reports a gap ([`GapReason::Reset`](hydratecache_core::GapReason::Reset))
/// only when entries after its position are gone: trimmed by the cap
/// (a subscriber cut off for longer than the stream holds), deleted, or the
/// stream deleted or made anew (a server restarted without persistence).
/// [`StartFrom::Earliest`](hydratecache_core::StartFrom::Earliest) replays what
/// the stream holds. Every subscriber reads everything (no consumer groups).
///
/// Built by [`RedisBuilder::connect_streams`](crate::RedisBuilder::connect_streams).
#[derive(Debug, Clone)]
pub struct RedisStreamsTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    publisher: Client,
    health: Arc<Health>,
    settings: Settings,
    closed: ClosedFlag,
    /// Each subscription's reader and its client.
    readers: Mutex<Vec<(JoinHandle<()>, Client)>>,
    tasks: Vec<JoinHandle<()>>,
}

impl RedisStreamsTransport {
    pub(crate) async fn start(
        settings: Settings,
        publisher: Client,
    ) -> Result<RedisStreamsTransport> {
        let timeout = settings.connect_timeout;
        if let Err(e) = ensure_connected(&publisher, timeout, "connect the publishing client").await
        {
            quit(&publisher, timeout).await;
            return Err(e);
        }
        let health = Arc::new(Health::new(&publisher));
        let tasks = vec![tokio::spawn(publisher::watch(
            Arc::clone(&health),
            publisher.error_rx(),
            publisher.reconnect_rx(),
        ))];
        Ok(RedisStreamsTransport {
            inner: Arc::new(Inner {
                publisher,
                health,
                settings,
                closed: ClosedFlag::new(),
                readers: Mutex::new(Vec::new()),
                tasks,
            }),
        })
    }

    /// The client that publishes (subscriptions have clients of their own).
    pub fn publisher(&self) -> &Client {
        &self.inner.publisher
    }

    /// How a reader waits and when it gives a connection up.
    fn reader_ctx(&self, client: Client, key: &str) -> ReaderCtx {
        let settings = &self.inner.settings;
        let (block, probe_timeout) = match settings.keepalive {
            Some(interval) => (interval.min(MAX_BLOCK), settings.probe_timeout),
            // No liveness bound asked for: wait long, give up late.
            None => (Duration::from_secs(1), settings.command_timeout),
        };
        ReaderCtx {
            client,
            key: key.to_owned(),
            batch: settings.stream_read_count,
            block,
            probe_timeout,
            retry_backoff_max: Duration::from_secs(2),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let readers = std::mem::take(&mut *lock(&self.readers));
        if !self.closed.close() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let publisher = self.publisher.clone();
        let timeout = self.settings.command_timeout;
        handle.spawn(async move {
            for (reader, client) in readers {
                reader.abort();
                quit(&client, timeout.min(READER_QUIT)).await;
            }
            quit(&publisher, timeout).await;
        });
    }
}

impl Transport for RedisStreamsTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(self.inner.settings.max_message_size))
            .with_replay(true)
            .with_resumable(true)
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.closed.check(BACKEND)?;
            check_topic(topic, "stream key")?;
            adapter::check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let frame = Bytes::from(envelope.encode()?);
            let inner = &self.inner;
            publish(
                &inner.publisher,
                &inner.health,
                Command::XAdd {
                    max_len: inner.settings.stream_max_len,
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
            self.inner.closed.check(BACKEND)?;
            check_topic(topic, "stream key")?;
            let client = self.inner.publisher.clone_new();
            let timeout = self.inner.settings.connect_timeout;
            if let Err(e) = ensure_connected(&client, timeout, "connect a stream reader").await {
                quit(&client, timeout).await;
                return Err(e);
            }
            let ctx = self.reader_ctx(client.clone(), topic);
            let position = match stream_reader::start_position(&ctx, options.start).await {
                Ok(p) => p,
                Err(e) => {
                    quit(&client, timeout).await;
                    return Err(e);
                }
            };
            let replay = matches!(options.start, StartFrom::Earliest);
            let (tx, rx) = read_ahead_channel();
            let reader_client = client.clone();
            let reader = tokio::spawn(async move {
                stream_reader::run(ctx, position, replay, tx).await;
                // The subscription was dropped: its connection goes too.
                quit(&reader_client, timeout.min(READER_QUIT)).await;
            });
            {
                let mut readers = lock(&self.inner.readers);
                // Readers whose subscription was dropped have ended.
                readers.retain(|(task, _)| !task.is_finished());
                readers.push((reader, client));
            }
            Ok(read_ahead_subscription(topic, rx, Arc::clone(&self.inner)))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            if !self.inner.closed.close() {
                return Ok(());
            }
            for task in &self.inner.tasks {
                task.abort();
            }
            let readers = std::mem::take(&mut *lock(&self.inner.readers));
            let timeout = self.inner.settings.command_timeout;
            for (reader, client) in readers {
                // Its sender goes with it: the subscription's stream ends.
                reader.abort();
                quit(&client, timeout.min(READER_QUIT)).await;
            }
            quit(&self.inner.publisher, timeout).await;
            Ok(())
        }
        .boxed()
    }
}
