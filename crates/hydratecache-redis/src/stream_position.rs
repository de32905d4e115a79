//! Where a stream subscription stands, and what the server's answer says
//! about it: caught up, trimmed past, or a stream that is no longer the one
//! it was reading.

use std::fmt;
use std::str::FromStr;

use hydratecache_core::{Gap, GapReason};

/// A Redis stream entry ID, `<ms>-<seq>`; `0-0` is before every entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) const ZERO: StreamId = StreamId { ms: 0, seq: 0 };
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = String;

    fn from_str(s: &str) -> Result<StreamId, String> {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        match (ms.parse(), seq.parse()) {
            (Ok(ms), Ok(seq)) => Ok(StreamId { ms, seq }),
            _ => Err(format!("not a stream entry ID: {s:?}")),
        }
    }
}

/// What the server said of the stream, read atomically with the entries
/// after the position (see `READ_SCRIPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamState {
    /// Whether the key exists.
    pub(crate) exists: bool,
    /// The largest ID ever deleted from it (trimmed or `XDEL`ed); `0-0`
    /// before Redis 7, which does not report it.
    pub(crate) max_deleted: StreamId,
    /// The largest ID ever added.
    pub(crate) last_generated: StreamId,
    /// Whether the entry at the position is still there.
    pub(crate) has_position: bool,
}

/// The last entry delivered (or the start), and how to read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Position {
    pub(crate) last: StreamId,
}

impl Position {
    /// A subscription from the start of the stream.
    pub(crate) fn start() -> Position {
        Position {
            last: StreamId::ZERO,
        }
    }

    /// Compares the stream with what this position expects; on a gap, the
    /// position moves where reading goes on and the gap is returned.
    ///
    /// - the key is gone after entries were read: the stream was deleted
    ///   (a server restarted without persistence, a `DEL`): a reset; read
    ///   the stream made next from its start;
    /// - an entry after the position was deleted (`max_deleted` past it):
    ///   trimmed past the position, or `XDEL`ed;
    /// - the position's entry is gone, yet nothing at or after it was
    ///   deleted: another stream under the same key (recreated): a reset.
    ///   Before Redis 7 (`max_deleted` unknown) a trimmed position looks the
    ///   same, and is a gap too.
    pub(crate) fn check(&mut self, state: &StreamState) -> Option<Gap> {
        if self.last == StreamId::ZERO {
            return None;
        }
        if !state.exists {
            self.last = StreamId::ZERO;
            return Some(Gap::new(GapReason::Reset));
        }
        if state.max_deleted > self.last {
            return Some(Gap::new(GapReason::Reset));
        }
        if !state.has_position && state.max_deleted < self.last {
            self.last = StreamId::ZERO;
            return Some(Gap::new(GapReason::Reset));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> StreamId {
        s.parse().expect("id")
    }

    fn state(max_deleted: &str, last_generated: &str, has_position: bool) -> StreamState {
        StreamState {
            exists: true,
            max_deleted: id(max_deleted),
            last_generated: id(last_generated),
            has_position,
        }
    }

    #[test]
    fn ids_parse_and_order_by_number_not_text() {
        assert_eq!(id("5-3"), StreamId { ms: 5, seq: 3 });
        assert_eq!(id("7"), StreamId { ms: 7, seq: 0 });
        assert!(id("10-0") > id("9-99"));
        assert!(id("1-10") > id("1-9"));
        assert!("x-1".parse::<StreamId>().is_err());
        assert_eq!(id("12-4").to_string(), "12-4");
    }

    #[test]
    fn a_position_still_held_goes_on() {
        let mut p = Position { last: id("10-0") };
        assert_eq!(p.check(&state("0-0", "20-0", true)), None);
        // Trimmed up to the position itself: nothing after it was lost.
        assert_eq!(p.check(&state("10-0", "20-0", false)), None);
        assert_eq!(p.last, id("10-0"));
    }

    #[test]
    fn trimmed_past_the_position_is_a_gap_that_reads_on() {
        let mut p = Position { last: id("10-0") };
        let gap = p.check(&state("15-0", "20-0", false)).expect("gap");
        assert_eq!(gap.reason, GapReason::Reset);
        assert_eq!(p.last, id("10-0"), "what is left after it is read next");
    }

    #[test]
    fn a_stream_gone_or_recreated_is_a_gap_from_its_start() {
        let mut p = Position { last: id("10-0") };
        let gone = StreamState {
            exists: false,
            ..state("0-0", "0-0", false)
        };
        assert!(p.check(&gone).is_some());
        assert_eq!(p.last, StreamId::ZERO);
        assert_eq!(p.check(&gone), None, "nothing read since: nothing lost");

        let mut p = Position { last: id("10-0") };
        assert!(p.check(&state("0-0", "30-0", false)).is_some());
        assert_eq!(p.last, StreamId::ZERO);
    }
}
