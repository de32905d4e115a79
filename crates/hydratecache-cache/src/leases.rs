//! Publisher leases: which publishers promised to be heard from again soon,
//! and which of them broke that promise.
//!
//! A publisher running heartbeats ([`Channel::run_heartbeats`](hydratecache_core::Channel::run_heartbeats))
//! sends a lease with each: its next message or heartbeat follows within
//! it. One that falls silent past its lease has crashed, hung or lost its
//! connection, and whatever it wrote last (a commit whose publish never
//! went out) may be missing here: a possible loss. A zero lease is a
//! goodbye: an orderly departure, no loss. Publishers that never sent a
//! lease (no heartbeats, or an older release) are not tracked.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hydratecache_core::PublisherId;

/// Publishers tracked at most; past it a new one is not tracked (with a
/// warning once), as a table of forged ids must not grow without bound.
pub(crate) const MAX_LEASES: usize = 16_384;

#[derive(Debug, Clone, Copy)]
struct Lease {
    lease: Duration,
    deadline: Instant,
}

/// The lease of each publisher heard from with one.
#[derive(Debug, Default)]
pub(crate) struct Leases {
    publishers: HashMap<PublisherId, Lease>,
    full_warned: bool,
}

impl Leases {
    /// A heartbeat from `publisher` with `lease` (`None`: none promised).
    pub(crate) fn heartbeat(
        &mut self,
        publisher: PublisherId,
        lease: Option<Duration>,
        now: Instant,
    ) {
        match lease {
            None => self.heard(publisher, now),
            Some(lease) if lease.is_zero() => {
                self.publishers.remove(&publisher);
            }
            Some(lease) => {
                if self.publishers.len() >= MAX_LEASES && !self.publishers.contains_key(&publisher)
                {
                    if !self.full_warned {
                        self.full_warned = true;
                        tracing::warn!(
                            max = MAX_LEASES,
                            "too many publishers with a lease: new ones are not tracked"
                        );
                    }
                    return;
                }
                let deadline = now
                    .checked_add(lease)
                    .unwrap_or(now + Duration::from_secs(86_400));
                self.publishers.insert(publisher, Lease { lease, deadline });
            }
        }
    }

    /// A message from `publisher`: its lease starts again.
    pub(crate) fn heard(&mut self, publisher: PublisherId, now: Instant) {
        if let Some(l) = self.publishers.get_mut(&publisher) {
            l.deadline = now.checked_add(l.lease).unwrap_or(l.deadline);
        }
    }

    /// Removes and returns the publishers whose lease ran out before `now`.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<(PublisherId, Duration)> {
        let mut gone = Vec::new();
        self.publishers.retain(|publisher, l| {
            let live = l.deadline >= now;
            if !live {
                gone.push((*publisher, l.lease));
            }
            live
        });
        gone
    }

    /// Every lease starts again at `now`: after this process stalled, or a
    /// repair that covered whatever they may have lost.
    pub(crate) fn renew_all(&mut self, now: Instant) {
        for l in self.publishers.values_mut() {
            l.deadline = now.checked_add(l.lease).unwrap_or(l.deadline);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.publishers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_silent_publisher_expires_once_and_a_goodbye_never_does() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        let (a, b, c) = (PublisherId(1), PublisherId(2), PublisherId(3));
        leases.heartbeat(a, Some(300 * MS), t0);
        leases.heartbeat(b, Some(300 * MS), t0);
        leases.heartbeat(c, None, t0);
        assert_eq!(leases.len(), 2, "no lease, not tracked");
        leases.heard(a, t0 + 200 * MS);
        leases.heartbeat(b, Some(Duration::ZERO), t0 + 250 * MS);
        assert!(
            leases.expired(t0 + 400 * MS).is_empty(),
            "a heard again, b left"
        );
        assert_eq!(leases.expired(t0 + 501 * MS), vec![(a, 300 * MS)]);
        assert!(leases.expired(t0 + 10_000 * MS).is_empty(), "reported once");
    }

    #[test]
    fn renewing_after_a_stall_starts_every_lease_again() {
        let t0 = Instant::now();
        let mut leases = Leases::default();
        leases.heartbeat(PublisherId(1), Some(300 * MS), t0);
        leases.renew_all(t0 + 5_000 * MS);
        assert!(leases.expired(t0 + 5_200 * MS).is_empty());
        assert_eq!(leases.expired(t0 + 5_301 * MS).len(), 1);
    }
}
