//! Configuration never panics: every timeout and interval from zero to
//! `Duration::MAX` (issue 18, item 18).

use futures::FutureExt;
use hydratecache_conformance::extreme_durations_never_panic;
use hydratecache_core::Transport;
use hydratecache_kafka::{KafkaTransport, TopicSettings};
use hydratecache_testkit::kafka::shared_or_private;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic() {
    let kafka = shared_or_private().expect("a Kafka broker");
    let url = kafka.url();
    let settings = [
        "linger",
        "request_timeout",
        "fetch_max_wait",
        "retry_backoff_max",
        "metadata_refresh",
    ];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = KafkaTransport::builder().create_topics(TopicSettings::default());
            if let Some(d) = d[0] {
                builder = builder.linger(d);
            }
            if let Some(d) = d[1] {
                builder = builder.request_timeout(d);
            }
            if let Some(d) = d[2] {
                builder = builder.fetch_max_wait(d);
            }
            if let Some(d) = d[3] {
                builder = builder.retry_backoff_max(d);
            }
            if let Some(d) = d[4] {
                builder = builder.metadata_refresh(d);
            }
            Ok(builder.connect(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}
