//! The bounded buffer between an adapter's dispatcher and one subscription.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::transport::{Event, Gap, GapReason, Interruption};

use super::sync::lock;

/// Items for one subscription, at most `capacity` messages and `max_bytes`
/// message bytes (plus gaps and connection errors).
///
/// A push onto a full queue drops the message and counts it in a pending
/// gap; the gap is delivered before the next item that fits, or as soon as
/// the subscriber has drained what is queued, whichever comes first. A
/// message larger than `max_bytes` is still taken when nothing else is
/// queued, so the bound cannot starve a subscription.
///
/// After a reconnect the gap is *held* ([`hold`](SubscriptionQueue::hold)) until the
/// server confirmed the subscription again ([`release`](SubscriptionQueue::release)):
/// delivering it earlier would let the consumer repair while messages can
/// still be lost. Messages routed meanwhile are dropped into it (they were
/// published before the gap is delivered, so the repair covers them).
///
/// An [`interrupt`](SubscriptionQueue::interrupt) is queued in order, after
/// what arrived before the loss, and is never dropped: a gap read after it
/// always ends it.
///
/// ```
/// use hydratecache_core::adapter::SubscriptionQueue;
/// use hydratecache_core::{Envelope, Event, Gap, GapReason};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let queue = std::sync::Arc::new(SubscriptionQueue::new(1, usize::MAX));
/// assert!(queue.push(Ok(Event::Message(Envelope::delete("a"))), 10));
/// assert!(!queue.push(Ok(Event::Message(Envelope::delete("b"))), 10), "full: counted in a gap");
/// let mut stream = futures::stream::poll_fn(move |cx| queue.poll_next(cx));
/// assert!(matches!(stream.next().await, Some(Ok(Event::Message(m))) if m.key == "a"));
/// assert_eq!(stream.next().await.unwrap().unwrap(), Event::Gap(Gap { reason: GapReason::Lagged, missed: Some(1) }));
/// # }
/// ```
#[derive(Debug)]
pub struct SubscriptionQueue {
    state: Mutex<State>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Entry>,
    /// Message bytes in `items`.
    bytes: usize,
    /// Messages in `items`.
    messages: usize,
    /// Loss that happened after every item of `items`.
    pending: Option<Gap>,
    /// A reconnect gap waiting for the re-subscribe of that connection epoch.
    held: Option<(Gap, u64)>,
    closed: bool,
    waker: Option<Waker>,
}

#[derive(Debug)]
struct Entry {
    item: Result<Event>,
    /// Message bytes it holds (0 for gaps and connection errors).
    bytes: usize,
    /// Whether it is a message (or a per-message error), counted in
    /// `State::messages`.
    message: bool,
}

impl Entry {
    fn gap(gap: Gap) -> Entry {
        Entry {
            item: Ok(Event::Gap(gap)),
            bytes: 0,
            message: false,
        }
    }
}

impl SubscriptionQueue {
    /// A queue of at most `capacity` messages and `max_bytes` message bytes
    /// (each at least 1).
    pub fn new(capacity: usize, max_bytes: usize) -> SubscriptionQueue {
        SubscriptionQueue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Queues a message or a per-message error of `size` bytes; on overflow
    /// it is dropped and counted in the pending gap. Returns false when it
    /// was dropped.
    pub fn push(&self, item: Result<Event>, size: usize) -> bool {
        let mut state = self.state();
        if state.closed {
            return true;
        }
        if state.held.is_some() {
            // Covered by the held gap, which is delivered after it.
            return false;
        }
        let full = state.messages >= self.capacity
            || (state.messages > 0 && state.bytes.saturating_add(size) > self.max_bytes);
        let delivered = if full {
            let lost = Gap {
                reason: GapReason::Lagged,
                missed: Some(1),
            };
            state.pending = Some(merge(state.pending.take(), lost));
            false
        } else {
            if let Some(gap) = state.pending.take() {
                state.items.push_back(Entry::gap(gap));
            }
            state.items.push_back(Entry {
                item,
                bytes: size,
                message: true,
            });
            state.messages += 1;
            state.bytes = state.bytes.saturating_add(size);
            true
        };
        wake(state);
        delivered
    }

    /// Records that messages may have been lost at this point.
    pub fn push_gap(&self, gap: Gap) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        if let Some((held, epoch)) = state.held.take() {
            state.held = Some((merge(Some(held), gap), epoch));
            return;
        }
        state.pending = Some(merge(state.pending.take(), gap));
        wake(state);
    }

