//! Per-publisher sequence tracking: which messages a cache may have missed.
//!
//! What it can see, on a transport that keeps one publisher's order
//! ([`Capabilities::ordered`](hydratecache_core::Capabilities::ordered)):
//! - a jump in a known publisher's sequence (a heartbeat reveals a lost last
//!   message);
//! - a sequence far below a known publisher's mark (more than [`MAX_BACKWARD`]):
//!   a forged or restarted sequence; the mark is set again from it;
//! - the lost first messages of a publisher that started after the
//!   subscription (its id carries its start, see
//!   [`PublisherId`](hydratecache_core::PublisherId)), more than [`CLOCK_SKEW_MARGIN`]
//!   after it on the publisher's clock;
//! - a publisher it may have forgotten (dropped for the count bound or after
//!   [`FORGET_AFTER`] of silence) coming back: a gap, as its messages in
//!   between may have been lost, even when none were.
//!
//! What it cannot see: losses from a publisher that was already running
//! when the cache subscribed (or started within the margin, or whose id does
//! not carry a plausible start), before the first word the cache hears from
//! it: that message or heartbeat is the baseline. So that first word is
//! reported as [`Loss::first_word`]: values stored before it may miss a
//! write of that publisher whose publish failed, and the cache invalidates
//! them (not a gap: nothing is known to be lost). Besides:
//! - anything on a transport that does not keep order (Kafka): there the
//!   transport's gap events are the only signal.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hydratecache_core::PublisherId;

/// Publishers not heard from for this long are forgotten (they heartbeat
/// while alive, so only departed or idle ones go).
pub(crate) const FORGET_AFTER: Duration = Duration::from_secs(600);
/// How often the table is swept for silent publishers.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Publishers tracked at most. Past it, those heard from only once go first
/// (one message per publisher is the pattern of transactional publishes and
/// of forged ids), then the least recently heard from.
pub(crate) const MAX_PUBLISHERS: usize = 16_384;
/// How far our clock and a publisher's may disagree about its start.
pub(crate) const CLOCK_SKEW_MARGIN: Duration = Duration::from_secs(1);
/// A message this far below its publisher's mark is not a late one: the
/// mark is set again from it (a gap).
pub(crate) const MAX_BACKWARD: u64 = 1 << 16;

/// A possible loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loss {
    /// Messages missed, when known.
    pub(crate) missed: Option<u64>,
    /// Why, for the log.
    pub(crate) why: &'static str,
    /// The first word from a publisher already running: what it sent before
    /// is unknown, not known to be lost.
    pub(crate) first_word: bool,
}

impl Loss {
    fn gap(missed: Option<u64>, why: &'static str) -> Option<Loss> {
        Some(Loss {
            missed,
            why,
            first_word: false,
        })
    }
}

struct Seen {
    last: u64,
    at: Instant,
    /// Whether more than one message came from it.
    again: bool,
}

/// The last sequence seen per publisher, bounded in count and age.
pub(crate) struct Sequences {
    publishers: HashMap<PublisherId, Seen>,
    /// When the subscription started, in ms since the epoch (our clock).
    subscribed_ms: u64,
    /// The latest start among forgotten publishers (`u64::MAX` once one
    /// without a plausible start was forgotten); `None` before any.
    forgotten_up_to: Option<u64>,
    swept_at: Instant,
    /// The latest `now_ms` observed.
    now_ms: u64,
    max_publishers: usize,
}

fn margin_ms() -> u64 {
    u64::try_from(CLOCK_SKEW_MARGIN.as_millis()).unwrap_or(u64::MAX)
}

impl Sequences {
    /// A table for a subscription that started at `subscribed_ms`.
    pub(crate) fn new(subscribed_ms: u64, now: Instant) -> Sequences {
        Sequences::with_capacity(subscribed_ms, now, MAX_PUBLISHERS)
    }

