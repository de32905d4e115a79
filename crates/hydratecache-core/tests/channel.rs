//! Channel<T> over the in-memory transport: codecs, errors, gaps, shutdown.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hydratecache_core::{
    CborCodec, Channel, ChannelEvent, CodecPanicked, Error, GapReason, MemoryTransport,
    PublishOptions, Transport,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Price {
    symbol: String,
    cents: u64,
}

fn price(cents: u64) -> Price {
    Price {
        symbol: "ACME".into(),
        cents,
    }
}

async fn next<T: 'static>(
    sub: &mut hydratecache_core::ChannelSubscription<T>,
) -> hydratecache_core::Result<ChannelEvent<T>> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
}

#[tokio::test]
async fn update_ttl_version_delete_round_trip() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let writer: Channel<Price> = Channel::new(bus.clone(), "prices");
    let reader: Channel<Price> = Channel::new(bus, "prices");
    let mut sub = reader.subscribe().await?;

    let r1 = writer.publish("p:1", &price(100)).await?;
    let r2 = writer
        .publish_with(
            "p:1",
            &price(101),
            PublishOptions::new()
                .ttl(Duration::from_secs(30))
                .version(9),
        )
        .await?;
    let r3 = writer
        .delete_with("p:1", PublishOptions::new().version(10))
        .await?;
    assert_eq!((r1.sequence, r2.sequence, r3.sequence), (1, 2, 3));

    let ChannelEvent::Update(m1) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(
        (m1.key.as_str(), &m1.value, m1.ttl, m1.version),
        ("p:1", &price(100), None, None)
    );
    assert_eq!(m1.publisher, writer.publisher());
    let ChannelEvent::Update(m2) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!((m2.value.cents, m2.version, m2.sequence), (101, Some(9), 2));
    let remaining = m2.remaining().expect("ttl");
    assert!(remaining > Duration::from_secs(29) && remaining <= Duration::from_secs(30));
    let ChannelEvent::Delete(d) = next(&mut sub).await? else {
        panic!("delete expected")
    };
    assert_eq!(
        (d.key.as_str(), d.version, d.sequence),
        ("p:1", Some(10), 3)
    );
    Ok(())
}

#[tokio::test]
async fn undecodable_value_is_an_error_item_and_the_stream_goes_on() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let strings: Channel<String> = Channel::new(bus.clone(), "mixed");
    let prices: Channel<Price> = Channel::new(bus, "mixed");
    let mut sub = prices.subscribe().await?;
    strings
        .publish("wrong-type", &"not a price".to_string())
        .await?;
    prices.publish("right", &price(5)).await?;
    match next(&mut sub).await {
        Err(Error::Decode {
            key,
            publisher,
            sequence,
            ..
        }) => assert_eq!(
            (key.as_str(), publisher, sequence),
            ("wrong-type", strings.publisher(), 1)
        ),
        other => panic!("expected a decode error, got {other:?}"),
    }
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(m.value, price(5));
    Ok(())
}

#[tokio::test]
async fn skip_own_skips_and_counts_the_subscribing_channels_messages() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let own: Channel<Price> = Channel::new(bus.clone(), "echo");
    let other = own.with_new_publisher();
    let skipped = Arc::new(AtomicU64::new(0));
    let mut sub = own.subscribe().await?.skip_own(Arc::clone(&skipped));
    own.publish("mine", &price(1)).await?;
    own.clone().delete("mine").await?;
    own.heartbeat().await?;
    other.publish("theirs", &price(2)).await?;
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!((m.key.as_str(), m.publisher), ("theirs", other.publisher()));
    assert_eq!(
        skipped.load(Ordering::Relaxed),
        3,
        "update, delete, heartbeat"
    );
    Ok(())
}

