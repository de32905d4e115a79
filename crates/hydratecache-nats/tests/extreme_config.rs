//! Configuration never panics: every timeout from zero to `Duration::MAX`
//! (issue 18, item 18).

use futures::FutureExt;
use hydratecache_conformance::extreme_durations_never_panic;
use hydratecache_core::Transport;
use hydratecache_nats::NatsTransport;
use hydratecache_testkit::nats::shared_or_private;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic() {
    let nats = shared_or_private().expect("a NATS server");
    let url = nats.url();
    let settings = ["publish_timeout", "confirm_timeout", "reconnect_check"];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = NatsTransport::builder();
            if let Some(d) = d[0] {
                builder = builder.publish_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.confirm_timeout(d);
            }
            if let Some(d) = d[2] {
                builder = builder.reconnect_check(d);
            }
            Ok(builder.connect(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}

/// JetStream mode, with its own uses of the durations (each request's bound,
/// the pulls' heartbeat).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic_in_jetstream_mode() {
    let nats = shared_or_private().expect("a NATS server");
    let url = nats.url();
    let settings = ["publish_timeout", "jetstream_heartbeat", "ping_interval"];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = NatsTransport::builder();
            if let Some(d) = d[0] {
                builder = builder.publish_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.jetstream_heartbeat(d);
            }
            if let Some(d) = d[2] {
                builder = builder.ping_interval(Some(d));
            }
            Ok(builder.connect_jetstream(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}
