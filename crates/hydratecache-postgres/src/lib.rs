#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod command;
mod listener;
mod outbox;
mod outbox_reader;
mod publisher;
mod tls;
mod transport;
mod tx;
mod wire;

use std::time::Duration;

pub use builder::PostgresBuilder;
pub use command::ListenerInfo;
pub use outbox::{
    PostgresOutboxTransport, DEFAULT_OUTBOX_RETENTION, OUTBOX_MAX_MESSAGE_SIZE, OUTBOX_MIGRATION,
};
pub use tls::tls_policy;
pub use transport::PostgresTransport;
pub use wire::{validate_topic, MAX_MESSAGE_SIZE, MAX_NOTIFY_PAYLOAD, MAX_TOPIC_LEN};

/// Re-exported so that callers use the same sqlx as this crate.
pub use sqlx;

/// The backend name in errors and logs.
pub const BACKEND: &str = "postgres";

/// Default buffer of each subscription, in messages; a subscriber that falls
/// further behind misses messages and gets a [`GapReason::Lagged`](hydratecache_core::GapReason::Lagged) gap.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 65_536;

/// Default bound of each subscription's buffer in bytes (32 MiB), next to
/// its bound in messages.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;

/// Default bound of one request to the server (see
/// [`PostgresBuilder::request_timeout`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Default idle time after which the listener connection is probed (see
/// [`PostgresBuilder::keepalive_interval`]).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);

/// Default bound on the listener's probe: with the keepalive interval, a
/// dead or half-open listener connection is noticed within 500 ms.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// `application_name` of the connections of an outbox transport made by
/// [`PostgresBuilder::connect_outbox`], as `pg_stat_activity` shows them.
pub const OUTBOX_APPLICATION_NAME: &str = "hydratecache-outbox";

/// `application_name` of the listener connection, as `pg_stat_activity` shows it.
pub const LISTENER_APPLICATION_NAME: &str = "hydratecache-listener";

/// Whether this build can speak TLS: one of the features `tls-rustls` or
/// `tls-native-tls` is enabled.
pub const TLS_COMPILED: bool = cfg!(any(feature = "tls-rustls", feature = "tls-native-tls"));
