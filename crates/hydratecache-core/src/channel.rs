//! [`Channel<T>`]: typed publish and subscribe over any [`Transport`].

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::adapter;
use crate::channel_subscription::{ChannelEvent, ChannelSubscription};
use crate::codec::{CborCodec, Codec, FnCodec};
use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::fields::{Kind, PublisherId, Ttl};
use crate::publish_options::PublishOptions;
use crate::transport::{SubscribeOptions, Transport};

/// How many heartbeat intervals the lease of each heartbeat of
/// [`Channel::run_heartbeats`] lasts: one lost or late heartbeat is no
/// departure.
pub const LEASE_INTERVALS: u32 = 3;

/// A typed topic: publish values of `T` under string keys, subscribe to the
/// updates and deletes of every publisher.
///
/// Each `Channel` is one publisher with its own [`PublisherId`] and sequence
/// (clones share them; [`with_new_publisher`](Self::with_new_publisher) makes
/// another). Cheap to clone.
///
/// ```
/// use hydratecache_core::{Channel, ChannelEvent, MemoryTransport, Transport};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hydratecache_core::Error> {
/// let transport = MemoryTransport::new();
/// let prices: Channel<f64> = Channel::new(transport.into_arc(), "prices");
/// let mut updates = prices.subscribe().await?;
/// prices.publish("AAPL", &189.5).await?;
/// match updates.next().await {
///     Some(Ok(ChannelEvent::Update(msg))) => assert_eq!((msg.key.as_str(), msg.value), ("AAPL", 189.5)),
///     other => panic!("unexpected {other:?}"),
/// }
/// # Ok(()) }
/// ```
pub struct Channel<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    transport: Arc<dyn Transport>,
    topic: String,
    codec: Arc<dyn Codec<T>>,
    publisher: PublisherId,
    sequence: AtomicU64,
    /// Held while a sequence number is taken and the transport's publish is
    /// first polled, so that messages reach the transport in sequence order.
    order: tokio::sync::Mutex<()>,
    /// When this channel last sent anything (µs since the epoch), for heartbeats.
    last_sent: AtomicU64,
}

impl<T> Clone for Channel<T> {
    fn clone(&self) -> Self {
        Channel {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for Channel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("backend", &self.inner.transport.backend())
            .field("topic", &self.inner.topic)
            .field("publisher", &self.inner.publisher)
            .finish_non_exhaustive()
    }
}

/// What a publish sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The message's sequence number.
    pub sequence: u64,
    /// Size of the encoded envelope.
    pub encoded_len: usize,
}

/// Builds a [`Channel`] with a custom codec.
pub struct ChannelBuilder<T> {
    transport: Arc<dyn Transport>,
    topic: String,
    codec: Option<Arc<dyn Codec<T>>>,
}

impl<T> fmt::Debug for ChannelBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBuilder")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> ChannelBuilder<T> {
    /// Uses `codec` for values.
    pub fn codec(mut self, codec: impl Codec<T>) -> Self {
        self.codec = Some(Arc::new(codec));
        self
    }

    /// Uses a pair of functions for values.
    pub fn encoder_decoder(
        self,
        encode: impl Fn(&T) -> Result<Vec<u8>, BoxError> + Send + Sync + 'static,
        decode: impl Fn(&[u8]) -> Result<T, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.codec(FnCodec::new(encode, decode))
    }

    /// The channel. Without a codec set, values are CBOR.
    pub fn build(self) -> Channel<T>
    where
        T: Serialize + DeserializeOwned,
    {
        let codec = self.codec.unwrap_or_else(|| Arc::new(CborCodec::new()));
        Channel::with_codec_arc(self.transport, self.topic, codec)
    }

    /// The channel, for types without serde: a codec must have been set.
    pub fn build_with_codec(self) -> Option<Channel<T>> {
        let codec = self.codec?;
        Some(Channel::with_codec_arc(self.transport, self.topic, codec))
    }
}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Channel<T> {
    /// A channel on `topic` with the default CBOR codec.
    pub fn new(transport: Arc<dyn Transport>, topic: impl Into<String>) -> Channel<T> {
        Channel::with_codec(transport, topic, CborCodec::new())
    }
}

