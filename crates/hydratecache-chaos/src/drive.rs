//! `hydratecache-chaos drive`: one chaos run per backend.
//!
//! Starts a private PostgreSQL (the source of truth: a table of `keys` rows
//! `(key, version, value)`) and the backend under test (for PostgreSQL the
//! same cluster: the writer then publishes in the `UPDATE`'s transaction),
//! a writer that bumps rows and publishes each new version, and four
//! subscriber instances, each a separate process. Faults follow a schedule
//! drawn from the seed. At the end the writer stops, the instances must
//! agree with the table within the quiet period, and their logs are checked
//! (see `check.rs`).
//!
//! This file runs the phases; the parts live beside it: `servers.rs`,
//! `fleet.rs` (the instance processes), `writer.rs` and `writer_process.rs`
//! (the writer process and the driver's side of it), `schedule.rs` and
//! `faults.rs`, then `check.rs` and `report.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hydratecache_testkit::workload::{key_index, key_name, SplitMix64};
use serde_json::json;
use sqlx::{PgPool, Row as _};

use crate::check::{self, IncarnationRecord, RunFacts};
use crate::common::{now_us, truth_pool, TABLE};
use crate::faults::execute;
use crate::fleet::{compare, lock, Run};
use crate::report::Summary;
use crate::schedule::schedule;
use crate::servers::Servers;
use crate::truth::TruthFile;
use crate::writer_process::{read_commits, Writers};

pub(crate) use crate::fleet::Settings;

/// Installs a `kill` that forwards `kill -9 -PID` as a real process-group
/// kill. procps-ng 4.0.2's `kill` parses `kill -9 -PID` as `kill(-1, SIGKILL)`
/// (every process on the machine), and the testkit's `Process::kill9` ran
/// exactly that; with this shim first on this process's `PATH`, a testkit
/// with that bug kills the servers this run starts and nothing else. It
/// passes every other `kill` through unchanged.
fn install_kill_shim(dir: &Path) -> Result<()> {
    let real = ["/usr/bin/kill", "/bin/kill"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("no kill binary in /usr/bin or /bin")?;
    let shim_dir = dir.join("bin");
    std::fs::create_dir_all(&shim_dir)?;
    let shim = shim_dir.join("kill");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n# hydratecache-chaos: procps-ng 4.0.2 runs `kill -9 -PID` as kill(-1, SIGKILL).\n\
             if [ \"$#\" -eq 2 ] && [ \"$1\" = \"-9\" ]; then\n  case \"$2\" in -[0-9]*) exec {real} -s KILL -- \"$2\";; esac\nfi\nexec {real} \"$@\"\n"
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![shim_dir];
    dirs.extend(std::env::split_paths(&path));
    // Set before any other thread or child exists.
    std::env::set_var("PATH", std::env::join_paths(dirs)?);
    Ok(())
}

pub(crate) fn main(settings: Settings) -> Result<Summary> {
    let dir = settings.out.join(&settings.backend);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    install_kill_shim(&settings.out)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let servers = Servers::start(&settings.backend)?;
    let result = runtime.block_on(run(settings, dir, servers));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

async fn setup_table(pool: &PgPool, keys: usize) -> Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE {TABLE} (key text PRIMARY KEY, version bigint NOT NULL, value text NOT NULL)"
    ))
    .execute(pool)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {TABLE} SELECT 'k' || lpad(i::text, 5, '0'), 1, 'k' || lpad(i::text, 5, '0') || ':1:' \
         FROM generate_series(0, $1 - 1) AS i"
    ))
    .bind(i32::try_from(keys)?)
    .execute(pool)
    .await?;
    Ok(())
}

async fn read_table(pool: &PgPool, keys: usize) -> Result<Vec<u64>> {
    let rows = sqlx::query(&format!("SELECT key, version FROM {TABLE}"))
        .fetch_all(pool)
        .await?;
    let mut out = vec![0u64; keys];
    for row in rows {
        let key: String = row.try_get(0)?;
        let version: i64 = row.try_get(1)?;
        if let Some(k) = key_index(&key).filter(|k| *k < keys) {
            out[k] = u64::try_from(version).unwrap_or(0);
        }
    }
    Ok(out)
}

