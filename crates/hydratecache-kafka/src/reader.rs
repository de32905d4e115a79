//! Readers: one task per partition, fetching from a position it keeps
//! itself (no consumer group, no committed offsets).
//!
//! Live subscriptions ([`StartFrom::Latest`]) of one transport share one
//! reader per topic, which fans out to one queue per subscription; a
//! subscription that falls `subscription_buffer` messages or
//! `subscription_buffer_bytes` bytes behind gets a [`GapReason::Lagged`]
//! gap. A replaying subscription ([`StartFrom::Earliest`]) has its own
//! reader, with backpressure instead of loss under the same bounds: Kafka
//! keeps the log, so the reader simply waits.
//!
//! Log resets: a fetch whose high watermark is below the reader's position,
//! or an offset-out-of-range error, seen `reset_confirmations` times in a
//! row, means the log under the reader was truncated or replaced (a broker
//! that lost its storage, retention that passed the reader): a
//! [`GapReason::Reset`] gap, then reading resumes at the log's start. After
//! any failed request the reader also checks that the record before its
//! position is still the one it read (offset, timestamp and a hash of key,
//! value and headers); a different or missing record means a new log that
//! has already grown past the position, which the watermark alone would not
//! show. The readers' rskafka client does not retry by itself, so every
//! lost connection (a broker restart however short) is such a failure: with
//! rskafka's own retries a fetch would silently go on in the new log.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::try_join_all;
use hydratecache_core::adapter::Backoff;
use hydratecache_core::{Error, Event, Gap, GapReason, InterruptReason, Result, StartFrom};
use rskafka::client::error::{Error as ClientError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::cursor::{Check, Cursor, Fingerprint, Step};
use crate::record::read_record;
use crate::sink::{Item, Sink};
use crate::{KafkaError, BACKEND};

/// What a reader needs.
#[derive(Debug, Clone)]
pub(crate) struct ReaderCtx {
    pub(crate) client: Arc<Client>,
    pub(crate) topic: String,
    pub(crate) request_timeout: Duration,
    /// How much longer than its wait a fetch may take.
    pub(crate) probe_timeout: Duration,
    pub(crate) fetch_max_wait: Duration,
    pub(crate) fetch_bytes: usize,
    pub(crate) retry_backoff_max: Duration,
    pub(crate) reset_confirmations: u32,
    pub(crate) metadata_refresh: Duration,
    /// Wakes the supervisor to look for new partitions now.
    pub(crate) refresh: Arc<Notify>,
    pub(crate) closed: watch::Receiver<bool>,
}

/// A task aborted when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One reader: its supervisor task, which owns the partition tasks; all
/// are aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct ReaderHandle {
    _supervisor: AbortOnDrop,
}

/// Marks a partition's replay done when it reached the end it had at
/// subscribe time (or its log was reset); the last partition to get there
/// sends [`Event::ReplayDone`]. False once nobody receives.
async fn check_replay(topic: &str, cur: &mut Cursor, sink: &Sink, reset: bool) -> bool {
    let Some((end, remaining)) = &cur.replay else {
        return true;
    };
    if cur.position < *end && !reset {
        return true;
    }
    let last = remaining.fetch_sub(1, Ordering::AcqRel) == 1;
    cur.replay = None;
    !last || sink.send(topic, Item::Event(Event::ReplayDone)).await
}

/// Wait of fetches that only probe the log. Not zero: tansu 0.6 answers a
/// fetch with `max_wait_ms` 0 with no topic at all, even when it has data.
const PROBE_WAIT: Duration = Duration::from_millis(1);

/// First pause between attempts to open or fetch a partition; it doubles up
/// to the configured `retry_backoff_max`.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Pause before fetching a hole again.
const HOLE_WAIT: Duration = Duration::from_millis(20);

/// Stands for a bound too large to add to an instant (about 30 years).
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 86_400);

/// A fetch's outcome.
enum Fetched {
    Records(Vec<RecordAndOffset>, i64),
    OutOfRange,
}

