//! The core conformance suite against a real Redis (`HYDRATECACHE_REDIS_URL`
//! when set, else a private `redis-server`).

mod common;

use hydratecache_core::conformance::{self, run_all};
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
    assert_eq!(report.ran.len(), conformance::CASES.len() - 1, "{report}");
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
