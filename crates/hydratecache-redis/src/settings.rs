//! The settings of a transport and their defaults.

use std::time::Duration;

/// Default largest encoded envelope: 1 MiB.
///
/// Redis accepts bulk strings up to 512 MiB (`proto-max-bulk-len`), but every
/// subscriber connection is cut by the server once its output buffer passes
/// `client-output-buffer-limit pubsub` (32 MiB hard, 8 MiB for 60 s by
/// default), and one large message delays every other message on the shared
/// connections. 1 MiB keeps well inside both.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 1024 * 1024;

/// Largest value
/// [`RedisBuilder::max_message_size`](crate::RedisBuilder::max_message_size)
/// accepts: Redis's default `proto-max-bulk-len` (512 MiB).
pub const MAX_BULK_LEN: usize = 512 * 1024 * 1024;

/// Default number of messages one subscription may have waiting before it
/// gets a gap instead of the next ones.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 65_536;

/// Default bound on the message bytes one subscription may have waiting
/// (32 MiB) before it gets a gap instead of the next ones.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;

/// Default capacity of fred's message broadcast channel
/// (`PerformanceConfig::broadcast_channel_capacity`, 32 in fred), shared by
/// all subscriptions of a transport.
pub const DEFAULT_BROADCAST_CAPACITY: usize = 65_536;

/// Default bound on each command (PUBLISH, SUBSCRIBE...), retries included:
/// a publish to a server that does not answer fails after this long (one
/// while the connection is known to be down fails at once).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Default idle time after which the subscriber connection is pinged (see
/// [`RedisBuilder::keepalive_interval`](crate::RedisBuilder::keepalive_interval)).
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_millis(200);

/// Default bound on that ping: with the keepalive interval, a dead or
/// half-open subscriber connection is noticed within 500 ms.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Default cap on a stream's length in streams mode (`XADD ... MAXLEN ~`):
/// how far a subscriber cut off can fall behind and still resume.
pub const DEFAULT_STREAM_MAX_LEN: u64 = 10_000;

/// Default number of entries a stream subscription reads per step.
pub const DEFAULT_STREAM_READ_COUNT: u64 = 256;

/// Default bound on the first connection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a [`RedisBuilder`](crate::RedisBuilder) sets, kept by the transport.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) max_message_size: usize,
    pub(crate) subscription_buffer: usize,
    pub(crate) subscription_buffer_bytes: usize,
    pub(crate) broadcast_capacity: usize,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) sharded: bool,
    pub(crate) keepalive: Option<Duration>,
    pub(crate) probe_timeout: Duration,
    pub(crate) stream_max_len: u64,
    pub(crate) stream_read_count: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            broadcast_capacity: DEFAULT_BROADCAST_CAPACITY,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            sharded: false,
            keepalive: Some(DEFAULT_KEEPALIVE_INTERVAL),
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            stream_max_len: DEFAULT_STREAM_MAX_LEN,
            stream_read_count: DEFAULT_STREAM_READ_COUNT,
        }
    }
}
