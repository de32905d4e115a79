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
//! [`LocalCacheBuilder::warm_from`]: hydratecache_cache::LocalCacheBuilder::warm_from

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hydratecache_cache::{CacheStats, Loaded, LocalCache};
use hydratecache_core::{BoxError, CborCodec, Channel, MemoryTransport, PublishOptions, Transport};
use hydratecache_postgres::PostgresTransport;
use hydratecache_redis::RedisTransport;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row as _};

use crate::pipe::Payload;

/// Reader instances (separate tokio tasks, each with its own clients).
const INSTANCES: usize = 4;
/// Concurrent request loops per instance, sharing its pool and cache.
const LOOPS_PER_INSTANCE: usize = 4;
/// Keys in the store.
const KEYS: usize = 10_000;
/// Bytes of each value.
const VALUE_BYTES: usize = 128;
/// Zipf exponent of the key popularity.
const ZIPF_S: f64 = 1.0;
/// Share of all operations that are updates.
const WRITE_SHARE: f64 = 0.01;
/// Default target reads per second of each instance.
pub(crate) const DEFAULT_RATE: f64 = 2_000.0;
/// TTL of mode (b).
const TTL: Duration = Duration::from_secs(5);
/// Stale reads up to this old are "within the propagation window".
const WINDOW: Duration = Duration::from_millis(10);
/// Cache capacity: the whole key space fits.
const CACHE_ENTRIES: u64 = 2 * KEYS as u64;

/// One row of the store, as cached and as broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Row {
    version: u64,
    value: Payload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoCache,
    Ttl,
    Redis,
    PostgresTx,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::NoCache, Mode::Ttl, Mode::Redis, Mode::PostgresTx];

    fn name(self) -> &'static str {
        match self {
            Mode::NoCache => "no-cache",
            Mode::Ttl => "ttl-5s",
            Mode::Redis => "redis",
            Mode::PostgresTx => "postgres-tx",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::NoCache => "(a) no local cache",
            Mode::Ttl => "(b) TTL 5 s, no broadcast",
            Mode::Redis => "(c) LocalCache over Redis",
            Mode::PostgresTx => "(d) LocalCache over NOTIFY, tx",
        }
    }
}

/// splitmix64: a small deterministic PRNG.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf over key ranks 0..n (rank 0 the hottest), sampled from its CDF.
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += 1.0 / (k as f64).powf(s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    fn sample(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
    }
}

fn key_name(index: usize) -> String {
    format!("k{index:05}")
}

fn key_index(key: &str) -> Option<usize> {
    key.strip_prefix('k')?.parse().ok().filter(|&i| i < KEYS)
}

