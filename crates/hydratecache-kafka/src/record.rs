//! How an [`Envelope`] maps onto a Kafka record, and back.
//!
//! The record key is the cache key (UTF-8), the record value is the payload
//! (null for deletes and heartbeats, so compaction drops deleted keys), and
//! the metadata travels in record headers with big-endian binary values:
//!
//! | header    | bytes | content                                                      |
//! |-----------|-------|--------------------------------------------------------------|
//! | `hc-v`    | 1     | header format version, `1`                                   |
//! | `hc-kind` | 1     | `1` update, `2` delete, `3` heartbeat                        |
//! | `hc-pub`  | 16    | publisher id (u128)                                          |
//! | `hc-seq`  | 8     | publisher sequence number (u64)                              |
//! | `hc-ts`   | 8     | publish time, microseconds since the Unix epoch (u64)        |
//! | `hc-ttl`  | 16    | optional: TTL start (µs since the epoch) then duration (µs)  |
//! | `hc-ver`  | 8     | optional: version of the value at the source of truth (u64)  |
//!
//! The Kafka record timestamp is the publish time in milliseconds. Other
//! headers are ignored, so tracing headers added by proxies do no harm.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use hydratecache_core::adapter::{
    duration_micros, from_micros, micros, FIXED_HEADER_LEN, OPTIONAL_FIELDS_LEN,
};
use hydratecache_core::{Envelope, EnvelopeError, Kind, PublisherId, Ttl};
use rskafka::chrono::{DateTime, Utc};
use rskafka::record::Record;

/// Header carrying the header format version ([`HEADER_FORMAT_VERSION`]).
pub const HEADER_VERSION: &str = "hc-v";
/// Header carrying the message kind (1 update, 2 delete, 3 heartbeat).
pub const HEADER_KIND: &str = "hc-kind";
/// Header carrying the publisher id (16 bytes, big-endian).
pub const HEADER_PUBLISHER: &str = "hc-pub";
/// Header carrying the publisher's sequence number (8 bytes, big-endian).
pub const HEADER_SEQUENCE: &str = "hc-seq";
/// Header carrying the publish time in µs since the Unix epoch (8 bytes, big-endian).
pub const HEADER_TIMESTAMP: &str = "hc-ts";
/// Optional header carrying the TTL: start then duration, in µs (16 bytes, big-endian).
pub const HEADER_TTL: &str = "hc-ttl";
/// Optional header carrying the value's version (8 bytes, big-endian).
pub const HEADER_VALUE_VERSION: &str = "hc-ver";
/// The header format this crate writes and reads.
pub const HEADER_FORMAT_VERSION: u8 = 1;

/// Bytes of a Kafka record batch (v2) before its records, counting the
/// 12-byte log overhead (base offset and length) that brokers include when
/// they compare a batch with `message.max.bytes`.
pub(crate) const BATCH_OVERHEAD: usize = 61;

/// Upper bound of a record's framing: length (varint, ≤ 5), attributes (1),
/// timestamp delta (varlong, ≤ 10), offset delta, key length and value
/// length (varints, ≤ 5 each).
const RECORD_FRAMING_MAX: usize = 5 + 1 + 10 + 5 + 5 + 5;

/// Encoded size of the headers of an envelope with every optional field:
/// the count (1 byte) plus, per header, two one-byte varint lengths, the
/// name and the value.
const HEADERS_MAX: usize = 1
    + header_len(HEADER_VERSION, 1)
    + header_len(HEADER_KIND, 1)
    + header_len(HEADER_PUBLISHER, 16)
    + header_len(HEADER_SEQUENCE, 8)
    + header_len(HEADER_TIMESTAMP, 8)
    + header_len(HEADER_TTL, 16)
    + header_len(HEADER_VALUE_VERSION, 8);

const fn header_len(name: &str, value: usize) -> usize {
    // Names and values are shorter than 64 bytes: one varint byte each.
    1 + name.len() + 1 + value
}

/// Bytes a batch holding one envelope takes, at most, beyond its
/// [`Envelope::encoded_len`]. The transport's `max_message_size` is the
/// broker limit minus this, so [`Capabilities::max_payload`] stays exact.
///
/// [`Capabilities::max_payload`]: hydratecache_core::Capabilities::max_payload
pub const KAFKA_OVERHEAD: usize =
    BATCH_OVERHEAD + RECORD_FRAMING_MAX + HEADERS_MAX - (FIXED_HEADER_LEN + OPTIONAL_FIELDS_LEN);

