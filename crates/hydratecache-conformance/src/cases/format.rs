//! Cases on what one message carries: its fields, bytes and size, and what
//! a subscriber gets for bytes that are not a message.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hydratecache_core::{
    Envelope, Error, Event, Kind, PublisherId, StartFrom, SubscribeOptions, Ttl,
};

use crate::harness::{
    connect, envelope, next_event, next_message, publish, subscribe, topic, truncate_micros,
    Harness, Outcome,
};

/// Key, payload, TTL, version, publisher, sequence and publish time arrive as sent.
pub async fn round_trip(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "roundtrip").await;
    let mut sub = subscribe(&*t, &topic).await;
    let now = truncate_micros(SystemTime::now());
    let sent = Envelope {
        kind: Kind::Update,
        key: "user:42".into(),
        payload: Bytes::from_static(b"\x00hello\xff"),
        ttl: Some(Ttl {
            start: now,
            duration: Duration::from_millis(30_500),
        }),
        version: Some(u64::MAX - 1),
        publisher: PublisherId::random(),
        sequence: 1,
        published_at: now,
    };
    publish(&*t, &topic, &sent).await;
    let got = next_message(&mut sub, "the round-trip message").await;
    assert_eq!(got, sent, "round trip changed the message");
    let remaining = got.ttl.map(|ttl| ttl.remaining()).unwrap_or_default();
    assert!(
        remaining > Duration::from_secs(20) && remaining <= Duration::from_millis(30_500),
        "TTL remaining {remaining:?}"
    );
    Outcome::Passed
}

/// A delete arrives as a delete with its version and no payload.
pub async fn delete_round_trip(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "delete").await;
    let mut sub = subscribe(&*t, &topic).await;
    let sent = Envelope {
        version: Some(3),
        sequence: 1,
        publisher: PublisherId::random(),
        published_at: truncate_micros(SystemTime::now()),
        ..Envelope::delete("gone")
    };
    publish(&*t, &topic, &sent).await;
    let got = next_message(&mut sub, "the delete").await;
    assert_eq!(got, sent);
    assert_eq!(got.kind, Kind::Delete);
    Outcome::Passed
}

/// Payloads with every byte value (0 to 255) arrive intact.
pub async fn all_byte_values(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "allbytes").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let all: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = (0..=255u8).rev().collect();
    let payloads = [all, reversed, vec![0u8; 64], vec![0xff; 64]];
    for (i, p) in payloads.iter().enumerate() {
        publish(
            &*t,
            &topic,
            &envelope(publisher, i as u64 + 1, &format!("bytes{i}"), p.clone()),
        )
        .await;
    }
    for p in &payloads {
        let got = next_message(&mut sub, "a binary payload").await;
        assert_eq!(&got.payload[..], &p[..], "binary payload changed");
    }
    Outcome::Passed
}

/// Keys with non-ASCII characters arrive intact.
pub async fn unicode_keys(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "unicode").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let keys = [
        "ключ",
        "キー:1",
        "emoji 🔑 key",
        "tab\tand \"quotes\" and 'single'",
        "",
    ];
    for (i, k) in keys.iter().enumerate() {
        publish(
            &*t,
            &topic,
            &envelope(publisher, i as u64 + 1, k, &b"v"[..]),
        )
        .await;
    }
    for k in keys {
        assert_eq!(next_message(&mut sub, "a unicode key").await.key, k);
    }
    Outcome::Passed
}

/// A payload of exactly [`Capabilities::max_payload`](hydratecache_core::Capabilities::max_payload)
/// arrives; one byte more fails with [`Error::PayloadTooLarge`] and nothing is sent.
pub async fn max_payload_boundary(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let key = "max-key";
    let Some(max) = t.capabilities().max_payload(key) else {
        return Outcome::Skipped(format!("{} has no message size limit", t.backend()));
    };
    let topic = topic(h, "maxpayload").await;
    let mut sub = subscribe(&*t, &topic).await;
    let publisher = PublisherId::random();
    let full = |n: usize, seq: u64| Envelope {
        ttl: Some(Ttl::starting_now(Duration::from_secs(60))),
        version: Some(1),
        ..envelope(publisher, seq, key, vec![0xa5u8; n])
    };
    match t.publish(&topic, &full(max + 1, 1)).await {
        Err(Error::PayloadTooLarge {
            limit,
            size,
            max_payload,
            ..
        }) => {
            assert!(size > limit, "size {size} limit {limit}");
            assert_eq!(max_payload, max, "error names another maximum");
        }
        other => panic!("one byte over the maximum ({max}) gave {other:?}"),
    }
    publish(&*t, &topic, &full(max, 2)).await;
    let got = next_message(&mut sub, "the maximum-size message").await;
    assert_eq!(
        (got.sequence, got.payload.len()),
        (2, max),
        "the oversize message was sent after all, or the max was cut"
    );
    Outcome::Passed
}

/// Bytes that are not an envelope give one error item; the next message arrives.
pub async fn garbage_yields_error_and_stream_continues(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "garbage").await;
    let mut sub = subscribe(&*t, &topic).await;
    for garbage in [
        &b"xyz"[..],
        &[0xc7, 0x01][..],
        &[0xc7, 0x09, 0x01, 0x00][..],
    ] {
        if let Err(e) = h.publish_raw(&topic, garbage).await {
            panic!("harness could not publish raw bytes: {e:?}");
        }
        match next_event(&mut sub, "the error for garbage").await {
            Err(e) if e.is_per_message() => {}
            other => panic!("garbage {garbage:?} gave {other:?}, expected a per-message error"),
        }
    }
    publish(
        &*t,
        &topic,
        &envelope(PublisherId::random(), 1, "after", &b"ok"[..]),
    )
    .await;
    assert_eq!(
        next_message(&mut sub, "the message after garbage")
            .await
            .key,
        "after"
    );
    Outcome::Passed
}

/// With [`Capabilities::replay`](hydratecache_core::Capabilities::replay), a subscription
/// from the earliest message sees what was published before it, then
/// [`Event::ReplayDone`], then live messages; without, asking for it is an
/// [`Error::Unsupported`].
pub async fn replay_from_earliest(h: &dyn Harness) -> Outcome {
    let t = connect(h).await;
    let topic = topic(h, "replay").await;
    let publisher = PublisherId::random();
    publish(&*t, &topic, &envelope(publisher, 1, "early", &b"1"[..])).await;
    let result = t
        .subscribe(&topic, SubscribeOptions::starting(StartFrom::Earliest))
        .await;
    if !t.capabilities().replay {
        assert!(
            matches!(result, Err(Error::Unsupported { .. })),
            "a backend without replay accepted StartFrom::Earliest: {result:?}"
        );
        return Outcome::Skipped(format!(
            "{} cannot replay (checked that it says so)",
            t.backend()
        ));
    }
    let mut sub = match result {
        Ok(s) => s,
        Err(e) => panic!("subscribe from earliest: {e:?}"),
    };
    match next_event(&mut sub, "the replayed message").await {
        Ok(Event::Message(env)) => assert_eq!(env.key, "early"),
        other => panic!("expected the replayed message, got {other:?}"),
    }
    match next_event(&mut sub, "the end of the replay").await {
        Ok(Event::ReplayDone) => {}
        other => panic!("expected ReplayDone after the replayed message, got {other:?}"),
    }
    publish(&*t, &topic, &envelope(publisher, 2, "late", &b"2"[..])).await;
    assert_eq!(next_message(&mut sub, "the live message").await.key, "late");
    Outcome::Passed
}
