//! Running one fault: kill -9 and restart of the server (and a 10 s
//! outage), killed subscriber connections, half-open connections (the
//! instances' proxy stops forwarding), SIGSTOP/SIGCONT of an instance,
//! third-party garbage on the topic, an oversize publish, kill -9 and
//! restart of an instance, kill -9 of the writer between a commit and its
//! publish.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::common::{now_us, TOPIC};
use crate::fleet::{lock, Run};
use crate::schedule::{Fault, FaultKind};
use crate::servers::Servers;
use crate::writer_process::Writers;

/// Runs one fault; returns what happened.
pub(crate) async fn execute(
    run: &Arc<Run>,
    servers: &Arc<Mutex<Servers>>,
    writer: &mut Writers,
    fault: &Fault,
    garbage_sent: &mut u64,
) -> Result<String> {
    let backend = run.settings.backend.clone();
    let url = lock(&run.backend_url).clone();
    match fault.kind {
        FaultKind::ServerKill => {
            let s = Arc::clone(servers);
            tokio::task::spawn_blocking(move || lock(&s).kill9()).await?;
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            let s = Arc::clone(servers);
            let started = Instant::now();
            tokio::task::spawn_blocking(move || lock(&s).start_again()).await??;
            Ok(format!(
                "down {} ms, restarted on the same port in {} ms",
                fault.hold_ms,
                started.elapsed().as_millis()
            ))
        }
        FaultKind::LongOutage => {
            let s = Arc::clone(servers);
            tokio::task::spawn_blocking(move || lock(&s).kill9()).await?;
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            let s = Arc::clone(servers);
            tokio::task::spawn_blocking(move || lock(&s).start_again()).await??;
            Ok(format!("down {} ms, restarted", fault.hold_ms))
        }
        FaultKind::HalfOpen => {
            lock(servers).proxy().freeze();
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            // Seeded: the path comes back, or the middlebox resets the flows.
            let servers = lock(servers);
            if fault.target.is_multiple_of(2) {
                servers.proxy().thaw();
                Ok(format!(
                    "instances' connections silent for {} ms, then forwarded again",
                    fault.hold_ms
                ))
            } else {
                servers.proxy().reset();
                Ok(format!(
                    "instances' connections silent for {} ms, then reset",
                    fault.hold_ms
                ))
            }
        }
        FaultKind::ConnKill => match backend.as_str() {
            "redis" if run.settings.resumable => {
                // Stream readers are plain connections, as the writer's
                // are: the instances' are cut where only theirs pass.
                lock(servers).proxy().reset();
                Ok("instances' connections reset at the proxy".to_owned())
            }
            "postgres" if run.settings.resumable => {
                let out = tokio::task::spawn_blocking(move || {
                    hydratecache_testkit::postgres::psql(
                        &url,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE pid <> pg_backend_pid() AND application_name = 'hydratecache-outbox'",
                    )
                })
                .await??;
                Ok(format!(
                    "pg_terminate_backend of {out} outbox reader connections"
                ))
            }
            "redis" => {
                let n = tokio::task::spawn_blocking(move || {
                    hydratecache_testkit::redis::kill_pubsub_clients(&url)
                })
                .await??;
                Ok(format!("CLIENT KILL TYPE pubsub: {n} connections"))
            }
            "postgres" => {
                let out = tokio::task::spawn_blocking(move || {
                    hydratecache_testkit::postgres::psql(
                        &url,
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE pid <> pg_backend_pid() \
                         AND (application_name = 'hydratecache-listener' OR query LIKE 'LISTEN%')",
                    )
                })
                .await??;
                Ok(format!(
                    "pg_terminate_backend of {out} listener connections"
                ))
            }
            _ => {
                // No server-side kill of one connection: restart the server at once.
                let s = Arc::clone(servers);
                let started = Instant::now();
                tokio::task::spawn_blocking(move || {
                    let mut s = lock(&s);
                    s.kill9();
                    s.start_again()
                })
                .await??;
                Ok(format!(
                    "no per-connection kill on {backend}: server restarted at once ({} ms)",
                    started.elapsed().as_millis()
                ))
            }
        },
        FaultKind::Pause => {
            let pid = {
                let mut fleet = lock(&run.fleet);
                let current = fleet[fault.target].last_mut().context("no instance")?;
                if current.ended_us.is_some() {
                    bail!("{} is not running", current.name());
                }
                current.paused_since = Some(now_us());
                current.pid()
            };
            signal(&pid, "STOP")?;
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            signal(&pid, "CONT")?;
            let mut fleet = lock(&run.fleet);
            if let Some(current) = fleet[fault.target].last_mut() {
                let now = now_us();
                if let Some(since) = current.paused_since.take() {
                    current.pauses.push((since, now));
                }
                current.resumed_at = now;
            }
            Ok(format!(
                "instance {} stopped for {} ms",
                fault.target, fault.hold_ms
            ))
        }
        FaultKind::Garbage => {
            let note = garbage(&backend, &url).await?;
            *garbage_sent += 1;
            Ok(note)
        }
        FaultKind::Oversize => match writer.oversize().await? {
            Ok(note) => Ok(note),
            Err(what) => {
                run.violation(
                    3,
                    format!("oversize publish: {what}"),
                    json!({"fault": "oversize"}),
                );
                Ok(what)
            }
        },
        FaultKind::WriterKill => {
            writer
                .kill_after_commit(Duration::from_millis(fault.hold_ms))
                .await
        }
        FaultKind::InstanceRestart => {
            let (id, inc) = {
                let mut fleet = lock(&run.fleet);
                let current = fleet[fault.target].last_mut().context("no instance")?;
                if current.ended_us.is_none() {
                    let _ = current.child.kill();
                    let _ = current.child.wait();
                    current.killed = true;
                    current.ended_us = Some(now_us());
                }
                (current.id, current.inc + 1)
            };
            tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
            let incarnation = run.spawn_instance(id, inc)?;
            lock(&run.fleet)[id].push(incarnation);
            let started = Instant::now();
            run.wait_ready(id, Duration::from_secs(60)).await?;
            Ok(format!(
                "instance {id} killed, down {} ms, cold start ready in {} ms",
                fault.hold_ms,
                started.elapsed().as_millis()
            ))
        }
    }
}

