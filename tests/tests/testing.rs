//! What tests need from the cache: one that never stores, and a cache of their own instead of
//! the process-wide global one.

mod support;

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, invalidates, Cache};
use support::Calls;

#[cached(expire = 60, key = "price:<id>")]
async fn price(calls: &Calls, id: u32) -> u32 {
    let _ = calls.hit();
    id * 10
}

#[invalidates(key = "price:<id>")]
async fn reprice(id: u32) -> Result<(), ()> {
    let _ = id;
    Ok(())
}

#[cached(expire = 60, cache = calls.0)]
async fn page(State(calls): State<Arc<(Cache, Calls)>>) -> String {
    format!("run {}", calls.1.hit())
}

/// `Cache::disabled()`: every call runs its body (also concurrent ones), nothing is stored,
/// invalidations succeed; on a handler every request runs it (`X-Cache: BYPASS`).
#[tokio::test]
async fn a_disabled_cache_runs_every_body() {
    let off = Cache::disabled();
    let calls = Calls::default();
    cache_runtime::scope(off.clone(), async {
        for _ in 0..3 {
            assert_eq!(price(&calls, 2).await, 20);
        }
        let together = futures::future::join_all((0..5).map(|_| price(&calls, 3))).await;
        assert_eq!(together, vec![30; 5]);
        reprice(2).await.unwrap();
    })
    .await;
    assert_eq!(calls.get(), 8, "3 sequential and 5 concurrent calls, 8 body runs");
    let stats = off.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores, stats.errors), (0, 8, 0, 0));

    let state = Arc::new((Cache::disabled(), Calls::default()));
    let router = Router::new().route("/", get(page)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let c = reqwest::Client::new();
    for run in 1..=2 {
        let r = c.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], "BYPASS");
        assert_eq!(r.text().await.unwrap(), format!("run {run}"));
    }
}

/// `cache_runtime::scope`: a test gets its own cache for every `#[cached]` fn without a
/// `cache` option; another scope does not see its entries, nor does the global cache.
#[tokio::test]
async fn each_scope_has_its_own_cache() {
    let (first, second) = (Cache::memory(), Cache::memory());
    let calls = Calls::default();
    cache_runtime::scope(first.clone(), async {
        assert_eq!(price(&calls, 7).await, 70);
        assert_eq!(price(&calls, 7).await, 70);
    })
    .await;
    assert_eq!(calls.get(), 1, "stored in the first scope's cache");
    cache_runtime::scope(second.clone(), async {
        assert_eq!(price(&calls, 7).await, 70);
        reprice(7).await.unwrap();
        assert_eq!(price(&calls, 7).await, 70);
    })
    .await;
    assert_eq!(calls.get(), 3, "the second scope started empty, and its invalidation reached its own cache");
    assert_eq!((first.stats().misses, second.stats().misses), (1, 2));
    assert_eq!(first.stats().invalidations, 0, "the second scope's write stayed in it");
    assert!(cache_runtime::global().get::<u32>("price:7").await.is_none(), "the global cache was not used");
}

#[cached(expire = 60, stale = 30, key = "shelf:<id>", tags = ["shelves", "shelf:<id>"], cache = cache, skip = [cache])]
async fn shelf(cache: &Cache, id: u32) -> Option<u32> {
    (id > 0).then_some(id)
}

#[cached(expire = 60, cache_none, key = "maybe:<id>", cache = cache, skip = [cache])]
async fn maybe(cache: &Cache, id: u32) -> Option<u32> {
    (id > 0).then_some(id)
}

/// `Cache::inspect`: what a `#[cached]` call stored under its key: freshness and staleness
/// left, its tags with versions, size, format, a stored `None`, and whether the L1 holds it.
#[tokio::test]
async fn what_is_stored_can_be_inspected() {
    for b in support::Backend::all() {
        assert_eq!(shelf(&b.cache, 4).await, Some(4));
        assert_eq!(maybe(&b.cache, 0).await, None);
        if b.name.ends_with("l1") {
            // A second read fills this process's L1 from Redis.
            shelf(&b.cache, 4).await;
        }
        let info = b.cache.inspect("shelf:4").await.unwrap_or_else(|| panic!("{}: the entry", b.name));
        assert!(
            info.fresh_for > std::time::Duration::from_secs(55) && info.fresh_for <= std::time::Duration::from_secs(60),
            "{}: {info:?}",
            b.name
        );
        assert!(
            info.stale_for > std::time::Duration::from_secs(29) && info.stale_for <= std::time::Duration::from_secs(30),
            "{}: {info:?}",
            b.name
        );
        let tags: Vec<&str> = info.tags.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["shelves", "shelf:4"], "{}", b.name);
        assert!(!info.negative && info.bytes > 0, "{}: {info:?}", b.name);
        assert!(info.stored_at <= std::time::SystemTime::now());
        match b.name {
            "memory" => assert_eq!((info.tier, info.format, info.in_l1), (cache_runtime::Tier::Memory, None, false)),
            "redis" => assert_eq!(
                (info.tier, info.format, info.in_l1),
                (cache_runtime::Tier::Redis, Some(cache_runtime::Format::Json), false)
            ),
            _ => assert_eq!((info.tier, info.in_l1), (cache_runtime::Tier::Redis, true), "{}: {info:?}", b.name),
        }
        assert!(b.cache.inspect("maybe:0").await.unwrap().negative, "{}: a stored None", b.name);
        assert!(b.cache.inspect("shelf:5").await.is_none(), "{}", b.name);
    }
}
