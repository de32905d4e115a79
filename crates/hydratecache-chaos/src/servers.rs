//! The servers of a run: the PostgreSQL source of truth and the backend
//! under test, which the faults kill and restart.

use anyhow::{bail, Context, Result};
use hydratecache_testkit::kafka::TansuServer;
use hydratecache_testkit::nats::NatsServer;
use hydratecache_testkit::postgres::PostgresServer;
use hydratecache_testkit::redis::RedisServer;

use crate::common::TOPIC;

/// The servers of a run.
pub(crate) struct Servers {
    truth: PostgresServer,
    backend: Backend,
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
        let backend = match backend {
            "redis" => Backend::Redis(RedisServer::start()?),
            "nats" => Backend::Nats(NatsServer::start()?),
            "kafka" => {
                let server = TansuServer::start()?;
                server.create_topic(TOPIC, 1)?;
                Backend::Kafka(server)
            }
            "postgres" => Backend::Truth,
            other => bail!("unknown backend {other:?}"),
        };
        Ok(Servers { truth, backend })
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
