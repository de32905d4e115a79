//! The conformance suite against a real nats-server, in both
//! construction modes.

mod common;

use std::time::Duration;

use common::{Mode, NatsHarness};
use hydratecache_cache::RepairPolicy;
use hydratecache_conformance::{local_cache_never_serves_pre_gap_values, run_all, CASES};
use hydratecache_core::BoxError;
use hydratecache_testkit::nats::{shared_or_private, NatsServer};

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
        assert_eq!(report.ran.len(), CASES.len() - 1, "{report}");
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

/// LocalCache over NATS: the private nats-server is killed (-9) and started
/// again on the same port, then A rewrites every key; B must signal the cut
/// as a gap and never serve a pre-cut value once it has (Clear and Reload,
/// in both construction modes).
///
/// No companion with `RepairPolicy::Ignore` here, unlike Redis: the restart
/// cuts A as well, so A's writes land once A is back, and B is usually back
/// by then and receives them: with the gap ignored the check still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cache_never_serves_pre_gap_values_after_a_server_restart() {
    let mut server = match NatsServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start nats-server: {e:#}"),
    };
    for mode in [Mode::Url, Mode::Client] {
        let harness = NatsHarness::on_server(&server, mode);
        for policy in [RepairPolicy::Clear, RepairPolicy::Reload] {
            let server = &mut server;
            let cut = move || async move {
                server.kill9();
                // Down long enough for every client to see the connection go.
                tokio::time::sleep(Duration::from_millis(200)).await;
                server.start_again()?;
                Ok::<(), BoxError>(())
            };
            let report = local_cache_never_serves_pre_gap_values(&harness, policy, cut).await;
            println!("{mode:?} {policy:?}: {report:?}");
            // A client built elsewhere gives no events: its state is polled,
            // and a restart shorter than the poll may go unseen until the gap.
            if mode == Mode::Url {
                assert!(
                    report.interruptions >= 1,
                    "the kill was not reported as it happened: {report:?}"
                );
            }
        }
    }
}

/// A connection that goes silent without closing (a proxy that stops
/// forwarding both ways) is dropped by async-nats on its third unanswered
/// ping: the subscriptions are interrupted at that moment, then get a gap
/// once reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_interrupted() {
    use hydratecache_core::{InterruptReason, Transport};
    use hydratecache_nats::{NatsTransport, DEFAULT_PING_INTERVAL};

    let nats = match shared_or_private() {
        Ok(n) => n,
        Err(e) => panic!("no NATS server: {e:#}"),
    };
    let harness = NatsHarness::new(&nats, Mode::Url);
    let (proxy, via) = match hydratecache_testkit::Proxy::in_front_of(&nats.url()) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    let subscriber = match NatsTransport::connect(&via).await {
        Ok(t) => t.into_arc(),
        Err(e) => panic!("connect through the proxy: {e:?}"),
    };
    let bound = DEFAULT_PING_INTERVAL * 3;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        subscriber,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("nats: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Disconnected);
    assert!(report.gap);
}
