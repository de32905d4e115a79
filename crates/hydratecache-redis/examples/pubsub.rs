//! Publish a few price updates through Redis and watch them arrive.
//!
//! ```text
//! cargo run -p hydratecache-redis --example pubsub -- [redis://127.0.0.1:6379]
//! ```
//!
//! The URL comes from the first argument, else `HYDRATECACHE_REDIS_URL`, else
//! `redis://127.0.0.1:6379`. Run `redis-cli PUBLISH prices-demo xyz` while it
//! waits to see how a foreign message is reported.

use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{Channel, ChannelEvent, PublishOptions, Transport};
use hydratecache_redis::RedisTransport;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("HYDRATECACHE_REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_owned());
    println!("connecting to {url}");
    let transport = RedisTransport::connect(&url).await?;
    let prices: Channel<f64> = Channel::new(transport.clone().into_arc(), "prices-demo");

    // Resolves once Redis confirmed the SUBSCRIBE.
    let mut updates = prices.subscribe().await?;

    let writer = prices.clone();
    tokio::spawn(async move {
        for (i, symbol) in ["AAPL", "MSFT", "GOOG"].iter().enumerate() {
            let options = PublishOptions::new().ttl(Duration::from_secs(60));
            if let Err(e) = writer
                .publish_with(symbol, &(100.0 + i as f64), options)
                .await
            {
                eprintln!("publish {symbol}: {e}");
            }
        }
        if let Err(e) = writer.delete("GOOG").await {
            eprintln!("delete: {e}");
        }
    });

    let mut seen = 0;
    while seen < 4 {
        match tokio::time::timeout(Duration::from_secs(10), updates.next()).await {
            Ok(Some(Ok(ChannelEvent::Update(m)))) => {
                seen += 1;
                println!("update {} = {} (ttl {:?})", m.key, m.value, m.remaining());
            }
            Ok(Some(Ok(ChannelEvent::Delete(d)))) => {
                seen += 1;
                println!("delete {}", d.key);
            }
            Ok(Some(Ok(ChannelEvent::Gap(gap)))) => {
                println!(
                    "gap ({}): messages may have been missed, revalidate the cache",
                    gap.reason
                );
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => println!("bad message, stream goes on: {e}"),
            Ok(None) => break,
            Err(_) => {
                println!("nothing for 10 s");
                break;
            }
        }
    }
    drop(updates);
    hydratecache_core::Transport::close(&transport).await?;
    println!("done");
    Ok(())
}
