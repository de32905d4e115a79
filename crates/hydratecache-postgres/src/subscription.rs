//! What the transport, its subscriptions and the listener task exchange:
//! commands, the per-subscription buffer with its bounds (messages and
//! bytes) and pending gap, and the subscription stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures::Stream;
use hydratecache_core::{Event, Gap, GapReason, Result};
use tokio::sync::{mpsc, oneshot};

/// What the listener connection is doing, from the server's point of view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerInfo {
    /// Process id of the listener's server backend (`pg_backend_pid()`), or
    /// `None` when no listener connection is open.
    pub backend_pid: Option<i32>,
    /// The channels that connection listens on, sorted
    /// (`pg_listening_channels()`, asked on that connection).
    pub channels: Vec<String>,
}

/// A gap not yet put in a subscription's buffer (it was full).
#[derive(Debug, Default)]
pub(crate) struct PendingGap(Mutex<PendingState>);

#[derive(Debug, Default)]
struct PendingState {
    lagged: u64,
    reconnected: bool,
}

impl PendingGap {
    fn state(&self) -> std::sync::MutexGuard<'_, PendingState> {
        // Nothing panics while holding it; recover if something ever did.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn add(&self, gap: &Gap) {
        let mut state = self.state();
        match gap.reason {
            GapReason::Lagged => state.lagged += gap.missed.unwrap_or(1),
            _ => state.reconnected = true,
        }
    }

    /// The pending gap, if any, now owned by the caller.
    pub(crate) fn take(&self) -> Option<Gap> {
        let mut state = self.state();
        let gap = if state.reconnected {
            // A count of lagged messages is meaningless next to a reconnect.
            Gap::new(GapReason::Reconnected)
        } else if state.lagged > 0 {
            Gap {
                reason: GapReason::Lagged,
                missed: Some(state.lagged),
            }
        } else {
            return None;
        };
        *state = PendingState::default();
        Some(gap)
    }
}

/// Bytes a buffered item holds against the byte bound: a message's encoded
/// envelope; gaps and error items count as nothing.
pub(crate) fn weight(item: &Result<Event>) -> usize {
    match item {
        Ok(Event::Message(envelope)) => envelope.encoded_len(),
        _ => 0,
    }
}

/// One subscription, as the task sees it.
#[derive(Debug)]
pub(crate) struct Subscriber {
    pub(crate) id: u64,
    pub(crate) tx: mpsc::Sender<Result<Event>>,
    pub(crate) pending: Arc<PendingGap>,
    /// Bytes in the buffer ([`weight`]): added here, taken off by the stream.
    pub(crate) buffered: Arc<AtomicUsize>,
    pub(crate) max_bytes: usize,
}

impl Subscriber {
    /// Puts a pending gap in the buffer; false when it is still pending.
    fn flush_pending(&self) -> bool {
        let Some(gap) = self.pending.take() else {
            return true;
        };
        match self.tx.try_send(Ok(Event::Gap(gap.clone()))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.pending.add(&gap);
                false
            }
            // Dropped: its unsubscribe command is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        }
    }

    pub(crate) fn send(&self, item: Result<Event>) {
        let missed = Gap {
            reason: GapReason::Lagged,
            missed: Some(1),
        };
        let size = weight(&item);
        // Checked before a pending gap goes in, so that the gap stays
        // pending (and counting) while the buffer is full. Only this task
        // adds, so the check cannot be overtaken; a message larger than the
        // bound still goes into an empty buffer.
        let held = self.buffered.load(Ordering::Acquire);
        if held > 0 && held.saturating_add(size) > self.max_bytes {
            tracing::debug!(
                id = self.id,
                held,
                size,
                "subscription buffer bytes full: message missed"
            );
            self.pending.add(&missed);
            return;
        }
        if !self.flush_pending() {
            self.pending.add(&missed);
            return;
        }
        // Added before the stream can read it, so its subtraction never wraps.
        self.buffered.fetch_add(size, Ordering::AcqRel);
        if let Err(e) = self.tx.try_send(item) {
            self.buffered.fetch_sub(size, Ordering::AcqRel);
            if let mpsc::error::TrySendError::Full(_) = e {
                tracing::debug!(id = self.id, "subscription buffer full: message missed");
                self.pending.add(&missed);
            }
        }
    }

    pub(crate) fn gap(&self, gap: &Gap) {
        self.pending.add(gap);
        self.flush_pending();
    }
}

/// Requests from the transport and its subscriptions to the task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        topic: String,
        subscriber: Subscriber,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        topic: String,
        id: u64,
    },
    Info {
        reply: oneshot::Sender<Result<ListenerInfo>>,
    },
    Close {
        done: oneshot::Sender<()>,
    },
}

/// The stream behind a [`Subscription`](hydratecache_core::Subscription).
pub(crate) struct SubscriptionStream {
    pub(crate) rx: mpsc::Receiver<Result<Event>>,
    pub(crate) pending: Arc<PendingGap>,
    pub(crate) buffered: Arc<AtomicUsize>,
    pub(crate) _guard: UnsubscribeOnDrop,
}

impl Stream for SubscriptionStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.buffered.fetch_sub(weight(&item), Ordering::AcqRel);
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => Poll::Ready(None),
            // Everything buffered has been read: a gap that did not fit in
            // the buffer comes now, after the messages that preceded it.
            Poll::Pending => match self.pending.take() {
                Some(gap) => Poll::Ready(Some(Ok(Event::Gap(gap)))),
                None => Poll::Pending,
            },
        }
    }
}

/// Tells the task a subscription is gone (so the last one of a topic
/// `UNLISTEN`s); also when `subscribe()` itself is cancelled.
pub(crate) struct UnsubscribeOnDrop {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) topic: String,
    pub(crate) id: u64,
}

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        // Fails only when the task is gone, and with it the LISTEN.
        let _ = self.commands.send(Command::Unsubscribe {
            topic: std::mem::take(&mut self.topic),
            id: self.id,
        });
    }
}
