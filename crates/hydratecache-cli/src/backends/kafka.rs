//! `kafka://host:port[,host:port]`: hydratecache-kafka.
//!
//! Adapter API used: `KafkaConfig::{from_url, client_id}`,
//! `KafkaBuilder::{request_timeout, create_topics, connect_with}`, `TopicSettings::default`,
//! `KafkaTransport::builder()`, `KafkaTransport::config().brokers()`,
//! `record::to_record` (for the record size).

use std::sync::Arc;

use anyhow::Result;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{Envelope, Transport};
use hydratecache_kafka::{record, KafkaConfig, KafkaTransport, TopicSettings};

use super::{ConnectOptions, ServerInfo, WireSize};

pub(super) struct Kafka(KafkaTransport);

pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Kafka> {
    let config = KafkaConfig::from_url(url)?.client_id("hydratecache-cli");
    let mut builder = KafkaTransport::builder().request_timeout(options.timeout);
    if options.create_topics {
        builder = builder.create_topics(TopicSettings::default());
    }
    Ok(Kafka(builder.connect_with(config).await?))
}

impl super::Adapter for Kafka {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }

    fn server_info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        async move {
            // The Kafka protocol has no "server version" answer (only the
            // API versions each broker supports), and the adapter does not
            // expose them: say what we know.
            Ok(ServerInfo {
                version: None,
                details: vec![("brokers".to_owned(), self.0.config().brokers().join(","))],
            })
        }
        .boxed()
    }

    fn wire_size(&self, envelope: &Envelope) -> WireSize {
        WireSize {
            bytes: record::to_record(envelope).approximate_size(),
            note: Some("record key, value and hc-* headers"),
        }
    }
}
