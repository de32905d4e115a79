//! Helpers the LocalCache test files share.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

pub mod bus;

use hydratecache_cache::LocalCache;

/// How long a test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// Polls `check` until it holds or `WAIT` passes.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The value `cache` serves for `key`, cloned.
pub fn value(cache: &LocalCache<String>, key: &str) -> Option<String> {
    cache.get(key).map(|v| v.as_ref().clone())
}
