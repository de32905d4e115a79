//! LocalCache over Kafka: a new instance warms itself by replaying the topic
//! from the earliest offset, and `ready()` resolves once the replay reached
//! the end of the log as it was at start.

use std::time::Duration;

use hydratecache_cache::LocalCache;
use hydratecache_conformance::unique_topic;
use hydratecache_core::{Channel, StartFrom, SubscribeOptions, Transport};
use hydratecache_kafka::{KafkaTransport, TopicSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cache_replays_the_topic_and_is_ready_with_every_key() -> anyhow::Result<()> {
    let server = hydratecache_testkit::kafka::shared_or_private()?;
    let builder = || KafkaTransport::builder().create_topics(TopicSettings::new(3, 1));
    let topic = unique_topic("replaycache");
    let writer_transport = builder().connect(&server.url()).await?;
    writer_transport.ensure_topic(&topic).await?;
    let writer: Channel<String> = Channel::new(writer_transport.into_arc(), topic.clone());
    for i in 0..300 {
        writer.publish(&format!("k{i}"), &format!("v{i}")).await?;
    }
    writer.delete("k7").await?;

    let reader: LocalCache<String> = LocalCache::builder(Channel::new(
        builder().connect(&server.url()).await?.into_arc(),
        topic,
    ))
    .subscribe_options(SubscribeOptions::starting(StartFrom::Earliest))
    .build()
    .await?;
    tokio::time::timeout(Duration::from_secs(30), reader.ready()).await?;
    assert!(reader.is_ready());
    for i in 0..300 {
        let got = reader.get(&format!("k{i}")).map(|v| v.as_ref().clone());
        if i == 7 {
            assert_eq!(got, None, "the deleted key was replayed as live");
        } else {
            assert_eq!(
                got,
                Some(format!("v{i}")),
                "k{i} missing right after ready()"
            );
        }
    }
    let stats = reader.stats();
    assert_eq!(
        (stats.updates_applied, stats.deletes_applied),
        (300, 1),
        "{stats:?}"
    );
    assert_eq!(stats.gaps, 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_an_empty_topic_is_ready_at_once_and_then_live() -> anyhow::Result<()> {
    let server = hydratecache_testkit::kafka::shared_or_private()?;
    let builder = || KafkaTransport::builder().create_topics(TopicSettings::new(2, 1));
    let topic = unique_topic("replayempty");
    let t = builder().connect(&server.url()).await?;
    t.ensure_topic(&topic).await?;
    let reader: LocalCache<String> = LocalCache::builder(Channel::new(t.into_arc(), topic.clone()))
        .subscribe_options(SubscribeOptions::starting(StartFrom::Earliest))
        .build()
        .await?;
    tokio::time::timeout(Duration::from_secs(30), reader.ready()).await?;
    let writer: Channel<String> =
        Channel::new(builder().connect(&server.url()).await?.into_arc(), topic);
    writer.publish("live", &"yes".to_string()).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reader.get("live").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the live update never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
