//! Round trips that prove the server has processed what the client sent.

use async_nats::Client;
use bytes::Bytes;
use futures::StreamExt;

/// Proves that the server has processed everything this client sent before:
/// subscribes to a fresh inbox, publishes to it and waits for the echo. The
/// server handles one connection's operations in order, so the echo comes
/// back after every earlier `SUB` took effect. (async-nats' `flush` only
/// writes to the socket; it does not wait for the server.)
pub(crate) async fn round_trip(client: &Client) -> std::result::Result<(), async_nats::Error> {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await?;
    client.publish(inbox, Bytes::new()).await?;
    match echo.next().await {
        Some(_) => Ok(()),
        None => Err("the client closed before the server answered".into()),
    }
}

/// Flushes, then proves with a round trip that the server has processed
/// everything written before it.
pub(crate) async fn confirm_processed(
    client: &Client,
) -> std::result::Result<(), async_nats::Error> {
    client.flush().await?;
    round_trip(client).await
}
