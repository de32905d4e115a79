//! [`KafkaBuilder`]: the settings of a [`KafkaTransport`](crate::KafkaTransport),
//! before it connects.

use std::time::Duration;

use hydratecache_core::adapter::LONGEST_DURATION;

use crate::record::KAFKA_OVERHEAD;

/// The longest [`KafkaBuilder::linger`]; a longer one is capped to it.
pub const MAX_LINGER: Duration = Duration::from_secs(1);

/// Default time the broker holds an idle fetch open.
pub const DEFAULT_FETCH_MAX_WAIT: Duration = Duration::from_millis(200);

/// Default bound on a fetch beyond its wait: with
/// [`DEFAULT_FETCH_MAX_WAIT`], a dead or half-open broker connection is
/// noticed within 500 ms.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// Default broker limit on a record batch: 1 MiB, Kafka's
/// `message.max.bytes` rounded down.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Default number of messages a live subscription may fall behind its
/// topic's shared reader before it gets a
/// [`GapReason::Lagged`](hydratecache_core::GapReason::Lagged) gap.
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 65_536;

/// Default bound on the bytes (keys and payloads) a subscription buffers:
/// 32 MiB.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 32 << 20;

/// How topics that do not exist yet are created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSettings {
    /// Number of partitions (default 1: one partition keeps every publisher's
    /// messages in order, not only each key's).
    pub partitions: i32,
    /// Replication factor (default 1; use 3 on a production cluster).
    pub replication_factor: i16,
}

impl Default for TopicSettings {
    fn default() -> Self {
        TopicSettings {
            partitions: 1,
            replication_factor: 1,
        }
    }
}

impl TopicSettings {
    /// Settings with `partitions` partitions and `replication_factor` replicas.
    pub fn new(partitions: i32, replication_factor: i16) -> TopicSettings {
        TopicSettings {
            partitions,
            replication_factor,
        }
    }
}

/// What a transport does with its brokers, set on a [`KafkaBuilder`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) create_topics: Option<TopicSettings>,
    pub(crate) linger: Duration,
    pub(crate) max_batch_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) fetch_max_wait: Duration,
    pub(crate) probe_timeout: Duration,
    pub(crate) fetch_max_bytes: Option<usize>,
    pub(crate) subscription_buffer: usize,
    pub(crate) subscription_buffer_bytes: usize,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) reset_confirmations: u32,
    pub(crate) metadata_refresh: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            create_topics: None,
            // Under load, records queue while a request is in flight and go
            // out together anyway; a linger only delays (docs/benchmarks.md
            // has the figures).
            linger: Duration::ZERO,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            request_timeout: Duration::from_secs(10),
            fetch_max_wait: DEFAULT_FETCH_MAX_WAIT,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            fetch_max_bytes: None,
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            retry_backoff_max: Duration::from_secs(2),
            reset_confirmations: 3,
            metadata_refresh: Duration::from_secs(10),
        }
    }
}

impl Settings {
    /// Most bytes one fetch asks for per partition.
    pub(crate) fn fetch_bytes(&self) -> usize {
        self.fetch_max_bytes
            .unwrap_or_else(|| (self.max_batch_bytes.saturating_mul(4)).max(4 << 20))
    }

    /// The largest encoded envelope that fits in a batch.
    pub(crate) fn max_message_size(&self) -> usize {
        self.max_batch_bytes.saturating_sub(KAFKA_OVERHEAD)
    }
}

/// Settings of a [`KafkaTransport`](crate::KafkaTransport), then how to
/// connect it: [`connect`](Self::connect) with a URL, or
/// [`connect_with`](Self::connect_with) a [`KafkaConfig`](crate::KafkaConfig)
/// (brokers, client id, TLS).
///
/// ```no_run
/// use hydratecache_kafka::{KafkaTransport, TopicSettings};
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), hydratecache_core::Error> {
/// let transport = KafkaTransport::builder()
///     .create_topics(TopicSettings::new(1, 3))
///     .linger(Duration::from_millis(2))
///     .connect("kafka://broker-1:9092,broker-2:9092")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct KafkaBuilder {
    pub(crate) settings: Settings,
}

