//! End-to-end benchmarks: hydratecache against each backend's own client,
//! moving the same payload bytes, in the same run, interleaved.
//!
//! `hydratecache-bench <redis|nats|postgres|kafka|cache-redis|fleet> [--seconds S] [--out DIR]`
//! writes `DIR/<backend>.json` (rows of backend, payload size, metric, library
//! value, raw value, ratio). `cargo xtask bench` runs it in release mode,
//! merges the rows into `target/bench/summary.json` and `docs/benchmarks.md`.

mod fleet;
mod measure;
mod pipe;
mod raw;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hydratecache_testkit::connect::{connect, ConnectOptions};
use serde::Serialize;

use measure::{Flow, Latency};
use pipe::{Library, Pipe};

const SIZES: &[usize] = &[128, 4096];
const LATENCY_ROUNDS: usize = 1000;
const FAN_OUT: usize = 8;

/// One figure, library against raw.
#[derive(Debug, Serialize)]
struct Row {
    backend: String,
    payload_bytes: usize,
    metric: String,
    unit: String,
    library: f64,
    raw: f64,
    raw_client: String,
    /// library ÷ raw.
    ratio: f64,
    /// Lost without a gap event, gaps, peak RSS...
    notes: String,
}

// One row of the output table: each column is an argument.
#[allow(clippy::too_many_arguments)]
fn row(
    backend: &str,
    size: usize,
    metric: &str,
    unit: &str,
    lib: f64,
    raw: f64,
    raw_client: &str,
    notes: String,
) -> Row {
    Row {
        backend: backend.into(),
        payload_bytes: size,
        metric: metric.into(),
        unit: unit.into(),
        library: lib,
        raw,
        raw_client: raw_client.into(),
        ratio: if raw > 0.0 { lib / raw } else { f64::NAN },
        notes,
    }
}

struct Args {
    backend: String,
    seconds: f64,
    out: PathBuf,
}

const USAGE: &str = "usage: hydratecache-bench <redis|nats|postgres|kafka|cache-redis|fleet> [--seconds S] [--out DIR]";

