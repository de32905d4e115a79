#![doc = include_str!("../README.md")]

mod cases;
mod config;
mod cut;
mod harness;
mod memory;
mod resume;
mod silence;

pub use cases::{
    all_byte_values, concurrent_publishers_all_arrive, delete_round_trip,
    dropping_subscription_unsubscribes, every_subscriber_gets_every_message,
    garbage_yields_error_and_stream_continues, max_payload_boundary,
    one_channels_concurrent_publishes_keep_sequence_order, per_publisher_order,
    publish_without_subscribers, published_before_drop_arrives, replay_from_earliest, round_trip,
    run_all, topics_are_isolated, unicode_keys, CASES,
};
pub use config::{extreme_durations, extreme_durations_never_panic};
pub use cut::{local_cache_never_serves_pre_gap_values, CutReport};
pub use harness::{
    expect_silence, next_event, next_message, unique_topic, Harness, Outcome, Report,
    RECEIVE_TIMEOUT,
};
pub use memory::MemoryHarness;
pub use resume::{
    gap_when_the_position_is_gone, local_cache_catches_up_after_a_cut, resumes_after_a_cut,
    CatchUpReport, ResumeReport, CATCH_UP_KEYS, RESUME_MESSAGES,
};
pub use silence::{interrupted_when_the_connection_goes_silent, SilenceReport};
