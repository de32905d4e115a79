//! The half-open scenario: a subscription whose connection stops carrying
//! anything, without closing, is interrupted within its adapter's bound.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use hydratecache_core::{Envelope, Event, InterruptReason, Transport};

use crate::harness::{connect, next_message, topic, Harness, RECEIVE_TIMEOUT};

/// What [`interrupted_when_the_connection_goes_silent`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilenceReport {
    /// From the moment forwarding stopped to the interruption.
    pub detected_after: Duration,
    /// Why the adapter said it was interrupted.
    pub reason: InterruptReason,
    /// Whether delivery came back with a gap (`false`: with `Resumed`).
    pub gap: bool,
}

/// `subscriber` reaches the server through something `freeze` makes stop
/// forwarding in both directions without closing (a proxy: a crashed host,
/// a dropped NAT flow). A message goes through first; then, frozen, the
/// subscription must yield [`Event::Interrupted`] within `bound` (plus a
/// second of slack for a loaded machine); after `thaw`, a gap or
/// [`Event::Resumed`], and messages again.
///
/// Panics when no interruption comes, or delivery never comes back.
pub async fn interrupted_when_the_connection_goes_silent<F, T, Fut>(
    h: &dyn Harness,
    subscriber: Arc<dyn Transport>,
    bound: Duration,
    freeze: F,
    thaw: T,
) -> SilenceReport
where
    F: FnOnce(),
    T: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let topic = topic(h, "silence").await;
    let publisher = connect(h).await;
    let mut sub = match subscriber.subscribe(&topic, Default::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe through the proxy: {e:?}"),
    };
    let publish = |key: &'static str| {
        let publisher = Arc::clone(&publisher);
        let topic = topic.clone();
        async move {
            let envelope = Envelope::update(key, Bytes::from_static(b"v"));
            let _ = publisher.publish(&topic, &envelope).await;
        }
    };
    publish("before").await;
    let first = next_message(&mut sub, "the message before the freeze").await;
    assert_eq!(first.key, "before");

    freeze();
    let frozen_at = Instant::now();
    let limit = bound + Duration::from_secs(1);
    let reason = match tokio::time::timeout(limit, sub.next()).await {
        Ok(Some(Ok(Event::Interrupted(i)))) => i.reason,
        Ok(Some(other)) => panic!("expected an interruption, got {other:?}"),
        Ok(None) => panic!("the subscription ended instead of being interrupted"),
        Err(_) => panic!(
            "no interruption within {limit:?} of the connection going silent (bound {bound:?})"
        ),
    };
    let detected_after = frozen_at.elapsed();

    thaw().await;
    // Published again until it arrives: the first ones may go while the
    // adapter reconnects. A gap ends the interruption before what follows;
    // `Resumed` after what was published meanwhile.
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    let mut gap = None;
    let mut after = false;
    loop {
        if let (Some(gap), true) = (gap, after) {
            return SilenceReport {
                detected_after,
                reason,
                gap,
            };
        }
        assert!(
            Instant::now() < deadline,
            "delivery did not come back within {RECEIVE_TIMEOUT:?} after the thaw (gap or resumed: {gap:?}, message: {after})"
        );
        if !after {
            publish("after").await;
        }
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(Ok(Event::Gap(_)))) => gap = Some(true),
            Ok(Some(Ok(Event::Resumed))) => gap = Some(false),
            Ok(Some(Ok(Event::Message(m)))) if m.key == "after" => after = true,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the subscription ended after the thaw"),
        }
    }
}
