//! The wire envelope: one cache update (or delete, or heartbeat) with the
//! metadata a subscriber needs to order it, expire it and notice gaps.
//!
//! The byte layout is documented in `docs/wire-format.md`; the test vectors
//! there are checked by this module's tests.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::fields::{duration_micros, from_micros, micros};
use crate::fields::{Kind, PublisherId, Ttl};

/// First byte of every envelope.
pub const MAGIC: u8 = 0xC7;
/// The envelope format version this crate writes.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes before the key: magic, version, kind, flags, publisher, sequence,
/// publish time and key length.
pub const FIXED_HEADER_LEN: usize = 38;
/// Bytes the optional fields (TTL and version) add when present.
pub const OPTIONAL_FIELDS_LEN: usize = 24;
/// The largest key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

const FLAG_TTL: u8 = 0b01;
const FLAG_VERSION: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_TTL | FLAG_VERSION;
/// Named in decode errors, so an old subscriber says which release it runs.
const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One message as it travels between a publisher and its subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Update, delete or heartbeat.
    pub kind: Kind,
    /// The cache key (empty for heartbeats).
    pub key: String,
    /// The encoded value (empty for deletes and heartbeats).
    pub payload: Bytes,
    /// Optional time to live of the value.
    pub ttl: Option<Ttl>,
    /// Optional version of the value at the source of truth (monotonic per key).
    pub version: Option<u64>,
    /// Who published it.
    pub publisher: PublisherId,
    /// The publisher's sequence number for this topic, starting at 1.
    pub sequence: u64,
    /// When it was published (microsecond precision on the wire).
    pub published_at: SystemTime,
}

/// Why bytes could not be decoded as an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Fewer bytes than the layout requires.
    #[error("envelope truncated: needed {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the layout requires up to the field that was cut.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The first byte is not [`MAGIC`]: not a hydratecache message.
    #[error("not a hydratecache envelope (first byte {found:#04x}, expected {MAGIC:#04x})")]
    BadMagic {
        /// The byte found.
        found: u8,
    },
    /// Written by a newer, incompatible format.
    #[error(
        "envelope format version {found} is not supported: hydratecache-core \
         {CORE_VERSION} reads format version {FORMAT_VERSION}; the publisher runs \
         a newer release, so upgrade this subscriber's hydratecache-core"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u8,
    },
    /// A kind byte this build does not know.
    #[error(
        "unknown message kind {0}: hydratecache-core {CORE_VERSION} reads kinds 1-3 \
         of envelope format version {FORMAT_VERSION}; the publisher runs a newer \
         release, so upgrade this subscriber's hydratecache-core"
    )]
    UnknownKind(u8),
    /// Flag bits this build does not know.
    #[error(
        "unknown envelope flags {0:#010b}: hydratecache-core {CORE_VERSION} knows \
         the flags {KNOWN_FLAGS:#010b} of envelope format version {FORMAT_VERSION}; \
         the publisher runs a newer release, so upgrade this subscriber's \
         hydratecache-core"
    )]
    UnknownFlags(u8),
    /// The key is not UTF-8.
    #[error("envelope key is not valid UTF-8")]
    KeyNotUtf8,
    /// The key does not fit the 16-bit length field.
    #[error("key of {0} bytes is longer than the maximum of {MAX_KEY_LEN}")]
    KeyTooLong(usize),
    /// A delete or heartbeat carried a payload.
    #[error("{kind:?} message carries a {len}-byte payload")]
    UnexpectedPayload {
        /// The message kind.
        kind: Kind,
        /// Payload length found.
        len: usize,
    },
}

impl Envelope {
    /// An update of `key` to `payload`, with sequence 0 and the current time;
    /// [`Channel`](crate::Channel) fills in publisher and sequence.
    pub fn update(key: impl Into<String>, payload: impl Into<Bytes>) -> Envelope {
        Envelope {
            kind: Kind::Update,
            key: key.into(),
            payload: payload.into(),
            ttl: None,
            version: None,
            publisher: PublisherId::default(),
            sequence: 0,
            published_at: SystemTime::now(),
        }
    }

    /// A delete of `key`.
    pub fn delete(key: impl Into<String>) -> Envelope {
        Envelope {
            kind: Kind::Delete,
            ..Envelope::update(key, Bytes::new())
        }
    }

    /// Encoded size of this envelope, in bytes.
    pub fn encoded_len(&self) -> usize {
        FIXED_HEADER_LEN
            + self.key.len()
            + if self.ttl.is_some() { 16 } else { 0 }
            + if self.version.is_some() { 8 } else { 0 }
            + self.payload.len()
    }

