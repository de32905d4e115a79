//! The servers of a run: the PostgreSQL source of truth and the backend
//! under test, which the faults kill and restart, and the proxy the
//! instances reach the backend through, which the half-open fault freezes.

use anyhow::{bail, Context, Result};
use hydratecache_testkit::kafka::TansuServer;
use hydratecache_testkit::nats::NatsServer;
use hydratecache_testkit::postgres::PostgresServer;
use hydratecache_testkit::redis::RedisServer;
use hydratecache_testkit::Proxy;

use crate::common::TOPIC;

/// The servers of a run.
pub(crate) struct Servers {
    truth: PostgresServer,
    backend: Backend,
    /// In front of the backend, for the instances (the writer connects
    /// directly, but on Kafka, whose broker advertises the proxy).
    proxy: Proxy,
    instance_url: String,
}

enum Backend {
    Redis(RedisServer),
    Nats(NatsServer),
    Kafka(TansuServer),
    /// PostgreSQL: the source of truth is the backend.
    Truth,
}

impl Servers {
    /// Starts the source of truth and the server of `backend`.
    pub(crate) fn start(backend: &str) -> Result<Servers> {
        let truth = PostgresServer::start().context("start the PostgreSQL source of truth")?;
        let (backend, proxy, instance_url) = match backend {
            "kafka" => {
                // The broker hands out its advertised address: the proxy's.
                let proxy_port = hydratecache_testkit::free_port()?;
                let server = TansuServer::start_advertising(proxy_port)?;
                let upstream = std::net::SocketAddr::from(([127, 0, 0, 1], server.port()));
                let proxy = Proxy::start_on(proxy_port, upstream)?;
                server.create_topic(TOPIC, 1)?;
                let url = format!("kafka://127.0.0.1:{proxy_port}");
                (Backend::Kafka(server), proxy, url)
            }
            other => {
                let backend = match other {
                    "redis" => Backend::Redis(RedisServer::start()?),
                    "nats" => Backend::Nats(NatsServer::start()?),
                    "postgres" => Backend::Truth,
                    other => bail!("unknown backend {other:?}"),
                };
                let direct = match &backend {
                    Backend::Redis(s) => s.url(),
                    Backend::Nats(s) => s.url(),
                    Backend::Kafka(s) => s.url(),
                    Backend::Truth => truth.url(),
                };
                let (proxy, url) = Proxy::in_front_of(&direct)?;
                (backend, proxy, url)
            }
        };
        Ok(Servers {
            truth,
            backend,
            proxy,
            instance_url,
        })
    }

    /// The URL the instances use: through the proxy.
    pub(crate) fn instance_url(&self) -> String {
        self.instance_url.clone()
    }

    /// The proxy in front of the backend.
    pub(crate) fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// The URL of the source of truth.
    pub(crate) fn truth_url(&self) -> String {
        self.truth.url()
    }

    /// The URL of the backend under test.
    pub(crate) fn url(&self) -> String {
        match &self.backend {
            Backend::Redis(s) => s.url(),
            Backend::Nats(s) => s.url(),
            Backend::Kafka(s) => s.url(),
            Backend::Truth => self.truth.url(),
        }
    }

    /// Kills the backend's server with SIGKILL.
    pub(crate) fn kill9(&mut self) {
        match &mut self.backend {
            Backend::Redis(s) => s.kill9(),
            Backend::Nats(s) => s.kill9(),
            Backend::Kafka(s) => s.kill9(),
            Backend::Truth => self.truth.kill9(),
        }
    }

    /// Restarts the backend's server on the same port.
    pub(crate) fn start_again(&mut self) -> Result<()> {
        match &mut self.backend {
            Backend::Redis(s) => s.start_again(),
            Backend::Nats(s) => s.start_again(),
            Backend::Kafka(s) => {
                s.start_again()?;
                // Memory storage lost every topic: recreate it (the clients'
                // `create_topics` may have been quicker).
                match s.create_topic(TOPIC, 1) {
                    Err(e) if format!("{e:#}").contains("already exists") => Ok(()),
                    other => other,
                }
            }
            Backend::Truth => self.truth.start_again(),
        }
    }
}
