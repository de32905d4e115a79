//! `cargo xtask bench <redis|nats|postgres|kafka|codec|cache|all>`: release
//! builds, backends provisioned as for `itest`; writes a table to stdout,
//! `target/bench/summary.json` and `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::provision;

const OUT: &str = "target/bench";
const E2E: &[&str] = &["redis", "nats", "postgres", "kafka"];
/// The command and time of the last benchmark run, for the docs page.
const PRODUCED_BY: &str = "produced-by.txt";

pub(crate) fn bench(what: &str, seconds: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match what {
        "all" => vec!["codec", "cache", "redis", "nats", "postgres", "kafka"],
        "codec" | "cache" | "redis" | "nats" | "postgres" | "kafka" => vec![what],
        // Re-renders the outputs from the last runs' files.
        "summary" => return summarise(),
        other => bail!("unknown benchmark {other:?}: expected redis, nats, postgres, kafka, codec, cache, all or summary"),
    };
    std::fs::create_dir_all(OUT)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::fs::write(
        format!("{OUT}/{PRODUCED_BY}"),
        format!("`cargo xtask {}` on {}", args.join(" "), today()),
    )?;
    if targets.iter().any(|t| E2E.contains(t) || *t == "cache") {
        let status = Command::new(cargo())
            .args(["build", "--release", "-p", "hydratecache-bench"])
            .status()?;
        if !status.success() {
            bail!("building hydratecache-bench failed");
        }
    }
    for target in &targets {
        match *target {
            "codec" => codec()?,
            "cache" => {
                cache()?;
                // The fleet experiment: store reads and staleness per mode.
                provision::ensure("redis")?;
                provision::ensure("postgres")?;
                // About 30 s per mode, as the experiment is specified,
                // whatever the end-to-end benchmarks' --seconds.
                run_bench_binary("fleet", Some("30"))?;
            }
            backend => {
                provision::ensure(backend)?;
                run_bench_binary(backend, seconds)?;
            }
        }
    }
    summarise()
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn run_bench_binary(name: &str, seconds: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(crate::built_binary("release", "hydratecache-bench"));
    cmd.args([name, "--out", OUT]);
    if let Some(s) = seconds {
        cmd.args(["--seconds", s]);
    }
    println!("==> bench {name}: {cmd:?}");
    let status = cmd.status().with_context(|| format!("run {cmd:?}"))?;
    if !status.success() {
        bail!("bench {name} failed ({status})");
    }
    Ok(())
}

/// Runs a criterion bench and returns `(id, nanoseconds)` of each result,
/// plus the `wire-bytes NAME N` lines the bench printed.
/// `(benchmark id, nanoseconds)` per result.
type Timings = Vec<(String, f64)>;
/// `(name, bytes)` per `wire-bytes` line.
type WireSizes = Vec<(String, u64)>;

fn criterion(package: &str, bench: &str) -> Result<(Timings, WireSizes)> {
    println!("==> criterion {bench}");
    let out = Command::new(cargo())
        .args(["bench", "-p", package, "--bench", bench, "--", "--noplot"])
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!("cargo bench {bench} failed");
    }
    let mut results = Vec::new();
    let mut wire = Vec::new();
    let mut previous = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("wire-bytes ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(n)) = (parts.next(), parts.next().and_then(|n| n.parse().ok()))
            {
                wire.push((name.to_owned(), n));
            }
        } else if let Some((name, rest)) = line
            .split_once("time:")
            // Not criterion's "change:" lines against a saved baseline.
            .filter(|(_, rest)| !rest.contains('%'))
        {
            let name = if name.trim().is_empty() {
                previous.clone()
            } else {
                name.trim().to_owned()
            };
            // time:   [low unit mid unit high unit]
            let fields: Vec<&str> = rest
                .trim()
                .trim_start_matches('[')
                .split_whitespace()
                .collect();
            if let (Some(value), Some(unit)) = (fields.get(2), fields.get(3)) {
                let scale = match *unit {
                    "ps" => 1e-3,
                    "ns" => 1.0,
                    "µs" | "us" => 1e3,
                    "ms" => 1e6,
                    "s" => 1e9,
                    _ => f64::NAN,
                };
                results.push((name, value.parse::<f64>().unwrap_or(f64::NAN) * scale));
            }
        } else if !line.starts_with(' ')
            && !line.trim().is_empty()
            && !line.starts_with("Benchmarking")
            && !line.starts_with("Found")
        {
            previous = line.trim().to_owned();
        }
    }
    Ok((results, wire))
}

