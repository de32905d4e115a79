//! The `metrics` feature: a stats snapshot exported through the `metrics` facade.

use crate::stats::CacheStats;

/// Sets each counter and gauge of `s` through the `metrics` facade.
pub(crate) fn export_metrics(topic: &str, s: &CacheStats) {
    let topic = topic.to_owned();
    let counters = [
        ("hydratecache_cache_hits", s.hits),
        ("hydratecache_cache_misses", s.misses),
        ("hydratecache_cache_loads", s.loads),
        ("hydratecache_cache_updates_applied", s.updates_applied),
        ("hydratecache_cache_deletes_applied", s.deletes_applied),
        ("hydratecache_cache_stale_rejected", s.stale_rejected),
        (
            "hydratecache_cache_expired_on_arrival",
            s.expired_on_arrival,
        ),
        (
            "hydratecache_cache_own_echoes_skipped",
            s.own_echoes_skipped,
        ),
        ("hydratecache_cache_decode_errors", s.decode_errors),
        (
            "hydratecache_cache_hydration_failures",
            s.hydration_failures,
        ),
        ("hydratecache_cache_gaps", s.gaps + s.sequence_gaps),
        ("hydratecache_cache_interruptions", s.interruptions),
        ("hydratecache_cache_resumes", s.resumes),
        ("hydratecache_cache_caught_up", s.caught_up),
        ("hydratecache_cache_untrusted", s.untrusted),
        ("hydratecache_cache_stale_served", s.stale_served),
        ("hydratecache_cache_stalls", s.stalls),
        ("hydratecache_cache_silent_publishers", s.silent_publishers),
        ("hydratecache_cache_repairs", s.repairs()),
    ];
    for (name, value) in counters {
        metrics::counter!(name, "topic" => topic.clone()).absolute(value);
    }
    metrics::gauge!("hydratecache_cache_entries", "topic" => topic.clone()).set(s.entries as f64);
    metrics::gauge!("hydratecache_cache_trusted", "topic" => topic.clone()).set(if s.trusted {
        1.0
    } else {
        0.0
    });
    if let Some(p99) = s.lag_p99 {
        metrics::gauge!("hydratecache_cache_lag_p99_seconds", "topic" => topic)
            .set(p99.as_secs_f64());
    }
}
