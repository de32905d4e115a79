//! What the hydration task does with each item of the subscription:
//! messages stored, sequences and leases tracked, gaps and interruptions
//! turned into repairs and trust.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hydratecache_core::{
    ChannelEvent, CodecPanicked, EnvelopeError, Error as CoreError, PublisherId,
};

use crate::clock::now_ms;
use crate::config::RepairPolicy;
use crate::health::Untrusted;
use crate::inner::{Inner, Origin};
use crate::tracking::Tracking;

/// An error item of the subscription.
///
/// One that is not about one message (the transport reports it is dropping
/// messages, a re-subscribe that keeps failing) means messages are being
/// missed from now on: the cache stops serving until the transport's next
/// gap, which marks the end of the loss, has been applied (see [`apply`]).
///
/// A message this build cannot read.
///
/// Bytes that are not an envelope at all (another client on the topic) are
/// skipped. Anything else is an envelope we cannot read (a newer release's,
/// during a rolling upgrade, or damaged), so a possible lost update: with its
/// key (Kafka's record key, the unit of change and of compaction there) that
/// key is forgotten; without, it is a gap, repaired by policy.
///
/// A value the codec could not decode (or panicked on) is a message
/// received: its sequence counts, and its key is forgotten.
pub(crate) fn unreadable<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    tracking: &mut Tracking,
    error: &CoreError,
) {
    let topic = inner.channel.topic();
    if let CoreError::Decode {
        key,
        publisher,
        sequence,
        source,
        ..
    } = error
    {
        // Its send time is in what could not be read: heard now.
        observe(
            inner,
            tracking,
            *publisher,
            *sequence,
            Some(SystemTime::now()),
        );
        match source.downcast_ref::<CodecPanicked>() {
            Some(panic) => user_code_panicked(inner, key, &panic.message),
            None => {
                // The key changed to something we cannot read: forget it
                // rather than keep serving the old value.
                inner.counters.decode_errors.incr();
                inner.forget(key);
                tracing::warn!(topic, key, error = %source, "cannot decode value: key invalidated");
            }
        }
        return;
    }
    if !error.is_per_message() {
        if !inner.pending_gap.swap(true, Ordering::AcqRel) {
            inner.counters.hydration_failures.incr();
        }
        inner.untrust(Untrusted::SubscriptionError);
        tracing::error!(
            topic,
            error = error as &dyn std::error::Error,
            "subscription error: the cache stops serving until the transport's next gap"
        );
        return;
    }
    let CoreError::Malformed { key, source, .. } = error else {
        tracing::warn!(
            topic,
            error = error as &dyn std::error::Error,
            "subscription error item skipped"
        );
        return;
    };
    inner.counters.malformed.incr();
    match (source, key) {
        // Not even our magic byte (or nothing at all): not one of ours.
        (EnvelopeError::BadMagic { .. } | EnvelopeError::Truncated { got: 0, needed: 1 }, _) => {
            tracing::warn!(
                topic,
                error = error as &dyn std::error::Error,
                "bytes that are not a message skipped"
            );
        }
        (_, Some(key)) => {
            inner.forget(key);
            tracing::warn!(
                topic,
                key,
                error = error as &dyn std::error::Error,
                "unreadable message: key forgotten"
            );
        }
        (_, None) => {
            inner.counters.gaps.incr();
            inner.repair(&format!("unreadable message ({source})"));
        }
    }
}

/// Counts an update or delete that arrived while the transport reported
/// the subscription cut off (see [`CacheStats::caught_up`](crate::CacheStats::caught_up)).
fn count_if_cut_off<T>(inner: &Inner<T>, tracking: &mut Tracking) {
    if inner.pending_gap.load(Ordering::Acquire) {
        tracking.since_interruption += 1;
    }
}

