//! State shared by a transport's connection-event callback, its reconnect
//! monitor and its subscriptions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{watch, Notify};

/// State the connection-event callback and the subscriptions share. It holds
/// no client, so the callback (owned by the client) makes no cycle.
#[derive(Debug)]
pub(crate) struct Shared {
    subs: Mutex<HashMap<u64, Registered>>,
    next_id: AtomicU64,
    /// Highest connection count whose subscriptions the server confirmed
    /// after a reconnect: idle subscriptions report their gap from it.
    pub(crate) confirmed: watch::Sender<u64>,
    pub(crate) closed: watch::Sender<bool>,
    /// Wakes the reconnect monitor.
    pub(crate) kick: Notify,
}

#[derive(Debug)]
struct Registered {
    sid: Option<u64>,
    state: Arc<SubState>,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            confirmed: watch::channel(0).0,
            closed: watch::channel(false).0,
            kick: Notify::new(),
        }
    }

    fn subs(&self) -> MutexGuard<'_, HashMap<u64, Registered>> {
        // No code path panics while holding the lock; recover if one ever did.
        self.subs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a subscription (its async-nats id, if known, and its loss
    /// signals) until the returned guard is dropped.
    pub(crate) fn register(
        shared: &Arc<Shared>,
        sid: Option<u64>,
        state: Arc<SubState>,
    ) -> Registration {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        shared.subs().insert(id, Registered { sid, state });
        Registration {
            shared: Arc::clone(shared),
            id,
        }
    }

    fn unregister(&self, id: u64) {
        self.subs().remove(&id);
    }

    pub(crate) fn on_event(&self, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Connected => {
                tracing::debug!("nats connected");
                self.kick.notify_one();
            }
            E::Disconnected => {
                tracing::warn!("nats disconnected; subscriptions get a gap event once reconnected");
            }
            E::SlowConsumer(sid) => self.slow_consumer(sid),
            E::ServerError(e) => tracing::warn!(error = %e, "nats server error"),
            E::ClientError(e) => tracing::warn!(error = %e, "nats client error"),
            other => tracing::debug!(event = %other, "nats event"),
        }
    }

    /// async-nats dropped a message for subscription `sid`: that
    /// subscription gets a gap; if some subscription's id could not be read,
    /// all such subscriptions get one.
    fn slow_consumer(&self, sid: u64) {
        let subs = self.subs();
        if let Some(r) = subs.values().find(|r| r.sid == Some(sid)) {
            tracing::warn!(
                sid,
                "nats slow consumer: messages dropped, signalling a gap"
            );
            r.state.flag_slow_consumer();
            return;
        }
        let mut unmapped = 0;
        for r in subs.values().filter(|r| r.sid.is_none()) {
            r.state.flag_slow_consumer();
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
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.unregister(self.id);
    }
}

/// Loss signals for one subscription, set by the pump and the event callback.
#[derive(Debug)]
pub(crate) struct SubState {
    /// async-nats reported it dropped messages for this subscription.
    pub(crate) slow_consumer: AtomicBool,
    /// Messages the pump dropped (buffer full) and has not yet attached to a
    /// later frame.
    pub(crate) lagged: AtomicU64,
    /// Payload bytes in the buffer: added by the pump before it queues a
    /// frame, taken off by the stream when it takes one.
    pub(crate) bytes: AtomicUsize,
    /// Wakes the stream when one of the above is set.
    pub(crate) notify: Notify,
}

impl SubState {
    pub(crate) fn new() -> SubState {
        SubState {
            slow_consumer: AtomicBool::new(false),
            lagged: AtomicU64::new(0),
            bytes: AtomicUsize::new(0),
            notify: Notify::new(),
        }
    }

    pub(crate) fn flag_slow_consumer(&self) {
        self.slow_consumer.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}