async fn fetch(
    ctx: &ReaderCtx,
    pc: &PartitionClient,
    offset: i64,
    max_wait: Duration,
) -> std::result::Result<Fetched, KafkaError> {
    let bytes = 1..i32::try_from(ctx.fetch_bytes).unwrap_or(i32::MAX);
    let wait_ms = i32::try_from(max_wait.as_millis()).unwrap_or(i32::MAX);
    // The fetch is the reader's probe of the broker: bounded tightly, so a
    // dead or half-open connection interrupts the subscriptions quickly.
    let limit = ctx.probe_timeout.saturating_add(max_wait);
    match tokio::time::timeout(limit, pc.fetch_records(offset, bytes, wait_ms)).await {
        Err(_) => Err(KafkaError::Timeout(limit)),
        Ok(Ok((records, hw))) => Ok(Fetched::Records(records, hw)),
        Ok(Err(ClientError::ServerError {
            protocol_error: ProtocolError::OffsetOutOfRange,
            response,
            ..
        })) => {
            tracing::debug!(offset, ?response, "offset out of range");
            Ok(Fetched::OutOfRange)
        }
        Ok(Err(e)) => Err(KafkaError::Client(e)),
    }
}

async fn offset(
    ctx: &ReaderCtx,
    pc: &PartitionClient,
    at: OffsetAt,
) -> std::result::Result<i64, KafkaError> {
    match tokio::time::timeout(ctx.request_timeout, pc.get_offset(at)).await {
        Err(_) => Err(KafkaError::Timeout(ctx.request_timeout)),
        Ok(Ok(offset)) => Ok(offset.max(0)),
        Ok(Err(e)) => Err(KafkaError::Client(e)),
    }
}

/// Opens every partition of the topic at `start` and spawns their tasks;
/// resolves once every start position is known.
pub(crate) async fn start(
    ctx: ReaderCtx,
    partitions: &[i32],
    start: StartFrom,
    sink: Sink,
) -> Result<ReaderHandle> {
    let mut opened = try_join_all(partitions.iter().map(|&p| open(&ctx, p, start))).await?;
    if start == StartFrom::Earliest {
        let remaining = Arc::new(AtomicUsize::new(opened.len()));
        for (pc, cursor) in &mut opened {
            let (end, _) = log_end(&ctx, pc).await.map_err(|e| {
                Error::backend(BACKEND, format!("find the end of {}", ctx.topic), e)
            })?;
            cursor.replay = Some((end, Arc::clone(&remaining)));
        }
    }
    let tasks = opened
        .into_iter()
        .map(|(pc, cursor)| spawn_partition(&ctx, pc, cursor, &sink))
        .collect();
    let known = partitions.iter().copied().collect();
    let supervisor = tokio::spawn(supervise(ctx, known, tasks, sink));
    Ok(ReaderHandle {
        _supervisor: AbortOnDrop(supervisor),
    })
}

fn spawn_partition(
    ctx: &ReaderCtx,
    pc: PartitionClient,
    cursor: Cursor,
    sink: &Sink,
) -> AbortOnDrop {
    let ctx = ctx.clone();
    let sink = sink.clone();
    AbortOnDrop(tokio::spawn(async move {
        let mut closed = ctx.closed.clone();
        tokio::select! {
            _ = closed.wait_for(|c| *c) => {}
            () = run(&ctx, &pc, cursor, &sink) => {}
        }
    }))
}

