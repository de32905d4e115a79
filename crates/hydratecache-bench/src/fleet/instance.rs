//! One reader instance: its pool, and in the cached modes its
//! `LocalCache` and transport.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hydratecache_cache::{CacheStats, Loaded, LocalCache};
use hydratecache_core::{BoxError, Channel, MemoryTransport, Transport};
use hydratecache_postgres::PostgresTransport;
use hydratecache_testkit::connect::{connect, ConnectOptions};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::fleet::params::{Env, Mode, Row, CACHE_ENTRIES, LOOPS_PER_INSTANCE, TTL};
use crate::fleet::store::{select, warm_rows, StoreReads};

/// How one instance reads.
#[derive(Clone)]
pub(crate) enum Reader {
    Direct {
        pool: PgPool,
        sql: Arc<str>,
        reads: Arc<StoreReads>,
    },
    Cached(Arc<LocalCache<Row>>),
}

impl Reader {
    /// The version read, and whether the cache held it.
    pub(crate) async fn read(&self, key: &str) -> Result<Option<(u64, bool)>> {
        match self {
            Reader::Direct { pool, sql, reads } => {
                reads.count(key);
                Ok(select(pool, sql, key).await?.map(|r| (r.version, false)))
            }
            Reader::Cached(cache) => {
                // `fetch` is `get`, then a load on a miss: split to know which served.
                if let Some(row) = cache.get(key) {
                    return Ok(Some((row.version, true)));
                }
                Ok(cache.fetch(key).await?.map(|r| (r.version, false)))
            }
        }
    }
}

/// One reader instance: its pool, its cache and transport.
pub(crate) struct Instance {
    pub(crate) reader: Reader,
    pub(crate) pool: PgPool,
    pub(crate) transport: Option<Arc<dyn Transport>>,
    pub(crate) reads: Arc<StoreReads>,
}

impl Instance {
    /// Starts an instance of `mode` on `topic`; a cache is warm when this returns.
    pub(crate) async fn start(mode: Mode, env: &Env, topic: &str) -> Result<Instance> {
        let pool = PgPoolOptions::new()
            .max_connections(LOOPS_PER_INSTANCE as u32)
            .connect(&env.pg_url)
            .await
            .context("connect a reader's pool")?;
        let reads = Arc::new(StoreReads::new());
        let sql: Arc<str> = Arc::from(format!(
            "SELECT version, value FROM {} WHERE key = $1",
            env.table
        ));
        let transport: Arc<dyn Transport> = match mode {
            Mode::NoCache => {
                return Ok(Instance {
                    reader: Reader::Direct {
                        pool: pool.clone(),
                        sql,
                        reads: Arc::clone(&reads),
                    },
                    pool,
                    transport: None,
                    reads,
                })
            }
            Mode::Ttl => MemoryTransport::new().into_arc(),
            Mode::Redis => connect(&env.redis_url, &ConnectOptions::default())
                .await
                .context("connect a reader's Redis transport")?,
            Mode::PostgresTx => PostgresTransport::from_pool(pool.clone()).into_arc(),
        };
        let ttl = (mode == Mode::Ttl).then_some(TTL);
        let loader = {
            let (pool, reads) = (pool.clone(), Arc::clone(&reads));
            move |key: String| {
                let (pool, sql, reads) = (pool.clone(), Arc::clone(&sql), Arc::clone(&reads));
                async move {
                    reads.count(&key);
                    let row = select(&pool, &sql, &key).await.map_err(BoxError::from)?;
                    Ok(row.map(|row| {
                        let version = row.version;
                        let loaded = Loaded::new(row).version(version);
                        match ttl {
                            Some(ttl) => loaded.ttl(ttl),
                            None => loaded,
                        }
                    }))
                }
            }
        };
        let mut builder = LocalCache::builder(Channel::<Row>::new(Arc::clone(&transport), topic))
            .max_entries(CACHE_ENTRIES)
            .loader(loader);
        if mode != Mode::Ttl {
            // A broadcast-fed cache starts warm: one bulk SELECT, run by the
            // cache after it subscribed, so no update can fall in between.
            builder = builder.warm_from(warm_rows(pool.clone(), env.table.clone()));
        }
        let cache = builder.build().await.context("build a reader's cache")?;
        tokio::time::timeout(Duration::from_secs(30), cache.ready())
            .await
            .context("a reader's cache did not get warm within 30 s")?;
        Ok(Instance {
            reader: Reader::Cached(Arc::new(cache)),
            pool,
            transport: Some(transport),
            reads,
        })
    }

    /// Closes the cache, the transport and the pool; returns the cache's stats.
    pub(crate) async fn close(self) -> Result<Option<CacheStats>> {
        let stats = match self.reader {
            Reader::Cached(cache) => {
                let stats = cache.stats();
                match Arc::try_unwrap(cache) {
                    Ok(cache) => cache.close().await?,
                    Err(cache) => drop(cache),
                }
                Some(stats)
            }
            Reader::Direct { .. } => None,
        };
        if let Some(transport) = self.transport {
            transport.close().await?;
        }
        self.pool.close().await;
        Ok(stats)
    }
}
