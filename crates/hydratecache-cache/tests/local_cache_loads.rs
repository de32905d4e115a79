//! LocalCache loads, the load-versus-change guard, repairs and tombstones:
//! cancelled and panicking loads, callers arriving after a change, updates
//! evicted or expired under a slow load, tracked `Reload` repairs, delete
//! floods and lazy repair.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use hydratecache_cache::{Loaded, LocalCache, RepairPolicy};
use hydratecache_core::{
    Capabilities, Channel, Envelope, MemoryTransport, PublishOptions, Result, SubscribeOptions,
    Subscription, Transport,
};

mod common;

use common::{eventually, value, WAIT};

fn loaded(v: &str) -> Result<Option<Loaded<String>>, hydratecache_core::BoxError> {
    Ok(Some(Loaded::new(v.to_string())))
}

async fn cache_on(bus: &Arc<dyn Transport>, topic: &str) -> LocalCache<String> {
    LocalCache::builder(Channel::new(bus.clone(), topic))
        .heartbeat_interval(None)
        .build()
        .await
        .expect("cache")
}

/// Sets its flag when dropped: tells whether a loader's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

// ---- item 1: cancelled, panicking and outdated loads ----

#[tokio::test]
async fn a_cancelled_get_or_load_cancels_its_load_and_a_later_caller_loads_afresh(
) -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = cache_on(&bus, "cancel").await;
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    // A request timeout cancels the only caller while the store hangs.
    let first = tokio::time::timeout(
        Duration::from_millis(50),
        cache.get_or_load("k", move |_| async move {
            let _holds_a_connection = flag;
            futures::future::pending::<()>().await;
            loaded("never")
        }),
    )
    .await;
    assert!(first.is_err(), "the first caller was not cancelled");
    eventually("the abandoned load was dropped", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    let second = tokio::time::timeout(WAIT, cache.get_or_load("k", |_| async { loaded("fresh") }))
        .await
        .expect("a later caller joined the abandoned load")?;
    assert_eq!(second.as_deref().map(String::as_str), Some("fresh"));
    assert_eq!(value(&cache, "k").as_deref(), Some("fresh"));
    Ok(())
}

#[tokio::test]
async fn a_cancelled_waiter_does_not_cancel_the_load_for_the_others() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = cache_on(&bus, "cancel-one").await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let stays = cache.get_or_load("k", move |_| async move {
        s.store(true, Ordering::SeqCst);
        let _ = released.await;
        loaded("v")
    });
    let other = async {
        eventually("the load started", || started.load(Ordering::SeqCst)).await;
        let cancelled = tokio::time::timeout(
            Duration::from_millis(20),
            cache.get_or_load("k", |_| async { loaded("second loader") }),
        )
        .await;
        assert!(cancelled.is_err(), "the second caller did not join");
        let _ = release.send(());
    };
    let (stays, ()) = tokio::join!(stays, other);
    assert_eq!(stays?.as_deref().map(String::as_str), Some("v"));
    assert_eq!(value(&cache, "k").as_deref(), Some("v"));
    Ok(())
}

/// A caller arriving after `change` (made while a load of `k` is under way)
/// must not get that older load's value.
async fn a_caller_after_a_change_starts_a_fresh_load(
    change: impl for<'a> FnOnce(&'a LocalCache<String>) -> BoxFuture<'a, ()>,
) -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = cache_on(&bus, "after").await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let before = cache.get_or_load("k", move |_| async move {
        s.store(true, Ordering::SeqCst);
        let _ = released.await;
        loaded("loaded before the change")
    });
    let after = async {
        eventually("the first load started", || started.load(Ordering::SeqCst)).await;
        change(&cache).await;
        let later = cache.get_or_load("k", |_| async { loaded("loaded after the change") });
        // Release the first load meanwhile, so a caller that joined it returns.
        let (later, ()) = tokio::join!(later, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = release.send(());
        });
        later
    };
    let (before, after) = tokio::join!(before, after);
    assert_eq!(
        before?.as_deref().map(String::as_str),
        Some("loaded before the change"),
        "the first caller gets its own load"
    );
    assert_eq!(
        after?.as_deref().map(String::as_str),
        Some("loaded after the change"),
        "a caller arriving after the change joined the load started before it"
    );
    assert_eq!(
        value(&cache, "k").as_deref(),
        Some("loaded after the change")
    );
    Ok(())
}

#[tokio::test]
async fn a_caller_after_a_delete_does_not_join_the_load_started_before_it() -> anyhow::Result<()> {
    a_caller_after_a_change_starts_a_fresh_load(|cache| {
        async move {
            cache.invalidate("k").await.expect("invalidate");
        }
        .boxed()
    })
    .await
}

