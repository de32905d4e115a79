//! The hydration task: applies the channel's messages to the cache, tracks
//! each publisher's sequence, repairs on gaps, and sends this cache's heartbeats.
//!
//! **Supervision.** The cache must never serve from a table nobody updates
//! any more. Two layers keep that promise:
//! - user code that runs on the task (the codec and the weigher on each
//!   message, the warm-up stream) runs under `catch_unwind` (the codec's, in
//!   the subscription, which yields the panic as that message's decode
//!   error): a panic there concerns one message (its key is forgotten, as
//!   for an undecodable value) or ends the warm-up; hydration goes on.
//!   Catching per message keeps the subscription, so nothing is missed and
//!   no repair is needed.
//! - the task's whole loop runs under `catch_unwind` too, in the task itself
//!   rather than behind its `JoinHandle`, so it reacts at the moment of the
//!   panic (a transport's stream that panics, a bug of ours): the cache stops
//!   serving at once, then resubscribes with backoff, invalidates every value and
//!   serves again. Each such failure is counted (`hydration_failures`). A
//!   task dropped before it returned (its runtime shut down) stops the cache
//!   serving too, from a drop guard.
//!
//! State touched by a caught panic stays consistent: the store lock recovers
//! from poisoning, and the table is only written after user code returned.
//! (Built with `panic = "abort"`, nothing is caught: the process ends.)

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::OptionFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_core::{ChannelSubscription, Error as CoreError, StartFrom, SubscribeOptions};
use tokio::sync::oneshot;

use crate::apply::{apply, unreadable};
use crate::clock::{self, Nanos};
use crate::config::Liveness;
use crate::health::Untrusted;
use crate::inner::{Inner, Origin};
use crate::loader::WarmStream;
use crate::tracking::Tracking;
use crate::watchdog;

/// First wait before resubscribing after a failure; doubles up to the max.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A subscribe attempt that takes longer is abandoned (and retried).
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a run of the hydration loop ended.
enum Outcome {
    /// `close()` or drop.
    Stopped,
    /// The subscription ended: the cache no longer serves.
    Ended,
}

/// What the task needs to (re)start hydration.
pub(crate) struct Hydration<T> {
    pub(crate) inner: Arc<Inner<T>>,
    pub(crate) subscription: ChannelSubscription<T>,
    /// When `subscription` was confirmed, in ms since the epoch.
    pub(crate) subscribed_ms: u64,
    pub(crate) warm: Option<(WarmStream<T>, Nanos)>,
    pub(crate) heartbeat_interval: Option<Duration>,
    pub(crate) options: SubscribeOptions,
}

/// Subscribes through the cache's own channel: its echoes are skipped
/// (and counted) before they are decoded, and a codec panic on one message
/// is that message's decode error.
pub(crate) async fn subscribe<T: Send + Sync + 'static>(
    inner: &Inner<T>,
    options: SubscribeOptions,
) -> Result<ChannelSubscription<T>, CoreError> {
    Ok(inner
        .channel
        .subscribe_with(options)
        .await?
        .skip_own(Arc::clone(&inner.counters.own_echoes_skipped))
        .catch_codec_panics())
}

/// Runs hydration until stopped, restarting it after a panic.
pub(crate) async fn supervise<T: Send + Sync + 'static>(
    hydration: Hydration<T>,
    mut stop: oneshot::Receiver<()>,
) {
    let Hydration {
        inner,
        subscription,
        subscribed_ms,
        mut warm,
        heartbeat_interval,
        options,
    } = hydration;
    let mut guard = Unsupervised(Some(Arc::clone(&inner)));
    let mut current = Some((subscription, subscribed_ms));
    let mut backoff = RESTART_MIN;
    loop {
        let (subscription, subscribed_ms) = match current.take() {
            Some(current) => current,
            None => match resubscribe(&inner, &options, &mut stop, &mut backoff).await {
                Some(resubscribed) => resubscribed,
                None => {
                    guard.0 = None;
                    return;
                }
            },
        };
        let started = Instant::now();
        let run = AssertUnwindSafe(run(
            Arc::clone(&inner),
            subscription,
            subscribed_ms,
            warm.take(),
            heartbeat_interval,
            &mut stop,
        ))
        .catch_unwind()
        .await;
        match run {
            Ok(Outcome::Stopped | Outcome::Ended) => {
                guard.0 = None;
                return;
            }
            Err(panic) => {
                inner.counters.hydration_failures.incr();
                inner.untrust(Untrusted::HydrationFailed);
                tracing::error!(
                    topic = inner.channel.topic(),
                    panic = panic_message(&*panic),
                    "hydration task panicked: the cache stops serving until it has resubscribed"
                );
                if started.elapsed() >= RESTART_MAX {
                    backoff = RESTART_MIN;
                }
            }
        }
    }
}

