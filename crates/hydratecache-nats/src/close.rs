//! Closing: confirming that the server has what was published, then
//! releasing the connection the transport made.

use std::sync::atomic::{AtomicBool, Ordering};

use hydratecache_core::{Error, Result};

use crate::confirm::confirm_processed;
use crate::inner::Inner;
use crate::BACKEND;

impl Inner {
    /// Flushes, then waits until the server has processed everything this
    /// transport published (a round trip on the connection, bounded by
    /// `publish_timeout`), then closes the connection if the transport made
    /// it (its drain also bounded by `publish_timeout`). A failed
    /// confirmation is an error: what was published last may not have
    /// reached the server.
    ///
    /// A close after the first (on any clone) waits for the first to finish,
    /// then returns `Ok` if it confirmed and an error if it did not.
    pub(crate) async fn close(&self) -> Result<()> {
        let _one_at_a_time = self.closing.lock().await;
        if !self.shared.close() {
            return if self.unconfirmed.load(Ordering::Acquire) {
                Err(Error::backend(
                    BACKEND,
                    CONFIRM_ON_CLOSE,
                    "an earlier close() could not confirm, and the transport is closed",
                ))
            } else {
                Ok(())
            };
        }
        let timeout = self.config.publish_timeout;
        // Cleared before the round trip is queued: a publish queued after
        // it sets the flag again, and a drop then confirms that one. Set
        // again unless confirmed, also if this close is cancelled.
        let mut restore = RestoreOnDrop {
            flag: &self.unconfirmed,
            armed: self.unconfirmed.swap(false, Ordering::AcqRel),
        };
        let confirmed = tokio::time::timeout(timeout, confirm_processed(&self.client)).await;
        if matches!(confirmed, Ok(Ok(()))) {
            restore.armed = false;
        }
        drop(restore);
        if self.owned {
            // Closes the connection once what is queued is written. The
            // command queue is not read while the client reconnects.
            match tokio::time::timeout(timeout, self.client.drain()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "nats drain on close"),
                Err(_) => {
                    tracing::debug!("nats drain on close: not accepted within {timeout:?}")
                }
            }
        }
        match confirmed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::backend(BACKEND, CONFIRM_ON_CLOSE, e)),
            Err(_) => Err(Error::backend(
                BACKEND,
                CONFIRM_ON_CLOSE,
                format!("no answer within {timeout:?}"),
            )),
        }
    }
}

/// Sets `flag` when dropped while `armed`.
struct RestoreOnDrop<'a> {
    flag: &'a AtomicBool,
    armed: bool,
}

impl Drop for RestoreOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Release);
        }
    }
}

const CONFIRM_ON_CLOSE: &str = "confirm on close that the server has what was published";
