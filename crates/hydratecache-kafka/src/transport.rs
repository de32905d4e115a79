//! [`KafkaTransport`]: the [`Transport`] over rskafka.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::adapter::{check_envelope, lock, Fanout, MAX_KEY_LEN};
use hydratecache_core::{
    Capabilities, Envelope, EnvelopeError, Error, Result, StartFrom, SubscribeOptions,
    Subscription, Transport,
};
use rskafka::client::controller::ControllerClient;
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::{Client, ClientBuilder};
use rskafka::BackoffConfig;
use tokio::sync::{oneshot, watch};

use crate::builder::{KafkaBuilder, Settings, TopicSettings};
use crate::config::KafkaConfig;
use crate::producer::{PartitionProducer, Pending, ProducerCtx};
use crate::reader::{self, ReaderCtx};
use crate::record::{partition_for, record_size_bound, to_record, validate_topic};
use crate::replay::gated;
use crate::sink::Sink;
use crate::subscription::{private_subscription, shared_subscription, SharedReader};
use crate::topics::TopicCache;
use crate::{KafkaError, BACKEND};

/// Messages a replaying subscription buffers (its reader waits beyond).
const REPLAY_BUFFER: usize = 1024;

type ReaderSlot = Arc<tokio::sync::Mutex<Weak<SharedReader>>>;

struct Inner {
    config: KafkaConfig,
    settings: Settings,
    client: Arc<Client>,
    /// The readers' client, without rskafka's own retries.
    reader_client: Arc<Client>,
    controller: ControllerClient,
    topics: Arc<TopicCache>,
    /// Serialises topic look-ups and creation.
    topic_lock: tokio::sync::Mutex<()>,
    /// Batching tasks by (topic, partition); `None` once closed.
    producers: Mutex<Option<HashMap<(String, i32), PartitionProducer>>>,
    /// The shared reader of each topic with live subscriptions.
    readers: Mutex<HashMap<String, ReaderSlot>>,
    closed: Arc<watch::Sender<bool>>,
}

/// The [`Transport`] for Kafka (and Kafka-compatible brokers such as
/// Redpanda or tansu), on the pure-Rust client `rskafka`.
///
/// Clones share the client, its connections and its batching tasks.
///
/// See the [crate documentation](crate) for the record layout, the
/// delivery guarantees and what a gap means here.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaBuilder {
    /// Connects to `kafka://host:port[,host:port...]` (see
    /// [`KafkaConfig::from_url`]).
    pub async fn connect(self, url: &str) -> Result<KafkaTransport> {
        self.connect_with(KafkaConfig::from_url(url)?).await
    }

    /// Connects to the brokers of `config` (fetching the cluster metadata
    /// once, within the request timeout).
    pub async fn connect_with(self, config: KafkaConfig) -> Result<KafkaTransport> {
        let settings = self.settings;
        let backoff = BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: settings.retry_backoff_max,
            base: 2.0,
            deadline: Some(settings.request_timeout),
        };
        let client = build_client(&config, &settings, backoff.clone()).await?;
        // Readers get a client that never retries by itself: rskafka retries
        // a fetch over a new connection without a word, so a broker that
        // restarted empty within the retry window would go unnoticed. Every
        // failure reaching the reader makes it check the log under its
        // position before reading on.
        let no_retry = BackoffConfig {
            deadline: Some(Duration::ZERO),
            ..backoff
        };
        let reader_client = build_client(&config, &settings, no_retry).await?;
        let controller = client
            .controller_client()
            .map_err(|e| Error::backend(BACKEND, "controller client", e))?;
        let (closed, _) = watch::channel(false);
        Ok(KafkaTransport {
            inner: Arc::new(Inner {
                config,
                settings,
                client: Arc::new(client),
                reader_client: Arc::new(reader_client),
                controller,
                topics: Arc::default(),
                topic_lock: tokio::sync::Mutex::new(()),
                producers: Mutex::new(Some(HashMap::new())),
                readers: Mutex::new(HashMap::new()),
                closed: Arc::new(closed),
            }),
        })
    }
}

impl KafkaTransport {
    /// Settings first, then one of the builder's ways to connect.
    pub fn builder() -> KafkaBuilder {
        KafkaBuilder::default()
    }

    /// Connects to `kafka://host:port[,host:port...]` with the default
    /// settings (see [`KafkaBuilder`]).
    pub async fn connect(url: &str) -> Result<KafkaTransport> {
        KafkaBuilder::default().connect(url).await
    }

    /// Where the brokers are and how they are reached.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// Makes sure `topic` exists, creating it when
    /// [`KafkaBuilder::create_topics`] allows, and returns its partition count.
    pub async fn ensure_topic(&self, topic: &str) -> Result<usize> {
        self.check_topic(topic)?;
        Ok(self.partitions(topic).await?.len())
    }

    fn check_open(&self) -> Result<()> {
        if *self.inner.closed.borrow() {
            return Err(Error::Closed { backend: BACKEND });
        }
        Ok(())
    }

