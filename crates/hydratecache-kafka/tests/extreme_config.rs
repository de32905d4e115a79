//! Configuration never panics: every timeout and interval from zero to
//! `Duration::MAX` (issue 18, item 18).

use futures::FutureExt;
use hydratecache_conformance::extreme_durations_never_panic;
use hydratecache_kafka::{KafkaConfig, KafkaTransport, TopicSettings};
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
            let mut config = KafkaConfig::from_url(&url)?.create_topics(TopicSettings::default());
            if let Some(d) = d[0] {
                config = config.linger(d);
            }
            if let Some(d) = d[1] {
                config = config.request_timeout(d);
            }
            if let Some(d) = d[2] {
                config = config.fetch_max_wait(d);
            }
            if let Some(d) = d[3] {
                config = config.retry_backoff_max(d);
            }
            if let Some(d) = d[4] {
                config = config.metadata_refresh(d);
            }
            Ok(KafkaTransport::connect(config).await?.into_arc())
        }
        .boxed()
    })
    .await;
}
