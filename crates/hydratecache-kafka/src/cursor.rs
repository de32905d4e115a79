//! One partition's reading position and what a fetch response does to it,
//! without I/O: which records to deliver, which missing offsets to wait for,
//! and when missing offsets or a changed log are a gap.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use hydratecache_core::{Gap, GapReason};
use rskafka::record::RecordAndOffset;

/// Missing offsets within this distance of the high watermark are fetched
/// again before being skipped: tansu 0.6, under concurrent producers on
/// several connections, advances the high watermark before every record
/// below it is readable (seen: a fetch at 699 returning 700..702 with the
/// watermark at 703, and 699 readable a moment later). Further back, missing
/// offsets are taken as compacted away: compaction removes a record only
/// when a newer one for its key follows, so nothing a cache needs is lost.
pub(crate) const HOLE_WINDOW: i64 = 4096;
/// How often missing offsets (or the record before the position, when
/// checking the log) are fetched again before they count as lost.
pub(crate) const HOLE_RETRIES: u32 = 10;

/// Identity of a record, to tell whether the log under a position is still
/// the one that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    offset: i64,
    timestamp: i64,
    hash: u64,
}

impl Fingerprint {
    pub(crate) fn of(r: &RecordAndOffset) -> Fingerprint {
        let mut h = DefaultHasher::new();
        r.record.key.hash(&mut h);
        r.record.value.hash(&mut h);
        r.record.headers.hash(&mut h);
        Fingerprint {
            offset: r.offset,
            timestamp: r.record.timestamp.timestamp_millis(),
            hash: h.finish(),
        }
    }
}

/// One partition's reading state.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub(crate) partition: i32,
    /// Next offset to read.
    pub(crate) position: i64,
    /// The record at `position - 1`, when known.
    pub(crate) last: Option<Fingerprint>,
    /// Check the log's identity before reading on (after an error).
    pub(crate) verify: bool,
    /// Consecutive answers saying the log ends before `position`.
    pub(crate) low_watermarks: u32,
    /// Whether the current outage was already logged at `warn`.
    pub(crate) warned: bool,
    /// The subscriptions were told this partition lost the broker.
    pub(crate) interrupted: bool,
    /// Once interrupted and fetching again: the high watermark of the first
    /// answer; the interruption ends when the position reaches it.
    pub(crate) resume_at: Option<i64>,
    /// Fetches that found missing offsets right at `position`, or no record
    /// at `position - 1` while checking the log.
    pub(crate) hole_retries: u32,
    /// For a replay: the log's end at subscribe time, and how many
    /// partitions of the subscription have not reached theirs yet.
    pub(crate) replay: Option<(i64, Arc<AtomicUsize>)>,
}

/// One step of reading a fetch response, in stream order.
#[derive(Debug)]
pub(crate) enum Step {
    /// Deliver this record.
    Record(RecordAndOffset),
    /// Offsets were skipped that may have held records: report this gap.
    Gap(Gap),
}

/// What [`Cursor::take`] made of a fetch response.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    pub(crate) steps: Vec<Step>,
    /// Stopped at missing offsets that may still become readable: fetch
    /// again after a pause.
    pub(crate) hole: bool,
    /// The response held records but none past the position (or only
    /// control batches): pause rather than spin.
    pub(crate) idle: bool,
}

/// What the check of the record before the position found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The same record as read: the log is the one we read; read on.
    Same,
    /// Not there (yet): check again after a pause.
    Retry,
    /// A different record, or none after every retry: the log was replaced.
    Replaced,
}

impl Cursor {
    /// A cursor at `position` whose previous record is `last`.
    pub(crate) fn new(partition: i32, position: i64, last: Option<Fingerprint>) -> Cursor {
        Cursor {
            partition,
            position,
            last,
            verify: false,
            low_watermarks: 0,
            warned: false,
            interrupted: false,
            resume_at: None,
            hole_retries: 0,
            replay: None,
        }
    }

