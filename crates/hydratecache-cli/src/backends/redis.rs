//! `redis://` and `rediss://`: hydratecache-redis.
//!
//! Adapter API used: `RedisTransport::builder()`,
//! `RedisBuilder::connect_timeout`, `RedisBuilder::connect(url)`,
//! `RedisTransport::publisher()` (for `INFO server`).

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{Envelope, Transport};
use hydratecache_redis::fred::interfaces::ClientLike;
use hydratecache_redis::fred::types::InfoKind;
use hydratecache_redis::RedisTransport;

use super::{ConnectOptions, ServerInfo, WireSize};

pub(super) struct Redis(RedisTransport);

pub(super) async fn connect(url: &str, options: &ConnectOptions) -> Result<Redis> {
    let transport = RedisTransport::builder()
        .connect_timeout(options.timeout)
        .command_timeout(options.timeout)
        .connect(url)
        .await?;
    Ok(Redis(transport))
}

impl super::Adapter for Redis {
    fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }

    fn server_info(&self) -> BoxFuture<'_, Result<ServerInfo>> {
        async move {
            let text: String = self
                .0
                .publisher()
                .info(Some(InfoKind::Server))
                .await
                .context("INFO server")?;
            Ok(parse_info(&text))
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

/// `INFO server` lines (`redis_version:7.0.15`) to a version and details.
fn parse_info(text: &str) -> ServerInfo {
    let field = |name: &str| {
        text.lines()
            .filter_map(|line| line.trim().split_once(':'))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())
    };
    // Valkey answers redis_version too, and says who it is in server_name.
    let product = match field("server_name").as_deref() {
        Some("valkey") => "Valkey",
        _ => "Redis",
    };
    let version = field("valkey_version")
        .or_else(|| field("redis_version"))
        .map(|v| format!("{product} {v}"));
    let mut details = Vec::new();
    if let Some(mode) = field("redis_mode") {
        details.push(("mode".to_owned(), mode));
    }
    ServerInfo { version, details }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_info_server() {
        let info =
            parse_info("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nos:Linux\r\n");
        assert_eq!(info.version.as_deref(), Some("Redis 7.0.15"));
        assert_eq!(info.details, [("mode".to_owned(), "standalone".to_owned())]);
        let info =
            parse_info("redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n");
        assert_eq!(info.version.as_deref(), Some("Valkey 8.0.1"));
        assert_eq!(parse_info("").version, None);
    }
}
