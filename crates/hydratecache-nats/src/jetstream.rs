//! [`NatsJetStreamTransport`]: the resumable mode, on JetStream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::CreateStreamErrorKind;
use async_nats::jetstream::stream::{Config as StreamConfig, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::Client;
use base64::Engine as _;
use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::adapter::{
    check_envelope, lock, read_ahead_channel, read_ahead_subscription, ClosedFlag, LONGEST_DURATION,
};
use hydratecache_core::{
    Capabilities, Envelope, Error, Result, StartFrom, SubscribeOptions, Subscription, Transport,
};
use tokio::task::JoinHandle;

use crate::jetstream_reader::{self, Position, ReaderCtx};
use crate::subject::{validate_topic, MAX_SUBJECT_LEN};
use crate::BACKEND;

/// Default first token of the JetStream subjects: `hcjs.<topic>.<key>`.
pub const DEFAULT_JETSTREAM_PREFIX: &str = "hcjs";

/// The server's idle heartbeat on a subscription's pulls: two missed, and
/// the subscription is interrupted (500 ms).
pub const DEFAULT_JETSTREAM_HEARTBEAT: Duration = Duration::from_millis(250);

/// A [`Transport`] over NATS JetStream: each topic is a stream that keeps
/// the last message of each key (`max_messages_per_subject = 1`, file
/// storage), the key carried in the subject (`<prefix>.<topic>.k<base64url
/// of the key>`, so any key is a valid token); each subscription reads it
/// with an ephemeral pull consumer of its own.
///
/// It is [resumable](Capabilities::resumable): a subscription that loses
/// the server (two idle heartbeats missed, a request that fails or goes
/// unanswered) yields [`Event::Interrupted`](hydratecache_core::Event::Interrupted), then reads on from the stream
/// sequence after the last one it delivered, and sends [`Event::Resumed`](hydratecache_core::Event::Resumed)
/// once caught up. Older values of a key are removed by the stream as newer
/// ones come, which loses nothing a cache needs, so a resume is lossless in
/// value terms. [`StartFrom::Earliest`] is a warm start: the latest value
/// of every key, then [`Event::ReplayDone`](hydratecache_core::Event::ReplayDone). A gap
/// ([`GapReason::Reset`](hydratecache_core::GapReason::Reset)) only when the
/// stream was deleted and made anew, or lost messages (a memory stream
/// after a restart). The streams refuse purges and message deletes
/// (`deny_purge`, `deny_delete`), which no reader could detect.
///
/// Not [`ordered`](Capabilities::ordered): a resume skips a publisher's
/// superseded messages, so its sequence numbers have holes that are no
/// loss. Built by [`NatsBuilder::connect_jetstream`](crate::NatsBuilder::connect_jetstream).
#[derive(Debug, Clone)]
pub struct NatsJetStreamTransport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client,
    context: jetstream::Context,
    owned: bool,
    settings: JetStreamSettings,
    closed: ClosedFlag,
    /// The stream of each topic used so far.
    streams: tokio::sync::Mutex<HashMap<String, jetstream::stream::Stream>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

/// What the builder sets for JetStream mode.
#[derive(Debug, Clone)]
pub(crate) struct JetStreamSettings {
    pub(crate) prefix: String,
    pub(crate) publish_timeout: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) max_payload: usize,
}

