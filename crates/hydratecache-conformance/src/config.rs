//! Configuration never panics: each adapter builds transports with every
//! duration setting at the edges of `Duration` and uses them once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;

use hydratecache_core::{BoxError, Envelope, SubscribeOptions, Transport};

use crate::harness::unique_topic;

/// A hang guard for one use of a transport, far above every default bound.
const ROUND: Duration = Duration::from_secs(30);

/// The edges of `Duration` and a spread between them: zero, one nanosecond,
/// values whose doubling or addition to `Instant::now()` overflows, and
/// pseudo-random ones over every order of magnitude (the same every run).
pub fn extreme_durations() -> Vec<Duration> {
    let mut out = vec![
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_millis(1),
        Duration::MAX,
        Duration::MAX - Duration::from_nanos(1),
        Duration::from_secs(u64::MAX / 2 + 1),
        Duration::from_secs(u64::MAX / 1_000),
        Duration::from_secs(100 * 365 * 24 * 3600),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..6 {
        // SplitMix64.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let seconds = z >> (z % 64);
        out.push(Duration::new(seconds, (z % 1_000_000_000) as u32));
    }
    out
}

static PANICS: AtomicUsize = AtomicUsize::new(0);
static COUNT_PANICS: Once = Once::new();

/// Builds a transport through `connect` with the named duration `settings`
/// set to each of [`extreme_durations`], one setting at a time and all at
/// once (`None`: the setting keeps its default), then subscribes, publishes,
/// waits briefly for the message and closes. Errors are fine; a panic
/// anywhere in the process (spawned tasks included) or a hang fails.
pub async fn extreme_durations_never_panic<F>(settings: &[&str], connect: F)
where
    F: Fn(Vec<Option<Duration>>) -> BoxFuture<'static, Result<Arc<dyn Transport>, BoxError>>,
{
    COUNT_PANICS.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
    });
    let before = PANICS.load(Ordering::SeqCst);
    let (mut rounds_run, mut connected) = (0, 0);
    for d in extreme_durations() {
        let mut rounds: Vec<Vec<Option<Duration>>> = (0..settings.len())
            .map(|i| (0..settings.len()).map(|j| (i == j).then_some(d)).collect())
            .collect();
        rounds.push(vec![Some(d); settings.len()]);
        for values in rounds {
            let what = format!("{settings:?} = {values:?}");
            let round = async {
                let t = match connect(values).await {
                    Ok(t) => t,
                    Err(e) => {
                        println!("{what}: {e}");
                        return false;
                    }
                };
                let topic = unique_topic("extreme");
                let sub = t.subscribe(&topic, SubscribeOptions::default()).await;
                let _ = t.publish(&topic, &Envelope::update("k", &b"v"[..])).await;
                if let Ok(mut sub) = sub {
                    let _ = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
                }
                let _ = t.close().await;
                true
            };
            rounds_run += 1;
            match tokio::time::timeout(ROUND, round).await {
                Ok(true) => connected += 1,
                Ok(false) => {}
                Err(_) => panic!("{what}: hung for {ROUND:?}"),
            }
            assert_eq!(PANICS.load(Ordering::SeqCst), before, "{what} panicked");
        }
    }
    println!("{connected} of {rounds_run} configurations connected");
    // The large durations are valid settings: a run that never connected
    // tested nothing.
    assert!(
        connected * 2 >= rounds_run,
        "{connected} of {rounds_run} connected"
    );
}
