//! Every case of the suite, and [`run_all`] to run them in order.

mod delivery;
mod format;

use crate::harness::{Harness, Outcome, Report};

pub use delivery::{
    concurrent_publishers_all_arrive, dropping_subscription_unsubscribes,
    every_subscriber_gets_every_message, one_channels_concurrent_publishes_keep_sequence_order,
    per_publisher_order, publish_without_subscribers, published_before_drop_arrives,
    topics_are_isolated,
};
pub use format::{
    all_byte_values, delete_round_trip, garbage_yields_error_and_stream_continues,
    max_payload_boundary, replay_from_earliest, round_trip, unicode_keys,
};

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        /// Names of all cases, in the order [`run_all`] runs them.
        pub const CASES: &[&str] = &[$(stringify!($name)),*];

        /// Runs every case; panics on the first failure.
        pub async fn run_all(h: &dyn Harness) -> Report {
            let mut report = Report::default();
            $(
                tracing::info!(case = stringify!($name), "conformance case");
                match $name(h).await {
                    Outcome::Passed => report.ran.push(stringify!($name)),
                    Outcome::Skipped(why) => report.skipped.push((stringify!($name), why)),
                }
            )*
            report
        }
    };
}

cases!(
    round_trip,
    delete_round_trip,
    all_byte_values,
    unicode_keys,
    every_subscriber_gets_every_message,
    per_publisher_order,
    one_channels_concurrent_publishes_keep_sequence_order,
    topics_are_isolated,
    dropping_subscription_unsubscribes,
    publish_without_subscribers,
    max_payload_boundary,
    garbage_yields_error_and_stream_continues,
    concurrent_publishers_all_arrive,
    published_before_drop_arrives,
    replay_from_earliest,
);
