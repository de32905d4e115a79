//! The error type of [`LocalCache`](crate::LocalCache).

use hydratecache_core::BoxError;

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in a [`LocalCache`](crate::LocalCache).
///
/// A message says what failed; its cause is the error's
/// [`source()`](std::error::Error::source), not repeated in the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The channel underneath failed: subscribing, or publishing a write
    /// (which was applied locally all the same).
    #[error("the cache's channel failed")]
    Channel(#[from] hydratecache_core::Error),
    /// Loading a key from the source of truth failed: the loader's error,
    /// its panic or its timeout, or a panic of the weigher on its value.
    #[error("loading {key:?}")]
    Load {
        /// The key being loaded.
        key: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// What was asked needs a loader, and the cache was built without one.
    #[error("{what} needs a loader (set LocalCacheBuilder::loader)")]
    NoLoader {
        /// What was asked.
        what: &'static str,
    },
    /// The cache's tables cannot be set up for the capacity asked.
    #[error("cannot size the cache")]
    Capacity {
        /// The cache library's error.
        #[source]
        source: BoxError,
    },
    /// The hydration task panicked (reported by
    /// [`close`](crate::LocalCache::close)).
    #[error("the hydration task panicked")]
    HydrationPanicked {
        /// The task's join error.
        #[source]
        source: tokio::task::JoinError,
    },
}