impl<T: Send + Sync + 'static> Channel<T> {
    /// A builder, to choose the codec.
    pub fn builder(transport: Arc<dyn Transport>, topic: impl Into<String>) -> ChannelBuilder<T> {
        ChannelBuilder {
            transport,
            topic: topic.into(),
            codec: None,
        }
    }

    /// A channel on `topic` with `codec`.
    pub fn with_codec(
        transport: Arc<dyn Transport>,
        topic: impl Into<String>,
        codec: impl Codec<T>,
    ) -> Channel<T> {
        Channel::with_codec_arc(transport, topic.into(), Arc::new(codec))
    }

    fn with_codec_arc(
        transport: Arc<dyn Transport>,
        topic: String,
        codec: Arc<dyn Codec<T>>,
    ) -> Channel<T> {
        Channel {
            inner: Arc::new(Inner {
                transport,
                topic,
                codec,
                publisher: PublisherId::random(),
                sequence: AtomicU64::new(0),
                order: tokio::sync::Mutex::new(()),
                last_sent: AtomicU64::new(0),
            }),
        }
    }

    /// A channel on the same transport, topic and codec, publishing as a new
    /// publisher: its own [`PublisherId`] and sequence (a clone shares them).
    pub fn with_new_publisher(&self) -> Channel<T> {
        Channel::with_codec_arc(
            Arc::clone(&self.inner.transport),
            self.inner.topic.clone(),
            Arc::clone(&self.inner.codec),
        )
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// This channel's publisher id.
    pub fn publisher(&self) -> PublisherId {
        self.inner.publisher
    }

    /// The transport underneath.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.transport
    }

    /// The last sequence number this channel used (0 before its first publish).
    pub fn last_sequence(&self) -> u64 {
        self.inner.sequence.load(Ordering::Acquire)
    }

    /// Publishes `value` under `key`.
    pub async fn publish(&self, key: &str, value: &T) -> Result<Receipt> {
        self.publish_with(key, value, PublishOptions::new()).await
    }

    /// Publishes `value` under `key` with a TTL and/or version.
    ///
    /// Sequence numbers are taken in call order, and the transport's
    /// `publish` is called in sequence order. Publishes issued concurrently
    /// from one channel reach the wire in sequence order on transports that
    /// queue the message when `publish` is called (PostgreSQL does); on
    /// others they may reach it in either order.
    pub async fn publish_with(
        &self,
        key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Receipt> {
        let payload = self
            .inner
            .codec
            .encode(value)
            .map_err(|source| Error::Encode {
                key: key.to_owned(),
                source,
            })?;
        self.send(Kind::Update, key, payload.into(), options).await
    }

    /// Publishes a delete (invalidation) of `key`.
    pub async fn delete(&self, key: &str) -> Result<Receipt> {
        self.delete_with(key, PublishOptions::new()).await
    }

    /// Publishes a delete of `key` with a version (the TTL is ignored).
    pub async fn delete_with(&self, key: &str, options: PublishOptions) -> Result<Receipt> {
        self.send(Kind::Delete, key, bytes::Bytes::new(), options)
            .await
    }

    /// Sends a heartbeat with the latest sequence number, so that subscribers
    /// notice a lost last message. Does nothing before the first publish.
    pub async fn heartbeat(&self) -> Result<Option<Receipt>> {
        self.send_heartbeat(None, false).await
    }

    /// Sends a heartbeat that carries `lease`: a promise that this channel's
    /// next message or heartbeat follows within it. A subscriber that tracks
    /// leases (such as `LocalCache`) treats a publisher silent past its lease
    /// as gone, and its last writes as possibly lost (a crash between a
    /// commit and its publish looks exactly like that). A zero lease is a
    /// goodbye: nothing more will come, and that is no loss. On the wire the
    /// lease is the heartbeat's TTL. Does nothing before the first publish.
    pub async fn heartbeat_with_lease(&self, lease: Duration) -> Result<Option<Receipt>> {
        self.send_heartbeat(Some(lease), false).await
    }

    /// Sends a marker: a heartbeat even before the first publish (with
    /// sequence 0 then), without a lease. On a transport that keeps order,
    /// a subscriber that receives it has received everything the backend
    /// accepted on this topic before it; `LocalCache` uses one to catch up
    /// after its process stalled.
    pub async fn mark(&self) -> Result<Receipt> {
        match self.send_heartbeat(None, true).await? {
            Some(receipt) => Ok(receipt),
            None => Err(Error::Closed {
                backend: self.inner.transport.backend(),
            }),
        }
    }

    async fn send_heartbeat(
        &self,
        lease: Option<Duration>,
        always: bool,
    ) -> Result<Option<Receipt>> {
        let mut envelope = Envelope {
            kind: Kind::Heartbeat,
            publisher: self.inner.publisher,
            ttl: lease.map(Ttl::starting_now),
            ..Envelope::update(String::new(), bytes::Bytes::new())
        };
        // After the message of that sequence number, never before it.
        let Some(result) = self
            .publish_in_order(&mut envelope, always, || self.last_sequence())
            .await
        else {
            return Ok(None);
        };
        result?;
        let sequence = envelope.sequence;
        Ok(Some(Receipt {
            sequence,
            encoded_len: envelope.encoded_len(),
        }))
    }

    /// Takes a sequence number from `sequence` (none if it gives 0) and
    /// publishes `envelope` with it, in order with every other publish of
    /// this channel: two concurrent publishes cannot hand their messages to
    /// the transport in the opposite order of their numbers (a false gap for
    /// every subscriber that tracks sequences). The transport's future is
    /// polled once under the lock: an ordered transport hands the message to
    /// its connection on that first poll (see [`Transport::publish`]).
    async fn publish_in_order(
        &self,
        envelope: &mut Envelope,
        zero_too: bool,
        sequence: impl FnOnce() -> u64,
    ) -> Option<Result<()>> {
        let order = self.inner.order.lock().await;
        envelope.sequence = sequence();
        if envelope.sequence == 0 && !zero_too {
            return None;
        }
        let mut publish = self.inner.transport.publish(&self.inner.topic, envelope);
        let first = futures::poll!(publish.as_mut());
        drop(order);
        self.mark_sent();
        Some(match first {
            std::task::Poll::Ready(result) => result,
            std::task::Poll::Pending => publish.await,
        })
    }

    fn mark_sent(&self) {
        self.inner.last_sent.store(micros_now(), Ordering::Release);
    }

    /// How long since this channel last sent a message or heartbeat (`None`
    /// before the first).
    pub fn idle_for(&self) -> Option<Duration> {
        let last = self.inner.last_sent.load(Ordering::Acquire);
        (last != 0).then(|| Duration::from_micros(micros_now().saturating_sub(last)))
    }

    /// Sends a heartbeat whenever this channel has been idle for `interval`,
    /// and at least every `LEASE_INTERVALS - 1` intervals while it is busy
    /// (so subscribers learn its lease), each with a lease of
    /// [`LEASE_INTERVALS`] intervals (see
    /// [`heartbeat_with_lease`](Self::heartbeat_with_lease)), until
    /// `shutdown` resolves; then a last one with a zero lease: a goodbye, so
    /// an orderly departure is no loss. A channel that never published sends
    /// nothing, so readers that never write add no traffic.
    ///
    /// Subscribers that track sequences (such as `LocalCache`) use heartbeats
    /// to notice a lost *last* message within about one interval, and a
    /// publisher gone silent within its lease. Spawn it next to a channel
    /// that publishes:
    /// `tokio::spawn(channel.clone().run_heartbeats(Duration::from_millis(200), token.cancelled_owned()))`
    /// (a fifth of the staleness bound `LocalCache` subscribers keep: its
    /// `DEFAULT_HEARTBEAT_INTERVAL`).
    pub async fn run_heartbeats<S: Future>(self, interval: Duration, shutdown: S) {
        let interval = interval.max(Duration::from_millis(1));
        let lease = interval.saturating_mul(LEASE_INTERVALS);
        let mut shutdown = std::pin::pin!(shutdown);
        // When a heartbeat (with its lease) last went out: a busy channel is
        // never idle, yet subscribers must learn its lease, and new ones
        // join, so it announces the lease at least once per lease.
        let mut announced: Option<tokio::time::Instant> = None;
        loop {
            let since_announced = announced.map(|at| at.elapsed());
            let wait = match self.idle_for() {
                Some(idle)
                    if idle >= interval
                        || since_announced
                            .is_none_or(|s| s >= interval.saturating_mul(LEASE_INTERVALS - 1)) =>
                {
                    match self.heartbeat_with_lease(lease).await {
                        Ok(Some(_)) => announced = Some(tokio::time::Instant::now()),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(topic = %self.inner.topic, error = &e as &dyn std::error::Error, "heartbeat failed");
                        }
                    }
                    interval
                }
                Some(idle) => (interval - idle).min(
                    interval
                        .saturating_mul(LEASE_INTERVALS - 1)
                        .saturating_sub(since_announced.unwrap_or_default()),
                ),
                None => interval,
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(e) = self.heartbeat_with_lease(Duration::ZERO).await {
            tracing::debug!(topic = %self.inner.topic, error = &e as &dyn std::error::Error, "goodbye heartbeat failed");
        }
    }

    async fn send(
        &self,
        kind: Kind,
        key: &str,
        payload: bytes::Bytes,
        options: PublishOptions,
    ) -> Result<Receipt> {
        let mut envelope = adapter::envelope_for(
            kind,
            key,
            payload,
            options,
            self.inner.publisher,
            SystemTime::now(),
        );
        // Refuse oversize messages before a sequence number is spent on them,
        // so that a refused publish does not look like a lost message.
        let transport = &self.inner.transport;
        adapter::check_envelope(transport.backend(), &transport.capabilities(), &envelope)?;
        let result = self
            .publish_in_order(&mut envelope, false, || {
                self.inner.sequence.fetch_add(1, Ordering::AcqRel) + 1
            })
            .await
            .unwrap_or(Ok(()));
        let encoded_len = envelope.encoded_len();
        match &result {
            Ok(()) => {
                tracing::trace!(topic = %self.inner.topic, key, seq = envelope.sequence, encoded_len, "published")
            }
            Err(e) => {
                tracing::debug!(topic = %self.inner.topic, key, seq = envelope.sequence, error = e as &dyn std::error::Error, "publish failed")
            }
        }
        result?;
        Ok(Receipt {
            sequence: envelope.sequence,
            encoded_len,
        })
    }

    /// Subscribes to every publisher's updates, from now on.
    pub async fn subscribe(&self) -> Result<ChannelSubscription<T>> {
        self.subscribe_with(SubscribeOptions::default()).await
    }

    /// Subscribes with options (for example replay from the earliest message).
    pub async fn subscribe_with(
        &self,
        options: SubscribeOptions,
    ) -> Result<ChannelSubscription<T>> {
        let inner = self
            .inner
            .transport
            .subscribe(&self.inner.topic, options)
            .await?;
        Ok(ChannelSubscription::new(
            inner,
            Arc::clone(&self.inner.codec),
            self.inner.publisher,
        ))
    }

    /// Runs `handler` on every event until `shutdown` resolves or the
    /// subscription ends.
    ///
    /// `shutdown` is any future: a `CancellationToken::cancelled()`, a
    /// `oneshot::Receiver`, `tokio::signal::ctrl_c()`...
    ///
    /// ```
    /// use hydratecache_core::{Channel, ChannelEvent, MemoryTransport, Transport};
    /// use std::time::Duration;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), hydratecache_core::Error> {
    /// let channel: Channel<String> = Channel::new(MemoryTransport::new().into_arc(), "greetings");
    /// let mut keys = Vec::new();
    /// // Runs for 50 ms here; in a service, until its cancellation token fires.
    /// channel
    ///     .run(
    ///         |event| {
    ///             if let Ok(ChannelEvent::Update(msg)) = event {
    ///                 keys.push(msg.key);
    ///             }
    ///             async {}
    ///         },
    ///         tokio::time::sleep(Duration::from_millis(50)),
    ///     )
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run<H, Fut, S>(&self, mut handler: H, shutdown: S) -> Result<()>
    where
        H: FnMut(Result<ChannelEvent<T>>) -> Fut,
        Fut: Future<Output = ()>,
        S: Future,
    {
        let subscription = self.subscribe().await?;
        let mut events = std::pin::pin!(subscription.take_until(shutdown));
        while let Some(event) = events.next().await {
            handler(event).await;
        }
        Ok(())
    }
}

fn micros_now() -> u64 {
    // Never 0, which means "never sent".
    crate::adapter::micros(SystemTime::now()).max(1)
}
