#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod liveness;
mod publisher;
mod settings;
mod stream_position;
mod stream_reader;
mod streams;
mod subscriber;
mod tls;
mod transport;

pub use builder::{default_reconnect_policy, RedisBuilder};
pub use settings::{
    DEFAULT_BROADCAST_CAPACITY, DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PROBE_TIMEOUT,
    DEFAULT_STREAM_MAX_LEN, DEFAULT_STREAM_READ_COUNT, DEFAULT_SUBSCRIPTION_BUFFER,
    DEFAULT_SUBSCRIPTION_BUFFER_BYTES, MAX_BULK_LEN,
};
pub use streams::RedisStreamsTransport;
pub use transport::RedisTransport;

/// The fred version this crate is built on, for building clients and configs
/// ([`RedisBuilder::connect_with`], [`RedisBuilder::from_clients`]).
pub use fred;

/// Backend name in errors and logs.
pub const BACKEND: &str = "redis";
