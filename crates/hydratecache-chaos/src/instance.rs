//! `hydratecache-chaos instance`: one subscriber of the fleet, a separate OS
//! process holding a `LocalCache` over the backend under test.
//!
//! It reads Zipf-distributed keys continuously; on every cache hit it looks
//! the key up in the truth file and classifies the read (fresh, stale within
//! the window, stale beyond it). Reads stale beyond the window are logged,
//! grouped by (key, version, gap epoch), with what the instance knew at the
//! time: the last gap signal before the read and the newest version of the
//! key delivered so far. Gap signals, late deliveries of keys read stale,
//! and malformed items are logged as they pass through the [`Witness`].
//!
//! Standard output carries `ready`, a `status` line every 500 ms and the
//! answers to commands read from standard input: `dump` (every key held
//! with its version) and `quit`.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hydratecache_cache::{Loaded, LocalCache, RepairPolicy, DEFAULT_MAX_STALENESS};
use hydratecache_core::{BoxError, Channel};
use hydratecache_testkit::connect::{connect, ConnectOptions};
use hydratecache_testkit::memory_kib;
use hydratecache_testkit::workload::{key_name, SplitMix64, Zipf};
use serde_json::{json, Value};
use sqlx::{PgPool, Row as _};

use crate::common::{connect_options, now_us, truth_pool, Args, Row, TABLE, TOPIC, ZIPF_S};
use crate::truth::TruthFile;
use crate::witness::{Shared, Witness};

/// How long an instance keeps trying to connect and subscribe at start.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on one read-through load.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const STATUS_EVERY: Duration = Duration::from_millis(500);

struct Config {
    url: String,
    truth_url: String,
    truth_file: PathBuf,
    log: PathBuf,
    keys: usize,
    policy: RepairPolicy,
    seed: u64,
    reads_per_ms: u32,
    window_us: u64,
    /// Off: the adapters' keepalives and the cache's liveness checks are
    /// off, as before bounded staleness.
    liveness: bool,
    /// The adapters' resumable modes.
    resumable: bool,
}

pub(crate) fn parse_policy(name: &str) -> Result<RepairPolicy> {
    Ok(match name {
        "clear" => RepairPolicy::Clear,
        "reload" => RepairPolicy::Reload,
        "ignore" => RepairPolicy::Ignore,
        other => bail!("unknown repair policy {other:?} (clear, reload or ignore)"),
    })
}

/// Counters of the reader.
#[derive(Default)]
struct Reads {
    reads: AtomicU64,
    hits: AtomicU64,
    loads: AtomicU64,
    missing: AtomicU64,
    load_errors: AtomicU64,
    /// Misses while the cache did not trust what it holds, and their errors.
    untrusted_loads: AtomicU64,
    untrusted_load_errors: AtomicU64,
    fresh: AtomicU64,
    stale_within: AtomicU64,
    stale_beyond: AtomicU64,
    max_stale_us: AtomicU64,
    max_within_us: AtomicU64,
}

/// Reads of one key at one stale version, between two gap signals.
struct Episode {
    first: u64,
    last: u64,
    n: u64,
    max_us: u64,
    truth: u64,
    last_gap: u64,
    delivered: u64,
    delivered_at: u64,
}

type Episodes = Mutex<HashMap<(usize, u64, u64), Episode>>;

struct Log(Mutex<BufWriter<std::fs::File>>);

impl Log {
    fn line(&self, value: &Value) {
        let mut w = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = writeln!(w, "{value}");
    }

    fn flush(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .flush();
    }
}

