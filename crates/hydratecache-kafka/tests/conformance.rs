//! The conformance suite against a Kafka broker (a private tansu, or
//! the one at `HYDRATECACHE_KAFKA_URL`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_cache::RepairPolicy;
use hydratecache_conformance::{
    local_cache_never_serves_pre_gap_values, max_payload_boundary, run_all, unique_topic, Harness,
    Outcome, CASES,
};
use hydratecache_core::{BoxError, Transport};
use hydratecache_kafka::KafkaTransport;
use hydratecache_testkit::kafka::{self, TansuServer};
use rskafka::client::Client;

struct KafkaHarness {
    url: String,
    admin: Client,
    /// Broker limit on a batch, when not the default.
    max_batch_bytes: Option<usize>,
    /// Every topic made, to make them again after a broker restart.
    topics: Mutex<Vec<String>>,
}

impl KafkaHarness {
    async fn new(server: &kafka::Kafka, max_batch_bytes: Option<usize>) -> KafkaHarness {
        KafkaHarness::at(&server.url(), &server.bootstrap(), max_batch_bytes).await
    }

    async fn at(url: &str, bootstrap: &str, max_batch_bytes: Option<usize>) -> KafkaHarness {
        let admin = match common::plain_client(bootstrap).await {
            Ok(c) => c,
            Err(e) => panic!("plain client for {url}: {e:#}"),
        };
        KafkaHarness {
            url: url.to_owned(),
            admin,
            max_batch_bytes,
            topics: Mutex::new(Vec::new()),
        }
    }

    fn topics(&self) -> Vec<String> {
        self.topics
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
            self.topics
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(topic.clone());
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
    assert_eq!(report.ran.len(), CASES.len() - 2, "{report}");
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
        max_payload_boundary(&harness).await,
        Outcome::Passed
    ));
}

/// LocalCache over Kafka: the private tansu is killed (-9) and started again
/// empty (memory storage) while A rewrites every key, so B's position points
/// past the end of a new log; B must signal the reset as a gap and never
/// serve a pre-cut value once it has (Clear and Reload). A broken connection
/// alone is no cut on Kafka: the reader resumes from its offset and misses
/// nothing.
///
/// No companion with `RepairPolicy::Ignore` here, unlike Redis: after the
/// reset B reads the new log from its start, so it receives every write A
/// made after the restart, and with the gap ignored the check still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cache_never_serves_pre_gap_values_after_a_broker_restart() {
    let mut server = match TansuServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start tansu: {e:#}"),
    };
    let harness = KafkaHarness::at(&server.url(), &server.bootstrap(), None).await;
    for policy in [RepairPolicy::Clear, RepairPolicy::Reload] {
        let (server, harness) = (&mut server, &harness);
        let cut = move || async move {
            server.kill9();
            tokio::time::sleep(Duration::from_millis(200)).await;
            server.start_again()?;
            // As the harness made it (a reconnecting client may already
            // have made it again, with the broker's default partitions).
            let admin = common::plain_client(&server.bootstrap()).await?;
            for topic in harness.topics() {
                common::recreate_topic(&admin, &topic, 1).await?;
            }
            Ok::<(), BoxError>(())
        };
        let report = local_cache_never_serves_pre_gap_values(harness, policy, cut).await;
        println!("{policy:?}: {report:?}");
        assert!(
            report.interruptions >= 1,
            "the restart was not reported as it happened: {report:?}"
        );
    }
}

