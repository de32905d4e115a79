//! The publish command, and what the publishing connection is doing, so
//! that a publish during an outage fails at once and says why, instead of
//! waiting for the command timeout with fred's "Request timed out".

use std::sync::{Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fred::clients::Client;
use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::{ClientLike, PubsubInterface, StreamsInterface};
use fred::types::config::{Options, Server, ServerConfig};
use fred::types::ClientState;
use hydratecache_core::adapter::lock;
use hydratecache_core::{Error, Result};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Notify};

use crate::BACKEND;

/// How often a publish waiting for a reconnect looks at the client's state
/// (fred announces a new connection before it marks the client connected).
const RECHECK: Duration = Duration::from_millis(25);

/// The publishing client's connection, as its events tell it.
#[derive(Debug)]
pub(crate) struct Health {
    /// The servers, without credentials (fred's `Server` holds none).
    address: String,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Set when the connection was lost or a connection attempt failed;
    /// cleared by a new connection.
    down: Option<Down>,
    /// Counts the times the connection went down.
    downs: u64,
}

#[derive(Debug, Clone)]
struct Down {
    cause: String,
    since: Instant,
    /// Whether a connection attempt has failed since (else the connection
    /// was lost and the first attempt is still to come).
    unreachable: bool,
}

impl Down {
    fn describe(&self) -> String {
        let what = if self.unreachable {
            "server unreachable"
        } else {
            "connection lost"
        };
        format!(
            "{what}: {} (down for {:.1?}; reconnecting)",
            self.cause,
            self.since.elapsed()
        )
    }
}

