//! What a [`Channel`](crate::Channel)'s subscribers receive: the
//! [`ChannelEvent`]s of a [`ChannelSubscription`].

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::Stream;

use crate::codec::{Codec, CodecPanicked};
use crate::envelope::Envelope;
use crate::error::{BoxError, Error, Result};
use crate::fields::{Kind, PublisherId, Ttl};
use crate::transport::{Event, Gap, Interruption, Subscription};

/// A received update.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Message<T> {
    /// The key.
    pub key: String,
    /// The decoded value.
    pub value: T,
    /// Time to live, if the publisher set one.
    pub ttl: Option<Ttl>,
    /// Version at the source of truth, if the publisher set one.
    pub version: Option<u64>,
    /// Who published it.
    pub publisher: PublisherId,
    /// The publisher's sequence number.
    pub sequence: u64,
    /// When it was published.
    pub published_at: SystemTime,
}

impl<T> Message<T> {
    /// Time left to live, `None` without a TTL (zero once expired).
    pub fn remaining(&self) -> Option<Duration> {
        self.ttl.map(|ttl| ttl.remaining())
    }
}

/// A received delete (or invalidation) of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deletion {
    /// The key.
    pub key: String,
    /// Version of the delete, if the publisher set one.
    pub version: Option<u64>,
    /// Who published it.
    pub publisher: PublisherId,
    /// The publisher's sequence number.
    pub sequence: u64,
    /// When it was published.
    pub published_at: SystemTime,
}

/// A publisher's "I am idle, my last sequence was N".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Heartbeat {
    /// Who sent it.
    pub publisher: PublisherId,
    /// The publisher's latest sequence number.
    pub sequence: u64,
    /// Its promise: its next message or heartbeat within this (zero: a
    /// goodbye); `None` when it promised nothing (see
    /// [`Channel::heartbeat_with_lease`](crate::Channel::heartbeat_with_lease)).
    pub lease: Option<Duration>,
    /// When it was sent (the publisher's clock).
    pub published_at: SystemTime,
}

/// One item of a [`ChannelSubscription`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ChannelEvent<T> {
    /// A key was set.
    Update(Message<T>),
    /// A key was deleted.
    Delete(Deletion),
    /// A publisher's heartbeat.
    Heartbeat(Heartbeat),
    /// Messages may have been missed here: repair what depends on them.
    Gap(Gap),
    /// The path to the server is broken: what is published from now on may
    /// not arrive until a gap or [`Resumed`](ChannelEvent::Resumed) follows
    /// (see [`Event::Interrupted`]).
    Interrupted(Interruption),
    /// Delivery is back after an interruption and nothing was missed (see
    /// [`Event::Resumed`]).
    Resumed,
    /// A replay from the earliest message has caught up with the log as it
    /// was at subscribe time (see [`Event::ReplayDone`]).
    ReplayDone,
}

/// The typed stream of a [`Channel`](crate::Channel): updates, deletes,
/// heartbeats and gaps; `Err` items for messages that could not be decoded
/// (the stream goes on). Dropping it unsubscribes.
pub struct ChannelSubscription<T> {
    inner: Subscription,
    codec: Arc<dyn Codec<T>>,
    /// The publisher id of the channel that subscribed.
    publisher: PublisherId,
    /// Set by [`skip_own`](Self::skip_own): counts the messages skipped.
    skip_own: Option<Arc<AtomicU64>>,
    catch_codec_panics: bool,
}

impl<T> fmt::Debug for ChannelSubscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSubscription")
            .field("topic", &self.inner.topic())
            .finish_non_exhaustive()
    }
}

