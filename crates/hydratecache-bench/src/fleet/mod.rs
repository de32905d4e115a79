//! The fleet experiment: the project's headline claim, measured.
//!
//! A PostgreSQL table (`key text primary key, version bigint, value bytea`)
//! of 10,000 keys with 128-byte values is the store. Four reader instances
//! (each its own connection pool and messaging clients, as separate service
//! instances would have) read Zipf-distributed keys (s = 1.0) at a fixed
//! target rate, while one writer turns 1% of all operations into
//! `UPDATE ... SET version = version + 1 ... RETURNING version` and publishes
//! the new row with that version. Four modes, the same load in each:
//!
//! - `no-cache`: every read is a `SELECT`;
//! - `ttl-5s`: a [`LocalCache`] on a private `MemoryTransport` nobody
//!   publishes to, values loaded with a 5 s TTL (the cache people run today);
//! - `redis`: a [`LocalCache`] over Redis; the writer publishes with
//!   `Channel::publish_with(.., version(v))` after the `UPDATE` commits;
//! - `postgres-tx`: a [`LocalCache`] over PostgreSQL `NOTIFY`; the writer
//!   publishes in the `UPDATE`'s transaction (`publish_value_tx`) and commits.
//!
//! Readers call [`LocalCache::fetch`] (the loader `SELECT`s version and value)
//! and record the version each read returned. The writer records when each
//! version of each key committed (the instant its `COMMIT` returned). A read
//! that began at `t` and returned version `v` is stale if version `v + 1` had
//! committed before `t`; its staleness is `t - commit(v + 1)`. Stale reads
//! are evaluated after the run, from the complete commit log.
//!
//! Each mode runs a warm-up of `clamp(seconds / 3, 2 s, 10 s)` with the same
//! load, not counted (`HYDRATECACHE_FLEET_WARMUP` seconds overrides it), then
//! `seconds` measured. The per-instance read rate is [`DEFAULT_RATE`], or
//! `HYDRATECACHE_FLEET_RATE` (reads/s per instance).
//!
//! The broadcast-fed caches (`redis`, `postgres-tx`) start warm, as a
//! service would run them: [`LocalCacheBuilder::warm_from`] with one bulk
//! `SELECT` of the table per instance, issued after the cache subscribed and
//! awaited (`ready()`) before the load starts; that query is not counted in
//! the per-read figures. Without it, the Zipf tail (s = 1) keeps producing
//! first loads for minutes, and those would dominate the store reads.
//!
//! A cache's store reads are split into first loads of a key by an instance
//! (cold misses) and reloads of a key already loaded once (expiry, repair,
//! eviction).
//!
//! [`LocalCache`]: hydratecache_cache::LocalCache
//! [`LocalCache::fetch`]: hydratecache_cache::LocalCache::fetch
//! [`LocalCacheBuilder::warm_from`]: hydratecache_cache::LocalCacheBuilder::warm_from
//! [`DEFAULT_RATE`]: params::DEFAULT_RATE

mod instance;
mod load;
mod mode;
mod params;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hydratecache_testkit::workload::Zipf;
use sqlx::postgres::PgPoolOptions;

use mode::run_mode;
use params::{Env, Mode, DEFAULT_RATE, INSTANCES, KEYS, VALUE_BYTES, ZIPF_S};

/// A positive number from the environment variable `name`, if set.
fn env_seconds_or_rate(name: &str) -> Result<Option<f64>> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x > 0.0)
            .map(Some)
            .with_context(|| format!("{name}={v:?} is not a positive number")),
        _ => Ok(None),
    }
}

