//! [`PostgresOutboxTransport`]: the resumable mode, on an outbox table.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::adapter::{
    check_envelope, lock, read_ahead_channel, read_ahead_subscription, ClosedFlag, LONGEST_DURATION,
};
use hydratecache_core::{
    Capabilities, Codec, Envelope, Error, PublishOptions, Result, StartFrom, SubscribeOptions,
    Subscription, Transport,
};
use sqlx::{PgPool, Postgres};
use tokio::task::JoinHandle;

use crate::outbox_reader::{self, ReaderCtx, Snapshot};
use crate::tx::{delete_envelope, value_envelope};
use crate::wire::validate_topic;
use crate::BACKEND;

/// The outbox schema (tables and indexes), idempotent: what
/// [`PostgresOutboxTransport::migrate`] runs. Shipped as
/// `migrations/outbox.sql` for your own migration tool.
pub const OUTBOX_MIGRATION: &str = include_str!("../migrations/outbox.sql");

/// Default largest encoded envelope in outbox mode (1 MiB): rows have no
/// NOTIFY payload limit.
pub const OUTBOX_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Default retention of outbox rows: how long a subscriber can be cut off
/// and still catch up.
pub const DEFAULT_OUTBOX_RETENTION: Duration = Duration::from_secs(3600);

/// Rows per read statement.
const PAGE: i64 = 512;

/// Publishes a frame: the row, and the wake-up sent at commit.
const INSERT: &str =
    "WITH row AS (INSERT INTO hydratecache_outbox (topic, envelope) VALUES ($1, $2) RETURNING id) \
     SELECT pg_notify('hydratecache_outbox', $1) FROM row";

/// Deletes rows older than `$1` seconds of ended transactions, and records
/// per topic the largest transaction id deleted.
const TRIM: &str = "WITH gone AS ( \
       DELETE FROM hydratecache_outbox \
       WHERE created_at < now() - make_interval(secs => $1) \
         AND txid < pg_snapshot_xmin(pg_current_snapshot()) \
       RETURNING topic, txid::text::bigint AS txid), \
     per_topic AS (SELECT topic, max(txid) AS max_deleted, count(*) AS n FROM gone GROUP BY topic), \
     noted AS ( \
       INSERT INTO hydratecache_outbox_trimmed (topic, max_deleted) \
       SELECT topic, max_deleted FROM per_topic \
       ON CONFLICT (topic) DO UPDATE SET max_deleted = \
         greatest(hydratecache_outbox_trimmed.max_deleted, EXCLUDED.max_deleted)) \
     SELECT coalesce(sum(n), 0)::bigint FROM per_topic";

/// A [`Transport`] over a PostgreSQL outbox table: each publish is a row of
/// `hydratecache_outbox` (written in your transaction with
/// [`publish_tx`](Self::publish_tx)), with a NOTIFY as the wake-up; each
/// subscription reads the rows that became visible since its last read.
///
/// It is [resumable](Capabilities::resumable): a subscription that cannot
/// read (connection lost, server down or silent) yields
/// [`Event::Interrupted`](hydratecache_core::Event::Interrupted), and once it reads again delivers what was
/// committed meanwhile, then [`Event::Resumed`](hydratecache_core::Event::Resumed). Its position is a snapshot
/// of its own, not a row id: ids are taken when rows are inserted, not when
/// they commit, so "after id N" would skip a transaction that took a lower
/// id and committed later; what became visible between two snapshots skips
/// nothing. A gap ([`GapReason::Reset`](hydratecache_core::GapReason::Reset))
/// only when retention deleted rows it may not have seen.
///
/// Not [`ordered`](Capabilities::ordered): rows come in id order per read,
/// and concurrent transactions commit in any order. The schema comes from
/// [`migrate`](Self::migrate) or `migrations/outbox.sql`.
#[derive(Debug, Clone)]
pub struct PostgresOutboxTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    owns_pool: bool,
    settings: OutboxSettings,
    closed: ClosedFlag,
    readers: Mutex<Vec<JoinHandle<()>>>,
    trimmer: Option<JoinHandle<()>>,
}

