//! [`TopicCache`]: the partitions of the topics a transport has used,
//! shared by the transport (which looks them up) and its producers (which
//! forget a topic that went away).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use hydratecache_core::adapter::lock;

/// Partition ids of the topics this transport has used.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    topics: Mutex<HashMap<String, Arc<[i32]>>>,
}

impl TopicCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<[i32]>>> {
        lock(&self.topics)
    }

    pub(crate) fn get(&self, topic: &str) -> Option<Arc<[i32]>> {
        self.lock().get(topic).cloned()
    }

    pub(crate) fn insert(&self, topic: &str, partitions: Arc<[i32]>) {
        self.lock().insert(topic.to_owned(), partitions);
    }

    /// Drops what is known of `topic`, so the next use looks it up again.
    pub(crate) fn forget(&self, topic: &str) {
        self.lock().remove(topic);
    }
}
