//! One subscription: a task draining async-nats' subscriber into a bounded
//! buffer, and the stream that reports each gap at its place in the stream.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::{Statistics, Subscriber};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use hydratecache_core::adapter::decode_frame;
use hydratecache_core::{Event, Gap, GapReason, Result};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::sync::{mpsc, watch};

use crate::shared::{Registration, Shared, SubState};

/// A received message as buffered for the stream.
#[derive(Debug)]
pub(crate) struct Frame {
    payload: Bytes,
    /// The client's connection count when the pump received it: a count
    /// above the subscription's means it came over a newer connection.
    connects: u64,
    /// Messages dropped (buffer full) just before this one.
    missed_before: u64,
}

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
/// buffer is full) into the subscription's buffer, counting what does not
/// fit (in messages, or past `max_bytes` of payload) and attaching that
/// count to the next message that does. Ends when the subscription is
/// dropped (which drops the subscriber: async-nats then sends `UNSUB`), the
/// transport is closed, or the client closes.
pub(crate) async fn pump(
    mut subscriber: Subscriber,
    tx: mpsc::Sender<Frame>,
    max_bytes: usize,
    state: Arc<SubState>,
    stats: Arc<Statistics>,
    mut closed: watch::Receiver<bool>,
) {
    loop {
        let first = tokio::select! {
            biased;
            _ = closed.wait_for(|closed| *closed) => break,
            _ = tx.closed() => break,
            message = subscriber.next() => message,
        };
        let Some(first) = first else { break };
        let mut next = Some(first);
        let mut moved = 0;
        while let Some(message) = next.take() {
            // Read after receiving: the reconnect that delivered it is counted.
            let connects = stats.connects.load(Ordering::Acquire);
            let size = message.payload.len();
            // Only this task adds, so the check cannot be overtaken; a
            // message always fits an empty buffer, whatever its size.
            let queued = state.bytes.load(Ordering::Acquire);
            let fits = queued == 0 || queued.saturating_add(size) <= max_bytes;
            let reserved = if fits {
                tx.try_reserve()
            } else {
                Err(TrySendError::Full(()))
            };
            match reserved {
                Ok(permit) => {
                    state.bytes.fetch_add(size, Ordering::AcqRel);
                    permit.send(Frame {
                        payload: message.payload,
                        connects,
                        missed_before: state.lagged.swap(0, Ordering::AcqRel),
                    });
                }
                Err(TrySendError::Full(())) => {
                    state.lagged.fetch_add(1, Ordering::AcqRel);
                    state.notify.notify_one();
                }
                Err(TrySendError::Closed(())) => return,
            }
            moved += 1;
            if moved < PUMP_BATCH {
                next = subscriber.next().now_or_never().flatten();
            }
        }
    }
    tracing::debug!("nats subscription pump ended");
}

/// The consumer side of one subscription.
pub(crate) struct SubStream {
    /// Keeps the transport (and its client) alive while the stream is.
    _transport: Arc<dyn std::any::Any + Send + Sync>,
    topic: String,
    _registration: Registration,
    state: Arc<SubState>,
    rx: mpsc::Receiver<Frame>,
    /// Connection count this subscription has reported gaps up to.
    generation: u64,
    confirmed: watch::Receiver<u64>,
    closed: watch::Receiver<bool>,
    /// A received frame, held while the gaps due before it go out.
    held: Option<Frame>,
}

impl SubStream {
    pub(crate) fn new(
        transport: Arc<dyn std::any::Any + Send + Sync>,
        shared: &Shared,
        topic: String,
        registration: Registration,
        state: Arc<SubState>,
        rx: mpsc::Receiver<Frame>,
        generation: u64,
    ) -> SubStream {
        let confirmed = shared.confirmed.subscribe();
        let closed = shared.closed.subscribe();
        SubStream {
            _transport: transport,
            topic,
            _registration: registration,
            state,
            rx,
            generation,
            confirmed,
            closed,
            held: None,
        }
    }

    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Event>> {
        futures::stream::unfold(self, |mut s| async move {
            let item = s.next_item().await?;
            Some((item, s))
        })
        .boxed()
    }

    /// Takes `frame` out of the buffer, releasing its bytes.
    fn hold(&mut self, frame: Frame) {
        self.state
            .bytes
            .fetch_sub(frame.payload.len(), Ordering::AcqRel);
        self.held = Some(frame);
    }

    /// The gap due before the held frame: messages dropped just before it,
    /// a slow-consumer report, or its arrival over a newer connection.
    fn gap_before_held(&mut self) -> Option<Gap> {
        let frame = self.held.as_mut()?;
        if frame.missed_before > 0 {
            let missed = std::mem::take(&mut frame.missed_before);
            return Some(Gap {
                reason: GapReason::Lagged,
                missed: Some(missed),
            });
        }
        let connects = frame.connects;
        if self.state.slow_consumer.swap(false, Ordering::AcqRel) {
            return Some(Gap::new(GapReason::SlowConsumer));
        }
        if connects > self.generation {
            self.generation = connects;
            return Some(Gap::new(GapReason::Reconnected));
        }
        None
    }

    /// The gap due while every received message has been consumed: drops not
    /// yet attached to a message, a slow-consumer report, or a reconnect
    /// whose re-sent subscription the server has confirmed.
    fn gap_when_idle(&mut self) -> Option<Gap> {
        if self.state.slow_consumer.swap(false, Ordering::AcqRel) {
            return Some(Gap::new(GapReason::SlowConsumer));
        }
        let missed = self.state.lagged.swap(0, Ordering::AcqRel);
        if missed > 0 {
            return Some(Gap {
                reason: GapReason::Lagged,
                missed: Some(missed),
            });
        }
        let confirmed = *self.confirmed.borrow_and_update();
        if confirmed > self.generation {
            self.generation = confirmed;
            return Some(Gap::new(GapReason::Reconnected));
        }
        None
    }

    async fn next_item(&mut self) -> Option<Result<Event>> {
        loop {
            if *self.closed.borrow_and_update() {
                return None;
            }
            let gap = if self.held.is_some() {
                self.gap_before_held()
            } else if self.rx.is_empty() {
                self.gap_when_idle()
            } else {
                None
            };
            if let Some(gap) = gap {
                tracing::debug!(topic = self.topic, reason = %gap.reason, missed = ?gap.missed, "nats gap");
                return Some(Ok(Event::Gap(gap)));
            }
            if let Some(frame) = self.held.take() {
                return Some(decode_frame(&self.topic, &frame.payload));
            }
            // A buffered frame needs no wait: the select below registers four
            // wakers, which per message costs more than the decode.
            match self.rx.try_recv() {
                Ok(frame) => {
                    self.hold(frame);
                    continue;
                }
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                biased;
                _ = self.closed.changed() => {}
                _ = self.state.notify.notified() => {}
                _ = self.confirmed.changed() => {}
                frame = self.rx.recv() => match frame {
                    Some(frame) => self.hold(frame),
                    None => return None,
                },
            }
        }
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