impl KafkaBuilder {
    /// Creates topics that do not exist, on publish and on subscribe, with
    /// these settings. Off by default: using a missing topic is then an
    /// [`Error::InvalidTopic`](hydratecache_core::Error::InvalidTopic).
    pub fn create_topics(mut self, settings: TopicSettings) -> Self {
        self.settings.create_topics = Some(settings);
        self
    }

    /// How long the first record of a batch waits for more before the batch
    /// is sent (default 0). While a request is in flight, new records queue
    /// and go out together in the next one whatever the linger, so a busy
    /// publisher batches without one; a linger trades latency for fewer,
    /// larger requests when publishes trickle in. At most [`MAX_LINGER`]:
    /// every lone publish waits this long.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.settings.linger = linger.min(MAX_LINGER);
        self
    }

    /// The broker's limit on a record batch (`message.max.bytes`, or the
    /// topic's `max.message.bytes`), default [`DEFAULT_MAX_BATCH_BYTES`].
    /// Batches never exceed it; the largest envelope is this minus
    /// [`KAFKA_OVERHEAD`].
    pub fn max_batch_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_batch_bytes = bytes;
        self
    }

    /// Bound on one request, retries included (default 10 s): a publish
    /// fails after it, a subscription retries.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.settings.request_timeout = timeout.min(LONGEST_DURATION);
        self
    }

    /// How long the broker holds a fetch open when there is nothing new
    /// (default [`DEFAULT_FETCH_MAX_WAIT`]).
    pub fn fetch_max_wait(mut self, wait: Duration) -> Self {
        self.settings.fetch_max_wait = wait.min(LONGEST_DURATION);
        self
    }

    /// How much longer than the [`fetch_max_wait`](Self::fetch_max_wait) a
    /// fetch may take (default [`DEFAULT_PROBE_TIMEOUT`]). Each fetch is the
    /// readers' probe of the broker: one that fails or overruns this
    /// interrupts the subscriptions at that moment
    /// ([`Event::Interrupted`](hydratecache_core::Event::Interrupted)) until
    /// the reader has delivered what the broker held when it answered again
    /// ([`Event::Resumed`](hydratecache_core::Event::Resumed)), or until the
    /// gap of a log reset. A dead or half-open broker connection is noticed
    /// within the two together.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.settings.probe_timeout = timeout.clamp(Duration::from_millis(1), LONGEST_DURATION);
        self
    }

    /// Most bytes one fetch asks for per partition (default: four times
    /// [`max_batch_bytes`](Self::max_batch_bytes), at least 4 MiB).
    pub fn fetch_max_bytes(mut self, bytes: usize) -> Self {
        self.settings.fetch_max_bytes = Some(bytes);
        self
    }

    /// Messages a live subscription may fall behind its topic's shared
    /// reader before it gets a [`GapReason::Lagged`] gap (at least 1;
    /// default [`DEFAULT_SUBSCRIPTION_BUFFER`]).
    ///
    /// [`GapReason::Lagged`]: hydratecache_core::GapReason::Lagged
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.settings.subscription_buffer = messages.max(1);
        self
    }

    /// Bytes (keys and payloads) a subscription may buffer (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`]). A live subscription further
    /// behind gets a [`GapReason::Lagged`] gap counting the messages it
    /// skipped; a replaying one makes its reader wait. A single message
    /// larger than the bound still passes when nothing else is buffered.
    ///
    /// [`GapReason::Lagged`]: hydratecache_core::GapReason::Lagged
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> Self {
        self.settings.subscription_buffer_bytes = bytes;
        self
    }

    /// Longest pause between reconnection attempts (default 2 s).
    pub fn retry_backoff_max(mut self, max: Duration) -> Self {
        self.settings.retry_backoff_max = max.min(LONGEST_DURATION);
        self
    }

    /// How often a subscription looks for partitions added to its topic
    /// (default 10 s); a new partition is read from its start, so this
    /// delays its messages but loses none.
    pub fn metadata_refresh(mut self, every: Duration) -> Self {
        self.settings.metadata_refresh = every.min(LONGEST_DURATION);
        self
    }
}
