//! State shared by a transport's connection-event callback, its reconnect
//! monitor and its subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use hydratecache_core::adapter::{decode_frame, lock, ClosedFlag, SubscriptionQueue};
use hydratecache_core::{Gap, GapReason, InterruptReason, Interruption};
use tokio::sync::{oneshot, Notify};

/// State the connection-event callback and the subscriptions share. It holds
/// no client, so the callback (owned by the client) makes no cycle.
#[derive(Debug)]
pub(crate) struct Shared {
    subs: Mutex<HashMap<u64, Registered>>,
    next_id: AtomicU64,
    pub(crate) closed: ClosedFlag,
    /// Wakes the reconnect monitor.
    pub(crate) kick: Notify,
}

#[derive(Debug)]
struct Registered {
    sid: Option<u64>,
    sub: Arc<SubState>,
    /// Dropped with the entry: ends the subscription's pump.
    _stop: oneshot::Sender<()>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: ClosedFlag::new(),
            kick: Notify::new(),
        }
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        lock(&self.subs)
    }

    /// Registers a subscription (its async-nats id, if known, and its queue)
    /// until the returned guard is dropped; the receiver completes when the
    /// subscription's pump must stop (dropped, or the transport closed).
    pub(crate) fn register(
        shared: &Arc<Shared>,
        sid: Option<u64>,
        sub: Arc<SubState>,
    ) -> (Registration, oneshot::Receiver<()>) {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop, stopped) = oneshot::channel();
        let mut subs = shared.subs();
        // Checked under the lock `close` drains: a subscription registered
        // while it closes is either drained by it or never entered.
        if shared.closed.is_closed() {
            sub.queue.close();
        } else {
            subs.insert(
                id,
                Registered {
                    sid,
                    sub,
                    _stop: stop,
                },
            );
        }
        drop(subs);
        let registration = Registration {
            shared: Arc::clone(shared),
            id,
        };
        (registration, stopped)
    }

    /// Marks the transport closed and ends every subscription (and its
    /// pump); true for the call that closed it.
    pub(crate) fn close(&self) -> bool {
        if !self.closed.close() {
            return false;
        }
        for (_, registered) in self.subs().drain() {
            registered.sub.queue.close();
        }
        self.kick.notify_one();
        true
    }

    /// The server confirmed the re-sent subscriptions on connection
    /// `connects`: the subscriptions still behind it get their gap.
    pub(crate) fn reconnected(&self, connects: u64) {
        for registered in self.subs().values() {
            registered.sub.reconnected(connects);
        }
    }

    pub(crate) fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Connected => {
                tracing::debug!("nats connected");
                self.kick.notify_one();
            }
            E::Disconnected => {
                tracing::warn!(
                    "nats disconnected: subscriptions are interrupted until reconnected"
                );
                self.interrupt_all(InterruptReason::Disconnected);
            }
            E::SlowConsumer(sid) => self.slow_consumer(sid),
            E::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
            E::ClientError(e) => tracing::warn!(error = %e, "nats client error"),
            other => tracing::debug!(event = %other, "nats event"),
        }
    }

    /// The connection is known broken: every subscription is told now.
    pub(crate) fn interrupt_all(&self, reason: InterruptReason) {
        for registered in self.subs().values() {
            registered.sub.queue.interrupt(Interruption::new(reason));
        }
    }

    /// async-nats dropped a message for subscription `sid`: that
    /// subscription gets a gap; if some subscription's id could not be read,
    /// all such subscriptions get one.
    fn slow_consumer(&self, sid: u64) {
        let gap = || Gap::new(GapReason::SlowConsumer);
        let subs = self.subs();
        if let Some(r) = subs.values().find(|r| r.sid == Some(sid)) {
            tracing::warn!(
                sid,
                "nats slow consumer: messages dropped, signalling a gap"
            );
            r.sub.queue.push_gap(gap());
            return;
        }
        let mut unmapped = 0;
        for r in subs.values().filter(|r| r.sid.is_none()) {
            r.sub.queue.push_gap(gap());
            unmapped += 1;
        }
        if unmapped > 0 {
            tracing::warn!(
                sid,
                unmapped,
                "nats slow consumer on an unmapped subscription: signalling a gap on each"
            );
        } else {
            tracing::debug!(sid, "nats slow consumer on a subscription that is not ours");
        }
    }
}

