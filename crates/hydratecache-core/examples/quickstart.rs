//! Publish a cache update and receive it, on the in-memory transport (no server needed).
//!
//! Run: `cargo run --example quickstart`

use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{Channel, ChannelEvent, MemoryTransport, PublishOptions, Transport};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct User {
    name: String,
    plan: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // One bus stands for the backend; each Channel is one service instance.
    let bus = MemoryTransport::new();
    let writer: Channel<User> = Channel::new(bus.clone().into_arc(), "users");
    let reader: Channel<User> = Channel::new(bus.into_arc(), "users");

    let mut updates = reader.subscribe().await?;
    let user = User {
        name: "Ada".into(),
        plan: "pro".into(),
    };
    let receipt = writer
        .publish_with(
            "user:42",
            &user,
            PublishOptions::new().ttl(Duration::from_secs(300)),
        )
        .await?;
    println!(
        "published user:42 (sequence {}, {} bytes on the wire)",
        receipt.sequence, receipt.encoded_len
    );

    match tokio::time::timeout(Duration::from_secs(5), updates.next()).await? {
        Some(Ok(ChannelEvent::Update(msg))) => println!(
            "received {} = {:?} from publisher {} (sequence {}, TTL remaining {:?})",
            msg.key,
            msg.value,
            msg.publisher,
            msg.sequence,
            msg.remaining().map(|d| Duration::from_secs(d.as_secs())),
        ),
        other => anyhow::bail!("expected the update, got {other:?}"),
    }
    Ok(())
}
