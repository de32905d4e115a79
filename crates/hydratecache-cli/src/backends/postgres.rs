//! `postgres://` and `postgresql://`: hydratecache-postgres.
//!
//! Adapter API used: `PostgresTransport::builder()`,
//! `PostgresBuilder::{max_connections, connect_timeout, connect(url)}`,
//! `PostgresTransport::pool()` (for `SELECT version()`), and the re-exported
//! `sqlx`.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{Envelope, Transport};
use hydratecache_postgres::{sqlx, PostgresTransport};

use super::{ConnectOptions, ServerInfo, WireSize};

pub(super) struct Postgres(PostgresTransport);

pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Postgres> {
    let transport = PostgresTransport::builder()
        .max_connections(2)
        .connect_timeout(options.timeout)
        .connect(url)
        .await?;
    Ok(Postgres(transport))
}

impl super::Adapter for Postgres {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }

    fn server_info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        async move {
            let (version, full): (String, String) =
                sqlx::query_as("SELECT current_setting('server_version'), version()")
                    .fetch_one(self.0.pool())
                    .await
                    .context("SELECT version()")?;
            Ok(ServerInfo {
                version: Some(format!("PostgreSQL {version}")),
                details: vec![("build".to_owned(), full)],
            })
        }
        .boxed()
    }

    fn wire_size(&self, envelope: &Envelope) -> WireSize {
        // The NOTIFY payload is the envelope in padded base64.
        WireSize {
            bytes: envelope.encoded_len().div_ceil(3) * 4,
            note: Some("NOTIFY payload: the envelope in base64"),
        }
    }
}
