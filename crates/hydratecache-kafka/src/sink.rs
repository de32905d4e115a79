//! What a reader sends, and where it goes: every live subscription of its
//! topic, or the buffer of one replaying subscription.

use std::sync::Arc;

use hydratecache_core::adapter::{malformed, Fanout};
use hydratecache_core::{EnvelopeError, Event, Result};

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
pub(crate) enum Sink {
    /// Every live subscription of the topic; slow ones lag.
    Shared(Arc<Fanout>),
    /// One replaying subscription, with backpressure.
    Private(GatedSender<Item>),
}

impl Sink {
    /// Delivers `item` of `topic`; false once nobody can receive it any more.
    pub(crate) async fn send(&self, topic: &str, item: Item) -> bool {
        let size = item.size();
        match self {
            // With no subscription left the reader is about to be dropped.
            Sink::Shared(fanout) => {
                match item {
                    Item::Event(Event::Message(envelope)) => {
                        fanout.deliver(topic, Ok(envelope), size);
                    }
                    Item::Event(Event::Gap(gap)) => fanout.gap(topic, gap),
                    Item::Malformed(source, key) => {
                        fanout.deliver_malformed(topic, key.as_deref(), source);
                    }
                    // A live reader sends nothing else (the end of a replay
                    // is for replaying subscriptions).
                    Item::Event(_) => {}
                }
                true
            }
            Sink::Private(tx) => tx.send(item, size).await,
        }
    }
}
