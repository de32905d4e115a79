//! One batching task per (topic, partition).
//!
//! Records queue in a channel; the task takes the first, waits at most the
//! linger for more (never past the broker's batch limit), sends them in one
//! produce request and answers every caller. Only one request per partition
//! is in flight, so a failed and retried batch can never be overtaken by a
//! later one: one publisher's records keep their order. While a request is
//! in flight the next records queue, and go out together in the next one.

use std::sync::Arc;
use std::time::Duration;

use hydratecache_core::Error;
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::Client;
use rskafka::record::Record;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::record::BATCH_OVERHEAD;
use crate::topics::TopicCache;
use crate::{SharedError, BACKEND};

/// Records one request carries at most.
const MAX_BATCH_RECORDS: usize = 10_000;
/// Publishes that may wait per partition before `publish` itself waits.
pub(crate) const QUEUE: usize = 16_384;

/// A record waiting to be sent, and who to tell.
pub(crate) struct Pending {
    pub(crate) record: Record,
    /// Upper bound of its size in a batch.
    pub(crate) size: usize,
    pub(crate) reply: oneshot::Sender<Result<(), Error>>,
}

/// What a partition's task needs.
pub(crate) struct ProducerCtx {
    pub(crate) client: Arc<Client>,
    pub(crate) topics: Arc<TopicCache>,
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) linger: Duration,
    pub(crate) max_batch_bytes: usize,
    pub(crate) request_timeout: Duration,
}

/// The queue of one partition and its task.
pub(crate) struct PartitionProducer {
    pub(crate) tx: mpsc::Sender<Pending>,
    pub(crate) task: JoinHandle<()>,
}

impl PartitionProducer {
    pub(crate) fn spawn(ctx: ProducerCtx) -> PartitionProducer {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(ctx, rx));
        PartitionProducer { tx, task }
    }
}

async fn run(ctx: ProducerCtx, mut rx: mpsc::Receiver<Pending>) {
    let mut client: Option<Arc<PartitionClient>> = None;
    let mut carry: Option<Pending> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                // Every sender is gone (closed or dropped) and all is sent.
                None => return,
            },
        };
        let mut bytes = BATCH_OVERHEAD + first.size;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + ctx.linger;
        loop {
            let next = match rx.try_recv() {
                Ok(p) => Some(p),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                Err(mpsc::error::TryRecvError::Empty) if ctx.linger.is_zero() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
            let Some(p) = next else { break };
            if bytes + p.size > ctx.max_batch_bytes || batch.len() >= MAX_BATCH_RECORDS {
                carry = Some(p);
                break;
            }
            bytes += p.size;
            batch.push(p);
        }
        let count = batch.len();
        let (records, replies): (Vec<Record>, Vec<_>) =
            batch.into_iter().map(|p| (p.record, p.reply)).unzip();
        // Records whose caller stopped waiting are sent all the same: a
        // cancelled publish may or may not be published.
        match produce(&ctx, &mut client, records).await {
            Ok(()) => {
                tracing::trace!(topic = %ctx.topic, partition = ctx.partition, count, bytes, "batch sent");
                for reply in replies {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(topic = %ctx.topic, partition = ctx.partition, count, error = %e, "batch failed");
                // The topic may be gone (a broker that lost its log): look it
                // up again on the next publish, creating it if allowed.
                ctx.topics.forget(&ctx.topic);
                let shared = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(Error::backend(
                        BACKEND,
                        format!("produce to {} partition {}", ctx.topic, ctx.partition),
                        SharedError(shared.clone()),
                    )));
                }
            }
        }
    }
}

async fn produce(
    ctx: &ProducerCtx,
    client: &mut Option<Arc<PartitionClient>>,
    records: Vec<Record>,
) -> Result<(), crate::KafkaError> {
    let attempt = async {
        let pc = match client {
            Some(pc) => Arc::clone(pc),
            None => {
                let pc = Arc::new(
                    ctx.client
                        .partition_client(
                            ctx.topic.clone(),
                            ctx.partition,
                            UnknownTopicHandling::Retry,
                        )
                        .await?,
                );
                *client = Some(Arc::clone(&pc));
                pc
            }
        };
        pc.produce(records, Compression::NoCompression).await?;
        Ok(())
    };
    match tokio::time::timeout(ctx.request_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(crate::KafkaError::Timeout(ctx.request_timeout)),
    }
}