fn args() -> Result<Args> {
    let mut it = std::env::args().skip(1);
    let backend = it.next().context(USAGE)?;
    if backend == "--help" || backend == "-h" {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let mut args = Args {
        backend,
        seconds: 3.0,
        out: PathBuf::from("target/bench"),
    };
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--out" => args.out = value.into(),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let rows = match args.backend.as_str() {
        "redis" => {
            let server = hydratecache_testkit::redis::shared_or_private()?;
            let lib = library(server.url(), ConnectOptions::default());
            compare(
                "redis",
                &lib,
                &[(
                    "fred",
                    &raw::redis::RawRedis { url: server.url() } as &dyn Pipe,
                )],
                duration,
            )
            .await?
        }
        "nats" => {
            let server = hydratecache_testkit::nats::shared_or_private()?;
            let lib = library(server.url(), ConnectOptions::default());
            compare(
                "nats",
                &lib,
                &[(
                    "async-nats",
                    &raw::nats::RawNats { url: server.url() } as &dyn Pipe,
                )],
                duration,
            )
            .await?
        }
        "postgres" => {
            let server = hydratecache_testkit::postgres::shared_or_private()?;
            let lib = library(server.url(), ConnectOptions::default());
            compare(
                "postgres",
                &lib,
                &[(
                    "sqlx pg_notify+PgListener",
                    &raw::postgres::RawPostgres { url: server.url() } as &dyn Pipe,
                )],
                duration,
            )
            .await?
        }
        "kafka" => {
            let server = hydratecache_testkit::kafka::shared_or_private()?;
            let options = ConnectOptions {
                // One partition, as the raw side's topics; created on first
                // use (the raw pipe creates its own in prepare). The raw
                // consumer's fetch wait (100 ms), not the 500 ms default.
                kafka: Some(|builder| {
                    builder
                        .create_topics(hydratecache_kafka::TopicSettings::new(1, 1))
                        .fetch_max_wait(Duration::from_millis(100))
                }),
                ..ConnectOptions::default()
            };
            let lib = library(server.url(), options);
            let naive = raw::kafka::RawKafka {
                bootstrap: server.bootstrap(),
                batched: false,
            };
            let batched = raw::kafka::RawKafka {
                bootstrap: server.bootstrap(),
                batched: true,
            };
            compare(
                "kafka",
                &lib,
                &[
                    ("rskafka 1 record/request", &naive as &dyn Pipe),
                    ("rskafka batch producer", &batched as &dyn Pipe),
                ],
                duration,
            )
            .await?
        }
        "cache-redis" => redis_get_baseline().await?,
        "fleet" => {
            let rows = fleet::run(args.seconds).await?;
            std::fs::create_dir_all(&args.out)?;
            let path = args.out.join("fleet.json");
            std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
            println!("wrote {}", path.display());
            return Ok(());
        }
        other => bail!("unknown backend {other}"),
    };
    std::fs::create_dir_all(&args.out)?;
    let path = args.out.join(format!("{}.json", args.backend));
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The read a local cache replaces: a Redis `GET` round trip with fred, on
/// 10,000 keys of 128 bytes, one in flight (the `cache` benchmark divides it
/// by `LocalCache::get`).
async fn redis_get_baseline() -> Result<Vec<Row>> {
    use fred::prelude::*;
    let server = hydratecache_testkit::redis::shared_or_private()?;
    let client = fred::types::Builder::from_config(Config::from_url(&server.url())?).build()?;
    client.init().await?;
    let prefix = hydratecache_conformance::unique_topic("get");
    for i in 0..10_000 {
        let _: () = client
            .set(
                format!("{prefix}:{i}"),
                vec![0x5au8; 128],
                None,
                None,
                false,
            )
            .await?;
    }
    let mut micros = Vec::with_capacity(20_000);
    for i in 0..20_000u64 {
        let key = format!("{prefix}:{}", (i * 7919) % 10_000);
        let start = std::time::Instant::now();
        let value: Option<Vec<u8>> = client.get(&key).await?;
        micros.push(start.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(
            value.map(|v| v.len()) == Some(128),
            "GET {key} returned the wrong value"
        );
    }
    micros.sort_by(f64::total_cmp);
    let p50 = micros[micros.len() / 2];
    let p99 = micros[micros.len() * 99 / 100];
    println!(
        "redis GET round trip (fred): p50 {p50:.1} us, p99 {p99:.1} us over {} reads",
        micros.len()
    );
    Ok(vec![
        row(
            "cache",
            128,
            "redis GET p50",
            "us",
            f64::NAN,
            p50,
            "fred GET",
            format!("{} reads, 10,000 keys", micros.len()),
        ),
        row(
            "cache",
            128,
            "redis GET p99",
            "us",
            f64::NAN,
            p99,
            "fred GET",
            format!("{} reads, 10,000 keys", micros.len()),
        ),
    ])
}

/// The library side on the backend at `url`: a new client at each connect.
fn library(url: String, options: ConnectOptions) -> Library {
    Library {
        connect: Box::new(move || {
            let (url, options) = (url.clone(), options.clone());
            Box::pin(async move { connect(&url, &options).await })
        }),
    }
}

fn topic(backend: &str, what: &str, size: usize, who: &str) -> String {
    hydratecache_conformance::unique_topic(&format!("b{backend}{what}{size}{who}"))
}

fn flow_notes(lib: &Flow, raw: &Flow) -> String {
    format!(
        "library: sent {} received {} gaps {} lost-silently {} publish-errors {} receive-errors {}{}; raw: sent {} received {} gaps {} lost {}{}",
        lib.sent,
        lib.received,
        lib.gaps,
        lib.lost_silently,
        lib.errors,
        lib.receive_errors,
        lib.peak_rss_kib.map(|k| format!(" peak-rss {k} KiB")).unwrap_or_default(),
        raw.sent,
        raw.received,
        raw.gaps,
        raw.lost_silently,
        raw.peak_rss_kib.map(|k| format!(" peak-rss {k} KiB")).unwrap_or_default(),
    )
}

async fn compare(
    backend: &str,
    lib: &Library,
    raws: &[(&str, &dyn Pipe)],
    duration: Duration,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &size in SIZES {
        for &(raw_name, raw) in raws {
            // Interleaved: raw, library, raw, library; the mean of the two of each.
            let mut lib_flows = Vec::new();
            let mut raw_flows = Vec::new();
            for round in 0..2 {
                raw_flows.push(
                    measure::flow(
                        raw,
                        &topic(backend, "tr", size, &format!("r{round}")),
                        size,
                        1,
                        duration,
                    )
                    .await?,
                );
                lib_flows.push(
                    measure::flow(
                        lib,
                        &topic(backend, "tl", size, &format!("l{round}")),
                        size,
                        1,
                        duration,
                    )
                    .await?,
                );
            }
            let (l, r) = (mean_flow(&lib_flows), mean_flow(&raw_flows));
            println!(
                "{backend} {size}B throughput: library {:.0}/s, {raw_name} {:.0}/s",
                l.per_second, r.per_second
            );
            rows.push(row(
                backend,
                size,
                "throughput",
                "msg/s",
                l.per_second,
                r.per_second,
                raw_name,
                flow_notes(&l, &r),
            ));

            let mut lib_lat = Vec::new();
            let mut raw_lat = Vec::new();
            for round in 0..2 {
                raw_lat.push(
                    measure::latency(
                        raw,
                        &topic(backend, "lr", size, &format!("r{round}")),
                        size,
                        LATENCY_ROUNDS,
                    )
                    .await?,
                );
                lib_lat.push(
                    measure::latency(
                        lib,
                        &topic(backend, "ll", size, &format!("l{round}")),
                        size,
                        LATENCY_ROUNDS,
                    )
                    .await?,
                );
            }
            let (l, r) = (mean_latency(&lib_lat), mean_latency(&raw_lat));
            println!(
                "{backend} {size}B latency p50: library {:.0} us, {raw_name} {:.0} us",
                l.p50, r.p50
            );
            let n = format!("{} round trips x2", l.rounds);
            rows.push(row(
                backend,
                size,
                "latency p50",
                "us",
                l.p50,
                r.p50,
                raw_name,
                n.clone(),
            ));
            rows.push(row(
                backend,
                size,
                "latency p99",
                "us",
                l.p99,
                r.p99,
                raw_name,
                n.clone(),
            ));
            rows.push(row(
                backend,
                size,
                "latency max",
                "us",
                l.max,
                r.max,
                raw_name,
                n,
            ));

            let r = measure::flow(
                raw,
                &topic(backend, "fr", size, "r"),
                size,
                FAN_OUT,
                duration,
            )
            .await?;
            let l = measure::flow(
                lib,
                &topic(backend, "fl", size, "l"),
                size,
                FAN_OUT,
                duration,
            )
            .await?;
            println!(
                "{backend} {size}B fan-out x{FAN_OUT}: library {:.0}/s, {raw_name} {:.0}/s",
                l.per_second, r.per_second
            );
            rows.push(row(
                backend,
                size,
                "fan-out x8 deliveries",
                "msg/s",
                l.per_second,
                r.per_second,
                raw_name,
                flow_notes(&l, &r),
            ));
        }
    }
    Ok(rows)
}

fn mean_flow(flows: &[Flow]) -> Flow {
    let n = flows.len().max(1) as u64;
    Flow {
        sent: flows.iter().map(|f| f.sent).sum::<u64>() / n,
        received: flows.iter().map(|f| f.received).sum::<u64>() / n,
        gaps: flows.iter().map(|f| f.gaps).sum(),
        errors: flows.iter().map(|f| f.errors).sum(),
        receive_errors: flows.iter().map(|f| f.receive_errors).sum(),
        per_second: flows.iter().map(|f| f.per_second).sum::<f64>() / n as f64,
        lost_silently: flows.iter().map(|f| f.lost_silently).sum(),
        peak_rss_kib: flows.iter().filter_map(|f| f.peak_rss_kib).max(),
    }
}

fn mean_latency(l: &[Latency]) -> Latency {
    let n = l.len().max(1) as f64;
    Latency {
        p50: l.iter().map(|x| x.p50).sum::<f64>() / n,
        p99: l.iter().map(|x| x.p99).sum::<f64>() / n,
        max: l.iter().map(|x| x.max).fold(0.0, f64::max),
        rounds: l.iter().map(|x| x.rounds).sum::<usize>() / l.len().max(1),
    }
}
