//! A [`Transport`] wrapper that sees exactly what the instance's
//! `LocalCache` sees, in the same order, just before the cache does: every
//! gap, every message (key, version, publisher sequence) and every malformed
//! item. `LocalCache` has no hook for this, so the instance puts this between
//! the adapter and the cache.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use hydratecache_core::{
    Capabilities, Envelope, Event, Kind, PublisherId, Result, SubscribeOptions, Subscription,
    Transport,
};
use hydratecache_testkit::workload::key_index;
use serde_json::{json, Value};

use crate::common::now_us;

/// LocalCache's margin for clock skew about a publisher's start
/// (`CLOCK_SKEW_MARGIN`, 1 s).
const CLOCK_MARGIN_MS: u64 = 1000;

/// What the witness and the instance's reader share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Gap signals so far (transport gaps and sequence jumps).
    pub(crate) gap_epoch: AtomicU64,
    /// When the last gap signal passed (µs), 0 before the first.
    pub(crate) last_gap_us: AtomicU64,
    pub(crate) transport_gaps: AtomicU64,
    pub(crate) sequence_gaps: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) messages: AtomicU64,
    pub(crate) state: Mutex<State>,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Per key: highest version delivered so far and when.
    pub(crate) delivered: Vec<(u64, u64)>,
    /// Keys read stale beyond the window, with the stale version: the first
    /// later delivery of a newer version is logged (`dlv`).
    pub(crate) pending: HashMap<usize, u64>,
    /// Events for the log, drained by the reporter.
    pub(crate) events: Vec<Value>,
    sequences: HashMap<PublisherId, u64>,
    /// When the current subscription started (ms since the epoch).
    subscribed_ms: u64,
    /// Latest `published_at` (µs) of the messages delivered so far.
    published_max: u64,
}