/// An upper bound of the bytes `record` takes inside a batch.
pub(crate) fn record_size_bound(record: &Record) -> usize {
    let headers: usize = record
        .headers
        .iter()
        .map(|(k, v)| varint_len(k.len()) + k.len() + varint_len(v.len()) + v.len())
        .sum();
    RECORD_FRAMING_MAX
        + varint_len(record.headers.len())
        + headers
        + record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
}

/// Length of the zigzag varint Kafka writes for the length `n`.
fn varint_len(n: usize) -> usize {
    let mut v = (n as u64) << 1;
    let mut len = 1;
    while v >= 0x80 {
        v >>= 7;
        len += 1;
    }
    len
}

/// The record for `envelope`.
pub fn to_record(envelope: &Envelope) -> Record {
    let mut headers = BTreeMap::new();
    headers.insert(HEADER_VERSION.to_owned(), vec![HEADER_FORMAT_VERSION]);
    headers.insert(HEADER_KIND.to_owned(), vec![envelope.kind.to_byte()]);
    headers.insert(
        HEADER_PUBLISHER.to_owned(),
        envelope.publisher.0.to_be_bytes().to_vec(),
    );
    headers.insert(
        HEADER_SEQUENCE.to_owned(),
        envelope.sequence.to_be_bytes().to_vec(),
    );
    let published_us = micros(envelope.published_at);
    headers.insert(
        HEADER_TIMESTAMP.to_owned(),
        published_us.to_be_bytes().to_vec(),
    );
    if let Some(ttl) = &envelope.ttl {
        let mut value = Vec::with_capacity(16);
        value.extend_from_slice(&micros(ttl.start).to_be_bytes());
        value.extend_from_slice(&duration_micros(ttl.duration).to_be_bytes());
        headers.insert(HEADER_TTL.to_owned(), value);
    }
    if let Some(version) = envelope.version {
        headers.insert(
            HEADER_VALUE_VERSION.to_owned(),
            version.to_be_bytes().to_vec(),
        );
    }
    let value = match envelope.kind {
        Kind::Update => Some(envelope.payload.to_vec()),
        // A tombstone: log compaction removes the key.
        _ => None,
    };
    let millis = i64::try_from(published_us / 1000).unwrap_or(i64::MAX);
    Record {
        key: Some(envelope.key.as_bytes().to_vec()),
        value,
        headers,
        timestamp: DateTime::<Utc>::from_timestamp_millis(millis).unwrap_or_default(),
    }
}

fn header<const N: usize>(record: &Record, name: &str) -> Result<Option<[u8; N]>, EnvelopeError> {
    match record.headers.get(name) {
        None => Ok(None),
        Some(value) => <[u8; N]>::try_from(value.as_slice())
            .map(Some)
            .map_err(|_| EnvelopeError::Truncated {
                needed: N,
                got: value.len(),
            }),
    }
}

fn required<const N: usize>(record: &Record, name: &str) -> Result<[u8; N], EnvelopeError> {
    header(record, name)?.ok_or(EnvelopeError::Truncated { needed: N, got: 0 })
}

/// The envelope a record carries, or why it is not one of ours.
///
/// A record without the `hc-v` header (written by another producer) is
/// reported as [`EnvelopeError::BadMagic`] with the first byte of its value
/// (0 when empty or null); a missing or mis-sized metadata header as
/// [`EnvelopeError::Truncated`] with the size expected and the size found.
pub fn from_record(record: Record) -> Result<Envelope, EnvelopeError> {
    let Some(version) = record.headers.get(HEADER_VERSION) else {
        let found = record
            .value
            .as_ref()
            .and_then(|v| v.first().copied())
            .unwrap_or(0);
        return Err(EnvelopeError::BadMagic { found });
    };
    match version.as_slice() {
        [HEADER_FORMAT_VERSION] => {}
        [found, ..] => return Err(EnvelopeError::UnsupportedVersion { found: *found }),
        [] => return Err(EnvelopeError::Truncated { needed: 1, got: 0 }),
    }
    let [kind_byte] = required::<1>(&record, HEADER_KIND)?;
    let kind = Kind::from_byte(kind_byte).ok_or(EnvelopeError::UnknownKind(kind_byte))?;
    let publisher = PublisherId(u128::from_be_bytes(required(&record, HEADER_PUBLISHER)?));
    let sequence = u64::from_be_bytes(required(&record, HEADER_SEQUENCE)?);
    let published_at = from_micros(u64::from_be_bytes(required(&record, HEADER_TIMESTAMP)?));
    let ttl = header::<16>(&record, HEADER_TTL)?.map(|b| {
        let mut start = [0u8; 8];
        let mut duration = [0u8; 8];
        start.copy_from_slice(&b[..8]);
        duration.copy_from_slice(&b[8..]);
        Ttl {
            start: from_micros(u64::from_be_bytes(start)),
            duration: Duration::from_micros(u64::from_be_bytes(duration)),
        }
    });
    let version = header::<8>(&record, HEADER_VALUE_VERSION)?.map(u64::from_be_bytes);
    let key = match record.key {
        None => String::new(),
        Some(bytes) => String::from_utf8(bytes).map_err(|_| EnvelopeError::KeyNotUtf8)?,
    };
    let payload = match (kind, record.value) {
        (Kind::Update, value) => Bytes::from(value.unwrap_or_default()),
        (_, None) => Bytes::new(),
        (_, Some(value)) if value.is_empty() => Bytes::new(),
        (kind, Some(value)) => {
            return Err(EnvelopeError::UnexpectedPayload {
                kind,
                len: value.len(),
            })
        }
    };
    Ok(Envelope {
        kind,
        key,
        payload,
        ttl,
        version,
        publisher,
        sequence,
        published_at,
    })
}

