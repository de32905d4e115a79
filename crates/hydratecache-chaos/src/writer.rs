//! The writer: bumps rows of the source of truth at a fixed rate, records
//! each commit in the truth file and the commit log, and publishes the new
//! version (for PostgreSQL in the `UPDATE`'s transaction). It runs as a
//! process of its own (`hydratecache-chaos writer`, see `writer_process.rs`
//! for the driver's side) so that a fault can kill it with -9 between a
//! commit and its publish.

use std::fs::File;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hydratecache_core::{CborCodec, Channel, Error as CoreError, PublishOptions, Transport};
use hydratecache_postgres::{PostgresOutboxTransport, PostgresTransport};
use hydratecache_testkit::connect::{connect, ConnectOptions};
use hydratecache_testkit::workload::{key_index, key_name, SplitMix64, Zipf};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{PgPool, Row as _};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::common::{connect_options, now_us, truth_pool, Args, Row, TABLE, TOPIC, ZIPF_S};
use crate::truth::{Truth, TruthFile, RING};

/// Bound on one writer publish; the writer goes on without it.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on one writer commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a writer keeps trying to connect at start.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// A held commit is one of a key this hot (by Zipf rank): one the
/// instances read, so that its lost publish shows.
const HOT_KEYS: usize = 50;

/// What the writer did.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct WriterStats {
    pub(crate) committed: u64,
    pub(crate) commit_errors: u64,
    pub(crate) uncertain_committed: u64,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) longest_publish_outage_ms: u64,
    /// Writers killed with -9 between a commit and its publish.
    #[serde(default)]
    pub(crate) killed: u64,
}

impl WriterStats {
    /// Adds what another incarnation of the writer did.
    pub(crate) fn add(&mut self, other: &WriterStats) {
        self.committed += other.committed;
        self.commit_errors += other.commit_errors;
        self.uncertain_committed += other.uncertain_committed;
        self.published += other.published;
        self.publish_errors += other.publish_errors;
        self.longest_publish_outage_ms = self
            .longest_publish_outage_ms
            .max(other.longest_publish_outage_ms);
        self.killed += other.killed;
    }
}

/// The value of version `version` of key `key`.
fn value_for(key: usize, version: u64) -> String {
    format!("{}:{version}:{}", key_name(key), "v".repeat(48))
}

/// What the driver asks of the writer, between two writes.
pub(crate) enum WriterCommand {
    /// Publish a value over the size limit; answer what happened (an
    /// error when the publisher did not refuse it as it should).
    Oversize(oneshot::Sender<Result<String, String>>),
    /// After the next commit of a hot key, say so (`held`) and publish
    /// nothing more: the driver kills the process there.
    Hold,
}

/// The writer's state; [`Writer::run`] returns it when it stops.
pub(crate) struct Writer {
    backend: String,
    pool: PgPool,
    channel: Channel<Row>,
    truth: TruthFile,
    /// One line `key version commit_us` per commit, appended.
    commit_log: File,
    versions: Vec<u64>,
    rings: Vec<[u64; RING]>,
    hold: bool,
    /// PostgreSQL: publish into the outbox (resumable mode) rather than
    /// with NOTIFY.
    outbox: bool,
    pub(crate) stats: WriterStats,
}

impl Writer {
    /// A writer of `keys` keys that goes on from the versions in the table
    /// and the commit instants in the truth file, publishing on `channel`.
    async fn open(
        backend: String,
        pool: PgPool,
        channel: Channel<Row>,
        truth: TruthFile,
        commit_log: &Path,
        keys: usize,
    ) -> Result<Writer> {
        let mut versions = vec![1; keys];
        let rows = sqlx::query(&format!("SELECT key, version FROM {TABLE}"))
            .fetch_all(&pool)
            .await?;
        for row in rows {
            let key: String = row.try_get(0)?;
            let version: i64 = row.try_get(1)?;
            if let Some(k) = key_index(&key).filter(|k| *k < keys) {
                versions[k] = u64::try_from(version).unwrap_or(1);
            }
        }
        let rings = (0..keys)
            .map(|k| truth.read(k).map_or([0; RING], |t| t.commits))
            .collect();
        let commit_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(commit_log)
            .with_context(|| format!("open {}", commit_log.display()))?;
        Ok(Writer {
            backend,
            pool,
            channel,
            truth,
            commit_log,
            versions,
            rings,
            hold: false,
            outbox: false,
            stats: WriterStats::default(),
        })
    }

    fn record_commit(&mut self, k: usize, version: u64, at: u64) -> Result<()> {
        self.versions[k] = version;
        let ring = &mut self.rings[k];
        ring.rotate_right(1);
        ring[0] = at;
        // The truth file first: an instance's read must never find a
        // version older than what a delivery already showed it.
        self.truth.write(
            k,
            version,
            Truth {
                version,
                commits: *ring,
            },
        )?;
        // One write call a line: a kill -9 leaves whole lines.
        self.commit_log
            .write_all(format!("{k} {version} {at}\n").as_bytes())
            .context("append to the commit log")
    }