impl Shared {
    pub(crate) fn new(keys: usize) -> Shared {
        Shared {
            gap_epoch: AtomicU64::new(0),
            last_gap_us: AtomicU64::new(0),
            transport_gaps: AtomicU64::new(0),
            sequence_gaps: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            state: Mutex::new(State {
                delivered: vec![(0, 0); keys],
                pending: HashMap::new(),
                events: Vec::new(),
                sequences: HashMap::new(),
                subscribed_ms: 0,
                published_max: 0,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A repair the cache decided on its own (seen in its counters).
    pub(crate) fn cache_gap(&self, kind: &str, detail: Value) {
        let mut state = self.lock();
        self.gap(&mut state, kind, detail);
    }

    fn gap(&self, state: &mut State, kind: &str, detail: Value) {
        let t = now_us();
        let epoch = self.gap_epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.last_gap_us.store(t, Ordering::Release);
        // How recent the messages delivered before this gap were: a gap must
        // come before any message published after the loss it reports.
        let seen = state.published_max;
        state.events.push(
            json!({"e": "gap", "t": t, "kind": kind, "epoch": epoch, "seen_pub": seen, "detail": detail}),
        );
    }

    fn observe(&self, item: &Result<Event>, ordered: bool, first_words: bool) {
        match item {
            Ok(Event::Gap(gap)) => {
                self.transport_gaps.fetch_add(1, Ordering::Relaxed);
                let mut state = self.lock();
                self.gap(
                    &mut state,
                    "transport",
                    json!({"reason": gap.reason.to_string(), "missed": gap.missed}),
                );
            }
            Ok(Event::Message(envelope)) => self.message(envelope, ordered, first_words),
            Ok(_) => {}
            Err(e) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                self.lock()
                    .events
                    .push(json!({"e": "malformed", "t": now_us(), "error": format!("{e:?}")}));
            }
        }
    }

    fn message(&self, envelope: &Envelope, ordered: bool, first_words: bool) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        let mut state = self.lock();
        // The same rule as LocalCache's sequence tracking: a publisher's
        // sequence may not jump; a heartbeat carries the last one used. Only
        // on transports that keep one publisher's order, as LocalCache does.
        let heartbeat = envelope.kind == Kind::Heartbeat;
        let expected = |last: u64| if heartbeat { last } else { last + 1 };
        let missed = match state.sequences.get(&envelope.publisher) {
            Some(&last) if ordered && envelope.sequence > expected(last) => {
                envelope.sequence - expected(last)
            }
            _ => 0,
        };
        // And LocalCache's rules for a publisher's first message: one that
        // started after the subscription (by more than the clock margin)
        // lost its first ones, a gap; one already running speaks its first
        // word, which (under a staleness bound) invalidates what the cache
        // stored before it.
        let sent_before = if heartbeat {
            envelope.sequence
        } else {
            envelope.sequence.saturating_sub(1)
        };
        if ordered && sent_before > 0 && !state.sequences.contains_key(&envelope.publisher) {
            let start_ms = envelope.publisher.start_millis();
            let now_ms = now_us() / 1000;
            let started_later = start_ms <= now_ms + CLOCK_MARGIN_MS
                && start_ms > state.subscribed_ms + CLOCK_MARGIN_MS;
            let detail =
                json!({"publisher": envelope.publisher.to_string(), "at": envelope.sequence});
            if started_later {
                self.sequence_gaps.fetch_add(1, Ordering::Relaxed);
                self.gap(&mut state, "sequence", detail);
            } else if first_words {
                self.gap(&mut state, "first_word", detail);
            }
        }
        let mark = state.sequences.entry(envelope.publisher).or_insert(0);
        *mark = (*mark).max(envelope.sequence);
        if missed > 0 {
            self.sequence_gaps.fetch_add(1, Ordering::Relaxed);
            self.gap(
                &mut state,
                "sequence",
                json!({"missed": missed, "at": envelope.sequence, "heartbeat": heartbeat}),
            );
        }
        let published = u64::try_from(
            envelope
                .published_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0),
        )
        .unwrap_or(0);
        state.published_max = state.published_max.max(published);
        if heartbeat {
            return;
        }
        let (Some(key), Some(version)) = (key_index(&envelope.key), envelope.version) else {
            return;
        };
        let Some(slot) = state.delivered.get_mut(key) else {
            return;
        };
        let t = now_us();
        if version > slot.0 {
            *slot = (version, t);
        }
        if let Some(&stale) = state.pending.get(&key) {
            if version > stale {
                state.pending.remove(&key);
                state
                    .events
                    .push(json!({"e": "dlv", "t": t, "k": key, "d": version, "p": stale}));
            }
        }
    }
}

/// The adapter's transport, watched.
pub(crate) struct Witness {
    pub(crate) inner: Arc<dyn Transport>,
    pub(crate) shared: Arc<Shared>,
    /// Whether the cache applies its first-word rule (a staleness bound).
    pub(crate) first_words: bool,
}

impl Transport for Witness {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        self.inner.publish(topic, envelope)
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        async move {
            let ordered = self.inner.capabilities().ordered;
            let inner = self.inner.subscribe(topic, options).await?;
            // A new subscription is a new hydration run: LocalCache's
            // sequence tracking starts over.
            {
                let mut state = self.shared.lock();
                state.sequences.clear();
                state.subscribed_ms = now_us() / 1000;
            }
            let stream = Watched {
                inner,
                shared: Arc::clone(&self.shared),
                ended: false,
                ordered,
                first_words: self.first_words,
            };
            Ok(Subscription::new(topic, stream.boxed()))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.inner.close()
    }
}

struct Watched {
    inner: Subscription,
    shared: Arc<Shared>,
    ended: bool,
    /// Whether sequence jumps mean losses on this transport.
    ordered: bool,
    first_words: bool,
}

impl Stream for Watched {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(item)) => {
                this.shared.observe(&item, this.ordered, this.first_words);
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                if !this.ended {
                    this.ended = true;
                    this.shared
                        .lock()
                        .events
                        .push(json!({"e": "stream_end", "t": now_us()}));
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
