//! Configuration never panics: every timeout from zero to `Duration::MAX`
//! (issue 18, item 18).

use futures::FutureExt;
use hydratecache_conformance::extreme_durations_never_panic;
use hydratecache_core::Transport;
use hydratecache_redis::RedisTransport;
use hydratecache_testkit::redis::shared_or_private;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic() {
    let redis = shared_or_private().expect("a Redis server");
    let url = redis.url();
    extreme_durations_never_panic(&["command_timeout", "connect_timeout"], |d| {
        let url = url.clone();
        async move {
            let mut builder = RedisTransport::builder();
            if let Some(d) = d[0] {
                builder = builder.command_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.connect_timeout(d);
            }
            Ok(builder.connect(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}

/// Streams mode, with its own uses of the durations (each blocking read's
/// wait and slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic_in_streams_mode() {
    let redis = shared_or_private().expect("a Redis server");
    let url = redis.url();
    let settings = [
        "command_timeout",
        "connect_timeout",
        "keepalive_interval",
        "probe_timeout",
    ];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = RedisTransport::builder();
            if let Some(d) = d[0] {
                builder = builder.command_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.connect_timeout(d);
            }
            if let Some(d) = d[2] {
                builder = builder.keepalive_interval(Some(d));
            }
            if let Some(d) = d[3] {
                builder = builder.probe_timeout(d);
            }
            Ok(builder.connect_streams(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}
