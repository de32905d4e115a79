//! The [`Transport`] trait: what every backend adapter implements.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, Stream};

use crate::envelope::{Envelope, FIXED_HEADER_LEN, OPTIONAL_FIELDS_LEN};
#[cfg(doc)]
use crate::error::Error;
use crate::error::Result;

/// Moves [`Envelope`]s over one messaging backend, by topic name.
///
/// Object safe: hold it as `Arc<dyn Transport>`. Pub/sub backends deliver at
/// most once; a subscription therefore reports every point where messages
/// may have been missed as an [`Event::Gap`], never silently.
///
/// Adapters encode the envelope with [`Envelope::encode`] unless the backend
/// carries metadata natively (Kafka headers).
pub trait Transport: Send + Sync + 'static {
    /// Short backend name for errors and logs (`"redis"`, `"memory"`...).
    fn backend(&self) -> &'static str;

    /// What this backend promises.
    fn capabilities(&self) -> Capabilities;

    /// Publishes one message on `topic`. Resolves once the backend accepted
    /// it; an oversize message fails with [`Error::PayloadTooLarge`] before
    /// anything is sent.
    ///
    /// A transport that is [`ordered`](Capabilities::ordered) hands the
    /// message to its connection (or its own ordered queue) by the end of
    /// the future's first poll, whenever the connection is up: `Channel`
    /// takes each sequence number and polls that first time under one lock,
    /// so the order of sequence numbers is the order on the wire.
    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>>;

    /// Subscribes to `topic`. Resolves once the subscription is active on the
    /// server: every message published after that is delivered or covered by
    /// a gap event. Dropping the [`Subscription`] unsubscribes.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>>;

    /// Flushes what is pending and releases connections. Later publishes fail
    /// with [`Error::Closed`]; open subscriptions end.
    fn close(&self) -> BoxFuture<'_, Result<()>>;

    /// This transport as the shared, type-erased handle `Channel` and
    /// `LocalCache` take.
    fn into_arc(self) -> Arc<dyn Transport>
    where
        Self: Sized,
    {
        Arc::new(self)
    }
}

// A shared or boxed transport is a transport, so code generic over
// `T: Transport` takes `Arc<dyn Transport>` and `Box<dyn Transport>` too.
macro_rules! forward_transport {
    ($($pointer:ident),*) => {$(
        impl<T: Transport + ?Sized> Transport for $pointer<T> {
            fn backend(&self) -> &'static str {
                (**self).backend()
            }

            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }

            fn publish<'a>(
                &'a self,
                topic: &'a str,
                envelope: &'a Envelope,
            ) -> BoxFuture<'a, Result<()>> {
                (**self).publish(topic, envelope)
            }

            fn subscribe<'a>(
                &'a self,
                topic: &'a str,
                options: SubscribeOptions,
            ) -> BoxFuture<'a, Result<Subscription>> {
                (**self).subscribe(topic, options)
            }

            fn close(&self) -> BoxFuture<'_, Result<()>> {
                (**self).close()
            }
        }
    )*};
}

forward_transport!(Arc, Box);

/// What a backend promises, so callers and the conformance suite know what to
/// expect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Largest encoded envelope ([`Envelope::encoded_len`]) the backend
    /// accepts, or `None` when it has no limit of its own.
    pub max_message_size: Option<usize>,
    /// Whether a subscription can start from the earliest retained message
    /// ([`StartFrom::Earliest`]).
    pub replay: bool,
    /// Whether one publisher's messages on a topic arrive in publish order
    /// (the order in which their [`Transport::publish`] futures were first
    /// polled), so that a jump in its sequence numbers means a lost message. False where
    /// a topic is split into partitions read in parallel (Kafka): there,
    /// losses show as [`Event::Gap`] only.
    pub ordered: bool,
    /// Whether a subscription cut off from the server resumes from its last
    /// delivered position once back and delivers everything the backend
    /// retained since, in order, then [`Event::Resumed`]: a cut is no gap.
    /// It reports [`Event::Gap`] only when that position is no longer
    /// retained (trimmed, purged, a log reset), with `missed` when known.
    pub resumable: bool,
}

impl Capabilities {
    /// Capabilities with a message size limit, ordered delivery and no replay.
    pub fn new(max_message_size: Option<usize>) -> Capabilities {
        Capabilities {
            max_message_size,
            replay: false,
            ordered: true,
            resumable: false,
        }
    }

    /// The same, with `ordered` set.
    pub fn with_ordered(mut self, ordered: bool) -> Capabilities {
        self.ordered = ordered;
        self
    }