    /// Reads the records of a fetch response at the position, whose high
    /// watermark `hw` is not below it, and moves the position past them.
    ///
    /// Offsets missing at the position near the end of the log are fetched
    /// again ([`HOLE_RETRIES`] times); then they are skipped with a
    /// [`GapReason::Reset`] gap whose `missed` is the number of offsets
    /// skipped (at most that many records: some may have been transaction
    /// markers).
    pub(crate) fn take(&mut self, topic: &str, records: Vec<RecordAndOffset>, hw: i64) -> Taken {
        let mut taken = Taken::default();
        let fetched_any = !records.is_empty();
        let mut advanced = false;
        for r in records {
            if r.offset < self.position {
                continue;
            }
            if r.offset > self.position {
                let skipped = u64::try_from(r.offset.saturating_sub(self.position)).unwrap_or(0);
                if hw.saturating_sub(r.offset) > HOLE_WINDOW {
                    tracing::debug!(
                        topic,
                        partition = self.partition,
                        from = self.position,
                        to = r.offset,
                        "offsets skipped far behind the end (compaction)"
                    );
                } else if self.hole_retries < HOLE_RETRIES {
                    taken.hole = true;
                    break;
                } else {
                    tracing::warn!(
                        topic,
                        partition = self.partition,
                        from = self.position,
                        to = r.offset,
                        skipped,
                        "offsets still missing after retries: gap"
                    );
                    taken.steps.push(Step::Gap(Gap {
                        reason: GapReason::Reset,
                        missed: Some(skipped),
                    }));
                }
            }
            self.position = r.offset.saturating_add(1);
            self.last = Some(Fingerprint::of(&r));
            self.hole_retries = 0;
            advanced = true;
            taken.steps.push(Step::Record(r));
        }
        if taken.hole {
            self.hole_retries += 1;
        }
        taken.idle = fetched_any && !advanced && !taken.hole;
        taken
    }

    /// Compares the record before the position in `records` (a fetch at
    /// `position - 1` whose high watermark is not below the position) with
    /// the one that was read there.
    pub(crate) fn check(&mut self, records: &[RecordAndOffset]) -> Check {
        let previous = records
            .iter()
            .find(|r| r.offset == self.position.saturating_sub(1))
            .map(Fingerprint::of);
        match (self.last, previous) {
            (Some(last), Some(found)) if found != last => Check::Replaced,
            // The log reaches past the position, so the record should be
            // there: a broker may show it a moment late; if it never does,
            // what is under the position cannot be the log we read.
            (Some(_), None) if self.hole_retries < HOLE_RETRIES => {
                self.hole_retries += 1;
                Check::Retry
            }
            (Some(_), None) => Check::Replaced,
            // Same record, or nothing known to compare with.
            _ => {
                self.verify = false;
                self.hole_retries = 0;
                Check::Same
            }
        }
    }