pub(crate) fn apply<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    tracking: &mut Tracking,
    event: ChannelEvent<T>,
) {
    match event {
        ChannelEvent::Gap(gap) => {
            tracking.since_interruption = 0;
            inner.counters.gaps.incr();
            let why = format!("transport gap ({}, missed {:?})", gap.reason, gap.missed);
            if inner.pending_gap.swap(false, Ordering::AcqRel) {
                // The end of a loss the transport reported: nothing held or
                // loaded since it began is known to be current. The repair
                // covers whatever a publisher silent meanwhile may have lost.
                tracking.leases.renew_all(Instant::now());
                inner.repair_outage(&why);
                inner.ready_if_warm();
            } else {
                inner.repair(&why);
            }
        }
        ChannelEvent::ReplayDone => inner.replay_done(),
        ChannelEvent::Interrupted(interruption) => {
            // What is published from now on may be missed: stop serving at
            // once; the gap (or `Resumed`) that ends the loss makes the
            // cache current again.
            inner.counters.interruptions.incr();
            if inner.policy == RepairPolicy::Ignore {
                // Stale values are accepted: only the gap after it counts.
                return;
            }
            if !inner.pending_gap.swap(true, Ordering::AcqRel) {
                tracking.since_interruption = 0;
            }
            inner.untrust(Untrusted::Interrupted(interruption.reason));
        }
        // Nothing was lost: what was published meanwhile came first, so
        // the cache caught up instead of repairing.
        ChannelEvent::Resumed if inner.pending_gap.swap(false, Ordering::AcqRel) => {
            // Caught up: a publisher silent past its lease by now fell
            // silent during the cut. Judged before serving again.
            crate::watchdog::expire_leases(inner, tracking);
            inner.counters.resumes.incr();
            inner
                .counters
                .caught_up
                .add(std::mem::take(&mut tracking.since_interruption));
            inner.ready_if_warm();
        }
        // The subscription skipped this cache's own writes (its channel
        // publishes under an id of its own; other clones of the user's
        // channel are other publishers).
        ChannelEvent::Update(msg) => {
            count_if_cut_off(inner, tracking);
            observe(
                inner,
                tracking,
                msg.publisher,
                msg.sequence,
                Some(msg.published_at),
            );
            if inner.predates_repair(msg.published_at) {
                // Published before the last outage repair and delivered after it
                // (held by its publisher's client through an outage): a
                // newer write may have been lost meanwhile, so the store
                // answers for this key instead.
                inner.counters.predating_repair.incr();
                inner.forget(&msg.key);
                return;
            }
            // A weigher panic is caught there: the key is forgotten.
            let _ = inner.store_update(
                &msg.key,
                Arc::new(msg.value),
                msg.version,
                msg.ttl.map(|ttl| ttl.remaining()),
                Some(msg.published_at),
                Origin::Remote,
            );
        }
        ChannelEvent::Delete(delete) => {
            count_if_cut_off(inner, tracking);
            observe(
                inner,
                tracking,
                delete.publisher,
                delete.sequence,
                Some(delete.published_at),
            );
            inner.store_delete(&delete.key, delete.version, Origin::Remote);
        }
        ChannelEvent::Heartbeat(heartbeat) => {
            if tracking
                .marker
                .is_some_and(|(id, _)| id == heartbeat.publisher)
            {
                // Everything accepted before the marker has been applied.
                tracking.marker = None;
                crate::watchdog::caught_up(inner);
                return;
            }
            if inner.liveness.is_some() {
                let at = heard_at(inner, heartbeat.published_at);
                tracking
                    .leases
                    .heartbeat(heartbeat.publisher, heartbeat.lease, at);
            }
            observe(
                inner,
                tracking,
                heartbeat.publisher,
                heartbeat.sequence,
                None,
            );
        }
        // An event of a newer core release: nothing for the cache to apply.
        _ => {}
    }
}

/// When a message published at `published_at` counts as heard, for its
/// publisher's lease: now, as it arrives live; but one that arrives while
/// the transport reports the subscription cut off is a catch-up of a
/// resumable transport, heard when it was sent (the publisher's clock, as
/// `Inner::predates_repair` takes it), so that a publisher that fell silent
/// during the cut is not taken for alive by its old messages.
fn heard_at<T>(inner: &Inner<T>, published_at: SystemTime) -> Instant {
    let now = Instant::now();
    if !inner.pending_gap.load(Ordering::Acquire) {
        return now;
    }
    let age = SystemTime::now()
        .duration_since(published_at)
        .unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

/// Records a message's sequence, repairing on the loss it reveals; a
/// message (not a heartbeat: `published_at` is `None`) renews its
/// publisher's lease.
///
/// Sequence numbers reveal a loss only where one publisher's messages
/// arrive in order; elsewhere the transport's gap events are the signal.
fn observe<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    tracking: &mut Tracking,
    publisher: PublisherId,
    sequence: u64,
    published_at: Option<SystemTime>,
) {
    let heartbeat = published_at.is_none();
    if let Some(at) = published_at {
        tracking.leases.heard(publisher, heard_at(inner, at));
    }
    if !inner.ordered {
        return;
    }
    let loss = tracking
        .sequences
        .observe(publisher, sequence, heartbeat, Instant::now(), now_ms());
    if let Some(loss) = loss.filter(|l| !l.first_word) {
        inner.counters.sequence_gaps.incr();
        inner.repair(&format!(
            "publisher {publisher}: {} (missed {:?}, at sequence {sequence})",
            loss.why, loss.missed
        ));
    } else if loss.is_some() && inner.liveness.is_some() {
        // A write of this publisher committed after a value here was loaded
        // may have failed to publish before its first word: invisible in
        // its sequence. Under a staleness bound such values go, as the
        // loader would answer for them anyway (`warm_up` waits for these
        // first words; see `Liveness::first_words_within`).
        inner.counters.first_words.incr();
        inner.invalidate_before_first_word(publisher);
    }
}

/// The codec panicked on `key`'s value: the key is forgotten, as for a value
/// that cannot be decoded.
fn user_code_panicked<T: Send + Sync + 'static>(inner: &Inner<T>, key: &str, panic: &str) {
    inner.counters.hydration_panics.incr();
    inner.forget(key);
    tracing::error!(
        topic = inner.channel.topic(),
        key,
        panic,
        "codec panicked: key invalidated"
    );
}
