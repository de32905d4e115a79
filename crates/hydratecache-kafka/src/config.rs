//! Configuration of a [`KafkaTransport`](crate::KafkaTransport).

use std::time::Duration;

use hydratecache_core::adapter::LONGEST_DURATION;
use hydratecache_core::Error;

use crate::BACKEND;

/// The longest [`KafkaConfig::linger`]; a longer one is capped to it.
pub const MAX_LINGER: Duration = Duration::from_secs(1);

/// Default broker limit on a record batch: 1 MiB, Kafka's
/// `message.max.bytes` rounded down.
pub const DEFAULT_MAX_BATCH_BYTES: usize = 1024 * 1024;

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

/// Settings of a [`KafkaTransport`](crate::KafkaTransport); build it with
/// [`KafkaConfig::new`] or [`KafkaConfig::from_url`] and the setters.
///
/// ```
/// use hydratecache_kafka::{KafkaConfig, TopicSettings};
/// use std::time::Duration;
///
/// let config = KafkaConfig::from_url("kafka://broker-1:9092,broker-2:9092")?
///     .create_topics(TopicSettings::new(1, 3))
///     .linger(Duration::from_millis(2));
/// assert_eq!(config.brokers(), ["broker-1:9092", "broker-2:9092"]);
/// # Ok::<(), hydratecache_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub(crate) brokers: Vec<String>,
    pub(crate) client_id: String,
    pub(crate) create_topics: Option<TopicSettings>,
    pub(crate) linger: Duration,
    pub(crate) max_batch_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) fetch_max_wait: Duration,
    pub(crate) fetch_max_bytes: Option<usize>,
    pub(crate) subscriber_buffer: usize,
    pub(crate) subscription_buffer_bytes: usize,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) reset_confirmations: u32,
    pub(crate) metadata_refresh: Duration,
    /// The URL asked for TLS (`kafkas://`, `ssl://`, `tls://`).
    pub(crate) tls_required: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<TlsConfig>,
}

/// The rustls configuration, shown as a placeholder by `Debug`: a settings
/// dump in a log has no business listing certificates or key handles.
#[cfg(feature = "tls")]
#[derive(Clone)]
pub(crate) struct TlsConfig(pub(crate) std::sync::Arc<rustls::ClientConfig>);

#[cfg(feature = "tls")]
impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rustls::ClientConfig { .. }")
    }
}

impl KafkaConfig {
    /// Settings for the bootstrap brokers `brokers` (`host:port` each).
    pub fn new<I, S>(brokers: I) -> KafkaConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KafkaConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            client_id: "hydratecache".into(),
            create_topics: None,
            // Under load, records queue while a request is in flight and go
            // out together anyway; a linger only delays. On tansu (about
            // 0.5 ms of broker work per record) linger 0 / 1 / 5 / 20 ms gave
            // 2,118 / 1,451 / 1,318 / 997 records/s with 64 publishes in flight.
            linger: Duration::ZERO,
            max_batch_bytes: DEFAULT_MAX_BATCH_BYTES,
            request_timeout: Duration::from_secs(10),
            fetch_max_wait: Duration::from_millis(500),
            fetch_max_bytes: None,
            subscriber_buffer: 65_536,
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            retry_backoff_max: Duration::from_secs(2),
            reset_confirmations: 3,
            metadata_refresh: Duration::from_secs(10),
            tls_required: false,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Settings from `kafka://host:port[,host:port...]` (the scheme is
    /// optional), or `kafkas://` (also `ssl://`, `tls://`) for TLS.
    ///
    /// TLS needs the crate feature `tls` and a rustls configuration given
    /// with `KafkaConfig::tls` before connecting; without the feature a TLS
    /// URL is refused, naming the feature. SASL is not supported. A URL that
    /// asks for something unsupported is refused rather than connected in
    /// plaintext: a SASL scheme (`sasl_ssl://`, `sasl_plaintext://`),
    /// another scheme, credentials (`user:password@`), query parameters
    /// (`?security.protocol=SSL`) or a path.
    pub fn from_url(url: &str) -> Result<KafkaConfig, Error> {
        let refuse = |reason: String| Err(Error::backend(BACKEND, "parse the broker URL", reason));
        let (rest, tls) = match url.split_once("://") {
            None => (url, false),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("kafka") => (rest, false),
            Some((scheme, rest))
                if ["kafkas", "ssl", "tls"]
                    .iter()
                    .any(|s| scheme.eq_ignore_ascii_case(s)) =>
            {
                if cfg!(not(feature = "tls")) {
                    return refuse(format!(
                        "{scheme}:// asks for TLS, which is not compiled in: enable the \
                         feature `tls` of hydratecache-kafka (and give the rustls \
                         configuration with KafkaConfig::tls)"
                    ));
                }
                (rest, true)
            }
            Some((scheme, _)) => {
                let asks = if scheme.to_ascii_lowercase().contains("sasl") {
                    "SASL authentication, which this transport does not support"
                } else {
                    "a protocol this transport does not support"
                };
                return refuse(format!(
                    "{scheme}:// asks for {asks} (kafka://host:port, or kafkas://host:port \
                     for TLS; see the crate documentation)"
                ));
            }
        };
        if rest.contains('?') || rest.contains('#') {
            return refuse(
                "query parameters (such as security.protocol, sasl.* or ssl.*) are not \
                 supported: the connection is plaintext without authentication; expected \
                 kafka://host:port[,host:port...]"
                    .to_owned(),
            );
        }
        if rest.contains('@') {
            // Not echoed: the part before '@' holds a password.
            return refuse(
                "credentials in the URL: SASL authentication is not supported; expected \
                 kafka://host:port[,host:port...]"
                    .to_owned(),
            );
        }
        let rest = rest.trim_end_matches('/');
        let brokers: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(str::to_owned)
            .collect();
        if brokers.is_empty() || rest.contains('/') {
            return refuse(format!(
                "{url:?}: expected kafka://host:port[,host:port...]"
            ));
        }
        if let Some(bad) = brokers.iter().find(|b| !b.contains(':')) {
            return refuse(format!("{url:?}: broker {bad:?} has no port"));
        }
        let mut config = KafkaConfig::new(brokers);
        config.tls_required = tls;
        Ok(config)
    }

    /// Connects to the brokers over TLS with this rustls configuration
    /// (trusted roots, client certificate if any). Each broker's certificate
    /// is checked against its host name as given, or as the cluster's
    /// metadata advertises it.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> KafkaConfig {
        self.tls = Some(TlsConfig(config));
        self
    }

