//! Streams mode against a real Redis: the conformance suite, and the
//! resumable cases (a subscriber cut off catches up; one whose position was
//! trimmed or whose stream was made anew gets a gap).

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_conformance::{run_all, Harness, CASES};
use hydratecache_core::{BoxError, Transport};
use hydratecache_redis::fred::clients::Client;
use hydratecache_redis::fred::interfaces::{ClientLike, KeysInterface, StreamsInterface};
use hydratecache_redis::fred::types::config::Config;
use hydratecache_redis::fred::types::{Builder, Value};
use hydratecache_redis::{RedisStreamsTransport, RedisTransport};
use hydratecache_testkit::redis::{shared_or_private, RedisServer};
use hydratecache_testkit::Proxy;

/// Each `connect` is a new streams transport; raw entries go through a
/// plain fred client, as another program would add them.
struct StreamsHarness {
    url: String,
    raw: Client,
}

impl StreamsHarness {
    async fn new(url: &str) -> StreamsHarness {
        let raw = match Config::from_url(url).and_then(|c| Builder::from_config(c).build()) {
            Ok(c) => c,
            Err(e) => panic!("client for {url}: {e}"),
        };
        if let Err(e) = raw.init().await {
            panic!("cannot reach Redis at {url}: {e}");
        }
        StreamsHarness {
            url: url.to_owned(),
            raw,
        }
    }
}

async fn streams(url: &str) -> Arc<dyn Transport> {
    match RedisTransport::builder().connect_streams(url).await {
        Ok(t) => t.into_arc(),
        Err(e) => panic!("connect streams mode to {url}: {e:?}"),
    }
}

impl Harness for StreamsHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move {
            let t: RedisStreamsTransport =
                RedisTransport::builder().connect_streams(&self.url).await?;
            Ok(t.into_arc())
        }
        .boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            let _: Value = self
                .raw
                .xadd(
                    topic,
                    false,
                    None,
                    "*",
                    vec![("m", Bytes::copy_from_slice(bytes))],
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        _topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        // Readers without a consumer group are unknown to the server.
        async move { Ok(None) }.boxed()
    }
}

/// The streams of the trim cases on their private server.
async fn case_streams(raw: &Client) -> Vec<String> {
    use hydratecache_redis::fred::types::CustomCommand;
    let keys = CustomCommand::new_static("KEYS", None::<u16>, false);
    match raw
        .custom::<Vec<String>, _>(keys, vec!["hc_trimmed_*"])
        .await
    {
        Ok(k) => k,
        Err(e) => panic!("KEYS: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_pass_the_conformance_suite() {
    let redis = match shared_or_private() {
        Ok(r) => r,
        Err(e) => panic!("no Redis for the conformance suite: {e:#}"),
    };
    let harness = StreamsHarness::new(&redis.url()).await;
    let report = run_all(&harness).await;
    println!("redis streams {report}");
    let skipped: Vec<_> = report.skipped.iter().map(|(c, _)| *c).collect();
    assert_eq!(skipped, ["dropping_subscription_unsubscribes"], "{report}");
    assert_eq!(report.ran.len(), CASES.len() - 1, "{report}");
}

/// A private server with a proxy in front: the subscriber reads through the
/// proxy, the publisher and the harness connect directly.
async fn behind_a_proxy() -> (RedisServer, Proxy, String, StreamsHarness) {
    let server = match RedisServer::start() {
        Ok(s) => s,
        Err(e) => panic!("cannot start redis-server: {e:#}"),
    };
    let (proxy, via) = match Proxy::in_front_of(&server.url()) {
        Ok(p) => p,
        Err(e) => panic!("proxy: {e:#}"),
    };
    let harness = StreamsHarness::new(&server.url()).await;
    (server, proxy, via, harness)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_reader_resumes_from_its_position() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::resumes_after_a_cut(
        &harness,
        || streams(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("redis streams: {report:?}");
}

/// Trimmed past the reader's position while it was cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_trimmed_past_the_reader_is_a_gap() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let topic = Cell::new(String::new());
    let raw = harness.raw.clone();
    hydratecache_conformance::gap_when_the_position_is_gone(
        &harness,
        || streams(&via),
        || proxy.cut_from(0),
        || async {
            // The only stream on this private server is the case's.
            let keys = case_streams(&raw).await;
            for key in keys {
                let trimmed: std::result::Result<i64, _> =
                    raw.xtrim(&key, ("MAXLEN", "=", 0)).await;
                if let Err(e) = trimmed {
                    panic!("XTRIM {key}: {e}");
                }
                topic.set(key);
            }
        },
        || async { proxy.restore() },
    )
    .await;
    assert!(!topic.take().is_empty(), "no stream was trimmed");
}

/// The stream deleted (as by a restart without persistence) while the
/// reader was cut off, and made anew by the next publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_anew_is_a_gap() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let raw = harness.raw.clone();
    hydratecache_conformance::gap_when_the_position_is_gone(
        &harness,
        || streams(&via),
        || proxy.cut_from(0),
        || async {
            let keys = case_streams(&raw).await;
            assert!(!keys.is_empty(), "no stream to delete");
            if let Err(e) = raw.del::<i64, _>(keys).await {
                panic!("DEL: {e}");
            }
        },
        || async { proxy.restore() },
    )
    .await;
}

/// A reader's connection that goes silent is interrupted within the
/// keepalive interval plus the probe timeout, and resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_stream_connection_is_interrupted_and_resumes() {
    use hydratecache_core::InterruptReason;
    use hydratecache_redis::{DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_PROBE_TIMEOUT};

    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let bound = DEFAULT_KEEPALIVE_INTERVAL + DEFAULT_PROBE_TIMEOUT;
    let report = hydratecache_conformance::interrupted_when_the_connection_goes_silent(
        &harness,
        streams(&via).await,
        bound,
        || proxy.freeze(),
        || async { proxy.thaw() },
    )
    .await;
    println!("redis streams: {report:?} (bound {bound:?})");
    assert_eq!(report.reason, InterruptReason::Unresponsive);
    assert!(
        !report.gap,
        "the stream kept what was added meanwhile: Resumed"
    );
}

/// LocalCache on streams: cut off while every key is rewritten, it catches
/// up once back, without a repair or a load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_on_streams_catches_up_after_a_cut() {
    let (_server, proxy, via, harness) = behind_a_proxy().await;
    let report = hydratecache_conformance::local_cache_catches_up_after_a_cut(
        &harness,
        || streams(&via),
        || proxy.cut_from(0),
        || async { proxy.restore() },
    )
    .await;
    println!("redis streams: {report:?}");
}
