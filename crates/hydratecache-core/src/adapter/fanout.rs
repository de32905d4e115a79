//! Topic fan-out: the local subscriptions of each topic, fed from one
//! server-side subscription.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::Stream;

use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{Error, Result};
use crate::transport::{Event, Gap, Interruption, Subscription};

use super::frame::malformed;
use super::queue::SubscriptionQueue;
use super::sync::lock;

/// Local subscriptions by topic: (id, queue) each.
type Topics = HashMap<String, Vec<(u64, Arc<SubscriptionQueue>)>>;

/// Called with the topic when its last local subscription is dropped: the
/// moment to unsubscribe on the server.
pub type OnLast = Box<dyn FnOnce(&str) + Send + Sync>;

/// The local subscriptions of every topic, each with its own
/// [`SubscriptionQueue`]; what the adapter receives once per topic is
/// delivered to each.
///
/// The first subscription of a topic is reported by
/// [`Registered::first`]; the last one dropping calls its [`OnLast`] hook.
///
/// ```
/// use hydratecache_core::adapter::Fanout;
/// use hydratecache_core::{Envelope, Event, Gap, GapReason};
/// use futures::StreamExt;
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let fanout = Fanout::new(16, 1 << 20);
/// let a = fanout.register("prices", Box::new(|_topic| {}));
/// let b = fanout.register("prices", Box::new(|topic| println!("unsubscribe {topic}")));
/// assert!(a.first && !b.first);
/// let (mut a, mut b) = (a.into_subscription(), b.into_subscription());
/// fanout.deliver("prices", Ok(Envelope::delete("AAPL")), 40);
/// fanout.gap_all(Gap::new(GapReason::Reconnected));
/// for sub in [&mut a, &mut b] {
///     assert!(matches!(sub.next().await, Some(Ok(Event::Message(m))) if m.key == "AAPL"));
///     assert!(matches!(sub.next().await, Some(Ok(Event::Gap(_)))));
/// }
/// # }
/// ```
pub struct Fanout {
    topics: Mutex<Topics>,
    next_id: AtomicU64,
    capacity: usize,
    max_bytes: usize,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("topics", &self.topics().len())
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

/// A subscription just registered with a [`Fanout`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Registered {
    /// Whether it is the topic's only local subscription: the adapter
    /// subscribes on the server (again, if an earlier one is still leaving).
    pub first: bool,
    /// Its queue, for gaps held or released by the adapter.
    pub queue: Arc<SubscriptionQueue>,
    /// The stream; dropping it unregisters the subscription.
    pub stream: FanoutStream,
}

impl Registered {
    /// The stream as a [`Subscription`] of its topic.
    pub fn into_subscription(self) -> Subscription {
        let topic = self.stream.guard.topic.clone();
        Subscription::new(topic, Box::pin(self.stream))
    }
}

impl Fanout {
    /// A fan-out whose queues hold at most `capacity` messages and
    /// `max_bytes` message bytes each.
    pub fn new(capacity: usize, max_bytes: usize) -> Arc<Fanout> {
        Arc::new(Fanout {
            topics: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            capacity,
            max_bytes,
        })
    }