    fn with_capacity(subscribed_ms: u64, now: Instant, max_publishers: usize) -> Sequences {
        Sequences {
            publishers: HashMap::new(),
            subscribed_ms,
            forgotten_up_to: None,
            swept_at: now,
            now_ms: subscribed_ms,
            max_publishers: max_publishers.max(8),
        }
    }

    /// Publishers tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.publishers.len()
    }

    /// Records `sequence` from `publisher` (a heartbeat repeats its latest
    /// sequence), received at `now` / `now_ms` (ms since the epoch); returns
    /// the possible loss it reveals.
    pub(crate) fn observe(
        &mut self,
        publisher: PublisherId,
        sequence: u64,
        heartbeat: bool,
        now: Instant,
        now_ms: u64,
    ) -> Option<Loss> {
        self.now_ms = self.now_ms.max(now_ms);
        if now.saturating_duration_since(self.swept_at) >= SWEEP_EVERY {
            self.sweep(now);
        }
        match self.publishers.get_mut(&publisher) {
            Some(seen) => {
                seen.at = now;
                seen.again = true;
                let expected = if heartbeat {
                    seen.last
                } else {
                    seen.last.saturating_add(1)
                };
                if sequence > expected {
                    seen.last = sequence;
                    Loss::gap(Some(sequence - expected), "sequence jump")
                } else if seen.last.saturating_sub(sequence) > MAX_BACKWARD {
                    // Not a late message: one of the two marks is forged,
                    // or the publisher restarted under the same id.
                    seen.last = sequence;
                    Loss::gap(None, "sequence far below the last one seen")
                } else {
                    seen.last = seen.last.max(sequence);
                    None
                }
            }
            None => {
                let loss = self.first_seen(publisher, sequence, heartbeat, now_ms);
                self.publishers.insert(
                    publisher,
                    Seen {
                        last: sequence,
                        at: now,
                        again: false,
                    },
                );
                if self.publishers.len() > self.max_publishers {
                    self.evict();
                }
                loss
            }
        }
    }

    /// The baseline rule for a publisher not in the table.
    fn first_seen(
        &self,
        publisher: PublisherId,
        sequence: u64,
        heartbeat: bool,
        now_ms: u64,
    ) -> Option<Loss> {
        // Messages it sent before this one.
        let before = if heartbeat {
            sequence
        } else {
            sequence.saturating_sub(1)
        };
        if before == 0 {
            return None;
        }
        let margin = margin_ms();
        let start = Some(publisher.start_millis()).filter(|&s| s <= now_ms.saturating_add(margin));
        if start.is_some_and(|s| s > self.subscribed_ms.saturating_add(margin)) {
            return Loss::gap(
                Some(before),
                "first messages of a publisher that started after the subscription",
            );
        }
        if self
            .forgotten_up_to
            .is_some_and(|up_to| start.unwrap_or(u64::MAX) <= up_to)
        {
            return Loss::gap(None, "a publisher that may have been forgotten");
        }
        Some(Loss {
            missed: None,
            why: "first word from a publisher already running",
            first_word: true,
        })
    }

    /// Drops `publisher`, remembering how recent a start was dropped.
    fn forget(&mut self, publisher: PublisherId) {
        self.publishers.remove(&publisher);
        let start = Some(publisher.start_millis())
            .filter(|&s| s <= self.now_ms.saturating_add(margin_ms()))
            // Without a plausible start, any publisher may be this one.
            .unwrap_or(u64::MAX);
        self.forgotten_up_to = Some(self.forgotten_up_to.map_or(start, |up_to| up_to.max(start)));
    }

    /// Forgets publishers silent for [`FORGET_AFTER`].
    fn sweep(&mut self, now: Instant) {
        self.swept_at = now;
        let silent: Vec<PublisherId> = self
            .publishers
            .iter()
            .filter(|(_, seen)| now.saturating_duration_since(seen.at) >= FORGET_AFTER)
            .map(|(&id, _)| id)
            .collect();
        for id in silent {
            self.forget(id);
        }
    }

    /// Brings the table back to 7/8 of its bound: publishers heard from once
    /// first, the least recently heard from first. Amortised O(1) a message.
    fn evict(&mut self) {
        let keep = self.max_publishers / 8 * 7;
        let excess = self.publishers.len().saturating_sub(keep);
        if excess == 0 {
            return;
        }
        let mut order: Vec<(bool, Instant, PublisherId)> = self
            .publishers
            .iter()
            .map(|(&id, seen)| (seen.again, seen.at, id))
            .collect();
        order.select_nth_unstable(excess - 1);
        for &(_, _, id) in &order[..excess] {
            self.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id that started at `start_ms`, as `PublisherId::random` makes them.
    fn id(n: u128, start_ms: u64) -> PublisherId {
        PublisherId((n << 48) | u128::from(start_ms))
    }

    const SUBSCRIBED: u64 = 1_000_000;

    fn table() -> (Sequences, Instant) {
        let now = Instant::now();
        (Sequences::new(SUBSCRIBED, now), now)
    }

    fn jump(missed: u64) -> Option<Loss> {
        Loss::gap(Some(missed), "sequence jump")
    }

    fn first_word() -> Option<Loss> {
        Some(Loss {
            missed: None,
            why: "first word from a publisher already running",
            first_word: true,
        })
    }

    #[test]
    fn sequences_report_jumps_not_old_publishers_or_reordering() {
        let (mut s, now) = table();
        let t = SUBSCRIBED + 10;
        let (a, b) = (id(1, SUBSCRIBED - 5_000), id(2, SUBSCRIBED - 5_000));
        assert_eq!(
            s.observe(a, 7, false, now, t),
            first_word(),
            "an old publisher's first word: what it sent before is unknown"
        );
        assert_eq!(s.observe(a, 8, false, now, t), None);
        assert_eq!(s.observe(a, 11, false, now, t), jump(2), "9 and 10 missed");
        assert_eq!(s.observe(a, 10, false, now, t), None, "late message");
        assert_eq!(s.observe(a, 12, false, now, t), None, "mark stayed at 11");
        assert_eq!(
            s.observe(a, 12, true, now, t),
            None,
            "heartbeat at the last sequence"
        );
        assert_eq!(
            s.observe(a, 13, true, now, t),
            jump(1),
            "heartbeat ahead: the last message was lost"
        );
        assert_eq!(
            s.observe(b, 1, true, now, t),
            first_word(),
            "a heartbeat after one message"
        );
        let c = id(3, SUBSCRIBED - 5_000);
        assert_eq!(s.observe(c, 0, true, now, t), None, "nothing sent before");
        assert_eq!(s.observe(c, 1, false, now, t), None);
    }

    #[test]
    fn hostile_sequences_neither_panic_nor_wrap() {
        let (mut s, now) = table();
        let a = id(1, 1);
        assert_eq!(s.observe(a, u64::MAX, false, now, SUBSCRIBED), first_word());
        assert_eq!(s.observe(a, u64::MAX, false, now, SUBSCRIBED), None);
        assert_eq!(s.observe(a, u64::MAX, true, now, SUBSCRIBED), None);
        assert!(s.observe(a, 1, false, now, SUBSCRIBED).is_some());
        assert_eq!(s.observe(a, 2, false, now, SUBSCRIBED), None);
        assert_eq!(s.observe(a, 0, true, now, SUBSCRIBED), None);
    }

    #[test]
    fn a_forged_huge_sequence_does_not_hide_later_losses() {
        let (mut s, now) = table();
        let t = SUBSCRIBED + 10;
        let a = id(1, 1);
        assert_eq!(s.observe(a, 1, false, now, t), None);
        assert!(
            s.observe(a, 1_000_000_000, false, now, t).is_some(),
            "the forged jump is a gap"
        );
        assert!(
            s.observe(a, 2, false, now, t).is_some(),
            "the genuine one resets the mark"
        );
        assert_eq!(
            s.observe(a, 4, false, now, t),
            jump(1),
            "3 lost: seen again"
        );
    }

    #[test]
    fn the_table_stays_bounded_under_one_message_publishers() {
        let now = Instant::now();
        let mut s = Sequences::with_capacity(SUBSCRIBED, now, 1_000);
        let long_lived = id(u128::MAX >> 48, SUBSCRIBED - 1);
        assert_eq!(s.observe(long_lived, 1, false, now, SUBSCRIBED), None);
        for n in 0..100_000u128 {
            let t = now + Duration::from_micros(n as u64 * 100);
            let ms = SUBSCRIBED + (n as u64) / 10;
            // One transactional publish each: sequence 1, never a gap.
            assert_eq!(s.observe(id(n, ms), 1, false, t, ms), None);
            if n % 5_000 == 0 {
                // It publishes, then heartbeats its latest sequence.
                let seq = 2 + (n / 5_000) as u64;
                assert_eq!(s.observe(long_lived, seq, false, t, ms), None);
                assert_eq!(s.observe(long_lived, seq, true, t, ms), None);
            }
            assert!(s.len() <= 1_000, "{} publishers tracked", s.len());
        }
        assert!(
            s.publishers.contains_key(&long_lived),
            "the publisher heard from again was evicted before one-message ones"
        );
    }

    #[test]
    fn a_new_publishers_lost_first_messages_are_a_gap() {
        let (mut s, now) = table();
        let late = SUBSCRIBED + 5_000;
        let new = id(1, late);
        assert_eq!(
            s.observe(new, 3, false, now, late + 10),
            Loss::gap(
                Some(2),
                "first messages of a publisher that started after the subscription"
            )
        );
        let new_hb = id(2, late);
        assert!(
            s.observe(new_hb, 1, true, now, late + 10).is_some(),
            "heartbeat of 1 lost"
        );
        let fine = id(3, late);
        assert_eq!(s.observe(fine, 1, false, now, late + 10), None);
        let within_margin = id(4, SUBSCRIBED + 500);
        assert_eq!(
            s.observe(within_margin, 3, false, now, late),
            first_word(),
            "clock-skew margin"
        );
        let future = id(5, late + 60_000);
        assert_eq!(
            s.observe(future, 3, false, now, late),
            first_word(),
            "an implausible start (an id made otherwise) is a baseline"
        );
    }

    #[test]
    fn a_publisher_forgotten_after_idling_is_a_gap_when_it_comes_back() {
        let (mut s, now) = table();
        let t = SUBSCRIBED + 10;
        let (a, b) = (id(1, SUBSCRIBED - 5_000), id(2, SUBSCRIBED - 5_000));
        assert_eq!(s.observe(a, 1, false, now, t), None);
        let later = now + FORGET_AFTER + SWEEP_EVERY;
        assert_eq!(s.observe(b, 1, false, later, t), None, "sweeps a");
        assert!(
            s.observe(a, 3, false, later, t).is_some(),
            "a forgotten publisher's return is a gap"
        );
        // One that started before a forgotten one and was never seen may
        // have been forgotten too, for all the table knows.
        let c = id(3, SUBSCRIBED - 6_000);
        assert!(s.observe(c, 9, false, later, t).is_some());
    }

    #[test]
    fn a_publisher_evicted_for_the_count_bound_is_a_gap_when_it_comes_back() {
        let now = Instant::now();
        let mut s = Sequences::with_capacity(SUBSCRIBED, now, 16);
        let t = SUBSCRIBED + 10;
        let a = id(1, SUBSCRIBED - 1);
        assert_eq!(s.observe(a, 1, false, now, t), None);
        for n in 2..100 {
            s.observe(
                id(n, SUBSCRIBED - 1),
                1,
                false,
                now + Duration::from_millis(n as u64),
                t,
            );
        }
        assert!(!s.publishers.contains_key(&a));
        assert!(s
            .observe(a, 3, false, now + Duration::from_secs(1), t)
            .is_some());
    }
}
