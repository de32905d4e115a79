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
