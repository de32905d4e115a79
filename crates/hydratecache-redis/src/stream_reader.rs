//! One stream subscription's reader: reads what follows its position with a
//! script that also reports whether that position is still retained, waits
//! for more with a short `XREAD BLOCK` (which doubles as its keepalive), and
//! on a lost connection goes on from the same position.

use std::time::Duration;

use bytes::Bytes;
use fred::clients::Client;
use fred::interfaces::{ClientLike, LuaInterface, StreamsInterface};
use fred::types::config::Options;
use fred::types::Value;
use hydratecache_core::adapter::{decode_frame, Backoff};
use hydratecache_core::{
    EnvelopeError, Error, Event, InterruptReason, Interruption, Result, StartFrom,
};
use tokio::sync::mpsc;

use crate::stream_position::{Position, StreamId, StreamState};
use crate::BACKEND;

/// The entry field that carries the envelope.
pub(crate) const FIELD: &str = "m";

/// Reads the stream's state and up to `ARGV[2]` entries after `ARGV[1]` in
/// one step, so that no trim can fall between the check and the read.
/// `ARGV[1] = "$"` reads only the state (to start from the end).
const READ_SCRIPT: &str = r"
local key = KEYS[1]
local kind = redis.call('TYPE', key).ok
if kind == 'none' then return {0, '0-0', '0-0', 0, {}} end
if kind ~= 'stream' then
  return redis.error_reply('hydratecache: key ' .. key .. ' holds a ' .. kind .. ', not a stream')
end
local info = redis.call('XINFO', 'STREAM', key)
local max_deleted, last_generated = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then max_deleted = info[i + 1]
  elseif info[i] == 'last-generated-id' then last_generated = info[i + 1] end
end
local from = ARGV[1]
if from == '$' then return {1, max_deleted, last_generated, 1, {}} end
local has = 1
if from ~= '0-0' and #redis.call('XRANGE', key, from, from) == 0 then has = 0 end
return {1, max_deleted, last_generated, has, redis.call('XRANGE', key, '(' .. from, '+', 'COUNT', ARGV[2])}
";

/// What a reader needs.
#[derive(Debug, Clone)]
pub(crate) struct ReaderCtx {
    pub(crate) client: Client,
    pub(crate) key: String,
    /// Entries read per step.
    pub(crate) batch: u64,
    /// How long one `XREAD BLOCK` waits for a new entry.
    pub(crate) block: Duration,
    /// Slack on each command beyond its own wait: a connection that does not
    /// answer within it is taken for dead (half-open) and reconnected.
    pub(crate) probe_timeout: Duration,
    pub(crate) retry_backoff_max: Duration,
}

/// One read step's answer.
#[derive(Debug)]
struct Read {
    state: StreamState,
    entries: Vec<(StreamId, Bytes)>,
}

#[derive(Debug)]
enum ReadError {
    /// No answer in time: the connection may be half-open.
    Timeout,
    Failed(fred::error::Error),
    /// The server answered with something the script does not return.
    Unexpected(String),
}