#[tokio::test]
async fn a_codec_panic_is_a_decode_error_when_caught() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let panicky: Channel<String> = Channel::builder(bus, "panics")
        .encoder_decoder(
            |v: &String| Ok(v.as_bytes().to_vec()),
            |bytes: &[u8]| {
                assert_ne!(bytes, b"boom", "the codec panics");
                Ok(String::from_utf8(bytes.to_vec())?)
            },
        )
        .build();
    let mut sub = panicky.subscribe().await?.catch_codec_panics();
    panicky.publish("k", &"boom".to_string()).await?;
    panicky.publish("j", &"fine".to_string()).await?;
    match next(&mut sub).await {
        Err(Error::Decode { key, source, .. }) => {
            assert_eq!(key, "k");
            let panic = source
                .downcast_ref::<CodecPanicked>()
                .expect("a CodecPanicked source");
            assert!(panic.message.contains("the codec panics"), "{panic:?}");
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(m.value, "fine");
    Ok(())
}

#[tokio::test]
async fn json_codec_through_a_custom_codec_and_through_functions() -> anyhow::Result<()> {
    struct Json;
    impl hydratecache_core::Codec<Price> for Json {
        fn encode(&self, v: &Price) -> Result<Vec<u8>, hydratecache_core::BoxError> {
            Ok(serde_json::to_vec(v)?)
        }
        fn decode(&self, b: &[u8]) -> Result<Price, hydratecache_core::BoxError> {
            Ok(serde_json::from_slice(b)?)
        }
    }
    let bus = MemoryTransport::new();
    let by_trait: Channel<Price> = Channel::with_codec(bus.clone().into_arc(), "json", Json);
    let by_fns: Channel<Price> = Channel::builder(bus.clone().into_arc(), "json")
        .encoder_decoder(
            |v| Ok(serde_json::to_vec(v)?),
            |b| Ok(serde_json::from_slice(b)?),
        )
        .build();
    let mut sub = by_fns.subscribe().await?;
    let mut raw = hydratecache_core::Transport::subscribe(&bus, "json", Default::default()).await?;
    by_trait.publish("k", &price(7)).await?;
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(m.value, price(7));
    let Some(Ok(hydratecache_core::Event::Message(env))) = raw.next().await else {
        panic!("raw message")
    };
    assert_eq!(&env.payload[..], br#"{"symbol":"ACME","cents":7}"#);
    Ok(())
}

#[tokio::test]
async fn packed_cbor_channel_interoperates_with_named() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let packed: Channel<Price> = Channel::with_codec(bus.clone(), "packed", CborCodec::packed());
    let named: Channel<Price> = Channel::new(bus, "packed");
    let mut sub = named.subscribe().await?;
    let receipt = packed.publish("k", &price(1)).await?;
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(m.value, price(1));
    assert!(
        receipt.encoded_len < 38 + 1 + 20,
        "packed payload is small: {}",
        receipt.encoded_len
    );
    Ok(())
}

#[tokio::test]
async fn a_lagging_subscriber_gets_a_gap_with_the_count_then_new_messages() -> anyhow::Result<()> {
    let bus = MemoryTransport::with_limits(8, None).into_arc();
    let ch: Channel<u64> = Channel::new(bus, "lag");
    let mut sub = ch.subscribe().await?;
    for i in 0..20 {
        ch.publish("k", &i).await?;
    }
    match next(&mut sub).await? {
        ChannelEvent::Gap(gap) => {
            assert_eq!(gap.reason, GapReason::Lagged);
            assert_eq!(gap.missed, Some(12));
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    for i in 12..20 {
        let ChannelEvent::Update(m) = next(&mut sub).await? else {
            panic!("update expected")
        };
        assert_eq!(m.value, i);
    }
    Ok(())
}

#[tokio::test]
async fn oversize_publish_fails_before_sending_and_spends_no_sequence() -> anyhow::Result<()> {
    let bus = MemoryTransport::with_limits(16, Some(200)).into_arc();
    let ch: Channel<Vec<u8>> = Channel::with_codec(
        bus,
        "small",
        hydratecache_core::FnCodec::new(|v: &Vec<u8>| Ok(v.clone()), |b: &[u8]| Ok(b.to_vec())),
    );
    let mut sub = ch.subscribe().await?;
    let max = ch
        .transport()
        .capabilities()
        .max_payload("k")
        .expect("limited");
    match ch.publish("k", &vec![1; 200]).await {
        Err(Error::PayloadTooLarge {
            limit: 200,
            max_payload,
            ..
        }) => assert_eq!(max_payload, max),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert_eq!(ch.publish("k", &vec![1; max]).await?.sequence, 1);
    let ChannelEvent::Update(m) = next(&mut sub).await? else {
        panic!("update expected")
    };
    assert_eq!(m.value.len(), max);
    Ok(())
}

#[tokio::test]
async fn heartbeat_carries_the_last_sequence_and_is_silent_before_any_publish() -> anyhow::Result<()>
{
    let bus = MemoryTransport::new().into_arc();
    let ch: Channel<u8> = Channel::new(bus, "hb");
    let mut sub = ch.subscribe().await?;
    assert!(ch.heartbeat().await?.is_none());
    ch.publish("k", &1).await?;
    ch.publish("k", &2).await?;
    assert_eq!(ch.heartbeat().await?.map(|r| r.sequence), Some(2));
    for _ in 0..2 {
        assert!(matches!(next(&mut sub).await?, ChannelEvent::Update(_)));
    }
    match next(&mut sub).await? {
        ChannelEvent::Heartbeat(hb) => assert_eq!((hb.publisher, hb.sequence), (ch.publisher(), 2)),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn run_stops_on_shutdown_and_close_ends_subscriptions() -> anyhow::Result<()> {
    let bus = MemoryTransport::new();
    let ch: Channel<u8> = Channel::new(bus.clone().into_arc(), "run");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let runner = ch.clone();
    let task = tokio::spawn(async move {
        runner
            .run(
                move |event| {
                    let _ = seen_tx.send(event.is_ok());
                    async {}
                },
                stop_rx,
            )
            .await
    });
    // Publish until the handler has seen one: the subscription starts inside `run`.
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            ch.publish("k", &1).await.expect("publish");
            if let Ok(Some(ok)) =
                tokio::time::timeout(Duration::from_millis(20), seen_rx.recv()).await
            {
                return ok;
            }
        }
    })
    .await?;
    assert!(seen);
    stop_tx.send(()).expect("runner alive");
    tokio::time::timeout(Duration::from_secs(5), task).await???;
    assert_eq!(
        bus.subscriber_count("run"),
        0,
        "run released its subscription"
    );

    let mut sub = ch.subscribe().await?;
    hydratecache_core::Transport::close(&bus).await?;
    assert!(tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await?
        .is_none());
    assert!(matches!(
        ch.publish("k", &1).await,
        Err(Error::Closed { .. })
    ));
    Ok(())
}
