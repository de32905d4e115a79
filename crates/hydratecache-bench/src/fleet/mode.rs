//! One mode's run: its instances, request loops and writer, and its figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hydratecache_cache::CacheStats;
use hydratecache_core::Channel;
use hydratecache_testkit::connect::{connect, ConnectOptions};
use sqlx::postgres::PgPoolOptions;

use crate::fleet::instance::Instance;
use crate::fleet::load::{read_loop, write_loop, Clock, Publish, MAX_BEHIND};
use crate::fleet::params::{Env, Mode, Row, INSTANCES, LOOPS_PER_INSTANCE, WINDOW, WRITE_SHARE};
use crate::fleet::store::reset_table;

/// One mode's figures.
pub(crate) struct ModeResult {
    pub(crate) mode: Mode,
    pub(crate) store_reads_per_sec: f64,
    pub(crate) first_loads_per_sec: f64,
    pub(crate) reads_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) stale_within: u64,
    pub(crate) stale_older: u64,
    pub(crate) max_staleness_ms: f64,
    pub(crate) notes: String,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1e3
}

/// Runs `mode`: warm-up, then the measured period; returns its figures.
pub(crate) async fn run_mode(mode: Mode, env: &Env) -> Result<ModeResult> {
    reset_table(env).await.context("reset the table")?;
    let topic = hydratecache_conformance::unique_topic(&format!("fleet{}", mode.name()));
    let mut instances = Vec::with_capacity(INSTANCES);
    for _ in 0..INSTANCES {
        instances.push(Instance::start(mode, env, &topic).await?);
    }
    let writer_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&env.pg_url)
        .await
        .context("connect the writer's pool")?;
    let (heartbeat_stop, heartbeat_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut heartbeats = None;
    let publish = match mode {
        Mode::NoCache | Mode::Ttl => Publish::Nothing,
        Mode::Redis => {
            let transport = connect(&env.redis_url, &ConnectOptions::default())
                .await
                .context("connect the writer's Redis transport")?;
            let channel = Channel::<Row>::new(transport, topic.as_str());
            heartbeats = Some(tokio::spawn(channel.clone().run_heartbeats(
                Duration::from_secs(1),
                async move {
                    let _ = heartbeat_stopped.await;
                },
            )));
            Publish::Channel(channel)
        }
        Mode::PostgresTx => Publish::Transaction {
            topic: topic.clone(),
        },
    };

    let origin = Instant::now() + Duration::from_millis(50);
    let clock = Clock {
        origin,
        measure_from: origin + env.warmup,
        end: origin + env.warmup + env.measured,
    };
    let loop_rate = env.rate / LOOPS_PER_INSTANCE as f64;
    let write_rate = env.rate * INSTANCES as f64 * WRITE_SHARE / (1.0 - WRITE_SHARE);
    let mut loops = Vec::new();
    for (i, instance) in instances.iter().enumerate() {
        for l in 0..LOOPS_PER_INSTANCE {
            let seed = 0x5EED_0000 + (i * LOOPS_PER_INSTANCE + l) as u64;
            loops.push(tokio::spawn(read_loop(
                instance.reader.clone(),
                Arc::clone(&env.zipf),
                seed,
                clock,
                loop_rate,
            )));
        }
    }
    let writer = tokio::spawn(write_loop(
        writer_pool,
        env.table.clone(),
        publish,
        Arc::clone(&env.zipf),
        clock,
        write_rate,
    ));

    tokio::time::sleep_until(clock.measure_from.into()).await;
    let before: Vec<(u64, u64)> = instances.iter().map(|i| i.reads.snapshot()).collect();
    tokio::time::sleep_until(clock.end.into()).await;
    let after: Vec<(u64, u64)> = instances.iter().map(|i| i.reads.snapshot()).collect();

    let mut reads = Vec::new();
    let (mut errors, mut missing, mut skipped, mut first_error) = (0, 0, 0, None);
    for handle in loops {
        let out = handle.await.context("a read loop panicked")?;
        reads.extend(out.reads);
        errors += out.errors;
        missing += out.missing;
        skipped += out.skipped;
        first_error = first_error.or(out.first_error);
    }
    let written = writer.await.context("the writer panicked")?;
    let _ = heartbeat_stop.send(());
    if let Some(h) = heartbeats {
        let _ = h.await;
    }
    let mut stats = Vec::new();
    for instance in instances {
        stats.extend(instance.close().await?);
    }

    let secs = env.measured.as_secs_f64();
    let store_reads: u64 = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).sum();
    let first_loads: u64 = before.iter().zip(&after).map(|(b, a)| a.1 - b.1).sum();
    let mut latencies: Vec<u64> = reads.iter().map(|r| r.latency_ns).collect();
    latencies.sort_unstable();
    let window_ns = WINDOW.as_nanos() as u64;
    let (mut stale_within, mut stale_older, mut max_stale_ns) = (0u64, 0u64, 0u64);
    let (mut older_hits, mut max_hit_stale_ns, mut hits) = (0u64, 0u64, 0u64);
    for r in &reads {
        hits += u64::from(r.hit);
        // commits[key][i] is version i + 2: version v + 1 sits at v - 1.
        let Some(idx) = r.version.checked_sub(1) else {
            continue;
        };
        let next = written.commits[r.key as usize].get(idx as usize);
        if let Some(&committed) = next {
            if committed < r.start_ns {
                let staleness = r.start_ns - committed;
                if staleness <= window_ns {
                    stale_within += 1;
                } else {
                    stale_older += 1;
                    older_hits += u64::from(r.hit);
                }
                max_stale_ns = max_stale_ns.max(staleness);
                if r.hit {
                    max_hit_stale_ns = max_hit_stale_ns.max(staleness);
                }
            }
        }
    }

    let mut notes = format!(
        "target {:.0} reads/s ({} instances x {:.0}/s, {} loops each), writer target {:.1} updates/s, measured {:.1}/s ({} updates incl. warm-up); {:.0} s warm-up not counted; {} reads measured",
        env.rate * INSTANCES as f64,
        INSTANCES,
        env.rate,
        LOOPS_PER_INSTANCE,
        write_rate,
        written.measured_writes as f64 / secs,
        written.writes,
        env.warmup.as_secs_f64(),
        reads.len(),
    );
    if skipped + written.skipped > 0 {
        notes.push_str(&format!(
            "; fell behind schedule by over {} ms: {skipped} reads and {} updates not issued",
            MAX_BEHIND.as_millis(),
            written.skipped
        ));
    }
    if mode != Mode::NoCache {
        notes.push_str(&format!(
            "; {:.2}% of reads served by the cache; stale older than 10 ms: {older_hits} served by the cache, {} by a miss that joined a load begun before the newer commit (max staleness of a cache hit {:.1} ms)",
            hits as f64 * 100.0 / reads.len().max(1) as f64,
            stale_older - older_hits,
            max_hit_stale_ns as f64 / 1e6,
        ));
        notes.push_str(&format!(
            "; store reads: {:.1}/s first loads of a key by an instance (cold misses), {:.1}/s reloads",
            first_loads as f64 / secs,
            (store_reads - first_loads) as f64 / secs
        ));
        let sum = |f: fn(&CacheStats) -> u64| stats.iter().map(f).sum::<u64>();
        let lag = stats.iter().filter_map(|s| s.lag_p99).max();
        notes.push_str(&format!(
            "; caches: updates applied {}, stale rejected {}, gaps {}, repairs {}, load errors {}{}",
            sum(|s| s.updates_applied),
            sum(|s| s.stale_rejected),
            sum(|s| s.gaps + s.sequence_gaps),
            sum(|s| s.repairs()),
            sum(|s| s.load_errors),
            lag.map(|l| format!(", publish-to-apply lag p99 (worst instance) {:.2} ms", l.as_secs_f64() * 1e3))
                .unwrap_or_default(),
        ));
    }
    if errors + missing + written.errors > 0 || written.first_error.is_some() {
        notes.push_str(&format!(
            "; read errors {errors} (first: {}), missing rows {missing}, write errors {} (first: {})",
            first_error.as_deref().unwrap_or("-"),
            written.errors,
            written.first_error.as_deref().unwrap_or("-"),
        ));
    }

    Ok(ModeResult {
        mode,
        store_reads_per_sec: store_reads as f64 / secs,
        first_loads_per_sec: first_loads as f64 / secs,
        reads_per_sec: reads.len() as f64 / secs,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        stale_within,
        stale_older,
        max_staleness_ms: max_stale_ns as f64 / 1e6,
        notes,
    })
}