/// The stream name of `topic`: readable where it can be, and unique by a
/// hash (names allow no `.`, `*`, `>` or whitespace, and file storage uses
/// them as directory names).
pub(crate) fn stream_name(prefix: &str, topic: &str) -> String {
    // FNV-1a: stable across processes and releases, unlike std's hasher.
    let hash = format!("{prefix}.{topic}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let readable: String = topic
        .chars()
        .take(32)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("HC_{readable}_{hash:016x}")
}

/// The subject of `key` on `topic`: one token for any key.
pub(crate) fn key_subject(prefix: &str, topic: &str, key: &str) -> String {
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    format!("{prefix}.{topic}.k{token}")
}

impl NatsJetStreamTransport {
    pub(crate) fn new(client: Client, owned: bool, settings: JetStreamSettings) -> Self {
        let mut context = jetstream::new(client.clone());
        context.set_timeout(settings.publish_timeout.min(LONGEST_DURATION));
        NatsJetStreamTransport {
            inner: Arc::new(Inner {
                client,
                context,
                owned,
                settings,
                closed: ClosedFlag::new(),
                streams: tokio::sync::Mutex::new(HashMap::new()),
                readers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The name of the stream that holds `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        stream_name(&self.inner.settings.prefix, topic)
    }

    /// The subject that carries `key` on `topic`.
    pub fn key_subject(&self, topic: &str, key: &str) -> String {
        key_subject(&self.inner.settings.prefix, topic, key)
    }

    /// The stream of `topic`, created on first use (or checked, when it
    /// exists, to carry the topic's subjects).
    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream> {
        let mut streams = self.inner.streams.lock().await;
        if let Some(stream) = streams.get(topic) {
            return Ok(stream.clone());
        }
        let name = self.stream_name(topic);
        let subjects = format!("{}.{topic}.*", self.inner.settings.prefix);
        let config = StreamConfig {
            name: name.clone(),
            subjects: vec![subjects.clone()],
            max_messages_per_subject: 1,
            discard: DiscardPolicy::Old,
            storage: StorageType::File,
            deny_purge: true,
            deny_delete: true,
            num_replicas: 1,
            ..Default::default()
        };
        let doing = format!("create or check the JetStream stream {name} for topic {topic:?}");
        let timeout = self.inner.settings.publish_timeout.min(LONGEST_DURATION);
        let created = tokio::time::timeout(timeout, self.inner.context.create_stream(config)).await;
        let stream = match created {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => match e.kind() {
                CreateStreamErrorKind::JetStreamUnavailable => {
                    return Err(Error::backend(
                        BACKEND,
                        doing,
                        "JetStream is not available: the server runs without it (start nats-server with -js) or the account has none",
                    ))
                }
                CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NAME_EXIST =>
                {
                    // Made with other settings: usable if it carries the topic.
                    let stream = tokio::time::timeout(timeout, self.inner.context.get_stream(&name))
                        .await
                        .map_err(|_| Error::backend(BACKEND, doing.clone(), "no answer in time"))?
                        .map_err(|e| Error::backend(BACKEND, doing.clone(), e))?;
                    if !stream.cached_info().config.subjects.contains(&subjects) {
                        return Err(Error::backend(
                            BACKEND,
                            doing,
                            format!("a stream named {name} exists without the subjects {subjects}"),
                        ));
                    }
                    stream
                }
                CreateStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
                        || j.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED =>
                {
                    return Err(Error::backend(
                        BACKEND,
                        doing,
                        format!("JetStream is not enabled for this account: {j}"),
                    ))
                }
                _ => return Err(Error::backend(BACKEND, doing, e)),
            },
            Err(_) => return Err(Error::backend(BACKEND, doing, "no answer in time")),
        };
        streams.insert(topic.to_owned(), stream.clone());
        Ok(stream)
    }

    fn reader_ctx(&self, stream: jetstream::stream::Stream, topic: &str) -> ReaderCtx {
        let s = &self.inner.settings;
        ReaderCtx {
            client: self.inner.client.clone(),
            stream,
            topic: topic.to_owned(),
            heartbeat: s.heartbeat,
            timeout: s.publish_timeout.min(LONGEST_DURATION),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Whether a publish failed because no stream holds its subject.
fn stream_gone(e: &Error) -> bool {
    use std::error::Error as _;
    e.source()
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::context::PublishError>())
        .is_some_and(|p| {
            p.kind() == async_nats::jetstream::context::PublishErrorKind::StreamNotFound
        })
}

impl Drop for Inner {
    fn drop(&mut self) {
        for reader in lock(&self.readers).drain(..) {
            reader.abort();
        }
    }
}

impl Transport for NatsJetStreamTransport {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(self.inner.settings.max_payload))
            .with_ordered(false)
            .with_replay(true)
            .with_resumable(true)
    }

    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async move {
            self.inner.closed.check(BACKEND)?;
            validate_topic(topic)?;
            check_envelope(BACKEND, &self.capabilities(), envelope)?;
            let subject = self.key_subject(topic, &envelope.key);
            if subject.len() > MAX_SUBJECT_LEN {
                return Err(Error::invalid_topic(
                    BACKEND,
                    topic,
                    format!(
                        "with key {:?} the JetStream subject is {} bytes, over the limit of {MAX_SUBJECT_LEN}",
                        envelope.key,
                        subject.len()
                    ),
                ));
            }
            self.stream(topic).await?;
            let frame = bytes::Bytes::from(envelope.encode()?);
            let frame_again = frame.clone();
            let doing = || format!("publish to JetStream subject {subject:?}");
            let timeout = self.inner.settings.publish_timeout.min(LONGEST_DURATION);
            let acked = async {
                let ack = self
                    .inner
                    .context
                    .publish(subject.clone(), frame)
                    .await
                    .map_err(|e| Error::backend(BACKEND, doing(), e))?;
                ack.await.map_err(|e| Error::backend(BACKEND, doing(), e))
            };
            match tokio::time::timeout(timeout, acked).await {
                Ok(Err(e)) if stream_gone(&e) => {
                    // Deleted since it was made here: made again, once.
                    self.inner.streams.lock().await.remove(topic);
                    self.stream(topic).await?;
                    // The send bounded with its acknowledgement, as the first.
                    let again = async {
                        let ack = self
                            .inner
                            .context
                            .publish(subject.clone(), frame_again)
                            .await
                            .map_err(|e| Error::backend(BACKEND, doing(), e))?;
                        ack.await.map_err(|e| Error::backend(BACKEND, doing(), e))
                    };
                    match tokio::time::timeout(timeout, again).await {
                        Ok(result) => result.map(drop),
                        Err(_) => Err(Error::backend(BACKEND, doing(), "no acknowledgement in time")),
                    }
                }
                Ok(result) => result.map(drop),
                Err(_) => Err(Error::backend(
                    BACKEND,
                    doing(),
                    format!("no acknowledgement within {timeout:?}; the message may or may not be stored"),
                )),
            }
        }
        .boxed()
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        async move {
            self.inner.closed.check(BACKEND)?;
            validate_topic(topic)?;
            let stream = self.stream(topic).await?;
            let ctx = self.reader_ctx(stream, topic);
            let replay = matches!(options.start, StartFrom::Earliest);
            let position = if replay {
                Position {
                    sequence: 0,
                    created: None,
                }
            } else {
                jetstream_reader::position_now(&ctx).await.map_err(|e| {
                    Error::backend(
                        BACKEND,
                        format!("find the end of the stream of {topic:?}"),
                        e,
                    )
                })?
            };
            let (tx, rx) = read_ahead_channel();
            // Pulling before this returns: what is published after it is
            // delivered, not skipped for a newer value of its key.
            let mut position = position;
            let mut interrupted = false;
            let opened = jetstream_reader::open(&ctx, &mut position, &mut interrupted, &tx)
                .await
                .map_err(|e| {
                    Error::backend(
                        BACKEND,
                        format!("read the stream of {topic:?}"),
                        e.to_string(),
                    )
                })?;
            let reader = tokio::spawn(jetstream_reader::run(ctx, position, replay, opened, tx));
            {
                let mut readers = lock(&self.inner.readers);
                readers.retain(|r| !r.is_finished());
                readers.push(reader);
            }
            Ok(read_ahead_subscription(topic, rx, Arc::clone(&self.inner)))
        }
        .boxed()
    }

    fn close(&self) -> BoxFuture<'_, Result<()>> {
        async move {
            if !self.inner.closed.close() {
                return Ok(());
            }
            for reader in std::mem::take(&mut *lock(&self.inner.readers)) {
                // Its sender goes with it: the subscription's stream ends.
                reader.abort();
            }
            if self.inner.owned {
                let timeout = self.inner.settings.publish_timeout.min(LONGEST_DURATION);
                match tokio::time::timeout(timeout, self.inner.client.drain()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Error::backend(BACKEND, "close the connection", e)),
                    Err(_) => tracing::debug!("nats jetstream close: drain timed out"),
                }
            }
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_key_is_one_token() {
        for key in ["", "a.b", "*", ">", "with space", "ünï", "a/b+c="] {
            let subject = key_subject("hcjs", "t", key);
            let token = subject.strip_prefix("hcjs.t.").expect("prefix");
            assert!(token.starts_with('k'), "{subject}");
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{subject}"
            );
        }
    }

    #[test]
    fn stream_names_are_valid_and_distinct() {
        let a = stream_name("hcjs", "orders.eu");
        let b = stream_name("hcjs", "orders_eu");
        assert_ne!(a, b);
        for name in [&a, &b] {
            assert!(!name.contains(['.', '*', '>', ' ']), "{name}");
        }
        assert_eq!(a, stream_name("hcjs", "orders.eu"), "stable");
    }
}
