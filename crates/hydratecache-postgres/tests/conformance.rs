//! The conformance suite against a real PostgreSQL
//! (`HYDRATECACHE_POSTGRES_URL`, or a private cluster).

use std::sync::{Arc, Mutex, Weak};

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_conformance::{local_cache_never_serves_pre_gap_values, run_all, Harness, CASES};
use hydratecache_core::{BoxError, Transport};
use hydratecache_postgres::{sqlx, PostgresTransport};
use hydratecache_testkit::postgres;

struct PostgresHarness {
    url: String,
    /// A foreign client for raw notifications.
    raw: sqlx::PgPool,
    /// Every transport handed out, to ask their listeners what they listen on.
    clients: Mutex<Vec<Weak<PostgresTransport>>>,
}

impl Harness for PostgresHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let transport = Arc::new(PostgresTransport::connect(&self.url).await?);
            let mut clients = self.clients.lock().map_err(|e| e.to_string())?;
            clients.retain(|c| c.strong_count() > 0);
            clients.push(Arc::downgrade(&transport));
            Ok(transport as Arc<dyn Transport>)
        }
        .boxed()
    }

    /// Text goes out as is (`NOTIFY topic, 'xyz'`); bytes that are not text
    /// go out base64-encoded, as a broken publisher of this format would.
    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let text = match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => text.to_owned(),
                _ => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                }
            };
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(topic)
                .bind(text)
                .execute(&self.raw)
                .await?;
            Ok(())
        }
        .boxed()
    }

    /// How many of the clients' listener connections list `topic` in
    /// `pg_listening_channels()` (asked on each listener connection).
    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        async move {
            let clients: Vec<Arc<PostgresTransport>> = {
                let clients = self.clients.lock().map_err(|e| e.to_string())?;
                clients.iter().filter_map(Weak::upgrade).collect()
            };
            let mut count = 0;
            for client in clients {
                if client
                    .listener_info()
                    .await?
                    .channels
                    .iter()
                    .any(|c| c == topic)
                {
                    count += 1;
                }
            }
            Ok(Some(count))
        }
        .boxed()
    }
}

/// A PostgreSQL (the one at `HYDRATECACHE_POSTGRES_URL`, or a private
/// cluster, kept alive by the returned guard) and a harness on it.
async fn harness() -> (postgres::Postgres, PostgresHarness) {
    let server = match postgres::shared_or_private() {
        Ok(server) => server,
        Err(e) => panic!("no PostgreSQL: {e:#}"),
    };
    let url = server.url();
    let raw = match sqlx::PgPool::connect(&url).await {
        Ok(pool) => pool,
        Err(e) => panic!("connect to {url}: {e}"),
    };
    let harness = PostgresHarness {
        url,
        raw,
        clients: Mutex::new(Vec::new()),
    };
    (server, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_transport_passes_the_conformance_suite() {
    let (_server, harness) = harness().await;
    let report = run_all(&harness).await;
    println!("{report}");
    // Only replay may be skipped: NOTIFY keeps no history.
    assert_eq!(report.ran.len(), CASES.len() - 1, "{report}");
    assert_eq!(report.skipped.len(), 1, "{report}");
    assert_eq!(report.skipped[0].0, "replay_from_earliest");
}

/// LocalCache over PostgreSQL: B's listener connection is killed with
/// `pg_terminate_backend` while A rewrites every key; B must never serve a
/// pre-cut value once it has signalled the gap (Clear and Reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cache_never_serves_pre_gap_values_after_pg_terminate_backend() {
    let (_server, harness) = harness().await;
    for policy in [
        hydratecache_cache::RepairPolicy::Clear,
        hydratecache_cache::RepairPolicy::Reload,
    ] {
        let cut = || async {
            let clients: Vec<Arc<PostgresTransport>> = {
                let clients = harness.clients.lock().map_err(|e| e.to_string())?;
                clients.iter().filter_map(Weak::upgrade).collect()
            };
            let mut killed = 0;
            for client in clients {
                if let Some(pid) = client.listener_info().await?.backend_pid {
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&harness.raw)
                        .await?;
                    killed += 1;
                }
            }
            if killed == 0 {
                return Err("no listener connection to kill".into());
            }
            Ok::<(), BoxError>(())
        };
        let report = local_cache_never_serves_pre_gap_values(&harness, policy, cut).await;
        println!("{policy:?}: {report:?}");
        assert!(
            report.interruptions >= 1,
            "the kill was not reported as it happened: {report:?}"
        );
    }
}

/// A listener connection that goes silent without closing (a proxy that
/// stops forwarding both ways) is interrupted within the keepalive interval
/// plus the probe timeout, then listens again with a gap once the path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_listener_connection_is_interrupted() {
    use hydratecache_core::InterruptReason;
    use hydratecache_postgres::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_PROBE_TIMEOUT};

    let (_server, harness) = harness().await;
    let (proxy, via) = match hydratecache_testkit::Proxy::in_front_of(&harness.url) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    let subscriber = match PostgresTransport::connect(&via).await {
        Ok(t) => t.into_arc(),
        Err(e) => panic!("connect through the proxy: {e:?}"),
    };
    let bound = DEFAULT_KEEPALIVE_INTERVAL + DEFAULT_PROBE_TIMEOUT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        subscriber,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("postgres: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Unresponsive);
    assert!(report.gap);
}