    /// A reconnect (connection `epoch`) lost messages from here on; the gap
    /// waits for [`release`](Self::release) with that epoch or a later one.
    pub fn hold(&self, gap: Gap, epoch: u64) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        let merged = match state.held.take() {
            Some((held, e)) => (merge(Some(held), gap), e.max(epoch)),
            None => (gap, epoch),
        };
        state.held = Some(merged);
    }

    /// The server confirmed the subscription on connection `epoch`: a gap
    /// held for that epoch (or an earlier one) becomes deliverable.
    pub fn release(&self, epoch: u64) {
        let mut state = self.state();
        match state.held {
            Some((_, held)) if held <= epoch => {}
            _ => return,
        }
        if let Some((gap, _)) = state.held.take() {
            state.pending = Some(merge(state.pending.take(), gap));
        }
        wake(state);
    }

    /// The path to the server is broken: [`Event::Interrupted`] after what
    /// is queued, whatever the bound. Skipped when the last item queued is
    /// already an unread interruption.
    pub fn interrupt(&self, interruption: Interruption) {
        let mut state = self.state();
        let unread = state
            .items
            .back()
            .is_some_and(|e| matches!(e.item, Ok(Event::Interrupted(_))));
        if state.closed || (unread && state.pending.is_none()) {
            return;
        }
        if let Some(gap) = state.pending.take() {
            state.items.push_back(Entry::gap(gap));
        }
        state.items.push_back(Entry {
            item: Ok(Event::Interrupted(interruption)),
            bytes: 0,
            message: false,
        });
        wake(state);
    }

    /// Delivery is back after an interruption and nothing was lost:
    /// [`Event::Resumed`] after what is queued. Ignored while a reconnect gap
    /// is held (that gap ends the interruption).
    pub fn resume(&self) {
        let mut state = self.state();
        if state.closed || state.held.is_some() {
            return;
        }
        if let Some(gap) = state.pending.take() {
            state.items.push_back(Entry::gap(gap));
        }
        state.items.push_back(Entry {
            item: Ok(Event::Resumed),
            bytes: 0,
            message: false,
        });
        wake(state);
    }

    /// An error about the subscription itself (not about one message), for
    /// example a failing re-subscribe. Skipped when the previous one is still
    /// unread or the queue is full: the subscriber is behind, and a gap
    /// follows whatever happens. Returns false when skipped.
    pub fn push_error(&self, error: Error) -> bool {
        let mut state = self.state();
        let unread = state
            .items
            .back()
            .is_some_and(|e| !e.message && e.item.is_err());
        if state.closed || unread || state.items.len() >= self.capacity {
            return false;
        }
        if let Some(gap) = state.pending.take() {
            state.items.push_back(Entry::gap(gap));
        }
        state.items.push_back(Entry {
            item: Err(error),
            bytes: 0,
            message: false,
        });
        wake(state);
        true
    }

    /// Ends the stream once what is queued has been read.
    pub fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        wake(state);
    }

    /// The next item for the subscription's stream: queued items in order,
    /// then a pending gap; `None` once closed and drained.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let mut state = self.state();
        if let Some(entry) = state.items.pop_front() {
            if entry.message {
                state.messages = state.messages.saturating_sub(1);
            }
            state.bytes = state.bytes.saturating_sub(entry.bytes);
            return Poll::Ready(Some(entry.item));
        }
        if let Some(gap) = state.pending.take() {
            return Poll::Ready(Some(Ok(Event::Gap(gap))));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match state.waker {
            Some(ref w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

fn wake(mut state: MutexGuard<'_, State>) {
    let waker = state.waker.take();
    drop(state);
    if let Some(w) = waker {
        w.wake();
    }
}

/// One gap covering both: the connection's reason wins over lag, and the
/// count is known only when both are.
pub(crate) fn merge(a: Option<Gap>, b: Gap) -> Gap {
    let Some(a) = a else { return b };
    let reason = if a.reason == GapReason::Lagged {
        b.reason
    } else {
        a.reason
    };
    let missed = match (a.missed, b.missed) {
        (Some(x), Some(y)) => Some(x.saturating_add(y)),
        _ => None,
    };
    Gap { reason, missed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use futures::task::noop_waker_ref;

    fn msg(key: &str) -> Result<Event> {
        Ok(Event::Message(Envelope::update(key, &b"v"[..])))
    }

    fn next(q: &SubscriptionQueue) -> Option<Option<Result<Event>>> {
        match q.poll_next(&mut Context::from_waker(noop_waker_ref())) {
            Poll::Ready(item) => Some(item),
            Poll::Pending => None,
        }
    }

    fn key(item: Option<Option<Result<Event>>>) -> String {
        match item {
            Some(Some(Ok(Event::Message(m)))) => m.key,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn gap(item: Option<Option<Result<Event>>>) -> Gap {
        match item {
            Some(Some(Ok(Event::Gap(g)))) => g,
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    #[test]
    fn overflow_becomes_a_counted_gap_after_what_was_queued() {
        let q = SubscriptionQueue::new(2, usize::MAX);
        assert!(q.push(msg("a"), 1));
        assert!(q.push(msg("b"), 1));
        assert!(!q.push(msg("c"), 1));
        assert!(!q.push(msg("d"), 1));
        assert_eq!(key(next(&q)), "a");
        assert!(q.push(msg("e"), 1));
        assert_eq!(key(next(&q)), "b");
        assert_eq!(
            gap(next(&q)),
            Gap {
                reason: GapReason::Lagged,
                missed: Some(2)
            }
        );
        assert_eq!(key(next(&q)), "e");
        assert!(next(&q).is_none());
    }

    #[test]
    fn a_pending_gap_is_delivered_once_the_queue_is_drained() {
        let q = SubscriptionQueue::new(1, usize::MAX);
        assert!(q.push(msg("a"), 1));
        assert!(!q.push(msg("b"), 1));
        assert_eq!(key(next(&q)), "a");
        assert_eq!(gap(next(&q)).missed, Some(1));
        assert!(next(&q).is_none());
    }

    #[test]
    fn connection_gaps_merge_and_keep_their_reason() {
        let q = SubscriptionQueue::new(1, usize::MAX);
        assert!(q.push(msg("a"), 1));
        assert!(!q.push(msg("b"), 1));
        q.push_gap(Gap::new(GapReason::Reconnected));
        assert_eq!(key(next(&q)), "a");
        assert_eq!(gap(next(&q)), Gap::new(GapReason::Reconnected));
    }

    #[test]
    fn close_ends_after_the_queued_items() {
        let q = SubscriptionQueue::new(4, usize::MAX);
        assert!(q.push(msg("a"), 1));
        q.close();
        assert!(q.push(msg("ignored"), 1));
        assert_eq!(key(next(&q)), "a");
        assert!(matches!(next(&q), Some(None)));
    }

    #[test]
    fn the_byte_bound_drops_and_counts_like_the_count_bound() {
        let q = SubscriptionQueue::new(100, 10);
        assert!(q.push(msg("a"), 4));
        assert!(q.push(msg("b"), 4));
        assert!(!q.push(msg("c"), 4), "12 bytes would pass the bound of 10");
        assert!(q.push(msg("d"), 2), "10 bytes fit");
        assert!(!q.push(msg("e"), 1));
        assert_eq!(key(next(&q)), "a");
        // 6 bytes queued again: room for 4.
        assert!(q.push(msg("f"), 4));
        assert_eq!(key(next(&q)), "b");
        let lagged = Gap {
            reason: GapReason::Lagged,
            missed: Some(1),
        };
        assert_eq!(gap(next(&q)), lagged, "c");
        assert_eq!(key(next(&q)), "d");
        assert_eq!(gap(next(&q)), lagged, "e");
        assert_eq!(key(next(&q)), "f");
        assert!(next(&q).is_none());
    }

    #[test]
    fn a_message_over_the_byte_bound_passes_when_nothing_is_queued() {
        let q = SubscriptionQueue::new(100, 10);
        assert!(q.push(msg("huge"), 50));
        assert!(!q.push(msg("small"), 1));
        assert_eq!(key(next(&q)), "huge");
        assert_eq!(gap(next(&q)).missed, Some(1));
        assert!(q.push(msg("huge2"), 50));
        assert_eq!(key(next(&q)), "huge2");
    }

    #[test]
    fn an_interruption_comes_in_order_and_is_never_dropped() {
        use crate::transport::InterruptReason;
        let q = SubscriptionQueue::new(1, usize::MAX);
        assert!(q.push(msg("before"), 1));
        assert!(!q.push(msg("lost"), 1));
        q.interrupt(Interruption::new(InterruptReason::Unresponsive));
        q.interrupt(Interruption::new(InterruptReason::Disconnected));
        q.hold(Gap::new(GapReason::Reconnected), 1);
        assert_eq!(key(next(&q)), "before");
        assert_eq!(
            gap(next(&q)).missed,
            Some(1),
            "the lag came before the loss"
        );
        assert!(matches!(
            next(&q),
            Some(Some(Ok(Event::Interrupted(i)))) if i.reason == InterruptReason::Unresponsive
        ));
        assert!(
            next(&q).is_none(),
            "one interruption while unread; the gap is held"
        );
        q.release(1);
        assert_eq!(gap(next(&q)), Gap::new(GapReason::Reconnected));
        q.interrupt(Interruption::new(InterruptReason::Disconnected));
        assert!(q.push(msg("backlog"), 1));
        q.resume();
        assert!(matches!(next(&q), Some(Some(Ok(Event::Interrupted(_))))));
        assert_eq!(key(next(&q)), "backlog");
        assert!(matches!(next(&q), Some(Some(Ok(Event::Resumed)))));
    }

    #[test]
    fn a_held_gap_waits_for_its_epoch_and_swallows_messages_meanwhile() {
        let q = SubscriptionQueue::new(10, usize::MAX);
        assert!(q.push(msg("before"), 1));
        q.hold(Gap::new(GapReason::Reconnected), 3);
        assert!(!q.push(msg("while held"), 1));
        assert_eq!(key(next(&q)), "before");
        assert!(next(&q).is_none(), "the gap is held");
        q.release(2);
        assert!(next(&q).is_none(), "an older epoch does not release it");
        assert!(q.push_error(Error::Closed { backend: "test" }));
        assert!(
            !q.push_error(Error::Closed { backend: "test" }),
            "one unread error is enough"
        );
        assert!(matches!(next(&q), Some(Some(Err(Error::Closed { .. })))));
        q.release(3);
        assert_eq!(gap(next(&q)), Gap::new(GapReason::Reconnected));
        assert!(q.push(msg("after"), 1));
        assert_eq!(key(next(&q)), "after");
    }
}
