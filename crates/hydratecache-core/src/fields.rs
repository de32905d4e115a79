//! The envelope's fields that are types of their own (kind, publisher id,
//! TTL) and the microsecond times the wire carries.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What a message does to the key it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The key now holds the payload.
    Update,
    /// The key was deleted or invalidated; the payload is empty.
    Delete,
    /// No change: the publisher was idle and tells its latest sequence so
    /// that subscribers notice a lost last message. Key and payload are empty.
    Heartbeat,
}

impl Kind {
    /// The byte that stands for this kind on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Kind::Update => 1,
            Kind::Delete => 2,
            Kind::Heartbeat => 3,
        }
    }

    /// The kind a wire byte stands for, if any.
    pub fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Update),
            2 => Some(Kind::Delete),
            3 => Some(Kind::Heartbeat),
            _ => None,
        }
    }
}

/// A random identifier of one publishing [`Channel`](crate::Channel) instance.
///
/// Sequence numbers are counted per publisher, so `(publisher, sequence)`
/// tells a subscriber whether it missed something.
///
/// An id made by [`random`](Self::random) carries the time it was made (its
/// publisher's start) in its low 48 bits, in milliseconds since the Unix
/// epoch; the upper 80 bits are random. A subscriber uses it to tell a
/// publisher that started after it subscribed (whose first message it should
/// have seen) from one that was already running. The wire format does not
/// change: the id is still 16 opaque bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PublisherId(pub u128);

impl PublisherId {
    /// A new random id.
    pub fn random() -> PublisherId {
        use std::collections::hash_map::RandomState;
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS once per process and then varies
        // per instance; mixing in the time and pid keeps ids distinct across
        // processes and restarts without a dependency on a RNG crate.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let mut words = [0u64; 2];
        for (i, word) in words.iter_mut().enumerate() {
            let mut h = RandomState::new().build_hasher();
            h.write_u128(nanos);
            h.write_u32(std::process::id());
            h.write_usize(i);
            *word = h.finish();
        }
        let random = (u128::from(words[0]) << 64) | u128::from(words[1]);
        let millis = u64::try_from(nanos / 1_000_000).unwrap_or(u64::MAX) & START_MASK;
        PublisherId((random & !u128::from(START_MASK)) | u128::from(millis))
    }

    /// The start time [`random`](Self::random) put in this id, in
    /// milliseconds since the Unix epoch. Any value for an id made otherwise
    /// (by an older release, or by hand): callers check it is plausible.
    pub fn start_millis(self) -> u64 {
        (self.0 as u64) & START_MASK
    }
}

/// The low 48 bits of a [`PublisherId`]: its start, in ms since the epoch.
const START_MASK: u64 = (1 << 48) - 1;

impl fmt::Debug for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublisherId({self})")
    }
}

impl fmt::Display for PublisherId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A time to live: the entry expires `duration` after `start`.
///
/// The publisher sets `start` when it publishes, so every subscriber computes
/// the same expiry instant whatever the delivery delay.
///
/// **Clock skew**: `start` is read on the publisher's clock and compared with
/// the subscriber's. What is left is never more than `duration`
/// ([`remaining_at`](Self::remaining_at) caps it), so a publisher whose clock
/// is ahead (or a forged `start` in the future) cannot make an entry live
/// longer than its TTL from the moment it is received. A publisher whose
/// clock is behind by `s` makes its entries expire `s` early, on arrival
/// when `s` is at least the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttl {
    /// When the time to live started.
    pub start: SystemTime,
    /// How long the entry lives from `start`.
    pub duration: Duration,
}

impl Ttl {
    /// A TTL of `duration` starting now.
    pub fn starting_now(duration: Duration) -> Ttl {
        Ttl {
            start: SystemTime::now(),
            duration,
        }
    }

    /// When the entry expires.
    pub fn expires_at(&self) -> SystemTime {
        self.start
            .checked_add(self.duration)
            .unwrap_or_else(far_future)
    }

    /// Time left from now; zero once expired.
    ///
    /// ```
    /// use hydratecache_core::Ttl;
    /// use std::time::Duration;
    /// let ttl = Ttl::starting_now(Duration::from_secs(30));
    /// assert!(ttl.remaining() <= Duration::from_secs(30));
    /// assert!(ttl.remaining() > Duration::from_secs(29));
    /// ```
    pub fn remaining(&self) -> Duration {
        self.remaining_at(SystemTime::now())
    }

    /// Time left at `now`; zero once expired, never more than `duration`
    /// (however far ahead of `now` `start` is).
    pub fn remaining_at(&self, now: SystemTime) -> Duration {
        self.expires_at()
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(self.duration)
    }

    /// Whether the entry has expired.
    pub fn is_expired(&self) -> bool {
        self.remaining().is_zero()
    }
}

/// Microseconds since the Unix epoch (0 before it, saturating far after),
/// as the wire carries times.
pub fn micros(t: SystemTime) -> u64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Err(_) => 0,
    }
}

/// The time `us` microseconds after the Unix epoch; past what every
/// platform represents, 10,000 years after it.
pub fn from_micros(us: u64) -> SystemTime {
    // u64::MAX µs (585,000 years) is past Windows' SystemTime: never panic
    // on a time from the wire.
    UNIX_EPOCH
        .checked_add(Duration::from_micros(us))
        .unwrap_or_else(far_future)
}

/// 10,000 years after the epoch: later than any real time, and within every
/// platform's `SystemTime`.
fn far_future() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(10_000 * 365 * 86_400)
}

/// A duration in whole microseconds, saturating.
pub fn duration_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
