//! Per-function statistics (`cache_runtime::function_stats`): each fn, handler and layer in its
//! own row, beside the cache's totals.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use cache_runtime::{cached, Cache, CacheLayer, FunctionStats};
use support::{Backend, Calls};

fn row(suffix: &str) -> FunctionStats {
    cache_runtime::function_stats()
        .into_iter()
        .find(|f| f.name.ends_with(suffix))
        .unwrap_or_else(|| panic!("no row for {suffix}: {:?}", cache_runtime::function_stats()))
}

#[cached(expire = 60, key = "a:<id>", cache = cache, skip = [cache])]
async fn fn_a(cache: &Cache, id: u32) -> Result<u32, String> {
    tokio::time::sleep(Duration::from_millis(20)).await;
    if id == 0 {
        return Err("zero".to_owned());
    }
    Ok(id)
}

#[cached(expire = 60, key = "b:<id>", cache = cache, skip = [cache])]
async fn fn_b(cache: &Cache, id: u32) -> String {
    format!("b{id}")
}

/// Two fns on every backend: each row counts its own hits, misses, failures, body runs (with
/// their time) and bytes; the cache's totals count both.
#[tokio::test]
async fn each_function_is_counted_in_its_own_row() {
    let backends = Backend::all();
    for b in &backends {
        for id in [1, 2, 1, 1, 0] {
            let _ = fn_a(&b.cache, id).await;
        }
        for _ in 0..4 {
            fn_b(&b.cache, 9).await;
        }
        let totals = b.cache.stats();
        assert_eq!((totals.hits, totals.misses), (2 + 3, 3 + 1), "{}", b.name);
    }
    let n = backends.len() as u64;
    let a = row("statistics::fn_a");
    assert_eq!((a.hits, a.misses, a.failed, a.body_runs), (2 * n, 3 * n, n, 3 * n), "{a:?}");
    assert!(a.body_p50 >= Duration::from_millis(16) && a.body_p99 <= Duration::from_millis(1000), "{a:?}");
    assert!(a.bytes_stored > 0);
    let b = row("statistics::fn_b");
    assert_eq!((b.hits, b.misses, b.failed, b.body_runs), (3 * n, n, 0, n), "{b:?}");
}

#[cached(expire = 60, key = "slow:<id>", cache = cache, skip = [cache])]
async fn slow(cache: &Cache, id: u32) -> u32 {
    tokio::time::sleep(Duration::from_millis(100)).await;
    id
}

/// Callers that join a computation in flight are counted as collapsed (and as hits).
#[tokio::test]
async fn collapsed_callers_are_counted() {
    let cache = Cache::memory();
    futures::future::join_all((0..10).map(|_| slow(&cache, 1))).await;
    let s = row("statistics::slow");
    assert_eq!((s.misses, s.collapsed, s.hits, s.body_runs), (1, 9, 9, 1), "{s:?}");
}

#[cached(expire = 60, key = "page:<id>", cache = app.0)]
async fn stats_page(Path(id): Path<u32>, State(app): State<Arc<(Cache, Calls)>>) -> String {
    format!("page {id} (run {})", app.1.hit())
}

async fn plain(State(calls): State<Arc<Calls>>) -> String {
    format!("run {}", calls.hit())
}

/// A handler is counted under its name, a layer under `layer:<namespace>`.
#[tokio::test]
async fn handlers_and_layers_have_rows() {
    let app = Arc::new((Cache::memory(), Calls::default()));
    let calls = Arc::new(Calls::default());
    let router = Router::new().route("/page/{id}", get(stats_page)).with_state(app.clone()).merge(
        Router::new()
            .route("/plain", get(plain))
            .with_state(calls.clone())
            .layer(CacheLayer::new(Cache::memory()).namespace("stats-layer")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    for path in ["/page/1", "/page/1", "/page/2", "/plain", "/plain", "/plain"] {
        reqwest::get(format!("{base}{path}")).await.unwrap().text().await.unwrap();
    }
    let page = row("statistics::stats_page");
    assert_eq!((page.hits, page.misses), (1, 2), "{page:?}");
    let layer = row("layer:stats-layer");
    assert_eq!((layer.hits, layer.misses), (2, 1), "{layer:?}");
}
