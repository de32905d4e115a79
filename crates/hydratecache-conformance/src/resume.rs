//! The resumable scenarios, for transports with
//! [`Capabilities::resumable`](hydratecache_core::Capabilities::resumable):
//! a subscription cut off from its server catches up once back, and reports
//! a gap only when what it missed is no longer retained.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use hydratecache_core::{Envelope, Event, Subscription, Transport};

use crate::harness::{connect, topic, Harness, RECEIVE_TIMEOUT};

/// Messages published while the subscriber is cut off.
pub const RESUME_MESSAGES: usize = 1_000;

/// Publishes in flight at once while the subscriber is cut off: futures are
/// first polled in order, so this keeps the publish order.
const IN_FLIGHT: usize = 64;

/// What [`resumes_after_a_cut`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeReport {
    /// Messages published while cut off, all delivered in order (the case
    /// panics otherwise).
    pub delivered: usize,
    /// From `restore` to [`Event::Resumed`].
    pub resumed_after: Duration,
}

/// Connects `subscriber` (after the publisher's own client is connected and
/// has published, so a proxy can tell the two apart) and subscribes.
async fn subscribed<S, SF>(h: &dyn Harness, case: &str, subscriber: S) -> Cut
where
    S: FnOnce() -> SF,
    SF: Future<Output = Arc<dyn Transport>>,
{
    let topic = topic(h, case).await;
    let publisher = connect(h).await;
    publish(&publisher, &topic, "warm").await;
    let sub_client = subscriber().await;
    let mut sub = match sub_client.subscribe(&topic, Default::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe: {e:?}"),
    };
    // Published until one arrives: a subscription from `Latest` may take a
    // moment to find the end of the log.
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "nothing delivered within {RECEIVE_TIMEOUT:?} of subscribing"
        );
        publish(&publisher, &topic, "before").await;
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) if m.key == "before" => break,
            Ok(Some(Ok(Event::Message(_) | Event::ReplayDone))) | Err(_) => {}
            Ok(other) => panic!("expected a message before the cut, got {other:?}"),
        }
    }
    // Later copies of "before" are passed over.
    Cut {
        topic,
        publisher,
        _sub_client: sub_client,
        sub,
    }
}

fn sub_client_ordered(t: &Arc<dyn Transport>) -> bool {
    t.capabilities().ordered
}

struct Cut {
    topic: String,
    publisher: Arc<dyn Transport>,
    _sub_client: Arc<dyn Transport>,
    sub: Subscription,
}

async fn publish(publisher: &Arc<dyn Transport>, topic: &str, key: &str) {
    let envelope = Envelope::update(key, Bytes::from_static(b"v"));
    if let Err(e) = publisher.publish(topic, &envelope).await {
        panic!("publish {key}: {e:?}");
    }
}

/// Waits for the interruption the cut causes, passing over copies of the
/// message that proved delivery before it.
async fn interrupted(sub: &mut Subscription) {
    loop {
        match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
            Ok(Some(Ok(Event::Interrupted(_)))) => return,
            Ok(Some(Ok(Event::Message(m)))) if m.key == "before" => {}
            Ok(other) => panic!("expected an interruption after the cut, got {other:?}"),
            Err(_) => panic!("no interruption within {RECEIVE_TIMEOUT:?} of the cut"),
        }
    }
}

