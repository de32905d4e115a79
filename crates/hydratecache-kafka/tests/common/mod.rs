//! Shared helpers of the Kafka tests: a plain rskafka client for checks
//! from outside the transport.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use hydratecache_conformance::RECEIVE_TIMEOUT;
use hydratecache_core::{Event, Subscription};
use rskafka::chrono::{DateTime, Utc};
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};
use rskafka::BackoffConfig;

/// A plain rskafka client, as another application would use.
pub async fn plain_client(bootstrap: &str) -> Result<Client> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(Duration::from_secs(10)),
    };
    let build = ClientBuilder::new(vec![bootstrap.to_owned()])
        .backoff_config(backoff)
        .build();
    tokio::time::timeout(Duration::from_secs(15), build)
        .await
        .context("connect timed out")?
        .context("connect")
}

/// Creates `topic` with `partitions` partitions and waits until the metadata
/// shows it.
pub async fn create_topic(client: &Client, topic: &str, partitions: i32) -> Result<()> {
    let controller = client.controller_client()?;
    tokio::time::timeout(
        Duration::from_secs(15),
        controller.create_topic(topic, partitions, 1, 5_000),
    )
    .await
    .context("create_topic timed out")?
    .with_context(|| format!("create topic {topic}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let topics = client.list_topics().await?;
        if topics
            .iter()
            .any(|t| t.name == topic && t.partitions.len() == partitions as usize)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("topic {topic} does not show up in the metadata");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates `topic` after a broker restart. rskafka asks for metadata with
/// `allow_auto_topic_creation`, and tansu then creates a missing topic with 4
/// partitions: a reconnecting transport may have recreated it first, so an
/// existing topic is fine. Waits until partitions 0 to `partitions - 1` show.
pub async fn recreate_topic(client: &Client, topic: &str, partitions: i32) -> Result<()> {
    let controller = client.controller_client()?;
    match tokio::time::timeout(
        Duration::from_secs(15),
        controller.create_topic(topic, partitions, 1, 5_000),
    )
    .await
    .context("create_topic timed out")?
    {
        Ok(()) => {}
        Err(rskafka::client::error::Error::ServerError {
            protocol_error: rskafka::client::error::ProtocolError::TopicAlreadyExists,
            ..
        }) => println!("{topic} was recreated by a reconnecting client"),
        Err(e) => return Err(e).with_context(|| format!("create topic {topic}")),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let topics = client.list_topics().await?;
        if topics
            .iter()
            .any(|t| t.name == topic && (0..partitions).all(|p| t.partitions.contains(&p)))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("topic {topic} does not show up in the metadata");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `records` to `topic`/`partition` with plain rskafka.
pub async fn produce_raw(
    client: &Client,
    topic: &str,
    partition: i32,
    records: Vec<Record>,
) -> Result<Vec<i64>> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await?;
    let offsets = tokio::time::timeout(
        Duration::from_secs(15),
        pc.produce(records, Compression::NoCompression),
    )
    .await
    .context("produce timed out")??;
    Ok(offsets)
}

/// A record with the given key, value and headers.
pub fn raw_record(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Record {
    Record {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
            .collect::<BTreeMap<_, _>>(),
        timestamp: DateTime::<Utc>::from_timestamp_millis(1_700_000_000_000).unwrap_or_default(),
    }
}

/// Every record of `topic`/`partition` from offset 0 up to its high
/// watermark, read with plain rskafka.
pub async fn read_all(
    client: &Client,
    topic: &str,
    partition: i32,
) -> Result<Vec<RecordAndOffset>> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await?;
    let mut out = Vec::new();
    let mut offset = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (records, hw) = tokio::time::timeout(
            Duration::from_secs(15),
            pc.fetch_records(offset, 1..8_000_000, 100),
        )
        .await
        .context("fetch timed out")??;
        for r in records {
            if r.offset >= offset {
                offset = r.offset + 1;
                out.push(r);
            }
        }
        if offset >= hw {
            return Ok(out);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("could not read {topic}/{partition} up to {hw}");
        }
    }
}

/// The high watermark of `topic`/`partition` (from a fetch, which tansu
/// reports right, unlike ListOffsets after a batch).
pub async fn high_watermark(client: &Client, topic: &str, partition: i32) -> Result<i64> {
    let pc = client
        .partition_client(topic, partition, UnknownTopicHandling::Retry)
        .await?;
    let (_, hw) = tokio::time::timeout(
        Duration::from_secs(15),
        // Not a zero wait: tansu 0.6 answers those with no topic at all.
        pc.fetch_records(0, 1..2, 1),
    )
    .await
    .context("fetch timed out")??;
    Ok(hw)
}

/// The next item of `sub` within the conformance timeout, or a panic;
/// passes over `Event::ReplayDone` (the conformance suite checks it).
pub async fn next_item(sub: &mut Subscription, what: &str) -> hydratecache_core::Result<Event> {
    loop {
        match tokio::time::timeout(RECEIVE_TIMEOUT, sub.next()).await {
            Ok(Some(Ok(Event::ReplayDone))) => continue,
            Ok(Some(item)) => return item,
            Ok(None) => panic!("subscription ended while waiting for {what}"),
            Err(_) => panic!("nothing within {RECEIVE_TIMEOUT:?} while waiting for {what}"),
        }
    }
}
