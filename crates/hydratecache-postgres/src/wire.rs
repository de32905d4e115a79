//! Topic names and the text form of an envelope in a NOTIFY payload.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use hydratecache_core::{Capabilities, Envelope, EnvelopeError, Error, Result};

use crate::BACKEND;

/// Longest channel name PostgreSQL keeps, in bytes (`NAMEDATALEN - 1`).
///
/// `LISTEN` silently truncates longer identifiers and `pg_notify` rejects
/// them, so two long topics could share a channel: longer names are refused.
pub const MAX_TOPIC_LEN: usize = 63;

/// Longest NOTIFY payload PostgreSQL accepts, in bytes: it must be shorter
/// than 8,000 bytes (`NOTIFY_PAYLOAD_MAX_LENGTH` with the default 8 kB pages).
pub const MAX_NOTIFY_PAYLOAD: usize = 7_999;

/// Largest encoded envelope ([`Envelope::encoded_len`]) whose base64 text fits
/// in [`MAX_NOTIFY_PAYLOAD`]: 5,997 bytes, which encode to 7,996.
pub const MAX_MESSAGE_SIZE: usize = MAX_NOTIFY_PAYLOAD / 4 * 3;

/// Bytes of base64 text (standard alphabet, padded) for `n` bytes.
pub(crate) const fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Checks a topic name: 1 to [`MAX_TOPIC_LEN`] bytes of UTF-8, no NUL.
///
/// Every other character is allowed: the name is sent as a bind parameter to
/// `pg_notify` and as a double-quoted identifier (quotes doubled) to `LISTEN`,
/// so it is matched exactly, case included, and cannot change the SQL.
///
/// ```
/// use hydratecache_postgres::validate_topic;
/// assert!(validate_topic("users").is_ok());
/// assert!(validate_topic("Robert'); DROP TABLE students;--").is_ok());
/// assert!(validate_topic("").is_err());
/// assert!(validate_topic(&"x".repeat(64)).is_err());
/// ```
pub fn validate_topic(topic: &str) -> Result<()> {
    let reason = if topic.is_empty() {
        "a PostgreSQL channel name cannot be empty".to_owned()
    } else if topic.len() > MAX_TOPIC_LEN {
        format!(
            "{} bytes is over PostgreSQL's limit of {MAX_TOPIC_LEN} bytes for a channel name (longer names would be truncated)",
            topic.len()
        )
    } else if topic.contains('\0') {
        "a PostgreSQL channel name cannot contain a NUL character".to_owned()
    } else {
        return Ok(());
    };
    Err(Error::invalid_topic(BACKEND, topic, reason))
}

/// The NOTIFY payload for `envelope`: its encoding in base64, checked against
/// the size limit before anything is sent.
pub(crate) fn encode(envelope: &Envelope) -> Result<String> {
    let encoded_len = envelope.encoded_len();
    let text_len = base64_len(encoded_len);
    hydratecache_core::adapter::check_size(
        BACKEND,
        envelope,
        text_len,
        Some(MAX_NOTIFY_PAYLOAD),
        || {
            Capabilities::new(Some(MAX_MESSAGE_SIZE))
                .max_payload(&envelope.key)
                .unwrap_or(0)
        },
    )
    .inspect_err(|_| {
        tracing::debug!(
            key = %envelope.key,
            encoded_len,
            text_len,
            limit = MAX_NOTIFY_PAYLOAD,
            "envelope too large for a NOTIFY payload once base64-encoded"
        );
    })?;
    let bytes = envelope.encode()?;
    Ok(STANDARD.encode(bytes))
}

/// The envelope in a NOTIFY payload, or why it is not one.
pub(crate) fn decode(payload: &str) -> std::result::Result<Envelope, EnvelopeError> {
    match STANDARD.decode(payload) {
        Ok(bytes) => Envelope::decode_bytes(&Bytes::from(bytes)),
        // Not base64, so not from a hydratecache publisher (whose payloads
        // start with "xw", the magic byte 0xC7 in base64).
        Err(_) => Err(EnvelopeError::BadMagic {
            found: payload.as_bytes().first().copied().unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_message_size_is_the_largest_that_fits() {
        assert_eq!(MAX_MESSAGE_SIZE, 5_997);
        assert!(base64_len(MAX_MESSAGE_SIZE) <= MAX_NOTIFY_PAYLOAD);
        assert!(base64_len(MAX_MESSAGE_SIZE + 1) > MAX_NOTIFY_PAYLOAD);
        for n in 0..100 {
            assert_eq!(base64_len(n), STANDARD.encode(vec![0u8; n]).len());
        }
    }

    #[test]
    fn round_trip_and_limit() {
        let caps = Capabilities::new(Some(MAX_MESSAGE_SIZE));
        let max = caps.max_payload("k").unwrap_or(0);
        let full = |n: usize| Envelope {
            ttl: Some(hydratecache_core::Ttl::starting_now(
                std::time::Duration::from_secs(1),
            )),
            version: Some(7),
            ..Envelope::update("k", vec![0x5au8; n])
        };
        let text = encode(&full(max)).expect("the maximum fits");
        assert_eq!(text.len(), base64_len(MAX_MESSAGE_SIZE));
        let back = decode(&text).expect("decodes");
        assert_eq!(back.payload.len(), max);
        match encode(&full(max + 1)) {
            Err(Error::PayloadTooLarge {
                size,
                limit,
                max_payload,
                ..
            }) => {
                assert_eq!((size, limit, max_payload), (8_000, 7_999, max));
            }
            other => panic!("one byte over: {other:?}"),
        }
    }

    /// Test vector 1 of docs/wire-format.md as a NOTIFY payload.
    #[test]
    fn wire_format_vector_1_as_text() {
        const TEXT: &str = "xwEBAAECAwQFBgcICQoLDA0ODxAAAAAAAAAAAQAGCiQYHkAAAAJrMWhp";
        let env = decode(TEXT).expect("vector 1 decodes");
        assert_eq!((env.key.as_str(), &env.payload[..]), ("k1", &b"hi"[..]));
        assert_eq!(
            (env.publisher.0, env.sequence),
            (0x0102030405060708090a0b0c0d0e0f10, 1)
        );
        assert_eq!(
            env.published_at,
            std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_000)
        );
        assert_eq!(encode(&env).expect("encodes"), TEXT);
    }

    #[test]
    fn garbage_is_an_error() {
        for text in [
            "",
            "xyz",
            "AAAA",
            "xwE=",
            "ǀǀǀǀ",
            "====",
            "not base64 at all!",
        ] {
            assert!(decode(text).is_err(), "{text:?} decoded");
        }
        assert!(matches!(
            decode("xyz"),
            Err(EnvelopeError::BadMagic { found: b'x' })
        ));
    }

    #[test]
    fn topics() {
        assert!(validate_topic(&"é".repeat(31)).is_ok()); // 62 bytes
        assert!(validate_topic(&format!("{}x", "é".repeat(31))).is_ok()); // 63
        assert!(validate_topic(&"é".repeat(32)).is_err()); // 64
        assert!(validate_topic("a\0b").is_err());
        assert!(validate_topic("\"; NOTIFY x, 'y'; --").is_ok());
    }
}
