//! The publishing side: ordered lanes over the pool, a time bound on each
//! `pg_notify`, and what is known about the server's reachability.
//!
//! Order. A pool runs queries in parallel, so two publishes of one publisher
//! could commit (and reach subscribers) in either order, and an ordered
//! subscriber would take the later sequence number first for a lost message.
//! Each message is therefore queued, in the synchronous part of `publish()`,
//! on one of a few lanes chosen by (publisher, topic); a lane runs one
//! `pg_notify` at a time, in queue order. `Channel` calls `publish()` in
//! sequence order, so one publisher's messages on a topic commit in sequence
//! order, while different publishers still use the pool in parallel. A queued
//! message is sent even if its caller stops waiting: a hole in the sequence
//! would cost every subscriber a repair.
//!
//! Outages. When a publish cannot get a connection quickly, a direct
//! connection attempt says why (refused, timed out, TLS...), and the server
//! is known down. While it is, publishes skip the pool (which retries a
//! refused connection until its acquire timeout and then only says "pool
//! timed out"): one at a time asks the server directly whether it is back (a
//! refused connection answers at once), the others fail at once with the
//! known reason. A successful attempt, or the listener reconnecting, ends it.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hydratecache_core::adapter::lock;
use hydratecache_core::{Envelope, Error, Result};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::BACKEND;

/// How long a publish waits for the pool before a direct connection attempt
/// checks whether the server can be reached at all.
const PROBE_AFTER: Duration = Duration::from_millis(200);

/// After a probe found the server up, a slow pool is not probed again for
/// this long (a busy pool must not cost a connection per publish).
const PROBE_QUIET: Duration = Duration::from_secs(5);

/// One queued publish.
struct Job {
    topic: String,
    text: String,
    reply: oneshot::Sender<Result<()>>,
    /// The request timeout runs from the call, not from when the lane
    /// reaches the job (`None`: too far to represent, so no bound).
    deadline: Option<tokio::time::Instant>,
}

/// What is known about the server, shared by the lanes and the listener
/// (whose reconnection proves the server is back).
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: Mutex<Option<Down>>,
    /// One diagnosis at a time: the others wait for the pool as usual.
    /// Holds when the last one found the server up.
    probing: tokio::sync::Mutex<Option<Instant>>,
}

impl Health {
    fn state(&self) -> MutexGuard<'_, Option<Down>> {
        lock(&self.down)
    }

    /// The server answered: publishes go to it again.
    pub(crate) fn up(&self) {
        if let Some(down) = self.state().take() {
            tracing::info!(after = ?down.since.elapsed(), "postgres reachable again");
        }
    }
}

#[derive(Debug, Clone)]
struct Down {
    since: Instant,
    /// "connection refused", "timed out after 1s"...
    why: String,
}

/// The publishing side of a transport: the lanes' queues and the link they
/// share.
pub(crate) struct Publisher {
    link: Arc<Link>,
    /// Owned here only, never by the lane tasks: dropping the transport
    /// closes the queues, which ends the tasks and releases the pool.
    lanes: Mutex<Lanes>,
}

/// What the lanes use to reach the server.
struct Link {
    pool: PgPool,
    options: PgConnectOptions,
    /// The server as errors name it: host and port (or socket), nothing else.
    address: String,
    request_timeout: Duration,
    health: Arc<Health>,
}

#[derive(Default)]
struct Lanes {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    tasks: Vec<JoinHandle<()>>,
    closed: bool,
}

/// The server's address for errors and logs: no user, password or options.
pub(crate) fn redacted_address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => format!("{} (Unix socket)", socket.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

/// Why a connection could not be used, in words; `None` when the server
/// answered (a database error: it is up).
pub(crate) fn unreachable_reason(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(_) => None,
        sqlx::Error::Io(io) => Some(match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                "connection reset".to_owned()
            }
            _ => format!("unreachable ({io})"),
        }),
        sqlx::Error::Tls(tls) if !crate::TLS_COMPILED => Some(format!(
            "TLS failed ({tls}); this build has no TLS: enable the `tls-rustls` or `tls-native-tls` feature"
        )),
        sqlx::Error::Tls(tls) => Some(format!("TLS failed ({tls})")),
        sqlx::Error::PoolTimedOut => Some("no connection available in time".to_owned()),
        other => Some(format!("unreachable ({other})")),
    }
}

