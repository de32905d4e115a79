//! The hydration task: applies the channel's messages to the cache, tracks
//! each publisher's sequence, repairs on gaps, and sends this cache's heartbeats.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::OptionFuture;
use futures::StreamExt;
use tokio::sync::oneshot;

use super::sequences::Sequences;
use super::{Inner, Nanos, Origin, WarmStream};
use crate::envelope::{Envelope, Kind};
use crate::error::Error;
use crate::transport::{Event, Subscription};

/// Milliseconds since the Unix epoch, on this machine's clock.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) async fn run<T: Send + Sync + 'static>(
    inner: Arc<Inner<T>>,
    mut subscription: Subscription,
    subscribed_ms: u64,
    warm: Option<(WarmStream<T>, Nanos)>,
    heartbeat_interval: Option<Duration>,
    mut stop: oneshot::Receiver<()>,
) {
    let (heartbeat_stop, heartbeat_stopped) = oneshot::channel::<()>();
    let mut heartbeats = std::pin::pin!(OptionFuture::from(heartbeat_interval.map(|interval| {
        inner
            .channel
            .clone()
            .run_heartbeats(interval, heartbeat_stopped)
    })));
    let mut warming =
        std::pin::pin!(OptionFuture::from(warm.map(|(entries, since)| {
            warm_up(Arc::clone(&inner), entries, since)
        })));
    let mut warm_done = false;
    // Both optional futures finish once: never poll them again after that.
    let mut heartbeats_done = false;
    let mut sequences = Sequences::new(subscribed_ms, Instant::now());
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut heartbeats, if !heartbeats_done => heartbeats_done = true,
            _ = &mut warming, if !warm_done => {
                warm_done = true;
                inner.warm_done();
            }
            item = subscription.next() => match item {
                Some(Ok(event)) => apply(&inner, &mut sequences, event),
                Some(Err(e)) => {
                    if matches!(e, Error::Malformed { .. }) {
                        inner.counters.malformed.incr();
                    }
                    tracing::warn!(topic = inner.channel.topic(), error = %e, "unreadable message skipped");
                }
                None => {
                    // Without a subscription the cache can no longer know
                    // what changed: stop serving rather than serve stale values.
                    tracing::warn!(topic = inner.channel.topic(), "subscription ended: the cache stops serving");
                    inner.ready.store(false, std::sync::atomic::Ordering::Release);
                    inner.repair("subscription ended");
                    break;
                }
            }
        }
    }
    let _ = heartbeat_stop.send(());
    if !heartbeats_done {
        heartbeats.await;
    }
}

async fn warm_up<T: Send + Sync + 'static>(
    inner: Arc<Inner<T>>,
    mut entries: WarmStream<T>,
    since: Nanos,
) {
    let generation = inner.generation.load(std::sync::atomic::Ordering::Acquire);
    let mut stored = 0u64;
    while let Some((key, loaded)) = entries.next().await {
        // Stored like a load that started when the subscription did: an
        // update received since then wins.
        if inner.store_update(
            &key,
            Arc::new(loaded.value),
            loaded.version,
            loaded.ttl,
            None,
            Origin::Load(since, generation),
        ) {
            stored += 1;
        }
    }
    tracing::debug!(topic = inner.channel.topic(), stored, "warm-up done");
}

fn apply<T: Send + Sync + 'static>(inner: &Arc<Inner<T>>, sequences: &mut Sequences, event: Event) {
    let envelope = match event {
        Event::Gap(gap) => {
            inner.counters.gaps.incr();
            inner.repair(&format!(
                "transport gap ({}, missed {:?})",
                gap.reason, gap.missed
            ));
            return;
        }
        Event::ReplayDone => {
            inner.replay_done();
            return;
        }
        Event::Message(envelope) => envelope,
    };
    // Only this cache's own writes: its channel publishes under an id of
    // its own (other clones of the user's channel are other publishers).
    if envelope.publisher == inner.channel.publisher() {
        inner.counters.own_echoes_skipped.incr();
        return;
    }
    // Sequence numbers reveal a loss only where one publisher's messages
    // arrive in order; elsewhere the transport's gap events are the signal.
    if inner.ordered {
        let loss = sequences.observe(
            envelope.publisher,
            envelope.sequence,
            envelope.kind == Kind::Heartbeat,
            Instant::now(),
            now_ms(),
        );
        if let Some(loss) = loss {
            inner.counters.sequence_gaps.incr();
            inner.repair(&format!(
                "publisher {}: {} (missed {:?}, at sequence {})",
                envelope.publisher, loss.why, loss.missed, envelope.sequence
            ));
        }
    }
    apply_message(inner, envelope);
}

fn apply_message<T: Send + Sync + 'static>(inner: &Arc<Inner<T>>, envelope: Envelope) {
    match envelope.kind {
        Kind::Heartbeat => {}
        Kind::Delete => {
            inner.store_delete(&envelope.key, envelope.version, Origin::Remote);
        }
        Kind::Update => match inner.channel.codec().decode(&envelope.payload) {
            Ok(value) => {
                inner.store_update(
                    &envelope.key,
                    Arc::new(value),
                    envelope.version,
                    envelope.ttl.map(|ttl| ttl.remaining()),
                    Some(envelope.published_at),
                    Origin::Remote,
                );
            }
            Err(error) => {
                // The key changed to something we cannot read: forget it
                // rather than keep serving the old value.
                inner.counters.decode_errors.incr();
                inner.forget(&envelope.key);
                tracing::warn!(topic = inner.channel.topic(), key = %envelope.key, %error, "cannot decode value: key invalidated");
            }
        },
    }
}
