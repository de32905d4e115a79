//! Subscriptions fed by a reader task of their own, for backends that keep
//! what was published (logs, streams, tables): the task reads ahead at most
//! [`READ_AHEAD`] events and then waits for the consumer, since nothing is
//! lost by waiting.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::transport::{Event, Subscription};

/// Events a reader task may have waiting for its subscription's consumer.
pub const READ_AHEAD: usize = 1024;

/// The channel a reader task sends a subscription's events into.
pub fn read_ahead_channel() -> (mpsc::Sender<Result<Event>>, mpsc::Receiver<Result<Event>>) {
    mpsc::channel(READ_AHEAD)
}

/// The subscription to `topic` whose events come from `events` (the other
/// end of [`read_ahead_channel`]), holding `keep` (the transport's shared
/// state, its connections) alive while it lives. Dropping it closes the
/// channel: the reader task sees its sender closed and ends.
pub fn read_ahead_subscription<K: Send + Sync + Unpin + 'static>(
    topic: &str,
    events: mpsc::Receiver<Result<Event>>,
    keep: K,
) -> Subscription {
    Subscription::new(
        topic,
        Box::pin(ReadAhead {
            events,
            _keep: keep,
        }),
    )
}

struct ReadAhead<K> {
    events: mpsc::Receiver<Result<Event>>,
    _keep: K,
}

impl<K: Unpin> Stream for ReadAhead<K> {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().events.poll_recv(cx)
    }
}
