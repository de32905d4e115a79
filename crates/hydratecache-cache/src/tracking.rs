//! What one run of the hydration task tracks about its stream.

use std::time::Instant;

use hydratecache_core::PublisherId;

use crate::leases::Leases;
use crate::sequences::Sequences;

/// What one run of the hydration task tracks about the stream.
pub(crate) struct Tracking {
    pub(crate) sequences: Sequences,
    pub(crate) leases: Leases,
    /// The marker sent to catch up after a stall, and when: the cache
    /// serves again once it came back.
    pub(crate) marker: Option<(PublisherId, Instant)>,
    /// Updates and deletes applied since the transport's interruption:
    /// counted as caught up if it ends in a resume rather than a gap.
    pub(crate) since_interruption: u64,
}

impl Tracking {
    pub(crate) fn new(subscribed_ms: u64, now: Instant) -> Tracking {
        Tracking {
            sequences: Sequences::new(subscribed_ms, now),
            leases: Leases::default(),
            marker: None,
            since_interruption: 0,
        }
    }
}
