//! Publishing: one envelope to a subject, written to a live connection.

use std::time::Duration;

use async_nats::connection::State;
use async_nats::Subject;
use bytes::Bytes;
use hydratecache_core::adapter::{check_envelope, lock};
use hydratecache_core::{Capabilities, Envelope, Error, Result};

use crate::inner::Inner;
use crate::BACKEND;

/// How often a waiting publish looks at the connection state.
const STATE_POLL: Duration = Duration::from_millis(20);

impl Inner {
    /// Publishes `envelope` on `topic`'s subject.
    pub(crate) async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<()> {
        self.check_open()?;
        let subject = self.publish_subject(topic)?;
        check_envelope(BACKEND, &self.capabilities(), envelope)?;
        let frame = Bytes::from(envelope.encode()?);
        self.publish_frame(subject, frame).await
    }

    /// The largest message is the server's `max_payload`, since the envelope
    /// is the whole body; no replay.
    pub(crate) fn capabilities(&self) -> Capabilities {
        Capabilities::new(Some(self.client.max_payload()))
    }

    /// The subject of `topic`, checked once per change of topic.
    fn publish_subject(&self, topic: &str) -> Result<Subject> {
        let mut last = lock(&self.last_subject);
        if let Some((t, subject)) = last.as_ref() {
            if **t == *topic {
                return Ok(subject.clone());
            }
        }
        let subject = Subject::from(self.subject(topic)?);
        *last = Some((topic.into(), subject.clone()));
        Ok(subject)
    }

    async fn publish_frame(&self, subject: Subject, frame: Bytes) -> Result<()> {
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(Error::backend(
                BACKEND,
                format!("publish to {subject}"),
                format!("the client is {state}, not connected; nothing was sent"),
            ));
        }
        let before = self.connects();
        let timeout = self.config.publish_timeout;
        let send = async {
            self.client
                .publish(subject.clone(), frame)
                .await
                .map_err(|e| Error::backend(BACKEND, format!("publish to {subject}"), e))?;
            // Set once the message is queued, so a close whose round trip
            // was queued before it cannot clear the flag for it.
            self.mark_unconfirmed();
            self.client
                .flush()
                .await
                .map_err(|e| Error::backend(BACKEND, format!("flush the publish to {subject}"), e))
        };
        // async-nats shows the connection state only by polling: a loss seen
        // while the publish waits fails it at once rather than at the timeout.
        let lost = async {
            loop {
                tokio::time::sleep(STATE_POLL).await;
                if self.client.connection_state() == State::Disconnected {
                    return;
                }
            }
        };
        // Fast path: the flush normally returns within microseconds; one
        // timer, no polling of the connection state.
        tokio::pin!(send);
        let started = tokio::time::Instant::now();
        let outcome = match tokio::time::timeout(STATE_POLL.min(timeout), &mut send).await {
            Ok(result) => Ok(Some(result)),
            Err(_) => {
                let left = timeout.saturating_sub(started.elapsed());
                tokio::time::timeout(left, async {
                    tokio::select! {
                        result = &mut send => Some(result),
                        () = lost => None,
                    }
                })
                .await
            }
        };
        match outcome {
            Ok(Some(result)) => result?,
            Ok(None) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("publish to {subject}"),
                    "the connection was lost during the publish; the message may not reach \
                     the server (or may be sent once the client reconnects)",
                ))
            }
            Err(_) => {
                return Err(Error::backend(
                    BACKEND,
                    format!("publish to {subject}"),
                    format!(
                        "not written to the server within {timeout:?} (connection {}); \
                         it may still be sent once the client reconnects",
                        self.client.connection_state()
                    ),
                ))
            }
        }
        if self.connects() != before {
            return Err(Error::backend(
                BACKEND,
                format!("publish to {subject}"),
                "the connection was lost and re-established during the publish; \
                 the message may not have reached the server",
            ));
        }
        Ok(())
    }
}
