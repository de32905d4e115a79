//! Whether a cache may serve what it holds: its trust state.

use std::fmt;
use std::time::{Instant, SystemTime};

use hydratecache_core::InterruptReason;

/// Why a cache does not serve what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Untrusted {
    /// Not warm yet: a warm-up stream or a replay is under way.
    Starting,
    /// The transport reported its path to the server broken; trusted again
    /// once delivery is back (and repaired where messages may have been lost).
    Interrupted(InterruptReason),
    /// The transport reported that the subscription is losing messages;
    /// trusted again after its next gap has been repaired.
    SubscriptionError,
    /// The hydration task failed (a panic, the subscription ended); trusted
    /// again once it has resubscribed and repaired, if it can.
    HydrationFailed,
    /// The hydration task did not run for longer than it may (the process
    /// was paused, or its runtime starved): trusted again once a marker sent
    /// through the backend came back.
    Stalled,
    /// The cache was closed or dropped.
    Closed,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Untrusted::Starting => f.write_str("starting"),
            Untrusted::Interrupted(reason) => write!(f, "interrupted ({reason})"),
            Untrusted::SubscriptionError => f.write_str("subscription error"),
            Untrusted::HydrationFailed => f.write_str("hydration failed"),
            Untrusted::Stalled => f.write_str("stalled"),
            Untrusted::Closed => f.write_str("closed"),
        }
    }
}

/// Whether a [`LocalCache`](crate::LocalCache) serves what it holds, since
/// when, and why not.
///
/// While untrusted, [`get`](crate::LocalCache::get) misses and
/// [`fetch`](crate::LocalCache::fetch) reads through the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// `None` while trusted; otherwise why not.
    pub untrusted: Option<Untrusted>,
    /// When the cache entered this state (trusted or untrusted).
    pub since: SystemTime,
}

impl Health {
    /// Whether reads may return what the cache holds.
    pub fn is_trusted(&self) -> bool {
        self.untrusted.is_none()
    }
}

/// The trust state behind [`Health`]; the hit path reads only the cache's
/// `ready` flag, which moves with it.
#[derive(Debug)]
pub(crate) struct Trust {
    pub(crate) untrusted: Option<Untrusted>,
    pub(crate) since: SystemTime,
    pub(crate) since_instant: Instant,
}

impl Trust {
    pub(crate) fn starting() -> Trust {
        Trust {
            untrusted: Some(Untrusted::Starting),
            since: SystemTime::now(),
            since_instant: Instant::now(),
        }
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            untrusted: self.untrusted,
            since: self.since,
        }
    }
}
