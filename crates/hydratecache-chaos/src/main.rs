//! Coherence under faults: a reproducible chaos run of a `LocalCache` fleet
//! over each backend.
//!
//! `hydratecache-chaos drive --backend <redis|nats|postgres|kafka|all|a,b>
//! [--duration 60s] [--seed N] [--repair clear|reload|ignore] [--out DIR]`
//! runs one chaos run per backend and exits with 1 when an invariant broke;
//! `hydratecache-chaos instance ...` is one subscriber process and
//! `hydratecache-chaos writer ...` the writer (both started by the driver). `cargo xtask chaos` builds and runs it; see
//! `docs/reliability.md` for what is checked.

#![recursion_limit = "256"]

mod by_fault;
mod check;
mod common;
mod drive;
mod faults;
mod fleet;
mod instance;
mod report;
mod schedule;
mod servers;
mod timeline;
mod truth;
mod witness;
mod writer;
mod writer_process;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use common::{now_us, parse_duration, Args, BACKENDS};

const USAGE: &str = "\
hydratecache-chaos drive --backend <redis|nats|postgres|kafka|all|a,b> [--duration 60s]
                         [--seed N] [--repair clear|reload|ignore] [--out target/chaos]
                         [--keys 2000] [--instances 4] [--write-rate 200]
                         [--reads-per-ms 5] [--window-ms 10] [--quiet 5s]
                         [--memory-limit-mb 256] [--bound-ms 1000] [--liveness on|off] [--mode pubsub|resumable]
                         [--command TEXT]
