//! Per-subscription buffers, bounded in messages and in bytes.
//!
//! A live subscription has its own queue, filled by its topic's shared
//! reader: what does not fit is dropped and counted, and the count comes out
//! as a lag report at the place of the drop. A replaying subscription's
//! buffer makes its reader wait instead: Kafka keeps the log.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// How much one subscription may buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Messages (at least 1).
    pub(crate) items: usize,
    /// Bytes: a message that would take the buffer past it does not fit,
    /// unless the buffer is empty (so any single message fits).
    pub(crate) bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding these locks; recover if one ever did.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a live subscription's queue gives next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<T> {
    Item(T),
    /// This many items were dropped here because the queue was full.
    Lagged(u64),
}

/// The live subscriptions of one shared reader.
#[derive(Debug)]
pub(crate) struct Fanout<T> {
    queues: Mutex<Vec<Weak<Queue<T>>>>,
    limits: Limits,
}

impl<T: Clone> Fanout<T> {
    pub(crate) fn new(limits: Limits) -> Fanout<T> {
        Fanout {
            queues: Mutex::new(Vec::new()),
            limits,
        }
    }

    /// A new queue that receives every item sent from now on.
    pub(crate) fn subscribe(&self) -> Arc<Queue<T>> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                dropped: 0,
            }),
            notify: Notify::new(),
            limits: self.limits,
        });
        lock(&self.queues).push(Arc::downgrade(&queue));
        queue
    }

    /// Queues `item` (`size` bytes) for every subscription that still
    /// exists; one that is full counts it as dropped. Never waits.
    pub(crate) fn send(&self, item: T, size: usize) {
        let mut queues = lock(&self.queues);
        queues.retain(|weak| match weak.upgrade() {
            Some(queue) => {
                queue.push(item.clone(), size);
                true
            }
            None => false,
        });
    }
}

/// One live subscription's queue.
#[derive(Debug)]
pub(crate) struct Queue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    limits: Limits,
}

#[derive(Debug)]
struct State<T> {
    /// Each item with its size and the items dropped just before it.
    items: VecDeque<(T, usize, u64)>,
    bytes: usize,
    /// Items dropped since the last one queued.
    dropped: u64,
}

