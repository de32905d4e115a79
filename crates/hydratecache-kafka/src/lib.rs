#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod config;
mod cursor;
mod producer;
mod reader;
pub mod record;
mod replay;
mod sink;
mod subscription;
mod topics;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use builder::{
    KafkaBuilder, TopicSettings, DEFAULT_FETCH_MAX_WAIT, DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_PROBE_TIMEOUT, DEFAULT_SUBSCRIPTION_BUFFER, DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
    MAX_LINGER,
};
pub use config::KafkaConfig;
pub use transport::KafkaTransport;

/// The backend name in errors and logs.
pub const BACKEND: &str = "kafka";

/// What went wrong below the transport, kept as the `source` of
/// [`hydratecache_core::Error::Backend`].
#[derive(Debug)]
#[non_exhaustive]
pub enum KafkaError {
    /// The rskafka client failed.
    Client(rskafka::client::error::Error),
    /// No answer within the configured bound.
    Timeout(Duration),
    /// The broker's answers did not make sense.
    Protocol(&'static str),
}

impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KafkaError::Client(e) => write!(f, "{e}"),
            KafkaError::Timeout(d) => write!(f, "no answer within {d:?}"),
            KafkaError::Protocol(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for KafkaError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the client's message is this error's message, so
            // its source comes next in the chain, not the client error again.
            KafkaError::Client(e) => e.source(),
            _ => None,
        }
    }
}

impl From<rskafka::client::error::Error> for KafkaError {
    fn from(e: rskafka::client::error::Error) -> Self {
        KafkaError::Client(e)
    }
}

/// One failure reported to every publisher of a batch.
#[derive(Debug, Clone)]
struct SharedError(Arc<KafkaError>);

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_is_named_once_in_the_chain() {
        let client = rskafka::client::error::Error::InvalidResponse("no partitions".into());
        let e = hydratecache_core::Error::backend(BACKEND, "fetch", KafkaError::Client(client));
        let mut chain = vec![e.to_string()];
        let mut next = std::error::Error::source(&e);
        while let Some(cause) = next {
            chain.push(cause.to_string());
            next = cause.source();
        }
        assert_eq!(chain, ["kafka: fetch", "Invalid response: no partitions"]);
    }
}