/// Set while the task runs: if it is dropped before it returns (its
/// runtime shut down, or it was aborted), the cache stops serving, since
/// nothing updates it any more. Aborted by dropping the cache is no failure.
struct Unsupervised<T: Send + Sync + 'static>(Option<Arc<Inner<T>>>);

impl<T: Send + Sync + 'static> Drop for Unsupervised<T> {
    fn drop(&mut self) {
        if let Some(inner) = self.0.take() {
            if inner.closed.load(Ordering::Acquire) {
                inner.untrust(Untrusted::Closed);
            } else {
                inner.counters.hydration_failures.incr();
                inner.untrust(Untrusted::HydrationFailed);
            }
        }
    }
}

/// Subscribes again after a failure, waiting `backoff` (doubled each
/// attempt) before each attempt; `None` once stopped.
async fn resubscribe<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    options: &SubscribeOptions,
    stop: &mut oneshot::Receiver<()>,
    backoff: &mut Duration,
) -> Option<(ChannelSubscription<T>, u64)> {
    loop {
        tokio::select! {
            _ = &mut *stop => return None,
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = backoff.saturating_mul(2).min(RESTART_MAX);
        let subscribe = AssertUnwindSafe(tokio::time::timeout(
            SUBSCRIBE_TIMEOUT,
            subscribe(inner, options.clone()),
        ))
        .catch_unwind();
        let attempt = tokio::select! {
            _ = &mut *stop => return None,
            attempt = subscribe => attempt,
        };
        match attempt {
            Ok(Ok(Ok(subscription))) => {
                let subscribed_ms = clock::now_ms();
                // Whatever changed while unsubscribed is unknown: repair,
                // then serve once a replay (if any) is done. A warm-up cut
                // short is not resumed.
                inner
                    .pending_replay
                    .store(options.start == StartFrom::Earliest, Ordering::Release);
                inner.pending_warm.store(false, Ordering::Release);
                inner.pending_gap.store(false, Ordering::Release);
                inner.repair_outage("hydration restarted");
                inner.ready_if_warm();
                tracing::warn!(
                    topic = inner.channel.topic(),
                    "hydration resubscribed after a failure"
                );
                return Some((subscription, subscribed_ms));
            }
            Ok(Ok(Err(e))) => {
                tracing::warn!(
                    topic = inner.channel.topic(),
                    error = &e as &dyn std::error::Error,
                    "resubscribe failed"
                );
            }
            Ok(Err(_)) => {
                tracing::warn!(topic = inner.channel.topic(), timeout = ?SUBSCRIBE_TIMEOUT, "resubscribe timed out");
            }
            Err(panic) => {
                tracing::error!(
                    topic = inner.channel.topic(),
                    panic = panic_message(&*panic),
                    "resubscribe panicked"
                );
            }
        }
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)")
}

async fn run<T: Send + Sync + 'static>(
    inner: Arc<Inner<T>>,
    mut subscription: ChannelSubscription<T>,
    subscribed_ms: u64,
    warm: Option<(WarmStream<T>, Nanos)>,
    heartbeat_interval: Option<Duration>,
    stop: &mut oneshot::Receiver<()>,
) -> Outcome {
    let (heartbeat_stop, heartbeat_stopped) = oneshot::channel::<()>();
    let (user_heartbeat_stop, user_heartbeat_stopped) = oneshot::channel::<()>();
    let mut heartbeats = std::pin::pin!(OptionFuture::from(heartbeat_interval.map(|interval| {
        futures::future::join(
            inner
                .channel
                .clone()
                .run_heartbeats(interval, heartbeat_stopped),
            // What is published through the channel the cache was built
            // from is heartbeated too (a channel that never published sends
            // nothing), so its lost last message is noticed as well.
            inner
                .user_channel
                .clone()
                .run_heartbeats(interval, user_heartbeat_stopped),
        )
    })));
    // First words are only told apart on ordered transports.
    let first_words_within = inner
        .liveness
        .filter(|_| inner.ordered)
        .map(|l| l.first_words_within);
    // Read before the loop: `select!` may apply a gap already queued before
    // it first polls the warm-up, which must still count that repair.
    let subscribed = (
        inner.generation.load(Ordering::Acquire),
        inner.first_word_bumps.load(Ordering::Acquire),
    );
    let mut warming = std::pin::pin!(OptionFuture::from(warm.map(|(entries, since)| {
        let inner = Arc::clone(&inner);
        async move {
            // The first word of each publisher already running invalidates
            // what was stored before it: warm up after them.
            if let Some(wait) = first_words_within {
                tokio::time::sleep(wait).await;
            }
            warm_up(inner, entries, since, subscribed).await;
        }
    })));
    let mut warm_done = false;
    // Both optional futures finish once: never poll them again after that.
    let mut heartbeats_done = false;
    let mut tracking = Tracking::new(subscribed_ms, Instant::now());
    let mut ticks = inner.liveness.map(|l| {
        let mut ticks = tokio::time::interval(l.tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (l, ticks)
    });
    let mut last_tick = clock::now();
    let outcome = loop {
        tokio::select! {
            _ = &mut *stop => break Outcome::Stopped,
            () = next_tick(&mut ticks) => {
                if let Some((liveness, _)) = &ticks {
                    watchdog::tick(&inner, &mut tracking, liveness, &mut last_tick);
                }
            }
            _ = &mut heartbeats, if !heartbeats_done => heartbeats_done = true,
            _ = &mut warming, if !warm_done => {
                warm_done = true;
                inner.warm_done();
            }
            item = subscription.next() => match item {
                Some(Ok(event)) => apply(&inner, &mut tracking, event),
                Some(Err(e)) => unreadable(&inner, &mut tracking, &e),
                None => {
                    // Without a subscription the cache can no longer know
                    // what changed: stop serving rather than serve stale values.
                    tracing::error!(topic = inner.channel.topic(), "subscription ended: the cache stops serving");
                    inner.counters.hydration_failures.incr();
                    inner.untrust(Untrusted::HydrationFailed);
                    inner.retire();
                    break Outcome::Ended;
                }
            }
        }
    };
    let _ = heartbeat_stop.send(());
    let _ = user_heartbeat_stop.send(());
    if !heartbeats_done {
        heartbeats.await;
    }
    outcome
}

/// Stores the warm-up stream's entries, as loads that started when the
/// subscription did, unless a repair happened since: `subscribed` is the
/// generation and the count of first-word bumps then. First words since are
/// passed over (they concern values stored before them; the stream reads
/// the store when polled).
async fn warm_up<T: Send + Sync + 'static>(
    inner: Arc<Inner<T>>,
    mut entries: WarmStream<T>,
    since: Nanos,
    subscribed: (u64, u64),
) {
    let (generation_then, first_words_then) = subscribed;
    let first_words = inner
        .first_word_bumps
        .load(Ordering::Acquire)
        .wrapping_sub(first_words_then);
    let now = inner.generation.load(Ordering::Acquire);
    let generation = if now.wrapping_sub(generation_then) == first_words {
        now
    } else {
        // A repair since the subscription: nothing of the stream stores.
        generation_then
    };
    let mut stored = 0u64;
    loop {
        let (key, loaded) = match AssertUnwindSafe(entries.next()).catch_unwind().await {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            Err(panic) => {
                // What was stored is valid (each entry is guarded like a
                // load); the rest loads on demand.
                inner.counters.hydration_panics.incr();
                tracing::error!(
                    topic = inner.channel.topic(),
                    stored,
                    panic = panic_message(&*panic),
                    "warm-up stream panicked: warm-up ended early"
                );
                return;
            }
        };
        // Stored like a load that started when the subscription did: an
        // update received since then wins.
        // A weigher panic is caught, counted and logged there.
        let store = inner.store_update(
            &key,
            Arc::new(loaded.value),
            loaded.version,
            loaded.ttl,
            None,
            Origin::Load(since, generation),
        );
        if let Ok(true) = store {
            stored += 1;
        }
    }
    tracing::debug!(topic = inner.channel.topic(), stored, "warm-up done");
}

/// The next tick, or never without liveness checks.
async fn next_tick(ticks: &mut Option<(Liveness, tokio::time::Interval)>) {
    match ticks {
        Some((_, ticks)) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