impl Health {
    pub(crate) fn new(client: &Client) -> Health {
        Health {
            address: address(&client.client_config().server),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The connection was lost (`unreachable` false) or an attempt to
    /// connect failed (true).
    fn set_down(&self, error: &FredError, unreachable: bool) {
        {
            let mut state = self.state();
            let since = match &state.down {
                Some(d) => d.since,
                None => {
                    state.downs = state.downs.wrapping_add(1);
                    Instant::now()
                }
            };
            state.down = Some(Down {
                cause: cause(error),
                since,
                unreachable,
            });
        }
        self.changed.notify_waiters();
    }

    fn set_up(&self) {
        self.state().down = None;
        self.changed.notify_waiters();
    }

    /// Waits until `client` is connected, at most `timeout`, and returns how
    /// many times the connection went down so far (for
    /// [`went_down`](Self::went_down)). Fails at once while the connection
    /// is known to be down, naming the cause; `doing` says what was being
    /// done.
    pub(crate) async fn ready(
        &self,
        client: &Client,
        timeout: Duration,
        doing: &str,
    ) -> Result<u64> {
        let start = Instant::now();
        loop {
            // Registered before looking, so no change is missed.
            let changed = self.changed.notified();
            {
                let state = self.state();
                if let Some(down) = &state.down {
                    return Err(self.error(doing, down.describe()));
                }
                // fred keeps saying Connected until its first reconnect
                // attempt, so the down mark above is checked first.
                if client.state() == ClientState::Connected {
                    return Ok(state.downs);
                }
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Err(self.error(
                    doing,
                    format!("not connected within {timeout:?} (reconnecting)"),
                ));
            }
            let _ = tokio::time::timeout(left.min(RECHECK), changed).await;
        }
    }

    /// Resolves once the connection went down after `downs` (a value from
    /// [`ready`](Self::ready)), with the error for `doing`.
    pub(crate) async fn went_down(&self, downs: u64, doing: &str) -> Error {
        loop {
            let changed = self.changed.notified();
            {
                let state = self.state();
                if let (Some(down), true) = (&state.down, state.downs != downs) {
                    return self.error(
                        doing,
                        format!(
                            "{}; the message may still be delivered if the client \
                             reconnects within the command timeout",
                            down.describe()
                        ),
                    );
                }
            }
            changed.await;
        }
    }

    /// A publish error that says what happened and where.
    pub(crate) fn explain(&self, doing: &str, error: &FredError, timeout: Duration) -> Error {
        let known = self.state().down.clone();
        let what = match (error.kind(), known) {
            (ErrorKind::Timeout, Some(down)) => {
                format!("no reply within {timeout:?}: {}", down.describe())
            }
            (ErrorKind::Timeout, None) => format!("no reply within {timeout:?}"),
            (ErrorKind::IO | ErrorKind::Canceled, _) => format!(
                "the connection broke while publishing, the message may or may not have been \
                 delivered: {}",
                cause(error)
            ),
            // fred found no connection to write on: it is reconnecting, and
            // its error event may not have reached `watch` yet.
            _ if unroutable(error) => {
                "connection lost: no connection to send on (reconnecting)".to_owned()
            }
            _ => cause(error),
        };
        self.error(doing, what)
    }

    fn error(&self, doing: &str, what: String) -> Error {
        Error::backend(BACKEND, format!("{doing} on {}", self.address), what)
    }
}

/// The command that carries a frame to a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Command {
    /// `PUBLISH`, or `SPUBLISH` when sharded.
    Publish { sharded: bool },
    /// `XADD topic MAXLEN ~ max_len * m frame` (streams mode).
    XAdd { max_len: u64 },
}

/// PUBLISH (or SPUBLISH, or XADD) `frame` to `topic`, bounded by
/// `timeout`; fails at once while the connection is known to be down, with
/// an error that names the cause and the address.
pub(crate) async fn publish(
    publisher: &Client,
    health: &Health,
    command: Command,
    timeout: Duration,
    topic: &str,
    frame: Bytes,
) -> Result<()> {
    let doing = match command {
        Command::Publish { .. } => format!("publish to channel {topic:?}"),
        Command::XAdd { .. } => format!("add to stream {topic:?}"),
    };
    let start = Instant::now();
    let downs = health.ready(publisher, timeout, &doing).await?;
    let left = timeout.saturating_sub(start.elapsed());
    let options = Options {
        // Zero would mean no timeout to fred.
        timeout: Some(if timeout.is_zero() {
            timeout
        } else {
            left.max(Duration::from_millis(1))
        }),
        // A connection that breaks after the write fails the publish at once
        // instead of sending it again on the next connection.
        max_attempts: Some(1),
        ..Options::default()
    };
    let client = publisher.with_options(&options);
    let channel = topic.to_owned();
    let mut sent = Box::pin(async move {
        let result: std::result::Result<(), FredError> = match command {
            Command::Publish { sharded: true } => {
                client.spublish::<i64, _, _>(channel, frame).await.map(drop)
            }
            Command::Publish { sharded: false } => {
                client.publish::<i64, _, _>(channel, frame).await.map(drop)
            }
            Command::XAdd { max_len } => client
                .xadd::<fred::types::Value, _, _, _, _>(
                    channel,
                    false,
                    ("MAXLEN", "~", i64::try_from(max_len).unwrap_or(i64::MAX)),
                    "*",
                    vec![(crate::stream_reader::FIELD, frame)],
                )
                .await
                .map(drop),
        };
        result
    });
    // The first poll hands the command to fred: done here, outside
    // `select!`, which may yield first when the task's budget is spent and
    // so let a later publish of the same task overtake this one.
    let result = match futures::poll!(sent.as_mut()) {
        Poll::Ready(result) => result,
        Poll::Pending => tokio::select! {
            biased;
            result = &mut sent => result,
            error = health.went_down(downs, &doing) => {
                // The command may be waiting in fred for a new connection:
                // its timeout still has to run out to cancel it there.
                tokio::spawn(sent);
                return Err(error);
            }
        },
    };
    match result {
        Ok(()) => {
            tracing::trace!(topic, "published");
            Ok(())
        }
        Err(e) => Err(health.explain(&doing, &e, timeout)),
    }
}

/// Follows the publishing client's connection events until it is closed.
pub(crate) async fn watch(
    health: std::sync::Arc<Health>,
    mut errors: broadcast::Receiver<(FredError, Option<Server>)>,
    mut connects: broadcast::Receiver<Server>,
) {
    loop {
        tokio::select! {
            event = errors.recv() => match event {
                // fred reports a lost connection with its server and a failed
                // connection attempt without one (router::utils).
                Ok((error, server)) => health.set_down(&error, server.is_none()),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => break,
            },
            event = connects.recv() => match event {
                Ok(_) | Err(RecvError::Lagged(_)) => health.set_up(),
                Err(RecvError::Closed) => break,
            },
        }
    }
}

/// fred's "Failed to route command.": no connection to write the command on.
fn unroutable(error: &FredError) -> bool {
    matches!(error.kind(), ErrorKind::Unknown | ErrorKind::Routing)
        && error.details().starts_with("Failed to route command")
}

/// A fred error in words: "connection refused" rather than the `Debug` of an
/// `io::Error`.
fn cause(error: &FredError) -> String {
    let details = error.details();
    match error.kind() {
        ErrorKind::IO if details.contains("ConnectionRefused") => "connection refused".to_owned(),
        ErrorKind::IO if details.contains("TimedOut") => "connection timed out".to_owned(),
        ErrorKind::IO if details.contains("HostUnreachable") => "host unreachable".to_owned(),
        ErrorKind::IO if details.contains("NetworkUnreachable") => "network unreachable".to_owned(),
        ErrorKind::IO if details.contains("ConnectionReset") => "connection reset".to_owned(),
        ErrorKind::Timeout => format!("connection attempt timed out ({details})"),
        _ => error.to_string(),
    }
}

/// The servers of `config`, host and port only.
fn address(config: &ServerConfig) -> String {
    let list = |hosts: &[Server]| {
        hosts
            .iter()
            .map(|s| format!("{}:{}", s.host, s.port))
            .collect::<Vec<_>>()
            .join(",")
    };
    #[allow(unreachable_patterns)] // Unix sockets exist with a fred feature only.
    match config {
        ServerConfig::Centralized { server } => format!("{}:{}", server.host, server.port),
        ServerConfig::Clustered { hosts, .. } => format!("cluster {}", list(hosts)),
        ServerConfig::Sentinel {
            hosts,
            service_name,
            ..
        } => format!("sentinel {} (service {service_name})", list(hosts)),
        _ => "the configured server".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_fred_could_not_route_is_a_lost_connection() {
        let health = Health {
            address: "127.0.0.1:6379".into(),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        };
        let error = FredError::new(ErrorKind::Unknown, "Failed to route command.");
        let chain = |e: Error| {
            let source = std::error::Error::source(&e).map(ToString::to_string);
            format!("{e}: {}", source.unwrap_or_default())
        };
        let message = chain(health.explain("publish", &error, Duration::from_secs(5)));
        assert!(message.contains("connection lost"), "{message}");
        let other = FredError::new(ErrorKind::Unknown, "something else");
        let message = chain(health.explain("publish", &other, Duration::from_secs(5)));
        assert!(!message.contains("connection lost"), "{message}");
    }
}