    /// Moves to `start`, the beginning of a new log.
    pub(crate) fn restart_at(&mut self, start: i64) {
        self.position = start;
        self.last = None;
        self.verify = false;
        self.low_watermarks = 0;
        self.hole_retries = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rskafka::record::Record;

    fn rec(offset: i64, value: &str) -> RecordAndOffset {
        RecordAndOffset {
            record: Record {
                key: Some(b"k".to_vec()),
                value: Some(value.as_bytes().to_vec()),
                headers: Default::default(),
                timestamp: Default::default(),
            },
            offset,
        }
    }

    fn offsets(taken: &Taken) -> Vec<String> {
        taken
            .steps
            .iter()
            .map(|s| match s {
                Step::Record(r) => r.offset.to_string(),
                Step::Gap(g) => format!("gap {:?} {:?}", g.reason, g.missed),
            })
            .collect()
    }

    /// Item 14 of issue 18: offsets missing near the end of the log are
    /// fetched again; once the retries are spent they are skipped with a
    /// counted gap before the next record, never silently.
    #[test]
    fn missing_offsets_become_a_counted_gap_after_the_retries() {
        let mut cur = Cursor::new(0, 5, None);
        let taken = cur.take("t", vec![rec(5, "a"), rec(6, "b"), rec(9, "c")], 10);
        assert_eq!(offsets(&taken), ["5", "6"]);
        assert!(taken.hole, "stops at the hole to fetch it again");
        assert_eq!(cur.position, 7);
        for _ in 1..HOLE_RETRIES {
            let taken = cur.take("t", vec![rec(9, "c")], 10);
            assert!(taken.hole && taken.steps.is_empty());
        }
        let taken = cur.take("t", vec![rec(9, "c")], 10);
        assert_eq!(offsets(&taken), ["gap Reset Some(2)", "9"]);
        assert!(!taken.hole);
        assert_eq!((cur.position, cur.hole_retries), (10, 0));
    }

    /// A hole that fills in while it is retried is read with no gap.
    #[test]
    fn a_hole_that_fills_in_is_no_gap() {
        let mut cur = Cursor::new(0, 7, None);
        assert!(cur.take("t", vec![rec(9, "c")], 10).hole);
        let taken = cur.take("t", vec![rec(7, "a"), rec(8, "b"), rec(9, "c")], 10);
        assert_eq!(offsets(&taken), ["7", "8", "9"]);
        assert_eq!((cur.position, cur.hole_retries), (10, 0));
    }

    /// Far behind the end, missing offsets are compaction: skipped at once.
    #[test]
    fn missing_offsets_far_behind_the_end_are_compaction() {
        let mut cur = Cursor::new(0, 0, None);
        let taken = cur.take("t", vec![rec(10, "a")], 10 + HOLE_WINDOW + 1);
        assert_eq!(offsets(&taken), ["10"]);
        assert!(!taken.hole);
    }

    /// Records before the position only: nothing delivered, no spin.
    #[test]
    fn records_before_the_position_are_idle() {
        let mut cur = Cursor::new(0, 5, None);
        let taken = cur.take("t", vec![rec(3, "a"), rec(4, "b")], 5);
        assert!(taken.steps.is_empty() && taken.idle && !taken.hole);
    }

    /// Hostile offsets neither panic nor wrap.
    #[test]
    fn extreme_offsets_do_not_overflow() {
        let mut cur = Cursor::new(0, 0, None);
        for _ in 0..HOLE_RETRIES {
            assert!(cur.take("t", vec![rec(i64::MAX, "a")], i64::MIN).hole);
        }
        let taken = cur.take("t", vec![rec(i64::MAX, "a")], i64::MIN);
        assert_eq!(
            offsets(&taken),
            [
                format!("gap Reset Some({})", i64::MAX),
                i64::MAX.to_string()
            ]
        );
        assert_eq!(cur.position, i64::MAX);
        let mut cur = Cursor::new(0, i64::MIN, None);
        let taken = cur.take("t", vec![rec(i64::MAX, "a")], i64::MAX);
        assert!(taken.hole);
    }

    /// The record before the position decides whether the log is the one
    /// that was read; one that stays missing means it is not.
    #[test]
    fn checking_the_record_before_the_position() {
        let read = rec(4, "old");
        let mut cur = Cursor::new(0, 5, Some(Fingerprint::of(&read)));
        cur.verify = true;
        assert_eq!(cur.check(&[rec(4, "new"), rec(5, "x")]), Check::Replaced);
        assert_eq!(cur.check(std::slice::from_ref(&read)), Check::Same);
        assert!(!cur.verify);

        cur.verify = true;
        for _ in 0..HOLE_RETRIES {
            assert_eq!(cur.check(&[rec(5, "x")]), Check::Retry);
        }
        assert_eq!(cur.check(&[rec(5, "x")]), Check::Replaced);
    }
}
