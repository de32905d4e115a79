//! A writer and a reader of a cache channel over NATS.
//!
//! ```text
//! nats-server -a 127.0.0.1 &
//! HYDRATECACHE_NATS_URL=nats://127.0.0.1:4222 cargo run -p hydratecache-nats --example nats_cache
//! ```
//!
//! The reader keeps a local map warm from the updates; on a gap (for example
//! after restarting nats-server while it runs) it clears the map, as a real
//! service would reload from its source of truth.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{Channel, ChannelEvent, Error, Transport};
use hydratecache_nats::NatsTransport;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Price {
    cents: u64,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("HYDRATECACHE_NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    println!("connecting to {url}");

    // One connection, shared by the writer and the reader here; in a fleet
    // each service instance has its own.
    let transport = NatsTransport::connect(&url).await?.into_arc();
    let prices: Channel<Price> = Channel::new(transport.clone(), "example.prices");

    let mut updates = prices.subscribe().await?;
    let reader = tokio::spawn(async move {
        let mut cache: HashMap<String, Price> = HashMap::new();
        while let Some(event) = updates.next().await {
            match event {
                Ok(ChannelEvent::Update(msg)) => {
                    println!("reader: {} = {} cents", msg.key, msg.value.cents);
                    cache.insert(msg.key.clone(), msg.value.clone());
                    if cache.len() == 5 {
                        break;
                    }
                }
                Ok(ChannelEvent::Gap(gap)) => {
                    println!(
                        "reader: gap ({}), clearing {} entries",
                        gap.reason,
                        cache.len()
                    );
                    cache.clear();
                }
                Ok(other) => println!("reader: {other:?}"),
                // One unreadable message (someone else's bytes on the subject).
                Err(e) if e.is_per_message() => println!("reader: skipped: {e}"),
                Err(e) => return Err(e),
            }
        }
        Ok(cache)
    });

    for (i, fruit) in ["apple", "pear", "plum", "fig", "kiwi"].iter().enumerate() {
        prices
            .publish(
                &format!("price:{fruit}"),
                &Price {
                    cents: 100 + i as u64,
                },
            )
            .await?;
        println!("writer: published price:{fruit}");
    }

    let cache = match tokio::time::timeout(Duration::from_secs(10), reader).await {
        Ok(Ok(result)) => result?,
        Ok(Err(e)) => panic!("reader task failed: {e}"),
        Err(_) => {
            eprintln!("the reader did not get all 5 updates within 10 s");
            std::process::exit(1);
        }
    };
    println!("reader's cache holds {} prices", cache.len());
    transport.close().await
}