impl ReadError {
    fn reason(&self) -> InterruptReason {
        match self {
            ReadError::Timeout => InterruptReason::Unresponsive,
            _ => InterruptReason::Disconnected,
        }
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Timeout => f.write_str("no answer in time"),
            ReadError::Failed(e) => write!(f, "{e}"),
            ReadError::Unexpected(what) => write!(f, "unexpected answer: {what}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

fn text(value: &Value) -> Option<String> {
    value.as_string()
}

fn id(value: &Value) -> std::result::Result<StreamId, ReadError> {
    let text = text(value).ok_or_else(|| ReadError::Unexpected(format!("{value:?}")))?;
    text.parse().map_err(ReadError::Unexpected)
}

/// An entry `[id, [field, value, ...]]`: its ID and the value of [`FIELD`]
/// (empty when another client added an entry without it: a malformed
/// message, not a broken stream).
fn entry(value: Value) -> std::result::Result<(StreamId, Bytes), ReadError> {
    let Value::Array(mut parts) = value else {
        return Err(ReadError::Unexpected(
            "an entry that is not an array".into(),
        ));
    };
    if parts.len() != 2 {
        return Err(ReadError::Unexpected(format!(
            "an entry of {} parts",
            parts.len()
        )));
    }
    let fields = parts.pop().unwrap_or(Value::Null);
    let entry_id = id(&parts[0])?;
    let mut payload = Bytes::new();
    if let Value::Array(fields) = fields {
        for pair in fields.chunks(2) {
            if let [name, value] = pair {
                if text(name).as_deref() == Some(FIELD) {
                    payload = value
                        .as_bytes()
                        .map(Bytes::copy_from_slice)
                        .unwrap_or_default();
                    break;
                }
            }
        }
    }
    Ok((entry_id, payload))
}

fn parse(value: Value) -> std::result::Result<Read, ReadError> {
    let Value::Array(parts) = value else {
        return Err(ReadError::Unexpected(format!("{value:?}")));
    };
    let [exists, max_deleted, last_generated, has, entries] = <[Value; 5]>::try_from(parts)
        .map_err(|parts| ReadError::Unexpected(format!("{} values", parts.len())))?;
    let state = StreamState {
        exists: exists.as_u64() == Some(1),
        max_deleted: id(&max_deleted)?,
        last_generated: id(&last_generated)?,
        has_position: has.as_u64() == Some(1),
    };
    let entries = match entries {
        Value::Array(entries) => entries
            .into_iter()
            .map(entry)
            .collect::<std::result::Result<_, _>>()?,
        Value::Null => Vec::new(),
        other => return Err(ReadError::Unexpected(format!("{other:?}"))),
    };
    Ok(Read { state, entries })
}

impl ReaderCtx {
    fn options(&self, wait: Duration) -> Options {
        Options {
            timeout: Some(wait.saturating_add(self.probe_timeout)),
            // A command that failed is not retried by fred: the reader does.
            max_attempts: Some(1),
            ..Options::default()
        }
    }

    /// The state of the stream and the entries after `from` ("$": the
    /// state only).
    async fn read(&self, from: &str) -> std::result::Result<Read, ReadError> {
        let client = self.client.with_options(&self.options(Duration::ZERO));
        let call = client.eval::<Value, _, _, _>(
            READ_SCRIPT,
            vec![self.key.clone()],
            vec![from.to_owned(), self.batch.to_string()],
        );
        match tokio::time::timeout(self.probe_timeout.saturating_mul(2), call).await {
            Ok(Ok(value)) => parse(value),
            Ok(Err(e)) if e.is_canceled() || e.kind() == &fred::error::ErrorKind::Timeout => {
                Err(ReadError::Timeout)
            }
            Ok(Err(e)) => Err(ReadError::Failed(e)),
            Err(_) => Err(ReadError::Timeout),
        }
    }

    /// Waits up to `block` for an entry after `last` (what it returns is
    /// read again by the script, with the state).
    async fn wait(&self, last: StreamId) -> std::result::Result<(), ReadError> {
        let client = self.client.with_options(&self.options(self.block));
        let block = u64::try_from(self.block.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let call =
            client.xread::<Value, _, _>(Some(1), Some(block), self.key.clone(), last.to_string());
        match tokio::time::timeout(self.block.saturating_add(self.probe_timeout), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.kind() == &fred::error::ErrorKind::Timeout => Err(ReadError::Timeout),
            Ok(Err(e)) => Err(ReadError::Failed(e)),
            Err(_) => Err(ReadError::Timeout),
        }
    }
}

/// Sends to the subscription; `false` once it was dropped.
async fn send(tx: &mpsc::Sender<Result<Event>>, item: Result<Event>) -> bool {
    tx.send(item).await.is_ok()
}

/// Where a subscription from `start` begins: the stream's start, or its
/// last entry now (read before `subscribe` returns, so that nothing
/// published after it is missed).
pub(crate) async fn start_position(ctx: &ReaderCtx, start: StartFrom) -> Result<Position> {
    if matches!(start, StartFrom::Earliest) {
        return Ok(Position::start());
    }
    match ctx.read("$").await {
        Ok(read) => Ok(Position {
            last: read.state.last_generated,
        }),
        Err(e) => Err(Error::backend(
            BACKEND,
            format!("find the end of stream {:?}", ctx.key),
            e,
        )),
    }
}

/// Reads from `position` until the subscription is dropped or the
/// transport closed (`tx` then fails, or the task is aborted); `replay`:
/// [`Event::ReplayDone`] once caught up the first time.
pub(crate) async fn run(
    ctx: ReaderCtx,
    position: Position,
    replay: bool,
    tx: mpsc::Sender<Result<Event>>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(50), ctx.retry_backoff_max);
    let mut replay_pending = replay;
    let mut pos = position;
    let mut interrupted = false;
    loop {
        if tx.is_closed() {
            return;
        }
        let from = pos.last.to_string();
        let read = match ctx.read(&from).await {
            Ok(read) => read,
            Err(e) => {
                if !fail(&ctx, &tx, &mut interrupted, &e).await {
                    return;
                }
                backoff.wait().await;
                continue;
            }
        };
        backoff.reset();
        if let Some(gap) = pos.check(&read.state) {
            tracing::warn!(stream = %ctx.key, from = %from, reason = %gap.reason, "stream position no longer retained: gap");
            interrupted = false;
            if !send(&tx, Ok(Event::Gap(gap))).await {
                return;
            }
            continue;
        }
        let caught_up = (read.entries.len() as u64) < ctx.batch;
        for (entry_id, payload) in read.entries {
            pos.last = entry_id;
            let item = if payload.is_empty() {
                tracing::warn!(stream = %ctx.key, id = %entry_id, "entry without the {FIELD:?} field");
                Err(Error::Malformed {
                    topic: ctx.key.clone(),
                    key: None,
                    source: EnvelopeError::Truncated { needed: 1, got: 0 },
                })
            } else {
                decode_frame(&ctx.key, &payload)
            };
            if !send(&tx, item).await {
                return;
            }
        }
        if !caught_up {
            continue;
        }
        if interrupted {
            interrupted = false;
            tracing::info!(stream = %ctx.key, "stream read again from its position: resumed");
            if !send(&tx, Ok(Event::Resumed)).await {
                return;
            }
        }
        if replay_pending {
            replay_pending = false;
            if !send(&tx, Ok(Event::ReplayDone)).await {
                return;
            }
        }
        let last = pos.last;
        if let Err(e) = ctx.wait(last).await {
            if !fail(&ctx, &tx, &mut interrupted, &e).await {
                return;
            }
            backoff.wait().await;
        }
    }
}

/// A read that failed: the subscription is interrupted (once until it
/// resumes); a connection that did not answer is then reconnected.
async fn fail(
    ctx: &ReaderCtx,
    tx: &mpsc::Sender<Result<Event>>,
    interrupted: &mut bool,
    error: &ReadError,
) -> bool {
    if *interrupted {
        tracing::debug!(stream = %ctx.key, %error, "stream read failed again");
    } else {
        *interrupted = true;
        tracing::warn!(stream = %ctx.key, %error, "stream read failed: interrupted until it reads again");
        let interruption = Interruption::new(error.reason());
        if !send(tx, Ok(Event::Interrupted(interruption))).await {
            return false;
        }
    }
    if let ReadError::Timeout = error {
        // Half-open, or a server that stopped answering: a new connection.
        let _ = tokio::time::timeout(ctx.probe_timeout, ctx.client.force_reconnection()).await;
    }
    true
}