async fn run(settings: Settings, dir: PathBuf, servers: Servers) -> Result<Summary> {
    let s = settings.clone();
    let truth_url = servers.truth_url();
    let backend_url = servers.url();
    let instance_url = servers.instance_url();
    let servers = Arc::new(Mutex::new(servers));
    println!(
        "chaos: {} for {:?}, seed {}, repair {}, {} keys, {} instances; truth {truth_url}, backend {backend_url}",
        s.backend, s.duration, s.seed, s.repair, s.keys, s.instances
    );
    let pool = truth_pool(&truth_url, 4).await?;
    setup_table(&pool, s.keys).await?;
    if s.resumable && s.backend == "postgres" {
        // Once, before any process uses it: concurrent CREATE TABLE IF NOT
        // EXISTS can collide.
        hydratecache_postgres::PostgresOutboxTransport::migrate(&pool).await?;
    }
    TruthFile::create(&dir.join("truth.bin"), s.keys)?;
    let run = Arc::new(Run {
        settings: s.clone(),
        dir: dir.clone(),
        truth_url: truth_url.clone(),
        backend_url: Mutex::new(backend_url.clone()),
        instance_url,
        exe: std::env::current_exe()?,
        fleet: Mutex::new((0..s.instances).map(|_| Vec::new()).collect()),
        violations: Mutex::new(Vec::new()),
        notes: Mutex::new(Vec::new()),
    });
    for id in 0..s.instances {
        let incarnation = run.spawn_instance(id, 0)?;
        lock(&run.fleet)[id].push(incarnation);
    }
    for id in 0..s.instances {
        run.wait_ready(id, Duration::from_secs(60)).await?;
    }
    let faults = schedule(
        SplitMix64::derive(s.seed, &format!("{}/faults", s.backend)),
        u64::try_from(s.duration.as_millis())?,
        s.instances,
    );
    println!("chaos: fault schedule (seed {}):", s.seed);
    for f in &faults {
        println!(
            "chaos:   at {:>6} ms  {:<32} target instance {}  hold {} ms",
            f.at_ms,
            f.kind.name(),
            f.target,
            f.hold_ms
        );
    }

    // The writer: a process of its own, so that a fault can kill it.
    let mut writers = Writers::start(&run).await?;
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (run, stop) = (Arc::clone(&run), Arc::clone(&monitor_stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                run.monitor();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    // Faults.
    let origin = Instant::now();
    let run_start_us = now_us();
    let mut fault_log = Vec::new();
    let mut garbage_sent = 0u64;
    for fault in &faults {
        tokio::time::sleep_until((origin + Duration::from_millis(fault.at_ms)).into()).await;
        let started = origin.elapsed();
        let t_us = now_us();
        let outcome = execute(&run, &servers, &mut writers, fault, &mut garbage_sent).await;
        if let Some(what) = writers.gone() {
            // Without a writer the rest of the run would check nothing.
            run.violation(
                3,
                format!("the writer {what}"),
                json!({"fault": fault.kind.id()}),
            );
        }
        let note = match outcome {
            Ok(note) => note,
            Err(e) => {
                let note = format!("fault failed: {e:#}");
                eprintln!("chaos: {} at {:?}: {note}", fault.kind.name(), started);
                note
            }
        };
        println!(
            "chaos: {:>6} ms  {:<32} -> {note}",
            started.as_millis(),
            fault.kind.name()
        );
        fault_log.push(json!({
            "at_ms": fault.at_ms, "started_ms": started.as_millis() as u64, "t_us": t_us,
            "kind": fault.kind.id(), "target": fault.target, "hold_ms": fault.hold_ms,
            "took_ms": (origin.elapsed() - started).as_millis() as u64, "note": note,
        }));
    }
    tokio::time::sleep_until((origin + s.duration).into()).await;
    let faults_end_us = now_us();

    // Faults stop; the writer stops; the quiet period begins.
    let writer_stats = writers.stop().await?;
    let commits = read_commits(&dir.join("commits.log"), s.keys)?;
    println!(
        "chaos: faults and writes stopped after {:?}; writer: {writer_stats:?}",
        origin.elapsed(),
    );
    let quiet_start = Instant::now();
    let mut divergent = Vec::new();
    let mut converged_ms = None;
    let mut checks = 0u32;
    while quiet_start.elapsed() < s.quiet {
        tokio::time::sleep(Duration::from_millis(250)).await;
        checks += 1;
        let table = match read_table(&pool, s.keys).await {
            Ok(t) => t,
            Err(e) => {
                run.note(format!("reading the table failed: {e:#}"));
                continue;
            }
        };
        divergent = compare(&run, &table, Duration::from_secs(2));
        if divergent.is_empty() {
            converged_ms = Some(u64::try_from(quiet_start.elapsed().as_millis())?);
            break;
        }
    }
    if let Some(first) = divergent.first() {
        run.violation(
            1,
            format!(
                "{} entries still differ from the table {:?} after the writes stopped; first: {} holds {} at version {} but the table has {}",
                divergent.len(),
                s.quiet,
                first.0,
                key_name(first.1),
                first.2,
                first.3
            ),
            json!({"divergent": divergent.iter().take(20).map(|d| json!({"instance": d.0, "key": key_name(d.1), "held": d.2, "table": d.3})).collect::<Vec<_>>()}),
        );
    }
    println!(
        "chaos: convergence: {} after {checks} checks",
        match converged_ms {
            Some(ms) => format!("every instance agrees with the table after {ms} ms"),
            None => format!("{} divergent entries at the deadline", divergent.len()),
        }
    );

    // Stop the fleet.
    monitor_stop.store(true, Ordering::Release);
    let _ = monitor.await;
    {
        let mut fleet = lock(&run.fleet);
        for slot in fleet.iter_mut() {
            if let Some(current) = slot.last_mut() {
                if current.ended_us.is_none() {
                    current.send("quit");
                }
            }
        }
    }
    let quit_deadline = Instant::now() + Duration::from_secs(5);
    let mut hung = Vec::new();
    {
        let mut fleet = lock(&run.fleet);
        for slot in fleet.iter_mut() {
            if let Some(current) = slot.last_mut() {
                if current.ended_us.is_some() {
                    continue;
                }
                loop {
                    match current.child.try_wait() {
                        Ok(Some(status)) => {
                            current.exit = Some(status.to_string());
                            if !status.success() {
                                hung.push((
                                    current.name(),
                                    format!("exited with {status} at quit"),
                                ));
                            }
                            break;
                        }
                        Ok(None) if Instant::now() < quit_deadline => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        _ => {
                            let _ = current.child.kill();
                            let _ = current.child.wait();
                            hung.push((current.name(), "did not exit within 5 s of quit".into()));
                            break;
                        }
                    }
                }
                current.ended_us = Some(now_us());
            }
        }
    }
    for (name, what) in hung {
        run.violation(3, format!("{name} {what}"), json!({"instance": name}));
    }

    // Check the logs.
    let records: Vec<IncarnationRecord> = {
        let fleet = lock(&run.fleet);
        fleet
            .iter()
            .flatten()
            .map(|i| IncarnationRecord {
                name: i.name(),
                log: i.log.clone(),
                started_us: i.started_us,
                ended_us: i.ended_us.unwrap_or_else(now_us),
                killed: i.killed,
                pauses: i.pauses.clone(),
            })
            .collect()
    };
    let mut fault_counts = BTreeMap::new();
    for f in &faults {
        *fault_counts.entry(f.kind.id()).or_insert(0u64) += 1;
    }
    let facts = RunFacts {
        backend: s.backend.clone(),
        seed: s.seed,
        duration_s: s.duration.as_secs_f64(),
        repair: s.repair.clone(),
        window_us: s.window_us,
        bound_us: s.bound_us,
        resumable: s.resumable,
        memory_limit_kb: s.memory_limit_kb,
        commits,
        writer: writer_stats,
        fault_counts,
        fault_log,
        garbage_sent,
        divergent: divergent.len() as u64,
        converged_ms,
        run_start_us,
        faults_end_us,
        violations: std::mem::take(&mut *lock(&run.violations)),
        notes: std::mem::take(&mut *lock(&run.notes)),
    };
    let summary = check::evaluate(facts, &records)?;
    if let Some(timeline) = &summary.timeline {
        let path = dir.join("timeline.svg");
        std::fs::write(&path, timeline).with_context(|| format!("write {}", path.display()))?;
        println!("chaos: {}: timeline in {}", s.backend, path.display());
    }
    drop(servers);
    Ok(summary)
}
