#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod close;
mod confirm;
mod inner;
mod jetstream;
mod jetstream_reader;
mod publish;
mod shared;
mod subject;
mod subscribe;
mod subscription;
mod transport;

pub use builder::{
    NatsBuilder, DEFAULT_CONFIRM_TIMEOUT, DEFAULT_PING_INTERVAL, DEFAULT_PUBLISH_TIMEOUT,
    DEFAULT_RECONNECT_CHECK, DEFAULT_SUBSCRIPTION_BUFFER, DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
};
pub use jetstream::{
    NatsJetStreamTransport, DEFAULT_JETSTREAM_HEARTBEAT, DEFAULT_JETSTREAM_PREFIX,
};
pub use subject::{validate_topic, MAX_SUBJECT_LEN};
pub use transport::NatsTransport;

/// Re-export of the client crate, for [`ConnectOptions`](async_nats::ConnectOptions)
/// and [`Client`](async_nats::Client).
pub use async_nats;

/// The backend name in errors and logs.
pub const BACKEND: &str = "nats";
