//! A LocalCache on Kafka during a rolling upgrade: a record this release
//! cannot read (a newer format) still names its key in the record key, and
//! the cache forgets that key alone instead of serving it stale.

mod common;

use std::time::Duration;

use hydratecache_cache::LocalCache;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{CborCodec, Channel, Codec, Envelope, PublisherId, Transport};
use hydratecache_kafka::record::to_record;
use hydratecache_kafka::{KafkaTransport, TopicSettings};

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_a_newer_release_makes_the_cache_forget_its_key() -> anyhow::Result<()> {
    let server = hydratecache_testkit::kafka::shared_or_private()?;
    let builder = || KafkaTransport::builder().create_topics(TopicSettings::new(1, 1));
    let topic = unique_topic("newer");
    let writer_transport = builder().connect(&server.url()).await?;
    writer_transport.ensure_topic(&topic).await?;
    let writer: Channel<String> = Channel::new(writer_transport.into_arc(), topic.clone());
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(
        builder().connect(&server.url()).await?.into_arc(),
        topic.clone(),
    ))
    .build()
    .await?;
    writer.publish("k", &"k1".into()).await?;
    writer.publish("j", &"j1".into()).await?;
    let held = |key: &str| reader.get(key).map(|v| v.as_ref().clone());
    eventually("k and j held", || {
        held("k").is_some() && held("j").is_some()
    })
    .await;

    // A newer release's update of k: our record, but format version 2.
    let payload = CborCodec::new()
        .encode(&"k2".to_owned())
        .map_err(|e| anyhow::anyhow!(e))?;
    let mut record = to_record(&Envelope {
        publisher: PublisherId::random(),
        sequence: 1,
        ..Envelope::update("k", payload)
    });
    record.headers.insert("hc-v".to_owned(), vec![2]);
    let admin = common::plain_client(&server.bootstrap()).await?;
    common::produce_raw(&admin, &topic, 0, vec![record]).await?;

    eventually("k no longer served", || held("k").is_none()).await;
    assert_eq!(held("j").as_deref(), Some("j1"), "only k is forgotten");
    let stats = reader.stats();
    assert_eq!((stats.malformed, stats.repairs()), (1, 0), "{stats:?}");
    Ok(())
}