hydratecache-chaos instance ...   (one subscriber; started by drive)
hydratecache-chaos writer ...     (the writer; started by drive)";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("drive") => Args::parse(&args[1..]).and_then(|a| drive_all(&a)),
        Some("instance") => Args::parse(&args[1..])
            .and_then(|a| instance::main(&a))
            .map(|()| true),
        Some("writer") => Args::parse(&args[1..])
            .and_then(|a| writer::main(&a))
            .map(|()| true),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("hydratecache-chaos: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Runs every selected backend; returns whether all passed.
fn drive_all(args: &Args) -> Result<bool> {
    let selection = args.get("backend").unwrap_or("all");
    let backends: Vec<String> = if selection == "all" {
        BACKENDS.iter().map(|b| (*b).to_owned()).collect()
    } else {
        selection.split(',').map(str::to_owned).collect()
    };
    for b in &backends {
        if !BACKENDS.contains(&b.as_str()) {
            bail!("unknown backend {b:?}; expected one of {BACKENDS:?} or all");
        }
    }
    let seed = match args.get("seed") {
        Some(s) => s.parse().with_context(|| format!("--seed {s:?}"))?,
        None => now_us() ^ (u64::from(std::process::id()) << 32),
    };
    let duration = parse_duration(args.get("duration").unwrap_or("60s"))?;
    let repair = args.get("repair").unwrap_or("clear").to_owned();
    instance::parse_policy(&repair)?;
    let liveness = match args.get("liveness").unwrap_or("on") {
        "on" => true,
        "off" => false,
        other => bail!("--liveness {other:?}: on or off"),
    };
    let resumable = match args.get("mode").unwrap_or("pubsub") {
        "pubsub" => false,
        "resumable" => true,
        other => bail!("--mode {other:?}: pubsub or resumable"),
    };
    let out = PathBuf::from(args.get("out").unwrap_or("target/chaos"));
    std::fs::create_dir_all(&out)?;
    let command = args.get("command").map_or_else(
        || {
            format!(
                "hydratecache-chaos drive --backend {selection} --duration {}s --seed {seed} --repair {repair}{}{}",
                duration.as_secs(),
                if liveness { "" } else { " --liveness off" },
                if resumable { " --mode resumable" } else { "" }
            )
        },
        str::to_owned,
    );
    println!("chaos: seed {seed} ({command})");
    let mut summaries = Vec::new();
    for backend in &backends {
        let settings = drive::Settings {
            backend: backend.clone(),
            duration,
            seed,
            repair: repair.clone(),
            out: out.clone(),
            keys: args.num("keys", 2000)?,
            instances: args.num("instances", 4)?,
            write_rate: args.num("write-rate", 200)?,
            reads_per_ms: args.num("reads-per-ms", 5)?,
            window_us: args.num::<u64>("window-ms", 10)? * 1000,
            quiet: parse_duration(args.get("quiet").unwrap_or("5s"))?,
            memory_limit_kb: args.num::<u64>("memory-limit-mb", 256)? * 1024,
            bound_us: args.num::<u64>("bound-ms", 1000)? * 1000,
            liveness,
            resumable,
        };
        let summary = match drive::main(settings) {
            Ok(summary) => summary,
            Err(e) => {
                eprintln!("chaos: {backend}: the run itself failed: {e:#}");
                report::Summary {
                    backend: backend.clone(),
                    passed: false,
                    json: json!({"backend": backend, "passed": false, "seed": seed,
                                 "error": format!("{e:#}")}),
                    table: format!("\n== chaos {backend}: ERROR (seed {seed}): {e:#}\n"),
                    timeline: None,
                }
            }
        };
        print!("{}", summary.table);
        summaries.push(summary);
    }
    let passed = summaries.iter().all(|s| s.passed);
    let overview = overview(&summaries);
    let json = json!({
        "command": command, "seed": seed, "duration_s": duration.as_secs_f64(), "repair": repair,
        "passed": passed,
        "backends": summaries.iter().map(|s| (s.backend.clone(), s.json.clone())).collect::<serde_json::Map<String, Value>>(),
    });
    std::fs::write(
        out.join("summary.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(
        out.join("summary.md"),
        format!("`{command}` (seed {seed})\n\n{overview}"),
    )?;
    println!("\nchaos: {command}\n{overview}");
    println!(
        "chaos: {} (seed {seed}); summary in {}",
        if passed { "PASS" } else { "FAIL" },
        out.join("summary.json").display()
    );
    if !passed {
        for s in summaries.iter().filter(|s| !s.passed) {
            match s.json["first_violation"].as_object() {
                Some(v) => println!(
                    "chaos: {} FAILED, seed {seed}; first violated invariant {}: {}",
                    s.backend,
                    v.get("invariant").cloned().unwrap_or_default(),
                    v.get("what").and_then(Value::as_str).unwrap_or("?")
                ),
                None => println!(
                    "chaos: {} FAILED, seed {seed}: {}",
                    s.backend,
                    s.json["error"].as_str().unwrap_or("see above")
                ),
            }
        }
    }
    // Let the servers' temporary directories go before exiting.
    std::thread::sleep(Duration::from_millis(50));
    Ok(passed)
}

/// One markdown table, a column per backend.
fn overview(summaries: &[report::Summary]) -> String {
    let mut out = String::from("| |");
    for s in summaries {
        out.push_str(&format!(" {} |", s.backend));
    }
    out.push_str("\n| --- |");
    for _ in summaries {
        out.push_str(" --- |");
    }
    out.push('\n');
    let columns: Vec<Vec<(&str, String)>> = summaries
        .iter()
        .map(|s| {
            if s.json.get("stale_reads").is_some() {
                report::rows(&s.json)
            } else {
                vec![(
                    "result",
                    format!("ERROR: {}", s.json["error"].as_str().unwrap_or("?")),
                )]
            }
        })
        .collect();
    let Some(longest) = columns.iter().max_by_key(|c| c.len()) else {
        return out;
    };
    for (i, (metric, _)) in longest.iter().enumerate() {
        out.push_str(&format!("| {metric} |"));
        for c in &columns {
            out.push_str(&format!(" {} |", c.get(i).map_or("", |(_, v)| v.as_str())));
        }
        out.push('\n');
    }
    out
}