impl<T: 'static> ChannelSubscription<T> {
    /// The typed stream of `inner`, decoded by `codec`, for the channel
    /// publishing as `publisher`.
    pub(crate) fn new(
        inner: Subscription,
        codec: Arc<dyn Codec<T>>,
        publisher: PublisherId,
    ) -> ChannelSubscription<T> {
        ChannelSubscription {
            inner,
            codec,
            publisher,
            skip_own: None,
            catch_codec_panics: false,
        }
    }

    /// Skips every message (update, delete, heartbeat) that the channel
    /// which subscribed published itself, under its [`PublisherId`] (shared
    /// by its clones, not by
    /// [`Channel::with_new_publisher`](crate::Channel::with_new_publisher)):
    /// such echoes are neither decoded nor yielded, and each is counted in
    /// `skipped`.
    ///
    /// For a subscriber that already applied its own writes, such as a
    /// cache, and must not apply an echo that arrives after another
    /// publisher's newer write.
    pub fn skip_own(mut self, skipped: Arc<AtomicU64>) -> Self {
        self.skip_own = Some(skipped);
        self
    }

    /// Catches a panic of the codec's `decode`: the message is yielded as
    /// an [`Error::Decode`] whose source is a [`CodecPanicked`], and the
    /// stream goes on. Without it, the panic unwinds through the poll of
    /// this stream.
    pub fn catch_codec_panics(mut self) -> Self {
        self.catch_codec_panics = true;
        self
    }

    /// Whether `envelope` is an echo to skip (counted).
    fn skips(&self, envelope: &Envelope) -> bool {
        match &self.skip_own {
            Some(skipped) if envelope.publisher == self.publisher => {
                skipped.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    fn decode(&self, payload: &[u8]) -> Result<T, BoxError> {
        if !self.catch_codec_panics {
            return self.codec.decode(payload);
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.codec.decode(payload)))
            .unwrap_or_else(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(not a string)".to_owned());
                Err(Box::new(CodecPanicked { message }))
            })
    }

    fn typed(&self, envelope: Envelope) -> Result<ChannelEvent<T>> {
        Ok(match envelope.kind {
            Kind::Update => {
                let value = self.decode(&envelope.payload).map_err(|source| {
                    tracing::warn!(topic = self.inner.topic(), key = %envelope.key, error = %source, "cannot decode value");
                    Error::Decode {
                        key: envelope.key.clone(),
                        publisher: envelope.publisher,
                        sequence: envelope.sequence,
                        source,
                    }
                })?;
                ChannelEvent::Update(Message {
                    key: envelope.key,
                    value,
                    ttl: envelope.ttl,
                    version: envelope.version,
                    publisher: envelope.publisher,
                    sequence: envelope.sequence,
                    published_at: envelope.published_at,
                })
            }
            Kind::Delete => ChannelEvent::Delete(Deletion {
                key: envelope.key,
                version: envelope.version,
                publisher: envelope.publisher,
                sequence: envelope.sequence,
                published_at: envelope.published_at,
            }),
            Kind::Heartbeat => ChannelEvent::Heartbeat(Heartbeat {
                publisher: envelope.publisher,
                sequence: envelope.sequence,
                lease: envelope.ttl.map(|ttl| ttl.duration),
                published_at: envelope.published_at,
            }),
        })
    }

    /// The underlying raw subscription's topic.
    pub fn topic(&self) -> &str {
        self.inner.topic()
    }
}

impl<T: 'static> Stream for ChannelSubscription<T> {
    type Item = Result<ChannelEvent<T>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let event = match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => event,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            return Poll::Ready(Some(match event {
                Event::Gap(gap) => {
                    tracing::warn!(topic = self.inner.topic(), reason = %gap.reason, missed = ?gap.missed, "gap");
                    Ok(ChannelEvent::Gap(gap))
                }
                Event::ReplayDone => Ok(ChannelEvent::ReplayDone),
                Event::Interrupted(interruption) => {
                    tracing::warn!(topic = self.inner.topic(), reason = %interruption.reason, "subscription interrupted");
                    Ok(ChannelEvent::Interrupted(interruption))
                }
                Event::Resumed => Ok(ChannelEvent::Resumed),
                Event::Message(envelope) if self.skips(&envelope) => continue,
                Event::Message(envelope) => self.typed(envelope),
            }));
        }
    }
}