/// `kill -s SIGNAL PID` (a positive pid: never a group).
fn signal(pid: &str, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .args(["-s", name, pid])
        .stdin(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("kill -s {name} {pid} failed ({status})");
    }
    Ok(())
}

/// Bytes that are not an envelope, published on the topic by a third-party client.
const GARBAGE: &str = "chaos: not a hydratecache envelope";

async fn garbage(backend: &str, url: &str) -> Result<String> {
    match backend {
        "redis" => {
            let url = url.to_owned();
            let out = tokio::task::spawn_blocking(move || {
                hydratecache_testkit::redis::cli(&url, &["PUBLISH", TOPIC, GARBAGE], None)
            })
            .await??;
            Ok(format!(
                "redis-cli PUBLISH {TOPIC}: {} receivers",
                out.trim()
            ))
        }
        "postgres" => {
            let url = url.to_owned();
            tokio::task::spawn_blocking(move || {
                hydratecache_testkit::postgres::psql(
                    &url,
                    &format!("SELECT pg_notify('{TOPIC}', '{GARBAGE}')"),
                )
            })
            .await??;
            Ok(format!("psql pg_notify('{TOPIC}', ...)"))
        }
        "nats" => {
            let client = async_nats::connect(url).await?;
            client
                .publish(TOPIC, bytes::Bytes::from_static(GARBAGE.as_bytes()))
                .await?;
            client.flush().await?;
            Ok(format!("raw async-nats PUB {TOPIC}"))
        }
        "kafka" => {
            use rskafka::client::partition::{Compression, UnknownTopicHandling};
            let bootstrap = url.strip_prefix("kafka://").unwrap_or(url).to_owned();
            let client = rskafka::client::ClientBuilder::new(vec![bootstrap])
                .build()
                .await?;
            let partition = client
                .partition_client(TOPIC, 0, UnknownTopicHandling::Retry)
                .await?;
            let record = rskafka::record::Record {
                key: Some(b"junk".to_vec()),
                value: Some(GARBAGE.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: rskafka::chrono::DateTime::from_timestamp_micros(
                    i64::try_from(now_us()).unwrap_or(0),
                )
                .unwrap_or_default(),
            };
            let offsets = tokio::time::timeout(
                Duration::from_secs(5),
                partition.produce(vec![record], Compression::NoCompression),
            )
            .await??;
            Ok(format!("raw rskafka record at offset {offsets:?}"))
        }
        other => bail!("unknown backend {other:?}"),
    }
}
