//! Outbox mode against a real PostgreSQL: the conformance suite, the
//! resumable cases, and transactions that commit out of id order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_conformance::{run_all, Harness, CASES};
use hydratecache_core::{BoxError, Envelope, Event, SubscribeOptions, Transport};
use hydratecache_postgres::sqlx::PgPool;
use hydratecache_postgres::{PostgresOutboxTransport, PostgresTransport};
use hydratecache_testkit::Proxy;

use common::{private_server, server, WAIT};

/// Each `connect` is a new outbox transport (its own pool); raw rows go in
/// through a plain pool, as another program would write them.
struct OutboxHarness {
    url: String,
    pool: PgPool,
}

impl OutboxHarness {
    async fn new(url: &str) -> OutboxHarness {
        let pool = match PgPool::connect(url).await {
            Ok(p) => p,
            Err(e) => panic!("connect to {url}: {e}"),
        };
        if let Err(e) = PostgresOutboxTransport::migrate(&pool).await {
            panic!("migrate: {e}");
        }
        OutboxHarness {
            url: url.to_owned(),
            pool,
        }
    }
}

async fn outbox(url: &str) -> Arc<dyn Transport> {
    match PostgresTransport::builder().connect_outbox(url).await {
        Ok(t) => t.into_arc(),
        Err(e) => panic!("connect outbox mode to {url}: {e:?}"),
    }
}

impl Harness for OutboxHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let t = PostgresTransport::builder()
                .connect_outbox(&self.url)
                .await?;
            Ok(t.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            hydratecache_postgres::sqlx::query(
                "INSERT INTO hydratecache_outbox (topic, envelope) VALUES ($1, $2)",
            )
            .bind(topic)
            .bind(bytes)
            .execute(&self.pool)
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        _topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        // Readers of a table are unknown to the server.
        async move { Ok(None) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_passes_the_conformance_suite() {
    let server = server();
    let harness = OutboxHarness::new(&server.url()).await;
    // Twice: the migration is idempotent.
    if let Err(e) = PostgresOutboxTransport::migrate(&harness.pool).await {
        panic!("migrate again: {e}");
    }
    let report = run_all(&harness).await;
    println!("postgres outbox {report}");
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

/// Two transactions write outbox rows; the one that took the lower id
/// commits after the reader has read the other. An "after id N" reader
/// would skip it; the snapshot reader delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_commits_out_of_id_order_is_still_read() {
    let server = server();
    let harness = OutboxHarness::new(&server.url()).await;
    let topic = hydratecache_conformance::unique_topic("idorder");
    let reader = outbox(&server.url()).await;
    let mut sub = match reader.subscribe(&topic, SubscribeOptions::default()).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe: {e}"),
    };
    let mut first = harness.pool.begin().await.expect("begin first");
    let mut second = harness.pool.begin().await.expect("begin second");
    let write = |key: &'static str| Envelope::update(key, &b"v"[..]);
    PostgresOutboxTransport::publish_tx(&mut *first, &topic, &write("first"))
        .await
        .expect("first writes (the lower id)");
    PostgresOutboxTransport::publish_tx(&mut *second, &topic, &write("second"))
        .await
        .expect("second writes (the higher id)");
    let ids: Vec<i64> = hydratecache_postgres::sqlx::query_scalar(
        "SELECT id FROM hydratecache_outbox WHERE topic = $1 ORDER BY id",
    )
    .bind(&topic)
    .fetch_all(&harness.pool)
    .await
    .expect("ids");
    assert!(ids.is_empty(), "uncommitted rows are invisible: {ids:?}");
    second.commit().await.expect("commit second");
    let got = next_message(&mut sub).await;
    assert_eq!(got, "second");
    // The reader has read past the first transaction's id by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.commit().await.expect("commit first");
    let got = next_message(&mut sub).await;
    assert_eq!(
        got, "first",
        "the transaction with the lower id was skipped"
    );
}

async fn next_message(sub: &mut hydratecache_core::Subscription) -> String {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(Event::Message(m)))) => m.key,
        Ok(Some(Ok(other))) => panic!("expected a message, got {other:?}"),
        Ok(Some(Err(e))) => panic!("expected a message, got {e}"),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no message within {WAIT:?}"),
    }
}

/// A private server with a proxy in front: the subscriber's pool goes
/// through the proxy, the publisher and the harness connect directly.
async fn behind_a_proxy() -> (
    hydratecache_testkit::postgres::PostgresServer,
    Proxy,
    String,
    OutboxHarness,
) {
    let server = private_server();
    let harness = OutboxHarness::new(&server.url()).await;
    let (proxy, via) = match Proxy::in_front_of(&server.url()) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    (server, proxy, via, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_outbox_reader_resumes_from_its_snapshot() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::resumes_after_a_cut(
        &harness,
        || outbox(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("postgres outbox: {report:?}");
}

/// Retention deletes the rows a cut-off reader had not read: a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_trimmed_before_the_reader_read_them_are_a_gap() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let trimmer = match PostgresTransport::builder()
        .outbox_retention(None)
        .connect_outbox(&harness.url)
        .await
    {
        Ok(t) => t,
        Err(e) => panic!("connect: {e}"),
    };
    hydratecache_conformance::gap_when_the_position_is_gone(
        &harness,
        || outbox(&via),
        || proxy.cut_from(0),
        || async {
            // now() is the trim's own start: every row written before goes.
            tokio::time::sleep(Duration::from_millis(10)).await;
            match trimmer.trim(Duration::ZERO).await {
                Ok(n) => assert!(n > 0, "nothing trimmed"),
                Err(e) => panic!("trim: {e}"),
            }
        },
        || async { proxy.restore() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_on_the_outbox_catches_up_after_a_cut() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::local_cache_catches_up_after_a_cut(
        &harness,
        || outbox(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("postgres outbox: {report:?}");
}

/// A reader whose connection goes silent is interrupted within the
/// keepalive interval plus the probe timeout, and resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_outbox_connection_is_interrupted_and_resumes() {
    use hydratecache_core::InterruptReason;
    use hydratecache_postgres::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_PROBE_TIMEOUT};

    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let bound = DEFAULT_KEEPALIVE_INTERVAL + DEFAULT_PROBE_TIMEOUT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        outbox(&via).await,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("postgres outbox: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Unresponsive);
    assert!(
        !report.gap,
        "the table kept what was written meanwhile: Resumed"
    );
}