    fn check_topic(&self, topic: &str) -> Result<()> {
        validate_topic(topic).map_err(|reason| Error::invalid_topic(BACKEND, topic, reason))
    }

    /// The partition ids of `topic`, looked up once, created if allowed.
    async fn partitions(&self, topic: &str) -> Result<Arc<[i32]>> {
        if let Some(p) = self.inner.topics.get(topic) {
            return Ok(p);
        }
        let _guard = self.inner.topic_lock.lock().await;
        if let Some(p) = self.inner.topics.get(topic) {
            return Ok(p);
        }
        let timeout = self.inner.settings.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut created = false;
        loop {
            if let Some(p) = self.list_partitions(topic, deadline).await? {
                self.inner.topics.insert(topic, Arc::clone(&p));
                return Ok(p);
            }
            let Some(settings) = self.inner.settings.create_topics else {
                return Err(Error::invalid_topic(
                    BACKEND,
                    topic,
                    "the topic does not exist and topic creation is off \
                     (create it, or enable KafkaBuilder::create_topics)",
                ));
            };
            if !created {
                self.create_topic(topic, settings, deadline).await?;
                created = true;
                tracing::info!(
                    topic,
                    partitions = settings.partitions,
                    replication = settings.replication_factor,
                    "topic created"
                );
            } else if tokio::time::Instant::now() >= deadline {
                return Err(Error::backend(
                    BACKEND,
                    format!("create topic {topic}"),
                    "the topic was created but does not show in the metadata",
                ));
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    async fn list_partitions(
        &self,
        topic: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Option<Arc<[i32]>>> {
        let what = || format!("look up topic {topic}");
        let topics = tokio::time::timeout_at(deadline, self.inner.client.list_topics())
            .await
            .map_err(|_| {
                Error::backend(
                    BACKEND,
                    what(),
                    KafkaError::Timeout(self.inner.settings.request_timeout),
                )
            })?
            .map_err(|e| Error::backend(BACKEND, what(), e))?;
        Ok(topics
            .into_iter()
            .find(|t| t.name == topic && !t.partitions.is_empty())
            .map(|t| t.partitions.into_iter().collect::<Vec<_>>().into()))
    }

    async fn create_topic(
        &self,
        topic: &str,
        settings: TopicSettings,
        deadline: tokio::time::Instant,
    ) -> Result<()> {
        let what = || format!("create topic {topic}");
        let timeout_ms =
            i32::try_from(self.inner.settings.request_timeout.as_millis()).unwrap_or(i32::MAX);
        let create = self.inner.controller.create_topic(
            topic,
            settings.partitions,
            settings.replication_factor,
            timeout_ms,
        );
        match tokio::time::timeout_at(deadline, create).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ClientError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            })) => Ok(()),
            Ok(Err(e)) => Err(Error::backend(BACKEND, what(), e)),
            Err(_) => Err(Error::backend(
                BACKEND,
                what(),
                KafkaError::Timeout(self.inner.settings.request_timeout),
            )),
        }
    }

    async fn publish_envelope(&self, topic: &str, envelope: &Envelope) -> Result<()> {
        self.check_open()?;
        self.check_topic(topic)?;
        if envelope.key.len() > MAX_KEY_LEN {
            return Err(Error::Envelope(EnvelopeError::KeyTooLong(
                envelope.key.len(),
            )));
        }
        check_envelope(BACKEND, &self.capabilities(), envelope)?;
        let record = to_record(envelope);
        let size = record_size_bound(&record);
        let partitions = self.partitions(topic).await?;
        let index = partition_for(envelope.key.as_bytes(), partitions.len());
        let partition = partitions[index];
        let tx = {
            let mut producers = lock(&self.inner.producers);
            let Some(producers) = producers.as_mut() else {
                return Err(Error::Closed { backend: BACKEND });
            };
            producers
                .entry((topic.to_owned(), partition))
                .or_insert_with(|| {
                    PartitionProducer::spawn(ProducerCtx {
                        client: Arc::clone(&self.inner.client),
                        topics: Arc::clone(&self.inner.topics),
                        topic: topic.to_owned(),
                        partition,
                        linger: self.inner.settings.linger,
                        max_batch_bytes: self.inner.settings.max_batch_bytes,
                        request_timeout: self.inner.settings.request_timeout,
                    })
                })
                .tx
                .clone()
        };
        let (reply, answer) = oneshot::channel();
        tx.send(Pending {
            record,
            size,
            reply,
        })
        .await
        .map_err(|_| Error::Closed { backend: BACKEND })?;
        answer
            .await
            .map_err(|_| Error::Closed { backend: BACKEND })?
    }

