//! The experiment's parameters, its four modes, the row it stores and what
//! every mode shares.

use std::sync::Arc;
use std::time::Duration;

use hydratecache_testkit::workload::Zipf;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::pipe::Payload;

/// Reader instances (separate tokio tasks, each with its own clients).
pub(crate) const INSTANCES: usize = 4;
/// Concurrent request loops per instance, sharing its pool and cache.
pub(crate) const LOOPS_PER_INSTANCE: usize = 4;
/// Keys in the store.
pub(crate) const KEYS: usize = 10_000;
/// Bytes of each value.
pub(crate) const VALUE_BYTES: usize = 128;
/// Zipf exponent of the key popularity.
pub(crate) const ZIPF_S: f64 = 1.0;
/// Share of all operations that are updates.
pub(crate) const WRITE_SHARE: f64 = 0.01;
/// Default target reads per second of each instance.
pub(crate) const DEFAULT_RATE: f64 = 2_000.0;
/// TTL of mode (b).
pub(crate) const TTL: Duration = Duration::from_secs(5);
/// Stale reads up to this old are "within the propagation window".
pub(crate) const WINDOW: Duration = Duration::from_millis(10);
/// Cache capacity: the whole key space fits.
pub(crate) const CACHE_ENTRIES: u64 = 2 * KEYS as u64;

/// One row of the store, as cached and as broadcast.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) version: u64,
    pub(crate) value: Payload,
}

/// How the readers read: the four modes the experiment compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    NoCache,
    Ttl,
    Redis,
    PostgresTx,
}

impl Mode {
    pub(crate) const ALL: [Mode; 4] = [Mode::NoCache, Mode::Ttl, Mode::Redis, Mode::PostgresTx];

    /// The mode's short name, in the JSON rows.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::NoCache => "no-cache",
            Mode::Ttl => "ttl-5s",
            Mode::Redis => "redis",
            Mode::PostgresTx => "postgres-tx",
        }
    }

    /// The mode's name in the table.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Mode::NoCache => "(a) no local cache",
            Mode::Ttl => "(b) TTL 5 s, no broadcast",
            Mode::Redis => "(c) LocalCache over Redis",
            Mode::PostgresTx => "(d) LocalCache over NOTIFY, tx",
        }
    }
}

/// What the whole experiment shares.
pub(crate) struct Env {
    pub(crate) pg_url: String,
    pub(crate) redis_url: String,
    pub(crate) table: String,
    pub(crate) admin: PgPool,
    pub(crate) zipf: Arc<Zipf>,
    pub(crate) rate: f64,
    pub(crate) warmup: Duration,
    pub(crate) measured: Duration,
}
