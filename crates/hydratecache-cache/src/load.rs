//! Single-flight loads: one loader call per key however many callers wait.
//!
//! A load runs while someone waits for it: when its last waiter is cancelled
//! (a request timeout, a superseded repair) the load is dropped and
//! forgotten, releasing what it holds, and the next caller starts afresh. A
//! caller arriving after a change or a repair of the key does not join a load
//! that started before it. A loader that panics or overruns the load timeout
//! fails its waiters and leaves nothing behind.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use hydratecache_core::BoxError;

use crate::error::{Error, Result};
use crate::inner::{lock, Flight, Inner, LoadResult, Origin};
use crate::loader::Loaded;

/// A caller waiting for a [`Flight`]; the last one to leave before it ends
/// drops it.
struct Waiter<'a, T> {
    inner: &'a Inner<T>,
    key: &'a str,
    id: u64,
}

impl<T> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        let mut in_flight = lock(&self.inner.in_flight);
        let Some(flight) = in_flight.get_mut(self.key) else {
            return;
        };
        if flight.id != self.id {
            return;
        }
        flight.waiters = flight.waiters.saturating_sub(1);
        if flight.waiters == 0 {
            let abandoned = in_flight.remove(self.key);
            // The loader's future is dropped here, outside the lock.
            drop(in_flight);
            drop(abandoned);
        }
    }
}

/// Why a load failed other than by the loader's own error.
#[derive(Debug, thiserror::Error)]
enum LoadFailed {
    #[error("the loader panicked: {0}")]
    Panicked(String),
    #[error("the weigher panicked on the loaded value: {0}")]
    WeigherPanicked(String),
    #[error("the loader did not finish within {0:?} (LocalCacheBuilder::load_timeout)")]
    TimedOut(Duration),
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

fn panicked(payload: &(dyn std::any::Any + Send)) -> BoxError {
    Box::new(LoadFailed::Panicked(panic_text(payload)))
}

fn weigher_panicked(payload: &(dyn std::any::Any + Send)) -> BoxError {
    Box::new(LoadFailed::WeigherPanicked(panic_text(payload)))
}

type StartLoad<'a, T> =
    Box<dyn FnOnce(String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>> + 'a>;

impl<T: Send + Sync + 'static> Inner<T> {
    /// Single-flight load of `key`, storing the result if nothing newer came.
    pub(crate) async fn load(
        this: &Arc<Self>,
        key: &str,
        start: impl FnOnce(String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>>,
    ) -> Result<Option<Arc<T>>> {
        let (shared, _waiter) = Self::join_or_start(this, key, Box::new(start));
        shared.await.map_err(|source| Error::Load {
            key: key.to_owned(),
            source: Box::new(ArcError(source)),
        })
    }

    fn join_or_start<'a>(
        this: &'a Arc<Self>,
        key: &'a str,
        start: StartLoad<'_, T>,
    ) -> (Shared<BoxFuture<'static, LoadResult<T>>>, Waiter<'a, T>) {
        let mut in_flight = lock(&this.in_flight);
        if let Some((started, generation)) = in_flight.get(key).map(|f| (f.started, f.generation)) {
            if !this.changed_since(key, started, generation) {
                if let Some(flight) = in_flight.get_mut(key) {
                    flight.waiters += 1;
                    let waiter = Waiter {
                        inner: this,
                        key,
                        id: flight.id,
                    };
                    return (flight.shared.clone(), waiter);
                }
            }
            // Outdated: its waiters keep it; new callers get a fresh load.
        }
        let (started, generation) = this.load_mark();
        let id = this.next_flight.fetch_add(1, Ordering::Relaxed);
        let load = match std::panic::catch_unwind(AssertUnwindSafe(|| start(key.to_owned()))) {
            Ok(load) => load,
            Err(payload) => {
                let error = panicked(payload.as_ref());
                async move { Err(error) }.boxed()
            }
        };
        let inner = Arc::clone(this);
        let owned_key = key.to_owned();
        let timeout = this.load_timeout;
        let fut: BoxFuture<'static, LoadResult<T>> = async move {
            inner.counters.loads.incr();
            let result =
                match tokio::time::timeout(timeout, AssertUnwindSafe(load).catch_unwind()).await {
                    Ok(Ok(result)) => result,
                    Ok(Err(payload)) => Err(panicked(payload.as_ref())),
                    Err(_) => Err(Box::new(LoadFailed::TimedOut(timeout)) as BoxError),
                };
            let outcome = match result {
                Ok(Some(loaded)) => {
                    let value = Arc::new(loaded.value);
                    match inner.store_update(
                        &owned_key,
                        Arc::clone(&value),
                        loaded.version,
                        loaded.ttl,
                        None,
                        Origin::Load(started, generation),
                    ) {
                        Ok(_) => Ok(Some(value)),
                        // Like a loader panic: the waiters get an error.
                        Err(payload) => {
                            inner.counters.load_errors.incr();
                            Err(Arc::new(weigher_panicked(payload.as_ref())))
                        }
                    }
                }
                Ok(None) => Ok(None),
                Err(e) => {
                    inner.counters.load_errors.incr();
                    Err(Arc::new(e))
                }
            };
            let mut in_flight = lock(&inner.in_flight);
            let done = in_flight
                .get(&owned_key)
                .is_some_and(|f| f.id == id)
                .then(|| in_flight.remove(&owned_key));
            drop(in_flight);
            drop(done);
            outcome
        }
        .boxed();
        let shared = fut.shared();
        // An outdated flight replaced here stays with its own waiters.
        let outdated = in_flight.insert(
            key.to_owned(),
            Flight {
                id,
                started,
                generation,
                waiters: 1,
                shared: shared.clone(),
            },
        );
        drop(in_flight);
        drop(outdated);
        (
            shared,
            Waiter {
                inner: this,
                key,
                id,
            },
        )
    }
}

/// A shared loader error, as the source of each waiter's error.
#[derive(Debug)]
struct ArcError(Arc<BoxError>);

impl fmt::Display for ArcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for ArcError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