    async fn subscribe_topic(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription> {
        self.check_open()?;
        self.check_topic(topic)?;
        let partitions = self.partitions(topic).await?;
        let ctx = ReaderCtx {
            client: Arc::clone(&self.inner.reader_client),
            topic: topic.to_owned(),
            request_timeout: self.inner.settings.request_timeout,
            fetch_max_wait: self.inner.settings.fetch_max_wait,
            probe_timeout: self.inner.settings.probe_timeout,
            fetch_bytes: self.inner.settings.fetch_bytes(),
            retry_backoff_max: self.inner.settings.retry_backoff_max,
            reset_confirmations: self.inner.settings.reset_confirmations,
            metadata_refresh: self.inner.settings.metadata_refresh,
            refresh: Arc::default(),
            closed: self.inner.closed.subscribe(),
        };
        let closed = Arc::clone(&self.inner.closed);
        match options.start {
            StartFrom::Earliest => {
                let (tx, rx) = gated(REPLAY_BUFFER, self.inner.settings.subscription_buffer_bytes);
                let handle =
                    reader::start(ctx, &partitions, StartFrom::Earliest, Sink::private(tx)).await?;
                Ok(private_subscription(topic, rx, handle, closed))
            }
            // Latest, and anything a later core may add.
            _ => {
                let slot = {
                    let mut readers = lock(&self.inner.readers);
                    // Forget topics nobody reads any more.
                    readers.retain(|_, slot| {
                        slot.try_lock().map_or(true, |weak| weak.strong_count() > 0)
                    });
                    Arc::clone(readers.entry(topic.to_owned()).or_default())
                };
                let mut guard = slot.lock().await;
                // Registered before a new reader starts: what it reads from
                // its start position on reaches this subscription.
                let (reader, registered) = match guard.upgrade() {
                    Some(reader) => match reader.sink.register(topic).await {
                        Some(registered) => (reader, registered),
                        None => return Err(Error::Closed { backend: BACKEND }),
                    },
                    None => {
                        let settings = &self.inner.settings;
                        let fanout = Fanout::new(
                            settings.subscription_buffer,
                            settings.subscription_buffer_bytes,
                        );
                        // The reader stops when the last subscription drops
                        // its share of it, not through the fan-out's hook.
                        let registered = fanout.register(topic, Box::new(|_| {}));
                        let sink = Sink::shared(fanout);
                        let handle =
                            reader::start(ctx, &partitions, StartFrom::Latest, sink.clone())
                                .await?;
                        let reader = Arc::new(SharedReader::new(handle, sink));
                        *guard = Arc::downgrade(&reader);
                        (reader, registered)
                    }
                };
                drop(guard);
                Ok(shared_subscription(topic, registered, reader, closed))
            }
        }
    }

    async fn close_all(&self) -> Result<()> {
        let producers = lock(&self.inner.producers).take();
        self.inner.closed.send_replace(true);
        let Some(producers) = producers else {
            return Ok(());
        };
        // Dropping the queues lets each task send what is pending, then end.
        let tasks: Vec<_> = producers.into_values().map(|p| p.task).collect();
        let limit = (self.inner.settings.request_timeout.saturating_mul(2))
            .saturating_add(self.inner.settings.linger);
        for mut task in tasks {
            if tokio::time::timeout(limit, &mut task).await.is_err() {
                tracing::warn!("a produce task did not finish within {limit:?}; aborted");
                task.abort();
            }
        }
        Ok(())
    }
}

/// Connects an rskafka client to the brokers of `config`, within the
/// request timeout.
async fn build_client(
    config: &KafkaConfig,
    settings: &Settings,
    backoff: BackoffConfig,
) -> Result<Client> {
    let what = || format!("connect to {}", config.brokers.join(","));
    let builder = ClientBuilder::new(config.brokers.clone())
        .client_id(config.client_id.clone())
        .max_message_size(settings.fetch_bytes().saturating_mul(2).max(100 << 20))
        .backoff_config(backoff);
    #[cfg(feature = "tls")]
    let builder = match &config.tls {
        Some(tls) => builder.tls_config(Arc::clone(&tls.0)),
        None => builder,
    };
    #[cfg(feature = "tls")]
    let tls_given = config.tls.is_some();
    #[cfg(not(feature = "tls"))]
    let tls_given = false;
    // Never plaintext for a URL that asked for TLS.
    if config.tls_required && !tls_given {
        return Err(Error::backend(
            BACKEND,
            what(),
            "the URL asks for TLS but no TLS configuration was given \
             (KafkaConfig::tls, feature `tls`)",
        ));
    }
    match tokio::time::timeout(settings.request_timeout, builder.build()).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(Error::backend(BACKEND, what(), e)),
        Err(_) => Err(Error::backend(
            BACKEND,
            what(),
            KafkaError::Timeout(settings.request_timeout),
        )),
    }
}

impl Transport for KafkaTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        // Partitions are read in parallel: one publisher's messages for
        // different keys may arrive out of publish order. Each partition's
        // reader goes on from its offset after a cut (`reader::run`).
        Capabilities::new(Some(self.inner.settings.max_message_size()))
            .with_replay(true)
            .with_ordered(false)
            .with_resumable(true)
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        self.publish_envelope(topic, envelope).boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        self.subscribe_topic(topic, options).boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.close_all().boxed()
    }
}