/// Runs the four modes, about `seconds_per_mode` measured each; prints a
/// table and returns one JSON row per mode.
pub(crate) async fn run(seconds_per_mode: f64) -> Result<Vec<serde_json::Value>> {
    if !(seconds_per_mode.is_finite() && seconds_per_mode > 0.0) {
        bail!("seconds per mode must be positive, got {seconds_per_mode}");
    }
    let rate = env_seconds_or_rate("HYDRATECACHE_FLEET_RATE")?.unwrap_or(DEFAULT_RATE);
    let measured = Duration::from_secs_f64(seconds_per_mode);
    let warmup = Duration::from_secs_f64(
        env_seconds_or_rate("HYDRATECACHE_FLEET_WARMUP")?
            .unwrap_or((seconds_per_mode / 3.0).clamp(2.0, 10.0)),
    );

    let pg = hydratecache_testkit::postgres::shared_or_private()?;
    let redis = hydratecache_testkit::redis::shared_or_private()?;
    let pg_url = pg.url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&pg_url)
        .await
        .context("connect to PostgreSQL")?;
    let table = hydratecache_conformance::unique_topic("fleetkv");
    sqlx::query(&format!(
        "CREATE TABLE {table} (key text PRIMARY KEY, version bigint NOT NULL, value bytea NOT NULL)"
    ))
    .execute(&admin)
    .await
    .context("create the table")?;
    let env = Env {
        pg_url,
        redis_url: redis.url(),
        table,
        admin,
        zipf: Arc::new(Zipf::new(KEYS, ZIPF_S)),
        rate,
        warmup,
        measured,
    };
    println!(
        "fleet: {INSTANCES} readers x {rate:.0} reads/s (Zipf s={ZIPF_S} over {KEYS} keys, {VALUE_BYTES} B values), 1% updates; {:.0} s warm-up + {seconds_per_mode:.0} s per mode",
        warmup.as_secs_f64()
    );
    let mut results = Vec::new();
    let mut failure = None;
    for mode in Mode::ALL {
        match run_mode(mode, &env).await {
            Ok(r) => {
                println!(
                    "  {:<32} store reads {:>8.1}/s, reads {:>7.0}/s, p50 {:>7.1} us, p99 {:>8.1} us, stale <=10ms {:>5}, older {:>6}, max {:>8.1} ms",
                    mode.label(),
                    r.store_reads_per_sec,
                    r.reads_per_sec,
                    r.p50_us,
                    r.p99_us,
                    r.stale_within,
                    r.stale_older,
                    r.max_staleness_ms
                );
                results.push(r);
            }
            Err(e) => {
                failure = Some(e.context(format!("mode {}", mode.name())));
                break;
            }
        }
    }
    let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {}", env.table))
        .execute(&env.admin)
        .await;
    env.admin.close().await;
    if let Some(e) = failure {
        return Err(e);
    }

    let baseline = results
        .iter()
        .find(|r| r.mode == Mode::NoCache)
        .map(|r| r.store_reads_per_sec);
    for r in &mut results {
        if matches!(r.mode, Mode::Redis | Mode::PostgresTx) {
            if let Some(base) = baseline {
                let fewer = base / r.store_reads_per_sec;
                let steady = r.store_reads_per_sec - r.first_loads_per_sec;
                r.notes.push_str(&format!(
                    "; each instance started warm from one bulk SELECT of all {KEYS} rows (before the warm-up, not counted)"
                ));
                let fewer_text = if r.store_reads_per_sec > 0.0 {
                    format!("{fewer:.0}x fewer store reads than (a)")
                } else {
                    format!("no store reads while measured, against {base:.0}/s in (a)")
                };
                r.notes.push_str(&format!(
                    "; targets: {fewer_text} (target >= 100x fewer: {}); {}; stale older than 10 ms {} (target 0: {})",
                    if fewer >= 100.0 { "met" } else { "NOT met" },
                    if steady > 0.0 {
                        format!("{:.0}x fewer counting only reloads (not first loads)", base / steady)
                    } else {
                        "no reloads at all (every store read was a key's first load)".to_owned()
                    },
                    r.stale_older,
                    if r.stale_older == 0 { "met" } else { "NOT met" },
                ));
            }
        }
    }

    println!();
    println!(
        "| mode | store reads/s | of which first loads/s | reads/s | read p50 (us) | read p99 (us) | stale <= 10 ms | stale older | max staleness (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        println!(
            "| {} | {:.1} | {} | {:.0} | {:.2} | {:.1} | {} | {} | {:.1} |",
            r.mode.label(),
            r.store_reads_per_sec,
            if r.mode == Mode::NoCache {
                "-".to_owned()
            } else {
                format!("{:.1}", r.first_loads_per_sec)
            },
            r.reads_per_sec,
            r.p50_us,
            r.p99_us,
            r.stale_within,
            r.stale_older,
            r.max_staleness_ms
        );
    }
    for r in &results {
        println!("  {}: {}", r.mode.name(), r.notes);
    }

    Ok(results
        .iter()
        .map(|r| {
            serde_json::json!({
                "backend": "fleet",
                "mode": r.mode.name(),
                "store_reads_per_sec": r.store_reads_per_sec,
                "reads_per_sec": r.reads_per_sec,
                "read_p50_us": r.p50_us,
                "read_p99_us": r.p99_us,
                "stale_within_10ms": r.stale_within,
                "stale_older": r.stale_older,
                "max_staleness_ms": r.max_staleness_ms,
                "notes": r.notes,
            })
        })
        .collect())
}
