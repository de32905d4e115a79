//! Shared test helpers: the conformance harness and polling helpers.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_conformance::Harness;
use hydratecache_core::{BoxError, Transport};
use hydratecache_redis::fred::clients::Client;
use hydratecache_redis::fred::interfaces::{ClientLike, PubsubInterface};
use hydratecache_redis::fred::types::config::Config;
use hydratecache_redis::fred::types::{Builder, Value};
use hydratecache_redis::RedisTransport;

/// Every receive and poll in these tests gives up after this long.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The conformance harness: each `connect` is a new transport with its own
/// connections; raw publishes and subscriber counts go through a plain fred
/// client, as another program would.
pub struct RedisHarness {
    url: String,
    sharded: bool,
    raw: Client,
}

impl RedisHarness {
    pub async fn new(url: &str, sharded: bool) -> anyhow::Result<RedisHarness> {
        let raw = Builder::from_config(Config::from_url(url)?).build()?;
        raw.init().await?;
        Ok(RedisHarness {
            url: url.to_owned(),
            sharded,
            raw,
        })
    }
}

impl Harness for RedisHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let t = RedisTransport::builder()
                .sharded(self.sharded)
                .connect(&self.url)
                .await?;
            Ok(t.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let payload = Bytes::copy_from_slice(bytes);
            let _: i64 = if self.sharded {
                self.raw.spublish(topic, payload).await?
            } else {
                self.raw.publish(topic, payload).await?
            };
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        async move {
            let reply: Vec<Value> = if self.sharded {
                self.raw.pubsub_shardnumsub(topic).await?
            } else {
                self.raw.pubsub_numsub(topic).await?
            };
            let count = reply
                .get(1)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("unexpected NUMSUB reply {reply:?}"))?;
            Ok(Some(usize::try_from(count)?))
        }
        .boxed()
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics naming
/// `what` after [`TIMEOUT`].
pub async fn poll_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