/// A broker connection that goes silent without closing (a proxy that stops
/// forwarding both ways; tansu advertises the proxy, so every connection
/// goes through it): the readers' fetches overrun their bound and the
/// subscription is interrupted at that moment; once the broker answers
/// again and the reader has delivered what it holds, `Resumed` (a log keeps
/// what was published meanwhile: nothing to repair).
/// A private tansu that advertises a proxy in front of it, so every client
/// connection goes through the proxy, and a harness connecting through it.
async fn behind_a_proxy() -> (TansuServer, hydratecache_testkit::Proxy, KafkaHarness) {
    let proxy_port = match hydratecache_testkit::free_port() {
        Ok(p) => p,
        Err(e) => panic!("port: {e:#}"),
    };
    let server = match TansuServer::start_advertising(proxy_port) {
        Ok(s) => s,
        Err(e) => panic!("cannot start tansu: {e:#}"),
    };
    let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
    let proxy = match hydratecache_testkit::Proxy::start_on(proxy_port, upstream) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    let harness = KafkaHarness::at(&format!("kafka://{bootstrap}"), &bootstrap, None).await;
    (server, proxy, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_connection_is_interrupted() {
    use hydratecache_core::InterruptReason;
    use hydratecache_kafka::{DEFAULT_FETCH_MAX_WAIT, DEFAULT_PROBE_TIMEOUT};

    let (_server, proxy, harness) = behind_a_proxy().await;
    let subscriber = match harness.connect().await {
        Ok(t) => t,
        Err(e) => panic!("connect through the proxy: {e:?}"),
    };
    let bound = DEFAULT_FETCH_MAX_WAIT + DEFAULT_PROBE_TIMEOUT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        subscriber,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("kafka: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Unresponsive);
    assert!(
        !report.gap,
        "the log kept what was published meanwhile: Resumed"
    );
}

/// Connects through the proxy, first marking where its connections begin
/// (so that `cut_from` cuts them, and not the publisher's made before).
async fn connect_after_mark(
    proxy: &hydratecache_testkit::Proxy,
    mark: &std::cell::Cell<u64>,
    harness: &KafkaHarness,
) -> Arc<dyn Transport> {
    mark.set(proxy.accepted());
    match harness.connect().await {
        Ok(t) => t,
        Err(e) => panic!("connect through the proxy: {e:?}"),
    }
}

/// The subscriber's connections are closed and refused (the publisher's,
/// made before, go on) while 1,000 messages are published: the reader goes
/// on from its offset and delivers all of them, in order, then `Resumed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reader_resumes_from_its_offset() {
    let (_server, proxy, harness) = behind_a_proxy().await;
    let mark = std::cell::Cell::new(0);
    let report = hydratecache_conformance::resumes_after_a_cut(
        &harness,
        || connect_after_mark(&proxy, &mark, &harness),
        || proxy.cut_from(mark.get()),
        || async { proxy.restore() },
    )
    .await;
    println!("kafka: {report:?}");
}

/// A log reset while the reader is cut off (the broker restarted empty):
/// its offset is gone, and it says so with a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_reader_whose_offset_is_gone_reports_a_gap() {
    let (mut server, proxy, harness) = behind_a_proxy().await;
    let mark = std::cell::Cell::new(0);
    let (server, harness) = (&mut server, &harness);
    hydratecache_conformance::gap_when_the_position_is_gone(
        harness,
        || connect_after_mark(&proxy, &mark, harness),
        || proxy.cut_from(mark.get()),
        || async move {
            server.kill9();
            if let Err(e) = server.start_again() {
                panic!("restart tansu: {e:#}");
            }
            for topic in harness.topics() {
                if let Err(e) = server.create_topic(&topic, 1) {
                    panic!("recreate {topic}: {e:#}");
                }
            }
        },
        || async { proxy.restore() },
    )
    .await;
}

/// LocalCache on Kafka: cut off while every key is rewritten, it catches up
/// from its offsets once back, without a repair or a load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_catches_up_after_a_cut() {
    let (_server, proxy, harness) = behind_a_proxy().await;
    let mark = std::cell::Cell::new(0);
    let report = hydratecache_conformance::local_cache_catches_up_after_a_cut(
        &harness,
        || connect_after_mark(&proxy, &mark, &harness),
        || proxy.cut_from(mark.get()),
        || async { proxy.restore() },
    )
    .await;
    println!("kafka: {report:?}");
}
