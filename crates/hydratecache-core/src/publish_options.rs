//! Options of one publish.

use std::time::Duration;

/// Options of one publish: TTL and version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// Time to live, starting at the publish.
    pub ttl: Option<Duration>,
    /// Version of the value at the source of truth.
    pub version: Option<u64>,
}

impl PublishOptions {
    /// No TTL, no version.
    pub fn new() -> PublishOptions {
        PublishOptions::default()
    }

    /// With a time to live starting now.
    pub fn ttl(mut self, ttl: Duration) -> PublishOptions {
        self.ttl = Some(ttl);
        self
    }

    /// With a version.
    pub fn version(mut self, version: u64) -> PublishOptions {
        self.version = Some(version);
        self
    }
}