#[tokio::test]
async fn a_caller_after_a_repair_does_not_join_the_load_started_before_it() -> anyhow::Result<()> {
    a_caller_after_a_change_starts_a_fresh_load(|cache| async move { cache.repair() }.boxed()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loader_panic_is_an_error_and_does_not_poison_the_key() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache = Arc::new(cache_on(&bus, "panic").await);
    let c = cache.clone();
    let first = tokio::spawn(async move {
        c.get_or_load("k", |_| async { panic!("a bug in the loader") })
            .await
    })
    .await;
    let first = first.expect("the loader's panic reached the caller");
    let error = first.expect_err("a panicking loader gave a value");
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(text.contains("panicked"), "{text}");
    let second = tokio::time::timeout(WAIT, cache.get_or_load("k", |_| async { loaded("v") }))
        .await
        .expect("the next caller hung")?;
    assert_eq!(second.as_deref().map(String::as_str), Some("v"));
    assert_eq!(cache.stats().load_errors, 1);
    Ok(())
}

#[tokio::test]
async fn a_load_past_the_load_timeout_is_an_error_and_the_next_call_loads_again(
) -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus, "slow"))
        .heartbeat_interval(None)
        .load_timeout(Duration::from_millis(50))
        .build()
        .await?;
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let stuck = tokio::time::timeout(
        WAIT,
        cache.get_or_load("k", move |_| async move {
            let _holds_a_connection = flag;
            futures::future::pending::<()>().await;
            loaded("never")
        }),
    )
    .await
    .expect("the load timeout did not end the load");
    let error = stuck.expect_err("a stuck loader gave a value");
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(text.contains("did not finish"), "{text}");
    assert!(dropped.load(Ordering::SeqCst), "the stuck load was kept");
    let next = cache.get_or_load("k", |_| async { loaded("v") }).await?;
    assert_eq!(next.as_deref().map(String::as_str), Some("v"));
    let huge: LocalCache<String> =
        LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), "huge"))
            .heartbeat_interval(None)
            .load_timeout(Duration::MAX)
            .build()
            .await?;
    let v = huge.get_or_load("k", |_| async { loaded("v") }).await?;
    assert_eq!(v.as_deref().map(String::as_str), Some("v"));
    Ok(())
}

// ---- item 5: the guard outlives the newer entry ----

/// Loads 1,000 values into a cache bounded at 300 entries: from then on, a
/// new entry starts cold and is the first evicted, as in a busy cache.
async fn fill_past_the_bound(cache: &LocalCache<String>) {
    for i in 0..1_000 {
        cache
            .get_or_load(&format!("before:{i}"), |_| async { loaded("x") })
            .await
            .expect("fill");
    }
}

/// A slow load of `k` is under way while an update of `k` arrives and then
/// leaves the table through `gone`; the load must still not store.
async fn a_load_does_not_store_over_an_update_that(
    ttl: Option<Duration>,
    gone: impl for<'a> FnOnce(&'a LocalCache<String>) -> BoxFuture<'a, ()>,
) -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "guard"))
        .max_entries(300)
        .heartbeat_interval(None)
        .build()
        .await?;
    fill_past_the_bound(&cache).await;
    let writer: Channel<String> = Channel::new(bus.clone(), "guard");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let load = cache.get_or_load("k", move |_| async move {
        s.store(true, Ordering::SeqCst);
        let _ = released.await;
        loaded("old from store")
    });
    let change = async {
        eventually("the load started", || started.load(Ordering::SeqCst)).await;
        let options = match ttl {
            Some(ttl) => PublishOptions::new().ttl(ttl),
            None => PublishOptions::new(),
        };
        writer
            .publish_with("k", &"new".into(), options)
            .await
            .expect("publish");
        // Not read through `get`: a read would make it hot. An update whose
        // TTL ran out in transit (a loaded machine) is not stored but still
        // marks the key: the load must not store over it either.
        eventually("the update applied (or expired on arrival)", || {
            let stats = cache.stats();
            stats.updates_applied + stats.expired_on_arrival == 1
        })
        .await;
        gone(&cache).await;
        let _ = release.send(());
    };
    let (load, ()) = tokio::join!(load, change);
    assert_eq!(load?.as_deref().map(String::as_str), Some("old from store"));
    assert_ne!(
        value(&cache, "k").as_deref(),
        Some("old from store"),
        "the slower load stored a value older than the update it missed"
    );
    Ok(())
}

