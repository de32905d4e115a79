//! A memory bus whose subscriptions can be fed items by the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use hydratecache_cache::LocalCache;
use hydratecache_core::{
    Capabilities, Channel, Envelope, Event, Kind, MemoryTransport, Result, SubscribeOptions,
    Subscription, Transport,
};
use tokio::sync::mpsc;

/// A memory bus that can lose the next messages, inject items into every
/// subscription, and whose subscriptions panic on a message keyed `boom`
/// (a transport adapter with a bug).
pub struct Bus {
    pub bus: MemoryTransport,
    pub drop_next: AtomicUsize,
    pub subscribes: AtomicUsize,
    inject: Mutex<Vec<mpsc::UnboundedSender<Result<Event>>>>,
}

impl Bus {
    pub fn new() -> Arc<Bus> {
        Arc::new(Bus {
            bus: MemoryTransport::new(),
            drop_next: AtomicUsize::new(0),
            subscribes: AtomicUsize::new(0),
            inject: Mutex::new(Vec::new()),
        })
    }

    pub fn inject(&self, item: impl Fn() -> Result<Event>) {
        for tx in self.inject.lock().expect("lock").iter() {
            let _ = tx.send(item());
        }
    }

    pub fn raw(&self, topic: &str, envelope: &Envelope) {
        self.bus
            .publish_raw(topic, envelope.encode().expect("encode"))
            .expect("publish_raw");
    }
}

impl Transport for Bus {
    fn backend(&self) -> &'static str {
        "test-bus"
    }
    fn capabilities(&self) -> Capabilities {
        self.bus.capabilities()
    }
    fn publish<'a>(&'a self, topic: &'a str, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        if envelope.kind != Kind::Heartbeat
            && self
                .drop_next
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            return async { Ok(()) }.boxed();
        }
        self.bus.publish(topic, envelope)
    }
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        async move {
            let inner = self.bus.subscribe(topic, options).await?;
            self.subscribes.fetch_add(1, Ordering::AcqRel);
            let (tx, rx) = mpsc::unbounded_channel();
            self.inject.lock().expect("lock").push(tx);
            let injected = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let stream = futures::stream::select(inner, injected).map(|item| {
                if let Ok(Event::Message(envelope)) = &item {
                    assert_ne!(envelope.key, "boom", "the transport's stream panics");
                }
                item
            });
            Ok(Subscription::new(topic, stream.boxed()))
        }
        .boxed()
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.bus.close()
    }
}

pub async fn cache(bus: &Arc<Bus>, topic: &str) -> LocalCache<String> {
    let transport: Arc<dyn Transport> = bus.clone();
    LocalCache::builder(Channel::new(transport, topic))
        .heartbeat_interval(None)
        .build()
        .await
        .expect("cache")
}

pub fn channel(bus: &Arc<Bus>, topic: &str) -> Channel<String> {
    let transport: Arc<dyn Transport> = bus.clone();
    Channel::new(transport, topic)
}
