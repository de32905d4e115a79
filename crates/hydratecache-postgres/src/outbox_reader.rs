//! One outbox subscription's reader: what became visible between two
//! snapshots of its own, woken by a NOTIFY and at least every keepalive
//! interval (which is also its liveness probe).

use std::time::Duration;

use hydratecache_core::adapter::{decode_frame, Backoff};
use hydratecache_core::{Error, Event, InterruptReason, Interruption, Result};
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::BACKEND;

/// The channel every outbox publish notifies, with the topic as payload.
pub(crate) const WAKE_CHANNEL: &str = "hydratecache_outbox";

/// A snapshot as `pg_current_snapshot()` gives it: `xmin:xmax:xip,...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Snapshot {
    pub(crate) text: String,
    pub(crate) xmin: u64,
}

impl Snapshot {
    /// Sees no transaction at all: a replay from the start.
    pub(crate) fn nothing() -> Snapshot {
        Snapshot {
            text: "1:1:".to_owned(),
            xmin: 1,
        }
    }

    pub(crate) fn parse(text: &str) -> std::result::Result<Snapshot, String> {
        let xmin = text
            .split(':')
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| format!("not a snapshot: {text:?}"))?;
        Ok(Snapshot {
            text: text.to_owned(),
            xmin,
        })
    }

    /// Whether rows of transactions up to `max_deleted` may have been
    /// deleted before this snapshot saw them: every transaction below
    /// `xmin` had ended when it was taken (committed ones were seen).
    pub(crate) fn may_have_missed(&self, max_deleted: Option<i64>) -> bool {
        max_deleted.is_some_and(|d| u64::try_from(d).is_ok_and(|d| d >= self.xmin))
    }
}

/// What a reader needs.
#[derive(Debug, Clone)]
pub(crate) struct ReaderCtx {
    pub(crate) pool: PgPool,
    pub(crate) topic: String,
    /// How often it reads without a wake-up.
    pub(crate) poll: Duration,
    /// Bound on each statement: past it the read is given up.
    pub(crate) timeout: Duration,
    /// Rows per statement.
    pub(crate) page: i64,
    pub(crate) max_backoff: Duration,
}

/// The current snapshot, as a subscription from now starts from.
pub(crate) async fn snapshot_now(pool: &PgPool, timeout: Duration) -> Result<Snapshot> {
    let query = sqlx::query_scalar::<_, String>("SELECT pg_current_snapshot()::text");
    let text = match tokio::time::timeout(timeout, query.fetch_one(pool)).await {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return Err(Error::backend(BACKEND, "read the current snapshot", e)),
        Err(_) => {
            return Err(Error::backend(
                BACKEND,
                "read the current snapshot",
                format!("no answer within {timeout:?}"),
            ))
        }
    };
    Snapshot::parse(&text).map_err(|e| Error::backend(BACKEND, "read the current snapshot", e))
}

/// Why a read failed.
#[derive(Debug)]
enum ReadError {
    Timeout,
    Failed(sqlx::Error),
    Closed,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Timeout => f.write_str("no answer in time"),
            ReadError::Failed(e) => write!(f, "{e}"),
            ReadError::Closed => f.write_str("the subscription was dropped"),
        }
    }
}

/// `f`, unless `deadline` passes first.
async fn bounded<T>(
    deadline: tokio::time::Instant,
    f: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, ReadError> {
    match tokio::time::timeout_at(deadline, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ReadError::Failed(e)),
        Err(_) => Err(ReadError::Timeout),
    }
}