#[tokio::test]
async fn a_load_does_not_store_over_an_evicted_update() -> anyhow::Result<()> {
    a_load_does_not_store_over_an_update_that(None, |cache| {
        async move {
            for i in 0..3_000 {
                cache
                    .get_or_load(&format!("filler:{i}"), |_| async { loaded("x") })
                    .await
                    .expect("filler");
            }
            assert!(cache.get("k").is_none(), "the update was not evicted");
        }
        .boxed()
    })
    .await
}

#[tokio::test]
async fn a_load_does_not_store_over_an_expired_update() -> anyhow::Result<()> {
    // Long enough to outlive publish→apply on a loaded machine, so the
    // update is normally stored, then expires under the load.
    a_load_does_not_store_over_an_update_that(Some(Duration::from_millis(250)), |cache| {
        async move {
            eventually("the update expired", || cache.get("k").is_none()).await;
        }
        .boxed()
    })
    .await
}

#[tokio::test]
async fn a_load_does_not_store_over_an_evicted_delete() -> anyhow::Result<()> {
    let bus = MemoryTransport::new().into_arc();
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(bus.clone(), "guard-del"))
        .max_entries(300)
        .heartbeat_interval(None)
        .build()
        .await?;
    fill_past_the_bound(&cache).await;
    let writer: Channel<String> = Channel::new(bus.clone(), "guard-del");
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let load = cache.get_or_load("k", move |_| async move {
        s.store(true, Ordering::SeqCst);
        let _ = released.await;
        loaded("deleted at the store")
    });
    let change = async {
        eventually("the load started", || started.load(Ordering::SeqCst)).await;
        writer.delete("k").await.expect("delete");
        eventually("the delete applied", || cache.stats().deletes_applied == 1).await;
        // Deletes of other keys and values push the delete out.
        for i in 0..3_000 {
            writer.delete(&format!("other:{i}")).await.expect("delete");
            cache
                .get_or_load(&format!("filler:{i}"), |_| async { loaded("x") })
                .await
                .expect("filler");
        }
        eventually("the deletes applied", || {
            cache.stats().deletes_applied == 3_001
        })
        .await;
        let stats = cache.stats();
        assert_eq!(
            stats.repairs(),
            0,
            "no repair confounds the test: {stats:?}"
        );
        let _ = release.send(());
    };
    let (load, ()) = tokio::join!(load, change);
    assert_eq!(
        load?.as_deref().map(String::as_str),
        Some("deleted at the store")
    );
    assert_eq!(
        value(&cache, "k"),
        None,
        "a load started before a delete stored its value once the delete was evicted"
    );
    Ok(())
}

// ---- item 7: tracked, superseded and cancelled reload repairs ----

#[tokio::test]
async fn reload_without_a_loader_is_a_build_error() {
    let bus = MemoryTransport::new().into_arc();
    let built = LocalCache::<String>::builder(Channel::new(bus, "no-loader"))
        .repair(RepairPolicy::Reload)
        .build()
        .await;
    let error = built.expect_err("a Reload cache without a loader was built");
    let text = format!("{:#}", anyhow::Error::from(error));
    assert!(text.contains("loader"), "{text}");
}

/// Counts the calls of a reload loader that never finishes, and how many
/// of them are running.
#[derive(Default)]
struct Stuck {
    started: AtomicUsize,
    running: AtomicUsize,
    most_running: AtomicUsize,
    dropped: AtomicUsize,
}

