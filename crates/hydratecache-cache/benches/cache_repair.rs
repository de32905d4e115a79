//! How long `LocalCache::repair` holds the calling (runtime) thread on a
//! cache of 1,000,000 entries, and the slowest `get` another thread saw
//! meanwhile, for `Clear` and `Reload`. A printed measurement, not a
//! criterion bench: each run needs a freshly filled cache.
//!
//! Run: `cargo bench -p hydratecache-core --bench cache_repair`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hydratecache_cache::{Loaded, LocalCache, RepairPolicy};
use hydratecache_core::{Channel, MemoryTransport, Transport};

const ENTRIES: usize = 1_000_000;
const RUNS: usize = 3;

fn key(i: usize) -> String {
    format!("user:{i:07}")
}

async fn filled(policy: RepairPolicy) -> LocalCache<u64> {
    let cache = LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), "repair"))
        .max_entries(2 * ENTRIES as u64)
        .heartbeat_interval(None)
        .repair(policy)
        .loader(|_key: String| async { Ok(Some(Loaded::new(0u64))) })
        .build()
        .await
        .expect("cache");
    for i in 0..ENTRIES {
        cache
            .get_or_load(
                &key(i),
                move |_| async move { Ok(Some(Loaded::new(i as u64))) },
            )
            .await
            .expect("load");
    }
    cache
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    for policy in [RepairPolicy::Clear, RepairPolicy::Reload] {
        for run in 0..RUNS {
            let cache = Arc::new(rt.block_on(filled(policy)));
            let held = cache.len();
            // Another thread reads meanwhile and keeps its slowest read.
            let stop = Arc::new(AtomicBool::new(false));
            let reader = {
                let (cache, stop) = (cache.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut slowest = Duration::ZERO;
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        std::hint::black_box(cache.get(&key(i % ENTRIES)));
                        slowest = slowest.max(start.elapsed());
                        i += 7919;
                    }
                    slowest
                })
            };
            std::thread::sleep(Duration::from_millis(50));
            let took = rt.block_on(async {
                let start = Instant::now();
                cache.repair();
                start.elapsed()
            });
            std::thread::sleep(Duration::from_millis(50));
            stop.store(true, Ordering::Relaxed);
            let slowest = reader.join().expect("reader");
            println!(
                "{policy:?} run {run}: repair() of {held} entries held the caller {took:?}; \
                 slowest concurrent get {slowest:?}"
            );
            rt.block_on(async move { drop(cache) });
        }
    }
}
