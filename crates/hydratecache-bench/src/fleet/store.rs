//! The store: the PostgreSQL table of the experiment, read directly, by a
//! cache's loader or in bulk to warm a cache, and the count of its reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use hydratecache_cache::Loaded;
use hydratecache_testkit::workload::key_index;
use sqlx::{PgPool, Row as _};

use crate::fleet::params::{Env, Row, KEYS, VALUE_BYTES};
use crate::pipe::Payload;

/// A new value for the writer's `n`th update.
pub(crate) fn value_for(n: u64) -> Vec<u8> {
    let mut v = vec![0x5a; VALUE_BYTES];
    v[..8].copy_from_slice(&n.to_be_bytes());
    v
}

/// Store reads of one instance: every direct read or loader call, and the
/// loader calls that were the first for their key in this instance.
pub(crate) struct StoreReads {
    total: AtomicU64,
    first: AtomicU64,
    seen: Vec<AtomicBool>,
}

impl StoreReads {
    pub(crate) fn new() -> StoreReads {
        StoreReads {
            total: AtomicU64::new(0),
            first: AtomicU64::new(0),
            seen: (0..KEYS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Counts one store read of `key`.
    pub(crate) fn count(&self, key: &str) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = key_index(key).filter(|&i| i < KEYS) {
            if !self.seen[i].swap(true, Ordering::Relaxed) {
                self.first.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Store reads so far: all, and first loads of a key.
    pub(crate) fn snapshot(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::Relaxed),
            self.first.load(Ordering::Relaxed),
        )
    }
}

/// `SELECT version, value` of `key`.
pub(crate) async fn select(
    pool: &PgPool,
    sql: &str,
    key: &str,
) -> Result<Option<Row>, sqlx::Error> {
    let row = sqlx::query(sql).bind(key).fetch_optional(pool).await?;
    row.map(|r| {
        let version: i64 = r.try_get(0)?;
        let value: Vec<u8> = r.try_get(1)?;
        Ok(Row {
            version: u64::try_from(version).unwrap_or(0),
            value: Payload(value),
        })
    })
    .transpose()
}

/// The whole table as a warm-up stream: one `SELECT` when first polled. A
/// failed query warms nothing (reads then fall through to the loader).
pub(crate) fn warm_rows(
    pool: PgPool,
    table: String,
) -> impl futures::Stream<Item = (String, Loaded<Row>)> + Send + 'static {
    use futures::StreamExt as _;
    futures::stream::once(async move {
        let sql = format!("SELECT key, version, value FROM {table}");
        match sqlx::query(&sql).fetch_all(&pool).await {
            Ok(rows) => rows,
            Err(e) => {
                eprintln!("fleet: warm-up SELECT failed: {e}");
                Vec::new()
            }
        }
    })
    .flat_map(|rows| {
        futures::stream::iter(rows.into_iter().filter_map(|r| {
            let key: String = r.try_get(0).ok()?;
            let version: i64 = r.try_get(1).ok()?;
            let value: Vec<u8> = r.try_get(2).ok()?;
            let version = u64::try_from(version).unwrap_or(0);
            let row = Row {
                version,
                value: Payload(value),
            };
            Some((key, Loaded::new(row).version(version)))
        }))
    })
}

/// Fills the table afresh: every key at version 1.
pub(crate) async fn reset_table(env: &Env) -> Result<()> {
    let t = &env.table;
    sqlx::query(&format!("TRUNCATE {t}"))
        .execute(&env.admin)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO {t} (key, version, value) \
         SELECT 'k' || lpad(i::text, 5, '0'), 1, decode(repeat('5a', {VALUE_BYTES}), 'hex') \
         FROM generate_series(0, {}) AS i",
        KEYS - 1
    ))
    .execute(&env.admin)
    .await?;
    sqlx::query(&format!("VACUUM ANALYZE {t}"))
        .execute(&env.admin)
        .await?;
    Ok(())
}
