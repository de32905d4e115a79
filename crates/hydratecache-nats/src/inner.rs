//! The state behind a [`NatsTransport`](crate::NatsTransport) and its clones.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::{Client, Statistics, Subject};
use hydratecache_core::Result;

use crate::builder::Config;
use crate::confirm::confirm_processed;
use crate::shared::Shared;
use crate::subject::subject_for;
use crate::BACKEND;

/// The client and the transport's state, shared by its clones and kept
/// alive by its subscriptions.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Client,
    pub(crate) stats: Arc<Statistics>,
    /// Whether the transport made the client (and closes it).
    pub(crate) owned: bool,
    pub(crate) config: Config,
    pub(crate) shared: Arc<Shared>,
    pub(crate) monitor_started: AtomicBool,
    /// Something was published that the server has not been seen to have:
    /// set by every publish, cleared once `close()` confirmed. A drop with
    /// it set confirms in the background.
    pub(crate) unconfirmed: AtomicBool,
    /// Held by a `close()` while it confirms, so a second one waits for the
    /// outcome instead of reporting success early.
    pub(crate) closing: tokio::sync::Mutex<()>,
    /// The last topic published to and its checked subject: a channel
    /// publishes to one topic, and checking the subject on every publish
    /// showed up in publish-heavy profiles (docs/benchmarks.md).
    pub(crate) last_subject: Mutex<Option<(Box<str>, Subject)>>,
}

impl Inner {
    pub(crate) fn new(client: Client, owned: bool, config: Config, shared: Arc<Shared>) -> Inner {
        Inner {
            stats: client.statistics(),
            client,
            owned,
            config,
            shared,
            monitor_started: AtomicBool::new(false),
            unconfirmed: AtomicBool::new(false),
            closing: tokio::sync::Mutex::new(()),
            last_subject: Mutex::new(None),
        }
    }

    /// Records that a publish was queued that no `close()` has confirmed.
    /// Read first: concurrent publishers then share the flag's cache line
    /// instead of each writing it.
    pub(crate) fn mark_unconfirmed(&self) {
        if !self.unconfirmed.load(Ordering::Relaxed) {
            self.unconfirmed.store(true, Ordering::Release);
        }
    }

    /// Connections established so far (1 after the first connect).
    pub(crate) fn connects(&self) -> u64 {
        self.stats.connects.load(Ordering::Acquire)
    }

    /// `Err(Error::Closed)` once closed.
    pub(crate) fn check_open(&self) -> Result<()> {
        self.shared.closed.check(BACKEND)
    }

    /// The subject of `topic` (see [`NatsTransport::subject`](crate::NatsTransport::subject)).
    pub(crate) fn subject(&self, topic: &str) -> Result<String> {
        subject_for(self.config.subject_prefix.as_deref(), topic)
    }
}

impl Drop for Inner {
    /// Dropped with publishes `close()` did not confirm (never called,
    /// cancelled, or failed): keeps the connection open in a background task
    /// until the server has processed them (bounded by `publish_timeout`).
    /// async-nats closes a dropped client's socket at once; if the server's
    /// `PING` sits unread in it, the close is a reset and the server discards
    /// what it had not read yet, so the last publishes, already `Ok`, were
    /// lost (seen in the conformance suite on a loaded machine). The task
    /// needs the runtime to keep running: at the end of `main` it is cut
    /// short, which is why `close()` is the way to be sure.
    fn drop(&mut self) {
        if !self.unconfirmed.load(Ordering::Acquire) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("nats transport dropped outside a tokio runtime without close(): its last publishes may not reach the server");
            return;
        };
        let client = self.client.clone();
        let timeout = self.config.publish_timeout;
        runtime.spawn(async move {
            match tokio::time::timeout(timeout, confirm_processed(&client)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "nats: could not confirm what was published before the drop")
                }
                Err(_) => tracing::debug!(
                    "nats: no confirmation within {timeout:?} of what was published before the drop"
                ),
            }
        });
    }
}