    /// Encodes into a new buffer (one allocation, of exactly
    /// [`encoded_len`](Self::encoded_len) bytes).
    ///
    /// ```
    /// use hydratecache_core::Envelope;
    /// let env = Envelope::update("user:1", &b"hello"[..]);
    /// let bytes = env.encode()?;
    /// assert_eq!(Envelope::decode(&bytes)?.payload, env.payload);
    /// # Ok::<(), hydratecache_core::EnvelopeError>(())
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out)?;
        Ok(out)
    }

    /// Appends the encoding to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EnvelopeError> {
        let key_len =
            u16::try_from(self.key.len()).map_err(|_| EnvelopeError::KeyTooLong(self.key.len()))?;
        let mut flags = 0;
        if self.ttl.is_some() {
            flags |= FLAG_TTL;
        }
        if self.version.is_some() {
            flags |= FLAG_VERSION;
        }
        out.reserve(self.encoded_len());
        out.extend_from_slice(&[MAGIC, FORMAT_VERSION, self.kind.to_byte(), flags]);
        out.extend_from_slice(&self.publisher.0.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&micros(self.published_at).to_be_bytes());
        out.extend_from_slice(&key_len.to_be_bytes());
        out.extend_from_slice(self.key.as_bytes());
        if let Some(ttl) = &self.ttl {
            out.extend_from_slice(&micros(ttl.start).to_be_bytes());
            out.extend_from_slice(&duration_micros(ttl.duration).to_be_bytes());
        }
        if let Some(version) = self.version {
            out.extend_from_slice(&version.to_be_bytes());
        }
        out.extend_from_slice(&self.payload);
        Ok(())
    }

    /// Decodes untrusted bytes, copying the payload.
    ///
    /// Never panics; allocates at most the input's size.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        Self::decode_with(bytes, |range| Bytes::copy_from_slice(&bytes[range]))
    }

    /// Decodes untrusted bytes; the payload shares `bytes`' buffer.
    pub fn decode_bytes(bytes: &Bytes) -> Result<Envelope, EnvelopeError> {
        Self::decode_with(bytes, |range| bytes.slice(range))
    }

    fn decode_with(
        bytes: &[u8],
        payload: impl FnOnce(std::ops::Range<usize>) -> Bytes,
    ) -> Result<Envelope, EnvelopeError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.u8()?;
        if magic != MAGIC {
            return Err(EnvelopeError::BadMagic { found: magic });
        }
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(EnvelopeError::UnsupportedVersion { found: version });
        }
        let kind_byte = r.u8()?;
        let kind = Kind::from_byte(kind_byte).ok_or(EnvelopeError::UnknownKind(kind_byte))?;
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(EnvelopeError::UnknownFlags(flags));
        }
        let publisher = PublisherId(u128::from_be_bytes(r.array()?));
        let sequence = u64::from_be_bytes(r.array()?);
        let published_at = from_micros(u64::from_be_bytes(r.array()?));
        let key_len = usize::from(u16::from_be_bytes(r.array()?));
        let key = std::str::from_utf8(r.take(key_len)?)
            .map_err(|_| EnvelopeError::KeyNotUtf8)?
            .to_owned();
        let ttl = if flags & FLAG_TTL != 0 {
            let start = from_micros(u64::from_be_bytes(r.array()?));
            let duration = Duration::from_micros(u64::from_be_bytes(r.array()?));
            Some(Ttl { start, duration })
        } else {
            None
        };
        let version = if flags & FLAG_VERSION != 0 {
            Some(u64::from_be_bytes(r.array()?))
        } else {
            None
        };
        let rest = r.pos..bytes.len();
        if kind != Kind::Update && !rest.is_empty() {
            return Err(EnvelopeError::UnexpectedPayload {
                kind,
                len: rest.len(),
            });
        }
        Ok(Envelope {
            kind,
            key,
            payload: payload(rest),
            ttl,
            version,
            publisher,
            sequence,
            published_at,
        })
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EnvelopeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let slice = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(slice)
            }
            None => Err(EnvelopeError::Truncated {
                needed: self.pos.saturating_add(n),
                got: self.bytes.len(),
            }),
        }
    }

    fn u8(&mut self) -> Result<u8, EnvelopeError> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn at(us: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us)
    }

    /// The vectors of docs/wire-format.md, byte for byte.
    fn vectors() -> Vec<(&'static str, Envelope, Vec<u8>)> {
        vec![
            (
                "update, no TTL, no version",
                Envelope {
                    kind: Kind::Update,
                    key: "k1".into(),
                    payload: Bytes::from_static(b"hi"),
                    ttl: None,
                    version: None,
                    publisher: PublisherId(0x0102030405060708090a0b0c0d0e0f10),
                    sequence: 1,
                    published_at: at(1_700_000_000_000_000),
                },
                hex("c7 01 01 00
                     0102030405060708090a0b0c0d0e0f10
                     0000000000000001
                     00060a24181e4000
                     0002 6b31
                     6869"),
            ),
            (
                "update with TTL and version",
                Envelope {
                    kind: Kind::Update,
                    key: "user:42".into(),
                    payload: Bytes::from_static(&[0xa1, 0x61, 0x61, 0x01]),
                    ttl: Some(Ttl {
                        start: at(1_700_000_000_000_000),
                        duration: Duration::from_secs(30),
                    }),
                    version: Some(7),
                    publisher: PublisherId(0xff),
                    sequence: 258,
                    published_at: at(1_700_000_000_000_001),
                },
                hex("c7 01 01 03
                     000000000000000000000000000000ff
                     0000000000000102
                     00060a24181e4001
                     0007 757365723a3432
                     00060a24181e4000 0000000001c9c380
                     0000000000000007
                     a1616101"),
            ),
            (
                "delete with version",
                Envelope {
                    kind: Kind::Delete,
                    key: "k".into(),
                    payload: Bytes::new(),
                    ttl: None,
                    version: Some(3),
                    publisher: PublisherId(1),
                    sequence: 2,
                    published_at: at(0),
                },
                hex("c7 01 02 02
                     00000000000000000000000000000001
                     0000000000000002
                     0000000000000000
                     0001 6b
                     0000000000000003"),
            ),
            (
                "heartbeat",
                Envelope {
                    kind: Kind::Heartbeat,
                    key: String::new(),
                    payload: Bytes::new(),
                    ttl: None,
                    version: None,
                    publisher: PublisherId(1),
                    sequence: 9,
                    published_at: at(1),
                },
                hex("c7 01 03 00
                     00000000000000000000000000000001
                     0000000000000009
                     0000000000000001
                     0000"),
            ),
        ]
    }

    #[test]
    fn wire_format_vectors_decode_and_reencode() {
        for (name, env, bytes) in vectors() {
            assert_eq!(env.encode().expect(name), bytes, "encode: {name}");
            assert_eq!(Envelope::decode(&bytes).expect(name), env, "decode: {name}");
            assert_eq!(
                Envelope::decode_bytes(&Bytes::from(bytes.clone())).expect(name),
                env,
                "decode_bytes: {name}"
            );
            assert_eq!(env.encoded_len(), bytes.len(), "encoded_len: {name}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (name, _, bytes) in vectors() {
            for cut in 0..bytes.len() {
                // A cut inside the payload of an update is still a valid, shorter payload.
                let res = Envelope::decode(&bytes[..cut]);
                if let Ok(env) = res {
                    assert_eq!(env.kind, Kind::Update, "{name} cut at {cut}");
                }
            }
            assert!(Envelope::decode(&bytes[..FIXED_HEADER_LEN - 1]).is_err());
        }
    }

    #[test]
    fn rejects_foreign_and_future_input() {
        assert_eq!(
            Envelope::decode(b"xyz"),
            Err(EnvelopeError::BadMagic { found: b'x' })
        );
        assert_eq!(
            Envelope::decode(&[MAGIC, 2, 1, 0]),
            Err(EnvelopeError::UnsupportedVersion { found: 2 })
        );
        let mut bytes = vectors()[0].2.clone();
        bytes[2] = 9;
        assert_eq!(Envelope::decode(&bytes), Err(EnvelopeError::UnknownKind(9)));
        bytes[2] = 1;
        bytes[3] = 0x80;
        assert_eq!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::UnknownFlags(0x80))
        );
        let msg = EnvelopeError::UnsupportedVersion { found: 2 }.to_string();
        assert!(
            msg.contains("version 2") && msg.contains("version 1"),
            "{msg}"
        );
    }

    #[test]
    fn key_length_past_the_end_is_truncated_not_panic() {
        let mut bytes = vectors()[0].2.clone();
        bytes[36] = 0xff;
        bytes[37] = 0xff;
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(EnvelopeError::Truncated { .. })
        ));
    }

    #[test]
    fn key_too_long_is_an_encode_error() {
        let env = Envelope::update("x".repeat(MAX_KEY_LEN + 1), Bytes::new());
        assert_eq!(
            env.encode(),
            Err(EnvelopeError::KeyTooLong(MAX_KEY_LEN + 1))
        );
    }

    #[test]
    fn ttl_remaining_counts_down_to_zero() {
        let ttl = Ttl {
            start: at(1_000_000),
            duration: Duration::from_secs(10),
        };
        assert_eq!(ttl.remaining_at(at(4_000_000)), Duration::from_secs(7));
        assert_eq!(ttl.remaining_at(at(20_000_000)), Duration::ZERO);
    }

    #[test]
    fn publisher_ids_differ() {
        assert_ne!(PublisherId::random(), PublisherId::random());
    }

    #[test]
    fn a_random_id_carries_its_start_and_random_upper_bits() {
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let before = ms(SystemTime::now());
        let ids: Vec<PublisherId> = (0..64).map(|_| PublisherId::random()).collect();
        let after = ms(SystemTime::now());
        for id in &ids {
            assert!((before..=after).contains(&id.start_millis()), "{id}");
        }
        let mut upper: Vec<u128> = ids.iter().map(|id| id.0 >> 48).collect();
        upper.sort_unstable();
        upper.dedup();
        assert_eq!(upper.len(), ids.len(), "the random part repeats");
    }
}