    /// The bootstrap brokers.
    pub fn brokers(&self) -> &[String] {
        &self.brokers
    }

    /// The client id the broker sees (default `hydratecache`).
    pub fn client_id(mut self, client_id: impl Into<String>) -> KafkaConfig {
        self.client_id = client_id.into();
        self
    }

    /// Creates topics that do not exist, on publish and on subscribe, with
    /// these settings. Off by default: using a missing topic is then an
    /// [`Error::InvalidTopic`].
    pub fn create_topics(mut self, settings: TopicSettings) -> KafkaConfig {
        self.create_topics = Some(settings);
        self
    }

    /// How long the first record of a batch waits for more before the batch
    /// is sent (default 0). While a request is in flight, new records queue
    /// and go out together in the next one whatever the linger, so a busy
    /// publisher batches without one; a linger trades latency for fewer,
    /// larger requests when publishes trickle in. At most [`MAX_LINGER`]:
    /// every lone publish waits this long.
    pub fn linger(mut self, linger: Duration) -> KafkaConfig {
        self.linger = linger.min(MAX_LINGER);
        self
    }

    /// The broker's limit on a record batch (`message.max.bytes`, or the
    /// topic's `max.message.bytes`), default 1 MiB. Batches never exceed it;
    /// the largest envelope is this minus
    /// [`KAFKA_OVERHEAD`](crate::record::KAFKA_OVERHEAD).
    pub fn max_batch_bytes(mut self, bytes: usize) -> KafkaConfig {
        self.max_batch_bytes = bytes;
        self
    }

    /// Bound on one request, retries included (default 10 s): a publish
    /// fails after it, a subscription retries.
    pub fn request_timeout(mut self, timeout: Duration) -> KafkaConfig {
        self.request_timeout = timeout.min(LONGEST_DURATION);
        self
    }

    /// How long the broker holds a fetch open when there is nothing new
    /// (default 500 ms).
    pub fn fetch_max_wait(mut self, wait: Duration) -> KafkaConfig {
        self.fetch_max_wait = wait.min(LONGEST_DURATION);
        self
    }

    /// Most bytes one fetch asks for per partition (default: four times
    /// [`max_batch_bytes`](Self::max_batch_bytes), at least 4 MiB).
    pub fn fetch_max_bytes(mut self, bytes: usize) -> KafkaConfig {
        self.fetch_max_bytes = Some(bytes);
        self
    }

