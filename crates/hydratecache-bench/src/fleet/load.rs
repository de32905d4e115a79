//! The load: paced request loops that read Zipf-distributed keys, and the
//! writer that updates them and publishes each new version.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hydratecache_core::{CborCodec, Channel, PublishOptions};
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::workload::{key_name, SplitMix64, Zipf};
use sqlx::PgPool;

use crate::fleet::instance::Reader;
use crate::fleet::params::{Row, KEYS};
use crate::fleet::store::value_for;
use crate::pipe::Payload;

/// One measured read.
pub(crate) struct Read {
    pub(crate) key: u32,
    pub(crate) version: u64,
    /// Since the run's origin.
    pub(crate) start_ns: u64,
    pub(crate) latency_ns: u64,
    /// Served from the cache without a load.
    pub(crate) hit: bool,
}

/// The phases of one mode's run.
#[derive(Clone, Copy)]
pub(crate) struct Clock {
    pub(crate) origin: Instant,
    pub(crate) measure_from: Instant,
    pub(crate) end: Instant,
}

impl Clock {
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }
}

#[derive(Default)]
pub(crate) struct LoopOutcome {
    pub(crate) reads: Vec<Read>,
    pub(crate) errors: u64,
    pub(crate) missing: u64,
    pub(crate) skipped: u64,
    pub(crate) first_error: Option<String>,
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
pub(crate) const MAX_BEHIND: Duration = Duration::from_millis(100);

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
pub(crate) async fn read_loop(
    reader: Reader,
    zipf: Arc<Zipf>,
    seed: u64,
    clock: Clock,
    rate: f64,
) -> LoopOutcome {
    let mut rng = SplitMix64::new(seed);
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
pub(crate) enum Publish {
    Nothing,
    Channel(Channel<Row>),
    Transaction { topic: String },
}

#[derive(Default)]
pub(crate) struct WriterOutcome {
    /// Per key, commit instants (ns since origin) of versions 2, 3, ...
    pub(crate) commits: Vec<Vec<u64>>,
    pub(crate) writes: u64,
    pub(crate) measured_writes: u64,
    pub(crate) skipped: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
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

pub(crate) async fn write_loop(
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
    let mut rng = SplitMix64::new(0xF1EE_7000_0000_0001);
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