/// Reads what became visible since `since`, in one repeatable-read
/// transaction, page by page into `tx`.
async fn read(
    ctx: &ReaderCtx,
    since: &Snapshot,
    tx: &mpsc::Sender<Result<Event>>,
) -> std::result::Result<Read, ReadError> {
    // One bound for the server's answers up to each page, not per statement:
    // a connection that went silent is given up within it.
    let mut deadline = tokio::time::Instant::now() + ctx.timeout;
    let mut db = bounded(deadline, ctx.pool.begin()).await?;
    bounded(
        deadline,
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *db),
    )
    .await?;
    let (text, max_deleted): (String, Option<i64>) = bounded(
        deadline,
        sqlx::query_as(
            "SELECT pg_current_snapshot()::text, \
             (SELECT max_deleted FROM hydratecache_outbox_trimmed WHERE topic = $1)",
        )
        .bind(&ctx.topic)
        .fetch_one(&mut *db),
    )
    .await?;
    let now = Snapshot::parse(&text).map_err(|e| ReadError::Failed(sqlx::Error::Protocol(e)))?;
    let missed = since.may_have_missed(max_deleted);
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, Vec<u8>)> = bounded(
            deadline,
            sqlx::query_as(
                "SELECT id, envelope FROM hydratecache_outbox \
                 WHERE topic = $1 AND txid >= pg_snapshot_xmin($2::pg_snapshot) \
                 AND NOT pg_visible_in_snapshot(txid, $2::pg_snapshot) AND id > $3 \
                 ORDER BY id LIMIT $4",
            )
            .bind(&ctx.topic)
            .bind(&since.text)
            .bind(after)
            .bind(ctx.page)
            .fetch_all(&mut *db),
        )
        .await?;
        let full = i64::try_from(rows.len()).unwrap_or(i64::MAX) >= ctx.page;
        if missed && after == 0 {
            // Before what is still there: it may follow a deleted row.
            tracing::warn!(topic = %ctx.topic, "outbox rows this reader had not seen were deleted by retention: gap");
            let gap = hydratecache_core::Gap::new(hydratecache_core::GapReason::Reset);
            if tx.send(Ok(Event::Gap(gap))).await.is_err() {
                return Err(ReadError::Closed);
            }
        }
        for (id, envelope) in rows {
            after = id;
            let item = decode_frame(&ctx.topic, &bytes::Bytes::from(envelope));
            if tx.send(item).await.is_err() {
                return Err(ReadError::Closed);
            }
        }
        if !full {
            break;
        }
        deadline = tokio::time::Instant::now() + ctx.timeout;
    }
    // Read only: nothing to commit, but a connection that cannot end it
    // has gone silent since: what was read stands, the failure is reported.
    let ended = bounded(tokio::time::Instant::now() + ctx.timeout, db.commit()).await;
    Ok(Read {
        now,
        missed,
        ended: ended.err(),
    })
}

/// What one read did.
struct Read {
    /// The snapshot read at: the position from now on.
    now: Snapshot,
    /// Whether rows it had not seen may have been deleted (a gap was sent).
    missed: bool,
    /// Why its transaction could not be ended, after the rows were read.
    ended: Option<ReadError>,
}

/// Reads from `since` until the subscription is dropped or the transport
/// closed; `replay`: [`Event::ReplayDone`] after the first read.
pub(crate) async fn run(
    ctx: ReaderCtx,
    mut since: Snapshot,
    replay: bool,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut listener = listen(&ctx).await;
    let mut backoff = Backoff::new(Duration::from_millis(50), ctx.max_backoff);
    let mut interrupted = false;
    let mut first = true;
    loop {
        if tx.is_closed() {
            return;
        }
        // A replay reads what is retained: deleted rows are no gap there.
        let check_from = if first && replay {
            Snapshot {
                text: since.text.clone(),
                xmin: u64::MAX,
            }
        } else {
            since.clone()
        };
        let failed = match read(&ctx, &check_from, &tx).await {
            Ok(Read {
                now,
                ended: Some(e),
                ..
            }) => {
                since = now;
                Err(e)
            }
            Ok(Read {
                now,
                missed,
                ended: None,
            }) => Ok((now, missed)),
            Err(e) => Err(e),
        };
        match failed {
            Ok((now, missed)) => {
                backoff.reset();
                since = now;
                let resumed = interrupted && !missed;
                interrupted = false;
                if resumed && tx.send(Ok(Event::Resumed)).await.is_err() {
                    return;
                }
                if first && replay && tx.send(Ok(Event::ReplayDone)).await.is_err() {
                    return;
                }
                first = false;
            }
            Err(ReadError::Closed) => return,
            Err(e) => {
                if !interrupted {
                    interrupted = true;
                    let reason = match e {
                        ReadError::Timeout => InterruptReason::Unresponsive,
                        _ => InterruptReason::Disconnected,
                    };
                    tracing::warn!(topic = %ctx.topic, error = %e, "outbox read failed: interrupted until it reads again");
                    let event = Event::Interrupted(Interruption::new(reason));
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                backoff.wait().await;
                continue;
            }
        }
        wait(&ctx, &mut listener).await;
    }
}

async fn listen(ctx: &ReaderCtx) -> Option<PgListener> {
    let connect = async {
        let mut listener = PgListener::connect_with(&ctx.pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    };
    match tokio::time::timeout(ctx.timeout, connect).await {
        Ok(Ok(listener)) => Some(listener),
        Ok(Err(e)) => {
            tracing::debug!(topic = %ctx.topic, error = %e, "outbox wake-up not listening: polling only");
            None
        }
        Err(_) => None,
    }
}

/// Until a publish on this topic is notified, or the poll interval passed.
async fn wait(ctx: &ReaderCtx, listener: &mut Option<PgListener>) {
    let deadline = tokio::time::Instant::now() + ctx.poll;
    let Some(l) = listener.as_mut() else {
        tokio::time::sleep_until(deadline).await;
        *listener = listen(ctx).await;
        return;
    };
    loop {
        match tokio::time::timeout_at(deadline, l.try_recv()).await {
            Ok(Ok(Some(n))) if n.payload() == ctx.topic => return,
            Ok(Ok(Some(_))) => {}
            // Lost (it reconnects on the next call) or failed: poll.
            Ok(Ok(None) | Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                return;
            }
            Err(_) => return,
        }
    }
}
