//! Cache updates published inside the transaction that changes the data.
//!
//! ```text
//! cargo run -p hydratecache-postgres --example transactional -- postgres://postgres@127.0.0.1:5432/postgres
//! ```
//!
//! The URL comes from the first argument, else `DATABASE_URL`, else
//! `postgres://postgres@127.0.0.1:5432/postgres`. The example creates (and
//! drops) a table `hydratecache_example_prices`.

use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{CborCodec, Channel, ChannelEvent, PublishOptions, Transport};
use hydratecache_postgres::{sqlx, PostgresTransport};

const TABLE: &str = "hydratecache_example_prices";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (symbol text PRIMARY KEY, value float8 NOT NULL)"
    ))
    .execute(&pool)
    .await?;

    // A service instance: a typed channel over the transport, subscribed.
    let transport = PostgresTransport::from_pool(pool.clone());
    let prices: Channel<f64> = Channel::new(transport.clone().into_arc(), "prices");
    let mut updates = prices.subscribe().await?;

    // The writer: the row and its cache update commit together.
    for (symbol, value, commit) in [("AAPL", 190.25, true), ("MSFT", 0.0, false)] {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO {TABLE} (symbol, value) VALUES ($1, $2) \
             ON CONFLICT (symbol) DO UPDATE SET value = EXCLUDED.value"
        ))
        .bind(symbol)
        .bind(value)
        .execute(&mut *tx)
        .await?;
        PostgresTransport::publish_value_tx(
            &mut *tx,
            "prices",
            &CborCodec::new(),
            symbol,
            &value,
            PublishOptions::new().ttl(Duration::from_secs(300)),
        )
        .await?;
        if commit {
            tx.commit().await?;
            println!("committed {symbol} = {value}");
        } else {
            tx.rollback().await?;
            println!("rolled back {symbol}: no cache update is delivered");
        }
    }

    // Only the committed update arrives.
    match tokio::time::timeout(Duration::from_secs(5), updates.next()).await {
        Ok(Some(Ok(ChannelEvent::Update(msg)))) => {
            println!(
                "received {} = {} (ttl {:?})",
                msg.key,
                msg.value,
                msg.remaining()
            )
        }
        Ok(Some(Ok(ChannelEvent::Gap(gap)))) => println!("gap ({}): reload the cache", gap.reason),
        other => println!("unexpected: {other:?}"),
    }
    if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(500), updates.next()).await
    {
        println!("unexpected second event: {event:?}");
    }

    drop(updates);
    prices.transport().close().await?;
    sqlx::query(&format!("DROP TABLE {TABLE}"))
        .execute(&pool)
        .await?;
    Ok(())
}
