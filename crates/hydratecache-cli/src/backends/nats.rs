//! `nats://` and `tls://`: hydratecache-nats.
//!
//! Adapter API used: `NatsTransport::builder()`,
//! `NatsBuilder::{publish_timeout, confirm_timeout, connect_with}`,
//! `NatsTransport::client()` (for the server's INFO).

use std::sync::Arc;

use anyhow::Result;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{Envelope, Transport};
use hydratecache_nats::async_nats::ConnectOptions;
use hydratecache_nats::NatsTransport;

use super::{ConnectOptions as Options, ServerInfo, WireSize};

pub(super) struct Nats(NatsTransport);

pub(super) async fn connect(url: &str, options: &Options) -> Result<Nats> {
    let transport = NatsTransport::builder()
        .publish_timeout(options.timeout)
        .confirm_timeout(options.timeout)
        .connect_with(
            url,
            ConnectOptions::new()
                .name("hydratecache-cli")
                .connection_timeout(options.timeout),
        )
        .await?;
    Ok(Nats(transport))
}

impl super::Adapter for Nats {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }

    fn server_info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        async move {
            // Sent by the server when the connection opened.
            let info = self.0.client().server_info();
            let version = (!info.version.is_empty()).then(|| format!("NATS {}", info.version));
            let mut details = Vec::new();
            if !info.server_name.is_empty() {
                details.push(("name".to_owned(), info.server_name.clone()));
            }
            if info.max_payload > 0 {
                details.push((
                    "max_payload".to_owned(),
                    format!("{} bytes", info.max_payload),
                ));
            }
            Ok(ServerInfo { version, details })
        }
        .boxed()
    }

    fn wire_size(&self, envelope: &Envelope) -> WireSize {
        WireSize {
            bytes: envelope.encoded_len(),
            note: None,
        }
    }
}
