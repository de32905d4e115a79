//! A warm local cache fed by a Kafka topic.
//!
//! Replays the topic from its earliest record into a `HashMap`, then keeps
//! it up to date while this process publishes a few updates and a delete.
//!
//! ```text
//! cargo run -p hydratecache-kafka --example kafka_cache -- kafka://127.0.0.1:9092
//! ```
//! The broker URL comes from the first argument, else `HYDRATECACHE_KAFKA_URL`,
//! else `kafka://127.0.0.1:9092`. The topic is created if missing.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{
    Channel, ChannelEvent, PublishOptions, StartFrom, SubscribeOptions, Transport,
};
use hydratecache_kafka::{KafkaTransport, TopicSettings};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Price {
    cents: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("HYDRATECACHE_KAFKA_URL").ok())
        .unwrap_or_else(|| "kafka://127.0.0.1:9092".to_owned());
    let transport = KafkaTransport::builder()
        .create_topics(TopicSettings::new(1, 1))
        .connect(&url)
        .await?;
    let prices: Channel<Price> =
        Channel::new(transport.clone().into_arc(), "hydratecache-example-prices");

    // Warm up from what the topic retains, then follow it live.
    let mut events = prices
        .subscribe_with(SubscribeOptions::starting(StartFrom::Earliest))
        .await?;
    let mut cache: HashMap<String, Price> = HashMap::new();

    let publisher = prices.clone();
    tokio::spawn(async move {
        let ttl = PublishOptions::new().ttl(Duration::from_secs(3600));
        for (sku, cents) in [("apple", 120), ("pear", 95), ("apple", 110)] {
            if let Err(e) = publisher.publish_with(sku, &Price { cents }, ttl).await {
                eprintln!("publish {sku}: {e}");
            }
        }
        if let Err(e) = publisher.delete("pear").await {
            eprintln!("delete pear: {e}");
        }
    });

    // Stop once nothing arrived for two seconds.
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(2), events.next()).await {
        match event {
            Ok(ChannelEvent::Update(msg)) => {
                cache.insert(msg.key.clone(), msg.value);
            }
            Ok(ChannelEvent::Delete(del)) => {
                cache.remove(&del.key);
            }
            Ok(ChannelEvent::Gap(gap)) => {
                println!("gap ({}): clearing the cache", gap.reason);
                cache.clear();
            }
            Ok(_) => {}
            Err(e) => println!("skipped a record: {e}"),
        }
        println!("cache: {cache:?}");
    }
    transport.close().await?;
    Ok(())
}
