//! A way to move payload bytes from one publisher to subscribers: through
//! hydratecache (`Channel<Payload>`, typed receipt) or a backend's raw client.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::StreamExt;
use hydratecache_core::{Channel, ChannelEvent, Transport};
use serde::{Deserialize, Serialize};

/// What a subscriber receives.
#[derive(Debug)]
pub(crate) enum Received {
    /// A payload (its bytes, as sent).
    Payload(bytes::Bytes),
    /// Messages may have been missed.
    Gap(Option<u64>),
    /// Something unreadable.
    Error(String),
}

/// Publishes payloads.
pub(crate) trait Publisher: Send + Sync {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// One side of a benchmark: the library or a raw client.
pub(crate) trait Pipe: Send + Sync {
    /// A publisher on `topic`.
    fn publisher<'a>(&'a self, topic: &'a str)
        -> BoxFuture<'a, anyhow::Result<Arc<dyn Publisher>>>;
    /// A subscription on `topic`, active when this resolves.
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<BoxStream<'static, Received>>>;
    /// Prepares `topic` (Kafka creates it); nothing elsewhere.
    fn prepare<'a>(&'a self, _topic: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// The value type of the library side: bytes as a CBOR byte string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Payload(pub(crate) Vec<u8>);

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// hydratecache: `Channel<Payload>` over a transport; each subscriber and the
/// publisher use the transport they are given (one client each, as separate
/// instances would).
/// Makes a new client of the backend under test.
pub(crate) type Connect =
    Box<dyn Fn() -> BoxFuture<'static, anyhow::Result<Arc<dyn Transport>>> + Send + Sync>;

pub(crate) struct Library {
    pub(crate) connect: Connect,
}

struct ChannelPublisher(Channel<Payload>);

/// The keys the library side publishes under, one per first payload byte.
static KEYS: std::sync::LazyLock<Vec<String>> =
    std::sync::LazyLock::new(|| (0..=255u8).map(|b| format!("k{b}")).collect());

impl Publisher for ChannelPublisher {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // The key varies like a cache's would; a cache has its keys
            // already, so making one is not counted against the library.
            let key = &KEYS[usize::from(payload.first().copied().unwrap_or(0))];
            self.0.publish(key, &Payload(payload)).await?;
            Ok(())
        })
    }
}

impl Pipe for Library {
    fn publisher<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Arc<dyn Publisher>>> {
        Box::pin(async move {
            let transport = (self.connect)().await?;
            Ok(Arc::new(ChannelPublisher(Channel::new(transport, topic))) as Arc<dyn Publisher>)
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<BoxStream<'static, Received>>> {
        Box::pin(async move {
            let transport = (self.connect)().await?;
            let channel: Channel<Payload> = Channel::new(Arc::clone(&transport), topic);
            let sub = channel.subscribe().await?;
            Ok(sub
                .filter_map(move |event| {
                    // The stream owns its client, as a subscriber instance would.
                    let _client = &transport;
                    async move {
                        match event {
                            Ok(ChannelEvent::Update(msg)) => {
                                Some(Received::Payload(msg.value.0.into()))
                            }
                            Ok(ChannelEvent::Gap(gap)) => Some(Received::Gap(gap.missed)),
                            Ok(_) => None,
                            Err(e) => {
                                Some(Received::Error(format!("{:#}", anyhow::Error::from(e))))
                            }
                        }
                    }
                })
                .boxed())
        })
    }
}
