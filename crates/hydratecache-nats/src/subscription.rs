//! One subscription: a task draining async-nats' subscriber into the
//! subscription's bounded queue, and the stream that reads it.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_nats::{Statistics, Subscriber};
use futures::{FutureExt, Stream, StreamExt};
use hydratecache_core::{Event, Result};
use tokio::sync::oneshot;

use crate::inner::Inner;
use crate::shared::{Registration, SubState};

/// The subscription id (`sid`) async-nats gave `subscriber`, to match its
/// `SlowConsumer(sid)` events. async-nats 0.51 has no accessor; the id is the
/// first field of the derived `Debug` output (`Subscriber { sid: 7, .. }`).
/// `None` if that ever changes: such subscriptions then all get a gap on any
/// slow-consumer event that names no known subscription.
pub(crate) fn subscriber_sid(subscriber: &Subscriber) -> Option<u64> {
    sid_from_debug(&format!("{subscriber:?}"))
}

fn sid_from_debug(debug: &str) -> Option<u64> {
    let rest = debug.strip_prefix("Subscriber { sid: ")?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest.get(..end)?.parse().ok()
}

/// Most messages moved per wake-up before yielding to the runtime.
const PUMP_BATCH: usize = 256;

/// Moves messages from async-nats' subscriber (which drops messages when its
/// buffer is full) into the subscription's queue, which counts what does not
/// fit into a `Lagged` gap. Ends when the subscription is dropped (which
/// drops the subscriber: async-nats then sends `UNSUB`), the transport is
/// closed, or the client closes.
pub(crate) async fn pump(
    mut subscriber: Subscriber,
    topic: String,
    sub: Arc<SubState>,
    stats: Arc<Statistics>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut stop => break,
            message = subscriber.next() => message,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut moved = 0;
        while let Some(message) = next.take() {
            // Read after receiving: the reconnect that delivered it is counted.
            let connects = stats.connects.load(Ordering::Acquire);
            sub.deliver(&topic, &message.payload, connects);
            moved += 1;
            if moved < PUMP_BATCH {
                next = subscriber.next().now_or_never().flatten();
            }
        }
    }
    tracing::debug!(topic, "nats subscription pump ended");
}

/// The consumer side of one subscription.
pub(crate) struct SubStream {
    /// Keeps the transport (and its client) alive while the stream is.
    _transport: Arc<Inner>,
    registration: Registration,
    sub: Arc<SubState>,
}

impl SubStream {
    pub(crate) fn new(
        transport: Arc<Inner>,
        registration: Registration,
        sub: Arc<SubState>,
    ) -> SubStream {
        SubStream {
            _transport: transport,
            registration,
            sub,
        }
    }
}

impl Stream for SubStream {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // A closed transport ends its subscriptions at once, queued messages
        // or not.
        if self.registration.shared.closed.is_closed() {
            return Poll::Ready(None);
        }
        self.sub.queue.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::sid_from_debug;

    #[test]
    fn sid_is_read_from_the_debug_output() {
        assert_eq!(
            sid_from_debug("Subscriber { sid: 42, receiver: Receiver { .. } }"),
            Some(42)
        );
        assert_eq!(sid_from_debug("Subscriber { id: 42 }"), None);
        assert_eq!(sid_from_debug("Subscriber { sid: , }"), None);
        assert_eq!(
            sid_from_debug("Subscriber { sid: 99999999999999999999999, }"),
            None
        );
    }
}