    /// Messages a live subscription may fall behind its topic's shared
    /// reader before it gets a [`GapReason::Lagged`] gap (default 65,536).
    ///
    /// [`GapReason::Lagged`]: hydratecache_core::GapReason::Lagged
    pub fn subscriber_buffer(mut self, messages: usize) -> KafkaConfig {
        self.subscriber_buffer = messages.max(1);
        self
    }

    /// Bytes (keys and payloads) a subscription may buffer (default
    /// [`DEFAULT_SUBSCRIPTION_BUFFER_BYTES`], 32 MiB). A live subscription
    /// further behind gets a [`GapReason::Lagged`] gap counting the messages
    /// it skipped; a replaying one makes its reader wait. A single message
    /// larger than the bound still passes when nothing else is buffered.
    ///
    /// [`GapReason::Lagged`]: hydratecache_core::GapReason::Lagged
    pub fn subscription_buffer_bytes(mut self, bytes: usize) -> KafkaConfig {
        self.subscription_buffer_bytes = bytes;
        self
    }

    /// Longest pause between reconnection attempts (default 2 s).
    pub fn retry_backoff_max(mut self, max: Duration) -> KafkaConfig {
        self.retry_backoff_max = max.min(LONGEST_DURATION);
        self
    }

    /// How often a subscription looks for partitions added to its topic
    /// (default 10 s); a new partition is read from its start, so this
    /// delays its messages but loses none.
    pub fn metadata_refresh(mut self, every: Duration) -> KafkaConfig {
        self.metadata_refresh = every.min(LONGEST_DURATION);
        self
    }

    pub(crate) fn fetch_bytes(&self) -> usize {
        self.fetch_max_bytes
            .unwrap_or_else(|| (self.max_batch_bytes.saturating_mul(4)).max(4 << 20))
    }

    pub(crate) fn max_message_size(&self) -> usize {
        self.max_batch_bytes
            .saturating_sub(crate::record::KAFKA_OVERHEAD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let c = KafkaConfig::from_url("kafka://127.0.0.1:9092").expect("parses");
        assert_eq!(c.brokers(), ["127.0.0.1:9092"]);
        let c = KafkaConfig::from_url("a:1, b:2").expect("parses");
        assert_eq!(c.brokers(), ["a:1", "b:2"]);
        assert!(KafkaConfig::from_url("kafka://").is_err());
        assert!(KafkaConfig::from_url("kafka://host").is_err());
        assert!(KafkaConfig::from_url("kafka://h:1/x").is_err());
        let c = KafkaConfig::from_url("KAFKA://h:1").expect("parses");
        assert_eq!(c.brokers(), ["h:1"]);
    }

    fn refusal(url: &str) -> String {
        match KafkaConfig::from_url(url) {
            Ok(c) => panic!("{url} accepted as plaintext brokers {:?}", c.brokers()),
            Err(e) => {
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(&format!(": {s}"));
                    source = s.source();
                }
                text
            }
        }
    }

    /// Item 17 of issue 18: a URL that asks for TLS (without the `tls`
    /// feature) or SASL is refused with an error saying so, never taken as
    /// plaintext brokers.
    #[test]
    fn urls_asking_for_tls_or_sasl_are_refused() {
        for url in [
            "kafkas://h:9093",
            "ssl://h:9093",
            "SSL://h:9093",
            "tls://h:9093",
        ] {
            if cfg!(feature = "tls") {
                let c = KafkaConfig::from_url(url).expect("a TLS URL with the tls feature");
                assert!(c.tls_required && c.brokers() == ["h:9093"], "{url}");
            } else {
                let e = refusal(url);
                assert!(e.contains("feature `tls`"), "{url}: {e}");
            }
        }
        for url in [
            "sasl_ssl://h:9093",
            "sasl_plaintext://h:9092",
            "SASL_SSL://h:1",
        ] {
            let e = refusal(url);
            assert!(
                e.contains("SASL") && e.contains("not support"),
                "{url}: {e}"
            );
        }
        for url in [
            "kafka://h:9092?security.protocol=SSL",
            "h:9092?sasl.mechanism=PLAIN",
            "kafka://a:1,b:2?tls=true",
        ] {
            let e = refusal(url);
            assert!(e.contains("query parameters"), "{url}: {e}");
        }
        let e = refusal("kafka://alice:s3cret@h:9092");
        assert!(e.contains("SASL") && !e.contains("s3cret"), "{e}");
        let e = refusal("alice:s3cret@h:9092");
        assert!(e.contains("credentials") && !e.contains("s3cret"), "{e}");
        let e = refusal("https://h:9092");
        assert!(e.contains("not support"), "{e}");
    }
}