struct Running(Arc<Stuck>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

async fn reloading_cache(stuck: &Arc<Stuck>, keys: usize) -> LocalCache<String> {
    let bus = MemoryTransport::new().into_arc();
    let s = stuck.clone();
    let cache = LocalCache::builder(Channel::new(bus, "reload"))
        .repair(RepairPolicy::Reload)
        .reload_limits(2, Duration::ZERO)
        .heartbeat_interval(None)
        .loader(move |_key: String| {
            let s = s.clone();
            async move {
                s.started.fetch_add(1, Ordering::SeqCst);
                let now = s.running.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_running.fetch_max(now, Ordering::SeqCst);
                let _running = Running(s.clone());
                futures::future::pending::<()>().await;
                loaded("never")
            }
        })
        .build()
        .await
        .expect("cache");
    for i in 0..keys {
        cache
            .get_or_load(&format!("k{i}"), |_| async { loaded("held") })
            .await
            .expect("fill");
    }
    cache
}

#[tokio::test]
async fn a_new_gap_supersedes_the_running_reload() -> anyhow::Result<()> {
    let stuck = Arc::new(Stuck::default());
    let cache = reloading_cache(&stuck, 10).await;
    cache.repair();
    eventually("the first reload's loads started", || {
        stuck.started.load(Ordering::SeqCst) == 2
    })
    .await;
    cache.repair();
    eventually("the superseded reload's loads were cancelled", || {
        stuck.dropped.load(Ordering::SeqCst) == 2
    })
    .await;
    eventually("the second reload's loads started", || {
        stuck.started.load(Ordering::SeqCst) == 4
    })
    .await;
    assert_eq!(
        stuck.most_running.load(Ordering::SeqCst),
        2,
        "two reloads ran at once"
    );
    assert_eq!(cache.stats().repairs_reload, 2);
    Ok(())
}

#[tokio::test]
async fn dropping_or_closing_the_cache_cancels_its_reload() -> anyhow::Result<()> {
    for close in [false, true] {
        let stuck = Arc::new(Stuck::default());
        let cache = reloading_cache(&stuck, 10).await;
        cache.repair();
        eventually("the reload's loads started", || {
            stuck.started.load(Ordering::SeqCst) == 2
        })
        .await;
        if close {
            cache.close().await?;
        } else {
            drop(cache);
        }
        eventually("the reload's loads were cancelled", || {
            stuck.dropped.load(Ordering::SeqCst) == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            stuck.started.load(Ordering::SeqCst),
            2,
            "the reload went on after the cache was gone (close: {close})"
        );
    }
    Ok(())
}

// ---- item 8: deletes of keys never held ----

/// A transport whose publishes go nowhere: only the cache's own state counts.
struct Sink(MemoryTransport);

impl Transport for Sink {
    fn backend(&self) -> &'static str {
        "sink"
    }
    fn capabilities(&self) -> Capabilities {
        self.0.capabilities()
    }
    fn publish<'a>(&'a self, _: &'a str, _: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        async { Ok(()) }.boxed()
    }
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Subscription>> {
        self.0.subscribe(topic, options)
    }
    fn close(&self) -> BoxFuture<'_, Result<()>> {
        self.0.close()
    }
}

