//! The one error type of hydratecache.

use crate::envelope::EnvelopeError;
use crate::fields::PublisherId;

/// A boxed error from a backend client or codec, kept as the `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in hydratecache and its adapters.
///
/// Subscription streams yield `Err` items for problems with *one* message
/// ([`Error::Malformed`], [`Error::Decode`]) and keep going.
///
/// A message says what failed; its cause is the error's
/// [`source()`](std::error::Error::source), not repeated in the message.
/// Print the whole chain: `anyhow`'s `{:#}`, or a `tracing` field
/// `error = &e as &dyn std::error::Error`.
///
/// ```
/// use hydratecache_core::Error;
/// let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let e = Error::backend("redis", "publish to \"t\"", refused);
/// assert_eq!(e.to_string(), "redis: publish to \"t\"");
/// assert_eq!(std::error::Error::source(&e).map(ToString::to_string).as_deref(), Some("connection refused"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The message is larger than the backend accepts; nothing was sent.
    #[error("message of {size} bytes is over the {backend} limit of {limit} bytes (largest payload for this key: {max_payload} bytes); nothing was sent")]
    PayloadTooLarge {
        /// Backend name.
        backend: &'static str,
        /// Size of the message as the backend would see it.
        size: usize,
        /// The backend's limit for that size.
        limit: usize,
        /// Largest payload that fits with this key and full metadata.
        max_payload: usize,
    },
    /// The topic name is not valid for this backend.
    #[error("invalid topic {topic:?} for {backend}: {reason}")]
    InvalidTopic {
        /// Backend name.
        backend: &'static str,
        /// The rejected topic.
        topic: String,
        /// Why it is rejected.
        reason: String,
    },
    /// Bytes on the topic that are not a valid envelope (for example written by
    /// another client); the subscription goes on.
    #[error("malformed message on topic {topic:?}")]
    Malformed {
        /// The topic it arrived on.
        topic: String,
        /// The message's key, where the transport carries it apart from the
        /// envelope and it could be read (Kafka's record key): a subscriber
        /// can then forget that key alone.
        key: Option<String>,
        /// What is wrong with it.
        #[source]
        source: EnvelopeError,
    },
    /// A valid envelope whose payload the channel's codec could not decode;
    /// the subscription goes on.
    #[error("cannot decode the value of key {key:?}")]
    Decode {
        /// The message's key.
        key: String,
        /// Who published it.
        publisher: PublisherId,
        /// The publisher's sequence number of the message: a subscriber that
        /// tracks sequences counts it as received.
        sequence: u64,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// The channel's codec could not encode a value; nothing was sent.
    #[error("cannot encode the value of key {key:?}")]
    Encode {
        /// The key being published.
        key: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// The envelope itself cannot be encoded (for example a key over 65,535 bytes).
    #[error("cannot encode the envelope")]
    Envelope(#[from] EnvelopeError),
    /// The backend does not offer what was asked (see [`Capabilities`](crate::Capabilities)).
    #[error("{backend} does not support {what}")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked.
        what: &'static str,
    },
    /// The backend client failed (connection refused, timeout, server error...).
    #[error("{backend}: {context}")]
    Backend {
        /// Backend name.
        backend: &'static str,
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The transport was closed.
    #[error("the {backend} transport is closed")]
    Closed {
        /// Backend name.
        backend: &'static str,
    },
}

impl Error {
    /// A [`Error::Backend`] from any client error.
    pub fn backend(
        backend: &'static str,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Error {
        Error::Backend {
            backend,
            context: context.into(),
            source: source.into(),
        }
    }

    /// An [`Error::InvalidTopic`].
    pub fn invalid_topic(
        backend: &'static str,
        topic: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::InvalidTopic {
            backend,
            topic: topic.into(),
            reason: reason.into(),
        }
    }

    /// Whether this error concerns one message only, with the subscription
    /// still running ([`Error::Malformed`] or [`Error::Decode`]).
    pub fn is_per_message(&self) -> bool {
        matches!(self, Error::Malformed { .. } | Error::Decode { .. })
    }
}
