//! rskafka: one partition, produced either one record per request (the naive
//! way) or through rskafka's batch producer with a linger (as
//! hydratecache-kafka does), consumed by fetching from offset 0 of a fresh topic.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::producer::aggregator::RecordAggregator;
use rskafka::client::producer::{BatchProducer, BatchProducerBuilder};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

use crate::pipe::{Pipe, Publisher, Received};

pub(crate) struct RawKafka {
    pub(crate) bootstrap: String,
    pub(crate) batched: bool,
}

impl RawKafka {
    async fn client(&self) -> Result<Client> {
        Ok(ClientBuilder::new(vec![self.bootstrap.clone()])
            .build()
            .await?)
    }

    async fn partition(&self, topic: &str) -> Result<PartitionClient> {
        Ok(self
            .client()
            .await?
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await?)
    }
}

fn record(payload: Vec<u8>) -> Record {
    Record {
        key: Some(b"k".to_vec()),
        value: Some(payload),
        headers: Default::default(),
        timestamp: chrono_now(),
    }
}

fn chrono_now() -> rskafka::chrono::DateTime<rskafka::chrono::Utc> {
    use rskafka::chrono::TimeZone;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    rskafka::chrono::Utc
        .timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
}

enum Producer {
    Naive(PartitionClient),
    Batched(BatchProducer<RecordAggregator>),
}

impl Publisher for Producer {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            match self {
                Producer::Naive(p) => {
                    p.produce(vec![record(payload)], Compression::NoCompression)
                        .await?;
                }
                Producer::Batched(p) => {
                    p.produce(record(payload)).await?;
                }
            }
            Ok(())
        })
    }
}

impl Pipe for RawKafka {
    fn prepare<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let client = self.client().await?;
            client
                .controller_client()?
                .create_topic(topic, 1, 1, 5_000)
                .await?;
            Ok(())
        })
    }

    fn publisher<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Arc<dyn Publisher>>> {
        Box::pin(async move {
            let partition = self.partition(topic).await?;
            let producer = if self.batched {
                Producer::Batched(
                    BatchProducerBuilder::new(Arc::new(partition))
                        .with_linger(Duration::from_millis(5))
                        .build(RecordAggregator::new(1024 * 1024)),
                )
            } else {
                Producer::Naive(partition)
            };
            Ok(Arc::new(producer) as Arc<dyn Publisher>)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Received>>> {
        Box::pin(async move {
            let partition = self.partition(topic).await?;
            let stream = futures::stream::unfold(
                (partition, 0i64, std::collections::VecDeque::new()),
                |(partition, mut offset, mut buffered)| async move {
                    loop {
                        if let Some(item) = buffered.pop_front() {
                            return Some((item, (partition, offset, buffered)));
                        }
                        match partition.fetch_records(offset, 1..1_048_576, 100).await {
                            Ok((records, _high_watermark)) => {
                                for r in records {
                                    offset = r.offset + 1;
                                    if let Some(v) = r.record.value {
                                        buffered.push_back(Received::Payload(v.into()));
                                    }
                                }
                            }
                            Err(e) => {
                                return Some((
                                    Received::Error(e.to_string()),
                                    (partition, offset, buffered),
                                ))
                            }
                        }
                    }
                },
            );
            Ok(stream.boxed())
        })
    }
}
