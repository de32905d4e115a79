//! Single-flight loads: one loader call per key however many callers wait.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};

use super::{lock, Inner, Loaded, Origin};
use crate::error::{BoxError, Error, Result};

type LoadResult<T> = Result<Option<Arc<T>>, Arc<BoxError>>;
pub(super) type InFlight<T> = Shared<BoxFuture<'static, LoadResult<T>>>;
pub(super) type Flights<T> = HashMap<String, InFlight<T>>;

impl<T: Send + Sync + 'static> Inner<T> {
    /// Single-flight load of `key`, storing the result if nothing newer came.
    pub(super) async fn load(
        this: &Arc<Self>,
        key: &str,
        start: impl FnOnce(String) -> BoxFuture<'static, Result<Option<Loaded<T>>, BoxError>>,
    ) -> Result<Option<Arc<T>>> {
        let shared = {
            let mut in_flight = lock(&this.in_flight);
            match in_flight.get(key) {
                Some(f) => f.clone(),
                None => {
                    let started = this.load_mark();
                    let load = start(key.to_owned());
                    let inner = Arc::clone(this);
                    let owned_key = key.to_owned();
                    let fut: BoxFuture<'static, LoadResult<T>> = async move {
                        inner.counters.loads.incr();
                        let result = load.await;
                        lock(&inner.in_flight).remove(&owned_key);
                        match result {
                            Ok(Some(loaded)) => {
                                let value = Arc::new(loaded.value);
                                inner.store_update(
                                    &owned_key,
                                    Arc::clone(&value),
                                    loaded.version,
                                    loaded.ttl,
                                    None,
                                    Origin::Load(started.0, started.1),
                                );
                                Ok(Some(value))
                            }
                            Ok(None) => Ok(None),
                            Err(e) => {
                                inner.counters.load_errors.incr();
                                Err(Arc::new(e))
                            }
                        }
                    }
                    .boxed();
                    let shared = fut.shared();
                    in_flight.insert(key.to_owned(), shared.clone());
                    shared
                }
            }
        };
        shared.await.map_err(|source| {
            Error::backend("local-cache", format!("loading {key:?}"), ArcError(source))
        })
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
