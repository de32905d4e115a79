//! The streams of subscriptions: live ones on their topic's shared reader,
//! replaying ones on a reader of their own. Both end when the transport
//! closes, without reading what is still buffered.

use std::sync::Arc;

use futures::StreamExt;
use hydratecache_core::adapter::Registered;
use hydratecache_core::{Event, GapReason, Subscription};
use tokio::sync::{mpsc, watch};

use crate::reader::ReaderHandle;
use crate::replay::Gated;
use crate::sink::{Item, Sink};

/// A topic's reader shared by the transport's live subscriptions; dropped
/// (and its tasks aborted) with the last of them.
#[derive(Debug)]
pub(crate) struct SharedReader {
    _handle: ReaderHandle,
    /// Where the reader delivers: new subscriptions register there.
    pub(crate) sink: Sink,
}

impl SharedReader {
    pub(crate) fn new(handle: ReaderHandle, sink: Sink) -> SharedReader {
        SharedReader {
            _handle: handle,
            sink,
        }
    }
}

/// The stream of a live subscription, `registered` with `reader`'s fan-out.
pub(crate) fn shared_subscription(
    topic: &str,
    registered: Registered,
    reader: Arc<SharedReader>,
    closed: Arc<watch::Sender<bool>>,
) -> Subscription {
    struct State {
        topic: String,
        registered: Registered,
        closed: watch::Receiver<bool>,
        // Keeps the reader (and the close signal) alive while subscribed.
        _reader: Arc<SharedReader>,
        _closed: Arc<watch::Sender<bool>>,
    }
    let state = State {
        topic: topic.to_owned(),
        registered,
        closed: closed.subscribe(),
        _reader: reader,
        _closed: closed,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let item = tokio::select! {
            biased;
            _ = s.closed.wait_for(|c| *c) => return None,
            item = s.registered.stream.next() => item?,
        };
        if let Ok(Event::Gap(gap)) = &item {
            if gap.reason == GapReason::Lagged {
                tracing::warn!(topic = %s.topic, missed = ?gap.missed, "subscriber lagged: gap");
            }
        }
        Some((item, s))
    });
    Subscription::new(topic, stream.boxed())
}

/// The stream of a replaying subscription with its own reader.
pub(crate) fn private_subscription(
    topic: &str,
    rx: mpsc::Receiver<Gated<Item>>,
    handle: ReaderHandle,
    closed: Arc<watch::Sender<bool>>,
) -> Subscription {
    struct State {
        topic: String,
        rx: mpsc::Receiver<Gated<Item>>,
        closed: watch::Receiver<bool>,
        _handle: ReaderHandle,
        _closed: Arc<watch::Sender<bool>>,
    }
    let state = State {
        topic: topic.to_owned(),
        rx,
        closed: closed.subscribe(),
        _handle: handle,
        _closed: closed,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        let item = tokio::select! {
            biased;
            _ = s.closed.wait_for(|c| *c) => return None,
            r = s.rx.recv() => r?,
        };
        // Taking the item out releases its share of the byte bound.
        Some((item.item.into_result(&s.topic), s))
    });
    Subscription::new(topic, stream.boxed())
}
