//! Wire compatibility against the frozen vectors of `docs/wire-format.md`.
//!
//! The vectors are read from the document itself, so the page and the code
//! cannot drift apart; they are never edited, only added to
//! (`docs/releasing.md`). Each one must decode to the fields its heading
//! describes and re-encode to the same bytes. Then the cases of a subscriber
//! on this release reading what a *newer* publisher could send: a new kind, a
//! new flag bit, a new format version. Each must be refused with an error
//! that names both versions, never misread.

use std::time::{Duration, UNIX_EPOCH};

use hydratecache_core::adapter::FORMAT_VERSION;
use hydratecache_core::{Envelope, EnvelopeError, Kind, PublisherId, Ttl};

const WIRE_FORMAT: &str = include_str!("../../../docs/wire-format.md");
const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ```text blocks of the "Test vectors" section, as bytes.
fn frozen_vectors() -> Vec<Vec<u8>> {
    let section = WIRE_FORMAT
        .split("## Test vectors")
        .nth(1)
        .expect("docs/wire-format.md has a Test vectors section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .split("```text")
        .skip(1)
        .map(|block| {
            let block = block.split("```").next().expect("closed block");
            let digits: String = block.chars().filter(|c| !c.is_whitespace()).collect();
            assert!(digits.len().is_multiple_of(2), "odd hex digits in {block}");
            (0..digits.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn at(micros: u64) -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_micros(micros)
}

#[test]
fn frozen_vectors_decode_to_their_documented_fields_and_reencode() {
    let vectors = frozen_vectors();
    assert_eq!(vectors.len(), 4, "four frozen format-1 vectors");

    let v1 = Envelope::decode(&vectors[0]).expect("vector 1");
    assert_eq!(v1.kind, Kind::Update);
    assert_eq!(v1.key, "k1");
    assert_eq!(&v1.payload[..], b"hi");
    assert_eq!(
        v1.publisher,
        PublisherId(0x0102030405060708090a0b0c0d0e0f10)
    );
    assert_eq!(v1.sequence, 1);
    assert_eq!(v1.published_at, at(1_700_000_000_000_000));
    assert_eq!((v1.ttl, v1.version), (None, None));

    let v2 = Envelope::decode(&vectors[1]).expect("vector 2");
    assert_eq!(v2.kind, Kind::Update);
    assert_eq!(v2.key, "user:42");
    assert_eq!(&v2.payload[..], &[0xa1, 0x61, 0x61, 0x01]);
    assert_eq!(v2.publisher, PublisherId(0xff));
    assert_eq!(v2.sequence, 258);
    assert_eq!(v2.published_at, at(1_700_000_000_000_001));
    assert_eq!(
        v2.ttl,
        Some(Ttl {
            start: at(1_700_000_000_000_000),
            duration: Duration::from_secs(30),
        })
    );
    assert_eq!(v2.version, Some(7));

    let v3 = Envelope::decode(&vectors[2]).expect("vector 3");
    assert_eq!(v3.kind, Kind::Delete);
    assert_eq!((v3.key.as_str(), v3.version), ("k", Some(3)));
    assert!(v3.payload.is_empty());
    assert_eq!((v3.publisher, v3.sequence), (PublisherId(1), 2));
    assert_eq!(v3.published_at, at(0));

    let v4 = Envelope::decode(&vectors[3]).expect("vector 4");
    assert_eq!(v4.kind, Kind::Heartbeat);
    assert_eq!((v4.publisher, v4.sequence), (PublisherId(1), 9));
    assert_eq!(v4.published_at, at(1));

    for (i, bytes) in vectors.iter().enumerate() {
        let decoded = Envelope::decode(bytes).expect("decodes");
        assert_eq!(
            &decoded.encode().expect("encodes"),
            bytes,
            "vector {}",
            i + 1
        );
        assert_eq!(bytes[1], 1, "vector {} is format version 1", i + 1);
    }
}

/// The error text an operator sees must name this release and the format
/// version it reads, and say what to do.
fn assert_names_versions(error: &EnvelopeError) {
    let text = error.to_string();
    assert!(
        text.contains(&format!("hydratecache-core {CORE_VERSION}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("format version {FORMAT_VERSION}")),
        "{text}"
    );
    assert!(text.contains("upgrade"), "{text}");
}

#[test]
fn a_kind_from_a_newer_release_is_refused_naming_the_versions() {
    let mut bytes = frozen_vectors().remove(0);
    bytes[2] = 4; // a kind a later format-1 release could add
    let error = Envelope::decode(&bytes).expect_err("unknown kind");
    assert_eq!(error, EnvelopeError::UnknownKind(4));
    assert_names_versions(&error);
}

#[test]
fn a_flag_from_a_newer_release_is_refused_naming_the_versions() {
    let mut bytes = frozen_vectors().remove(0);
    bytes[3] |= 0b100; // the next optional field's flag bit
    let error = Envelope::decode(&bytes).expect_err("unknown flag");
    assert_eq!(error, EnvelopeError::UnknownFlags(0b100));
    assert_names_versions(&error);
}

#[test]
fn a_newer_format_version_is_refused_naming_the_versions() {
    let mut bytes = frozen_vectors().remove(1);
    bytes[1] = FORMAT_VERSION + 1;
    let error = Envelope::decode(&bytes).expect_err("newer format");
    assert_eq!(
        error,
        EnvelopeError::UnsupportedVersion {
            found: FORMAT_VERSION + 1
        }
    );
    assert_names_versions(&error);
}
