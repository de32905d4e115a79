//! The toolkit for adapter implementers: what every backend adapter needs
//! and would otherwise write again.
//!
//! Users of hydratecache never need this module. An adapter keeps only what
//! is truly its backend's (connecting, the wire calls, its own reconnect
//! signals) and takes the rest from here:
//! - [`Fanout`] and [`SubscriptionQueue`]: one server-side subscription per
//!   topic fanned out to bounded local queues that turn overflow, reconnects
//!   and lost confirmations into [`Gap`](crate::Gap)s, never silence;
//! - [`read_ahead_subscription`]: a subscription fed by a reader task of its
//!   own, for backends that keep what was published (the task waits for its
//!   consumer instead of dropping);
//! - [`Backoff`] for reconnect loops, [`ClosedFlag`] for `close()`;
//! - frame decoding and size checks ([`decode_frame`], [`check_envelope`]),
//!   the wire constants, [`envelope_for`] from [`PublishOptions`](crate::PublishOptions);
//! - small helpers: [`lock`], [`micros`], [`from_micros`],
//!   [`refuse_replay`].

mod backoff;
mod fanout;
mod frame;
mod queue;
mod read_ahead;
mod sync;

pub use crate::envelope::{
    FIXED_HEADER_LEN, FORMAT_VERSION, MAGIC, MAX_KEY_LEN, OPTIONAL_FIELDS_LEN,
};
pub use crate::fields::{duration_micros, from_micros, micros};
pub use backoff::Backoff;
pub use fanout::{Fanout, FanoutStream, OnLast, Registered};
pub use frame::{
    check_envelope, check_size, decode_frame, envelope_for, malformed, refuse_replay,
    truncate_to_micros,
};
pub use queue::SubscriptionQueue;
pub use read_ahead::{read_ahead_channel, read_ahead_subscription, READ_AHEAD};
pub use sync::{lock, ClosedFlag, LONGEST_DURATION};
