#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod channel;
mod channel_subscription;
pub mod codec;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
pub mod envelope;
pub mod error;
pub mod memory;
pub mod transport;

pub use channel::{
    Channel, ChannelBuilder, ChannelEvent, ChannelSubscription, Deletion, Heartbeat, Message,
    PublishOptions, Receipt,
};
pub use codec::{CborCodec, Codec, CodecPanicked, FnCodec};
pub use envelope::{Envelope, EnvelopeError, Kind, PublisherId, Ttl};
pub use error::{BoxError, Error, Result};
pub use memory::MemoryTransport;
pub use transport::{
    Capabilities, Event, Gap, GapReason, StartFrom, SubscribeOptions, Subscription, Transport,
};
