//! The conformance suite against a real Redis (`HYDRATECACHE_REDIS_URL`
//! when set, else a private `redis-server`).

mod common;

use hydratecache_conformance::{run_all, CASES};
use hydratecache_testkit::redis::shared_or_private;

use common::RedisHarness;

async fn run(sharded: bool) {
    let redis = match shared_or_private() {
        Ok(r) => r,
        Err(e) => panic!("no Redis for the conformance suite: {e:#}"),
    };
    let harness = match RedisHarness::new(&redis.url(), sharded).await {
        Ok(h) => h,
        Err(e) => panic!("cannot reach Redis at {}: {e:#}", redis.url()),
    };
    let report = run_all(&harness).await;
    println!("redis (sharded: {sharded}) {report}");
    // Only replay may be skipped: Redis Pub/Sub keeps no history.
    assert_eq!(report.ran.len(), CASES.len() - 1, "{report}");
    assert_eq!(report.skipped.len(), 1, "{report}");
    assert_eq!(report.skipped[0].0, "replay_from_earliest", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passes_the_conformance_suite() {
    run(false).await;
}

/// Sharded Pub/Sub (SPUBLISH/SSUBSCRIBE) on a standalone Redis 7.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sharded_pubsub_passes_the_conformance_suite() {
    run(true).await;
}

/// LocalCache over Redis: `CLIENT KILL TYPE pubsub` cuts B's subscriber
/// connection while A rewrites every key; B must never serve a pre-cut value
/// once it has signalled the gap (Clear and Reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cache_never_serves_pre_gap_values_after_client_kill() -> anyhow::Result<()> {
    let server = hydratecache_testkit::redis::shared_or_private()?;
    let url = server.url();
    let harness = common::RedisHarness::new(&url, false).await?;
    for policy in [
        hydratecache_cache::RepairPolicy::Clear,
        hydratecache_cache::RepairPolicy::Reload,
    ] {
        let url = url.clone();
        let cut = || async move {
            let killed = hydratecache_testkit::redis::kill_pubsub_clients(&url)?;
            if killed == 0 {
                return Err("CLIENT KILL found no pub/sub connection".into());
            }
            Ok::<(), hydratecache_core::BoxError>(())
        };
        let report = hydratecache_conformance::local_cache_never_serves_pre_gap_values(
            &harness, policy, cut,
        )
        .await;
        println!("{policy:?}: {report:?}");
        assert!(
            report.interruptions >= 1,
            "the kill was not reported as it happened: {report:?}"
        );
    }
    Ok(())
}

/// The same cut with `RepairPolicy::Ignore` does serve stale values: the
/// check above can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_repair_ignored_the_cut_check_fails() -> anyhow::Result<()> {
    let server = hydratecache_testkit::redis::shared_or_private()?;
    let url = server.url();
    let scenario = tokio::spawn(async move {
        let harness = common::RedisHarness::new(&url, false)
            .await
            .expect("harness");
        let cut = || async move {
            hydratecache_testkit::redis::kill_pubsub_clients(&url)?;
            Ok::<(), hydratecache_core::BoxError>(())
        };
        hydratecache_conformance::local_cache_never_serves_pre_gap_values(
            &harness,
            hydratecache_cache::RepairPolicy::Ignore,
            cut,
        )
        .await
    });
    let outcome = scenario.await;
    let err = outcome.expect_err("Ignore passed the stale-read check");
    assert!(err.is_panic(), "{err}");
    // Failed for the right reason: stale reads, not a timeout.
    let panic = err.into_panic();
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(
        message.contains("B served pre-cut values after the gap"),
        "{message}"
    );
    Ok(())
}

/// A subscriber connection that goes silent without closing (a proxy that
/// stops forwarding both ways: a crashed host, a dropped NAT flow) is
/// interrupted within the keepalive interval plus the probe timeout, then
/// reconnected with a gap once the path is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscriber_connection_is_interrupted() -> anyhow::Result<()> {
    use hydratecache_core::{InterruptReason, Transport};
    use hydratecache_redis::{RedisTransport, DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_PROBE_TIMEOUT};

    // Its own server: the CLIENT KILL of the cut test beside it would cut
    // this subscriber too (a disconnect, not a silence).
    let server = hydratecache_testkit::redis::RedisServer::start()?;
    let harness = RedisHarness::new(&server.url(), false).await?;
    let (proxy, via) = hydratecache_testkit::Proxy::in_front_of(&server.url())?;
    let subscriber = RedisTransport::connect(&via).await?.into_arc();
    let bound = DEFAULT_KEEPALIVE_INTERVAL + DEFAULT_PROBE_TIMEOUT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        subscriber,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("redis: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Unresponsive);
    assert!(
        report.gap,
        "a reconnect loses what was published meanwhile: a gap"
    );
    Ok(())
}

/// With the keepalive off, the same silence goes unnoticed: the check above
/// can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keepalive_a_silent_connection_goes_unnoticed() -> anyhow::Result<()> {
    use hydratecache_core::Transport;
    use hydratecache_redis::RedisTransport;

    let server = hydratecache_testkit::redis::RedisServer::start()?;
    let (proxy, via) = hydratecache_testkit::Proxy::in_front_of(&server.url())?;
    let proxy = std::sync::Arc::new(proxy);
    let url = server.url();
    let scenario = tokio::spawn({
        let proxy = std::sync::Arc::clone(&proxy);
        async move {
            let harness = RedisHarness::new(&url, false).await.expect("harness");
            let subscriber = RedisTransport::builder()
                .keepalive_interval(None)
                .connect(&via)
                .await
                .expect("connect through the proxy")
                .into_arc();
            let bound = std::time::Duration::from_millis(500);
            hydratecache_conformance::interrupted_when_the_connection_goes_silent(
                &harness,
                subscriber,
                bound,
                || proxy.freeze(),
                || async { proxy.thaw() },
            )
            .await
        }
    });
    let err = scenario
        .await
        .expect_err("the silence was noticed without a keepalive");
    assert!(err.is_panic(), "{err}");
    let panic = err.into_panic();
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("no interruption within"), "{message}");
    proxy.reset();
    Ok(())
}