/// A record this build cannot read as an envelope, with its key when that
/// is readable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Unreadable {
    /// Why it cannot be read.
    pub error: EnvelopeError,
    /// The record key as UTF-8, if it is: the cache key the record changes.
    /// `None` for a record without the `hc-v` header (another producer's,
    /// not a change of ours).
    pub key: Option<String>,
}

/// [`from_record`], with the record's key on an error: a record from a
/// newer release (a format version, kind or flag this build does not know)
/// still names the key it changed, so a subscriber can forget that key.
pub fn read_record(record: Record) -> Result<Envelope, Unreadable> {
    let key = record
        .headers
        .contains_key(HEADER_VERSION)
        .then(|| record.key.as_deref().map(std::str::from_utf8))
        .flatten()
        .and_then(|key| key.ok().map(str::to_owned));
    from_record(record).map_err(|error| Unreadable { error, key })
}

/// Kafka's default partitioner hash (`Utils.murmur2` of the Java client),
/// so that this crate, Java producers and librdkafka's `murmur2` partitioner
/// put a key in the same partition.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(&first) = rest.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition index (0-based) of `key` among `partitions` partitions, as
/// Kafka's default partitioner picks it.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    let positive = (murmur2(key) & 0x7fff_ffff) as usize;
    positive % partitions.max(1)
}

