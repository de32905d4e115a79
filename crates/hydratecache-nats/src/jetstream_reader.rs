//! One JetStream subscription's reader: an ephemeral pull consumer from the
//! stream sequence after the last one delivered, made again by the reader
//! after any error, so that it knows where it resumes and can say so.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::Stream as JsStream;
use futures::StreamExt;
use hydratecache_core::adapter::{decode_frame, Backoff};
use hydratecache_core::{Event, Gap, GapReason, InterruptReason, Interruption, Result};
use tokio::sync::mpsc;

/// What a reader needs.
#[derive(Debug, Clone)]
pub(crate) struct ReaderCtx {
    pub(crate) client: async_nats::Client,
    pub(crate) stream: JsStream,
    pub(crate) topic: String,
    /// The server's idle heartbeat on each pull: two missed, and the
    /// subscription is interrupted.
    pub(crate) heartbeat: Duration,
    /// Bound on each request to the server (stream info, consumer create).
    pub(crate) timeout: Duration,
    pub(crate) max_backoff: Duration,
}

/// Where a reader stands: the last stream sequence delivered (0: none) and
/// the creation time of the stream it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) sequence: u64,
    /// Unix nanoseconds.
    pub(crate) created: Option<i128>,
}

/// Why a step failed.
#[derive(Debug)]
pub(crate) enum Failure {
    Timeout(&'static str),
    Failed(&'static str, String),
}

impl Failure {
    fn reason(&self) -> InterruptReason {
        match self {
            Failure::Timeout(_) => InterruptReason::Unresponsive,
            Failure::Failed(..) => InterruptReason::Disconnected,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout(what) => write!(f, "{what}: no answer in time"),
            Failure::Failed(what, e) => write!(f, "{what}: {e}"),
        }
    }
}

async fn bounded<T, E: std::fmt::Display>(
    timeout: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, Failure> {
    match tokio::time::timeout(timeout, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Failed(what, e.to_string())),
        Err(_) => Err(Failure::Timeout(what)),
    }
}

/// The stream as it is now: what a subscription from now starts at.
pub(crate) async fn position_now(ctx: &ReaderCtx) -> std::result::Result<Position, String> {
    let info = bounded(ctx.timeout, "stream info", ctx.stream.get_info())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Position {
        sequence: info.state.last_sequence,
        created: Some(info.created.unix_timestamp_nanos()),
    })
}

/// Sends to the subscription; `false` once it was dropped.
async fn send(tx: &mpsc::Sender<Result<Event>>, item: Result<Event>) -> bool {
    tx.send(item).await.is_ok()
}

/// A consumer opened at the position, pulling.
pub(crate) struct Opened {
    name: String,
    pending: u64,
    messages: pull::Stream,
}

/// Checks the stream and opens a consumer from `position`: a stream made
/// anew (or that lost what followed the position) is a gap, and is read
/// from its start. `Ok(None)`: the subscription was dropped.
pub(crate) async fn open(
    ctx: &ReaderCtx,
    position: &mut Position,
    interrupted: &mut bool,
    tx: &mpsc::Sender<Result<Event>>,
) -> std::result::Result<Option<Opened>, Failure> {
    let info = bounded(ctx.timeout, "stream info", ctx.stream.get_info()).await?;
    let created = info.created.unix_timestamp_nanos();
    let replaced = position.created.is_some_and(|c| c != created)
        || info.state.last_sequence < position.sequence;
    if replaced {
        tracing::warn!(topic = %ctx.topic, from = position.sequence, "jetstream stream replaced: gap");
        position.sequence = 0;
        *interrupted = false;
        if !send(tx, Ok(Event::Gap(Gap::new(GapReason::Reset)))).await {
            return Ok(None);
        }
    }
    position.created = Some(created);
    let deliver_policy = match position.sequence {
        0 => DeliverPolicy::All,
        s => DeliverPolicy::ByStartSequence {
            start_sequence: s + 1,
        },
    };
    let consumer = bounded(
        ctx.timeout,
        "create a consumer",
        ctx.stream.create_consumer(pull::Config {
            deliver_policy,
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(60),
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        }),
    )
    .await?;
    let name = consumer.cached_info().name.clone();
    let pending = consumer.cached_info().num_pending;
    let messages = bounded(
        ctx.timeout,
        "pull",
        consumer
            .stream()
            .heartbeat(ctx.heartbeat)
            .expires(Duration::from_secs(30))
            .messages(),
    )
    .await?;
    Ok(Some(Opened {
        name,
        pending,
        messages,
    }))
}

/// Reads from `position` (with `opened`, the consumer `subscribe` opened)
/// until the subscription is dropped or the task is aborted; `replay`:
/// [`Event::ReplayDone`] once caught up the first time.
pub(crate) async fn run(
    ctx: ReaderCtx,
    mut position: Position,
    replay: bool,
    mut opened: Option<Opened>,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), ctx.max_backoff);
    let mut interrupted = false;
    let mut replay_pending = replay;
    loop {
        if tx.is_closed() {
            return;
        }
        let next = match opened.take() {
            Some(o) => Ok(Some(o)),
            None => open(&ctx, &mut position, &mut interrupted, &tx).await,
        };
        let failure = match next {
            Ok(None) => return,
            Ok(Some(o)) => {
                let name = o.name.clone();
                let result = consume(
                    &ctx,
                    o,
                    &mut position,
                    &mut interrupted,
                    &mut replay_pending,
                    &tx,
                )
                .await;
                // Best effort, aside (the connection may be down): it goes
                // by itself after the inactive threshold anyway.
                let (stream, timeout) = (ctx.stream.clone(), ctx.timeout);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(timeout, stream.delete_consumer(&name)).await;
                });
                match result {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(failure) => failure,
                }
            }
            Err(failure) => failure,
        };
        if interrupted {
            tracing::debug!(topic = %ctx.topic, error = %failure, "jetstream read failed again");
        } else {
            interrupted = true;
            tracing::warn!(topic = %ctx.topic, error = %failure, "jetstream read failed: interrupted until it reads again");
            let event = Event::Interrupted(Interruption::new(failure.reason()));
            if !send(&tx, Ok(event)).await {
                return;
            }
        }
        backoff.wait().await;
    }
}

