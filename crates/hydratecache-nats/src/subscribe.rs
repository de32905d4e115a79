//! Subscribing: one `SUB` per subscription, confirmed by a round trip, and
//! the monitor that turns reconnects into gaps for idle subscriptions.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use async_nats::connection::State;
use hydratecache_core::adapter::refuse_replay;
use hydratecache_core::{Error, InterruptReason, Result, SubscribeOptions, Subscription};

use crate::confirm::round_trip;
use crate::inner::Inner;
use crate::shared::{Shared, SubState};
use crate::subscription::{pump, subscriber_sid, SubStream};
use crate::BACKEND;

impl Inner {
    /// Subscribes to `topic`: one `SUB`, confirmed by a round trip.
    pub(crate) async fn subscribe(
        self: &Arc<Self>,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.check_open()?;
        refuse_replay(
            BACKEND,
            &options,
            "replay from the earliest message (core NATS keeps no history)",
        )?;
        let subject = self.subject(topic)?;
        self.ensure_monitor();
        // Read before the SUB: a reconnect from here on gives a gap.
        let sub = Arc::new(SubState::new(
            self.config.subscription_buffer,
            self.config.subscription_buffer_bytes,
            self.connects(),
        ));
        let timeout = self.config.confirm_timeout;
        let confirmed = tokio::time::timeout(timeout, async {
            let subscriber = self
                .client
                .subscribe(subject.clone())
                .await
                .map_err(|e| Error::backend(BACKEND, format!("subscribe to {subject}"), e))?;
            let sid = subscriber_sid(&subscriber);
            let registered = Shared::register(&self.shared, sid, Arc::clone(&sub));
            round_trip(&self.client).await.map_err(|e| {
                Error::backend(BACKEND, format!("confirm the subscription to {subject}"), e)
            })?;
            Ok::<_, Error>((subscriber, registered))
        })
        .await;
        let (subscriber, (registration, stop)) = match confirmed {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("subscribe to {subject}"),
                    format!(
                        "the server did not confirm the subscription within {timeout:?} \
                         (connection {})",
                        self.client.connection_state()
                    ),
                ))
            }
        };
        tokio::spawn(pump(
            subscriber,
            topic.to_owned(),
            Arc::clone(&sub),
            Arc::clone(&self.stats),
            stop,
        ));
        tracing::debug!(topic, subject, "nats subscription confirmed");
        let stream = SubStream::new(Arc::clone(self), registration, sub);
        Ok(Subscription::new(topic, Box::pin(stream)))
    }

    /// Starts the task that turns reconnects into gaps for idle
    /// subscriptions (once, on the first subscription: it needs a runtime).
    fn ensure_monitor(self: &Arc<Self>) {
        if self.monitor_started.swap(true, Ordering::AcqRel) {
            return;
        }
        // Read before any subscription reads its own: none starts below it.
        let connects = self.connects();
        tokio::spawn(monitor(
            Arc::downgrade(self),
            Arc::clone(&self.shared),
            connects,
        ));
    }
}

/// Watches for reconnects: once the server has confirmed the re-sent
/// subscriptions (a round trip on the new connection), idle subscriptions
/// report their gap. `confirmed` is the connection count at its start. Ends
/// with the transport.
async fn monitor(inner: Weak<Inner>, shared: Arc<Shared>, mut confirmed: u64) {
    // The connection count at which the subscriptions were last told of a
    // disconnect (a client built elsewhere gives no events: its state is
    // polled).
    let mut interrupted = None;
    loop {
        let interval = match inner.upgrade() {
            Some(inner) => inner.config.reconnect_check,
            None => return,
        };
        tokio::select! {
            _ = shared.kick.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        if shared.closed.is_closed() {
            return;
        }
        let Some(inner) = inner.upgrade() else { return };
        let connects = inner.connects();
        let state = inner.client.connection_state();
        if !inner.owned && state == State::Disconnected && interrupted != Some(connects) {
            interrupted = Some(connects);
            tracing::warn!("nats disconnected: subscriptions are interrupted until reconnected");
            shared.interrupt_all(InterruptReason::Disconnected);
        }
        if connects <= confirmed || state != State::Connected {
            continue;
        }
        match tokio::time::timeout(inner.config.confirm_timeout, round_trip(&inner.client)).await {
            Ok(Ok(())) => {
                tracing::info!(
                    connects,
                    "nats reconnected and subscriptions confirmed; signalling a gap"
                );
                confirmed = connects;
                shared.reconnected(connects);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "nats: could not confirm subscriptions after a reconnect; retrying")
            }
            Err(_) => tracing::warn!(
                "nats: no answer confirming subscriptions after a reconnect; retrying"
            ),
        }
    }
}
