//! fred: PUBLISH on one client, SUBSCRIBE on a subscriber client with the
//! same broadcast capacity hydratecache-redis uses.

use std::sync::Arc;

use anyhow::Result;
use fred::prelude::*;
use fred::types::Builder;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::pipe::{Pipe, Publisher, Received};

pub(crate) struct RawRedis {
    pub(crate) url: String,
}

struct Pub {
    client: Client,
    channel: String,
}

impl Publisher for Pub {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let _: i64 = self.client.publish(&self.channel, payload).await?;
            Ok(())
        })
    }
}

impl Pipe for RawRedis {
    fn publisher<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Arc<dyn Publisher>>> {
        Box::pin(async move {
            let client = Builder::from_config(Config::from_url(&self.url)?).build()?;
            client.init().await?;
            Ok(Arc::new(Pub {
                client,
                channel: topic.to_owned(),
            }) as Arc<dyn Publisher>)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Received>>> {
        Box::pin(async move {
            let mut builder = Builder::from_config(Config::from_url(&self.url)?);
            builder.with_performance_config(|p| p.broadcast_channel_capacity = 65_536);
            let sub = builder.build_subscriber_client()?;
            sub.init().await?;
            let rx = sub.message_rx();
            sub.subscribe(topic).await?;
            let stream = futures::stream::unfold((rx, sub), |(mut rx, sub)| async move {
                let item = match rx.recv().await {
                    Ok(msg) => match msg.value.as_bytes() {
                        Some(b) => Received::Payload(bytes::Bytes::copy_from_slice(b)),
                        None => Received::Error("not bytes".into()),
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Received::Gap(Some(n))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                };
                Some((item, (rx, sub)))
            });
            Ok(stream.boxed())
        })
    }
}
