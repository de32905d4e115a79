//! The [`Harness`] for the in-process [`MemoryTransport`].

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_core::{BoxError, MemoryTransport, Transport};

use crate::harness::Harness;

/// The [`Harness`] for [`MemoryTransport`]: every client shares one bus.
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    bus: MemoryTransport,
}

impl MemoryHarness {
    /// A harness over `bus`.
    pub fn new(bus: MemoryTransport) -> MemoryHarness {
        MemoryHarness { bus }
    }
}

impl Harness for MemoryHarness {
    fn connect(&self) -> BoxFuture<'_, Result<Arc<dyn Transport>, BoxError>> {
        async move { Ok(self.bus.clone().into_arc()) }.boxed()
    }

    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        bytes: &'a [u8],
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        async move {
            self.bus.publish_raw(topic, bytes.to_vec())?;
            Ok(())
        }
        .boxed()
    }

    fn server_subscribers<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<usize>, BoxError>> {
        async move { Ok(Some(self.bus.subscriber_count(topic))) }.boxed()
    }
}
