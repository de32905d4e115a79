//! The writer: bumps rows of the source of truth at a fixed rate, records
//! each commit in the truth file and publishes the new version (for
//! PostgreSQL in the `UPDATE`'s transaction).

use std::time::{Duration, Instant};

use anyhow::Result;
use hydratecache_core::{CborCodec, Channel, Error as CoreError, PublishOptions};
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::workload::{key_name, SplitMix64, Zipf};
use sqlx::{PgPool, Row as _};
use tokio::sync::{mpsc as tmpsc, oneshot, watch};

use crate::common::{now_us, Row, TABLE, TOPIC, ZIPF_S};
use crate::truth::{Truth, TruthFile, RING};

/// Bound on one writer publish; the writer goes on without it.
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(250);
/// Bound on one writer commit.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the writer did.
#[derive(Debug, Default)]
pub(crate) struct WriterStats {
    pub(crate) committed: u64,
    pub(crate) commit_errors: u64,
    pub(crate) uncertain_committed: u64,
    pub(crate) published: u64,
    pub(crate) publish_errors: u64,
    pub(crate) longest_publish_outage_ms: u64,
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
}

/// The writer's state; [`Writer::run`] returns it when it stops.
pub(crate) struct Writer {
    backend: String,
    pool: PgPool,
    channel: Channel<Row>,
    truth: TruthFile,
    versions: Vec<u64>,
    rings: Vec<[u64; RING]>,
    seqs: Vec<u64>,
    /// Per key, commit instant of version v at index v - 1 (version 1: 0).
    pub(crate) commits: Vec<Vec<u64>>,
    pub(crate) stats: WriterStats,
}

impl Writer {
    /// A writer of `keys` keys, all at version 1, publishing on `channel`.
    pub(crate) fn new(
        backend: String,
        pool: PgPool,
        channel: Channel<Row>,
        truth: TruthFile,
        keys: usize,
    ) -> Writer {
        Writer {
            backend,
            pool,
            channel,
            truth,
            versions: vec![1; keys],
            rings: vec![[0; RING]; keys],
            seqs: vec![1; keys],
            commits: vec![vec![0]; keys],
            stats: WriterStats::default(),
        }
    }

    fn record_commit(&mut self, k: usize, version: u64, at: u64) -> Result<()> {
        self.versions[k] = version;
        let ring = &mut self.rings[k];
        ring.rotate_right(1);
        ring[0] = at;
        self.seqs[k] += 1;
        while self.commits[k].len() < (version as usize).saturating_sub(1) {
            self.commits[k].push(at);
        }
        self.commits[k].push(at);
        self.truth.write(
            k,
            self.seqs[k],
            Truth {
                version,
                commits: *ring,
            },
        )
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
            PostgresTransport::publish_value_tx(
                &mut *tx,
                TOPIC,
                &CborCodec::new(),
                &key,
                row,
                PublishOptions::new().version(w),
            )
            .await?;
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

    /// Writes `rate` versions a second until `stop`, serving `commands`.
    pub(crate) async fn run(
        mut self,
        rate: u32,
        seed: u64,
        mut stop: watch::Receiver<bool>,
        mut commands: tmpsc::Receiver<WriterCommand>,
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
                },
                _ = tick.tick() => {
                    if *stop.borrow() {
                        break;
                    }
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
