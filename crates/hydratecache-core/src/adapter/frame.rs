//! Frames and envelopes: decoding, size checks, building from options.

use std::time::SystemTime;

use bytes::Bytes;

use crate::envelope::{Envelope, EnvelopeError};
use crate::error::{Error, Result};
use crate::fields::{from_micros, micros, Kind, PublisherId, Ttl};
use crate::publish_options::PublishOptions;
use crate::transport::{Capabilities, Event, StartFrom, SubscribeOptions};

/// `t` cut to whole microseconds, as a subscriber will read it.
pub fn truncate_to_micros(t: SystemTime) -> SystemTime {
    from_micros(micros(t))
}

/// The per-message error for a frame of `topic` that is not an envelope.
pub fn malformed(topic: &str, key: Option<&str>, source: EnvelopeError) -> Error {
    Error::Malformed {
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        source,
    }
}

/// Decodes a wire frame into an event, or a per-message error naming `topic`
/// (logged), for adapters that carry [`Envelope::encode`]d bytes.
pub fn decode_frame(topic: &str, frame: &Bytes) -> Result<Event> {
    Envelope::decode_bytes(frame)
        .map(Event::Message)
        .map_err(|source| {
            tracing::warn!(topic, error = %source, len = frame.len(), "malformed message");
            malformed(topic, None, source)
        })
}

/// The envelope a publish of `payload` under `key` with `options` sends,
/// published by `publisher` at `now`: a TTL (updates only) starting at
/// `now`, the version, and sequence 0 for the caller to set.
pub fn envelope_for(
    kind: Kind,
    key: &str,
    payload: Bytes,
    options: PublishOptions,
    publisher: PublisherId,
    now: SystemTime,
) -> Envelope {
    Envelope {
        kind,
        key: key.to_owned(),
        payload,
        ttl: match kind {
            Kind::Update => options.ttl.map(|duration| Ttl {
                start: now,
                duration,
            }),
            _ => None,
        },
        version: options.version,
        publisher,
        sequence: 0,
        published_at: now,
    }
}

/// Checks `size` (the message as the backend sees it) against `limit`,
/// failing with [`Error::PayloadTooLarge`] before anything is sent.
///
/// `size` is usually [`Envelope::encoded_len`]; adapters that transform the
/// envelope (PostgreSQL sends it as text) pass the transformed size and
/// their own limit, and `max_payload` gives the largest payload that fits.
pub fn check_size(
    backend: &'static str,
    envelope: &Envelope,
    size: usize,
    limit: Option<usize>,
    max_payload: impl FnOnce() -> usize,
) -> Result<()> {
    match limit {
        Some(limit) if size > limit => Err(Error::PayloadTooLarge {
            backend,
            size,
            limit,
            max_payload: max_payload(),
        })
        .inspect_err(|e| {
            tracing::debug!(key = %envelope.key, error = e as &dyn std::error::Error, "publish refused")
        }),
        _ => Ok(()),
    }
}

/// [`check_size`] for adapters that send [`Envelope::encode`] as is, against
/// `capabilities`' limit.
pub fn check_envelope(
    backend: &'static str,
    capabilities: &Capabilities,
    envelope: &Envelope,
) -> Result<()> {
    check_size(
        backend,
        envelope,
        envelope.encoded_len(),
        capabilities.max_message_size,
        || {
            capabilities
                .max_payload(&envelope.key)
                .unwrap_or(usize::MAX)
        },
    )
}

/// `Err(Error::Unsupported)` for [`StartFrom::Earliest`] on a backend
/// without replay; `why` says what the backend lacks, for the message.
pub fn refuse_replay(
    backend: &'static str,
    options: &SubscribeOptions,
    why: &'static str,
) -> Result<()> {
    if options.start == StartFrom::Earliest {
        return Err(Error::Unsupported { backend, what: why });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::duration_micros;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn micros_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_micros(1_234_567);
        assert_eq!(micros(t), 1_234_567);
        assert_eq!(from_micros(micros(t)), t);
        assert_eq!(micros(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert!(from_micros(u64::MAX) > UNIX_EPOCH);
        assert_eq!(duration_micros(Duration::MAX), u64::MAX);
        let fine = UNIX_EPOCH + Duration::from_nanos(1_500);
        assert_eq!(
            truncate_to_micros(fine),
            UNIX_EPOCH + Duration::from_micros(1)
        );
    }

    #[test]
    fn envelopes_carry_the_ttl_only_on_updates() {
        let options = PublishOptions::new().ttl(Duration::from_secs(5)).version(7);
        let now = SystemTime::now();
        let publisher = PublisherId::random();
        let update = envelope_for(
            Kind::Update,
            "k",
            Bytes::from_static(b"v"),
            options,
            publisher,
            now,
        );
        assert_eq!(
            update.ttl.map(|t| (t.start, t.duration)),
            Some((now, Duration::from_secs(5)))
        );
        assert_eq!(
            (update.version, update.sequence, update.publisher),
            (Some(7), 0, publisher)
        );
        let delete = envelope_for(Kind::Delete, "k", Bytes::new(), options, publisher, now);
        assert_eq!((delete.ttl, delete.version), (None, Some(7)));
    }

    #[test]
    fn replay_is_refused_with_the_reason() {
        let earliest = SubscribeOptions::starting(StartFrom::Earliest);
        assert!(refuse_replay("t", &SubscribeOptions::default(), "why").is_ok());
        assert!(matches!(
            refuse_replay("t", &earliest, "why"),
            Err(Error::Unsupported {
                backend: "t",
                what: "why"
            })
        ));
    }
}
