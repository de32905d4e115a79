//! The source of truth: what a loader returns, and the warm-up stream.

use std::future::Future;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use hydratecache_core::BoxError;

/// A value from the source of truth, with its version when it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded<T> {
    /// The value.
    pub value: T,
    /// Its version at the source of truth.
    pub version: Option<u64>,
    /// How long it may be cached, if limited.
    pub ttl: Option<Duration>,
}

impl<T> Loaded<T> {
    /// A value without version or TTL.
    pub fn new(value: T) -> Loaded<T> {
        Loaded {
            value,
            version: None,
            ttl: None,
        }
    }

    /// With a version.
    pub fn version(mut self, version: u64) -> Loaded<T> {
        self.version = Some(version);
        self
    }

    /// With a TTL.
    pub fn ttl(mut self, ttl: Duration) -> Loaded<T> {
        self.ttl = Some(ttl);
        self
    }
}

/// Reads a key from the source of truth: `Ok(None)` when it does not exist.
pub trait Loader<T>: Send + Sync + 'static {
    /// Loads `key`.
    fn load(&self, key: String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>>;
}

impl<T, F, Fut> Loader<T> for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<Loaded<T>>, BoxError>> + Send + 'static,
{
    fn load(&self, key: String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>> {
        self(key).boxed()
    }
}

/// A bulk warm-up stream of key/value pairs from the store.
pub(crate) type WarmStream<T> = futures::stream::BoxStream<'static, (String, Loaded<T>)>;
