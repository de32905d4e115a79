//! The core conformance suite against a real nats-server, in both
//! construction modes.

mod common;

use common::{Mode, NatsHarness};
use hydratecache_core::conformance::{self, run_all};
use hydratecache_testkit::nats::shared_or_private;

async fn run(mode: Mode) {
    let nats = match shared_or_private() {
        Ok(n) => n,
        Err(e) => panic!("no NATS server: {e:#}"),
    };
    let harness = NatsHarness::new(&nats, mode);
    let report = run_all(&harness).await;
    println!("{mode:?}: {report}");
    let skipped: Vec<_> = report.skipped.iter().map(|(c, _)| *c).collect();
    if harness.monitor_url.is_none() {
        // An external server without HYDRATECACHE_NATS_MONITOR_URL cannot list subscribers.
        assert_eq!(
            skipped,
            ["dropping_subscription_unsubscribes", "replay_from_earliest"],
            "{report}"
        );
    } else {
        assert_eq!(skipped, ["replay_from_earliest"], "{report}");
        assert_eq!(report.ran.len(), conformance::CASES.len() - 1, "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_transport_from_url() {
    run(Mode::Url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_transport_from_client() {
    run(Mode::Client).await;
}