    fn topics(&self) -> MutexGuard<'_, Topics> {
        lock(&self.topics)
    }

    /// Adds a local subscription of `topic`; `on_last` runs if it is the
    /// last of its topic when dropped (also when the caller's `subscribe` is
    /// cancelled before it returns the stream).
    pub fn register(self: &Arc<Self>, topic: &str, on_last: OnLast) -> Registered {
        let queue = Arc::new(SubscriptionQueue::new(self.capacity, self.max_bytes));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut topics = self.topics();
        let subs = topics.entry(topic.to_owned()).or_default();
        subs.push((id, Arc::clone(&queue)));
        let first = subs.len() == 1;
        drop(topics);
        Registered {
            first,
            queue: Arc::clone(&queue),
            stream: FanoutStream {
                queue,
                guard: Guard {
                    fanout: Arc::clone(self),
                    topic: topic.to_owned(),
                    id,
                    on_last: Some(on_last),
                },
            },
        }
    }

    /// Whether `topic` has a local subscription.
    pub fn has_subscribers(&self, topic: &str) -> bool {
        self.topics().get(topic).is_some_and(|s| !s.is_empty())
    }

    /// The topics with local subscriptions.
    pub fn topics_subscribed(&self) -> Vec<String> {
        self.topics().keys().cloned().collect()
    }

    /// Delivers a decoded frame of `size` bytes to every subscription of
    /// `topic`: the message, or [`Error::Malformed`] (logged once). Returns
    /// false when the topic has no local subscription.
    pub fn deliver(
        &self,
        topic: &str,
        decoded: std::result::Result<Envelope, EnvelopeError>,
        size: usize,
    ) -> bool {
        let topics = self.topics();
        let Some(subs) = topics.get(topic) else {
            return false;
        };
        match decoded {
            Ok(envelope) => {
                // The last subscription takes the envelope itself: with one
                // subscription (the usual case), no copy of the key.
                if let Some(((_, last), rest)) = subs.split_last() {
                    for (_, queue) in rest {
                        queue.push(Ok(Event::Message(envelope.clone())), size);
                    }
                    last.push(Ok(Event::Message(envelope)), size);
                }
            }
            Err(source) => {
                tracing::warn!(topic, error = %source, len = size, "malformed message");
                for (_, queue) in subs {
                    queue.push(Err(malformed(topic, None, source.clone())), size);
                }
            }
        }
        true
    }

    /// Delivers to every subscription of `topic` the per-message error for a
    /// frame that is not an envelope, naming `key` when the adapter could
    /// still read it (so the subscriber can forget that key). Not logged:
    /// the adapter knows more about where the frame came from. Returns false
    /// when the topic has no local subscription.
    pub fn deliver_malformed(&self, topic: &str, key: Option<&str>, source: EnvelopeError) -> bool {
        let topics = self.topics();
        let Some(subs) = topics.get(topic) else {
            return false;
        };
        for (_, queue) in subs {
            queue.push(Err(malformed(topic, key, source.clone())), 0);
        }
        true
    }

    /// Messages of `topic` may have been lost here.
    pub fn gap(&self, topic: &str, gap: Gap) {
        for (_, queue) in self.topics().get(topic).into_iter().flatten() {
            queue.push_gap(gap.clone());
        }
    }

    /// Messages of every topic may have been lost here (for example the
    /// connection that carries them all dropped).
    pub fn gap_all(&self, gap: Gap) {
        for (_, queue) in self.topics().values().flatten() {
            queue.push_gap(gap.clone());
        }
    }

    /// The connection that carries every topic is known broken: call it at
    /// the moment of detection; each subscription gets
    /// [`Event::Interrupted`] (see [`SubscriptionQueue::interrupt`]).
    pub fn interrupt_all(&self, interruption: Interruption) {
        for (_, queue) in self.topics().values().flatten() {
            queue.interrupt(interruption.clone());
        }
    }

    /// Like [`interrupt_all`](Self::interrupt_all), for the subscriptions of
    /// `topics` only: those the broken connection carried (each must get its
    /// gap or [`resume`](SubscriptionQueue::resume) later).
    pub fn interrupt(&self, topics: &[String], interruption: Interruption) {
        let subs = self.topics();
        for topic in topics {
            for (_, queue) in subs.get(topic).into_iter().flatten() {
                queue.interrupt(interruption.clone());
            }
        }
    }

    /// Delivery is back on `topics` and nothing was lost (see
    /// [`SubscriptionQueue::resume`]).
    pub fn resume(&self, topics: &[String]) {
        let subs = self.topics();
        for topic in topics {
            for (_, queue) in subs.get(topic).into_iter().flatten() {
                queue.resume();
            }
        }
    }

    /// A reconnect on connection `epoch`: every subscription holds `gap`
    /// until [`release`](Self::release) for that epoch (see
    /// [`SubscriptionQueue::hold`]).
    pub fn hold_all(&self, gap: Gap, epoch: u64) {
        for (_, queue) in self.topics().values().flatten() {
            queue.hold(gap.clone(), epoch);
        }
    }

    /// Like [`hold_all`](Self::hold_all), for the subscriptions of `topics`
    /// only: those the lost connection was subscribed to on the server. A
    /// subscription whose topic was not yet subscribed there has lost
    /// nothing and gets no gap.
    pub fn hold(&self, topics: &[String], gap: Gap, epoch: u64) {
        let subs = self.topics();
        for topic in topics {
            for (_, queue) in subs.get(topic).into_iter().flatten() {
                queue.hold(gap.clone(), epoch);
            }
        }
    }

    /// The server confirmed `topics` on connection `epoch`.
    pub fn release(&self, topics: &[String], epoch: u64) {
        let subs = self.topics();
        for topic in topics {
            for (_, queue) in subs.get(topic).into_iter().flatten() {
                queue.release(epoch);
            }
        }
    }

    /// Each subscription of `topics` gets an error made by `error` (see
    /// [`SubscriptionQueue::push_error`]).
    pub fn error(&self, topics: &[String], error: impl Fn() -> Error) {
        let subs = self.topics();
        for topic in topics {
            for (_, queue) in subs.get(topic).into_iter().flatten() {
                queue.push_error(error());
            }
        }
    }

    /// Ends every subscription once it has read what is queued, and forgets
    /// them (their `OnLast` hooks do not run).
    pub fn close_all(&self) {
        for (_, subs) in self.topics().drain() {
            for (_, queue) in subs {
                queue.close();
            }
        }
    }

    /// Removes one subscription; true when it was its topic's last.
    fn remove(&self, topic: &str, id: u64) -> bool {
        let mut topics = self.topics();
        let Some(subs) = topics.get_mut(topic) else {
            return false;
        };
        let before = subs.len();
        subs.retain(|(i, _)| *i != id);
        if subs.len() == before || !subs.is_empty() {
            return false;
        }
        topics.remove(topic);
        true
    }
}

