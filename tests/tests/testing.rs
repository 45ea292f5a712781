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

#[cached(expire = 60, namespace = "catalog", cache = cache, skip = [cache, calls])]
async fn title(cache: &Cache, calls: &Calls, id: u32, lang: &str) -> String {
    let _ = calls.hit();
    format!("{id} in {lang}")
}

#[cached(expire = 60, vary = ["accept-language"], cache = app.0)]
async fn greeting(axum::extract::Path(id): axum::extract::Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("hello {id} (run {})", app.1.hit())
}

/// `key_of`: the key a call renders, without running its body; it is the key the call then
/// stores under (explicit and default keys, a handler's `vary` included), on every backend.
#[tokio::test]
async fn the_key_of_a_call_is_rendered_without_running_it() {
    for b in support::Backend::all() {
        let calls = Calls::default();
        // An explicit key, the global/scoped cache.
        let call = cache_runtime::scope(b.cache.clone(), cache_runtime::key_of(price(&calls, 7))).await.unwrap();
        assert_eq!((call.namespace(), call.key(), call.stored()), ("default", "price:7", "t:{default:price:7}"));
        // A default key: module, fn name and the escaped arguments.
        let other = cache_runtime::key_of(title(&b.cache, &calls, 3, "pt br")).await.unwrap();
        assert_eq!(other.namespace(), "catalog");
        assert!(other.key().starts_with("testing::title:") && other.key().contains("pt%20br"), "{}", other.key());
        assert_eq!(calls.get(), 0, "{}: key_of ran no body", b.name);
        assert!(b.cache.inspect_call(&other).await.is_none(), "{}: nothing stored yet", b.name);
        assert_eq!(b.cache.stats().misses + b.cache.stats().hits, 0, "{}: key_of is not a read", b.name);

        // The real calls store under exactly those keys.
        cache_runtime::scope(b.cache.clone(), price(&calls, 7)).await;
        title(&b.cache, &calls, 3, "pt br").await;
        assert_eq!(calls.get(), 2, "{}", b.name);
        for key in [&call, &other] {
            let info = b.cache.inspect_call(key).await.unwrap_or_else(|| panic!("{}: stored under {key}", b.name));
            assert!(info.fresh_for > std::time::Duration::from_secs(55), "{}: {info:?}", b.name);
        }
        // A key_of around a call that would hit still runs nothing and reads nothing.
        let again = cache_runtime::key_of(title(&b.cache, &calls, 3, "pt br")).await.unwrap();
        assert_eq!((again, calls.get()), (other, 2), "{}", b.name);
    }
}

/// `key_of` around a router: routing and extractors run, the cached handler is held before its
/// body; the key carries the `vary` header's value and is the one the request then stores under.
#[tokio::test]
async fn the_key_of_a_request_is_rendered_without_running_the_handler() {
    use tower::ServiceExt as _;
    let app = Arc::new((Cache::memory(), Calls::default()));
    let router = Router::new().route("/hello/{id}", get(greeting)).with_state(app.clone());
    let request = |lang: &str| {
        axum::http::Request::get("/hello/5").header("accept-language", lang).body(axum::body::Body::empty()).unwrap()
    };
    let pt = cache_runtime::key_of(router.clone().oneshot(request("pt"))).await.unwrap();
    let fr = cache_runtime::key_of(router.clone().oneshot(request("fr"))).await.unwrap();
    assert_ne!(pt, fr, "the vary header is part of the key");
    assert!(pt.key().starts_with("testing::greeting:"), "{}", pt.key());
    assert_eq!(app.1.get(), 0, "the handler did not run");
    assert!(app.0.inspect_call(&pt).await.is_none());

    let response = router.clone().oneshot(request("pt")).await.unwrap();
    assert_eq!(response.headers()["x-cache"], "MISS");
    assert_eq!(app.1.get(), 1);
    assert!(app.0.inspect_call(&pt).await.is_some(), "stored under the key key_of gave");
    assert!(app.0.inspect_call(&fr).await.is_none());
    // A future without a cached call: None, and it ran to its end.
    assert_eq!(cache_runtime::key_of(async { 5 }).await, None);
}

/// A handler using the global cache (no `cache` option) that answers what its router's state
/// holds: two apps serving different states must never answer each other's.
#[cached(expire = 60, key = "whoami")]
async fn whoami(State(name): State<&'static str>) -> String {
    name.to_owned()
}

/// The app of one test, bound to its own cache by `ScopeLayer`, over real TCP.
async fn serve_scoped(name: &'static str) -> (String, Cache) {
    let cache = Cache::memory();
    let router = Router::new()
        .route("/whoami", get(whoami))
        .with_state(name)
        .layer(cache_runtime::ScopeLayer::new(cache.clone()));
    (support::serve(router).await, cache)
}

/// Issue 27, finding 11: `scope` covered only the task it wrapped, not the tasks `axum::serve`
/// runs requests in, so two tests serving the app shared the global cache. With `ScopeLayer`
/// each app has its own entries (the test binary's global cache outlives a test: without
/// the layer, whichever of this test and the next runs second is answered the other's name).
#[tokio::test]
async fn an_app_served_with_its_own_cache_sees_only_its_entries_a() {
    a_served_app_sees_only_its_entries("alpha").await;
}

#[tokio::test]
async fn an_app_served_with_its_own_cache_sees_only_its_entries_b() {
    a_served_app_sees_only_its_entries("beta").await;
}

async fn a_served_app_sees_only_its_entries(name: &'static str) {
    let (base, cache) = serve_scoped(name).await;
    let c = reqwest::Client::new();
    for expected in ["MISS", "HIT", "HIT"] {
        let r = c.get(format!("{base}/whoami")).send().await.unwrap();
        assert_eq!(r.headers()["x-cache"], expected);
        assert_eq!(r.text().await.unwrap(), name);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(cache.stats().hits, 2, "the app's own cache served it");
}