/// What the builder sets for outbox mode.
#[derive(Debug, Clone)]
pub(crate) struct OutboxSettings {
    pub(crate) request_timeout: Duration,
    /// Reads without a wake-up this often (the liveness probe); `None`:
    /// every second.
    pub(crate) keepalive: Option<Duration>,
    pub(crate) probe_timeout: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) retention: Option<Duration>,
}

impl PostgresOutboxTransport {
    pub(crate) fn new(pool: PgPool, owns_pool: bool, settings: OutboxSettings) -> Self {
        let trimmer = settings.retention.and_then(|retention| {
            let handle = tokio::runtime::Handle::try_current().ok()?;
            Some(handle.spawn(trim_periodically(
                pool.clone(),
                retention,
                settings.request_timeout,
            )))
        });
        PostgresOutboxTransport {
            inner: Arc::new(Inner {
                pool,
                owns_pool,
                settings,
                closed: ClosedFlag::new(),
                readers: Mutex::new(Vec::new()),
                trimmer,
            }),
        }
    }

    /// The pool it publishes and reads through.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Creates the outbox tables and indexes if missing ([`OUTBOX_MIGRATION`]).
    pub async fn migrate(pool: &PgPool) -> Result<()> {
        sqlx::raw_sql(OUTBOX_MIGRATION)
            .execute(pool)
            .await
            .map(drop)
            .map_err(|e| Error::backend(BACKEND, "create the outbox tables", e))
    }

    /// Deletes the rows committed more than `older_than` ago, noting per
    /// topic what was deleted so that a subscriber that had not read them
    /// gets a gap; returns how many. Runs by itself every quarter of the
    /// retention (at most every 5 minutes) when one is set.
    pub async fn trim(&self, older_than: Duration) -> Result<u64> {
        trim(
            &self.inner.pool,
            older_than,
            self.inner.settings.request_timeout,
        )
        .await
    }

    /// Writes `envelope` for `topic` into the outbox through `executor`,
    /// typically your open transaction: subscribers read it when, and only
    /// if, that transaction commits. Sent as it is (publisher and sequence
    /// are the caller's; [`publish_value_tx`](Self::publish_value_tx) fills
    /// them in).
    pub async fn publish_tx<'c, E>(executor: E, topic: &str, envelope: &Envelope) -> Result<()>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        validate_topic(topic)?;
        check_envelope(BACKEND, &capabilities(), envelope)?;
        let frame = envelope.encode()?;
        sqlx::query(INSERT)
            .bind(topic)
            .bind(frame)
            .execute(executor)
            .await
            .map(drop)
            .map_err(|e| Error::backend(BACKEND, format!("write to the outbox for {topic:?}"), e))
    }

    /// Encodes `value` with `codec` and writes it as an update of `key`
    /// through `executor` (your transaction); returns the envelope. Each
    /// such publish is its own publisher with sequence 1, as with
    /// [`PostgresTransport::publish_value_tx`](crate::PostgresTransport::publish_value_tx).
    pub async fn publish_value_tx<'c, E, T, C>(
        executor: E,
        topic: &str,
        codec: &C,
        key: &str,
        value: &T,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
        C: Codec<T> + ?Sized,
    {
        let envelope = value_envelope(codec, key, value, options)?;
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }

    /// Writes a delete of `key` through `executor`, like
    /// [`publish_value_tx`](Self::publish_value_tx).
    pub async fn delete_tx<'c, E>(
        executor: E,
        topic: &str,
        key: &str,
        options: PublishOptions,
    ) -> Result<Envelope>
    where
        E: sqlx::Executor<'c, Database = Postgres>,
    {
        let envelope = delete_envelope(key, options);
        Self::publish_tx(executor, topic, &envelope).await?;
        Ok(envelope)
    }

    fn reader_ctx(&self, topic: &str) -> ReaderCtx {
        let s = &self.inner.settings;
        let (poll, timeout) = match s.keepalive {
            Some(interval) => (interval.min(Duration::from_secs(1)), s.probe_timeout),
            None => (Duration::from_secs(1), s.request_timeout),
        };
        // Added to `Instant::now()`: capped where that cannot overflow.
        let timeout = timeout.min(LONGEST_DURATION);
        ReaderCtx {
            pool: self.inner.pool.clone(),
            topic: topic.to_owned(),
            poll,
            timeout,
            page: PAGE,
            max_backoff: s.max_backoff,
        }
    }
}