/// A subscriber cut off from the server (`cut`: its connections closed and
/// new ones refused, until `restore`; the publisher's client, connected
/// first, is not cut) while [`RESUME_MESSAGES`] messages are published:
/// once restored, the subscription must deliver every one of them once, in
/// publish order where the transport is [`ordered`](hydratecache_core::Capabilities::ordered),
/// then [`Event::Resumed`], with no gap.
///
/// `subscriber` connects the client to cut off; it is called after the
/// publisher's client has connected and published.
///
/// Panics on a gap, a message missing, repeated or out of order, or when the
/// subscription does not resume within [`RECEIVE_TIMEOUT`].
pub async fn resumes_after_a_cut<S, SF, C, R, RF>(
    h: &dyn Harness,
    subscriber: S,
    cut: C,
    restore: R,
) -> ResumeReport
where
    S: FnOnce() -> SF,
    SF: Future<Output = Arc<dyn Transport>>,
    C: FnOnce(),
    R: FnOnce() -> RF,
    RF: Future<Output = ()>,
{
    let Cut {
        topic,
        publisher,
        _sub_client,
        mut sub,
    } = subscribed(h, "resume", subscriber).await;
    cut();
    interrupted(&mut sub).await;
    let published = futures::stream::iter(0..RESUME_MESSAGES)
        .map(|i| {
            let publisher = Arc::clone(&publisher);
            let topic = topic.clone();
            async move {
                let envelope = Envelope::update(format!("m{i:05}"), Bytes::from_static(b"v"));
                publisher.publish(&topic, &envelope).await
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await;
    if let Err(e) = published {
        panic!("publish while the subscriber is cut off: {e:?}");
    }
    restore().await;
    let restored = Instant::now();
    let deadline = restored + RECEIVE_TIMEOUT;
    // In publish order where the transport keeps it; else each once.
    let ordered = sub_client_ordered(&_sub_client);
    let mut seen = vec![false; RESUME_MESSAGES];
    let mut next = 0usize;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) if m.key == "before" && next == 0 => {}
            Ok(Some(Ok(Event::Message(m)))) => {
                let index = m
                    .key
                    .strip_prefix('m')
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|i| *i < RESUME_MESSAGES);
                let Some(index) = index else {
                    panic!("a message that was not published: {:?}", m.key);
                };
                if ordered {
                    assert_eq!(
                        index, next,
                        "message {next} of {RESUME_MESSAGES} out of order, repeated or missing (got m{index:05})"
                    );
                }
                assert!(!seen[index], "m{index:05} delivered twice");
                seen[index] = true;
                next += 1;
            }
            Ok(Some(Ok(Event::Resumed))) => {
                assert_eq!(
                    next, RESUME_MESSAGES,
                    "Resumed before everything published while cut off was delivered"
                );
                return ResumeReport {
                    delivered: next,
                    resumed_after: restored.elapsed(),
                };
            }
            // Cut off again while reconnecting: still no loss.
            Ok(Some(Ok(Event::Interrupted(_)))) => {}
            Ok(other) => panic!(
                "after {next} of {RESUME_MESSAGES} messages caught up: expected the rest and Resumed, got {other:?}"
            ),
            Err(_) => panic!(
                "not resumed within {RECEIVE_TIMEOUT:?} of the restore ({next} of {RESUME_MESSAGES} messages caught up)"
            ),
        }
    }
}

/// A subscriber cut off as in [`resumes_after_a_cut`] while messages are
/// published, and then what it missed is dropped by `drop_retained` (a trim,
/// a purge, a log reset): once restored, the subscription must report a gap
/// before any message published after the restore.
///
/// Panics when such a message arrives first, or nothing arrives within
/// [`RECEIVE_TIMEOUT`].
pub async fn gap_when_the_position_is_gone<S, SF, C, D, DF, R, RF>(
    h: &dyn Harness,
    subscriber: S,
    cut: C,
    drop_retained: D,
    restore: R,
) where
    S: FnOnce() -> SF,
    SF: Future<Output = Arc<dyn Transport>>,
    C: FnOnce(),
    D: FnOnce() -> DF,
    DF: Future<Output = ()>,
    R: FnOnce() -> RF,
    RF: Future<Output = ()>,
{
    let Cut {
        topic,
        publisher,
        _sub_client,
        mut sub,
    } = subscribed(h, "trimmed", subscriber).await;
    cut();
    interrupted(&mut sub).await;
    for i in 0..10 {
        publish(&publisher, &topic, &format!("lost{i}")).await;
    }
    drop_retained().await;
    restore().await;
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    let mut gap = false;
    loop {
        assert!(
            Instant::now() < deadline,
            "neither a gap nor a message within {RECEIVE_TIMEOUT:?} of the restore"
        );
        // Published until it arrives: the first may go while the
        // subscriber reconnects.
        publish(&publisher, &topic, "after").await;
        match tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
            Ok(Some(Ok(Event::Gap(_)))) => gap = true,
            Ok(Some(Ok(Event::Message(m)))) if m.key == "after" => {
                assert!(
                    gap,
                    "a message published after the restore came before the gap"
                );
                return;
            }
            Ok(Some(Ok(Event::Resumed))) => {
                panic!("Resumed although what was missed is no longer retained")
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => panic!("the subscription ended after the restore"),
        }
    }
}

