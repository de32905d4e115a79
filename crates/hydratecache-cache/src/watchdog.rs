//! The cache's own liveness: reads are served only while the hydration task
//! keeps running, publishers' leases are checked, and after a stall of the
//! process the cache catches up before it serves again.
//!
//! A paused process (SIGSTOP, a VM stall, a runtime starved of threads) must
//! not serve what it held before the pause as fresh: messages may be waiting
//! unread. So the task refreshes a deadline on every tick, and `get` serves
//! only before it: the first read after a pause misses, whatever thread runs
//! first. A tick that comes later than the deadline means the task itself
//! stalled: it sends a marker through the backend and serves again once the
//! marker came back (everything accepted before it has then been applied).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::clock::{self, Nanos};
use crate::config::Liveness;
use crate::health::Untrusted;
use crate::inner::Inner;
use crate::tracking::Tracking;

/// One tick of the hydration task: `last` is the previous tick's time.
pub(crate) fn tick<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    tracking: &mut Tracking,
    liveness: &Liveness,
    last: &mut Nanos,
) {
    let now = clock::now();
    let since = Duration::from_nanos(now.saturating_sub(*last));
    *last = now;
    if since > liveness.fresh_for {
        // Reads have stopped already (the deadline passed): catch up first.
        inner.counters.stalls.incr();
        tracing::warn!(
            topic = inner.channel.topic(),
            stalled_for = ?since,
            "hydration stalled: the cache serves again once it has caught up"
        );
        tracking.leases.renew_all(Instant::now());
        inner.pending_marker.store(true, Ordering::Release);
        inner.untrust(Untrusted::Stalled);
        send_marker(inner, tracking);
    } else if tracking.marker.is_none() {
        inner
            .fresh_until
            .store(liveness.fresh_until(now), Ordering::Release);
    } else if tracking
        .marker
        .is_some_and(|(_, sent)| sent.elapsed() >= liveness.marker_retry)
    {
        send_marker(inner, tracking);
    }
    // Cut off, this cache hears nobody: not their silence. A resumable
    // transport delivers what they sent meanwhile; the end of the cut
    // judges the leases (`expire_leases` at `Resumed`, a repair at a gap).
    if !inner.pending_gap.load(Ordering::Acquire) {
        expire_leases(inner, tracking);
    }
}

/// Repairs for each publisher silent past its lease.
pub(crate) fn expire_leases<T: Send + Sync + 'static>(
    inner: &Arc<Inner<T>>,
    tracking: &mut Tracking,
) {
    for (publisher, lease) in tracking.leases.expired(Instant::now()) {
        inner.counters.silent_publishers.incr();
        inner.repair(&format!(
            "publisher {publisher} silent past its lease of {lease:?}: its last writes may be lost"
        ));
    }
}

/// Sends a marker under a new publisher id (so a late one from an earlier
/// stall is not taken for it).
fn send_marker<T: Send + Sync + 'static>(inner: &Arc<Inner<T>>, tracking: &mut Tracking) {
    let probe = inner.channel.with_new_publisher();
    tracking.marker = Some((probe.publisher(), Instant::now()));
    let timeout = inner
        .liveness
        .map_or(Duration::from_secs(1), |l| l.marker_retry);
    inner.runtime.spawn(async move {
        match tokio::time::timeout(timeout, probe.mark()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(error = &e as &dyn std::error::Error, "marker not sent"),
            Err(_) => tracing::debug!("marker not sent in time"),
        }
    });
}

/// The marker came back: everything accepted before it has been applied.
pub(crate) fn caught_up<T: Send + Sync + 'static>(inner: &Inner<T>) {
    if let Some(liveness) = &inner.liveness {
        inner
            .fresh_until
            .store(liveness.fresh_until(clock::now()), Ordering::Release);
    }
    if inner.pending_marker.swap(false, Ordering::AcqRel) {
        tracing::info!(topic = inner.channel.topic(), "caught up after a stall");
        inner.ready_if_warm();
    }
}
