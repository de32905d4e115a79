#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channel;
pub mod codec;
pub mod envelope;
pub mod error;
#[cfg(feature = "local-cache")]
#[cfg_attr(docsrs, doc(cfg(feature = "local-cache")))]
pub mod local_cache;
pub mod memory;
pub mod transport;

pub use channel::{
    Channel, ChannelBuilder, ChannelEvent, ChannelSubscription, Deletion, Heartbeat, Message,
    PublishOptions, Receipt,
};
pub use codec::{CborCodec, Codec, FnCodec};
pub use envelope::{Envelope, EnvelopeError, Kind, PublisherId, Ttl};
pub use error::{BoxError, Error, Result};
#[cfg(feature = "local-cache")]
pub use local_cache::{CacheStats, Loaded, Loader, LocalCache, LocalCacheBuilder, RepairPolicy};
pub use memory::MemoryTransport;
pub use transport::{
    Capabilities, Event, Gap, GapReason, StartFrom, SubscribeOptions, Subscription, Transport,
};

// The workspace README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct WorkspaceReadme;
