//! Noticing a dead or half-open subscriber connection while it happens.
//!
//! fred reports a connection it saw fail on its error channel, but an idle
//! subscriber connection whose peer vanished (no RST: a crashed host, a
//! proxy or NAT that stopped forwarding) is never seen failing: nothing is
//! written on it, so nothing times out (its unresponsive check counts only
//! commands, and no TCP keepalive is set by default). So the subscriber is
//! pinged after each keepalive interval; a ping unanswered within the probe
//! timeout means the connection is gone: the subscriptions are interrupted
//! and fred is told to reconnect (the usual reconnect gap follows).

use std::sync::Arc;
use std::time::Duration;

use fred::error::{Error as FredError, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::config::Server;
use fred::types::Value;
use hydratecache_core::InterruptReason;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use crate::subscriber::Shared;

/// How long `force_reconnection` may take before it is left to fred's own
/// reconnect policy.
const FORCE_RECONNECT_LIMIT: Duration = Duration::from_secs(5);

/// Watches the subscriber connection: its errors as fred reports them and,
/// with `keepalive` set, a ping after each interval bounded by `probe_timeout`.
/// Ends when fred's error channel closes or the transport closes.
pub(crate) async fn watch(
    shared: Arc<Shared>,
    mut errors: broadcast::Receiver<(FredError, Option<Server>)>,
    keepalive: Option<Duration>,
    probe_timeout: Duration,
) {
    loop {
        let interval = keepalive.unwrap_or(Duration::from_secs(86_400));
        tokio::select! {
            biased;
            error = errors.recv() => match error {
                Ok((error, server)) => {
                    tracing::warn!(?server, error = %error, "redis subscriber connection failed");
                    shared.interrupt(InterruptReason::Disconnected);
                }
                Err(RecvError::Lagged(_)) => shared.interrupt(InterruptReason::Disconnected),
                Err(RecvError::Closed) => return,
            },
            () = tokio::time::sleep(interval), if keepalive.is_some() => {
                if shared.closed.is_closed() {
                    return;
                }
                // While interrupted, fred is reconnecting: nothing to probe.
                if !shared.is_interrupted() {
                    probe(&shared, probe_timeout).await;
                }
            }
        }
    }
}

/// One bounded ping on the subscriber connection.
async fn probe(shared: &Arc<Shared>, timeout: Duration) {
    let mut options = shared.options();
    options.timeout = Some(timeout);
    options.max_attempts = Some(1);
    options.fail_fast = true;
    let client = shared.subscriber.with_options(&options);
    // fred's own timeout, and ours in case its timer is not reached.
    let limit = timeout.saturating_add(Duration::from_millis(100));
    let outcome = tokio::time::timeout(limit, client.ping::<Value>(None)).await;
    let reason = match outcome {
        Ok(Ok(_)) => return,
        Ok(Err(e)) if *e.kind() != ErrorKind::Timeout => {
            tracing::warn!(error = %e, "redis subscriber ping failed");
            InterruptReason::Disconnected
        }
        Ok(Err(_)) | Err(_) => {
            tracing::warn!(
                ?timeout,
                "redis subscriber connection did not answer a ping: reconnecting"
            );
            InterruptReason::Unresponsive
        }
    };
    if shared.closed.is_closed() {
        return;
    }
    shared.interrupt(reason);
    if reason == InterruptReason::Unresponsive {
        let shared = Arc::clone(shared);
        tokio::spawn(async move {
            let reconnect = shared.subscriber.force_reconnection();
            match tokio::time::timeout(FORCE_RECONNECT_LIMIT, reconnect).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "redis subscriber: forced reconnect failed")
                }
                Err(_) => tracing::warn!("redis subscriber: forced reconnect still under way"),
            }
        });
    }
}