fn capabilities() -> Capabilities {
    Capabilities::new(Some(OUTBOX_MAX_MESSAGE_SIZE))
        .with_ordered(false)
        .with_replay(true)
        .with_resumable(true)
}

async fn trim(pool: &PgPool, older_than: Duration, timeout: Duration) -> Result<u64> {
    let query = sqlx::query_scalar::<_, i64>(TRIM)
        .bind(older_than.as_secs_f64())
        .fetch_one(pool);
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(n)) => Ok(u64::try_from(n).unwrap_or(0)),
        Ok(Err(e)) => Err(Error::backend(BACKEND, "trim the outbox", e)),
        Err(_) => Err(Error::backend(
            BACKEND,
            "trim the outbox",
            format!("no answer within {timeout:?}"),
        )),
    }
}

async fn trim_periodically(pool: PgPool, retention: Duration, timeout: Duration) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match trim(&pool, retention, timeout).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "outbox trimmed"),
            Err(e) => tracing::debug!(error = %e, "outbox trim failed; retried later"),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(trimmer) = &self.trimmer {
            trimmer.abort();
        }
        for reader in lock(&self.readers).drain(..) {
            reader.abort();
        }
    }
}

impl Transport for PostgresOutboxTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.closed.check(BACKEND)?;
            let timeout = self.inner.settings.request_timeout;
            match tokio::time::timeout(timeout, Self::publish_tx(&self.inner.pool, topic, envelope))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(Error::backend(
                    BACKEND,
                    format!("write to the outbox for {topic:?}"),
                    format!(
                        "no answer within {timeout:?}; the row may or may not have been written"
                    ),
                )),
            }
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        async move {
            self.inner.closed.check(BACKEND)?;
            validate_topic(topic)?;
            let replay = matches!(options.start, StartFrom::Earliest);
            let since = if replay {
                Snapshot::nothing()
            } else {
                outbox_reader::snapshot_now(&self.inner.pool, self.inner.settings.request_timeout)
                    .await?
            };
            let (tx, rx) = read_ahead_channel();
            let reader = tokio::spawn(outbox_reader::run(
                self.reader_ctx(topic),
                since,
                replay,
                tx,
            ));
            {
                let mut readers = lock(&self.inner.readers);
                readers.retain(|r| !r.is_finished());
                readers.push(reader);
            }
            Ok(read_ahead_subscription(topic, rx, Arc::clone(&self.inner)))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            if !self.inner.closed.close() {
                return Ok(());
            }
            if let Some(trimmer) = &self.inner.trimmer {
                trimmer.abort();
            }
            for reader in std::mem::take(&mut *lock(&self.inner.readers)) {
                // Its sender goes with it: the subscription's stream ends.
                reader.abort();
            }
            let limit = self.inner.settings.request_timeout;
            if self.inner.owns_pool
                && tokio::time::timeout(limit, self.inner.pool.close())
                    .await
                    .is_err()
            {
                tracing::warn!("postgres outbox close: the pool did not close within {limit:?}");
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publish_wakes_the_readers_channel() {
        assert!(INSERT.contains(&format!("pg_notify('{}'", outbox_reader::WAKE_CHANNEL)));
    }
}
