//! `LocalCache::get` on a hit (trust and expiry checks and value handle
//! included; also without the staleness bound's liveness checks),
//! against the same read on moka and on bare quick_cache (default shards, and
//! 64 shards as LocalCache uses for this bound), and against the value handle alone (an
//! `Arc` clone): 10,000 String keys, 128-byte values, 1 and 2 threads.
//!
//! Run: `cargo xtask bench cache`, which also measures a Redis GET round trip
//! in the same run and reports the ratio.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use hydratecache_cache::{Loaded, LocalCache};
use hydratecache_core::{Channel, MemoryTransport, PublishOptions, Transport};

const KEYS: usize = 10_000;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("user:{i:06}")).collect()
}

fn value() -> Vec<u8> {
    vec![0x5a; 128]
}

/// Runs `per_thread` reads on each of `threads` threads; returns the mean
/// time per read as seen by one thread (wall time / reads per thread).
fn threaded(threads: usize, iters: u64, read: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let read = &read;
            s.spawn(move || {
                for i in 0..iters as usize {
                    read(i.wrapping_mul(7919).wrapping_add(t * 31) % KEYS);
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let keys = Arc::new(keys());
    let local = filled(&rt, &keys, Some(hydratecache_cache::DEFAULT_MAX_STALENESS));
    // The same without the staleness bound's liveness checks: the difference
    // is the trust check's cost on the hit path (a coarse-clock read).
    let unbounded = filled(&rt, &keys, None);
    assert_eq!(local.len(), KEYS);
    let moka: moka::sync::Cache<String, Arc<Vec<u8>>> = moka::sync::Cache::new(2 * KEYS as u64);
    let quick: quick_cache::sync::Cache<String, Arc<Vec<u8>>> =
        quick_cache::sync::Cache::new(2 * KEYS);
    // As LocalCache builds it for this bound: 64 shards (at least 256
    // entries each) rather than 4 per core.
    let quick_64: quick_cache::sync::Cache<String, Arc<Vec<u8>>> =
        quick_cache::sync::Cache::with_options(
            quick_cache::OptionsBuilder::new()
                .estimated_items_capacity(2 * KEYS)
                .weight_capacity(2 * KEYS as u64)
                .shards(64)
                .build()
                .expect("options"),
            quick_cache::UnitWeighter,
            Default::default(),
            Default::default(),
        );
    for k in keys.iter() {
        moka.insert(k.clone(), Arc::new(value()));
        quick.insert(k.clone(), Arc::new(value()));
        quick_64.insert(k.clone(), Arc::new(value()));
    }
    // No lookup at all: only the value handle a get returns (an `Arc`
    // clone and drop), read in the same order. With two threads both touch
    // every value's count, so this is the floor for any cache returning `Arc`.
    let handles: Vec<Arc<Vec<u8>>> = keys.iter().map(|_| Arc::new(value())).collect();

    let mut group = c.benchmark_group("get-hit");
    for threads in [1usize, 2] {
        hits(&mut group, "local_cache", threads, |i| {
            black_box(local.get(&keys[i]).expect("hit"));
        });
        hits(&mut group, "local_cache_unbounded", threads, |i| {
            black_box(unbounded.get(&keys[i]).expect("hit"));
        });
        hits(&mut group, "moka", threads, |i| {
            black_box(moka.get(&keys[i]).expect("hit"));
        });
        hits(&mut group, "quick_cache", threads, |i| {
            black_box(quick.get(&keys[i]).expect("hit"));
        });
        hits(&mut group, "quick_cache_64_shards", threads, |i| {
            black_box(quick_64.get(&keys[i]).expect("hit"));
        });
        hits(&mut group, "arc_clone_only", threads, |i| {
            black_box(Arc::clone(&handles[i]));
        });
    }
    group.finish();
}

/// A cache holding every key (half with a TTL, so the expiry check is on
/// the path), with `max_staleness` as given.
fn filled(
    rt: &tokio::runtime::Runtime,
    keys: &[String],
    max_staleness: Option<Duration>,
) -> LocalCache<Vec<u8>> {
    rt.block_on(async {
        let cache = LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), "bench"))
            .max_entries(2 * KEYS as u64)
            .max_staleness(max_staleness)
            .heartbeat_interval(None)
            .build()
            .await
            .expect("cache");
        for k in keys {
            cache
                .get_or_load(k, |_| async { Ok(Some(Loaded::new(value()))) })
                .await
                .expect("load");
        }
        for k in keys.iter().step_by(2) {
            cache
                .put_with(
                    k,
                    value(),
                    PublishOptions::new().ttl(Duration::from_secs(3600)),
                )
                .await
                .expect("put");
        }
        cache
    })
}

/// One variant, `<name>/<threads>t`: `read(i)` of key `i` on each thread.
fn hits(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    threads: usize,
    read: impl Fn(usize) + Sync,
) {
    group.bench_function(format!("{name}/{threads}t"), |b| {
        b.iter_custom(|iters| threaded(threads, iters, &read))
    });
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