/// Reads one consumer until it fails (or skips: `Ok(true)`, open another),
/// watching the client's connection meanwhile.
async fn consume(
    ctx: &ReaderCtx,
    mut opened: Opened,
    position: &mut Position,
    interrupted: &mut bool,
    replay_pending: &mut bool,
    tx: &mpsc::Sender<Result<Event>>,
) -> std::result::Result<bool, Failure> {
    if opened.pending == 0 && !caught_up(interrupted, replay_pending, tx).await {
        return Ok(false);
    }
    let mut consumer_sequence = 0;
    // A reconnect since the consumer was opened, however quick (a server
    // restart): what the old connection had in flight may never come, and
    // the consumer may be gone with the server. Read again from the
    // position, interrupted meanwhile.
    let connects = ctx.client.statistics().connects.load(Ordering::Acquire);
    let mut watch = tokio::time::interval(ctx.heartbeat);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if tx.is_closed() {
            return Ok(false);
        }
        let item = tokio::select! {
            item = opened.messages.next() => item,
            _ = watch.tick() => {
                // The client noticed a dead connection (its pings) before
                // the pull's heartbeats could.
                if ctx.client.connection_state() != async_nats::connection::State::Connected {
                    return Err(Failure::Timeout("connection lost"));
                }
                if ctx.client.statistics().connects.load(Ordering::Acquire) != connects {
                    return Err(Failure::Failed("read", "the client reconnected".into()));
                }
                continue;
            }
        };
        let message = match item {
            Some(Ok(message)) => message,
            Some(Err(e)) => return Err(Failure::Failed("read", e.to_string())),
            None => {
                return Err(Failure::Failed(
                    "read",
                    "the consumer's stream ended".into(),
                ))
            }
        };
        let (stream_sequence, next_consumer_sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.consumer_sequence, info.pending),
            Err(e) => return Err(Failure::Failed("message info", e.to_string())),
        };
        if next_consumer_sequence != consumer_sequence + 1 {
            // The consumer skipped: make a new one from the position.
            return Ok(true);
        }
        consumer_sequence = next_consumer_sequence;
        position.sequence = stream_sequence;
        let item = decode_frame(&ctx.topic, &message.payload);
        if !send(tx, item).await {
            return Ok(false);
        }
        if pending == 0 && !caught_up(interrupted, replay_pending, tx).await {
            return Ok(false);
        }
    }
}

/// Everything retained was delivered: the end of an interruption or of a
/// replay. `false` once the subscription was dropped.
async fn caught_up(
    interrupted: &mut bool,
    replay_pending: &mut bool,
    tx: &mpsc::Sender<Result<Event>>,
) -> bool {
    if std::mem::take(interrupted) && !send(tx, Ok(Event::Resumed)).await {
        return false;
    }
    if std::mem::take(replay_pending) && !send(tx, Ok(Event::ReplayDone)).await {
        return false;
    }
    true
}
