#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod adapter;
mod channel;
mod channel_subscription;
mod codec;
mod envelope;
mod error;
mod fields;
mod memory;
mod publish_options;
mod transport;

pub use channel::{Channel, ChannelBuilder, Receipt, LEASE_INTERVALS};
pub use channel_subscription::{ChannelEvent, ChannelSubscription, Deletion, Heartbeat, Message};
pub use codec::{CborCodec, Codec, CodecPanicked, FnCodec};
pub use envelope::{Envelope, EnvelopeError};
pub use error::{BoxError, Error, Result};
pub use fields::{Kind, PublisherId, Ttl};
pub use memory::MemoryTransport;
pub use publish_options::PublishOptions;
pub use transport::{
    Capabilities, Event, Gap, GapReason, InterruptReason, Interruption, StartFrom,
    SubscribeOptions, Subscription, Transport,
};