    /// The same, with `resumable` set.
    pub fn with_resumable(mut self, resumable: bool) -> Capabilities {
        self.resumable = resumable;
        self
    }

    /// The same, with replay set.
    pub fn with_replay(mut self, replay: bool) -> Capabilities {
        self.replay = replay;
        self
    }

    /// Largest payload that fits with `key` and every optional field (TTL and
    /// version) present; `None` when unlimited.
    ///
    /// ```
    /// use hydratecache_core::Capabilities;
    /// let caps = Capabilities::new(Some(1024));
    /// assert_eq!(caps.max_payload("k"), Some(1024 - 62 - 1));
    /// ```
    pub fn max_payload(&self, key: &str) -> Option<usize> {
        self.max_message_size
            .map(|limit| limit.saturating_sub(FIXED_HEADER_LEN + OPTIONAL_FIELDS_LEN + key.len()))
    }
}

/// Where a new subscription starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartFrom {
    /// Only messages published after the subscription is active.
    #[default]
    Latest,
    /// Every retained message first (backends with [`Capabilities::replay`]).
    Earliest,
}

/// Options for [`Transport::subscribe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Where to start.
    pub start: StartFrom,
}

impl SubscribeOptions {
    /// Options starting at `start`.
    pub fn starting(start: StartFrom) -> SubscribeOptions {
        SubscribeOptions { start }
    }
}

/// Why messages may have been missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GapReason {
    /// The subscriber fell behind and its buffer overflowed.
    Lagged,
    /// The connection was lost and has been re-established.
    Reconnected,
    /// The server reported this subscriber as too slow and dropped messages.
    SlowConsumer,
    /// The backend's log was reset or truncated under the subscriber.
    Reset,
}

impl fmt::Display for GapReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GapReason::Lagged => "lagged",
            GapReason::Reconnected => "reconnected",
            GapReason::SlowConsumer => "slow consumer",
            GapReason::Reset => "log reset",
        })
    }
}

/// Messages may have been missed at this point of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Why.
    pub reason: GapReason,
    /// How many were missed, when the backend knows.
    pub missed: Option<u64>,
}

impl Gap {
    /// A gap with an unknown count.
    pub fn new(reason: GapReason) -> Gap {
        Gap {
            reason,
            missed: None,
        }
    }
}

/// Why a subscription's path to the server is known to be broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterruptReason {
    /// The connection failed or was closed.
    Disconnected,
    /// The server did not answer a probe in time: the connection may be
    /// half-open (the peer vanished without closing it).
    Unresponsive,
}

impl fmt::Display for InterruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterruptReason::Disconnected => "disconnected",
            InterruptReason::Unresponsive => "unresponsive",
        })
    }
}

/// From now on messages may be missed: the subscription's path to the
/// server is broken. See [`Event::Interrupted`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interruption {
    /// Why.
    pub reason: InterruptReason,
}

impl Interruption {
    /// An interruption for `reason`.
    pub fn new(reason: InterruptReason) -> Interruption {
        Interruption { reason }
    }
}

/// One item of a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message.
    Message(Envelope),
    /// Messages may have been missed here.
    Gap(Gap),
    /// The subscription's path to the server is known broken, reported at
    /// the moment the adapter detects it (not when it is restored): what is
    /// published from now on may not arrive. Once delivery is back, a [`Gap`](Event::Gap)
    /// follows, or [`Resumed`](Event::Resumed) where the backend lost nothing;
    /// if the transport is closed first, the stream ends.
    Interrupted(Interruption),
    /// Delivery is back after an [`Interrupted`](Event::Interrupted) and
    /// nothing was missed: what was published meanwhile came before this
    /// event (a log-based backend that resumed from its position).
    Resumed,
    /// A subscription from [`StartFrom::Earliest`] has delivered everything
    /// the log held when it started (on every partition); what follows is
    /// live. Sent once, only by backends with [`Capabilities::replay`].
    ReplayDone,
}

/// The stream of one subscription: `Ok(Event)` for messages and gaps, `Err`
/// for a message that could not be read (the stream goes on). It ends when the
/// transport is closed.
///
/// Dropping it unsubscribes. To end it on a signal, combine it with
/// [`StreamExt::take_until`](futures::StreamExt::take_until).
pub struct Subscription {
    topic: String,
    inner: BoxStream<'static, Result<Event>>,
}

impl Subscription {
    /// Wraps an adapter's stream; whatever the stream owns is released when
    /// the subscription is dropped.
    pub fn new(topic: impl Into<String>, inner: BoxStream<'static, Result<Event>>) -> Subscription {
        Subscription {
            topic: topic.into(),
            inner,
        }
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Stream for Subscription {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