fn say(value: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

pub(crate) fn main(args: &Args) -> Result<()> {
    let config = Config {
        url: args.need("url")?.to_owned(),
        truth_url: args.need("truth-url")?.to_owned(),
        truth_file: PathBuf::from(args.need("truth-file")?),
        log: PathBuf::from(args.need("log")?),
        keys: args.num("keys", 2000)?,
        policy: parse_policy(args.get("repair").unwrap_or("clear"))?,
        seed: args.num("seed", 1)?,
        reads_per_ms: args.num("reads-per-ms", 5)?,
        window_us: args.num("window-us", 10_000)?,
        liveness: args.get("liveness").unwrap_or("on") != "off",
        resumable: args.get("mode") == Some("resumable"),
    };
    // A panic anywhere (the reader thread included) ends the process: the
    // driver counts it as a crash instead of watching a half-dead instance.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::exit(101);
    }));
    let log = Arc::new(Log(Mutex::new(BufWriter::new(
        std::fs::File::create(&config.log)
            .with_context(|| format!("create {}", config.log.display()))?,
    ))));
    log.line(&json!({"e": "start", "t": now_us(), "pid": std::process::id()}));
    log.flush();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared::new(config.keys));
    let truth = TruthFile::open(&config.truth_file)?;
    let cache = Arc::new(runtime.block_on(start(&config, &shared))?);
    let ready = json!({"e": "ready", "t": now_us()});
    log.line(&ready);
    log.flush();
    say(&ready);

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(Reads::default());
    let episodes: Arc<Episodes> = Arc::default();
    let reader = {
        let (cache, shared, stop, reads, episodes) = (
            Arc::clone(&cache),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&reads),
            Arc::clone(&episodes),
        );
        let handle = runtime.handle().clone();
        let (keys, seed, per_ms, window) = (
            config.keys,
            config.seed,
            config.reads_per_ms,
            config.window_us,
        );
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || {
                read_loop(
                    &cache, &shared, &truth, &handle, &stop, &reads, &episodes, keys, seed, per_ms,
                    window,
                )
            })?
    };
    let watcher = {
        let (cache, shared, stop, log) = (
            Arc::clone(&cache),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&log),
        );
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || watch(&cache, &shared, &stop, &log))?
    };
    let reporter = {
        let (cache, shared, stop, reads, episodes, log) = (
            Arc::clone(&cache),
            Arc::clone(&shared),
            Arc::clone(&stop),
            Arc::clone(&reads),
            Arc::clone(&episodes),
            Arc::clone(&log),
        );
        std::thread::Builder::new()
            .name("reporter".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let next = Instant::now() + STATUS_EVERY;
                    report(&cache, &shared, &reads, &episodes, &log, true);
                    while Instant::now() < next && !stop.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })?
    };

    // Commands from the driver; end of input means quit.
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "dump" => {
                let entries: Vec<(usize, u64)> = (0..config.keys)
                    .filter_map(|k| cache.get(&key_name(k)).map(|row| (k, row.version)))
                    .collect();
                say(&json!({"e": "dump", "t": now_us(), "entries": entries}));
            }
            "quit" => break,
            _ => {}
        }
    }
    stop.store(true, Ordering::Release);
    let _ = reader.join();
    let _ = reporter.join();
    let _ = watcher.join();
    report(&cache, &shared, &reads, &episodes, &log, false);
    log.line(&json!({"e": "bye", "t": now_us()}));
    log.flush();
    say(&json!({"e": "bye", "t": now_us()}));
    // No graceful close: the process ends here, as a service instance would.
    std::process::exit(0)
}

/// How often the watcher looks at the cache's trust and counters.
const WATCH_EVERY: Duration = Duration::from_millis(5);

