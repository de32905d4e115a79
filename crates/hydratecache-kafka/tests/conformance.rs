//! The core conformance suite against a Kafka broker (a private tansu, or
//! the one at `HYDRATECACHE_KAFKA_URL`).

mod common;

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::conformance::{self, run_all, unique_topic, Harness};
use hydratecache_core::{BoxError, Transport};
use hydratecache_kafka::KafkaTransport;
use hydratecache_testkit::kafka;
use rskafka::client::Client;

struct KafkaHarness {
    url: String,
    admin: Client,
    /// Broker limit on a batch, when not the default.
    max_batch_bytes: Option<usize>,
}

impl KafkaHarness {
    async fn new(server: &kafka::Kafka, max_batch_bytes: Option<usize>) -> KafkaHarness {
        let admin = match common::plain_client(&server.bootstrap()).await {
            Ok(c) => c,
            Err(e) => panic!("plain client for {}: {e:#}", server.url()),
        };
        KafkaHarness {
            url: server.url(),
            admin,
            max_batch_bytes,
        }
    }
}

impl Harness for KafkaHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let mut builder = KafkaTransport::builder();
            if let Some(bytes) = self.max_batch_bytes {
                builder = builder.max_batch_bytes(bytes);
            }
            Ok(builder.connect(&self.url).await?.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            // Another producer's record: no hydratecache headers at all.
            let record = common::raw_record(None, Some(bytes), &[]);
            common::produce_raw(&self.admin, topic, 0, vec![record]).await?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        _topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        // Without a consumer group the broker does not know who reads.
        async move { Ok(None) }.boxed()
    }

    fn topic<'a>(&'a self, case: &'a str) -> BoxFuture<'a, Result<String, BoxError>> {
        async move {
            let topic = unique_topic(case);
            // One partition: the suite checks one publisher's order across keys.
            common::create_topic(&self.admin, &topic, 1).await?;
            Ok(topic)
        }
        .boxed()
    }
}

fn server() -> kafka::Kafka {
    match kafka::shared_or_private() {
        Ok(s) => s,
        Err(e) => panic!("no Kafka broker for the conformance suite: {e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_passes_the_conformance_suite() {
    let server = server();
    let harness = KafkaHarness::new(&server, None).await;
    let report = run_all(&harness).await;
    println!("{report}");
    // Only two cases may be skipped: without consumer groups the broker
    // cannot list a topic's readers, and partitions read in parallel keep no
    // publisher's order.
    let skipped: Vec<_> = report.skipped.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        skipped,
        [
            "one_channels_concurrent_publishes_keep_sequence_order",
            "dropping_subscription_unsubscribes"
        ],
        "{report}"
    );
    assert_eq!(report.ran.len(), conformance::CASES.len() - 2, "{report}");
}

/// The size boundary is exact for another broker limit too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_payload_boundary_with_a_small_broker_limit() {
    let server = server();
    let harness = KafkaHarness::new(&server, Some(10_000)).await;
    let t = harness.connect().await.expect("connect");
    assert_eq!(t.capabilities().max_message_size, Some(10_000 - 143));
    assert_eq!(
        t.capabilities().max_payload("max-key"),
        Some(10_000 - 143 - 62 - 7)
    );
    assert!(matches!(
        conformance::max_payload_boundary(&harness).await,
        conformance::Outcome::Passed
    ));
}