/// A new value for the writer's `n`th update.
fn value_for(n: u64) -> Vec<u8> {
    let mut v = vec![0x5a; VALUE_BYTES];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

/// Store reads of one instance: every direct read or loader call, and the
/// loader calls that were the first for their key in this instance.
struct StoreReads {
    total: AtomicU64,
    first: AtomicU64,
    seen: Vec<AtomicBool>,
}

impl StoreReads {
    fn new() -> StoreReads {
        StoreReads {
            total: AtomicU64::new(0),
            first: AtomicU64::new(0),
            seen: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    fn count(&self, key: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = key_index(key) {
            if !self.seen[i].swap(true, Ordering::Relaxed) {
                self.first.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn snapshot(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.first.load(Ordering::Relaxed),
        )
    }
}

/// `SELECT version, value` of `key`.
async fn select(pool: &PgPool, sql: &str, key: &str) -> Result<Option<Row>, sqlx::Error> {
    let row = sqlx::query(sql).bind(key).fetch_optional(pool).await?;
    row.map(|r| {
        let version: i64 = r.try_get(0)?;
        let value: Vec<u8> = r.try_get(1)?;
        Ok(Row {
            version: u64::try_from(version).unwrap_or(0),
            value: Payload(value),
        })
    })
    .transpose()
}

/// The whole table as a warm-up stream: one `SELECT` when first polled. A
/// failed query warms nothing (reads then fall through to the loader).
fn warm_rows(
    pool: PgPool,
    table: String,
) -> impl futures::Stream<Item = (String, Loaded<Row>)> + Send + 'static {
    use futures::StreamExt as _;
    futures::stream::once(async move {
        let sql = format!("SELECT key, version, value FROM {table}");
        match sqlx::query(&sql).fetch_all(&pool).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("fleet: warm-up SELECT failed: {e}");
                Vec::new()
            }
        }
    })
    .flat_map(|rows| {
        futures::stream::iter(rows.into_iter().filter_map(|r| {
            let key: String = r.try_get(0).ok()?;
            let version: i64 = r.try_get(1).ok()?;
            let value: Vec<u8> = r.try_get(2).ok()?;
            let version = u64::try_from(version).unwrap_or(0);
            let row = Row {
                version,
                value: Payload(value),
            };
            Some((key, Loaded::new(row).version(version)))
        }))
    })
}

/// How one instance reads.
#[derive(Clone)]
enum Reader {
    Direct {
        pool: PgPool,
        sql: Arc<str>,
        reads: Arc<StoreReads>,
    },
    Cached(Arc<LocalCache<Row>>),
}

impl Reader {
    /// The version read, and whether the cache held it.
    async fn read(&self, key: &str) -> Result<Option<(u64, bool)>> {
        match self {
            Reader::Direct { pool, sql, reads } => {
                reads.count(key);
                Ok(select(pool, sql, key).await?.map(|r| (r.version, false)))
            }
            Reader::Cached(cache) => {
                // `fetch` is `get`, then a load on a miss: split to know which served.
                if let Some(row) = cache.get(key) {
                    return Ok(Some((row.version, true)));
                }
                Ok(cache.fetch(key).await?.map(|r| (r.version, false)))
            }
        }
    }
}

/// One reader instance: its pool, its cache and transport.
struct Instance {
    reader: Reader,
    pool: PgPool,
    transport: Option<Arc<dyn Transport>>,
    reads: Arc<StoreReads>,
}

impl Instance {
    async fn start(mode: Mode, env: &Env, topic: &str) -> Result<Instance> {
        let pool = PgPoolOptions::new()
            .max_connections(LOOPS_PER_INSTANCE as u32)
            .connect(&env.pg_url)
            .await
            .context("connect a reader's pool")?;
        let reads = Arc::new(StoreReads::new());
        let sql: Arc<str> = Arc::from(format!(
            "SELECT version, value FROM {} WHERE key = $1",
            env.table
        ));
        let transport: Arc<dyn Transport> = match mode {
            Mode::NoCache => {
                return Ok(Instance {
                    reader: Reader::Direct {
                        pool: pool.clone(),
                        sql,
                        reads: Arc::clone(&reads),
                    },
                    pool,
                    transport: None,
                    reads,
                })
            }
            Mode::Ttl => MemoryTransport::new().into_arc(),
            Mode::Redis => RedisTransport::connect(&env.redis_url)
                .await
                .context("connect a reader's Redis transport")?
                .into_arc(),
            Mode::PostgresTx => PostgresTransport::from_pool(pool.clone()).into_arc(),
        };
        let ttl = (mode == Mode::Ttl).then_some(TTL);
        let loader = {
            let (pool, reads) = (pool.clone(), Arc::clone(&reads));
            move |key: String| {
                let (pool, sql, reads) = (pool.clone(), Arc::clone(&sql), Arc::clone(&reads));
                async move {
                    reads.count(&key);
                    let row = select(&pool, &sql, &key).await.map_err(BoxError::from)?;
                    Ok(row.map(|row| {
                        let version = row.version;
                        let loaded = Loaded::new(row).version(version);
                        match ttl {
                            Some(ttl) => loaded.ttl(ttl),
                            None => loaded,
                        }
                    }))
                }
            }
        };
        let mut builder = LocalCache::builder(Channel::<Row>::new(Arc::clone(&transport), topic))
            .max_entries(CACHE_ENTRIES)
            .loader(loader);
        if mode != Mode::Ttl {
            // A broadcast-fed cache starts warm: one bulk SELECT, run by the
            // cache after it subscribed, so no update can fall in between.
            builder = builder.warm_from(warm_rows(pool.clone(), env.table.clone()));
        }
        let cache = builder.build().await.context("build a reader's cache")?;
        tokio::time::timeout(Duration::from_secs(30), cache.ready())
            .await
            .context("a reader's cache did not get warm within 30 s")?;
        Ok(Instance {
            reader: Reader::Cached(Arc::new(cache)),
            pool,
            transport: Some(transport),
            reads,
        })
    }

    /// Closes the cache, the transport and the pool; returns the cache's stats.
    async fn close(self) -> Result<Option<CacheStats>> {
        let stats = match self.reader {
            Reader::Cached(cache) => {
                let stats = cache.stats();
                match Arc::try_unwrap(cache) {
                    Ok(cache) => cache.close().await?,
                    Err(cache) => drop(cache),
                }
                Some(stats)
            }
            Reader::Direct { .. } => None,
        };
        if let Some(transport) = self.transport {
            transport.close().await?;
        }
        self.pool.close().await;
        Ok(stats)
    }
}

/// One measured read.
struct Read {
    key: u32,
    version: u64,
    /// Since the run's origin.
    start_ns: u64,
    latency_ns: u64,
    /// Served from the cache without a load.
    hit: bool,
}

/// The phases of one mode's run.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
struct LoopOutcome {
    reads: Vec<Read>,
    errors: u64,
    missing: u64,
    skipped: u64,
    first_error: Option<String>,
}

/// Open-loop pacing: slot `i` is due at `origin + i / rate`. A loop that
/// falls behind catches up back to back, but never more than [`MAX_BEHIND`]:
/// older slots are skipped and counted, so the rate achieved shows what the
/// system sustains rather than a backlog drained later.
struct Pacer {
    clock: Clock,
    period_ns: f64,
    /// Slots issued so far (the next slot's index).
    issued: u64,
    /// Slots skipped in the measured period.
    skipped: u64,
}

/// How far behind schedule a loop may run before it skips slots.
const MAX_BEHIND: Duration = Duration::from_millis(100);

impl Pacer {
    fn new(clock: Clock, rate: f64) -> Pacer {
        Pacer {
            clock,
            period_ns: 1e9 / rate,
            issued: 0,
            skipped: 0,
        }
    }

    /// Waits for the next slot; `false` once the run is over.
    async fn next_slot(&mut self) -> bool {
        loop {
            let now = Instant::now();
            if now >= self.clock.end {
                return false;
            }
            let due = self.clock.origin
                + Duration::from_nanos((self.issued as f64 * self.period_ns) as u64);
            if due > now {
                tokio::time::sleep_until(due.into()).await;
                continue;
            }
            if now - due > MAX_BEHIND {
                let late = (now - MAX_BEHIND).saturating_duration_since(self.clock.origin);
                let first_kept = (late.as_nanos() as f64 / self.period_ns).ceil() as u64;
                if first_kept > self.issued {
                    if now >= self.clock.measure_from {
                        self.skipped += first_kept - self.issued;
                    }
                    self.issued = first_kept;
                }
            }
            self.issued += 1;
            return true;
        }
    }
}

/// A request loop: reads at `rate` per second (see [`Pacer`]), recording
/// the reads that start in the measured period.
async fn read_loop(
    reader: Reader,
    zipf: Arc<Zipf>,
    seed: u64,
    clock: Clock,
    rate: f64,
) -> LoopOutcome {
    let mut rng = SplitMix64(seed);
    let mut out = LoopOutcome::default();
    let mut pacer = Pacer::new(clock, rate);
    let keys: Vec<String> = (0..KEYS).map(key_name).collect();
    while pacer.next_slot().await {
        let index = zipf.sample(&mut rng);
        let start = Instant::now();
        let result = reader.read(&keys[index]).await;
        let latency = start.elapsed();
        if start < clock.measure_from {
            continue;
        }
        match result {
            Ok(Some((version, hit))) => out.reads.push(Read {
                key: index as u32,
                version,
                start_ns: clock.ns(start),
                latency_ns: u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
                hit,
            }),
            Ok(None) => out.missing += 1,
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    out.skipped = pacer.skipped;
    out
}

/// How the writer publishes.
enum Publish {
    Nothing,
    Channel(Channel<Row>),
    Transaction { topic: String },
}

#[derive(Default)]
struct WriterOutcome {
    /// Per key, commit instants (ns since origin) of versions 2, 3, ...
    commits: Vec<Vec<u64>>,
    writes: u64,
    measured_writes: u64,
    skipped: u64,
    errors: u64,
    first_error: Option<String>,
}

/// One update: `UPDATE ... RETURNING version`, publishing as `publish` says;
/// returns the version, the instant its commit returned, and the error of a
/// publish after the commit (the update stands).
async fn update(
    pool: &PgPool,
    sql: &str,
    publish: &Publish,
    key: &str,
    value: Vec<u8>,
) -> Result<(u64, Instant, Option<anyhow::Error>)> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query_scalar(sql)
        .bind(key)
        .bind(&value)
        .fetch_one(&mut *tx)
        .await?;
    let version = u64::try_from(version).context("negative version")?;
    let row = Row {
        version,
        value: Payload(value),
    };
    let options = PublishOptions::new().version(version);
    if let Publish::Transaction { topic } = publish {
        PostgresTransport::publish_value_tx(&mut *tx, topic, &CborCodec::new(), key, &row, options)
            .await?;
    }
    tx.commit().await?;
    let committed = Instant::now();
    let mut late_error = None;
    if let Publish::Channel(channel) = publish {
        if let Err(e) = channel.publish_with(key, &row, options).await {
            late_error = Some(anyhow::Error::from(e).context("publish after the commit"));
        }
    }
    Ok((version, committed, late_error))
}

async fn write_loop(
    pool: PgPool,
    table: String,
    publish: Publish,
    zipf: Arc<Zipf>,
    clock: Clock,
    rate: f64,
) -> WriterOutcome {
    let sql = format!(
        "UPDATE {table} SET version = version + 1, value = $2 WHERE key = $1 RETURNING version"
    );
    let mut rng = SplitMix64(0xF1EE_7000_0000_0001);
    let mut out = WriterOutcome {
        commits: vec![Vec::new(); KEYS],
        ..WriterOutcome::default()
    };
    let mut pacer = Pacer::new(clock, rate);
    while pacer.next_slot().await {
        let index = zipf.sample(&mut rng);
        let start = Instant::now();
        match update(
            &pool,
            &sql,
            &publish,
            &key_name(index),
            value_for(pacer.issued),
        )
        .await
        {
            Ok((version, committed, late_error)) => {
                if let Some(e) = late_error {
                    out.errors += 1;
                    if out.first_error.is_none() {
                        out.first_error = Some(format!("{e:#}"));
                    }
                }
                let log = &mut out.commits[index];
                // Versions of one key are written by this task only, in order.
                if version as usize == log.len() + 2 {
                    log.push(clock.ns(committed));
                } else if out.first_error.is_none() {
                    out.first_error = Some(format!(
                        "key {index}: version {version} after {}",
                        log.len() + 1
                    ));
                }
                out.writes += 1;
                if start >= clock.measure_from && start < clock.end {
                    out.measured_writes += 1;
                }
            }
            Err(e) => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    if let Publish::Channel(channel) = publish {
        let _ = channel.transport().close().await;
    }
    pool.close().await;
    out.skipped = pacer.skipped;
    out
}

/// What the whole experiment shares.
struct Env {
    pg_url: String,
    redis_url: String,
    table: String,
    admin: PgPool,
    zipf: Arc<Zipf>,
    rate: f64,
    warmup: Duration,
    measured: Duration,
}

/// One mode's figures.
struct ModeResult {
    mode: Mode,
    store_reads_per_sec: f64,
    first_loads_per_sec: f64,
    reads_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    stale_within: u64,
    stale_older: u64,
    max_staleness_ms: f64,
    notes: String,
}

async fn reset_table(env: &Env) -> Result<()> {
    let t = &env.table;
    sqlx::query(&format!("TRUNCATE {t}"))
        .execute(&env.admin)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO {t} (key, version, value) \
         SELECT 'k' || lpad(i::text, 5, '0'), 1, decode(repeat('5a', {VALUE_BYTES}), 'hex') \
         FROM generate_series(0, {}) AS i",
        KEYS - 1
    ))
    .execute(&env.admin)
    .await?;
    sqlx::query(&format!("VACUUM ANALYZE {t}"))
        .execute(&env.admin)
        .await?;
    Ok(())
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1e3
}

async fn run_mode(mode: Mode, env: &Env) -> Result<ModeResult> {
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
            let transport = RedisTransport::connect(&env.redis_url)
                .await
                .context("connect the writer's Redis transport")?;
            let channel = Channel::<Row>::new(transport.into_arc(), topic.as_str());
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
