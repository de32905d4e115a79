//! The bounded buffer between the dispatcher and one subscription.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use hydratecache_core::{Event, Gap, GapReason, Result};

/// Items for one subscription, at most `capacity` of them (plus one gap).
///
/// A push onto a full queue drops the item and counts it in a pending gap;
/// the gap is delivered before the next item that fits, or as soon as the
/// subscriber has drained what is queued, whichever comes first. Gaps from
/// the connection (reconnect, client lag) join the same pending gap, so they
/// always come after what was queued before them and before anything later.
#[derive(Debug)]
pub(crate) struct Queue {
    state: Mutex<State>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Result<Event>>,
    /// Loss that happened after every item of `items`.
    pending: Option<Gap>,
    closed: bool,
    waker: Option<Waker>,
}

impl Queue {
    pub(crate) fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a message or a per-message error; on overflow it is dropped and
    /// counted in the pending gap. Returns false when it was dropped.
    pub(crate) fn push(&self, item: Result<Event>) -> bool {
        let mut state = self.state();
        if state.closed {
            return true;
        }
        let delivered = if state.items.len() >= self.capacity {
            let lost = Gap {
                reason: GapReason::Lagged,
                missed: Some(1),
            };
            state.pending = Some(merge(state.pending.take(), lost));
            false
        } else {
            if let Some(gap) = state.pending.take() {
                state.items.push_back(Ok(Event::Gap(gap)));
            }
            state.items.push_back(item);
            true
        };
        wake(state);
        delivered
    }

    /// Records that messages may have been lost at this point.
    pub(crate) fn push_gap(&self, gap: Gap) {
        let mut state = self.state();
        if state.closed {
            return;
        }
        state.pending = Some(merge(state.pending.take(), gap));
        wake(state);
    }

    /// Ends the stream once what is queued has been read.
    pub(crate) fn close(&self) {
        let mut state = self.state();
        state.closed = true;
        wake(state);
    }

    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let mut state = self.state();
        if let Some(item) = state.items.pop_front() {
            return Poll::Ready(Some(item));
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
fn merge(a: Option<Gap>, b: Gap) -> Gap {
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
    use futures::task::noop_waker_ref;
    use hydratecache_core::Envelope;

    fn msg(key: &str) -> Result<Event> {
        Ok(Event::Message(Envelope::update(key, &b"v"[..])))
    }

    fn next(q: &Queue) -> Option<Option<Result<Event>>> {
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
        let q = Queue::new(2);
        assert!(q.push(msg("a")));
        assert!(q.push(msg("b")));
        assert!(!q.push(msg("c")));
        assert!(!q.push(msg("d")));
        assert_eq!(key(next(&q)), "a");
        assert!(q.push(msg("e")));
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
        let q = Queue::new(1);
        assert!(q.push(msg("a")));
        assert!(!q.push(msg("b")));
        assert_eq!(key(next(&q)), "a");
        assert_eq!(gap(next(&q)).missed, Some(1));
        assert!(next(&q).is_none());
    }

    #[test]
    fn connection_gaps_merge_and_keep_their_reason() {
        let q = Queue::new(1);
        assert!(q.push(msg("a")));
        assert!(!q.push(msg("b")));
        q.push_gap(Gap::new(GapReason::Reconnected));
        assert_eq!(key(next(&q)), "a");
        assert_eq!(gap(next(&q)), Gap::new(GapReason::Reconnected));
    }

    #[test]
    fn close_ends_after_the_queued_items() {
        let q = Queue::new(4);
        assert!(q.push(msg("a")));
        q.close();
        assert!(q.push(msg("ignored")));
        assert_eq!(key(next(&q)), "a");
        assert!(matches!(next(&q), Some(None)));
    }
}
