//! Each cause in an error's chain is printed once (issue 18, item 21): an
//! error either shows its source in its message or returns it from
//! `source()`, never both.

use std::error::Error as StdError;

use hydratecache_core::adapter::decode_frame;
use hydratecache_core::{Channel, EnvelopeError, Error, MemoryTransport, Transport};

/// Every message of `e`'s chain, outermost first.
fn chain(e: &(dyn StdError + 'static)) -> Vec<String> {
    let mut out = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        out.push(cause.to_string());
        next = cause.source();
    }
    out
}

/// No link of the chain repeats a link below it.
fn assert_each_cause_once(e: Error) {
    let links = chain(&e);
    for (i, outer) in links.iter().enumerate() {
        for inner in &links[i + 1..] {
            assert!(
                !outer.contains(inner.as_str()),
                "{outer:?} repeats its cause {inner:?}; whole chain: {links:?}"
            );
        }
    }
    let rendered = format!("{:#}", anyhow::Error::from(e));
    let innermost = links.last().expect("a chain has a first link");
    assert_eq!(
        rendered.matches(innermost.as_str()).count(),
        1,
        "{rendered}"
    );
}

#[test]
fn a_malformed_message_names_its_cause_once() {
    let err = decode_frame("t", &bytes::Bytes::from_static(b"not an envelope"))
        .expect_err("garbage is malformed");
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    let rendered = format!("{:#}", anyhow::Error::from(err));
    assert_eq!(
        rendered,
        "malformed message on topic \"t\": not a hydratecache envelope (first byte 0x6e, expected 0xc7)"
    );
}

#[test]
fn backend_errors_name_their_cause_once() {
    let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
    let err = Error::backend("redis", "publish to \"t\"", io);
    assert_eq!(
        format!("{:#}", anyhow::Error::from(err)),
        "redis: publish to \"t\": connection refused"
    );
    assert_each_cause_once(Error::backend(
        "nats",
        "subscribe",
        std::io::Error::other("broken pipe"),
    ));
}

#[test]
fn codec_and_envelope_errors_name_their_cause_once() {
    assert_each_cause_once(Error::Decode {
        key: "k".into(),
        publisher: hydratecache_core::PublisherId(7),
        sequence: 1,
        source: "invalid type: integer, expected a string".into(),
    });
    assert_each_cause_once(Error::Encode {
        key: "k".into(),
        source: "value too deep".into(),
    });
    assert_each_cause_once(Error::from(EnvelopeError::KeyTooLong(70_000)));
}

#[tokio::test]
async fn a_publish_error_names_its_cause_once() {
    let channel: Channel<String> = Channel::new(MemoryTransport::new().into_arc(), "t");
    let err = channel
        .publish(&"k".repeat(70_000), &"v".to_string())
        .await
        .expect_err("a key over 65,535 bytes cannot be encoded");
    assert_each_cause_once(err);
}
