//! An in-process transport: for tests, examples and single-process use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::broadcast;

use crate::adapter::{self, ClosedFlag};
use crate::envelope::Envelope;
use crate::error::Result;
use crate::transport::{
    Capabilities, Event, Gap, GapReason, SubscribeOptions, Subscription, Transport,
};

const BACKEND: &str = "memory";

/// An in-process broadcast bus that honours the [`Transport`] contract.
///
/// Messages travel encoded, as on a real backend. Each subscriber has a buffer
/// of `capacity` messages; one that falls further behind gets an
/// [`Event::Gap`] with the number missed. Clones are further clients of the
/// same bus; [`MemoryTransport::new`] makes a separate bus.
///
/// ```
/// use hydratecache_core::{MemoryTransport, Transport, Envelope, Event, SubscribeOptions};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), hydratecache_core::Error> {
/// let bus = MemoryTransport::new();
/// let mut sub = bus.subscribe("t", SubscribeOptions::default()).await?;
/// bus.publish("t", &Envelope::update("k", &b"v"[..])).await?;
/// assert!(matches!(sub.next().await, Some(Ok(Event::Message(m))) if m.key == "k"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryTransport {
    bus: Arc<Bus>,
}

#[derive(Debug)]
struct Bus {
    topics: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    capacity: usize,
    max_message_size: Option<usize>,
    closed: ClosedFlag,
}

impl Bus {
    fn topics(&self) -> MutexGuard<'_, HashMap<String, broadcast::Sender<Bytes>>> {
        adapter::lock(&self.topics)
    }
}

impl Default for MemoryTransport {
    fn default() -> Self {
        MemoryTransport::new()
    }
}

impl MemoryTransport {
    /// Default number of messages a subscriber may fall behind before it gets a gap.
    pub const DEFAULT_CAPACITY: usize = 65_536;
    /// Default message size limit, as for a typical broker (1 MiB).
    pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

    /// A new bus with the default capacity and message size limit.
    pub fn new() -> MemoryTransport {
        MemoryTransport::with_limits(Self::DEFAULT_CAPACITY, Some(Self::DEFAULT_MAX_MESSAGE_SIZE))
    }

    /// A new bus with `capacity` messages of buffer per subscriber (at least
    /// 1) and an optional message size limit.
    pub fn with_limits(capacity: usize, max_message_size: Option<usize>) -> MemoryTransport {
        MemoryTransport {
            bus: Arc::new(Bus {
                topics: Mutex::new(HashMap::new()),
                capacity: capacity.max(1),
                max_message_size,
                closed: ClosedFlag::new(),
            }),
        }
    }

    /// Puts raw bytes on `topic`, as a foreign client could: for testing how
    /// subscribers cope with malformed input. Returns the number of
    /// subscribers reached.
    pub fn publish_raw(&self, topic: &str, bytes: impl Into<Bytes>) -> Result<usize> {
        self.check_open()?;
        Ok(self.send(topic, bytes.into()))
    }

    /// Active subscriptions on `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.bus
            .topics()
            .get(topic)
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn check_open(&self) -> Result<()> {
        self.bus.closed.check(BACKEND)
    }

    fn send(&self, topic: &str, frame: Bytes) -> usize {
        let topics = self.bus.topics();
        // With no subscriber there is no sender: the message goes nowhere,
        // as on a pub/sub server.
        topics
            .get(topic)
            .and_then(|tx| tx.send(frame).ok())
            .unwrap_or(0)
    }
}

/// Removes the topic's sender once its last subscription is gone, so an idle
/// topic holds no memory.
struct Unsubscribe {
    bus: Arc<Bus>,
    topic: String,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut topics = self.bus.topics();
        // This guard runs after its receiver was dropped.
        if topics
            .get(&self.topic)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            topics.remove(&self.topic);
        }
    }
}

impl Transport for MemoryTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(self.bus.max_message_size)
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.check_open()?;
            adapter::check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let frame = Bytes::from(envelope.encode()?);
            self.send(topic, frame);
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
            adapter::refuse_replay(BACKEND, &options, "replay from the earliest message")?;
            let rx = self
                .bus
                .topics()
                .entry(topic.to_owned())
                .or_insert_with(|| broadcast::channel(self.bus.capacity).0)
                .subscribe();
            let guard = Unsubscribe {
                bus: Arc::clone(&self.bus),
                topic: topic.to_owned(),
            };
            let topic_name = topic.to_owned();
            let stream = futures::stream::unfold((rx, guard), move |(mut rx, guard)| {
                let topic = topic_name.clone();
                async move {
                    let item = match rx.recv().await {
                        Ok(frame) => adapter::decode_frame(&topic, &frame),
                        Err(broadcast::error::RecvError::Lagged(missed)) => Ok(Event::Gap(Gap {
                            reason: GapReason::Lagged,
                            missed: Some(missed),
                        })),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    Some((item, (rx, guard)))
                }
            });
            Ok(Subscription::new(topic, stream.boxed()))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            self.bus.closed.close();
            // Dropping the senders ends every subscription stream.
            self.bus.topics().clear();
            Ok(())
        }
        .boxed()
    }
}