fn codec() -> Result<()> {
    let (results, wire) = criterion("hydratecache-core", "codec")?;
    let rows: Vec<Value> = results
        .iter()
        .map(|(id, ns)| {
            let size = id.rsplit('/').next().unwrap_or("");
            let wire_bytes = wire
                .iter()
                .find(|(name, _)| {
                    let kind = if id.starts_with("envelope") { "envelope".to_owned() } else {
                        let codec = id.split('/').nth(1).unwrap_or("");
                        let codec = codec.trim_end_matches("-encode").trim_end_matches("-decode");
                        format!("value-{codec}")
                    };
                    *name == format!("{kind}/{size}")
                })
                .map(|(_, n)| *n);
            json!({"backend": "codec", "payload": size, "metric": id, "unit": "ns/op", "library": ns, "wire_bytes": wire_bytes})
        })
        .collect();
    std::fs::write(
        format!("{OUT}/codec.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}

fn cache() -> Result<()> {
    let (results, _) = criterion("hydratecache-cache", "cache_get")?;
    provision::ensure("redis")?;
    run_bench_binary("cache-redis", None)?;
    let redis: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(format!("{OUT}/cache-redis.json"))?)?;
    let get_p50_us = redis
        .iter()
        .find(|r| r["metric"] == "redis GET p50")
        .and_then(|r| r["raw"].as_f64())
        .context("no Redis GET figure")?;
    let rows: Vec<Value> = results
        .iter()
        .map(|(id, ns)| {
            json!({
                "backend": "cache", "payload": "128B", "metric": id, "unit": "ns/op",
                "library": ns, "raw": get_p50_us * 1000.0, "raw_client": "fred GET p50 (same run)",
                "ratio": ns / (get_p50_us * 1000.0),
                "notes": format!("Redis GET p50 / get = {:.0}x", get_p50_us * 1000.0 / ns),
            })
        })
        .collect();
    std::fs::write(
        format!("{OUT}/cache.json"),
        serde_json::to_string_pretty(&rows)?,
    )?;
    Ok(())
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({"cpu": cpu, "cores": cores, "memory_gib": mem_kib / 1024 / 1024, "kernel": kernel.trim(), "loopback": true})
}

fn fmt_num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "–".into(),
    }
}