impl<T> Queue<T> {
    fn push(&self, item: T, size: usize) {
        let mut s = lock(&self.state);
        let fits = s.items.is_empty()
            || (s.items.len() < self.limits.items
                && s.bytes.saturating_add(size) <= self.limits.bytes);
        if fits {
            let dropped = std::mem::take(&mut s.dropped);
            s.bytes = s.bytes.saturating_add(size);
            s.items.push_back((item, size, dropped));
        } else {
            s.dropped = s.dropped.saturating_add(1);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// The next item, or the count of those dropped before it; waits while
    /// there is neither.
    pub(crate) async fn recv(&self) -> Received<T> {
        loop {
            if let Some(next) = self.try_recv() {
                return next;
            }
            // One receiver per queue: a push between the check and this wait
            // leaves a permit, so it is not missed.
            self.notify.notified().await;
        }
    }

    fn try_recv(&self) -> Option<Received<T>> {
        let mut s = lock(&self.state);
        if let Some(front) = s.items.front_mut() {
            if front.2 > 0 {
                return Some(Received::Lagged(std::mem::take(&mut front.2)));
            }
        }
        if let Some((item, size, _)) = s.items.pop_front() {
            s.bytes = s.bytes.saturating_sub(size);
            return Some(Received::Item(item));
        }
        if s.dropped > 0 {
            return Some(Received::Lagged(std::mem::take(&mut s.dropped)));
        }
        None
    }
}

/// An item of a replaying subscription's buffer, holding its share of the
/// byte bound until the subscription takes it.
#[derive(Debug)]
pub(crate) struct Gated<T> {
    pub(crate) item: T,
    _permit: Option<OwnedSemaphorePermit>,
}

/// The sending side of a replaying subscription's buffer: waits when the
/// buffer is full in messages or in bytes.
#[derive(Debug, Clone)]
pub(crate) struct GatedSender<T> {
    tx: mpsc::Sender<Gated<T>>,
    bytes: Arc<Semaphore>,
    /// The semaphore's size: a larger item waits for all of it.
    max: u32,
}

/// A replaying subscription's buffer.
pub(crate) fn gated<T>(limits: Limits) -> (GatedSender<T>, mpsc::Receiver<Gated<T>>) {
    let (tx, rx) = mpsc::channel(limits.items.max(1));
    let max = u32::try_from(limits.bytes.min(Semaphore::MAX_PERMITS))
        .unwrap_or(u32::MAX)
        .max(1);
    let bytes = Arc::new(Semaphore::new(max as usize));
    (GatedSender { tx, bytes, max }, rx)
}

impl<T> GatedSender<T> {
    /// Queues `item` (`size` bytes) once it fits; false once the receiver
    /// is gone.
    pub(crate) async fn send(&self, item: T, size: usize) -> bool {
        let want = u32::try_from(size).unwrap_or(u32::MAX).min(self.max);
        let permit = if want == 0 {
            None
        } else {
            match Arc::clone(&self.bytes).acquire_many_owned(want).await {
                Ok(permit) => Some(permit),
                Err(_) => return false,
            }
        };
        self.tx
            .send(Gated {
                item,
                _permit: permit,
            })
            .await
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn limits(items: usize, bytes: usize) -> Limits {
        Limits { items, bytes }
    }

    fn drain(q: &Queue<u32>) -> Vec<Received<u32>> {
        std::iter::from_fn(|| q.try_recv()).collect()
    }

    /// Past the byte bound a queue drops and counts; the count comes out
    /// where the drop happened, before what was queued after it.
    #[test]
    fn byte_bound_drops_and_counts_in_place() {
        let fanout = Fanout::new(limits(100, 10));
        let q = fanout.subscribe();
        for i in 1..=5 {
            fanout.send(i, 4);
        }
        // 1 and 2 fit (8 bytes), 3, 4 and 5 do not.
        assert_eq!(
            drain(&q),
            [Received::Item(1), Received::Item(2), Received::Lagged(3)]
        );
        fanout.send(6, 4);
        fanout.send(7, 4);
        fanout.send(8, 4);
        fanout.send(9, 4);
        assert_eq!(
            drain(&q),
            [Received::Item(6), Received::Item(7), Received::Lagged(2)]
        );
    }

    /// Drops before an item queued later are reported before it.
    #[test]
    fn lag_report_precedes_the_next_item() {
        let fanout = Fanout::new(limits(100, 10));
        let q = fanout.subscribe();
        fanout.send(1, 10);
        fanout.send(2, 1);
        assert_eq!(q.try_recv(), Some(Received::Item(1)));
        fanout.send(3, 1);
        assert_eq!(drain(&q), [Received::Lagged(1), Received::Item(3)]);
    }

    /// A message larger than the bound still passes when the queue is empty;
    /// the message count bound still applies.
    #[test]
    fn oversized_item_fits_an_empty_queue_and_count_bound_holds() {
        let fanout = Fanout::new(limits(2, 10));
        let q = fanout.subscribe();
        fanout.send(1, 1_000);
        fanout.send(2, 1);
        assert_eq!(drain(&q), [Received::Item(1), Received::Lagged(1)]);
        for i in 3..=6 {
            fanout.send(i, 0);
        }
        assert_eq!(
            drain(&q),
            [Received::Item(3), Received::Item(4), Received::Lagged(2)]
        );
    }

    /// Each subscription has its own bound; a dropped one is forgotten.
    #[test]
    fn queues_are_independent() {
        let fanout = Fanout::new(limits(100, 8));
        let slow = fanout.subscribe();
        let fast = fanout.subscribe();
        for i in 1..=4 {
            fanout.send(i, 4);
            if let Some(Received::Item(got)) = fast.try_recv() {
                assert_eq!(got, i);
            } else {
                panic!("the fast queue lost {i}");
            }
        }
        assert_eq!(
            drain(&slow),
            [Received::Item(1), Received::Item(2), Received::Lagged(2)]
        );
        drop(slow);
        fanout.send(5, 4);
        assert_eq!(lock(&fanout.queues).len(), 1);
    }

    /// A replaying subscription's buffer waits (no loss) once its bytes are
    /// taken, and goes on when the subscription takes an item.
    #[tokio::test(flavor = "current_thread")]
    async fn gated_buffer_waits_at_the_byte_bound() {
        let (tx, mut rx) = gated::<u32>(limits(100, 10));
        assert!(tx.send(1, 6).await);
        let second = tx.send(2, 6);
        tokio::pin!(second);
        assert!(
            (&mut second).now_or_never().is_none(),
            "a send past the byte bound did not wait"
        );
        let first = rx.recv().await.expect("first");
        assert_eq!(first.item, 1);
        drop(first);
        assert!(second.await);
        assert_eq!(rx.recv().await.expect("second").item, 2);
        // Larger than the whole bound: waits for all of it, then passes.
        assert!(tx.send(3, 1_000).await);
    }
}
