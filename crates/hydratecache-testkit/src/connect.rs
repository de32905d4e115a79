//! A backend URL to its adapter's transport, for the benchmarks and the
//! chaos run (the command line has its own, with its timeouts and server
//! details): the scheme picks the adapter.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use hydratecache_core::Transport;
use hydratecache_kafka::{KafkaBuilder, KafkaTransport};
use hydratecache_nats::NatsTransport;
use hydratecache_postgres::sqlx::PgPool;
use hydratecache_postgres::PostgresTransport;
use hydratecache_redis::RedisTransport;

/// How [`connect`] connects; each adapter's defaults unless set.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// PostgreSQL: publish and listen through this pool instead of one
    /// opened from the URL.
    pub postgres_pool: Option<PgPool>,
    /// Kafka: adjusts the builder's options.
    pub kafka: Option<fn(KafkaBuilder) -> KafkaBuilder>,
    /// Turns off what notices a dead or half-open connection quickly (the
    /// adapters' keepalives and probes), as before bounded staleness: to
    /// show that the chaos run fails without them.
    pub without_liveness: bool,
    /// Each adapter's resumable mode: Redis Streams, JetStream, the
    /// PostgreSQL outbox (its tables must exist); Kafka as it is.
    pub resumable: bool,
}

/// A probe bound long enough to notice nothing (the adapters' earlier
/// behaviour: only their request timeouts).
const NO_PROBE: std::time::Duration = std::time::Duration::from_secs(10);

/// The adapters a URL can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapter {
    Redis,
    Nats,
    Postgres,
    Kafka,
}

fn adapter(url: &str) -> Result<Adapter> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
        .with_context(|| format!("{url:?} is not a backend URL"))?;
    Ok(match scheme.as_str() {
        "redis" | "rediss" => Adapter::Redis,
        "nats" | "tls" => Adapter::Nats,
        "postgres" | "postgresql" => Adapter::Postgres,
        "kafka" => Adapter::Kafka,
        other => bail!("unknown backend URL scheme {other:?} in {url:?}"),
    })
}

/// Connects the transport of `url`: `redis://`, `rediss://`, `nats://`,
/// `tls://`, `postgres://`, `postgresql://` or `kafka://host:port[,host:port]`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Arc<dyn Transport>> {
    Ok(match adapter(url)? {
        Adapter::Redis => {
            let mut builder = RedisTransport::builder();
            if options.without_liveness {
                builder = builder.keepalive_interval(None);
            }
            if options.resumable {
                builder.connect_streams(url).await?.into_arc()
            } else {
                builder.connect(url).await?.into_arc()
            }
        }
        Adapter::Nats => {
            let mut builder = NatsTransport::builder();
            if options.without_liveness {
                // async-nats' own: a ping after 60 s of silence.
                builder = builder.ping_interval(None);
            }
            if options.resumable {
                builder.connect_jetstream(url).await?.into_arc()
            } else {
                builder.connect(url).await?.into_arc()
            }
        }
        Adapter::Postgres => {
            let mut builder = PostgresTransport::builder();
            if options.without_liveness {
                builder = builder.keepalive_interval(None);
            }
            match (&options.postgres_pool, options.resumable) {
                (Some(pool), false) => builder.from_pool(pool.clone()).into_arc(),
                (None, false) => builder.connect(url).await?.into_arc(),
                (Some(pool), true) => builder.outbox_from_pool(pool.clone()).into_arc(),
                (None, true) => builder.connect_outbox(url).await?.into_arc(),
            }
        }
        Adapter::Kafka => {
            let mut builder = KafkaTransport::builder();
            if let Some(adjust) = options.kafka {
                builder = adjust(builder);
            }
            if options.without_liveness {
                builder = builder.probe_timeout(NO_PROBE);
            }
            builder.connect(url).await?.into_arc()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_picks_the_adapter() {
        for (url, want) in [
            ("redis://127.0.0.1:6379", Adapter::Redis),
            ("rediss://h:6380/0", Adapter::Redis),
            ("nats://127.0.0.1:4222", Adapter::Nats),
            ("tls://h:4222", Adapter::Nats),
            ("postgres://u@h/db", Adapter::Postgres),
            ("PostgreSQL://u@h/db", Adapter::Postgres),
            ("kafka://127.0.0.1:9092", Adapter::Kafka),
        ] {
            assert_eq!(adapter(url).ok(), Some(want), "{url}");
        }
        for url in ["127.0.0.1:6379", "http://127.0.0.1:80"] {
            let err = adapter(url).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains(url)), "{url}");
        }
    }
}