/// Validates a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`,
/// not `.` or `..`.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("a topic name cannot be empty".into());
    }
    if topic.len() > 249 {
        return Err(format!(
            "a topic name has at most 249 characters, this one has {}",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are not valid topic names".into());
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{c:?} is not allowed: only ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(key: &str, payload: usize) -> Envelope {
        Envelope {
            ttl: Some(Ttl {
                start: from_micros(1_700_000_000_123_456),
                duration: Duration::from_micros(30_000_001),
            }),
            version: Some(u64::MAX),
            publisher: PublisherId(u128::MAX - 7),
            sequence: 42,
            published_at: from_micros(1_700_000_000_654_321),
            ..Envelope::update(key, vec![0xa5; payload])
        }
    }

    fn varint_len_i64(n: i64) -> usize {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut len = 1;
        while v >= 0x80 {
            v >>= 7;
            len += 1;
        }
        len
    }

    /// The exact size of a record in a batch of one, encoded as Kafka does
    /// (timestamp and offset deltas 0).
    fn exact_record_len(r: &Record) -> usize {
        let zig = |n: usize| varint_len_i64(n as i64);
        let mut body = 1 + 1 + 1; // attributes, timestamp delta, offset delta
        body += r.key.as_ref().map_or(1, |k| zig(k.len()) + k.len());
        body += r.value.as_ref().map_or(1, |v| zig(v.len()) + v.len());
        body += zig(r.headers.len());
        for (k, v) in &r.headers {
            body += zig(k.len()) + k.len() + zig(v.len()) + v.len();
        }
        zig(body) + body
    }

    #[test]
    fn round_trip_every_kind() {
        let envs = [
            full("user:42", 10),
            Envelope {
                ttl: None,
                version: None,
                ..full("ключ", 0)
            },
            Envelope {
                version: Some(3),
                ..Envelope::delete("gone")
            },
            Envelope {
                kind: Kind::Heartbeat,
                sequence: 9,
                ..Envelope::update("", Bytes::new())
            },
        ];
        for env in envs {
            let env = Envelope {
                published_at: from_micros(micros(env.published_at)),
                ..env
            };
            let record = to_record(&env);
            assert_eq!(record.value.is_none(), env.kind != Kind::Update);
            assert_eq!(from_record(record).expect("decodes"), env);
        }
    }

    #[test]
    fn bound_covers_the_exact_size_and_the_overhead() {
        let long_key = "x".repeat(300);
        for (key, payload) in [("", 0), ("k", 1), ("max-key", 1 << 20), (&*long_key, 200)] {
            let env = full(key, payload);
            let exact = BATCH_OVERHEAD + exact_record_len(&to_record(&env));
            let bound = BATCH_OVERHEAD + record_size_bound(&to_record(&env));
            assert!(exact <= bound, "{exact} > {bound}");
            assert!(bound <= env.encoded_len() + KAFKA_OVERHEAD, "{bound}");
            // Without the optional fields the overhead is smaller still.
            let bare = Envelope {
                ttl: None,
                version: None,
                ..env
            };
            let bound = BATCH_OVERHEAD + record_size_bound(&to_record(&bare));
            assert!(bound <= bare.encoded_len() + KAFKA_OVERHEAD);
        }
        assert_eq!(HEADERS_MAX, 113);
        assert_eq!(KAFKA_OVERHEAD, 143);
    }

    #[test]
    fn foreign_records_are_malformed_not_panics() {
        let garbage = Record {
            key: None,
            value: Some(b"xyz".to_vec()),
            headers: BTreeMap::new(),
            timestamp: DateTime::<Utc>::default(),
        };
        assert_eq!(
            from_record(garbage),
            Err(EnvelopeError::BadMagic { found: b'x' })
        );
        let mut record = to_record(&full("k", 1));
        record.headers.insert(HEADER_VERSION.into(), vec![2]);
        assert_eq!(
            from_record(record.clone()),
            Err(EnvelopeError::UnsupportedVersion { found: 2 })
        );
        record.headers.insert(HEADER_VERSION.into(), vec![1]);
        record.headers.insert(HEADER_KIND.into(), vec![9]);
        assert_eq!(
            from_record(record.clone()),
            Err(EnvelopeError::UnknownKind(9))
        );
        record.headers.insert(HEADER_KIND.into(), vec![1]);
        record.headers.insert(HEADER_PUBLISHER.into(), vec![1, 2]);
        assert_eq!(
            from_record(record.clone()),
            Err(EnvelopeError::Truncated { needed: 16, got: 2 })
        );
        record.headers.remove(HEADER_PUBLISHER);
        assert!(from_record(record).is_err());
        let mut record = to_record(&full("k", 1));
        record.key = Some(vec![0xff, 0xfe]);
        assert_eq!(from_record(record), Err(EnvelopeError::KeyNotUtf8));
        let mut record = to_record(&Envelope::delete("k"));
        record.value = Some(vec![1, 2, 3]);
        assert!(matches!(
            from_record(record),
            Err(EnvelopeError::UnexpectedPayload { len: 3, .. })
        ));
    }

    #[test]
    fn an_unreadable_record_of_ours_names_its_key() {
        let mut record = to_record(&full("user:1", 3));
        record.headers.insert(HEADER_KIND.to_owned(), vec![9]);
        assert_eq!(
            read_record(record.clone()),
            Err(Unreadable {
                error: EnvelopeError::UnknownKind(9),
                key: Some("user:1".into())
            })
        );
        record.headers.insert(HEADER_VERSION.to_owned(), vec![2]);
        assert_eq!(
            read_record(record.clone()).map_err(|e| e.key),
            Err(Some("user:1".into()))
        );
        // Another producer's record: not a change of ours, no key.
        record.headers.remove(HEADER_VERSION);
        assert_eq!(read_record(record.clone()).map_err(|e| e.key), Err(None));
        // A key that is not UTF-8 cannot be named.
        record.headers.insert(HEADER_VERSION.to_owned(), vec![2]);
        record.key = Some(vec![0xff]);
        assert_eq!(read_record(record).map_err(|e| e.key), Err(None));
        let good = to_record(&full("k", 1));
        assert!(read_record(good).is_ok());
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // The vectors of Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        assert_eq!(partition_for(b"anything", 1), 0);
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("hc_users-v1.x").is_ok());
        assert!(validate_topic(&"a".repeat(249)).is_ok());
        assert!(validate_topic(&"a".repeat(250)).is_err());
        for bad in ["", ".", "..", "a b", "a/b", "ключ", "a:b"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
    }
}
