//! What a reader sends, and where it goes: every live subscription of its
//! topic, or the buffer of one replaying subscription.

use std::collections::HashSet;
use std::sync::Arc;

use hydratecache_core::adapter::{malformed, Fanout, Registered};
use hydratecache_core::{EnvelopeError, Event, Gap, InterruptReason, Interruption, Result};
use tokio::sync::Mutex;

use crate::replay::GatedSender;

/// What a reader sends to its subscriptions.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(Event),
    /// With the record key, when readable.
    Malformed(EnvelopeError, Option<String>),
}

impl Item {
    /// What it holds in memory, for the byte bound of buffers.
    fn size(&self) -> usize {
        match self {
            Item::Event(Event::Message(e)) => e.key.len().saturating_add(e.payload.len()),
            _ => 0,
        }
    }

    /// The subscription's item for a reader of `topic`.
    pub(crate) fn into_result(self, topic: &str) -> Result<Event> {
        match self {
            Item::Event(event) => Ok(event),
            Item::Malformed(source, key) => Err(malformed(topic, key.as_deref(), source)),
        }
    }
}

/// Where a reader delivers.
#[derive(Debug, Clone)]
enum Target {
    /// Every live subscription of the topic; slow ones lag.
    Shared(Arc<Fanout>),
    /// One replaying subscription, with backpressure.
    Private(GatedSender<Item>),
}

/// Where the readers of one topic deliver, and which of them are cut off
/// from the broker: the subscriptions hear of the first cut partition and
/// of the last one back, so they are never told delivery is back while a
/// partition is still cut off.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    target: Target,
    /// Held across each send that changes it, so the interruptions and
    /// resumptions of different partitions reach the subscriptions in the
    /// order they were decided.
    cut: Arc<Mutex<HashSet<i32>>>,
}

impl Sink {
    /// Every live subscription of the topic in `fanout`.
    pub(crate) fn shared(fanout: Arc<Fanout>) -> Sink {
        Sink::new(Target::Shared(fanout))
    }

    /// One replaying subscription.
    pub(crate) fn private(tx: GatedSender<Item>) -> Sink {
        Sink::new(Target::Private(tx))
    }

    fn new(target: Target) -> Sink {
        Sink {
            target,
            cut: Arc::default(),
        }
    }

    /// Registers a live subscription of `topic`; interrupted from the start
    /// if a partition is cut off now. `None` for a replaying sink.
    pub(crate) async fn register(&self, topic: &str) -> Option<Registered> {
        let Target::Shared(fanout) = &self.target else {
            return None;
        };
        let cut = self.cut.lock().await;
        let registered = fanout.register(topic, Box::new(|_| {}));
        if !cut.is_empty() {
            registered
                .queue
                .interrupt(Interruption::new(InterruptReason::Disconnected));
        }
        Some(registered)
    }

    /// The reader of `partition` lost the broker.
    pub(crate) async fn interrupted(
        &self,
        topic: &str,
        partition: i32,
        reason: InterruptReason,
    ) -> bool {
        let mut cut = self.cut.lock().await;
        let first = cut.is_empty();
        if !cut.insert(partition) || !first {
            return true;
        }
        self.send(
            topic,
            Item::Event(Event::Interrupted(Interruption::new(reason))),
        )
        .await
    }

    /// The reader of `partition` has delivered everything the broker held
    /// when it came back.
    pub(crate) async fn resumed(&self, topic: &str, partition: i32) -> bool {
        let mut cut = self.cut.lock().await;
        if !cut.remove(&partition) || !cut.is_empty() {
            return true;
        }
        self.send(topic, Item::Event(Event::Resumed)).await
    }

    /// A gap of `partition`, which also ends its cut; if others are still
    /// cut off, the subscriptions are interrupted again after it.
    pub(crate) async fn gap(&self, topic: &str, partition: i32, gap: Gap) -> bool {
        let mut cut = self.cut.lock().await;
        cut.remove(&partition);
        if !self.send(topic, Item::Event(Event::Gap(gap))).await {
            return false;
        }
        if cut.is_empty() {
            return true;
        }
        let again = Interruption::new(InterruptReason::Disconnected);
        self.send(topic, Item::Event(Event::Interrupted(again)))
            .await
    }

    /// Delivers `item` of `topic`; false once nobody can receive it any more.
    pub(crate) async fn send(&self, topic: &str, item: Item) -> bool {
        let size = item.size();
        match &self.target {
            // With no subscription left the reader is about to be dropped.
            Target::Shared(fanout) => {
                let topics = [topic.to_owned()];
                match item {
                    Item::Event(Event::Message(envelope)) => {
                        fanout.deliver(topic, Ok(envelope), size);
                    }
                    Item::Event(Event::Gap(gap)) => fanout.gap(topic, gap),
                    Item::Event(Event::Interrupted(i)) => fanout.interrupt(&topics, i),
                    Item::Event(Event::Resumed) => fanout.resume(&topics),
                    Item::Malformed(source, key) => {
                        fanout.deliver_malformed(topic, key.as_deref(), source);
                    }
                    // A live reader sends nothing else (the end of a replay
                    // is for replaying subscriptions).
                    Item::Event(_) => {}
                }
                true
            }
            Target::Private(tx) => tx.send(item, size).await,
        }
    }
}