/// A subscription's entry in [`Shared`], removed when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    pub(crate) shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.subs().remove(&self.id);
    }
}

/// One subscription: its queue, fed by its pump, and the connection it has
/// reported gaps up to.
#[derive(Debug)]
pub(crate) struct SubState {
    pub(crate) queue: SubscriptionQueue,
    /// Connection count this subscription has reported gaps up to. Held
    /// across a gap and the message it goes before, so the monitor's gap for
    /// an idle subscription cannot land after a message of the new
    /// connection.
    generation: Mutex<u64>,
}

impl SubState {
    /// A subscription made on connection `generation`, buffering at most
    /// `capacity` messages and `max_bytes` payload bytes.
    pub(crate) fn new(capacity: usize, max_bytes: usize, generation: u64) -> SubState {
        SubState {
            queue: SubscriptionQueue::new(capacity, max_bytes),
            generation: Mutex::new(generation),
        }
    }

    /// Queues a message of `topic` the pump received when the client had
    /// made `connects` connections: after a `Reconnected` gap if it came
    /// over a newer connection than the last reported.
    pub(crate) fn deliver(&self, topic: &str, payload: &Bytes, connects: u64) {
        let item = decode_frame(topic, payload);
        let mut generation = lock(&self.generation);
        if connects > *generation {
            *generation = connects;
            tracing::debug!(topic, connects, "nats gap: a message over a new connection");
            self.queue.push_gap(Gap::new(GapReason::Reconnected));
        }
        self.queue.push(item, payload.len());
    }

    /// Connection `connects` is confirmed: a gap unless already reported.
    fn reconnected(&self, connects: u64) {
        let mut generation = lock(&self.generation);
        if connects > *generation {
            *generation = connects;
            self.queue.push_gap(Gap::new(GapReason::Reconnected));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use hydratecache_core::{Envelope, Event};

    fn frame(key: &str) -> Bytes {
        Bytes::from(Envelope::delete(key).encode().unwrap())
    }

    async fn next(sub: &SubState) -> Option<hydratecache_core::Result<Event>> {
        futures::stream::poll_fn(|cx| sub.queue.poll_next(cx))
            .next()
            .await
    }

    fn is_reconnect(item: Option<hydratecache_core::Result<Event>>) -> bool {
        matches!(item, Some(Ok(Event::Gap(g))) if g.reason == GapReason::Reconnected)
    }

    #[tokio::test]
    async fn one_gap_per_new_connection_before_its_first_message() {
        let sub = SubState::new(16, usize::MAX, 1);
        sub.deliver("t", &frame("a"), 1);
        sub.deliver("t", &frame("b"), 2);
        sub.reconnected(2);
        sub.reconnected(3);
        assert!(matches!(next(&sub).await, Some(Ok(Event::Message(m))) if m.key == "a"));
        assert!(is_reconnect(next(&sub).await));
        assert!(matches!(next(&sub).await, Some(Ok(Event::Message(m))) if m.key == "b"));
        assert!(
            is_reconnect(next(&sub).await),
            "the idle gap for connection 3"
        );
        assert!(futures::poll!(Box::pin(next(&sub))).is_pending());
    }

    #[tokio::test]
    async fn close_ends_registered_and_later_subscriptions() {
        let shared = Arc::new(Shared::new());
        let before = Arc::new(SubState::new(16, usize::MAX, 1));
        let (_registration, mut stop) = Shared::register(&shared, Some(1), Arc::clone(&before));
        assert!(stop.try_recv().is_err(), "running");
        assert!(shared.close());
        assert!(!shared.close(), "closed once");
        assert!(stop.await.is_err(), "the pump is stopped");
        assert!(next(&before).await.is_none());
        let after = Arc::new(SubState::new(16, usize::MAX, 1));
        let (_registration, stop) = Shared::register(&shared, None, Arc::clone(&after));
        assert!(stop.await.is_err());
        assert!(next(&after).await.is_none());
    }
}
