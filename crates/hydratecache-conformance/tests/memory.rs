//! The suite against the in-memory transport.

use hydratecache_conformance::{run_all, MemoryHarness, CASES};
use hydratecache_core::MemoryTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_passes_the_conformance_suite() {
    let report = run_all(&MemoryHarness::default()).await;
    println!("{report}");
    // Only replay may be skipped: the bus keeps no history.
    assert_eq!(report.ran.len(), CASES.len() - 1, "{report}");
    assert_eq!(report.skipped.len(), 1, "{report}");
    assert_eq!(report.skipped[0].0, "replay_from_earliest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_transport_without_size_limit_skips_only_size_and_replay() {
    let report = run_all(&MemoryHarness::new(MemoryTransport::with_limits(
        1024, None,
    )))
    .await;
    let skipped: Vec<_> = report.skipped.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        skipped,
        ["max_payload_boundary", "replay_from_earliest"],
        "{report}"
    );
}
