//! async-nats: publish then flush (so the publisher knows the server has it,
//! as hydratecache-nats does), subscribe then flush.

use std::sync::Arc;

use anyhow::Result;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::pipe::{Pipe, Publisher, Received};

pub(crate) struct RawNats {
    pub(crate) url: String,
}

struct Pub {
    client: async_nats::Client,
    subject: String,
}

impl Publisher for Pub {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.client
                .publish(self.subject.clone(), payload.into())
                .await?;
            self.client.flush().await?;
            Ok(())
        })
    }
}

impl Pipe for RawNats {
    fn publisher<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Arc<dyn Publisher>>> {
        Box::pin(async move {
            let client = async_nats::connect(&self.url).await?;
            Ok(Arc::new(Pub {
                client,
                subject: topic.to_owned(),
            }) as Arc<dyn Publisher>)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Received>>> {
        Box::pin(async move {
            let client = async_nats::connect(&self.url).await?;
            let sub = client.subscribe(topic.to_owned()).await?;
            client.flush().await?;
            Ok(sub
                .map(move |msg| {
                    let _client = &client;
                    Received::Payload(msg.payload)
                })
                .boxed())
        })
    }
}