/// Merges every `target/bench/*.json` into the summary and the docs page.
fn summarise() -> Result<()> {
    let mut rows: Vec<Value> = Vec::new();
    for name in [
        "codec", "cache", "fleet", "redis", "nats", "postgres", "kafka",
    ] {
        let path = format!("{OUT}/{name}.json");
        if Path::new(&path).exists() {
            let file: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
            rows.extend(file);
        }
    }
    let machine = machine();

    let (fleet, mut rows): (Vec<Value>, Vec<Value>) =
        rows.into_iter().partition(|r| r["backend"] == "fleet");
    // Rows without a figure (an unparsed line of an older run) say nothing.
    rows.retain(|r| !r["library"].is_null());
    let mut fleet_table = String::new();
    if !fleet.is_empty() {
        fleet_table.push_str("| mode | store reads/s | reads/s | read p50 (µs) | read p99 (µs) | stale ≤ 10 ms | stale > 10 ms | max staleness (ms) |\n|---|---|---|---|---|---|---|---|\n");
        for r in &fleet {
            let _ = writeln!(
                fleet_table,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                r["mode"].as_str().unwrap_or(""),
                fmt_num(&r["store_reads_per_sec"]),
                fmt_num(&r["reads_per_sec"]),
                fmt_num(&r["read_p50_us"]),
                fmt_num(&r["read_p99_us"]),
                r["stale_within_10ms"],
                r["stale_older"],
                fmt_num(&r["max_staleness_ms"]),
            );
        }
        println!("\n{fleet_table}");
    }
    let summary_rows: Vec<&Value> = rows.iter().chain(fleet.iter()).collect();
    let summary = json!({"machine": machine, "rows": summary_rows});
    std::fs::write(
        format!("{OUT}/summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    let mut table = String::from("| backend | payload | metric | unit | hydratecache | raw client | raw | ratio (lib ÷ raw) | notes |\n|---|---|---|---|---|---|---|---|---|\n");
    for r in &rows {
        let payload = r
            .get("payload_bytes")
            .map(|p| format!("{p} B"))
            .or_else(|| r.get("payload").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let notes = r
            .get("notes")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
            + &r.get("wire_bytes")
                .and_then(Value::as_u64)
                .map(|w| format!("{w} bytes on the wire"))
                .unwrap_or_default();
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r["backend"].as_str().unwrap_or(""),
            payload,
            r["metric"].as_str().unwrap_or(""),
            r["unit"].as_str().unwrap_or(""),
            fmt_num(&r["library"]),
            r.get("raw_client").and_then(Value::as_str).unwrap_or("–"),
            r.get("raw").map(fmt_num).unwrap_or_else(|| "–".into()),
            r.get("ratio").map(fmt_num).unwrap_or_else(|| "–".into()),
            notes,
        );
    }
    println!("\n{table}");
    // Which run made the figures: a re-render names the run, not itself.
    let produced = std::fs::read_to_string(format!("{OUT}/{PRODUCED_BY}"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            let args: Vec<String> = std::env::args().skip(1).collect();
            format!("`cargo xtask {}` on {}", args.join(" "), today())
        });
    let doc = format!(
        "# Benchmarks\n\nProduced by {}.\n\nMachine: {} ({} cores, {} GiB), Linux {}; every server on loopback on the same machine.\n\n\
         Method: hydratecache and each backend's own client move the same payload bytes in the same run, interleaved \
         (raw, library, raw, library; the mean of each pair). Throughput: one publisher with {} publishes in flight for a \
         fixed time, one subscriber counting. Latency: one message in flight, publish to typed receipt, 1,000 round trips after 20 \
         for warm-up. Fan-out: one publisher, eight subscribers on separate clients. The library side publishes \
         `Channel<Payload>` (CBOR byte string in the envelope) and receives the decoded value; the raw side sends the bare \
         payload. Ratios are library ÷ raw: above 1 is better for throughput, below 1 is better for latency. \
         Machine-readable: `target/bench/summary.json`.\n\n{table}\n{}",
        produced,
        machine["cpu"].as_str().unwrap_or("unknown CPU"),
        machine["cores"],
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or(""),
        64,
        if fleet_table.is_empty() { String::new() } else {
            format!("\n## The fleet experiment\n\nFour reader instances read Zipf-distributed keys of a PostgreSQL table (the central store, 10,000 keys) while a writer updates 1% of operations and publishes; a read is stale when the store had committed a newer version before the read began. Modes: no local cache; a local TTL cache without broadcast; LocalCache over Redis; LocalCache over PostgreSQL NOTIFY with the transactional publish.\n\n{fleet_table}")
        },
    );
    let targets = targets(&rows, &fleet);
    println!("\n{targets}");
    // What follows the marker is written by hand (why a target is missed)
    // and survives regeneration.
    let kept = std::fs::read_to_string("docs/benchmarks.md")
        .ok()
        .and_then(|old| old.find(HAND_WRITTEN).map(|at| old[at..].to_owned()))
        .unwrap_or_else(|| format!("{HAND_WRITTEN}\n"));
    let doc = format!("{doc}\n## Targets, checked against this run\n\n{targets}\n{kept}");
    std::fs::write("docs/benchmarks.md", doc)?;
    println!("wrote {OUT}/summary.json and docs/benchmarks.md");
    Ok(())
}

const HAND_WRITTEN: &str = "<!-- Below: written by hand; `cargo xtask bench` keeps it. -->";

/// The first number after `label` in `text` ("lost-silently 0" → 0).
fn number_after(text: &str, label: &str) -> Option<u64> {
    let rest = &text[text.find(label)? + label.len()..];
    let digits: String = rest
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The targets of the benchmark issues, each judged on this run's rows.
fn targets(rows: &[Value], fleet: &[Value]) -> String {
    let mut out = String::from("| target | this run | met |\n|---|---|---|\n");
    let mut line = |target: String, figure: String, met: bool| {
        let _ = writeln!(
            out,
            "| {target} | {figure} | {} |",
            if met { "yes" } else { "**no**" }
        );
    };
    let find = |backend: &str, size: u64, metric: &str| -> Vec<&Value> {
        rows.iter()
            .filter(|r| {
                r["backend"] == backend
                    && r["payload_bytes"].as_u64() == Some(size)
                    && r["metric"] == metric
            })
            .collect()
    };
    for backend in ["redis", "nats", "postgres"] {
        for size in [128, 4096] {
            for r in find(backend, size, "throughput") {
                let ratio = r["ratio"].as_f64().unwrap_or(f64::NAN);
                line(
                    format!("{backend} {size} B throughput ≥ 0.95 × raw"),
                    // Rounded down to three places: a failing 0.9496 must
                    // not print as 0.950.
                    format!("{:.3} ×", (ratio * 1000.0).floor() / 1000.0),
                    ratio >= 0.95,
                );
            }
            for r in find(backend, size, "latency p50") {
                let ratio = r["ratio"].as_f64().unwrap_or(f64::NAN);
                line(
                    format!("{backend} {size} B latency p50 ≤ 1.10 × raw"),
                    // Rounded up, likewise.
                    format!("{:.3} ×", (ratio * 1000.0).ceil() / 1000.0),
                    ratio <= 1.10,
                );
            }
        }
    }
    let mut lost = 0;
    let mut flows = 0;
    for r in rows.iter().filter(|r| r["unit"] == "msg/s") {
        let notes = r["notes"].as_str().unwrap_or("");
        if let Some(n) = number_after(notes, "lost-silently") {
            lost += n;
            flows += 1;
        }
    }
    if flows > 0 {
        line(
            "no message lost without a gap event (every throughput and fan-out run)".into(),
            format!("{lost} lost silently over {flows} runs"),
            lost == 0,
        );
    }
    for size in [128, 4096] {
        let kafka = find("kafka", size, "throughput");
        for r in &kafka {
            let client = r["raw_client"].as_str().unwrap_or("");
            let ratio = r["ratio"].as_f64().unwrap_or(f64::NAN);
            if client.contains("1 record") {
                line(
                    format!("kafka {size} B throughput above a one-record-per-request client"),
                    format!("{ratio:.2} × {client}"),
                    ratio > 1.0,
                );
            } else {
                line(
                    format!("kafka {size} B throughput against a batching client (reported)"),
                    format!("{ratio:.2} × {client}"),
                    true,
                );
            }
        }
    }
    if let Some(r) = rows
        .iter()
        .find(|r| r["metric"] == "envelope/encode+decode/128B")
    {
        let ns = r["library"].as_f64().unwrap_or(f64::NAN);
        line(
            "envelope encode + decode of 128 B under 1 µs".into(),
            format!("{ns:.0} ns"),
            ns < 1000.0,
        );
    }
    for r in rows.iter().filter(|r| {
        r["backend"] == "cache"
            && r["metric"]
                .as_str()
                .is_some_and(|m| m.contains("local_cache"))
    }) {
        let times = 1.0 / r["ratio"].as_f64().unwrap_or(f64::NAN);
        line(
            format!(
                "LocalCache get hit ≥ 1000 × faster than a Redis GET ({})",
                r["metric"].as_str().unwrap_or("")
            ),
            format!(
                "{times:.0} × ({:.0} ns)",
                r["library"].as_f64().unwrap_or(f64::NAN)
            ),
            times >= 1000.0,
        );
    }
    let baseline = fleet
        .iter()
        .find(|r| r["mode"] == "no-cache")
        .and_then(|r| r["store_reads_per_sec"].as_f64());
    for r in fleet
        .iter()
        .filter(|r| r["mode"] == "redis" || r["mode"] == "postgres-tx")
    {
        let mode = r["mode"].as_str().unwrap_or("");
        let reads = r["store_reads_per_sec"].as_f64().unwrap_or(f64::NAN);
        if let Some(base) = baseline {
            let figure = if reads > 0.0 {
                format!(
                    "{:.0} × fewer ({reads:.1}/s against {base:.0}/s)",
                    base / reads
                )
            } else {
                format!("none while measured, against {base:.0}/s")
            };
            line(
                format!("fleet {mode}: ≥ 100 × fewer store reads than no cache"),
                figure,
                reads * 100.0 <= base,
            );
        }
        let older = r["stale_older"].as_u64().unwrap_or(u64::MAX);
        line(
            format!("fleet {mode}: no stale read older than 10 ms"),
            older.to_string(),
            older == 0,
        );
    }
    out
}

fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