impl Publisher {
    pub(crate) fn new(pool: PgPool, request_timeout: Duration, health: Arc<Health>) -> Publisher {
        let options = pool.connect_options().as_ref().clone();
        Publisher {
            link: Arc::new(Link {
                address: redacted_address(&options),
                options,
                pool,
                request_timeout,
                health,
            }),
            lanes: Mutex::new(Lanes::default()),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, Lanes> {
        lock(&self.lanes)
    }

    /// Queues `text` on the lane of (`envelope`'s publisher, `topic`), now:
    /// the order of calls is the order of the `pg_notify`s. The receiver
    /// gets the outcome; it is dropped unanswered if the transport closes.
    pub(crate) fn enqueue(
        &self,
        topic: &str,
        envelope: &Envelope,
        text: String,
    ) -> Result<oneshot::Receiver<Result<()>>> {
        let mut lanes = self.lanes();
        if lanes.closed {
            return Err(Error::Closed { backend: BACKEND });
        }
        if lanes.senders.is_empty() {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(Error::backend(
                    BACKEND,
                    "publish",
                    "publishing needs a Tokio runtime",
                ));
            }
            // One lane per pooled connection: lanes never wait for each other.
            let count = self.link.pool.options().get_max_connections().max(1);
            for _ in 0..count {
                let (tx, rx) = mpsc::unbounded_channel();
                lanes.senders.push(tx);
                lanes
                    .tasks
                    .push(tokio::spawn(Arc::clone(&self.link).lane(rx)));
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (envelope.publisher.0, topic).hash(&mut hasher);
        let lane = (hasher.finish() % lanes.senders.len() as u64) as usize;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            topic: topic.to_owned(),
            text,
            reply,
            deadline: tokio::time::Instant::now().checked_add(self.link.request_timeout),
        };
        lanes.senders[lane]
            .send(job)
            .map_err(|_| Error::Closed { backend: BACKEND })?;
        Ok(answer)
    }

    /// Stops taking publishes, lets the lanes finish what is queued (each
    /// publish bounded by the request timeout) for at most `limit`, then
    /// abandons the rest (their callers get [`Error::Closed`]).
    pub(crate) async fn close(&self, limit: Duration) {
        let tasks = {
            let mut lanes = self.lanes();
            lanes.closed = true;
            lanes.senders.clear();
            std::mem::take(&mut lanes.tasks)
        };
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let drained = futures::future::join_all(tasks);
        if tokio::time::timeout(limit, drained).await.is_err() {
            tracing::warn!("postgres close: publishes still queued after {limit:?} abandoned");
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

impl Link {
    async fn lane(self: Arc<Self>, mut jobs: mpsc::UnboundedReceiver<Job>) {
        while let Some(job) = jobs.recv().await {
            if job
                .deadline
                .is_some_and(|d| d <= tokio::time::Instant::now())
            {
                // Its caller's bound ran out behind earlier publishes: not
                // sent (a gap in its sequence, as for any failed publish).
                let _ = job.reply.send(Err(Error::backend(
                    BACKEND,
                    format!(
                        "publish on topic {:?}: timed out after {:?} behind earlier publishes of this publisher; not sent",
                        job.topic, self.request_timeout
                    ),
                    "the request timeout ran out in the queue",
                )));
                continue;
            }
            let result = self.notify(&job.topic, &job.text, job.deadline).await;
            // The caller may have stopped waiting: the message went anyway.
            let _ = job.reply.send(result);
        }
    }

    /// One `pg_notify` through the pool, by `deadline` (the request timeout
    /// from the publish call).
    async fn notify(
        &self,
        topic: &str,
        text: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<()> {
        let limit = self.request_timeout;
        let attempt = async {
            if self.health.state().is_some() {
                // Known down: ask the server directly whether it is back,
                // one publish at a time.
                let Ok(_probing) = self.health.probing.try_lock() else {
                    return Err(Failure::KnownDown);
                };
                if let Some(failure) = self.probe().await {
                    return Err(failure);
                }
                self.up();
            }
            self.notify_or_diagnose(topic, text).await
        };
        let bounded = async {
            match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, attempt).await,
                None => Ok(attempt.await),
            }
        };
        let failure = match bounded.await {
            Ok(Ok(())) => {
                self.up();
                return Ok(());
            }
            Ok(Err(Failure::Answered(e))) => {
                self.up();
                return Err(Error::backend(
                    BACKEND,
                    format!("pg_notify on topic {topic:?}"),
                    e,
                ));
            }
            Ok(Err(failure)) => failure,
            Err(_) => Failure::Unreachable {
                why: format!("timed out after {limit:?}"),
                error: format!("no answer from the server within {limit:?}").into(),
            },
        };
        let (why, error) = match failure {
            Failure::Unreachable { why, error } => (why, error),
            Failure::KnownDown | Failure::Answered(_) => {
                let why = self
                    .health
                    .state()
                    .as_ref()
                    .map_or_else(|| "unreachable".to_owned(), |d| d.why.clone());
                let error = "not tried: another publish is checking whether it is back".into();
                (why, error)
            }
        };
        let (since, first) = self.mark_down(&why);
        let known = if first {
            String::new()
        } else {
            format!(", down since {:.1?} ago", since.elapsed())
        };
        Err(Error::backend(
            BACKEND,
            format!(
                "publish on topic {topic:?}: the server at {} is unreachable ({why}){known}",
                self.address,
            ),
            error,
        ))
    }

    /// The `pg_notify`; if the pool is slow to give a connection (or the
    /// query to answer), a direct connection attempt in parallel finds out
    /// whether the server can be reached, and its error is the answer.
    async fn notify_or_diagnose(&self, topic: &str, text: &str) -> Result<(), Failure> {
        let query = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(topic)
            .bind(text)
            .execute(&self.pool);
        tokio::pin!(query);
        let result = tokio::select! {
            result = &mut query => result,
            () = tokio::time::sleep(PROBE_AFTER) => {
                tokio::select! {
                    result = &mut query => result,
                    failure = self.probe_or_pend() => match failure {
                        Some(failure) => return Err(failure),
                        None => query.await,
                    },
                }
            }
        };
        match result {
            Ok(_) => Ok(()),
            Err(error) => match unreachable_reason(&error) {
                None => Err(Failure::Answered(error)),
                // The pool's own message ("pool timed out") says little: ask
                // the server directly why.
                Some(why) => {
                    let probed = match self.health.probing.try_lock() {
                        Ok(_probing) => Some(self.probe().await),
                        Err(_) => None,
                    };
                    Err(match probed {
                        Some(Some(failure)) => failure,
                        // The server is up: this connection failed, not the server.
                        Some(None) => Failure::Answered(error),
                        None => Failure::Unreachable {
                            why,
                            error: error.into(),
                        },
                    })
                }
            },
        }
    }

    /// [`probe`](Self::probe), or never when another one runs (the caller
    /// races it against the pool).
    async fn probe_or_pend(&self) -> Option<Failure> {
        let Ok(mut probing) = self.health.probing.try_lock() else {
            return std::future::pending().await;
        };
        if probing.is_some_and(|up| up.elapsed() < PROBE_QUIET) {
            // Up a moment ago: the pool is busy, not the server gone.
            drop(probing);
            return std::future::pending().await;
        }
        let failure = self.probe().await;
        *probing = failure.is_none().then(Instant::now);
        failure
    }

    /// A direct connection attempt; `Some` with the reason when it fails for
    /// a reason other than the server's answer.
    async fn probe(&self) -> Option<Failure> {
        match PgConnection::connect_with(&self.options).await {
            Ok(conn) => {
                // Closed in the background: the server is up, that is all
                // this publish needed to know.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.close()).await;
                });
                None
            }
            Err(error) => unreachable_reason(&error).map(|why| Failure::Unreachable {
                why,
                error: error.into(),
            }),
        }
    }

    fn health(&self) -> MutexGuard<'_, Option<Down>> {
        self.health.state()
    }

    /// Records the outage; returns since when the server is down, and
    /// whether this failure is the first of the outage.
    fn mark_down(&self, why: &str) -> (Instant, bool) {
        let mut down = self.health();
        match down.as_mut() {
            Some(state) => {
                state.why = why.to_owned();
                (state.since, false)
            }
            None => {
                tracing::warn!(server = %self.address, why, "postgres unreachable: publishes fail at once until it answers again");
                let since = Instant::now();
                *down = Some(Down {
                    since,
                    why: why.to_owned(),
                });
                (since, true)
            }
        }
    }

    fn up(&self) {
        self.health.up();
    }
}

/// Why a `pg_notify` failed.
enum Failure {
    /// The server answered with an error, or a connection failed while the
    /// server can be reached: it is up.
    Answered(sqlx::Error),
    /// The server is known down and another publish is checking it.
    KnownDown,
    /// The server could not be reached.
    Unreachable {
        why: String,
        error: hydratecache_core::BoxError,
    },
}