    /// Commits version `w` of key `k`; for PostgreSQL with its notification
    /// in the same transaction.
    async fn commit(&self, k: usize, w: u64, row: &Row) -> Result<()> {
        let key = key_name(k);
        let update = format!("UPDATE {TABLE} SET version = $1, value = $2 WHERE key = $3");
        let version = i64::try_from(w)?;
        if self.backend == "postgres" {
            let mut tx = self.pool.begin().await?;
            sqlx::query(&update)
                .bind(version)
                .bind(&row.value)
                .bind(&key)
                .execute(&mut *tx)
                .await?;
            let options = PublishOptions::new().version(w);
            let codec = CborCodec::new();
            if self.outbox {
                PostgresOutboxTransport::publish_value_tx(
                    &mut *tx, TOPIC, &codec, &key, row, options,
                )
                .await?;
            } else {
                PostgresTransport::publish_value_tx(&mut *tx, TOPIC, &codec, &key, row, options)
                    .await?;
            }
            tx.commit().await?;
        } else {
            sqlx::query(&update)
                .bind(version)
                .bind(&row.value)
                .bind(&key)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// After a failed commit: was it committed? Asks the table until it answers.
    async fn resolve(&mut self, k: usize, w: u64, sent_at: u64, stop: &watch::Receiver<bool>) {
        let sql = format!("SELECT version FROM {TABLE} WHERE key = $1");
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = tokio::time::timeout(
                Duration::from_secs(1),
                sqlx::query(&sql).bind(key_name(k)).fetch_one(&self.pool),
            )
            .await;
            if let Ok(Ok(row)) = answer {
                let version: i64 = row.try_get(0).unwrap_or(0);
                if u64::try_from(version).unwrap_or(0) == w {
                    // Committed, answer lost: when exactly is unknown, so the
                    // earliest possible instant (conservative for staleness).
                    self.stats.uncertain_committed += 1;
                    let _ = self.record_commit(k, w, sent_at);
                }
                return;
            }
            if *stop.borrow() && Instant::now() > give_up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn oversize(&self) -> Result<String, String> {
        let limit = self
            .channel
            .transport()
            .capabilities()
            .max_message_size
            .unwrap_or(1 << 20);
        let before = self.channel.last_sequence();
        let row = Row {
            version: 0,
            value: "x".repeat(limit + 1),
        };
        let result = self.channel.publish(&key_name(0), &row).await;
        let after = self.channel.last_sequence();
        match result {
            Err(CoreError::PayloadTooLarge { size, limit, .. }) if before == after => Ok(format!(
                "refused at the publisher: PayloadTooLarge (size {size}, limit {limit}), no sequence number spent"
            )),
            Err(CoreError::PayloadTooLarge { .. }) => Err(format!(
                "PayloadTooLarge, but the sequence moved from {before} to {after}"
            )),
            Err(e) => Err(format!("failed with another error than PayloadTooLarge: {e}")),
            Ok(receipt) => Err(format!(
                "an oversize publish ({} bytes over a limit of {limit}) was accepted: {receipt:?}",
                limit + 1
            )),
        }
    }

    /// Writes `rate` versions a second until `stop`, serving `commands`
    /// and showing its stats on `stats`.
    async fn run(
        mut self,
        rate: u32,
        seed: u64,
        mut stop: watch::Receiver<bool>,
        mut commands: tmpsc::Receiver<WriterCommand>,
        stats: watch::Sender<WriterStats>,
    ) -> Writer {
        let keys = self.versions.len();
        let zipf = Zipf::new(keys, ZIPF_S);
        let mut rng = SplitMix64::new(seed);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                Some(command) = commands.recv() => match command {
                    WriterCommand::Oversize(reply) => {
                        let _ = reply.send(self.oversize().await);
                    }
                    WriterCommand::Hold => self.hold = true,
                },
                _ = tick.tick() => {
                    if *stop.borrow() {
                        break;
                    }
                    stats.send_replace(self.stats.clone());
                    let k = zipf.sample(&mut rng);
                    let w = self.versions[k] + 1;
                    let row = Row { version: w, value: value_for(k, w) };
                    let sent_at = now_us();
                    match tokio::time::timeout(COMMIT_TIMEOUT, self.commit(k, w, &row)).await {
                        Ok(Ok(())) => {
                            self.stats.committed += 1;
                            if let Err(e) = self.record_commit(k, w, now_us()) {
                                eprintln!("chaos: truth file: {e:#}");
                            }
                        }
                        _ => {
                            self.stats.commit_errors += 1;
                            let stop_rx = stop.clone();
                            self.resolve(k, w, sent_at, &stop_rx).await;
                            continue;
                        }
                    }
                    if self.hold && k < HOT_KEYS {
                        // Committed, not published: killed here.
                        say(&json!({"e": "held", "t": now_us(), "k": k, "w": w, "stats": self.stats}));
                        std::future::pending::<()>().await;
                    }
                    if self.backend == "postgres" {
                        // Published in the transaction.
                        continue;
                    }
                    let published = tokio::time::timeout(
                        PUBLISH_TIMEOUT,
                        self.channel.publish_with(&key_name(k), &row, PublishOptions::new().version(w)),
                    )
                    .await;
                    match published {
                        Ok(Ok(_)) => {
                            self.stats.published += 1;
                            if let Some(since) = failing_since.take() {
                                let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
                                self.stats.longest_publish_outage_ms = self.stats.longest_publish_outage_ms.max(ms);
                            }
                        }
                        _ => {
                            self.stats.publish_errors += 1;
                            failing_since.get_or_insert_with(Instant::now);
                        }
                    }
                }
            }
        }
        if let Some(since) = failing_since {
            let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.stats.longest_publish_outage_ms = self.stats.longest_publish_outage_ms.max(ms);
        }
        self
    }
}

/// One line of JSON on standard output, for the driver.
fn say(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

/// `hydratecache-chaos writer ...`: the writer process. Standard output
/// carries `ready`, a `stats` line every 500 ms, the answers to `oversize`
/// and `hold`, and `stopped` (with the final stats) after `stop` or the end
/// of standard input.
pub(crate) fn main(args: &Args) -> Result<()> {
    let backend = args.need("backend")?.to_owned();
    let url = args.need("url")?.to_owned();
    let truth_url = args.need("truth-url")?.to_owned();
    let truth_file = PathBuf::from(args.need("truth-file")?);
    let commit_log = PathBuf::from(args.need("commit-log")?);
    let keys: usize = args.num("keys", 2000)?;
    let rate: u32 = args.num("rate", 200)?;
    let seed: u64 = args.num("seed", 1)?;
    let resumable = args.get("mode") == Some("resumable");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let deadline = Instant::now() + START_DEADLINE;
        let (pool, transport) = loop {
            let attempt = async {
                let pool = truth_pool(&truth_url, 4).await?;
                let options = ConnectOptions {
                    resumable,
                    ..connect_options(&pool)
                };
                let transport: Arc<dyn Transport> = connect(&url, &options)
                    .await
                    .context("connect the writer's transport")?;
                anyhow::Ok((pool, transport))
            };
            match attempt.await {
                Ok(connected) => break connected,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let channel = Channel::<Row>::new(Arc::clone(&transport), TOPIC);
        let mut writer = Writer::open(
            backend.clone(),
            pool,
            channel.clone(),
            TruthFile::open_rw(&truth_file)?,
            &commit_log,
            keys,
        )
        .await?;
        writer.outbox = resumable;
        // PostgreSQL publishes in each transaction: no publisher to heartbeat.
        let (heartbeat_stop, heartbeat_stopped) = oneshot::channel::<()>();
        let heartbeats = (backend != "postgres").then(|| {
            // The interval LocalCache's default bound is timed for: the
            // lease reveals a writer that died, a heartbeat a lost last message.
            let interval = hydratecache_cache::DEFAULT_HEARTBEAT_INTERVAL;
            tokio::spawn(channel.clone().run_heartbeats(interval, async move {
                let _ = heartbeat_stopped.await;
            }))
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let (command_tx, command_rx) = tmpsc::channel(4);
        // Commands from the driver; the end of input stops the writer.
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match line.trim() {
                    "oversize" => {
                        let (reply, answer) = oneshot::channel();
                        if command_tx
                            .blocking_send(WriterCommand::Oversize(reply))
                            .is_err()
                        {
                            break;
                        }
                        let answer = handle.block_on(answer);
                        let (ok, note) = match answer {
                            Ok(Ok(note)) => (true, note),
                            Ok(Err(what)) => (false, what),
                            Err(_) => (false, "the writer is gone".to_owned()),
                        };
                        say(&json!({"e": "oversize", "ok": ok, "note": note}));
                    }
                    "hold" if command_tx.blocking_send(WriterCommand::Hold).is_err() => break,
                    "stop" => break,
                    _ => {}
                }
            }
            let _ = stop_tx.send(true);
        });
        say(&json!({"e": "ready", "t": now_us(), "pid": std::process::id()}));
        let (stats_tx, mut stats_rx) = watch::channel(WriterStats::default());
        let running = tokio::spawn(writer.run(rate, seed, stop_rx, command_rx, stats_tx));
        let reporter = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let stats = stats_rx.borrow_and_update().clone();
                say(&json!({"e": "stats", "stats": stats}));
            }
        });
        let writer = running.await.context("the writer task failed")?;
        reporter.abort();
        // A goodbye: an orderly departure is no loss.
        let _ = heartbeat_stop.send(());
        if let Some(h) = heartbeats {
            let _ = h.await;
        }
        let _ = transport.close().await;
        say(&json!({"e": "stopped", "t": now_us(), "stats": writer.stats}));
        Ok(())
    })
}