#[tokio::test]
async fn a_flood_of_deletes_for_unknown_keys_evicts_no_live_value() -> anyhow::Result<()> {
    const BOUND: u64 = 1_000;
    const STORED: usize = 3_000;
    const DELETES: usize = 20_000;
    let mut failures = Vec::new();
    for versioned in [false, true] {
        let transport: Arc<dyn Transport> = Arc::new(Sink(MemoryTransport::new()));
        let cache: LocalCache<String> = LocalCache::builder(Channel::new(transport, "flood"))
            .max_entries(BOUND)
            .heartbeat_interval(None)
            .build()
            .await?;
        // A busy, full cache: more values stored than it holds.
        for i in 0..STORED {
            cache
                .get_or_load(&format!("live:{i}"), |_| async { loaded("v") })
                .await?;
        }
        let held = cache.len();
        // Every other value held is read (hot); the rest are not read since
        // stored (cold).
        let is_hot = |i: usize| i.is_multiple_of(2);
        let mut hot_held = 0;
        for _ in 0..3 {
            hot_held = (0..STORED)
                .filter(|&i| is_hot(i) && cache.get(&format!("live:{i}")).is_some())
                .count();
        }
        let cold_held = held - hot_held;
        for i in 0..DELETES {
            let options = if versioned {
                PublishOptions::new().version(i as u64 + 1)
            } else {
                PublishOptions::new()
            };
            cache
                .invalidate_with(&format!("unknown:{i}"), options)
                .await?;
        }
        let alive = |hot: bool| {
            (0..STORED)
                .filter(|&i| is_hot(i) == hot && cache.get(&format!("live:{i}")).is_some())
                .count()
        };
        let (hot, cold) = (alive(true), alive(false));
        println!(
            "{DELETES} {} deletes of unknown keys, bound {BOUND}, {held} values held: \
             {hot}/{hot_held} hot and {cold}/{cold_held} cold values left, {} entries after",
            if versioned {
                "versioned"
            } else {
                "unversioned"
            },
            cache.len()
        );
        if (hot, cold) != (hot_held, cold_held) {
            failures.push(format!(
                "versioned {versioned}: {} hot and {} cold values evicted",
                hot_held - hot,
                cold_held - cold
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
    Ok(())
}

#[tokio::test]
async fn a_versioned_delete_of_a_key_never_held_still_stops_an_older_update() -> anyhow::Result<()>
{
    let bus = MemoryTransport::new().into_arc();
    let reader = cache_on(&bus, "tomb").await;
    let writer: Channel<String> = Channel::new(bus.clone(), "tomb");
    writer
        .delete_with("k", PublishOptions::new().version(5))
        .await?;
    eventually("the delete applied", || reader.stats().deletes_applied == 1).await;
    writer
        .publish_with("k", &"v4".into(), PublishOptions::new().version(4))
        .await?;
    eventually("the older update rejected", || {
        reader.stats().stale_rejected == 1
    })
    .await;
    assert_eq!(value(&reader, "k"), None);
    writer
        .publish_with("k", &"v6".into(), PublishOptions::new().version(6))
        .await?;
    eventually("the newer update applied", || {
        value(&reader, "k").as_deref() == Some("v6")
    })
    .await;
    Ok(())
}

// ---- item 9: a repair is a generation bump ----

#[tokio::test]
async fn a_repair_invalidates_lazily_without_visiting_the_entries() -> anyhow::Result<()> {
    const HELD: usize = 20_000;
    let transport: Arc<dyn Transport> = Arc::new(Sink(MemoryTransport::new()));
    let cache: LocalCache<String> = LocalCache::builder(Channel::new(transport, "lazy"))
        .max_entries(2 * HELD as u64)
        .heartbeat_interval(None)
        .build()
        .await?;
    for i in 0..HELD {
        cache
            .get_or_load(&format!("k{i}"), |_| async { loaded("before") })
            .await?;
    }
    let held = cache.len();
    let start = std::time::Instant::now();
    cache.repair();
    println!(
        "repair of {held} entries took {:?} (debug build)",
        start.elapsed()
    );
    // The entries stay in the table until overwritten or evicted: the repair
    // did not walk them. None is served.
    assert_eq!(cache.len(), held, "the repair walked the entries");
    assert!((0..HELD).all(|i| cache.get(&format!("k{i}")).is_none()));
    cache.put("k1", "after".into()).await?;
    assert_eq!(value(&cache, "k1").as_deref(), Some("after"));
    let reloaded = cache
        .get_or_load("k2", |_| async { loaded("reloaded") })
        .await?;
    assert_eq!(reloaded.as_deref().map(String::as_str), Some("reloaded"));
    assert_eq!(cache.stats().repairs_clear, 1);
    Ok(())
}

// ---- review: a weigher that panics on the load path ----

/// A byte-bounded cache whose weigher panics on values starting with `bad`.
async fn panicky_weigher_cache(topic: &str, policy: RepairPolicy) -> LocalCache<String> {
    LocalCache::builder(Channel::new(MemoryTransport::new().into_arc(), topic))
        .heartbeat_interval(None)
        .max_weight(1 << 20, |_, v: &String| {
            assert!(!v.starts_with("bad"), "the weigher panics");
            v.len() as u64
        })
        .repair(policy)
        .reload_limits(1, Duration::ZERO)
        .loader(|key: String| async move { loaded(&format!("{key}:reloaded")) })
        .build()
        .await
        .expect("cache")
}

#[tokio::test]
async fn a_weigher_panic_on_a_load_is_the_loads_error_for_every_waiter() -> anyhow::Result<()> {
    let cache = panicky_weigher_cache("weigh-load", RepairPolicy::Clear).await;
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = cache.get_or_load("k", move |_| async move {
        let _ = released.await;
        loaded("bad value")
    });
    let second = async {
        tokio::task::yield_now().await;
        let joined = cache.get_or_load("k", |_| async { loaded("not called") });
        let _ = release.send(());
        joined.await
    };
    let (first, second) = tokio::join!(first, second);
    assert!(first.is_err(), "{first:?}");
    assert!(second.is_err(), "{second:?}");
    assert_eq!(value(&cache, "k"), None);
    assert_eq!(cache.stats().hydration_panics, 1);
    // The key is not poisoned: the next load stores.
    cache.get_or_load("k", |_| async { loaded("good") }).await?;
    assert_eq!(value(&cache, "k").as_deref(), Some("good"));
    // A local write whose weight panics is not held (and still published).
    cache.put("p", "bad put".into()).await?;
    assert_eq!(value(&cache, "p"), None);
    Ok(())
}

#[tokio::test]
async fn a_weigher_panic_does_not_end_a_reload() -> anyhow::Result<()> {
    let cache = panicky_weigher_cache("weigh-reload", RepairPolicy::Reload).await;
    // `bad` reloads as "bad:reloaded", which the weigher refuses.
    let keys = ["a", "bad", "b", "c", "d", "e", "f", "g"];
    for key in keys {
        cache.get_or_load(key, |_| async { loaded("held") }).await?;
    }
    cache.repair();
    for key in keys.iter().filter(|k| **k != "bad") {
        eventually(&format!("{key} reloaded"), || {
            value(&cache, key).is_some_and(|v| v.ends_with(":reloaded"))
        })
        .await;
    }
    assert_eq!(value(&cache, "bad"), None);
    Ok(())
}