/// Looks for partitions added to the topic (every `metadata_refresh`, and
/// at once after a log reset, which may come with a recreated topic) and
/// reads each new one from its earliest offset: everything in it was
/// written after it appeared, so after the subscription started.
async fn supervise(
    ctx: ReaderCtx,
    mut known: HashSet<i32>,
    mut tasks: Vec<AbortOnDrop>,
    sink: Sink,
) {
    let mut closed = ctx.closed.clone();
    let watch_partitions = async {
        loop {
            tokio::select! {
                () = tokio::time::sleep(ctx.metadata_refresh) => {}
                () = ctx.refresh.notified() => {}
            }
            let listed = tokio::time::timeout(ctx.request_timeout, ctx.client.list_topics()).await;
            let partitions = match listed {
                Ok(Ok(topics)) => topics
                    .into_iter()
                    .find(|t| t.name == ctx.topic)
                    .map(|t| t.partitions)
                    .unwrap_or_default(),
                Ok(Err(e)) => {
                    tracing::debug!(topic = %ctx.topic, error = %e, "partition refresh failed");
                    continue;
                }
                Err(_) => continue,
            };
            for partition in partitions {
                if known.contains(&partition) {
                    continue;
                }
                match open(&ctx, partition, StartFrom::Earliest).await {
                    Ok((pc, cursor)) => {
                        tracing::info!(topic = %ctx.topic, partition, "new partition: reading it from its start");
                        known.insert(partition);
                        tasks.push(spawn_partition(&ctx, pc, cursor, &sink));
                    }
                    Err(e) => {
                        tracing::debug!(topic = %ctx.topic, partition, error = %e, "cannot open a new partition yet");
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = closed.wait_for(|c| *c) => {}
        () = watch_partitions => {}
    }
}

async fn open(
    ctx: &ReaderCtx,
    partition: i32,
    start: StartFrom,
) -> Result<(PartitionClient, Cursor)> {
    let what = || format!("subscribe to {} partition {partition}", ctx.topic);
    let limit = ctx.request_timeout.saturating_mul(2);
    let attempt = || async {
        let pc = ctx
            .client
            .partition_client(ctx.topic.clone(), partition, UnknownTopicHandling::Retry)
            .await
            .map_err(KafkaError::Client)?;
        let (position, last) = match start {
            StartFrom::Earliest => (offset(ctx, &pc, OffsetAt::Earliest).await?, None),
            _ => log_end(ctx, &pc).await?,
        };
        Ok::<_, KafkaError>((pc, position, last))
    };
    // The readers' client does not retry by itself: retry here within the
    // bound, and report the last error rather than only the timeout.
    let now = tokio::time::Instant::now();
    // A bound too far to represent is no bound.
    let deadline = now.checked_add(limit).unwrap_or(now + FAR_FUTURE);
    let opening = async {
        let mut backoff = Backoff::new(FIRST_BACKOFF, ctx.retry_backoff_max);
        loop {
            match attempt().await {
                Ok(opened) => return Ok(opened),
                Err(e)
                    if tokio::time::Instant::now()
                        .checked_add(backoff.peek())
                        .is_none_or(|retry_at| retry_at >= deadline) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    tracing::debug!(topic = %ctx.topic, partition, error = %e, "opening a partition failed, retrying");
                    backoff.wait().await;
                }
            }
        }
    };
    let (pc, position, last) = tokio::time::timeout_at(deadline, opening)
        .await
        .map_err(|_| Error::backend(BACKEND, what(), KafkaError::Timeout(limit)))?
        .map_err(|e| Error::backend(BACKEND, what(), e))?;
    tracing::debug!(topic = %ctx.topic, partition, position, ?start, "partition opened");
    Ok((pc, Cursor::new(partition, position, last)))
}

/// The end of the log (the high watermark of a fetch: ListOffsets may be
/// wrong on some brokers) and the fingerprint of its last record.
async fn log_end(
    ctx: &ReaderCtx,
    pc: &PartitionClient,
) -> std::result::Result<(i64, Option<Fingerprint>), KafkaError> {
    // A hint near the end, so the probing fetch returns little data.
    let hint = offset(ctx, pc, OffsetAt::Latest).await.unwrap_or(0);
    let mut at = (hint - 1).max(0);
    for _ in 0..3 {
        match fetch(ctx, pc, at, PROBE_WAIT).await? {
            Fetched::Records(records, hw) => {
                let hw = hw.max(0);
                let last = records
                    .iter()
                    .find(|r| r.offset == hw - 1)
                    .map(Fingerprint::of);
                if last.is_some() || hw == 0 || at == hw - 1 {
                    return Ok((hw, last));
                }
                at = hw - 1;
            }
            // The hint was past the end, or before the log's start.
            Fetched::OutOfRange => at = offset(ctx, pc, OffsetAt::Earliest).await?,
        }
    }
    Err(KafkaError::Protocol("the log's end keeps moving"))
}

async fn run(ctx: &ReaderCtx, pc: &PartitionClient, mut cur: Cursor, sink: &Sink) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, ctx.retry_backoff_max);
    loop {
        if !check_replay(&ctx.topic, &mut cur, sink, false).await {
            return;
        }
        let verifying = cur.verify && cur.position > 0;
        let (at, wait) = if verifying {
            (cur.position - 1, PROBE_WAIT)
        } else {
            (cur.position, ctx.fetch_max_wait)
        };
        let fetched = match fetch(ctx, pc, at, wait).await {
            Ok(fetched) => fetched,
            Err(e) => {
                if cur.warned {
                    tracing::debug!(topic = %ctx.topic, partition = cur.partition, error = %e, "fetch failed, retrying");
                } else {
                    tracing::warn!(topic = %ctx.topic, partition = cur.partition, error = %e, "fetch failed, retrying");
                    cur.warned = true;
                }
                cur.verify = true;
                cur.resume_at = None;
                if !cur.interrupted {
                    cur.interrupted = true;
                    let reason = match &e {
                        KafkaError::Timeout(_) => InterruptReason::Unresponsive,
                        _ => InterruptReason::Disconnected,
                    };
                    if !sink.interrupted(&ctx.topic, cur.partition, reason).await {
                        return;
                    }
                }
                backoff.wait().await;
                continue;
            }
        };
        if cur.warned {
            tracing::info!(topic = %ctx.topic, partition = cur.partition, "fetching again");
            cur.warned = false;
        }
        backoff.reset();
        let (records, hw) = match fetched {
            Fetched::Records(records, hw) if hw >= cur.position => {
                cur.low_watermarks = 0;
                if cur.interrupted && !verifying && cur.resume_at.is_none() {
                    // Back: resumed once what the broker holds now is delivered.
                    cur.resume_at = Some(hw);
                }
                (records, hw)
            }
            // The log ends before our position, or our position is gone.
            _ => {
                cur.low_watermarks += 1;
                cur.verify = true;
                if cur.low_watermarks >= ctx.reset_confirmations {
                    if !reset(ctx, pc, &mut cur, sink).await {
                        return;
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                continue;
            }
        };
        if verifying {
            match cur.check(&records) {
                Check::Same => {}
                Check::Retry => tokio::time::sleep(HOLE_WAIT).await,
                Check::Replaced => {
                    tracing::warn!(topic = %ctx.topic, partition = cur.partition, position = cur.position, "a different log under the position");
                    if !reset(ctx, pc, &mut cur, sink).await {
                        return;
                    }
                }
            }
            continue;
        }
        let taken = cur.take(&ctx.topic, records, hw);
        for step in taken.steps {
            let item = match step {
                Step::Gap(gap) => Item::Event(Event::Gap(gap)),
                Step::Record(r) => match read_record(r.record) {
                    Ok(envelope) => Item::Event(Event::Message(envelope)),
                    Err(e) => {
                        tracing::warn!(topic = %ctx.topic, partition = cur.partition, offset = r.offset, error = %e.error, key = ?e.key, "malformed record");
                        Item::Malformed(e.error, e.key)
                    }
                },
            };
            if !sink.send(&ctx.topic, item).await {
                return;
            }
        }
        if cur.resume_at.is_some_and(|at| cur.position >= at) {
            cur.interrupted = false;
            cur.resume_at = None;
            if !sink.resumed(&ctx.topic, cur.partition).await {
                return;
            }
        }
        if taken.hole {
            tokio::time::sleep(HOLE_WAIT).await;
        } else if taken.idle {
            // Only records before the position (or control batches): do not
            // spin on them.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reports a gap and moves the cursor to the start of the (new) log.
async fn reset(ctx: &ReaderCtx, pc: &PartitionClient, cur: &mut Cursor, sink: &Sink) -> bool {
    let start = match offset(ctx, pc, OffsetAt::Earliest).await {
        Ok(start) => start,
        Err(e) => {
            tracing::debug!(topic = %ctx.topic, partition = cur.partition, error = %e, "earliest offset unknown, using 0");
            0
        }
    };
    let missed = (start > cur.position).then(|| u64::try_from(start - cur.position).unwrap_or(0));
    tracing::warn!(topic = %ctx.topic, partition = cur.partition, from = cur.position, to = start, ?missed, "log reset: gap");
    if !check_replay(&ctx.topic, cur, sink, true).await {
        return false;
    }
    cur.restart_at(start);
    // The topic may have been recreated with other partitions.
    ctx.refresh.notify_one();
    // The gap also ends this partition's interruption.
    cur.interrupted = false;
    cur.resume_at = None;
    let gap = Gap {
        reason: GapReason::Reset,
        missed,
    };
    sink.gap(&ctx.topic, cur.partition, gap).await
}
