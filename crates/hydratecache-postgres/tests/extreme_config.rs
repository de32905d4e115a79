//! Configuration never panics: every timeout and delay from zero to
//! `Duration::MAX` (issue 18, item 18).

use futures::FutureExt;
use hydratecache_conformance::extreme_durations_never_panic;
use hydratecache_core::Transport;
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::postgres::shared_or_private;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic() {
    let postgres = shared_or_private().expect("a PostgreSQL server");
    let url = postgres.url();
    let settings = [
        "connect_timeout",
        "max_reconnect_delay",
        "keepalive_interval",
    ];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = PostgresTransport::builder().max_connections(2);
            if let Some(d) = d[0] {
                builder = builder.connect_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.max_reconnect_delay(d);
            }
            if let Some(d) = d[2] {
                builder = builder.keepalive_interval(Some(d));
            }
            Ok(builder.connect(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}

/// Outbox mode, with its own uses of the durations (each read's bound and
/// the poll interval, the retention's trim period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timeouts_never_panic_in_outbox_mode() {
    let postgres = shared_or_private().expect("a PostgreSQL server");
    let url = postgres.url();
    {
        let pool = hydratecache_postgres::sqlx::PgPool::connect(&url)
            .await
            .expect("pool");
        hydratecache_postgres::PostgresOutboxTransport::migrate(&pool)
            .await
            .expect("migrate");
    }
    let settings = [
        "request_timeout",
        "keepalive_interval",
        "probe_timeout",
        "outbox_retention",
    ];
    extreme_durations_never_panic(&settings, |d| {
        let url = url.clone();
        async move {
            let mut builder = PostgresTransport::builder().max_connections(2);
            if let Some(d) = d[0] {
                builder = builder.request_timeout(d);
            }
            if let Some(d) = d[1] {
                builder = builder.keepalive_interval(Some(d));
            }
            if let Some(d) = d[2] {
                builder = builder.probe_timeout(d);
            }
            if let Some(d) = d[3] {
                builder = builder.outbox_retention(Some(d));
            }
            Ok(builder.connect_outbox(&url).await?.into_arc())
        }
        .boxed()
    })
    .await;
}