/// What [`local_cache_catches_up_after_a_cut`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchUpReport {
    /// Resumes B counted (at least 1).
    pub resumes: u64,
    /// Updates B applied while cut off, before resuming.
    pub caught_up: u64,
    /// B's repairs (0: the cut was no gap).
    pub repairs: u64,
    /// B's loader calls (0: every value came from the messages).
    pub loads: u64,
}

/// Two [`LocalCache`](hydratecache_cache::LocalCache)s on one topic: A
/// writes [`CATCH_UP_KEYS`] keys and B (connected through `subscriber`)
/// holds them; B is cut off (`cut`) until it stops trusting what it holds,
/// A rewrites every key, and B is restored 1.5 s later (past A's lease). On a resumable transport B must
/// catch up: trusted again with every new value, without a repair or a
/// load, and with the resume counted.
///
/// Panics otherwise, or when B does not catch up within [`RECEIVE_TIMEOUT`].
pub async fn local_cache_catches_up_after_a_cut<S, SF, C, R, RF>(
    h: &dyn Harness,
    subscriber: S,
    cut: C,
    restore: R,
) -> CatchUpReport
where
    S: FnOnce() -> SF,
    SF: Future<Output = Arc<dyn Transport>>,
    C: FnOnce(),
    R: FnOnce() -> RF,
    RF: Future<Output = ()>,
{
    use hydratecache_cache::{Loaded, LocalCache};
    use hydratecache_core::Channel;
    use std::sync::atomic::{AtomicU64, Ordering};

    let topic = topic(h, "catchup").await;
    let a: LocalCache<String> =
        match LocalCache::builder(Channel::new(connect(h).await, topic.clone()))
            .build()
            .await
        {
            Ok(c) => c,
            Err(e) => panic!("cache A: {e:?}"),
        };
    // A's connections exist before B's (a proxy tells them apart that way).
    if let Err(e) = a.put("warm", String::new()).await {
        panic!("put before B connects: {e:?}");
    }
    let loads = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&loads);
    let b: LocalCache<String> =
        match LocalCache::builder(Channel::new(subscriber().await, topic.clone()))
            .loader(move |_key: String| {
                counted.fetch_add(1, Ordering::AcqRel);
                async move { Ok::<Option<Loaded<String>>, hydratecache_core::BoxError>(None) }
            })
            .build()
            .await
        {
            Ok(c) => c,
            Err(e) => panic!("cache B: {e:?}"),
        };
    let key = |i: usize| format!("key{i}");
    let holds = |b: &LocalCache<String>, prefix: &str| {
        (0..CATCH_UP_KEYS).all(|i| b.get(&key(i)).as_deref() == Some(&format!("{prefix}-{i}")))
    };
    for i in 0..CATCH_UP_KEYS {
        if let Err(e) = a.put(&key(i), format!("before-{i}")).await {
            panic!("put before the cut: {e:?}");
        }
    }
    wait_for("B holds every key before the cut", || holds(&b, "before")).await;
    cut();
    wait_for("B stops trusting what it holds", || {
        !b.health().is_trusted()
    })
    .await;
    for i in 0..CATCH_UP_KEYS {
        if let Err(e) = a.put(&key(i), format!("after-{i}")).await {
            panic!("put while B is cut off: {e:?}");
        }
    }
    // Longer than A's lease (three heartbeat intervals): B hears nothing
    // from A meanwhile, and its heartbeats come with the catch-up.
    tokio::time::sleep(CUT_HELD).await;
    restore().await;
    wait_for("B caught up with every key", || holds(&b, "after")).await;
    let s = b.stats();
    let report = CatchUpReport {
        resumes: s.resumes,
        caught_up: s.caught_up,
        repairs: s.repairs(),
        loads: loads.load(Ordering::Acquire),
    };
    assert!(report.resumes >= 1, "no resume counted: {s:?}");
    assert_eq!(
        report.repairs, 0,
        "B repaired although nothing was lost: {s:?}"
    );
    assert_eq!(
        report.loads, 0,
        "B loaded although every value was delivered: {s:?}"
    );
    assert!(
        report.caught_up >= CATCH_UP_KEYS as u64,
        "the writes made while cut off were not counted as caught up: {s:?}"
    );
    report
}

/// How long [`local_cache_catches_up_after_a_cut`] keeps B cut off.
const CUT_HELD: Duration = Duration::from_millis(1500);

/// Keys of [`local_cache_catches_up_after_a_cut`].
pub const CATCH_UP_KEYS: usize = 20;

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + RECEIVE_TIMEOUT;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what}: not within {RECEIVE_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