/// Logs what the cache decides on its own, which the witness cannot see:
/// each change of trust (for the timeline) and each repair for a publisher
/// silent past its lease (a gap signal, as the cache's own).
fn watch(cache: &LocalCache<Row>, shared: &Shared, stop: &AtomicBool, log: &Log) {
    let mut trusted = None;
    let mut silent = 0;
    while !stop.load(Ordering::Acquire) {
        let health = cache.health();
        if trusted != Some(health.is_trusted()) {
            trusted = Some(health.is_trusted());
            log.line(&json!({
                "e": "trust", "t": now_us(), "trusted": health.is_trusted(),
                "why": health.untrusted.map(|u| format!("{u:?}")),
            }));
        }
        let now_silent = cache.stats().silent_publishers;
        if now_silent > silent {
            silent = now_silent;
            shared.cache_gap("lease", json!({"silent_publishers": now_silent}));
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// Connects, subscribes and builds the cache, retrying until [`START_DEADLINE`]
/// (the backend may be down while this instance (re)starts).
async fn start(config: &Config, shared: &Arc<Shared>) -> Result<LocalCache<Row>> {
    let deadline = Instant::now() + START_DEADLINE;
    let mut last_error = None;
    while Instant::now() < deadline {
        match try_start(config, shared).await {
            Ok(cache) => return Ok(cache),
            Err(e) => {
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    Err(last_error
        .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
        .context(format!("start within {START_DEADLINE:?}")))
}

async fn try_start(config: &Config, shared: &Arc<Shared>) -> Result<LocalCache<Row>> {
    let pool = truth_pool(&config.truth_url, 4).await?;
    // Its own connection through the proxy (not the truth pool, which the
    // writer's transport shares on PostgreSQL).
    let options = ConnectOptions {
        postgres_pool: None,
        without_liveness: !config.liveness,
        resumable: config.resumable,
        ..connect_options(&pool)
    };
    let inner = connect(&config.url, &options).await?;
    let witness = Witness {
        inner,
        shared: Arc::clone(shared),
        // The cache has no staleness bound under `Ignore`.
        first_words: config.liveness && config.policy != RepairPolicy::Ignore,
    };
    let loader = {
        let pool = pool.clone();
        move |key: String| {
            let pool = pool.clone();
            async move { load(&pool, &key).await }
        }
    };
    let cache = LocalCache::builder(Channel::<Row>::new(Arc::new(witness), TOPIC))
        .max_entries(config.keys as u64 * 2)
        .loader(loader)
        .repair(config.policy)
        .max_staleness((config.liveness).then_some(DEFAULT_MAX_STALENESS))
        // This instance never publishes: no heartbeats of its own.
        .heartbeat_interval(None)
        .build()
        .await?;
    Ok(cache)
}

async fn load(pool: &PgPool, key: &str) -> Result<Option<Loaded<Row>>, BoxError> {
    let sql = format!("SELECT version, value FROM {TABLE} WHERE key = $1");
    let row = sqlx::query(&sql)
        .bind(key)
        .fetch_optional(pool)
        .await
        .map_err(|e| Box::new(e) as BoxError)?;
    let Some(row) = row else { return Ok(None) };
    let version: i64 = row.try_get(0).map_err(|e| Box::new(e) as BoxError)?;
    let value: String = row.try_get(1).map_err(|e| Box::new(e) as BoxError)?;
    let version = u64::try_from(version).unwrap_or(0);
    Ok(Some(Loaded::new(Row { version, value }).version(version)))
}

#[allow(clippy::too_many_arguments)]
fn read_loop(
    cache: &LocalCache<Row>,
    shared: &Shared,
    truth: &TruthFile,
    handle: &tokio::runtime::Handle,
    stop: &AtomicBool,
    reads: &Reads,
    episodes: &Episodes,
    keys: usize,
    seed: u64,
    per_ms: u32,
    window_us: u64,
) {
    let zipf = Zipf::new(keys, ZIPF_S);
    let mut rng = SplitMix64::new(seed);
    let names: Vec<String> = (0..keys).map(key_name).collect();
    while !stop.load(Ordering::Acquire) {
        let tick = Instant::now();
        for _ in 0..per_ms {
            let k = zipf.sample(&mut rng);
            let t0 = now_us();
            reads.reads.fetch_add(1, Ordering::Relaxed);
            match cache.get(&names[k]) {
                Some(row) => {
                    reads.hits.fetch_add(1, Ordering::Relaxed);
                    check(
                        shared,
                        truth,
                        reads,
                        episodes,
                        k,
                        row.version,
                        t0,
                        window_us,
                    );
                }
                None => {
                    // A miss reads through: the loader's answer comes from the
                    // source of truth itself, so it is not checked.
                    let untrusted = !cache.health().is_trusted();
                    let fetched = handle.block_on(async {
                        tokio::time::timeout(FETCH_TIMEOUT, cache.fetch(&names[k])).await
                    });
                    let failed = match fetched {
                        Ok(Ok(Some(_))) => {
                            reads.loads.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        Ok(Ok(None)) => {
                            reads.missing.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        _ => {
                            reads.load_errors.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                    };
                    if untrusted {
                        reads.untrusted_loads.fetch_add(1, Ordering::Relaxed);
                        if failed {
                            reads.untrusted_load_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if let Some(rest) = Duration::from_millis(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check(
    shared: &Shared,
    truth: &TruthFile,
    reads: &Reads,
    episodes: &Episodes,
    k: usize,
    version: u64,
    t0: u64,
    window_us: u64,
) {
    let Some(truth) = truth.read(k) else { return };
    if version >= truth.version {
        reads.fresh.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let superseded_at = truth.commit_of(version + 1);
    let Some(stale_us) = t0.checked_sub(superseded_at).filter(|s| *s > 0) else {
        // Committed after the read began: the read was not stale.
        reads.fresh.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if stale_us <= window_us {
        reads.stale_within.fetch_add(1, Ordering::Relaxed);
        reads.max_within_us.fetch_max(stale_us, Ordering::Relaxed);
        return;
    }
    reads.stale_beyond.fetch_add(1, Ordering::Relaxed);
    reads.max_stale_us.fetch_max(stale_us, Ordering::Relaxed);
    let epoch = shared.gap_epoch.load(Ordering::Acquire);
    let last_gap = shared.last_gap_us.load(Ordering::Acquire);
    let (delivered, delivered_at) = {
        let mut state = shared.lock();
        let d = state.delivered.get(k).copied().unwrap_or((0, 0));
        let pending = state.pending.entry(k).or_insert(version);
        *pending = (*pending).max(version);
        d
    };
    let mut episodes = episodes.lock().unwrap_or_else(PoisonError::into_inner);
    episodes
        .entry((k, version, epoch))
        .and_modify(|e| {
            e.last = t0;
            e.n += 1;
            e.max_us = e.max_us.max(stale_us);
        })
        .or_insert(Episode {
            first: t0,
            last: t0,
            n: 1,
            max_us: stale_us,
            truth: truth.version,
            last_gap,
            delivered,
            delivered_at,
        });
}

fn report(
    cache: &LocalCache<Row>,
    shared: &Shared,
    reads: &Reads,
    episodes: &Episodes,
    log: &Log,
    print: bool,
) {
    let events = std::mem::take(&mut shared.lock().events);
    for e in &events {
        log.line(e);
    }
    let drained: Vec<((usize, u64, u64), Episode)> = episodes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .drain()
        .collect();
    for ((k, v, epoch), e) in drained {
        log.line(&json!({
            "e": "stale", "k": k, "v": v, "epoch": epoch, "first": e.first, "last": e.last,
            "n": e.n, "max_us": e.max_us, "w": e.truth, "last_gap": e.last_gap,
            "dv": e.delivered, "dvt": e.delivered_at,
        }));
    }
    let s = cache.stats();
    let (hwm, rss) = memory_kib("self");
    let (hwm, rss) = (hwm.unwrap_or(0), rss.unwrap_or(0));
    let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let status = json!({
        "e": "status", "t": now_us(),
        "reads": r(&reads.reads), "hits": r(&reads.hits), "loads": r(&reads.loads),
        "missing": r(&reads.missing), "load_errors": r(&reads.load_errors),
        "untrusted_loads": r(&reads.untrusted_loads),
        "untrusted_load_errors": r(&reads.untrusted_load_errors),
        "fresh": r(&reads.fresh), "stale_within": r(&reads.stale_within),
        "stale_beyond": r(&reads.stale_beyond), "max_stale_us": r(&reads.max_stale_us),
        "max_within_us": r(&reads.max_within_us),
        "w_transport_gaps": r(&shared.transport_gaps), "w_sequence_gaps": r(&shared.sequence_gaps),
        "w_malformed": r(&shared.malformed), "w_messages": r(&shared.messages),
        "gaps": s.gaps, "sequence_gaps": s.sequence_gaps, "first_words": s.first_words, "malformed": s.malformed,
        "repairs_clear": s.repairs_clear, "repairs_reload": s.repairs_reload,
        "repairs_ignored": s.repairs_ignored, "updates_applied": s.updates_applied,
        "stale_rejected": s.stale_rejected, "entries": s.entries,
        "cache_loads": s.loads, "cache_load_errors": s.load_errors,
        "vmhwm_kb": hwm, "vmrss_kb": rss,
    });
    log.line(&status);
    log.flush();
    if print {
        say(&status);
    }
}
