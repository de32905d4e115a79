//! What the driver and the instances share: the cached row, the wall clock,
//! the connections to the source of truth and the backend, and the
//! command-line arguments.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use hydratecache_kafka::TopicSettings;
use hydratecache_testkit::connect::ConnectOptions;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Backends the run knows, in the order `all` runs them.
pub(crate) const BACKENDS: &[&str] = &["redis", "nats", "postgres", "kafka"];

/// Whether `backend`'s adapter keeps one publisher's order
/// (`Capabilities::ordered`): all but Kafka, whose topic has partitions.
pub(crate) fn ordered(backend: &str, resumable: bool) -> bool {
    match backend {
        "kafka" => false,
        // JetStream and the outbox: `Capabilities::ordered` is false.
        "nats" | "postgres" => !resumable,
        _ => true,
    }
}

/// Whether the transport keeps only the last message of each key, so that
/// a message followed by a newer one of its key may never be delivered
/// (JetStream): no loss, as the newer one is.
pub(crate) fn compacted(backend: &str, resumable: bool) -> bool {
    resumable && backend == "nats"
}

/// The topic every process of a run uses.
pub(crate) const TOPIC: &str = "chaos_kv";

/// The table of the source of truth.
pub(crate) const TABLE: &str = "chaos_kv";

/// Zipf exponent of reads and writes.
pub(crate) const ZIPF_S: f64 = 1.0;

/// Microseconds since the Unix epoch (CLOCK_REALTIME, shared by every
/// process on this machine).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// One row of the source of truth, as cached and as broadcast: the version
/// travels inside the value too, so a read knows which version it returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    pub(crate) version: u64,
    pub(crate) value: String,
}

/// How the driver and the instances connect to the backend (with
/// `hydratecache_testkit::connect`): PostgreSQL publishes through `pool` (the
/// source of truth and the backend are then one cluster); Kafka creates the
/// topic and fails fast enough for the faults.
pub(crate) fn connect_options(pool: &PgPool) -> ConnectOptions {
    ConnectOptions {
        postgres_pool: Some(pool.clone()),
        kafka: Some(|builder| {
            builder
                .create_topics(TopicSettings::default())
                .request_timeout(Duration::from_secs(5))
                .retry_backoff_max(Duration::from_millis(500))
        }),
        without_liveness: false,
        resumable: false,
    }
}

/// A pool on the source of truth. Commits are synchronous (WAL written to
/// the OS before `COMMIT` returns) whatever the server's default, so that a
/// kill -9 of the server never takes back a commit the writer saw succeed.
pub(crate) async fn truth_pool(url: &str, connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = url
        .parse::<PgConnectOptions>()
        .context("parse the PostgreSQL URL")?
        .options([("synchronous_commit", "on")]);
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(1))
        .connect_with(options)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// Simple `--name value` arguments.
#[derive(Debug, Default)]
pub(crate) struct Args {
    pairs: Vec<(String, String)>,
    pub(crate) positional: Vec<String>,
}

impl Args {
    pub(crate) fn parse(args: &[String]) -> Result<Args> {
        let mut out = Args::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let value = it
                    .next()
                    .with_context(|| format!("--{name} needs a value"))?;
                out.pairs.push((name.to_owned(), value.clone()));
            } else {
                out.positional.push(a.clone());
            }
        }
        Ok(out)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn need(&self, name: &str) -> Result<&str> {
        self.get(name).with_context(|| format!("missing --{name}"))
    }

    pub(crate) fn num<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| anyhow::anyhow!("--{name} {v:?} is not a number")),
        }
    }
}

/// Parses `60s`, `1500ms`, `2m` or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        other => bail!("unknown unit {other:?} in {s:?} (use ms, s or m)"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s").ok(), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("15").ok(), Some(Duration::from_secs(15)));
        assert_eq!(
            parse_duration("1500ms").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
    }
}