struct Guard {
    fanout: Arc<Fanout>,
    topic: String,
    id: u64,
    on_last: Option<OnLast>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.fanout.remove(&self.topic, self.id) {
            if let Some(on_last) = self.on_last.take() {
                on_last(&self.topic);
            }
        }
    }
}

/// The stream of one subscription registered with a [`Fanout`].
pub struct FanoutStream {
    queue: Arc<SubscriptionQueue>,
    guard: Guard,
}

impl std::fmt::Debug for FanoutStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutStream")
            .field("topic", &self.guard.topic)
            .field("id", &self.guard.id)
            .finish_non_exhaustive()
    }
}

impl Stream for FanoutStream {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.queue.poll_next(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::GapReason;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn the_last_drop_runs_its_hook_once() {
        let fanout = Fanout::new(4, usize::MAX);
        let calls = Arc::new(AtomicUsize::new(0));
        let hook = |calls: &Arc<AtomicUsize>| -> OnLast {
            let calls = Arc::clone(calls);
            Box::new(move |topic| {
                assert_eq!(topic, "t");
                calls.fetch_add(1, Ordering::SeqCst);
            })
        };
        let a = fanout.register("t", hook(&calls));
        let b = fanout.register("t", hook(&calls));
        assert!(a.first);
        assert!(!b.first);
        drop(a);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert!(fanout.has_subscribers("t"));
        drop(b);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(!fanout.has_subscribers("t"));
        assert!(fanout.register("t", hook(&calls)).first, "first again");
    }

    #[tokio::test]
    async fn malformed_frames_reach_every_subscriber_as_errors() {
        let fanout = Fanout::new(4, usize::MAX);
        let mut a = fanout.register("t", Box::new(|_| {})).into_subscription();
        let mut b = fanout.register("t", Box::new(|_| {})).into_subscription();
        let other = fanout.register("u", Box::new(|_| {}));
        assert!(fanout.deliver("t", Envelope::decode(b"junk"), 4));
        assert!(!fanout.deliver("nobody", Envelope::decode(b"junk"), 4));
        for sub in [&mut a, &mut b] {
            match sub.next().await {
                Some(Err(Error::Malformed { topic, .. })) => assert_eq!(topic, "t"),
                other => panic!("expected a malformed error, got {other:?}"),
            }
        }
        drop(other);
    }

    #[tokio::test]
    async fn a_hold_of_some_topics_leaves_the_others_alone() {
        let fanout = Fanout::new(4, usize::MAX);
        let mut held = fanout.register("a", Box::new(|_| {})).into_subscription();
        let mut free = fanout.register("b", Box::new(|_| {})).into_subscription();
        fanout.hold(&["a".to_owned()], Gap::new(GapReason::Reconnected), 1);
        fanout.deliver("a", Ok(Envelope::delete("lost")), 10);
        fanout.deliver("b", Ok(Envelope::delete("kept")), 10);
        assert!(matches!(free.next().await, Some(Ok(Event::Message(m))) if m.key == "kept"));
        assert!(futures::poll!(held.next()).is_pending(), "a's gap is held");
        fanout.release(&["a".to_owned()], 1);
        assert!(matches!(held.next().await, Some(Ok(Event::Gap(_)))));
        fanout.close_all();
        assert!(free.next().await.is_none(), "b never got a gap");
    }

    #[tokio::test]
    async fn a_malformed_frame_can_name_its_key() {
        let fanout = Fanout::new(4, usize::MAX);
        let mut a = fanout.register("t", Box::new(|_| {})).into_subscription();
        let source = EnvelopeError::UnknownKind(9);
        assert!(fanout.deliver_malformed("t", Some("k"), source.clone()));
        assert!(!fanout.deliver_malformed("nobody", None, source));
        match a.next().await {
            Some(Err(Error::Malformed { topic, key, .. })) => {
                assert_eq!((topic.as_str(), key.as_deref()), ("t", Some("k")));
            }
            other => panic!("expected a malformed error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn held_gaps_wait_for_their_topic_release() {
        let fanout = Fanout::new(4, usize::MAX);
        let mut a = fanout.register("a", Box::new(|_| {})).into_subscription();
        let mut b = fanout.register("b", Box::new(|_| {})).into_subscription();
        fanout.hold_all(Gap::new(GapReason::Reconnected), 1);
        fanout.release(&["a".to_owned()], 1);
        assert!(matches!(a.next().await, Some(Ok(Event::Gap(_)))));
        let pending = futures::poll!(b.next());
        assert!(pending.is_pending(), "b's gap is still held");
        fanout.close_all();
        assert!(
            b.next().await.is_none(),
            "closed, and the held gap was never confirmed"
        );
    }
}
