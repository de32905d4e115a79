//! sqlx: `SELECT pg_notify($1, $2)` through a pool of 16, `PgListener` to
//! receive. NOTIFY carries text, so the payload travels base64-encoded, as
//! hydratecache-postgres sends its envelope.

use std::sync::Arc;

use anyhow::Result;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::pipe::{Pipe, Publisher, Received};

pub(crate) struct RawPostgres {
    pub(crate) url: String,
}

struct Pub {
    pool: PgPool,
    channel: String,
}

impl Publisher for Pub {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.channel)
                .bind(BASE64.encode(&payload))
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }
}

impl Pipe for RawPostgres {
    fn publisher<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<Arc<dyn Publisher>>> {
        Box::pin(async move {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .connect(&self.url)
                .await?;
            Ok(Arc::new(Pub {
                pool,
                channel: topic.to_owned(),
            }) as Arc<dyn Publisher>)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<BoxStream<'static, Received>>> {
        Box::pin(async move {
            let mut listener = PgListener::connect(&self.url).await?;
            listener.listen(topic).await?;
            let stream = futures::stream::unfold(listener, |mut listener| async move {
                let item = match listener.try_recv().await {
                    Ok(Some(n)) => match BASE64.decode(n.payload()).ok() {
                        Some(b) => Received::Payload(b.into()),
                        None => Received::Error("not base64".into()),
                    },
                    Ok(None) => Received::Gap(None),
                    Err(e) => Received::Error(e.to_string()),
                };
                Some((item, listener))
            });
            Ok(stream.boxed())
        })
    }
}
